//! The load generator of the held-connections figure: light clients, each
//! its own key and libp2p swarm with only what the node needs from an online
//! client (ping, the directory stream), so thousands fit in one process.
//! The full suite runs them in worker processes (`suite --held-worker`),
//! each bound to its own 127.0.0.x address to get past the ephemeral-port
//! and per-process file limits.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::directory::{DirectorySession, node_peer_id};
use crate::proto::Identity;
use crate::proto::directory::PROTOCOL;
use crate::proto::name::ScreenName;
use crate::proto::presence::Status;
use crate::proto::record::Registration;
use crate::reconnect::{Backoff, Setback};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, noise, ping, tcp, yamux};
use tokio::sync::oneshot;

/// Light QUIC clients on one shared endpoint (the held figure's QUIC load).
pub mod quic;

/// How the light clients reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Self::Tcp),
            "quic" => Some(Self::Quic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        }
    }

    /// Listening on `ip` makes the dial leave from `ip` (port reuse).
    fn listen_addr(self, ip: Ipv4Addr) -> Multiaddr {
        let addr = Multiaddr::empty().with(Protocol::Ip4(ip));
        match self {
            Self::Tcp => addr.with(Protocol::Tcp(0)),
            Self::Quic => addr.with(Protocol::Udp(0)).with(Protocol::QuicV1),
        }
    }
}

#[derive(NetworkBehaviour)]
struct Light {
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A worker stops adding clients after this many failed (after retries).
const GIVE_UP_AFTER_FAILURES: usize = 50;

/// A bare connection to the node: a fresh key and a swarm with only what
/// the node needs from a client (ping, streams), driven by a task until
/// this is dropped. The load generator's clients and the adversarial
/// tests' attackers are made of these.
pub struct BareConnection {
    pub identity: Identity,
    pub node: PeerId,
    control: libp2p_stream::Control,
    task: tokio::task::JoinHandle<()>,
    /// Resolves (with an error) when the last connection to the node closes;
    /// the first session takes it.
    gone: Option<oneshot::Receiver<()>>,
}

impl Drop for BareConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a light client is not online, and whether anything answered.
#[derive(Debug)]
pub struct Failed {
    pub setback: Setback,
    pub message: String,
}

impl Failed {
    /// The node answered and turned us away (or something of ours failed).
    pub fn turned_away(message: impl ToString) -> Self {
        Self {
            setback: Setback::TurnedAway,
            message: message.to_string(),
        }
    }
}

impl From<Failed> for String {
    fn from(failed: Failed) -> String {
        failed.message
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.setback)
    }
}

impl BareConnection {
    /// Connects a fresh key to the node at `node_addr`, leaving from
    /// `bind`. `Err` if the node cannot be reached or refuses.
    pub async fn connect(
        node_addr: &Multiaddr,
        bind: Ipv4Addr,
        transport: Transport,
    ) -> Result<Self, String> {
        Ok(Self::try_connect(node_addr, bind, transport).await?)
    }

    /// As [`Self::connect`], saying whether the node answered.
    pub async fn try_connect(
        node_addr: &Multiaddr,
        bind: Ipv4Addr,
        transport: Transport,
    ) -> Result<Self, Failed> {
        let identity = Identity::generate().map_err(Failed::turned_away)?;
        Self::connect_as(identity, node_addr, bind, transport).await
    }

    /// Connects `identity` (a client that comes back keeps its key).
    pub async fn connect_as(
        identity: Identity,
        node_addr: &Multiaddr,
        bind: Ipv4Addr,
        transport: Transport,
    ) -> Result<Self, Failed> {
        let node = node_peer_id(node_addr).map_err(Failed::turned_away)?;
        let behaviour = |_: &libp2p::identity::Keypair| Light {
            ping: ping::Behaviour::new(ping::Config::new()),
            stream: libp2p_stream::Behaviour::new(),
        };
        let idle =
            |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
        let builder = libp2p::SwarmBuilder::with_existing_identity(identity.keypair()).with_tokio();
        let mut swarm = match transport {
            Transport::Tcp => builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(Failed::turned_away)?
                .with_behaviour(behaviour)
                .map_err(Failed::turned_away)?
                .with_swarm_config(idle)
                .build(),
            Transport::Quic => builder
                .with_quic()
                .with_behaviour(behaviour)
                .map_err(Failed::turned_away)?
                .with_swarm_config(idle)
                .build(),
        };
        swarm
            .listen_on(transport.listen_addr(bind))
            .map_err(Failed::turned_away)?;
        // Wait for the listener so the dial can reuse its address; a
        // listener that fails (out of files, say) fails this attempt.
        let listening = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { .. } => return Ok(()),
                    SwarmEvent::ListenerClosed { .. } | SwarmEvent::ListenerError { .. } => {
                        return Err(Failed::turned_away("cannot listen"));
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), listening)
            .await
            .map_err(|_| Failed::turned_away("no listen address in time"))??;
        swarm.dial(node_addr.clone()).map_err(Failed::turned_away)?;
        let control = swarm.behaviour().stream.new_control();
        let (connected_tx, connected) = oneshot::channel();
        let (gone_tx, gone) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            let mut gone_tx = Some(gone_tx);
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Err(Failed {
                                setback: Setback::of_dial(&error),
                                message: error.to_string(),
                            }));
                        }
                    }
                    SwarmEvent::ConnectionClosed {
                        peer_id,
                        num_established: 0,
                        ..
                    } if peer_id == node => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Err(Failed::turned_away("closed at once")));
                        }
                        gone_tx.take();
                    }
                    _ => {}
                }
            }
        });
        // Owned before the dial's outcome is awaited: a failed attempt
        // drops it, and its drop stops the swarm's task (a detached one
        // kept its swarm and listener for ever: thousands of them after a
        // reconnect storm, until the worker ran out of files).
        let connection = Self {
            identity,
            node,
            control,
            task,
            gone: Some(gone),
        };
        tokio::time::timeout(Duration::from_secs(20), connected)
            .await
            .map_err(|_| Failed {
                setback: Setback::Unreachable,
                message: "no answer to the dial".into(),
            })?
            .map_err(|_| Failed::turned_away("the swarm stopped"))??;
        Ok(connection)
    }

    /// Opens a raw directory stream.
    pub async fn stream(&mut self) -> Result<libp2p::Stream, String> {
        self.control
            .open_stream(self.node, PROTOCOL)
            .await
            .map_err(|e| e.to_string())
    }

    /// Opens a directory session; the first one ends when the connection
    /// does.
    pub async fn session(&mut self) -> Result<DirectorySession, String> {
        let stream = self.stream().await?;
        let gone = self.gone.take();
        Ok(DirectorySession::over_stream(
            self.node,
            stream,
            None,
            async move {
                match gone {
                    Some(gone) => {
                        let _ = gone.await;
                    }
                    None => std::future::pending().await,
                }
            },
        ))
    }

    /// A registration of `name` by this key, online, valid for 10 minutes.
    pub fn record(&self, name: ScreenName, seq: u64) -> Registration {
        online_record(&self.identity, name, seq)
    }
}

/// A registration of `name` by `identity`, online, valid for 10 minutes.
fn online_record(identity: &Identity, name: ScreenName, seq: u64) -> Registration {
    Registration {
        name,
        peer_id: identity.peer_id(),
        addrs: Vec::new(),
        seq,
        expires_at: crate::proto::time::now_ms() + 10 * 60 * 1000,
        status: Status::Online,
        status_text: String::new(),
    }
}

/// One online client: its connection and session live until this is
/// dropped.
pub struct LightClient {
    _session: DirectorySession,
    _connection: BareConnection,
}

/// Connects a fresh key to the node at `node_addr` from `bind` and
/// registers `name` as online.
pub async fn light_client(
    node_addr: &Multiaddr,
    bind: Ipv4Addr,
    transport: Transport,
    name: ScreenName,
) -> Result<LightClient, String> {
    let mut connection = BareConnection::connect(node_addr, bind, transport).await?;
    let session = connection.session().await?;
    let record = connection.record(name, crate::proto::time::now_ms() * 1000);
    session
        .register(record.sign(&connection.identity), Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok(LightClient {
        _session: session,
        _connection: connection,
    })
}

/// Brings `count` light clients named `held{first}`… online, a few at a
/// time (a connection storm is not what this measures). A client that
/// still fails after retries is counted, not fatal: the figure is how many
/// the node holds.
pub async fn light_clients(
    node_addr: &Multiaddr,
    bind: Ipv4Addr,
    transport: Transport,
    first: usize,
    count: usize,
) -> (Vec<LightClient>, usize) {
    let parallel = 8;
    let mut clients = Vec::with_capacity(count);
    let mut failed = 0;
    let mut pending = futures::stream::iter(first..first + count)
        .map(|i| async move {
            let name = ScreenName::parse(&format!("held{i}")).map_err(|e| e.to_string())?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                match light_client(node_addr, bind, transport, name.clone()).await {
                    Err(e) if attempt < 3 => {
                        eprintln!("{name}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    }
                    other => break other,
                }
            }
        })
        .buffer_unordered(parallel);
    while let Some(client) = pending.next().await {
        match client {
            Ok(client) => clients.push(client),
            Err(e) => {
                eprintln!("a light client failed: {e}");
                failed += 1;
                // The node is saturated: what it holds now is the figure.
                if failed >= GIVE_UP_AFTER_FAILURES {
                    eprintln!("{failed} clients failed; not starting more");
                    break;
                }
            }
        }
    }
    (clients, failed)
}

/// How long one attempt of a [`stay_online`] client (connect, open a
/// session, register) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts that took longer than [`ATTEMPT_TIMEOUT`], over every crowd in
/// this process (none should).
pub static ATTEMPTS_TIMED_OUT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// What a crowd of [`stay_online`] clients is doing.
#[derive(Debug, Default)]
pub struct CrowdCounts {
    /// Registered on a live session now.
    pub online: std::sync::atomic::AtomicUsize,
    /// Registrations so far (each return after a loss counts again).
    pub registered: std::sync::atomic::AtomicUsize,
}

impl CrowdCounts {
    /// (online, registered) now.
    pub fn read(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.online.load(Relaxed), self.registered.load(Relaxed))
    }
}

/// A light client that stays online as a real one does: when it loses the
/// node it comes back by itself with the same key, pacing its attempts
/// with the client's own [`Backoff`] (so a crowd of them is a realistic
/// reconnect storm). Runs until dropped.
pub async fn stay_online(
    node_addr: Multiaddr,
    bind: Ipv4Addr,
    transport: Transport,
    name: ScreenName,
    counts: std::sync::Arc<CrowdCounts>,
) {
    let Ok(identity) = Identity::generate() else {
        return;
    };
    keep_registered(&identity, &name, &counts, || async {
        let mut connection =
            BareConnection::connect_as(identity.clone(), &node_addr, bind, transport).await?;
        let session = connection.session().await.map_err(Failed::turned_away)?;
        Ok((connection, session))
    })
    .await
}

/// As [`stay_online`], over QUIC from `load`'s shared endpoint.
pub async fn stay_online_quic(
    load: quic::QuicLoad,
    name: ScreenName,
    counts: std::sync::Arc<CrowdCounts>,
) {
    let Ok(identity) = Identity::generate() else {
        return;
    };
    let Ok(config) = load.client_config(&identity) else {
        return;
    };
    keep_registered(&identity, &name, &counts, || load.connect(&config)).await
}

/// Registers `name` for `identity` on sessions `connect` opens, one after
/// another for ever: while one lives the name is online; when it ends, the
/// next attempt follows the client's backoff, as after any failed attempt.
/// What `connect` returns besides the session (the connection) is kept
/// while the session lives.
async fn keep_registered<C, F, Held>(
    identity: &Identity,
    name: &ScreenName,
    counts: &CrowdCounts,
    mut connect: C,
) where
    C: FnMut() -> F,
    F: std::future::Future<Output = Result<(Held, DirectorySession), Failed>>,
{
    use std::sync::atomic::Ordering;
    let mut backoff = Backoff::new();
    loop {
        let connecting = connect();
        let attempt = async {
            let (held, session) = connecting.await?;
            let seq = crate::proto::time::now_ms() * 1000;
            let record = online_record(identity, name.clone(), seq);
            session
                .register(record.sign(identity), Vec::new())
                .await
                .map_err(Failed::turned_away)?;
            Ok::<_, Failed>((held, session))
        };
        // A real client's requests time out; so does an attempt here, so
        // that an answer that never comes is a failure, not a hang.
        let attempt = async {
            tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| {
                    ATTEMPTS_TIMED_OUT.fetch_add(1, Ordering::Relaxed);
                    Err(Failed {
                        setback: Setback::Unreachable,
                        message: "no answer in time".into(),
                    })
                })
        };
        let pause = match attempt.await {
            Ok((_held, session)) => {
                backoff.succeeded();
                counts.registered.fetch_add(1, Ordering::Relaxed);
                counts.online.fetch_add(1, Ordering::Relaxed);
                session.closed().await;
                counts.online.fetch_sub(1, Ordering::Relaxed);
                backoff.after_loss()
            }
            Err(failed) => backoff.after(failed.setback),
        };
        tokio::time::sleep(pause).await;
    }
}

/// Starts `count` clients named `held{first}`… at once, each staying
/// online by itself ([`stay_online`]). Over QUIC they share one endpoint
/// on `bind` ([`quic::QuicLoad`]), as the held figure's workers do.
pub fn crowd(
    tasks: &mut tokio::task::JoinSet<()>,
    node_addr: &Multiaddr,
    bind: Ipv4Addr,
    transport: Transport,
    first: usize,
    count: usize,
    counts: &std::sync::Arc<CrowdCounts>,
) -> Result<(), String> {
    let quic = match transport {
        Transport::Quic => Some(quic::QuicLoad::new(node_addr, bind)?),
        Transport::Tcp => None,
    };
    for i in first..first + count {
        let name = ScreenName::parse(&format!("held{i}")).map_err(|e| e.to_string())?;
        match &quic {
            Some(load) => tasks.spawn(stay_online_quic(load.clone(), name, counts.clone())),
            None => tasks.spawn(stay_online(
                node_addr.clone(),
                bind,
                transport,
                name,
                counts.clone(),
            )),
        };
    }
    Ok(())
}

/// `suite --held-worker NODE_ADDR FIRST COUNT BIND_IP tcp|quic`: starts a
/// crowd of clients that stay online by themselves, prints
/// `online N registered M` whenever that changes (at most 5 times a
/// second), and holds them until stdin closes.
pub fn worker(args: &[String]) -> ! {
    let usage = "usage: suite --held-worker NODE_ADDR FIRST COUNT BIND_IP tcp|quic";
    let parsed = (|| {
        let addr: Multiaddr = args.first()?.parse().ok()?;
        let first: usize = args.get(1)?.parse().ok()?;
        let count: usize = args.get(2)?.parse().ok()?;
        let bind: Ipv4Addr = args.get(3)?.parse().ok()?;
        let transport = Transport::parse(args.get(4)?)?;
        Some((addr, first, count, bind, transport))
    })();
    let Some((addr, first, count, bind, transport)) = parsed else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = runtime.block_on(async move {
        let counts = std::sync::Arc::new(CrowdCounts::default());
        let mut tasks = tokio::task::JoinSet::new();
        if let Err(e) = crowd(&mut tasks, &addr, bind, transport, first, count, &counts) {
            eprintln!("held worker: {e}");
            return 1;
        }
        // Held until the parent closes our stdin.
        let mut closed = tokio::task::spawn_blocking(|| {
            let mut buf = String::new();
            let _ = std::io::stdin().read_line(&mut buf);
        });
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut said = None;
        loop {
            tokio::select! {
                _ = &mut closed => break,
                _ = tick.tick() => {
                    let now = counts.read();
                    if said != Some(now) {
                        println!("online {} registered {}", now.0, now.1);
                        said = Some(now);
                    }
                }
            }
        }
        tasks.abort_all();
        let timed_out = ATTEMPTS_TIMED_OUT.load(std::sync::atomic::Ordering::Relaxed);
        if timed_out > 0 {
            eprintln!("held worker: {timed_out} attempts got no answer within {ATTEMPT_TIMEOUT:?}");
        }
        0
    });
    std::process::exit(code)
}
