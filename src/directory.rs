//! The client side of a directory session with the rendezvous node.
//!
//! One stream carries every request of a session; responses are matched to
//! requests by id, so callers may issue requests concurrently. While the
//! session is open, whatever it registered stays online.

use std::collections::HashMap;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use messenger_proto::certificate::SignedCertificate;
use messenger_proto::codec;
use messenger_proto::directory::{self, ErrorCode, Op, Reply, Request, Resolution, Response};
use messenger_proto::name::ScreenName;
use messenger_proto::record::SignedRecord;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::network::{Network, NetworkError, NetworkEvent};

/// How long one directory request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials of the node per session opened, and the first pause between them.
const DIAL_ATTEMPTS: u32 = 3;
const DIAL_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why a directory request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    /// The rendezvous address is unusable.
    #[error("bad rendezvous address {addr}: {reason}")]
    BadAddress {
        /// The address given.
        addr: Multiaddr,
        /// What is wrong.
        reason: &'static str,
    },
    /// The node could not be reached.
    #[error("cannot reach the rendezvous node: {0}")]
    Unreachable(NetworkError),
    /// The node does not speak the directory protocol, or the stream failed.
    #[error("cannot open a directory session with the rendezvous node: {0}")]
    Session(String),
    /// The session ended before the answer came.
    #[error("lost the connection to the rendezvous node")]
    Closed,
    /// No answer in time.
    #[error("the rendezvous node did not answer within {0:?}")]
    Timeout(Duration),
    /// The node refused the request.
    #[error("{message}")]
    Refused {
        /// Why, as a stable code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// The node answered with something that does not fit the request.
    #[error("the rendezvous node sent an unexpected answer")]
    Unexpected,
}

impl DirectoryError {
    /// The refusal code, if the node refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            DirectoryError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The outcome of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The name now owned.
    pub name: ScreenName,
    /// Whether this registration created the claim.
    pub new_claim: bool,
    /// When it lapses unless renewed (ms since epoch).
    pub expires_at: u64,
    /// The node's certificate of the name, as received (not yet verified).
    pub certificate: Option<SignedCertificate>,
}

/// How often a rate-limited request is tried again, and the first pause.
const RATE_LIMIT_RETRIES: u32 = 4;
const RATE_LIMIT_PAUSE: Duration = Duration::from_millis(250);

/// An open directory session. Cheap to clone; the session ends when every
/// clone is dropped or the connection dies.
#[derive(Debug, Clone)]
pub struct DirectorySession {
    node: PeerId,
    requests: mpsc::Sender<Call>,
    closed: watch::Receiver<bool>,
}

/// What the session's writer task is asked to do.
#[derive(Debug)]
enum Call {
    Request(Op, oneshot::Sender<Reply>),
    Close,
}

/// The node's peer id, taken from the `/p2p/` suffix of its address.
pub fn node_peer_id(addr: &Multiaddr) -> Result<PeerId, DirectoryError> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err(DirectoryError::BadAddress {
            addr: addr.clone(),
            reason: "it must end in /p2p/<peer id> (copy a line the rendezvous node printed)",
        }),
    }
}

impl DirectorySession {
    /// Connects to the node at `addr` and opens a session. Presence pushes
    /// for watched names go to `pushes`, if given.
    pub async fn open(
        network: &Network,
        addr: &Multiaddr,
        pushes: Option<mpsc::Sender<Resolution>>,
    ) -> Result<Self, DirectoryError> {
        let node = node_peer_id(addr)?;
        // A few quick tries: a node that has just started, or a moment's
        // loss. (A listening port another socket holds is the
        // network's to get round: it dials again from a new port.)
        let mut pause = DIAL_RETRY_PAUSE;
        for attempt in 1.. {
            match network.dial(node, vec![addr.clone()]).await {
                Ok(()) => break,
                Err(e) if attempt >= DIAL_ATTEMPTS => return Err(DirectoryError::Unreachable(e)),
                Err(e) => {
                    tracing::debug!("dialling the rendezvous node failed ({e}); trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        let stream = network
            .control()
            .open_stream(node, directory::PROTOCOL)
            .await
            .map_err(|e| DirectoryError::Session(e.to_string()))?;
        Ok(Self::over_stream(
            node,
            stream,
            pushes,
            disconnected(network, node),
        ))
    }

    /// Runs a session over a directory stream already open to `node`
    /// (a libp2p stream, or any byte stream that negotiated
    /// [`directory::PROTOCOL`]). `gone` resolves when the connection under
    /// it is lost: a stream on a connection closed locally never sees
    /// end-of-file.
    pub fn over_stream(
        node: PeerId,
        stream: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
        pushes: Option<mpsc::Sender<Resolution>>,
        gone: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        let (requests, request_rx) = mpsc::channel(64);
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(
            SessionTask {
                pending: HashMap::new(),
                next_id: 1,
                pushes,
            }
            .run(stream, request_rx, gone, closed_tx),
        );
        Self {
            node,
            requests,
            closed,
        }
    }

    /// The node's peer id.
    pub fn node(&self) -> PeerId {
        self.node
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when the session ends (connection lost, node stopped).
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Ends the session (the node marks what it registered offline) and
    /// waits briefly for the node to close its side.
    pub async fn close(&self) {
        if self.requests.send(Call::Close).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.closed()).await;
        }
    }

    /// Sends one request and waits for its answer. A `rate_limited`
    /// answer is retried after a pause, a few times: the node's budget
    /// refills within a second.
    async fn call(&self, op: Op) -> Result<Reply, DirectoryError> {
        let mut attempt = 0;
        loop {
            match self.call_once(op.clone()).await {
                Err(DirectoryError::Refused {
                    code: ErrorCode::RateLimited,
                    ..
                }) if attempt < RATE_LIMIT_RETRIES => {
                    attempt += 1;
                    debug!(attempt, "the node says too many requests; waiting");
                    tokio::time::sleep(RATE_LIMIT_PAUSE * attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, op: Op) -> Result<Reply, DirectoryError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.requests
            .send(Call::Request(op, reply_tx))
            .await
            .map_err(|_| DirectoryError::Closed)?;
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, reply_rx)
            .await
            .map_err(|_| DirectoryError::Timeout(REQUEST_TIMEOUT))?
            .map_err(|_| DirectoryError::Closed)?;
        match reply {
            Reply::Error { code, message } => Err(DirectoryError::Refused { code, message }),
            reply => Ok(reply),
        }
    }

    /// Claims or renews a name with a signed record. `visible_to` lists the
    /// peers that may still dial us while the record says invisible.
    pub async fn register(
        &self,
        record: SignedRecord,
        visible_to: Vec<PeerId>,
    ) -> Result<Registered, DirectoryError> {
        match self.call(Op::Register { record, visible_to }).await? {
            Reply::Registered {
                name,
                new_claim,
                expires_at,
                certificate,
            } => Ok(Registered {
                name,
                new_claim,
                expires_at,
                certificate,
            }),
            _ => Err(DirectoryError::Unexpected),
        }
    }

    /// Looks a name up (not yet verified: see [`Resolution::verified_record`]).
    pub async fn resolve(&self, name: &str) -> Result<Resolution, DirectoryError> {
        self.resolve_as(name, false).await
    }

    /// Looks up who owns the name an inbound message came under (see
    /// [`Op::Resolve`]'s `sender_check`): the node charges it to a budget
    /// of its own, apart from this client's own requests.
    pub async fn resolve_sender(&self, name: &str) -> Result<Resolution, DirectoryError> {
        self.resolve_as(name, true).await
    }

    async fn resolve_as(
        &self,
        name: &str,
        sender_check: bool,
    ) -> Result<Resolution, DirectoryError> {
        match self
            .call(Op::Resolve {
                name: name.to_owned(),
                sender_check,
            })
            .await?
        {
            Reply::Resolved(resolution)
                if resolution.name.as_str() == name.to_ascii_lowercase() =>
            {
                Ok(resolution)
            }
            _ => Err(DirectoryError::Unexpected),
        }
    }

    /// The names a peer owns.
    pub async fn resolve_peer(&self, peer_id: PeerId) -> Result<Vec<ScreenName>, DirectoryError> {
        match self.call(Op::ResolvePeer { peer_id }).await? {
            Reply::Names { peer_id: p, names } if p == peer_id => Ok(names),
            _ => Err(DirectoryError::Unexpected),
        }
    }

    /// Asks the node to push presence changes of `names`.
    pub async fn watch(&self, names: Vec<String>) -> Result<u32, DirectoryError> {
        match self.call(Op::Watch { names }).await? {
            Reply::Watching { watched } => Ok(watched),
            _ => Err(DirectoryError::Unexpected),
        }
    }

    /// Stops presence pushes of `names`.
    pub async fn unwatch(&self, names: Vec<String>) -> Result<u32, DirectoryError> {
        match self.call(Op::Unwatch { names }).await? {
            Reply::Unwatched { watched } => Ok(watched),
            _ => Err(DirectoryError::Unexpected),
        }
    }

    /// Gives a name up.
    pub async fn release(&self, name: &str) -> Result<ScreenName, DirectoryError> {
        match self
            .call(Op::Release {
                name: name.to_owned(),
            })
            .await?
        {
            Reply::Released { name } => Ok(name),
            _ => Err(DirectoryError::Unexpected),
        }
    }
}

/// The task behind a [`DirectorySession`]: one owner for the stream, so
/// that nothing is written after a failed read, and for the requests
/// waiting for their answers.
struct SessionTask {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    next_id: u64,
    pushes: Option<mpsc::Sender<Resolution>>,
}

impl SessionTask {
    async fn run(
        mut self,
        stream: impl AsyncRead + AsyncWrite + Send + Unpin,
        mut calls: mpsc::Receiver<Call>,
        gone: impl std::future::Future<Output = ()>,
        closed: watch::Sender<bool>,
    ) {
        let (reader, mut writer) = stream.split();
        let frames = codec::frames::<_, Response>(reader, directory::MAX_FRAME);
        tokio::pin!(frames, gone);
        // Once we closed our side, answers and pushes still in flight are
        // read until the node closes its side too.
        let mut closing = false;
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(Ok(response)) => self.on_response(response).await,
                    Some(Err(e)) => {
                        debug!("directory session ended: {e}");
                        break;
                    }
                    None => break,
                },
                call = calls.recv(), if !closing => match call {
                    Some(Call::Request(op, reply)) => {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.pending.insert(id, reply);
                        let request = Request { id, op };
                        let written = tokio::time::timeout(
                            REQUEST_TIMEOUT,
                            codec::write_frame(&mut writer, &request, directory::MAX_FRAME),
                        )
                        .await;
                        if !matches!(written, Ok(Ok(()))) {
                            debug!("directory session write failed or stalled");
                            break;
                        }
                    }
                    // Closing our side tells the node the session is over.
                    Some(Call::Close) | None => {
                        closing = true;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            futures::AsyncWriteExt::close(&mut writer),
                        )
                        .await;
                    }
                },
                () = &mut gone => {
                    debug!("the connection to the rendezvous node closed");
                    break;
                }
            }
        }
        // Dropping the senders fails every request still waiting.
        self.pending.clear();
        let _ = closed.send(true);
    }

    async fn on_response(&mut self, response: Response) {
        match response {
            Response {
                id: directory::PUSH_ID,
                reply: Reply::Presence(resolution),
            } => {
                if let Some(pushes) = &self.pushes
                    && pushes.send(resolution).await.is_err()
                {
                    debug!("presence push dropped: nobody listens");
                }
            }
            response => {
                if let Some(reply) = self.pending.remove(&response.id) {
                    let _ = reply.send(response.reply);
                } else if let Reply::Error { message, .. } = response.reply {
                    debug!("rendezvous node closed the session: {message}");
                }
            }
        }
    }
}

/// Resolves when the last connection to `peer` closes.
pub(crate) fn disconnected(
    network: &Network,
    peer: PeerId,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut events = network.events();
    async move {
        loop {
            match events.recv().await {
                Ok(NetworkEvent::Disconnected { peer: p }) if p == peer => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }
}
