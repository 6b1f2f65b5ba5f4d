//! The agent: the home's client. One task (its `core`) owns its state: the
//! store (through the store's thread), the contacts' pins and the blocked
//! names, the directory session and our registration, what the node told
//! us of others, the delivery workers (`outbox`) and the inbox. Front
//! ends reach it through the cloneable [`Agent`] handle, which sends
//! [`Request`]s and gets [`Response`]s back, and read what happens from
//! one stream of [`Event`]s.
//!
//! The core runs until [`Agent::shutdown`] (or until every handle is
//! dropped); then every task it started ends, within a bounded time.

mod certificates;
mod core;
mod error;
mod nodes;
mod outbox;
mod presence;
mod sign_in;
mod sink;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::chat::MessageId;
use messenger_proto::name::ScreenName;
use messenger_proto::rate::Rate;
use tokio::sync::{mpsc, oneshot};

pub use self::core::{RECORD_TTL, advertised_addrs};
pub use crate::trust::{Distrust, Trust};
pub use error::{DirectoryFailure, OnlineError, SendError, SetStatusError, StartError};
pub use sign_in::{SignedIn, sign_in};

use crate::api::{Event, Failure, FailureKind, Request, Response, SendOutcome};
use crate::chat::DEFAULT_MESSAGE_RATE;
use crate::events::{EventSender, Follower, Journal, Missed};
use crate::home::{Config, Home};
use crate::metrics::ClientMetrics;
use crate::network::NetworkConfig;
use crate::store::{RequestLimits, StoreHandle, StoreThread};

/// How many events may wait for the front end.
const EVENT_BACKLOG: usize = 4096;

/// What an agent starts from.
#[derive(Debug)]
pub struct AgentConfig {
    /// Our key.
    pub identity: Identity,
    /// The home, where changed settings (name, status) are saved; none for
    /// an agent that keeps nothing.
    pub home: Option<Home>,
    /// The settings: our name, the node, our status.
    pub config: Config,
    /// The rendezvous nodes, tried in this order, if not (or not as) in
    /// the settings; empty: those in the settings.
    pub rendezvous: Vec<Multiaddr>,
    /// The store, on its thread.
    pub store: (StoreHandle, StoreThread),
    /// The network's knobs.
    pub network: NetworkConfig,
    /// How fast one peer may send us messages.
    pub message_rate: Rate,
    /// What senders not accepted yet (not contacts, nobody we wrote to)
    /// may store: message requests.
    pub message_requests: RequestLimits,
    /// Where to count what the client does, if anywhere.
    pub metrics: Option<Arc<ClientMetrics>>,
}

impl AgentConfig {
    /// The client of `home`: its key, settings and store. `rendezvous`,
    /// unless empty, overrides the remembered nodes.
    pub fn for_home(home: Home, rendezvous: Vec<Multiaddr>) -> Result<Self, StartError> {
        let identity = home.identity()?;
        let config = home.config()?;
        let in_use = home.config_exists();
        let store = StoreHandle::open(&home.store_path(), in_use)?;
        Ok(Self {
            identity,
            home: Some(home),
            config,
            rendezvous,
            store,
            network: NetworkConfig::default(),
            message_rate: DEFAULT_MESSAGE_RATE,
            message_requests: RequestLimits::default(),
            metrics: None,
        })
    }

    /// A client that keeps nothing (its store is in memory): for
    /// benchmarks, tests and demonstrations.
    pub fn ephemeral(identity: Identity, rendezvous: Multiaddr) -> Result<Self, StartError> {
        Ok(Self {
            identity,
            home: None,
            config: Config::default(),
            rendezvous: vec![rendezvous],
            store: StoreHandle::in_memory()?,
            network: NetworkConfig::default(),
            message_rate: DEFAULT_MESSAGE_RATE,
            message_requests: RequestLimits::default(),
            metrics: None,
        })
    }
}

/// What the handle asks the core.
enum Command {
    Call(Request, oneshot::Sender<Response>),
    GoOnline {
        listen: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), OnlineError>>,
    },
    Shutdown(oneshot::Sender<ShutdownReport>),
    OpenTunnel {
        to: ScreenName,
        request: messenger_proto::tunnel::TunnelRequest,
        reply: oneshot::Sender<Result<crate::tunnels::Tunnel, Failure>>,
    },
    ListenPipe {
        from: Option<ScreenName>,
        reply: oneshot::Sender<Result<oneshot::Receiver<crate::tunnels::Tunnel>, Failure>>,
    },
}

/// What the workers and the inbox tell the core.
#[derive(Debug)]
enum Note {
    /// A delivery worker asks where its recipient is.
    Resolve {
        name: messenger_proto::name::ScreenName,
        reply: outbox::ResolveReply,
    },
    /// A contact's name was seen with another key than the pinned one.
    KeyObserved {
        name: messenger_proto::name::ScreenName,
        key: PeerId,
    },
    /// A file was offered to me (the offer verified and stored).
    Offered(MessageId),
    /// A message from this name became visible: its unread count changed.
    /// Told by the core, so that counts and marks read reach the front
    /// ends in the order they happened.
    Unread(messenger_proto::name::ScreenName),
    /// A file to offer is hashed: its offer can be stored and sent.
    FileReady {
        message: messenger_proto::chat::Message,
        source: FileSource,
        reply: oneshot::Sender<Response>,
    },
}

/// The file behind an offer of mine.
#[derive(Debug)]
struct FileSource {
    path: std::path::PathBuf,
    modified: Option<u64>,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every task ended by itself within the grace period (none
    /// had to be stopped).
    pub clean: bool,
    /// How long it took.
    pub took: Duration,
}

/// Handle to a running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    /// Where every event is numbered, for front ends that follow.
    journal: Arc<Journal>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the agent's core (it connects to the node only when
    /// something needs it). Events for the front end arrive on the
    /// returned channel, which must be read.
    pub async fn start(config: AgentConfig) -> Result<(Agent, mpsc::Receiver<Event>), StartError> {
        let (store, store_thread) = config.store;
        let contacts = store.call(|s| s.contacts()).await?;
        let blocked = store.call(|s| s.blocked()).await?;
        let invitations = store.call(|s| s.invitations()).await?;
        let (events, event_rx) = mpsc::channel(EVENT_BACKLOG);
        let events = EventSender::new(events, config.metrics.clone());
        let journal = Arc::clone(events.journal());
        let peer_id = config.identity.peer_id();
        let core = core::Core::new(core::CoreConfig {
            identity: config.identity,
            home: config.home,
            config: config.config,
            rendezvous: config.rendezvous,
            store,
            store_thread,
            events,
            network: config.network,
            message_rate: config.message_rate,
            message_requests: config.message_requests,
            metrics: config.metrics,
            trust: Trust::new(&contacts, &blocked),
            invitations,
        });
        let (commands, command_rx) = mpsc::channel(64);
        // Owned through its channel: it ends on `shutdown`, or when the
        // last handle is dropped.
        tokio::spawn(core.run(command_rx));
        Ok((
            Agent {
                commands,
                peer_id,
                journal,
            },
            event_rx,
        ))
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The events after number `after` of run `run` (from a
    /// [`Request::Snapshot`]), as they happen.
    pub fn follow(&self, run: &str, after: u64) -> Result<Follower, Missed> {
        self.journal.follow(run, after)
    }

    /// Runs one request.
    pub async fn call(&self, request: Request) -> Response {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Call(request, reply))
            .await
            .is_err()
        {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Sends `text` to `to`: stored first, then delivered (or queued).
    pub async fn send(&self, to: &str, text: &str) -> Result<SendOutcome, Failure> {
        let request = Request::Send {
            id: MessageId::random(),
            to: name(to)?,
            text: text.to_owned(),
        };
        match self.call(request).await {
            Response::Sent(outcome) => Ok(outcome),
            Response::Failed(failure) => Err(failure),
            other => Err(unexpected(&other)),
        }
    }

    /// Claims `name` (or confirms it is ours) and remembers it.
    pub async fn register(&self, name: &str) -> Result<bool, Failure> {
        match self
            .call(Request::Register {
                name: self::name(name)?,
            })
            .await
        {
            Response::Registered { new_claim, .. } => Ok(new_claim),
            Response::Failed(failure) => Err(failure),
            other => Err(unexpected(&other)),
        }
    }

    /// Goes online: listens on `listen`, registers, accepts messages,
    /// watches contacts and outbox recipients, and delivers the outbox as
    /// recipients become reachable; reconnects by itself.
    pub async fn go_online(&self, listen: Vec<Multiaddr>) -> Result<(), OnlineError> {
        let (reply, rx) = oneshot::channel();
        let stopped =
            || OnlineError::Directory(DirectoryFailure::Contact("the client has stopped".into()));
        self.commands
            .send(Command::GoOnline { listen, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Opens a tunnel to `to` (online only): a connection to a port they
    /// invited me to, the question whether they would serve one, or a
    /// pipe. The stream carries raw bytes once returned.
    pub async fn open_tunnel(
        &self,
        to: &ScreenName,
        request: messenger_proto::tunnel::TunnelRequest,
    ) -> Result<crate::tunnels::Tunnel, Failure> {
        let (reply, rx) = oneshot::channel();
        let command = Command::OpenTunnel {
            to: to.clone(),
            request,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(stopped_failure());
        }
        rx.await.unwrap_or_else(|_| Err(stopped_failure()))
    }

    /// Waits for a pipe from `from` (any contact when `None`), online only:
    /// the receiver gets it when it comes; dropping it stops waiting.
    pub async fn listen_pipe(
        &self,
        from: Option<&ScreenName>,
    ) -> Result<oneshot::Receiver<crate::tunnels::Tunnel>, Failure> {
        let (reply, rx) = oneshot::channel();
        let command = Command::ListenPipe {
            from: from.cloned(),
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(stopped_failure());
        }
        rx.await.unwrap_or_else(|_| Err(stopped_failure()))
    }

    /// Goes offline and stops every task of the client, waiting (a bounded
    /// time) for them to end.
    pub async fn shutdown(self) -> ShutdownReport {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_err() {
            return ShutdownReport {
                clean: true,
                took: Duration::ZERO,
            };
        }
        rx.await.unwrap_or(ShutdownReport {
            clean: false,
            took: Duration::ZERO,
        })
    }
}

/// A name given as text, checked.
fn name(raw: &str) -> Result<ScreenName, Failure> {
    ScreenName::parse(raw).map_err(|e| Failure::new(FailureKind::Invalid, e))
}

fn stopped() -> Response {
    Response::Failed(stopped_failure())
}

fn stopped_failure() -> Failure {
    Failure::new(FailureKind::Other, "the client has stopped")
}

fn unexpected(response: &Response) -> Failure {
    Failure::new(
        FailureKind::Other,
        format!("the client answered something unexpected: {response:?}"),
    )
}
