//! The directory protocol between a client and the rendezvous node.
//!
//! A client opens one long-lived stream per session. Requests carry an id
//! chosen by the client; the node answers each with a response carrying the
//! same id, in order. A client that has registered stays registered (and
//! online) while its session stream stays open.

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::certificate::SignedCertificate;
use crate::name::ScreenName;
use crate::presence::Presence;
use crate::record::{RecordError, Registration, SignedRecord};
use crate::signed::SignedError;

/// Protocol id of a directory session.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/messenger/directory/1");

/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 16 * 1024;

/// Longest lifetime a record may claim: a client renews well before.
pub const MAX_RECORD_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// The request id of frames the node pushes without being asked.
pub const PUSH_ID: u64 = 0;

/// Most names one `watch` request may carry.
pub const MAX_WATCH_PER_REQUEST: usize = 256;

/// Most names one session may watch.
pub const MAX_WATCHED: usize = 1024;

/// Most peers an invisible owner may stay reachable for.
pub const MAX_VISIBLE_TO: usize = 256;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// What is asked.
    pub op: Op,
}

/// The operations of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Claim a name (first time) or renew it and update the addresses.
    Register {
        /// Signed by the owner, who must be the peer of this connection.
        record: SignedRecord,
        /// While the record's status is invisible: the only peers that are
        /// still given the record (so they can deliver), though they too
        /// are shown the owner as offline. Ignored otherwise.
        #[serde(default)]
        visible_to: Vec<PeerId>,
    },
    /// Look a name up. Sent as a plain string so an invalid name gets a
    /// proper `invalid_name` answer instead of a decoding failure.
    Resolve {
        /// The name, any case.
        name: String,
        /// Asked to check who sent an inbound message (its sender's name
        /// came without a valid certificate): charged to the peer's
        /// sender-check budget, not to its own, so that what strangers
        /// send a user never uses up the user's own requests. Absent:
        /// false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sender_check: bool,
    },
    /// Which names does this peer own?
    ResolvePeer {
        /// The peer asked about.
        peer_id: PeerId,
    },
    /// Give a name up. Only its owner, on its own connection, may.
    Release {
        /// The name, any case.
        name: String,
    },
    /// Push presence changes of these names on this session. The node
    /// answers `watching`, then pushes the current presence of each name
    /// that exists, and every change after that, until `unwatch` or the
    /// end of the session.
    Watch {
        /// Names, any case.
        names: Vec<String>,
    },
    /// Stop pushing changes of these names.
    Unwatch {
        /// Names, any case.
        names: Vec<String>,
    },
}

impl Op {
    /// The operation's name on the wire (`register`, `resolve`, …), for
    /// logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Register { .. } => "register",
            Op::Resolve {
                sender_check: true, ..
            } => "resolve_sender",
            Op::Resolve { .. } => "resolve",
            Op::ResolvePeer { .. } => "resolve_peer",
            Op::Release { .. } => "release",
            Op::Watch { .. } => "watch",
            Op::Unwatch { .. } => "unwatch",
        }
    }
}

/// The node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The id of the request answered.
    pub id: u64,
    /// The answer.
    pub reply: Reply,
}

/// Answers, one kind per operation, or an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The registration was accepted.
    Registered {
        /// The name now owned.
        name: ScreenName,
        /// Whether this request created the claim.
        new_claim: bool,
        /// When the registration lapses unless renewed (ms since epoch).
        expires_at: u64,
        /// The node's certificate that the name is this key's, for the
        /// owner to show its peers. Absent from nodes that issue none.
        #[serde(default)]
        certificate: Option<SignedCertificate>,
    },
    /// A name's owner and presence.
    Resolved(Resolution),
    /// The names a peer owns.
    Names {
        /// The peer asked about.
        peer_id: PeerId,
        /// Its names, possibly none.
        names: Vec<ScreenName>,
    },
    /// The name is free again.
    Released {
        /// The name given up.
        name: ScreenName,
    },
    /// The names are watched; their presence follows as pushes.
    Watching {
        /// How many distinct names are on this session's watch list after
        /// the request, names nobody owns included.
        watched: u32,
    },
    /// The names are no longer watched.
    Unwatched {
        /// How many distinct names are on this session's watch list after
        /// the request.
        watched: u32,
    },
    /// Pushed (with id [`PUSH_ID`]): a watched name's presence changed.
    Presence(Resolution),
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A sentence for humans, naming what was wrong and what is allowed.
        message: String,
    },
}

/// What the node knows of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The name (normalised).
    pub name: ScreenName,
    /// The key that owns it.
    pub owner: PeerId,
    /// What the asking peer is shown.
    pub presence: Presence,
    /// The owner's status text while shown online, else empty.
    pub status_text: String,
    /// When the owner was last shown online (ms since epoch), if ever.
    pub last_seen: Option<u64>,
    /// The owner's current signed record, if the asking peer may dial the
    /// owner now: while online, and for the peers an invisible owner named.
    pub record: Option<SignedRecord>,
}

/// Why a resolution cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum ResolutionError {
    /// The record does not verify.
    #[error("the record for {name} is invalid: {source}")]
    BadRecord {
        /// The name resolved.
        name: ScreenName,
        /// Why.
        source: crate::record::RecordError,
    },
    /// The record is for another name or peer than the answer says.
    #[error("the record for {0} does not match the node's answer")]
    Mismatch(ScreenName),
}

impl Resolution {
    /// Verifies the signed record against the answer and returns it, if any.
    ///
    /// An expired record is treated as absent: the owner is not reachable at
    /// addresses it no longer vouches for.
    pub fn verified_record(&self, now_ms: u64) -> Result<Option<Registration>, ResolutionError> {
        let Some(signed) = &self.record else {
            return Ok(None);
        };
        let record = signed.open().map_err(|source| ResolutionError::BadRecord {
            name: self.name.clone(),
            source,
        })?;
        if record.name != self.name || record.peer_id != self.owner {
            return Err(ResolutionError::Mismatch(self.name.clone()));
        }
        if record.expires_at <= now_ms {
            return Ok(None);
        }
        Ok(Some(record))
    }
}

/// Kinds of failure, stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The name breaks the naming rule.
    InvalidName,
    /// Another key owns the name.
    NameTaken,
    /// Nobody owns the name.
    NoSuchName,
    /// The record's signature does not verify.
    BadSignature,
    /// The record names another peer than the one on this connection.
    WrongPeer,
    /// The record's sequence number is not above the last accepted one.
    StaleSequence,
    /// The record's expiry is in the past or too far in the future.
    BadExpiry,
    /// The record breaks a size limit.
    InvalidRecord,
    /// Only the owner may do this.
    NotOwner,
    /// The request could not be decoded.
    Malformed,
    /// The request goes over a limit (names watched, peers listed, names
    /// held by one key).
    LimitExceeded,
    /// The peer sent more requests than its rate allows; retry later.
    RateLimited,
    /// The node failed; the request may be retried.
    Internal,
    /// The node's claim store (a cluster's database) cannot be reached
    /// now; the request may be retried. Resolves keep being answered.
    Unavailable,
    /// A code this version does not know (read, never written).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code this version writes or reads.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidName,
        ErrorCode::NameTaken,
        ErrorCode::NoSuchName,
        ErrorCode::BadSignature,
        ErrorCode::WrongPeer,
        ErrorCode::StaleSequence,
        ErrorCode::BadExpiry,
        ErrorCode::InvalidRecord,
        ErrorCode::NotOwner,
        ErrorCode::Malformed,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Unknown,
    ];

    /// The code as it is on the wire (`name_taken`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NoSuchName => "no_such_name",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::WrongPeer => "wrong_peer",
            ErrorCode::StaleSequence => "stale_sequence",
            ErrorCode::BadExpiry => "bad_expiry",
            ErrorCode::InvalidRecord => "invalid_record",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::Malformed => "malformed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

/// The error code a node answers for a refused record (docs/protocol.md
/// §5.3).
impl From<&RecordError> for ErrorCode {
    fn from(e: &RecordError) -> Self {
        match e {
            RecordError::Name(_) => ErrorCode::InvalidName,
            RecordError::Signed(SignedError::Malformed(_)) => ErrorCode::InvalidRecord,
            RecordError::Signed(_) => ErrorCode::BadSignature,
            RecordError::TooManyAddrs(_)
            | RecordError::AddrTooLong(_)
            | RecordError::BadAddr { .. }
            | RecordError::Status(_) => ErrorCode::InvalidRecord,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_as_on_the_wire() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire.as_str(), Some(code.as_str()), "{code:?}");
        }
    }
}
