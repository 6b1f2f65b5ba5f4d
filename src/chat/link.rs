//! The sending half of a chat stream to one peer.

use std::collections::HashMap;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use messenger_proto::certificate::SignedCertificate;
use messenger_proto::chat::{self, ChatFrame, MessageId};
use messenger_proto::codec;
use messenger_proto::signed::Signed;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ACK_TIMEOUT, DeliveryError, Signal};
use crate::network::Network;

type AckSender = oneshot::Sender<Result<(), DeliveryError>>;

/// A framed message and who waits for its acknowledgement, or an
/// ephemeral frame nobody waits for.
struct Outgoing {
    frame: Vec<u8>,
    ack: Option<(MessageId, AckSender)>,
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
    abort: CancellationToken,
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
        let abort = CancellationToken::new();
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
        self.abort.cancel();
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
            .send(Outgoing {
                frame,
                ack: Some((id, ack)),
            })
            .await
            .map_err(|_| DeliveryError::ConnectionLost)?;
        Ok(rx)
    }

    /// Sends an ephemeral frame (typing, a nudge), behind the messages
    /// already queued. Nothing waits for it: if the link is busy or closed
    /// it is dropped, which is what an ephemeral signal is for.
    pub fn signal(&self, signal: Signal) -> Result<(), DeliveryError> {
        let frame = codec::encode_frame(&signal.frame(), chat::MAX_FRAME)
            .map_err(|e| DeliveryError::Frame(e.to_string()))?;
        self.outgoing
            .try_send(Outgoing { frame, ack: None })
            .map_err(|_| DeliveryError::ConnectionLost)
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
        abort: CancellationToken,
        gone: impl std::future::Future<Output = ()>,
        closed: watch::Sender<bool>,
    ) {
        let (reader, mut writer) = stream.split();
        let answers = codec::frames::<_, ChatFrame>(reader, chat::MAX_FRAME);
        tokio::pin!(answers, gone);
        // Only a link given up cleanly closes its side: after a failed read
        // the stream must not be written to (or flushed) again.
        let mut clean = false;
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
                    let Some(first) = first else {
                        clean = true;
                        break;
                    };
                    if let Err(e) = self.write_batch(&mut writer, first, &mut submitted).await {
                        debug!("chat stream write failed: {e}");
                        break;
                    }
                }
                () = abort.cancelled() => break,
                () = &mut gone => break,
            }
        }
        // Closed first, so that whoever learns of a failure below finds
        // the link closed; nothing written can be acknowledged now.
        let _ = closed.send(true);
        for (_, waiter) in self.waiting.drain() {
            let _ = waiter.send(Err(DeliveryError::ConnectionLost));
        }
        if clean {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
        }
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
            ChatFrame::Message(_)
            | ChatFrame::Certificate(_)
            | ChatFrame::Typing { .. }
            | ChatFrame::Nudge {} => {
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
            if let Some((id, ack)) = out.ack {
                self.waiting.insert(id, ack);
            }
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
