use super::event_loop::address_in_use;
use super::*;
use libp2p::TransportError;
use libp2p::swarm::DialError;

fn failed(kinds: &[std::io::ErrorKind]) -> DialError {
    DialError::Transport(
        kinds
            .iter()
            .map(|kind| {
                // As the TCP transport wraps it.
                let inner = std::io::Error::from(*kind);
                (
                    "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                    TransportError::Other(std::io::Error::other(inner)),
                )
            })
            .collect(),
    )
}

#[test]
fn only_a_port_in_use_makes_a_dial_leave_from_another() {
    use std::io::ErrorKind::{AddrInUse, ConnectionRefused};
    assert!(address_in_use(&failed(&[AddrInUse])));
    assert!(address_in_use(&failed(&[AddrInUse, AddrInUse])));
    assert!(
        !address_in_use(&failed(&[AddrInUse, ConnectionRefused])),
        "an address that refuses is no reason to try from another port"
    );
    assert!(!address_in_use(&failed(&[ConnectionRefused])));
    assert!(!address_in_use(&failed(&[])));
    assert!(!address_in_use(&DialError::Aborted));
}

async fn tcp_port(network: &Network) -> u16 {
    let mut addrs = network.listen_addrs();
    let found = addrs
        .wait_for(|addrs| !addrs.is_empty())
        .await
        .expect("the network runs");
    found
        .iter()
        .find_map(|addr| {
            addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
        })
        .expect("a TCP listening address")
}

/// A peer that answers one ping per stream and then no more on it,
/// as js-libp2p does in effect (it aborts an inbound ping stream a
/// fixed time after it opened): pings on a stream each keep the
/// connection, where pings on one reused stream would go unanswered
/// and the connection be closed as silent.
#[tokio::test]
async fn pings_on_a_stream_each_keep_a_peer_that_answers_one_per_stream() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::Transport as _;

    let mut peer = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            libp2p::core::transport::MemoryTransport::default()
                .upgrade(libp2p::core::upgrade::Version::V1)
                .authenticate(noise::Config::new(key).unwrap())
                .multiplex(libp2p::yamux::Config::default())
        })
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let mut incoming = peer
        .behaviour()
        .new_control()
        .accept(messenger_proto::liveness::ping::PROTOCOL)
        .unwrap();
    peer.listen_on("/memory/0".parse().unwrap()).unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            peer.select_next_some().await
        {
            break address;
        }
    };
    let peer_id = *peer.local_peer_id();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&answered);
    let serving = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                _ = peer.select_next_some() => {}
                Some((_, mut stream)) = incoming.next() => {
                    let mut ping = [0u8; 32];
                    if stream.read_exact(&mut ping).await.is_ok()
                        && stream.write_all(&ping).await.is_ok()
                        && stream.flush().await.is_ok()
                    {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Open, and never read again.
                    held.push(stream);
                }
            }
        }
    });

    let config = NetworkConfig {
        memory_only: true,
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..NetworkConfig::default()
    };
    let (network, _task, _) = Network::start(&Identity::generate().unwrap(), config).unwrap();
    let mut events = network.events();
    network.dial(peer_id, vec![addr]).await.unwrap();
    // Ten intervals and then some: a reused stream would have gone
    // unanswered from the second ping, and the connection closed
    // after interval + timeout.
    let watched = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(NetworkEvent::Disconnected { peer }) = events.recv().await
                && peer == peer_id
            {
                return;
            }
        }
    })
    .await;
    assert!(watched.is_err(), "the connection was closed as silent");
    assert!(network.path(peer_id).await.is_some(), "still connected");
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        answered >= 8,
        "{answered} pings answered, each on a stream of its own"
    );
    serving.abort();
}

#[tokio::test]
async fn a_dial_refused_its_listening_port_leaves_from_a_new_one() {
    let start =
        || Network::start(&Identity::generate().unwrap(), NetworkConfig::default()).unwrap();
    let (alice, _alice_task, _) = start();
    let (bob, _bob_task, _) = start();
    alice
        .listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    bob.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let (alice_port, bob_port) = (tcp_port(&alice).await, tcp_port(&bob).await);

    // A socket on alice's listening port at another loopback address
    // that does not share its port (no SO_REUSEADDR), as another
    // program's may: the kernel refuses to bind a dial to 0.0.0.0 on
    // that port, "address in use".
    let holder = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    let elsewhere: std::net::SocketAddr = ([127, 0, 0, 2], alice_port).into();
    holder.bind(&elsewhere.into()).unwrap();

    let bob_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{bob_port}").parse().unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        alice.dial(bob.local_peer_id(), vec![bob_addr]),
    )
    .await
    .expect("the dial ends")
    .expect("the dial leaves from a new port and connects");
    drop(holder);
}
