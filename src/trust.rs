//! Whom we accept messages from, and under which key: the pinned keys of
//! contacts and the blocked names. The core owns them (they live in the
//! store) and publishes them as one snapshot, which the inbox and the
//! delivery workers read without asking.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use messenger_proto::name::ScreenName;

use crate::peer::{KeyChange, PeerInfo};
use crate::store::Contact;

/// The pins and blocks in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pins: HashMap<ScreenName, PeerId>,
    blocked: HashSet<ScreenName>,
}

/// Why a message from someone is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distrust {
    /// The name is blocked.
    Blocked,
    /// The name is a contact pinned to another key.
    KeyChanged(KeyChange),
}

impl Trust {
    /// The snapshot of `contacts` and `blocked` names.
    pub fn new(contacts: &[Contact], blocked: &[ScreenName]) -> Self {
        Self {
            pins: contacts
                .iter()
                .map(|c| (c.name.clone(), c.pinned))
                .collect(),
            blocked: blocked.iter().cloned().collect(),
        }
    }

    /// Whether `name` is a contact.
    pub fn is_contact(&self, name: &ScreenName) -> bool {
        self.pins.contains_key(name)
    }

    /// The key pinned for `name`, if a contact.
    pub fn pinned(&self, name: &ScreenName) -> Option<PeerId> {
        self.pins.get(name).copied()
    }

    /// The contact whose pinned key is `key`, unless blocked.
    pub fn contact_of(&self, key: &PeerId) -> Option<ScreenName> {
        self.pins
            .iter()
            .find(|(name, pinned)| *pinned == key && !self.blocked.contains(*name))
            .map(|(name, _)| name.clone())
    }

    /// Whether `name` is blocked.
    pub fn is_blocked(&self, name: &ScreenName) -> bool {
        self.blocked.contains(name)
    }

    /// The pinned keys of every contact.
    pub fn pinned_keys(&self) -> Vec<PeerId> {
        self.pins.values().copied().collect()
    }

    /// The contacts' names.
    pub fn contact_names(&self) -> impl Iterator<Item = &ScreenName> {
        self.pins.keys()
    }

    /// Whether to refuse a message from `from`, sent by `peer`.
    pub fn refuse(&self, from: &ScreenName, peer: &PeerId) -> Option<Distrust> {
        if self.blocked.contains(from) {
            return Some(Distrust::Blocked);
        }
        match self.pins.get(from) {
            Some(pinned) if pinned != peer => Some(Distrust::KeyChanged(KeyChange {
                name: from.clone(),
                pinned: *pinned,
                current: *peer,
            })),
            _ => None,
        }
    }

    /// Whether the node's answer for a contact carries its pinned key.
    pub fn check_pin(&self, info: &PeerInfo) -> Result<(), Box<KeyChange>> {
        match self.pins.get(&info.name) {
            Some(pinned) if *pinned != info.peer_id => Err(Box::new(KeyChange {
                name: info.name.clone(),
                pinned: *pinned,
                current: info.peer_id,
            })),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_pins_refuse_and_others_pass() {
        let bob = ScreenName::parse("bob").unwrap();
        let eve = ScreenName::parse("eve").unwrap();
        let carol = ScreenName::parse("carol").unwrap();
        let (key, other) = (PeerId::random(), PeerId::random());
        let trust = Trust::new(
            &[Contact {
                name: bob.clone(),
                pinned: key,
                added_at: 0,
                key_changed_to: None,
                auto_accept_below: None,
            }],
            std::slice::from_ref(&eve),
        );
        assert_eq!(trust.refuse(&bob, &key), None);
        assert!(matches!(
            trust.refuse(&bob, &other),
            Some(Distrust::KeyChanged(k)) if k.current == other
        ));
        assert_eq!(trust.refuse(&eve, &other), Some(Distrust::Blocked));
        assert_eq!(trust.refuse(&carol, &other), None, "strangers may write");
        assert!(trust.is_contact(&bob) && !trust.is_contact(&carol));
    }
}
