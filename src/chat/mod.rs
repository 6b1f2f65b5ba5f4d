//! Direct messages: the sending side ([`link::ChatLink`]) and the receiving
//! side ([`inbox::Inbox`]) of the chat protocol.
//!
//! A sender keeps one long-lived stream per peer and pipelines messages on
//! it, after its name certificate; acknowledgements come back on the same
//! stream, matched by id. A receiver accepts a message only after checking
//! the signature against the connection's key and that the sender's name
//! belongs to that key: from the sender's certificate, or else by asking
//! the rendezvous node.

pub mod inbox;
pub mod link;

use std::time::Duration;

use messenger_proto::chat::RejectCode;
use messenger_proto::rate::Rate;

pub use inbox::{Inbox, MessageSink};
pub use link::{CertificateWatch, ChatLink};

#[cfg(test)]
mod tests;

/// How long a sender waits for an acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a recipient waits for the node to say who owns a sender's name
/// before it resets the stream: less than the sender's [`ACK_TIMEOUT`].
pub const OWNER_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
const _: () = assert!(OWNER_CHECK_TIMEOUT.as_secs() < ACK_TIMEOUT.as_secs());

/// How fast one peer may send us messages, unless the client says
/// otherwise: far above any conversation, far below a flood. A peer over
/// it is slowed down (its messages wait unread), not refused: nothing is
/// lost.
pub const DEFAULT_MESSAGE_RATE: Rate = Rate::new(200.0, 1_000);

/// Why a message was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
