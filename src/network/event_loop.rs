//! The event loop: the one owner of the swarm. It runs the handle's
//! commands (dials, listens, disconnections), follows connections to know
//! each peer's path, and tells what happens as [`NetworkEvent`]s.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, ping};
use messenger_proto::liveness::{Liveness, transport_keeps_watch};
use messenger_proto::record::without_peer_suffix;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::{Command, NetworkError, NetworkEvent, Path, Reachability, is_relayed};
use crate::metrics::ClientMetrics;
use crate::reconnect::Setback;

/// After hole punching, how long the relayed connection stays open for
/// acknowledgements already on their way.
pub(super) const RELAYED_GRACE: Duration = Duration::from_secs(1);

/// A dial someone waits for.
#[derive(Debug)]
pub(super) struct PendingDial {
    reply: oneshot::Sender<Result<(), NetworkError>>,
    /// The peer and addresses to dial again from a new port, if the
    /// listening port turns out to be taken (a dial that left from it).
    again: Option<(PeerId, Vec<Multiaddr>)>,
}

/// Whether a dial failed only because its local port is in use (held by
/// a socket that does not share it).
pub(super) fn address_in_use(error: &libp2p::swarm::DialError) -> bool {
    let libp2p::swarm::DialError::Transport(errors) = error else {
        return false;
    };
    !errors.is_empty() && errors.iter().all(|(_, e)| in_use(e))
}

/// Whether `error`, or an error it wraps, is an I/O error "address in
/// use". (An `io::Error` wrapping another is walked into by hand: its
/// `source` skips the error it wraps.)
pub(super) fn in_use(error: &(dyn std::error::Error + 'static)) -> bool {
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
pub(super) struct SocketError(#[source] pub(super) std::io::Error);

/// How a peer is reached, from its connections (true: relayed).
/// One connection to a peer, as the event loop keeps it.
pub(super) struct Conn {
    /// Through the relay.
    relayed: bool,
    /// The peer's address on it, without our `/p2p` suffix: what it
    /// registers, when we dialled it (or it dialled from its listening
    /// port, as our clients do).
    remote: Multiaddr,
}

pub(super) fn path_of(connections: &HashMap<ConnectionId, Conn>) -> Option<Path> {
    if connections.is_empty() {
        None
    } else if connections.values().any(|c| !c.relayed) {
        Some(Path::Direct)
    } else {
        Some(Path::Relayed)
    }
}

pub(super) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) pending_dials: HashMap<ConnectionId, PendingDial>,
    pub(super) pending_listens: HashMap<
        libp2p::core::transport::ListenerId,
        (Multiaddr, oneshot::Sender<Result<(), NetworkError>>),
    >,
    pub(super) listen_addrs: watch::Sender<Vec<Multiaddr>>,
    pub(super) reachability: watch::Sender<Reachability>,
    pub(super) events: broadcast::Sender<NetworkEvent>,
    /// Open connections per peer, and whether each is relayed.
    pub(super) paths: HashMap<PeerId, HashMap<ConnectionId, Conn>>,
    /// The rendezvous node, and the address we were given for it.
    pub(super) rendezvous: Option<(PeerId, Multiaddr)>,
    /// Relayed connections to close once hole punching's grace is over.
    pub(super) relayed_to_close: FuturesUnordered<Pin<Box<dyn Future<Output = PeerId> + Send>>>,
    /// Connections that stopped answering pings are closed by this: it
    /// keeps the promise of `interval + timeout` whatever the pings' own
    /// failures say.
    pub(super) liveness: Liveness,
    pub(super) metrics: Option<Arc<ClientMetrics>>,
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

    pub(super) async fn run(mut self) {
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
