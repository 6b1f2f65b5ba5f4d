//! The client's libp2p node: one event loop owns the [`Swarm`] and all its
//! state; the cloneable [`Network`] handle sends it commands, and the loop
//! ends when the last handle is dropped.
//!
//! Streams (directory sessions, chat) are opened through `libp2p-stream`
//! controls and accepted through [`accept`], outside the event loop, so
//! message traffic never waits on swarm events.

mod path;

pub use path::{Path, Reachability, is_relayed};

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::ConnectedPoint;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, identify, noise, ping, relay, tcp, yamux};
use messenger_proto::Identity;
use messenger_proto::accept;
use messenger_proto::gate::{GateLimits, Gated, HandshakeGate};
use messenger_proto::liveness::{Liveness, transport_keeps_watch};
use messenger_proto::quic::{QuicConfig, QuicTransport};
use messenger_proto::record::without_peer_suffix;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

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

/// The behaviours that accept inbound streams, one per protocol.
struct Acceptors {
    chat: accept::Behaviour,
    files: accept::Behaviour,
    tunnels: accept::Behaviour,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First, so a connection over a limit is refused before the others
    /// spend anything on it.
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    /// Pings TCP connections and relayed circuits; direct QUIC ones keep
    /// watch themselves (keep-alives and an idle time-out).
    ping: messenger_proto::liveness::ping::Behaviour,
    /// Outbound streams of every protocol.
    stream: libp2p_stream::Behaviour,
    /// Inbound chat streams (libp2p-stream would drop some under a burst).
    chat: accept::Behaviour,
    /// Inbound file streams.
    files: accept::Behaviour,
    /// Inbound tunnel streams.
    tunnels: accept::Behaviour,
    /// Reserve a slot on the node's relay when we are not reachable.
    relay_client: relay::client::Behaviour,
    /// Upgrade relayed connections to direct ones by hole punching.
    dcutr: dcutr::Behaviour,
    /// Ask the node to dial us back, to learn whether we are reachable.
    autonat: autonat::Behaviour,
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

/// After hole punching, how long the relayed connection stays open for
/// acknowledgements already on their way.
const RELAYED_GRACE: Duration = Duration::from_secs(1);

/// A dial someone waits for.
#[derive(Debug)]
struct PendingDial {
    reply: oneshot::Sender<Result<(), NetworkError>>,
    /// The peer and addresses to dial again from a new port, if the
    /// listening port turns out to be taken (a dial that left from it).
    again: Option<(PeerId, Vec<Multiaddr>)>,
}

/// Whether a dial failed only because its local port is in use (held by
/// a socket that does not share it).
fn address_in_use(error: &libp2p::swarm::DialError) -> bool {
    let libp2p::swarm::DialError::Transport(errors) = error else {
        return false;
    };
    !errors.is_empty() && errors.iter().all(|(_, e)| in_use(e))
}

/// Whether `error`, or an error it wraps, is an I/O error "address in
/// use". (An `io::Error` wrapping another is walked into by hand: its
/// `source` skips the error it wraps.)
fn in_use(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::AddrInUse {
            return true;
        }
        if let Some(inner) = io.get_ref() {
            return in_use(inner);
        }
    }
    error.source().is_some_and(in_use)
}

/// An error of the TCP socket itself, kept findable as the source of the
/// layers above it: the upgrades' `Either` errors pass `source()` through
/// to their inner error's source, which skips one level, so a bare
/// `io::Error` at the bottom would never be seen by [`in_use`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SocketError(#[source] std::io::Error);

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

/// The behaviours of a client, whatever its transports.
fn behaviour(
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

/// How a peer is reached, from its connections (true: relayed).
/// One connection to a peer, as the event loop keeps it.
struct Conn {
    /// Through the relay.
    relayed: bool,
    /// The peer's address on it, without our `/p2p` suffix: what it
    /// registers, when we dialled it (or it dialled from its listening
    /// port, as our clients do).
    remote: Multiaddr,
}

fn path_of(connections: &HashMap<ConnectionId, Conn>) -> Option<Path> {
    if connections.is_empty() {
        None
    } else if connections.values().any(|c| !c.relayed) {
        Some(Path::Direct)
    } else {
        Some(Path::Relayed)
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pending_dials: HashMap<ConnectionId, PendingDial>,
    pending_listens: HashMap<
        libp2p::core::transport::ListenerId,
        (Multiaddr, oneshot::Sender<Result<(), NetworkError>>),
    >,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    reachability: watch::Sender<Reachability>,
    events: broadcast::Sender<NetworkEvent>,
    /// Open connections per peer, and whether each is relayed.
    paths: HashMap<PeerId, HashMap<ConnectionId, Conn>>,
    /// The rendezvous node, and the address we were given for it.
    rendezvous: Option<(PeerId, Multiaddr)>,
    /// Relayed connections to close once hole punching's grace is over.
    relayed_to_close: FuturesUnordered<Pin<Box<dyn Future<Output = PeerId> + Send>>>,
    /// Connections that stopped answering pings are closed by this: it
    /// keeps the promise of `interval + timeout` whatever the pings' own
    /// failures say.
    liveness: Liveness,
    metrics: Option<Arc<ClientMetrics>>,
}

impl EventLoop {
    /// After hole punching, streams should use the direct connection:
    /// close the relayed ones (a message in flight on them is resent).
    fn drop_relayed(&mut self, peer: PeerId) {
        let relayed: Vec<ConnectionId> = self
            .paths
            .get(&peer)
            .map(|c| {
                c.iter()
                    .filter(|(_, c)| c.relayed)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        for id in relayed {
            self.swarm.close_connection(id);
        }
    }

    async fn run(mut self) {
        let mut liveness_check = tokio::time::interval(self.liveness.check_every());
        liveness_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nobody can use the network any more.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(peer) = self.relayed_to_close.next(), if !self.relayed_to_close.is_empty() => {
                    self.drop_relayed(peer);
                }
                _ = liveness_check.tick(), if !self.liveness.is_empty() => {
                    for connection in self.liveness.overdue(std::time::Instant::now()) {
                        info!(?connection, "no ping answered within the ping interval + timeout; closing the connection");
                        self.swarm.close_connection(connection);
                    }
                }
            }
        }
        debug!("network event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { peer, addrs, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let again = Some((peer, addrs.clone()));
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::Always)
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, PendingDial { reply, again });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Dial {
                            peer,
                            reason: e.to_string(),
                            setback: Setback::of_dial(&e),
                        }));
                    }
                }
            }
            Command::DisconnectMoved { peer, addrs } => {
                let stale: Vec<ConnectionId> = self
                    .paths
                    .get(&peer)
                    .map(|c| {
                        c.iter()
                            .filter(|(_, conn)| !addrs.contains(&conn.remote))
                            .map(|(id, _)| *id)
                            .collect()
                    })
                    .unwrap_or_default();
                for id in stale {
                    self.swarm.close_connection(id);
                }
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Path { peer, reply } => {
                let _ = reply.send(self.paths.get(&peer).and_then(path_of));
            }
            Command::UseNode { node, addr } => {
                if let Some((old, _)) = self.rendezvous.take() {
                    self.swarm.behaviour_mut().autonat.remove_server(&old);
                }
                let connected = self.swarm.is_connected(&node);
                self.rendezvous = Some((node, addr));
                self.follow_node(node, connected);
            }
            Command::Listen { addr, reply } => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.pending_listens.insert(id, (addr, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(NetworkError::Listen {
                        addr,
                        reason: e.to_string(),
                    }));
                }
            },
        }
    }

    /// The node is our AutoNAT server only while we are connected to it:
    /// AutoNAT v1 retries a probe at once when it cannot reach its server,
    /// which without a network (the dial fails at once) is a busy loop.
    fn follow_node(&mut self, peer: PeerId, connected: bool) {
        let Some((node, addr)) = &self.rendezvous else {
            return;
        };
        if peer != *node {
            return;
        }
        let autonat = &mut self.swarm.behaviour_mut().autonat;
        if connected {
            autonat.add_server(peer, Some(addr.clone()));
        } else {
            autonat.remove_server(&peer);
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            metrics.swarm_event(&event);
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.identify(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.ping(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => metrics.dcutr(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection,
                result: Ok(_),
                ..
            })) => self.liveness.alive(connection, std::time::Instant::now()),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if !transport_keeps_watch(&endpoint) {
                    self.liveness
                        .watch(connection_id, std::time::Instant::now());
                }
                let relayed = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => is_relayed(address),
                    ConnectedPoint::Listener { local_addr, .. } => is_relayed(local_addr),
                };
                debug!(%peer_id, addr = %endpoint.get_remote_address(), relayed, "connected");
                let remote = without_peer_suffix(endpoint.get_remote_address());
                let connections = self.paths.entry(peer_id).or_default();
                connections.insert(connection_id, Conn { relayed, remote });
                if connections.len() == 1 {
                    self.follow_node(peer_id, true);
                }
                if let Some(pending) = self.pending_dials.remove(&connection_id) {
                    let _ = pending.reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(PendingDial { reply, again }) =
                    self.pending_dials.remove(&connection_id)
                {
                    // TCP dials leave from the listening port (hole punching
                    // needs that), and the kernel refuses to bind one there
                    // while another socket holds that port number without
                    // sharing it (on a busy machine, another program's
                    // connection). Then once more from a new port. (A
                    // connection between the same two ports, open or
                    // closing, is "address not available", which the TCP
                    // transport gets round by itself.)
                    if let Some((peer, addrs)) = again.filter(|_| address_in_use(&error)) {
                        debug!(%peer, "the listening port is in use; dialling from a new port");
                        let opts = DialOpts::peer_id(peer)
                            .addresses(addrs)
                            .condition(PeerCondition::Always)
                            .allocate_new_port()
                            .build();
                        let id = opts.connection_id();
                        match self.swarm.dial(opts) {
                            Ok(()) => {
                                self.pending_dials
                                    .insert(id, PendingDial { reply, again: None });
                                return;
                            }
                            Err(e) => {
                                let _ = reply.send(Err(NetworkError::Dial {
                                    peer,
                                    reason: e.to_string(),
                                    setback: Setback::of_dial(&e),
                                }));
                                return;
                            }
                        }
                    }
                    let peer = peer_id.unwrap_or(PeerId::random());
                    let _ = reply.send(Err(NetworkError::Dial {
                        peer,
                        reason: error.to_string(),
                        setback: Setback::of_dial(&error),
                    }));
                }
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                let why = std::error::Error::source(&cause)
                    .map_or_else(|| cause.to_string(), ToString::to_string);
                warn!(from = %send_back_addr, "connection refused: {why}");
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                info!(%address, "listening");
                self.listen_addrs.send_modify(|addrs| {
                    if !addrs.contains(&address) {
                        addrs.push(address)
                    }
                });
                if let Some((_, reply)) = self.pending_listens.remove(&listener_id) {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "no longer listening");
                self.listen_addrs
                    .send_modify(|addrs| addrs.retain(|a| a != &address));
                // An address of ours went away: the connection to the node
                // may have used it. Reconnect rather than wait for pings.
                if !is_relayed(&address)
                    && let Some((node, _)) = self.rendezvous
                    && self.swarm.disconnect_peer_id(node).is_ok()
                {
                    info!("an address went away: reconnecting to the rendezvous node");
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
            } => {
                self.listen_addrs
                    .send_modify(|addrs| addrs.retain(|a| !addresses.contains(a)));
                if let Some((addr, reply)) = self.pending_listens.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "listener closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    let _ = reply.send(Err(NetworkError::Listen { addr, reason }));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some((addr, reply)) = self.pending_listens.remove(&listener_id) {
                    let _ = reply.send(Err(NetworkError::Listen {
                        addr,
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(ping::Failure::Other { error }),
            })) => {
                // The peer ended the stream (reset it, closed it early): it
                // is there. Silence is the liveness rule's to judge.
                debug!(%peer, %connection, "a ping's stream failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) => {
                info!(%peer, "ping failed ({e}); closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                num_established,
                ..
            } => {
                self.liveness.closed(connection_id);
                debug!(%peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.follow_node(peer_id, false);
                    let _ = self
                        .events
                        .send(NetworkEvent::Disconnected { peer: peer_id });
                }
                if let Some(connections) = self.paths.get_mut(&peer_id) {
                    connections.remove(&connection_id);
                    if connections.is_empty() {
                        self.paths.remove(&peer_id);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let reachability = match new {
                    autonat::NatStatus::Public(addr) => {
                        info!(%addr, "reachable directly");
                        Reachability::Public
                    }
                    autonat::NatStatus::Private => {
                        info!("behind NAT: not reachable directly");
                        Reachability::Private
                    }
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                self.reachability.send_replace(reachability);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    info!(peer = %remote_peer_id, "hole punching succeeded: direct connection");
                    self.relayed_to_close.push(Box::pin(async move {
                        tokio::time::sleep(RELAYED_GRACE).await;
                        remote_peer_id
                    }));
                    let _ = self.events.send(NetworkEvent::HolePunched {
                        peer: remote_peer_id,
                    });
                }
                Err(e) => {
                    warn!(peer = %remote_peer_id, "hole punching failed: {e}");
                    let _ = self.events.send(NetworkEvent::HolePunchFailed {
                        peer: remote_peer_id,
                        reason: e.to_string(),
                    });
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                debug!(?event, "relay client");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::TransportError;
    use libp2p::swarm::DialError;

    fn failed(kinds: &[std::io::ErrorKind]) -> DialError {
        DialError::Transport(
            kinds
                .iter()
                .map(|kind| {
                    // As the TCP transport wraps it.
                    let inner = std::io::Error::from(*kind);
                    (
                        "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                        TransportError::Other(std::io::Error::other(inner)),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn only_a_port_in_use_makes_a_dial_leave_from_another() {
        use std::io::ErrorKind::{AddrInUse, ConnectionRefused};
        assert!(address_in_use(&failed(&[AddrInUse])));
        assert!(address_in_use(&failed(&[AddrInUse, AddrInUse])));
        assert!(
            !address_in_use(&failed(&[AddrInUse, ConnectionRefused])),
            "an address that refuses is no reason to try from another port"
        );
        assert!(!address_in_use(&failed(&[ConnectionRefused])));
        assert!(!address_in_use(&failed(&[])));
        assert!(!address_in_use(&DialError::Aborted));
    }

    async fn tcp_port(network: &Network) -> u16 {
        let mut addrs = network.listen_addrs();
        let found = addrs
            .wait_for(|addrs| !addrs.is_empty())
            .await
            .expect("the network runs");
        found
            .iter()
            .find_map(|addr| {
                addr.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                    _ => None,
                })
            })
            .expect("a TCP listening address")
    }

    /// A peer that answers one ping per stream and then no more on it,
    /// as js-libp2p does in effect (it aborts an inbound ping stream a
    /// fixed time after it opened): pings on a stream each keep the
    /// connection, where pings on one reused stream would go unanswered
    /// and the connection be closed as silent.
    #[tokio::test]
    async fn pings_on_a_stream_each_keep_a_peer_that_answers_one_per_stream() {
        use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
        use libp2p::Transport as _;

        let mut peer = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| {
                libp2p::core::transport::MemoryTransport::default()
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise::Config::new(key).unwrap())
                    .multiplex(libp2p::yamux::Config::default())
            })
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let mut incoming = peer
            .behaviour()
            .new_control()
            .accept(messenger_proto::liveness::ping::PROTOCOL)
            .unwrap();
        peer.listen_on("/memory/0".parse().unwrap()).unwrap();
        let addr = loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                peer.select_next_some().await
            {
                break address;
            }
        };
        let peer_id = *peer.local_peer_id();
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&answered);
        let serving = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = peer.select_next_some() => {}
                    Some((_, mut stream)) = incoming.next() => {
                        let mut ping = [0u8; 32];
                        if stream.read_exact(&mut ping).await.is_ok()
                            && stream.write_all(&ping).await.is_ok()
                            && stream.flush().await.is_ok()
                        {
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Open, and never read again.
                        held.push(stream);
                    }
                }
            }
        });

        let config = NetworkConfig {
            memory_only: true,
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(300),
            ..NetworkConfig::default()
        };
        let (network, _task, _) = Network::start(&Identity::generate().unwrap(), config).unwrap();
        let mut events = network.events();
        network.dial(peer_id, vec![addr]).await.unwrap();
        // Ten intervals and then some: a reused stream would have gone
        // unanswered from the second ping, and the connection closed
        // after interval + timeout.
        let watched = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Ok(NetworkEvent::Disconnected { peer }) = events.recv().await
                    && peer == peer_id
                {
                    return;
                }
            }
        })
        .await;
        assert!(watched.is_err(), "the connection was closed as silent");
        assert!(network.path(peer_id).await.is_some(), "still connected");
        let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            answered >= 8,
            "{answered} pings answered, each on a stream of its own"
        );
        serving.abort();
    }

    #[tokio::test]
    async fn a_dial_refused_its_listening_port_leaves_from_a_new_one() {
        let start =
            || Network::start(&Identity::generate().unwrap(), NetworkConfig::default()).unwrap();
        let (alice, _alice_task, _) = start();
        let (bob, _bob_task, _) = start();
        alice
            .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .await
            .unwrap();
        bob.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .await
            .unwrap();
        let (alice_port, bob_port) = (tcp_port(&alice).await, tcp_port(&bob).await);

        // A socket on alice's listening port at another loopback address
        // that does not share its port (no SO_REUSEADDR), as another
        // program's may: the kernel refuses to bind a dial to 0.0.0.0 on
        // that port, "address in use".
        let holder = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        let elsewhere: std::net::SocketAddr = ([127, 0, 0, 2], alice_port).into();
        holder.bind(&elsewhere.into()).unwrap();

        let bob_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{bob_port}").parse().unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            alice.dial(bob.local_peer_id(), vec![bob_addr]),
        )
        .await
        .expect("the dial ends")
        .expect("the dial leaves from a new port and connects");
        drop(holder);
    }
}
