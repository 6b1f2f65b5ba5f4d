//! What we know of another user: the node's answer, verified.

use libp2p::{Multiaddr, PeerId};
use messenger_proto::directory::{Resolution, ResolutionError};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Presence;
use messenger_proto::time::now_ms;
use serde::{Deserialize, Serialize};

/// A verified answer about a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The name.
    pub name: ScreenName,
    /// The key that owns it.
    pub peer_id: PeerId,
    /// What we are shown: online, away, busy or offline.
    pub presence: Presence,
    /// The status text, while shown online.
    pub status_text: String,
    /// Whether we may dial it now: we hold its signed, unexpired record
    /// (also true for an invisible owner that named us).
    pub reachable: bool,
    /// Its current addresses (verified: signed by the owner).
    pub addrs: Vec<Multiaddr>,
    /// When it was last online (ms since epoch).
    pub last_seen: Option<u64>,
    /// Until when its signed record (and so `addrs`) is valid (ms since
    /// epoch); 0 without one.
    pub valid_until: u64,
}

impl PeerInfo {
    /// Verifies a node's answer: the record inside must be signed by the
    /// owner, for this name, and unexpired, or it is ignored.
    pub fn from_resolution(res: &Resolution) -> Result<Self, ResolutionError> {
        let record = res.verified_record(now_ms())?;
        let reachable = record.is_some();
        Ok(Self {
            name: res.name.clone(),
            peer_id: res.owner,
            presence: if reachable {
                res.presence
            } else {
                Presence::Offline
            },
            status_text: if reachable {
                res.status_text.clone()
            } else {
                String::new()
            },
            reachable,
            valid_until: record.as_ref().map_or(0, |r| r.expires_at),
            addrs: record.map(|r| r.addrs).unwrap_or_default(),
            last_seen: res.last_seen,
        })
    }

    /// Whether it is shown online (online, away or busy).
    pub fn online(&self) -> bool {
        self.presence.is_online()
    }

    /// Whether its addresses may still be dialled at `now_ms`.
    pub fn dialable(&self, now_ms: u64) -> bool {
        self.reachable && !self.addrs.is_empty() && self.valid_until > now_ms
    }

    /// Whether it moved: same key, new set of addresses.
    pub fn moved_from(&self, before: &PeerInfo) -> bool {
        use std::collections::HashSet;
        let old: HashSet<_> = before.addrs.iter().collect();
        let new: HashSet<_> = self.addrs.iter().collect();
        before.peer_id == self.peer_id && self.reachable && old != new
    }
}

/// A contact's name now resolves to another key than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "KEY CHANGED: {name} was pinned to key {pinned}, but the rendezvous node now says {current}. \
     Nothing is sent to or accepted from {name} until you trust the new key \
     (do so only if you know why it changed)"
)]
pub struct KeyChange {
    /// The contact.
    pub name: ScreenName,
    /// The pinned key.
    pub pinned: PeerId,
    /// The key the node reports now.
    pub current: PeerId,
}
