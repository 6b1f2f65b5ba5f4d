//! Admission of connections that have not finished their handshake.
//!
//! Until a connection is authenticated, nothing about it is known but the
//! address it comes from, and it costs a socket, a task and the Noise or
//! TLS state. A stranger can open thousands and never finish (or finish
//! slowly), so this gate bounds them from the moment the transport hands a
//! new connection over (the TCP accept, the first QUIC packet): at most a
//! few per source and a bounded number in all. The rendezvous node puts
//! its listeners behind it, and so does every client: a client's address
//! is in its registration, so anyone who knows a screen name can knock.
//!
//! At a bound the gate has two duties that pull apart. Against a flood it
//! must not let whoever came first hold every place, so it sheds an older
//! handshake for a newcomer: the oldest of the source that holds the most,
//! when that source holds clearly more than the newcomer's (an honest
//! client, whose handshake takes milliseconds, is thereby never the one
//! shed by a flood from other addresses), and any handshake that has had
//! its fair time without finishing (see [`HandshakeGate::stale_after`]:
//! a few times what handshakes take lately, at most
//! [`GateLimits::stale_after`]). But in
//! a reconnect storm, when thousands of honest clients come back at once,
//! shedding handshakes that are merely waiting their turn would throw
//! away work half done and let none finish: so a newcomer that would only
//! displace a young handshake of an address no busier than its own is
//! turned away at once instead (its socket closed: cheap for both sides,
//! and the client backs off).
//!
//! How many handshakes may be in progress at once also follows how fast
//! the node finishes them: about [`PACE_TARGET`]'s worth at the rate
//! measured over the last seconds (never fewer than [`MIN_PENDING`], never
//! more than the configured total). A node that finishes 200 handshakes a
//! second takes on about 200 at a time, each waiting about a second, rather
//! than 512 that would each wait long enough to be shed or to time out.
//! The node then admits handshakes at the rate it can finish them, and
//! turns the excess away at once.
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
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use tracing::debug;

/// How long a handshake should wait for its turn at the node's measured
/// pace: the bound on handshakes in progress is this much of that pace.
pub const PACE_TARGET: Duration = Duration::from_secs(1);

/// Handshakes in progress the gate always allows (within the configured
/// total), whatever the measured pace: a node just started, or idle for
/// long, has measured nothing yet.
pub const MIN_PENDING: usize = 64;

/// A handshake is stale once it has taken this many times what finished
/// handshakes took lately (their median)...
const STALE_FACTOR: u32 = 4;

/// ...but never sooner than this (a slow link, a busy moment)...
pub const MIN_STALE: Duration = Duration::from_millis(500);

/// ...measured over this many finished handshakes, of the last minute.
const DURATIONS_KEPT: usize = 64;
const DURATIONS_FOR: Duration = Duration::from_secs(60);

/// Stale, when no handshake finished lately to measure by: twice the wait
/// the room is sized for. (A node under attack from its start, or after a
/// quiet hour, must not wait for a measure that the attack prevents.)
const UNMEASURED_STALE: Duration = Duration::from_secs(2);

/// What one source address, and everyone together, may have in their
/// handshake at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Handshakes in progress from one source.
    pub per_source: usize,
    /// Handshakes in progress in all.
    pub total: usize,
    /// A handshake older than this has had its time: a newcomer may take
    /// its place.
    pub stale_after: Duration,
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
            Protocol::Ip4(ip) => Some(Self::of_ip(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => Some(Self::of_ip(IpAddr::V6(ip))),
            _ => None,
        })
    }

    /// The source of an IP address. An IPv4 peer on a dual-stack socket
    /// arrives as `::ffff:a.b.c.d`: it is counted as the IPv4 address it
    /// is (as one of `::ffff:0:0/96`'s /64, every IPv4 user would share
    /// one source's bounds).
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
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
    /// QUIC: dropped unanswered, their validated source at its bound, or
    /// every place held by younger handshakes.
    pub refused: AtomicU64,
    /// TCP: closed at once, every place they could take held by younger
    /// handshakes (a storm: the node is busy handshaking).
    pub turned_away: AtomicU64,
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
    /// Handshakes finished lately, per second.
    pace: Pace,
    /// When the last finished handshakes finished and how long each
    /// took, newest last.
    durations: VecDeque<(Instant, Duration)>,
    next_id: u64,
    /// Handshakes in progress, by ticket id (ids grow: oldest first).
    pending: HashMap<u64, Pending>,
    /// Ticket ids per source, oldest first.
    by_source: HashMap<Source, VecDeque<u64>>,
}

/// The rate at which handshakes finish: counted over windows of at least
/// a second, smoothed (what came before weighs half per second of the new
/// window). A window is closed when a handshake finishes and also when one
/// arrives, so the pace decays when handshakes stop finishing (a gate
/// whose every place is held by handshakes that never finish measures
/// zero, not the pace it had before they came).
#[derive(Debug, Default)]
struct Pace {
    window_start: Option<Instant>,
    finished: u32,
    per_second: f64,
}

impl Pace {
    fn finished(&mut self, now: Instant) {
        self.finished += 1;
        self.window_start.get_or_insert(now);
        self.roll(now);
    }

    /// Closes the window if it has lasted a second.
    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let secs = elapsed.as_secs_f64();
        let rate = f64::from(self.finished) / secs;
        let kept = 0.5f64.powf(secs);
        self.per_second = if self.per_second == 0.0 {
            rate
        } else {
            self.per_second * kept + rate * (1.0 - kept)
        };
        self.finished = 0;
        self.window_start = Some(now);
    }
}

#[derive(Debug)]
struct Pending {
    source: Source,
    signal: Arc<ShedSignal>,
    since: Instant,
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
                stale_after: limits.stale_after,
            },
            state: Mutex::default(),
            shed: ShedCounts::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new handshake from `source`, shedding an older one if a
    /// limit is reached and one may be shed (see the module's words), or
    /// turns it away (`None`: its socket is to be closed). The ticket
    /// holds its place until dropped.
    pub fn admit(self: &Arc<Self>, source: Source) -> Option<Ticket> {
        let mut state = self.state();
        if !self.make_room(&mut state, source, Instant::now()) {
            self.shed.turned_away.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.insert(&mut state, source))
    }

    /// Decides on a new QUIC handshake before it costs anything (see
    /// `crate::quic`): below the bounds it is admitted; at one, an
    /// unproven address must prove itself first, a proven one at its own
    /// bound is refused, and a proven one below it takes a place as a TCP
    /// newcomer would, or is refused.
    pub fn try_admit(self: &Arc<Self>, source: Source, validated: bool) -> Admission {
        let mut state = self.state();
        state.pace.roll(Instant::now());
        let from_source = state.count(source);
        let source_full = from_source >= self.limits.per_source;
        let total_full = state.pending.len() >= self.room(&state);
        if source_full || total_full {
            if !validated {
                self.shed.retried.fetch_add(1, Ordering::Relaxed);
                return Admission::ProveAddress;
            }
            if source_full || !self.make_room(&mut state, source, Instant::now()) {
                self.shed.refused.fetch_add(1, Ordering::Relaxed);
                return Admission::Refused;
            }
        }
        Admission::Admitted(self.insert(&mut state, source))
    }

    /// Makes a place for a newcomer from `source` if one is free or may be
    /// taken; false if the newcomer is to be turned away.
    fn make_room(&self, state: &mut State, source: Source, now: Instant) -> bool {
        state.pace.roll(now);
        let from_source = state.count(source);
        if from_source >= self.limits.per_source {
            // Its own handshakes go first; the oldest only once stale.
            if state.oldest_age(source, now) >= self.stale_after_in(state) {
                state.shed_oldest_of(source, Reason::PerSource, &self.shed);
                return true;
            }
            return false;
        }
        if state.pending.len() < self.room(state) {
            return true;
        }
        let Some(busiest) = state.busiest() else {
            return true;
        };
        // A source holding clearly more than the newcomer's gives way (a
        // flood does not crowd out a client); otherwise only a handshake
        // that has had its time does.
        let hoarding = state.count(busiest) >= from_source + 2;
        if hoarding || state.oldest_age(busiest, now) >= self.stale_after_in(state) {
            state.shed_oldest_of(busiest, Reason::Total, &self.shed);
            return true;
        }
        false
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
                since: Instant::now(),
            },
        );
        state.by_source.entry(source).or_default().push_back(id);
        Ticket {
            gate: self.clone(),
            id,
            signal,
        }
    }

    /// How many handshakes may be in progress now: the configured total,
    /// or fewer when the node finishes them slower than that per
    /// [`PACE_TARGET`].
    fn room(&self, state: &State) -> usize {
        if state.pace.per_second == 0.0 {
            return MIN_PENDING.min(self.limits.total);
        }
        let paced = (state.pace.per_second * PACE_TARGET.as_secs_f64()) as usize;
        paced.max(MIN_PENDING).min(self.limits.total)
    }

    /// How many handshakes may be in progress now (see [`Self::room`]).
    pub fn room_now(&self) -> usize {
        let mut state = self.state();
        state.pace.roll(Instant::now());
        self.room(&state)
    }

    /// How long a handshake may go before a newcomer may take its place:
    /// [`STALE_FACTOR`] times the median of what the last finished ones
    /// took, within [`MIN_STALE`] and [`GateLimits::stale_after`]. Honest
    /// handshakes take milliseconds on an idle node and about a second's
    /// wait in a crowd (see [`PACE_TARGET`]), so what is stale follows
    /// the load: a place held by a connection that never finishes, and
    /// given up and taken again every few seconds to look young, is
    /// taken by a newcomer after half a second on an idle node, while in
    /// a reconnect storm work still in its time is kept.
    pub fn stale_after(&self) -> Duration {
        self.stale_after_in(&self.state())
    }

    fn stale_after_in(&self, state: &State) -> Duration {
        let cap = self.limits.stale_after;
        let now = Instant::now();
        let mut lately: Vec<Duration> = state
            .durations
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < DURATIONS_FOR)
            .map(|(_, took)| *took)
            .collect();
        if lately.is_empty() {
            return UNMEASURED_STALE.min(cap);
        }
        lately.sort_unstable();
        let median = lately[lately.len() / 2];
        (median * STALE_FACTOR).clamp(MIN_STALE.min(cap), cap)
    }

    /// Handshakes in progress now.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Handshakes shed so far.
    pub fn shed_counts(&self) -> &ShedCounts {
        &self.shed
    }

    fn release(&self, id: u64, finished: bool) {
        let mut state = self.state();
        if let Some(pending) = state.pending.remove(&id) {
            state.forget(pending.source, id);
            if finished {
                let now = Instant::now();
                state.pace.finished(now);
                if state.durations.len() == DURATIONS_KEPT {
                    state.durations.pop_front();
                }
                state
                    .durations
                    .push_back((now, now.saturating_duration_since(pending.since)));
            }
        }
    }
}

impl State {
    /// Handshakes in progress from `source`.
    fn count(&self, source: Source) -> usize {
        self.by_source.get(&source).map_or(0, VecDeque::len)
    }

    /// How long the oldest handshake of `source` has been going.
    fn oldest_age(&self, source: Source, now: Instant) -> Duration {
        self.by_source
            .get(&source)
            .and_then(|ids| ids.front())
            .and_then(|id| self.pending.get(id))
            .map_or(Duration::ZERO, |p| now.saturating_duration_since(p.since))
    }

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
    pub fn poll_shed(&self, cx: &Context<'_>) -> bool {
        self.signal.waker.register(cx.waker());
        self.signal.shed.load(Ordering::Acquire)
    }
}

impl Ticket {
    /// The handshake finished: it counts towards the pace, and towards
    /// what handshakes take.
    pub fn finished(self) {
        self.gate.release(self.id, true);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A no-op after `finished` released it.
        self.gate.release(self.id, false);
    }
}

/// Why a gated connection failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError<E> {
    /// The gate shed it to make room (a flood from its source, or from
    /// everywhere).
    #[error("shed while still in its handshake: too many handshakes from its address or in all")]
    Shed,
    /// Turned away on arrival: every place was held by handshakes still
    /// in their time (the node is busy; the client backs off).
    #[error("turned away: the node is busy with other handshakes; try again later")]
    Busy,
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

/// An inbound handshake holding its ticket (or, turned away, none: it
/// fails at once and its socket is closed).
pub struct GatedUpgrade<F> {
    inner: Option<Pin<Box<F>>>,
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
            self.inner = None;
            return Poll::Ready(Err(GateError::Shed));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(GateError::Busy));
        };
        let done = inner.as_mut().poll(cx).map_err(GateError::Inner);
        // Authenticated (or failed): no longer the gate's concern.
        match &done {
            Poll::Ready(Ok(_)) => {
                if let Some(ticket) = self.ticket.take() {
                    ticket.finished();
                }
            }
            Poll::Ready(Err(_)) => self.ticket = None,
            Poll::Pending => {}
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
        // `None`: not an address the gate bounds; `Some(None)`: turned away.
        let admission = match &event {
            TransportEvent::Incoming { send_back_addr, .. } => {
                Source::of(send_back_addr).map(|source| self.gate.admit(source))
            }
            _ => None,
        };
        Poll::Ready(
            event
                .map_upgrade(|upgrade| match admission {
                    Some(None) => GatedUpgrade {
                        // Dropped now: the socket closes at once.
                        inner: None,
                        ticket: None,
                    },
                    Some(Some(ticket)) => GatedUpgrade {
                        inner: Some(Box::pin(upgrade)),
                        ticket: Some(ticket),
                    },
                    None => GatedUpgrade {
                        inner: Some(Box::pin(upgrade)),
                        ticket: None,
                    },
                })
                .map_err(GateError::Inner),
        )
    }
}

#[cfg(test)]
mod tests;
