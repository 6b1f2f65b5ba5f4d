//! The messenger client: registers a name, resolves others, sends messages
//! directly, and stays online.
//!
//! [`Client`] is a cheap-to-clone handle over the network, the current
//! directory session, and the chat links to peers.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::certificate::{NameCertificate, SignedCertificate};
use messenger_proto::chat::{self, Message, MessageId, TextError};
use messenger_proto::directory::{
    ErrorCode, MAX_VISIBLE_TO, MAX_WATCH_PER_REQUEST, Resolution, ResolutionError,
};
use messenger_proto::name::{NameError, ScreenName};
use messenger_proto::presence::{Presence, Status};
use messenger_proto::rate::Rate;
use messenger_proto::record::{MAX_ADDRS, Registration, without_peer_suffix};
use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::chat::{ChatLink, DeliveryError, Inbox, IncomingMessage, MessageSink};
use crate::directory::{DirectoryError, DirectorySession, Registered};
use crate::network::{
    Network, NetworkConfig, NetworkError, NetworkEvent, Path, Reachability, is_relayed,
};

/// How long a registration record is valid; the online client renews it
/// well before.
pub const RECORD_TTL: Duration = Duration::from_secs(600);
const RENEW_EVERY: Duration = Duration::from_secs(180);

/// Why the client could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The directory failed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// A name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The node's answer does not verify.
    #[error("the rendezvous node gave a record that does not verify: {0}")]
    BadResolution(#[from] ResolutionError),
}

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// We have no screen name to send from.
    #[error("you have no screen name yet: run `messenger register NAME` first")]
    NoName,
    /// The text breaks the limits.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The recipient name is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// Nobody owns the recipient name.
    #[error("no such name: {0}")]
    NoSuchName(ScreenName),
    /// The recipient is not online.
    #[error("{name} is offline{}", last_seen_suffix(*.last_seen))]
    Offline {
        /// The recipient.
        name: ScreenName,
        /// When they were last online (ms since epoch).
        last_seen: Option<u64>,
    },
    /// The directory failed.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The node's answer does not verify.
    #[error("the rendezvous node gave a record for the recipient that does not verify: {0}")]
    BadResolution(#[from] ResolutionError),
    /// No address of the recipient could be dialled.
    #[error("{name} is online but unreachable; tried {}: {reason}", list(.tried))]
    Unreachable {
        /// The recipient.
        name: ScreenName,
        /// The addresses tried.
        tried: Vec<Multiaddr>,
        /// How it failed.
        reason: String,
    },
    /// The recipient is a contact whose key changed since it was pinned.
    #[error("{0}")]
    KeyChanged(Box<KeyChange>),
    /// The recipient did not acknowledge.
    #[error("not delivered to {name}: {source}")]
    NotDelivered {
        /// The recipient.
        name: ScreenName,
        /// Why.
        source: DeliveryError,
    },
}

fn list(addrs: &[Multiaddr]) -> String {
    if addrs.is_empty() {
        return "no addresses".into();
    }
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn last_seen_suffix(last_seen: Option<u64>) -> String {
    match last_seen {
        Some(ms) => format!(" (last seen {})", crate::time::describe(ms)),
        None => String::new(),
    }
}

/// A contact's name now resolves to another key than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "KEY CHANGED: {name} was pinned to key {pinned}, but the rendezvous node now says {current}. \
     Nothing is sent to or accepted from {name} until you run `messenger contacts trust {name}` \
     (do so only if you know why the key changed)"
)]
pub struct KeyChange {
    /// The contact.
    pub name: ScreenName,
    /// The pinned key.
    pub pinned: PeerId,
    /// The key the node reports now.
    pub current: PeerId,
}

/// A verified answer about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The name.
    pub name: ScreenName,
    /// The key that owns it.
    pub peer_id: PeerId,
    /// What we are shown: online, away, busy or offline.
    pub presence: Presence,
    /// The status text, while shown online.
    pub status_text: String,
    /// Whether we may dial it now: we hold its signed, unexpired record
    /// (also true for an invisible owner that named us).
    pub reachable: bool,
    /// Its current addresses (verified: signed by the owner).
    pub addrs: Vec<Multiaddr>,
    /// When it was last online (ms since epoch).
    pub last_seen: Option<u64>,
}

impl PeerInfo {
    /// Verifies a node's answer.
    pub fn from_resolution(res: &Resolution) -> Result<Self, ResolutionError> {
        let record = res.verified_record(now_ms())?;
        let reachable = record.is_some();
        Ok(Self {
            name: res.name.clone(),
            peer_id: res.owner,
            presence: if reachable {
                res.presence
            } else {
                Presence::Offline
            },
            status_text: if reachable {
                res.status_text.clone()
            } else {
                String::new()
            },
            reachable,
            addrs: record.map(|r| r.addrs).unwrap_or_default(),
            last_seen: res.last_seen,
        })
    }

    /// Whether it is shown online (online, away or busy).
    pub fn online(&self) -> bool {
        self.presence.is_online()
    }
}

/// What a delivered message took, step by step.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The message id.
    pub id: MessageId,
    /// The recipient.
    pub to: ScreenName,
    /// The recipient's peer id.
    pub peer_id: PeerId,
    /// When it was sent (ms since epoch).
    pub sent_at: u64,
    /// Resolving the name (zero when a link to the peer was already open).
    pub resolve: Duration,
    /// Connecting to the peer and opening the chat stream (zero when reused).
    pub dial: Duration,
    /// Writing the message until its acknowledgement arrived.
    pub deliver: Duration,
}

/// Something that happened to an online client.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// Registered and reachable (again, after a reconnect).
    Online {
        /// Our name.
        name: ScreenName,
        /// The addresses registered.
        addrs: Vec<Multiaddr>,
        /// True the first time, false after a reconnect.
        first: bool,
        /// Whether we are reachable directly or only through the relay.
        reachability: Reachability,
    },
    /// Our addresses or reachability changed and were registered.
    Addresses {
        /// The addresses now registered.
        addrs: Vec<Multiaddr>,
        /// Whether we are reachable directly or only through the relay.
        reachability: Reachability,
    },
    /// How we are connected to a peer changed (hole punching).
    Path {
        /// The peer.
        peer: PeerId,
        /// The path now.
        path: Path,
        /// Why, when hole punching failed.
        detail: Option<String>,
    },
    /// The connection to the rendezvous node was lost; retrying.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// The node refused our registration; we stay offline.
    RegistrationRefused {
        /// The node's explanation.
        reason: String,
    },
    /// A message arrived.
    Message(IncomingMessage),
    /// A watched name's presence changed (verified).
    Presence(PeerInfo),
}

/// Our status and who may still reach us while invisible.
#[derive(Debug, Clone, Default)]
struct OwnStatus {
    status: Status,
    text: String,
    visible_to: Vec<PeerId>,
}

struct Inner {
    identity: Identity,
    network: Network,
    rendezvous: Multiaddr,
    /// The rendezvous node's peer id: whose certificates we trust.
    node: PeerId,
    /// The node's certificate of our name, from the last registration,
    /// verified. Chat links send it ahead of messages.
    certificate: watch::Sender<Option<SignedCertificate>>,
    name: Mutex<Option<ScreenName>>,
    directory: watch::Sender<Option<DirectorySession>>,
    /// Open chat links by recipient name. An open link is authenticated
    /// (Noise) to the key the name resolved to when it was opened.
    links: tokio::sync::Mutex<HashMap<ScreenName, ChatLink>>,
    last_seq: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    status: Mutex<OwnStatus>,
    /// Names whose presence the node pushes; watched again after a reconnect.
    watched: Mutex<BTreeSet<ScreenName>>,
    pushes: mpsc::Sender<Resolution>,
    push_rx: Mutex<Option<mpsc::Receiver<Resolution>>>,
    online_as: Mutex<Option<ScreenName>>,
    /// The addresses in our last registration.
    registered_addrs: Mutex<Vec<Multiaddr>>,
    /// Loopback addresses are worth registering only with a loopback node.
    node_is_loopback: bool,
    /// How fast one peer may send us messages (see [`Inbox`]).
    message_rate: Mutex<Rate>,
}

/// How long `go_online` waits for the node's reachability verdict before
/// registering. A reachable client gets it in milliseconds; behind NAT the
/// verdict takes seconds (the node's dial-back must time out), so such a
/// client registers its relayed address meanwhile, then narrows down.
const REACHABILITY_WAIT: Duration = Duration::from_millis(1500);

/// How often a one-off request is retried on a fresh session when the node
/// dropped the session before answering (it does under bursts of new
/// sessions: libp2p-stream holds one pending inbound stream at a time).
const RETRIES_ON_DROPPED_SESSION: u64 = 5;

/// How long a relay reservation may take.
const RELAY_WAIT: Duration = Duration::from_secs(5);

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

/// Handle to a running client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the network and opens a directory session with the node.
    pub async fn connect(
        identity: Identity,
        rendezvous: Multiaddr,
        name: Option<ScreenName>,
    ) -> Result<Self, ClientError> {
        Self::connect_listening(identity, rendezvous, name, Vec::new()).await
    }

    /// Like [`Client::connect`], but listens on `listen` first, so that the
    /// connection to the node leaves from a listening port: the node then
    /// observes the address (and NAT mapping) peers can use, which hole
    /// punching needs.
    pub async fn connect_listening(
        identity: Identity,
        rendezvous: Multiaddr,
        name: Option<ScreenName>,
        listen: Vec<Multiaddr>,
    ) -> Result<Self, ClientError> {
        let node = crate::directory::node_peer_id(&rendezvous)?;
        let node_is_loopback = rendezvous.iter().any(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
            libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        });
        let network = Network::start(
            &identity,
            NetworkConfig {
                rendezvous: Some((node, rendezvous.clone())),
                ..NetworkConfig::default()
            },
        )?;
        for addr in listen {
            network.listen(addr).await?;
        }
        let (pushes, push_rx) = mpsc::channel(256);
        let session = DirectorySession::open(&network, &rendezvous, Some(pushes.clone())).await?;
        let (directory, _) = watch::channel(Some(session));
        let (certificate, _) = watch::channel(None);
        Ok(Self {
            inner: Arc::new(Inner {
                identity,
                network,
                rendezvous,
                node,
                certificate,
                name: Mutex::new(name),
                directory,
                links: Default::default(),
                last_seq: AtomicU64::new(0),
                tasks: Mutex::default(),
                status: Mutex::default(),
                watched: Mutex::default(),
                pushes,
                push_rx: Mutex::new(Some(push_rx)),
                online_as: Mutex::default(),
                registered_addrs: Mutex::default(),
                node_is_loopback,
                message_rate: Mutex::new(crate::chat::DEFAULT_MESSAGE_RATE),
            }),
        })
    }

    /// How fast one peer may send us messages once we go online (default
    /// [`DEFAULT_MESSAGE_RATE`](crate::chat::DEFAULT_MESSAGE_RATE)).
    pub fn set_message_rate(&self, rate: Rate) {
        *lock(&self.inner.message_rate) = rate;
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// Our screen name, if we have one.
    pub fn name(&self) -> Option<ScreenName> {
        lock(&self.inner.name).clone()
    }

    /// The network handle.
    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    fn session(&self) -> Result<DirectorySession, DirectoryError> {
        self.inner
            .directory
            .borrow()
            .clone()
            .filter(|s| !s.is_closed())
            .ok_or(DirectoryError::Closed)
    }

    /// A session for a one-off request: the current one, or a new one if
    /// it closed. (Online, the reconnect loop owns the session instead.)
    /// A node under a burst of new sessions may drop one before answering,
    /// so a request that finds its session closed is retried once on a
    /// fresh one.
    async fn with_session<T, F, Fut>(&self, request: F) -> Result<T, DirectoryError>
    where
        F: Fn(DirectorySession) -> Fut,
        Fut: std::future::Future<Output = Result<T, DirectoryError>>,
    {
        let online = lock(&self.inner.online_as).is_some();
        let session = match self.session() {
            Ok(session) => session,
            Err(_) if !online => self.reopen().await?,
            Err(e) => return Err(e),
        };
        let mut result = request(session).await;
        for attempt in 1..=RETRIES_ON_DROPPED_SESSION {
            match result {
                Err(DirectoryError::Closed) if !online => {
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                    result = request(self.reopen().await?).await;
                }
                other => return other,
            }
        }
        result
    }

    async fn reopen(&self) -> Result<DirectorySession, DirectoryError> {
        let session = DirectorySession::open(
            &self.inner.network,
            &self.inner.rendezvous,
            Some(self.inner.pushes.clone()),
        )
        .await?;
        self.inner.directory.send_replace(Some(session.clone()));
        Ok(session)
    }

    /// A sequence number above every earlier one: microseconds of wall
    /// time, bumped if the clock has not moved.
    fn next_seq(&self) -> u64 {
        let now = now_ms().saturating_mul(1000);
        let mut last = self.inner.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.inner.last_seq.compare_exchange(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Claims (or renews) `name` with `addrs` as our current addresses.
    pub async fn register(
        &self,
        name: &ScreenName,
        addrs: Vec<Multiaddr>,
    ) -> Result<Registered, ClientError> {
        if lock(&self.inner.online_as).is_some() {
            let session = self.session()?;
            return self.register_on(&session, name, addrs).await;
        }
        let record_addrs = addrs.clone();
        let first = {
            let session = match self.session() {
                Ok(session) => session,
                Err(_) => self.reopen().await?,
            };
            self.register_on(&session, name, addrs).await
        };
        let mut result = first;
        for attempt in 1..=RETRIES_ON_DROPPED_SESSION {
            match result {
                Err(ClientError::Directory(DirectoryError::Closed)) => {
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                    let session = self.reopen().await?;
                    result = self.register_on(&session, name, record_addrs.clone()).await;
                }
                other => return other,
            }
        }
        result
    }

    async fn register_on(
        &self,
        session: &DirectorySession,
        name: &ScreenName,
        mut addrs: Vec<Multiaddr>,
    ) -> Result<Registered, ClientError> {
        addrs.truncate(MAX_ADDRS);
        let own = lock(&self.inner.status).clone();
        let record = Registration {
            name: name.clone(),
            peer_id: self.peer_id(),
            addrs,
            seq: self.next_seq(),
            expires_at: now_ms() + RECORD_TTL.as_millis() as u64,
            status: own.status,
            status_text: own.text,
        };
        let visible_to = match own.status {
            Status::Invisible => own.visible_to,
            _ => Vec::new(),
        };
        let addrs = record.addrs.clone();
        let registered = session
            .register(record.sign(&self.inner.identity), visible_to)
            .await?;
        *lock(&self.inner.registered_addrs) = addrs;
        *lock(&self.inner.name) = Some(registered.name.clone());
        self.keep_certificate(&registered);
        Ok(registered)
    }

    /// Keeps the node's certificate of our name, if it is one our peers
    /// will accept (issued by our node, to us, for this name, valid now).
    fn keep_certificate(&self, registered: &Registered) {
        let Some(signed) = &registered.certificate else {
            return;
        };
        match signed.verify(&self.inner.node, now_ms()) {
            Ok(cert) if cert.vouches_for(&registered.name, &self.peer_id()) => {
                self.inner.certificate.send_replace(Some(signed.clone()));
            }
            Ok(_) => warn!("the node's certificate is for another name or key; not using it"),
            Err(e) => warn!("the node's certificate does not verify; not using it: {e}"),
        }
    }

    /// Whether a directory session with the node is open now.
    pub fn directory_connected(&self) -> bool {
        self.session().is_ok()
    }

    /// Our current name certificate (decoded), if we hold one: when it
    /// expires, our peers need the node to check our name.
    pub fn certificate(&self) -> Option<NameCertificate> {
        let signed = self.inner.certificate.borrow().clone()?;
        signed.decode_unverified().ok()
    }

    /// How long until the registration should be renewed: the usual period,
    /// or sooner if our certificate would expire first.
    fn renew_in(&self) -> Duration {
        let Some(cert) = self.certificate() else {
            return RENEW_EVERY;
        };
        let left = Duration::from_millis(cert.expires_at.saturating_sub(now_ms()));
        (left / 2).clamp(Duration::from_secs(1), RENEW_EVERY)
    }

    /// Gives a name up.
    pub async fn release(&self, name: &str) -> Result<ScreenName, ClientError> {
        Ok(self
            .with_session(|s| async move { s.release(name).await })
            .await?)
    }

    /// Looks a name up and verifies the owner's signed record.
    pub async fn whois(&self, name: &str) -> Result<PeerInfo, ClientError> {
        let name = ScreenName::parse(name)?;
        let resolution = self
            .with_session(|s| {
                let name = name.clone();
                async move { s.resolve(name.as_str()).await }
            })
            .await?;
        Ok(PeerInfo::from_resolution(&resolution)?)
    }

    /// The names a peer owns.
    pub async fn names_of(&self, peer: PeerId) -> Result<Vec<ScreenName>, ClientError> {
        Ok(self
            .with_session(|s| async move { s.resolve_peer(peer).await })
            .await?)
    }

    /// Resolves `to` and verifies the answer.
    pub async fn resolve(&self, to: &ScreenName) -> Result<PeerInfo, SendError> {
        let resolution = match self
            .with_session(|s| async move { s.resolve(to.as_str()).await })
            .await
        {
            Ok(r) => r,
            Err(e) if e.code() == Some(ErrorCode::NoSuchName) => {
                return Err(SendError::NoSuchName(to.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(PeerInfo::from_resolution(&resolution)?)
    }

    /// The open chat link to `to`, if there is one.
    pub async fn open_link(&self, to: &ScreenName) -> Option<ChatLink> {
        let links = self.inner.links.lock().await;
        links.get(to).filter(|l| !l.is_closed()).cloned()
    }

    /// Dials the peer `info` describes and opens a chat link to it (or
    /// returns the open one). Returns the time dialling took.
    pub async fn link(&self, info: &PeerInfo) -> Result<(ChatLink, Duration), SendError> {
        let mut links = self.inner.links.lock().await;
        if let Some(link) = links
            .get(&info.name)
            .filter(|l| !l.is_closed() && l.peer() == info.peer_id)
        {
            return Ok((link.clone(), Duration::ZERO));
        }
        if !info.reachable {
            return Err(SendError::Offline {
                name: info.name.clone(),
                last_seen: info.last_seen,
            });
        }
        let dialling = Instant::now();
        let unreachable = |reason: String| SendError::Unreachable {
            name: info.name.clone(),
            tried: info.addrs.clone(),
            reason,
        };
        if info.addrs.is_empty() {
            return Err(unreachable("it registered no addresses".into()));
        }
        self.inner
            .network
            .dial(info.peer_id, info.addrs.clone())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let link = ChatLink::open(
            &self.inner.network,
            info.peer_id,
            self.inner.certificate.subscribe(),
        )
        .await
        .map_err(|e| unreachable(e.to_string()))?;
        links.insert(info.name.clone(), link.clone());
        Ok((link, dialling.elapsed()))
    }

    /// The name we opened a chat link to `peer` for, if any.
    pub async fn link_name(&self, peer: &PeerId) -> Option<ScreenName> {
        let links = self.inner.links.lock().await;
        links
            .iter()
            .find(|(_, l)| &l.peer() == peer)
            .map(|(name, _)| name.clone())
    }

    /// The peer moved (its registered addresses changed): forget links and
    /// connections to its old addresses, so the next message dials anew.
    pub async fn peer_moved(&self, peer: &PeerId) {
        self.drop_links_to(peer).await;
        self.inner.network.disconnect(*peer).await;
    }

    /// Forgets every link to `peer`.
    async fn drop_links_to(&self, peer: &PeerId) {
        self.inner.links.lock().await.retain(|_, l| {
            if &l.peer() == peer {
                l.abort();
                false
            } else {
                true
            }
        });
    }

    /// Forgets the link to `to` (after a failure), so the next send dials again.
    pub async fn drop_link(&self, to: &ScreenName) {
        self.inner.links.lock().await.remove(to);
    }

    /// A new message from us to `to`.
    pub fn compose(&self, to: &ScreenName, text: &str) -> Result<Message, SendError> {
        chat::check_text(text)?;
        let from = self.name().ok_or(SendError::NoName)?;
        Ok(Message {
            id: MessageId::random(),
            from,
            to: to.clone(),
            sent_at: now_ms(),
            text: text.to_owned(),
        })
    }

    /// Signs a message for the wire.
    pub fn sign(&self, message: &Message) -> Signed {
        Signed::sign(&self.inner.identity, MESSAGE_CONTEXT, message)
    }

    /// Sends `text` to `to` directly and waits for the acknowledgement,
    /// without storing anything (the store-backed path with an outbox is
    /// [`crate::agent::Agent`]).
    pub async fn send(&self, to: &str, text: &str) -> Result<SendReport, SendError> {
        chat::check_text(text)?;
        let to = ScreenName::parse(to)?;
        let message = self.compose(&to, text)?;
        let (link, resolve, dial) = match self.open_link(&to).await {
            Some(link) => (link, Duration::ZERO, Duration::ZERO),
            None => {
                let resolving = Instant::now();
                let info = self.resolve(&to).await?;
                let resolve = resolving.elapsed();
                let (link, dial) = self.link(&info).await?;
                (link, resolve, dial)
            }
        };
        let delivering = Instant::now();
        let result = link.deliver(message.id, self.sign(&message)).await;
        let deliver = delivering.elapsed();
        match result {
            Ok(()) => Ok(SendReport {
                id: message.id,
                to,
                peer_id: link.peer(),
                sent_at: message.sent_at,
                resolve,
                dial,
                deliver,
            }),
            Err(source) => {
                self.drop_link(&to).await;
                Err(SendError::NotDelivered { name: to, source })
            }
        }
    }

    /// Changes our status; re-registers at once when online. While
    /// invisible, `visible_to` may still dial us.
    pub async fn set_status(
        &self,
        status: Status,
        text: String,
        mut visible_to: Vec<PeerId>,
    ) -> Result<(), ClientError> {
        visible_to.truncate(MAX_VISIBLE_TO);
        *lock(&self.inner.status) = OwnStatus {
            status,
            text,
            visible_to,
        };
        let online_as = lock(&self.inner.online_as).clone();
        if let Some(name) = online_as {
            self.register(&name, self.advertised()).await?;
        }
        Ok(())
    }

    /// Our current status and status text.
    pub fn status(&self) -> (Status, String) {
        let own = lock(&self.inner.status);
        (own.status, own.text.clone())
    }

    /// Asks the node to push presence changes of `names` (kept across
    /// reconnects). The current presence of each arrives as a push too.
    pub async fn watch(&self, names: &[ScreenName]) -> Result<(), ClientError> {
        let new: Vec<String> = {
            let mut watched = lock(&self.inner.watched);
            names
                .iter()
                .filter(|n| watched.insert((*n).clone()))
                .map(|n| n.to_string())
                .collect()
        };
        let session = self.session()?;
        for chunk in new.chunks(MAX_WATCH_PER_REQUEST) {
            session.watch(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Stops presence pushes of `names`.
    pub async fn unwatch(&self, names: &[ScreenName]) -> Result<(), ClientError> {
        let gone: Vec<String> = {
            let mut watched = lock(&self.inner.watched);
            names
                .iter()
                .filter(|n| watched.remove(*n))
                .map(|n| n.to_string())
                .collect()
        };
        let session = self.session()?;
        for chunk in gone.chunks(MAX_WATCH_PER_REQUEST) {
            session.unwatch(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Where others should dial us now.
    pub fn advertised(&self) -> Vec<Multiaddr> {
        let listen = self.inner.network.listen_addrs().borrow().clone();
        let reachability = *self.inner.network.reachability().borrow();
        advertised_addrs(&listen, reachability, self.inner.node_is_loopback)
    }

    /// Whether we are reachable directly, as the node found.
    pub fn reachability(&self) -> Reachability {
        *self.inner.network.reachability().borrow()
    }

    /// How we are connected to `peer` now, if at all.
    pub fn path(&self, peer: &PeerId) -> Option<Path> {
        self.inner.network.path(peer)
    }

    /// Unless we know we are reachable directly, we are reachable through
    /// a reservation on the node's relay: make sure we hold one.
    async fn ensure_relay(&self) {
        if self.reachability() == Reachability::Public {
            return;
        }
        let has_relay = self
            .inner
            .network
            .listen_addrs()
            .borrow()
            .iter()
            .any(is_relayed);
        if has_relay {
            return;
        }
        let circuit = self
            .inner
            .rendezvous
            .clone()
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        match tokio::time::timeout(RELAY_WAIT, self.inner.network.listen(circuit)).await {
            Ok(Ok(())) => info!("reserved a slot on the rendezvous relay"),
            Ok(Err(e)) => warn!("cannot reserve a slot on the rendezvous relay: {e}"),
            Err(_) => warn!("the rendezvous relay did not grant a reservation in time"),
        }
    }

    /// Goes online as `name`: listens on `listen` (if not yet), registers, accepts
    /// messages, and keeps the registration alive (reconnecting to the node
    /// when the connection drops) until [`Client::shutdown`].
    pub async fn go_online(
        &self,
        name: ScreenName,
        listen: Vec<Multiaddr>,
        sink: Arc<dyn MessageSink>,
    ) -> Result<mpsc::Receiver<ClientEvent>, ClientError> {
        let listening = self.inner.network.listen_addrs().borrow().len();
        if listening == 0 {
            for addr in listen {
                self.inner.network.listen(addr).await?;
            }
        }
        let (events, rx) = mpsc::channel(1024);
        let (messages, mut message_rx) = mpsc::channel(1024);
        let incoming = self.inner.network.take_chat_streams().ok_or_else(|| {
            NetworkError::Transport("this client is already online (chat streams taken)".into())
        })?;
        let inbox = Inbox::new(
            name.clone(),
            self.inner.node,
            self.inner.directory.subscribe(),
            messages,
            sink,
            *lock(&self.inner.message_rate),
        );
        let forward = events.clone();
        let mut tasks = Vec::new();
        if let Some(mut pushes) = lock(&self.inner.push_rx).take() {
            let forward = events.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(resolution) = pushes.recv().await {
                    match PeerInfo::from_resolution(&resolution) {
                        Ok(info) => {
                            if forward.send(ClientEvent::Presence(info)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => warn!("ignoring a presence push that does not verify: {e}"),
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(inbox.serve(incoming)));
        tasks.push(tokio::spawn(async move {
            while let Some(m) = message_rx.recv().await {
                if forward.send(ClientEvent::Message(m)).await.is_err() {
                    break;
                }
            }
        }));
        let mut network_events = self.inner.network.events();
        let forward = events.clone();
        let client = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let event = match network_events.recv().await {
                    Ok(NetworkEvent::HolePunched { peer }) => {
                        // Links on the relayed connection die with it: the
                        // next message opens one on the direct connection.
                        let client = client.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(crate::network::RELAYED_GRACE_PERIOD).await;
                            client.drop_links_to(&peer).await;
                        });
                        ClientEvent::Path {
                            peer,
                            path: Path::Direct,
                            detail: None,
                        }
                    }
                    Ok(NetworkEvent::HolePunchFailed { peer, reason }) => ClientEvent::Path {
                        peer,
                        path: Path::Relayed,
                        detail: Some(reason),
                    },
                    Ok(NetworkEvent::Disconnected { .. })
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                if forward.send(event).await.is_err() {
                    break;
                }
            }
        }));
        // Learn whether the node can dial us back before registering, so
        // that only addresses that work are registered.
        let mut reachability = self.inner.network.reachability();
        let _ = tokio::time::timeout(
            REACHABILITY_WAIT,
            reachability.wait_for(|r| *r != Reachability::Unknown),
        )
        .await;
        self.ensure_relay().await;
        // The first registration happens here so that errors such as
        // "name taken" reach the caller directly.
        let addrs = self.advertised();
        let session = self.session()?;
        self.register_on(&session, &name, addrs.clone()).await?;
        *lock(&self.inner.online_as) = Some(name.clone());
        let _ = events
            .send(ClientEvent::Online {
                name: name.clone(),
                addrs,
                first: true,
                reachability: self.reachability(),
            })
            .await;
        tasks.push(tokio::spawn(self.clone().stay_online(name, events)));
        lock(&self.inner.tasks).extend(tasks);
        Ok(rx)
    }

    /// Renews the registration, follows address changes, and reconnects
    /// to the node whenever the session drops.
    async fn stay_online(self, name: ScreenName, events: mpsc::Sender<ClientEvent>) {
        let mut addrs = self.inner.network.listen_addrs();
        addrs.borrow_and_update();
        let mut reachability = self.inner.network.reachability();
        reachability.borrow_and_update();
        let mut backoff = Duration::from_millis(250);
        let mut lost = false;
        loop {
            let session = match self.session() {
                Ok(session) => session,
                Err(_) => {
                    if !lost {
                        lost = true;
                        warn!("lost the connection to the rendezvous node; reconnecting");
                        self.inner.directory.send_replace(None);
                        let _ = events
                            .send(ClientEvent::Reconnecting {
                                reason: "lost the connection to the rendezvous node".into(),
                            })
                            .await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match self.reconnect(&name).await {
                        Ok(current) => {
                            lost = false;
                            backoff = Duration::from_millis(250);
                            info!("back online");
                            let _ = events
                                .send(ClientEvent::Online {
                                    name: name.clone(),
                                    addrs: current,
                                    first: false,
                                    reachability: self.reachability(),
                                })
                                .await;
                        }
                        Err(ClientError::Directory(DirectoryError::Refused {
                            message, ..
                        })) => {
                            warn!("registration refused: {message}");
                            let _ = events
                                .send(ClientEvent::RegistrationRefused { reason: message })
                                .await;
                            return;
                        }
                        Err(e) => debug!("reconnect failed: {e}"),
                    }
                    continue;
                }
            };
            tokio::select! {
                // The next turn of the loop finds the session closed.
                _ = session.closed() => {}
                _ = tokio::time::sleep(self.renew_in()) => {
                    if let Err(e) = self.register_on(&session, &name, self.advertised()).await {
                        warn!("renewal failed: {e}");
                    }
                }
                Ok(()) = addrs.changed() => {
                    addrs.borrow_and_update();
                    self.follow_addresses(&session, &name, &events).await;
                }
                Ok(()) = reachability.changed() => {
                    reachability.borrow_and_update();
                    self.ensure_relay().await;
                    self.follow_addresses(&session, &name, &events).await;
                }
            }
        }
    }

    /// Registers the addresses that work now, if they changed.
    async fn follow_addresses(
        &self,
        session: &DirectorySession,
        name: &ScreenName,
        events: &mpsc::Sender<ClientEvent>,
    ) {
        let current = self.advertised();
        if *lock(&self.inner.registered_addrs) == current {
            return;
        }
        info!(?current, "addresses changed; registering them");
        match self.register_on(session, name, current.clone()).await {
            Ok(_) => {
                let _ = events
                    .send(ClientEvent::Addresses {
                        addrs: current,
                        reachability: self.reachability(),
                    })
                    .await;
            }
            Err(e) => warn!("re-registration failed: {e}"),
        }
    }

    async fn reconnect(&self, name: &ScreenName) -> Result<Vec<Multiaddr>, ClientError> {
        let session = DirectorySession::open(
            &self.inner.network,
            &self.inner.rendezvous,
            Some(self.inner.pushes.clone()),
        )
        .await?;
        // A relay reservation dies with the connection that made it.
        self.ensure_relay().await;
        let addrs = self.advertised();
        self.register_on(&session, name, addrs.clone()).await?;
        let watched: Vec<String> = lock(&self.inner.watched)
            .iter()
            .map(|n| n.to_string())
            .collect();
        for chunk in watched.chunks(MAX_WATCH_PER_REQUEST) {
            session.watch(chunk.to_vec()).await?;
        }
        self.inner.directory.send_replace(Some(session));
        Ok(addrs)
    }

    /// Goes offline: stops the background tasks and closes the directory
    /// session, so the node marks us offline at once.
    pub async fn shutdown(&self) {
        *lock(&self.inner.online_as) = None;
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        self.inner.links.lock().await.clear();
        if let Some(session) = self.inner.directory.send_replace(None) {
            session.close().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
