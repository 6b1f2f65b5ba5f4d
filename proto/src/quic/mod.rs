//! QUIC for the node and the clients: libp2p over quinn, with a say over
//! every new connection before it costs anything.
//!
//! libp2p-quic accepts every Initial packet it receives, so a burst of
//! Initials from fresh source ports makes the listener run a TLS handshake
//! and keep connection state for each. This transport looks at quinn's
//! [`quinn::Incoming`] first, with the same [`HandshakeGate`] as TCP:
//!
//! - below the gate's bounds, the connection is accepted;
//! - at a bound, a sender whose address is not validated yet gets a
//!   stateless Retry (it must echo a token from its real address, which a
//!   spoofed or fire-and-forget flood cannot do, and the node keeps nothing
//!   meanwhile);
//! - from a validated address at its own per-address bound, the newcomer
//!   is dropped without an answer (shedding an older handshake, as TCP
//!   does, would leave a closing connection behind for seconds);
//! - at the total bound, a validated newcomer from an address below its
//!   bound takes the place of the oldest handshake of the busiest address.
//!
//! A refusal is silence, not CONNECTION_REFUSED. Under silence the
//! client's QUIC stack sends its Initial again (after 1 s, 2 s…) within
//! its handshake time-out, and one of those usually finds room: measured
//! with 10,000 clients coming back at once, 19-20 s. Refusing outright
//! made each refused client give up the attempt and back off: 46-49 s as
//! from a node that turned it away (from 2 s, doubling), and still 32-45 s
//! with a schedule of its own for a busy gate (from 1 s, at most 8 s).
//!
//! Dials leave from the listening port when there is one (a NAT then maps
//! one port for both ways, and the node's AutoNAT dial-backs come from the
//! address clients know). A client behind NAT takes part in hole punching
//! (libp2p's DCUtR) as libp2p-quic does: dialled "as the listener", it
//! sends random datagrams to the other side from its listening socket
//! until that side's connection arrives there, and hands that connection
//! to the dial (it passes no gate: it was asked for).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::Endpoint;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::transport::{
    DialOpts, ListenerId, PortUse, Transport, TransportError, TransportEvent,
};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tracing::debug;

use crate::gate::{Admission, HandshakeGate, Source, Ticket};

/// What the transport needs to know.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// A handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection silent for this long is closed. The node sends no
    /// keep-alives: under QUIC's idle rule a keep-alive sent restarts that
    /// count, which would put off noticing a silent client by as much;
    /// clients keep their connections alive themselves.
    pub idle_timeout: Duration,
    /// Streams a peer may have open at once on one connection.
    pub max_streams: u32,
    /// Sends a keep-alive after this long without sending (a client's, so
    /// that its idle connections stay open; the node sends none).
    pub keep_alive: Option<Duration>,
    /// What the stateless-reset key is derived from the identity with
    /// (one purpose, one label).
    pub reset_label: &'static [u8],
}

/// Why a QUIC connection failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The socket or endpoint failed.
    #[error("QUIC I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake or connection failed.
    #[error("QUIC connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Dialling could not start.
    #[error("QUIC dial failed: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake took too long.
    #[error("the QUIC handshake did not finish in time")]
    HandshakeTimedOut,
    /// The peer's certificate is not a libp2p one.
    #[error("the peer's TLS certificate is not a valid libp2p certificate")]
    BadCertificate,
    /// The gate shed this handshake to make room.
    #[error("shed while still in its handshake: too many handshakes in all")]
    Shed,
    /// The TLS configuration could not be made.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Hole punching needs a listening socket of the other side's family.
    #[error("no QUIC listener to punch a hole from to {0}")]
    NoListenerToPunchFrom(SocketAddr),
    /// A hole punch to that address is going on already.
    #[error("already punching a hole to {0}")]
    HolePunchInProgress(SocketAddr),
}

/// A dial under way: the peer and its connection, once established.
pub type QuicDial = BoxFuture<'static, Result<(PeerId, QuicMuxer), QuicError>>;

/// The transport: one quinn endpoint per listen address.
pub struct QuicTransport {
    config: QuicConfig,
    /// Stateless resets are keyed by the node's identity (see
    /// [`ResetKey`]).
    reset_key: Arc<ResetKey>,
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    gate: Arc<HandshakeGate>,
    listeners: Vec<Listener>,
    /// An endpoint for dialling when no listener fits.
    dialer: Option<quinn::Endpoint>,
    /// Hole punches waiting for the other side's connection, by its
    /// address.
    hole_punches: HashMap<SocketAddr, oneshot::Sender<QuicUpgrade>>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// Socket buffers a listening socket asks for. Every client of the node
/// shares its one UDP socket: with the system's default receive buffer
/// (about 200 KiB) a burst of packets from thousands of clients (their
/// keep-alives, or a crowd reconnecting) overflows it, the kernel drops
/// datagrams, handshakes and pings stall behind retransmissions, and
/// connections die of it. The kernel grants at most `net.core.rmem_max`
/// (`wmem_max` for sending): raise those on a busy node.
const UDP_BUFFER_BYTES: usize = 16 << 20;

/// Asks for [`UDP_BUFFER_BYTES`] each way; warns when the kernel grants
/// less (Linux reports twice what it grants, its bookkeeping included).
fn widen_buffers(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    let (receive, send) = (
        socket.recv_buffer_size().unwrap_or(0) / 2,
        socket.send_buffer_size().unwrap_or(0) / 2,
    );
    if receive < UDP_BUFFER_BYTES || send < UDP_BUFFER_BYTES {
        tracing::warn!(
            "the QUIC socket's buffers are {} KiB to receive and {} KiB to send, of {} KiB \
             asked: with thousands of clients the kernel will drop their packets in bursts; \
             raise net.core.rmem_max and net.core.wmem_max to {UDP_BUFFER_BYTES}",
            receive / 1024,
            send / 1024,
            UDP_BUFFER_BYTES / 1024,
        );
    } else {
        debug!(receive, send, "QUIC socket buffers");
    }
}

/// The key of the node's QUIC stateless resets, derived from its identity
/// so that it survives restarts: a node killed and started again answers
/// its former clients' packets with resets they can verify (the tokens
/// they were given came from the same key), so they learn at their next
/// packet that the connection is gone, instead of after an idle timeout,
/// and reconnect. A keyed BLAKE3 hash is the MAC.
struct ResetKey([u8; 32]);

impl ResetKey {
    /// The key of the connection-id checks, derived from the same secret.
    fn cid_key(&self) -> u64 {
        let key = blake3::keyed_hash(&self.0, b"connection ids");
        let mut first = [0u8; 8];
        first.copy_from_slice(&key.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // Constant time, as blake3's Hash comparison is.
        let mac = blake3::keyed_hash(&self.0, data);
        let given: [u8; 32] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        if mac == blake3::Hash::from(given) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

impl QuicTransport {
    /// A transport authenticating as `keypair`, admitting through `gate`.
    pub fn new(
        keypair: &libp2p::identity::Keypair,
        config: QuicConfig,
        gate: Arc<HandshakeGate>,
    ) -> Result<Self, QuicError> {
        let tls_err = |e: &dyn std::fmt::Display| QuicError::Tls(e.to_string());
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(0u32.into())
            .max_concurrent_bidi_streams(config.max_streams.into())
            .datagram_receive_buffer_size(None)
            .keep_alive_interval(config.keep_alive)
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| tls_err(&e))?,
            ))
            .allow_spin(false)
            // One datagram per send: with segmentation offload a
            // connection keeps a send buffer of up to ten datagrams for
            // its life (its handshake flight fills one), about 12 KiB
            // per held client in a heap profile, for a node that mostly
            // sends small frames.
            .enable_segmentation_offload(false);
        let transport = Arc::new(transport);

        let server_tls = libp2p_tls::make_server_config(keypair).map_err(|e| tls_err(&e))?;
        let server_tls = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| tls_err(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport = transport.clone();
        // A client that moves reconnects; the node does not follow it.
        server.migration(false);

        let client_tls = libp2p_tls::make_client_config(keypair, None).map_err(|e| tls_err(&e))?;
        let client_tls = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| tls_err(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);
        let reset_key = keypair
            .derive_secret(config.reset_label)
            .ok_or_else(|| QuicError::Tls("the key cannot derive secrets".into()))?;
        Ok(Self {
            config,
            reset_key: Arc::new(ResetKey(reset_key)),
            server,
            client,
            gate,
            listeners: Vec::new(),
            dialer: None,
            hole_punches: HashMap::new(),
            waker: None,
        })
    }

    fn endpoint(&self, socket: UdpSocket, server: bool) -> Result<quinn::Endpoint, QuicError> {
        let mut endpoint_config = quinn::EndpointConfig::new(self.reset_key.clone());
        // Connection ids checked with a key that survives restarts too, so
        // that a restarted node recognises its former connections' ids as
        // its own and resets them, instead of dropping their packets.
        let cid_key = self.reset_key.cid_key();
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        // Every former client's first packet after a restart gets its
        // reset, not one every 20 ms (a reset is smaller than the packet
        // that incites it: no amplification).
        endpoint_config.min_reset_interval(Duration::ZERO);
        endpoint_config.supported_versions(vec![1]);
        Ok(quinn::Endpoint::new(
            endpoint_config,
            server.then(|| self.server.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?)
    }

    fn handshake(&self, connecting: quinn::Connecting, ticket: Option<Ticket>) -> QuicUpgrade {
        let timeout = self.config.handshake_timeout;
        QuicUpgrade {
            handshake: async move {
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(connection) => establish(connection?),
                    Err(_) => Err(QuicError::HandshakeTimedOut),
                }
            }
            .boxed(),
            ticket,
        }
    }
}

/// `/ip4|ip6/<ip>/udp/<port>/quic-v1[/p2p/<id>]` as a socket address.
fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut iter = addr.iter();
    let ip = match iter.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Udp(port) = iter.next()? else {
        return None;
    };
    let Protocol::QuicV1 = iter.next()? else {
        return None;
    };
    match iter.next() {
        None | Some(Protocol::P2p(_)) => {}
        Some(_) => return None,
    }
    Some(SocketAddr::new(ip, port))
}

fn multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

/// The peer id in a finished handshake's certificate.
fn establish(connection: quinn::Connection) -> Result<(PeerId, QuicMuxer), QuicError> {
    let certificates: Box<Vec<rustls::pki_types::CertificateDer<'static>>> = connection
        .peer_identity()
        .ok_or(QuicError::BadCertificate)?
        .downcast()
        .map_err(|_| QuicError::BadCertificate)?;
    let end_entity = certificates.first().ok_or(QuicError::BadCertificate)?;
    let certificate =
        libp2p_tls::certificate::parse(end_entity).map_err(|_| QuicError::BadCertificate)?;
    Ok((certificate.peer_id(), QuicMuxer::new(connection)))
}

struct Listener {
    id: ListenerId,
    endpoint: quinn::Endpoint,
    /// The listening socket, for hole punching.
    punch_from: UdpSocket,
    local: SocketAddr,
    accept: BoxFuture<'static, Option<quinn::Incoming>>,
    /// Events to hand out before accepting more.
    queued: VecDeque<TransportEvent<QuicUpgrade, QuicError>>,
    /// Interfaces, for a listener on an unspecified address.
    interfaces: Option<if_watch::tokio::IfWatcher>,
    closed: bool,
}

fn accept_next(endpoint: &quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    let endpoint = endpoint.clone();
    async move { endpoint.accept().await }.boxed()
}

impl Transport for QuicTransport {
    type Output = (PeerId, QuicMuxer);
    type Error = QuicError;
    type ListenerUpgrade = QuicUpgrade;
    type Dial = QuicDial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some(bind) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let socket = UdpSocket::bind(bind).map_err(|e| TransportError::Other(e.into()))?;
        widen_buffers(&socket);
        let local = socket
            .local_addr()
            .map_err(|e| TransportError::Other(e.into()))?;
        // Kept for hole punching: datagrams from the listening port.
        let punch_from = socket
            .try_clone()
            .map_err(|e| TransportError::Other(e.into()))?;
        let endpoint = self.endpoint(socket, true).map_err(TransportError::Other)?;
        let mut queued = VecDeque::new();
        let interfaces = if local.ip().is_unspecified() {
            Some(
                if_watch::tokio::IfWatcher::new()
                    .map_err(|e| TransportError::Other(QuicError::Io(e)))?,
            )
        } else {
            queued.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: multiaddr(local),
            });
            None
        };
        self.listeners.push(Listener {
            id,
            accept: accept_next(&endpoint),
            endpoint,
            punch_from,
            local,
            queued,
            interfaces,
            closed: false,
        });
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(listener) = self.listeners.iter_mut().find(|l| l.id == id) else {
            return false;
        };
        listener.endpoint.set_server_config(None);
        listener.closed = true;
        listener.queued.push_back(TransportEvent::ListenerClosed {
            listener_id: id,
            reason: Ok(()),
        });
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(remote) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if opts.role == Endpoint::Listener && opts.port_use == PortUse::New {
            return self.punch(remote).map_err(TransportError::Other);
        }
        // From a listening port of the same family, so that the dialled
        // peer sees the usual address (a new port if asked).
        let listening = self
            .listeners
            .iter()
            .find(|l| !l.closed && l.local.is_ipv4() == remote.is_ipv4())
            .filter(|_| opts.port_use == PortUse::Reuse);
        let endpoint = match listening {
            Some(listener) => listener.endpoint.clone(),
            None => match &self.dialer {
                Some(dialer) if remote.is_ipv4() && opts.port_use == PortUse::Reuse => {
                    dialer.clone()
                }
                _ => {
                    let any: SocketAddr = if remote.is_ipv4() {
                        ([0, 0, 0, 0], 0).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    let socket =
                        UdpSocket::bind(any).map_err(|e| TransportError::Other(e.into()))?;
                    let endpoint = self
                        .endpoint(socket, false)
                        .map_err(TransportError::Other)?;
                    if remote.is_ipv4() && opts.port_use == PortUse::Reuse {
                        self.dialer = Some(endpoint.clone());
                    }
                    endpoint
                }
            },
        };
        let connecting = endpoint
            .connect_with(self.client.clone(), remote, "l")
            .map_err(|e| TransportError::Other(e.into()))?;
        let upgrade = self.handshake(connecting, None);
        Ok(upgrade.boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        let mut index = 0;
        while index < this.listeners.len() {
            if let Some(event) = this.poll_listener(index, cx) {
                if matches!(event, TransportEvent::ListenerClosed { .. }) {
                    this.listeners.remove(index);
                }
                return Poll::Ready(event);
            }
            index += 1;
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl QuicTransport {
    /// Hole punching, dialled "as the listener": random datagrams to
    /// `remote` from the listening socket until its connection arrives
    /// there (or the handshake time runs out).
    fn punch(&mut self, remote: SocketAddr) -> Result<QuicDial, QuicError> {
        let socket = self
            .listeners
            .iter()
            .find(|l| !l.closed && l.local.is_ipv4() == remote.is_ipv4())
            .ok_or(QuicError::NoListenerToPunchFrom(remote))?
            .punch_from
            .try_clone()?;
        let (sender, arrived) = oneshot::channel();
        // Punches that ended (in time-outs) leave their senders behind.
        self.hole_punches
            .retain(|_, waiting| !waiting.is_canceled());
        match self.hole_punches.entry(remote) {
            Entry::Occupied(_) => return Err(QuicError::HolePunchInProgress(remote)),
            Entry::Vacant(entry) => {
                entry.insert(sender);
            }
        }
        let timeout = self.config.handshake_timeout;
        debug!(%remote, "punching a hole");
        Ok(async move {
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            let punching = async {
                loop {
                    let mut noise = [0u8; 64];
                    let _ = getrandom::fill(&mut noise);
                    // Lost or refused datagrams are what hole punching is.
                    let _ = socket.send_to(&noise, remote).await;
                    let pause = 10 + u64::from(noise[0]) * 190 / 255;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            };
            tokio::select! {
                arrived = arrived => match arrived {
                    Ok(upgrade) => upgrade.await,
                    Err(_) => Err(QuicError::HandshakeTimedOut),
                },
                () = punching => Err(QuicError::HandshakeTimedOut),
                () = tokio::time::sleep(timeout) => Err(QuicError::HandshakeTimedOut),
            }
        }
        .boxed())
    }

    fn poll_listener(
        &mut self,
        index: usize,
        cx: &mut Context<'_>,
    ) -> Option<TransportEvent<QuicUpgrade, QuicError>> {
        let listener = &mut self.listeners[index];
        if let Some(event) = listener.queued.pop_front() {
            return Some(event);
        }
        if listener.closed {
            return None;
        }
        if let Some(interfaces) = &mut listener.interfaces
            && let Poll::Ready(Some(event)) = futures::StreamExt::poll_next_unpin(interfaces, cx)
        {
            let port = listener.local.port();
            let id = listener.id;
            return match event {
                Ok(if_watch::IfEvent::Up(net))
                    if net.addr().is_ipv4() == listener.local.is_ipv4() =>
                {
                    Some(TransportEvent::NewAddress {
                        listener_id: id,
                        listen_addr: multiaddr(SocketAddr::new(net.addr(), port)),
                    })
                }
                Ok(if_watch::IfEvent::Down(net))
                    if net.addr().is_ipv4() == listener.local.is_ipv4() =>
                {
                    Some(TransportEvent::AddressExpired {
                        listener_id: id,
                        listen_addr: multiaddr(SocketAddr::new(net.addr(), port)),
                    })
                }
                Ok(_) => {
                    cx.waker().wake_by_ref();
                    None
                }
                Err(error) => Some(TransportEvent::ListenerError {
                    listener_id: id,
                    error: error.into(),
                }),
            };
        }
        loop {
            let listener = &mut self.listeners[index];
            let incoming = match listener.accept.poll_unpin(cx) {
                Poll::Pending => return None,
                Poll::Ready(None) => {
                    listener.closed = true;
                    return Some(TransportEvent::ListenerClosed {
                        listener_id: listener.id,
                        reason: Ok(()),
                    });
                }
                Poll::Ready(Some(incoming)) => incoming,
            };
            listener.accept = accept_next(&listener.endpoint);
            let (id, local) = (listener.id, listener.local);
            let remote = incoming.remote_address();
            // The connection a hole punch waits for: asked for, so no gate.
            if let Some(waiting) = self.hole_punches.remove(&remote)
                && !waiting.is_canceled()
            {
                match incoming.accept() {
                    Ok(connecting) => {
                        debug!(%remote, "the connection a hole punch waited for");
                        let _ = waiting.send(self.handshake(connecting, None));
                    }
                    Err(e) => debug!(%remote, "a hole-punched connection failed at once: {e}"),
                }
                continue;
            }
            let Some(source) = Source::of(&multiaddr(remote)) else {
                incoming.ignore();
                continue;
            };
            let validated = incoming.remote_address_validated();
            let ticket = match self.gate.try_admit(source, validated) {
                Admission::Admitted(ticket) => ticket,
                Admission::ProveAddress if incoming.may_retry() => {
                    // Stateless: nothing is kept until the token comes back.
                    let _ = incoming.retry();
                    continue;
                }
                Admission::ProveAddress | Admission::Refused => {
                    debug!(%remote, "QUIC handshake not admitted: its address is at its limit");
                    incoming.ignore();
                    continue;
                }
            };
            let connecting = match incoming.accept() {
                Ok(connecting) => connecting,
                Err(e) => {
                    debug!(%remote, "QUIC connection failed at once: {e}");
                    continue;
                }
            };
            let upgrade = self.handshake(connecting, Some(ticket));
            return Some(TransportEvent::Incoming {
                listener_id: id,
                upgrade,
                local_addr: multiaddr(local),
                send_back_addr: multiaddr(remote),
            });
        }
    }
}

/// An inbound (or outbound) handshake.
pub struct QuicUpgrade {
    handshake: BoxFuture<'static, Result<(PeerId, QuicMuxer), QuicError>>,
    ticket: Option<Ticket>,
}

impl std::fmt::Debug for QuicUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicUpgrade")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Future for QuicUpgrade {
    type Output = Result<(PeerId, QuicMuxer), QuicError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ticket.as_ref().is_some_and(|t| t.poll_shed(cx)) {
            self.ticket = None;
            return Poll::Ready(Err(QuicError::Shed));
        }
        let done = self.handshake.poll_unpin(cx);
        match (&done, self.ticket.take()) {
            // Finished: it counts towards the pace and what handshakes take.
            (Poll::Ready(Ok(_)), Some(ticket)) => ticket.finished(),
            (Poll::Pending, ticket) => self.ticket = ticket,
            (Poll::Ready(Err(_)), _) => {}
            (Poll::Ready(Ok(_)), None) => {}
        }
        done
    }
}

type StreamPair = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>;

/// A QUIC connection as a libp2p stream muxer.
pub struct QuicMuxer {
    connection: quinn::Connection,
    inbound: Option<BoxFuture<'static, StreamPair>>,
    outbound: Option<BoxFuture<'static, StreamPair>>,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
}

impl std::fmt::Debug for QuicMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicMuxer")
            .field("remote", &self.connection.remote_address())
            .finish_non_exhaustive()
    }
}

impl QuicMuxer {
    fn new(connection: quinn::Connection) -> Self {
        Self {
            connection,
            inbound: None,
            outbound: None,
            closing: None,
        }
    }
}

impl StreamMuxer for QuicMuxer {
    type Substream = QuicStream;
    type Error = QuicError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let connection = this.connection.clone();
        let accepting = this
            .inbound
            .get_or_insert_with(|| async move { connection.accept_bi().await }.boxed());
        let (send, recv) = futures::ready!(accepting.poll_unpin(cx))?;
        this.inbound = None;
        Poll::Ready(Ok(QuicStream { send, recv }))
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let connection = this.connection.clone();
        let opening = this
            .outbound
            .get_or_insert_with(|| async move { connection.open_bi().await }.boxed());
        let (send, recv) = futures::ready!(opening.poll_unpin(cx))?;
        this.outbound = None;
        Poll::Ready(Ok(QuicStream { send, recv }))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let connection = this.connection.clone();
        let closing = this.closing.get_or_insert_with(|| {
            connection.close(0u32.into(), b"");
            async move { connection.closed().await }.boxed()
        });
        match futures::ready!(closing.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed => Poll::Ready(Ok(())),
            e => Poll::Ready(Err(e.into())),
        }
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Poll::Pending
    }
}

/// One bidirectional QUIC stream.
#[derive(Debug)]
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_close(Pin::new(&mut self.send), cx)
    }
}

#[cfg(test)]
mod tests;
