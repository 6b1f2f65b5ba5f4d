//! The swarm's event loop: connections, pings and their silence, the
//! sweeps of registrations and leases, shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::ListenError;
use libp2p::swarm::SwarmEvent;
use libp2p::{Swarm, ping, relay};
use messenger_proto::accept;
use messenger_proto::liveness::{Liveness, transport_keeps_watch};
use messenger_proto::metrics::MetricsServer;
use messenger_proto::time::now_ms;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::session::{SessionEnv, serve_session};
use super::transport::{Behaviour, BehaviourEvent};
use crate::boxed::BoxedHandlers;
use crate::metrics::NodeMetrics;
use crate::registry::{Registry, SessionId};
use messenger_proto::gate::HandshakeGate;

/// How long a stopping node may take to tell its cluster it leaves.
pub(super) const CLUSTER_LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often names past their lease are looked for.
pub(super) const LEASE_SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);

pub(super) struct EventLoop {
    pub(super) swarm: Swarm<BoxedHandlers<Behaviour>>,
    /// Connections that stopped answering pings are closed by this: it
    /// keeps the promise of `interval + timeout` whatever the pings' own
    /// failures say.
    pub(super) liveness: Liveness,
    pub(super) gate: Arc<HandshakeGate>,
    /// Gate counts at the last report.
    pub(super) shed_reported: [u64; 5],
    pub(super) registry: Arc<Registry>,
    pub(super) incoming: Option<futures::channel::mpsc::Receiver<accept::Incoming>>,
    pub(super) sessions: Arc<SessionEnv>,
    pub(super) name_lease: Duration,
    /// The task keeping this node in step with its cluster, and its stop.
    pub(super) cluster: Option<(JoinHandle<()>, tokio_util::sync::CancellationToken)>,
    pub(super) metrics: Arc<NodeMetrics>,
    /// The metrics endpoint, served while the loop runs.
    pub(super) scrapes: Option<MetricsServer>,
}

/// Starts a task per directory session, apart from the swarm's event loop
/// so that sessions never wait behind swarm events. Dropping this task
/// aborts every session.
pub(super) async fn accept_sessions(
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
    pub(super) async fn run(mut self, mut shutdown: oneshot::Receiver<()>) {
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
