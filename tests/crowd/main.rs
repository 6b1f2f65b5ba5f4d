//! End-to-end tests with crowds of clients, in a test binary of their own:
//! cargo runs test binaries one after another, so a crowd of thousands
//! never takes the machine's cores from the timing of the other
//! end-to-end tests (nor they from its bound).
//!
//! Run with `cargo test --workspace` so that cargo builds both binaries.

#![allow(unreachable_pub, clippy::unwrap_used)]

// The light clients the crowd is made of.
use messenger::testing::load;
// The end-to-end tests' process helpers.
use messenger::testing::processes as support;
mod storm;
