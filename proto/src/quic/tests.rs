use super::*;
use crate::gate::GateLimits;
use futures::StreamExt;

fn transport(gate: Arc<HandshakeGate>) -> (PeerId, QuicTransport) {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let config = QuicConfig {
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        max_streams: 8,
        keep_alive: Some(Duration::from_secs(5)),
        reset_label: b"test",
    };
    (
        key.public().to_peer_id(),
        QuicTransport::new(&key, config, gate).unwrap(),
    )
}

fn roomy() -> Arc<HandshakeGate> {
    HandshakeGate::new(GateLimits {
        per_source: 8,
        total: 64,
        stale_after: Duration::from_secs(5),
    })
}

/// Listens on loopback; the address it got.
async fn listening(t: &mut QuicTransport) -> Multiaddr {
    t.listen_on(
        ListenerId::next(),
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    )
    .unwrap();
    loop {
        let event = futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await;
        if let TransportEvent::NewAddress { listen_addr, .. } = event {
            return listen_addr;
        }
    }
}

/// Drives `t`'s listeners, handing over every connection they get.
fn serve(mut t: QuicTransport) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut upgrades = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                event = futures::future::poll_fn(|cx| Pin::new(&mut t).poll(cx)) => {
                    if let TransportEvent::Incoming { upgrade, .. } = event {
                        upgrades.push(upgrade);
                    }
                }
                Some(_) = upgrades.next(), if !upgrades.is_empty() => {}
            }
        }
    })
}

#[tokio::test]
async fn a_hole_punch_takes_the_connection_the_other_side_dials() {
    let (a_peer, mut a) = transport(roomy());
    let (b_peer, mut b) = transport(roomy());
    let a_addr = listening(&mut a).await;
    let b_addr = listening(&mut b).await;
    // A, "the listener", punches towards B's listening port; B dials A
    // from it, as DCUtR has them do at once.
    let punched = a
        .dial(
            b_addr,
            DialOpts {
                role: Endpoint::Listener,
                port_use: PortUse::New,
            },
        )
        .unwrap();
    let dialled = b
        .dial(
            a_addr,
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::Reuse,
            },
        )
        .unwrap();
    let (_a_task, _b_task) = (serve(a), serve(b));
    let (punched, dialled) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(punched, dialled),
    )
    .await
    .expect("both ends of the punched hole in time");
    assert_eq!(
        punched.unwrap().0,
        b_peer,
        "A's dial ends with B's connection"
    );
    assert_eq!(dialled.unwrap().0, a_peer);
}

#[tokio::test]
async fn a_full_gate_asks_an_unproven_sender_to_prove_its_address_and_then_admits_it() {
    // No room at all for unproven senders: every first Initial gets a
    // Retry, and only the echoed token gets a handshake.
    let tight = HandshakeGate::new(GateLimits {
        per_source: 1,
        total: 1,
        stale_after: Duration::from_secs(5),
    });
    let _held = tight.admit(Source::of(&"/ip4/192.0.2.1/tcp/1".parse().unwrap()).unwrap());
    let (server_peer, mut server) = transport(tight.clone());
    let server_addr = listening(&mut server).await;
    let _server_task = serve(server);
    let (_, mut client) = transport(roomy());
    let client_addr = listening(&mut client).await;
    let _ = client_addr;
    let dialled = client
        .dial(
            server_addr,
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::Reuse,
            },
        )
        .unwrap();
    let _client_task = serve(client);
    let connected = tokio::time::timeout(Duration::from_secs(10), dialled)
        .await
        .expect("in time");
    assert_eq!(connected.unwrap().0, server_peer);
    assert!(
        tight
            .shed_counts()
            .retried
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the first Initial was answered with a Retry"
    );
}

#[test]
fn quic_multiaddrs_map_to_socket_addresses_and_back() {
    let addr: Multiaddr = "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap();
    let socket = socket_addr(&addr).unwrap();
    assert_eq!(socket, "127.0.0.1:4001".parse().unwrap());
    assert_eq!(multiaddr(socket), addr);
    let with_peer: Multiaddr = format!("{addr}/p2p/{}", PeerId::random()).parse().unwrap();
    assert_eq!(socket_addr(&with_peer), Some(socket));
    for other in [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/127.0.0.1/udp/4001/quic",
        "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport",
    ] {
        assert_eq!(socket_addr(&other.parse().unwrap()), None, "{other}");
    }
}
