//! The direct message protocol between two clients.
//!
//! The sender opens one long-lived stream to a peer and writes
//! [`ChatFrame::Message`] frames on it, without waiting; the receiver answers
//! each with [`ChatFrame::Ack`] once it has accepted the message, or
//! [`ChatFrame::Reject`]. Acknowledgements carry the message id, so the
//! sender matches them without relying on order.

use std::fmt;

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::name::ScreenName;
use crate::signed::Signed;

/// Protocol id of a chat stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/messenger/chat/1");

/// Longest message text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 64 * 1024;

/// Largest frame: a maximal message plus its envelope.
pub const MAX_FRAME: usize = MAX_TEXT + 1024;

/// A 128-bit random message id; shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // Fall back to time and address entropy rather than fail a send.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            bytes = (nanos ^ (&bytes as *const _ as u128)).to_be_bytes();
        }
        Self(bytes)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let array: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
        Ok(Self(array))
    }
}

/// What the sender signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id; the receiver drops repeats.
    pub id: MessageId,
    /// The sender's screen name; must resolve to the sending peer.
    pub from: ScreenName,
    /// The recipient's screen name.
    pub to: ScreenName,
    /// When it was written (ms since epoch), per the sender's clock.
    pub sent_at: u64,
    /// UTF-8 text, 1 to [`MAX_TEXT`] bytes.
    pub text: String,
}

/// Why a text cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing to send.
    #[error("the message is empty; a message has 1 to {MAX_TEXT} bytes of text")]
    Empty,
    /// Over the limit.
    #[error("the message is {0} bytes long; the limit is {MAX_TEXT} bytes (64 KiB)")]
    TooLong(usize),
}

/// Checks a message text against the limits.
pub fn check_text(text: &str) -> Result<(), TextError> {
    match text.len() {
        0 => Err(TextError::Empty),
        n if n > MAX_TEXT => Err(TextError::TooLong(n)),
        _ => Ok(()),
    }
}

/// One frame on a chat stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatFrame {
    /// Sender to receiver: a [`Message`] signed under the message context.
    Message(Signed),
    /// Receiver to sender: the message with this id is accepted (and was
    /// possibly already accepted before: acknowledgements are idempotent).
    Ack {
        /// The message acknowledged.
        id: MessageId,
    },
    /// Receiver to sender: the message will not be accepted, ever.
    Reject {
        /// The message refused.
        id: MessageId,
        /// Why, as a stable code.
        code: RejectCode,
    },
}

/// Why a receiver refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The signature does not verify under the connection's peer key.
    #[error("the signature does not match the sender's key")]
    BadSignature,
    /// The sender name does not resolve to the connection's peer.
    #[error("the sender name is not owned by the sending key")]
    SenderMismatch,
    /// The recipient name is not the receiver's.
    #[error("the recipient name is not the receiver's")]
    WrongRecipient,
    /// The text breaks the limits.
    #[error("the text is empty or too long")]
    BadText,
    /// Not delivered, for a reason the receiver does not disclose.
    #[error("not delivered")]
    NotDelivered,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn text_limits() {
        assert_eq!(check_text(""), Err(TextError::Empty));
        assert!(check_text("hi").is_ok());
        assert!(check_text(&"x".repeat(MAX_TEXT)).is_ok());
        assert_eq!(
            check_text(&"x".repeat(MAX_TEXT + 1)),
            Err(TextError::TooLong(MAX_TEXT + 1))
        );
    }

    #[test]
    fn a_maximal_message_fits_in_a_frame() {
        let id = crate::Identity::from_seed([5; 32]);
        let msg = Message {
            id: MessageId::random(),
            from: ScreenName::parse(&"a".repeat(32)).unwrap(),
            to: ScreenName::parse(&"b".repeat(32)).unwrap(),
            sent_at: u64::MAX,
            text: "\u{10FFFF}".repeat(MAX_TEXT / 4),
        };
        let frame = ChatFrame::Message(Signed::sign(&id, crate::signed::MESSAGE_CONTEXT, &msg));
        assert!(codec::encode_frame(&frame, MAX_FRAME).is_ok());
    }

    #[test]
    fn message_ids_round_trip_as_16_bytes() {
        let id = MessageId::random();
        let bytes = codec::to_cbor(&id);
        assert_eq!(bytes.len(), 17, "CBOR byte string header + 16 bytes");
        assert_eq!(codec::from_cbor::<MessageId>(&bytes).unwrap(), id);
        assert!(
            codec::from_cbor::<MessageId>(&codec::to_cbor(&serde_bytes::ByteBuf::from(vec![
                1u8;
                15
            ])))
            .is_err()
        );
    }
}
