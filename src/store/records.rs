//! What the store keeps: contacts, and messages with their state (a
//! message's record apart from its body, kept in pieces).

use libp2p::PeerId;
use messenger_proto::chat::Message;
use messenger_proto::name::ScreenName;
use messenger_proto::signed::Signed;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{Raw, RequestRefusal, decode};

/// A contact: a name whose key we pinned when we added it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact's name.
    pub name: ScreenName,
    /// The key the name had when added (or last trusted).
    pub pinned: PeerId,
    /// When added (ms since epoch).
    pub added_at: u64,
    /// Another key the node reported for the name, until the user trusts it.
    pub key_changed_to: Option<PeerId>,
    /// Files this contact offers are accepted without asking up to this
    /// size (bytes); `None`: always ask.
    #[serde(default)]
    pub auto_accept_below: Option<u64>,
}

/// Where a stored message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// I sent it.
    Out,
    /// I received it.
    In,
}

/// The state of a message in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Stored, waiting for the recipient to be reachable.
    Queued,
    /// Written to the recipient, not acknowledged yet.
    Sent,
    /// Acknowledged by the recipient.
    Delivered,
    /// Refused by the recipient; will not be retried.
    Failed,
    /// Received from the sender (and acknowledged).
    Received,
    /// Received and acknowledged, its signature not checked yet: never
    /// shown in this state (see [`Store::settle_incoming`]).
    Unverified,
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::Received => "received",
            MessageState::Unverified => "unverified",
        })
    }
}

/// A message in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Position in this home's history (grows in the order written/received).
    pub seq: u64,
    /// The message itself, as signed by its sender.
    pub message: Message,
    /// Mine or theirs.
    pub direction: Direction,
    /// Its state.
    pub state: MessageState,
    /// When the state last changed (ms since epoch).
    pub updated_at: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The key at the other end: the verified sender of a received
    /// message, the recipient that acknowledged a delivered one.
    #[serde(default)]
    pub peer_id: Option<PeerId>,
    /// A received message as its sender signed it (the payload bytes and
    /// the signature): what proves, later, who wrote it.
    #[serde(default)]
    pub signed: Option<Signed>,
}

impl StoredMessage {
    /// The other party of the conversation.
    pub fn peer(&self) -> &ScreenName {
        match self.direction {
            Direction::Out => &self.message.to,
            Direction::In => &self.message.from,
        }
    }
}

/// How a message's record is kept in the history table: what changes
/// (state, error, the key that answered) apart from its body, which is
/// kept once in [`BODIES`]. A record written before bodies were kept apart
/// carries its message (and its signed copy) itself, and is read as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Position in this home's history.
    pub seq: u64,
    /// Mine or theirs.
    pub direction: Direction,
    /// Its state.
    pub state: MessageState,
    /// When the state last changed (ms since epoch).
    pub updated_at: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The key at the other end.
    #[serde(default)]
    pub peer_id: Option<PeerId>,
    /// The sender's signature over the body (a received message).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub signature: Option<Vec<u8>>,
    /// The body's length in bytes, kept in [`BODIES`]; absent in a record
    /// that carries its message itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_len: Option<u32>,
    /// The message, in a record written before bodies were kept apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// Its signed copy, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
}

impl StoredRecord {
    /// The record of `stored`, whose body is kept apart (`body_len`).
    pub(super) fn of(stored: &StoredMessage, body_len: u32) -> Self {
        Self {
            seq: stored.seq,
            direction: stored.direction,
            state: stored.state,
            updated_at: stored.updated_at,
            error: stored.error.clone(),
            peer_id: stored.peer_id,
            signature: stored.signed.as_ref().map(|s| s.signature.clone()),
            body_len: Some(body_len),
            message: None,
            signed: None,
        }
    }

    /// The message again, from this record and its body (read with
    /// `body` if it is kept apart: `body(seq, len)`).
    pub(super) fn load(
        self,
        body: impl FnOnce(u64, u32) -> Result<Vec<u8>, Raw>,
    ) -> Result<StoredMessage, Raw> {
        let (message, signed) = match (self.body_len, self.message) {
            (None, Some(message)) => (message, self.signed),
            (Some(len), _) => {
                let body = body(self.seq, len)?;
                let message: Message = decode(&body)?;
                let signed = self.signature.map(|signature| Signed {
                    payload: body,
                    signature,
                });
                (message, signed)
            }
            (None, None) => {
                return Err(Raw::Decode(format!(
                    "message {} has neither a body nor a message",
                    self.seq
                )));
            }
        };
        Ok(StoredMessage {
            seq: self.seq,
            message,
            direction: self.direction,
            state: self.state,
            updated_at: self.updated_at,
            error: self.error,
            peer_id: self.peer_id,
            signed,
        })
    }
}

/// The body of message `seq`, `len` bytes long, from its pieces.
pub(super) fn read_body(
    bodies: &impl ReadableTable<(u64, u32), &'static [u8]>,
    seq: u64,
    len: u32,
) -> Result<Vec<u8>, Raw> {
    let mut body = Vec::with_capacity(len as usize);
    for piece in bodies.range((seq, 0)..=(seq, u32::MAX))? {
        body.extend_from_slice(piece?.1.value());
    }
    if body.len() != len as usize {
        return Err(Raw::Decode(format!(
            "the body of message {seq} has {} of its {len} bytes",
            body.len()
        )));
    }
    Ok(body)
}

/// What became of a received message in [`Store::receive`].
#[derive(Debug)]
pub enum Received {
    /// Kept (its signature to be checked); `request` when it counts as a
    /// message request.
    Kept {
        /// The message as stored.
        stored: Box<StoredMessage>,
        /// Whether its sender is not accepted yet.
        request: bool,
    },
    /// Kept before (the same id).
    Repeat,
    /// A request over the limits: nothing was stored.
    Refused(RequestRefusal),
}
