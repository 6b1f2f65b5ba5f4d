//! Why the registry refuses a request: the domain's own errors, each with
//! the stable code the wire carries (the session maps them to replies).

use libp2p::PeerId;
use messenger_proto::directory::{
    ErrorCode, MAX_RECORD_TTL_MS, MAX_VISIBLE_TO, MAX_WATCH_PER_REQUEST, MAX_WATCHED,
};
use messenger_proto::name::{NameError, ScreenName};
use messenger_proto::record::RecordError;
use tracing::warn;

use crate::store::StoreError;

/// A request the registry turned down, and why.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A name that is not a screen name.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A record that does not open: bad signature, not a registration.
    #[error("{}", record_refusal(.0))]
    BadRecord(RecordError),
    /// A registration visible to more peers than allowed.
    #[error("visible_to lists {0} peers; at most {MAX_VISIBLE_TO} are allowed")]
    TooManyVisible(usize),
    /// A record of another peer than the one sending it.
    #[error(
        "the record names peer {named} but this connection is peer {connection}; a peer registers only itself"
    )]
    WrongPeer {
        named: Box<PeerId>,
        connection: Box<PeerId>,
    },
    /// A record already expired, or valid too far ahead.
    #[error(
        "the record expires at {expires_at} ms but the node's clock says {now} ms; expiry must be in the future and at most {} hours ahead (check your clock)",
        MAX_RECORD_TTL_MS / 3_600_000
    )]
    BadExpiry { expires_at: u64, now: u64 },
    /// A record not newer than the one accepted last.
    #[error(
        "record for {name} has sequence {got}, not above the last accepted {have}; sequence numbers must grow"
    )]
    StaleSequence {
        name: ScreenName,
        got: u64,
        have: u64,
    },
    /// The name belongs to another key.
    #[error("name taken: {0} is owned by another key")]
    NameTaken(ScreenName),
    /// The key holds as many names as one key may.
    #[error(
        "this key already holds {held} names, the most one key may hold on this node; release one to claim {name}"
    )]
    TooManyNames { held: usize, name: ScreenName },
    /// Nobody owns the name.
    #[error("no such name: {0}")]
    NoSuchName(ScreenName),
    /// The peer has no current registration the viewer may see.
    #[error("no current registration for peer {0}")]
    NotRegistered(PeerId),
    /// Too many names in one watch request.
    #[error("{0} names in one watch request; at most {MAX_WATCH_PER_REQUEST} are allowed")]
    WatchRequestTooLarge(usize),
    /// The session would watch more names than allowed.
    #[error("a session may watch at most {MAX_WATCHED} names")]
    WatchingTooMany,
    /// The session is not (or no longer) open.
    #[error("session is not open")]
    SessionNotOpen,
    /// Only a name's owner may release it.
    #[error("{0} is owned by another key; only its owner may release it")]
    NotOwner(ScreenName),
    /// The claim store cannot be reached now (a cluster's database).
    #[error("store unavailable: the node cannot reach its claim store now; retry later")]
    StoreUnavailable,
    /// The claim store failed.
    #[error("the node's store failed; retry later")]
    StoreFailed,
}

impl Refusal {
    /// The code the wire carries for it (docs/protocol.md §5.6).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidName(_) => ErrorCode::InvalidName,
            Self::BadRecord(e) => ErrorCode::from(e),
            Self::TooManyVisible(_)
            | Self::TooManyNames { .. }
            | Self::WatchRequestTooLarge(_)
            | Self::WatchingTooMany => ErrorCode::LimitExceeded,
            Self::WrongPeer { .. } => ErrorCode::WrongPeer,
            Self::BadExpiry { .. } => ErrorCode::BadExpiry,
            Self::StaleSequence { .. } => ErrorCode::StaleSequence,
            Self::NameTaken(_) => ErrorCode::NameTaken,
            Self::NoSuchName(_) | Self::NotRegistered(_) => ErrorCode::NoSuchName,
            Self::NotOwner(_) => ErrorCode::NotOwner,
            Self::StoreUnavailable => ErrorCode::Unavailable,
            Self::SessionNotOpen | Self::StoreFailed => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        warn!("store failure: {e}");
        match e {
            StoreError::Unavailable(_) => Self::StoreUnavailable,
            _ => Self::StoreFailed,
        }
    }
}

/// What a record that does not open is told.
fn record_refusal(e: &RecordError) -> String {
    match ErrorCode::from(e) {
        ErrorCode::BadSignature => {
            format!("{e}: a record must be signed by the key of the peer id it names")
        }
        // `malformed` is kept for frames that do not decode at all (which
        // end the session).
        ErrorCode::InvalidRecord if matches!(e, RecordError::Signed(_)) => {
            format!("the record's payload is not a registration: {e}")
        }
        _ => e.to_string(),
    }
}
