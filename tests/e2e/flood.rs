//! Handshake floods against the real node process: thousands of
//! connections that never start their handshake, and more sending random
//! bytes, from one address and then spread over fifty, while an honest
//! client on another address registers and resolves with the real
//! `messenger` binary. Every try must succeed, fast, with the node's memory
//! bounded, and the node must be back to idle when the flood ends.
//!
//! The attackers are real sockets bound to 127.0.0.x source addresses
//! (all of 127/8 is loopback on Linux), driven by a runtime of their own.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::support::{Node, User};

/// Honest tries per phase.
const TRIES: usize = 20;

/// Connections held open without a handshake, and connections sending
/// random bytes, in each flood.
const HELD: usize = 3_000;
const NOISY: usize = 200;

/// The node's memory must stay under this during a flood.
const RSS_CEILING_KIB: u64 = 256 * 1024;

/// Attacking sockets driven by their own runtime until dropped.
struct Flood {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Arc<AtomicBool>,
    /// Connections open now, and connections made since the start.
    open: Arc<AtomicU64>,
    made: Arc<AtomicU64>,
}

impl Flood {
    /// `held` idle and `noisy` random-byte connections to `node`, spread
    /// round-robin over `sources`. A connection the node closes is opened
    /// again after a pause of a few seconds: a slow trickle that keeps
    /// whatever slots the node gives it full.
    fn start(node: SocketAddr, sources: &[Ipv4Addr], held: usize, noisy: usize) -> Self {
        Self::start_with(node, sources, held, noisy, None)
    }

    /// [`Flood::start`], each connection given up after `recycle` (if
    /// any) and opened again at once: a handshake that never finishes yet
    /// always looks young. Their first connections are spread over one
    /// `recycle`.
    fn start_with(
        node: SocketAddr,
        sources: &[Ipv4Addr],
        held: usize,
        noisy: usize,
        recycle: Option<Duration>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(0));
        let made = Arc::new(AtomicU64::new(0));
        for i in 0..held + noisy {
            let source = sources[i % sources.len()];
            let (stop, open, made) = (stop.clone(), open.clone(), made.clone());
            runtime.spawn(attacker(
                Slot {
                    node,
                    source,
                    noisy: i >= held,
                    seed: i as u64,
                    recycle,
                },
                stop,
                open,
                made,
            ));
        }
        Self {
            runtime: Some(runtime),
            stop,
            open,
            made,
        }
    }

    /// Waits until at least `n` connections have been made.
    fn wait_made(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.made.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the flood did not get going");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// What one attacking connection slot does.
#[derive(Clone, Copy)]
struct Slot {
    node: SocketAddr,
    source: Ipv4Addr,
    /// Sends random bytes (or stays silent).
    noisy: bool,
    seed: u64,
    /// Gives its connection up after this long and opens another at once.
    recycle: Option<Duration>,
}

/// One attacking connection slot, reopened whenever the target closes it.
async fn attacker(slot: Slot, stop: Arc<AtomicBool>, open: Arc<AtomicU64>, made: Arc<AtomicU64>) {
    let Slot {
        node,
        source,
        noisy,
        seed,
        recycle,
    } = slot;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift: random enough for garbage and jitter.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    if let Some(every) = recycle {
        let offset = next() % every.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(offset)).await;
    }
    while !stop.load(Ordering::Relaxed) {
        let socket = TcpSocket::new_v4().unwrap();
        if socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let connected = tokio::time::timeout(Duration::from_secs(5), socket.connect(node)).await;
        if let Ok(Ok(mut stream)) = connected {
            made.fetch_add(1, Ordering::Relaxed);
            open.fetch_add(1, Ordering::Relaxed);
            let opened = Instant::now();
            let mut buf = [0u8; 1024];
            let mut given_up = false;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if recycle.is_some_and(|every| opened.elapsed() >= every) {
                    given_up = true;
                    break;
                }
                if noisy {
                    let garbage: Vec<u8> = (0..1024).map(|_| next() as u8).collect();
                    if stream.write_all(&garbage).await.is_err() {
                        break;
                    }
                }
                // Idle ones only wait for the node to close them.
                let read =
                    tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    break;
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            if given_up {
                continue;
            }
        }
        let pause = 1_000 + next() % 4_000;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One honest try: a new user registers a new name and resolves it, each
/// with the real binary and a fresh connection. Returns the time taken.
fn honest_try(node: &Node, i: usize, phase: &str) -> Duration {
    let user = User::new(node);
    let name = format!("{phase}{i}");
    let started = Instant::now();
    let registered = user.run(&["register", &name]);
    assert_eq!(
        registered.code, 0,
        "{phase}: honest register {i} failed: {registered:?}"
    );
    let whois = user.run(&["--json", "whois", &name]);
    assert_eq!(whois.code, 0, "{phase}: honest whois {i} failed: {whois:?}");
    assert_eq!(whois.json()["name"], name.as_str());
    started.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn open_fds(node: &Node) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.proc.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Honest tries while `flood` runs; the node's peak memory meanwhile.
fn tries_under(node: &Node, phase: &str) -> (Vec<Duration>, u64) {
    let mut peak_rss = node.rss_kib();
    let tries = (0..TRIES)
        .map(|i| {
            let took = honest_try(node, i, phase);
            peak_rss = peak_rss.max(node.rss_kib());
            took
        })
        .collect();
    (tries, peak_rss)
}

#[test]
fn a_handshake_flood_from_one_or_fifty_addresses_does_not_lock_honest_users_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let target = SocketAddr::from(([127, 0, 0, 1], node.port()));

    let (idle, _) = tries_under(&node, "idle");
    let idle_fds = open_fds(&node);
    let idle_median = median(idle);

    let phases: [(&str, Vec<Ipv4Addr>); 2] = [
        ("one", vec![Ipv4Addr::new(127, 0, 0, 100)]),
        (
            "fifty",
            (1..=50).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect(),
        ),
    ];
    let mut report = vec![format!(
        "FLOOD RESULT: idle: honest register+whois median {idle_median:?}, node fds {idle_fds}"
    )];
    for (phase, sources) in phases {
        let flood = Flood::start(target, &sources, HELD, NOISY);
        flood.wait_made((HELD + NOISY) as u64);
        let (tries, peak_rss) = tries_under(&node, phase);
        let under = median(tries.clone());
        let worst = tries.iter().max().copied().unwrap_or_default();
        let made = flood.made.load(Ordering::Relaxed);
        let open = flood.open.load(Ordering::Relaxed);
        let fds = open_fds(&node);
        drop(flood);
        report.push(format!(
            "FLOOD RESULT: {phase} address(es), {HELD} idle + {NOISY} random-byte connections \
             ({made} made, {open} still open on the attackers' side): honest median {under:?} \
             (worst {worst:?}) vs idle {idle_median:?}; node peak RSS {} MiB, fds {fds}",
            peak_rss / 1024
        ));
        assert!(
            under < Duration::from_secs(1),
            "{phase}: the honest median under the flood was {under:?}\n{}",
            report.join("\n")
        );
        assert!(
            peak_rss < RSS_CEILING_KIB,
            "{phase}: the node grew to {peak_rss} KiB"
        );

        // Recovery: the node lets go of the flood's sockets and serves as
        // before.
        let deadline = Instant::now() + Duration::from_secs(30);
        while open_fds(&node) > idle_fds + 16 {
            assert!(
                Instant::now() < deadline,
                "{phase}: the node still holds {} descriptors after the flood (idle: {idle_fds})",
                open_fds(&node)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = median(
            (0..5)
                .map(|i| honest_try(&node, i, &format!("{phase}after")))
                .collect(),
        );
        report.push(format!(
            "FLOOD RESULT: after the {phase}-address flood: node fds {}, honest median {after:?}",
            open_fds(&node)
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// A burst of QUIC Initials: each from a fresh UDP socket (a new source
/// port) on `source`, carrying a real ClientHello (made by quinn-proto with
/// libp2p's TLS settings, never driven further), after which the sender
/// goes silent, as a flooding script would. Runs until `stop`; returns how
/// many were sent.
fn quic_initials(node: SocketAddr, source: Ipv4Addr, stop: Arc<AtomicBool>) -> u64 {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let tls = libp2p_tls::make_client_config(&key, None).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let client = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut sent = 0;
    let mut buf = Vec::with_capacity(1500);
    // Sockets stay open a while (so ports are not reused at once), then go.
    let mut sockets = std::collections::VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let Ok((_, mut connection)) = endpoint.connect(now, client.clone(), node, "l") else {
            // Out of connection ids: a fresh endpoint.
            endpoint = quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            );
            continue;
        };
        buf.clear();
        let Some(transmit) = connection.poll_transmit(now, 1, &mut buf) else {
            continue;
        };
        let Ok(socket) = std::net::UdpSocket::bind(SocketAddrV4::new(source, 0)) else {
            continue;
        };
        if socket.send_to(&buf[..transmit.size], node).is_ok() {
            sent += 1;
        }
        sockets.push_back(socket);
        if sockets.len() > 2_000 {
            sockets.pop_front();
        }
    }
    sent
}

#[test]
fn a_burst_of_quic_initials_does_not_stop_honest_quic_clients() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
    // The QUIC line the node printed.
    let quic_addr = node
        .proc
        .stdout
        .seen
        .iter()
        .find(|l| l.contains("/quic-v1/"))
        .cloned();
    let mut node = node;
    let quic_addr = quic_addr.unwrap_or_else(|| {
        node.proc
            .stdout
            .expect("the node's QUIC address", |l| l.contains("/quic-v1/"))
    });
    let port: u16 = quic_addr.split('/').nth(4).unwrap().parse().unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let quic_node = Node {
        addr: quic_addr.clone(),
        ..node
    };

    let idle: Vec<Duration> = (0..TRIES / 2)
        .map(|i| honest_try(&quic_node, i, "quicidle"))
        .collect();
    let idle_median = median(idle);

    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || quic_initials(target, Ipv4Addr::new(127, 0, 0, 100), stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let (tries, peak_rss) = tries_under(&quic_node, "quicflood");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let under = median(tries.clone());
    let worst = tries.iter().max().copied().unwrap_or_default();
    eprintln!(
        "FLOOD RESULT: QUIC: {sent} Initials from fresh source ports of one address: honest QUIC \
         register+whois median {under:?} (worst {worst:?}) vs idle {idle_median:?}; node peak RSS {} MiB",
        peak_rss / 1024
    );
    assert!(
        sent > 1_000,
        "the burst was too small to mean anything: {sent}"
    );
    assert!(under < Duration::from_secs(1), "honest median {under:?}");
    assert!(
        peak_rss < RSS_CEILING_KIB,
        "the node grew to {peak_rss} KiB"
    );
}

/// Sources in 127.0.0.0/8 (all loopback on Linux), from 127.0.2.1 on.
fn loopback_sources(n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8))
        .collect()
}

#[test]
fn handshakes_recycled_to_look_young_from_300_addresses_do_not_lock_honest_users_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let target = SocketAddr::from(([127, 0, 0, 1], node.port()));
    let idle = median(tries_under(&node, "calm").0);
    // Each of 300 addresses holds one handshake that never finishes and
    // gives it up for a new one every 4 s: no address hoards, and each
    // handshake is younger than the bound (5 s) a stalled one gets.
    let flood = Flood::start_with(
        target,
        &loopback_sources(300),
        300,
        0,
        Some(Duration::from_secs(4)),
    );
    flood.wait_made(600);
    let (tries, _) = tries_under(&node, "recycled");
    let made = flood.made.load(Ordering::Relaxed);
    drop(flood);
    let under = median(tries.clone());
    let worst = tries.iter().max().copied().unwrap_or_default();
    eprintln!(
        "FLOOD RESULT: 300 addresses recycling one handshake each every 4 s ({made} made): honest \
         register+whois median {under:?} (worst {worst:?}) vs idle {idle:?}"
    );
    assert!(under < Duration::from_secs(1), "honest median {under:?}");
}

/// A contact's `send` to bob: from its start to bob's acknowledgement,
/// with a connection of its own (alice runs no client).
fn honest_send(alice: &User, i: usize, phase: &str) -> Duration {
    let started = Instant::now();
    let sent = alice.run(&["send", "bob", &format!("{phase} {i}")]);
    assert_eq!(sent.code, 0, "{phase}: send {i} not delivered: {sent:?}");
    started.elapsed()
}

#[test]
fn a_handshake_flood_against_a_client_does_not_keep_its_contacts_out() {
    let (_dir, _node, alice, bob) = crate::support::alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    bob.ok(&["contacts", "add", "alice"]);
    let mut bob_online = bob.spawn(&["--json", "online", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let online = bob_online.stdout.expect_event("online");
    let port: u16 = online["addrs"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|a| a.as_str()?.strip_prefix("/ip4/127.0.0.1/tcp/"))
        })
        .and_then(|rest| rest.split('/').next()?.parse().ok())
        .expect("bob's TCP port");
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let sends = |phase: &str| -> Vec<Duration> {
        (0..TRIES).map(|i| honest_send(&alice, i, phase)).collect()
    };
    let idle = median(sends("idle"));
    let mut report = vec![format!("CLIENT FLOOD RESULT: idle: send median {idle:?}")];
    let phases: [(&str, Vec<Ipv4Addr>); 2] = [
        ("one", vec![Ipv4Addr::new(127, 0, 0, 100)]),
        (
            "fifty",
            (1..=50).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect(),
        ),
    ];
    for (phase, sources) in phases {
        let flood = Flood::start(target, &sources, HELD, 0);
        flood.wait_made(HELD as u64);
        let tries = sends(phase);
        let made = flood.made.load(Ordering::Relaxed);
        drop(flood);
        let under = median(tries.clone());
        let worst = tries.iter().max().copied().unwrap_or_default();
        report.push(format!(
            "CLIENT FLOOD RESULT: {phase} address(es), {HELD} idle connections ({made} made): \
             a contact's send median {under:?} (worst {worst:?}) vs idle {idle:?}"
        ));
        assert!(
            under < Duration::from_secs(1),
            "{phase}: {}",
            report.join("\n")
        );
    }
    assert!(
        bob_online.child.try_wait().unwrap().is_none(),
        "bob's client carries on"
    );
    eprintln!("{}", report.join("\n"));
}
