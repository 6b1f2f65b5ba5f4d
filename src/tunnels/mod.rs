//! Tunnels over the direct connection (docs/protocol.md §6.7): serving
//! the ports I invited contacts to, and pipes to whoever waits with
//! `messenger pipe --listen`; and opening tunnels to others.
//!
//! One task ([`serve`]) owns the serving side's state: the tunnels open
//! (bounded in all and per peer), the pipe listeners waiting, and which
//! tunnels an invitation's withdrawal must close. Each tunnel's bytes are
//! copied by a task of its own, through the streams' flow control, so a
//! tunnel holds two small buffers whatever goes through it.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use messenger_proto::accept::Incoming;
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use messenger_proto::tunnel::{self, Asked, TunnelAnswer, TunnelRefusal, TunnelRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::direct::{self, DirectError};
use crate::directory::DirectorySession;
use crate::events::Event;
use crate::events::EventSender;
use crate::network::{Network, Streams};
use crate::store::Invitation;
use crate::trust::Trust;

mod log;

pub use log::{Target, TunnelLog, TunnelState};

/// Tunnels served at once, in all and to one peer.
pub const MAX_TUNNELS: usize = 64;
pub const MAX_TUNNELS_PER_PEER: usize = 16;

/// How long the opening side has to send its request, and the serving
/// side to answer it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to an invited port may take (it is on 127.0.0.1:
/// anything slower is not listening).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open tunnel: its stream, and who is at the other end.
#[derive(Debug)]
pub struct Tunnel {
    /// The stream; raw bytes both ways.
    pub stream: libp2p::Stream,
    /// The other side's name.
    pub peer: ScreenName,
    /// Their key.
    pub peer_id: PeerId,
}

/// Why a tunnel could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TunnelError {
    /// No direct stream to them.
    #[error(transparent)]
    Direct(#[from] DirectError),
    /// They refused it.
    #[error("{name} refused the {target}: {code}")]
    Refused {
        /// Who.
        name: ScreenName,
        /// What was asked.
        target: String,
        /// Why.
        code: TunnelRefusal,
    },
    /// The stream failed, or they answered something else.
    #[error("the tunnel to {name} failed: {reason}")]
    Broken {
        /// Who.
        name: ScreenName,
        /// What happened.
        reason: String,
    },
}

/// Opens a tunnel to `name` asking `request`: on a direct connection, to
/// the key pinned for them if they are a contact. For a
/// [`TunnelRequest::Check`] the stream it returns is already finished.
pub async fn open(
    network: &Network,
    session: Option<DirectorySession>,
    trust: &Trust,
    name: &ScreenName,
    request: TunnelRequest,
) -> Result<Tunnel, TunnelError> {
    let opened = direct::open(
        network,
        session,
        name,
        trust.pinned(name),
        tunnel::PROTOCOL,
        |reason| info!("{reason}"),
    )
    .await?;
    let mut stream = opened.stream;
    let broken = |reason: String| TunnelError::Broken {
        name: name.clone(),
        reason,
    };
    let answer: Option<TunnelAnswer> = tokio::time::timeout(REQUEST_TIMEOUT, async {
        codec::write_frame(&mut stream, &request, tunnel::MAX_FRAME).await?;
        codec::read_frame(&mut stream, tunnel::MAX_FRAME).await
    })
    .await
    .map_err(|_| broken("no answer in time".into()))?
    .map_err(|e| broken(e.to_string()))?;
    let expected = match request {
        TunnelRequest::Check { .. } => TunnelAnswer::Allowed,
        TunnelRequest::Connect { .. } | TunnelRequest::Pipe => TunnelAnswer::Open,
    };
    match answer {
        Some(answer) if answer == expected => Ok(Tunnel {
            stream,
            peer: name.clone(),
            peer_id: opened.peer_id,
        }),
        Some(TunnelAnswer::Refused { code }) => Err(TunnelError::Refused {
            name: name.clone(),
            target: match request {
                TunnelRequest::Connect { port } | TunnelRequest::Check { port } => {
                    format!("connection to port {port}")
                }
                TunnelRequest::Pipe => "pipe".into(),
            },
            code,
        }),
        Some(other) => Err(broken(format!("answered {other:?} to {request:?}"))),
        None => Err(broken("closed before answering".into())),
    }
}

/// Bytes a tunnel copies at a time, each way: large enough that a bulk
/// transfer fills the muxer's frames (tokio's default of 8 KiB cuts
/// throughput by half), small enough that a tunnel holds little.
const SPLICE_BUFFER: usize = 64 * 1024;

/// Copies bytes both ways between `a` and `b` until both directions have
/// ended (each end's close is passed on as a half-close). Returns the
/// bytes from `a` to `b` and from `b` to `a`.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUFFER, SPLICE_BUFFER).await
}

/// Commands to the serving task.
#[derive(Debug)]
pub(crate) enum ServeCommand {
    /// Hand the next pipe from `from` (any contact when `None`) to
    /// `deliver`; given up when its receiver is dropped.
    ListenPipe {
        from: Option<ScreenName>,
        deliver: oneshot::Sender<Tunnel>,
    },
}

/// What serving needs.
pub(crate) struct ServeEnv {
    /// My invitations, as the core last saved them.
    pub invitations: watch::Receiver<Arc<Vec<Invitation>>>,
    /// Contacts' pinned keys (who may pipe to me).
    pub trust: watch::Receiver<Arc<Trust>>,
    pub events: EventSender,
}

/// The serving side's answer to a request from `peer`.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Connect to this port, for this contact.
    Connect {
        port: u16,
        name: ScreenName,
    },
    /// Say it would be allowed.
    Allow {
        name: ScreenName,
    },
    /// Hand it to a pipe listener.
    Pipe {
        name: ScreenName,
    },
    Refuse(TunnelRefusal),
}

/// Which of my invitations lets `peer` reach `port`.
fn invited(
    invitations: &[Invitation],
    peer: PeerId,
    port: u16,
) -> Result<ScreenName, TunnelRefusal> {
    let theirs: Vec<&Invitation> = invitations.iter().filter(|i| i.key == peer).collect();
    match theirs.iter().find(|i| i.port == port) {
        Some(i) if i.open() => Ok(i.name.clone()),
        Some(_) => Err(TunnelRefusal::Revoked),
        None if theirs.iter().any(|i| i.open()) => Err(TunnelRefusal::PortNotInvited),
        None => Err(TunnelRefusal::NotInvited),
    }
}

/// Which of my invitations lets `peer` reach `port` now: invited, and
/// still the key pinned for that contact, who is not blocked. (Removing,
/// re-pinning or blocking a contact also withdraws the invitations; this
/// holds even for one made before that was so.)
fn welcome(
    invitations: &[Invitation],
    trust: &Trust,
    peer: PeerId,
    port: u16,
) -> Result<ScreenName, TunnelRefusal> {
    let name = invited(invitations, peer, port)?;
    if trust.contact_of(&peer).as_ref() == Some(&name) {
        Ok(name)
    } else {
        Err(TunnelRefusal::NotInvited)
    }
}

fn decide(
    request: Option<TunnelRequest>,
    peer: PeerId,
    invitations: &[Invitation],
    trust: &Trust,
) -> Decision {
    match request {
        None => Decision::Refuse(TunnelRefusal::Unsupported),
        Some(TunnelRequest::Connect { port }) => match welcome(invitations, trust, peer, port) {
            Ok(name) => Decision::Connect { port, name },
            Err(code) => Decision::Refuse(code),
        },
        Some(TunnelRequest::Check { port }) => match welcome(invitations, trust, peer, port) {
            Ok(name) => Decision::Allow { name },
            Err(code) => Decision::Refuse(code),
        },
        Some(TunnelRequest::Pipe) => match trust.contact_of(&peer) {
            Some(name) => Decision::Pipe { name },
            None => Decision::Refuse(TunnelRefusal::NotInvited),
        },
    }
}

/// A pipe listener waiting.
struct PipeWaiter {
    from: Option<ScreenName>,
    deliver: oneshot::Sender<Tunnel>,
}

/// What a task of the serving side brings back.
enum Done {
    /// A request was read (or not).
    Read {
        incoming: Box<Incoming>,
        request: Result<Option<TunnelRequest>, String>,
    },
    /// Tunnel `id` ended.
    Ended {
        id: u64,
        /// Its last log line, told once it no longer counts as open.
        closed: Option<Box<TunnelLog>>,
    },
    Nothing,
}

/// A tunnel being served, as the serving task knows it.
struct Served {
    peer: PeerId,
    port: u16,
    cancel: CancellationToken,
}

/// Serves inbound tunnel streams until `cancel` fires.
pub(crate) async fn serve(
    mut streams: Streams,
    env: ServeEnv,
    mut commands: mpsc::Receiver<ServeCommand>,
    cancel: CancellationToken,
) {
    let mut server = Server {
        env,
        cancel,
        tasks: JoinSet::new(),
        served: HashMap::new(),
        waiters: Vec::new(),
        next_id: 0,
    };
    loop {
        tokio::select! {
            () = server.cancel.cancelled() => break,
            incoming = streams.next() => {
                let Some(incoming) = incoming else { break };
                server.tasks.spawn(read_request(incoming));
            }
            Some(command) = commands.recv() => server.on_command(command),
            Ok(()) = server.env.invitations.changed() => server.close_unwelcome(),
            Ok(()) = server.env.trust.changed() => server.close_unwelcome(),
            Some(done) = server.tasks.join_next(), if !server.tasks.is_empty() => match done {
                Ok(Done::Read { incoming, request }) => server.on_request(*incoming, request),
                Ok(Done::Ended { id, closed }) => {
                    server.served.remove(&id);
                    if let Some(log) = closed {
                        tell(&server.env.events, *log);
                    }
                }
                Ok(Done::Nothing) => {}
                Err(e) => warn!("a tunnel task failed: {e}"),
            },
        }
    }
    server.tasks.shutdown().await;
}

/// The serving task's state.
struct Server {
    env: ServeEnv,
    cancel: CancellationToken,
    tasks: JoinSet<Done>,
    /// The tunnels to ports open now, by id.
    served: HashMap<u64, Served>,
    waiters: Vec<PipeWaiter>,
    next_id: u64,
}

impl Server {
    fn on_command(&mut self, command: ServeCommand) {
        match command {
            ServeCommand::ListenPipe { from, deliver } => {
                self.waiters.retain(|w| !w.deliver.is_closed());
                self.waiters.push(PipeWaiter { from, deliver });
            }
        }
    }

    /// A withdrawn invitation, or a contact removed, re-pinned or
    /// blocked, closes the tunnels it let in.
    fn close_unwelcome(&mut self) {
        let invitations = self.env.invitations.borrow_and_update().clone();
        let trust = self.env.trust.borrow_and_update().clone();
        for tunnel in self.served.values() {
            if welcome(&invitations, &trust, tunnel.peer, tunnel.port).is_err() {
                tunnel.cancel.cancel();
            }
        }
    }

    fn refuse(&mut self, incoming: Incoming, log: TunnelLog, code: TunnelRefusal) {
        tell(
            &self.env.events,
            TunnelLog {
                state: TunnelState::Refused { code },
                ..log
            },
        );
        self.tasks
            .spawn(answer_then_close(incoming, TunnelAnswer::Refused { code }));
    }

    fn on_request(&mut self, incoming: Incoming, request: Result<Option<TunnelRequest>, String>) {
        let peer = incoming.peer;
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                info!(%peer, "tunnel stream without a request: {e}");
                return;
            }
        };
        let decision = decide(
            request,
            peer,
            &self.env.invitations.borrow(),
            &self.env.trust.borrow(),
        );
        self.next_id += 1;
        let target = match request {
            Some(TunnelRequest::Connect { port } | TunnelRequest::Check { port }) => {
                Target::Port(port)
            }
            Some(TunnelRequest::Pipe) | None => Target::Pipe,
        };
        let log = TunnelLog {
            id: self.next_id,
            peer: self.env.trust.borrow().contact_of(&peer),
            peer_id: peer,
            target,
            state: TunnelState::Opened,
        };
        match decision {
            Decision::Refuse(code) => self.refuse(incoming, log, code),
            Decision::Allow { .. } => {
                self.tasks
                    .spawn(answer_then_close(incoming, TunnelAnswer::Allowed));
            }
            Decision::Connect { port, name } => {
                let log = TunnelLog {
                    peer: Some(name),
                    ..log
                };
                let of_peer = self.served.values().filter(|t| t.peer == peer).count();
                if self.served.len() >= MAX_TUNNELS || of_peer >= MAX_TUNNELS_PER_PEER {
                    return self.refuse(incoming, log, TunnelRefusal::Busy);
                }
                let stop = self.cancel.child_token();
                let id = log.id;
                self.served.insert(
                    id,
                    Served {
                        peer,
                        port,
                        cancel: stop.clone(),
                    },
                );
                let events = self.env.events.clone();
                self.tasks.spawn(async move {
                    let closed = serve_port(incoming, port, log, events, stop).await;
                    Done::Ended {
                        id,
                        closed: closed.map(Box::new),
                    }
                });
            }
            Decision::Pipe { name } => {
                self.waiters.retain(|w| !w.deliver.is_closed());
                let Some(at) = self
                    .waiters
                    .iter()
                    .position(|w| w.from.as_ref().is_none_or(|f| *f == name))
                else {
                    return self.refuse(incoming, log, TunnelRefusal::NoListener);
                };
                let waiter = self.waiters.remove(at);
                tell(&self.env.events, log);
                self.tasks.spawn(async move {
                    let mut stream = incoming.stream;
                    if answer(&mut stream, TunnelAnswer::Open).await.is_ok() {
                        let _ = waiter.deliver.send(Tunnel {
                            stream,
                            peer: name,
                            peer_id: peer,
                        });
                    }
                    Done::Nothing
                });
            }
        }
    }
}

fn tell(events: &EventSender, log: TunnelLog) {
    match &log.state {
        TunnelState::Refused { code } => info!(
            peer = %log.peer_id,
            "refused a tunnel to {} from {}: {code}",
            log.target,
            log.peer.as_ref().map_or("a stranger", |n| n.as_str())
        ),
        TunnelState::Opened => info!(
            peer = %log.peer_id,
            "tunnel {} from {} to {} opened",
            log.id,
            log.peer.as_ref().map_or("?", |n| n.as_str()),
            log.target
        ),
        TunnelState::Closed {
            sent,
            received,
            millis,
            error,
        } => info!(
            peer = %log.peer_id,
            "tunnel {} closed after {millis} ms: {sent} bytes sent, {received} received{}",
            log.id,
            error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
        ),
    }
    let _ = events.try_send(Event::Tunnel(log));
}

async fn read_request(incoming: Incoming) -> Done {
    let mut stream = incoming.stream;
    let read = tokio::time::timeout(REQUEST_TIMEOUT, tunnel::read_request(&mut stream)).await;
    let request = match read {
        Err(_) => Err("no request in time".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("closed before a request".to_owned()),
        Ok(Ok(Some(Asked::Known(request)))) => Ok(Some(request)),
        Ok(Ok(Some(Asked::Unknown))) => Ok(None),
    };
    Done::Read {
        incoming: Box::new(Incoming { stream, ..incoming }),
        request,
    }
}

async fn answer(stream: &mut libp2p::Stream, answer: TunnelAnswer) -> Result<(), String> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        codec::write_frame(stream, &answer, tunnel::MAX_FRAME),
    )
    .await
    .map_err(|_| "the peer does not read".to_owned())?
    .map_err(|e| e.to_string())
}

async fn answer_then_close(incoming: Incoming, reply: TunnelAnswer) -> Done {
    let mut stream = incoming.stream;
    if answer(&mut stream, reply).await.is_ok() {
        let _ = stream.close().await;
    }
    Done::Nothing
}

/// Connects `incoming` to `127.0.0.1:port` and copies until both sides
/// closed (or the invitation is withdrawn: `stop`). Returns the log line
/// of its end, if it opened.
async fn serve_port(
    incoming: Incoming,
    port: u16,
    opened: TunnelLog,
    events: EventSender,
    stop: CancellationToken,
) -> Option<TunnelLog> {
    let mut stream = incoming.stream;
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
    {
        Ok(Ok(tcp)) => tcp,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            warn!("cannot connect a tunnel to 127.0.0.1:{port}: {why}");
            let code = TunnelRefusal::Unreachable;
            tell(
                &events,
                TunnelLog {
                    state: TunnelState::Refused { code },
                    ..opened
                },
            );
            let _ = answer(&mut stream, TunnelAnswer::Refused { code }).await;
            let _ = stream.close().await;
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    if let Err(e) = answer(&mut stream, TunnelAnswer::Open).await {
        info!("tunnel {} ended before it opened: {e}", opened.id);
        return None;
    }
    tell(&events, opened.clone());
    let started = Instant::now();
    let mut tcp = tcp;
    let mut stream = stream.compat();
    let copied = tokio::select! {
        copied = splice(&mut tcp, &mut stream) => copied.map_err(|e| e.to_string()),
        () = stop.cancelled() => Err("closed: the invitation was withdrawn, or the client stops".into()),
    };
    let (sent, received, error) = match copied {
        Ok((to_peer, from_peer)) => (to_peer, from_peer, None),
        Err(e) => (0, 0, Some(e)),
    };
    Some(TunnelLog {
        state: TunnelState::Closed {
            sent,
            received,
            millis: started.elapsed().as_millis() as u64,
            error,
        },
        ..opened
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Contact;

    fn invitation(name: &str, key: PeerId, port: u16, open: bool) -> Invitation {
        Invitation {
            name: ScreenName::parse(name).unwrap(),
            key,
            port,
            created_at: 1,
            revoked_at: (!open).then_some(2),
        }
    }

    #[test]
    fn only_the_invited_key_reaches_only_the_invited_port() {
        let (bob, carol, eve) = (PeerId::random(), PeerId::random(), PeerId::random());
        let invitations = [
            invitation("bob", bob, 8080, true),
            invitation("bob", bob, 22, false),
            invitation("carol", carol, 3389, false),
        ];
        let bob_name = ScreenName::parse("bob").unwrap();
        assert_eq!(invited(&invitations, bob, 8080), Ok(bob_name));
        assert_eq!(invited(&invitations, bob, 22), Err(TunnelRefusal::Revoked));
        assert_eq!(
            invited(&invitations, bob, 9),
            Err(TunnelRefusal::PortNotInvited)
        );
        assert_eq!(
            invited(&invitations, carol, 3389),
            Err(TunnelRefusal::Revoked)
        );
        assert_eq!(
            invited(&invitations, carol, 80),
            Err(TunnelRefusal::NotInvited),
            "only withdrawn invitations: as if never invited, for other ports"
        );
        assert_eq!(
            invited(&invitations, eve, 8080),
            Err(TunnelRefusal::NotInvited),
            "a name is nothing: the key decides"
        );
    }

    #[test]
    fn an_invitation_counts_only_while_its_key_is_the_pinned_contacts() {
        let (bob, new_bob) = (PeerId::random(), PeerId::random());
        let name = ScreenName::parse("bob").unwrap();
        let invitations = [invitation("bob", bob, 8080, true)];
        let pinned_to = |key| {
            vec![Contact {
                name: name.clone(),
                pinned: key,
                added_at: 0,
                key_changed_to: None,
                auto_accept_below: None,
            }]
        };
        let connect = Some(TunnelRequest::Connect { port: 8080 });
        let refused = Decision::Refuse(TunnelRefusal::NotInvited);
        let trusted = Trust::new(&pinned_to(bob), &[]);
        assert_eq!(
            decide(connect, bob, &invitations, &trusted),
            Decision::Connect {
                port: 8080,
                name: name.clone()
            }
        );
        for (trust, what) in [
            (Trust::new(&pinned_to(new_bob), &[]), "re-pinned"),
            (Trust::new(&[], &[]), "removed"),
            (
                Trust::new(&pinned_to(bob), std::slice::from_ref(&name)),
                "blocked",
            ),
        ] {
            assert_eq!(
                decide(connect, bob, &invitations, &trust),
                refused,
                "{what}"
            );
            assert_eq!(
                decide(
                    Some(TunnelRequest::Check { port: 8080 }),
                    bob,
                    &invitations,
                    &trust
                ),
                refused,
                "{what}"
            );
        }
    }

    #[test]
    fn pipes_come_from_contacts_and_unknown_requests_are_unsupported() {
        let (bob, eve) = (PeerId::random(), PeerId::random());
        let name = ScreenName::parse("bob").unwrap();
        let trust = Trust::new(
            &[Contact {
                name: name.clone(),
                pinned: bob,
                added_at: 0,
                key_changed_to: None,
                auto_accept_below: None,
            }],
            &[],
        );
        assert_eq!(
            decide(Some(TunnelRequest::Pipe), bob, &[], &trust),
            Decision::Pipe { name }
        );
        assert_eq!(
            decide(Some(TunnelRequest::Pipe), eve, &[], &trust),
            Decision::Refuse(TunnelRefusal::NotInvited)
        );
        assert_eq!(
            decide(None, bob, &[], &trust),
            Decision::Refuse(TunnelRefusal::Unsupported)
        );
        assert_eq!(
            decide(Some(TunnelRequest::Check { port: 1 }), bob, &[], &trust),
            Decision::Refuse(TunnelRefusal::NotInvited)
        );
    }
}
