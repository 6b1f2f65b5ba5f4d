//! Files the page offers. A browser hands a page a file's bytes, never its
//! path, and the client offers files by path (it serves them from there
//! for as long as the offer lives): so the page first sends the bytes
//! here, which keeps them in the home's `uploads/`, and then offers that
//! copy with the library's own `file_send`.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::AppState;

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
    let path = dir.join(name);
    match keep(&path, body).await {
        Ok(size) => (StatusCode::OK, Json(Kept { path, size })).into_response(),
        Err(refusal) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            refusal
        }
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
/// disk's room.
async fn keep(path: &Path, body: Body) -> Result<u64, Response> {
    let dir = path.parent().unwrap_or(path);
    let room = free_space(dir).map_or(MAX_UPLOAD, |free| free.saturating_sub(DISK_RESERVE));
    let bound = MAX_UPLOAD.min(room);
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
            let why = if bound < MAX_UPLOAD {
                format!(
                    "the disk holding {} has room for {bound} bytes more (keeping {DISK_RESERVE} free)",
                    dir.display()
                )
            } else {
                format!("a file offered from the page may be at most {MAX_UPLOAD} bytes")
            };
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, why));
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
