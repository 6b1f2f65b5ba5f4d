//! What the node allows one peer, one address and everyone together. A
//! public node serves strangers: every resource a peer can make it spend
//! has a bound here, and going over it gets a refused connection or a
//! distinct error answer, and a log line.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use messenger_proto::rate::{Rate, TokenBucket};

use messenger_proto::gate::Source;

/// Every limit, with the defaults `rendezvous --help` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections established at once, from everyone.
    pub max_connections: u32,
    /// Connections still in their handshake at once, from everyone; over
    /// it the oldest handshake of the busiest address is shed.
    pub max_pending_connections: u32,
    /// Connections still in their handshake at once from one IP address
    /// (an IPv6 /64); over it that address's oldest handshake is shed.
    pub max_pending_per_ip: u32,
    /// Connections from one IP address.
    pub max_connections_per_ip: u32,
    /// Connections from one peer id.
    pub max_connections_per_peer: u32,
    /// Streams open at once on one connection (all protocols). A client
    /// needs about 20 at most (4 directory sessions, 8 relayed circuits,
    /// ping, identify, AutoNAT, its reservation); QUIC keeps state for
    /// every stream a peer may open (quinn allocates the table up front:
    /// 5 KiB per connection at 64), so the bound is not set higher.
    pub max_streams_per_connection: u32,
    /// Directory sessions open at once on one connection.
    pub max_sessions_per_connection: usize,
    /// Directory requests (register, resolve, watch, release…) one peer
    /// may make: a token bucket over all its sessions.
    pub requests: Rate,
    /// Resolves one peer may make to check who sent it a message (see
    /// `Op::Resolve`'s `sender_check`): a bucket of their own, so that
    /// strangers writing to a user cannot use up the user's requests.
    pub sender_checks: Rate,
    /// Names one key may hold.
    pub max_names_per_key: usize,
    /// Largest directory frame the node reads, in bytes.
    pub max_frame: usize,
    /// A handshake (Noise or TLS, then the muxer) must finish within this.
    pub handshake_timeout: Duration,
    /// The node refuses new connections while its resident memory is above
    /// this many bytes.
    pub max_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_pending_connections: 512,
            max_pending_per_ip: 8,
            max_connections_per_ip: 64,
            max_connections_per_peer: 4,
            max_streams_per_connection: 32,
            max_sessions_per_connection: 4,
            requests: Rate::new(20.0, 100),
            sender_checks: Rate::new(10.0, 50),
            max_names_per_key: 3,
            max_frame: messenger_proto::directory::MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            max_memory: 2 << 30,
        }
    }
}

/// Refuses an inbound connection from an IP address (an IPv6 /64) that
/// already has `limit` connections established. libp2p's own connection
/// limits count per peer id, which costs an attacker nothing to vary.
#[derive(Debug)]
pub struct PerIpLimit {
    limit: u32,
    established: HashMap<Source, u32>,
}

/// The error a refused connection carries.
#[derive(Debug, thiserror::Error)]
#[error("too many connections from {ip} (at most {limit} per address)")]
pub struct TooManyFromIp {
    ip: Source,
    limit: u32,
}

impl PerIpLimit {
    /// At most `limit` established connections per IP address.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            established: HashMap::new(),
        }
    }

    fn check(&self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = Source::of(remote) else {
            return Ok(());
        };
        if self.established.get(&ip).copied().unwrap_or(0) >= self.limit {
            return Err(ConnectionDenied::new(TooManyFromIp {
                ip,
                limit: self.limit,
            }));
        }
        Ok(())
    }
}

impl NetworkBehaviour for PerIpLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Checked again: several may have been pending at once.
        self.check(remote)?;
        if let Some(ip) = Source::of(remote) {
            *self.established.entry(ip).or_default() += 1;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { endpoint, .. }) = event {
            if !endpoint.is_listener() {
                return;
            }
            if let Some(ip) = Source::of(endpoint.get_remote_address())
                && let Entry::Occupied(mut count) = self.established.entry(ip)
            {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        e: THandlerOutEvent<Self>,
    ) {
        match e {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Per-peer request budgets, shared by all of a peer's sessions: its own
/// requests, and its checks of who sent it messages. A peer's buckets live
/// while it has a session open.
#[derive(Debug)]
pub struct RequestLimiter {
    rate: Rate,
    sender_checks: Rate,
    epoch: Instant,
    peers: Mutex<HashMap<PeerId, Buckets>>,
}

/// One peer's buckets, and how many of its sessions are open.
#[derive(Debug)]
struct Buckets {
    own: TokenBucket,
    sender_checks: TokenBucket,
    sessions: u32,
}

impl RequestLimiter {
    /// Budgets of `rate` per peer, and `sender_checks` for its checks of
    /// senders.
    pub fn new(rate: Rate, sender_checks: Rate) -> Arc<Self> {
        Arc::new(Self {
            rate,
            sender_checks,
            epoch: Instant::now(),
            peers: Mutex::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<PeerId, Buckets>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `peer` starts; the guard ends it.
    pub fn session(self: &Arc<Self>, peer: PeerId) -> PeerBudget {
        let now = self.now_ms();
        self.peers()
            .entry(peer)
            .or_insert_with(|| Buckets {
                own: TokenBucket::new(self.rate, now),
                sender_checks: TokenBucket::new(self.sender_checks, now),
                sessions: 0,
            })
            .sessions += 1;
        PeerBudget {
            limiter: self.clone(),
            peer,
        }
    }

    /// Peers with a session open (each holds one bucket).
    pub fn peers_tracked(&self) -> usize {
        self.peers().len()
    }
}

/// One session's access to its peer's budget.
#[derive(Debug)]
pub struct PeerBudget {
    limiter: Arc<RequestLimiter>,
    peer: PeerId,
}

impl PeerBudget {
    /// Spends one request; `Err` says how long until one is available.
    pub fn spend(&self) -> Result<(), Duration> {
        self.take(|b| &mut b.own)
    }

    /// Spends `n` requests at once (a watch costs by the names it
    /// carries); `Err` when the budget does not hold them all (what it
    /// held is spent).
    pub fn spend_n(&self, n: u32) -> Result<(), Duration> {
        for _ in 0..n {
            self.spend()?;
        }
        Ok(())
    }

    /// Spends one check of who sent a message.
    pub fn spend_sender_check(&self) -> Result<(), Duration> {
        self.take(|b| &mut b.sender_checks)
    }

    fn take(&self, which: impl FnOnce(&mut Buckets) -> &mut TokenBucket) -> Result<(), Duration> {
        let now = self.limiter.now_ms();
        match self.limiter.peers().get_mut(&self.peer) {
            Some(buckets) => which(buckets).take(now),
            None => Ok(()),
        }
    }

    /// The rate this budget refills at.
    pub fn rate(&self) -> Rate {
        self.limiter.rate
    }

    /// The rate the sender-check budget refills at.
    pub fn sender_check_rate(&self) -> Rate {
        self.limiter.sender_checks
    }
}

impl Drop for PeerBudget {
    fn drop(&mut self) {
        let mut peers = self.limiter.peers();
        if let Entry::Occupied(mut entry) = peers.entry(self.peer) {
            entry.get_mut().sessions -= 1;
            if entry.get().sessions == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_shares_one_budget_across_sessions_until_the_last_ends() {
        let limiter = RequestLimiter::new(Rate::new(0.0, 3), Rate::new(0.0, 2));
        let peer = PeerId::random();
        let a = limiter.session(peer);
        let b = limiter.session(peer);
        assert!(a.spend().is_ok());
        assert!(b.spend().is_ok());
        assert!(a.spend().is_ok());
        assert!(b.spend().is_err(), "three requests were the whole budget");
        assert!(a.spend_sender_check().is_ok() && b.spend_sender_check().is_ok());
        assert!(
            a.spend_sender_check().is_err(),
            "checks of senders have a budget of their own"
        );
        drop(a);
        assert!(b.spend().is_err(), "the bucket outlives one session");
        drop(b);
        assert_eq!(limiter.peers_tracked(), 0, "no state left for a gone peer");
        let other = limiter.session(PeerId::random());
        assert!(other.spend().is_ok(), "other peers have their own budget");
    }

    #[test]
    fn ip_limit_counts_established_inbound_connections() {
        let mut limit = PerIpLimit::new(2);
        let from: Multiaddr = "/ip4/10.0.0.1/tcp/5000".parse().unwrap();
        let local: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().unwrap();
        for i in 0..2 {
            assert!(
                limit
                    .handle_established_inbound_connection(
                        ConnectionId::new_unchecked(i),
                        PeerId::random(),
                        &local,
                        &from
                    )
                    .is_ok()
            );
        }
        assert!(
            limit
                .handle_pending_inbound_connection(ConnectionId::new_unchecked(3), &local, &from)
                .is_err()
        );
        let elsewhere: Multiaddr = "/ip4/10.0.0.9/tcp/5000".parse().unwrap();
        assert!(
            limit
                .handle_pending_inbound_connection(
                    ConnectionId::new_unchecked(4),
                    &local,
                    &elsewhere
                )
                .is_ok()
        );
    }
}
