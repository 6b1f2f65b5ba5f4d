//! The messenger client library.
//!
//! A client registers a screen name with a rendezvous node, resolves other
//! names through it, and then talks to peers directly over libp2p streams;
//! the node never carries message content.
//!
//! - [`network`]: the libp2p node, an event loop owning the swarm, and its
//!   cloneable handle.
//! - [`directory`]: a directory session with the rendezvous node.
//! - [`chat`]: sending ([`chat::ChatLink`]) and receiving ([`chat::Inbox`])
//!   direct messages.
//! - [`client`]: the [`Client`] that ties them together (no local state).
//! - [`store`]: the home's contacts, blocks, history and outbox.
//! - [`agent`]: a client plus its store: outbox delivery, pinned contacts,
//!   presence; what every command runs on.
//! - [`control`]: the socket through which commands reach a running client.
//! - [`home`]: the user's home directory: key file and config.
//! - [`cli`] and [`demo`]: the `messenger` command line.
//!
//! Wire types, identities and codecs shared with the node live in the
//! `messenger-proto` crate, re-exported as [`proto`].

pub mod agent;
pub mod chat;
pub mod cli;
pub mod client;
pub mod control;
pub mod demo;
pub mod directory;
pub mod home;
pub mod network;
pub mod store;
pub mod time;

pub use client::{Client, ClientError, ClientEvent, PeerInfo, SendError, SendReport};
pub use messenger_proto as proto;
