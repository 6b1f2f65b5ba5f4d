//! The figures of the benchmark suite, each measured side by side with its
//! baseline in the same process and run. `main.rs` prints them; the smoke
//! test in `tests/bench_smoke.rs` runs them with tiny sizes.

#![allow(dead_code, unreachable_pub)]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, noise, rendezvous as lrdv, tcp, yamux};
use messenger::agent::{Agent, AgentConfig};
use messenger::api::SendOutcome;
use messenger::chat::{ChatLink, Inbox, MessageSink};
use messenger::directory::{DirectorySession, Registered};
use messenger::network::{ChatStreams, Network, NetworkConfig, NetworkTask};
use messenger::peer::PeerInfo;
use messenger::proto::Identity;
use messenger::proto::certificate::SignedCertificate;
use messenger::proto::chat::{Message, MessageId, RejectCode};
use messenger::proto::directory::Resolution;
use messenger::proto::name::ScreenName;
use messenger::proto::presence::{Presence, Status};
use messenger::proto::rate::Rate;
use messenger::proto::record::Registration;
use messenger::proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger::proto::time::now_ms;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[path = "figures/cluster.rs"]
mod cluster;
pub use messenger::testing::load;
#[path = "figures/tunnel.rs"]
mod tunnel;
#[path = "figures/web.rs"]
mod web;

pub use cluster::cluster;
pub use tunnel::tunnels;
pub use web::web;

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub round_trips: usize,
    pub cold_peers: usize,
    pub throughput_messages: usize,
    pub sign_verify: usize,
    pub directory_clients: usize,
    pub directory_ops_per_client: usize,
    pub send_processes: usize,
    pub scale_small: usize,
    pub scale_large: usize,
    pub scale_resolves: usize,
    pub held_clients: usize,
    pub held_per_worker: usize,
    pub window_messages: usize,
    pub window_frames: usize,
    /// Messages of the web window's long conversation, and messages timed
    /// into its DOM.
    pub web_messages: usize,
    pub web_events: usize,
    /// Bytes of the file-transfer figure (0: not run).
    pub file_bytes: u64,
    /// Bytes through a tunnel (0: the tunnel figures are not run).
    pub tunnel_bytes: u64,
    pub tunnel_round_trips: usize,
    pub tunnel_setups: usize,
    /// Presence changes timed across cluster nodes.
    pub presence_changes: usize,
    /// Directory sizes (names registered) of the sized directory figures.
    pub directory_sizes: Vec<usize>,
}

impl Sizes {
    /// What the issue asks for.
    pub fn full() -> Self {
        Self {
            round_trips: 40_000,
            cold_peers: 200,
            throughput_messages: 20_000,
            sign_verify: 20_000,
            directory_clients: 16,
            directory_ops_per_client: 250,
            send_processes: 20,
            scale_small: 1_000,
            scale_large: 100_000,
            scale_resolves: 5_000,
            held_clients: 50_000,
            held_per_worker: 10_000,
            window_messages: 10_000,
            window_frames: 300,
            web_messages: 10_000,
            web_events: 100,
            file_bytes: 1 << 30,
            tunnel_bytes: 1 << 30,
            tunnel_round_trips: 5_000,
            tunnel_setups: 200,
            presence_changes: 500,
            directory_sizes: vec![1_000, 10_000, 100_000],
        }
    }

    /// Enough to prove the code works (the smoke test).
    pub fn tiny() -> Self {
        Self {
            round_trips: 20,
            cold_peers: 2,
            throughput_messages: 50,
            sign_verify: 50,
            directory_clients: 2,
            directory_ops_per_client: 5,
            send_processes: 0,
            scale_small: 10,
            scale_large: 100,
            scale_resolves: 20,
            held_clients: 20,
            held_per_worker: 10,
            window_messages: 200,
            window_frames: 5,
            web_messages: 150,
            web_events: 5,
            file_bytes: 8 << 20,
            tunnel_bytes: 4 << 20,
            tunnel_round_trips: 20,
            tunnel_setups: 3,
            presence_changes: 4,
            directory_sizes: vec![64, 128],
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub ours: f64,
    pub baseline: f64,
    pub unit: String,
    pub baseline_name: String,
    /// ours / baseline for times, baseline / ours... see `ratio_kind`.
    pub ratio: f64,
    pub target: Option<String>,
    pub met: Option<bool>,
}

fn time_figure(
    name: &str,
    ours: Duration,
    baseline: Duration,
    baseline_name: &str,
    max_ratio: Option<f64>,
) -> Figure {
    let ratio = ours.as_secs_f64() / baseline.as_secs_f64();
    Figure {
        name: name.into(),
        ours: micros(ours),
        baseline: micros(baseline),
        unit: "µs".into(),
        baseline_name: baseline_name.into(),
        ratio,
        target: max_ratio.map(|m| format!("≤ {m}×")),
        met: max_ratio.map(|m| ratio <= m),
    }
}

fn rate_figure(
    name: &str,
    ours: f64,
    baseline: f64,
    baseline_name: &str,
    min_ratio: Option<f64>,
) -> Figure {
    let ratio = ours / baseline;
    Figure {
        name: name.into(),
        ours,
        baseline,
        unit: "/s".into(),
        baseline_name: baseline_name.into(),
        ratio,
        target: min_ratio.map(|m| format!("≥ {m}×")),
        met: min_ratio.map(|m| ratio >= m),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median and 99th percentile.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let n = samples.len().max(1);
    let at = |q: usize| {
        samples
            .get((n * q / 100).min(n - 1))
            .copied()
            .unwrap_or_default()
    };
    (at(50), at(99))
}

fn name(s: &str) -> ScreenName {
    ScreenName::parse(s).expect("bench names are valid")
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("valid")
}

/// A node and two bare clients of the library (a network and a directory
/// session each, no agent and no store): alice sends on a chat link, bob
/// receives with an inbox that keeps nothing. What the round trip and
/// throughput figures measure is the protocol's machinery, not a disk.
struct Pair {
    node: rendezvous::Server,
    _dir: tempfile::TempDir,
    alice: Bare,
    bob: Bare,
    link: ChatLink,
    inbox: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    received: mpsc::Receiver<()>,
}

async fn start_node() -> (rendezvous::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = bench_config(dir.path());
    let node = rendezvous::Server::bind(config).await.expect("node starts");
    (node, dir)
}

/// A node's settings for load tests, its data under `dir`.
fn bench_config(dir: &std::path::Path) -> rendezvous::Config {
    let mut config = rendezvous::Config::new(dir.join("node"));
    config.listen = vec![loopback()];
    // A handful of load-generating clients stand in for thousands of real
    // ones: the per-peer request budget, names-per-key and per-address
    // limits would measure the limits, not the node (libp2p's server, the
    // baseline, has none of them).
    config.limits.requests = Rate::new(1e9, u32::MAX);
    config.limits.max_names_per_key = usize::MAX;
    // All of them come from 127.0.0.1.
    config.limits.max_connections_per_ip = u32::MAX;
    config.limits.max_pending_per_ip = u32::MAX;
    config
}

/// A client of the library without an agent: a network and a session.
struct Bare {
    identity: Identity,
    network: Network,
    _task: NetworkTask,
    streams: Option<ChatStreams>,
    session: DirectorySession,
    certificate: watch::Sender<Option<SignedCertificate>>,
}

impl Bare {
    async fn connect(node: &Multiaddr, pushes: Option<mpsc::Sender<Resolution>>) -> Self {
        let identity = Identity::generate().expect("key");
        let (network, task, streams) =
            Network::start(&identity, NetworkConfig::default()).expect("network");
        let session = DirectorySession::open(&network, node, pushes)
            .await
            .expect("session");
        Self {
            identity,
            network,
            _task: task,
            streams: Some(streams.chat),
            session,
            certificate: watch::channel(None).0,
        }
    }

    /// Registers `user` with the addresses we listen on.
    async fn register(&self, user: &str, status: Status) -> Registered {
        let addrs = self.network.listen_addrs().borrow().clone();
        let record = Registration {
            name: name(user),
            peer_id: self.identity.peer_id(),
            addrs,
            seq: next_seq(),
            expires_at: now_ms() + 600_000,
            status,
            status_text: String::new(),
        }
        .sign(&self.identity);
        let registered = self
            .session
            .register(record, vec![])
            .await
            .expect("register");
        self.certificate
            .send_replace(registered.certificate.clone());
        registered
    }

    async fn whois(&self, user: &str) -> Option<PeerInfo> {
        let resolution = self.session.resolve(user).await.ok()?;
        PeerInfo::from_resolution(&resolution).ok()
    }

    fn sign(&self, message: &Message) -> Signed {
        Signed::sign(&self.identity, MESSAGE_CONTEXT, message)
    }
}

/// Waits (at most 10 s) for a push that shows `user` as `presence`.
async fn push_showing(pushes: &mut mpsc::Receiver<Resolution>, user: &str, presence: Presence) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await {
            Ok(Some(push)) if push.name.as_str() == user && push.presence == presence => return,
            Ok(Some(_)) => {}
            _ => panic!("no presence push within 10 s"),
        }
    }
}

/// Sequence numbers that grow across the whole run.
fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = now_ms() * 1000;
    let prev = SEQ.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    now.max(prev) + SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000
}

/// An inbox's sink that keeps nothing and counts what it is given, once
/// its signature checked out.
struct Counting(mpsc::Sender<()>);

impl MessageSink for Counting {
    fn refuse(&self, _: &ScreenName, _: &libp2p::PeerId) -> Option<RejectCode> {
        None
    }

    async fn seen(&self, _: MessageId, _: libp2p::PeerId) -> bool {
        false
    }

    type Kept = ();

    async fn keep(
        &self,
        _: Message,
        _: Signed,
        _: libp2p::PeerId,
    ) -> Result<Option<()>, messenger::chat::KeepError> {
        Ok(Some(()))
    }

    async fn verified(&self, (): ()) {
        let _ = self.0.try_send(());
    }

    async fn forged(&self, (): ()) {}
}

/// The peers of a two-peer figure, each on a runtime of its own with one
/// worker thread, as two processes would be, and the node on a third:
/// every hop between the peers crosses threads (on these 2-core machines,
/// cores), for our stack and for the raw TCP baseline alike. In one shared
/// runtime the baseline's two tasks can share a thread and skip every
/// wake-up (6 µs a round trip, against 60–90 µs across threads), which
/// makes a ratio to it noise.
struct Sides {
    alice: tokio::runtime::Runtime,
    bob: tokio::runtime::Runtime,
    node: tokio::runtime::Runtime,
}

impl Sides {
    fn new() -> Self {
        let side = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("runtime")
        };
        Self {
            alice: side("alice"),
            bob: side("bob"),
            node: side("node"),
        }
    }

    /// Runs `f` on one side's runtime (its tasks are spawned there).
    async fn on<T: Send + 'static>(
        runtime: &tokio::runtime::Runtime,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        runtime.spawn(f).await.expect("a side's task")
    }

    /// Ends the runtimes (from inside another one, so without waiting).
    fn end(self) {
        self.alice.shutdown_background();
        self.bob.shutdown_background();
        self.node.shutdown_background();
    }
}

async fn pair(sides: &Sides) -> Pair {
    let (node, dir) = Sides::on(&sides.node, start_node()).await;
    let addr = node.listen_addrs()[0].clone();
    let node_id = node.peer_id();
    let bob_addr = addr.clone();
    let (bob, inbox, stop, received) = Sides::on(&sides.bob, async move {
        let mut bob = Bare::connect(&bob_addr, None).await;
        bob.network.listen(loopback()).await.expect("listen");
        bob.register("bob", Status::Online).await;
        let (tx, received) = mpsc::channel(1 << 16);
        // The throughput figure measures the machinery, not the per-peer
        // message rate limit (a policy, documented with its default).
        let inbox = Inbox::new(
            name("bob"),
            watch::channel(vec![node_id]).1,
            watch::channel(Some(bob.session.clone())).1,
            Counting(tx),
            Rate::new(1e9, u32::MAX),
        );
        let stop = CancellationToken::new();
        let streams = bob.streams.take().expect("chat streams");
        let inbox = tokio::spawn(inbox.serve(streams, stop.clone()));
        (bob, inbox, stop, received)
    })
    .await;
    let (alice, link) = Sides::on(&sides.alice, async move {
        let alice = Bare::connect(&addr, None).await;
        alice.register("alice", Status::Online).await;
        let info = alice.whois("bob").await.expect("bob resolves");
        alice
            .network
            .dial(info.peer_id, info.addrs)
            .await
            .expect("dial");
        let link = ChatLink::open(&alice.network, info.peer_id, alice.certificate.subscribe())
            .await
            .expect("link");
        let warm = compose("alice", "bob", "warm-up");
        link.deliver(warm.id, alice.sign(&warm))
            .await
            .expect("warm-up");
        (alice, link)
    })
    .await;
    let mut p = Pair {
        node,
        _dir: dir,
        alice,
        bob,
        link,
        inbox,
        stop,
        received,
    };
    p.received.recv().await;
    p
}

fn compose(from: &str, to: &str, text: &str) -> Message {
    Message {
        id: MessageId::random(),
        from: name(from),
        to: name(to),
        sent_at: now_ms(),
        text: text.into(),
        file: None,
        invite: None,
    }
}

/// An agent (in-memory store) registered as `user` and online, whose
/// events are drained by a task that ends with it.
async fn online_user(node: &Multiaddr, user: &str) -> (Agent, tokio::task::JoinHandle<()>) {
    let mut config =
        AgentConfig::ephemeral(Identity::generate().expect("key"), node.clone()).expect("agent");
    config.message_rate = Rate::new(1e9, u32::MAX);
    let (agent, mut events) = Agent::start(config).await.expect("start");
    agent.register(user).await.expect("register");
    agent.go_online(vec![loopback()]).await.expect("online");
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    (agent, drain)
}

const TEXT: &str = "Hello Bob, lunch at noon? This is a typical chat line.";

/// Message round trip over an established link vs raw TCP request/reply.
pub async fn round_trip(sizes: &Sizes) -> Vec<Figure> {
    let sides = Sides::new();
    let p = pair(&sides).await;
    // The same bytes as one of our message frames, and an ack-sized reply.
    let message = compose("alice", "bob", TEXT);
    let frame = messenger::proto::codec::encode_frame(
        &messenger::proto::chat::ChatFrame::Message(p.alice.sign(&message)),
        messenger::proto::chat::MAX_FRAME,
    )
    .expect("frame");
    let ack = messenger::proto::codec::encode_frame(
        &messenger::proto::chat::ChatFrame::Ack { id: message.id },
        64,
    )
    .expect("ack");
    let (raw, server) = RawTcp::connect(&sides, frame.len(), ack).await;
    let n = sizes.round_trips;
    // In alternating blocks, so that both see the same machine: a shared
    // VM's hiccups land on both sides of the ratio.
    let block = (n / 20).max(1);
    let (p, ours, baseline) = Sides::on(&sides.alice, async move {
        let (mut p, mut raw) = (p, raw);
        let mut ours = Vec::with_capacity(n);
        let mut signing = Vec::with_capacity(n);
        let mut baseline = Vec::with_capacity(n);
        while ours.len() < n {
            for _ in 0..block.min(n - ours.len()) {
                let started = Instant::now();
                // What a send over an open link does: compose, sign, deliver.
                let message = compose("alice", "bob", TEXT);
                let signed = p.alice.sign(&message);
                signing.push(started.elapsed());
                p.link.deliver(message.id, signed).await.expect("send");
                ours.push(started.elapsed());
                // The next starts once bob is done with this one.
                p.received.recv().await;
            }
            for _ in 0..block.min(n - baseline.len()) {
                baseline.push(raw.round_trip(&frame).await);
            }
        }
        let (sign_median, _) = percentiles(signing);
        let signed = p.alice.sign(&compose("alice", "bob", TEXT));
        let key = p.alice.identity.verifying_key();
        let verifying: Vec<Duration> = (0..1000)
            .map(|_| {
                let started = Instant::now();
                signed.verify(MESSAGE_CONTEXT, &key).expect("verifies");
                started.elapsed()
            })
            .collect();
        let (verify_median, _) = percentiles(verifying);
        println!(
            "message round trip: composing and signing take {:.1} µs of it (median); verifying, {:.1} µs, follows the recipient's ack",
            sign_median.as_secs_f64() * 1e6,
            verify_median.as_secs_f64() * 1e6
        );
        (p, ours, baseline)
    })
    .await;
    let _ = server.await;
    shutdown(p, &sides).await;
    sides.end();
    let (om, op) = percentiles(ours);
    let (bm, bp) = percentiles(baseline);
    vec![
        time_figure(
            "message round trip, median",
            om,
            bm,
            "raw TCP request/reply",
            Some(2.0),
        ),
        time_figure(
            "message round trip, p99",
            op,
            bp,
            "raw TCP request/reply",
            Some(3.0),
        ),
    ]
}

/// The baseline: request/reply over a plain TCP connection from alice's
/// side to bob's, which answers each request of `request_len` bytes with
/// the same reply.
struct RawTcp {
    stream: tokio::net::TcpStream,
    back: Vec<u8>,
}

impl RawTcp {
    async fn connect(
        sides: &Sides,
        request_len: usize,
        reply: Vec<u8>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let listener = Sides::on(&sides.bob, async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind")
        })
        .await;
        let addr = listener.local_addr().expect("addr");
        let reply_len = reply.len();
        let server = sides.bob.spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let mut buf = vec![0u8; request_len];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
        let stream = Sides::on(&sides.alice, async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            stream
        })
        .await;
        let raw = Self {
            stream,
            back: vec![0u8; reply_len],
        };
        (raw, server)
    }

    async fn round_trip(&mut self, request: &[u8]) -> Duration {
        let started = Instant::now();
        self.stream.write_all(request).await.expect("write");
        self.stream.read_exact(&mut self.back).await.expect("read");
        started.elapsed()
    }
}

/// Resolve + dial + deliver + ack to fresh peers vs a bare libp2p dial.
pub async fn cold_send(sizes: &Sizes) -> Vec<Figure> {
    let (node, _dir) = start_node().await;
    let addr = node.listen_addrs()[0].clone();
    let config =
        AgentConfig::ephemeral(Identity::generate().expect("key"), addr.clone()).expect("agent");
    let (alice, mut alice_events) = Agent::start(config).await.expect("start");
    let drain = tokio::spawn(async move { while alice_events.recv().await.is_some() {} });
    alice.register("alice").await.expect("register");
    let mut ours = Vec::with_capacity(sizes.cold_peers);
    let mut parts = Vec::with_capacity(sizes.cold_peers);
    let from_ms = |ms: f64| Duration::from_secs_f64(ms / 1000.0);
    for i in 0..sizes.cold_peers {
        let peer_name = format!("peer{i}");
        let (peer, peer_drain) = online_user(&addr, &peer_name).await;
        let started = Instant::now();
        let outcome = alice.send(&peer_name, TEXT).await.expect("cold send");
        ours.push(started.elapsed());
        let SendOutcome::Delivered {
            resolve_ms,
            dial_ms,
            deliver_ms,
            ..
        } = outcome
        else {
            panic!("not delivered: {outcome:?}");
        };
        parts.push((from_ms(resolve_ms), from_ms(dial_ms), from_ms(deliver_ms)));
        peer.shutdown().await;
        peer_drain.abort();
    }
    alice.shutdown().await;
    drain.abort();
    node.shutdown().await;
    let baseline = bare_dials(sizes.cold_peers).await;
    let part = |f: fn(&(Duration, Duration, Duration)) -> Duration| {
        percentiles(parts.iter().map(f).collect()).0
    };
    eprintln!(
        "cold send, median of each part: resolve {:?}, dial + open the chat stream {:?}, first message and its ack {:?}",
        part(|p| p.0),
        part(|p| p.1),
        part(|p| p.2)
    );
    let (om, _) = percentiles(ours);
    let (bm, _) = percentiles(baseline);
    vec![time_figure(
        "cold send (resolve+dial+deliver+ack), median",
        om,
        bm,
        "bare libp2p TCP+Noise+Yamux dial",
        Some(1.5),
    )]
}

/// A fresh TCP+Noise+Yamux swarm, as the baselines use.
fn tcp_swarm<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| behaviour(key))
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn bare_swarm() -> libp2p::Swarm<libp2p::swarm::dummy::Behaviour> {
    tcp_swarm(|_| libp2p::swarm::dummy::Behaviour)
}

/// Listens on loopback and returns the bound address.
async fn listen_loopback<B: libp2p::swarm::NetworkBehaviour>(
    swarm: &mut libp2p::Swarm<B>,
) -> Multiaddr {
    swarm.listen_on(loopback()).expect("listen");
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

async fn bare_dials(n: usize) -> Vec<Duration> {
    let mut listener = bare_swarm();
    let addr = listen_loopback(&mut listener).await;
    let target = *listener.local_peer_id();
    tokio::spawn(async move {
        loop {
            listener.select_next_some().await;
        }
    });
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut dialer = bare_swarm();
        let started = Instant::now();
        dialer
            .dial(addr.clone().with(libp2p::multiaddr::Protocol::P2p(target)))
            .expect("dial");
        loop {
            match dialer.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                _ => {}
            }
        }
        samples.push(started.elapsed());
    }
    samples
}

/// Messages per second on one conversation with many in flight vs one
/// core's ed25519 sign+verify rate.
pub async fn throughput(sizes: &Sizes) -> Vec<Figure> {
    let sides = Sides::new();
    let p = pair(&sides).await;
    let n = sizes.throughput_messages;
    let (p, rate) = Sides::on(&sides.alice, async move {
        let messages: Vec<Message> = (0..n).map(|_| compose("alice", "bob", TEXT)).collect();
        let started = Instant::now();
        let mut acks = Vec::with_capacity(messages.len());
        for m in &messages {
            acks.push(p.link.submit(m.id, p.alice.sign(m)).await.expect("submit"));
        }
        for ack in acks {
            ack.await.expect("ack channel").expect("acknowledged");
        }
        (p, messages.len() as f64 / started.elapsed().as_secs_f64())
    })
    .await;
    shutdown(p, &sides).await;
    sides.end();
    let baseline = tokio::task::spawn_blocking({
        let n = sizes.sign_verify;
        move || sign_verify_rate(n)
    })
    .await
    .expect("sign/verify");
    vec![rate_figure(
        "conversation throughput (messages acked)",
        rate,
        baseline,
        "ed25519 sign+verify on one core",
        Some(0.6),
    )]
}

fn sign_verify_rate(n: usize) -> f64 {
    let id = Identity::from_seed([7; 32]);
    let key = id.verifying_key();
    let message = Message {
        id: MessageId([1; 16]),
        from: name("alice"),
        to: name("bob"),
        sent_at: 1,
        text: TEXT.into(),
        file: None,
        invite: None,
    };
    let started = Instant::now();
    for _ in 0..n {
        let signed = Signed::sign(&id, MESSAGE_CONTEXT, &message);
        signed.verify(MESSAGE_CONTEXT, &key).expect("verifies");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Registrations and resolves per second, many clients at once, against
/// our node and against libp2p's rendezvous server.
pub async fn directory(sizes: &Sizes) -> Vec<Figure> {
    let (ours_reg, ours_res) = our_directory(sizes).await;
    let (base_reg, base_res) = libp2p_rendezvous(sizes).await;
    vec![
        rate_figure(
            "directory registrations",
            ours_reg,
            base_reg,
            "libp2p rendezvous server",
            Some(2.0),
        ),
        rate_figure(
            "directory resolves",
            ours_res,
            base_res,
            "libp2p rendezvous server",
            Some(2.0),
        ),
    ]
}

/// Registrations and resolves per second against libp2p's server as the
/// directory grows: 32 clients, each registering new names one after
/// another until the directory holds each size, then resolving them.
pub async fn directory_sizes(sizes: &Sizes) -> Vec<Figure> {
    let mut figures = Vec::new();
    for &names in &sizes.directory_sizes {
        let sized = Sizes {
            directory_clients: 32,
            directory_ops_per_client: names.div_ceil(32),
            ..sizes.clone()
        };
        let (ours_reg, ours_res) = our_directory(&sized).await;
        let (base_reg, base_res) = libp2p_rendezvous(&sized).await;
        let baseline = "libp2p rendezvous server";
        figures.push(rate_figure(
            &format!("registrations up to {names} names"),
            ours_reg,
            base_reg,
            baseline,
            Some(2.0),
        ));
        figures.push(rate_figure(
            &format!("resolves among {names} names"),
            ours_res,
            base_res,
            baseline,
            Some(2.0),
        ));
    }
    figures
}

async fn our_directory(sizes: &Sizes) -> (f64, f64) {
    let (node, _dir) = start_node().await;
    let addr = node.listen_addrs()[0].clone();
    let mut clients = Vec::new();
    for _ in 0..sizes.directory_clients {
        clients.push(std::sync::Arc::new(Bare::connect(&addr, None).await));
    }
    let ops = sizes.directory_ops_per_client;
    // Registrations: each client claims its own names.
    let reg = ops_per_second(&clients, ops, |client, c, i| async move {
        client.register(&format!("c{c}n{i}"), Status::Online).await;
    })
    .await;
    // Resolves of those names.
    let res = ops_per_second(&clients, ops, |client, c, i| async move {
        client.whois(&format!("c{}n{i}", (c + 1) % 2)).await;
    })
    .await;
    drop(clients);
    node.shutdown().await;
    (reg, res)
}

/// Every client does `op(client, its index, i)` for i in 0..ops, one after
/// another, all clients at once: operations per second overall.
async fn ops_per_second<F, Fut>(clients: &[std::sync::Arc<Bare>], ops: usize, op: F) -> f64
where
    F: Fn(std::sync::Arc<Bare>, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let (client, op) = (client.clone(), op.clone());
            tokio::spawn(async move {
                for i in 0..ops {
                    op(client.clone(), c, i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (clients.len() * ops) as f64 / started.elapsed().as_secs_f64()
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct RdvServer {
    rendezvous: lrdv::server::Behaviour,
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct RdvClient {
    rendezvous: lrdv::client::Behaviour,
}

async fn libp2p_rendezvous(sizes: &Sizes) -> (f64, f64) {
    let mut server = tcp_swarm(|_| RdvServer {
        // Its per-peer and total caps would refuse a load test.
        rendezvous: lrdv::server::Behaviour::new(
            lrdv::server::Config::default()
                .with_max_registration_per_peer(usize::MAX)
                .with_max_registration_total(usize::MAX),
        ),
    });
    let addr = listen_loopback(&mut server).await;
    let server_id = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let ops = sizes.directory_ops_per_client;
    let total = (sizes.directory_clients * ops) as f64;
    // Each client runs its own swarm: register `ops` namespaces, then
    // discover `ops` times, one request at a time, like ours.
    let (tx, mut rx) = tokio::sync::mpsc::channel(sizes.directory_clients);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(sizes.directory_clients + 1));
    for c in 0..sizes.directory_clients {
        let (addr, tx, barrier) = (addr.clone(), tx.clone(), barrier.clone());
        tokio::spawn(async move {
            let mut swarm = tcp_swarm(|key| RdvClient {
                rendezvous: lrdv::client::Behaviour::new(key.clone()),
            });
            swarm.add_external_address("/ip4/127.0.0.1/tcp/9".parse().expect("addr"));
            swarm
                .dial(addr.with(libp2p::multiaddr::Protocol::P2p(server_id)))
                .expect("dial");
            loop {
                if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                    break;
                }
            }
            barrier.wait().await;
            for i in 0..ops {
                let ns = lrdv::Namespace::new(format!("c{c}n{i}")).expect("namespace");
                swarm
                    .behaviour_mut()
                    .rendezvous
                    .register(ns, server_id, None)
                    .expect("register");
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::Behaviour(RdvClientEvent::Rendezvous(
                            lrdv::client::Event::Registered { .. },
                        )) => break,
                        SwarmEvent::Behaviour(RdvClientEvent::Rendezvous(
                            lrdv::client::Event::RegisterFailed { error, .. },
                        )) => {
                            panic!("register failed: {error:?}")
                        }
                        _ => {}
                    }
                }
            }
            barrier.wait().await;
            for i in 0..ops {
                let ns = lrdv::Namespace::new(format!("c{}n{i}", (c + 1) % 2)).expect("namespace");
                swarm
                    .behaviour_mut()
                    .rendezvous
                    .discover(Some(ns), None, Some(1), server_id);
                loop {
                    if let SwarmEvent::Behaviour(RdvClientEvent::Rendezvous(
                        lrdv::client::Event::Discovered { .. }
                        | lrdv::client::Event::DiscoverFailed { .. },
                    )) = swarm.select_next_some().await
                    {
                        break;
                    }
                }
            }
            let _ = tx.send(()).await;
        });
    }
    drop(tx);
    let wait = |b: std::sync::Arc<tokio::sync::Barrier>| async move {
        tokio::time::timeout(Duration::from_secs(300), b.wait())
            .await
            .expect("the libp2p rendezvous load generator stalled");
    };
    wait(barrier.clone()).await;
    let phase = Instant::now();
    wait(barrier.clone()).await;
    let reg_wall = phase.elapsed();
    let phase = Instant::now();
    // Every client reports when its resolves are done.
    while rx.recv().await.is_some() {}
    let res_wall = phase.elapsed();
    server_task.abort();
    (
        total / reg_wall.as_secs_f64(),
        total / res_wall.as_secs_f64(),
    )
}

/// Resolve latency with a small and a large directory: a directory that
/// scales answers as fast when it holds 100 times more.
pub async fn directory_scale(sizes: &Sizes) -> Vec<Figure> {
    // The large one first, so that whatever the small run leaves behind
    // (allocator, caches) cannot flatter the large one.
    let large = resolve_latency(sizes.scale_large, sizes.scale_resolves).await;
    let small = resolve_latency(sizes.scale_small, sizes.scale_resolves).await;
    let (sm, sp) = percentiles(small);
    let (lm, lp) = percentiles(large);
    let base = format!("the same with {} registrations", sizes.scale_small);
    vec![
        time_figure(
            &format!("resolve with {} registrations, median", sizes.scale_large),
            lm,
            sm,
            &base,
            Some(1.2),
        ),
        time_figure(
            &format!("resolve with {} registrations, p99", sizes.scale_large),
            lp,
            sp,
            &base,
            None,
        ),
    ]
}

/// Preloads `held` live registrations (signed records, durable claims,
/// from many threads so claims share commits), then times resolves of
/// random ones over a directory session.
async fn resolve_latency(held: usize, resolves: usize) -> Vec<Duration> {
    use messenger::proto::presence::Status;
    use messenger::proto::record::Registration;
    let (node, _dir) = start_node().await;
    let registry = node.registry().clone();
    let now = messenger::proto::time::now_ms();
    let threads = 64.min(held.max(1));
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            for t in 0..threads {
                let registry = &registry;
                scope.spawn(move || {
                    for i in (t..held).step_by(threads) {
                        let id = Identity::generate().expect("key");
                        let record = Registration {
                            name: name(&format!("user{i}")),
                            peer_id: id.peer_id(),
                            addrs: vec!["/ip4/127.0.0.1/tcp/9".parse().expect("addr")],
                            seq: 1,
                            expires_at: now + 3_600_000,
                            status: Status::Online,
                            status_text: String::new(),
                        }
                        .sign(&id);
                        // Session ids far above the node's own.
                        let session = 1_000_000_000 + i as u64;
                        let key = messenger::proto::identity::PeerKey::of(id.peer_id());
                        let signer = rendezvous::registry::Signer {
                            peer: id.peer_id(),
                            key: key.as_ref(),
                        };
                        let registered = futures::executor::block_on(registry.register(
                            signer,
                            session,
                            record,
                            vec![],
                            now,
                        ));
                        if let Err(refusal) = registered {
                            panic!("preloading a registration: {refusal}");
                        }
                    }
                });
            }
        });
    })
    .await
    .expect("preload");
    assert_eq!(node.registry().online_count(), held);
    let client = Bare::connect(&node.listen_addrs()[0], None).await;
    let mut samples = Vec::with_capacity(resolves);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..resolves {
        // A cheap deterministic spread over the names.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let who = format!("user{}", x % held as u64);
        let started = Instant::now();
        let info = client.whois(&who).await.expect("resolve");
        samples.push(started.elapsed());
        assert!(info.online());
    }
    drop(client);
    node.shutdown().await;
    samples
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0)
}

/// Linux reports CPU times in USER_HZ ticks, 100 per second.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// A node process of the held-connections figure, on fixed ports once
/// it has picked them, so that it can be killed and started again where
/// its clients look for it.
struct HeldNode {
    child: std::process::Child,
    tcp: Multiaddr,
    quic: Multiaddr,
}

impl HeldNode {
    /// Starts the node on `ports` (TCP, UDP; 0 picks one) with its data in
    /// `dir`, and reads the addresses it prints.
    fn start(bin: &std::path::Path, dir: &std::path::Path, ports: (u16, u16)) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args([
                "--listen",
                &format!("/ip4/127.0.0.1/tcp/{}", ports.0),
                "--listen",
                &format!("/ip4/127.0.0.1/udp/{}/quic-v1", ports.1),
                // Capacity is what is measured: the connection limits are
                // raised past the load (each worker is one address).
                "--max-connections",
                "1000000",
                "--max-connections-per-ip",
                "1000000",
                "--max-pending-connections",
                "4096",
                "--max-pending-per-ip",
                "4096",
                "--max-memory-mib",
                "1000000",
                "--requests-per-second",
                "100000",
                "--request-burst",
                "100000",
                "--data-dir",
            ])
            .arg(dir)
            // E.g. BENCH_HELD_NODE_FLAGS="--ping-interval 30 --ping-timeout 20".
            .args(
                std::env::var("BENCH_HELD_NODE_FLAGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env(
                "RUST_LOG",
                std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the node");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = |quic: bool| -> Multiaddr {
            lines
                .next()
                .expect("the node prints its addresses")
                .expect("line")
                .parse::<Multiaddr>()
                .ok()
                .filter(|a| a.to_string().contains("quic") == quic)
                .expect("the TCP address first, then QUIC")
        };
        let tcp = next(false);
        let quic = next(true);
        Self { child, tcp, quic }
    }

    fn ports(&self) -> (u16, u16) {
        let port = |a: &Multiaddr| {
            a.iter()
                .find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Tcp(p) | libp2p::multiaddr::Protocol::Udp(p) => {
                        Some(p)
                    }
                    _ => None,
                })
                .expect("a port")
        };
        (port(&self.tcp), port(&self.quic))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The load of the held-connections figure: clients that stay online by
/// themselves, in worker processes (each from its own 127.0.0.x) or in
/// this one.
struct HeldCrowd {
    /// Per worker: the process, and what it last reported.
    workers: Vec<(std::process::Child, Reported)>,
    in_process: Option<(tokio::task::JoinSet<()>, Arc<load::CrowdCounts>)>,
}

impl HeldCrowd {
    fn start(
        sizes: &Sizes,
        addr: &Multiaddr,
        transport: load::Transport,
        worker: Option<&std::path::Path>,
    ) -> Self {
        use std::io::BufRead;
        let n = sizes.held_clients;
        let Some(exe) = worker else {
            let counts = Arc::new(load::CrowdCounts::default());
            let mut tasks = tokio::task::JoinSet::new();
            load::crowd(
                &mut tasks,
                addr,
                [127, 0, 0, 1].into(),
                transport,
                0,
                n,
                &counts,
            )
            .expect("start the crowd");
            return Self {
                workers: Vec::new(),
                in_process: Some((tasks, counts)),
            };
        };
        // A TCP client holds two files in its worker (its listener and its
        // connection): half as many per worker keeps under the per-process
        // limit of 20,000.
        let per_worker = match transport {
            load::Transport::Tcp => sizes.held_per_worker / 2,
            load::Transport::Quic => sizes.held_per_worker,
        }
        .max(1);
        let mut workers = Vec::new();
        for (w, first) in (0..n).step_by(per_worker).enumerate() {
            let count = per_worker.min(n - first);
            let mut child = std::process::Command::new(exe)
                .arg("--held-worker")
                .arg(addr.to_string())
                .arg(first.to_string())
                .arg(count.to_string())
                .arg(format!("127.0.0.{}", 10 + w))
                .arg(transport.as_str())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a load worker");
            let out = child.stdout.take().expect("stdout");
            let said = Arc::new(std::sync::Mutex::new((0, 0)));
            // The reader ends with the worker's stdout.
            std::thread::spawn({
                let said = said.clone();
                move || {
                    for line in std::io::BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        // "online N registered M"
                        let counts: Vec<usize> = line
                            .split_whitespace()
                            .filter_map(|w| w.parse().ok())
                            .collect();
                        if let [online, registered] = counts[..] {
                            *said.lock().unwrap_or_else(|p| p.into_inner()) = (online, registered);
                        }
                    }
                }
            });
            workers.push((child, said));
        }
        Self {
            workers,
            in_process: None,
        }
    }

    /// (online, registrations so far), over the whole crowd.
    fn read(&self) -> (usize, usize) {
        if let Some((_, counts)) = &self.in_process {
            return counts.read();
        }
        self.workers.iter().fold((0, 0), |(o, r), (_, said)| {
            let (online, registered) = *said.lock().unwrap_or_else(|p| p.into_inner());
            (o + online, r + registered)
        })
    }

    /// Waits until `registrations` more registrations than `since` were
    /// made (every client back), up to `limit`; how long it took, and how
    /// many came back if not all.
    async fn wait_registered(
        &self,
        since: usize,
        clients: usize,
        limit: Duration,
    ) -> (Duration, usize) {
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            let (online, registered) = self.read();
            let back = registered.saturating_sub(since);
            if back >= clients || started.elapsed() >= limit {
                return (started.elapsed(), back.min(clients));
            }
            if reported.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "held: {back} of {clients} registered, {online} online, after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU ticks the load has used (in process: this whole process's).
    fn cpu_ticks(&self) -> u64 {
        if self.in_process.is_some() {
            return cpu_ticks(std::process::id());
        }
        self.workers.iter().map(|(c, _)| cpu_ticks(c.id())).sum()
    }

    fn stop(self) {
        if let Some((mut tasks, _)) = self.in_process {
            tasks.abort_all();
        }
        for (mut child, _) in self.workers {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// What a load worker last said: (online, registered).
type Reported = Arc<std::sync::Mutex<(usize, usize)>>;

/// How long a crowd may take to come online, or back after a restart.
const HELD_ARRIVAL_LIMIT: Duration = Duration::from_secs(600);

/// The reconnect storm's stated bound for a crowd of `clients`: every
/// one back online within 30 s plus 5 ms per client, that is at least 200
/// returns a second once the first are in (280 s for 50,000). The node
/// and the load generators share this machine's two cores, so the rate
/// is the machine's: 50,000 QUIC clients came back in 212 s here, with
/// the generators taking more than half of the CPU.
pub fn storm_bound(clients: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(5) * clients as u32
}

/// Online clients one node process holds: its resident memory per client,
/// its CPU while holding them, how long a presence change takes to reach
/// a watcher at that load; then the reconnect storm: the node killed with
/// kill -9 and started again on the same data dir and ports, and the time
/// until every client registered again. The clients stay online by
/// themselves (the client's jittered backoff) and all start at once, so
/// the first arrival is a storm too. With `worker` (the suite's own
/// binary), they run in worker processes of `held_per_worker` each, every
/// one from its own 127.0.0.x address; without, in this process.
/// `BENCH_HELD_TRANSPORT=tcp` makes them use TCP instead of QUIC (TCP costs
/// the node one file per client).
pub async fn held_connections(
    sizes: &Sizes,
    rendezvous_bin: &std::path::Path,
    worker: Option<&std::path::Path>,
) -> Vec<Figure> {
    let transport = std::env::var("BENCH_HELD_TRANSPORT")
        .ok()
        .and_then(|t| load::Transport::parse(&t))
        .unwrap_or(load::Transport::Quic);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = HeldNode::start(rendezvous_bin, dir.path(), (0, 0));
    let addr = node.tcp.clone();
    let load_addr = match transport {
        load::Transport::Tcp => node.tcp.clone(),
        load::Transport::Quic => node.quic.clone(),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(node.child.id());

    // Every client at once: the first arrival.
    let n = sizes.held_clients;
    let crowd = HeldCrowd::start(sizes, &load_addr, transport, worker);
    let phase = Phase::start(&node, &crowd);
    let (arrival, arrived) = crowd.wait_registered(0, n, HELD_ARRIVAL_LIMIT).await;
    let bound_by = phase.describe(&node, &crowd, arrival);
    eprintln!(
        "held: {arrived} of {n} {} clients online {:.1} s after starting together ({bound_by})",
        transport.as_str(),
        arrival.as_secs_f64(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(node.child.id());
    let grown_kib = after.saturating_sub(before) as f64;
    // What holding them costs in CPU, idle: keep-alives, pings over TCP.
    let phase = Phase::start(&node, &crowd);
    let idle = Instant::now();
    // BENCH_HELD_SECS=60 holds them longer (to profile the node meanwhile).
    let hold = std::env::var("BENCH_HELD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let holding = phase.describe(&node, &crowd, idle.elapsed());
    eprintln!("held: node RSS {before} -> {after} KiB; while holding them: {holding}");

    // Presence latency at this load: a watcher and a watched user online.
    let watched = Bare::connect(&addr, None).await;
    watched.register("watched", Status::Online).await;
    let (push_tx, mut pushes) = mpsc::channel(64);
    let watcher = Bare::connect(&addr, Some(push_tx)).await;
    watcher
        .session
        .watch(vec!["watched".into()])
        .await
        .expect("watch");
    let mut samples = Vec::new();
    for round in 0..20 {
        let (status, shown) = if round % 2 == 0 {
            (Status::Away, Presence::Away)
        } else {
            (Status::Online, Presence::Online)
        };
        let started = Instant::now();
        watched.register("watched", status).await;
        push_showing(&mut pushes, "watched", shown).await;
        samples.push(started.elapsed());
    }
    let (presence_median, _) = percentiles(samples);
    // How many are online at the end: a sample of the names, resolved
    // through the node (a client the node dropped, e.g. for a ping
    // unanswered under load, is offline until it is back).
    let sample: Vec<usize> = (0..n).step_by((n / 500).max(1)).collect();
    let mut still_online = 0;
    for i in &sample {
        if let Some(info) = watcher.whois(&format!("held{i}")).await {
            still_online += usize::from(info.online());
        }
    }
    let online = (n as f64 * still_online as f64 / sample.len().max(1) as f64).round() as usize;
    let per_client_kib = grown_kib / online.max(1) as f64;
    eprintln!(
        "held: {still_online} of a sample of {} names online: about {online} of {n} online",
        sample.len()
    );
    drop((watched, watcher));

    // The reconnect storm: kill -9, start again where the clients look.
    let ports = node.ports();
    let (_, registered_before) = crowd.read();
    node.kill();
    let killed = Instant::now();
    let mut node = HeldNode::start(rendezvous_bin, dir.path(), ports);
    let down = killed.elapsed();
    let phase = Phase::start(&node, &crowd);
    let (storm, back) = crowd
        .wait_registered(registered_before, n, HELD_ARRIVAL_LIMIT)
        .await;
    let bound_by = phase.describe(&node, &crowd, storm);
    eprintln!(
        "held: node down {:.2} s; {back} of {n} clients registered again {:.1} s after it was back ({bound_by})",
        down.as_secs_f64(),
        storm.as_secs_f64(),
    );
    crowd.stop();
    node.kill();
    let bound = storm_bound(n);
    vec![
        Figure {
            name: format!("online clients held ({})", transport.as_str()),
            ours: online as f64,
            baseline: 50_000.0,
            unit: "".into(),
            baseline_name: "the target count".into(),
            ratio: online as f64 / 50_000.0,
            target: Some("≥ 1×".into()),
            met: Some(online >= 50_000),
        },
        Figure {
            name: "node memory per online client".into(),
            ours: per_client_kib,
            baseline: 32.0,
            unit: "KiB".into(),
            baseline_name: "32 KiB budget".into(),
            ratio: per_client_kib / 32.0,
            target: Some("≤ 1×".into()),
            met: Some(per_client_kib <= 32.0),
        },
        Figure {
            name: format!("presence change to a watcher, {online} online"),
            ours: micros(presence_median),
            baseline: 1e6,
            unit: "µs".into(),
            baseline_name: "1 s budget".into(),
            ratio: presence_median.as_secs_f64(),
            target: Some("≤ 1×".into()),
            met: Some(presence_median <= Duration::from_secs(1)),
        },
        Figure {
            name: format!("{arrived} of {n} clients online, all starting at once"),
            ours: arrival.as_secs_f64() * 1e3,
            baseline: bound.as_secs_f64() * 1e3,
            unit: "ms".into(),
            baseline_name: "the stated bound".into(),
            ratio: arrival.as_secs_f64() / bound.as_secs_f64(),
            target: Some("≤ 1×".into()),
            met: Some(arrived == n && arrival <= bound),
        },
        Figure {
            name: format!("reconnect storm: {back} of {n} back after kill -9 and restart"),
            ours: storm.as_secs_f64() * 1e3,
            baseline: bound.as_secs_f64() * 1e3,
            unit: "ms".into(),
            baseline_name: "the stated bound".into(),
            ratio: storm.as_secs_f64() / bound.as_secs_f64(),
            target: Some("≤ 1×".into()),
            met: Some(back == n && storm <= bound),
        },
    ]
}

/// What the node, the load and the kernel spent over one phase of the
/// held figure (the first arrival, the storm): which process bounded it,
/// and whether the kernel dropped datagrams (a full UDP receive buffer
/// shows up as clients timing out, not as CPU).
struct Phase {
    node_ticks: u64,
    load_ticks: u64,
    udp_drops: Option<u64>,
}

impl Phase {
    fn start(node: &HeldNode, crowd: &HeldCrowd) -> Self {
        Self {
            node_ticks: cpu_ticks(node.child.id()),
            load_ticks: crowd.cpu_ticks(),
            udp_drops: udp_receive_drops(),
        }
    }

    fn describe(&self, node: &HeldNode, crowd: &HeldCrowd, took: Duration) -> String {
        let per_second = clock_ticks_per_second() * took.as_secs_f64().max(0.001);
        let node_share =
            cpu_ticks(node.child.id()).saturating_sub(self.node_ticks) as f64 / per_second;
        let load_share = crowd.cpu_ticks().saturating_sub(self.load_ticks) as f64 / per_second;
        let drops = match (self.udp_drops, udp_receive_drops()) {
            (Some(before), Some(after)) => format!(
                ", UDP datagrams dropped for a full receive buffer: {}",
                after.saturating_sub(before)
            ),
            _ => String::new(),
        };
        format!(
            "node CPU {:.0}% of one core, load generators {:.0}%{drops}",
            node_share * 100.0,
            load_share * 100.0
        )
    }
}

/// Datagrams this machine's kernel dropped because a socket's receive
/// buffer was full, since boot (`RcvbufErrors` of /proc/net/snmp).
fn udp_receive_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// The whole `messenger send` command as a process (reported, no target).
pub async fn send_process(sizes: &Sizes, messenger_bin: &std::path::Path) -> Vec<Figure> {
    if sizes.send_processes == 0 {
        return Vec::new();
    }
    let (node, dir) = start_node().await;
    let addr = node.listen_addrs()[0].clone();
    let _bob = online_user(&addr, "bob").await;
    let home = dir.path().join("alice");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(messenger_bin)
            .arg("--home")
            .arg(&home)
            .args(["--rendezvous", &addr.to_string()])
            .args(args)
            .output()
            .expect("run messenger");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["register", "alice"]);
    let mut samples = Vec::new();
    for _ in 0..sizes.send_processes {
        let started = Instant::now();
        run(&["send", "bob", TEXT]);
        samples.push(started.elapsed());
    }
    // Baseline: starting the same binary for `--version`.
    let mut base = Vec::new();
    for _ in 0..sizes.send_processes {
        let started = Instant::now();
        let out = std::process::Command::new(messenger_bin)
            .arg("--version")
            .output()
            .expect("run messenger");
        assert!(out.status.success());
        base.push(started.elapsed());
    }
    node.shutdown().await;
    let (om, _) = percentiles(samples);
    let (bm, _) = percentiles(base);
    vec![time_figure(
        "`messenger send` process, median",
        om,
        bm,
        "`messenger --version` process",
        None,
    )]
}

async fn shutdown(p: Pair, sides: &Sides) {
    p.stop.cancel();
    let _ = p.inbox.await;
    drop(p.link);
    drop(p.alice);
    drop(p.bob);
    let node = p.node;
    Sides::on(&sides.node, async move { node.shutdown().await }).await;
}

/// The window with a conversation of `n` messages open, 120×40: how long
/// opening it takes (the history handed over, then the first frame), and
/// the median frame while scrolling through it a page at a time.
fn window_frames(n: usize, frames: usize) -> (Duration, Duration) {
    use messenger::api::{ContactView, Response};
    use messenger::store::{Direction, MessageState, StoredMessage};
    use messenger::ui::{self, App, Connection, Me, Tag, Theme};
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    let me = Me {
        name: Some(name("alice")),
        status: Status::Online,
        text: String::new(),
        connection: Connection::Online,
    };
    let mut app = App::new(me, None, Theme::new(true));
    app.on_reply(
        Tag::Contacts,
        Response::Contacts {
            contacts: vec![ContactView {
                name: name("bob"),
                pinned: libp2p::PeerId::random(),
                key_changed_to: None,
                presence: Some(messenger::proto::presence::Presence::Online),
                status_text: String::new(),
                last_seen: None,
                blocked: false,
                auto_accept_below: None,
            }],
        },
    );
    let history: Vec<StoredMessage> = (0..n as u64)
        .map(|seq| {
            let mine = seq % 3 == 0;
            let (from, to) = if mine {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            StoredMessage {
                seq,
                message: compose(from, to, &TEXT.repeat(1 + (seq % 4) as usize)),
                direction: if mine { Direction::Out } else { Direction::In },
                state: if mine {
                    MessageState::Delivered
                } else {
                    MessageState::Received
                },
                updated_at: 0,
                error: None,
                peer_id: None,
                signed: None,
            }
        })
        .collect();
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 40)).expect("terminal");
    let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
    let now = Instant::now();
    app.on_key(key(KeyCode::Enter), now);
    let started = Instant::now();
    app.on_reply(
        Tag::History(name("bob")),
        Response::Messages { messages: history },
    );
    terminal.draw(|f| ui::draw(&mut app, f, now)).expect("draw");
    let open = started.elapsed();
    let mut samples = Vec::with_capacity(frames);
    for i in 0..frames {
        // Up a page at a time, then down again: every frame new lines.
        let up = (i / 20) % 2 == 0;
        app.on_key(
            key(if up {
                KeyCode::PageUp
            } else {
                KeyCode::PageDown
            }),
            now,
        );
        let started = Instant::now();
        terminal.draw(|f| ui::draw(&mut app, f, now)).expect("draw");
        samples.push(started.elapsed());
    }
    (open, percentiles(samples).0)
}

/// The window: opening a long conversation, and a frame while scrolling it.
pub fn window(sizes: &Sizes) -> Vec<Figure> {
    let n = sizes.window_messages;
    let (open, frame) = window_frames(n, sizes.window_frames);
    let (_, small_frame) = window_frames(100, sizes.window_frames);
    let budget = Duration::from_micros(16_667);
    vec![
        time_figure(
            &format!("window: open a {n}-message conversation"),
            open,
            budget,
            "one frame at 60 Hz",
            Some(1.0),
        ),
        time_figure(
            &format!("window: frame scrolling {n} messages"),
            frame,
            small_frame,
            "the same with 100 messages",
            Some(1.5),
        ),
    ]
}

/// Every figure, in order. The process figures need the binaries.
pub async fn run_all(
    sizes: &Sizes,
    messenger_bin: Option<&std::path::Path>,
    worker: Option<&std::path::Path>,
) -> Vec<Figure> {
    let mut figures = Vec::new();
    figures.extend(round_trip(sizes).await);
    figures.extend(cold_send(sizes).await);
    figures.extend(throughput(sizes).await);
    figures.extend(directory(sizes).await);
    figures.extend(directory_scale(sizes).await);
    figures.extend(window(sizes));
    figures.extend(cluster(sizes).await);
    if let Some(bin) = messenger_bin {
        figures.extend(send_process(sizes, bin).await);
        figures.extend(file_transfer(sizes, bin).await);
        figures.extend(tunnels(sizes, bin).await);
        figures.extend(web(sizes, bin).await);
        let node = bin.with_file_name("rendezvous");
        if node.exists() {
            figures.extend(held_connections(sizes, &node, worker).await);
        }
    }
    figures
}

/// Bench users' homes under `dir`, on the node at `node`, run with the
/// real `messenger` binary.
struct Homes {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    node: Multiaddr,
}

impl Homes {
    fn command(&self, user: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.arg("--home")
            .arg(self.dir.join(user))
            .args(["--rendezvous", &self.node.to_string()])
            // BENCH_CHILD_LOG=messenger=info shows what the processes do.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| "error".into()),
            );
        cmd
    }

    /// Runs `messenger args` as `user` to its end; its stdout.
    fn run(&self, user: &str, args: &[&str]) -> String {
        let out = self
            .command(user)
            .args(args)
            .output()
            .expect("run messenger");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running `messenger args` as `user`, reading its stdout.
    fn spawn(&self, user: &str, args: &[&str]) -> UserProc {
        use std::io::BufRead;
        let mut child = self
            .command(user)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn messenger");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        UserProc { child, lines }
    }

    /// `messenger online` as `user` on loopback, once registered.
    fn online(&self, user: &str) -> UserProc {
        let proc = self.spawn(
            user,
            &["--json", "online", "--listen", "/ip4/127.0.0.1/tcp/0"],
        );
        proc.expect("online", |l| l.contains("\"event\":\"online\""));
        proc
    }
}

/// A `messenger` process of a bench user, its stdout read line by line.
struct UserProc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl UserProc {
    fn expect(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

impl Drop for UserProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// File transfer between two real `messenger online` processes over
/// loopback TCP, against the same bytes over a bare libp2p stream (TCP +
/// Noise + Yamux, in this process) and over raw TCP; and both processes'
/// peak memory growth during the transfer.
pub async fn file_transfer(sizes: &Sizes, messenger_bin: &std::path::Path) -> Vec<Figure> {
    use std::io::Write;
    let size = sizes.file_bytes;
    if size == 0 {
        return Vec::new();
    }
    let (node, dir) = start_node().await;
    let homes = Homes {
        bin: messenger_bin.to_owned(),
        dir: dir.path().to_owned(),
        node: node.listen_addrs()[0].clone(),
    };
    let run = |user: &str, args: &[&str]| homes.run(user, args);
    let online = |user: &str| homes.online(user);
    run("alice", &["register", "alice"]);
    run("bob", &["register", "bob"]);
    let alice = online("alice");
    let bob = online("bob");
    // Content that does not compress, written in chunks.
    let path = dir.path().join("big.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut xof = blake3::Hasher::new().update(b"bench").finalize_xof();
        let mut chunk = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            xof.fill(&mut chunk[..n]);
            file.write_all(&chunk[..n]).expect("write");
            left -= n as u64;
        }
    }
    let path_text = path.to_str().expect("utf-8 path").to_owned();
    let offered = run(
        "alice",
        &["--json", "file", "send", "bob", &path_text, "--no-wait"],
    );
    let offer: serde_json::Value =
        serde_json::from_str(offered.lines().next().unwrap_or_default()).expect("offered json");
    let id = offer["id"].as_str().expect("id").to_owned();
    bob.expect("the offer", |l| l.contains(&id));
    let pids = [alice.child.id(), bob.child.id()];
    let before = pids.map(rss_kib);
    let peak = std::sync::Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    peak[i].fetch_max(rss_kib(*pid), std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let into = dir.path().join("received");
    let into_text = into.to_str().expect("utf-8 path").to_owned();
    let started = Instant::now();
    run("bob", &["file", "accept", &id, "--to", &into_text]);
    let ours = size as f64 / started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let growth = |i: usize| {
        peak[i]
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(before[i]) as f64
    };
    let (sender_kib, receiver_kib) = (growth(0), growth(1));
    drop(alice);
    drop(bob);
    node.shutdown().await;
    let libp2p = libp2p_stream_rate(size).await;
    let tcp = tcp_rate(size).await;
    // What the receiver's disk allows: the same file copied on it, to
    // the disk (the receiver syncs the file before it checks the hash).
    let disk = {
        let (from, to) = (path.clone(), dir.path().join("copy.bin"));
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            std::fs::copy(&from, &to).expect("copy");
            std::fs::File::open(&to)
                .expect("open")
                .sync_all()
                .expect("sync");
            let rate = size as f64 / started.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(&to);
            rate
        })
        .await
        .expect("copy task")
    };
    let mib = |r: f64| r / (1 << 20) as f64;
    let label = if size >= 1 << 30 {
        format!("{} GiB", size >> 30)
    } else {
        format!("{} MiB", size >> 20)
    };
    let mut figures = vec![
        rate_figure(
            &format!("file transfer {label}, MiB"),
            mib(ours),
            mib(libp2p),
            "bare libp2p stream, same connection kind",
            Some(0.8),
        ),
        rate_figure(
            &format!("file transfer {label} vs a local copy, MiB"),
            mib(ours),
            mib(disk),
            "the same file copied on the same disk, synced",
            None,
        ),
        rate_figure(
            &format!("file transfer {label} vs raw TCP, MiB"),
            mib(ours),
            mib(tcp),
            "raw TCP on loopback",
            None,
        ),
    ];
    for (who, kib) in [("sender", sender_kib), ("receiver", receiver_kib)] {
        figures.push(Figure {
            name: format!("{who} memory growth during {label}"),
            ours: kib,
            baseline: (size >> 10) as f64,
            unit: " KiB".into(),
            baseline_name: "the file's size".into(),
            ratio: kib / (size >> 10) as f64,
            target: Some("≤ 0.02×".into()),
            met: Some(kib <= 0.02 * (size >> 10) as f64),
        });
    }
    figures
}

/// Bytes per second of `size` bytes over one libp2p stream between two
/// swarms on loopback TCP (Noise, Yamux), as our clients connect.
async fn libp2p_stream_rate(size: u64) -> f64 {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    let a = Identity::generate().expect("key");
    let b = Identity::generate().expect("key");
    let (alice, _a_task, _) = Network::start(&a, NetworkConfig::default()).expect("network");
    let (bob, _b_task, inbound) = Network::start(&b, NetworkConfig::default()).expect("network");
    bob.listen(loopback()).await.expect("listen");
    let mut addrs = bob.listen_addrs();
    let addr = loop {
        if let Some(addr) = addrs.borrow().first().cloned() {
            break addr;
        }
        addrs.changed().await.expect("addrs");
    };
    alice.dial(b.peer_id(), vec![addr]).await.expect("dial");
    let mut files = inbound.files;
    let reader = tokio::spawn(async move {
        let mut incoming = files.next().await.expect("a stream");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < size {
            let n = incoming.stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "ended early");
            got += n as u64;
        }
        got
    });
    let started = Instant::now();
    let mut stream = alice
        .control()
        .open_stream(b.peer_id(), messenger::proto::file::PROTOCOL)
        .await
        .expect("open");
    let buf = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    while sent < size {
        let n = buf.len().min((size - sent) as usize);
        stream.write_all(&buf[..n]).await.expect("write");
        sent += n as u64;
    }
    stream.flush().await.expect("flush");
    let got = reader.await.expect("reader");
    assert_eq!(got, size);
    size as f64 / started.elapsed().as_secs_f64()
}

/// Bytes per second of `size` bytes over raw TCP on loopback.
async fn tcp_rate(size: u64) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < size {
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "ended early");
            got += n as u64;
        }
    });
    let started = Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let buf = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    while sent < size {
        let n = buf.len().min((size - sent) as usize);
        socket.write_all(&buf[..n]).await.expect("write");
        sent += n as u64;
    }
    reader.await.expect("reader");
    size as f64 / started.elapsed().as_secs_f64()
}

/// The table, as printed.
pub fn table(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<46} {:>14} {:>14} {:>8} {:>8}  {}\n",
        "figure", "ours", "baseline", "ratio", "target", "baseline is"
    );
    for f in figures {
        let met = match f.met {
            Some(true) => " met",
            Some(false) => " NOT MET",
            None => "",
        };
        out.push_str(&format!(
            "{:<46} {:>11.1} {:<2} {:>11.1} {:<2} {:>7.2}× {:>8}{met}  {}\n",
            f.name,
            f.ours,
            f.unit,
            f.baseline,
            f.unit,
            f.ratio,
            f.target.as_deref().unwrap_or("-"),
            f.baseline_name
        ));
    }
    out
}
