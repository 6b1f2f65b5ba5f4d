//! Accepts inbound directory streams for the session tasks.
//!
//! libp2p-stream keeps one inbound stream waiting per protocol and drops
//! the next, which a burst of clients connecting at once hits. This
//! behaviour hands every negotiated stream to a bounded queue instead, and
//! bounds how many sessions one connection may hold open: a peer cannot
//! tie up the node with thousands of idle sessions on one connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A directory stream ready to be served. Holding it counts as one open
/// session of its connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Incoming {
    /// Who opened it.
    pub peer: PeerId,
    /// The stream.
    pub stream: Stream,
    /// The slot of this session on its connection.
    pub slot: SessionSlot,
}

/// One open session of a connection, freed on drop.
#[derive(Debug)]
pub struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The behaviour: one handler per connection, all feeding one queue.
#[derive(Debug)]
pub struct Behaviour {
    protocol: StreamProtocol,
    queue: mpsc::Sender<Incoming>,
    max_per_connection: usize,
}

impl Behaviour {
    /// Accepts `protocol`, at most `max_per_connection` sessions open on one
    /// connection, and at most `backlog` accepted streams waiting for the
    /// session task. Returns the receiving end of the queue.
    pub fn new(
        protocol: StreamProtocol,
        max_per_connection: usize,
        backlog: usize,
    ) -> (Self, mpsc::Receiver<Incoming>) {
        let (queue, incoming) = mpsc::channel(backlog.max(1));
        (
            Self {
                protocol,
                queue,
                max_per_connection,
            },
            incoming,
        )
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            protocol: self.protocol.clone(),
            queue: self.queue.clone(),
            open: Arc::default(),
            max_open: self.max_per_connection,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Per connection: counts its open sessions and forwards new ones.
#[derive(Debug)]
pub struct Handler {
    peer: PeerId,
    protocol: StreamProtocol,
    queue: mpsc::Sender<Incoming>,
    open: Arc<AtomicUsize>,
    max_open: usize,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Infallible;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Infallible, Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Infallible>,
    ) {
        let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: stream,
            ..
        }) = event
        else {
            return;
        };
        // Dropping the stream resets it: the client sees its session end.
        if self.open.load(Ordering::Relaxed) >= self.max_open {
            warn!(peer = %self.peer, limit = self.max_open, "too many directory sessions on one connection; refusing another");
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let incoming = Incoming {
            peer: self.peer,
            stream,
            slot: SessionSlot(self.open.clone()),
        };
        // A refused stream is dropped, which frees its slot.
        match self.queue.try_send(incoming) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(peer = %self.peer, "too many directory sessions waiting to start; refusing one");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(peer = %self.peer, "the node is shutting down; refusing a directory session");
            }
        }
    }
}
