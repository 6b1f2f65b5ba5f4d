//! The control socket: while `messenger online` (or `chat`) runs, other
//! commands on the same home go through it, so there is one identity
//! online, one writer of the store, and one presence.
//!
//! `<home>/control.sock` is a Unix socket, owner-only. A client connects,
//! writes one [`ControlRequest`] as a JSON line, and reads one
//! [`ControlReply`] as a JSON line.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::store::StoredMessage;

/// The largest request or reply line accepted (a message is at most 64 KiB;
/// history replies are bounded by their limit).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// What a command asks of the client that owns the home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Send (or queue) a message.
    Send {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// Change my status.
    Status {
        /// The status.
        status: Status,
        /// Its text.
        text: String,
    },
    /// Add a contact, pinning its current key.
    ContactsAdd {
        /// The name.
        name: String,
    },
    /// Remove a contact.
    ContactsRemove {
        /// The name.
        name: String,
    },
    /// Accept a contact's new key.
    ContactsTrust {
        /// The name.
        name: String,
    },
    /// List contacts with presence.
    ContactsList,
    /// Refuse messages from a name.
    Block {
        /// The name.
        name: String,
    },
    /// Accept messages from a name again.
    Unblock {
        /// The name.
        name: String,
    },
    /// A conversation.
    History {
        /// The other party.
        name: String,
        /// How many of the latest messages.
        limit: usize,
    },
    /// What is waiting to be delivered.
    Outbox,
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    /// The recipient acknowledged it.
    Delivered {
        /// The message as stored.
        message: StoredMessage,
        /// The recipient's peer id.
        peer_id: PeerId,
        /// Whether the connection that carried it was direct or relayed.
        path: Option<crate::network::Path>,
        /// Resolving the name, in ms (0 when a link was open).
        resolve_ms: f64,
        /// Dialling and opening the stream, in ms (0 when reused).
        dial_ms: f64,
        /// Writing until the acknowledgement, in ms.
        deliver_ms: f64,
    },
    /// Stored in the outbox; delivered when the recipient is reachable.
    Queued {
        /// The message as stored.
        message: StoredMessage,
        /// Why it was not delivered now.
        reason: String,
    },
}

/// A contact as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    /// The name.
    pub name: ScreenName,
    /// The pinned key.
    pub pinned: PeerId,
    /// A different key the node reported, until trusted.
    pub key_changed_to: Option<PeerId>,
    /// Presence, if known (the node was reachable).
    pub presence: Option<Presence>,
    /// Status text while online.
    pub status_text: String,
    /// Last seen (ms since epoch).
    pub last_seen: Option<u64>,
    /// Whether the name is also blocked.
    pub blocked: bool,
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// A send's outcome.
    Sent(Box<SendOutcome>),
    /// Done; a sentence saying what.
    Done {
        /// What was done.
        message: String,
    },
    /// Contacts.
    Contacts {
        /// Every contact.
        contacts: Vec<ContactView>,
    },
    /// Messages (history or outbox), oldest first.
    Messages {
        /// The messages.
        messages: Vec<StoredMessage>,
    },
    /// It failed.
    Error {
        /// The exit status the command should end with.
        exit_code: u8,
        /// What went wrong.
        message: String,
    },
}

/// The socket path in a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// Asks the running client of `home`, if there is one. `Ok(None)` when no
/// client runs (no socket, or a stale one left by a crash).
pub async fn call(home: &Path, request: &ControlRequest) -> io::Result<Option<ControlReply>> {
    let path = socket_path(home);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    let mut reply = String::new();
    BufReader::new(read)
        .take(MAX_LINE as u64)
        .read_line(&mut reply)
        .await?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the running client closed the control socket without answering",
        ));
    }
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(io::Error::other)
}

/// Binds the control socket, replacing a stale one. Fails if another
/// client answers on it.
pub async fn bind(home: &Path) -> io::Result<UnixListener> {
    let path = socket_path(home);
    if path.exists() {
        match UnixStream::connect(&path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another messenger client is already running on this home ({})",
                        path.display()
                    ),
                ));
            }
            Err(_) => {
                debug!(path = %path.display(), "removing a stale control socket");
                std::fs::remove_file(&path)?;
            }
        }
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests with `handle` until the listener fails.
pub async fn serve<F, Fut>(listener: UnixListener, handle: F)
where
    F: Fn(ControlRequest) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ControlReply> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("control socket failed: {e}");
                return;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let reply = match BufReader::new(read)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await
            {
                Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(request) => handle(request).await,
                    Err(e) => ControlReply::Error {
                        exit_code: 2,
                        message: format!("bad control request: {e}"),
                    },
                },
                Err(e) => ControlReply::Error {
                    exit_code: 1,
                    message: format!("cannot read the control request: {e}"),
                },
            };
            if let Ok(mut bytes) = serde_json::to_vec(&reply) {
                bytes.push(b'\n');
                let _ = write.write_all(&bytes).await;
            }
        });
    }
}
