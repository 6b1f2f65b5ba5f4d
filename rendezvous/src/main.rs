//! `rendezvous`: run a rendezvous node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use libp2p::Multiaddr;
use messenger_proto::rate::Rate;
use rendezvous::{Config, Limits, RelayLimits, Server};
use tracing_subscriber::EnvFilter;

/// A rendezvous node for the peer-to-peer messenger: it ties screen names to
/// their owners' keys, current addresses and presence. Message content never
/// passes through it.
///
/// When ready it prints one line per listen address, ending in
/// /p2p/<peer id>: give one of them to users as their --rendezvous address.
///
/// It also relays (circuit relay v2) for clients behind NAT, so that peers
/// can reach them and upgrade to a direct connection by hole punching, and
/// answers their AutoNAT reachability probes. Open TCP and UDP 4001.
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Instead of running the node: print a completion script or the
    /// manual page.
    #[command(subcommand)]
    print: Option<Print>,

    /// Address to listen on (repeatable). Port 0 picks a free port.
    /// [default: /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1]
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,

    /// Where the node keeps its key (node.key) and its claims (claims.redb).
    /// [default: the per-user data directory, e.g. ~/.local/share/messenger-rendezvous]
    #[arg(long, value_name = "DIR", env = "RENDEZVOUS_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Keep claims in PostgreSQL instead of the data dir, e.g.
    /// postgres://rendezvous:secret@db.example:5432/directory (or set
    /// RENDEZVOUS_STORE, which keeps the password out of process lists).
    /// Nodes given the same database share one directory of names; the
    /// schema is created and migrated at start. TLS as libpq takes it:
    /// ?sslmode=verify-full&sslrootcert=CA.pem (also verify-ca, require,
    /// prefer); without sslmode the connection is plain.
    #[arg(long, value_name = "URL", env = "RENDEZVOUS_STORE")]
    store: Option<String>,

    /// Share presence with the other nodes on the same --store through
    /// NATS, e.g. nats://nats.example:4222 (credentials in the URL,
    /// tls:// for TLS): a user online at any node is resolved and watched
    /// from every node. Needs --store and --certificate-key (the same file
    /// on every node: what the nodes tell each other is signed with it).
    #[arg(long, value_name = "URL", env = "RENDEZVOUS_PRESENCE")]
    presence: Option<String>,

    /// The key that signs the name certificates handed out with
    /// registrations [default: the node's own key, DIR/node.key]. Give the
    /// nodes of a cluster the same file, so that their clients accept each
    /// other's certificates; created if missing.
    #[arg(long, value_name = "FILE")]
    certificate_key: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464;
    /// port 0 picks one). The address is printed after the listen
    /// addresses as `metrics http://…/metrics`. Keep it off the public
    /// internet: it tells how busy the node is.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// A host name the metrics endpoint answers to, besides IP addresses
    /// and localhost (the name a scraper uses in its target). Requests
    /// naming any other host are refused, so that a web page cannot read
    /// the metrics through DNS rebinding. Repeatable.
    #[arg(long, value_name = "NAME", requires = "metrics")]
    metrics_host: Vec<String>,

    /// An address at which others reach this node, if its listen addresses
    /// are not it (e.g. behind port forwarding). Repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    external_address: Vec<Multiaddr>,

    /// Connections established at once, from everyone.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: u32,

    /// Connections still in their handshake at once, from everyone (TCP
    /// and QUIC). When full, a new connection sheds the oldest handshake of
    /// the address that has the most, rather than being refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_pending_connections)]
    max_pending_connections: u32,

    /// Connections still in their handshake at once from one IP address
    /// (IPv6: one /64). A new one over it sheds that address's oldest.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_pending_per_ip)]
    max_pending_per_ip: u32,

    /// Connections from one IP address.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: u32,

    /// Connections from one peer id.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections_per_peer)]
    max_connections_per_peer: u32,

    /// Streams open at once on one connection.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_streams_per_connection)]
    max_streams_per_connection: u32,

    /// Directory sessions open at once on one connection.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_sessions_per_connection)]
    max_sessions_per_connection: usize,

    /// Directory requests one peer may make per second (a token bucket
    /// over all its sessions); more get a rate_limited answer.
    #[arg(long, value_name = "N", default_value_t = Limits::default().requests.per_second)]
    requests_per_second: f64,

    /// Directory requests one peer may make in a burst.
    #[arg(long, value_name = "N", default_value_t = Limits::default().requests.burst)]
    request_burst: u32,

    /// Look-ups one peer may make per second to check who sent it a
    /// message (a budget of their own, apart from --requests-per-second,
    /// so that strangers writing to a user cannot use up the user's own
    /// requests); more get a rate_limited answer.
    #[arg(long, value_name = "N", default_value_t = Limits::default().sender_checks.per_second)]
    sender_checks_per_second: f64,

    /// Look-ups to check senders one peer may make in a burst.
    #[arg(long, value_name = "N", default_value_t = Limits::default().sender_checks.burst)]
    sender_check_burst: u32,

    /// Names one key may hold.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_names_per_key)]
    max_names_per_key: usize,

    /// Largest directory frame the node reads, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_frame)]
    max_frame_bytes: usize,

    /// Seconds a connection's handshake may take.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().handshake_timeout.as_secs_f64())]
    handshake_timeout: f64,

    /// Seconds a connection without any open stream stays open.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    idle_timeout: f64,

    /// New connections are refused while the node's resident memory is
    /// above this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().max_memory >> 20)]
    max_memory_mib: usize,

    /// A name nobody has registered for this many days is released
    /// (fractions allowed). Any registration by its owner renews it.
    #[arg(long, value_name = "DAYS", default_value_t = 180.0)]
    name_lease_days: f64,

    /// Seconds between pings on each TCP connection. A client whose
    /// network went silent is shown offline after at most interval +
    /// timeout (over QUIC, that sum is the idle time-out: keep it above
    /// the clients' keep-alive interval, libp2p's 5 s).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    ping_interval: f64,

    /// Seconds a ping may go unanswered before the connection is closed
    /// (over QUIC: the connection is closed once silent for interval +
    /// timeout).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    ping_timeout: f64,

    /// Seconds the name certificates handed out with registrations are
    /// valid (at most 86400). Peers accept a sender's name from its
    /// certificate without asking the node, also while the node is down;
    /// a released name stays certified to its old key until then.
    #[arg(long, value_name = "SECS", default_value_t = messenger_proto::certificate::DEFAULT_VALIDITY_MS as f64 / 1000.0)]
    certificate_validity: f64,

    /// Relay: reservations held at once (one per client behind NAT).
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_reservations)]
    relay_max_reservations: usize,

    /// Relay: reservations one peer may hold.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_reservations_per_peer)]
    relay_max_reservations_per_peer: usize,

    /// Relay: circuits open at once.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_circuits)]
    relay_max_circuits: usize,

    /// Relay: circuits one peer may have open at once.
    #[arg(long, value_name = "N", default_value_t = RelayLimits::default().max_circuits_per_peer)]
    relay_max_circuits_per_peer: usize,

    /// Relay: seconds one circuit may stay open.
    #[arg(long, value_name = "SECS", default_value_t = RelayLimits::default().max_circuit_duration.as_secs())]
    relay_circuit_duration: u64,

    /// Relay: bytes one circuit may carry in each direction.
    #[arg(long, value_name = "BYTES", default_value_t = RelayLimits::default().max_circuit_bytes)]
    relay_circuit_bytes: u64,
}

/// What the binary can print about itself.
#[derive(Debug, clap::Subcommand)]
enum Print {
    /// Print a shell completion script, e.g.
    /// `rendezvous completions bash > ~/.local/share/bash-completion/completions/rendezvous`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g.
    /// `rendezvous man > ~/.local/share/man/man1/rendezvous.1`.
    Man,
}

fn print(what: Print) -> ExitCode {
    let mut cli = <Args as clap::CommandFactory>::command();
    let mut text = Vec::new();
    match what {
        Print::Completions { shell } => {
            clap_complete::generate(shell, &mut cli, "rendezvous", &mut text);
        }
        Print::Man => {
            if let Err(e) = clap_mangen::Man::new(cli).render(&mut text) {
                eprintln!("error: cannot render the manual page: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // A closed stdout (`| head`) is not worth failing over.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &text);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = Args::parse();
    if let Some(what) = args.print.take() {
        return print(what);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => directories::ProjectDirs::from("", "", "messenger-rendezvous")
            .context("cannot find a per-user data directory; pass --data-dir")?
            .data_dir()
            .to_owned(),
    };
    let mut config = Config::new(data_dir);
    if !args.listen.is_empty() {
        config.listen = args.listen;
    }
    config.external = args.external_address;
    config.store = args.store;
    config.presence = args.presence;
    config.certificate_key = args.certificate_key;
    config.metrics = args.metrics;
    config.metrics_hosts = args.metrics_host;
    config.limits = Limits {
        max_connections: args.max_connections,
        max_pending_connections: args.max_pending_connections,
        max_pending_per_ip: args.max_pending_per_ip,
        max_connections_per_ip: args.max_connections_per_ip,
        max_connections_per_peer: args.max_connections_per_peer,
        max_streams_per_connection: args.max_streams_per_connection,
        max_sessions_per_connection: args.max_sessions_per_connection,
        requests: Rate::new(args.requests_per_second, args.request_burst),
        sender_checks: Rate::new(args.sender_checks_per_second, args.sender_check_burst),
        max_names_per_key: args.max_names_per_key,
        max_frame: args.max_frame_bytes,
        handshake_timeout: seconds("--handshake-timeout", args.handshake_timeout)?,
        max_memory: args.max_memory_mib.saturating_mul(1 << 20),
    };
    config.idle_timeout = seconds("--idle-timeout", args.idle_timeout)?;
    config.ping_interval = seconds("--ping-interval", args.ping_interval)?;
    config.ping_timeout = seconds("--ping-timeout", args.ping_timeout)?;
    config.name_lease = seconds("--name-lease-days", args.name_lease_days * 86_400.0)?;
    config.certificate_validity = seconds("--certificate-validity", args.certificate_validity)?;
    anyhow::ensure!(
        config.certificate_validity.as_millis()
            <= u128::from(messenger_proto::certificate::MAX_VALIDITY_MS),
        "--certificate-validity must be at most 86400 seconds (one day): peers refuse longer ones"
    );
    config.relay = RelayLimits {
        max_reservations: args.relay_max_reservations,
        max_reservations_per_peer: args.relay_max_reservations_per_peer,
        max_circuits: args.relay_max_circuits,
        max_circuits_per_peer: args.relay_max_circuits_per_peer,
        max_circuit_duration: std::time::Duration::from_secs(args.relay_circuit_duration),
        max_circuit_bytes: args.relay_circuit_bytes,
        ..RelayLimits::default()
    };
    // Watch for signals before announcing readiness, so that a signal sent
    // right after the addresses are printed is handled, not fatal.
    let mut signals = Signals::new()?;
    let server = Server::bind(config)
        .await
        .context("cannot start the node")?;
    let mut ready: Vec<String> = server
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    if let Some(addr) = server.metrics_addr() {
        ready.push(format!("metrics http://{addr}/metrics"));
    }
    announce(&ready);
    signals.recv().await;
    tracing::info!("signal received, shutting down");
    server.shutdown().await;
    Ok(())
}

/// Prints the lines that say the node is ready. Whoever started it may
/// have read what it needed and closed our stdout (`rendezvous | head -1`,
/// a supervisor): the node goes on serving, it does not die of a broken
/// pipe.
fn announce(lines: &[String]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            tracing::debug!("stdout is closed; not printing the rest of the ready lines");
            return;
        }
    }
}

/// A duration given in seconds on the command line.
fn seconds(flag: &str, secs: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!("{flag} must be a positive number of seconds (or days), not {secs}")
        })
}

/// SIGINT and SIGTERM, both meaning "stop cleanly".
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
