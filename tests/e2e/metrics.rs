//! Metrics: the node's `--metrics` and the client's `online --metrics`,
//! scraped over HTTP while the node takes on a crowd of clients and
//! messages flow, and read with a Prometheus text-format parser.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libp2p::Multiaddr;
use prometheus_parse::{Scrape, Value};

use crate::support::{Node, TIMEOUT, User};

/// One scrape, parsed: each sample by its name and sorted labels.
pub(crate) struct Scraped {
    samples: HashMap<String, f64>,
    histograms: HashMap<String, f64>,
}

impl Scraped {
    /// The sample `name{labels}` (labels as `k="v"` joined by commas, in
    /// name order), or 0 if absent (a counter never touched).
    pub(crate) fn get(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }

    /// The sum over the label sets of `name` that contain `labels` (e.g.
    /// `op="resolve"`).
    pub(crate) fn sum_matching(&self, name: &str, labels: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(labels))
            .map(|(_, v)| v)
            .sum()
    }

    /// The sum over every label set of `name`.
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

/// The whole response to `GET` of `url` (http://host:port/path) sent
/// with `Host: host` (the URL's own when `None`), over a plain TCP
/// connection.
fn get(url: &str, host: Option<&str>) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_once('/').expect("a path");
    let host = host.unwrap_or(addr);
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `GET /metrics` at `url` (http://host:port/metrics), and the body parsed.
pub(crate) fn scrape(url: &str) -> Scraped {
    let response = get(url, None);
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "scrape failed: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "an OpenMetrics body ends with # EOF"
    );
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    let mut samples = HashMap::new();
    let mut histograms = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            sample.metric.clone()
        } else {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                samples.insert(key, v);
            }
            Value::Histogram(buckets) => {
                // The +Inf bucket holds every observation.
                let count = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
                histograms.insert(key, count);
            }
            Value::Summary(_) => {}
        }
    }
    assert!(
        !samples.is_empty(),
        "the parser read no sample from:\n{body}"
    );
    Scraped {
        samples,
        histograms,
    }
}

/// The `metrics http://…` line a node prints after its addresses.
pub(crate) fn node_metrics_url(node: &mut Node) -> String {
    let line = node
        .proc
        .stdout
        .expect("the metrics address", |l| l.starts_with("metrics http://"));
    line.trim_start_matches("metrics ").to_owned()
}

#[test]
fn node_and_client_metrics_are_scraped_under_load() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the users and most of the crowd: the rest is refused, so
    // the refusals show by the limit that refused them.
    let mut node = Node::start_with(
        dir.path(),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-connections",
            "150",
            "--max-connections-per-ip",
            "1000",
        ],
    );
    let node_url = node_metrics_url(&mut node);
    let alice = User::new(&node);
    let bob = User::new(&node);
    let carol = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    let taken = carol.run(&["register", "alice"]);
    assert_ne!(taken.code, 0, "alice is taken: {taken:?}");
    alice.ok(&["contacts", "add", "bob"]);

    let mut alice_online = alice.spawn(&[
        "--json",
        "online",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let alice_url = alice_online.stdout.expect_event("metrics")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    alice_online.stdout.expect_event("online");
    let _bob_online = bob.online();
    alice_online.stdout.expect_presence("bob", "online");

    // Scrapes go on all through the load; each must parse, and counters
    // never go down.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (stop, node_url, alice_url) = (stop.clone(), node_url.clone(), alice_url.clone());
        std::thread::spawn(move || {
            let mut scrapes = 0;
            let (mut registered, mut received) = (0.0, 0.0);
            while !stop.load(Ordering::Relaxed) {
                let node = scrape(&node_url);
                let now =
                    node.get(r#"rendezvous_directory_requests_total{op="register",result="ok"}"#);
                assert!(
                    now >= registered,
                    "a counter went down: {registered} -> {now}"
                );
                registered = now;
                let alice = scrape(&alice_url);
                let now = alice.get("messenger_messages_received_total");
                assert!(now >= received, "a counter went down: {received} -> {now}");
                received = now;
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            scrapes
        })
    };

    const MESSAGES: usize = 10;
    const CROWD: usize = 160;
    let sender = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            bob.ok(&["send", "alice", &format!("message {i}")]);
        }
        bob
    });
    let node_addr: Multiaddr = node.addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (crowd, failed) = runtime.block_on(crate::load::light_clients(
        &node_addr,
        Ipv4Addr::LOCALHOST,
        crate::load::Transport::Tcp,
        0,
        CROWD,
    ));
    let _bob = sender.join().expect("bob sent");
    for i in 0..MESSAGES {
        let text = format!("message {i}");
        alice_online
            .stdout
            .expect(&format!("{text:?} received"), |l| l.contains(&text));
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("every scrape parsed");
    eprintln!(
        "{scrapes} scrapes of each during the load; {} of {CROWD} light clients online, {failed} refused",
        crowd.len()
    );
    assert!(scrapes >= 3, "scraped during the load: {scrapes}");
    assert!(
        !crowd.is_empty() && failed > 0,
        "the limit admitted some and refused others"
    );

    let node = scrape(&node_url);
    let online = node.get("rendezvous_users_online");
    assert_eq!(
        online,
        (crowd.len() + 2) as f64,
        "alice, bob and the crowd are online"
    );
    assert!(node.get("rendezvous_directory_sessions") >= online);
    assert!(
        node.get(r#"rendezvous_directory_requests_total{op="register",result="ok"}"#) >= online,
        "every online user registered"
    );
    assert_eq!(
        node.get(r#"rendezvous_directory_requests_total{op="register",result="name_taken"}"#),
        1.0,
        "carol's claim of alice"
    );
    assert!(node.get(r#"rendezvous_directory_requests_total{op="resolve",result="ok"}"#) >= 1.0);
    assert!(
        node.get(r#"rendezvous_connections_refused_total{limit="connections"}"#) >= failed as f64,
        "each refused client was refused by the connection limit"
    );
    assert!(
        node.get("rendezvous_presence_pushes_total") >= 1.0,
        "bob's presence reached alice"
    );
    assert!(
        node.histograms
            .get("rendezvous_store_commit_seconds")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "claims were committed: {:?}",
        node.histograms.keys()
    );
    assert!(
        node.sum("libp2p_swarm_connections_established_total") >= online,
        "libp2p's recorder counts the connections"
    );
    assert!(
        node.sum("libp2p_swarm_connections_incoming_error_total") >= 1.0,
        "and the refused ones"
    );
    assert!(node.get("process_resident_memory_bytes") > 1e6);
    assert!(node.get("process_open_fds") >= online);

    let alice = scrape(&alice_url);
    assert_eq!(
        alice.get("messenger_messages_received_total"),
        MESSAGES as f64
    );
    assert_eq!(alice.get("messenger_online"), 1.0);
    assert!(alice.get("messenger_presence_changes_total") >= 1.0);
    assert!(
        alice.sum("libp2p_swarm_connections_established_total") >= 2.0,
        "the node and bob"
    );
    assert!(alice.get("process_resident_memory_bytes") > 1e6);
    drop(crowd);
}

/// The status line of `GET /metrics` at `url` sent with `Host: host`.
fn status_with_host(url: &str, host: &str) -> String {
    get(url, Some(host))
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn metrics_answer_no_web_page_through_dns_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_with(
        dir.path(),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--metrics-host",
            "node1.internal",
        ],
    );
    let node_url = node_metrics_url(&mut node);
    let port = node_url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/metrics");
    for (host, expected) in [
        (format!("rebind.evil.example:{port}"), "403"),
        ("evil.example".to_owned(), "403"),
        (format!("127.0.0.1:{port}"), "200"),
        (format!("localhost:{port}"), "200"),
        (format!("node1.internal:{port}"), "200"),
    ] {
        let status = status_with_host(&node_url, &host);
        assert!(
            status.starts_with(&format!("HTTP/1.1 {expected}")),
            "node, Host {host}: {status}"
        );
    }
    let alice = User::new(&node);
    alice.register("alice");
    let mut online = alice.spawn(&[
        "--json",
        "online",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let url = online.stdout.expect_event("metrics")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert!(status_with_host(&url, "rebind.evil.example").starts_with("HTTP/1.1 403"));
    assert!(status_with_host(&url, "node1.internal").starts_with("HTTP/1.1 403"));
    assert!(status_with_host(&url, "[::1]:9").starts_with("HTTP/1.1 200"));
}
