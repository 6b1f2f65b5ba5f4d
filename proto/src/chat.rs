//! The direct message protocol between two clients.
//!
//! The sender opens one long-lived stream to a peer, sends its name
//! certificate ([`ChatFrame::Certificate`]) and then writes
//! [`ChatFrame::Message`] frames, without waiting; the receiver answers
//! each with [`ChatFrame::Ack`] once it has accepted the message, or
//! [`ChatFrame::Reject`]. Acknowledgements carry the message id, so the
//! sender matches them without relying on order. A frame of a kind the
//! reader does not know decodes as [`ChatFrame::Unknown`] and is skipped,
//! so that later versions can add frames.

use std::fmt;

use libp2p::StreamProtocol;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::certificate::SignedCertificate;
use crate::file::{FileOffer, check_offer};
use crate::name::ScreenName;
use crate::signed::{MESSAGE_CONTEXT, Signed};
use crate::tunnel::{Invitation, check_invitation};

pub use crate::id::MessageId;

/// Protocol id of a chat stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/messenger/chat/1");

/// Longest message text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 64 * 1024;

/// Largest frame: a maximal message plus its envelope.
pub const MAX_FRAME: usize = MAX_TEXT + 1024;

/// How far a message's `sent_at` may lie ahead of the recipient's clock:
/// as far as the registration rules let a client's clock be off.
pub const MAX_SENT_AHEAD_MS: u64 = 24 * 60 * 60 * 1000 + crate::CLOCK_SKEW_MS;

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
    /// A file offered with it (its text describes it), fetched over the
    /// file protocol once accepted. Absent from a plain message's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileOffer>,
    /// An invitation to connect to a port of the sender's (or its
    /// withdrawal); its text describes it. Absent from other messages'
    /// payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<Invitation>,
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

/// Whether a message dated `sent_at` is acceptable at `now_ms`: not more
/// than [`MAX_SENT_AHEAD_MS`] in the future. (Any past is fine: messages
/// wait in outboxes for days.)
pub fn sent_at_acceptable(sent_at: u64, now_ms: u64) -> bool {
    sent_at <= now_ms.saturating_add(MAX_SENT_AHEAD_MS)
}

/// Just the id of a message whose payload is not a valid [`Message`], so
/// that it can be refused by id.
#[derive(Debug, Deserialize)]
struct IdOnly {
    id: MessageId,
}

/// A message refused by [`open_message`]: the code to answer with, and the
/// id to answer it for, read from a payload nobody vouches for; without
/// one, the recipient resets the stream instead of answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The message's id, as far as it could be read.
    pub id: Option<MessageId>,
    /// Why.
    pub code: RejectCode,
}

/// The recipient's checks that need nothing but the frame, in the order of
/// docs/protocol.md §6.3 (1 to 5): the signature under the sender's key
/// (the connection's), the payload's form, the recipient, the text, the
/// date. Who owns `from`, repeats, blocks and pins come after.
pub fn open_message(
    signed: &Signed,
    sender: &ed25519_dalek::VerifyingKey,
    me: &ScreenName,
    now_ms: u64,
) -> Result<Message, Refused> {
    if signed.verify(MESSAGE_CONTEXT, sender).is_err() {
        return Err(Refused {
            id: signed.decode_unverified::<IdOnly>().ok().map(|m| m.id),
            code: RejectCode::BadSignature,
        });
    }
    check_message(signed, me, now_ms)
}

/// Checks 2 to 5 of docs/protocol.md §6.3, without the signature: for a
/// recipient that checks the signature after acknowledging (§6.3), which
/// it may do because the connection itself is authenticated by the same
/// key. Until the signature is checked the message must not be shown,
/// forwarded or exported.
pub fn check_message(signed: &Signed, me: &ScreenName, now_ms: u64) -> Result<Message, Refused> {
    let message: Message = signed.decode_unverified().map_err(|_| Refused {
        id: signed.decode_unverified::<IdOnly>().ok().map(|m| m.id),
        code: RejectCode::Malformed,
    })?;
    let code = if &message.to != me {
        RejectCode::WrongRecipient
    } else if check_text(&message.text).is_err() {
        RejectCode::BadText
    } else if !sent_at_acceptable(message.sent_at, now_ms) {
        RejectCode::BadTime
    } else if message
        .file
        .as_ref()
        .is_some_and(|f| check_offer(f).is_err())
        || message
            .invite
            .as_ref()
            .is_some_and(|i| check_invitation(i).is_err())
    {
        RejectCode::Malformed
    } else {
        return Ok(message);
    };
    Err(Refused {
        id: Some(message.id),
        code,
    })
}

/// One frame on a chat stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatFrame {
    /// Sender to receiver: the node's certificate for the sender's name,
    /// first on a stream and again whenever the sender gets a new one.
    Certificate(SignedCertificate),
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
    /// Sender to receiver, ephemeral: the sender is typing (`active`),
    /// or stopped before sending (its input is empty again). Neither
    /// stored nor acknowledged; repeated every few seconds while typing
    /// goes on (docs/protocol.md §6.5).
    Typing {
        /// Typing now, or stopped.
        active: bool,
    },
    /// Sender to receiver, ephemeral: a nudge, which makes the
    /// recipient's window shake or ring. Neither stored nor acknowledged.
    Nudge {},
    /// A kind of frame this version does not know (read, never written):
    /// skipped.
    #[serde(skip_serializing)]
    Unknown,
}

#[derive(Deserialize)]
struct TypingBody {
    active: bool,
}

#[derive(Deserialize)]
struct AckBody {
    id: MessageId,
}

#[derive(Deserialize)]
struct RejectBody {
    id: MessageId,
    code: RejectCode,
}

/// Externally tagged like the derived form, but an unknown kind (with
/// whatever data it carries) becomes [`ChatFrame::Unknown`] instead of an
/// error.
impl<'de> Deserialize<'de> for ChatFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FrameVisitor;

        impl<'de> Visitor<'de> for FrameVisitor {
            type Value = ChatFrame;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chat frame: a map with one entry, from its kind to its data")
            }

            fn visit_str<E: de::Error>(self, _kind: &str) -> Result<ChatFrame, E> {
                Ok(ChatFrame::Unknown)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatFrame, A::Error> {
                let kind: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("an empty map is not a chat frame"))?;
                let frame = match kind.as_str() {
                    "certificate" => ChatFrame::Certificate(map.next_value()?),
                    "message" => ChatFrame::Message(map.next_value()?),
                    "ack" => {
                        let AckBody { id } = map.next_value()?;
                        ChatFrame::Ack { id }
                    }
                    "reject" => {
                        let RejectBody { id, code } = map.next_value()?;
                        ChatFrame::Reject { id, code }
                    }
                    "typing" => {
                        let TypingBody { active } = map.next_value()?;
                        ChatFrame::Typing { active }
                    }
                    "nudge" => {
                        // Its body is a map; what is in it is for later.
                        map.next_value::<IgnoredAny>()?;
                        ChatFrame::Nudge {}
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        ChatFrame::Unknown
                    }
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "a chat frame is a map with exactly one entry",
                    ));
                }
                Ok(frame)
            }
        }

        deserializer.deserialize_any(FrameVisitor)
    }
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
    /// The payload is signed but is not a valid message (a missing field,
    /// a name not in normal form).
    #[error("the message is not in the protocol's form")]
    Malformed,
    /// `sent_at` lies too far in the recipient's future.
    #[error("the message is dated more than a day ahead of the recipient's clock")]
    BadTime,
    /// The sender is not accepted by the recipient yet (not a contact,
    /// nobody it wrote to), and the recipient keeps no more from such
    /// senders for now: from this one, from all of them together, or its
    /// disk is nearly full. Nothing was stored; once the recipient accepts
    /// the sender (adds it, or writes to it), its messages are taken in.
    #[error("the recipient takes no more messages from people it has not accepted yet")]
    RequestsFull,
    /// A code this version does not know (read, never written).
    #[serde(other)]
    #[error("refused (a reason this version does not know)")]
    Unknown,
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
            file: Some(crate::file::FileOffer {
                name: "\u{10FFFF}".repeat(crate::file::MAX_NAME / 4),
                size: u64::MAX,
                hash: crate::file::ContentHash([0xff; 32]),
            }),
            invite: Some(Invitation {
                port: u16::MAX,
                withdrawn: true,
            }),
        };
        let frame = ChatFrame::Message(Signed::sign(&id, crate::signed::MESSAGE_CONTEXT, &msg));
        assert!(codec::encode_frame(&frame, MAX_FRAME).is_ok());
    }

    #[test]
    fn unknown_frames_and_codes_are_read_as_unknown_and_known_ones_round_trip() {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Later {
            Wink { eye: bool, extra: Vec<u32> },
            Reject { id: MessageId, code: &'static str },
        }
        let wink = codec::to_cbor(&Later::Wink {
            eye: true,
            extra: vec![1, 2, 3],
        });
        assert_eq!(
            codec::from_cbor::<ChatFrame>(&wink).unwrap(),
            ChatFrame::Unknown
        );
        let id = MessageId([7; 16]);
        let later_code = codec::to_cbor(&Later::Reject {
            id,
            code: "too_late",
        });
        assert_eq!(
            codec::from_cbor::<ChatFrame>(&later_code).unwrap(),
            ChatFrame::Reject {
                id,
                code: RejectCode::Unknown
            }
        );
        for frame in [
            ChatFrame::Ack { id },
            ChatFrame::Reject {
                id,
                code: RejectCode::BadTime,
            },
            ChatFrame::Typing { active: true },
            ChatFrame::Typing { active: false },
            ChatFrame::Nudge {},
        ] {
            assert_eq!(
                codec::from_cbor::<ChatFrame>(&codec::to_cbor(&frame)).unwrap(),
                frame
            );
        }
        // Two entries is not a frame.
        let mut two = std::collections::BTreeMap::new();
        two.insert("ack", AckOut { id });
        two.insert("zzz", AckOut { id });
        assert!(codec::from_cbor::<ChatFrame>(&codec::to_cbor(&two)).is_err());
    }

    #[test]
    fn ephemeral_frames_are_encoded_as_documented() {
        // docs/protocol.md §6.5, which shows them.
        let typing = codec::to_cbor(&ChatFrame::Typing { active: true });
        assert_eq!(hex::encode(&typing), "a166747970696e67a166616374697665f5");
        assert_eq!(
            hex::encode(codec::to_cbor(&ChatFrame::Nudge {})),
            "a1656e75646765a0"
        );
        let doc = include_str!("../../docs/protocol.md");
        for encoded in ["a166747970696e67a166616374697665f5", "a1656e75646765a0"] {
            assert!(
                doc.contains(encoded),
                "docs/protocol.md §6.5 shows {encoded}"
            );
        }
        // A typing body that is not `{active: bool}` is malformed.
        for body in [
            serde_json::json!(5),
            serde_json::json!({"active": "yes"}),
            serde_json::json!({}),
        ] {
            let frame = codec::to_cbor(&serde_json::json!({ "typing": body }));
            assert!(
                codec::from_cbor::<ChatFrame>(&frame).is_err(),
                "typing {body} is malformed"
            );
        }
        // A nudge with something in its body is still a nudge.
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Later {
            Nudge { strength: u8 },
        }
        assert_eq!(
            codec::from_cbor::<ChatFrame>(&codec::to_cbor(&Later::Nudge { strength: 3 })).unwrap(),
            ChatFrame::Nudge {}
        );
    }

    #[derive(Serialize)]
    struct AckOut {
        id: MessageId,
    }

    #[test]
    fn message_ids_are_hex_in_json() {
        let id = MessageId([0xab; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(16)));
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<MessageId>("\"abc\"").is_err());
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
