//! What the node starts from: its settings and why starting can fail.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::{Multiaddr, relay};
use messenger_proto::identity::IdentityError;

use crate::cluster::ClusterError;
use crate::limits::Limits;
use crate::store::StoreError;

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
    pub(super) fn config(&self) -> relay::Config {
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
