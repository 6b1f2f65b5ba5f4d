//! The receiving side: accepts chat streams and checks every message.
//!
//! One task per peer serves all of that peer's streams (at most
//! [`MAX_STREAMS_PER_PEER`]), so what is kept per peer (its message budget,
//! the names its certificates vouch for, what the node said it owns) has
//! one owner. The acceptor routes each new stream to its peer's task and
//! owns those tasks; everything ends when the inbox is cancelled.
//!
//! A message is answered only after the checks of docs/protocol.md §6.3 and
//! after the [`MessageSink`] kept it (durably, for the client's store). Its
//! signature is checked right after the acknowledgement, off its critical
//! path (the connection is authenticated by the same key, see
//! docs/security.md), and before the message is shown: the sink hears
//! [`MessageSink::verified`] or [`MessageSink::forged`], and a forgery
//! closes every stream of its peer.
//!
//! What a peer's own misbehaviour causes is logged at debug level only: a
//! stranger must not be able to fill the user's log (the window writes
//! it to a file in the home) by sending what is refused.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::stream::{BoxStream, SelectAll};
use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, Stream};
use messenger_proto::accept::{self, ConnectionGone, Slot};
use messenger_proto::certificate::NameCertificate;
use messenger_proto::chat::{self, ChatFrame, Message, MessageId, RejectCode};
use messenger_proto::codec::{self, CodecError};
use messenger_proto::directory::ErrorCode;
use messenger_proto::identity::verifying_key_of;
use messenger_proto::name::ScreenName;
use messenger_proto::rate::{Rate, TokenBucket};
use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::owners::{self, Owner, Owners};
use super::{NUDGE_RATE, OWNER_CHECK_TIMEOUT, Signal, TYPING_RATE};
use crate::directory::{DirectoryError, DirectorySession};
use crate::network::ChatStreams;

/// Chat streams one peer may have open to us at once.
pub const MAX_STREAMS_PER_PEER: usize = 4;

/// Who can resolve a sender's name: the current directory session, which
/// changes when the client reconnects.
pub type DirectoryWatch = watch::Receiver<Option<DirectorySession>>;

/// The keys whose name certificates are accepted: our rendezvous nodes',
/// and the one our node's certificates came signed with (a cluster's
/// shared certificate key). Kept up to date by the agent.
pub type TrustedIssuers = watch::Receiver<Vec<PeerId>>;

/// Why a sink did not keep a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepError {
    /// Refused for good, with the code the sender is told (a message
    /// request over its limits).
    Refused(RejectCode),
    /// It cannot be kept now (the store failed): the stream is reset and
    /// the sender tries again later.
    Failed(String),
}

/// Where the inbox keeps what it accepts, and whom it refuses.
pub trait MessageSink: Send + Sync + 'static {
    /// Whether to refuse a message from `from` (owned by `peer`), e.g.
    /// because the sender is blocked or its key is not the pinned one.
    fn refuse(&self, from: &ScreenName, peer: &PeerId) -> Option<RejectCode>;

    /// Whether a message with this id from `peer` was kept before: a repeat
    /// is acknowledged again whatever changed since (a block, a key
    /// change), since the message was already accepted.
    fn seen(&self, id: MessageId, peer: PeerId) -> impl Future<Output = bool> + Send;

    /// What [`MessageSink::keep`] hands back for the verdict on the
    /// message's signature.
    type Kept: Send;

    /// Keeps an accepted message (durably, if it must survive a crash)
    /// before it is acknowledged, with the bytes its signature covers: the
    /// signature is not checked yet, and nothing may show the message
    /// before [`MessageSink::verified`]. `Ok(None)` for a message kept
    /// before.
    fn keep(
        &self,
        message: Message,
        signed: Signed,
        peer: PeerId,
    ) -> impl Future<Output = Result<Option<Self::Kept>, KeepError>> + Send;

    /// The signature of a kept message checked out: it may be shown now.
    fn verified(&self, kept: Self::Kept) -> impl Future<Output = ()> + Send;

    /// The signature of a kept message did not verify: it must never be
    /// shown (the peer's streams are closed).
    fn forged(&self, kept: Self::Kept) -> impl Future<Output = ()> + Send;

    /// An ephemeral signal from `from` (a name the stream's certificate
    /// vouches for, not refused), within its rate. Ignored by default.
    fn signal(
        &self,
        from: ScreenName,
        peer: PeerId,
        signal: Signal,
    ) -> impl Future<Output = ()> + Send {
        let _ = (from, peer, signal);
        async {}
    }
}

/// What every peer's task shares.
struct Shared<S> {
    me: ScreenName,
    /// The keys whose name certificates we accept.
    trusted: TrustedIssuers,
    directory: DirectoryWatch,
    /// What the node said owns senders' names, and the budget for asking.
    owners: Owners,
    sink: S,
    rate: Rate,
}

/// The receiving side of the chat protocol.
pub struct Inbox<S> {
    shared: Arc<Shared<S>>,
}

impl<S> std::fmt::Debug for Inbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("me", &self.shared.me)
            .finish_non_exhaustive()
    }
}

/// A message taken: its id to acknowledge, and, if it is new, what the
/// sink wants back with the verdict on its signature (checked once the
/// acknowledgement is on its way).
struct Accepted<K> {
    id: MessageId,
    fresh: Option<K>,
}

/// What becomes of a stream after one of its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Read on.
    Continue,
    /// Reset this stream.
    Close,
    /// Reset every stream of the peer: it sent a forgery.
    CloseAll,
}

/// Why a message is refused, or its stream given up.
enum Refusal {
    /// Tell the sender, permanently.
    Reject(MessageId, RejectCode),
    /// Reset the stream without an answer: the sender will retry.
    Close(String),
}

/// A new stream for a peer's task.
type NewStream = (Stream, ConnectionGone, Slot);

impl<S: MessageSink> Inbox<S> {
    /// An inbox for messages to `me`, kept by `sink`. Senders' names are
    /// taken from certificates issued by one of `trusted`, or else looked up
    /// through `directory`; each peer may send `rate` messages.
    pub fn new(
        me: ScreenName,
        trusted: TrustedIssuers,
        directory: DirectoryWatch,
        sink: S,
        rate: Rate,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                me,
                trusted,
                directory,
                owners: Owners::new(),
                sink,
                rate,
            }),
        }
    }

    /// Accepts chat streams until `incoming` ends or `cancel` fires; then
    /// every peer's task ends too.
    pub async fn serve(self, mut incoming: ChatStreams, cancel: CancellationToken) {
        let mut peers: HashMap<PeerId, mpsc::Sender<NewStream>> = HashMap::new();
        let mut tasks: JoinSet<PeerId> = JoinSet::new();
        loop {
            tokio::select! {
                accepted = incoming.next() => {
                    let Some(accept::Incoming { peer, stream, slot, gone, .. }) = accepted else {
                        break;
                    };
                    let mut new = (stream, gone, slot);
                    // The peer's task may be ending: then it gets a new one.
                    if let Some(tx) = peers.get(&peer) {
                        match tx.try_send(new) {
                            Ok(()) => continue,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                debug!(%peer, "too many chat streams from one peer at once; refusing one");
                                continue;
                            }
                            Err(mpsc::error::TrySendError::Closed(back)) => new = back,
                        }
                    }
                    let Some(key) = verifying_key_of(&peer) else {
                        debug!(%peer, "chat stream from a non-ed25519 peer; closing");
                        continue;
                    };
                    let (tx, rx) = mpsc::channel(MAX_STREAMS_PER_PEER);
                    let _ = tx.try_send(new);
                    peers.insert(peer, tx);
                    let task = PeerTask::new(self.shared.clone(), peer, key);
                    let cancel = cancel.child_token();
                    tasks.spawn(async move {
                        task.run(rx, cancel).await;
                        peer
                    });
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(peer) = done
                        && peers.get(&peer).is_some_and(mpsc::Sender::is_closed)
                    {
                        peers.remove(&peer);
                    }
                }
                () = cancel.cancelled() => break,
            }
        }
        cancel.cancel();
        while tasks.join_next().await.is_some() {}
    }
}

/// One stream of a peer: its frames, tagged with the stream's index, and
/// a last `None` when it ends (so that its state is dropped too).
type Frames = BoxStream<'static, (usize, Option<Result<ChatFrame, CodecError>>)>;

/// What a peer's task keeps about one of its streams.
struct StreamState {
    writer: futures::io::WriteHalf<Stream>,
    /// The sender's name, as its certificate on this stream vouches.
    certified: Option<NameCertificate>,
    /// Dropped to end the stream's reading half too (then both halves
    /// are gone and the stream is reset).
    _reading: futures::channel::oneshot::Sender<()>,
    _slot: Slot,
}

/// Serves every chat stream of one peer.
struct PeerTask<S> {
    shared: Arc<Shared<S>>,
    peer: PeerId,
    key: ed25519_dalek::VerifyingKey,
    bucket: TokenBucket,
    /// Typing signals and nudges taken, each within its own rate.
    typing: TokenBucket,
    nudges: TokenBucket,
    /// Look-ups of who owns a name this peer's messages may cause.
    lookups: TokenBucket,
    epoch: Instant,
    streams: HashMap<usize, StreamState>,
}

impl<S: MessageSink> PeerTask<S> {
    fn new(shared: Arc<Shared<S>>, peer: PeerId, key: ed25519_dalek::VerifyingKey) -> Self {
        let rate = shared.rate;
        Self {
            shared,
            peer,
            key,
            bucket: TokenBucket::new(rate, 0),
            typing: TokenBucket::new(TYPING_RATE, 0),
            nudges: TokenBucket::new(NUDGE_RATE, 0),
            lookups: TokenBucket::new(owners::PER_SENDER, 0),
            epoch: Instant::now(),
            streams: HashMap::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sets a token aside for the next frame; if there is none, when to
    /// try again.
    fn reserve_token(&mut self) -> Option<tokio::time::Instant> {
        let wait = self.bucket.take(self.now_ms()).err()?;
        debug!(peer = %self.peer, ?wait, "peer over its message rate; slowing it down");
        Some(tokio::time::Instant::now() + wait.min(Duration::from_secs(1)))
    }

    async fn run(mut self, mut new_streams: mpsc::Receiver<NewStream>, cancel: CancellationToken) {
        let mut frames: SelectAll<Frames> = SelectAll::new();
        let mut next_index = 0usize;
        // Over its rate, a peer's next frame waits unread: the stream's
        // flow control slows the sender down, and nothing is lost. While
        // `wait_until` is none, a token is set aside for the next frame.
        let mut wait_until = self.reserve_token();
        loop {
            let pacing = async {
                match wait_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                new = new_streams.recv() => {
                    let Some((stream, gone, slot)) = new else {
                        if frames.is_empty() { break } else { continue }
                    };
                    if self.streams.len() >= MAX_STREAMS_PER_PEER {
                        debug!(peer = %self.peer, limit = MAX_STREAMS_PER_PEER, "too many chat streams from one peer; refusing another");
                        continue;
                    }
                    let index = next_index;
                    next_index += 1;
                    let (reader, writer) = stream.split();
                    let (reading, stop) = futures::channel::oneshot::channel::<()>();
                    // A stream on a connection closed locally is never woken
                    // again: its connection's end ends it, as does our
                    // giving it up.
                    let stream_frames = codec::frames::<_, ChatFrame>(reader, chat::MAX_FRAME)
                        .take_until(futures::future::select(gone, stop))
                        .map(move |frame| (index, Some(frame)))
                        .chain(futures::stream::once(async move { (index, None) }));
                    frames.push(stream_frames.boxed());
                    self.streams.insert(index, StreamState { writer, certified: None, _reading: reading, _slot: slot });
                }
                () = pacing => wait_until = self.reserve_token(),
                next = frames.next(), if wait_until.is_none() && !frames.is_empty() => {
                    let Some((index, frame)) = next else { continue };
                    let after = match frame {
                        Some(frame) => self.on_frame(index, frame).await,
                        None => After::Close,
                    };
                    // Dropping a stream's writer and reader resets it (if it
                    // has not ended already).
                    match after {
                        After::Continue => {}
                        After::Close => drop(self.streams.remove(&index)),
                        After::CloseAll => self.streams.clear(),
                    }
                    wait_until = self.reserve_token();
                    if frames.is_empty() && self.streams.is_empty() {
                        // No stream left: end, unless one is on its way.
                        new_streams.close();
                        if new_streams.is_empty() {
                            break;
                        }
                    }
                }
                () = cancel.cancelled() => break,
            }
        }
    }

    /// Handles one frame of stream `index`.
    async fn on_frame(&mut self, index: usize, frame: Result<ChatFrame, CodecError>) -> After {
        let peer = self.peer;
        let signed = match frame {
            Ok(ChatFrame::Message(signed)) => signed,
            Ok(ChatFrame::Certificate(cert)) => {
                let verified = cert.verify_by_any(&self.shared.trusted.borrow(), now_ms());
                match verified {
                    Ok(cert) if cert.owner == peer => {
                        if let Some(stream) = self.streams.get_mut(&index) {
                            stream.certified = Some(cert);
                        }
                    }
                    Ok(cert) => {
                        debug!(%peer, owner = %cert.owner, "ignoring a name certificate issued to another key")
                    }
                    Err(e) => debug!(%peer, "ignoring a name certificate: {e}"),
                }
                return After::Continue;
            }
            Ok(ChatFrame::Unknown) => return After::Continue,
            Ok(ChatFrame::Typing { active }) => {
                self.on_signal(index, Signal::Typing(active)).await;
                return After::Continue;
            }
            Ok(ChatFrame::Nudge {}) => {
                self.on_signal(index, Signal::Nudge).await;
                return After::Continue;
            }
            Ok(ChatFrame::Ack { .. } | ChatFrame::Reject { .. }) => {
                debug!(%peer, "peer sent an acknowledgement on an inbound chat stream; closing it");
                return After::Close;
            }
            Err(CodecError::Io(e)) => {
                debug!(%peer, "chat stream ended: {e}");
                return After::Close;
            }
            Err(e) => {
                debug!(%peer, "closing chat stream: {e}");
                return After::Close;
            }
        };
        let certified = self.streams.get(&index).and_then(|s| s.certified.clone());
        let (answer, fresh) = match self.accept(&signed, certified.as_ref()).await {
            Ok(Accepted { id, fresh }) => (ChatFrame::Ack { id }, fresh.map(|kept| (id, kept))),
            Err(Refusal::Reject(id, code)) => {
                debug!(%peer, %id, "message refused: {code}");
                (ChatFrame::Reject { id, code }, None)
            }
            Err(Refusal::Close(why)) => {
                debug!(%peer, "closing chat stream: {why}");
                return After::Close;
            }
        };
        // A stream that earned a refusal is closed once it is told: a
        // sender that keeps sending what is refused pays for a new stream
        // each time (an honest one opens one for its next message).
        let refused = matches!(answer, ChatFrame::Reject { .. });
        let Some(stream) = self.streams.get_mut(&index) else {
            return After::Close;
        };
        let written = codec::write_frame(&mut stream.writer, &answer, chat::MAX_FRAME).await;
        if let Err(e) = &written {
            debug!(%peer, "cannot answer on chat stream: {e}");
        }
        if let Some((id, kept)) = fresh {
            // Kept, and acknowledged: its signature is checked now, after
            // the connection's task has had a turn to send the ack.
            tokio::task::yield_now().await;
            if signed.verify(MESSAGE_CONTEXT, &self.key).is_ok() {
                self.shared.sink.verified(kept).await;
            } else {
                warn!(%peer, %id, "a message's signature does not verify under its sender's key; dropping it and closing the peer's streams");
                self.shared.sink.forged(kept).await;
                return After::CloseAll;
            }
        }
        if written.is_err() || refused {
            if refused && let Some(stream) = self.streams.get_mut(&index) {
                // The refusal reaches the sender before the stream goes.
                let _ = futures::AsyncWriteExt::close(&mut stream.writer).await;
            }
            return After::Close;
        }
        After::Continue
    }

    /// An ephemeral signal on stream `index`: taken only under the name its
    /// certificate vouches for (the node is not asked for something that
    /// is gone in seconds), from a sender not refused, within its rate.
    async fn on_signal(&mut self, index: usize, signal: Signal) {
        let now = now_ms();
        let Some(cert) = self.streams.get(&index).and_then(|s| s.certified.clone()) else {
            debug!(peer = %self.peer, "a signal on a stream without a certificate; ignored");
            return;
        };
        if cert.expires_at <= now || self.shared.sink.refuse(&cert.name, &self.peer).is_some() {
            return;
        }
        let bucket = match signal {
            Signal::Typing(_) => &mut self.typing,
            Signal::Nudge => &mut self.nudges,
        };
        let at = self.epoch.elapsed().as_millis() as u64;
        if bucket.take(at).is_err() {
            debug!(peer = %self.peer, ?signal, "over its rate; ignored");
            return;
        }
        self.shared.sink.signal(cert.name, self.peer, signal).await;
    }

    /// Checks one message and hands it on; returns its id to acknowledge.
    /// The checks and their order are those of docs/protocol.md §6.3.
    async fn accept(
        &mut self,
        signed: &Signed,
        certified: Option<&NameCertificate>,
    ) -> Result<Accepted<S::Kept>, Refusal> {
        let now = now_ms();
        // The signature is checked after the acknowledgement (see
        // `on_frame`): the connection is authenticated by the same key.
        let message = chat::check_message(signed, &self.shared.me, now).map_err(|refused| {
            match refused.id {
                Some(id) => Refusal::Reject(id, refused.code),
                None => Refusal::Close(format!("{}, and no message id in it", refused.code)),
            }
        })?;
        let id = message.id;
        let vouched = certified.is_some_and(|cert| {
            cert.vouches_for(&message.from, &self.peer) && cert.expires_at > now
        });
        if !vouched {
            // Bounded, so that the sender, which waits ACK_TIMEOUT for an
            // answer, sees our reset before it gives up on its own.
            tokio::time::timeout(OWNER_CHECK_TIMEOUT, self.check_owner(&message.from, id))
                .await
                .map_err(|_| {
                    Refusal::Close(format!(
                        "the rendezvous node did not say within {OWNER_CHECK_TIMEOUT:?} who owns {}",
                        message.from
                    ))
                })??;
        }
        self.keep(message, signed).await
    }

    /// Asks the node (or its recent answer) whether `from` belongs to the
    /// peer. A recent answer is used whatever it says (a name nobody owns,
    /// or another key's, included); a new question is asked only within
    /// this peer's budget and everyone's (see [`owners`]).
    async fn check_owner(&mut self, from: &ScreenName, id: MessageId) -> Result<(), Refusal> {
        let owner = match self.shared.owners.known(from, &self.peer) {
            Some(owner) => owner,
            None => self.ask_owner(from).await.map_err(|e| match e {
                OwnerError::OverBudget => Refusal::Close(format!(
                    "over the budget for asking the node who owns {from}; the sender may try again later"
                )),
                OwnerError::Unavailable(e) => Refusal::Close(format!(
                    "cannot check that {from} is the sender's name: no valid certificate, and {e}"
                )),
            })?,
        };
        match owner {
            Owner::Key(key) if key == self.peer => Ok(()),
            Owner::Key(_) | Owner::Nobody => Err(Refusal::Reject(id, RejectCode::SenderMismatch)),
        }
    }

    /// Asks the node who owns `name`, if the budgets allow, and remembers
    /// the answer.
    async fn ask_owner(&mut self, name: &ScreenName) -> Result<Owner, OwnerError> {
        let session = self
            .shared
            .directory
            .borrow()
            .clone()
            .filter(|s| !s.is_closed())
            .ok_or_else(|| {
                OwnerError::Unavailable("not connected to the rendezvous node".into())
            })?;
        if self.lookups.take(self.now_ms()).is_err() || !self.shared.owners.spend() {
            debug!(peer = %self.peer, %name, "over the budget for sender look-ups");
            return Err(OwnerError::OverBudget);
        }
        let owner = match session.resolve_sender(name.as_str()).await {
            Ok(resolution) => Owner::Key(resolution.owner),
            Err(DirectoryError::Refused {
                code: ErrorCode::NoSuchName,
                ..
            }) => Owner::Nobody,
            Err(e) => return Err(OwnerError::Unavailable(e.to_string())),
        };
        self.shared.owners.remember(name, owner);
        Ok(owner)
    }

    /// The last checks (repeats, blocks, pins), then keeps the message.
    async fn keep(&self, message: Message, signed: &Signed) -> Result<Accepted<S::Kept>, Refusal> {
        let (id, peer) = (message.id, self.peer);
        let sink = &self.shared.sink;
        if let Some(code) = sink.refuse(&message.from, &peer) {
            // A repeat of a message accepted before the block or key
            // change is still acknowledged.
            if sink.seen(id, peer).await {
                debug!(%id, "already accepted; acknowledged again");
                return Ok(Accepted { id, fresh: None });
            }
            return Err(Refusal::Reject(id, code));
        }
        match sink.keep(message, signed.clone(), peer).await {
            Ok(Some(kept)) => Ok(Accepted {
                id,
                fresh: Some(kept),
            }),
            Ok(None) => {
                debug!(%id, "repeat of a message kept before; acknowledged again");
                Ok(Accepted { id, fresh: None })
            }
            Err(KeepError::Refused(code)) => Err(Refusal::Reject(id, code)),
            Err(KeepError::Failed(e)) => {
                Err(Refusal::Close(format!("cannot keep the message: {e}")))
            }
        }
    }
}

enum OwnerError {
    /// The peer, or all senders together, asked too much lately.
    OverBudget,
    Unavailable(String),
}
