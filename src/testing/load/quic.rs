//! Light QUIC clients that share one UDP endpoint: the held-connections
//! load over QUIC.
//!
//! A light client made of a libp2p swarm owns a QUIC endpoint, and quinn
//! gives every endpoint a receive buffer of 2.9 MB: a worker of 10,000 such
//! clients ran out of memory before the node did. Here every client of a
//! worker is one quinn connection on the worker's one endpoint, with its
//! own key and libp2p TLS certificate, speaking to the node exactly what a
//! messenger client speaks on the wire: multistream-select on every stream,
//! the directory protocol on one, libp2p's ping as the client does over
//! QUIC (one ping when the connection opens, and every ping of the node's
//! answered), and "not available" to anything else the node asks
//! (identify), as a client without that behaviour answers. Transport
//! parameters are libp2p-quic's defaults, the client's (keep-alive 5 s,
//! idle time-out 10 s): over QUIC they, not pings, keep watch.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::directory::{DirectorySession, node_peer_id};
use crate::proto::Identity;
use crate::proto::directory::PROTOCOL;
use crate::reconnect::Setback;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::task::JoinSet;

use super::Failed;

/// libp2p's ping protocol: 32 bytes echoed.
const PING: &str = "/ipfs/ping/1.0.0";
const PING_SIZE: usize = 32;
/// How long the first ping may take (the client's ping time-out).
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// libp2p-quic's defaults.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT_MS: u32 = 10_000;
/// What the shared socket asks for each way.
const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// The first message on every multistream-select stream.
const MULTISTREAM: &str = "/multistream/1.0.0";
/// The longest multistream-select message read: protocol names are short.
const MAX_NEGOTIATION_MESSAGE: usize = 1024;

/// The node, and the one endpoint all of a worker's clients reach it from.
#[derive(Debug, Clone)]
pub struct QuicLoad {
    endpoint: quinn::Endpoint,
    node_addr: SocketAddr,
    node: PeerId,
}

impl QuicLoad {
    /// An endpoint on `bind` for clients of the node at `node_addr` (a
    /// `/ip4/…/udp/…/quic-v1/p2p/…` address). Needs a tokio runtime.
    pub fn new(node_addr: &Multiaddr, bind: Ipv4Addr) -> Result<Self, String> {
        let node = node_peer_id(node_addr).map_err(|e| e.to_string())?;
        let mut ip = None;
        let mut port = None;
        for protocol in node_addr.iter() {
            match protocol {
                Protocol::Ip4(a) => ip = Some(a),
                Protocol::Udp(p) => port = Some(p),
                _ => {}
            }
        }
        let (Some(ip), Some(port)) = (ip, port) else {
            return Err(format!("{node_addr} is not an IPv4 QUIC address"));
        };
        let socket = std::net::UdpSocket::bind((bind, 0)).map_err(|e| e.to_string())?;
        // Thousands of connections' packets arrive on this one socket: with
        // the default buffer (about 200 KiB) the kernel drops them in
        // bursts and the clients die of time-outs the node did not cause.
        // (The kernel grants at most net.core.rmem_max, wmem_max.)
        let buffers = socket2::SockRef::from(&socket);
        let _ = buffers.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = buffers.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        let mut config = quinn::EndpointConfig::default();
        config.supported_versions(vec![1]);
        let endpoint = quinn::Endpoint::new(config, None, socket, Arc::new(quinn::TokioRuntime))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            endpoint,
            node_addr: SocketAddr::from((ip, port)),
            node,
        })
    }

    /// Connects with `config` (a client's [`Self::client_config`]) and
    /// opens a directory session on the connection; the client lives until
    /// the returned holder drops.
    pub async fn connect(
        &self,
        config: &quinn::ClientConfig,
    ) -> Result<(QuicClient, DirectorySession), Failed> {
        let connecting = self
            .endpoint
            .connect_with(config.clone(), self.node_addr, "l")
            .map_err(|e| Failed::turned_away(format!("cannot dial: {e}")))?;
        let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(Failed {
                    setback: Setback::Unreachable,
                    message: "the QUIC handshake did not finish in time".into(),
                });
            }
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(answer_streams(connection.clone()));
        tasks.spawn(ping_node(connection.clone()));
        let stream = open(&connection, PROTOCOL.as_ref())
            .await
            .map_err(Failed::turned_away)?;
        let gone = {
            let connection = connection.clone();
            async move {
                connection.closed().await;
            }
        };
        let session = DirectorySession::over_stream(self.node, stream, None, gone);
        Ok((
            QuicClient {
                connection,
                _tasks: tasks,
            },
            session,
        ))
    }

    /// libp2p's TLS (a certificate of `identity`'s, the node's peer id
    /// checked) with libp2p-quic's transport parameters. Made once per
    /// client, as libp2p-quic makes it once per transport: a certificate
    /// costs a key pair and a signature.
    pub fn client_config(&self, identity: &Identity) -> Result<quinn::ClientConfig, Failed> {
        let tls = libp2p_tls::make_client_config(&identity.keypair(), Some(self.node))
            .map_err(Failed::turned_away)?;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(Failed::turned_away)?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(0u32.into())
            .max_concurrent_bidi_streams(256u32.into())
            .datagram_receive_buffer_size(None)
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
            .allow_spin(false);
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// What a failed handshake says about the node: silence, or an answer.
fn failed(error: quinn::ConnectionError) -> Failed {
    let setback = match error {
        quinn::ConnectionError::TimedOut => Setback::Unreachable,
        _ => Setback::TurnedAway,
    };
    Failed {
        setback,
        message: error.to_string(),
    }
}

/// One light client's connection and the tasks that answer on it; closed
/// when dropped.
#[derive(Debug)]
pub struct QuicClient {
    connection: quinn::Connection,
    _tasks: JoinSet<()>,
}

impl Drop for QuicClient {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"");
    }
}

/// Answers the streams the node opens: ping is echoed, anything else
/// (identify) is declined, as a libp2p client without it declines.
async fn answer_streams(connection: quinn::Connection) {
    let mut streams = JoinSet::new();
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        streams.spawn(async move {
            if accept(&mut send, &mut recv, &[PING]).await.is_ok() {
                let mut payload = [0; PING_SIZE];
                while recv.read_exact(&mut payload).await.is_ok() {
                    if send.write_all(&payload).await.is_err() {
                        break;
                    }
                }
            }
        });
        // Finished streams' results are not kept.
        while streams.try_join_next().is_some() {}
    }
}

/// Pings the node once, as the client does when a QUIC connection opens
/// (the round trip is a metric), and keeps the stream, as libp2p does.
async fn ping_node(connection: quinn::Connection) {
    let Ok(QuicStream { mut send, mut recv }) = open(&connection, PING).await else {
        return;
    };
    let mut payload = [0; PING_SIZE];
    if getrandom::fill(&mut payload).is_err() {
        return;
    }
    let round = async {
        send.write_all(&payload).await.ok()?;
        let mut echo = [0; PING_SIZE];
        recv.read_exact(&mut echo).await.ok()?;
        (echo == payload).then_some(())
    };
    if matches!(
        tokio::time::timeout(PING_TIMEOUT, round).await,
        Ok(Some(()))
    ) {
        connection.closed().await;
    }
}

/// Opens a stream and negotiates `protocol` on it (multistream-select,
/// the dialer's side).
async fn open(connection: &quinn::Connection, protocol: &str) -> Result<QuicStream, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    // Both messages at once, as libp2p's dialer does for a single choice.
    let mut proposal = message(MULTISTREAM);
    proposal.extend(message(protocol));
    send.write_all(&proposal).await.map_err(|e| e.to_string())?;
    let header = read_message(&mut recv).await?;
    if header != MULTISTREAM {
        return Err(format!("not multistream-select: {header:?}"));
    }
    let answer = read_message(&mut recv).await?;
    if answer != protocol {
        return Err(format!("the node declined {protocol}: {answer:?}"));
    }
    Ok(QuicStream { send, recv })
}

/// Negotiates one of `supported` on a stream the node opened
/// (multistream-select, the listener's side); `Err` if it proposed none
/// of them.
async fn accept(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    supported: &[&str],
) -> Result<(), String> {
    if read_message(recv).await? != MULTISTREAM {
        return Err("not multistream-select".into());
    }
    send.write_all(&message(MULTISTREAM))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let proposed = read_message(recv).await?;
        if supported.contains(&proposed.as_str()) {
            send.write_all(&message(&proposed))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        send.write_all(&message("na"))
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// One multistream-select message: its length (an unsigned varint), the
/// text and a newline.
fn message(text: &str) -> Vec<u8> {
    let mut length = text.len() + 1;
    let mut out = Vec::with_capacity(length + 2);
    while length >= 0x80 {
        out.push((length as u8 & 0x7f) | 0x80);
        length >>= 7;
    }
    out.push(length as u8);
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    out
}

async fn read_message(recv: &mut quinn::RecvStream) -> Result<String, String> {
    let mut length = 0usize;
    for shift in [0, 7] {
        let mut byte = [0; 1];
        recv.read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        length |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    if length == 0 || length > MAX_NEGOTIATION_MESSAGE {
        return Err(format!("a negotiation message of {length} bytes"));
    }
    let mut text = vec![0; length];
    recv.read_exact(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    if text.pop() != Some(b'\n') {
        return Err("a negotiation message without its newline".into());
    }
    String::from_utf8(text).map_err(|e| e.to_string())
}

/// A negotiated QUIC stream as one byte stream, for the directory session.
struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl futures::AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        futures::AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl futures::AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures::AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::AsyncWrite::poll_close(Pin::new(&mut self.send), cx)
    }
}
