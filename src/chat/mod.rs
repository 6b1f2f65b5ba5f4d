//! Direct messages: the sending side ([`link::ChatLink`]) and the receiving
//! side ([`inbox::Inbox`]) of the chat protocol.
//!
//! A sender keeps one long-lived stream per peer and pipelines messages on
//! it, after its name certificate; acknowledgements come back on the same
//! stream, matched by id. A receiver accepts a message only after checking
//! the signature against the connection's key and that the sender's name
//! belongs to that key: from the sender's certificate, or else by asking
//! the rendezvous node ([`owners`]: answers kept for every sender, and
//! look-ups budgeted, so that strangers cannot spend the user's budget at
//! the node).
//!
//! Besides messages a stream carries ephemeral [`Signal`]s (typing, a
//! nudge): neither stored nor acknowledged, rate-limited by the receiver,
//! and accepted only under a name the stream's certificate vouches for.

pub mod inbox;
pub mod link;
pub mod owners;

use std::time::Duration;

use messenger_proto::chat::{ChatFrame, RejectCode};
use messenger_proto::rate::Rate;

pub use inbox::{Inbox, KeepError, MessageSink, TrustedIssuers};
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

/// How often one peer's typing signals are taken, at most (more are
/// ignored): a sender repeats one every [`TYPING_REPEAT`] while typing goes on.
pub const TYPING_RATE: Rate = Rate::new(1.0, 4);

/// How often one peer's nudges are taken, at most: one per 10 s.
pub const NUDGE_RATE: Rate = Rate::new(0.1, 1);

/// While typing goes on, a sender repeats its typing signal this often...
pub const TYPING_REPEAT: Duration = Duration::from_secs(3);

/// ...and a receiver shows it for this long after the last one.
pub const TYPING_SHOWN_FOR: Duration = Duration::from_secs(6);

/// An ephemeral signal on a chat stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The sender is typing (true), or stopped before sending (false).
    Typing(bool),
    /// A nudge.
    Nudge,
}

impl Signal {
    fn frame(self) -> ChatFrame {
        match self {
            Signal::Typing(active) => ChatFrame::Typing { active },
            Signal::Nudge => ChatFrame::Nudge {},
        }
    }
}

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
