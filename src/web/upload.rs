//! Files the page offers. A browser hands a page a file's bytes, never its
//! path, and the client offers files by path (it serves them from there
//! for as long as the offer lives): so the page first sends the bytes
//! here, which keeps them in the home's `uploads/`, and then offers that
//! copy with the library's own `file_send`.
//!
//! A copy stays while its offer may still be fetched (offered, accepted,
//! or failed and so resumable); [`sweep`] removes the others when the
//! page is next served. An upload that breaks off leaves nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{AppState, Backend};
use crate::api::{Request, Response as Reply};
use crate::store::{Direction, TransferState};

/// The largest file the page may offer.
pub(super) const MAX_UPLOAD: u64 = 4 << 30;

/// Room the disk keeps after an upload (as the store keeps for itself).
const DISK_RESERVE: u64 = 256 << 20;

/// The longest file name kept (bytes, as most file systems allow).
const MAX_NAME: usize = 255;

#[derive(Debug, Deserialize)]
pub(super) struct Named {
    name: String,
}

/// Where the copy was kept: what `file_send` offers.
#[derive(Debug, Serialize)]
struct Kept {
    path: PathBuf,
    size: u64,
}

/// Keeps the request's body as `uploads/<random>/<name>`.
pub(super) async fn upload(
    State(state): State<AppState>,
    Query(named): Query<Named>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(uploads) = &state.uploads else {
        return refuse(
            StatusCode::FORBIDDEN,
            "this client keeps no files for the page".into(),
        );
    };
    let name = match file_name(&named.name) {
        Ok(name) => name,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    let dir = match random_dir(uploads).await {
        Ok(dir) => dir,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot keep the file in {}: {e}", uploads.display()),
            );
        }
    };
    // Removed unless the upload completes (also when the page goes away
    // in the middle, and this request with it).
    let mut unfinished = Unfinished(Some(dir.clone()));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let path = dir.join(name);
    let kept = keep(&path, body, announced, &state.reserved).await;
    if kept.is_ok() {
        unfinished.0 = None;
    }
    match kept {
        Ok(size) => (StatusCode::OK, Json(Kept { path, size })).into_response(),
        Err(refusal) => refusal,
    }
}

/// An upload's directory, removed when dropped unless taken.
struct Unfinished(Option<PathBuf>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            // Small and local: done here rather than by a task nobody owns.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Bytes an upload holds of the disk's room until it ends.
struct Reservation {
    all: Arc<AtomicU64>,
    mine: u64,
}

impl Reservation {
    fn grow(&mut self, by: u64) {
        self.all.fetch_add(by, Ordering::SeqCst);
        self.mine += by;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.all.fetch_sub(self.mine, Ordering::SeqCst);
    }
}

/// A name a page gave, as a file name of one component: no path, no
/// control characters, not `.` or `..`, at most 255 bytes.
fn file_name(raw: &str) -> Result<&str, String> {
    let name = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!(
            "{raw:?} is not a file name: give the file's own name, without a path"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the file name is {} bytes long: at most {MAX_NAME} are allowed",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "{name:?} holds control characters, which file names here may not"
        ));
    }
    Ok(name)
}

async fn random_dir(uploads: &Path) -> std::io::Result<PathBuf> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = uploads.join(id);
    tokio::fs::create_dir_all(&dir).await?;
    Ok(dir)
}

/// Writes the body to `path`, refusing it once it passes the bound or the
/// disk's room (less what other uploads under way may still write): at
/// once when its announced length does.
async fn keep(
    path: &Path,
    body: Body,
    announced: Option<u64>,
    reserved: &Arc<AtomicU64>,
) -> Result<u64, Response> {
    let dir = path.parent().unwrap_or(path);
    let others = reserved.load(Ordering::SeqCst);
    let room = free_space(dir).map_or(MAX_UPLOAD, |free| {
        free.saturating_sub(DISK_RESERVE).saturating_sub(others)
    });
    let bound = MAX_UPLOAD.min(room);
    let too_large = |bound: u64| {
        let why = if bound < MAX_UPLOAD {
            format!(
                "the disk holding {} has room for {bound} bytes more (keeping {DISK_RESERVE} free)",
                dir.display()
            )
        } else {
            format!("a file offered from the page may be at most {MAX_UPLOAD} bytes")
        };
        refuse(StatusCode::PAYLOAD_TOO_LARGE, why)
    };
    let mut reservation = Reservation {
        all: reserved.clone(),
        mine: 0,
    };
    if let Some(length) = announced {
        if length > bound {
            return Err(too_large(bound));
        }
        reservation.grow(length);
    }
    let mut file = tokio::fs::File::create(path).await.map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot create {}: {e}", path.display()),
        )
    })?;
    let mut size = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("the upload broke off: {e}"),
            )
        })?;
        size += chunk.len() as u64;
        if size > bound {
            return Err(too_large(bound));
        }
        if size > reservation.mine {
            reservation.grow(size - reservation.mine);
        }
        file.write_all(&chunk).await.map_err(|e| {
            refuse(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    file.sync_all().await.map_err(|e| {
        refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    Ok(size)
}

/// Removes the copies in `uploads` that no offer may still need: those of
/// transfers completed or declined, and those no offer names (an upload
/// whose offer was never made). Run when the page is served.
pub async fn sweep(backend: &Backend, uploads: &Path) {
    let Reply::Transfers { transfers } = backend.call(Request::Files).await else {
        return;
    };
    let needed: Vec<PathBuf> = transfers
        .iter()
        .filter(|t| t.transfer.direction == Direction::Out)
        .filter(|t| {
            !matches!(
                t.transfer.state,
                TransferState::Completed | TransferState::Declined
            )
        })
        .filter_map(|t| t.transfer.path.clone())
        .collect();
    let Ok(mut dirs) = tokio::fs::read_dir(uploads).await else {
        return;
    };
    while let Ok(Some(entry)) = dirs.next_entry().await {
        let dir = entry.path();
        if !needed.iter().any(|path| path.starts_with(&dir)) {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }
}

fn free_space(dir: &Path) -> Option<u64> {
    let vfs = rustix::fs::statvfs(dir).ok()?;
    Some(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

fn refuse(status: StatusCode, why: String) -> Response {
    (status, why).into_response()
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn a_file_name_is_one_plain_component() {
        assert_eq!(file_name("report.pdf"), Ok("report.pdf"));
        assert_eq!(file_name("C:\\Users\\me\\report.pdf"), Ok("report.pdf"));
        assert_eq!(file_name("../../etc/passwd"), Ok("passwd"));
        assert!(file_name("..").is_err());
        assert!(file_name("dir/").is_err());
        assert!(file_name("a\u{1b}[2J").is_err());
        assert!(file_name(&"x".repeat(256)).is_err());
    }
}
