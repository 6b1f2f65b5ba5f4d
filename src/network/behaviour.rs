//! The behaviours a client's swarm runs, and the streams it accepts.

use std::time::Duration;

use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, dcutr, identify, relay};
use messenger_proto::accept;

use super::{MAX_CONNECTIONS_PER_PEER, MAX_INBOUND_CONNECTIONS, NetworkConfig};

/// The behaviours that accept inbound streams, one per protocol.
pub(super) struct Acceptors {
    pub(super) chat: accept::Behaviour,
    pub(super) files: accept::Behaviour,
    pub(super) tunnels: accept::Behaviour,
}

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// First, so a connection over a limit is refused before the others
    /// spend anything on it.
    pub(super) limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    /// Pings TCP connections and relayed circuits; direct QUIC ones keep
    /// watch themselves (keep-alives and an idle time-out).
    pub(super) ping: messenger_proto::liveness::ping::Behaviour,
    /// Outbound streams of every protocol.
    pub(super) stream: libp2p_stream::Behaviour,
    /// Inbound chat streams (libp2p-stream would drop some under a burst).
    pub(super) chat: accept::Behaviour,
    /// Inbound file streams.
    pub(super) files: accept::Behaviour,
    /// Inbound tunnel streams.
    pub(super) tunnels: accept::Behaviour,
    /// Reserve a slot on the node's relay when we are not reachable.
    pub(super) relay_client: relay::client::Behaviour,
    /// Upgrade relayed connections to direct ones by hole punching.
    pub(super) dcutr: dcutr::Behaviour,
    /// Ask the node to dial us back, to learn whether we are reachable.
    pub(super) autonat: autonat::Behaviour,
}

/// The behaviours of a client, whatever its transports.
pub(super) fn behaviour(
    key: &libp2p::identity::Keypair,
    relay_client: relay::client::Behaviour,
    acceptors: Acceptors,
    config: &NetworkConfig,
) -> Behaviour {
    Behaviour {
        limits: connection_limits::Behaviour::new(
            // Connections in their handshake are bounded by the gate, which
            // sheds a flood's instead of refusing newcomers.
            ConnectionLimits::default()
                .with_max_established_incoming(Some(MAX_INBOUND_CONNECTIONS))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
        ),
        identify: identify::Behaviour::new(
            identify::Config::new(messenger_proto::IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(format!("messenger/{}", env!("CARGO_PKG_VERSION"))),
        ),
        ping: messenger_proto::liveness::ping::Behaviour::new(
            messenger_proto::liveness::ping::Schedule {
                interval: config.ping_interval,
                timeout: config.ping_timeout,
            },
        ),
        stream: libp2p_stream::Behaviour::new(),
        chat: acceptors.chat,
        files: acceptors.files,
        tunnels: acceptors.tunnels,
        relay_client,
        dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
        autonat: autonat::Behaviour::new(
            key.public().to_peer_id(),
            autonat::Config {
                // Ask only the rendezvous node, soon and often enough to
                // follow address changes.
                use_connected: false,
                boot_delay: Duration::from_millis(100),
                retry_interval: Duration::from_secs(1),
                refresh_interval: Duration::from_secs(60),
                // At most one probe a second, whatever fails: AutoNAT v1
                // retries a failed request at once, and would spin on a
                // server it cannot reach.
                throttle_server_period: Duration::from_secs(1),
                timeout: Duration::from_secs(10),
                confidence_max: 1,
                only_global_ips: false,
                ..autonat::Config::default()
            },
        ),
    }
}
