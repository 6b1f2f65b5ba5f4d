//! The agent: a user's client together with their home's store. It is what
//! every command runs on, either in the `online` process (and reached over
//! the control socket) or on its own for one command.
//!
//! - Sending stores the message first, then delivers it through the
//!   recipient's outbox queue: in the order written, retried with backoff,
//!   resumed when a presence push says the recipient is reachable again.
//! - Receiving stores the message before acknowledging it and drops
//!   repeats by id, so history holds each message once.
//! - Contacts pin the key a name had when added; a different key stops
//!   sending to and accepting from that name until the user trusts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::chat::{self, Message, MessageId, RejectCode};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::{Presence, Status, check_status_text};
use messenger_proto::time::now_ms;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::chat::{ACK_TIMEOUT, DeliveryError, MessageSink};
use crate::cli::exit;
use crate::client::{Client, ClientError, ClientEvent, KeyChange, PeerInfo, SendError};
use crate::control::{ContactView, ControlReply, ControlRequest, SendOutcome};
use crate::directory::DirectoryError;
use crate::home::{Config, Home, HomeError};
use crate::network::{Path, Reachability};
use crate::store::{Contact, MessageState, Store, StoreError, StoredMessage};

/// Longest wait between delivery attempts to a reachable recipient.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Even without a presence push, an offline recipient is looked up again
/// this often, in case a push was missed.
const OFFLINE_RECHECK: Duration = Duration::from_secs(60);

/// Something the user should see.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// Registered and reachable (again).
    Online {
        /// Our name.
        name: ScreenName,
        /// Our registered addresses.
        addrs: Vec<Multiaddr>,
        /// False after a reconnect.
        first: bool,
        /// Directly, or through the node's relay.
        reachability: Reachability,
    },
    /// Our registered addresses changed (moved, NAT mapping, relay).
    Addresses {
        /// The addresses now registered.
        addrs: Vec<Multiaddr>,
        /// Directly, or through the node's relay.
        reachability: Reachability,
    },
    /// How we reach a peer changed (hole punching).
    Path {
        /// The peer's name, if we know it.
        name: Option<ScreenName>,
        /// The peer.
        peer: PeerId,
        /// The path now.
        path: Path,
        /// Why hole punching failed, if it did.
        detail: Option<String>,
    },
    /// Lost the node; reconnecting.
    Reconnecting {
        /// Why.
        reason: String,
    },
    /// The node refused us; we stay offline.
    RegistrationRefused {
        /// Why.
        reason: String,
    },
    /// A new message arrived (already stored), over this path.
    Message(StoredMessage, Option<Path>),
    /// A watched name's presence changed.
    Presence(PeerInfo),
    /// A message of mine was acknowledged.
    Delivered(StoredMessage),
    /// A message of mine was refused for good.
    Failed(StoredMessage),
    /// A contact's key is not the pinned one.
    KeyChanged {
        /// The contact.
        name: ScreenName,
        /// The pinned key.
        pinned: PeerId,
        /// The key seen now.
        current: PeerId,
    },
}

/// Why a command failed, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// Exit status for the CLI.
    pub exit_code: u8,
    /// What went wrong.
    pub message: String,
}

impl AgentError {
    fn new(exit_code: u8, message: impl std::fmt::Display) -> Self {
        Self {
            exit_code,
            message: message.to_string(),
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        Self::new(exit::FAILURE, e)
    }
}

impl From<HomeError> for AgentError {
    fn from(e: HomeError) -> Self {
        Self::new(exit::FAILURE, e)
    }
}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        use messenger_proto::directory::ErrorCode;
        let code = match &e {
            ClientError::Directory(DirectoryError::Refused { code, .. }) => match code {
                ErrorCode::NameTaken => exit::NAME_TAKEN,
                ErrorCode::NoSuchName => exit::NO_SUCH_NAME,
                ErrorCode::InvalidName => exit::INVALID,
                _ => exit::FAILURE,
            },
            ClientError::Directory(DirectoryError::BadAddress { .. }) | ClientError::Name(_) => {
                exit::INVALID
            }
            _ => exit::FAILURE,
        };
        Self::new(code, e)
    }
}

impl From<SendError> for AgentError {
    fn from(e: SendError) -> Self {
        let code = match &e {
            SendError::Text(_) | SendError::InvalidName(_) => exit::INVALID,
            SendError::NoSuchName(_) => exit::NO_SUCH_NAME,
            SendError::Offline { .. }
            | SendError::Unreachable { .. }
            | SendError::NotDelivered { .. } => exit::NOT_DELIVERED,
            SendError::KeyChanged(_) => exit::KEY_CHANGED,
            _ => exit::FAILURE,
        };
        Self::new(code, e)
    }
}

impl From<AgentError> for ControlReply {
    fn from(e: AgentError) -> Self {
        ControlReply::Error {
            exit_code: e.exit_code,
            message: e.message,
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> AgentError {
    AgentError::new(exit::INVALID, e)
}

/// Why a delivery round stopped before the outbox was empty.
#[derive(Debug)]
enum Pause {
    /// The recipient is not reachable now; wait for a presence push.
    Offline(String),
    /// The recipient's key changed; wait for the user to trust it.
    KeyChanged(String),
    /// Something failed; retry after a backoff.
    Retry(String),
}

impl Pause {
    fn reason(&self) -> &str {
        match self {
            Pause::Offline(r) | Pause::KeyChanged(r) | Pause::Retry(r) => r,
        }
    }
}

struct Inner {
    home: Home,
    identity: Identity,
    rendezvous: Option<Multiaddr>,
    config: Mutex<Config>,
    store: Arc<Store>,
    client: tokio::sync::Mutex<Option<Client>>,
    events: Mutex<Option<mpsc::Sender<AgentEvent>>>,
    presence: Mutex<HashMap<ScreenName, PeerInfo>>,
    /// One delivery worker per recipient with something to deliver.
    workers: Mutex<HashMap<ScreenName, Arc<Notify>>>,
    /// Senders waiting for the first outcome of their message.
    waiters: Mutex<HashMap<MessageId, oneshot::Sender<Result<SendOutcome, AgentError>>>>,
    online: Mutex<bool>,
}

/// A user's client and store. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("peer_id", &self.inner.identity.peer_id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AgentError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| AgentError::new(exit::FAILURE, format!("store task failed: {e}")))?
        .map_err(AgentError::from)
}

impl Agent {
    /// Opens the home's store (which only one process may hold).
    /// `rendezvous` overrides the remembered node address.
    pub fn open(home: Home, rendezvous: Option<Multiaddr>) -> Result<Self, AgentError> {
        let identity = home.identity()?;
        let config = home.config()?;
        let store = Arc::new(Store::open(&home.dir().join("messenger.redb"))?);
        let rendezvous = rendezvous.or(config.rendezvous.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                home,
                identity,
                rendezvous,
                config: Mutex::new(config),
                store,
                client: tokio::sync::Mutex::new(None),
                events: Mutex::new(None),
                presence: Mutex::default(),
                workers: Mutex::default(),
                waiters: Mutex::default(),
                online: Mutex::new(false),
            }),
        })
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// Our screen name, if registered.
    pub fn name(&self) -> Option<ScreenName> {
        lock(&self.inner.config).name.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The connected client, connecting on first use.
    pub async fn client(&self) -> Result<Client, AgentError> {
        self.client_listening(Vec::new()).await
    }

    /// The connected client; a new one listens on `listen` before it
    /// connects (see [`Client::connect_listening`]).
    async fn client_listening(&self, listen: Vec<Multiaddr>) -> Result<Client, AgentError> {
        let mut client = self.inner.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let addr = self.inner.rendezvous.clone().ok_or_else(|| {
            invalid(
                "no rendezvous node known: pass --rendezvous MULTIADDR (a line printed by `rendezvous`) or set MESSENGER_RENDEZVOUS",
            )
        })?;
        let c = Client::connect_listening(
            self.inner.identity.clone(),
            addr.clone(),
            self.name(),
            listen,
        )
        .await
        .map_err(|e| {
            let e = AgentError::from(e);
            AgentError::new(
                e.exit_code,
                format!("rendezvous node {addr}: {}", e.message),
            )
        })?;
        let (status, text) = {
            let config = lock(&self.inner.config);
            (
                config.status.unwrap_or_default(),
                config.status_text.clone().unwrap_or_default(),
            )
        };
        let visible_to = self.contact_keys().await.unwrap_or_default();
        c.set_status(status, text, visible_to).await?;
        *client = Some(c.clone());
        Ok(c)
    }

    async fn contact_keys(&self) -> Result<Vec<PeerId>, AgentError> {
        let contacts = blocking(&self.inner.store, |s| s.contacts()).await?;
        Ok(contacts.into_iter().map(|c| c.pinned).collect())
    }

    /// Hands an event to the display, waiting for room: messages and
    /// delivery marks must not be dropped.
    async fn emit_wait(&self, event: AgentEvent) {
        let events = lock(&self.inner.events).clone();
        if let Some(events) = events {
            let _ = events.send(event).await;
        }
    }

    /// Hands an event to the display if there is room (from sync code).
    fn emit(&self, event: AgentEvent) {
        let events = lock(&self.inner.events).clone();
        if let Some(events) = events
            && events.try_send(event).is_err()
        {
            debug!("event dropped: the display is not keeping up");
        }
    }

    /// Goes online: registers, accepts messages, watches contacts and
    /// outbox recipients, and delivers queued messages as recipients become
    /// reachable. Events for the user arrive on the returned channel.
    pub async fn go_online(
        &self,
        listen: Vec<Multiaddr>,
    ) -> Result<mpsc::Receiver<AgentEvent>, AgentError> {
        let name = self.name().ok_or_else(|| {
            AgentError::new(
                exit::FAILURE,
                "you have no screen name yet: run `messenger register NAME` first",
            )
        })?;
        let client = self.client_listening(listen.clone()).await?;
        let (events_tx, events) = mpsc::channel(4096);
        *lock(&self.inner.events) = Some(events_tx);
        let sink = Arc::new(StoreSink {
            agent: self.clone(),
        });
        let mut client_events = client.go_online(name.clone(), listen, sink).await?;
        *lock(&self.inner.online) = true;

        let agent = self.clone();
        tokio::spawn(async move {
            while let Some(event) = client_events.recv().await {
                agent.on_client_event(event).await;
            }
        });

        // Watch everyone we care about; their pushes wake the outbox.
        let mut names: Vec<ScreenName> = blocking(&self.inner.store, |s| s.contacts())
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        for m in blocking(&self.inner.store, |s| s.outbox(None)).await? {
            if !names.contains(m.peer()) {
                names.push(m.peer().clone());
            }
        }
        if let Err(e) = client.watch(&names).await {
            warn!("cannot watch contacts: {e}");
        }
        for name in names {
            self.wake(&name);
        }
        Ok(events)
    }

    async fn on_client_event(&self, event: ClientEvent) {
        match event {
            ClientEvent::Addresses {
                addrs,
                reachability,
            } => self.emit(AgentEvent::Addresses {
                addrs,
                reachability,
            }),
            ClientEvent::Path { peer, path, detail } => {
                let name = self.name_of(&peer).await;
                self.emit(AgentEvent::Path {
                    name,
                    peer,
                    path,
                    detail,
                });
            }
            ClientEvent::Online {
                name,
                addrs,
                first,
                reachability,
            } => {
                if !first {
                    // Back after a reconnect: try everything queued again.
                    let pending = blocking(&self.inner.store, |s| s.outbox(None)).await;
                    for m in pending.unwrap_or_default() {
                        self.wake(m.peer());
                    }
                }
                self.emit(AgentEvent::Online {
                    name,
                    addrs,
                    first,
                    reachability,
                });
            }
            ClientEvent::Reconnecting { reason } => self.emit(AgentEvent::Reconnecting { reason }),
            ClientEvent::RegistrationRefused { reason } => {
                self.emit(AgentEvent::RegistrationRefused { reason })
            }
            ClientEvent::Message(m) => {
                // Stored by the sink before it was acknowledged.
                let id = m.message.id;
                let path = self.client().await.ok().and_then(|c| c.path(&m.peer));
                match blocking(&self.inner.store, move |s| s.message(&id)).await {
                    Ok(Some(stored)) => self.emit_wait(AgentEvent::Message(stored, path)).await,
                    Ok(None) => warn!(%id, "accepted message missing from the store"),
                    Err(e) => warn!("cannot read an accepted message: {e}"),
                }
            }
            ClientEvent::Presence(info) => {
                if self.check_pin(&info).await.is_err() {
                    return;
                }
                let old = lock(&self.inner.presence).insert(info.name.clone(), info.clone());
                let changed = old.as_ref().is_none_or(|old| {
                    (old.presence, &old.status_text, old.reachable)
                        != (info.presence, &info.status_text, info.reachable)
                });
                // It moved: what we hold open goes to its old address.
                let moved = old.as_ref().is_some_and(|old| {
                    let before: std::collections::HashSet<_> = old.addrs.iter().collect();
                    let after: std::collections::HashSet<_> = info.addrs.iter().collect();
                    old.peer_id == info.peer_id && info.reachable && before != after
                });
                let client = self.inner.client.lock().await.clone();
                if moved
                    && let Some(client) = client
                    && client.open_link(&info.name).await.is_some()
                {
                    info!(name = %info.name, "moved to new addresses; reconnecting");
                    client.peer_moved(&info.peer_id).await;
                }
                if info.reachable {
                    self.wake(&info.name);
                }
                if changed {
                    self.emit(AgentEvent::Presence(info));
                }
            }
        }
    }

    /// The name of a peer we talk to, if we know it.
    async fn name_of(&self, peer: &PeerId) -> Option<ScreenName> {
        let known = lock(&self.inner.presence)
            .values()
            .find(|i| &i.peer_id == peer)
            .map(|i| i.name.clone());
        if known.is_some() {
            return known;
        }
        let client = self.inner.client.lock().await.clone()?;
        client.link_name(peer).await
    }

    /// Refuses (and records) a contact whose key is not the pinned one.
    async fn check_pin(&self, info: &PeerInfo) -> Result<(), SendError> {
        let name = info.name.clone();
        let Some(contact) = blocking(&self.inner.store, move |s| s.contact(&name))
            .await
            .ok()
            .flatten()
        else {
            return Ok(());
        };
        if contact.pinned == info.peer_id {
            return Ok(());
        }
        if contact.key_changed_to != Some(info.peer_id) {
            let updated = Contact {
                key_changed_to: Some(info.peer_id),
                ..contact.clone()
            };
            if let Err(e) = blocking(&self.inner.store, move |s| s.put_contact(&updated)).await {
                warn!("cannot record a key change: {e}");
            }
            warn!(name = %info.name, pinned = %contact.pinned, current = %info.peer_id, "KEY CHANGED");
            self.emit(AgentEvent::KeyChanged {
                name: info.name.clone(),
                pinned: contact.pinned,
                current: info.peer_id,
            });
        }
        Err(SendError::KeyChanged(Box::new(KeyChange {
            name: info.name.clone(),
            pinned: contact.pinned,
            current: info.peer_id,
        })))
    }

    /// Makes sure a delivery worker for `to` runs and looks at its queue.
    fn wake(&self, to: &ScreenName) {
        if !*lock(&self.inner.online) {
            return;
        }
        let mut workers = lock(&self.inner.workers);
        if let Some(notify) = workers.get(to) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        workers.insert(to.clone(), notify.clone());
        tokio::spawn(self.clone().deliver_forever(to.clone(), notify));
    }

    /// The worker of one recipient: delivers its queue in order, pausing
    /// while it is offline and backing off after failures.
    async fn deliver_forever(self, to: ScreenName, wake: Arc<Notify>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if !*lock(&self.inner.online) {
                lock(&self.inner.workers).remove(&to);
                return;
            }
            match self.deliver_queue(&to).await {
                Ok(()) => {
                    backoff = Duration::from_millis(500);
                    wake.notified().await;
                }
                Err(Pause::Offline(reason)) => {
                    debug!(%to, "delivery paused: {reason}");
                    let _ = tokio::time::timeout(OFFLINE_RECHECK, wake.notified()).await;
                }
                Err(Pause::KeyChanged(reason)) => {
                    debug!(%to, "delivery paused: {reason}");
                    wake.notified().await;
                }
                Err(Pause::Retry(reason)) => {
                    debug!(%to, ?backoff, "delivery failed, retrying: {reason}");
                    let _ = tokio::time::timeout(backoff, wake.notified()).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One delivery round: every queued message to `to`, pipelined on one
    /// link, marked delivered as acknowledgements arrive.
    async fn deliver_queue(&self, to: &ScreenName) -> Result<(), Pause> {
        let name = to.clone();
        let pending = blocking(&self.inner.store, move |s| s.outbox(Some(&name)))
            .await
            .map_err(|e| Pause::Retry(e.to_string()))?;
        if pending.is_empty() {
            return Ok(());
        }
        let result = match self.deliver(to, &pending).await {
            // Failing for want of a way to prove who we are is worth saying
            // plainly, and waiting for the node rather than retrying.
            Err(Pause::Retry(why)) => match self.unverifiable(to).await {
                Some(reason) => Err(Pause::Offline(reason)),
                None => Err(Pause::Retry(why)),
            },
            other => other,
        };
        // Whoever waits for one of these learns it is queued, unless a retry
        // is coming soon anyway (the sender keeps waiting for it).
        if let Err(pause @ (Pause::Offline(_) | Pause::KeyChanged(_))) = &result {
            let reason = pause.reason().to_owned();
            for m in &pending {
                if let Some(waiter) = lock(&self.inner.waiters).remove(&m.message.id) {
                    let current = m.clone();
                    let _ = waiter.send(Ok(SendOutcome::Queued {
                        message: current,
                        reason: reason.clone(),
                    }));
                }
            }
        }
        result
    }

    /// Why `to` cannot verify that our messages are ours right now, if
    /// that is so: our name certificate has expired (or we never had one)
    /// and the rendezvous node, which could vouch for us instead, is out
    /// of reach.
    async fn unverifiable(&self, to: &ScreenName) -> Option<String> {
        let client = self.inner.client.lock().await.clone()?;
        if client.directory_connected() {
            return None;
        }
        let now = now_ms();
        let since = match client.certificate() {
            Some(cert) if cert.expires_at > now => return None,
            Some(cert) => format!(
                "your name certificate expired at {}",
                crate::time::clock(cert.expires_at)
            ),
            None => "you hold no name certificate".to_owned(),
        };
        Some(format!(
            "{since} and the rendezvous node is unreachable: {to} cannot verify that the message is from you until the node is back"
        ))
    }

    async fn deliver(&self, to: &ScreenName, pending: &[StoredMessage]) -> Result<(), Pause> {
        let client = self.client().await.map_err(|e| Pause::Retry(e.message))?;
        let started = Instant::now();
        let (link, resolve, dial) = match client.open_link(to).await {
            Some(link) => (link, Duration::ZERO, Duration::ZERO),
            None => {
                let info = match client.resolve(to).await {
                    Ok(info) => info,
                    Err(SendError::NoSuchName(_)) => {
                        let ids: Vec<MessageId> = pending.iter().map(|m| m.message.id).collect();
                        self.finish(&ids, Err("no such name (the name was released)".into()))
                            .await;
                        return Ok(());
                    }
                    Err(e) => return Err(Pause::Retry(e.to_string())),
                };
                self.check_pin(&info)
                    .await
                    .map_err(|e| Pause::KeyChanged(e.to_string()))?;
                if !info.reachable {
                    return Err(Pause::Offline(format!("{to} is offline")));
                }
                let resolve = started.elapsed();
                let (link, dial) = client.link(&info).await.map_err(|e| match e {
                    SendError::Offline { .. } => Pause::Offline(e.to_string()),
                    _ => Pause::Retry(e.to_string()),
                })?;
                (link, resolve, dial)
            }
        };

        // Pipeline every queued message, then collect acknowledgements.
        let writing = Instant::now();
        let mut acks = Vec::with_capacity(pending.len());
        for m in pending {
            let submitted = tokio::time::timeout(
                ACK_TIMEOUT,
                link.submit(m.message.id, client.sign(&m.message)),
            )
            .await
            .unwrap_or(Err(DeliveryError::Timeout(ACK_TIMEOUT)));
            match submitted {
                Ok(rx) => acks.push((m, rx)),
                Err(e) => {
                    client.drop_link(to).await;
                    return Err(Pause::Retry(e.to_string()));
                }
            }
        }
        let ids: Vec<MessageId> = acks.iter().map(|(m, _)| m.message.id).collect();
        let now = now_ms();
        if let Err(e) = blocking(&self.inner.store, move |s| {
            s.set_state(&ids, MessageState::Sent, None, now)
        })
        .await
        {
            warn!("cannot mark messages sent: {e}");
        }
        for (m, rx) in acks {
            let outcome = match tokio::time::timeout(ACK_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(DeliveryError::Rejected(code)))) => Err(code),
                Ok(Ok(Err(e))) => {
                    client.drop_link(to).await;
                    return Err(Pause::Retry(e.to_string()));
                }
                Ok(Err(_)) => {
                    client.drop_link(to).await;
                    return Err(Pause::Retry("the connection closed".into()));
                }
                Err(_) => {
                    client.drop_link(to).await;
                    return Err(Pause::Retry(format!(
                        "no acknowledgement within {ACK_TIMEOUT:?}"
                    )));
                }
            };
            let timing = Timing {
                path: client.path(&link.peer()),
                peer_id: link.peer(),
                resolve,
                dial,
                deliver: writing.elapsed(),
            };
            match outcome {
                Ok(()) => self.delivered(m.message.id, timing).await,
                Err(code) => {
                    let reason = match code {
                        // The recipient does not say why; neither do we.
                        RejectCode::NotDelivered => "not delivered".to_owned(),
                        other => format!("not delivered: {other}"),
                    };
                    self.finish(&[m.message.id], Err(reason)).await;
                }
            }
        }
        Ok(())
    }

    async fn delivered(&self, id: MessageId, timing: Timing) {
        let now = now_ms();
        let changed = blocking(&self.inner.store, move |s| {
            s.set_state(&[id], MessageState::Delivered, None, now)
        })
        .await;
        let stored = match changed {
            Ok(mut v) if !v.is_empty() => v.remove(0),
            Ok(_) => return,
            Err(e) => {
                warn!("cannot mark a message delivered: {e}");
                return;
            }
        };
        if let Some(waiter) = lock(&self.inner.waiters).remove(&id) {
            let _ = waiter.send(Ok(SendOutcome::Delivered {
                message: stored.clone(),
                peer_id: timing.peer_id,
                path: timing.path,
                resolve_ms: ms(timing.resolve),
                dial_ms: ms(timing.dial),
                deliver_ms: ms(timing.deliver),
            }));
        }
        self.emit_wait(AgentEvent::Delivered(stored)).await;
    }

    async fn finish(&self, ids: &[MessageId], result: Result<(), String>) {
        let Err(reason) = result else { return };
        let now = now_ms();
        let ids_owned = ids.to_vec();
        let why = reason.clone();
        let changed = blocking(&self.inner.store, move |s| {
            s.set_state(&ids_owned, MessageState::Failed, Some(&why), now)
        })
        .await
        .unwrap_or_default();
        for stored in changed {
            if let Some(waiter) = lock(&self.inner.waiters).remove(&stored.message.id) {
                let _ = waiter.send(Err(AgentError::new(
                    exit::NOT_DELIVERED,
                    format!("{} to {}", reason, stored.message.to),
                )));
            }
            self.emit_wait(AgentEvent::Failed(stored)).await;
        }
    }

    /// Sends `text` to `to`: stored first, then delivered (or queued).
    pub async fn send(&self, to: &str, text: &str) -> Result<SendOutcome, AgentError> {
        let to = ScreenName::parse(to).map_err(invalid)?;
        chat::check_text(text).map_err(invalid)?;
        let client = self.client().await?;
        // Refuse now what could never be delivered.
        match client.resolve(&to).await {
            Ok(info) => self.check_pin(&info).await?,
            Err(e @ (SendError::NoSuchName(_) | SendError::BadResolution(_))) => {
                return Err(e.into());
            }
            Err(e) => debug!("cannot resolve {to} now ({e}); queueing"),
        }
        let message: Message = client.compose(&to, text)?;
        let id = message.id;
        blocking(&self.inner.store, move |s| {
            s.add_outgoing(message, now_ms())
        })
        .await?;

        if *lock(&self.inner.online) {
            // The recipient's worker delivers it in order; wait for its
            // first outcome.
            let (tx, rx) = oneshot::channel();
            lock(&self.inner.waiters).insert(id, tx);
            if let Err(e) = client.watch(std::slice::from_ref(&to)).await {
                debug!("cannot watch {to}: {e}");
            }
            self.wake(&to);
            return match tokio::time::timeout(ACK_TIMEOUT + Duration::from_secs(10), rx).await {
                Ok(Ok(outcome)) => outcome,
                _ => {
                    lock(&self.inner.waiters).remove(&id);
                    self.queued(id, "no answer yet; it stays in the outbox".into())
                        .await
                }
            };
        }

        // On our own: one delivery round now; what is left stays queued
        // for the next `messenger online`.
        let (tx, mut rx) = oneshot::channel();
        lock(&self.inner.waiters).insert(id, tx);
        let round = self.deliver_queue(&to).await;
        if let Ok(outcome) = rx.try_recv() {
            return outcome;
        }
        lock(&self.inner.waiters).remove(&id);
        let reason = match round {
            Err(pause) => pause.reason().to_owned(),
            Ok(()) => "not acknowledged".into(),
        };
        self.queued(id, reason).await
    }

    /// Stores a message for `to` and hands it to the delivery worker
    /// without waiting (the running client's `chat`). Its outcome arrives
    /// as an [`AgentEvent`].
    pub async fn enqueue(&self, to: &ScreenName, text: &str) -> Result<MessageId, AgentError> {
        chat::check_text(text).map_err(invalid)?;
        let client = self.client().await?;
        let message = client.compose(to, text)?;
        let id = message.id;
        blocking(&self.inner.store, move |s| {
            s.add_outgoing(message, now_ms())
        })
        .await?;
        // Presence pushes resume delivery when the recipient comes back.
        if let Err(e) = client.watch(std::slice::from_ref(to)).await {
            debug!("cannot watch {to}: {e}");
        }
        self.wake(to);
        Ok(id)
    }

    async fn queued(&self, id: MessageId, reason: String) -> Result<SendOutcome, AgentError> {
        let message = blocking(&self.inner.store, move |s| s.message(&id))
            .await?
            .ok_or_else(|| AgentError::new(exit::FAILURE, "the message vanished from the store"))?;
        Ok(SendOutcome::Queued { message, reason })
    }

    /// Changes my status (and remembers it for the next time I go online).
    pub async fn set_status(&self, status: Status, text: String) -> Result<String, AgentError> {
        check_status_text(&text).map_err(invalid)?;
        {
            let mut config = lock(&self.inner.config);
            config.status = Some(status);
            config.status_text = Some(text.clone());
            self.inner.home.save_config(&config)?;
        }
        if *lock(&self.inner.online) {
            let client = self.client().await?;
            let visible_to = self.contact_keys().await?;
            client.set_status(status, text.clone(), visible_to).await?;
            Ok(format!("status: {status}{}", suffix(&text)))
        } else {
            Ok(format!(
                "status: {status}{} (applies when you go online)",
                suffix(&text)
            ))
        }
    }

    /// Adds a contact, pinning the key its name has now.
    pub async fn contacts_add(&self, name: &str) -> Result<String, AgentError> {
        let name = ScreenName::parse(name).map_err(invalid)?;
        let info = self.client().await?.resolve(&name).await?;
        let existing = {
            let n = name.clone();
            blocking(&self.inner.store, move |s| s.contact(&n)).await?
        };
        if let Some(c) = &existing {
            if c.pinned == info.peer_id {
                return Ok(format!("{name} is already a contact (key {})", c.pinned));
            }
            self.check_pin(&info).await?;
        }
        let contact = Contact {
            name: name.clone(),
            pinned: info.peer_id,
            added_at: now_ms(),
            key_changed_to: None,
        };
        blocking(&self.inner.store, move |s| s.put_contact(&contact)).await?;
        self.after_contacts_change(&name, true).await;
        Ok(format!("added {name}, pinned to key {}", info.peer_id))
    }

    /// Removes a contact.
    pub async fn contacts_remove(&self, name: &str) -> Result<String, AgentError> {
        let name = ScreenName::parse(name).map_err(invalid)?;
        let n = name.clone();
        if !blocking(&self.inner.store, move |s| s.remove_contact(&n)).await? {
            return Err(AgentError::new(
                exit::FAILURE,
                format!("{name} is not a contact"),
            ));
        }
        self.after_contacts_change(&name, false).await;
        Ok(format!("removed {name}"))
    }

    /// Accepts the key a contact's name has now.
    pub async fn contacts_trust(&self, name: &str) -> Result<String, AgentError> {
        let name = ScreenName::parse(name).map_err(invalid)?;
        let n = name.clone();
        let contact = blocking(&self.inner.store, move |s| s.contact(&n))
            .await?
            .ok_or_else(|| AgentError::new(exit::FAILURE, format!("{name} is not a contact")))?;
        let info = self.client().await?.resolve(&name).await?;
        let trusted = Contact {
            pinned: info.peer_id,
            key_changed_to: None,
            ..contact.clone()
        };
        blocking(&self.inner.store, move |s| s.put_contact(&trusted)).await?;
        self.after_contacts_change(&name, true).await;
        if contact.pinned == info.peer_id {
            Ok(format!("{name} keeps key {}", info.peer_id))
        } else {
            Ok(format!(
                "{name} is now pinned to key {} (was {})",
                info.peer_id, contact.pinned
            ))
        }
    }

    async fn after_contacts_change(&self, name: &ScreenName, watch: bool) {
        if !*lock(&self.inner.online) {
            return;
        }
        if let Ok(client) = self.client().await {
            let names = std::slice::from_ref(name);
            let result = if watch {
                client.watch(names).await
            } else {
                client.unwatch(names).await
            };
            if let Err(e) = result {
                debug!("cannot update watches: {e}");
            }
            // Who may still reach us while invisible follows the contacts.
            let (status, text) = client.status();
            if status == Status::Invisible
                && let Ok(keys) = self.contact_keys().await
                && let Err(e) = client.set_status(status, text, keys).await
            {
                debug!("cannot update visibility: {e}");
            }
        }
        self.wake(name);
    }

    /// Every contact with its presence (live if online, else looked up).
    pub async fn contacts_list(&self) -> Result<Vec<ContactView>, AgentError> {
        let contacts = blocking(&self.inner.store, |s| s.contacts()).await?;
        let blocked = blocking(&self.inner.store, |s| s.blocked()).await?;
        let online = *lock(&self.inner.online);
        let client = self.client().await.ok();
        let mut out = Vec::with_capacity(contacts.len());
        for c in contacts {
            let cached = lock(&self.inner.presence).get(&c.name).cloned();
            let info = match (cached, &client) {
                (Some(info), _) if online => Some(info),
                (_, Some(client)) => client.resolve(&c.name).await.ok(),
                _ => None,
            };
            if let Some(info) = &info {
                let _ = self.check_pin(info).await;
            }
            let key_changed_to = match &info {
                Some(info) if info.peer_id != c.pinned => Some(info.peer_id),
                _ => c.key_changed_to,
            };
            out.push(ContactView {
                blocked: blocked.contains(&c.name),
                name: c.name,
                pinned: c.pinned,
                key_changed_to,
                presence: info.as_ref().map(|i| i.presence),
                status_text: info
                    .as_ref()
                    .map(|i| i.status_text.clone())
                    .unwrap_or_default(),
                last_seen: info.and_then(|i| i.last_seen),
            });
        }
        Ok(out)
    }

    /// Blocks or unblocks a name.
    pub async fn set_blocked(&self, name: &str, blocked: bool) -> Result<String, AgentError> {
        let name = ScreenName::parse(name).map_err(invalid)?;
        let n = name.clone();
        let changed = blocking(&self.inner.store, move |s| {
            s.set_blocked(&n, blocked, now_ms())
        })
        .await?;
        Ok(match (blocked, changed) {
            (true, true) => format!("blocked {name}: their messages are refused"),
            (true, false) => format!("{name} was already blocked"),
            (false, true) => format!("unblocked {name}"),
            (false, false) => format!("{name} was not blocked"),
        })
    }

    /// Runs a control request: the one implementation of every command
    /// that needs the store.
    pub async fn execute(&self, request: ControlRequest) -> ControlReply {
        let result = match request {
            ControlRequest::Send { to, text } => self
                .send(&to, &text)
                .await
                .map(|o| ControlReply::Sent(Box::new(o))),
            ControlRequest::Status { status, text } => self
                .set_status(status, text)
                .await
                .map(|message| ControlReply::Done { message }),
            ControlRequest::ContactsAdd { name } => self.contacts_add(&name).await.map(done),
            ControlRequest::ContactsRemove { name } => self.contacts_remove(&name).await.map(done),
            ControlRequest::ContactsTrust { name } => self.contacts_trust(&name).await.map(done),
            ControlRequest::ContactsList => self
                .contacts_list()
                .await
                .map(|contacts| ControlReply::Contacts { contacts }),
            ControlRequest::Block { name } => self.set_blocked(&name, true).await.map(done),
            ControlRequest::Unblock { name } => self.set_blocked(&name, false).await.map(done),
            ControlRequest::History { name, limit } => match ScreenName::parse(&name) {
                Ok(name) => blocking(&self.inner.store, move |s| s.history(&name, limit))
                    .await
                    .map(|messages| ControlReply::Messages { messages }),
                Err(e) => Err(invalid(e)),
            },
            ControlRequest::Outbox => blocking(&self.inner.store, |s| s.outbox(None))
                .await
                .map(|messages| ControlReply::Messages { messages }),
        };
        result.unwrap_or_else(ControlReply::from)
    }

    /// Goes offline and closes the connection to the node.
    pub async fn shutdown(&self) {
        *lock(&self.inner.online) = false;
        if let Some(client) = self.inner.client.lock().await.take() {
            client.shutdown().await;
        }
        *lock(&self.inner.events) = None;
    }

    /// The directory's current view of a name (presence cache first).
    pub fn cached_presence(&self, name: &ScreenName) -> Option<Presence> {
        lock(&self.inner.presence).get(name).map(|i| i.presence)
    }

    /// Registers `name` and remembers it (and the node) in the home's config.
    pub async fn remember_registration(
        &self,
        name: &ScreenName,
        rendezvous: &Multiaddr,
    ) -> Result<(), AgentError> {
        let mut config = lock(&self.inner.config);
        config.name = Some(name.clone());
        config.rendezvous = Some(rendezvous.clone());
        self.inner.home.save_config(&config)?;
        info!(%name, "registration remembered");
        Ok(())
    }
}

struct Timing {
    peer_id: PeerId,
    path: Option<Path>,
    resolve: Duration,
    dial: Duration,
    deliver: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn done(message: String) -> ControlReply {
    ControlReply::Done { message }
}

fn suffix(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" \"{text}\"")
    }
}

/// The inbox's storage: blocks and key pins refuse, the store keeps.
struct StoreSink {
    agent: Agent,
}

impl MessageSink for StoreSink {
    fn refuse(&self, from: &ScreenName, peer: &PeerId) -> Option<RejectCode> {
        let store = &self.agent.inner.store;
        match store.is_blocked(from) {
            Ok(true) => return Some(RejectCode::NotDelivered),
            Ok(false) => {}
            Err(e) => {
                warn!("cannot check blocks: {e}");
                return Some(RejectCode::NotDelivered);
            }
        }
        match store.contact(from) {
            Ok(Some(contact)) if contact.pinned != *peer => {
                warn!(name = %from, pinned = %contact.pinned, current = %peer, "KEY CHANGED: refusing a message");
                if contact.key_changed_to != Some(*peer) {
                    let updated = Contact {
                        key_changed_to: Some(*peer),
                        ..contact.clone()
                    };
                    if let Err(e) = store.put_contact(&updated) {
                        warn!("cannot record a key change: {e}");
                    }
                    self.agent.emit(AgentEvent::KeyChanged {
                        name: from.clone(),
                        pinned: contact.pinned,
                        current: *peer,
                    });
                }
                Some(RejectCode::NotDelivered)
            }
            Ok(_) => None,
            Err(e) => {
                warn!("cannot check contacts: {e}");
                Some(RejectCode::NotDelivered)
            }
        }
    }

    fn seen(&self, id: &MessageId, peer: &PeerId) -> bool {
        matches!(
            self.agent.inner.store.message(id),
            Ok(Some(m)) if m.direction == crate::store::Direction::In && m.peer_id.as_ref() == Some(peer)
        )
    }

    fn keep(&self, message: &Message, peer: &PeerId) -> Result<bool, String> {
        self.agent
            .inner
            .store
            .add_incoming(message, *peer, now_ms())
            .map(|stored| stored.is_some())
            .map_err(|e| e.to_string())
    }
}
