//! How a client paces its attempts to reach its rendezvous node.
//!
//! When a node restarts, every client it held lost it in the same second;
//! if they all came back on the same schedule the node would meet them all
//! at once, spend its handshakes on connections it must shed, and time out
//! the rest. So every pause is drawn at random below a ceiling that doubles
//! with each failure ("full jitter"): the crowd spreads itself over time,
//! and the node admits it at the rate it can handshake.
//!
//! Two kinds of failure are told apart, because they call for different
//! patience:
//! - the node did not answer at all ([`Setback::Unreachable`]): it is down
//!   or the network is; trying again soon is cheap for everyone;
//! - the node answered and turned us away ([`Setback::TurnedAway`]): a
//!   handshake shed under load, a connection over a limit, a request
//!   refused for the rate or while its store is down. It is alive and
//!   busy: wait longer, so that those it is serving get through.

use std::time::Duration;

use libp2p::swarm::DialError;

/// The first pause after losing a live connection is drawn below this:
/// a crowd that lost its node together comes back spread over it.
pub const LOST_SPREAD: Duration = Duration::from_secs(1);

/// The ceiling of the pause after the first failure to reach a node that
/// did not answer; it doubles with each failure up to [`UNREACHABLE_MAX`].
pub const UNREACHABLE_FIRST: Duration = Duration::from_millis(500);

/// The longest pause while the node does not answer: offline for long, a
/// client tries about twice a minute and otherwise sleeps.
pub const UNREACHABLE_MAX: Duration = Duration::from_secs(30);

/// The ceiling of the pause after a node first turned us away.
pub const TURNED_AWAY_FIRST: Duration = Duration::from_secs(2);

/// The longest pause while the node turns us away.
pub const TURNED_AWAY_MAX: Duration = Duration::from_secs(60);

/// Why an attempt to reach the node failed, as far as pacing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setback {
    /// Nothing answered: the node is down, or the network is.
    Unreachable,
    /// The node answered and turned us away (shed, refused, busy).
    TurnedAway,
}

impl Setback {
    /// What a failed dial says: a connection refused, a host or network
    /// unreachable, or a dial that timed out had no answer; anything that
    /// failed after the node answered (a handshake cut short, a
    /// connection closed at once, a QUIC connection refused) was the node
    /// turning us away.
    pub fn of_dial(error: &DialError) -> Self {
        match error {
            DialError::Transport(attempts) => {
                let unreachable = attempts.iter().any(|(_, e)| {
                    let e: &(dyn std::error::Error + 'static) = e;
                    nothing_answered(e)
                });
                if unreachable {
                    Setback::Unreachable
                } else {
                    Setback::TurnedAway
                }
            }
            // Denied by our own limits, or the node's id did not match:
            // retrying sooner would not help.
            _ => Setback::TurnedAway,
        }
    }
}

/// Whether an error, or one of its causes, says that nothing answered.
fn nothing_answered(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | HostUnreachable
                    | NetworkUnreachable
                    | TimedOut
                    | AddrNotAvailable
            ) {
                return true;
            }
        }
        // QUIC says "timed out" in its own words (no answer to Initials).
        let text = e.to_string();
        if text.contains("timed out") || text.contains("Timeout") || text.contains("timeout") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The pauses between attempts to reach a node.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Failures in a row since the last success.
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// No failure yet.
    pub fn new() -> Self {
        Self { failures: 0 }
    }

    /// Reached the node: the next failure starts from the bottom again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The pause before the first attempt after losing a live connection.
    pub fn after_loss(&mut self) -> Duration {
        self.failures = 0;
        jitter(LOST_SPREAD)
    }

    /// The pause after a failed attempt.
    pub fn after(&mut self, setback: Setback) -> Duration {
        let ceiling = self.ceiling(setback);
        self.failures = self.failures.saturating_add(1);
        jitter(ceiling)
    }

    /// The ceiling of the next pause after `setback`.
    pub fn ceiling(&self, setback: Setback) -> Duration {
        let (first, max) = match setback {
            Setback::Unreachable => (UNREACHABLE_FIRST, UNREACHABLE_MAX),
            Setback::TurnedAway => (TURNED_AWAY_FIRST, TURNED_AWAY_MAX),
        };
        let doublings = self.failures.min(16);
        first.saturating_mul(1 << doublings).min(max)
    }
}

/// A pause drawn evenly from [ceiling / 8, ceiling): never zero, so that
/// even the unluckiest draw does not knock at once.
fn jitter(ceiling: Duration) -> Duration {
    let floor = ceiling / 8;
    let spread = ceiling - floor;
    // A failed draw falls back to the middle: still bounded, rarely hit.
    let unit = getrandom::u64().map_or(0.5, |r| (r >> 11) as f64 / (1u64 << 53) as f64);
    floor + spread.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_their_caps_and_reset() {
        let mut backoff = Backoff::new();
        assert_eq!(backoff.ceiling(Setback::Unreachable), UNREACHABLE_FIRST);
        assert_eq!(backoff.ceiling(Setback::TurnedAway), TURNED_AWAY_FIRST);
        for _ in 0..3 {
            let pause = backoff.after(Setback::Unreachable);
            assert!(pause < UNREACHABLE_MAX);
        }
        assert_eq!(backoff.ceiling(Setback::Unreachable), UNREACHABLE_FIRST * 8);
        assert_eq!(backoff.ceiling(Setback::TurnedAway), TURNED_AWAY_FIRST * 8);
        for _ in 0..40 {
            backoff.after(Setback::TurnedAway);
        }
        assert_eq!(backoff.ceiling(Setback::Unreachable), UNREACHABLE_MAX);
        assert_eq!(backoff.ceiling(Setback::TurnedAway), TURNED_AWAY_MAX);
        backoff.succeeded();
        assert_eq!(backoff.ceiling(Setback::Unreachable), UNREACHABLE_FIRST);
    }

    #[test]
    fn pauses_spread_over_their_range() {
        let ceiling = Duration::from_secs(8);
        let draws: Vec<Duration> = (0..2_000).map(|_| jitter(ceiling)).collect();
        assert!(draws.iter().all(|d| *d >= ceiling / 8 && *d < ceiling));
        // Evenly spread: each eighth of the range above the floor gets a
        // share near 1/7 of the draws (2,000 draws: ~286 each).
        for k in 1..8 {
            let (lo, hi) = (ceiling * k / 8, ceiling * (k + 1) / 8);
            let n = draws.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((180..400).contains(&n), "{n} draws in [{lo:?}, {hi:?})");
        }
        let mut backoff = Backoff::new();
        let lost: Vec<Duration> = (0..100).map(|_| backoff.after_loss()).collect();
        assert!(lost.iter().all(|d| *d < LOST_SPREAD));
        assert!(
            lost.iter().any(|d| *d < LOST_SPREAD / 2) && lost.iter().any(|d| *d > LOST_SPREAD / 2)
        );
    }

    #[test]
    fn a_refused_dial_is_unreachable_and_a_cut_handshake_is_turned_away() {
        use libp2p::core::transport::TransportError;
        let addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let dial = |e: std::io::Error| {
            DialError::Transport(vec![(addr.clone(), TransportError::Other(e))])
        };
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Setback::of_dial(&dial(refused)), Setback::Unreachable);
        // An upgrade failure wraps its cause, as libp2p's boxed transports do.
        let cut = std::io::Error::other(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert_eq!(Setback::of_dial(&dial(cut)), Setback::TurnedAway);
        let timed_out = std::io::Error::other(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(Setback::of_dial(&dial(timed_out)), Setback::Unreachable);
    }
}
