//! A key driven in the test's own process with the library: a peer that
//! does what no `messenger` process would (forge, flood, live on after
//! its name went to another key), against real nodes and clients.

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::chat::MessageId;
use messenger_proto::signed::Signed;
use messenger_proto::time::now_ms;

use crate::chat::ChatLink;
use crate::directory::DirectorySession;
use crate::network::{Network, NetworkConfig, NetworkTask};
use crate::peer::PeerInfo;

/// A key, its network and a directory session with the node.
pub struct Key {
    pub id: Identity,
    pub network: Network,
    pub session: DirectorySession,
    _task: NetworkTask,
}

impl Key {
    /// A fresh key connected to the node at `node`, with no name.
    pub async fn new(node: &Multiaddr) -> Self {
        let id = Identity::generate().unwrap();
        let (network, task, _inbound) = Network::start(&id, NetworkConfig::default()).unwrap();
        let session = DirectorySession::open(&network, node, None).await.unwrap();
        Self {
            id,
            network,
            session,
            _task: task,
        }
    }

    /// [`Key::new`], registered as `name` (online, with `status_text`).
    pub async fn named(node: &Multiaddr, name: &str, status_text: &str) -> Self {
        let key = Self::new(node).await;
        let mut record = super::record(&key.id, name, now_ms() * 1000);
        record.status_text = status_text.into();
        key.session
            .register(record.sign(&key.id), vec![])
            .await
            .unwrap();
        key
    }

    /// `name` as the node resolves it, connected to.
    pub async fn reach(&self, name: &str) -> PeerInfo {
        let info = PeerInfo::from_resolution(&self.session.resolve(name).await.unwrap()).unwrap();
        self.network
            .dial(info.peer_id, info.addrs.clone())
            .await
            .unwrap();
        info
    }

    /// A chat stream to `peer`, with no certificate.
    pub async fn link(&self, peer: PeerId) -> Option<ChatLink> {
        let (_keep, none) = tokio::sync::watch::channel(None);
        ChatLink::open(&self.network, peer, none).await.ok()
    }

    /// A message to `to` signed by this key, claiming to come from `from`.
    pub fn message(&self, from: &str, to: &str, text: &str) -> (MessageId, Signed) {
        let m = super::message(from, to, text);
        (m.id, super::signed(&self.id, &m))
    }
}
