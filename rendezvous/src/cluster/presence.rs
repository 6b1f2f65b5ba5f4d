//! Presence changes between nodes, over NATS.
//!
//! A node publishes every change of a registration it holds on the name's
//! subject, and subscribes only to the subjects of names its own sessions
//! watch and somebody claimed. Subjects carry a hash of the name, not the
//! name: what travels is what watchers are shown anyway, and the subject
//! space says nothing.
//!
//! Every note and announcement is signed with the cluster's certificate
//! key (which the nodes share: `--certificate-key`) and checked on
//! receipt, so that whoever can publish on the NATS server, but holds no
//! node's key, cannot mark users offline, move them, or forge a claim or
//! a release.

use messenger_proto::name::ScreenName;
use serde::{Deserialize, Serialize};

use crate::shared::{NodeId, SharedLive};

/// Where releases of names are announced (every node listens).
pub const RELEASED: &str = "messenger.directory.released";

/// Where new claims are announced (every node listens).
pub const CLAIMED: &str = "messenger.directory.claimed";

/// Signature contexts: a presence note, and announcements of a name
/// released or claimed.
pub const NOTE_CONTEXT: &[u8] = b"messenger/cluster-note/v1\0";
/// See [`NOTE_CONTEXT`].
pub const RELEASED_CONTEXT: &[u8] = b"messenger/cluster-released/v1\0";
/// See [`NOTE_CONTEXT`].
pub const CLAIMED_CONTEXT: &[u8] = b"messenger/cluster-claimed/v1\0";

/// The subject of `name`'s presence changes.
pub fn subject(name: &ScreenName) -> String {
    let hash = blake3::hash(name.as_str().as_bytes());
    let hex = hash.to_hex();
    format!("messenger.directory.presence.{}", &hex[..32])
}

/// One change, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Whose presence changed (checked against the record and the subject).
    pub name: ScreenName,
    /// The node that holds (or held) the session.
    pub node: NodeId,
    /// The registration now, or `None`: the session there ended.
    pub live: Option<SharedLive>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_token_per_name_and_differ() {
        let a = subject(&ScreenName::parse("alice").unwrap());
        let b = subject(&ScreenName::parse("bob").unwrap());
        assert_ne!(a, b);
        let token = a.rsplit('.').next().unwrap();
        assert_eq!(token.len(), 32);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.contains("alice"));
    }
}
