//! The control socket: while the home's client runs (`messenger online`,
//! `chat` or `ui`), other commands on the same home go through it, so that
//! one process owns the home's identity, presence and store.
//!
//! `<home>/control.sock` is a Unix socket, owner-only. A command connects,
//! writes one [`Request`] as a JSON line, and reads one [`Response`] as a
//! JSON line (docs/protocol.md §7). A tunnel or a pipe keeps its
//! connection: after the answer that it is open, the socket carries its
//! bytes ([`attach`]); so does a `follow`, which carries events.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use messenger_proto::name::ScreenName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::agent::Agent;
use crate::api::{Failure, FailureKind, Request, Response};
use crate::events::Follower;
use crate::tunnels::{self, Tunnel};

/// The largest request or reply line accepted (a message is at most 64 KiB;
/// history replies are bounded by their limit).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Why asking the running client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The client accepted the connection and then closed it without an
    /// answer (at any point: while the request was written, or after): it
    /// died (or was killed) meanwhile. What the request did is unknown to
    /// the caller until it looks.
    #[error("the running client closed the control socket without answering (did it stop?)")]
    NoAnswer,
    /// The socket failed otherwise.
    #[error("cannot reach the running client: {0}")]
    Io(#[from] io::Error),
    /// The answer is not a response.
    #[error("the running client answered something unreadable: {0}")]
    Unreadable(String),
}

/// The socket path in a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// A connection to the running client of `home`; `Ok(None)` when no
/// client runs (no socket, a stale one left by a crash, or a client that
/// died while we connected: nothing was asked of it yet).
async fn connect(home: &Path) -> io::Result<Option<UnixStream>> {
    match UnixStream::connect(socket_path(home)).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether a client runs on `home` (it answers on the socket).
pub async fn is_running(home: &Path) -> bool {
    matches!(connect(home).await, Ok(Some(_)))
}

/// Asks the running client of `home`, if there is one. `Ok(None)` when no
/// client runs (no socket, or a stale one left by a crash).
pub async fn call(home: &Path, request: &Request) -> Result<Option<Response>, CallError> {
    let Some(stream) = connect(home).await? else {
        return Ok(None);
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    // From here on, a failure means no answer: the client may have taken
    // the request (whole or not) before it went.
    let mut reply = String::new();
    let exchanged = async {
        write.write_all(&line).await?;
        write.shutdown().await?;
        BufReader::new(read)
            .take(MAX_LINE as u64)
            .read_line(&mut reply)
            .await
    };
    match exchanged.await {
        Ok(_) if reply.is_empty() => return Err(CallError::NoAnswer),
        Ok(_) => {}
        Err(e) => {
            debug!("the control socket failed before an answer: {e}");
            return Err(CallError::NoAnswer);
        }
    }
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(|e| CallError::Unreadable(e.to_string()))
}

/// Binds the control socket, replacing a stale one. Fails if another
/// client answers on it.
///
/// The socket is private from its first instant: it is bound inside a
/// directory of its own that only this user may enter, made owner-only
/// there, and only then moved into place. (Bound in place, it would be
/// reachable with the umask's mode until its mode was changed.)
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
    let staging = home.join(format!(".control-{}", std::process::id()));
    // Left by a crash of a process that had our pid.
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let inside = staging.join("control.sock");
        let listener = UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, &path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Whether the other end of a control connection runs as this user: the
/// socket is owner-only, but a file's mode is one barrier and the kernel's
/// word on who connected is another (a home on a file system that ignores
/// modes, a socket moved or opened up by mistake).
fn same_user(stream: &UnixStream) -> Result<(), String> {
    let ours = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == ours => Ok(()),
        Ok(cred) => Err(format!(
            "a process of user id {} connected to the control socket (only user id {ours} may)",
            cred.uid()
        )),
        Err(e) => Err(format!(
            "cannot tell who connected to the control socket: {e}"
        )),
    }
}

/// Serves requests through `agent` until `cancel` fires (or the listener
/// fails); every connection's task ends with it.
pub async fn serve(listener: UnixListener, agent: Agent, cancel: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!("control socket failed: {e}");
                        break;
                    }
                };
                if let Err(why) = same_user(&stream) {
                    warn!("refused: {why}");
                    continue;
                }
                let agent = agent.clone();
                connections.spawn(answer(stream, agent));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = cancel.cancelled() => break,
        }
    }
    connections.shutdown().await;
}

async fn answer(stream: UnixStream, agent: Agent) {
    // The reader is kept whole: after a tunnel's answer the same socket
    // carries its bytes, some of which it may have buffered already.
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    let read = (&mut stream)
        .take(MAX_LINE as u64)
        .read_line(&mut line)
        .await;
    let request = match read {
        Ok(_) => serde_json::from_str::<Request>(&line)
            .map_err(|e| Failure::new(FailureKind::Invalid, format!("bad control request: {e}"))),
        Err(e) => Err(Failure::new(
            FailureKind::Other,
            format!("cannot read the control request: {e}"),
        )),
    };
    let reply = match request {
        Ok(Request::Tunnel { to, request }) => match agent.open_tunnel(&to, request).await {
            Ok(tunnel) => return carry(stream, tunnel).await,
            Err(failure) => Response::Failed(failure),
        },
        Ok(Request::PipeListen { from }) => match agent.listen_pipe(from.as_ref()).await {
            Ok(pipe) => return listen(stream, from, pipe).await,
            Err(failure) => Response::Failed(failure),
        },
        Ok(Request::Follow { run, after }) => match agent.follow(&run, after) {
            Ok(follower) => return follow(stream, follower).await,
            Err(missed) => Response::Failed(Failure::new(FailureKind::EventsMissed, missed)),
        },
        Ok(request) => agent.call(request).await,
        Err(failure) => Response::Failed(failure),
    };
    let _ = write_line(&mut stream, &reply).await;
}

async fn write_line(stream: &mut BufReader<UnixStream>, reply: &Response) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.get_mut().write_all(&bytes).await
}

/// Says the tunnel is open, then copies its bytes to and from the socket.
async fn carry(mut socket: BufReader<UnixStream>, tunnel: Tunnel) {
    let opened = Response::TunnelOpened {
        peer: tunnel.peer.clone(),
        peer_id: tunnel.peer_id,
    };
    if write_line(&mut socket, &opened).await.is_err() {
        return;
    }
    let mut stream = tunnel.stream.compat();
    if let Err(e) = tunnels::splice(&mut socket, &mut stream).await {
        debug!("a tunnel through the control socket ended: {e}");
    }
}

/// Says it waits, waits for the pipe (or for the caller to go), then
/// carries it.
async fn listen(
    mut socket: BufReader<UnixStream>,
    from: Option<ScreenName>,
    pipe: oneshot::Receiver<Tunnel>,
) {
    let waiting = Response::Done {
        message: match from {
            Some(from) => format!("waiting for a pipe from {from}"),
            None => "waiting for a pipe from a contact".into(),
        },
    };
    if write_line(&mut socket, &waiting).await.is_err() {
        return;
    }
    // The caller sends nothing before the pipe opens: a read that ends
    // means it went away.
    let mut probe = [0u8; 1];
    let tunnel = tokio::select! {
        tunnel = pipe => match tunnel {
            Ok(tunnel) => tunnel,
            Err(_) => return,
        },
        _ = socket.get_mut().read(&mut probe) => return,
    };
    carry(socket, tunnel).await;
}

/// Writes each event as it happens, one [`Response::Event`] per line,
/// until the caller goes, or falls so far behind that events it has not
/// read are gone (it is told so, and asks for a snapshot again).
async fn follow(mut socket: BufReader<UnixStream>, mut follower: Follower) {
    let mut probe = [0u8; 1];
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            // The caller sends nothing more: a read that ends means it
            // went away.
            _ = socket.get_mut().read(&mut probe) => return,
        };
        let line = match next {
            Ok((seq, event)) => Response::Event { seq, event },
            Err(missed) => {
                let failure = Failure::new(FailureKind::EventsMissed, missed);
                let _ = write_line(&mut socket, &Response::Failed(failure)).await;
                return;
            }
        };
        if write_line(&mut socket, &line).await.is_err() {
            return;
        }
    }
}

/// A connection to the running client that carries a tunnel: its answers
/// first, one JSON line each, then the tunnel's bytes.
#[derive(Debug)]
pub struct Attached {
    socket: BufReader<UnixStream>,
}

impl Attached {
    /// The next answer.
    pub async fn response(&mut self) -> Result<Response, CallError> {
        let mut line = String::new();
        (&mut self.socket)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if line.is_empty() {
            return Err(CallError::NoAnswer);
        }
        serde_json::from_str(&line).map_err(|e| CallError::Unreadable(e.to_string()))
    }

    /// The socket, to carry the tunnel's bytes once it is open.
    pub fn into_stream(self) -> BufReader<UnixStream> {
        self.socket
    }
}

/// Sends `request` (a [`Request::Tunnel`], [`Request::PipeListen`] or
/// [`Request::Follow`]) to the running client of `home`, keeping the
/// connection for its bytes or events.
/// `Ok(None)` when no client runs.
pub async fn attach(home: &Path, request: &Request) -> Result<Option<Attached>, CallError> {
    let Some(mut stream) = connect(home).await? else {
        return Ok(None);
    };
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(Some(Attached {
        socket: BufReader::new(stream),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn the_socket_is_private_and_serves_only_its_user() {
        let home = tempfile::tempdir().unwrap();
        let listener = bind(home.path()).await.unwrap();
        let meta = std::fs::metadata(socket_path(home.path())).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(home.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["control.sock"], "the staging directory is gone");
        // Bound twice: the first one answers, so the second is refused.
        assert!(bind(home.path()).await.is_err());
        let (probe, _) = listener.accept().await.unwrap();
        drop(probe);

        let _own = UnixStream::connect(socket_path(home.path())).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(same_user(&accepted), Ok(()));

        // Another user, if this test may become one: a thread of ours
        // takes another user id (per thread: the raw system call), and
        // connects through a socket opened up by mistake.
        if !rustix::process::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            // Past the test harness's capture, so that the skip shows.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "\n!!!!! SKIPPED control::tests: connecting as another user needs root !!!!!"
            );
            return;
        }
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = socket_path(home.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let stranger = std::thread::spawn(move || {
            rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).unwrap();
            std::os::unix::net::UnixStream::connect(path).unwrap()
        })
        .join()
        .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let refused = same_user(&accepted).unwrap_err();
        assert!(refused.contains("user id 65534"), "{refused}");
        drop(stranger);
    }
}
