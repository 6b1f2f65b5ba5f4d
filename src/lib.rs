//! The messenger client library.
//!
//! A client registers a screen name with a rendezvous node, resolves other
//! names through it, and then talks to peers directly over libp2p streams;
//! the node never carries message content. The `messenger` binary
//! (`src/bin/messenger/`) is one front end on top of this library; the
//! library knows nothing of command lines.
//!
//! # Who owns what
//!
//! - [`agent`]: the home's client. One core task owns all of the client's
//!   state, split by concern, each part with its own state and the
//!   completions of its own sub-tasks: the directory (nodes, the session,
//!   work waiting for it, retries, fail-over, reconnection), the
//!   registration (our record, its renewal, status, certificate, advertised
//!   addresses), contacts (pins, blocks, message requests), what is known
//!   of peers (the one owner of it: delivery workers are told from there
//!   and ask the core to resolve), delivery, files and tunnels. Front ends
//!   reach it through the cloneable [`agent::Agent`] handle.
//! - [`api`]: the command set ([`api::Request`], [`api::Response`], the
//!   [`api::Failure`] kinds each front end renders in its own words) and the
//!   [`api::Snapshot`] a front end starts from.
//! - [`events`]: the one event stream ([`api::Event`]) every front end
//!   sees, numbered in a journal that others follow from a snapshot: every
//!   state change is an event.
//! - [`trust`]: the pins and blocks in force, which files and tunnels ask.
//! - [`network`]: the libp2p node. One event loop owns the swarm; the
//!   [`network::Network`] handle sends it commands.
//! - [`directory`]: a session with the rendezvous node, one task per
//!   session owning its stream.
//! - [`chat`]: sending ([`chat::ChatLink`], one task per stream) and
//!   receiving ([`chat::Inbox`], one task per peer) direct messages.
//! - [`files`]: files offered in messages, served to the key that
//!   acknowledged the offer and fetched (resumed, hash-checked) once
//!   accepted.
//! - [`tunnels`]: connections to a port a contact invited me to, and
//!   pipes, over the direct connection; serving the ones I allow.
//! - [`direct`]: opening a stream to someone by name on a direct
//!   connection (files and tunnels).
//! - [`store`]: the home's contacts, blocks, history and outbox in redb,
//!   owned by a thread of its own ([`store::StoreHandle`]).
//! - [`control`]: the control socket through which other commands reach
//!   the home's running client.
//! - [`home`]: the user's home directory: key file and settings.
//! - [`metrics`]: what a running client counts, for Prometheus.
//! - [`reconnect`]: the jittered pauses between attempts to reach a node.
//! - [`peer`]: what we know of another user, verified.
//! - `ui` (feature `ui`): the buddy-list window's state and drawing, which
//!   the binary runs in a terminal.
//!
//! # How a message flows
//!
//! Sending: a front end asks the agent ([`api::Request::Send`], with an id
//! it chose). The core checks the text and the recipient (resolving it
//! once, if nothing is known of it), stores the message in the outbox,
//! emits [`api::Event::Queued`], and hands its id to the recipient's
//! delivery worker. The worker opens
//! (or reuses) a chat link, which sends our name certificate and then the
//! signed message; when the recipient's acknowledgement comes back, the
//! worker marks the message delivered in the store, answers the request,
//! and emits [`api::Event::Delivered`].
//!
//! Receiving: the inbox's task for the sending peer reads the frame,
//! checks it (form, recipient, text, date, and that the sender's name
//! belongs to the connection's key, by its certificate or by asking the
//! node), checks blocks and pins, has the store keep it durably (as not
//! yet verified, with its signed bytes), and answers with an
//! acknowledgement. Then it checks the signature: a good one makes the
//! stored message received and emits [`api::Event::Message`]; a bad one
//! removes it and resets the peer's streams. (Why the signature may wait
//! until after the acknowledgement: docs/security.md.)
//!
//! The library builds without the `messenger` binary's dependencies:
//! `default-features = false` leaves out the `cli` feature.
//!
//! Wire types, identities and codecs shared with the node live in the
//! `messenger-proto` crate, re-exported as [`proto`].

pub mod agent;
pub mod api;
pub mod chat;
pub mod control;
pub mod direct;
pub mod directory;
pub mod events;
pub mod files;
pub mod home;
pub mod metrics;
pub mod network;
pub mod peer;
pub mod reconnect;
pub mod size;
pub mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod time;
pub mod trust;
pub mod tunnels;
#[cfg(feature = "ui")]
pub mod ui;

pub use messenger_proto as proto;
#[cfg(feature = "web")]
pub mod web;
