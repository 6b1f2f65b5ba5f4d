//! What tests and benchmarks build on (feature `test-utils`): a rendezvous
//! node in this process, agents whose stores are in memory, a key the
//! test drives by hand ([`Key`]), and builders of signed records and
//! messages. One copy, used by the unit tests, the end-to-end tests and
//! the benchmarks alike.
//!
//! Test code: it panics on what a test cannot go on without.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations
)]

/// Headless Chromium under chromedriver, driven by WebDriver (the web
/// window's tests and figures).
pub mod browser;
mod key;
/// Light clients: each its own key and only what the node needs from an
/// online client, so that thousands fit in one process (the benchmarks
/// and the crowd and attack tests).
pub mod load;
/// The real binaries as processes: a node, users with homes of their own,
/// and waits on their output lines (the end-to-end tests).
pub mod processes;
/// PostgreSQL and NATS servers of a test's own, on loopback ports.
pub mod servers;

use libp2p::Multiaddr;
use messenger_proto::Identity;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::name::ScreenName;
use messenger_proto::presence::Status;
use messenger_proto::rate::Rate;
use messenger_proto::record::Registration;
use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger_proto::time::now_ms;
use tokio::sync::mpsc;

pub use key::Key;

use crate::agent::{Agent, AgentConfig};
use crate::api::Event;

/// A rendezvous node in this process, on 127.0.0.1, its data in a
/// temporary directory that lives as long as it does.
pub struct TestNode {
    pub server: rendezvous::Server,
    /// Where clients reach it (ends in `/p2p/<id>`).
    pub addr: Multiaddr,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// A node with a public node's settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A node with `adjust`ed settings.
    pub async fn start_with(adjust: impl FnOnce(&mut rendezvous::Config)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = rendezvous::Config::new(dir.path().join("node"));
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        adjust(&mut config);
        let server = rendezvous::Server::bind(config)
            .await
            .expect("the node starts");
        let addr = server.listen_addrs()[0].clone();
        Self {
            server,
            addr,
            _dir: dir,
        }
    }

    /// Stops the node.
    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// An agent of a fresh key whose store is in memory, registered as `name`
/// and online on loopback, its message rate unbounded; its events go to
/// the returned receiver (which must be read).
pub async fn online_agent(node: &Multiaddr, name: &str) -> (Agent, mpsc::Receiver<Event>) {
    let mut config = AgentConfig::ephemeral(Identity::generate().unwrap(), node.clone()).unwrap();
    config.message_rate = Rate::new(1e9, u32::MAX);
    let (agent, events) = Agent::start(config).await.unwrap();
    agent.register(name).await.unwrap();
    agent
        .go_online(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .await
        .unwrap();
    (agent, events)
}

/// `raw` as a screen name (a valid one: this is test code).
pub fn screen_name(raw: &str) -> ScreenName {
    ScreenName::parse(raw).unwrap()
}

/// A registration of `id` as `name`: online, on no address, valid ten
/// minutes, sequence `seq`.
pub fn record(id: &Identity, name: &str, seq: u64) -> Registration {
    Registration {
        name: ScreenName::parse(name).unwrap(),
        peer_id: id.peer_id(),
        addrs: vec![],
        seq,
        expires_at: now_ms() + 600_000,
        status: Status::Online,
        status_text: String::new(),
    }
}

/// A message to `to` claiming to come from `from`, written now.
pub fn message(from: &str, to: &str, text: &str) -> Message {
    Message {
        id: MessageId::random(),
        from: ScreenName::parse(from).unwrap(),
        to: ScreenName::parse(to).unwrap(),
        sent_at: now_ms(),
        text: text.into(),
        file: None,
        invite: None,
    }
}

/// `message` signed by `id`, as a chat frame carries it.
pub fn signed(id: &Identity, message: &Message) -> Signed {
    Signed::sign(id, MESSAGE_CONTEXT, message)
}
