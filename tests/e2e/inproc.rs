//! A key driven in the test's own process with the library: for the
//! hostile and the stranger tests, which need a peer that does what no
//! `messenger` process would (forge, flood, live on after its name went
//! to another key), against the real node and client processes.

use libp2p::{Multiaddr, PeerId};
use messenger::chat::ChatLink;
use messenger::directory::DirectorySession;
use messenger::network::{Network, NetworkConfig, NetworkTask};
use messenger::peer::PeerInfo;
use messenger::proto::Identity;
use messenger::proto::chat::{Message, MessageId};
use messenger::proto::name::ScreenName;
use messenger::proto::presence::Status;
use messenger::proto::record::Registration;
use messenger::proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger::proto::time::now_ms;

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
        let record = Registration {
            name: ScreenName::parse(name).unwrap(),
            peer_id: key.id.peer_id(),
            addrs: vec![],
            seq: now_ms() * 1000,
            expires_at: now_ms() + 600_000,
            status: Status::Online,
            status_text: status_text.into(),
        }
        .sign(&key.id);
        key.session.register(record, vec![]).await.unwrap();
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
        let m = Message {
            id: MessageId::random(),
            from: ScreenName::parse(from).unwrap(),
            to: ScreenName::parse(to).unwrap(),
            sent_at: now_ms(),
            text: text.into(),
            file: None,
            invite: None,
        };
        (m.id, Signed::sign(&self.id, MESSAGE_CONTEXT, &m))
    }
}
