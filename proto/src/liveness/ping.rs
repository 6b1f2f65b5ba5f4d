//! libp2p's ping (`/ipfs/ping/1.0.0`), each ping on a stream of its own,
//! on a schedule that depends on the transport.
//!
//! **A stream per ping.** The ping specification lets a dialer send its
//! pings on one long-lived stream or on a new stream each, and the
//! implementations differ in what they accept: js-libp2p aborts an inbound
//! ping stream a fixed time (10 s) after it opened, whatever went over it,
//! so a peer that keeps one stream open loses a ping to every abort, and
//! with it (by our rule of silence) the connection. A stream per ping,
//! closed once answered, is what every implementation takes; it costs one
//! stream negotiation per ping, which the lazy negotiation folds into the
//! ping's own first packet. Inbound, every ping on a stream is answered
//! until the peer closes it (a peer that reuses its stream is served as
//! well), on at most [`MAX_INBOUND_STREAMS`] streams at once.
//!
//! **The schedule.** Over TCP and relayed circuits, pings are how a silent
//! peer is noticed: they go every interval. A direct QUIC connection
//! notices that by itself (keep-alives, idle time-out), and a ping every
//! few seconds on top of that is most of what holding an idle connection
//! costs: for a node with tens of thousands of clients, three times the
//! CPU. So over direct QUIC one ping measures the round trip when the
//! connection opens, and after that pings are only answered.
//!
//! The events are libp2p's [`ping::Event`]s, one per outbound ping.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use futures_timer::Delay;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol, ping};

use super::transport_keeps_watch;

/// The protocol: libp2p's ping.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/ping/1.0.0");

/// A ping's payload, sent and echoed.
const PING_SIZE: usize = 32;

/// Inbound ping streams answered at once on one connection: the
/// specification's "at most two"; a newer one replaces the oldest.
pub const MAX_INBOUND_STREAMS: usize = 2;

/// When and how long to ping.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Between the end of a ping and the next one (where the transport
    /// does not keep watch).
    pub interval: Duration,
    /// How long one ping may take, the stream's opening included.
    pub timeout: Duration,
}

/// Pings on its [`Schedule`] where the transport does not keep watch
/// ([`transport_keeps_watch`]), once elsewhere; answers every ping.
#[derive(Debug)]
pub struct Behaviour {
    schedule: Schedule,
    events: VecDeque<ping::Event>,
}

impl Behaviour {
    /// Pings on `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            events: VecDeque::new(),
        }
    }

    fn handler(&self, endpoint: &ConnectedPoint) -> Handler {
        Handler::new(self.schedule, !transport_keeps_watch(endpoint))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = ping::Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(&ConnectedPoint::Listener {
            local_addr: local_addr.clone(),
            send_back_addr: remote_addr.clone(),
        }))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(&ConnectedPoint::Dialer {
            address: addr.clone(),
            role_override,
            port_use,
        }))
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        result: THandlerOutEvent<Self>,
    ) {
        self.events.push_front(ping::Event {
            peer,
            connection,
            result,
        });
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_back() {
            Some(event) => Poll::Ready(ToSwarm::GenerateEvent(event)),
            None => Poll::Pending,
        }
    }
}

/// One connection's pings.
pub struct Handler {
    schedule: Schedule,
    /// Whether to go on pinging after the first ping.
    repeat: bool,
    /// When the next ping goes (none: no more pings).
    next: Option<Delay>,
    outbound: Outbound,
    /// Inbound streams being answered, oldest first.
    inbound: VecDeque<BoxFuture<'static, io::Result<()>>>,
    /// What to tell the behaviour.
    results: VecDeque<Result<Duration, ping::Failure>>,
    /// The number of the last stream asked for: a stream or a failure
    /// that comes for an earlier one (after its ping timed out) is not
    /// this ping's.
    asked: u64,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ping::Handler")
            .field("repeat", &self.repeat)
            .field("inbound", &self.inbound.len())
            .finish_non_exhaustive()
    }
}

/// Where the outbound ping stands.
enum Outbound {
    /// Waiting for the next one (`Handler::next`).
    Idle,
    /// Asked for a stream, by this deadline.
    Opening(Delay),
    /// Sent on its stream, waiting for the echo.
    Pinging(BoxFuture<'static, Result<Duration, ping::Failure>>),
    /// The peer does not speak ping: said once, then nothing more.
    Unsupported,
}

impl Handler {
    fn new(schedule: Schedule, repeat: bool) -> Self {
        Self {
            schedule,
            repeat,
            // The first ping goes at once: it measures the round trip.
            next: Some(Delay::new(Duration::ZERO)),
            outbound: Outbound::Idle,
            inbound: VecDeque::new(),
            results: VecDeque::new(),
            asked: 0,
        }
    }

    /// A ping ended: the next one is scheduled, if pings repeat.
    fn finished(&mut self, result: Result<Duration, ping::Failure>) {
        self.outbound = Outbound::Idle;
        self.next = self.repeat.then(|| Delay::new(self.schedule.interval));
        self.results.push_back(result);
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Result<Duration, ping::Failure>;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = u64;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn connection_keep_alive(&self) -> bool {
        // Pings keep nothing open: a connection lives for what else it
        // carries.
        false
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, u64, Self::ToBehaviour>> {
        // Answer; a stream that ended (closed, reset, malformed) goes.
        self.inbound
            .retain_mut(|answering| match answering.poll_unpin(cx) {
                Poll::Pending => true,
                Poll::Ready(Ok(())) => false,
                Poll::Ready(Err(e)) => {
                    tracing::trace!("an inbound ping stream ended: {e}");
                    false
                }
            });

        match &mut self.outbound {
            Outbound::Opening(deadline) => {
                if deadline.poll_unpin(cx).is_ready() {
                    self.finished(Err(ping::Failure::Timeout));
                }
            }
            Outbound::Pinging(ping) => {
                if let Poll::Ready(result) = ping.poll_unpin(cx) {
                    self.finished(result);
                }
            }
            Outbound::Idle | Outbound::Unsupported => {}
        }
        if let Some(result) = self.results.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(result));
        }

        if let (Outbound::Idle, Some(next)) = (&self.outbound, &mut self.next)
            && next.poll_unpin(cx).is_ready()
        {
            self.next = None;
            let mut deadline = Delay::new(self.schedule.timeout);
            // Polled once, so that it wakes us when it expires.
            let _ = deadline.poll_unpin(cx);
            self.outbound = Outbound::Opening(deadline);
            self.asked += 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), self.asked)
                    .with_timeout(self.schedule.timeout),
            });
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), u64>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                if self.inbound.len() == MAX_INBOUND_STREAMS {
                    self.inbound.pop_front();
                }
                self.inbound.push_back(answer(stream).boxed());
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: mut stream,
                info,
            }) => {
                if info != self.asked || !matches!(self.outbound, Outbound::Opening(_)) {
                    // For a ping that already timed out: not this one's.
                    return;
                }
                stream.ignore_for_keep_alive();
                // What is left of the time the opening took.
                let left = match std::mem::replace(&mut self.outbound, Outbound::Idle) {
                    Outbound::Opening(deadline) => deadline,
                    _ => Delay::new(self.schedule.timeout),
                };
                self.outbound = Outbound::Pinging(ping_once(stream, left).boxed());
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, .. })
                if info != self.asked || !matches!(self.outbound, Outbound::Opening(_)) => {}
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => match error {
                StreamUpgradeError::NegotiationFailed => {
                    self.outbound = Outbound::Unsupported;
                    self.next = None;
                    self.results.push_back(Err(ping::Failure::Unsupported));
                }
                StreamUpgradeError::Timeout => self.finished(Err(ping::Failure::Timeout)),
                StreamUpgradeError::Io(error) => self.finished(Err(ping::Failure::Other {
                    error: Box::new(error),
                })),
                StreamUpgradeError::Apply(never) => match never {},
            },
            _ => {}
        }
    }
}

/// Sends one ping on `stream` and waits for its echo, until `deadline`;
/// then closes the stream.
async fn ping_once(mut stream: Stream, deadline: Delay) -> Result<Duration, ping::Failure> {
    let exchange = async {
        let payload: [u8; PING_SIZE] = random_payload();
        let started = Instant::now();
        stream.write_all(&payload).await?;
        stream.flush().await?;
        let mut echo = [0u8; PING_SIZE];
        stream.read_exact(&mut echo).await?;
        let rtt = started.elapsed();
        if echo != payload {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the ping's echo differs from the ping",
            ));
        }
        Ok(rtt)
    };
    let rtt = futures::select! {
        result = exchange.fuse() => result.map_err(|error| ping::Failure::Other { error: Box::new(error) })?,
        () = deadline.fuse() => return Err(ping::Failure::Timeout),
    };
    // Done with it: the peer sees the end of the stream. Answered already,
    // so a slow close is no failed ping.
    let _ = stream.close().await;
    Ok(rtt)
}

/// Echoes every ping on `stream` until the peer closes it.
async fn answer(mut stream: Stream) -> io::Result<()> {
    let mut payload = [0u8; PING_SIZE];
    loop {
        match stream.read_exact(&mut payload).await {
            Ok(()) => {}
            // The peer closed its side between pings: so do we.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return stream.close().await,
            Err(e) => return Err(e),
        }
        stream.write_all(&payload).await?;
        stream.flush().await?;
    }
}

fn random_payload() -> [u8; PING_SIZE] {
    let mut payload = [0u8; PING_SIZE];
    // Any bytes do: the payload only pairs a ping with its echo.
    let _ = getrandom::fill(&mut payload);
    payload
}
