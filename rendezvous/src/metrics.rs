//! What the node shows its operator, as Prometheus metrics: libp2p's own
//! recorder for the swarm (connections and handshakes by transport and
//! outcome), identify, ping and the relay, and the node's figures beside
//! them: refusals by the limit that refused, handshakes shed, directory
//! sessions and requests by result, presence pushes and their queue, claim
//! commits, relay reservations and circuits, AutoNAT probes answered, users
//! online and the process's memory.
//!
//! Everything is counted whether or not `--metrics` serves it: the counts
//! are atomics, cheaper than asking each time whether anyone looks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::metrics::Recorder;
use libp2p::swarm::{ConnectionDenied, SwarmEvent};
use libp2p::{autonat, connection_limits, memory_connection_limits, relay};
use messenger_proto::directory::{ErrorCode, Reply};
use messenger_proto::metrics::encode_one;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};

use crate::limits::TooManyFromIp;
use crate::registry::Registry as Directory;
use messenger_proto::gate::HandshakeGate;

/// A directory request's kind and how it ended (`ok` or the error code).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    result: &'static str,
}

/// The limit that refused a connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// An AutoNAT probe's answer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    result: &'static str,
}

/// The node's metrics; shared by the event loop and the session tasks.
pub struct NodeMetrics {
    libp2p: libp2p::metrics::Metrics,
    requests: Family<RequestLabels, Counter>,
    refused: Family<LimitLabels, Counter>,
    sessions: Gauge,
    pushes: Counter,
    relay_reservations: Gauge,
    relay_circuits: Gauge,
    autonat_probes: Family<ProbeLabels, Counter>,
}

impl fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Registers the node's metrics in `registry`: the directory's figures
    /// are read from `directory` and the handshake gate's from `gate` at
    /// each scrape.
    pub fn new(
        registry: &mut Registry,
        directory: &Arc<Directory>,
        gate: &Arc<HandshakeGate>,
    ) -> Self {
        let libp2p = libp2p::metrics::Metrics::new(registry);
        messenger_proto::metrics::ProcessCollector::register(registry);
        let node = registry.sub_registry_with_prefix("rendezvous");
        let metrics = Self {
            libp2p,
            requests: Family::default(),
            refused: Family::default(),
            sessions: Gauge::default(),
            pushes: Counter::default(),
            relay_reservations: Gauge::default(),
            relay_circuits: Gauge::default(),
            autonat_probes: Family::default(),
        };
        node.register(
            "directory_requests",
            "Directory requests answered, by operation and result (ok or the error code; rate_limited requests were not handled)",
            metrics.requests.clone(),
        );
        node.register(
            "connections_refused",
            "Connections refused after their handshake, by the limit that refused them (connections, per_peer, per_ip, memory)",
            metrics.refused.clone(),
        );
        node.register(
            "directory_sessions",
            "Directory sessions open",
            metrics.sessions.clone(),
        );
        node.register(
            "presence_pushes",
            "Presence changes pushed to watchers",
            metrics.pushes.clone(),
        );
        node.register(
            "presence_push_queue",
            "Presence changes waiting to be pushed, over every session",
            directory.push_depth(),
        );
        node.register_with_unit(
            "store_commit",
            "Time to commit a group of name claims durably (PostgreSQL: one claim)",
            Unit::Seconds,
            directory.commit_latency(),
        );
        node.register(
            "relay_reservations",
            "Relay reservations held by clients behind NAT",
            metrics.relay_reservations.clone(),
        );
        node.register(
            "relay_circuits",
            "Relayed connections open",
            metrics.relay_circuits.clone(),
        );
        node.register(
            "autonat_probes",
            "AutoNAT dial-back probes answered, by result (ok: the client was reachable)",
            metrics.autonat_probes.clone(),
        );
        node.register_collector(Box::new(Gauges {
            directory: directory.clone(),
            gate: gate.clone(),
        }));
        metrics
    }

    /// A swarm event, for libp2p's recorder and the node's own counts.
    pub fn swarm_event<E>(&self, event: &SwarmEvent<E>) {
        self.libp2p.record(event);
        if let SwarmEvent::IncomingConnectionError {
            error: libp2p::swarm::ListenError::Denied { cause },
            ..
        } = event
        {
            self.refused
                .get_or_create(&LimitLabels {
                    limit: refusing_limit(cause),
                })
                .inc();
        }
    }

    /// An identify event, for libp2p's recorder.
    pub fn identify(&self, event: &libp2p::identify::Event) {
        self.libp2p.record(event);
    }

    /// A ping event, for libp2p's recorder.
    pub fn ping(&self, event: &libp2p::ping::Event) {
        self.libp2p.record(event);
    }

    /// A relay event: libp2p's recorder counts events; the node keeps what
    /// is held now.
    pub fn relay(&self, event: &relay::Event) {
        self.libp2p.record(event);
        match event {
            relay::Event::ReservationReqAccepted { renewed: false, .. } => {
                self.relay_reservations.inc();
            }
            relay::Event::ReservationTimedOut { .. } | relay::Event::ReservationClosed { .. } => {
                self.relay_reservations.dec();
            }
            relay::Event::CircuitReqAccepted { .. } => {
                self.relay_circuits.inc();
            }
            relay::Event::CircuitClosed { .. } => {
                self.relay_circuits.dec();
            }
            _ => {}
        }
    }

    /// An AutoNAT event: the node answers probes only.
    pub fn autonat(&self, event: &autonat::Event) {
        let result = match event {
            autonat::Event::InboundProbe(autonat::InboundProbeEvent::Response { .. }) => "ok",
            autonat::Event::InboundProbe(autonat::InboundProbeEvent::Error { .. }) => "error",
            _ => return,
        };
        self.autonat_probes
            .get_or_create(&ProbeLabels { result })
            .inc();
    }

    /// A directory session opened; the guard closes it.
    pub fn session_opened(self: &Arc<Self>) -> SessionGuard {
        self.sessions.inc();
        SessionGuard(self.clone())
    }

    /// A request of kind `op` was answered with `reply`.
    pub fn answered(&self, op: &'static str, reply: &Reply) {
        let result = match reply {
            Reply::Error { code, .. } => code.as_str(),
            _ => "ok",
        };
        self.requests
            .get_or_create(&RequestLabels { op, result })
            .inc();
    }

    /// Presence changes were pushed on a session.
    pub fn pushed(&self, n: usize) {
        self.pushes.inc_by(n as u64);
    }

    /// The directory's requests so far, summed over their results.
    pub fn snapshot(&self) -> CounterSnapshot {
        let count = |op: &'static str, result: &'static str| {
            self.requests
                .get(&RequestLabels { op, result })
                .map_or(0, |c| c.get())
        };
        let handled = |op: &'static str| {
            count(op, "ok")
                + ErrorCode::ALL
                    .iter()
                    .filter(|code| **code != ErrorCode::RateLimited)
                    .map(|code| count(op, code.as_str()))
                    .sum::<u64>()
        };
        let others = ["resolve_peer", "release", "watch", "unwatch"];
        CounterSnapshot {
            registrations: handled("register"),
            resolves: handled("resolve"),
            other_requests: others.iter().map(|op| handled(op)).sum(),
            rate_limited: ["register", "resolve"]
                .iter()
                .chain(&others)
                .map(|op| count(op, ErrorCode::RateLimited.as_str()))
                .sum(),
        }
    }
}

/// Counts a session as open while it lives.
#[derive(Debug)]
pub struct SessionGuard(Arc<NodeMetrics>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.dec();
    }
}

/// What the directory has served, summed over results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// `register` requests handled.
    pub registrations: u64,
    /// `resolve` requests handled.
    pub resolves: u64,
    /// Every other request handled.
    pub other_requests: u64,
    /// Requests answered `rate_limited` (not handled).
    pub rate_limited: u64,
}

/// Which limit a refused connection met.
fn refusing_limit(cause: &ConnectionDenied) -> &'static str {
    if let Some(exceeded) = cause.downcast_ref::<connection_limits::Exceeded>() {
        // The node sets two established-connection limits, told apart by
        // their words only.
        if exceeded.to_string().contains("per peer") {
            "per_peer"
        } else {
            "connections"
        }
    } else if cause.downcast_ref::<TooManyFromIp>().is_some() {
        "per_ip"
    } else if cause
        .downcast_ref::<memory_connection_limits::MemoryUsageLimitExceeded>()
        .is_some()
    {
        "memory"
    } else {
        "other"
    }
}

/// Figures read at each scrape from the state that holds them.
#[derive(Debug)]
struct Gauges {
    directory: Arc<Directory>,
    gate: Arc<HandshakeGate>,
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauge = |n: usize| ConstGauge::new(n as i64);
        encode_one(
            &mut encoder,
            "users_online",
            "Users online at this node (registered on a live session)",
            None,
            gauge(self.directory.online_count()),
        )?;
        encode_one(
            &mut encoder,
            "handshakes_pending",
            "Connections still in their handshake",
            None,
            gauge(self.gate.pending()),
        )?;
        encode_one(
            &mut encoder,
            "handshakes_room",
            "Handshakes the node takes on at once: about a second's worth at the pace it finishes them, within --max-pending-connections",
            None,
            gauge(self.gate.room_now()),
        )?;

        let shed = self.gate.shed_counts();
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "handshakes_shed",
            "Connections turned away before their handshake finished, by reason (shed: per_address, all_full; turned_away on arrival while busy; QUIC: retry asked, dropped)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, count) in [
            ("per_address", read(&shed.per_source)),
            ("all_full", read(&shed.total)),
            ("turned_away", read(&shed.turned_away)),
            ("quic_retry", read(&shed.retried)),
            ("quic_dropped", read(&shed.refused)),
        ] {
            let labels = [("reason", reason)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
