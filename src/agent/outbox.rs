//! Delivering the outbox: one worker task per recipient, which owns the
//! link to that recipient and what it knows of where the recipient is.
//!
//! A worker delivers its recipient's queued messages in the order written,
//! pipelined on one chat stream, and marks each delivered (or failed) as
//! its acknowledgement (or refusal) arrives. What it knows of where the
//! recipient is comes from the core, which owns what is known of peers:
//! the core hands it the presence pushes, and resolves the recipient for
//! it when nothing is known or what is known no longer works (an expired
//! record, a failed dial). It pauses while the recipient is offline,
//! backs off after failures, and resumes when the core wakes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use messenger_proto::Identity;
use messenger_proto::chat::{MessageId, RejectCode};
use messenger_proto::name::ScreenName;
use messenger_proto::record::without_peer_suffix;
use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Note, SendError};
use crate::api::{Event, Failure, Response, SendOutcome};
use crate::chat::{ACK_TIMEOUT, CertificateWatch, ChatLink, DeliveryError, Signal};
use crate::directory::DirectorySession;
use crate::events::EventSender;
use crate::network::Network;
use crate::peer::PeerInfo;
use crate::store::{MessageState, StoreHandle, StoredMessage};
use crate::trust::Trust;

/// Longest wait between delivery attempts to a reachable recipient.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Even without a presence push, an offline recipient is looked up again
/// this often, in case a push was missed.
const OFFLINE_RECHECK: Duration = Duration::from_secs(60);

/// How long a send waits for its message's first outcome before it is
/// told the message stays queued.
pub(super) const SEND_WAIT: Duration = Duration::from_secs(25);

/// What a send's caller is told: [`Response::Sent`] or [`Response::Failed`].
pub(super) type SendReply = oneshot::Sender<Response>;

fn answer(reply: SendReply, outcome: Result<SendOutcome, SendError>) {
    let _ = reply.send(match outcome {
        Ok(outcome) => Response::Sent(outcome),
        Err(e) => Response::Failed(Failure::from(&e)),
    });
}

/// What the core tells a worker.
#[derive(Debug)]
pub(super) enum WorkerMsg {
    /// A new message is in the outbox; `reply` wants its first outcome.
    /// `resolved` is how long the core took to resolve its recipient.
    Deliver {
        id: MessageId,
        reply: SendReply,
        resolved: Duration,
    },
    /// Look at the outbox again (we are back online, a contact was trusted).
    Wake,
    /// What the node now says of the recipient.
    Peer(PeerInfo),
    /// An ephemeral signal for the recipient: sent on the link if one is
    /// open or can be opened now, else dropped.
    Signal(Signal),
}

/// Whether a worker keeps trying, or gives each message one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The home's running client: deliver as soon as possible, however long.
    Online,
    /// A command on its own: one attempt, then the message waits queued.
    OneShot,
}

/// How long a worker waits for the core to resolve its recipient (the
/// node answers or fails well within it; a bound all the same).
const RESOLVE_WAIT: Duration = Duration::from_secs(30);

/// Where a worker's recipient is, as the core resolved it.
pub(super) type ResolveReply = oneshot::Sender<Result<PeerInfo, Unresolved>>;

/// Why the core could not say where a recipient is.
#[derive(Debug)]
pub(super) enum Unresolved {
    /// The node has no such name (it was released).
    NoSuchName,
    /// Not now: the node is out of reach, or failed.
    Other(String),
}

/// What every worker needs, shared read-only.
pub(super) struct WorkerEnv {
    pub identity: Identity,
    pub store: StoreHandle,
    pub network: Network,
    pub session: watch::Receiver<Option<DirectorySession>>,
    pub certificate: CertificateWatch,
    pub trust: watch::Receiver<Arc<Trust>>,
    pub events: EventSender,
    pub notes: mpsc::Sender<Note>,
    pub mode: Mode,
}

/// Why a round stopped before the outbox was empty.
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

/// What one delivery cost, for the sender's report.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    resolve: Duration,
    dial: Duration,
}

/// A waiting sender, and until when it waits.
struct Waiter {
    reply: SendReply,
    until: Instant,
    /// Time already spent resolving the recipient for it.
    resolved: Duration,
}

/// The worker of one recipient.
pub(super) struct Worker {
    to: ScreenName,
    env: Arc<WorkerEnv>,
    /// What we know of the recipient (verified), if anything.
    peer: Option<PeerInfo>,
    link: Option<ChatLink>,
    waiters: HashMap<MessageId, Waiter>,
}

impl Worker {
    pub(super) fn new(to: ScreenName, env: Arc<WorkerEnv>, peer: Option<PeerInfo>) -> Self {
        Self {
            to,
            env,
            peer,
            link: None,
            waiters: HashMap::new(),
        }
    }

    /// Delivers until `cancel` fires or the core is gone.
    pub(super) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<WorkerMsg>,
        cancel: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(500);
        let mut wait = None;
        loop {
            let due = self.wait(&mut inbox, &cancel, wait).await;
            let Some(due) = due else { break };
            wait = None;
            if !due {
                continue;
            }
            match self.round().await {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(pause) => {
                    debug!(to = %self.to, "delivery paused: {}", pause.reason());
                    wait = self.pause(pause, backoff).await;
                    if wait.is_some() {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        // Whoever still waits learns the message stays queued.
        self.queued("the client stopped; it stays in the outbox")
            .await;
    }

    /// Tells waiters what a pause means for them; returns how long to wait
    /// before the next round on our own (none: until woken).
    async fn pause(&mut self, pause: Pause, backoff: Duration) -> Option<Duration> {
        let one_shot = self.env.mode == Mode::OneShot;
        match pause {
            Pause::Offline(reason) | Pause::KeyChanged(reason) if !one_shot => {
                self.queued(&reason).await;
                // A missed push must not leave it paused for ever.
                Some(OFFLINE_RECHECK)
            }
            Pause::Retry(_) if !one_shot => Some(backoff),
            other => {
                self.queued(other.reason()).await;
                None
            }
        }
    }

    /// Waits for a message from the core, a waiter's deadline, or `wait`
    /// (at first, and after a round that finished, there is nothing to
    /// wait for: a round is due at once). Returns whether a round is due;
    /// `None` when the worker must end.
    async fn wait(
        &mut self,
        inbox: &mut mpsc::Receiver<WorkerMsg>,
        cancel: &CancellationToken,
        wait: Option<Duration>,
    ) -> Option<bool> {
        let next_deadline = self.waiters.values().map(|w| w.until).min();
        let sleep_for = [
            wait,
            next_deadline.map(|d| d.saturating_duration_since(Instant::now())),
        ]
        .into_iter()
        .flatten()
        .min();
        let timer = async {
            match sleep_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = inbox.recv() => match msg? {
                WorkerMsg::Deliver { id, reply, resolved } => {
                    self.waiters.insert(id, Waiter { reply, until: Instant::now() + SEND_WAIT, resolved });
                    Some(true)
                }
                WorkerMsg::Wake => Some(true),
                WorkerMsg::Peer(info) => Some(self.learn(info).await),
                WorkerMsg::Signal(signal) => {
                    self.signal(signal).await;
                    Some(false)
                }
            },
            () = timer => {
                let now = Instant::now();
                let expired: Vec<MessageId> =
                    self.waiters.iter().filter(|(_, w)| w.until <= now).map(|(id, _)| *id).collect();
                for id in expired {
                    self.answer_queued(id, "no answer yet; it stays in the outbox").await;
                }
                Some(wait.is_some())
            }
            () = cancel.cancelled() => None,
        }
    }

    /// Takes in what the node now says of the recipient; true if a round
    /// is worth trying.
    async fn learn(&mut self, info: PeerInfo) -> bool {
        if let Some(before) = &self.peer
            && info.moved_from(before)
            && self.link.is_some()
        {
            info!(name = %self.to, "moved to new addresses; reconnecting");
            self.drop_link();
            // What we hold open to an old address goes; a connection to
            // an address it still has stays.
            let addrs = info.addrs.iter().map(without_peer_suffix).collect();
            self.env.network.disconnect_moved(info.peer_id, addrs).await;
        }
        let reachable = info.reachable;
        self.peer = Some(info);
        reachable
    }

    /// Sends an ephemeral signal, opening the link if the recipient is
    /// known to be reachable (what a typing signal opens, the message that
    /// follows it uses). Never waits on a recipient that is not there.
    async fn signal(&mut self, signal: Signal) {
        let open = self.link.as_ref().is_some_and(|l| !l.is_closed());
        let reachable = self.peer.as_ref().is_some_and(|p| p.dialable(now_ms()));
        if !open && !reachable {
            return;
        }
        match self.link().await {
            Ok((link, _)) => {
                if let Err(e) = link.signal(signal) {
                    debug!(to = %self.to, "signal dropped: {e}");
                }
            }
            Err(pause) => debug!(to = %self.to, "signal dropped: {}", pause.reason()),
        }
    }

    fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.abort();
        }
    }

    /// One delivery round: every queued message, pipelined on one link.
    async fn round(&mut self) -> Result<(), Pause> {
        let to = self.to.clone();
        let pending = self
            .env
            .store
            .call(move |s| s.outbox(Some(&to)))
            .await
            .map_err(|e| Pause::Retry(e.to_string()))?;
        self.answer_settled(&pending).await;
        if pending.is_empty() {
            return Ok(());
        }
        let result = self.deliver(&pending).await;
        match result {
            // Failing for want of a way to prove who we are is worth saying
            // plainly, and waiting for the node rather than retrying.
            Err(Pause::Retry(why)) => match self.unverifiable() {
                Some(reason) => Err(Pause::Offline(reason)),
                None => Err(Pause::Retry(why)),
            },
            other => other,
        }
    }

    /// Why the recipient cannot verify that our messages are ours right
    /// now, if that is so: our certificate has expired (or we never had
    /// one) and the node, which could vouch for us instead, is out of reach.
    fn unverifiable(&self) -> Option<String> {
        let connected = self
            .env
            .session
            .borrow()
            .as_ref()
            .is_some_and(|s| !s.is_closed());
        if connected {
            return None;
        }
        let now = now_ms();
        let cert = self
            .env
            .certificate
            .borrow()
            .as_ref()
            .and_then(|c| c.decode_unverified().ok());
        let since = match cert {
            Some(cert) if cert.expires_at > now => return None,
            Some(cert) => format!(
                "your name certificate expired at {}",
                crate::time::clock(cert.expires_at)
            ),
            None => "you hold no name certificate".to_owned(),
        };
        Some(format!(
            "{since} and the rendezvous node is unreachable: {} cannot verify that the message is from you until the node is back",
            self.to
        ))
    }

    /// The link to the recipient, opening one if needed.
    async fn link(&mut self) -> Result<(ChatLink, Timing), Pause> {
        if let Some(link) = self.link.as_ref().filter(|l| !l.is_closed()) {
            return Ok((link.clone(), Timing::default()));
        }
        let mut timing = Timing::default();
        let known = self
            .peer
            .clone()
            .filter(|p| p.dialable(now_ms()) || !p.reachable);
        let info = match known {
            Some(info) => info,
            None => {
                let started = Instant::now();
                let info = self.resolve().await?;
                timing.resolve = started.elapsed();
                info
            }
        };
        let trust = self.env.trust.borrow().clone();
        if let Err(change) = trust.check_pin(&info) {
            let _ = self.env.notes.try_send(Note::KeyObserved {
                name: change.name.clone(),
                key: change.current,
            });
            return Err(Pause::KeyChanged(change.to_string()));
        }
        if !info.dialable(now_ms()) {
            return Err(Pause::Offline(format!("{} is offline", self.to)));
        }
        let dialling = Instant::now();
        let opened = async {
            self.env
                .network
                .dial(info.peer_id, info.addrs.clone())
                .await
                .map_err(|e| e.to_string())?;
            ChatLink::open(
                &self.env.network,
                info.peer_id,
                self.env.certificate.clone(),
            )
            .await
            .map_err(|e| e.to_string())
        };
        match opened.await {
            Ok(link) => {
                timing.dial = dialling.elapsed();
                self.link = Some(link.clone());
                Ok((link, timing))
            }
            Err(reason) => {
                // What we knew may be stale: ask the node next time.
                self.peer = None;
                Err(Pause::Retry(format!(
                    "{} is online but unreachable; tried {}: {reason}",
                    self.to,
                    list(&info.addrs)
                )))
            }
        }
    }

    /// Asks the core where the recipient is (the core resolves it and
    /// keeps what the node said, for everyone who asks).
    async fn resolve(&mut self) -> Result<PeerInfo, Pause> {
        let (reply, answer) = oneshot::channel();
        let asked = self.env.notes.send(Note::Resolve {
            name: self.to.clone(),
            reply,
        });
        let stopping = || Pause::Retry("the client is stopping".to_owned());
        asked.await.map_err(|_| stopping())?;
        let answer = tokio::time::timeout(RESOLVE_WAIT, answer)
            .await
            .map_err(|_| Pause::Retry(format!("cannot resolve {}: no answer in time", self.to)))?
            .map_err(|_| stopping())?;
        match answer {
            Ok(info) => {
                self.peer = Some(info.clone());
                Ok(info)
            }
            Err(Unresolved::NoSuchName) => {
                // The name was released: nothing queued for it can go.
                self.fail_all("no such name (the name was released)").await;
                Err(Pause::KeyChanged(format!("no such name: {}", self.to)))
            }
            Err(Unresolved::Other(why)) => {
                Err(Pause::Retry(format!("cannot resolve {}: {why}", self.to)))
            }
        }
    }

    async fn deliver(&mut self, pending: &[StoredMessage]) -> Result<(), Pause> {
        let (link, timing) = self.link().await?;
        let writing = Instant::now();
        let mut acks = Vec::with_capacity(pending.len());
        for m in pending {
            let signed = Signed::sign(&self.env.identity, MESSAGE_CONTEXT, &m.message);
            let submitted = tokio::time::timeout(ACK_TIMEOUT, link.submit(m.message.id, signed))
                .await
                .unwrap_or(Err(DeliveryError::Timeout(ACK_TIMEOUT)));
            match submitted {
                Ok(rx) => acks.push((m, rx)),
                Err(e) => {
                    self.drop_link();
                    return Err(Pause::Retry(e.to_string()));
                }
            }
        }
        let ids: Vec<MessageId> = acks.iter().map(|(m, _)| m.message.id).collect();
        let now = now_ms();
        match self
            .env
            .store
            .call(move |s| s.set_state(&ids, MessageState::Sent, None, None, now))
            .await
        {
            Ok(changed) => {
                for stored in changed {
                    let _ = self.env.events.send(Event::Sent(stored)).await;
                }
            }
            Err(e) => warn!("cannot mark messages sent: {e}"),
        }
        let peer = link.peer();
        for (m, rx) in acks {
            let outcome = match tokio::time::timeout(ACK_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(DeliveryError::Rejected(code)))) => Err(code),
                Ok(Ok(Err(e))) => {
                    self.drop_link();
                    return Err(Pause::Retry(e.to_string()));
                }
                Ok(Err(_)) => {
                    self.drop_link();
                    return Err(Pause::Retry("the connection closed".into()));
                }
                Err(_) => {
                    self.drop_link();
                    return Err(Pause::Retry(format!(
                        "no acknowledgement within {ACK_TIMEOUT:?}"
                    )));
                }
            };
            match outcome {
                Ok(()) => {
                    self.delivered(m.message.id, peer, timing, writing.elapsed())
                        .await
                }
                Err(code) => {
                    let reason = match code {
                        // The recipient does not say why; neither do we.
                        RejectCode::NotDelivered => "not delivered".to_owned(),
                        other => format!("not delivered: {other}"),
                    };
                    self.failed(&[m.message.id], &reason).await;
                }
            }
        }
        Ok(())
    }

    async fn delivered(
        &mut self,
        id: MessageId,
        peer: libp2p::PeerId,
        timing: Timing,
        deliver: Duration,
    ) {
        let now = now_ms();
        let changed = self
            .env
            .store
            .call(move |s| s.set_state(&[id], MessageState::Delivered, None, Some(peer), now))
            .await;
        let stored = match changed {
            Ok(mut v) if !v.is_empty() => v.remove(0),
            Ok(_) => return,
            Err(e) => {
                warn!("cannot mark a message delivered: {e}");
                return;
            }
        };
        if let Some(waiter) = self.waiters.remove(&id) {
            self.answer_delivered(waiter, stored.clone(), peer, timing, deliver)
                .await;
        }
        let _ = self.env.events.send(Event::Delivered(stored)).await;
    }

    async fn answer_delivered(
        &self,
        waiter: Waiter,
        stored: StoredMessage,
        peer: libp2p::PeerId,
        timing: Timing,
        deliver: Duration,
    ) {
        let path = self.env.network.path(peer).await;
        answer(
            waiter.reply,
            Ok(SendOutcome::Delivered {
                message: stored,
                peer_id: peer,
                path,
                resolve_ms: ms(timing.resolve + waiter.resolved),
                dial_ms: ms(timing.dial),
                deliver_ms: ms(deliver),
            }),
        );
    }

    /// Answers the senders whose message is no longer in the outbox: an
    /// earlier round read the outbox after the message was stored but
    /// before its sender's `Deliver` came, and settled it then. What the
    /// store says is their answer.
    async fn answer_settled(&mut self, pending: &[StoredMessage]) {
        let settled: Vec<MessageId> = self
            .waiters
            .keys()
            .filter(|id| !pending.iter().any(|m| m.message.id == **id))
            .copied()
            .collect();
        for id in settled {
            let stored = match self.env.store.call(move |s| s.message(&id)).await {
                Ok(Some(stored)) => stored,
                // Not stored at all, or unreadable: the deadline answers.
                _ => continue,
            };
            match (stored.state, stored.peer_id) {
                (MessageState::Delivered, Some(peer)) => {
                    if let Some(waiter) = self.waiters.remove(&id) {
                        self.answer_delivered(
                            waiter,
                            stored,
                            peer,
                            Timing::default(),
                            Duration::ZERO,
                        )
                        .await;
                    }
                }
                (MessageState::Failed, _) => {
                    if let Some(waiter) = self.waiters.remove(&id) {
                        let reason = stored.error.as_deref().unwrap_or("not delivered");
                        answer(
                            waiter.reply,
                            Err(SendError::NotDelivered(format!(
                                "{reason} to {}",
                                stored.message.to
                            ))),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    async fn failed(&mut self, ids: &[MessageId], reason: &str) {
        let now = now_ms();
        let ids = ids.to_vec();
        let why = reason.to_owned();
        let changed = self
            .env
            .store
            .call(move |s| s.set_state(&ids, MessageState::Failed, Some(&why), None, now))
            .await
            .unwrap_or_default();
        for stored in changed {
            if let Some(waiter) = self.waiters.remove(&stored.message.id) {
                answer(
                    waiter.reply,
                    Err(SendError::NotDelivered(format!(
                        "{reason} to {}",
                        stored.message.to
                    ))),
                );
            }
            let _ = self.env.events.send(Event::Failed(stored)).await;
        }
    }

    async fn fail_all(&mut self, reason: &str) {
        let to = self.to.clone();
        let pending = self
            .env
            .store
            .call(move |s| s.outbox(Some(&to)))
            .await
            .unwrap_or_default();
        let ids: Vec<MessageId> = pending.iter().map(|m| m.message.id).collect();
        self.failed(&ids, reason).await;
    }

    /// Every waiting sender learns its message stays queued, and why.
    async fn queued(&mut self, reason: &str) {
        let ids: Vec<MessageId> = self.waiters.keys().copied().collect();
        for id in ids {
            self.answer_queued(id, reason).await;
        }
    }

    async fn answer_queued(&mut self, id: MessageId, reason: &str) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        // The reply carries the message as stored now.
        let stored = self.env.store.call(move |s| s.message(&id)).await;
        let outcome = match stored {
            Ok(Some(message)) => Ok(SendOutcome::Queued {
                message,
                reason: reason.to_owned(),
            }),
            Ok(None) => Err(SendError::Stopped),
            Err(e) => Err(SendError::Store(e)),
        };
        answer(waiter.reply, outcome);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn list(addrs: &[libp2p::Multiaddr]) -> String {
    if addrs.is_empty() {
        return "no addresses".into();
    }
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
