//! The core's side of files: offering one (hashed off the core's task,
//! then stored and delivered like any message), answering offers, and
//! owning the serving task and one fetch task per accepted transfer.

use std::path::PathBuf;
use std::sync::Arc;

use messenger_proto::chat::{Message, MessageId};
use messenger_proto::file::{FileOffer, safe_name};
use messenger_proto::name::ScreenName;
use messenger_proto::time::now_ms;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Core, Done, failed, store_response};
use crate::agent::{FileSource, Note};
use crate::api::{FailureKind, Request, Response, TransferView};
use crate::files::{self, FileEnv};
use crate::network::{Network, Streams};
use crate::size::human_size;
use crate::store::{Direction, Transfer, TransferState};

impl Core {
    /// Starts serving file streams, and resumes the fetches that were
    /// accepted before.
    pub(super) async fn serve_files(&mut self, streams: Streams, network: &Network) {
        let env = Arc::new(FileEnv {
            store: self.store.clone(),
            network: network.clone(),
            session: self.directory.subscribe(),
            events: self.events.clone(),
            trust: self.trust.subscribe(),
        });
        self.file_env = Some(env.clone());
        let cancel = self.cancel.child_token();
        self.tasks.spawn(async move {
            files::serve(streams, env, cancel).await;
            Done::Nothing
        });
        match self.store.call(|s| s.transfers()).await {
            Ok(transfers) => {
                for t in transfers {
                    if t.direction == Direction::In && t.state == TransferState::Accepted {
                        self.start_fetch(t.id);
                    }
                }
            }
            Err(e) => warn!("cannot resume file transfers: {e}"),
        }
    }

    fn start_fetch(&mut self, id: MessageId) {
        let Some(env) = self.file_env.clone() else {
            return;
        };
        if self.fetches.get(&id).is_some_and(|c| !c.is_cancelled()) {
            return;
        }
        let cancel = self.cancel.child_token();
        self.fetches.insert(id, cancel.clone());
        self.tasks.spawn(async move {
            files::fetch(id, env, cancel).await;
            Done::FetchEnded(id)
        });
    }

    pub(super) fn fetch_ended(&mut self, id: MessageId) {
        self.fetches.remove(&id);
    }

    /// Where files go when no directory is given.
    fn downloads(&self) -> PathBuf {
        if let Some(dir) = &self.config.downloads {
            return dir.clone();
        }
        if let Some(dir) = directories::UserDirs::new()
            .and_then(|d| d.download_dir().map(std::path::Path::to_owned))
        {
            return dir;
        }
        match &self.home {
            Some(home) => home.dir().join("downloads"),
            None => std::env::temp_dir(),
        }
    }

    /// A verified offer came: accepted at once if its sender is a contact
    /// who may send files this large unasked.
    pub(super) async fn on_offered(&mut self, id: MessageId) {
        let Ok(Some(transfer)) = self.store.call(move |s| s.transfer(&id)).await else {
            return;
        };
        let peer = transfer.peer.clone();
        let Ok(Some(contact)) = self.store.call(move |s| s.contact(&peer)).await else {
            return;
        };
        if contact
            .auto_accept_below
            .is_some_and(|limit| transfer.offer.size <= limit)
            && transfer.state == TransferState::Offered
        {
            info!(%id, "accepting {} from {} unasked", transfer.offer.name, transfer.peer);
            let dir = self.downloads();
            let _ = self.accept(id, dir).await;
        }
    }

    async fn accept(&mut self, id: MessageId, dir: PathBuf) -> Response {
        if self.file_env.is_none() {
            return failed(
                FailureKind::NotOnline,
                "files are fetched by your client while it is online, and it is not",
            );
        }
        if let Err(refusal) = self.may_take(id, &dir).await {
            return refusal;
        }
        let updated = self
            .store
            .call(move |s| {
                s.update_transfer(&id, now_ms(), |t| {
                    let may = t.awaits_me();
                    if may {
                        t.state = TransferState::Accepted;
                        t.error = None;
                        // A resumed transfer keeps its directory: its part is there.
                        t.dir.get_or_insert(dir);
                    }
                    may
                })
            })
            .await;
        match updated {
            Ok(Some(t)) if t.state == TransferState::Accepted => {
                self.emit(crate::api::Event::Transfer(t.clone()));
                self.start_fetch(id);
                Response::Done {
                    message: format!(
                        "accepted {} ({}) from {}: saving into {}",
                        t.offer.name,
                        human_size(t.offer.size),
                        t.peer,
                        t.dir
                            .as_deref()
                            .unwrap_or(std::path::Path::new("?"))
                            .display()
                    ),
                }
            }
            Ok(Some(t)) => failed(
                FailureKind::Invalid,
                format!(
                    "offer {id} is {} ({}); only an offer to me that is not settled can be accepted",
                    t.state,
                    direction(&t)
                ),
            ),
            Ok(None) => failed(
                FailureKind::Invalid,
                format!("no file offer has the id {id}"),
            ),
            Err(e) => Response::Failed(crate::api::Failure::from(&e)),
        }
    }

    /// Whether offer `id` fits: under my size limit, and in the room left
    /// on the disk `dir` is on, minus what arrived already and what the
    /// transfers still running will need (an offer accepted unasked
    /// while a large one is being fetched must not fill the disk).
    async fn may_take(&self, id: MessageId, dir: &std::path::Path) -> Result<(), Response> {
        let Ok(transfers) = self.store.call(|s| s.transfers()).await else {
            // Whatever it is, accepting it says so.
            return Ok(());
        };
        let Some(transfer) = transfers.iter().find(|t| t.id == id) else {
            return Ok(());
        };
        let size = transfer.offer.size;
        if let Some(cap) = self.config.max_file_size
            && size > cap
        {
            return Err(failed(
                FailureKind::OverLimit,
                format!(
                    "{} is {}, over your limit of {}: raise the limit to accept it",
                    transfer.offer.name,
                    human_size(size),
                    human_size(cap)
                ),
            ));
        }
        let (needed, running) = bytes_to_come(&transfers, transfer, dir);
        if let Some(room) = room_on(dir)
            && needed.saturating_add(running) > room
        {
            let others = if running > 0 {
                format!(
                    " (besides {} still to come for the transfers running)",
                    human_size(running)
                )
            } else {
                String::new()
            };
            return Err(failed(
                FailureKind::DiskFull,
                format!(
                    "{} needs {} more{others} and the disk holding {} has {} left: free some space, or accept it into another directory (--to DIR)",
                    transfer.offer.name,
                    human_size(needed),
                    dir.display(),
                    human_size(room)
                ),
            ));
        }
        Ok(())
    }

    pub(super) async fn on_file_request(
        &mut self,
        request: Request,
        reply: oneshot::Sender<Response>,
    ) {
        match request {
            Request::FileSend { id, to, path } => self.offer_file(id, to, path, reply),
            Request::FileAccept { id, dir } => {
                let dir = dir.unwrap_or_else(|| self.downloads());
                let response = self.accept(id, dir).await;
                let _ = reply.send(response);
            }
            Request::FileDecline { id } => {
                let response = self.decline(id).await;
                let _ = reply.send(response);
            }
            Request::Files => {
                let transfers = self.store.call(|s| s.transfers()).await;
                let response = store_response(transfers, |transfers| Response::Transfers {
                    transfers: transfers.into_iter().map(transfer_view).collect(),
                });
                let _ = reply.send(response);
            }
            Request::AutoAccept { name, below } => {
                let response = self.auto_accept(name, below).await;
                let _ = reply.send(response);
            }
            _ => {}
        }
    }

    /// Hashes the file on a blocking thread; the offer is stored and sent
    /// when it is done (see [`Note::FileReady`]).
    fn offer_file(
        &mut self,
        id: MessageId,
        to: ScreenName,
        path: PathBuf,
        reply: oneshot::Sender<Response>,
    ) {
        let Some(from) = self.my_name() else {
            let _ = reply.send(failed(
                FailureKind::NoName,
                "you have no screen name yet: register one first",
            ));
            return;
        };
        let notes = self.notes.clone();
        self.tasks.spawn(async move {
            let hashed = tokio::task::spawn_blocking(move || {
                let meta = std::fs::metadata(&path)?;
                if !meta.is_file() {
                    return Err(std::io::Error::other("not a regular file"));
                }
                let (hash, size) = files::hash_file(&path)?;
                Ok((path, hash, size, files::modified(&meta)))
            })
            .await;
            let (path, hash, size, modified) = match hashed {
                Ok(Ok(hashed)) => hashed,
                Ok(Err(e)) => {
                    let _ = reply.send(failed(
                        FailureKind::Invalid,
                        format!("cannot offer that file: {e}"),
                    ));
                    return Done::Nothing;
                }
                Err(e) => {
                    let _ = reply.send(failed(FailureKind::Other, e));
                    return Done::Nothing;
                }
            };
            let name = safe_name(
                &path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            let message = Message {
                id,
                from,
                to,
                sent_at: now_ms(),
                text: format!("offers the file {name} ({})", human_size(size)),
                file: Some(FileOffer { name, size, hash }),
                invite: None,
            };
            let _ = notes
                .send(Note::FileReady {
                    message,
                    source: FileSource { path, modified },
                    reply,
                })
                .await;
            Done::Nothing
        });
    }

    async fn decline(&mut self, id: MessageId) -> Response {
        let updated = self
            .store
            .call(move |s| {
                s.update_transfer(&id, now_ms(), |t| {
                    let may = t.awaits_me();
                    if may {
                        t.state = TransferState::Declined;
                    }
                    may
                })
            })
            .await;
        match updated {
            Ok(Some(t)) if t.state == TransferState::Declined => {
                if let Some(cancel) = self.fetches.remove(&id) {
                    cancel.cancel();
                }
                if let Some(partial) = t.partial_path() {
                    let _ = std::fs::remove_file(partial);
                }
                self.emit(crate::api::Event::Transfer(t.clone()));
                if let Some(env) = self.file_env.clone() {
                    // Best effort: the sender learns it if reachable now.
                    self.tasks.spawn(async move {
                        files::tell_declined(&env, &t).await;
                        Done::Nothing
                    });
                }
                Response::Done {
                    message: format!("declined offer {id}"),
                }
            }
            Ok(Some(t)) => failed(
                FailureKind::Invalid,
                format!(
                    "offer {id} is {} ({}); only an offer to me that is not settled can be declined",
                    t.state,
                    direction(&t)
                ),
            ),
            Ok(None) => failed(
                FailureKind::Invalid,
                format!("no file offer has the id {id}"),
            ),
            Err(e) => Response::Failed(crate::api::Failure::from(&e)),
        }
    }

    async fn auto_accept(&mut self, name: ScreenName, below: Option<u64>) -> Response {
        let n = name.clone();
        let changed = self
            .store
            .call(move |s| {
                let Some(mut contact) = s.contact(&n)? else {
                    return Ok(false);
                };
                contact.auto_accept_below = below;
                s.put_contact(&contact)?;
                Ok(true)
            })
            .await;
        if let Ok(true) = changed {
            self.contacts_changed().await;
        }
        match changed {
            Ok(true) => Response::Done {
                message: match below {
                    Some(limit) => format!(
                        "files from {name} up to {} are accepted without asking",
                        human_size(limit)
                    ),
                    None => format!("files from {name} wait for you to accept them"),
                },
            },
            Ok(false) => failed(
                FailureKind::NotAContact,
                format!("{name} is not a contact: add them first"),
            ),
            Err(e) => Response::Failed(crate::api::Failure::from(&e)),
        }
    }
}

/// What accepting `transfer` into `dir` needs of the disk: its bytes not
/// here yet, and those the other transfers being fetched still need
/// (counted whatever disk they go to: erring on the side of room).
fn bytes_to_come(transfers: &[Transfer], transfer: &Transfer, dir: &std::path::Path) -> (u64, u64) {
    let still_to_come = |t: &Transfer, dir: &std::path::Path| {
        let had = std::fs::metadata(crate::store::partial_path(dir, &t.id))
            .map(|m| m.len())
            .unwrap_or(0);
        t.offer.size.saturating_sub(had)
    };
    let running = transfers
        .iter()
        .filter(|t| {
            t.id != transfer.id
                && t.direction == Direction::In
                && t.state == TransferState::Accepted
        })
        .map(|t| still_to_come(t, t.dir.as_deref().unwrap_or(dir)))
        .sum();
    (still_to_come(transfer, dir), running)
}

/// Bytes free for us on the disk holding `dir` (or its nearest existing
/// parent); `None` if it cannot be told.
fn room_on(dir: &std::path::Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let vfs = rustix::fs::statvfs(existing).ok()?;
    Some(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

fn direction(t: &Transfer) -> &'static str {
    match t.direction {
        Direction::Out => "offered by me",
        Direction::In => "offered to me",
    }
}

/// A transfer with the bytes received so far.
/// A transfer as shown, with what arrived so far.
pub(super) fn transfer_view(transfer: Transfer) -> TransferView {
    let received = match (transfer.state, transfer.direction) {
        (TransferState::Completed, _) => transfer.offer.size,
        (_, Direction::In) => transfer
            .partial_path()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0),
        (_, Direction::Out) => 0,
    };
    TransferView { transfer, received }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::file::{ContentHash, FileOffer};

    fn transfer(size: u64, state: TransferState, dir: Option<&std::path::Path>) -> Transfer {
        Transfer {
            id: MessageId::random(),
            direction: Direction::In,
            peer: ScreenName::parse("alice").unwrap(),
            offer: FileOffer {
                name: "a.bin".into(),
                size,
                hash: ContentHash([0; 32]),
            },
            state,
            path: None,
            dir: dir.map(std::path::Path::to_owned),
            modified: None,
            error: None,
            peer_id: None,
            updated_at: 1,
            completed_at: None,
            started_at: None,
        }
    }

    #[test]
    fn a_file_accepted_counts_what_the_transfers_running_still_need() {
        let dir = tempfile::tempdir().unwrap();
        let running = transfer(1_000, TransferState::Accepted, Some(dir.path()));
        // 400 of its 1,000 bytes are here already.
        std::fs::write(
            crate::store::partial_path(dir.path(), &running.id),
            [0u8; 400],
        )
        .unwrap();
        let done = transfer(5_000, TransferState::Completed, Some(dir.path()));
        let asked = transfer(300, TransferState::Offered, None);
        let all = [running, done, asked.clone()];
        assert_eq!(
            bytes_to_come(&all, &asked, dir.path()),
            (300, 600),
            "its own 300 bytes, and the 600 still to come of the one running"
        );
    }
}
