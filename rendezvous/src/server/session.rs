//! One directory session: its frames read and answered in order, each
//! request charged to the peer's budget and handled against the registry.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream};
use messenger_proto::accept;
use messenger_proto::codec::{self, CodecError};
use messenger_proto::directory::{self, ErrorCode, Op, Reply, Request, Response};
use messenger_proto::identity::PeerKey;
use messenger_proto::time::now_ms;
use tokio::sync::mpsc;
use tracing::{debug, instrument, warn};

use crate::certify::Certifier;
use crate::limits::{PeerBudget, RequestLimiter};
use crate::metrics::NodeMetrics;
use crate::registry::{Refusal, Registry, SessionId, Signer};

/// How long a finished session may take to flush its last frames.
pub(super) const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every directory session shares.
#[derive(Debug)]
pub(super) struct SessionEnv {
    pub(super) registry: Arc<Registry>,
    pub(super) requests: Arc<RequestLimiter>,
    pub(super) max_frame: usize,
    pub(super) certifier: Certifier,
    pub(super) metrics: Arc<NodeMetrics>,
}

/// Serves one directory session until the client closes it or the
/// connection dies; then whatever it registered goes offline.
///
/// Requests are handled one after another; answers and presence pushes
/// share the stream, written by one writer task.
#[instrument(skip(stream, gone, env), fields(%peer))]
pub(super) async fn serve_session(
    peer: PeerId,
    stream: Stream,
    gone: accept::ConnectionGone,
    env: Arc<SessionEnv>,
    session: SessionId,
) {
    debug!("directory session opened");
    let _open = env.metrics.session_opened();
    let registry = &env.registry;
    let budget = env.requests.session(peer);
    // Decoded once: every registration of the session is checked with it.
    let key = PeerKey::of(peer);
    let (mut reader, writer) = stream.split();
    let pushes = registry.open_session(session);
    // Boxed: a tokio channel allocates slots in blocks of 32, and a block of
    // unboxed responses would cost every session kilobytes while idle.
    let (answers, answer_rx) = mpsc::channel::<Box<Response>>(4);
    let writing = tokio::spawn(write_session(writer, answer_rx, pushes, env.clone(), peer));
    tokio::pin!(gone);
    loop {
        // A stream whose connection the node closed (a silent peer's) is
        // never woken again: its connection's end ends the session.
        let frame = tokio::select! {
            frame = codec::read_frame(&mut reader, env.max_frame) => frame,
            () = &mut gone => {
                debug!("the session's connection closed");
                break;
            }
        };
        let request: Request = match frame {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(CodecError::Io(e)) => {
                debug!("directory session ended: {e}");
                break;
            }
            Err(e) => {
                warn!("closing directory session: {e}");
                let reply = Reply::error(ErrorCode::Malformed, e.to_string());
                env.metrics.answered("unreadable", &reply);
                let _ = answers
                    .send(Box::new(Response {
                        id: directory::PUSH_ID,
                        reply,
                    }))
                    .await;
                break;
            }
        };
        let op = request.op.kind();
        // Look-ups a client makes to check who sent it a message are
        // charged apart: what strangers send a user must not use up the
        // user's own requests (docs/protocol.md §5.3).
        let sender_check = matches!(
            request.op,
            Op::Resolve {
                sender_check: true,
                ..
            }
        );
        let spent = match &request.op {
            _ if sender_check => budget.spend_sender_check(),
            // A watch costs by its names: one request, plus one for every
            // WATCH_NAMES_PER_REQUEST names (256, the most one request
            // carries: 17 of a burst of 100; a session's 1,024: 68), so
            // that names watched cost their sessions, not the node.
            Op::Watch { names } => budget.spend_n(watch_cost(names.len())),
            _ => budget.spend(),
        };
        let reply = match spent {
            Ok(()) => {
                let signer = Signer {
                    peer,
                    key: key.as_ref(),
                };
                // Boxed: the future of a request (a registration holds
                // its record and claim) would otherwise be part of every
                // idle session's state.
                Box::pin(handle(signer, session, request.op, &env)).await
            }
            Err(wait) => rate_limited(&budget, wait, sender_check),
        };
        env.metrics.answered(op, &reply);
        if answers
            .send(Box::new(Response {
                id: request.id,
                reply,
            }))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(answers);
    // What it registered goes offline now, not after our last frames are
    // flushed: on a dead connection that could take long.
    let ended = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.session_ended(session, now_ms()))
    };
    drop(budget);
    let _ = ended.await;
    let mut writing = writing;
    if tokio::time::timeout(SESSION_CLOSE_TIMEOUT, &mut writing)
        .await
        .is_err()
    {
        debug!("the session's last frames could not be written in time");
        writing.abort();
    }
    debug!("directory session closed");
}

/// Writes answers as they come and pushes presence changes of watched
/// names, until the reader side is done.
pub(super) async fn write_session(
    mut writer: futures::io::WriteHalf<Stream>,
    mut answers: mpsc::Receiver<Box<Response>>,
    pushes: Arc<crate::registry::PushQueue>,
    env: Arc<SessionEnv>,
    viewer: PeerId,
) {
    let registry = &env.registry;
    loop {
        let (frames, pushed): (Vec<Response>, bool) = tokio::select! {
            answer = answers.recv() => match answer {
                Some(answer) => (vec![*answer], false),
                None => break,
            },
            _ = pushes.changed() => (pushes
                .take()
                .into_iter()
                .filter_map(|name| match registry.view(&name, viewer, now_ms()) {
                    Ok(Some(resolution)) => Some(Response { id: directory::PUSH_ID, reply: Reply::Presence(resolution) }),
                    Ok(None) => None,
                    Err(e) => {
                        warn!(%name, "cannot read presence to push: {e}");
                        None
                    }
                })
                .collect::<Vec<_>>(), true),
        };
        let pushed = if pushed { frames.len() } else { 0 };
        for frame in frames {
            if let Err(e) = codec::write_frame(&mut writer, &frame, directory::MAX_FRAME).await {
                debug!("directory session ended while writing: {e}");
                return;
            }
        }
        env.metrics.pushed(pushed);
    }
    let _ = futures::AsyncWriteExt::close(&mut writer).await;
}

/// Names a watch request carries for the price of one request.
pub(super) const WATCH_NAMES_PER_REQUEST: usize = 16;

/// What a watch of `names` names costs of its peer's request budget.
pub(super) fn watch_cost(names: usize) -> u32 {
    u32::try_from(1 + names / WATCH_NAMES_PER_REQUEST).unwrap_or(u32::MAX)
}

/// The answer to a request over the peer's budget.
pub(super) fn rate_limited(budget: &PeerBudget, wait: Duration, sender_check: bool) -> Reply {
    let (rate, what) = if sender_check {
        (budget.sender_check_rate(), "sender checks")
    } else {
        (budget.rate(), "requests")
    };
    warn!(sender_check, "request refused: over the rate limit");
    Reply::error(
        ErrorCode::RateLimited,
        format!(
            "too many {what}: a peer may make {} per second, in bursts of up to {}; retry in {} ms",
            rate.per_second,
            rate.burst,
            wait.as_millis().min(u128::from(u32::MAX))
        ),
    )
}

pub(super) async fn handle(
    signer: Signer<'_>,
    session: SessionId,
    op: Op,
    env: &SessionEnv,
) -> Reply {
    let registry = &env.registry;
    let peer = signer.peer;
    let answer = |result: Result<Reply, Refusal>| {
        result.unwrap_or_else(|refusal| Reply::error(refusal.code(), refusal.to_string()))
    };
    // Off the async workers: what may block on disk (a release) or on the
    // shared store (a cluster's look-ups).
    let blocking = |work: Box<dyn FnOnce() -> Result<Reply, Refusal> + Send>| async {
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or(Err(Refusal::StoreFailed))
    };
    match op {
        // A claim is committed by the store's own writer (or database)
        // while this task waits on its answer, holding no thread. The
        // certificate is the session's to add: the registry knows nothing
        // of the node's signing key.
        Op::Register { record, visible_to } => answer(
            registry
                .register(signer, session, record, visible_to, now_ms())
                .await
                .map(|registered| Reply::Registered {
                    certificate: Some(env.certifier.issue(&registered.name, peer, now_ms())),
                    name: registered.name,
                    new_claim: registered.new_claim,
                    expires_at: registered.expires_at,
                }),
        ),
        Op::Release { name } => {
            let registry = registry.clone();
            answer(
                blocking(Box::new(move || {
                    registry
                        .release(peer, &name)
                        .map(|name| Reply::Released { name })
                }))
                .await,
            )
        }
        Op::Resolve { name, .. } if registry.is_clustered() => {
            let registry = registry.clone();
            answer(
                blocking(Box::new(move || {
                    registry.resolve(&name, peer, now_ms()).map(Reply::Resolved)
                }))
                .await,
            )
        }
        Op::ResolvePeer { peer_id } if registry.is_clustered() => {
            let registry = registry.clone();
            answer(
                blocking(Box::new(move || {
                    registry
                        .resolve_peer(peer_id, peer, now_ms())
                        .map(|names| Reply::Names { peer_id, names })
                }))
                .await,
            )
        }
        Op::Resolve { name, .. } => {
            answer(registry.resolve(&name, peer, now_ms()).map(Reply::Resolved))
        }
        Op::ResolvePeer { peer_id } => answer(
            registry
                .resolve_peer(peer_id, peer, now_ms())
                .map(|names| Reply::Names { peer_id, names }),
        ),
        Op::Watch { names } => answer(
            registry
                .watch(session, &names)
                .map(|watched| Reply::Watching { watched }),
        ),
        Op::Unwatch { names } => answer(
            registry
                .unwatch(session, &names)
                .map(|watched| Reply::Unwatched { watched }),
        ),
    }
}
