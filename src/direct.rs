//! Opening a stream to someone by name on a *direct* connection: resolve
//! the name through the node, check the key, dial, and, when the only
//! connection goes through the node's relay, wait for hole punching to
//! replace it. Files and tunnels use it: the relay's circuits are small
//! (1 MiB, minutes) and the node must not carry content anyway.

use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};
use messenger_proto::directory::ErrorCode;
use messenger_proto::name::ScreenName;
use messenger_proto::time::now_ms;
use tokio::sync::broadcast::error::RecvError;

use crate::directory::{DirectoryError, DirectorySession};
use crate::network::{Network, NetworkEvent, Path};
use crate::peer::PeerInfo;

/// How long a relayed connection may take to become direct.
pub const DIRECT_WAIT: Duration = Duration::from_secs(20);

/// Why no direct stream could be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectError {
    /// There is no session with the rendezvous node.
    #[error("not connected to the rendezvous node")]
    NoSession,
    /// No such name.
    #[error("{0} is not a registered name")]
    NoSuchName(ScreenName),
    /// The node could not tell.
    #[error("cannot resolve {name}: {reason}")]
    Resolve {
        /// The name.
        name: ScreenName,
        /// Why.
        reason: String,
    },
    /// The name has another key than the one expected.
    #[error("{name} has another key now ({current}) than the one expected ({expected})")]
    OtherKey {
        /// The name.
        name: ScreenName,
        /// The key expected (pinned, or the one that offered).
        expected: PeerId,
        /// The key the node has for it.
        current: PeerId,
    },
    /// Not online.
    #[error("{0} is offline")]
    Offline(ScreenName),
    /// Dialling failed.
    #[error("cannot reach {name}: {reason}")]
    Dial {
        /// The name.
        name: ScreenName,
        /// Why.
        reason: String,
    },
    /// Only a relayed connection, and hole punching did not replace it.
    #[error("this needs a direct connection to {name}, and {reason}")]
    NotDirect {
        /// The name.
        name: ScreenName,
        /// What happened to hole punching.
        reason: String,
    },
    /// The stream could not be opened on the connection.
    #[error("cannot open a {protocol} stream to {name}: {reason}")]
    Stream {
        /// The name.
        name: ScreenName,
        /// The protocol.
        protocol: StreamProtocol,
        /// Why.
        reason: String,
    },
}

/// A stream opened to someone.
#[derive(Debug)]
pub struct Opened {
    /// The stream.
    pub stream: libp2p::Stream,
    /// Their key.
    pub peer_id: PeerId,
}

/// Opens a `protocol` stream to `name` on a direct connection.
/// `expected` is the key they must have (a pinned contact's, an offer's
/// sender); `waiting` is told when hole punching is awaited, and why.
pub async fn open(
    network: &Network,
    session: Option<DirectorySession>,
    name: &ScreenName,
    expected: Option<PeerId>,
    protocol: StreamProtocol,
    waiting: impl FnOnce(String),
) -> Result<Opened, DirectError> {
    let session = session
        .filter(|s| !s.is_closed())
        .ok_or(DirectError::NoSession)?;
    let resolution = session.resolve(name.as_str()).await.map_err(|e| match e {
        DirectoryError::Refused {
            code: ErrorCode::NoSuchName,
            ..
        } => DirectError::NoSuchName(name.clone()),
        e => DirectError::Resolve {
            name: name.clone(),
            reason: e.to_string(),
        },
    })?;
    let info = PeerInfo::from_resolution(&resolution).map_err(|e| DirectError::Resolve {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    if let Some(expected) = expected
        && info.peer_id != expected
    {
        return Err(DirectError::OtherKey {
            name: name.clone(),
            expected,
            current: info.peer_id,
        });
    }
    if !info.dialable(now_ms()) {
        return Err(DirectError::Offline(name.clone()));
    }
    let peer = info.peer_id;
    network
        .dial(peer, info.addrs.clone())
        .await
        .map_err(|e| DirectError::Dial {
            name: name.clone(),
            reason: e.to_string(),
        })?;
    if network.path(peer).await == Some(Path::Relayed) {
        waiting(format!(
            "waiting for a direct connection to {name} (hole punching): this does not go through the node's relay"
        ));
        wait_for_direct(network, peer)
            .await
            .map_err(|reason| DirectError::NotDirect {
                name: name.clone(),
                reason,
            })?;
    }
    let stream = network
        .control()
        .open_stream(peer, protocol.clone())
        .await
        .map_err(|e| DirectError::Stream {
            name: name.clone(),
            protocol,
            reason: e.to_string(),
        })?;
    Ok(Opened {
        stream,
        peer_id: peer,
    })
}

/// Waits (at most [`DIRECT_WAIT`]) for hole punching to `peer` to succeed;
/// the error says what happened instead.
async fn wait_for_direct(network: &Network, peer: PeerId) -> Result<(), String> {
    let mut events = network.events();
    // It may have succeeded between the dial and the subscription.
    if network.path(peer).await == Some(Path::Direct) {
        return Ok(());
    }
    let waited = tokio::time::timeout(DIRECT_WAIT, async {
        loop {
            match events.recv().await {
                Ok(NetworkEvent::HolePunched { peer: p }) if p == peer => return Ok(()),
                Ok(NetworkEvent::HolePunchFailed { peer: p, reason }) if p == peer => {
                    return Err(format!("hole punching failed: {reason}"));
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err("the network stopped".into()),
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        Err(format!(
            "hole punching did not succeed within {}s",
            DIRECT_WAIT.as_secs()
        ))
    })
}
