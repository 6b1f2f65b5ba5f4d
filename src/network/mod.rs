//! The client's libp2p node: one event loop owns the [`Swarm`] and all its
//! state; the cloneable [`Network`] handle sends it commands, and the loop
//! ends when the last handle is dropped.
//!
//! Streams (directory sessions, chat) are opened through `libp2p-stream`
//! controls and accepted through [`accept`], outside the event loop, so
//! message traffic never waits on swarm events.

mod behaviour;
mod event_loop;
mod path;
#[cfg(test)]
mod tests;

pub use path::{Path, Reachability, is_relayed};

use behaviour::{Acceptors, behaviour};
use event_loop::{EventLoop, RELAYED_GRACE, SocketError};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};
use messenger_proto::Identity;
use messenger_proto::accept;
use messenger_proto::gate::{GateLimits, Gated, HandshakeGate};
use messenger_proto::liveness::Liveness;
use messenger_proto::quic::{QuicConfig, QuicTransport};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::metrics::ClientMetrics;
use crate::reconnect::Setback;

/// Why the network could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetworkError {
    /// The event loop has stopped.
    #[error("the network has stopped")]
    Stopped,
    /// Setting up transports failed.
    #[error("transport setup failed: {0}")]
    Transport(String),
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// No address of the peer could be dialled.
    #[error("cannot connect to {peer}: {reason}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// What was tried and how it failed.
        reason: String,
        /// Whether anything answered.
        setback: Setback,
    },
}

/// Knobs of the client network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// How often connections are pinged (TCP and relayed ones: over QUIC
    /// the transport's keep-alives and idle time-out, 5 and
    /// 10 s, do that job).
    pub ping_interval: Duration,
    /// A ping unanswered this long closes the connection. Generous: a busy
    /// machine must not drop healthy connections (a vanished address of
    /// ours is handled at once, without waiting for pings).
    pub ping_timeout: Duration,
    /// How long a connection without streams stays open.
    pub idle_timeout: Duration,
    /// The rendezvous node: our AutoNAT server, and the connection to drop
    /// when one of our addresses goes away.
    pub rendezvous: Option<(PeerId, Multiaddr)>,
    /// Only the in-process memory transport (`/memory/<port>`), for tests:
    /// no sockets at all.
    pub memory_only: bool,
    /// Where the swarm's events are counted, if anywhere.
    pub metrics: Option<Arc<ClientMetrics>>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            rendezvous: None,
            memory_only: false,
            metrics: None,
        }
    }
}

/// Something the network noticed about a peer.
#[derive(Debug, Clone)]
pub enum NetworkEvent {
    /// Hole punching turned a relayed connection into a direct one; the
    /// relayed connections close after a short grace period.
    HolePunched {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer closed. Streams on a connection we
    /// closed ourselves do not always learn it, so their owners listen here.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// Hole punching failed; the peer stays reachable through the relay.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
}

/// What a client accepts from the peers that connect to it, strangers
/// included: enough for every contact at once, not for a flood.
const MAX_INBOUND_CONNECTIONS: u32 = 512;
const MAX_CONNECTIONS_PER_PEER: u32 = 4;

/// Connections in their handshake (inbound), in all and from one source
/// (an IPv4 address or an IPv6 /64): see [`HandshakeGate`].
const MAX_PENDING_INBOUND: usize = 64;
const MAX_PENDING_PER_SOURCE: usize = 8;

/// Time for a handshake, inbound or out: shorter than the node's (10 s),
/// since a client takes few connections and a stalled one holds a place.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A direct QUIC connection silent this long is gone; one quiet this long
/// sends a keep-alive (the transport keeps watch: see `liveness`).
const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(5);
const MAX_STREAMS_PER_CONNECTION: usize = 64;

/// A yamux configuration bounding the streams a peer may open.
fn muxer() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    config
}

/// Chat streams one connection may have open at once, and accepted ones
/// that may wait to be served.
const MAX_CHAT_STREAMS_PER_CONNECTION: usize = 4;
const CHAT_BACKLOG: usize = 256;

/// The queue of inbound chat streams.
pub type ChatStreams = futures::channel::mpsc::Receiver<accept::Incoming>;

/// A queue of inbound streams of one protocol.
pub type Streams = futures::channel::mpsc::Receiver<accept::Incoming>;

/// File streams one connection may have open at once (a peer fetches a
/// few files at a time), and accepted ones that may wait to be served.
const MAX_FILE_STREAMS_PER_CONNECTION: usize = 4;
const FILE_BACKLOG: usize = 64;

/// Tunnel streams one connection may have open at once (each carries one
/// TCP connection of the contact's), and accepted ones that may wait.
const MAX_TUNNEL_STREAMS_PER_CONNECTION: usize = 32;
const TUNNEL_BACKLOG: usize = 64;

/// The inbound streams of each protocol peers open to us, for whoever
/// serves them.
#[derive(Debug)]
pub struct Inbound {
    /// Chat streams (messages).
    pub chat: ChatStreams,
    /// File streams (fetches of what we offered).
    pub files: Streams,
    /// Tunnel streams (to ports we invited contacts to, and pipes).
    pub tunnels: Streams,
}

#[derive(Debug)]
enum Command {
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    Listen {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    /// Close every connection to a peer that goes to none of `addrs` (it
    /// moved).
    DisconnectMoved { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Close every connection to a peer.
    Disconnect { peer: PeerId },
    /// The client moved to another rendezvous node.
    UseNode { node: PeerId, addr: Multiaddr },
    /// How we are connected to a peer.
    Path {
        peer: PeerId,
        reply: oneshot::Sender<Option<Path>>,
    },
}

/// Handle to the client's network event loop.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    reachability: watch::Receiver<Reachability>,
    events: broadcast::Sender<NetworkEvent>,
    local_peer_id: PeerId,
}

/// The event loop's task: its owner waits for it to end (once every
/// [`Network`] handle is gone) or aborts it.
#[derive(Debug)]
pub struct NetworkTask(tokio::task::JoinHandle<()>);

impl NetworkTask {
    /// Waits up to `limit` for the loop to end, then aborts it. True if it
    /// ended by itself.
    pub async fn finish(mut self, limit: Duration) -> bool {
        match tokio::time::timeout(limit, &mut self.0).await {
            Ok(_) => true,
            Err(_) => {
                self.0.abort();
                false
            }
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

/// After hole punching, how long the relayed connection stays open for
/// acknowledgements already on their way.
pub const RELAYED_GRACE_PERIOD: Duration = RELAYED_GRACE;

impl Network {
    /// Builds the swarm for `identity` and spawns its event loop. Returns
    /// the handle, the loop's task, and the queues of inbound streams
    /// (for whoever serves them).
    pub fn start(
        identity: &Identity,
        config: NetworkConfig,
    ) -> Result<(Self, NetworkTask, Inbound), NetworkError> {
        let (chat, chat_streams) = accept::Behaviour::new(
            messenger_proto::chat::PROTOCOL,
            MAX_CHAT_STREAMS_PER_CONNECTION,
            CHAT_BACKLOG,
        );
        let (files, file_streams) = accept::Behaviour::new(
            messenger_proto::file::PROTOCOL,
            MAX_FILE_STREAMS_PER_CONNECTION,
            FILE_BACKLOG,
        );
        let (tunnels, tunnel_streams) = accept::Behaviour::new(
            messenger_proto::tunnel::PROTOCOL,
            MAX_TUNNEL_STREAMS_PER_CONNECTION,
            TUNNEL_BACKLOG,
        );
        let acceptors = Acceptors {
            chat,
            files,
            tunnels,
        };
        let transport_err = |e: &dyn std::fmt::Display| NetworkError::Transport(e.to_string());
        let builder = libp2p::SwarmBuilder::with_existing_identity(identity.keypair()).with_tokio();
        let swarm_config = |c: libp2p::swarm::Config| {
            c.with_idle_connection_timeout(config.idle_timeout)
                // Start writing on a new stream without waiting for the
                // protocol to be confirmed: saves a round trip per stream
                // (our peers speak our protocols, or say no).
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        };
        let swarm = if config.memory_only {
            builder
                .with_other_transport(|key| {
                    use libp2p::Transport as _;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        libp2p::core::transport::MemoryTransport::default()
                            .upgrade(libp2p::core::upgrade::Version::V1)
                            .authenticate(noise::Config::new(key)?)
                            .multiplex(muxer()),
                    )
                })
                .map_err(|e| transport_err(&e))?
                .with_relay_client(noise::Config::new, muxer)
                .map_err(|e| transport_err(&e))?
                .with_behaviour(|key, relay| behaviour(key, relay, acceptors, &config))
                .map_err(|e| transport_err(&e))?
                .with_swarm_config(swarm_config)
                .build()
        } else {
            // Both listeners pass the handshake gate (as the node's do): a
            // client's address is in its registration, so anyone who knows
            // its screen name can open connections that never finish.
            let gate = HandshakeGate::new(GateLimits {
                per_source: MAX_PENDING_PER_SOURCE,
                total: MAX_PENDING_INBOUND,
                stale_after: HANDSHAKE_TIMEOUT / 2,
            });
            builder
                .with_other_transport(|key| {
                    use libp2p::Transport as _;
                    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .map_err(SocketError)
                        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(muxer());
                    let tcp = TransportTimeout::with_ingoing_timeout(tcp, HANDSHAKE_TIMEOUT);
                    let tcp = Gated::new(tcp, gate.clone())
                        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
                    // The gate decides on every Initial before any TLS work:
                    // under load an unproven sender must answer a Retry.
                    let quic = QuicTransport::new(
                        key,
                        QuicConfig {
                            handshake_timeout: HANDSHAKE_TIMEOUT,
                            // What libp2p-quic did: silent for 10 s is gone,
                            // and a keep-alive after 5 s of quiet keeps an
                            // idle connection (the node sends none).
                            idle_timeout: QUIC_IDLE_TIMEOUT,
                            max_streams: MAX_STREAMS_PER_CONNECTION as u32,
                            keep_alive: Some(QUIC_KEEP_ALIVE),
                            reset_label: b"messenger client: QUIC stateless reset",
                        },
                        gate,
                    )?
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        tcp.or_transport(quic).map(|either, _| either.into_inner()),
                    )
                })
                .map_err(|e| transport_err(&e))?
                .with_relay_client(noise::Config::new, muxer)
                .map_err(|e| transport_err(&e))?
                .with_behaviour(|key, relay| behaviour(key, relay, acceptors, &config))
                .map_err(|e| transport_err(&e))?
                .with_swarm_config(swarm_config)
                .build()
        };
        // The node becomes our AutoNAT server once we are connected to it
        // (see `EventLoop::follow_node`).
        let rendezvous = config.rendezvous.clone();
        let control = swarm.behaviour().stream.new_control();
        let local_peer_id = *swarm.local_peer_id();
        let (commands, command_rx) = mpsc::channel(64);
        let (addrs_tx, listen_addrs) = watch::channel(Vec::new());
        let (reach_tx, reachability) = watch::channel(Reachability::Unknown);
        let (events, _) = broadcast::channel(64);
        let event_loop = EventLoop {
            swarm,
            commands: command_rx,
            pending_dials: HashMap::new(),
            pending_listens: HashMap::new(),
            listen_addrs: addrs_tx,
            reachability: reach_tx,
            events: events.clone(),
            paths: HashMap::new(),
            rendezvous,
            relayed_to_close: FuturesUnordered::new(),
            liveness: Liveness::new(config.ping_interval, config.ping_timeout),
            metrics: config.metrics,
        };
        let task = NetworkTask(tokio::spawn(event_loop.run()));
        Ok((
            Self {
                commands,
                control,
                listen_addrs,
                reachability,
                events,
                local_peer_id,
            },
            task,
            Inbound {
                chat: chat_streams,
                files: file_streams,
                tunnels: tunnel_streams,
            },
        ))
    }

    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// A control for opening and accepting streams.
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Starts listening and waits for the first bound address.
    pub async fn listen(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Listen { addr, reply })
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)?
    }

    /// Connects to `peer` at `addrs` (all tried concurrently), unless
    /// already connected. A TCP dial leaves from the listening port (hole
    /// punching needs that), or, when the kernel refuses that port because
    /// another socket holds it, from a new one.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial { peer, addrs, reply })
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)?
    }

    /// `peer` moved to `addrs`: closes every connection to it that goes to
    /// none of them (the next dial goes to the new ones). A connection to
    /// an address it still has stays, with the streams on it (a tunnel,
    /// a transfer).
    pub async fn disconnect_moved(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self
            .commands
            .send(Command::DisconnectMoved { peer, addrs })
            .await;
    }

    /// Closes every connection to `peer`, and with them every stream on
    /// them (tunnels, transfers, chat): its key is no longer trusted with
    /// what it had. It may connect again, and is then judged anew.
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Disconnect { peer }).await;
    }

    /// From now on the rendezvous node is `node` at `addr` (the one we
    /// were given stopped answering).
    pub async fn use_node(&self, node: PeerId, addr: Multiaddr) {
        let _ = self.commands.send(Command::UseNode { node, addr }).await;
    }

    /// The addresses we listen on now, updated as interfaces come and go.
    pub fn listen_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.listen_addrs.clone()
    }

    /// Whether we are reachable, as AutoNAT against the node says.
    pub fn reachability(&self) -> watch::Receiver<Reachability> {
        self.reachability.clone()
    }

    /// Hole-punching outcomes, as they happen.
    pub fn events(&self) -> broadcast::Receiver<NetworkEvent> {
        self.events.subscribe()
    }

    /// How we are connected to `peer` now, if at all.
    pub async fn path(&self, peer: PeerId) -> Option<Path> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Path { peer, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }
}
