//! libp2p's ping, on a schedule that depends on the transport.
//!
//! Over TCP and relayed circuits, pings are how a silent peer is noticed:
//! they go every interval. A direct QUIC connection notices that by itself
//! (keep-alives, idle time-out), and a ping every few seconds on top of
//! that is most of what holding an idle connection costs: for a node with
//! tens of thousands of clients, three times the CPU. So over direct QUIC
//! one ping measures the round trip when the connection opens, and after
//! that pings are only answered. Either way every ping a peer sends is
//! answered, so a peer that pings us on its own schedule sees no
//! difference.

use std::task::{Context, Poll};
use std::time::Duration;

use either::Either;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, ping};

use super::transport_keeps_watch;

/// "Never again" for the ping schedule of a connection its transport
/// watches: a day, long past any connection's time-outs.
const ANSWER_ONLY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// libp2p's ping behaviour with one schedule for connections that need
/// pings and another (one ping, then answers only) for direct QUIC ones.
/// Its events are libp2p's [`ping::Event`]s.
pub struct Behaviour {
    /// Connections whose transport does not watch them: TCP, circuits.
    pinging: ping::Behaviour,
    /// Direct QUIC connections.
    answering: ping::Behaviour,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ping::Behaviour").finish_non_exhaustive()
    }
}

impl Behaviour {
    /// Pings on `config`'s schedule where the transport does not keep
    /// watch ([`transport_keeps_watch`]).
    pub fn new(config: ping::Config) -> Self {
        Self {
            pinging: ping::Behaviour::new(config.clone()),
            answering: ping::Behaviour::new(config.with_interval(ANSWER_ONLY_INTERVAL)),
        }
    }
}

type Handler = THandler<ping::Behaviour>;
/// Puts a ping handler on its side of [`Behaviour`]'s handler.
type Side = fn(Handler) -> Either<Handler, Handler>;

impl Behaviour {
    /// The schedule a connection gets, and which side of the handler its
    /// handler is.
    fn schedule_for(&mut self, endpoint: &ConnectedPoint) -> (&mut ping::Behaviour, Side) {
        if transport_keeps_watch(endpoint) {
            (&mut self.answering, Either::Right)
        } else {
            (&mut self.pinging, Either::Left)
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Either<Handler, Handler>;
    type ToSwarm = ping::Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let endpoint = ConnectedPoint::Listener {
            local_addr: local_addr.clone(),
            send_back_addr: remote_addr.clone(),
        };
        let (behaviour, side) = self.schedule_for(&endpoint);
        behaviour
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
            .map(side)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let endpoint = ConnectedPoint::Dialer {
            address: addr.clone(),
            role_override,
            port_use,
        };
        let (behaviour, side) = self.schedule_for(&endpoint);
        behaviour
            .handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
            .map(side)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.pinging.on_swarm_event(event);
        self.answering.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(e) => self
                .pinging
                .on_connection_handler_event(peer, connection, e),
            Either::Right(e) => self
                .answering
                .on_connection_handler_event(peer, connection, e),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Poll::Ready(event) = self.pinging.poll(cx) {
            return Poll::Ready(event.map_in(Either::Left));
        }
        if let Poll::Ready(event) = self.answering.poll(cx) {
            return Poll::Ready(event.map_in(Either::Right));
        }
        Poll::Pending
    }
}
