//! Which connections have gone silent: the rule both the node and the
//! client apply on top of libp2p's ping.
//!
//! libp2p-ping reports a failure only after two consecutive failed pings,
//! and the second one may first wait for a new stream to be negotiated on
//! the dead connection, so a silent peer (cable pulled, NAT mapping gone:
//! no FIN, no RST) would be noticed only after two to three times the
//! configured timeout. This tracker instead takes every successful ping as
//! a sign of life and calls a connection overdue once none came for
//! `interval + timeout`: a healthy connection answers a ping every
//! `interval` plus a round trip, so that bound is what a peer is promised.
//! Plain state over a caller-given clock, so it is tested without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;

/// When each open connection last showed it was alive.
#[derive(Debug)]
pub struct Liveness {
    /// How long a connection may stay silent.
    deadline: Duration,
    last_alive: HashMap<ConnectionId, Instant>,
}

impl Liveness {
    /// Connections pinged every `interval`, each ping given `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            deadline: interval + timeout,
            last_alive: HashMap::new(),
        }
    }

    /// How often [`Liveness::overdue`] should be asked: often enough that
    /// a silent connection is found within its deadline, not more.
    pub fn check_every(&self) -> Duration {
        (self.deadline / 40).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }

    /// The connection is alive now (established, or answered a ping).
    pub fn alive(&mut self, connection: ConnectionId, now: Instant) {
        self.last_alive.insert(connection, now);
    }

    /// The connection closed: nothing to watch any more.
    pub fn closed(&mut self, connection: ConnectionId) {
        self.last_alive.remove(&connection);
    }

    /// Connections silent for their deadline (less one check period, so
    /// that a check that comes late still finds them in time). They are
    /// forgotten: the caller closes them.
    pub fn overdue(&mut self, now: Instant) -> Vec<ConnectionId> {
        let allowed = self.deadline.saturating_sub(self.check_every());
        let overdue: Vec<ConnectionId> = self
            .last_alive
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= allowed)
            .map(|(c, _)| *c)
            .collect();
        for c in &overdue {
            self.last_alive.remove(c);
        }
        overdue
    }

    /// Connections watched.
    pub fn len(&self) -> usize {
        self.last_alive.len()
    }

    /// Whether no connection is watched.
    pub fn is_empty(&self) -> bool {
        self.last_alive.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_silent_for_interval_plus_timeout_is_overdue_and_pings_keep_it() {
        let mut live = Liveness::new(Duration::from_secs(5), Duration::from_secs(5));
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let t0 = Instant::now();
        live.alive(a, t0);
        live.alive(b, t0);
        // b answers its pings every interval plus a round trip.
        for k in 1..=3 {
            live.alive(b, t0 + Duration::from_millis(5_010 * k));
        }
        assert!(live.overdue(t0 + Duration::from_secs(9)).is_empty());
        let late = t0 + Duration::from_secs(10);
        assert_eq!(
            live.overdue(late),
            vec![a],
            "silent since t0: found by t0 + 10 s"
        );
        assert!(live.overdue(late).is_empty(), "reported once");
        assert_eq!(live.len(), 1);
        live.closed(b);
        assert!(live.is_empty());
    }
}
