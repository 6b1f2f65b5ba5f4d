//! A reconnect storm: a node holding a crowd of online clients is killed
//! and started again on the same data dir; every client comes back by
//! itself, paced by the client's jittered backoff, and the node admits
//! them at the rate it can handshake. Over TCP and over QUIC; the
//! full-size figure (50,000 clients) is in the benchmark suite.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;

use crate::load::{CrowdCounts, Transport};
use crate::support::Node;

/// Clients in the crowd.
const CROWD: usize = 2_000;

/// Every client must be back within this of the node's restart. Measured
/// here: see the test's output (a debug build of both sides, on 2 cores).
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

/// Node flags for a crowd that comes from one address: in the field each
/// user has an address of their own, so the per-address bounds that stop
/// one host from hoarding the node are opened here.
const CROWD_FLAGS: [&str; 4] = [
    "--max-pending-per-ip",
    "512",
    "--max-connections-per-ip",
    "10000",
];

/// Waits until `n` clients are online, up to `limit`; how long it took.
fn wait_online(counts: &CrowdCounts, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let (now, _) = counts.read();
        if now >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "only {now} of {n} clients online after {limit:?}"
        );
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("{now} of {n} online after {:?}", started.elapsed());
            last_report = Instant::now();
        }
        // A poll of an in-process counter, not a wait for the system
        // under test: what is measured is the counter reaching n.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_crowd_comes_back_by_itself_after_the_node_is_killed() {
    storm(Transport::Tcp);
}

/// Over QUIC the crowd shares one UDP endpoint (as the benchmark's load
/// does); a killed node's clients hear nothing until their idle time-out
/// or, once it is back, its stateless reset of their next packet.
#[test]
fn a_quic_crowd_comes_back_by_itself_after_the_node_is_killed() {
    storm(Transport::Quic);
}

/// One storm at a time: two crowds of 2,000 on two cores would measure
/// each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn storm(transport: Transport) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Over QUIC the node also listens on a UDP port kept across the
    // restart (found free here: the node prints its TCP address only to
    // the helper that starts it).
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let quic_listen = format!("/ip4/127.0.0.1/udp/{udp_port}/quic-v1");
    let mut flags: Vec<&str> = CROWD_FLAGS.to_vec();
    if transport == Transport::Quic {
        flags.extend(["--listen", &quic_listen]);
    }
    let mut node = Node::start_with(dir.path(), &flags);
    let port = node.port();
    let node_addr: Multiaddr = match transport {
        Transport::Tcp => node.addr.parse().unwrap(),
        Transport::Quic => format!("{quic_listen}/p2p/{}", node.peer_id())
            .parse()
            .unwrap(),
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let counts = Arc::new(CrowdCounts::default());
    let mut crowd = tokio::task::JoinSet::new();
    {
        let _in_runtime = runtime.enter();
        crate::load::crowd(
            &mut crowd,
            &node_addr,
            Ipv4Addr::LOCALHOST,
            transport,
            0,
            CROWD,
            &counts,
        )
        .expect("start the crowd");
    }
    // The first arrival is a storm too: all at once.
    let first = wait_online(&counts, CROWD, RECOVERY_BOUND);
    eprintln!(
        "{CROWD} {} clients online {first:?} after starting together",
        transport.as_str()
    );

    node.proc.signal("KILL");
    node.proc.wait_exit();
    let killed = Instant::now();
    // Every client sees its connection end: over TCP the kernel closes a
    // killed process's sockets; over QUIC the idle time-out (10 s) ends it.
    let started = Instant::now();
    while counts.read().0 > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} clients still think they are online",
            counts.read().0
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let node = crate::support::Node::spawn(None, dir.path(), "127.0.0.1", port, &flags);
    let down = killed.elapsed();
    assert_eq!(node.port(), port, "same port");
    assert_eq!(
        node_addr.iter().last(),
        node.addr.parse::<Multiaddr>().unwrap().iter().last(),
        "same key"
    );
    let back = wait_online(&counts, CROWD, RECOVERY_BOUND);
    eprintln!(
        "node down for {down:?}; all {CROWD} {} clients online again {back:?} after it was back",
        transport.as_str()
    );
    crowd.abort_all();
    drop(crowd);
    drop(runtime);
}
