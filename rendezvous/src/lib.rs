//! The rendezvous node: a directory of screen names.
//!
//! It records *screen name → owner key → current addresses and presence*
//! and never carries message content. Clients open a directory session
//! (see `docs/protocol.md`), register signed records, and resolve names;
//! then they talk to each other directly.
//!
//! - [`store`]: durable claims (name → owner key) in redb.
//! - [`certify`]: the name certificates handed out with registrations.
//! - [`metrics`]: what the node shows its operator (Prometheus).
//! - [`limits`]: what one peer, one address and everyone may use.
//! - the handshake gate (`messenger_proto::gate`, shared with the client):
//!   what connections cost before they are authenticated.
//! - [`registry`]: the rules and live presence, plain state that answers
//!   with domain outcomes or a typed [`registry::Refusal`] (each with its
//!   wire code); the server's session turns them into replies.
//! - [`shared`]: what the registry shares with the other nodes of a
//!   cluster; [`cluster`] does it over PostgreSQL and NATS.
//! - [`server`]: the libp2p node: an event loop owning the swarm, and one
//!   task per directory session.

mod boxed;
pub mod certify;
pub mod cluster;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod shared;
pub mod store;

pub use limits::Limits;
pub use server::{BindError, Config, RelayLimits, Server};
