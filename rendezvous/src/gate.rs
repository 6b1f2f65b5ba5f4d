//! Admission of connections that have not finished their handshake.
//!
//! Until a connection is authenticated, nothing about it is known but the
//! address it comes from, and it costs the node a socket, a task and the
//! Noise or TLS state. A stranger can open thousands and never finish
//! (or finish slowly), so this gate bounds them from the moment the
//! transport hands a new connection over (the TCP accept, the first QUIC
//! packet): at most a few per source and a bounded number in all. Over a
//! bound it does not refuse the newcomer, which would let whoever came
//! first hold every slot, but sheds an older handshake: the oldest of the
//! same source, or, when the total is full, the oldest of the source that
//! holds the most. An honest client, whose handshake takes milliseconds,
//! is thereby never the one shed by a flood from other addresses.
//!
//! The gate is a [`Transport`] wrapper, so it applies before libp2p's
//! swarm counts or limits anything; a shed handshake's future ends with
//! [`GateError::Shed`], which drops (closes) its socket.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use tracing::debug;

/// What one source address, and everyone together, may have in their
/// handshake at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Handshakes in progress from one source.
    pub per_source: usize,
    /// Handshakes in progress in all.
    pub total: usize,
}

/// Where a connection comes from, as far as limits go: an IPv4 address, or
/// an IPv6 /64 (one subscriber's prefix: an attacker with an IPv6 prefix
/// has 2^64 addresses, not 2^64 sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a remote address, if it has an IP.
    pub fn of(addr: &Multiaddr) -> Option<Self> {
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(Self(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => {
                let prefix = u128::from(ip) & !((1u128 << 64) - 1);
                Some(Self(IpAddr::V6(Ipv6Addr::from(prefix))))
            }
            _ => None,
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// How many handshakes the gate shed or turned away, and why, since it
/// started.
#[derive(Debug, Default)]
pub struct ShedCounts {
    /// Shed because their source had too many at once.
    pub per_source: AtomicU64,
    /// Shed because the total was full.
    pub total: AtomicU64,
    /// QUIC: asked to prove their address (Retry) at a bound.
    pub retried: AtomicU64,
    /// QUIC: dropped unanswered, their validated source at its bound.
    pub refused: AtomicU64,
}

/// What [`HandshakeGate::try_admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; the ticket holds the place.
    Admitted(Ticket),
    /// At a bound, and the address is not proven: make the sender prove
    /// it first (a QUIC Retry), keeping nothing meanwhile.
    ProveAddress,
    /// Its proven address is at its own bound: drop it.
    Refused,
}

/// The gate: shared by every gated transport of the node.
#[derive(Debug)]
pub struct HandshakeGate {
    limits: GateLimits,
    state: Mutex<State>,
    shed: ShedCounts,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Handshakes in progress, by ticket id (ids grow: oldest first).
    pending: HashMap<u64, Pending>,
    /// Ticket ids per source, oldest first.
    by_source: HashMap<Source, VecDeque<u64>>,
}

#[derive(Debug)]
struct Pending {
    source: Source,
    signal: Arc<ShedSignal>,
}

/// Tells a handshake's future that it was shed.
#[derive(Debug, Default)]
struct ShedSignal {
    shed: AtomicBool,
    waker: AtomicWaker,
}

impl ShedSignal {
    fn fire(&self) {
        self.shed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// Why the gate sheds.
#[derive(Debug, Clone, Copy)]
enum Reason {
    PerSource,
    Total,
}

impl HandshakeGate {
    /// A gate with these limits (each at least 1).
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: GateLimits {
                per_source: limits.per_source.max(1),
                total: limits.total.max(1),
            },
            state: Mutex::default(),
            shed: ShedCounts::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new handshake from `source`, shedding an older one if a
    /// limit is reached (TCP: the socket is open already, so shedding the
    /// oldest costs no more than refusing the newest). The ticket holds
    /// its place until dropped.
    pub fn admit(self: &Arc<Self>, source: Source) -> Ticket {
        let mut state = self.state();
        let from_source = state.by_source.get(&source).map_or(0, VecDeque::len);
        if from_source >= self.limits.per_source {
            state.shed_oldest_of(source, Reason::PerSource, &self.shed);
        } else if state.pending.len() >= self.limits.total
            && let Some(busiest) = state.busiest()
        {
            state.shed_oldest_of(busiest, Reason::Total, &self.shed);
        }
        self.insert(&mut state, source)
    }

    /// Decides on a new QUIC handshake before it costs anything (see
    /// `crate::quic`): below the bounds it is admitted; at one, an
    /// unproven address must prove itself first, a proven one at its own
    /// bound is refused, and a proven one below it takes the place of the
    /// busiest address's oldest handshake.
    pub fn try_admit(self: &Arc<Self>, source: Source, validated: bool) -> Admission {
        let mut state = self.state();
        let from_source = state.by_source.get(&source).map_or(0, VecDeque::len);
        let source_full = from_source >= self.limits.per_source;
        let total_full = state.pending.len() >= self.limits.total;
        if source_full || total_full {
            if !validated {
                self.shed.retried.fetch_add(1, Ordering::Relaxed);
                return Admission::ProveAddress;
            }
            if source_full {
                self.shed.refused.fetch_add(1, Ordering::Relaxed);
                return Admission::Refused;
            }
            if let Some(busiest) = state.busiest() {
                state.shed_oldest_of(busiest, Reason::Total, &self.shed);
            }
        }
        Admission::Admitted(self.insert(&mut state, source))
    }

    fn insert(self: &Arc<Self>, state: &mut State, source: Source) -> Ticket {
        let id = state.next_id;
        state.next_id += 1;
        let signal = Arc::new(ShedSignal::default());
        state.pending.insert(
            id,
            Pending {
                source,
                signal: signal.clone(),
            },
        );
        state.by_source.entry(source).or_default().push_back(id);
        Ticket {
            gate: self.clone(),
            id,
            signal,
        }
    }

    /// Handshakes in progress now.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Handshakes shed so far.
    pub fn shed_counts(&self) -> &ShedCounts {
        &self.shed
    }

    fn release(&self, id: u64) {
        let mut state = self.state();
        if let Some(pending) = state.pending.remove(&id) {
            state.forget(pending.source, id);
        }
    }
}

impl State {
    /// The source with the most handshakes in progress; of equals, the one
    /// whose oldest handshake is oldest.
    fn busiest(&self) -> Option<Source> {
        self.by_source
            .iter()
            .max_by(|(_, a), (_, b)| {
                a.len()
                    .cmp(&b.len())
                    .then_with(|| b.front().cmp(&a.front()))
            })
            .map(|(source, _)| *source)
    }

    fn shed_oldest_of(&mut self, source: Source, reason: Reason, counts: &ShedCounts) {
        let Some(id) = self
            .by_source
            .get(&source)
            .and_then(|ids| ids.front().copied())
        else {
            return;
        };
        if let Some(pending) = self.pending.remove(&id) {
            pending.signal.fire();
        }
        self.forget(source, id);
        let counter = match reason {
            Reason::PerSource => &counts.per_source,
            Reason::Total => &counts.total,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        debug!(%source, ?reason, "shed a connection still in its handshake");
    }

    fn forget(&mut self, source: Source, id: u64) {
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
    }
}

/// A handshake's place in the gate; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<HandshakeGate>,
    id: u64,
    signal: Arc<ShedSignal>,
}

impl Ticket {
    /// Whether the gate shed this handshake. Registers `cx` to be woken
    /// when it does.
    pub(crate) fn poll_shed(&self, cx: &Context<'_>) -> bool {
        self.signal.waker.register(cx.waker());
        self.signal.shed.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.release(self.id);
    }
}

/// Why a gated connection failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError<E> {
    /// The gate shed it to make room (a flood from its source, or from
    /// everywhere).
    #[error("shed while still in its handshake: too many handshakes from its address or in all")]
    Shed,
    /// The wrapped transport failed.
    #[error(transparent)]
    Inner(E),
}

/// A transport whose inbound connections pass the gate.
#[derive(Debug)]
pub struct Gated<T> {
    inner: T,
    gate: Arc<HandshakeGate>,
}

impl<T> Gated<T> {
    /// Gates `inner`'s inbound connections.
    pub fn new(inner: T, gate: Arc<HandshakeGate>) -> Self {
        Self { inner, gate }
    }
}

/// An inbound handshake holding its ticket.
pub struct GatedUpgrade<F> {
    inner: Pin<Box<F>>,
    ticket: Option<Ticket>,
}

impl<F> std::fmt::Debug for GatedUpgrade<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedUpgrade")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl<F, O, E> Future for GatedUpgrade<F>
where
    F: Future<Output = Result<O, E>>,
{
    type Output = Result<O, GateError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ticket.as_ref().is_some_and(|t| t.poll_shed(cx)) {
            self.ticket = None;
            return Poll::Ready(Err(GateError::Shed));
        }
        let done = self.inner.as_mut().poll(cx).map_err(GateError::Inner);
        if done.is_ready() {
            // Authenticated (or failed): no longer the gate's concern.
            self.ticket = None;
        }
        done
    }
}

/// A dial through a gated transport (not gated: the node dials only to
/// answer AutoNAT probes).
pub struct GatedDial<F>(Pin<Box<F>>);

impl<F> std::fmt::Debug for GatedDial<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatedDial")
    }
}

impl<F, O, E> Future for GatedDial<F>
where
    F: Future<Output = Result<O, E>>,
{
    type Output = Result<O, GateError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map_err(GateError::Inner)
    }
}

impl<T> Transport for Gated<T>
where
    T: Transport + Unpin,
    T::Error: 'static,
{
    type Output = T::Output;
    type Error = GateError<T::Error>;
    type ListenerUpgrade = GatedUpgrade<T::ListenerUpgrade>;
    type Dial = GatedDial<T::Dial>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner
            .listen_on(id, addr)
            .map_err(|e| e.map(GateError::Inner))
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        self.inner
            .dial(addr, opts)
            .map(|dial| GatedDial(Box::pin(dial)))
            .map_err(|e| e.map(GateError::Inner))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let event = futures::ready!(Pin::new(&mut self.inner).poll(cx));
        let ticket = match &event {
            TransportEvent::Incoming { send_back_addr, .. } => {
                Source::of(send_back_addr).map(|source| self.gate.admit(source))
            }
            _ => None,
        };
        Poll::Ready(
            event
                .map_upgrade(|upgrade| GatedUpgrade {
                    inner: Box::pin(upgrade),
                    ticket,
                })
                .map_err(GateError::Inner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: &str) -> Source {
        Source(ip.parse().unwrap())
    }

    fn shed(ticket: &Ticket) -> bool {
        ticket.signal.shed.load(Ordering::Acquire)
    }

    #[test]
    fn one_source_over_its_limit_sheds_its_own_oldest() {
        let gate = HandshakeGate::new(GateLimits {
            per_source: 2,
            total: 100,
        });
        let a1 = gate.admit(source("10.0.0.1"));
        let a2 = gate.admit(source("10.0.0.1"));
        let b = gate.admit(source("10.0.0.2"));
        let a3 = gate.admit(source("10.0.0.1"));
        assert!(shed(&a1), "the oldest of the flooding source goes");
        assert!(!shed(&a2) && !shed(&a3) && !shed(&b));
        assert_eq!(gate.pending(), 3);
        assert_eq!(gate.shed_counts().per_source.load(Ordering::Relaxed), 1);
        drop((a1, a2, a3, b));
        assert_eq!(gate.pending(), 0, "dropped tickets free their places");
    }

    #[test]
    fn a_full_gate_sheds_from_the_busiest_source_not_the_newcomer() {
        let gate = HandshakeGate::new(GateLimits {
            per_source: 10,
            total: 4,
        });
        let honest = gate.admit(source("192.0.2.7"));
        let flood: Vec<Ticket> = (0..3).map(|_| gate.admit(source("10.0.0.1"))).collect();
        // Full: a newcomer from a third address pushes out the flood's
        // oldest, never the honest handshake nor itself.
        let newcomer = gate.admit(source("198.51.100.9"));
        assert!(shed(&flood[0]));
        assert!(!shed(&honest) && !shed(&newcomer));
        assert!(!shed(&flood[1]) && !shed(&flood[2]));
        assert_eq!(gate.pending(), 4);
        // Many sources with one each: the oldest goes.
        let spread: Vec<Ticket> = (1..=4)
            .map(|i| gate.admit(source(&format!("10.1.0.{i}"))))
            .collect();
        assert_eq!(gate.pending(), 4);
        assert!(spread.iter().all(|t| !shed(t)), "the newest stay");
    }

    #[test]
    fn quic_newcomers_at_a_bound_prove_their_address_first() {
        let gate = HandshakeGate::new(GateLimits {
            per_source: 2,
            total: 3,
        });
        let admitted = |a: Admission| match a {
            Admission::Admitted(t) => t,
            other => panic!("{other:?}"),
        };
        let a1 = admitted(gate.try_admit(source("10.0.0.1"), false));
        let a2 = admitted(gate.try_admit(source("10.0.0.1"), false));
        // The flooding address at its bound: prove it, then be dropped.
        assert!(matches!(
            gate.try_admit(source("10.0.0.1"), false),
            Admission::ProveAddress
        ));
        assert!(matches!(
            gate.try_admit(source("10.0.0.1"), true),
            Admission::Refused
        ));
        assert!(
            !shed(&a1) && !shed(&a2),
            "nothing is shed for its own newcomers"
        );
        let b = admitted(gate.try_admit(source("10.0.0.2"), false));
        // Full: another address proves itself and takes the busiest's
        // oldest place.
        assert!(matches!(
            gate.try_admit(source("10.0.0.3"), false),
            Admission::ProveAddress
        ));
        let c = admitted(gate.try_admit(source("10.0.0.3"), true));
        assert!(shed(&a1) && !shed(&a2) && !shed(&b) && !shed(&c));
        let counts = gate.shed_counts();
        assert_eq!(counts.retried.load(Ordering::Relaxed), 2);
        assert_eq!(counts.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ipv6_sources_are_their_64_prefix() {
        let a: Multiaddr = "/ip6/2001:db8:1:2:aaaa::1/tcp/1".parse().unwrap();
        let b: Multiaddr = "/ip6/2001:db8:1:2:bbbb::9/tcp/2".parse().unwrap();
        let c: Multiaddr = "/ip6/2001:db8:1:3::1/tcp/2".parse().unwrap();
        assert_eq!(Source::of(&a), Source::of(&b));
        assert_ne!(Source::of(&a), Source::of(&c));
        assert_eq!(Source::of(&a).unwrap().to_string(), "2001:db8:1:2::/64");
        let memory: Multiaddr = "/memory/5".parse().unwrap();
        assert_eq!(Source::of(&memory), None);
    }

    #[test]
    fn a_shed_handshake_fails_and_wakes() {
        let gate = HandshakeGate::new(GateLimits {
            per_source: 1,
            total: 10,
        });
        let mut upgrade = GatedUpgrade {
            inner: Box::pin(futures::future::pending::<Result<(), ()>>()),
            ticket: Some(gate.admit(source("10.0.0.1"))),
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut upgrade).poll(&mut cx).is_pending());
        let _next = gate.admit(source("10.0.0.1"));
        assert!(matches!(
            Pin::new(&mut upgrade).poll(&mut cx),
            Poll::Ready(Err(GateError::Shed))
        ));
        assert_eq!(gate.pending(), 1);
    }
}
