//! The directory: the rendezvous nodes, the session with the one in use,
//! the work that waits for a session, retries, fail-over to the next node
//! and reconnection after a loss.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::Multiaddr;
use messenger_proto::chat::Message;
use messenger_proto::directory::{ErrorCode, Resolution};
use messenger_proto::name::ScreenName;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::registration::{
    REACHABILITY_WAIT, RegistrationDone, advertised, ensure_relay, is_loopback, sign_record,
};
use super::{Core, Done};
use crate::agent::error::{DirectoryFailure, OnlineError, SendError};
use crate::agent::nodes::Nodes;
use crate::agent::outbox::{ResolveReply, SendReply, Unresolved};
use crate::api::{Event, Failure, Response};
use crate::directory::{DirectoryError, DirectorySession, Registered, node_peer_id};
use crate::network::{Network, Reachability};
use crate::peer::PeerInfo;
use crate::reconnect::{Backoff, Setback};

/// How often a one-off request is tried on a fresh session when the node
/// dropped the session before answering (it may under bursts).
const REQUEST_ATTEMPTS: u32 = 4;

/// The nodes, the session with the one in use, what waits for a session,
/// and when to try the node again.
pub(super) struct Directory {
    /// The rendezvous nodes, one in use.
    pub(super) nodes: Nodes,
    /// The open session, if any; delivery workers and servers follow it.
    session: watch::Sender<Option<DirectorySession>>,
    /// Counts sessions opened, so that the end of an old one is told
    /// from the end of the current one.
    generation: u64,
    /// A connect task is running.
    pub(super) connecting: bool,
    /// Work waiting for the session being opened.
    waiting: Vec<Waiting>,
    /// Where the sessions hand the node's presence pushes.
    pushes: mpsc::Sender<Resolution>,
    pub(super) push_rx: mpsc::Receiver<Resolution>,
    /// When to try the node again, while online and cut off.
    pub(super) reconnect_at: Option<Instant>,
    /// Pauses between attempts to reach the node (jittered, see
    /// [`crate::reconnect`]).
    backoff: Backoff,
}

impl Directory {
    pub(super) fn new(nodes: Nodes) -> Self {
        let (pushes, push_rx) = mpsc::channel(256);
        Self {
            nodes,
            session: watch::channel(None).0,
            generation: 0,
            connecting: false,
            waiting: Vec::new(),
            pushes,
            push_rx,
            reconnect_at: None,
            backoff: Backoff::new(),
        }
    }

    /// The open session, if it is still open.
    pub(super) fn session(&self) -> Option<DirectorySession> {
        self.session.borrow().clone().filter(|s| !s.is_closed())
    }

    pub(super) fn connected(&self) -> bool {
        self.session
            .borrow()
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    /// Follows the session (for those that open streams beside it).
    pub(super) fn subscribe(&self) -> watch::Receiver<Option<DirectorySession>> {
        self.session.subscribe()
    }

    /// Forgets the session (to close it, or because it is gone).
    pub(super) fn take_session(&mut self) -> Option<DirectorySession> {
        self.session.send_replace(None)
    }

    /// A session is open: the node answered. Returns the session's
    /// generation, to tell its end from a later one's.
    fn opened(&mut self, session: DirectorySession) -> u64 {
        self.generation += 1;
        self.session.send_replace(Some(session));
        self.reconnect_at = None;
        self.backoff.succeeded();
        self.nodes.succeeded();
        self.generation
    }

    /// The session of `generation` ended: whether it was the current one
    /// (then it is forgotten).
    fn ended(&mut self, generation: u64) -> bool {
        if generation != self.generation {
            return false;
        }
        self.session.send_replace(None);
        true
    }

    /// After losing the session while online: when to reconnect, unless a
    /// reconnection is planned or running already. Spread, since everyone
    /// the node held lost it at once.
    fn reconnect_after_loss(&mut self) -> Option<Instant> {
        if self.reconnect_at.is_some() || self.connecting {
            return None;
        }
        let at = Instant::now() + self.backoff.after_loss();
        self.reconnect_at = Some(at);
        Some(at)
    }

    /// After a failed attempt to reconnect: the pause grows with failures.
    fn reconnect_after(&mut self, setback: Setback) -> Duration {
        let pause = self.backoff.after(setback);
        self.reconnect_at = Some(Instant::now() + pause);
        pause
    }

    /// A new address of ours: a reconnection waiting out a backoff (that
    /// grew while there was no network) goes now. Whether one was waiting.
    pub(super) fn reconnect_now(&mut self) -> bool {
        if self.reconnect_at.is_none() {
            return false;
        }
        self.backoff.succeeded();
        self.reconnect_at = Some(Instant::now());
        true
    }

    /// Whether a planned reconnection is due at `now` (it is then no longer
    /// planned).
    pub(super) fn reconnect_due(&mut self, now: Instant) -> bool {
        if self.reconnect_at.is_some_and(|at| at <= now) {
            self.reconnect_at = None;
            return true;
        }
        false
    }

    fn take_waiting(&mut self) -> Vec<Waiting> {
        std::mem::take(&mut self.waiting)
    }
}

/// A request waiting for a directory session.
pub(super) struct Waiting {
    work: DirWork,
    attempt: u32,
}

/// What needs the directory.
pub(super) enum DirWork {
    Resolve {
        name: ScreenName,
        then: AfterResolve,
    },
    Register {
        name: ScreenName,
        reply: oneshot::Sender<Response>,
    },
    Release {
        name: ScreenName,
        reply: oneshot::Sender<Response>,
    },
    ContactsList {
        reply: oneshot::Sender<Response>,
    },
}

/// What to do once a name is resolved.
pub(super) enum AfterResolve {
    Whois(oneshot::Sender<Response>),
    ContactsAdd(oneshot::Sender<Response>),
    ContactsTrust(oneshot::Sender<Response>),
    Send {
        message: Message,
        reply: SendReply,
        started: Instant,
    },
    /// A delivery worker needs to know where its recipient is.
    Deliver(ResolveReply),
}

/// What a connect task brings back.
pub(super) struct Connected {
    session: DirectorySession,
    registered: Option<(Registered, Vec<Multiaddr>)>,
}

/// What the directory's tasks report.
pub(super) enum DirectoryDone {
    Connected {
        result: Result<Connected, DirectoryFailure>,
        online: bool,
        reply: Option<oneshot::Sender<Result<(), OnlineError>>>,
    },
    SessionClosed(u64),
    Resolved {
        name: ScreenName,
        result: Result<Resolution, DirectoryError>,
        then: AfterResolve,
        attempt: u32,
    },
    ContactsListed {
        found: Vec<Result<Resolution, DirectoryError>>,
        reply: oneshot::Sender<Response>,
    },
}

/// Whether the node said there is no such name.
fn is_no_such_name(e: &DirectoryFailure) -> bool {
    matches!(
        e,
        DirectoryFailure::Node { source, .. } if matches!(
            source.as_ref(),
            DirectoryError::Refused {
                code: ErrorCode::NoSuchName,
                ..
            }
        )
    )
}

/// Whether a request the node dropped unanswered may be tried again.
pub(super) fn may_retry(result: &Result<impl Sized, DirectoryError>, attempt: u32) -> bool {
    matches!(result, Err(DirectoryError::Closed)) && attempt + 1 < REQUEST_ATTEMPTS
}

impl From<DirectoryDone> for Done {
    fn from(done: DirectoryDone) -> Self {
        Done::Directory(Box::new(done))
    }
}

impl Core {
    pub(super) async fn on_directory_done(&mut self, done: DirectoryDone) {
        match done {
            DirectoryDone::Connected {
                result,
                online,
                reply,
            } => self.on_connected(result, online, reply).await,
            DirectoryDone::SessionClosed(generation) => {
                if self.directory.ended(generation)
                    && self.registration.online.is_some()
                    && self.directory.reconnect_after_loss().is_some()
                {
                    warn!("lost the connection to the rendezvous node; reconnecting");
                    self.emit(Event::Reconnecting {
                        reason: "lost the connection to the rendezvous node".into(),
                    });
                }
            }
            DirectoryDone::Resolved {
                name,
                result,
                then,
                attempt,
            } => match result {
                Err(DirectoryError::Closed) if attempt + 1 < REQUEST_ATTEMPTS => {
                    self.retry_later(DirWork::Resolve { name, then }, attempt + 1);
                }
                result => self.on_resolved(name, result, then).await,
            },
            DirectoryDone::ContactsListed { found, reply } => {
                let mut known = HashMap::new();
                for resolution in found.into_iter().flatten() {
                    if let Ok(info) = PeerInfo::from_resolution(&resolution) {
                        known.insert(info.name.clone(), info);
                    }
                }
                let response = self.list_contacts(known).await;
                let _ = reply.send(response);
            }
        }
    }

    pub(super) fn resolve_then(
        &mut self,
        name: ScreenName,
        reply: oneshot::Sender<Response>,
        then: fn(oneshot::Sender<Response>) -> AfterResolve,
    ) {
        self.with_directory(DirWork::Resolve {
            name,
            then: then(reply),
        });
    }

    /// Starts the network if it is not running yet.
    pub(super) fn ensure_network(&mut self) -> Result<Network, DirectoryFailure> {
        if let Some(network) = &self.network {
            return Ok(network.clone());
        }
        let node = self
            .directory
            .nodes
            .current()
            .cloned()
            .ok_or(DirectoryFailure::NoNode)?;
        let node_id = node_peer_id(&node).map_err(|source| DirectoryFailure::Node {
            node: node.to_string(),
            source: Box::new(source),
        })?;
        let mut config = self.network_config.clone();
        config.rendezvous = Some((node_id, node));
        config.metrics = self.metrics.clone();
        let (network, task, inbound) = Network::start(&self.identity, config)?;
        self.network_events = Some(network.events());
        self.listen_addrs = Some(network.listen_addrs());
        self.reachability = Some(network.reachability());
        self.network = Some(network.clone());
        self.network_task = Some(task);
        self.inbound = Some(inbound);
        Ok(network)
    }

    /// Runs `work` once a directory session is open, opening one if needed.
    pub(super) fn with_directory(&mut self, work: DirWork) {
        self.with_directory_attempt(Waiting { work, attempt: 0 });
    }

    pub(super) fn with_directory_attempt(&mut self, waiting: Waiting) {
        if let Some(session) = self.directory.session() {
            self.spawn_directory_work(session, waiting);
            return;
        }
        if let Err(e) = self.ensure_network() {
            return fail_work(waiting.work, &e);
        }
        self.directory.waiting.push(waiting);
        if !self.directory.connecting && self.registration.online.is_none() {
            self.connect(false, None);
        }
    }

    pub(super) fn spawn_directory_work(
        &mut self,
        session: DirectorySession,
        Waiting { work, attempt }: Waiting,
    ) {
        match work {
            DirWork::Resolve { name, then } => {
                self.tasks.spawn(async move {
                    let result = session.resolve(name.as_str()).await;
                    DirectoryDone::Resolved {
                        name,
                        result,
                        then,
                        attempt,
                    }
                    .into()
                });
            }
            DirWork::Register { name, reply } => {
                let record = self.record(&name, Vec::new());
                let visible_to = self.visible_to();
                let me = self.identity.peer_id();
                self.tasks.spawn(async move {
                    // Owning it already is success, and must not disturb a
                    // running registration of the same key.
                    let result = match session.resolve(name.as_str()).await {
                        Ok(res) if res.owner == me => Ok(Registered {
                            name: name.clone(),
                            new_claim: false,
                            expires_at: 0,
                            certificate: None,
                        }),
                        Ok(_)
                        | Err(DirectoryError::Refused {
                            code: ErrorCode::NoSuchName,
                            ..
                        }) => session.register(record, visible_to).await,
                        Err(e) => Err(e),
                    };
                    RegistrationDone::Registered {
                        name,
                        result,
                        reply,
                        attempt,
                    }
                    .into()
                });
            }
            DirWork::Release { name, reply } => {
                self.tasks.spawn(async move {
                    let result = session.release(name.as_str()).await;
                    RegistrationDone::Released {
                        name,
                        result,
                        reply,
                        attempt,
                    }
                    .into()
                });
            }
            DirWork::ContactsList { reply } => {
                let names: Vec<ScreenName> = self.trust.borrow().contact_names().cloned().collect();
                self.tasks.spawn(async move {
                    let mut found = Vec::with_capacity(names.len());
                    for name in names {
                        found.push(session.resolve(name.as_str()).await);
                    }
                    DirectoryDone::ContactsListed { found, reply }.into()
                });
            }
        }
    }

    /// Opens a session with the node in a task; when `online`, also
    /// registers and watches.
    pub(super) fn connect(
        &mut self,
        online: bool,
        reply: Option<oneshot::Sender<Result<(), OnlineError>>>,
    ) {
        let network = match self.ensure_network() {
            Ok(network) => network,
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(OnlineError::Directory(e)));
                }
                return;
            }
        };
        let Some(node) = self.directory.nodes.current().cloned() else {
            return;
        };
        self.directory.connecting = true;
        let pushes = self.directory.pushes.clone();
        let registration = self
            .registration
            .online
            .as_ref()
            .map(|o| o.name.clone())
            .filter(|_| online);
        let first_registration = self.pending_online_name(online);
        let name = registration.or(first_registration);
        let status = self.registration.status.clone();
        let visible_to = self.visible_to();
        let identity = self.identity.clone();
        let seq = self.registration.next_seq();
        let loopback_ok = is_loopback(&node);
        self.tasks.spawn(async move {
            let result = async {
                let unreachable = |source| DirectoryFailure::Node {
                    node: node.to_string(),
                    source: Box::new(source),
                };
                if let Some(name) = &name {
                    // Learn whether the node can dial us back before
                    // registering, so that only addresses that work are
                    // registered; and hold a relay slot unless reachable.
                    let mut reachability = network.reachability();
                    let _ = tokio::time::timeout(
                        REACHABILITY_WAIT,
                        reachability.wait_for(|r| *r != Reachability::Unknown),
                    )
                    .await;
                    ensure_relay(&network, &node).await;
                    let _ = name;
                }
                let session = DirectorySession::open(&network, &node, Some(pushes))
                    .await
                    .map_err(unreachable)?;
                let registered = match &name {
                    Some(name) => {
                        let addrs = advertised(&network, loopback_ok);
                        let record = sign_record(&identity, name, addrs.clone(), seq, &status);
                        let registered = session
                            .register(record, visible_to)
                            .await
                            .map_err(unreachable)?;
                        Some((registered, addrs))
                    }
                    None => None,
                };
                Ok(Connected {
                    session,
                    registered,
                })
            }
            .await;
            DirectoryDone::Connected {
                result,
                online,
                reply,
            }
            .into()
        });
    }

    /// While going online for the first time, the name to register.
    pub(super) fn pending_online_name(&self, online: bool) -> Option<ScreenName> {
        if online {
            self.config.name.clone()
        } else {
            None
        }
    }

    pub(super) fn retry_later(&mut self, work: DirWork, attempt: u32) {
        // The session is gone: a fresh one serves the retry.
        self.directory.take_session();
        self.with_directory_attempt(Waiting { work, attempt });
    }

    pub(super) async fn on_connected(
        &mut self,
        result: Result<Connected, DirectoryFailure>,
        online: bool,
        reply: Option<oneshot::Sender<Result<(), OnlineError>>>,
    ) {
        self.directory.connecting = false;
        match result {
            Ok(Connected {
                session,
                registered,
            }) => {
                let generation = self.directory.opened(session.clone());
                let watcher = session.clone();
                self.tasks.spawn(async move {
                    watcher.closed().await;
                    DirectoryDone::SessionClosed(generation).into()
                });
                self.remember_node_in_use();
                if let Some((registered, addrs)) = registered {
                    self.on_online_registered(&session, &registered, addrs, reply.is_some())
                        .await;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                for w in self.directory.take_waiting() {
                    self.spawn_directory_work(session.clone(), w);
                }
            }
            Err(e) => {
                // A store that is down refuses for now, not for good.
                let refused = matches!(
                    &e,
                    DirectoryFailure::Node { source, .. }
                        if source.code().is_some_and(|c| c != ErrorCode::Unavailable)
                );
                if !refused && self.try_next_node() {
                    info!("{e}; trying the next rendezvous node");
                    self.connect(online, reply);
                    return;
                }
                if let Some(reply) = reply {
                    // Going online failed: we are not online.
                    self.registration.online = None;
                    let failure = Failure::from(&e);
                    let _ = reply.send(Err(OnlineError::Directory(e)));
                    self.fail_waiting(&failure);
                    return;
                }
                if online && refused {
                    warn!("registration refused: {e}");
                    self.registration.online = None;
                    self.emit(Event::RegistrationRefused {
                        reason: refusal_message(&e),
                    });
                    return;
                }
                if online {
                    let setback = setback_of(&e);
                    let pause = self.directory.reconnect_after(setback);
                    debug!(?setback, ?pause, "reconnect failed: {e}");
                    return;
                }
                let failure = Failure::from(&e);
                self.fail_waiting(&failure);
            }
        }
    }

    /// The node in use could not be reached: the next one is in use now
    /// (the network follows). Whether it is one not tried since the last
    /// success, to try at once.
    pub(super) fn try_next_node(&mut self) -> bool {
        let fresh = self.directory.nodes.failed();
        if self.directory.nodes.all().len() > 1
            && let (Some(network), Some(addr)) = (&self.network, self.directory.nodes.current())
            && let Ok(node) = node_peer_id(addr)
        {
            let (network, addr) = (network.clone(), addr.clone());
            self.tasks.spawn(async move {
                network.use_node(node, addr).await;
                Done::Nothing
            });
        }
        fresh
    }

    /// The remembered nodes start with the one that answered last, so
    /// that a command run on its own next time tries it first. Only the
    /// order of the nodes remembered changes, never the list.
    pub(super) fn remember_node_in_use(&mut self) {
        let order = self.directory.nodes.in_use_first();
        if self.config.rendezvous == order || !self.directory.nodes.are(&self.config.rendezvous) {
            return;
        }
        self.config.rendezvous = order;
        if let Err(e) = self.save_config() {
            warn!("cannot remember which rendezvous node answered: {e}");
        }
    }

    pub(super) fn fail_waiting(&mut self, failure: &Failure) {
        for w in self.directory.take_waiting() {
            fail_work_with(w.work, failure.clone());
        }
    }

    pub(super) async fn on_resolved(
        &mut self,
        name: ScreenName,
        result: Result<Resolution, DirectoryError>,
        then: AfterResolve,
    ) {
        let info = match result {
            Ok(resolution) => match PeerInfo::from_resolution(&resolution) {
                Ok(info) => Ok(info),
                Err(e) => Err(DirectoryFailure::BadResolution(e)),
            },
            Err(e) => Err(self.node_failure(e)),
        };
        if let Ok(info) = &info {
            self.learn(info.clone());
        }
        match then {
            AfterResolve::Deliver(reply) => {
                let _ = reply.send(info.map_err(|e| match &e {
                    e if is_no_such_name(e) => Unresolved::NoSuchName,
                    e => Unresolved::Other(e.to_string()),
                }));
            }
            AfterResolve::Whois(reply) => {
                let response = match info {
                    Ok(peer) => {
                        let path = match &self.network {
                            Some(network) => network.path(peer.peer_id).await,
                            None => None,
                        };
                        Response::Peer { peer, path }
                    }
                    Err(e) => Response::Failed(Failure::from(&e)),
                };
                let _ = reply.send(response);
            }
            AfterResolve::ContactsAdd(reply) => {
                let response = match info {
                    Ok(info) => self.add_contact(info, false).await,
                    Err(e) => Response::Failed(Failure::from(&e)),
                };
                let _ = reply.send(response);
            }
            AfterResolve::ContactsTrust(reply) => {
                let response = match info {
                    Ok(info) => self.add_contact(info, true).await,
                    Err(e) => Response::Failed(Failure::from(&e)),
                };
                let _ = reply.send(response);
            }
            AfterResolve::Send {
                message,
                reply,
                started,
            } => match info {
                Ok(_) => {
                    self.queue_message(message, reply, true, started.elapsed(), None)
                        .await
                }
                Err(e) if is_no_such_name(&e) => {
                    self.refuse_send(reply, SendError::NoSuchName(name))
                }
                Err(DirectoryFailure::BadResolution(e)) => {
                    self.refuse_send(reply, SendError::BadResolution(e))
                }
                Err(e) => {
                    // The node is out of reach: it waits in the outbox.
                    debug!("cannot resolve {name} now ({e}); queueing");
                    self.queue_message(message, reply, true, Duration::ZERO, None)
                        .await;
                }
            },
        }
    }

    pub(super) fn node_failure(&self, source: DirectoryError) -> DirectoryFailure {
        DirectoryFailure::Node {
            node: self
                .directory
                .nodes
                .current()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            source: Box::new(source),
        }
    }

    pub(super) fn directory_failed(&self, e: DirectoryError) -> Response {
        Response::Failed(Failure::from(&self.node_failure(e)))
    }
}

pub(super) fn refusal_message(e: &DirectoryFailure) -> String {
    match e {
        DirectoryFailure::Node { source, .. } => match source.as_ref() {
            DirectoryError::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

pub(super) fn fail_work(work: DirWork, e: &DirectoryFailure) {
    fail_work_with(work, Failure::from(e));
}

pub(super) fn fail_work_with(work: DirWork, failure: Failure) {
    let reply = match work {
        DirWork::Resolve { then, .. } => match then {
            AfterResolve::Whois(r)
            | AfterResolve::ContactsAdd(r)
            | AfterResolve::ContactsTrust(r) => r,
            AfterResolve::Send { reply, .. } => reply,
            AfterResolve::Deliver(reply) => {
                let _ = reply.send(Err(Unresolved::Other(failure.message)));
                return;
            }
        },
        DirWork::Register { reply, .. }
        | DirWork::Release { reply, .. }
        | DirWork::ContactsList { reply } => reply,
    };
    let _ = reply.send(Response::Failed(failure));
}

/// How a failure to reach the node bears on the pause before the next try.
pub(super) fn setback_of(failure: &DirectoryFailure) -> Setback {
    match failure {
        DirectoryFailure::Node { source, .. } => match source.as_ref() {
            DirectoryError::Unreachable(crate::network::NetworkError::Dial { setback, .. }) => {
                *setback
            }
            DirectoryError::Unreachable(_) | DirectoryError::Timeout(_) => Setback::Unreachable,
            // It answered: refused, rate-limited, its store down, or the
            // connection closed at once (over a limit).
            _ => Setback::TurnedAway,
        },
        _ => Setback::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconnect::{LOST_SPREAD, UNREACHABLE_MAX};

    fn directory() -> Directory {
        let node: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("an address");
        Directory::new(Nodes::new(vec![node]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_session_is_tried_again_within_the_spread_and_only_once() {
        let mut directory = directory();
        assert!(directory.ended(0), "the current (first) generation ended");
        let at = directory
            .reconnect_after_loss()
            .expect("a reconnection planned");
        assert!(
            at <= Instant::now() + LOST_SPREAD,
            "spread over at most {LOST_SPREAD:?}"
        );
        assert_eq!(
            directory.reconnect_after_loss(),
            None,
            "a second loss notice plans nothing more"
        );
        assert!(!directory.reconnect_due(Instant::now() - Duration::from_millis(1)));
        tokio::time::advance(LOST_SPREAD).await;
        assert!(directory.reconnect_due(Instant::now()));
        assert!(!directory.reconnect_due(Instant::now()), "due once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_an_older_session_is_not_the_end_of_the_current_one() {
        let mut directory = directory();
        assert!(!directory.ended(7), "no session of generation 7 is current");
        assert_eq!(directory.reconnect_at, None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_grow_the_pause_up_to_its_ceiling_and_a_new_address_cuts_it_short() {
        let mut directory = directory();
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            longest = longest.max(directory.reconnect_after(Setback::Unreachable));
        }
        assert!(longest <= UNREACHABLE_MAX, "{longest:?} over the ceiling");
        assert!(
            directory.reconnect_at.expect("planned") > Instant::now(),
            "waiting out a pause"
        );
        assert!(directory.reconnect_now(), "a planned reconnection goes now");
        assert!(directory.reconnect_due(Instant::now()));
        assert!(
            !directory.reconnect_now(),
            "nothing planned: a new address starts nothing by itself"
        );
    }

    #[test]
    fn only_a_dropped_session_is_retried_and_only_so_often() {
        let closed: Result<(), DirectoryError> = Err(DirectoryError::Closed);
        assert!(may_retry(&closed, 0));
        assert!(!may_retry(&closed, REQUEST_ATTEMPTS - 1));
        let refused: Result<(), DirectoryError> = Err(DirectoryError::Refused {
            code: ErrorCode::NoSuchName,
            message: "no such name".into(),
        });
        assert!(!may_retry(&refused, 0));
        assert!(!may_retry(&Ok(()), 0));
    }
}
