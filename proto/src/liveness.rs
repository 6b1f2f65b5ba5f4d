//! Which connections have gone silent: the rule both the node and the
//! client apply on top of libp2p's ping.
//!
//! Only connections whose transport does not watch them itself are
//! watched here: TCP and relayed circuits. A direct QUIC connection has
//! keep-alives and an idle time-out of its own, which close it as soon as
//! its peer went silent for that long; pinging it too would only double
//! what holding it costs (see [`ping`]).
//!
//! A ping that times out says so only once its own deadline passed, and
//! one whose stream the peer reset says nothing of silence; this tracker
//! takes every answered ping as a sign of life and calls a connection
//! overdue once none came for `interval + timeout`: a healthy connection answers a ping every
//! `interval` plus a round trip, so that bound is what a peer is promised.
//! Plain state over a caller-given clock, so it is tested without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;

pub mod ping;

/// Whether the transport under a connection notices by itself that its
/// peer went silent: true for a direct QUIC connection (its keep-alives
/// and idle time-out), false for TCP and for circuits through a relay
/// (even over QUIC to the relay: the relay's keep-alives say nothing of
/// the peer at the far end).
pub fn transport_keeps_watch(endpoint: &ConnectedPoint) -> bool {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => direct_quic(address, None),
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => direct_quic(send_back_addr, Some(local_addr)),
    }
}

/// `remote` is a QUIC address, and neither it nor `local` a circuit.
fn direct_quic(remote: &Multiaddr, local: Option<&Multiaddr>) -> bool {
    let circuit = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
    remote.iter().any(|p| matches!(p, Protocol::QuicV1))
        && !circuit(remote)
        && !local.is_some_and(circuit)
}

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

    /// Starts watching a connection just established (one whose
    /// transport does not keep watch itself: [`transport_keeps_watch`]).
    pub fn watch(&mut self, connection: ConnectionId, now: Instant) {
        self.last_alive.insert(connection, now);
    }

    /// A watched connection answered a ping: alive now. Connections not
    /// watched are left alone.
    pub fn alive(&mut self, connection: ConnectionId, now: Instant) {
        if let Some(at) = self.last_alive.get_mut(&connection) {
            *at = now;
        }
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
        live.watch(a, t0);
        live.watch(b, t0);
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
        // A ping answered on a connection not watched starts nothing.
        live.alive(a, late);
        assert!(live.is_empty());
    }

    #[test]
    fn only_direct_quic_connections_are_left_to_their_transport() {
        let dialer = |a: &str| ConnectedPoint::Dialer {
            address: a.parse().unwrap(),
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        };
        let listener = |local: &str, remote: &str| ConnectedPoint::Listener {
            local_addr: local.parse().unwrap(),
            send_back_addr: remote.parse().unwrap(),
        };
        let relay = "/ip4/10.0.0.1/udp/4001/quic-v1/p2p/12D3KooWGzBcDCKoDgXs3Ve4UX9oA5wRS8VVCPf6hpf7HfXJStCY";
        assert!(transport_keeps_watch(&dialer(
            "/ip4/10.0.0.1/udp/4001/quic-v1"
        )));
        assert!(transport_keeps_watch(&listener(
            "/ip4/10.0.0.2/udp/4001/quic-v1",
            "/ip4/10.0.0.1/udp/5555/quic-v1"
        )));
        assert!(!transport_keeps_watch(&dialer("/ip4/10.0.0.1/tcp/4001")));
        assert!(!transport_keeps_watch(&listener(
            "/ip4/10.0.0.2/tcp/4001",
            "/ip4/10.0.0.1/tcp/5555"
        )));
        // Through a relay reached over QUIC: the peer is not the relay.
        assert!(!transport_keeps_watch(&dialer(&format!(
            "{relay}/p2p-circuit/p2p/12D3KooWHLuDkWbWPgNp8zzYjazZQKLjbwoUAYt4b2tGe6pMuk8n"
        ))));
        assert!(!transport_keeps_watch(&listener(
            &format!("{relay}/p2p-circuit"),
            "/p2p/12D3KooWHLuDkWbWPgNp8zzYjazZQKLjbwoUAYt4b2tGe6pMuk8n"
        )));
    }
}
