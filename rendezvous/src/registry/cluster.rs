//! The registry's side of a cluster: registrations other nodes hold, for
//! the names this node's sessions watch or look up.

use std::collections::HashSet;

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use tracing::{info, warn};

use super::Registry;
use super::live::{Live, LiveState, Remote, decode_held};
use crate::shared::{Held, NodeId, SharedLive};
use crate::store::ClaimStore;

impl<S: ClaimStore + ?Sized> Registry<S> {
    /// The registration of `name` on another node, when this node does not
    /// know it already (it is not online here, nor watched here). A store
    /// that cannot be reached leaves what this node knows. May block.
    pub(super) fn fetch_elsewhere(&self, name: &ScreenName) -> Option<Live> {
        let shared = self.shared.as_ref()?;
        {
            let live = self.live();
            if live.by_name.contains_key(name) || live.watchers.contains_key(name) {
                return None;
            }
        }
        match shared.lookup(name) {
            Ok(held) => held
                .and_then(|held| decode_held(name, held))
                .map(|r| r.live),
            Err(e) => {
                warn!(%name, "cannot look the name up on the other nodes: {e}");
                None
            }
        }
    }

    /// Another node says what `name` is now: online there (`Some`), or no
    /// longer online at `node`. Kept only while this node watches `name`;
    /// an older record (lower sequence number) does not undo a newer one.
    pub fn remote_changed(
        &self,
        name: &ScreenName,
        node: &str,
        held: Option<SharedLive>,
        now: u64,
    ) {
        let mut live = self.live();
        if !live.watchers.contains_key(name) {
            return;
        }
        let changed = match held {
            Some(shared) => {
                let Some(remote) = decode_held(
                    name,
                    Held {
                        node: node.to_owned(),
                        live: shared,
                    },
                ) else {
                    return;
                };
                let newer = live.remote.get(name).is_none_or(|r| {
                    remote.live.owner != r.live.owner || remote.live.seq >= r.live.seq
                });
                if !newer {
                    return;
                }
                let changed = live
                    .remote
                    .get(name)
                    .is_none_or(|r| r.live.shown() != remote.live.shown());
                if self.claim_owner_differs(name, remote.live.owner) {
                    // The name changed hands on another node.
                    self.forget(name);
                }
                if remote.live.status != Status::Invisible {
                    live.last_seen.remove(name);
                }
                live.remote.insert(name.clone(), remote);
                changed
            }
            None => self.remote_gone(&mut live, name, |r| r.node == node, now),
        };
        if changed {
            live.notify(name);
        }
    }

    /// What the cluster's store holds of a watched name (after this node
    /// lost track, e.g. its messaging link was down): replaces what this
    /// node kept.
    pub fn remote_refreshed(&self, name: &ScreenName, held: Option<Held>, now: u64) {
        match held {
            Some(held) => self.remote_changed(name, &held.node.clone(), Some(held.live), now),
            None => {
                let mut live = self.live();
                if self.remote_gone(&mut live, name, |_| true, now) {
                    live.notify(name);
                }
            }
        }
    }

    /// Nodes that stopped beating are gone, and so are their users.
    pub fn nodes_gone(&self, dead: &HashSet<NodeId>, now: u64) {
        let mut live = self.live();
        let names: Vec<ScreenName> = live
            .remote
            .iter()
            .filter(|(_, r)| dead.contains(&r.node))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if self.remote_gone(&mut live, &name, |_| true, now) {
                info!(%name, "offline: its node stopped");
                live.notify(&name);
            }
        }
    }

    /// Drops the remote registration of `name` if `which` says so;
    /// returns whether it did.
    fn remote_gone(
        &self,
        live: &mut LiveState,
        name: &ScreenName,
        which: impl Fn(&Remote) -> bool,
        now: u64,
    ) -> bool {
        if !live.remote.get(name).is_some_and(which) {
            return false;
        }
        let Some(remote) = live.remote.remove(name) else {
            return false;
        };
        if let Some(at) = remote.live.last_seen_at_end(now) {
            live.last_seen.insert(name.clone(), at);
        }
        true
    }

    /// Another node released `name`: its claim is read again when needed.
    pub fn claim_released(&self, name: &ScreenName) {
        self.forget(name);
        let mut live = self.live();
        live.remote.remove(name);
        live.last_seen.remove(name);
        live.notify(name);
    }

    /// Whether a session of this node watches `name` now.
    pub fn is_watched(&self, name: &ScreenName) -> bool {
        self.live().watchers.contains_key(name)
    }

    /// The names this node's sessions watch now.
    pub fn watched_names(&self) -> Vec<ScreenName> {
        self.live().watchers.keys().cloned().collect()
    }

    /// Every registration this node holds, as the cluster is told of them.
    pub fn held_here(&self) -> Vec<(ScreenName, SharedLive)> {
        self.live()
            .by_name
            .iter()
            .map(|(n, l)| (n.clone(), l.to_shared()))
            .collect()
    }

    pub(super) fn claim_owner_differs(&self, name: &ScreenName, owner: PeerId) -> bool {
        self.claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|c| c.owner != owner)
    }
}
