//! Direct messages: the sending side ([`ChatLink`]) and the receiving side
//! ([`Inbox`]) of the chat protocol.
//!
//! A sender keeps one long-lived stream per peer and pipelines messages on
//! it, after its name certificate; acknowledgements come back on the same
//! stream, matched by id. A receiver accepts a message only after checking
//! the signature against the connection's key and that the sender's name
//! belongs to that key: from the sender's certificate, or else by asking
//! the rendezvous node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use messenger_proto::accept;
use messenger_proto::certificate::{NameCertificate, SignedCertificate};
use messenger_proto::chat::{self, ChatFrame, Message, MessageId, RejectCode};
use messenger_proto::codec::{self, CodecError};
use messenger_proto::identity::verifying_key_of;
use messenger_proto::name::ScreenName;
use messenger_proto::rate::{Rate, TokenBucket};
use messenger_proto::signed::Signed;
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::directory::{DirectoryError, DirectorySession};
use crate::network::{ChatStreams, Network};

/// How long a sender waits for an acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a recipient waits for the node to say who owns a sender's name
/// before it resets the stream: less than the sender's [`ACK_TIMEOUT`].
pub const OWNER_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(OWNER_CHECK_TIMEOUT.as_secs() < ACK_TIMEOUT.as_secs());

/// How long a receiver trusts a name → peer lookup.
const NAME_CACHE_TTL: Duration = Duration::from_secs(300);

/// How many message ids a receiver remembers to drop repeats.
const SEEN_IDS: usize = 65_536;

/// Why a message was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The recipient refused it.
    #[error("the recipient refused the message: {0}")]
    Rejected(RejectCode),
    /// The stream closed before the acknowledgement.
    #[error("the connection closed before the recipient acknowledged")]
    ConnectionLost,
    /// No acknowledgement in time.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The chat stream could not be opened.
    #[error("cannot open a chat stream: {0}")]
    Stream(String),
    /// The message could not be framed.
    #[error("{0}")]
    Frame(String),
}

type AckSender = oneshot::Sender<Result<(), DeliveryError>>;

struct Outgoing {
    id: MessageId,
    frame: Vec<u8>,
    ack: AckSender,
}

/// The sending half of a chat stream to one peer. Cheap to clone.
///
/// One task owns the stream: it writes what is submitted and reads the
/// acknowledgements, so nothing is written after the stream failed.
#[derive(Clone)]
pub struct ChatLink {
    peer: PeerId,
    outgoing: mpsc::Sender<Outgoing>,
    closed: watch::Receiver<bool>,
    abort: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for ChatLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatLink")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Our current name certificate, which links send ahead of messages.
pub type CertificateWatch = watch::Receiver<Option<SignedCertificate>>;

impl ChatLink {
    /// Opens a chat stream to a connected (or dialable) peer. The stream
    /// carries `certificate` ahead of the first message, and again when it
    /// changes.
    pub async fn open(
        network: &Network,
        peer: PeerId,
        certificate: CertificateWatch,
    ) -> Result<Self, DeliveryError> {
        let stream = network
            .control()
            .open_stream(peer, chat::PROTOCOL)
            .await
            .map_err(|e| DeliveryError::Stream(e.to_string()))?;
        let (outgoing, rx) = mpsc::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let abort = Arc::new(tokio::sync::Notify::new());
        let gone = crate::directory::disconnected(network, peer);
        tokio::spawn(
            LinkTask {
                certificate,
                certificate_sent: false,
                waiting: HashMap::new(),
            }
            .run(stream, rx, abort.clone(), gone, closed_tx),
        );
        Ok(Self {
            peer,
            outgoing,
            closed,
            abort,
        })
    }

    /// The peer at the other end.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Gives the link up (its connection is going away): whatever waits
    /// for an acknowledgement on it fails at once, to be sent again.
    pub fn abort(&self) {
        self.abort.notify_one();
    }

    /// Whether the stream has ended; a closed link must be reopened.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow() || self.outgoing.is_closed()
    }

    /// Queues a signed message on the stream and returns a receiver that
    /// yields once the recipient acknowledged (or refused) it. Messages
    /// submitted one after another are written in that order, without
    /// waiting for earlier acknowledgements.
    pub async fn submit(
        &self,
        id: MessageId,
        signed: Signed,
    ) -> Result<oneshot::Receiver<Result<(), DeliveryError>>, DeliveryError> {
        let frame = codec::encode_frame(&ChatFrame::Message(signed), chat::MAX_FRAME)
            .map_err(|e| DeliveryError::Frame(e.to_string()))?;
        let (ack, rx) = oneshot::channel();
        self.outgoing
            .send(Outgoing { id, frame, ack })
            .await
            .map_err(|_| DeliveryError::ConnectionLost)?;
        Ok(rx)
    }

    /// Sends and waits for the acknowledgement.
    pub async fn deliver(&self, id: MessageId, signed: Signed) -> Result<(), DeliveryError> {
        let rx = self.submit(id, signed).await?;
        match tokio::time::timeout(ACK_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DeliveryError::ConnectionLost),
            Err(_) => Err(DeliveryError::Timeout(ACK_TIMEOUT)),
        }
    }
}

/// The task behind a [`ChatLink`]: the stream and who waits on it.
struct LinkTask {
    certificate: CertificateWatch,
    certificate_sent: bool,
    /// Messages written and not acknowledged yet, by id.
    waiting: HashMap<MessageId, AckSender>,
}

impl LinkTask {
    async fn run(
        mut self,
        stream: Stream,
        mut submitted: mpsc::Receiver<Outgoing>,
        abort: Arc<tokio::sync::Notify>,
        gone: impl std::future::Future<Output = ()>,
        closed: watch::Sender<bool>,
    ) {
        let (reader, mut writer) = stream.split();
        let answers = codec::frames::<_, ChatFrame>(reader, chat::MAX_FRAME);
        tokio::pin!(answers, gone);
        loop {
            tokio::select! {
                frame = answers.next() => match frame {
                    Some(Ok(frame)) => {
                        if !self.on_answer(frame) {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        debug!("chat stream ended: {e}");
                        break;
                    }
                    None => break,
                },
                first = submitted.recv() => {
                    let Some(first) = first else { break };
                    if let Err(e) = self.write_batch(&mut writer, first, &mut submitted).await {
                        debug!("chat stream write failed: {e}");
                        break;
                    }
                }
                _ = abort.notified() => break,
                () = &mut gone => break,
            }
        }
        // Nothing written can be acknowledged now: fail it at once.
        for (_, waiter) in self.waiting.drain() {
            let _ = waiter.send(Err(DeliveryError::ConnectionLost));
        }
        let _ = closed.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
    }

    /// Handles a frame from the recipient; false if the stream must end.
    fn on_answer(&mut self, frame: ChatFrame) -> bool {
        match frame {
            ChatFrame::Ack { id } => {
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.send(Ok(()));
                }
            }
            // The id may come from a payload the recipient could not
            // trust (a bad signature): it only ever matches our own.
            ChatFrame::Reject { id, code } => {
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.send(Err(DeliveryError::Rejected(code)));
                }
            }
            ChatFrame::Message(_) | ChatFrame::Certificate(_) => {
                warn!("peer sent a message on our outbound chat stream; closing it");
                return false;
            }
            ChatFrame::Unknown => {}
        }
        true
    }

    /// Writes `first` and everything queued behind it, flushing once.
    async fn write_batch(
        &mut self,
        writer: &mut futures::io::WriteHalf<Stream>,
        first: Outgoing,
        queue: &mut mpsc::Receiver<Outgoing>,
    ) -> std::io::Result<()> {
        let mut batch = vec![first];
        while batch.len() < 64 {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut bytes = Vec::with_capacity(batch.iter().map(|o| o.frame.len()).sum());
        // The certificate goes first on the stream, and again after a
        // renewal, so the recipient need not ask the node who we are.
        if !self.certificate_sent || self.certificate.has_changed().unwrap_or(false) {
            self.certificate_sent = true;
            let current = self.certificate.borrow_and_update().clone();
            if let Some(cert) = current {
                match codec::encode_frame(&ChatFrame::Certificate(cert), chat::MAX_FRAME) {
                    Ok(frame) => bytes.extend_from_slice(&frame),
                    Err(e) => warn!("cannot frame our name certificate: {e}"),
                }
            }
        }
        for out in batch {
            bytes.extend_from_slice(&out.frame);
            self.waiting.insert(out.id, out.ack);
        }
        let written = async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        };
        // A peer that keeps its connection but stops reading must not hold
        // the link (and the messages queued on it) forever.
        match tokio::time::timeout(ACK_TIMEOUT, written).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the recipient stopped reading",
            )),
        }
    }
}

/// A message accepted by the [`Inbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The verified sender name.
    pub from: ScreenName,
    /// The sender's peer id.
    pub peer: PeerId,
    /// The message.
    pub message: Message,
}

/// Who can resolve a sender's name for the inbox: the current directory
/// session, which changes when the client reconnects.
pub type DirectoryWatch = watch::Receiver<Option<DirectorySession>>;

/// Where the inbox keeps what it accepts, and whom it refuses.
pub trait MessageSink: Send + Sync + 'static {
    /// Whether to refuse a verified message from `from` (owned by `peer`),
    /// e.g. because the sender is blocked or its key is not the pinned one.
    fn refuse(&self, from: &ScreenName, peer: &PeerId) -> Option<RejectCode>;

    /// Keeps an accepted message, durably if it must survive a crash, before
    /// it is acknowledged. Returns false for a message seen before. Runs on
    /// a blocking thread.
    fn keep(&self, message: &Message, peer: &PeerId) -> Result<bool, String>;

    /// Whether a message with this id from `peer` was kept before: a repeat
    /// is acknowledged again whatever else has changed since (a block, a
    /// key change), since the message was already accepted.
    fn seen(&self, _id: &MessageId, _peer: &PeerId) -> bool {
        false
    }

    /// Whether `keep` blocks (disk) and must run on a blocking thread.
    fn blocks(&self) -> bool {
        true
    }
}

/// A sink that only remembers recent ids in memory: for library users and
/// tests that keep no history.
#[derive(Debug, Default)]
pub struct MemorySink {
    seen: Mutex<SeenIds>,
}

impl MessageSink for MemorySink {
    fn refuse(&self, _: &ScreenName, _: &PeerId) -> Option<RejectCode> {
        None
    }

    fn keep(&self, message: &Message, _: &PeerId) -> Result<bool, String> {
        Ok(lock(&self.seen).insert(message.id))
    }

    fn blocks(&self) -> bool {
        false
    }
}

/// Chat streams one peer may have open to us at once.
const MAX_STREAMS_PER_PEER: u32 = 4;

/// How fast one peer may send us messages, unless the client says
/// otherwise: far above any conversation, far below a flood. A peer over
/// it is slowed down (its messages wait unread), not refused: nothing is
/// lost.
pub const DEFAULT_MESSAGE_RATE: Rate = Rate::new(200.0, 1_000);

/// The receiving side: accepts chat streams and checks every message.
pub struct Inbox {
    me: ScreenName,
    /// The rendezvous node whose certificates we accept.
    trusted: PeerId,
    directory: DirectoryWatch,
    deliver: mpsc::Sender<IncomingMessage>,
    sink: Arc<dyn MessageSink>,
    owners: Mutex<HashMap<ScreenName, (PeerId, Instant)>>,
    /// Per peer with a stream open: its streams and its message budget.
    peers: Mutex<HashMap<PeerId, (u32, TokenBucket)>>,
    rate: Rate,
    epoch: Instant,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// Why a message is refused, or the stream given up.
enum Refusal {
    /// Tell the sender, permanently.
    Reject(MessageId, RejectCode),
    /// Close the stream without an answer: the sender will retry.
    Close(String),
}

impl Inbox {
    /// An inbox for messages to `me`; accepted ones go to `deliver`.
    /// Senders' names are taken from certificates issued by `trusted`, or
    /// else looked up through `directory`.
    pub fn new(
        me: ScreenName,
        trusted: PeerId,
        directory: DirectoryWatch,
        deliver: mpsc::Sender<IncomingMessage>,
        sink: Arc<dyn MessageSink>,
        rate: Rate,
    ) -> Arc<Self> {
        Arc::new(Self {
            me,
            trusted,
            directory,
            deliver,
            sink,
            owners: Mutex::default(),
            peers: Mutex::default(),
            rate,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Counts a new stream of `peer`; `false` if it has too many open.
    fn stream_opened(&self, peer: PeerId) -> bool {
        let now = self.now_ms();
        let mut peers = lock(&self.peers);
        let (streams, _) = peers
            .entry(peer)
            .or_insert_with(|| (0, TokenBucket::new(self.rate, now)));
        if *streams >= MAX_STREAMS_PER_PEER {
            return false;
        }
        *streams += 1;
        true
    }

    fn stream_closed(&self, peer: PeerId) {
        let mut peers = lock(&self.peers);
        if let Some((streams, _)) = peers.get_mut(&peer) {
            *streams = streams.saturating_sub(1);
            if *streams == 0 {
                peers.remove(&peer);
            }
        }
    }

    /// Waits until `peer` may send another message.
    async fn pace(&self, peer: PeerId) {
        loop {
            let now = self.now_ms();
            let wait = match lock(&self.peers).get_mut(&peer) {
                Some((_, bucket)) => bucket.take(now),
                None => Ok(()),
            };
            match wait {
                Ok(()) => return,
                Err(wait) => {
                    debug!(%peer, ?wait, "peer over its message rate; slowing it down");
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    /// Accepts chat streams until the network stops.
    pub async fn serve(self: Arc<Self>, mut incoming: ChatStreams) {
        while let Some(accept::Incoming {
            peer,
            stream,
            slot,
            gone,
            ..
        }) = incoming.next().await
        {
            let inbox = self.clone();
            tokio::spawn(async move {
                inbox.serve_stream(peer, stream, gone).await;
                drop(slot);
            });
        }
    }

    async fn serve_stream(
        self: Arc<Self>,
        peer: PeerId,
        stream: Stream,
        gone: accept::ConnectionGone,
    ) {
        let Some(key) = verifying_key_of(&peer) else {
            debug!(%peer, "chat stream from a non-ed25519 peer; closing");
            return;
        };
        if !self.stream_opened(peer) {
            warn!(%peer, limit = MAX_STREAMS_PER_PEER, "too many chat streams from one peer; refusing another");
            return;
        }
        // A stream on a connection closed locally is never woken again.
        tokio::select! {
            () = self.serve_messages(peer, &key, stream) => {}
            () = gone => debug!(%peer, "chat stream's connection closed"),
        }
        self.stream_closed(peer);
    }

    async fn serve_messages(
        &self,
        peer: PeerId,
        key: &ed25519_dalek::VerifyingKey,
        stream: Stream,
    ) {
        let (mut reader, mut writer) = stream.split();
        // The sender's name as its certificate vouches for it on this stream.
        let mut certified: Option<NameCertificate> = None;
        loop {
            // Over its rate, a peer's next message waits unread: the
            // stream's flow control slows the sender down.
            self.pace(peer).await;
            let signed = match codec::read_frame::<_, ChatFrame>(&mut reader, chat::MAX_FRAME).await
            {
                Ok(Some(ChatFrame::Message(signed))) => signed,
                Ok(Some(ChatFrame::Certificate(cert))) => {
                    match cert.verify(&self.trusted, now_ms()) {
                        Ok(cert) if cert.owner == peer => certified = Some(cert),
                        Ok(cert) => {
                            warn!(%peer, owner = %cert.owner, "ignoring a name certificate issued to another key")
                        }
                        Err(e) => debug!(%peer, "ignoring a name certificate: {e}"),
                    }
                    continue;
                }
                Ok(Some(ChatFrame::Unknown)) => continue,
                Ok(Some(_)) => {
                    warn!(%peer, "peer sent an acknowledgement on an inbound chat stream; closing it");
                    break;
                }
                Ok(None) => break,
                Err(CodecError::Io(e)) => {
                    debug!(%peer, "chat stream ended: {e}");
                    break;
                }
                Err(e) => {
                    warn!(%peer, "closing chat stream: {e}");
                    break;
                }
            };
            let answer = match self.accept(peer, key, &signed, certified.as_ref()).await {
                Ok(id) => ChatFrame::Ack { id },
                Err(Refusal::Reject(id, code)) => {
                    warn!(%peer, %id, "message refused: {code}");
                    ChatFrame::Reject { id, code }
                }
                Err(Refusal::Close(why)) => {
                    warn!(%peer, "closing chat stream: {why}");
                    break;
                }
            };
            if let Err(e) = codec::write_frame(&mut writer, &answer, chat::MAX_FRAME).await {
                debug!(%peer, "cannot answer on chat stream: {e}");
                break;
            }
        }
    }

    /// Checks one message and hands it on; returns its id to acknowledge.
    /// The checks and their order are those of docs/protocol.md §6.3.
    async fn accept(
        &self,
        peer: PeerId,
        key: &ed25519_dalek::VerifyingKey,
        signed: &Signed,
        certified: Option<&NameCertificate>,
    ) -> Result<MessageId, Refusal> {
        let now = now_ms();
        let message =
            chat::open_message(signed, key, &self.me, now).map_err(|refused| match refused.id {
                Some(id) => Refusal::Reject(id, refused.code),
                None => Refusal::Close(format!("{}, and no message id in it", refused.code)),
            })?;
        let id = message.id;
        let vouched = certified
            .is_some_and(|cert| cert.vouches_for(&message.from, &peer) && cert.expires_at > now);
        if !vouched {
            // Bounded, so that the sender, which waits ACK_TIMEOUT for an
            // answer, sees our reset before it gives up on its own.
            tokio::time::timeout(
                OWNER_CHECK_TIMEOUT,
                self.check_owner(&message.from, peer, id),
            )
            .await
            .map_err(|_| {
                Refusal::Close(format!(
                    "the rendezvous node did not say within {OWNER_CHECK_TIMEOUT:?} who owns {}",
                    message.from
                ))
            })??;
        }
        self.keep(message, peer).await
    }

    /// Asks the node (or its cached answer) whether `from` belongs to `peer`.
    async fn check_owner(
        &self,
        from: &ScreenName,
        peer: PeerId,
        id: MessageId,
    ) -> Result<(), Refusal> {
        let mut owner = self.owner_of(from).await;
        if matches!(&owner, Ok(o) if *o != peer) {
            // The cached owner may be stale (the name changed hands): ask
            // the node once more before refusing for good.
            lock(&self.owners).remove(from);
            owner = self.owner_of(from).await;
        }
        match owner {
            Ok(owner) if owner == peer => Ok(()),
            Ok(_) | Err(OwnerError::NoSuchName) => {
                Err(Refusal::Reject(id, RejectCode::SenderMismatch))
            }
            Err(OwnerError::Unavailable(e)) => Err(Refusal::Close(format!(
                "cannot check that {from} is the sender's name: no valid certificate, and {e}"
            ))),
        }
    }

    /// The last checks (repeats, blocks, pins), then stores the message
    /// and hands it on.
    async fn keep(&self, message: Message, peer: PeerId) -> Result<MessageId, Refusal> {
        let id = message.id;
        if let Some(code) = self.sink.refuse(&message.from, &peer) {
            // A repeat of a message accepted before the block or key
            // change is still acknowledged; `keep` dedups the normal path.
            if self.sink.seen(&id, &peer) {
                debug!(%id, "already accepted; acknowledged again");
                return Ok(id);
            }
            return Err(Refusal::Reject(id, code));
        }
        let kept = if self.sink.blocks() {
            let sink = self.sink.clone();
            let keep = message.clone();
            tokio::task::spawn_blocking(move || sink.keep(&keep, &peer))
                .await
                .map_err(|e| Refusal::Close(format!("cannot store the message: {e}")))?
        } else {
            self.sink.keep(&message, &peer)
        };
        match kept {
            Ok(true) => {}
            Ok(false) => {
                debug!(%id, "duplicate message acknowledged again");
                return Ok(id);
            }
            Err(e) => return Err(Refusal::Close(format!("cannot store the message: {e}"))),
        }
        let incoming = IncomingMessage {
            from: message.from.clone(),
            peer,
            message,
        };
        if self.deliver.send(incoming).await.is_err() {
            return Err(Refusal::Close("the client is shutting down".into()));
        }
        Ok(id)
    }

    /// The key owning `name`, from the cache or the directory.
    async fn owner_of(&self, name: &ScreenName) -> Result<PeerId, OwnerError> {
        if let Some((peer, at)) = lock(&self.owners).get(name)
            && at.elapsed() < NAME_CACHE_TTL
        {
            return Ok(*peer);
        }
        let session = self
            .directory
            .borrow()
            .clone()
            .filter(|s| !s.is_closed())
            .ok_or_else(|| {
                OwnerError::Unavailable("not connected to the rendezvous node".into())
            })?;
        match session.resolve(name.as_str()).await {
            Ok(resolution) => {
                let mut owners = lock(&self.owners);
                // Bounded: expired entries go before a new one comes in,
                // and if all are fresh (a flood of senders), all go.
                if owners.len() >= SEEN_IDS {
                    owners.retain(|_, (_, at)| at.elapsed() < NAME_CACHE_TTL);
                    if owners.len() >= SEEN_IDS {
                        owners.clear();
                    }
                }
                owners.insert(name.clone(), (resolution.owner, Instant::now()));
                Ok(resolution.owner)
            }
            Err(DirectoryError::Refused {
                code: messenger_proto::directory::ErrorCode::NoSuchName,
                ..
            }) => Err(OwnerError::NoSuchName),
            Err(e) => Err(OwnerError::Unavailable(e.to_string())),
        }
    }
}

enum OwnerError {
    NoSuchName,
    Unavailable(String),
}

/// A bounded set of recently seen message ids.
#[derive(Debug, Default)]
struct SeenIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl SeenIds {
    /// Records `id`; false if it was already there.
    fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
