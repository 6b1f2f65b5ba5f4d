//! The node: one event loop owns the swarm; each directory session runs in
//! its own task against the shared [`Registry`].

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::ListenerId;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ListenError;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, Swarm, Transport as _, autonat, identify, memory_connection_limits,
    noise, ping, relay, tcp, yamux,
};
use messenger_proto::Identity;
use messenger_proto::accept;
use messenger_proto::codec::{self, CodecError};
use messenger_proto::directory::{self, ErrorCode, Op, Reply, Request, Response};
use messenger_proto::identity::{IdentityError, PeerKey, create_private_dir};
use messenger_proto::liveness::{Liveness, transport_keeps_watch};
use messenger_proto::metrics::MetricsServer;
use messenger_proto::time::now_ms;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, instrument, warn};

use crate::boxed::BoxedHandlers;
use crate::certify::Certifier;
use crate::cluster::claims::PgStore;
use crate::cluster::{Cluster, ClusterError};
use crate::limits::{self, Limits, PeerBudget, RequestLimiter};
use crate::metrics::{CounterSnapshot, NodeMetrics};
use crate::registry::{Registry, SessionId, Signer};
use crate::store::{ClaimStore, RedbStore, StoreError};
use messenger_proto::gate::{GateLimits, Gated, HandshakeGate};
use messenger_proto::quic::{QuicConfig, QuicTransport};

/// How long a finished session may take to flush its last frames.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepted directory streams waiting for their session task to start.
const SESSION_BACKLOG: usize = 1024;

/// How long the node tries to dial a client back for an AutoNAT probe.
const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(4);

/// Everything the node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on; port 0 picks a free port.
    pub listen: Vec<Multiaddr>,
    /// Where the node keeps its key and its claims.
    pub data_dir: PathBuf,
    /// How often each TCP connection is pinged.
    pub ping_interval: Duration,
    /// A connection silent for `ping_interval` + this is closed (and so
    /// are the sessions on it: the owner goes offline): over TCP when no
    /// ping was answered in that time, over QUIC by its idle time-out.
    pub ping_timeout: Duration,
    /// A connection without any open stream is closed after this long.
    pub idle_timeout: Duration,
    /// What one peer, one address and everyone together may use.
    pub limits: Limits,
    /// A name whose owner has not registered it for this long is released.
    pub name_lease: Duration,
    /// Limits of the circuit relay for clients behind NAT.
    pub relay: RelayLimits,
    /// Addresses at which others reach the node, if its listen addresses
    /// are not (port forwarding, a wildcard listen address).
    pub external: Vec<Multiaddr>,
    /// How long the name certificates the node hands out are valid.
    pub certificate_validity: Duration,
    /// The key that signs name certificates, if not the node's own: the
    /// nodes of a cluster share one, so that their clients accept each
    /// other's certificates.
    pub certificate_key: Option<PathBuf>,
    /// Where claims are kept: `None` is the embedded store in the data
    /// dir; a `postgres://` URL is a database shared with other nodes.
    pub store: Option<String>,
    /// NATS (`nats://host:port`), through which the nodes sharing the
    /// store tell each other of presence changes. Needs `store`.
    pub presence: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Host names the metrics endpoint answers to, besides IP addresses
    /// and localhost.
    pub metrics_hosts: Vec<String>,
}

/// What the node's circuit relay v2 server allows. The defaults carry
/// hole-punch handshakes and the messages of peers whose NAT defeats hole
/// punching, not bulk traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once (one per client behind NAT).
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the client renews it.
    pub reservation_duration: Duration,
    /// Circuits open at once.
    pub max_circuits: usize,
    /// Circuits one peer may have open.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may stay open.
    pub max_circuit_duration: Duration,
    /// How many bytes one circuit may carry (each direction).
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_reservations_per_peer: 2,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: 256,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(10 * 60),
            max_circuit_bytes: 1 << 20,
        }
    }
}

impl RelayLimits {
    fn config(&self) -> relay::Config {
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            ..relay::Config::default()
        }
    }
}

impl Config {
    /// The default port of a rendezvous node.
    pub const DEFAULT_PORT: u16 = 4001;

    /// Defaults: TCP and QUIC on port 4001 on all IPv4 interfaces.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: Self::default_listen(),
            data_dir,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            name_lease: Duration::from_secs(180 * 24 * 60 * 60),
            relay: RelayLimits::default(),
            external: Vec::new(),
            certificate_validity: Duration::from_millis(
                messenger_proto::certificate::DEFAULT_VALIDITY_MS,
            ),
            certificate_key: None,
            store: None,
            presence: None,
            metrics: None,
            metrics_hosts: Vec::new(),
        }
    }

    /// TCP and QUIC on [`Self::DEFAULT_PORT`], all interfaces.
    pub fn default_listen() -> Vec<Multiaddr> {
        let port = Self::DEFAULT_PORT;
        [
            format!("/ip4/0.0.0.0/tcp/{port}"),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        ]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The data directory cannot be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The node's key file is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The claim store cannot be opened.
    #[error("claim store: {0}")]
    Store(#[from] StoreError),
    /// The node cannot join its cluster.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The store and presence options do not go together.
    #[error("{0}")]
    Options(String),
    /// The metrics endpoint cannot listen.
    #[error(transparent)]
    Metrics(#[from] messenger_proto::metrics::MetricsError),
    /// The transports could not be set up.
    #[error("transport setup failed: {0}")]
    Transport(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // The limits come first: they refuse a connection before the others
    // spend anything on it.
    connection_limits: connection_limits::Behaviour,
    per_ip: limits::PerIpLimit,
    memory: memory_connection_limits::Behaviour,
    identify: identify::Behaviour,
    /// Pings TCP connections; QUIC ones keep watch themselves.
    ping: messenger_proto::liveness::ping::Behaviour,
    /// Directory sessions, handed to the session tasks.
    sessions: accept::Behaviour,
    /// Circuit relay v2 server for clients behind NAT.
    relay: relay::Behaviour,
    /// Answers clients' "can you dial me back?" probes.
    autonat: autonat::Behaviour,
}

/// A running rendezvous node.
#[derive(Debug)]
pub struct Server {
    peer_id: PeerId,
    registry: Arc<Registry>,
    metrics: Arc<NodeMetrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    listen_addrs: Vec<Multiaddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Opens the data dir, starts listening, and returns once every listen
    /// address is known.
    pub async fn bind(config: Config) -> Result<Self, BindError> {
        create_private_dir(&config.data_dir).map_err(|source| BindError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let identity = Identity::load_or_create(&config.data_dir.join("node.key"))?;
        let signer = match &config.certificate_key {
            Some(path) => Identity::load_or_create(path)?,
            None => identity.clone(),
        };
        let (registry, cluster) = open_directory(&config, &identity, &signer).await?;
        let registry = Arc::new(registry);
        let stop_cluster = tokio_util::sync::CancellationToken::new();
        let followed = cluster.as_ref().map(|c| (c.followed(), c.unsigned()));
        let cluster = cluster
            .map(|cluster| tokio::spawn(cluster.run(registry.clone(), stop_cluster.clone())));

        let gate = HandshakeGate::new(GateLimits {
            per_source: config.limits.max_pending_per_ip as usize,
            total: config.limits.max_pending_connections as usize,
            // Half the time a handshake is allowed: one still going then
            // is stalled or starved, and may give its place up.
            stale_after: config.limits.handshake_timeout / 2,
        });
        let mut metrics_registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(NodeMetrics::new(&mut metrics_registry, &registry, &gate));
        if let Some((followed, unsigned)) = followed {
            metrics_registry.register(
                "rendezvous_cluster_followed_names",
                "Names whose changes on other nodes this node follows (subscriptions on NATS): \
                 names its sessions watch that somebody claimed",
                followed,
            );
            metrics_registry.register(
                "rendezvous_cluster_unsigned",
                "Presence notes and announcements read from NATS and ignored: not signed with \
                 the cluster's certificate key",
                unsigned,
            );
        }
        // Bound before the node listens, so that a taken port fails the
        // start instead of leaving a node nobody can watch.
        let scrapes = match config.metrics {
            Some(addr) => Some(
                MetricsServer::bind(addr, Arc::new(metrics_registry))
                    .await?
                    .allow_hosts(config.metrics_hosts.iter().cloned()),
            ),
            None => None,
        };
        let metrics_addr = scrapes.as_ref().and_then(MetricsServer::local_addr);
        let (mut swarm, incoming) = build_swarm(&identity, &config, &gate)?;
        let listen_addrs = listen(&mut swarm, &config.listen).await?;
        // The relay tells clients where it can be reached: its specific
        // listen addresses and whatever the operator declared.
        for addr in listen_addrs.iter().filter(|a| !is_unspecified(a)) {
            swarm.add_external_address(addr.clone());
        }
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }
        let peer_id = *swarm.local_peer_id();
        let listen_addrs = listen_addrs
            .into_iter()
            .map(|a| a.with(Protocol::P2p(peer_id)))
            .collect();

        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let sessions = Arc::new(SessionEnv {
            registry: registry.clone(),
            requests: RequestLimiter::new(config.limits.requests, config.limits.sender_checks),
            max_frame: config.limits.max_frame,
            certifier: Certifier::new(signer, config.certificate_validity),
            metrics: metrics.clone(),
        });
        let event_loop = EventLoop {
            swarm,
            liveness: Liveness::new(config.ping_interval, config.ping_timeout),
            gate,
            shed_reported: [0; 5],
            registry: registry.clone(),
            incoming: Some(incoming),
            sessions,
            name_lease: config.name_lease,
            cluster: cluster.map(|task| (task, stop_cluster)),
            metrics: metrics.clone(),
            scrapes,
        };
        let task = tokio::spawn(event_loop.run(shutdown_rx));
        Ok(Self {
            peer_id,
            registry,
            metrics,
            metrics_addr,
            listen_addrs,
            shutdown: Some(shutdown_tx),
            task,
        })
    }

    /// The node's peer id (stable: its key is in the data dir).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The directory itself, for in-process tools (benchmarks preload it).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// What the node has served so far.
    pub fn counters(&self) -> CounterSnapshot {
        self.metrics.snapshot()
    }

    /// Where the node serves its metrics, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Stops the node: marks everyone offline, closes connections, and
    /// waits for the event loop to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Err(e) = (&mut self.task).await {
            warn!("event loop ended abnormally: {e}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The registry over the configured store, and the cluster to join if the
/// node shares its directory.
async fn open_directory(
    config: &Config,
    identity: &Identity,
    signer: &Identity,
) -> Result<(Registry, Option<Cluster>), BindError> {
    let max_names = config.limits.max_names_per_key;
    let Some(url) = &config.store else {
        if config.presence.is_some() {
            return Err(BindError::Options(
                "presence across nodes needs a store they share: add --store postgres://…".into(),
            ));
        }
        let store = RedbStore::open(&config.data_dir.join("claims.redb"))?
            .with_max_names_per_key(max_names);
        info!(claims = store.len()?, "claim store opened");
        let store: Arc<dyn ClaimStore> = Arc::new(store);
        return Ok((Registry::new(store), None));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(BindError::Options(format!(
            "--store {url:?}: the store is a PostgreSQL URL (postgres://user:password@host:5432/db); leave it out for the embedded store"
        )));
    }
    let pool = crate::cluster::postgres::connect(url).await?;
    let store = PgStore::new(pool.clone(), tokio::runtime::Handle::current())
        .with_max_names_per_key(max_names);
    let claims = store.count().await?;
    info!(claims, "claim store opened (PostgreSQL)");
    let store: Arc<dyn ClaimStore> = Arc::new(store);
    let registry = Registry::new(store);
    match &config.presence {
        None => Ok((registry, None)),
        Some(nats) => {
            if config.certificate_key.is_none() {
                return Err(BindError::Options(
                    "presence across nodes needs the certificate key the nodes share \
                     (--certificate-key FILE, the same file on every node): what they tell each \
                     other over NATS is signed with it"
                        .into(),
                ));
            }
            let cluster =
                Cluster::join(pool, identity.peer_id().to_string(), nats, signer.clone()).await?;
            let shared = cluster.shared();
            Ok((registry.with_shared(shared), Some(cluster)))
        }
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn build_swarm(
    identity: &Identity,
    config: &Config,
    gate: &Arc<HandshakeGate>,
) -> Result<
    (
        Swarm<BoxedHandlers<Behaviour>>,
        futures::channel::mpsc::Receiver<accept::Incoming>,
    ),
    BindError,
> {
    let (sessions, incoming) = accept::Behaviour::new(
        directory::PROTOCOL,
        config.limits.max_sessions_per_connection,
        SESSION_BACKLOG,
    );
    let limits = &config.limits;
    let ping = messenger_proto::liveness::ping::Schedule {
        interval: config.ping_interval,
        timeout: config.ping_timeout,
    };
    let gate = gate.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.keypair())
        .with_tokio()
        // Both transports pass the handshake gate, which bounds what
        // unauthenticated connections cost per address and in all.
        .with_other_transport(|key| {
            // TCP with an outgoing timeout: the node dials only to answer
            // AutoNAT probes, and a dial-back into a NAT that silently
            // drops it must fail in seconds, not after the kernel's minutes
            // of retries. Inbound handshakes are bounded too, so a peer
            // that connects and stalls holds its place for seconds only.
            let mut muxer = yamux::Config::default();
            muxer.set_max_num_streams(limits.max_streams_per_connection as usize);
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .upgrade(upgrade::Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(muxer);
            let tcp = TransportTimeout::with_outgoing_timeout(tcp, DIAL_BACK_TIMEOUT);
            let tcp = TransportTimeout::with_ingoing_timeout(tcp, limits.handshake_timeout);
            let tcp = Gated::new(tcp, gate.clone())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            let quic = QuicTransport::new(
                key,
                QuicConfig {
                    // As for TCP: a dial-back into a silent NAT fails fast.
                    handshake_timeout: DIAL_BACK_TIMEOUT,
                    // The same promise as the pings over TCP: silent for
                    // interval + timeout, closed. The node does not ping
                    // QUIC connections (see `liveness::ping`), nor send
                    // keep-alives: under QUIC's idle rule a keep-alive of
                    // its own would restart that count (silence noticed
                    // only after keep-alive + time-out), and clients send
                    // theirs (after 5 s of quiet).
                    idle_timeout: config.ping_interval + config.ping_timeout,
                    max_streams: limits.max_streams_per_connection,
                    keep_alive: None,
                    reset_label: b"messenger rendezvous: QUIC stateless reset",
                },
                gate,
            )?
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(tcp.or_transport(quic).map(
                |either, _| match either {
                    futures::future::Either::Left(out) | futures::future::Either::Right(out) => out,
                },
            ))
        })
        .map_err(|e| BindError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            BoxedHandlers(Behaviour {
                // Pending connections are bounded by the handshake gate, which
                // sheds instead of refusing newcomers.
                connection_limits: connection_limits::Behaviour::new(
                    ConnectionLimits::default()
                        .with_max_established_incoming(Some(limits.max_connections))
                        .with_max_established_per_peer(Some(limits.max_connections_per_peer)),
                ),
                per_ip: limits::PerIpLimit::new(limits.max_connections_per_ip),
                memory: memory_connection_limits::Behaviour::with_max_bytes(limits.max_memory),
                identify: identify::Behaviour::new(
                    identify::Config::new(
                        messenger_proto::IDENTIFY_PROTOCOL.to_owned(),
                        key.public(),
                    )
                    .with_agent_version(format!("rendezvous/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: messenger_proto::liveness::ping::Behaviour::new(ping),
                sessions,
                relay: relay::Behaviour::new(key.public().to_peer_id(), config.relay.config()),
                autonat: autonat::Behaviour::new(
                    key.public().to_peer_id(),
                    autonat::Config {
                        // The node only answers probes; it does not probe itself.
                        use_connected: false,
                        // Clients on private networks get honest answers too.
                        only_global_ips: false,
                        ..autonat::Config::default()
                    },
                ),
            })
        })
        .map_err(|e| BindError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok((swarm, incoming))
}

/// Starts every listener and waits for the addresses they bound.
async fn listen(
    swarm: &mut Swarm<BoxedHandlers<Behaviour>>,
    addrs: &[Multiaddr],
) -> Result<Vec<Multiaddr>, BindError> {
    let mut waiting: HashSet<ListenerId> = HashSet::new();
    let mut ids = Vec::new();
    for addr in addrs {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| BindError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        waiting.insert(id);
        ids.push((id, addr.clone()));
    }
    let addr_of = |id: ListenerId| {
        ids.iter()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(Multiaddr::empty)
    };
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Wait for one address per listener, then take whatever else the
    // listeners report within 50 ms (a wildcard address yields one per
    // interface). The 50 ms run from the last listener's first address, not
    // from the last event: a node restarted under a crowd of reconnecting
    // clients has events without pause.
    let mut settled: Option<tokio::time::Instant> = None;
    loop {
        let wait = if waiting.is_empty() {
            *settled.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_millis(50))
        } else {
            deadline
        };
        let event = match tokio::time::timeout_at(wait, swarm.select_next_some()).await {
            Ok(event) => event,
            Err(_) if waiting.is_empty() => {
                // In the order the listen addresses were given.
                bound.sort_by_key(|(index, _)| *index);
                return Ok(bound.into_iter().map(|(_, addr)| addr).collect());
            }
            Err(_) => {
                let id = waiting.iter().next().copied();
                return Err(BindError::Listen {
                    addr: id.map(addr_of).unwrap_or_else(Multiaddr::empty),
                    reason: "no address reported within 10 s".into(),
                });
            }
        };
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                waiting.remove(&listener_id);
                let index = ids.iter().position(|(i, _)| *i == listener_id);
                bound.push((index.unwrap_or(usize::MAX), address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                return Err(BindError::Listen {
                    addr: addr_of(listener_id),
                    reason: match reason {
                        Ok(()) => "listener closed".into(),
                        Err(e) => e.to_string(),
                    },
                });
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                return Err(BindError::Listen {
                    addr: addr_of(listener_id),
                    reason: error.to_string(),
                });
            }
            other => debug!(?other, "event while binding"),
        }
    }
}

struct EventLoop {
    swarm: Swarm<BoxedHandlers<Behaviour>>,
    /// Connections that stopped answering pings are closed by this, not by
    /// libp2p-ping's report (which needs two failures in a row).
    liveness: Liveness,
    gate: Arc<HandshakeGate>,
    /// Gate counts at the last report.
    shed_reported: [u64; 5],
    registry: Arc<Registry>,
    incoming: Option<futures::channel::mpsc::Receiver<accept::Incoming>>,
    sessions: Arc<SessionEnv>,
    name_lease: Duration,
    /// The task keeping this node in step with its cluster, and its stop.
    cluster: Option<(JoinHandle<()>, tokio_util::sync::CancellationToken)>,
    metrics: Arc<NodeMetrics>,
    /// The metrics endpoint, served while the loop runs.
    scrapes: Option<MetricsServer>,
}

/// What every directory session shares.
#[derive(Debug)]
struct SessionEnv {
    registry: Arc<Registry>,
    requests: Arc<RequestLimiter>,
    max_frame: usize,
    certifier: Certifier,
    metrics: Arc<NodeMetrics>,
}

/// How long a stopping node may take to tell its cluster it leaves.
const CLUSTER_LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often names past their lease are looked for.
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Starts a task per directory session, apart from the swarm's event loop
/// so that sessions never wait behind swarm events. Dropping this task
/// aborts every session.
async fn accept_sessions(
    mut incoming: futures::channel::mpsc::Receiver<accept::Incoming>,
    env: Arc<SessionEnv>,
) {
    let mut sessions = tokio::task::JoinSet::new();
    let mut next_session: SessionId = 0;
    loop {
        tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(accept::Incoming { peer, stream, slot, gone, .. }) => {
                    next_session += 1;
                    let env = env.clone();
                    sessions.spawn(async move {
                        serve_session(peer, stream, gone, env, next_session).await;
                        drop(slot);
                    });
                }
                None => break,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

impl EventLoop {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        // The first tick is at once: leases that ran out while the node was
        // down are released at start.
        let mut lease_sweep = tokio::time::interval(
            LEASE_SWEEP_INTERVAL
                .min(self.name_lease)
                .max(Duration::from_secs(1)),
        );
        let accepting = self
            .incoming
            .take()
            .map(|incoming| tokio::spawn(accept_sessions(incoming, self.sessions.clone())));
        // Scrapes are answered for as long as the loop runs.
        let scrapes = self.scrapes.take().map(MetricsServer::run);
        let scrapes = async move {
            match scrapes {
                Some(serving) => serving.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(scrapes);
        let mut liveness_check = tokio::time::interval(self.liveness.check_every());
        liveness_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The lease sweep in progress, if one is: owned here, never two at
        // once, and waited for before the node says it stopped.
        let mut lease_sweeping: Option<tokio::task::JoinHandle<usize>> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                () = &mut scrapes => {}
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = liveness_check.tick() => {
                    for connection in self.liveness.overdue(std::time::Instant::now()) {
                        info!(?connection, "no ping answered within the ping interval + timeout; closing the connection");
                        self.swarm.close_connection(connection);
                    }
                }
                _ = sweep.tick() => {
                    let expired = self.registry.sweep(now_ms());
                    if expired > 0 {
                        info!(expired, "dropped expired registrations");
                    }
                    self.report_shedding();
                }
                _ = lease_sweep.tick() => {
                    // A sweep still running (a slow store) is not doubled:
                    // this tick is skipped, the next one tries again.
                    if lease_sweeping.as_ref().is_none_or(|s| s.is_finished()) {
                        let registry = self.registry.clone();
                        let lease = self.name_lease;
                        // Off the event loop: it scans and writes the store.
                        lease_sweeping = Some(tokio::task::spawn_blocking(move || {
                            registry.release_unused(lease, now_ms())
                        }));
                    }
                }
            }
        }
        // A blocking task cannot be stopped: the sweep ends by itself, and
        // the store is not left to it after the node stopped.
        if let Some(sweeping) = lease_sweeping.take() {
            let _ = sweeping.await;
        }
        info!(online = self.registry.online_count(), "shutting down");
        if let Some(accepting) = accepting {
            accepting.abort();
            let _ = accepting.await;
        }
        let registry = self.registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.all_offline(now_ms())).await;
        if let Some((task, stop)) = self.cluster.take() {
            // It tells the others that this node's users went offline.
            stop.cancel();
            let _ = tokio::time::timeout(CLUSTER_LEAVE_TIMEOUT, task).await;
        }
    }

    /// Says, at most every few seconds, how many handshakes the gate shed:
    /// a flood is worth a line, not a line per connection.
    fn report_shedding(&mut self) {
        let counts = self.gate.shed_counts();
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let now = [
            read(&counts.per_source),
            read(&counts.total),
            read(&counts.retried),
            read(&counts.refused),
            read(&counts.turned_away),
        ];
        let delta: Vec<u64> = now
            .iter()
            .zip(self.shed_reported)
            .map(|(n, before)| n - before)
            .collect();
        if delta.iter().any(|d| *d > 0) {
            warn!(
                shed_per_address = delta[0],
                shed_all_full = delta[1],
                quic_retried = delta[2],
                quic_dropped = delta[3],
                turned_away = delta[4],
                pending = self.gate.pending(),
                "turned away connections that had not finished their handshake (a flood, or a crowd reconnecting?)"
            );
        }
        self.shed_reported = now;
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.swarm_event(&event);
        match &event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.metrics.identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.metrics.ping(e),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => self.metrics.relay(e),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => self.metrics.autonat(e),
            _ => {}
        }
        match event {
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
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection,
                result: Ok(_),
                ..
            })) => self.liveness.alive(connection, std::time::Instant::now()),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                if !transport_keeps_watch(&endpoint) {
                    self.liveness
                        .watch(connection_id, std::time::Instant::now());
                }
                debug!(%peer_id, addr = %endpoint.get_remote_address(), "connection established")
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                connection_id,
                ..
            } => {
                self.liveness.closed(connection_id);
                debug!(%peer_id, ?cause, "connection closed")
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening on a new address")
            }
            SwarmEvent::IncomingConnectionError {
                error: ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                // The limit that refused it says why.
                let why = std::error::Error::source(&cause)
                    .map_or_else(|| cause.to_string(), ToString::to_string);
                warn!(from = %send_back_addr, "connection refused: {why}");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!("incoming connection failed: {error}")
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => match event {
                relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                    info!(peer = %src_peer_id, "relay reservation accepted")
                }
                relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                    warn!(peer = %src_peer_id, "relay reservation denied (over a limit)")
                }
                relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                } => debug!(src = %src_peer_id, dst = %dst_peer_id, "relay circuit opened"),
                relay::Event::CircuitReqDenied {
                    src_peer_id,
                    dst_peer_id,
                    ..
                } => {
                    warn!(src = %src_peer_id, dst = %dst_peer_id, "relay circuit denied (over a limit)")
                }
                relay::Event::CircuitClosed {
                    src_peer_id,
                    dst_peer_id,
                    error,
                } => debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay circuit closed"),
                other => debug!(?other, "relay"),
            },
            _ => {}
        }
    }
}

/// Serves one directory session until the client closes it or the
/// connection dies; then whatever it registered goes offline.
///
/// Requests are handled one after another; answers and presence pushes
/// share the stream, written by one writer task.
#[instrument(skip(stream, gone, env), fields(%peer))]
async fn serve_session(
    peer: PeerId,
    stream: Stream,
    gone: accept::ConnectionGone,
    env: Arc<SessionEnv>,
    session: SessionId,
) {
    debug!("directory session opened");
    let _open = env.metrics.session_opened();
    let registry = &env.registry;
    let budget = env.requests.session(peer);
    // Decoded once: every registration of the session is checked with it.
    let key = PeerKey::of(peer);
    let (mut reader, writer) = stream.split();
    let pushes = registry.open_session(session);
    // Boxed: a tokio channel allocates slots in blocks of 32, and a block of
    // unboxed responses would cost every session kilobytes while idle.
    let (answers, answer_rx) = mpsc::channel::<Box<Response>>(4);
    let writing = tokio::spawn(write_session(writer, answer_rx, pushes, env.clone(), peer));
    tokio::pin!(gone);
    loop {
        // A stream whose connection the node closed (a silent peer's) is
        // never woken again: its connection's end ends the session.
        let frame = tokio::select! {
            frame = codec::read_frame(&mut reader, env.max_frame) => frame,
            () = &mut gone => {
                debug!("the session's connection closed");
                break;
            }
        };
        let request: Request = match frame {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(CodecError::Io(e)) => {
                debug!("directory session ended: {e}");
                break;
            }
            Err(e) => {
                warn!("closing directory session: {e}");
                let reply = Reply::error(ErrorCode::Malformed, e.to_string());
                env.metrics.answered("unreadable", &reply);
                let _ = answers
                    .send(Box::new(Response {
                        id: directory::PUSH_ID,
                        reply,
                    }))
                    .await;
                break;
            }
        };
        let op = request.op.kind();
        // Look-ups a client makes to check who sent it a message are
        // charged apart: what strangers send a user must not use up the
        // user's own requests (docs/protocol.md §5.3).
        let sender_check = matches!(
            request.op,
            Op::Resolve {
                sender_check: true,
                ..
            }
        );
        let spent = match &request.op {
            _ if sender_check => budget.spend_sender_check(),
            // A watch costs by its names: one request, plus one for every
            // WATCH_NAMES_PER_REQUEST names (256, the most one request
            // carries: 17 of a burst of 100; a session's 1,024: 68), so
            // that names watched cost their sessions, not the node.
            Op::Watch { names } => budget.spend_n(watch_cost(names.len())),
            _ => budget.spend(),
        };
        let reply = match spent {
            Ok(()) => {
                let signer = Signer {
                    peer,
                    key: key.as_ref(),
                };
                // Boxed: the future of a request (a registration holds
                // its record and claim) would otherwise be part of every
                // idle session's state.
                Box::pin(handle(signer, session, request.op, &env)).await
            }
            Err(wait) => rate_limited(&budget, wait, sender_check),
        };
        env.metrics.answered(op, &reply);
        if answers
            .send(Box::new(Response {
                id: request.id,
                reply,
            }))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(answers);
    // What it registered goes offline now, not after our last frames are
    // flushed: on a dead connection that could take long.
    let ended = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.session_ended(session, now_ms()))
    };
    drop(budget);
    let _ = ended.await;
    let mut writing = writing;
    if tokio::time::timeout(SESSION_CLOSE_TIMEOUT, &mut writing)
        .await
        .is_err()
    {
        debug!("the session's last frames could not be written in time");
        writing.abort();
    }
    debug!("directory session closed");
}

/// Writes answers as they come and pushes presence changes of watched
/// names, until the reader side is done.
async fn write_session(
    mut writer: futures::io::WriteHalf<Stream>,
    mut answers: mpsc::Receiver<Box<Response>>,
    pushes: Arc<crate::registry::PushQueue>,
    env: Arc<SessionEnv>,
    viewer: PeerId,
) {
    let registry = &env.registry;
    loop {
        let (frames, pushed): (Vec<Response>, bool) = tokio::select! {
            answer = answers.recv() => match answer {
                Some(answer) => (vec![*answer], false),
                None => break,
            },
            _ = pushes.changed() => (pushes
                .take()
                .into_iter()
                .filter_map(|name| match registry.view(&name, viewer, now_ms()) {
                    Ok(Some(resolution)) => Some(Response { id: directory::PUSH_ID, reply: Reply::Presence(resolution) }),
                    Ok(None) => None,
                    Err(e) => {
                        warn!(%name, "cannot read presence to push: {e}");
                        None
                    }
                })
                .collect::<Vec<_>>(), true),
        };
        let pushed = if pushed { frames.len() } else { 0 };
        for frame in frames {
            if let Err(e) = codec::write_frame(&mut writer, &frame, directory::MAX_FRAME).await {
                debug!("directory session ended while writing: {e}");
                return;
            }
        }
        env.metrics.pushed(pushed);
    }
    let _ = futures::AsyncWriteExt::close(&mut writer).await;
}

/// Names a watch request carries for the price of one request.
const WATCH_NAMES_PER_REQUEST: usize = 16;

/// What a watch of `names` names costs of its peer's request budget.
fn watch_cost(names: usize) -> u32 {
    u32::try_from(1 + names / WATCH_NAMES_PER_REQUEST).unwrap_or(u32::MAX)
}

/// The answer to a request over the peer's budget.
fn rate_limited(budget: &PeerBudget, wait: Duration, sender_check: bool) -> Reply {
    let (rate, what) = if sender_check {
        (budget.sender_check_rate(), "sender checks")
    } else {
        (budget.rate(), "requests")
    };
    warn!(sender_check, "request refused: over the rate limit");
    Reply::error(
        ErrorCode::RateLimited,
        format!(
            "too many {what}: a peer may make {} per second, in bursts of up to {}; retry in {} ms",
            rate.per_second,
            rate.burst,
            wait.as_millis().min(u128::from(u32::MAX))
        ),
    )
}

async fn handle(signer: Signer<'_>, session: SessionId, op: Op, env: &SessionEnv) -> Reply {
    let registry = &env.registry;
    let peer = signer.peer;
    match op {
        // A claim is committed by the store's own writer (or database)
        // while this task waits on its answer, holding no thread.
        Op::Register { record, visible_to } => {
            let reply = registry
                .register_async(signer, session, record, visible_to, now_ms())
                .await;
            match reply {
                Reply::Registered {
                    name,
                    new_claim,
                    expires_at,
                    certificate: _,
                } => Reply::Registered {
                    certificate: Some(env.certifier.issue(&name, peer, now_ms())),
                    name,
                    new_claim,
                    expires_at,
                },
                other => other,
            }
        }
        Op::Release { name } => {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || registry.release(peer, &name))
                .await
                .unwrap_or_else(|_| Reply::error(ErrorCode::Internal, "release failed"))
        }
        // In a cluster, a name online elsewhere is read from the shared
        // store: off the async workers too.
        Op::Resolve { name, .. } if registry.is_clustered() => {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || registry.resolve(&name, peer, now_ms()))
                .await
                .unwrap_or_else(|_| Reply::error(ErrorCode::Internal, "resolve failed"))
        }
        Op::ResolvePeer { peer_id } if registry.is_clustered() => {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || registry.resolve_peer(peer_id, peer, now_ms()))
                .await
                .unwrap_or_else(|_| Reply::error(ErrorCode::Internal, "resolve failed"))
        }
        Op::Resolve { name, .. } => registry.resolve(&name, peer, now_ms()),
        Op::ResolvePeer { peer_id } => registry.resolve_peer(peer_id, peer, now_ms()),
        Op::Watch { names } => registry.watch(session, &names),
        Op::Unwatch { names } => registry.unwatch(session, &names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::THandler;

    /// Each connection's task holds its handler more than once (see
    /// `boxed`): the node's handler must stay a pointer there.
    #[test]
    fn a_connection_s_task_holds_a_pointer_to_its_handler() {
        let boxed = std::mem::size_of::<THandler<BoxedHandlers<Behaviour>>>();
        let unboxed = std::mem::size_of::<THandler<Behaviour>>();
        assert_eq!(boxed, std::mem::size_of::<usize>());
        assert!(
            unboxed > 1024,
            "the handlers are worth boxing: {unboxed} bytes"
        );
    }
}
