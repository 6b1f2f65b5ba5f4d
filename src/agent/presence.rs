//! What we know of others: each name's last verified presence and record,
//! and the names whose changes the node pushes to us. Plain state with
//! the rules of what counts as a change; the core owns it and does the
//! asking (directory work) and the telling (events, delivery workers).

use std::collections::{BTreeSet, HashMap};

use libp2p::PeerId;
use messenger_proto::name::ScreenName;

use crate::peer::PeerInfo;

/// What a new piece of knowledge changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Learned {
    /// What front ends show of the name changed (presence, status text,
    /// reachability), or the name is new.
    pub(super) shown: bool,
    /// A delivery worker should hear of it: the name is reachable (its
    /// addresses may be fresher than the worker's), or it moved.
    pub(super) for_delivery: bool,
}

/// Each name's last verified presence, and the names watched.
#[derive(Debug, Default)]
pub(super) struct Presence {
    known: HashMap<ScreenName, PeerInfo>,
    watched: BTreeSet<ScreenName>,
}

impl Presence {
    /// What we last heard of `name`.
    pub(super) fn get(&self, name: &ScreenName) -> Option<&PeerInfo> {
        self.known.get(name)
    }

    /// Whether anything is known of `name`.
    pub(super) fn knows(&self, name: &ScreenName) -> bool {
        self.known.contains_key(name)
    }

    /// The name a key was last heard of under, if any.
    pub(super) fn name_of(&self, peer: &PeerId) -> Option<&ScreenName> {
        self.known
            .values()
            .find(|info| info.peer_id == *peer)
            .map(|info| &info.name)
    }

    /// Keeps what the node says of a name (verified); says what changed.
    pub(super) fn learn(&mut self, info: PeerInfo) -> Learned {
        let old = self.known.get(&info.name);
        let shown = old.is_none_or(|old| {
            (old.presence, &old.status_text, old.reachable)
                != (info.presence, &info.status_text, info.reachable)
        });
        let moved = old.is_some_and(|old| info.moved_from(old));
        let for_delivery = info.reachable || moved;
        self.known.insert(info.name.clone(), info);
        Learned {
            shown,
            for_delivery,
        }
    }

    /// Watches `names`; returns those not watched before (the node is to
    /// be asked for them).
    pub(super) fn watch(&mut self, names: &[ScreenName]) -> Vec<ScreenName> {
        names
            .iter()
            .filter(|name| self.watched.insert((*name).clone()))
            .cloned()
            .collect()
    }

    /// Stops watching `name`; whether it was.
    pub(super) fn unwatch(&mut self, name: &ScreenName) -> bool {
        self.watched.remove(name)
    }

    /// Every name watched, in order.
    pub(super) fn watched(&self) -> impl Iterator<Item = &ScreenName> {
        self.watched.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::presence::Presence as Shown;

    fn info(name: &str, peer: PeerId, presence: Shown, text: &str, addrs: &[&str]) -> PeerInfo {
        PeerInfo {
            name: ScreenName::parse(name).unwrap(),
            peer_id: peer,
            presence,
            status_text: text.into(),
            reachable: !addrs.is_empty(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            last_seen: None,
            valid_until: 0,
        }
    }

    #[test]
    fn a_change_is_what_front_ends_show_and_a_worker_hears_of_what_helps_it_deliver() {
        let mut known = Presence::default();
        let here = "/ip4/127.0.0.1/tcp/1";
        let there = "/ip4/127.0.0.1/tcp/2";
        let peer = PeerId::random();
        let first = info("bob", peer, Shown::Online, "", &[here]);
        assert_eq!(
            known.learn(first.clone()),
            Learned {
                shown: true,
                for_delivery: true
            },
            "new, and reachable"
        );
        assert!(known.knows(&first.name));
        assert_eq!(known.name_of(&peer), Some(&first.name));
        // The same again: nothing shown changes; a worker may still use it.
        assert_eq!(
            known.learn(first.clone()),
            Learned {
                shown: false,
                for_delivery: true
            }
        );
        // A status text is shown.
        let away = info("bob", peer, Shown::Away, "lunch", &[here]);
        assert!(known.learn(away).shown);
        // Offline, without a record: shown, nothing for a worker.
        let gone = info("bob", peer, Shown::Offline, "", &[]);
        assert_eq!(
            known.learn(gone),
            Learned {
                shown: true,
                for_delivery: false
            }
        );
        // Back elsewhere.
        let moved = info("bob", peer, Shown::Online, "", &[there]);
        assert_eq!(
            known.learn(moved),
            Learned {
                shown: true,
                for_delivery: true
            }
        );
        assert_eq!(known.get(&first.name).unwrap().addrs[0].to_string(), there);
    }

    #[test]
    fn watching_asks_only_for_names_not_watched_yet() {
        let mut known = Presence::default();
        let names: Vec<ScreenName> = ["bob", "carol"]
            .iter()
            .map(|n| ScreenName::parse(n).unwrap())
            .collect();
        assert_eq!(known.watch(&names), names);
        assert!(known.watch(&names[..1]).is_empty());
        assert!(known.unwatch(&names[0]));
        assert!(!known.unwatch(&names[0]));
        assert_eq!(known.watched().collect::<Vec<_>>(), [&names[1]]);
    }
}
