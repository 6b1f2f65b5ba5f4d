//! The node's swarm: its transports (TCP and QUIC behind the handshake
//! gate), its behaviours, and the listeners.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::ListenerId;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, Swarm, Transport as _, autonat, identify, memory_connection_limits, noise, relay,
    tcp, yamux,
};
use messenger_proto::Identity;
use messenger_proto::accept;
use messenger_proto::directory::{self};
use tracing::debug;

use super::config::{BindError, Config};
use crate::boxed::BoxedHandlers;
use crate::limits::{self};
use messenger_proto::gate::{Gated, HandshakeGate};
use messenger_proto::quic::{QuicConfig, QuicTransport};

/// Accepted directory streams waiting for their session task to start.
pub(super) const SESSION_BACKLOG: usize = 1024;

/// How long the node tries to dial a client back for an AutoNAT probe.
pub(super) const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    // The limits come first: they refuse a connection before the others
    // spend anything on it.
    pub(super) connection_limits: connection_limits::Behaviour,
    pub(super) per_ip: limits::PerIpLimit,
    pub(super) memory: memory_connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    /// Pings TCP connections; QUIC ones keep watch themselves.
    pub(super) ping: messenger_proto::liveness::ping::Behaviour,
    /// Directory sessions, handed to the session tasks.
    pub(super) sessions: accept::Behaviour,
    /// Circuit relay v2 server for clients behind NAT.
    pub(super) relay: relay::Behaviour,
    /// Answers clients' "can you dial me back?" probes.
    pub(super) autonat: autonat::Behaviour,
}

pub(super) fn build_swarm(
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
pub(super) async fn listen(
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
