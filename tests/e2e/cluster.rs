//! Three rendezvous nodes on one PostgreSQL and one NATS, each server a
//! private one started by the test (see `servers`): one directory, many
//! doors.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::servers::{Nats, Postgres, cluster_flags, postgres_and_nats};
use crate::support::{Node, User};

/// The servers and nodes of one cluster.
/// Fields drop in order: the nodes stop before the servers they use.
struct Cluster {
    nodes: Vec<Option<Node>>,
    pg: Postgres,
    nats: Nats,
    /// One data directory per node (its own identity), and the key the
    /// nodes share to sign name certificates.
    dirs: Vec<tempfile::TempDir>,
    key: tempfile::TempDir,
    /// Flags every node gets besides the cluster's.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts PostgreSQL, NATS and `n` nodes, or `None` when a server is
    /// not installed (the test then says so and skips; CI fails).
    fn start(n: usize) -> Option<Self> {
        Self::start_with(n, &[])
    }

    /// [`Cluster::start`], each node with `extra` flags too.
    fn start_with(n: usize, extra: &[&str]) -> Option<Self> {
        let (pg, nats) = postgres_and_nats()?;
        let mut cluster = Self {
            nodes: Vec::new(),
            pg,
            nats,
            dirs: Vec::new(),
            key: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|f| (*f).to_owned()).collect(),
        };
        for i in 0..n {
            cluster.dirs.push(tempfile::tempdir().unwrap());
            cluster.nodes.push(None);
            cluster.start_node(i);
        }
        Some(cluster)
    }

    fn start_node(&mut self, i: usize) {
        let key = self.key.path().join("certificates.key");
        let mut flags = cluster_flags(&self.pg, &self.nats, &key);
        flags.extend(self.extra.iter().cloned());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.nodes[i] = Some(Node::start_with(self.dirs[i].path(), &flags));
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("the node is running")
    }

    /// A user whose client knows node `i` only.
    fn user_on(&self, i: usize) -> User {
        User::new(self.node(i))
    }

    /// A user whose client knows every node, `first` first.
    fn user_of_all(&self, first: usize) -> User {
        let mut user = User::new(self.node(first));
        for (i, node) in self.nodes.iter().enumerate() {
            if i != first {
                user.rendezvous.push(',');
                user.rendezvous.push_str(&node.as_ref().unwrap().addr);
            }
        }
        user
    }
}

#[test]
fn one_name_claimed_through_three_nodes_at_once_has_one_owner() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    for round in 0..5 {
        let name = format!("contested{round}");
        // Two users per node: a node sends claims arriving together in
        // one statement, so a batch may hold the same name twice.
        let users: Vec<User> = (0..6).map(|i| cluster.user_on(i % 3)).collect();
        let codes: Vec<i32> = std::thread::scope(|s| {
            let claims: Vec<_> = users
                .iter()
                .map(|u| s.spawn(|| u.run(&["register", &name])))
                .collect();
            claims
                .into_iter()
                .map(|c| {
                    let ran = c.join().unwrap();
                    assert!(
                        ran.code == 0 || ran.stderr.contains("taken"),
                        "a claim fails only because the name is taken: {ran:?}"
                    );
                    ran.code
                })
                .collect()
        });
        let winners: Vec<usize> = (0..6).filter(|&i| codes[i] == 0).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one owner: {codes:?}"
        );
        let owner = users[winners[0]].peer_id();
        // Every node, asked by anyone, names the same owner.
        for i in 0..3 {
            let asker = cluster.user_on(i);
            let whois = asker.ok(&["--json", "whois", &name]).json();
            assert_eq!(whois["peer_id"], owner, "node {i} on {name}");
        }
        let rows = cluster.pg.sql(&format!(
            "select count(*) from claims where name = '{name}'"
        ));
        assert_eq!(rows, "1");
    }
}

#[test]
fn presence_and_messages_cross_nodes() {
    let Some(cluster) = Cluster::start(3) else {
        return;
    };
    let alice = cluster.user_on(0);
    let carol = cluster.user_on(2);
    alice.register("alice");
    carol.register("carol");
    carol.ok(&["contacts", "add", "alice"]);
    let mut watcher = carol.online();
    watcher.stdout.expect_presence("alice", "offline");

    let mut alice_online = alice.online();
    watcher.stdout.expect_presence("alice", "online");

    // A change on node A reaches the watcher on node C within a second.
    let mut worst = Duration::ZERO;
    for text in ["lunch", "meeting", "back soon"] {
        alice.ok(&["status", "away", text]);
        let started = Instant::now();
        watcher.stdout.expect_presence("alice", "away");
        worst = worst.max(started.elapsed());
        alice.ok(&["status", "online"]);
        watcher.stdout.expect_presence("alice", "online");
    }
    eprintln!("presence A -> C: slowest of 3 changes {worst:?}");
    assert!(worst < Duration::from_secs(1), "{worst:?}");

    // Resolves agree on every node: the same signed record.
    let records: Vec<Value> = (0..3)
        .map(|i| cluster.user_on(i).ok(&["--json", "whois", "alice"]).json())
        .collect();
    for r in &records {
        assert_eq!(r["online"], true, "{r}");
        assert_eq!(r["addrs"], records[0]["addrs"], "{records:?}");
    }

    // Users on different nodes message each other, both ways.
    let ran = carol.ok(&["send", "alice", "hello from C"]);
    assert!(ran.stdout.starts_with("delivered"), "{ran:?}");
    assert_eq!(
        alice_online.stdout.expect_event("message")["text"],
        "hello from C"
    );
    let ran = alice.ok(&["send", "carol", "hello from A"]);
    assert!(ran.stdout.starts_with("delivered"), "{ran:?}");
    assert_eq!(
        watcher.stdout.expect_event("message")["text"],
        "hello from A"
    );

    // Going offline on A is seen on C.
    alice_online.signal("INT");
    assert_eq!(alice_online.wait_exit(), Some(0));
    watcher.stdout.expect_presence("alice", "offline");
}

#[test]
fn a_killed_node_s_users_are_offline_everywhere_and_come_back_through_another() {
    let Some(mut cluster) = Cluster::start(3) else {
        return;
    };
    // alice knows node A only; bob knows all three, A first.
    let alice = cluster.user_on(0);
    let bob = cluster.user_of_all(0);
    let carol = cluster.user_on(2);
    alice.register("alice");
    bob.register("bob");
    carol.register("carol");
    carol.ok(&["contacts", "add", "alice"]);
    carol.ok(&["contacts", "add", "bob"]);
    let mut watcher = carol.online();
    let _alice_online = alice.online();
    let mut bob_online = bob.online();
    watcher.stdout.expect_presence("alice", "online");
    watcher.stdout.expect_presence("bob", "online");

    // kill -9: no goodbye to anyone.
    let a = cluster.nodes[0].take().unwrap();
    let a_peer = a.peer_id();
    let killed = Instant::now();
    drop(a);
    watcher.stdout.expect_presence("alice", "offline");
    let offline_after = killed.elapsed();
    eprintln!("alice offline on C {offline_after:?} after node A was killed");
    assert!(offline_after < Duration::from_secs(10), "{offline_after:?}");

    // bob's client moved to B or C by itself and registered there.
    bob_online.stdout.expect_event("reconnecting");
    let back = bob_online.stdout.expect_event("online");
    eprintln!(
        "bob online again {:?} after node A was killed",
        killed.elapsed()
    );
    assert_eq!(back["name"], "bob");
    for i in 1..3 {
        let asker = cluster.user_on(i);
        let whois = asker.ok(&["--json", "whois", "bob"]).json();
        assert_eq!(whois["online"], true, "node {i}: {whois}");
    }
    // His home now lists the node that answered first, for the commands
    // he runs on their own.
    let config: Value =
        serde_json::from_slice(&std::fs::read(bob.home.path().join("config.json")).unwrap())
            .unwrap();
    let first = config["rendezvous"][0].as_str().unwrap_or_default();
    assert!(!first.is_empty() && !first.ends_with(&a_peer), "{config}");
    let ran = carol.ok(&["send", "bob", "still there?"]);
    assert!(ran.stdout.starts_with("delivered"), "{ran:?}");
    assert_eq!(
        bob_online.stdout.expect_event("message")["text"],
        "still there?"
    );
    // His certificate now comes from another node, signed with the key
    // the cluster shares, and carol's client accepts it.
    let ran = bob.ok(&["send", "carol", "yes"]);
    assert!(ran.stdout.starts_with("delivered"), "{ran:?}");
    assert_eq!(watcher.stdout.expect_event("message")["text"], "yes");
    let gone = cluster.pg.sql(&format!(
        "select count(*) from live where node = '{a_peer}'"
    ));
    eprintln!("rows of node A left in the live table: {gone} (ignored; deleted after a minute)");
}

#[test]
fn postgres_restarted_loses_no_acknowledged_claim_and_nodes_recover() {
    let Some(mut cluster) = Cluster::start(2) else {
        return;
    };
    let users: Vec<User> = (0..6).map(|i| cluster.user_on(i % 2)).collect();
    for (i, user) in users.iter().enumerate() {
        user.register(&format!("kept{i}"));
    }
    let owners: Vec<String> = users.iter().map(User::peer_id).collect();
    // alice is online at node A; bob asks A about her while the database
    // is down.
    let alice = cluster.user_on(0);
    alice.register("alice");
    let _alice_online = alice.online();

    cluster.pg.stop(true);
    let down = Instant::now();
    let late = cluster.user_on(1);
    let ran = late.run(&["register", "latecomer"]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains("store unavailable"),
        "a claim while the database is down says why: {ran:?}"
    );
    let bob = cluster.user_on(0);
    let whois = bob.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(
        whois["online"], true,
        "resolves go on from what node A holds"
    );
    eprintln!("answered while down within {:?}", down.elapsed());

    cluster.pg.resume();
    let up = Instant::now();
    // The nodes reconnect by themselves: the next claim succeeds.
    let recovered = loop {
        let ran = late.run(&["register", "latecomer"]);
        if ran.code == 0 {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(15),
            "no recovery: {ran:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("first claim accepted {recovered:?} after PostgreSQL was back");
    for (i, owner) in owners.iter().enumerate() {
        let whois = cluster
            .user_on(1 - i % 2)
            .ok(&["--json", "whois", &format!("kept{i}")])
            .json();
        assert_eq!(&whois["peer_id"], owner, "kept{i}");
    }
    assert_eq!(cluster.pg.sql("select count(*) from claims"), "8");
}

#[test]
fn nats_restarted_presence_resumes() {
    let Some(mut cluster) = Cluster::start(2) else {
        return;
    };
    let alice = cluster.user_on(0);
    let carol = cluster.user_on(1);
    alice.register("alice");
    carol.register("carol");
    carol.ok(&["contacts", "add", "alice"]);
    let mut watcher = carol.online();
    watcher.stdout.expect_presence("alice", "offline");
    let _alice_online = alice.online();
    watcher.stdout.expect_presence("alice", "online");

    cluster.nats.stop();
    // A change while NATS is away reaches the watcher once it is back.
    alice.ok(&["status", "away", "while NATS was down"]);
    cluster.nats.resume();
    let back = Instant::now();
    watcher.stdout.expect_presence("alice", "away");
    eprintln!(
        "a change made while NATS was down arrived {:?} after it came back",
        back.elapsed()
    );
    // And changes flow as before.
    alice.ok(&["status", "online"]);
    let started = Instant::now();
    watcher.stdout.expect_presence("alice", "online");
    eprintln!("presence A -> B after the restart: {:?}", started.elapsed());
}

/// Publishes `payload` on `subject` of the NATS server at `nats`, as
/// anyone who can reach it could: the text protocol, by hand.
fn publish_raw(nats: &Nats, subject: &str, payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect((nats.host.as_str(), nats.port)).unwrap();
    stream
        .set_read_timeout(Some(crate::support::TIMEOUT))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    let mut writer = stream;
    write!(
        writer,
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .unwrap();
    writer.write_all(payload).unwrap();
    writer.write_all(b"\r\nPING\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

#[test]
fn names_nobody_claimed_cost_no_subscription_and_unsigned_notes_change_nothing() {
    use messenger::directory::DirectorySession;
    use messenger::network::{Network, NetworkConfig};
    use messenger::proto::Identity;
    use messenger::proto::codec;
    use messenger::proto::signed::Signed;
    use rendezvous::cluster::presence::{self, Note};

    let Some(mut cluster) = Cluster::start_with(2, &["--metrics", "127.0.0.1:0"]) else {
        return;
    };
    let metrics = crate::metrics::node_metrics_url(cluster.nodes[0].as_mut().unwrap());
    let followed = || crate::metrics::scrape(&metrics).get("rendezvous_cluster_followed_names");
    let watched = cluster.user_on(1);
    watched.register("watched");
    let node0: libp2p::Multiaddr = cluster.node(0).addr.parse().unwrap();
    let node1: libp2p::Multiaddr = cluster.node(1).addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (pushes_tx, mut pushes) = tokio::sync::mpsc::channel(4096);
    let (_network, session) = runtime.block_on(async {
        let (network, _task, _inbound) =
            Network::start(&Identity::generate().unwrap(), NetworkConfig::default()).unwrap();
        let session = DirectorySession::open(&network, &node0, Some(pushes_tx))
            .await
            .unwrap();
        // A session with no name of its own watches a thousand names
        // nobody claimed, and one somebody did.
        for chunk in 0..4 {
            let names: Vec<String> = (0..250).map(|i| format!("ghost{chunk}x{i:03}")).collect();
            session.watch(names).await.unwrap();
        }
        session.watch(vec!["watched".into()]).await.unwrap();
        (network, session)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while followed() < 1.0 {
        assert!(Instant::now() < deadline, "the claimed name is followed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(followed(), 1.0, "the names nobody claimed cost nothing");

    // Claimed on the other node: followed from then on, and pushed.
    let ghost = cluster.user_on(1);
    ghost.register("ghost2x007");
    let mut ghost_online = ghost.spawn(&["--json", "online", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    ghost_online.stdout.expect_event("online");
    // The presences pushed for ghost2x007 until `presence` is.
    let until = |pushes: &mut tokio::sync::mpsc::Receiver<_>, what: &str, presence: &str| {
        runtime.block_on(async {
            let mut seen = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let push: messenger::proto::directory::Resolution =
                        pushes.recv().await.expect("pushes");
                    if push.name.as_str() == "ghost2x007" {
                        seen.push(push.presence.to_string());
                        if seen.last().is_some_and(|p| p == presence) {
                            return;
                        }
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no push saying {presence} ({what}): {seen:?}"));
            seen
        })
    };
    until(
        &mut pushes,
        "claimed on the other node, then online",
        "online",
    );
    assert_eq!(followed(), 2.0);

    // Anyone who can publish on NATS, without the cluster's key: a note
    // that ghost went offline (unsigned, then signed by another key),
    // and a release of the name. None of them may be believed.
    let note = Note {
        name: messenger::proto::name::ScreenName::parse("ghost2x007").unwrap(),
        node: cluster.node(1).peer_id(),
        live: None,
    };
    let subject = presence::subject(&note.name);
    let other = Identity::generate().unwrap();
    publish_raw(&cluster.nats, &subject, &codec::to_cbor(&note));
    let forged = Signed::sign(&other, presence::NOTE_CONTEXT, &note);
    publish_raw(&cluster.nats, &subject, &codec::to_cbor(&forged));
    let release = Signed::sign(&other, presence::RELEASED_CONTEXT, &note.name);
    publish_raw(&cluster.nats, presence::RELEASED, &codec::to_cbor(&release));
    let unsigned = || crate::metrics::scrape(&metrics).get("rendezvous_cluster_unsigned_total");
    let deadline = Instant::now() + Duration::from_secs(20);
    while unsigned() < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the node read the three forgeries"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Read and ignored: node 0 (which keeps a watched name's state from
    // what NATS tells it) still has ghost online.
    let now = runtime.block_on(session.resolve("ghost2x007")).unwrap();
    assert_eq!(now.presence.to_string(), "online", "a forgery was believed");

    // Watching costs by the names watched: a session that watches 256
    // names again and again (17 requests' worth each) runs past its
    // budget of 100 and is held back (its client waits and retries).
    let metrics1 = crate::metrics::node_metrics_url(cluster.nodes[1].as_mut().unwrap());
    runtime.block_on(async {
        let (network, _task, _inbound) =
            Network::start(&Identity::generate().unwrap(), NetworkConfig::default()).unwrap();
        let greedy = DirectorySession::open(&network, &node1, None)
            .await
            .unwrap();
        let names: Vec<String> = (0..256).map(|i| format!("want{i:03}")).collect();
        for _ in 0..8 {
            let _ = greedy.watch(names.clone()).await;
            let _ = greedy.unwatch(names.clone()).await;
        }
    });
    let limited = crate::metrics::scrape(&metrics1)
        .get(r#"rendezvous_directory_requests_total{op="watch",result="rate_limited"}"#);
    assert!(limited >= 1.0, "eight watches of 256 names went unchecked");
    drop(session);
}

#[test]
fn a_node_reaches_postgres_over_tls_when_its_url_asks_and_checks_who_answers() {
    use crate::servers::TestCertificates;
    let certs = TestCertificates::generate();
    let Some(pg) = crate::servers::Postgres::start_tls(&certs) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca).unwrap();
    let stranger_ca = dir.path().join("other-ca.pem");
    std::fs::write(&stranger_ca, TestCertificates::generate().ca).unwrap();
    let url = |query: &str| format!("{}?{query}", pg.url());

    // Checked all the way (the authority, and the name 127.0.0.1): works,
    // and the connections are encrypted.
    let verified = url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let node = Node::start_with(&dir.path().join("a"), &["--store", &verified]);
    let alice = User::new(&node);
    alice.register("alice");
    let encrypted: u32 = pg
        .sql("SELECT count(*) FROM pg_stat_ssl WHERE ssl")
        .parse()
        .unwrap();
    assert!(encrypted >= 1, "the node's connections use TLS");
    drop(node);

    // A server whose certificate another authority signed is refused,
    // and the node says why.
    let wrong = url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        stranger_ca.display()
    ));
    let refused = std::process::Command::new(crate::support::rendezvous_bin())
        .args(["--store", &wrong, "--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--data-dir")
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {said}"
    );

    // Encrypted without checking (libpq's require): works too.
    let node = Node::start_with(&dir.path().join("c"), &["--store", &url("sslmode=require")]);
    User::new(&node).register("bob");
}
