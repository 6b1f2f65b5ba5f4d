//! The wire protocol shared by the `messenger` client and the `rendezvous` node.
//!
//! Everything here is plain data and pure functions, apart from I/O: both
//! sides of every protocol depend on the same types, so they cannot drift.
//! The exceptions are [`accept`], the libp2p behaviour both sides use to
//! accept inbound streams without dropping any, [`gate`], the transport
//! wrapper that bounds handshakes in progress, and [`metrics`] (behind
//! the `metrics` feature), the HTTP endpoint both binaries serve their
//! Prometheus metrics on.
//!
//! - [`identity`]: the ed25519 key file every user and node has, and the
//!   libp2p keypair / `PeerId` derived from it.
//! - [`name`]: screen names and their rules.
//! - [`signed`]: domain-separated ed25519 signatures over exact payload bytes.
//! - [`presence`]: statuses and what others are shown.
//! - [`record`]: the signed registration a client gives the rendezvous node.
//! - [`certificate`]: the node's signed word that a name belongs to a key.
//! - [`directory`]: requests and answers of the directory protocol.
//! - [`chat`]: the direct message protocol between two clients.
//! - [`file`]: files offered in messages and fetched directly.
//! - [`tunnel`]: invitations to a port, tunnels and pipes between clients.
//! - [`codec`]: length-prefixed CBOR frames with hard size limits.
//! - [`rate`]: the token bucket behind every rate limit.
//! - [`liveness`]: which connections went silent (on top of libp2p's ping).
//! - [`gate`]: what connections cost before they are authenticated; the
//!   node and the client put their listeners behind it.
//! - `quic` (feature `quic`): libp2p over quinn, the gate deciding on every
//!   Initial before any TLS work (a stateless Retry under load).
//!
//! `docs/protocol.md` in the repository describes the bytes on the wire.

pub mod accept;
pub mod certificate;
pub mod chat;
pub mod codec;
pub mod directory;
pub mod file;
pub mod gate;
pub mod id;
pub mod identity;
pub mod liveness;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod name;
pub mod presence;
#[cfg(feature = "quic")]
pub mod quic;
pub mod rate;
pub mod record;
pub mod signed;
pub mod time;
pub mod tunnel;

pub use identity::Identity;
pub use name::ScreenName;

/// Protocol version announced through libp2p identify by clients and nodes.
/// Announced, never checked: a peer may announce anything (docs §1).
pub const IDENTIFY_PROTOCOL: &str = "/messenger/1.0.0";

/// Tolerated clock difference between two parties, in ms: how far a
/// record's expiry or a message's time may lie ahead of the reader's clock
/// beyond what the protocol allows.
pub const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
