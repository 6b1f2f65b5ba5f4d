//! Attacks on the directory, against the real node process: each must fail
//! and leave honest users unaffected. Attackers are in-process libp2p
//! swarms with keys of their own, speaking the directory protocol directly
//! (so they can send what no honest client would).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::AsyncReadExt;
use libp2p::{Multiaddr, PeerId};
use messenger::agent::{Agent, AgentConfig};
use messenger::api;
use messenger::directory::DirectoryError;
use messenger::proto::Identity;
use messenger::proto::codec;
use messenger::proto::directory::{self, ErrorCode, Op, Reply, Request, Response};
use messenger::proto::name::ScreenName;
use messenger::proto::record::Registration;

use crate::support::{Node, User};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A peer with a key of its own, connected to the node: the load
/// generator's bare connection, driven here to send what no honest client
/// would.
type Attacker = crate::load::BareConnection;

async fn attacker(node_addr: &Multiaddr, from: Ipv4Addr) -> Result<Attacker, String> {
    Attacker::connect(node_addr, from, crate::load::Transport::Tcp).await
}

fn name(s: &str) -> ScreenName {
    ScreenName::parse(s).unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, DirectoryError>) -> ErrorCode {
    match result {
        Err(DirectoryError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn directory_attacks_fail_and_the_owner_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let node_addr: Multiaddr = node.addr.parse().unwrap();
    let alice = User::new(&node);
    let bob = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    let mut alice_online = alice.online();
    let alice_peer: PeerId = alice.peer_id().parse().unwrap();

    runtime().block_on(async {
        let mut mallory = attacker(&node_addr, Ipv4Addr::LOCALHOST).await.unwrap();
        let session = mallory.session().await.unwrap();

        // Claim a taken name with another key.
        let record = mallory.record(name("alice"), 1).sign(&mallory.identity);
        assert_eq!(
            refused(session.register(record, vec![]).await),
            ErrorCode::NameTaken
        );

        // Update the owner's addresses: a record naming alice's peer id,
        // signed by mallory.
        let mut forged = mallory.record(name("alice"), u64::MAX - 1);
        forged.peer_id = alice_peer;
        assert_eq!(
            refused(
                session
                    .register(forged.sign(&mallory.identity), vec![])
                    .await
            ),
            ErrorCode::BadSignature
        );

        // Forge a signature: a valid record with its signature altered.
        let mut tampered = mallory.record(name("mallory"), 10).sign(&mallory.identity);
        tampered.0.signature[0] ^= 1;
        assert_eq!(
            refused(session.register(tampered, vec![]).await),
            ErrorCode::BadSignature
        );

        // A record naming another peer id, validly signed by that peer
        // (captured, say): only that peer's own connection may register it.
        let carol = Identity::generate().unwrap();
        let captured = Registration {
            peer_id: carol.peer_id(),
            ..mallory.record(name("carol"), 1)
        }
        .sign(&carol);
        assert_eq!(
            refused(session.register(captured, vec![]).await),
            ErrorCode::WrongPeer
        );

        // Replay an old record with a lower sequence number, in the same
        // session and in a later one.
        let newer = mallory.record(name("mallory"), 10).sign(&mallory.identity);
        session.register(newer, vec![]).await.unwrap();
        let older = mallory.record(name("mallory"), 5).sign(&mallory.identity);
        assert_eq!(
            refused(session.register(older.clone(), vec![]).await),
            ErrorCode::StaleSequence
        );
        session.close().await;
        let again = mallory.session().await.unwrap();
        assert_eq!(
            refused(again.register(older, vec![]).await),
            ErrorCode::StaleSequence,
            "sequence numbers are remembered across sessions"
        );

        // Squatting: one key holds at most 3 names.
        for (i, n) in ["mallory2", "mallory3"].iter().enumerate() {
            let record = mallory
                .record(name(n), 20 + i as u64)
                .sign(&mallory.identity);
            again.register(record, vec![]).await.unwrap();
        }
        let record = mallory.record(name("mallory4"), 30).sign(&mallory.identity);
        assert_eq!(
            refused(again.register(record, vec![]).await),
            ErrorCode::LimitExceeded
        );

        // No enumeration by peer id: a registered peer answers, an unknown
        // one and an offline one look the same.
        assert!(again.resolve_peer(alice_peer).await.is_ok());
        assert_eq!(
            refused(again.resolve_peer(PeerId::random()).await),
            ErrorCode::NoSuchName
        );
        assert_eq!(
            refused(again.resolve_peer(carol.peer_id()).await),
            ErrorCode::NoSuchName
        );
    });

    // Alice is still alice, online, and reachable.
    let whois = bob.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(whois["peer_id"], alice.peer_id());
    assert_eq!(whois["online"], true);
    bob.ok(&["send", "alice", "still you?"]);
    let msg = alice_online.stdout.expect_event("message");
    assert_eq!(msg["text"], "still you?");
}

/// Sends `count` resolves on one raw session as fast as it can, then reads
/// every answer; returns how many were answered and how many refused for
/// the rate.
async fn burst_of_requests(stream: libp2p::Stream, count: u64) -> (u64, u64) {
    let (mut reader, mut writer) = stream.split();
    let writing = tokio::spawn(async move {
        for id in 1..=count {
            let request = Request {
                id,
                op: Op::Resolve {
                    name: "alice".into(),
                    sender_check: false,
                },
            };
            if codec::write_frame(&mut writer, &request, directory::MAX_FRAME)
                .await
                .is_err()
            {
                break;
            }
        }
        writer
    });
    let (mut answered, mut limited) = (0, 0);
    while answered + limited < count {
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            codec::read_frame::<_, Response>(&mut reader, directory::MAX_FRAME),
        )
        .await;
        match read {
            Ok(Ok(Some(Response {
                reply:
                    Reply::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    },
                ..
            }))) => limited += 1,
            Ok(Ok(Some(_))) => answered += 1,
            _ => break,
        }
    }
    let _ = writing.await;
    (answered, limited)
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// An honest client's register + resolve, `rounds` times: the latencies.
async fn honest_round_trips(client: &Agent, rounds: usize) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        client
            .register("honest")
            .await
            .expect("honest register under flood");
        let whois = client
            .call(api::Request::Whois {
                name: messenger::testing::screen_name("alice"),
            })
            .await;
        assert!(
            matches!(whois, api::Response::Peer { .. }),
            "honest resolve under flood: {whois:?}"
        );
        samples.push(started.elapsed());
    }
    samples
}

#[test]
fn a_flood_is_bounded_and_honest_clients_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let memory_mib = 512;
    let node = Node::start_with(dir.path(), &["--max-memory-mib", &memory_mib.to_string()]);
    let node_addr: Multiaddr = node.addr.parse().unwrap();
    let alice = User::new(&node);
    alice.register("alice");
    let idle_rss = node.rss_kib();

    let report = runtime().block_on(async {
        let config =
            AgentConfig::ephemeral(Identity::generate().unwrap(), node_addr.clone()).unwrap();
        let (honest, mut events) = Agent::start(config).await.unwrap();
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        let idle = honest_round_trips(&honest, 20).await;

        // The flood comes from its own address, as one attacking machine.
        let flood_ip = Ipv4Addr::new(127, 0, 0, 66);
        let connections = 120;
        // In waves of 8, the handshakes one address may have in flight at
        // once (more are shed: tests/e2e/flood.rs), so that what refuses
        // connections here is the per-address limit on established ones.
        let mut attempts = Vec::with_capacity(connections);
        for _ in 0..connections / 8 {
            attempts.extend(
                futures::future::join_all((0..8).map(|_| attacker(&node_addr, flood_ip))).await,
            );
        }
        // A refused connection may look established to the dialler for a
        // moment (the node closes it right after the handshake): a
        // connection counts as accepted if a session opens on it.
        let mut attackers: Vec<(Attacker, Option<libp2p::Stream>)> = Vec::new();
        let mut refused_connections = 0;
        for attempt in attempts {
            let Ok(mut attacker) = attempt else {
                refused_connections += 1;
                continue;
            };
            match attacker.stream().await {
                Ok(stream) => attackers.push((attacker, Some(stream))),
                Err(_) => refused_connections += 1,
            }
        }
        // Sixteen of the connections flood: 8 sessions each (the node
        // serves 4 per connection), requests as fast as they can on each.
        let flood_started = Instant::now();
        let mut floods = Vec::new();
        let mut refused_sessions = 0;
        // All sessions are opened before any floods, so none ends (and
        // frees its slot) before the last is asked for.
        let mut streams = Vec::new();
        for (attacker, first) in attackers.iter_mut().take(16) {
            streams.extend(first.take());
            for _ in 1..8 {
                match attacker.stream().await {
                    Ok(stream) => streams.push(stream),
                    Err(_) => refused_sessions += 1,
                }
            }
        }
        for stream in streams {
            floods.push(tokio::spawn(burst_of_requests(stream, 400)));
        }
        // The honest client works while the flood runs.
        let flooded = honest_round_trips(&honest, 20).await;
        let (mut answered, mut limited) = (0, 0);
        for flood in floods {
            match flood.await.unwrap() {
                (0, 0) => refused_sessions += 1,
                (a, l) => {
                    answered += a;
                    limited += l;
                }
            }
        }
        let flood_secs = flood_started.elapsed().as_secs_f64();
        honest.shutdown().await;
        drain.abort();
        (
            idle,
            flooded,
            attackers.len(),
            refused_connections,
            refused_sessions,
            (answered, limited, flood_secs),
        )
    });
    let (idle, flooded, connected, refused_connections, refused_sessions, flood) = report;
    let (answered, limited, flood_secs) = flood;
    let flood_rss = node.rss_kib();
    println!(
        "flood: {connected} connections accepted, {refused_connections} refused (per-address limit); \
         sessions beyond 4 per connection refused: {refused_sessions}; \
         flood requests answered {answered}, refused for rate {limited} in {flood_secs:.1} s; \
         node RSS {idle_rss} KiB idle -> {flood_rss} KiB under flood (ceiling {memory_mib} MiB); \
         honest register+resolve median {:?} idle vs {:?} under flood (p90 {:?} vs {:?})",
        percentile(idle.clone(), 0.5),
        percentile(flooded.clone(), 0.5),
        percentile(idle, 0.9),
        percentile(flooded, 0.9),
    );
    // The honest client may share the flood's address (loopback): it
    // counts toward the same 64.
    assert_eq!(connected + refused_connections, 120);
    assert!(
        connected <= 64 && refused_connections >= 120 - 64,
        "the per-address limit admits at most 64: {connected} admitted"
    );
    assert!(limited > 0, "the request budget refused some of the flood");
    // Each attacking peer gets its burst of 100 and 20 per second after.
    let budget = 16.0 * (100.0 + 20.0 * flood_secs) + 16.0;
    assert!(
        answered as f64 <= budget,
        "the flood got {answered} answers in {flood_secs:.1} s; its budget was {budget:.0}"
    );
    assert_eq!(
        refused_sessions,
        16 * 4,
        "8 sessions asked per connection, 4 served"
    );
    assert!(
        flood_rss < memory_mib * 1024,
        "the node stayed under its memory ceiling: {flood_rss} KiB"
    );
}

#[test]
fn kill_9_during_a_burst_of_claims_loses_no_acknowledged_claim() {
    let dir = tempfile::tempdir().unwrap();
    // A burst from 8 peers: their request budgets are lifted, the point
    // is the store.
    let burst_flags = [
        "--max-names-per-key",
        "1000",
        "--requests-per-second",
        "100000",
        "--request-burst",
        "100000",
    ];
    let mut node = Node::start_with(dir.path(), &burst_flags);
    let node_addr: Multiaddr = node.addr.parse().unwrap();
    let node_pid = node.proc.child.id();

    let acknowledged = runtime().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut peer = attacker(&node_addr, Ipv4Addr::LOCALHOST).await.unwrap();
            let session = peer.session().await.unwrap();
            clients.push((peer, session));
        }
        let (acks, mut acked) = tokio::sync::mpsc::channel(1024);
        let mut tasks = Vec::new();
        for (c, (peer, session)) in clients.into_iter().enumerate() {
            let acks = acks.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..1000u64 {
                    let claimed = format!("c{c}n{i}");
                    let record = peer.record(name(&claimed), i + 1).sign(&peer.identity);
                    match session.register(record, vec![]).await {
                        Ok(_) => {
                            let _ = acks.send((claimed, peer.identity.peer_id())).await;
                        }
                        Err(_) => break,
                    }
                }
                drop(peer);
            }));
        }
        drop(acks);
        let mut acknowledged = Vec::new();
        while let Some(ack) = acked.recv().await {
            acknowledged.push(ack);
            if acknowledged.len() == 300 {
                // Mid-burst: the other claims are in flight.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &node_pid.to_string()])
                    .status();
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        acknowledged
    });
    node.proc.wait_exit();
    assert!(
        acknowledged.len() >= 300,
        "the burst ran before the kill: {}",
        acknowledged.len()
    );

    // The store opens cleanly, and every acknowledged claim is there.
    let node = Node::start_with(dir.path(), &burst_flags);
    let node_addr: Multiaddr = node.addr.parse().unwrap();
    runtime().block_on(async {
        let mut checker = attacker(&node_addr, Ipv4Addr::LOCALHOST).await.unwrap();
        let session = checker.session().await.unwrap();
        for (name, owner) in &acknowledged {
            let resolution = session
                .resolve(name)
                .await
                .unwrap_or_else(|e| panic!("acknowledged claim {name} lost: {e}"));
            assert_eq!(&resolution.owner, owner, "{name} kept its owner");
        }
    });
    println!(
        "kill -9 after {} acknowledged claims: all present after restart",
        acknowledged.len()
    );
}

#[test]
fn a_name_unused_past_its_lease_goes_to_a_new_key_that_pinned_contacts_refuse() {
    let dir = tempfile::tempdir().unwrap();
    // A lease of about 2.6 seconds.
    let node = Node::start_with(dir.path(), &["--name-lease-days", "0.00003"]);
    let alice = User::new(&node);
    let bob = User::new(&node);
    let mallory = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    bob.ok(&["contacts", "add", "alice"]);

    // Alice stays away; the node releases her name, and mallory takes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ran = mallory.run(&["register", "alice"]);
        if ran.code == 0 {
            break;
        }
        assert_eq!(ran.code, 4, "taken until released: {}", ran.stderr);
        assert!(Instant::now() < deadline, "the lease never ran out");
        std::thread::sleep(Duration::from_millis(200));
    }
    let whois = bob.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(whois["peer_id"], mallory.peer_id());

    // Bob pinned alice's key: the new owner is a key change he must
    // confirm before anything is sent.
    let ran = bob.run(&["send", "alice", "is that you?"]);
    assert_eq!(ran.code, 8, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("KEY CHANGED") || ran.stderr.contains("key"),
        "{}",
        ran.stderr
    );
}
