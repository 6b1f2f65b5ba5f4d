//! The node: one event loop owns the swarm (`event_loop.rs`); each
//! directory session runs in its own task against the shared [`Registry`]
//! (`session.rs`). Its settings are `config.rs`'s, its transports and
//! behaviours `transport.rs`'s.

use std::sync::Arc;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::identity::create_private_dir;
use messenger_proto::liveness::Liveness;
use messenger_proto::metrics::MetricsServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::certify::Certifier;
use crate::cluster::Cluster;
use crate::cluster::claims::PgStore;
use crate::limits::RequestLimiter;
use crate::metrics::{CounterSnapshot, NodeMetrics};
use crate::registry::Registry;
use crate::store::{ClaimStore, RedbStore};
use messenger_proto::gate::{GateLimits, HandshakeGate};
use transport::{build_swarm, listen};

mod config;
mod event_loop;
mod session;
mod transport;

pub use config::{BindError, Config, RelayLimits};
use event_loop::EventLoop;
use session::SessionEnv;

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
