//! A token bucket: the rate limit both the node (requests per peer) and the
//! client (messages per peer) apply. Plain state over a caller-given clock,
//! so it is tested without sleeping.

use std::time::Duration;

/// `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Tokens the bucket holds at most (and starts with).
    pub burst: u32,
}

impl Rate {
    /// A rate of `per_second` with bursts of up to `burst`.
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// The bucket. Time is milliseconds on any monotonic clock the caller keeps.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate: Rate, now_ms: u64) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens =
            (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one token if there is one; otherwise says how long until there
    /// is (`Duration::MAX` if the rate is zero).
    pub fn take(&mut self, now_ms: u64) -> Result<(), Duration> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate.per_second <= 0.0 {
            return Err(Duration::MAX);
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(missing / self.rate.per_second))
    }

    /// Whether the bucket is full at `now_ms` (an idle peer's bucket can be
    /// forgotten: a new one would start the same).
    pub fn is_full(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= f64::from(self.rate.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bursts_then_paces() {
        let mut b = TokenBucket::new(Rate::new(10.0, 3), 0);
        assert!(b.take(0).is_ok());
        assert!(b.take(0).is_ok());
        assert!(b.take(0).is_ok());
        let wait = b.take(0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.take(50).is_err());
        assert!(b.take(100).is_ok());
        assert!(!b.is_full(100));
        assert!(b.is_full(400));
    }

    #[test]
    fn zero_rate_never_refills() {
        let mut b = TokenBucket::new(Rate::new(0.0, 1), 0);
        assert!(b.take(0).is_ok());
        assert_eq!(b.take(1_000_000), Err(Duration::MAX));
    }

    #[test]
    fn a_clock_going_back_does_not_mint_tokens() {
        let mut b = TokenBucket::new(Rate::new(1.0, 1), 10_000);
        assert!(b.take(10_000).is_ok());
        assert!(b.take(5_000).is_err());
        assert!(b.take(10_500).is_err());
        assert!(b.take(11_000).is_ok());
    }

    proptest! {
        /// Over any window, no more than burst + rate × window tokens are
        /// handed out, whatever the pattern of requests.
        #[test]
        fn never_more_than_burst_plus_rate(
            per_second in 0.0f64..1000.0,
            burst in 1u32..100,
            gaps in proptest::collection::vec(0u64..50, 1..500),
        ) {
            let mut b = TokenBucket::new(Rate::new(per_second, burst), 0);
            let mut now = 0;
            let mut granted = 0u64;
            for gap in gaps {
                now += gap;
                if b.take(now).is_ok() {
                    granted += 1;
                }
            }
            let allowed = f64::from(burst) + per_second * now as f64 / 1000.0;
            prop_assert!(granted as f64 <= allowed + 1e-6, "{granted} > {allowed}");
        }
    }
}
