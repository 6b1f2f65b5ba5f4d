//! The core: the one task that owns the client's state, split by concern.
//!
//! Each part owns its state and handles its own completions:
//! [`directory`] the nodes, the session with one, the work waiting for it
//! and reconnection; [`registration`] our record, its renewal, status,
//! certificate and advertised addresses; [`contacts`] pins, blocks and
//! message requests; [`peers`] what the node tells us of others (through
//! [`Presence`], the one owner of it; delivery workers get it from here);
//! [`delivery`] the outbox and its workers; [`files`] and [`tunnels`]
//! their servers and transfers; [`views`] what the front ends are shown.
//! This file keeps the loop, the routing of requests and completions, and
//! shutdown. Everything that waits on the network or the node runs in a
//! sub-task of its own (kept in one `JoinSet`), which reports back here
//! with its part's completion, so the core always answers at once; the
//! store is reached through its own thread.

mod contacts;
mod delivery;
mod directory;
mod files;
mod peers;
mod registration;
mod settings;
mod tunnels;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use messenger_proto::chat::MessageId;
use messenger_proto::rate::Rate;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::directory::{AfterResolve, DirWork, Directory, DirectoryDone};
use self::registration::{Registration, RegistrationDone};
use super::nodes::Nodes;
use super::outbox::{Mode, WorkerMsg};
use super::presence::Presence;
use super::{Command, Note, ShutdownReport};
use crate::api::{Event, Failure, FailureKind, Request, Response};
use crate::chat::Signal;
use crate::events::EventSender;
use crate::files::FileEnv;
use crate::home::{Config, Home};
use crate::metrics::ClientMetrics;
use crate::network::{Inbound, Network, NetworkConfig, NetworkEvent, NetworkTask, Reachability};
use crate::store::{RequestLimits, StoreHandle, StoreThread};
use crate::trust::Trust;

pub use self::registration::{RECORD_TTL, advertised_addrs};

/// How long shutdown waits for the tasks to end by themselves.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How the core was started.
pub(super) struct CoreConfig {
    pub identity: messenger_proto::Identity,
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

/// A sub-task's result, for the part that started it.
enum Done {
    Nothing,
    /// A fetch task ended (settled, or cancelled).
    FetchEnded(MessageId),
    Directory(Box<DirectoryDone>),
    Registration(RegistrationDone),
}

pub(super) struct Core {
    identity: messenger_proto::Identity,
    home: Option<Home>,
    config: Config,
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

    /// The nodes, the session with one and what waits for it.
    directory: Directory,
    /// Our record at the node: whether online, status, certificate.
    registration: Registration,

    /// What we know of others, and whose changes the node pushes us.
    presence: Presence,
    trust: watch::Sender<Arc<Trust>>,
    workers: HashMap<messenger_proto::name::ScreenName, mpsc::Sender<WorkerMsg>>,
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
        let (notes, note_rx) = mpsc::channel(256);
        let nodes = Nodes::new(if config.rendezvous.is_empty() {
            config.config.rendezvous.clone()
        } else {
            config.rendezvous
        });
        Self {
            identity: config.identity,
            home: config.home,
            directory: Directory::new(nodes),
            registration: Registration::new(&config.config),
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
            let renew_at = self.registration.renew_at();
            let reconnect_at = self.directory.reconnect_at;
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
                Some(push) = self.directory.push_rx.recv() => self.on_push(push),
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
                let response = self.apply_settings(send_typing, bell, downloads, max_file_size);
                let _ = reply.send(response);
            }
            Request::ContactsRemove { name } => {
                let response = self.remove_contact(name).await;
                let _ = reply.send(response);
            }
            Request::ContactsList => {
                if self.registration.online.is_some() {
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
            Request::History {
                name,
                limit,
                before,
            } => {
                let response = store_response(
                    self.store
                        .call(move |s| s.history(&name, limit, before))
                        .await,
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

    // ---- what tasks report ----

    async fn on_done(&mut self, done: Done) {
        match done {
            Done::Nothing => {}
            Done::FetchEnded(id) => self.fetch_ended(id),
            Done::Directory(done) => self.on_directory_done(*done).await,
            Done::Registration(done) => self.on_registration_done(done),
        }
    }

    /// Hands a status event to the front ends if there is room: the core
    /// never waits on its front ends (messages and delivery marks, which
    /// must not be dropped, are handed on by the inbox and the workers).
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
        self.registration.online = None;
        if let Some(session) = self.directory.take_session() {
            session.close().await;
        }
        self.fail_waiting(&Failure::new(
            FailureKind::Other,
            "the client is shutting down",
        ));
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
