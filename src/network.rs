//! The client's libp2p node: one event loop owns the [`Swarm`]; the
//! cloneable [`Network`] handle sends it commands.
//!
//! Streams (directory sessions, chat) are opened and accepted through
//! `libp2p-stream` controls, outside the event loop, so message traffic
//! never waits on swarm events.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, ping, tcp, yamux};
use messenger_proto::Identity;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};

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
    },
}

/// Knobs of the client network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// How often connections are pinged; a failed ping closes the connection.
    pub ping_interval: Duration,
    /// How long a connection without streams stays open.
    pub idle_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
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
}

/// Handle to the client's network event loop.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    local_peer_id: PeerId,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Builds the swarm for `identity` and spawns its event loop.
    pub fn start(identity: &Identity, config: NetworkConfig) -> Result<Self, NetworkError> {
        let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.keypair())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetworkError::Transport(e.to_string()))?
            .with_quic()
            .with_behaviour(|key| Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(
                        messenger_proto::IDENTIFY_PROTOCOL.to_owned(),
                        key.public(),
                    )
                    .with_agent_version(format!("messenger/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(config.ping_interval)
                        .with_timeout(config.ping_interval),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
            .map_err(|e| NetworkError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
            .build();
        let control = swarm.behaviour().stream.new_control();
        let local_peer_id = *swarm.local_peer_id();
        let (commands, command_rx) = mpsc::channel(64);
        let (addrs_tx, listen_addrs) = watch::channel(Vec::new());
        let event_loop = EventLoop {
            swarm,
            commands: command_rx,
            pending_dials: HashMap::new(),
            pending_listens: HashMap::new(),
            listen_addrs: addrs_tx,
        };
        tokio::spawn(event_loop.run());
        Ok(Self {
            commands,
            control,
            listen_addrs,
            local_peer_id,
        })
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
    /// already connected.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetworkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial { peer, addrs, reply })
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)?
    }

    /// The addresses we listen on now, updated as interfaces come and go.
    pub fn listen_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.listen_addrs.clone()
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pending_dials: HashMap<ConnectionId, oneshot::Sender<Result<(), NetworkError>>>,
    pending_listens: HashMap<
        libp2p::core::transport::ListenerId,
        (Multiaddr, oneshot::Sender<Result<(), NetworkError>>),
    >,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
}

impl EventLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nobody can use the network any more.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
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
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::Always)
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Dial {
                            peer,
                            reason: e.to_string(),
                        }));
                    }
                }
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

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let peer = peer_id.unwrap_or(PeerId::random());
                    let _ = reply.send(Err(NetworkError::Dial {
                        peer,
                        reason: error.to_string(),
                    }));
                }
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
                result: Err(e),
            })) => {
                info!(%peer, "ping failed ({e}); closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                debug!(%peer_id, ?cause, "connection closed");
            }
            _ => {}
        }
    }
}
