//! The rendezvous nodes a client knows: doors to one directory. One is in
//! use; when it cannot be reached the next is tried, round after round.

use libp2p::{Multiaddr, PeerId};

use crate::directory::node_peer_id;

/// The known nodes, in the order given, and the one in use.
#[derive(Debug, Clone, Default)]
pub(super) struct Nodes {
    addrs: Vec<Multiaddr>,
    current: usize,
    /// Attempts that failed since one last succeeded.
    failed_in_a_row: usize,
}

impl Nodes {
    pub(super) fn new(given: Vec<Multiaddr>) -> Self {
        let mut addrs = Vec::with_capacity(given.len());
        for addr in given {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Self {
            addrs,
            current: 0,
            failed_in_a_row: 0,
        }
    }

    /// The node in use, if any is known.
    pub(super) fn current(&self) -> Option<&Multiaddr> {
        self.addrs.get(self.current)
    }

    /// Every node, in the order given.
    pub(super) fn all(&self) -> &[Multiaddr] {
        &self.addrs
    }

    /// Every node, the one in use first, then the others in turn.
    pub(super) fn in_use_first(&self) -> Vec<Multiaddr> {
        let (before, after) = self.addrs.split_at(self.current.min(self.addrs.len()));
        after.iter().chain(before).cloned().collect()
    }

    /// Whether `addrs` are these nodes, in any order.
    pub(super) fn are(&self, addrs: &[Multiaddr]) -> bool {
        addrs.len() == self.addrs.len() && addrs.iter().all(|a| self.addrs.contains(a))
    }

    /// The keys of the nodes (those whose addresses name one).
    pub(super) fn peer_ids(&self) -> Vec<PeerId> {
        self.addrs
            .iter()
            .filter_map(|a| node_peer_id(a).ok())
            .collect()
    }

    /// An attempt on the node in use failed: the next one is in use now.
    /// Whether it is one not tried since the last success (try it at
    /// once; otherwise a whole round failed: wait before the next).
    pub(super) fn failed(&mut self) -> bool {
        if self.addrs.len() < 2 {
            return false;
        }
        self.failed_in_a_row += 1;
        self.current = (self.current + 1) % self.addrs.len();
        self.failed_in_a_row < self.addrs.len()
    }

    /// An attempt on the node in use succeeded.
    pub(super) fn succeeded(&mut self) {
        self.failed_in_a_row = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> Multiaddr {
        format!("/ip4/127.0.0.{i}/tcp/4001").parse().unwrap()
    }

    #[test]
    fn a_failure_moves_on_and_a_whole_failed_round_says_wait() {
        let mut nodes = Nodes::new(vec![addr(1), addr(2), addr(1), addr(3)]);
        assert_eq!(nodes.all(), &[addr(1), addr(2), addr(3)], "repeats dropped");
        assert_eq!(nodes.current(), Some(&addr(1)));
        assert!(nodes.failed());
        assert_eq!(nodes.current(), Some(&addr(2)));
        assert!(nodes.failed());
        assert_eq!(nodes.current(), Some(&addr(3)));
        assert!(!nodes.failed(), "all three failed in a row");
        assert_eq!(nodes.current(), Some(&addr(1)));
        nodes.succeeded();
        assert!(nodes.failed(), "a new round after a success");
        assert_eq!(nodes.current(), Some(&addr(2)));
        assert_eq!(nodes.in_use_first(), vec![addr(2), addr(3), addr(1)]);
        assert!(nodes.are(&[addr(3), addr(1), addr(2)]));
        assert!(!nodes.are(&[addr(3), addr(1)]));
    }

    #[test]
    fn one_node_or_none_never_moves() {
        let mut one = Nodes::new(vec![addr(1)]);
        assert!(!one.failed());
        assert_eq!(one.current(), Some(&addr(1)));
        let mut none = Nodes::new(Vec::new());
        assert!(!none.failed());
        assert_eq!(none.current(), None);
    }
}
