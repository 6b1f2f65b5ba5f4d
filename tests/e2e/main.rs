//! End-to-end tests: the real `rendezvous` and `messenger` binaries as
//! processes on 127.0.0.1, with ephemeral ports and temporary homes.
//!
//! Run with `cargo test --workspace` so that cargo builds both binaries.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod adversarial;
mod bad_input;
mod buddy;
mod certificates;
mod cluster;
mod directory;
mod edges;
mod files;
mod flood;
mod frontends;
mod hostile;
mod liveness;
// The light clients the attackers are made of.
use messenger::testing::load;
// The real binaries as processes, and servers of the tests' own.
use messenger::testing::{processes as support, servers};
mod messaging;
mod metrics;
mod nat;
mod netlab;
mod restart;
mod shell;
mod strangers;
mod tunnels;
mod window;
mod withdraw;
