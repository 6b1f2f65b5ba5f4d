//! What the node has done since it started, counted without locks: the
//! directory's requests by kind and how many were refused for the rate.

use std::sync::atomic::{AtomicU64, Ordering};

use messenger_proto::directory::Op;

/// Requests served, by kind.
#[derive(Debug, Default)]
pub struct Counters {
    registrations: AtomicU64,
    resolves: AtomicU64,
    other_requests: AtomicU64,
    rate_limited: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// `register` requests handled.
    pub registrations: u64,
    /// `resolve` requests handled.
    pub resolves: u64,
    /// Every other request handled.
    pub other_requests: u64,
    /// Requests answered `rate_limited` (not handled).
    pub rate_limited: u64,
}

impl Counters {
    /// A request of this kind was handled.
    pub fn handled(&self, op: &Op) {
        let counter = match op {
            Op::Register { .. } => &self.registrations,
            Op::Resolve { .. } => &self.resolves,
            _ => &self.other_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused for the rate.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            registrations: read(&self.registrations),
            resolves: read(&self.resolves),
            other_requests: read(&self.other_requests),
            rate_limited: read(&self.rate_limited),
        }
    }
}
