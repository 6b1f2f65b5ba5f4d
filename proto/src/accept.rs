//! Accepts inbound streams of one protocol and hands them to the task that
//! serves them: the node's directory sessions, a client's chat streams.
//!
//! libp2p-stream keeps one inbound stream waiting per protocol and drops
//! the next, which a burst of peers opening streams at once hits. This
//! behaviour hands every negotiated stream to a bounded queue instead, and
//! bounds how many streams of the protocol one connection may hold open:
//! a peer cannot tie up its counterpart with thousands of idle streams.
//!
//! Each stream also comes with [`ConnectionGone`], which resolves when its
//! connection closes: a yamux stream whose connection was closed locally
//! (a dead peer's, say) is never woken again, so whoever reads it must
//! watch for that too.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::channel::{mpsc, oneshot};
use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

/// A stream ready to be served. Holding its slot counts as one open stream
/// of its connection; dropping the slot frees it.
#[derive(Debug)]
pub struct Incoming {
    /// Who opened it.
    pub peer: PeerId,
    /// The connection it came on.
    pub connection: ConnectionId,
    /// The stream.
    pub stream: Stream,
    /// The slot of this stream on its connection.
    pub slot: Slot,
    /// Resolves when the connection closes.
    pub gone: ConnectionGone,
}

/// Resolves when the connection a stream came on has closed (its handler
/// was dropped).
#[derive(Debug)]
pub struct ConnectionGone(oneshot::Receiver<std::convert::Infallible>);

impl Future for ConnectionGone {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The sender never sends: only its drop, with the connection, ends this.
        self.0.poll_unpin(cx).map(|_| ())
    }
}

/// One open stream of a connection, freed on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
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
    /// Accepts `protocol`, at most `max_per_connection` streams of it open
    /// on one connection, and at most `backlog` accepted streams waiting to
    /// be served. Returns the receiving end of the queue.
    pub fn new(
        protocol: StreamProtocol,
        max_per_connection: usize,
        backlog: usize,
    ) -> (Self, mpsc::Receiver<Incoming>) {
        let (queue, incoming) = mpsc::channel(backlog.saturating_sub(1));
        (
            Self {
                protocol,
                queue,
                max_per_connection,
            },
            incoming,
        )
    }

    fn handler(&self, peer: PeerId, connection: ConnectionId) -> Handler {
        Handler {
            peer,
            connection,
            protocol: self.protocol.clone(),
            queue: self.queue.clone(),
            open: Arc::default(),
            max_open: self.max_per_connection,
            gone: Vec::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
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

/// Per connection: counts its open streams and forwards new ones.
#[derive(Debug)]
pub struct Handler {
    peer: PeerId,
    connection: ConnectionId,
    protocol: StreamProtocol,
    queue: mpsc::Sender<Incoming>,
    open: Arc<AtomicUsize>,
    max_open: usize,
    /// One per stream handed out; dropped with the handler, which tells
    /// each stream's [`ConnectionGone`] that the connection closed.
    gone: Vec<oneshot::Sender<std::convert::Infallible>>,
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
        // Dropping the stream resets it: the peer sees it end at once.
        if self.open.load(Ordering::Relaxed) >= self.max_open {
            tracing::warn!(peer = %self.peer, protocol = %self.protocol, limit = self.max_open, "too many streams of one protocol on one connection; refusing another");
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        // Streams already served and gone need no word any more.
        self.gone.retain(|g| !g.is_canceled());
        let (gone_tx, gone) = oneshot::channel();
        self.gone.push(gone_tx);
        let incoming = Incoming {
            peer: self.peer,
            connection: self.connection,
            stream,
            slot: Slot(self.open.clone()),
            gone: ConnectionGone(gone),
        };
        // A refused stream is dropped, which frees its slot.
        if let Err(e) = self.queue.try_send(incoming) {
            if e.is_full() {
                tracing::warn!(peer = %self.peer, protocol = %self.protocol, "too many streams waiting to be served; refusing one");
            } else {
                tracing::debug!(peer = %self.peer, "no one serves this protocol any more; refusing a stream");
            }
        }
    }
}
