//! The directory protocol between a client and the rendezvous node.
//!
//! A client opens one long-lived stream per session. Requests carry an id
//! chosen by the client; the node answers each with a response carrying the
//! same id, in order. A client that has registered stays registered (and
//! online) while its session stream stays open.

use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::name::ScreenName;
use crate::record::{Registration, SignedRecord};

/// Protocol id of a directory session.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/messenger/directory/1");

/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 16 * 1024;

/// Longest lifetime a record may claim: a client renews well before.
pub const MAX_RECORD_TTL_MS: u64 = 24 * 60 * 60 * 1000;

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
    },
    /// Look a name up. Sent as a plain string so an invalid name gets a
    /// proper `invalid_name` answer instead of a decoding failure.
    Resolve {
        /// The name, any case.
        name: String,
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
    /// Whether the owner holds a live registration now.
    pub online: bool,
    /// When the owner was last online (ms since epoch), if ever.
    pub last_seen: Option<u64>,
    /// The owner's current signed record, while online.
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
    /// The node failed; the request may be retried.
    Internal,
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
