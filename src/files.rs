//! Files over the direct connection (docs/protocol.md §6.6): serving the
//! files I offered to the key that acknowledged each offer, and fetching
//! the ones I accepted, from where the partial file stopped, checking the
//! whole content against the offered hash before it gets its real name.
//!
//! Memory stays bounded whatever the size: the bytes pass through one
//! buffer of [`CHUNK`] on each side, and the stream's own flow control
//! (yamux or QUIC) holds the sender back while the recipient writes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use messenger_proto::accept::Incoming;
use messenger_proto::chat::MessageId;
use messenger_proto::codec;
use messenger_proto::file::{
    self, ContentHash, FileAnswer, FileRefusal, FileRequest, FileVerdict, safe_name,
};
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::direct::{self, DirectError};
use crate::directory::DirectorySession;
use crate::events::Event;
use crate::events::EventSender;
use crate::network::{Network, Streams};
use crate::store::{
    Direction, MessageState, StoreError, StoreHandle, Transfer, TransferState, partial_path,
};
use crate::trust::Trust;

/// Bytes read and written at a time.
const CHUNK: usize = 256 * 1024;

/// Chunks received that may wait to be written: what a transfer holds in
/// memory on the receiving side is about `WRITE_AHEAD` × [`CHUNK`].
const WRITE_AHEAD: usize = 8;

/// How long a peer has to send its request, or its verdict after the last
/// byte (hashing a large file takes a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const VERDICT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a read may stall in the middle of a transfer.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Between attempts of a fetch whose sender is unreachable.
const FETCH_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often progress is told.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The BLAKE3 hash of a file, read in chunks (blocking: run it off the
/// runtime's workers).
pub fn hash_file(path: &Path) -> std::io::Result<(ContentHash, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((ContentHash(*hasher.finalize().as_bytes()), size))
}

/// A file's modification time, in ns since the epoch.
pub fn modified(meta: &std::fs::Metadata) -> Option<u64> {
    meta.modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
}

/// What serving and fetching need.
pub(crate) struct FileEnv {
    pub store: StoreHandle,
    pub network: Network,
    pub session: watch::Receiver<Option<DirectorySession>>,
    pub events: EventSender,
    /// The pins and blocks in force: a blocked name, or a contact's old
    /// key, is served nothing.
    pub trust: watch::Receiver<Arc<Trust>>,
}

impl FileEnv {
    async fn update(
        &self,
        id: MessageId,
        change: impl FnOnce(&mut Transfer) -> bool + Send + 'static,
    ) -> Result<Option<Transfer>, StoreError> {
        let updated = self
            .store
            .call(move |s| s.update_transfer(&id, now_ms(), change))
            .await?;
        if let Some(t) = &updated {
            let _ = self.events.try_send(Event::Transfer(t.clone()));
        }
        Ok(updated)
    }
}

// ---- serving what I offered ----

/// Serves inbound file streams, one task each, until `cancel` fires.
pub(crate) async fn serve(mut streams: Streams, env: Arc<FileEnv>, cancel: CancellationToken) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            incoming = streams.next() => match incoming {
                Some(incoming) => {
                    let env = env.clone();
                    tasks.spawn(async move {
                        let peer = incoming.peer;
                        if let Err(e) = serve_one(incoming, &env).await {
                            info!(%peer, "file stream ended: {e}");
                        }
                    });
                }
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

async fn serve_one(incoming: Incoming, env: &FileEnv) -> Result<(), String> {
    let Incoming {
        peer,
        mut stream,
        slot: _slot,
        ..
    } = incoming;
    let request: FileRequest = tokio::time::timeout(
        REQUEST_TIMEOUT,
        codec::read_frame(&mut stream, file::MAX_FRAME),
    )
    .await
    .map_err(|_| "no request in time".to_owned())?
    .map_err(|e| e.to_string())?
    .ok_or("closed before a request")?;
    let (id, get) = match request {
        FileRequest::Get { id, offset } => (id, Some(offset)),
        FileRequest::Decline { id } => (id, None),
    };
    let transfer = match offered_to(env, id, peer).await {
        Ok(t) => t,
        // A decline gets no answer, whatever became of the offer.
        Err(code) if get.is_none() => {
            return Err(format!("ignored a decline of {id}: {code}"));
        }
        Err(code) => {
            refuse(&mut stream, code).await;
            return Err(format!("refused a request for {id}: {code}"));
        }
    };
    let Some(offset) = get else {
        info!(%id, %peer, "{} declined {}", transfer.peer, transfer.offer.name);
        env.update(id, |t| {
            t.state = TransferState::Declined;
            true
        })
        .await
        .map_err(|e| e.to_string())?;
        return Ok(());
    };
    let size = transfer.offer.size;
    let opened = transfer.path.as_deref().map(|path| -> std::io::Result<_> {
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        Ok((file, meta))
    });
    let mut source = match opened {
        Some(Ok((file, meta))) if meta.len() == size && modified(&meta) == transfer.modified => {
            file
        }
        Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
            warn!(%id, "cannot read the file offered: {e}");
            refuse(&mut stream, FileRefusal::Unavailable).await;
            return Err(format!("cannot read the file: {e}"));
        }
        _ => {
            refuse(&mut stream, FileRefusal::Changed).await;
            let reason = "the file changed or went away since it was offered";
            env.update(id, move |t| {
                t.state = TransferState::Failed;
                t.error = Some(reason.into());
                true
            })
            .await
            .map_err(|e| e.to_string())?;
            return Err(reason.into());
        }
    };
    if offset > size {
        refuse(&mut stream, FileRefusal::BadOffset).await;
        return Err(format!("asked from {offset}, past the end ({size})"));
    }
    codec::write_frame(
        &mut stream,
        &FileAnswer::Sending { offset, size },
        file::MAX_FRAME,
    )
    .await
    .map_err(|e| e.to_string())?;
    source
        .seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    info!(%id, %peer, offset, size, "sending {}", transfer.offer.name);
    let mut buf = vec![0u8; CHUNK];
    let mut sent = offset;
    let mut told = tokio::time::Instant::now();
    while sent < size {
        let want = CHUNK.min((size - sent) as usize);
        // A local file read: short, and blocking only briefly.
        let n = source.read(&mut buf[..want]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the file got shorter while it was sent".into());
        }
        tokio::time::timeout(STALL_TIMEOUT, stream.write_all(&buf[..n]))
            .await
            .map_err(|_| "the recipient stopped reading".to_owned())?
            .map_err(|e| e.to_string())?;
        sent += n as u64;
        if told.elapsed() >= PROGRESS_EVERY {
            told = tokio::time::Instant::now();
            let _ = env.events.try_send(Event::Progress {
                id,
                done: sent,
                size,
            });
        }
    }
    stream.flush().await.map_err(|e| e.to_string())?;
    let verdict: Option<FileVerdict> = tokio::time::timeout(
        VERDICT_TIMEOUT,
        codec::read_frame(&mut stream, file::MAX_FRAME),
    )
    .await
    .map_err(|_| "no verdict in time".to_owned())?
    .map_err(|e| e.to_string())?;
    let _ = stream.close().await;
    match verdict {
        Some(FileVerdict::Verified) => {
            info!(%id, %peer, "{} received {} whole", transfer.peer, transfer.offer.name);
            env.update(id, |t| {
                t.state = TransferState::Completed;
                t.completed_at = Some(now_ms());
                true
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        Some(FileVerdict::Mismatch) => {
            Err("the recipient found content that does not match the offer".into())
        }
        None => Err("closed before its verdict".into()),
    }
}

/// Tells the peer why it is not served (it may be gone already: the
/// stream ends either way).
async fn refuse(stream: &mut libp2p::Stream, code: FileRefusal) {
    let _ = codec::write_frame(stream, &FileAnswer::Refused { code }, file::MAX_FRAME).await;
}

/// The transfer of offer `id`, if `peer` may fetch (or decline) it: mine,
/// its offer acknowledged by that very key, not settled.
async fn offered_to(env: &FileEnv, id: MessageId, peer: PeerId) -> Result<Transfer, FileRefusal> {
    let found = env
        .store
        .call(move |s| Ok((s.transfer(&id)?, s.message(&id)?)))
        .await;
    let (transfer, message) = match found {
        Ok((Some(t), Some(m))) => (t, m),
        Ok(_) => return Err(FileRefusal::NoSuchOffer),
        Err(_) => return Err(FileRefusal::Unavailable),
    };
    let acknowledged_by_peer =
        message.state == MessageState::Delivered && message.peer_id == Some(peer);
    if transfer.direction != Direction::Out || !acknowledged_by_peer {
        return Err(FileRefusal::NoSuchOffer);
    }
    // Blocked since, or a contact now pinned to another key: withdrawn.
    if env.trust.borrow().refuse(&transfer.peer, &peer).is_some() {
        return Err(FileRefusal::NoSuchOffer);
    }
    match transfer.state {
        TransferState::Completed | TransferState::Declined => Err(FileRefusal::Settled),
        // Failed on my side: the file changed, or the offer was withdrawn.
        TransferState::Failed => Err(FileRefusal::NoSuchOffer),
        TransferState::Offered | TransferState::Accepted => Ok(transfer),
    }
}

// ---- fetching what I accepted ----

/// Why one attempt at a fetch stopped.
#[derive(Debug)]
enum Stop {
    /// Try again later.
    Retry(String),
    /// Nothing more to do: completed, or failed for good.
    Settled,
}

/// Fetches the accepted transfer `id` until it is settled or `cancel`
/// fires, trying again (with a backoff) while the sender is unreachable.
pub(crate) async fn fetch(id: MessageId, env: Arc<FileEnv>, cancel: CancellationToken) {
    let mut backoff = FETCH_BACKOFF_FIRST;
    loop {
        let stop = tokio::select! {
            () = cancel.cancelled() => return,
            stop = fetch_once(id, &env) => stop,
        };
        match stop {
            Stop::Settled => return,
            Stop::Retry(reason) => {
                info!(%id, "fetch paused: {reason}; again in {backoff:?}");
                let _ = env.events.try_send(Event::TransferWaiting {
                    id,
                    reason: reason.clone(),
                });
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
            }
        }
    }
}

/// Marks a fetch failed for good (or until accepted again), with `reason`.
async fn fail(env: &FileEnv, id: MessageId, reason: String) -> Stop {
    warn!(%id, "transfer failed: {reason}");
    let _ = env
        .update(id, move |t| {
            t.state = TransferState::Failed;
            t.error = Some(reason);
            true
        })
        .await;
    Stop::Settled
}

async fn fetch_once(id: MessageId, env: &FileEnv) -> Stop {
    let transfer = match env.store.call(move |s| s.transfer(&id)).await {
        Ok(Some(t)) if t.direction == Direction::In && t.state == TransferState::Accepted => t,
        Ok(_) => return Stop::Settled,
        Err(e) => return Stop::Retry(e.to_string()),
    };
    let (Some(dir), Some(sender)) = (transfer.dir.clone(), transfer.peer_id) else {
        return fail(env, id, "accepted without a directory or a sender".into()).await;
    };
    let size = transfer.offer.size;
    let partial = partial_path(&dir, &id);
    // What we have: the partial file, rehashed (its length is the truth
    // after any crash).
    let have = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || open_partial(&partial, size)).await
    };
    let (mut out, mut hasher, offset) = match have {
        Ok(Ok(have)) => have,
        Ok(Err(e)) => return fail(env, id, disk_error(&dir, &e)).await,
        Err(e) => return Stop::Retry(e.to_string()),
    };
    let mut stream = match open_to(env, &transfer, sender).await {
        Ok(stream) => stream,
        Err(stop) => return stop,
    };
    let request = FileRequest::Get { id, offset };
    if let Err(e) = codec::write_frame(&mut stream, &request, file::MAX_FRAME).await {
        return Stop::Retry(format!("lost the connection to {}: {e}", transfer.peer));
    }
    let answer: Option<FileAnswer> = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        codec::read_frame(&mut stream, file::MAX_FRAME),
    )
    .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Stop::Retry(format!("{} answered badly: {e}", transfer.peer)),
        Err(_) => return Stop::Retry(format!("{} did not answer in time", transfer.peer)),
    };
    match answer {
        Some(FileAnswer::Sending { offset: o, size: s }) if o == offset && s == size => {}
        Some(FileAnswer::Sending { .. }) => {
            return Stop::Retry(format!("{} offered other bytes than asked", transfer.peer));
        }
        Some(FileAnswer::Refused {
            code: FileRefusal::Unavailable,
        }) => return Stop::Retry(FileRefusal::Unavailable.to_string()),
        Some(FileAnswer::Refused { code }) => {
            return fail(env, id, code.to_string()).await;
        }
        None => return Stop::Retry(format!("{} closed the stream", transfer.peer)),
    }
    if offset == 0 || transfer.started_at.is_none() {
        let _ = env
            .update(id, |t| {
                t.started_at.get_or_insert(now_ms());
                true
            })
            .await;
    }
    info!(%id, offset, size, "receiving {}", transfer.offer.name);
    let _ = env.events.try_send(Event::Receiving { id, offset, size });
    // Writing and hashing run on a thread of their own, a few chunks
    // behind the network: the stream is read while the disk writes.
    let (chunks, mut to_write) = mpsc::channel::<Vec<u8>>(WRITE_AHEAD);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<blake3::Hasher> {
        while let Some(chunk) = to_write.blocking_recv() {
            out.write_all(&chunk)?;
            hasher.update(&chunk);
        }
        out.sync_all()?;
        Ok(hasher)
    });
    let mut got = offset;
    let mut told = tokio::time::Instant::now();
    let received: Result<(), String> = async {
        while got < size {
            let want = CHUNK.min((size - got) as usize);
            let mut buf = vec![0u8; want];
            let n = match tokio::time::timeout(STALL_TIMEOUT, stream.read(&mut buf)).await {
                Ok(Ok(0)) => return Err(format!("{} stopped sending", transfer.peer)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("lost the connection: {e}")),
                Err(_) => return Err(format!("{} stalled", transfer.peer)),
            };
            buf.truncate(n);
            if chunks.send(buf).await.is_err() {
                // The writer stopped: its error says why.
                return Ok(());
            }
            got += n as u64;
            if told.elapsed() >= PROGRESS_EVERY {
                told = tokio::time::Instant::now();
                let _ = env.events.try_send(Event::Progress {
                    id,
                    done: got,
                    size,
                });
            }
        }
        Ok(())
    }
    .await;
    // Everything read is written before anything else happens to the
    // partial file (a retry reopens it).
    drop(chunks);
    let hasher = match writer.await {
        Ok(Ok(hasher)) => hasher,
        // The partial file stays for a later accept to resume.
        Ok(Err(e)) => return fail(env, id, disk_error(&dir, &e)).await,
        Err(e) => return Stop::Retry(e.to_string()),
    };
    if let Err(reason) = received {
        return Stop::Retry(reason);
    }
    let matches = ContentHash(*hasher.finalize().as_bytes()) == transfer.offer.hash;
    let verdict = if matches {
        FileVerdict::Verified
    } else {
        FileVerdict::Mismatch
    };
    let _ = codec::write_frame(&mut stream, &verdict, file::MAX_FRAME).await;
    let _ = stream.close().await;
    if !matches {
        let _ = std::fs::remove_file(&partial);
        return fail(
            env,
            id,
            format!(
                "the content {} sent does not match the hash it offered; nothing was saved",
                transfer.peer
            ),
        )
        .await;
    }
    let name = safe_name(&transfer.offer.name);
    let saved = tokio::task::spawn_blocking(move || save(&partial, &dir, &name)).await;
    let saved = match saved {
        Ok(Ok(path)) => path,
        Ok(Err(e)) => return fail(env, id, format!("cannot save the file: {e}")).await,
        Err(e) => return Stop::Retry(e.to_string()),
    };
    info!(%id, path = %saved.display(), "received {} whole", transfer.offer.name);
    let _ = env
        .update(id, move |t| {
            t.state = TransferState::Completed;
            t.path = Some(saved);
            t.error = None;
            t.completed_at = Some(now_ms());
            true
        })
        .await;
    Stop::Settled
}

/// Opens a file stream to the sender of `transfer`, on a direct
/// connection (a relayed one waits for hole punching).
async fn open_to(
    env: &FileEnv,
    transfer: &Transfer,
    sender: PeerId,
) -> Result<libp2p::Stream, Stop> {
    let session = env.session.borrow().clone();
    let id = transfer.id;
    let opened = direct::open(
        &env.network,
        session,
        &transfer.peer,
        Some(sender),
        file::PROTOCOL,
        |reason| {
            let _ = env.events.try_send(Event::TransferWaiting { id, reason });
        },
    )
    .await;
    match opened {
        Ok(opened) => Ok(opened.stream),
        Err(DirectError::OtherKey { name, .. }) => Err(Stop::Retry(format!(
            "{name} has another key now than the one that offered the file"
        ))),
        Err(DirectError::NotDirect { name, reason }) => Err(Stop::Retry(format!(
            "the transfer needs a direct connection to {name}, and {reason}"
        ))),
        Err(e) => Err(Stop::Retry(e.to_string())),
    }
}

/// Tells the sender of `transfer` that it was declined, if it can be
/// reached now (it keeps offering otherwise, which costs it nothing).
pub(crate) async fn tell_declined(env: &FileEnv, transfer: &Transfer) {
    let Some(sender) = transfer.peer_id else {
        return;
    };
    let told = async {
        let mut stream = open_to(env, transfer, sender)
            .await
            .map_err(|s| format!("{s:?}"))?;
        codec::write_frame(
            &mut stream,
            &FileRequest::Decline { id: transfer.id },
            file::MAX_FRAME,
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = stream.close().await;
        Ok::<_, String>(())
    };
    if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, told)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    {
        info!(id = %transfer.id, "could not tell {} of the decline: {e}", transfer.peer);
    }
}

/// Opens (or starts) the partial file and hashes what it holds: the file,
/// the hash so far, and its length. Longer than the offer: started over.
///
/// The downloads directory may be shared with other local users (or be
/// writable by them), who could put a link where the partial file goes
/// and have us truncate or write into a file of their choosing. So the
/// file is opened without following a symbolic link, and used only if it
/// is a plain file of ours with no other name.
fn open_partial(path: &Path, size: u64) -> std::io::Result<(std::fs::File, blake3::Hasher, u64)> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                not_ours(path, "a symbolic link")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(not_ours(path, "not a plain file"));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(not_ours(path, "owned by another user"));
    }
    if meta.nlink() != 1 {
        return Err(not_ours(
            path,
            "another name of an existing file (a hard link)",
        ));
    }
    let mut len = meta.len();
    if len > size {
        file.set_len(0)?;
        len = 0;
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    file.seek(SeekFrom::Start(0))?;
    while read < len {
        let want = CHUNK.min((len - read) as usize);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    file.seek(SeekFrom::Start(read))?;
    Ok((file, hasher, read))
}

/// Refuses a partial file that something else was put in place of.
fn not_ours(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "{} is {what}, not the partial file this client started: not touching it \
             (remove it, or choose another downloads directory)",
            path.display()
        ),
    )
}

/// Gives the checked partial file its name in `dir`, never replacing a
/// file: `name`, else `name (1)`, `name (2)`… before the extension.
fn save(partial: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        // A hard link fails if the name exists: no window in which an
        // existing file could be replaced.
        match std::fs::hard_link(partial, &candidate) {
            Ok(()) => {
                std::fs::remove_file(partial)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "every name like {name} is taken in {}",
        dir.display()
    )))
}

/// A failure writing into `dir`, as the user needs to read it.
fn disk_error(dir: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        format!(
            "no space left on the device holding {}; the part received is kept: free some space and accept the file again to resume",
            dir.display()
        )
    } else {
        format!("cannot write into {}: {e}", dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_never_replaces_another() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "mine").unwrap();
        std::fs::write(dir.path().join("a (1).txt"), "mine too").unwrap();
        let partial = dir.path().join(".x.part");
        std::fs::write(&partial, "theirs").unwrap();
        let saved = save(&partial, dir.path(), "a.txt").unwrap();
        assert_eq!(saved, dir.path().join("a (2).txt"));
        assert_eq!(std::fs::read(&saved).unwrap(), b"theirs");
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"mine");
        assert!(!partial.exists());
    }

    #[test]
    fn a_partial_file_put_there_by_someone_else_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("precious.txt");
        std::fs::write(&victim, "keep me").unwrap();
        let partial = dir.path().join(".s.part");
        std::os::unix::fs::symlink(&victim, &partial).unwrap();
        let err = open_partial(&partial, 10).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::fs::remove_file(&partial).unwrap();
        std::fs::hard_link(&victim, &partial).unwrap();
        let err = open_partial(&partial, 3).unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
        std::fs::remove_file(&partial).unwrap();
        let fifo = dir.path().join(".f.part");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = open_partial(&fifo, 3).unwrap_err();
        assert!(err.to_string().contains("not a plain file"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn a_partial_file_is_rehashed_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".p.part");
        std::fs::write(&path, vec![7u8; 200_000]).unwrap();
        let (mut file, mut hasher, len) = open_partial(&path, 300_000).unwrap();
        assert_eq!(len, 200_000);
        file.write_all(&[7u8; 100_000]).unwrap();
        hasher.update(&[7u8; 100_000]);
        let (whole, size) = hash_file(&path).unwrap();
        assert_eq!(size, 300_000);
        assert_eq!(ContentHash(*hasher.finalize().as_bytes()), whole);
        // Longer than offered: started over.
        let (_, _, len) = open_partial(&path, 10).unwrap();
        assert_eq!(len, 0);
    }
}
