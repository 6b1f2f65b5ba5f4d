//! The core: the one task that owns the client's state.
//!
//! It holds the directory session, our registration and certificate, what
//! the node told us of others (the presence cache), the pins and blocks,
//! the delivery workers, and the network. Everything that waits on the
//! network or the node runs in a sub-task of its own (kept in one
//! `JoinSet`), which reports back here, so the core always answers at
//! once; the store is reached through its own thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::chat::{self, Message, MessageId};
use messenger_proto::directory::{ErrorCode, MAX_VISIBLE_TO, MAX_WATCH_PER_REQUEST, Resolution};
use messenger_proto::identity::verifying_key_of;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Status, check_status_text};
use messenger_proto::rate::Rate;
use messenger_proto::record::{MAX_ADDRS, Registration, without_peer_suffix};
use messenger_proto::signed::MESSAGE_CONTEXT;
use messenger_proto::time::now_ms;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::certificates::Certificates;
use super::error::{DirectoryFailure, OnlineError, SendError, SetStatusError};
use super::nodes::Nodes;
use super::outbox::{Mode, SendReply, Worker, WorkerEnv, WorkerMsg};
use super::presence::Presence;
use super::sink::StoreSink;
use super::{Command, FileSource, Note, ShutdownReport};
use crate::files::FileEnv;
use crate::trust::Trust;

mod files;
mod tunnels;
mod views;
use crate::api::{Event, Failure, FailureKind, Request, Response, SendOutcome};
use crate::chat::{Inbox, Signal};
use crate::directory::{DirectoryError, DirectorySession, Registered, node_peer_id};
use crate::events::EventSender;
use crate::home::{Config, Home};
use crate::metrics::ClientMetrics;
use crate::network::{
    Inbound, Network, NetworkConfig, NetworkEvent, NetworkTask, Path, Reachability, is_relayed,
};
use crate::peer::PeerInfo;
use crate::reconnect::{Backoff, Setback};
use crate::store::{Contact, MessageState, RequestLimits, StoreHandle, StoreThread};

/// How long a registration record is valid; the online client renews it
/// well before.
pub const RECORD_TTL: Duration = Duration::from_secs(600);

/// How often the registration is renewed (sooner if the certificate would
/// expire first).
const RENEW_EVERY: Duration = Duration::from_secs(180);

/// How long going online waits for the node's reachability verdict before
/// registering. A reachable client gets it in milliseconds; behind NAT the
/// verdict takes seconds (the node's dial-back must time out), so such a
/// client registers its relayed address meanwhile, then narrows down.
const REACHABILITY_WAIT: Duration = Duration::from_millis(1500);

/// How long a relay reservation may take.
const RELAY_WAIT: Duration = Duration::from_secs(5);

/// How often a one-off request is tried on a fresh session when the node
/// dropped the session before answering (it may under bursts).
const REQUEST_ATTEMPTS: u32 = 4;

/// How soon a renewal the node could not store (its store is down) is
/// tried again.
const RENEW_WHILE_UNAVAILABLE: Duration = Duration::from_secs(5);

/// How long shutdown waits for the tasks to end by themselves.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How the core was started.
pub(super) struct CoreConfig {
    pub identity: Identity,
    pub home: Option<Home>,
    pub config: Config,
    pub rendezvous: Vec<Multiaddr>,
    pub store: StoreHandle,
    pub store_thread: StoreThread,
    pub events: EventSender,
    pub network: NetworkConfig,
    pub message_rate: Rate,
    /// What senders not accepted yet may store.
    pub message_requests: RequestLimits,
    pub metrics: Option<Arc<ClientMetrics>>,
    pub trust: Trust,
    pub invitations: Vec<crate::store::Invitation>,
}

/// A request waiting for a directory session.
struct Waiting {
    work: DirWork,
    attempt: u32,
}

/// What needs the directory.
enum DirWork {
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
enum AfterResolve {
    Whois(oneshot::Sender<Response>),
    ContactsAdd(oneshot::Sender<Response>),
    ContactsTrust(oneshot::Sender<Response>),
    Send {
        message: Message,
        reply: SendReply,
        started: Instant,
    },
}

/// We are online: what the registration needs.
struct Online {
    name: ScreenName,
    /// The addresses in our last registration.
    registered: Vec<Multiaddr>,
    renew_at: Instant,
}

/// What a connect task brings back.
struct Connected {
    session: DirectorySession,
    registered: Option<(Registered, Vec<Multiaddr>)>,
}

/// A sub-task's result.
enum Done {
    Nothing,
    /// A fetch task ended (settled, or cancelled).
    FetchEnded(MessageId),
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
    Registered {
        name: ScreenName,
        result: Result<Registered, DirectoryError>,
        reply: oneshot::Sender<Response>,
        attempt: u32,
    },
    Released {
        name: ScreenName,
        result: Result<ScreenName, DirectoryError>,
        reply: oneshot::Sender<Response>,
        attempt: u32,
    },
    Renewed {
        result: Result<(Registered, Vec<Multiaddr>), DirectoryError>,
        /// A request waiting for this registration, and its answer.
        reply: Option<(oneshot::Sender<Response>, Response)>,
        announce: bool,
    },
    ContactsListed {
        found: Vec<Result<Resolution, DirectoryError>>,
        reply: oneshot::Sender<Response>,
    },
}

/// Our status and text.
#[derive(Debug, Clone)]
struct OwnStatus {
    status: Status,
    text: String,
}

pub(super) struct Core {
    identity: Identity,
    home: Option<Home>,
    config: Config,
    /// The rendezvous nodes, one in use.
    nodes: Nodes,
    store: StoreHandle,
    store_thread: Option<StoreThread>,
    events: EventSender,
    network_config: NetworkConfig,
    message_rate: Rate,
    message_requests: RequestLimits,
    metrics: Option<Arc<ClientMetrics>>,

    network: Option<Network>,
    network_task: Option<NetworkTask>,
    inbound: Option<Inbound>,
    network_events: Option<broadcast::Receiver<NetworkEvent>>,
    listen_addrs: Option<watch::Receiver<Vec<Multiaddr>>>,
    /// Our listen addresses when last looked at (to see new ones).
    seen_addrs: Vec<Multiaddr>,
    reachability: Option<watch::Receiver<Reachability>>,

    session: watch::Sender<Option<DirectorySession>>,
    session_generation: u64,
    connecting: bool,
    waiting: Vec<Waiting>,
    pushes: mpsc::Sender<Resolution>,
    push_rx: mpsc::Receiver<Resolution>,
    /// Our name certificate and whose we accept.
    certificates: Certificates,

    online: Option<Online>,
    reconnect_at: Option<Instant>,
    /// Pauses between attempts to reach the node (jittered, see
    /// [`crate::reconnect`]).
    backoff: Backoff,
    status: OwnStatus,
    last_seq: u64,

    /// What we know of others, and whose changes the node pushes us.
    presence: Presence,
    trust: watch::Sender<Arc<Trust>>,
    workers: HashMap<ScreenName, mpsc::Sender<WorkerMsg>>,
    worker_mode: Mode,

    notes: mpsc::Sender<Note>,
    note_rx: mpsc::Receiver<Note>,
    tasks: JoinSet<Done>,
    cancel: CancellationToken,

    /// What serving and fetching files need, once online.
    file_env: Option<Arc<FileEnv>>,
    /// The fetches running, by offer.
    fetches: HashMap<MessageId, CancellationToken>,

    /// My invitations, for the tunnel server.
    invitations: watch::Sender<Arc<Vec<crate::store::Invitation>>>,
    /// The tunnel server, once online.
    tunnel_server: Option<mpsc::Sender<crate::tunnels::ServeCommand>>,
}

impl Core {
    pub(super) fn new(config: CoreConfig) -> Self {
        let (pushes, push_rx) = mpsc::channel(256);
        let (notes, note_rx) = mpsc::channel(256);
        let status = OwnStatus {
            status: config.config.status.unwrap_or_default(),
            text: config.config.status_text.clone().unwrap_or_default(),
        };
        Self {
            identity: config.identity,
            home: config.home,
            nodes: Nodes::new(if config.rendezvous.is_empty() {
                config.config.rendezvous.clone()
            } else {
                config.rendezvous
            }),
            config: config.config,
            store: config.store,
            store_thread: Some(config.store_thread),
            events: config.events,
            network_config: config.network,
            message_rate: config.message_rate,
            message_requests: config.message_requests,
            metrics: config.metrics,
            network: None,
            network_task: None,
            inbound: None,
            network_events: None,
            listen_addrs: None,
            seen_addrs: Vec::new(),
            reachability: None,
            session: watch::channel(None).0,
            session_generation: 0,
            connecting: false,
            waiting: Vec::new(),
            pushes,
            push_rx,
            certificates: Certificates::new(),
            online: None,
            reconnect_at: None,
            backoff: Backoff::new(),
            status,
            last_seq: 0,
            presence: Presence::default(),
            trust: watch::channel(Arc::new(config.trust)).0,
            workers: HashMap::new(),
            worker_mode: Mode::OneShot,
            notes,
            note_rx,
            tasks: JoinSet::new(),
            cancel: CancellationToken::new(),
            file_env: None,
            fetches: HashMap::new(),
            invitations: watch::channel(Arc::new(config.invitations)).0,
            tunnel_server: None,
        }
    }

    /// Serves commands until shut down (or every handle is gone).
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.settle_unverified().await;
        let shutdown_reply = loop {
            let renew_at = self.online.as_ref().map(|o| o.renew_at);
            let reconnect_at = self.reconnect_at;
            let wake_at = [renew_at, reconnect_at].into_iter().flatten().min();
            let timer = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let addrs_changed = changed(self.listen_addrs.as_mut());
            let reach_changed = changed(self.reachability.as_mut());
            let network_event = next_event(self.network_events.as_mut());
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Call(request, reply)) => self.on_request(request, reply).await,
                    Some(Command::GoOnline { listen, reply }) => self.go_online(listen, reply).await,
                    Some(Command::OpenTunnel { to, request, reply }) => {
                        self.open_tunnel(to, request, reply);
                    }
                    Some(Command::ListenPipe { from, reply }) => self.listen_pipe(from, reply).await,
                    Some(Command::Shutdown(reply)) => break Some(reply),
                    None => break None,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.on_done(done).await,
                    Err(e) if e.is_panic() => warn!("a task of the client panicked: {e}"),
                    Err(_) => {}
                },
                Some(push) = self.push_rx.recv() => self.on_push(push),
                Some(note) = self.note_rx.recv() => self.on_note(note).await,
                () = timer => self.on_timer(),
                () = addrs_changed => {
                    self.reconnect_on_new_address();
                    self.follow_addresses();
                }
                () = reach_changed => {
                    self.ensure_relay_later();
                    self.follow_addresses();
                }
                event = network_event => self.on_network_event(event),
            }
        };
        let report = self.shutdown().await;
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(report);
        }
    }

    // ---- requests ----

    async fn on_request(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        match request {
            Request::Send { id, to, text } => self.send(id, to, text, reply, true).await,
            Request::Enqueue { id, to, text } => self.send(id, to, text, reply, false).await,
            Request::Status { status, text } => self.set_status(status, text, reply).await,
            Request::ContactsAdd { name } => {
                self.resolve_then(name, reply, AfterResolve::ContactsAdd)
            }
            Request::ContactsTrust { name } => {
                self.resolve_then(name, reply, AfterResolve::ContactsTrust)
            }
            Request::Whois { name } => self.resolve_then(name, reply, AfterResolve::Whois),
            Request::Typing { to, active } => {
                let response = if self.config.sends_typing() {
                    self.signal(to, Signal::Typing(active))
                } else {
                    Response::Done {
                        message: "typing indicators are turned off".into(),
                    }
                };
                let _ = reply.send(response);
            }
            Request::Nudge { to } => {
                let response = self.signal(to, Signal::Nudge);
                let _ = reply.send(response);
            }
            Request::FileSend { .. }
            | Request::FileAccept { .. }
            | Request::FileDecline { .. }
            | Request::Files
            | Request::AutoAccept { .. } => self.on_file_request(request, reply).await,
            Request::Invite { name, port, revoke } => {
                self.invite(name, port, revoke, reply).await;
            }
            Request::Invitations => self.list_invitations(reply).await,
            Request::Requests => {
                let requests = self.store.call(|s| s.requests()).await;
                let _ = reply.send(store_response(requests, |requests| Response::Requests {
                    requests,
                }));
            }
            Request::RequestsDecline { name } => {
                let response = self.decline_requests(name).await;
                let _ = reply.send(response);
            }
            Request::MarkRead { name } => {
                let response = self.mark_read(name).await;
                let _ = reply.send(response);
            }
            Request::Snapshot => {
                let response = self.snapshot().await;
                let _ = reply.send(response);
            }
            Request::Tunnel { .. } | Request::PipeListen { .. } | Request::Follow { .. } => {
                let _ = reply.send(failed(
                    FailureKind::Invalid,
                    "tunnels, pipes and followed events go over the control socket, which then carries them",
                ));
            }
            Request::Settings {
                send_typing,
                bell,
                downloads,
                max_file_size,
            } => {
                let mut said = Vec::new();
                let downloads_said;
                let cap_said;
                if let Some(cap) = max_file_size {
                    self.config.max_file_size = (cap > 0).then_some(cap);
                    cap_said = match cap {
                        0 => "files of any size may be accepted (as the disk has room)".to_owned(),
                        cap => format!("files over {} are refused", crate::size::human_size(cap)),
                    };
                    said.push(cap_said.as_str());
                }
                if let Some(dir) = downloads {
                    downloads_said = format!("files you accept go into {}", dir.display());
                    self.config.downloads = Some(dir);
                    said.push(downloads_said.as_str());
                }
                if let Some(on) = send_typing {
                    self.config.send_typing = Some(on);
                    said.push(if on {
                        "others see when you type"
                    } else {
                        "others no longer see when you type"
                    });
                }
                if let Some(on) = bell {
                    self.config.bell = Some(on);
                    said.push(if on {
                        "the bell rings"
                    } else {
                        "the bell is off"
                    });
                }
                let response = match self.save_config() {
                    Ok(()) => {
                        self.emit(Event::Settings(self.settings_view()));
                        Response::Done {
                            message: said.join("; "),
                        }
                    }
                    Err(e) => failed(FailureKind::Other, e),
                };
                let _ = reply.send(response);
            }
            Request::ContactsRemove { name } => {
                let response = self.remove_contact(name).await;
                let _ = reply.send(response);
            }
            Request::ContactsList => {
                if self.online.is_some() {
                    let response = self.list_contacts(HashMap::new()).await;
                    let _ = reply.send(response);
                } else {
                    self.with_directory(DirWork::ContactsList { reply });
                }
            }
            Request::Block { name } => {
                let response = self.set_blocked(name, true).await;
                let _ = reply.send(response);
            }
            Request::Unblock { name } => {
                let response = self.set_blocked(name, false).await;
                let _ = reply.send(response);
            }
            Request::History { name, limit } => {
                let response = store_response(
                    self.store.call(move |s| s.history(&name, limit)).await,
                    |messages| Response::Messages { messages },
                );
                let _ = reply.send(response);
            }
            Request::Outbox => {
                let response =
                    store_response(self.store.call(|s| s.outbox(None)).await, |messages| {
                        Response::Messages { messages }
                    });
                let _ = reply.send(response);
            }
            Request::Message { id } => {
                // Not shown before its signature is checked.
                let shown = self
                    .store
                    .call(move |s| s.message(&id))
                    .await
                    .map(|m| m.filter(|m| m.state != crate::store::MessageState::Unverified));
                let response = store_response(shown, |message| Response::Message { message });
                let _ = reply.send(response);
            }
            Request::Register { name } => self.with_directory(DirWork::Register { name, reply }),
            Request::Release { name } => self.with_directory(DirWork::Release { name, reply }),
        }
    }

    fn resolve_then(
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

    /// Stores a message (once, by id) and hands it to its recipient's
    /// worker. The recipient is resolved first only if nothing is known of
    /// it: pushes keep what is known fresh.
    async fn send(
        &mut self,
        id: MessageId,
        to: ScreenName,
        text: String,
        tx: SendReply,
        wait: bool,
    ) {
        if let Err(e) = chat::check_text(&text) {
            return self.refuse_send(tx, SendError::Text(e));
        }
        let Some(from) = self.config.name.clone() else {
            return self.refuse_send(tx, SendError::NoName);
        };
        let message = Message {
            id,
            from,
            to: to.clone(),
            sent_at: now_ms(),
            text,
            file: None,
            invite: None,
        };
        if self.presence.knows(&to) || self.nodes.current().is_none() || !wait {
            self.queue_message(message, tx, wait, Duration::ZERO, None)
                .await;
        } else {
            // Resolved once, to refuse at once what could never be
            // delivered (no such name, a changed key).
            self.with_directory(DirWork::Resolve {
                name: to,
                then: AfterResolve::Send {
                    message,
                    reply: tx,
                    started: Instant::now(),
                },
            });
        }
    }

    fn refuse_send(&mut self, reply: SendReply, error: SendError) {
        let _ = reply.send(Response::Failed(Failure::from(&error)));
    }

    /// Stores `message` (once, by id) and hands it to delivery. With
    /// `wait`, the reply is the first outcome; else it comes once stored.
    async fn queue_message(
        &mut self,
        message: Message,
        reply: SendReply,
        wait: bool,
        resolved: Duration,
        source: Option<FileSource>,
    ) {
        let pin = self
            .presence
            .get(&message.to)
            .map(|info| self.trust.borrow().check_pin(info));
        if let Some(Err(change)) = pin {
            self.record_key_change(&change.name, change.current).await;
            return self.refuse_send(reply, SendError::KeyChanged(change));
        }
        let to = message.to.clone();
        let id = message.id;
        // Writing to someone accepts their message request, if they have one.
        let stranger = !self.trust.borrow().is_contact(&to);
        let stored = self
            .store
            .call(move |s| {
                let requested = stranger && s.requests()?.iter().any(|r| r.name == message.to);
                let stored = match source {
                    Some(FileSource { path, modified }) => {
                        s.add_outgoing_file(message, path, modified, now_ms())
                    }
                    None => s.add_outgoing(message, now_ms()),
                }?;
                Ok((stored, requested))
            })
            .await;
        let stored = match stored {
            Ok(((stored, new), requested)) => {
                if requested {
                    self.tell_requests().await;
                }
                if new {
                    self.emit(Event::Queued(stored.clone()));
                }
                stored
            }
            Err(e) => return self.refuse_send(reply, SendError::Store(e)),
        };
        // Stored before (the same request, repeated after its client died):
        // what happened to it since is the answer.
        let settled = match stored.state {
            MessageState::Delivered => Some(Response::Sent(SendOutcome::Delivered {
                peer_id: stored.peer_id.unwrap_or(self.identity.peer_id()),
                message: stored.clone(),
                path: None,
                resolve_ms: 0.0,
                dial_ms: 0.0,
                deliver_ms: 0.0,
            })),
            MessageState::Failed => Some(Response::Failed(Failure::new(
                FailureKind::NotDelivered,
                format!(
                    "{} to {}",
                    stored.error.as_deref().unwrap_or("not delivered"),
                    stored.message.to
                ),
            ))),
            _ => None,
        };
        if let Some(response) = settled {
            let _ = reply.send(response);
            return;
        }
        self.watch(std::slice::from_ref(&to));
        if wait {
            self.worker(
                &to,
                WorkerMsg::Deliver {
                    id,
                    reply,
                    resolved,
                },
            );
        } else {
            let _ = reply.send(Response::Sent(SendOutcome::Queued {
                message: stored,
                reason: "handed to delivery".into(),
            }));
            self.worker(&to, WorkerMsg::Wake);
        }
    }

    /// Sends `msg` to the worker of `to`, starting one if needed.
    fn worker(&mut self, to: &ScreenName, msg: WorkerMsg) {
        if let Some(worker) = self.workers.get(to)
            && !worker.is_closed()
        {
            // Full: it has a backlog to look at anyway; a send's reply
            // would be lost, so that one waits for room.
            if let Err(mpsc::error::TrySendError::Full(msg)) = worker.try_send(msg) {
                let worker = worker.clone();
                self.tasks.spawn(async move {
                    let _ = worker.send(msg).await;
                    Done::Nothing
                });
            }
            return;
        }
        let Some(network) = self.network.clone() else {
            warn!("no network to deliver to {to} with");
            return;
        };
        let env = Arc::new(WorkerEnv {
            identity: self.identity.clone(),
            store: self.store.clone(),
            network,
            session: self.session.subscribe(),
            certificate: self.certificates.current(),
            trust: self.trust.subscribe(),
            events: self.events.clone(),
            notes: self.notes.clone(),
            mode: self.worker_mode,
        });
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(msg);
        let worker = Worker::new(to.clone(), env, self.presence.get(to).cloned());
        let cancel = self.cancel.child_token();
        self.tasks.spawn(async move {
            worker.run(rx, cancel).await;
            Done::Nothing
        });
        self.workers.insert(to.clone(), tx);
    }

    async fn set_status(&mut self, status: Status, text: String, reply: oneshot::Sender<Response>) {
        if let Err(e) = check_status_text(&text) {
            let _ = reply.send(Response::Failed(Failure::from(&SetStatusError::from(e))));
            return;
        }
        self.config.status = Some(status);
        self.config.status_text = Some(text.clone());
        if let Err(e) = self.save_config() {
            let _ = reply.send(Response::Failed(Failure::from(&SetStatusError::Home(e))));
            return;
        }
        self.status = OwnStatus {
            status,
            text: text.clone(),
        };
        self.emit(Event::MyStatus {
            status,
            text: text.clone(),
        });
        let shown = suffix(&text);
        if self.online.is_some() && self.directory_connected() {
            let done = Response::Done {
                message: format!("status: {status}{shown}"),
            };
            self.register_again(Some((reply, done)), false);
        } else {
            let _ = reply.send(Response::Done {
                message: format!("status: {status}{shown} (applies when you go online)"),
            });
        }
    }

    async fn remove_contact(&mut self, name: ScreenName) -> Response {
        let n = name.clone();
        let removed = self
            .store
            .call(move |s| {
                let contact = s.contact(&n)?;
                s.remove_contact(&n)?;
                Ok(contact)
            })
            .await;
        let contact = match removed {
            Ok(Some(contact)) => contact,
            Ok(None) => return failed(FailureKind::Other, format!("{name} is not a contact")),
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        self.after_contacts_change(&name, false).await;
        let withdrawn = self
            .withdraw_access(&name, Some(contact.pinned), "no longer a contact")
            .await;
        Response::Done {
            message: format!("removed {name}{withdrawn}"),
        }
    }

    /// Declines the message request of `name` (everyone's if none): what
    /// they sent is removed.
    async fn decline_requests(&mut self, name: Option<ScreenName>) -> Response {
        let asked = name.clone();
        let declined = self
            .store
            .call(move |s| s.decline_requests(asked.as_ref()))
            .await;
        let declined = match declined {
            Ok(declined) => declined,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        if declined.is_empty() {
            return failed(
                FailureKind::Invalid,
                match name {
                    Some(name) => format!("{name} has no message request"),
                    None => "there are no message requests".to_owned(),
                },
            );
        }
        self.tell_requests().await;
        for name in &declined {
            // What they sent is gone, and with it their unread count.
            self.emit(Event::Unread(crate::store::Unread {
                name: name.clone(),
                count: 0,
            }));
        }
        let names: Vec<&str> = declined.iter().map(ScreenName::as_str).collect();
        Response::Done {
            message: format!(
                "declined the message request(s) of {}: what they sent is removed",
                names.join(", ")
            ),
        }
    }

    /// Tells the front ends what message requests wait now.
    async fn tell_requests(&self) {
        match self.store.call(|s| s.requests()).await {
            Ok(requests) => self.emit(Event::Requests { requests }),
            Err(e) => warn!("cannot read the message requests: {e}"),
        }
    }

    /// Ends what `name` (under `key`, the key that was trusted) may do on
    /// this machine, once its contact is removed, re-pinned to another key
    /// or blocked: its invitations are withdrawn, its transfers that are
    /// not settled fail, and every connection of that key is closed, with
    /// its tunnels, pipes and transfers. (The tunnel and file servers also
    /// check the pins and blocks in force at every request.) Returns what
    /// was withdrawn, as the end of a sentence.
    pub(super) async fn withdraw_access(
        &mut self,
        name: &ScreenName,
        key: Option<PeerId>,
        why: &str,
    ) -> String {
        let (n, reason) = (name.clone(), format!("withdrawn: {name} is {why}"));
        let withdrawn = self
            .store
            .call(move |s| {
                let now = now_ms();
                Ok((
                    s.revoke_invitations_of(&n, now)?,
                    s.fail_transfers_with(&n, &reason, now)?,
                ))
            })
            .await;
        let (invitations, transfers) = match withdrawn {
            Ok(withdrawn) => withdrawn,
            Err(e) => {
                warn!("cannot withdraw {name}'s invitations and transfers: {e}");
                (0, Vec::new())
            }
        };
        if invitations > 0 {
            self.reload_invitations().await;
        }
        for transfer in &transfers {
            if let Some(fetch) = self.fetches.remove(&transfer.id) {
                fetch.cancel();
            }
            self.emit(Event::Transfer(transfer.clone()));
        }
        let key = key.or_else(|| self.presence.get(name).map(|info| info.peer_id));
        if let (Some(network), Some(key)) = (&self.network, key) {
            network.disconnect(key).await;
        }
        let mut told = String::new();
        if invitations > 0 {
            told.push_str(&format!(
                "; {invitations} invitation(s) to connect withdrawn"
            ));
        }
        if !transfers.is_empty() {
            told.push_str(&format!("; {} file transfer(s) stopped", transfers.len()));
        }
        told
    }

    async fn set_blocked(&mut self, name: ScreenName, blocked: bool) -> Response {
        let n = name.clone();
        let changed = match self
            .store
            .call(move |s| s.set_blocked(&n, blocked, now_ms()))
            .await
        {
            Ok(changed) => changed,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        self.contacts_changed().await;
        let withdrawn = if blocked {
            let key = self.trust.borrow().pinned(&name);
            self.withdraw_access(&name, key, "blocked").await
        } else {
            String::new()
        };
        Response::Done {
            message: match (blocked, changed) {
                (true, true) => format!("blocked {name}: their messages are refused{withdrawn}"),
                (true, false) => format!("{name} was already blocked"),
                (false, true) => format!("unblocked {name}"),
                (false, false) => format!("{name} was not blocked"),
            },
        }
    }

    /// Contacts with their presence: what is known, plus `found` (look-ups
    /// done for this listing).
    async fn list_contacts(&mut self, found: HashMap<ScreenName, PeerInfo>) -> Response {
        let both = self.store.call(|s| Ok((s.contacts()?, s.blocked()?))).await;
        let (contacts, blocked) = match both {
            Ok(both) => both,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        let recorded: Vec<_> = contacts
            .iter()
            .map(|c| (c.name.clone(), c.key_changed_to))
            .collect();
        let views = self.contact_views(contacts, &blocked, &found);
        for (view, (name, recorded)) in views.iter().zip(recorded) {
            if let Some(current) = view.key_changed_to
                && recorded != Some(current)
            {
                self.record_key_change(&name, current).await;
            }
        }
        Response::Contacts { contacts: views }
    }

    // ---- the directory ----

    fn directory_connected(&self) -> bool {
        self.session
            .borrow()
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    fn current_session(&self) -> Option<DirectorySession> {
        self.session.borrow().clone().filter(|s| !s.is_closed())
    }

    /// Starts the network if it is not running yet.
    fn ensure_network(&mut self) -> Result<Network, DirectoryFailure> {
        if let Some(network) = &self.network {
            return Ok(network.clone());
        }
        let node = self
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
    fn with_directory(&mut self, work: DirWork) {
        self.with_directory_attempt(Waiting { work, attempt: 0 });
    }

    fn with_directory_attempt(&mut self, waiting: Waiting) {
        if let Some(session) = self.current_session() {
            self.spawn_directory_work(session, waiting);
            return;
        }
        if let Err(e) = self.ensure_network() {
            return fail_work(waiting.work, &e);
        }
        self.waiting.push(waiting);
        if !self.connecting && self.online.is_none() {
            self.connect(false, None);
        }
    }

    fn spawn_directory_work(
        &mut self,
        session: DirectorySession,
        Waiting { work, attempt }: Waiting,
    ) {
        match work {
            DirWork::Resolve { name, then } => {
                self.tasks.spawn(async move {
                    let result = session.resolve(name.as_str()).await;
                    Done::Resolved {
                        name,
                        result,
                        then,
                        attempt,
                    }
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
                    Done::Registered {
                        name,
                        result,
                        reply,
                        attempt,
                    }
                });
            }
            DirWork::Release { name, reply } => {
                self.tasks.spawn(async move {
                    let result = session.release(name.as_str()).await;
                    Done::Released {
                        name,
                        result,
                        reply,
                        attempt,
                    }
                });
            }
            DirWork::ContactsList { reply } => {
                let names: Vec<ScreenName> = self.trust.borrow().contact_names().cloned().collect();
                self.tasks.spawn(async move {
                    let mut found = Vec::with_capacity(names.len());
                    for name in names {
                        found.push(session.resolve(name.as_str()).await);
                    }
                    Done::ContactsListed { found, reply }
                });
            }
        }
    }

    /// Opens a session with the node in a task; when `online`, also
    /// registers and watches.
    fn connect(&mut self, online: bool, reply: Option<oneshot::Sender<Result<(), OnlineError>>>) {
        let network = match self.ensure_network() {
            Ok(network) => network,
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(OnlineError::Directory(e)));
                }
                return;
            }
        };
        let Some(node) = self.nodes.current().cloned() else {
            return;
        };
        self.connecting = true;
        let pushes = self.pushes.clone();
        let registration = self
            .online
            .as_ref()
            .map(|o| o.name.clone())
            .filter(|_| online);
        let first_registration = self.pending_online_name(online);
        let name = registration.or(first_registration);
        let status = self.status.clone();
        let visible_to = self.visible_to();
        let identity = self.identity.clone();
        let seq = self.next_seq();
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
            Done::Connected {
                result,
                online,
                reply,
            }
        });
    }

    /// While going online for the first time, the name to register.
    fn pending_online_name(&self, online: bool) -> Option<ScreenName> {
        if online {
            self.config.name.clone()
        } else {
            None
        }
    }

    /// A sequence number above every earlier one: microseconds of wall
    /// time, bumped if the clock has not moved.
    fn next_seq(&mut self) -> u64 {
        self.last_seq = now_ms().saturating_mul(1000).max(self.last_seq + 1);
        self.last_seq
    }

    fn visible_to(&self) -> Vec<PeerId> {
        match self.status.status {
            Status::Invisible => {
                let mut keys = self.trust.borrow().pinned_keys();
                keys.truncate(MAX_VISIBLE_TO);
                keys
            }
            _ => Vec::new(),
        }
    }

    fn record(
        &mut self,
        name: &ScreenName,
        addrs: Vec<Multiaddr>,
    ) -> messenger_proto::record::SignedRecord {
        let seq = self.next_seq();
        sign_record(&self.identity, name, addrs, seq, &self.status)
    }

    /// Registers again on the current session (renewal, a new status, new
    /// addresses); `reply` answers a request once done.
    fn register_again(
        &mut self,
        reply: Option<(oneshot::Sender<Response>, Response)>,
        announce: bool,
    ) {
        let (Some(session), Some(online), Some(network)) =
            (self.current_session(), &self.online, self.network.clone())
        else {
            if let Some((reply, _)) = reply {
                let _ = reply.send(failed(
                    FailureKind::Unreachable,
                    "not connected to the rendezvous node; the change applies when the connection is back",
                ));
            }
            return;
        };
        let name = online.name.clone();
        let loopback_ok = self.nodes.current().is_some_and(is_loopback);
        let addrs = advertised(&network, loopback_ok);
        let record = self.record(&name, addrs.clone());
        let visible_to = self.visible_to();
        if let Some(online) = &mut self.online {
            online.renew_at = Instant::now() + RENEW_EVERY;
        }
        self.tasks.spawn(async move {
            let result = session
                .register(record, visible_to)
                .await
                .map(|r| (r, addrs));
            Done::Renewed {
                result,
                reply,
                announce,
            }
        });
    }

    /// A new address of ours (an interface came back, a network joined) is
    /// a reason to try the node again now, rather than at the end of a
    /// backoff that grew while there was no network.
    fn reconnect_on_new_address(&mut self) {
        let now: Vec<Multiaddr> = self
            .listen_addrs
            .as_ref()
            .map(|rx| rx.borrow().clone())
            .unwrap_or_default();
        let appeared = now.iter().any(|a| !self.seen_addrs.contains(a));
        self.seen_addrs = now;
        if appeared && self.reconnect_at.is_some() {
            info!("a new address of ours; reconnecting to the rendezvous node now");
            self.backoff.succeeded();
            self.reconnect_at = Some(Instant::now());
        }
    }

    /// Registers our current addresses if they changed.
    fn follow_addresses(&mut self) {
        let (Some(online), Some(network)) = (&self.online, &self.network) else {
            return;
        };
        let loopback_ok = self.nodes.current().is_some_and(is_loopback);
        if advertised(network, loopback_ok) != online.registered {
            info!("addresses changed; registering them");
            self.register_again(None, true);
        }
    }

    /// Unless reachable directly, we hold a relay slot: after a new
    /// reachability verdict, make sure.
    fn ensure_relay_later(&mut self) {
        let (Some(network), Some(node)) = (self.network.clone(), self.nodes.current().cloned())
        else {
            return;
        };
        if self.online.is_none() {
            return;
        }
        self.tasks.spawn(async move {
            ensure_relay(&network, &node).await;
            Done::Nothing
        });
    }

    fn watch(&mut self, names: &[ScreenName]) {
        let new: Vec<String> = self
            .presence
            .watch(names)
            .iter()
            .map(ScreenName::to_string)
            .collect();
        if new.is_empty() {
            return;
        }
        if let Some(session) = self.current_session().filter(|_| self.online.is_some()) {
            self.tasks.spawn(async move {
                for chunk in new.chunks(MAX_WATCH_PER_REQUEST) {
                    if let Err(e) = session.watch(chunk.to_vec()).await {
                        debug!("cannot watch: {e}");
                    }
                }
                Done::Nothing
            });
        }
    }

    fn unwatch(&mut self, name: &ScreenName) {
        if !self.presence.unwatch(name) {
            return;
        }
        if let Some(session) = self.current_session() {
            let names = vec![name.to_string()];
            self.tasks.spawn(async move {
                if let Err(e) = session.unwatch(names).await {
                    debug!("cannot unwatch: {e}");
                }
                Done::Nothing
            });
        }
    }

    // ---- going online ----

    async fn go_online(
        &mut self,
        listen: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), OnlineError>>,
    ) {
        if self.online.is_some() || self.worker_mode == Mode::Online {
            let _ = reply.send(Err(OnlineError::AlreadyOnline));
            return;
        }
        let Some(name) = self.config.name.clone() else {
            let _ = reply.send(Err(OnlineError::NoName));
            return;
        };
        let network = match self.ensure_network() {
            Ok(network) => network,
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        };
        // Listen before dialling the node, so that the connection to it
        // leaves from a listening port (which hole punching needs).
        if network.listen_addrs().borrow().is_empty() {
            for addr in listen {
                if let Err(e) = network.listen(addr).await {
                    let _ = reply.send(Err(DirectoryFailure::Network(e).into()));
                    return;
                }
            }
        }
        self.worker_mode = Mode::Online;
        if let Some(Inbound {
            chat: streams,
            files,
            tunnels,
        }) = self.inbound.take()
        {
            self.serve_files(files, &network).await;
            self.serve_tunnels(tunnels);
            let sink = StoreSink::new(
                self.store.clone(),
                self.trust.subscribe(),
                self.events.clone(),
                network.clone(),
                self.notes.clone(),
                self.message_requests,
            );
            self.certificates.publish(&self.nodes.peer_ids());
            let inbox = Inbox::new(
                name.clone(),
                self.certificates.issuers(),
                self.session.subscribe(),
                sink,
                self.message_rate,
            );
            let cancel = self.cancel.child_token();
            self.tasks.spawn(async move {
                inbox.serve(streams, cancel).await;
                Done::Nothing
            });
        }
        // Watch everyone we care about; their pushes wake the outbox.
        let mut names: Vec<ScreenName> = self.trust.borrow().contact_names().cloned().collect();
        if let Ok(outbox) = self.store.call(|s| s.outbox(None)).await {
            for m in outbox {
                if !names.contains(m.peer()) {
                    names.push(m.peer().clone());
                }
            }
        }
        self.presence.watch(&names);
        // A session opened for one-off requests has no registration; the
        // online one is opened afresh.
        if let Some(session) = self.session.send_replace(None) {
            self.tasks.spawn(async move {
                session.close().await;
                Done::Nothing
            });
        }
        self.online = Some(Online {
            name,
            registered: Vec::new(),
            renew_at: Instant::now() + RENEW_EVERY,
        });
        self.connect(true, Some(reply));
    }

    // ---- what tasks report ----

    async fn on_done(&mut self, done: Done) {
        match done {
            Done::FetchEnded(id) => self.fetch_ended(id),
            Done::Nothing => {}
            Done::Connected {
                result,
                online,
                reply,
            } => self.on_connected(result, online, reply).await,
            Done::SessionClosed(generation) => {
                if generation != self.session_generation {
                    return;
                }
                self.session.send_replace(None);
                if self.online.is_some() && self.reconnect_at.is_none() && !self.connecting {
                    warn!("lost the connection to the rendezvous node; reconnecting");
                    self.emit(Event::Reconnecting {
                        reason: "lost the connection to the rendezvous node".into(),
                    });
                    // Spread: everyone its node held lost it at once.
                    self.reconnect_at = Some(Instant::now() + self.backoff.after_loss());
                }
            }
            Done::Resolved {
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
            Done::Registered {
                name,
                result,
                reply,
                attempt,
            } => match result {
                Err(DirectoryError::Closed) if attempt + 1 < REQUEST_ATTEMPTS => {
                    self.retry_later(DirWork::Register { name, reply }, attempt + 1);
                }
                result => {
                    let response = self.on_registered(name, result);
                    let _ = reply.send(response);
                }
            },
            Done::Released {
                name,
                result,
                reply,
                attempt,
            } => match result {
                Err(DirectoryError::Closed) if attempt + 1 < REQUEST_ATTEMPTS => {
                    self.retry_later(DirWork::Release { name, reply }, attempt + 1);
                }
                Ok(released) => {
                    if self.config.name.as_ref() == Some(&released) {
                        self.config.name = None;
                        if let Err(e) = self.save_config() {
                            warn!("cannot save the config: {e}");
                        }
                    }
                    let _ = reply.send(Response::Released { name: released });
                }
                Err(e) => {
                    let _ = reply.send(self.directory_failed(e));
                }
            },
            Done::Renewed {
                result,
                reply,
                announce,
            } => match result {
                Ok((registered, addrs)) => {
                    if let Some((reply, done)) = reply {
                        let _ = reply.send(done);
                    }
                    self.keep_certificate(&registered);
                    let changed = self.online.as_ref().is_some_and(|o| o.registered != addrs);
                    let renew_at = Instant::now() + self.renew_in();
                    if let Some(online) = &mut self.online {
                        online.registered = addrs.clone();
                        online.renew_at = renew_at;
                    }
                    if announce && changed {
                        let reachability = self.current_reachability();
                        self.emit(Event::Addresses {
                            addrs,
                            reachability,
                        });
                    }
                }
                Err(e) => {
                    warn!("registration failed: {e}");
                    if e.code() == Some(ErrorCode::Unavailable)
                        && let Some(online) = &mut self.online
                    {
                        // The node's store is down: renew as soon as it
                        // may be back, before the lease runs out.
                        online.renew_at = Instant::now() + RENEW_WHILE_UNAVAILABLE;
                    }
                    if let Some((reply, _)) = reply {
                        let _ = reply.send(self.directory_failed(e));
                    }
                }
            },
            Done::ContactsListed { found, reply } => {
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

    fn retry_later(&mut self, work: DirWork, attempt: u32) {
        // The session is gone: a fresh one serves the retry.
        self.session.send_replace(None);
        self.with_directory_attempt(Waiting { work, attempt });
    }

    async fn on_connected(
        &mut self,
        result: Result<Connected, DirectoryFailure>,
        online: bool,
        reply: Option<oneshot::Sender<Result<(), OnlineError>>>,
    ) {
        self.connecting = false;
        match result {
            Ok(Connected {
                session,
                registered,
            }) => {
                self.session_generation += 1;
                let generation = self.session_generation;
                let watcher = session.clone();
                self.tasks.spawn(async move {
                    watcher.closed().await;
                    Done::SessionClosed(generation)
                });
                self.session.send_replace(Some(session.clone()));
                self.reconnect_at = None;
                self.backoff.succeeded();
                self.nodes.succeeded();
                self.remember_node_in_use();
                if let Some((registered, addrs)) = registered {
                    self.keep_certificate(&registered);
                    let first = reply.is_some();
                    let reachability = self.current_reachability();
                    let renew_at = Instant::now() + self.renew_in();
                    if let Some(state) = &mut self.online {
                        state.registered = addrs.clone();
                        state.renew_at = renew_at;
                        let name = state.name.clone();
                        if !first {
                            info!("back online");
                        }
                        self.emit(Event::Online {
                            name,
                            addrs,
                            first,
                            reachability,
                        });
                    }
                    // Watched after saying we are online: their presence
                    // follows as pushes (a new session watches afresh).
                    let names: Vec<String> =
                        self.presence.watched().map(ScreenName::to_string).collect();
                    let watching = session.clone();
                    self.tasks.spawn(async move {
                        for chunk in names.chunks(MAX_WATCH_PER_REQUEST) {
                            if let Err(e) = watching.watch(chunk.to_vec()).await {
                                debug!("cannot watch: {e}");
                            }
                        }
                        Done::Nothing
                    });
                    // Everything queued may go now.
                    let outbox = self
                        .store
                        .call(|s| s.outbox(None))
                        .await
                        .unwrap_or_default();
                    let mut recipients: Vec<ScreenName> =
                        outbox.iter().map(|m| m.peer().clone()).collect();
                    recipients.extend(self.workers.keys().cloned());
                    recipients.sort();
                    recipients.dedup();
                    for to in recipients {
                        self.worker(&to, WorkerMsg::Wake);
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                let waiting = std::mem::take(&mut self.waiting);
                for w in waiting {
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
                    self.online = None;
                    let failure = Failure::from(&e);
                    let _ = reply.send(Err(OnlineError::Directory(e)));
                    self.fail_waiting(&failure);
                    return;
                }
                if online && refused {
                    warn!("registration refused: {e}");
                    self.online = None;
                    self.emit(Event::RegistrationRefused {
                        reason: refusal_message(&e),
                    });
                    return;
                }
                if online {
                    let setback = setback_of(&e);
                    let pause = self.backoff.after(setback);
                    debug!(?setback, ?pause, "reconnect failed: {e}");
                    self.reconnect_at = Some(Instant::now() + pause);
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
    fn try_next_node(&mut self) -> bool {
        let fresh = self.nodes.failed();
        if self.nodes.all().len() > 1
            && let (Some(network), Some(addr)) = (&self.network, self.nodes.current())
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
    fn remember_node_in_use(&mut self) {
        let order = self.nodes.in_use_first();
        if self.config.rendezvous == order || !self.nodes.are(&self.config.rendezvous) {
            return;
        }
        self.config.rendezvous = order;
        if let Err(e) = self.save_config() {
            warn!("cannot remember which rendezvous node answered: {e}");
        }
    }

    fn fail_waiting(&mut self, failure: &Failure) {
        for w in std::mem::take(&mut self.waiting) {
            fail_work_with(w.work, failure.clone());
        }
    }

    async fn on_resolved(
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
                Err(DirectoryFailure::Node { source, .. })
                    if matches!(
                        source.as_ref(),
                        DirectoryError::Refused {
                            code: ErrorCode::NoSuchName,
                            ..
                        }
                    ) =>
                {
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

    /// Adds (or, `trust`ing, re-pins) a contact to the key `info` names.
    async fn add_contact(&mut self, info: PeerInfo, trust: bool) -> Response {
        let name = info.name.clone();
        let n = name.clone();
        let key = info.peer_id;
        let found = self
            .store
            .call(move |s| {
                let contacts = s.contacts()?;
                let existing = contacts.iter().find(|c| c.name == n).cloned();
                let other = contacts
                    .into_iter()
                    .find(|c| c.name != n && c.pinned == key)
                    .map(|c| c.name);
                Ok((existing, other))
            })
            .await;
        let (existing, other) = match found {
            Ok(found) => found,
            Err(e) => return Response::Failed(Failure::from(&e)),
        };
        // One key, one contact: what comes from a key (a tunnel, a pipe,
        // a file) is attributed to its contact, which must be one name.
        if let Some(other) = other {
            return failed(
                FailureKind::Invalid,
                format!(
                    "{name}'s key {key} is pinned for your contact {other} already: a key is pinned under one name (remove {other} first to pin it under {name})"
                ),
            );
        }
        let message = match (&existing, trust) {
            (None, true) => return failed(FailureKind::Other, format!("{name} is not a contact")),
            (Some(c), false) if c.pinned == info.peer_id => {
                return Response::Done {
                    message: format!("{name} is already a contact (key {})", c.pinned),
                };
            }
            (Some(c), false) => {
                let change = crate::peer::KeyChange {
                    name: name.clone(),
                    pinned: c.pinned,
                    current: info.peer_id,
                };
                self.record_key_change(&name, info.peer_id).await;
                return Response::Failed(Failure::from(&DirectoryFailure::KeyChanged(Box::new(
                    change,
                ))));
            }
            (Some(c), true) if c.pinned == info.peer_id => {
                format!("{name} keeps key {}", info.peer_id)
            }
            (Some(c), true) => format!(
                "{name} is now pinned to key {} (was {})",
                info.peer_id, c.pinned
            ),
            (None, false) => format!("added {name}, pinned to key {}", info.peer_id),
        };
        let contact = Contact {
            name: name.clone(),
            pinned: info.peer_id,
            added_at: existing.as_ref().map_or(now_ms(), |c| c.added_at),
            key_changed_to: None,
            auto_accept_below: None,
        };
        let n = name.clone();
        let requested = self
            .store
            .call(move |s| {
                let requested = s.requests()?.iter().any(|r| r.name == n);
                s.put_contact(&contact)?;
                Ok(requested)
            })
            .await;
        match requested {
            Ok(true) => self.tell_requests().await,
            Ok(false) => {}
            Err(e) => return Response::Failed(Failure::from(&e)),
        }
        self.after_contacts_change(&name, true).await;
        let message = match existing {
            // The old key is trusted with nothing any more.
            Some(old) if old.pinned != info.peer_id => {
                let withdrawn = self
                    .withdraw_access(&name, Some(old.pinned), "pinned to another key")
                    .await;
                format!("{message}{withdrawn}")
            }
            _ => message,
        };
        Response::Done { message }
    }

    async fn after_contacts_change(&mut self, name: &ScreenName, added: bool) {
        self.contacts_changed().await;
        if self.online.is_some() {
            if added {
                self.watch(std::slice::from_ref(name));
            } else {
                self.unwatch(name);
            }
            // Who may still reach us while invisible follows the contacts.
            if self.status.status == Status::Invisible {
                self.register_again(None, false);
            }
            self.worker_if_any(name, WorkerMsg::Wake);
        }
    }

    /// Hands an ephemeral signal to the recipient's worker; dropped when
    /// the worker is busy (a signal is worth nothing late).
    fn signal(&mut self, to: ScreenName, signal: Signal) -> Response {
        if self.online.is_none() {
            return failed(
                FailureKind::Unreachable,
                "not online: signals go only from the running client",
            );
        }
        match self.workers.get(&to).filter(|w| !w.is_closed()) {
            Some(worker) => {
                let _ = worker.try_send(WorkerMsg::Signal(signal));
            }
            None => self.worker(&to, WorkerMsg::Signal(signal)),
        }
        Response::Done {
            message: format!("sent to {to}"),
        }
    }

    fn worker_if_any(&mut self, name: &ScreenName, msg: WorkerMsg) {
        if self.workers.contains_key(name) {
            self.worker(name, msg);
        }
    }

    /// Records (once) that a contact's name now has another key, and says so.
    async fn record_key_change(&mut self, name: &ScreenName, current: PeerId) {
        let n = name.clone();
        let Ok(Some(contact)) = self.store.call(move |s| s.contact(&n)).await else {
            return;
        };
        if contact.pinned == current || contact.key_changed_to == Some(current) {
            return;
        }
        let updated = Contact {
            key_changed_to: Some(current),
            // Whoever holds the new key is not trusted with files unasked.
            auto_accept_below: None,
            ..contact.clone()
        };
        if let Err(e) = self.store.call(move |s| s.put_contact(&updated)).await {
            warn!("cannot record a key change: {e}");
        }
        self.contacts_changed().await;
        warn!(name = %name, pinned = %contact.pinned, current = %current, "KEY CHANGED");
        self.emit(Event::KeyChanged {
            name: name.clone(),
            pinned: contact.pinned,
            current,
        });
    }

    fn on_registered(
        &mut self,
        name: ScreenName,
        result: Result<Registered, DirectoryError>,
    ) -> Response {
        let registered = match result {
            Ok(registered) => registered,
            Err(e) => return self.directory_failed(e),
        };
        self.keep_certificate(&registered);
        let Some(rendezvous) = self.nodes.current().cloned() else {
            return failed(FailureKind::Invalid, DirectoryFailure::NoNode);
        };
        self.config.name = Some(name.clone());
        self.config.rendezvous = self.nodes.in_use_first();
        if let Err(e) = self.save_config() {
            return failed(FailureKind::Other, e);
        }
        info!(%name, "registration remembered");
        Response::Registered {
            name,
            new_claim: registered.new_claim,
            peer_id: self.identity.peer_id(),
            rendezvous,
        }
    }

    fn node_failure(&self, source: DirectoryError) -> DirectoryFailure {
        DirectoryFailure::Node {
            node: self
                .nodes
                .current()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            source: Box::new(source),
        }
    }

    fn directory_failed(&self, e: DirectoryError) -> Response {
        Response::Failed(Failure::from(&self.node_failure(e)))
    }

    /// Keeps the node's certificate of our name, if it is one our peers
    /// will accept (issued by our node, to us, for this name, valid now).
    ///
    /// Its issuer need not be the node's own key: the nodes of a cluster
    /// sign with one they share. The node we chose vouches for that key by
    /// handing us the certificate, so certificates it signs for others are
    /// accepted from now on.
    fn keep_certificate(&mut self, registered: &Registered) {
        let me = self.identity.peer_id();
        let nodes = self.nodes.peer_ids();
        if let Err(why) = self.certificates.keep(registered, &me, &nodes, now_ms()) {
            warn!("not using the node's certificate: {why}");
        }
    }

    /// How long until the next renewal: the usual period, or sooner if our
    /// certificate would expire first.
    fn renew_in(&self) -> Duration {
        self.certificates.renew_in(now_ms(), RENEW_EVERY)
    }

    fn current_reachability(&self) -> Reachability {
        self.reachability
            .as_ref()
            .map_or(Reachability::Unknown, |r| *r.borrow())
    }

    // ---- pushes, notes, timers, network events ----

    /// Keeps what the node says of a name (verified), and acts on changes.
    fn learn(&mut self, info: PeerInfo) -> bool {
        let learned = self.presence.learn(info.clone());
        if learned.for_delivery {
            let name = info.name.clone();
            self.worker_if_any(&name, WorkerMsg::Peer(info));
        }
        learned.shown
    }

    fn on_push(&mut self, resolution: Resolution) {
        let info = match PeerInfo::from_resolution(&resolution) {
            Ok(info) => info,
            Err(e) => {
                warn!("ignoring a presence push that does not verify: {e}");
                return;
            }
        };
        let pin = self.trust.borrow().check_pin(&info);
        if let Err(change) = pin {
            // Known (a send checks it), recorded and reported, not shown as
            // the contact's presence: nothing goes to or comes from it.
            let _ = self.notes.try_send(Note::KeyObserved {
                name: change.name,
                key: change.current,
            });
            self.learn(info);
            return;
        }
        if self.learn(info.clone()) {
            self.emit(Event::Presence(info));
        }
    }

    async fn on_note(&mut self, note: Note) {
        match note {
            // A worker resolved its recipient: kept here for the others who
            // ask (the worker has it already: not sent back to it).
            Note::Learned(info) => {
                self.presence.learn(info);
            }
            Note::KeyObserved { name, key } => self.record_key_change(&name, key).await,
            Note::Offered(id) => self.on_offered(id).await,
            Note::Unread(name) => self.tell_unread(name).await,
            Note::FileReady {
                message,
                source,
                reply,
            } => {
                self.queue_message(message, reply, false, Duration::ZERO, Some(source))
                    .await;
            }
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|at| at <= now) {
            self.reconnect_at = None;
            if !self.connecting && self.online.is_some() {
                self.connect(true, None);
            }
        }
        if self.online.as_ref().is_some_and(|o| o.renew_at <= now) {
            self.register_again(None, false);
        }
    }

    fn on_network_event(&mut self, event: Option<NetworkEvent>) {
        let (peer, path, detail) = match event {
            Some(NetworkEvent::HolePunched { peer }) => (peer, Path::Direct, None),
            Some(NetworkEvent::HolePunchFailed { peer, reason }) => {
                (peer, Path::Relayed, Some(reason))
            }
            Some(NetworkEvent::Disconnected { .. }) => return,
            None => {
                self.network_events = None;
                return;
            }
        };
        let name = self.presence.name_of(&peer).cloned();
        self.emit(Event::Path {
            name,
            peer,
            path,
            detail,
        });
    }

    /// Hands a status event to the front end if there is room: the core
    /// never waits on its front end (messages and delivery marks, which
    /// must not be dropped, are handed on by the inbox and the workers).
    /// Checks the signatures of messages kept and acknowledged, but not yet
    /// checked, when the client last stopped; shows the good ones and
    /// removes the rest.
    async fn settle_unverified(&mut self) {
        let waiting = match self.store.call(|s| s.unverified()).await {
            Ok(waiting) => waiting,
            Err(e) => return warn!("cannot read the messages still to be checked: {e}"),
        };
        for stored in waiting {
            let id = stored.message.id;
            let key = stored.peer_id.as_ref().and_then(verifying_key_of);
            let good = match (&stored.signed, key) {
                (Some(signed), Some(key)) => signed.verify(MESSAGE_CONTEXT, &key).is_ok(),
                _ => false,
            };
            if !good {
                warn!(%id, from = %stored.message.from, "a kept message's signature does not verify; removing it");
            }
            match self
                .store
                .call(move |s| s.settle_incoming(&id, good, now_ms()))
                .await
            {
                Ok(Some(message)) => {
                    let name = message.peer().clone();
                    let _ = self
                        .events
                        .send(Event::Message {
                            message,
                            path: None,
                        })
                        .await;
                    self.tell_unread(name).await;
                }
                Ok(None) => {}
                Err(e) => warn!(%id, "cannot record a message's checked signature: {e}"),
            }
        }
    }

    fn emit(&self, event: Event) {
        if !self.events.try_send(event) {
            debug!("event dropped: the front end is not keeping up");
        }
    }

    fn save_config(&self) -> Result<(), crate::home::HomeError> {
        match &self.home {
            Some(home) => home.save_config(&self.config),
            None => Ok(()),
        }
    }

    // ---- the end ----

    async fn shutdown(mut self) -> ShutdownReport {
        let started = std::time::Instant::now();
        self.cancel.cancel();
        self.online = None;
        if let Some(session) = self.session.send_replace(None) {
            session.close().await;
        }
        for w in std::mem::take(&mut self.waiting) {
            fail_work_with(
                w.work,
                Failure::new(FailureKind::Other, "the client is shutting down"),
            );
        }
        self.workers.clear();
        let ended_in_time = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !ended_in_time {
            warn!("some of the client's tasks did not end in time; stopping them");
            self.tasks.shutdown().await;
        }
        // Every handle to the network is gone with its tasks: its loop ends.
        self.network = None;
        self.network_events = None;
        self.listen_addrs = None;
        self.reachability = None;
        self.inbound = None;
        // Its store handle too: the store's thread ends with the last one.
        self.file_env = None;
        self.fetches.clear();
        let network_ended = match self.network_task.take() {
            Some(task) => task.finish(SHUTDOWN_GRACE).await,
            None => true,
        };
        // The last handle to the store: its thread ends, closing the file.
        let Core {
            store,
            store_thread,
            ..
        } = self;
        drop(store);
        if let Some(thread) = store_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        ShutdownReport {
            clean: ended_in_time && network_ended,
            took: started.elapsed(),
        }
    }
}

/// Waits for a change of `watch`, if there is one to wait on.
async fn changed<T>(watch: Option<&mut watch::Receiver<T>>) {
    match watch {
        Some(watch) => {
            if watch.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            watch.borrow_and_update();
        }
        None => std::future::pending().await,
    }
}

/// The next network event (skipping lag), if there is a network.
async fn next_event(
    events: Option<&mut broadcast::Receiver<NetworkEvent>>,
) -> Option<NetworkEvent> {
    let events = match events {
        Some(events) => events,
        None => std::future::pending().await,
    };
    loop {
        match events.recv().await {
            Ok(event) => return Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn sign_record(
    identity: &Identity,
    name: &ScreenName,
    mut addrs: Vec<Multiaddr>,
    seq: u64,
    status: &OwnStatus,
) -> messenger_proto::record::SignedRecord {
    addrs.truncate(MAX_ADDRS);
    Registration {
        name: name.clone(),
        peer_id: identity.peer_id(),
        addrs,
        seq,
        expires_at: now_ms() + RECORD_TTL.as_millis() as u64,
        status: status.status,
        status_text: status.text.clone(),
    }
    .sign(identity)
}

/// The addresses worth registering now: those that others can dial.
fn advertised(network: &Network, loopback_ok: bool) -> Vec<Multiaddr> {
    let listen = network.listen_addrs().borrow().clone();
    let reachability = *network.reachability().borrow();
    advertised_addrs(&listen, reachability, loopback_ok)
}

/// The addresses worth registering: those that others can dial.
pub fn advertised_addrs(
    listen: &[Multiaddr],
    reachability: Reachability,
    loopback_ok: bool,
) -> Vec<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let usable = |a: &Multiaddr| {
        a.iter().all(|p| match p {
            Protocol::Ip4(ip) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
            Protocol::Ip6(ip) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
            _ => true,
        })
    };
    // libp2p reports relayed listen addresses with our own /p2p/<id> at the
    // end; registered addresses carry none (docs/protocol.md §5.2).
    let (relayed, direct): (Vec<Multiaddr>, Vec<Multiaddr>) = listen
        .iter()
        .filter(|a| usable(a))
        .map(without_peer_suffix)
        .partition(is_relayed);
    match reachability {
        Reachability::Public => direct,
        Reachability::Private => relayed,
        Reachability::Unknown => direct.into_iter().chain(relayed).collect(),
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Unless reachable directly, we are reachable through a reservation on
/// the node's relay: make sure we hold one.
async fn ensure_relay(network: &Network, node: &Multiaddr) {
    if *network.reachability().borrow() == Reachability::Public {
        return;
    }
    if network.listen_addrs().borrow().iter().any(is_relayed) {
        return;
    }
    let circuit = node.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
    match tokio::time::timeout(RELAY_WAIT, network.listen(circuit)).await {
        Ok(Ok(())) => info!("reserved a slot on the rendezvous relay"),
        Ok(Err(e)) => warn!("cannot reserve a slot on the rendezvous relay: {e}"),
        Err(_) => warn!("the rendezvous relay did not grant a reservation in time"),
    }
}

fn refusal_message(e: &DirectoryFailure) -> String {
    match e {
        DirectoryFailure::Node { source, .. } => match source.as_ref() {
            DirectoryError::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

fn failed(kind: FailureKind, message: impl std::fmt::Display) -> Response {
    Response::Failed(Failure::new(kind, message))
}

fn store_response<T>(
    result: Result<T, crate::store::StoreError>,
    ok: impl FnOnce(T) -> Response,
) -> Response {
    match result {
        Ok(value) => ok(value),
        Err(e) => Response::Failed(Failure::from(&e)),
    }
}

fn fail_work(work: DirWork, e: &DirectoryFailure) {
    fail_work_with(work, Failure::from(e));
}

fn fail_work_with(work: DirWork, failure: Failure) {
    let reply = match work {
        DirWork::Resolve { then, .. } => match then {
            AfterResolve::Whois(r)
            | AfterResolve::ContactsAdd(r)
            | AfterResolve::ContactsTrust(r) => r,
            AfterResolve::Send { reply, .. } => reply,
        },
        DirWork::Register { reply, .. }
        | DirWork::Release { reply, .. }
        | DirWork::ContactsList { reply } => reply,
    };
    let _ = reply.send(Response::Failed(failure));
}

fn suffix(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" \"{text}\"")
    }
}

/// How a failure to reach the node bears on the pause before the next try.
fn setback_of(failure: &DirectoryFailure) -> Setback {
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
