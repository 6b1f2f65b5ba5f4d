//! Private PostgreSQL and NATS servers for the cluster tests: each test
//! starts its own, from the distribution's binaries, on an ephemeral
//! loopback port with its data in a temporary directory, and can stop and
//! start them again on the same port. They stop when their handle drops.
//!
//! Where a binary is missing the tests say so loudly and skip — except
//! under CI (`CI` set), where a missing server fails the run. The
//! benchmark suite uses the same file.

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to start or stop.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process, its log lines read by a thread; killed on drop.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Spawns `cmd`, whose stderr carries its log.
    fn spawn(mut cmd: Command, what: &str) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a log line containing `ready`.
    fn wait_for(&self, what: &str, ready: &str) {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(ready) => return,
                Ok(line) => seen.push(line),
                Err(_) => panic!("{what} did not start; its log:\n{}", seen.join("\n")),
            }
        }
    }

    fn signal(&self, signal: &str, target: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", target])
            .status();
    }

    /// Waits for the process to end.
    fn wait_exit(&mut self) {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "a server did not stop in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Skips the test (loudly) when `what` is missing, or fails it under CI.
pub fn missing(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing; CI must install it (see .ci/run)"
    );
    // Past the test harness's capture of `eprintln!`, so that the skip
    // shows in `cargo test`'s own output (this file is also the bench's).
    use std::io::Write;
    let thread = std::thread::current();
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n!!!!! SKIPPED {}: it needs {what} installed !!!!!",
        thread.name().unwrap_or("a test")
    );
}

/// A loopback port free at the time of asking.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Where the PostgreSQL server binaries are: the distribution's versioned
/// directory, or the PATH.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some(newest) = versions.pop() {
        return Some(newest);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
    })
}

/// The uid and gid of the `postgres` account: PostgreSQL refuses to run
/// as root, and CI runs as root.
fn postgres_account() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A private PostgreSQL server.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    account: Option<(u32, u32)>,
    /// The test host it runs on (none: this one) and the address it
    /// listens on.
    netns: Option<String>,
    pub host: String,
    pub port: u16,
    server: Option<Server>,
    /// Serves TLS (server.crt and server.key in the data directory).
    tls: bool,
}

/// A certificate authority and a server certificate it signed, for TLS
/// tests: PEM text.
pub struct TestCertificates {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
}

impl TestCertificates {
    /// A new authority, and a certificate of it for `127.0.0.1` and
    /// `localhost`.
    pub fn generate() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "messenger test CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("the server certificate");
        Self {
            ca: ca.pem(),
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
        }
    }
}

impl Postgres {
    /// Creates a database cluster and starts its server on loopback, or
    /// `None` (after [`missing`]) when PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        Self::start_on(None, "127.0.0.1")
    }

    /// [`Postgres::start`], serving TLS with `certs`' server certificate.
    pub fn start_tls(certs: &TestCertificates) -> Option<Self> {
        Self::start_with(None, "127.0.0.1", Some(certs))
    }

    /// The same in network namespace `netns` (a test host), on `host`.
    pub fn start_on(netns: Option<&str>, host: &str) -> Option<Self> {
        Self::start_with(netns, host, None)
    }

    fn start_with(
        netns: Option<&str>,
        host: &str,
        certs: Option<&TestCertificates>,
    ) -> Option<Self> {
        let Some(bin) = postgres_bin_dir() else {
            missing("PostgreSQL (initdb, postgres)");
            return None;
        };
        let account = if is_root() {
            Some(postgres_account().expect("a 'postgres' account to run PostgreSQL as"))
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some((uid, gid)) = account {
            chown(dir.path(), Some(uid), Some(gid)).expect("chown the data directory");
        }
        let mut pg = Self {
            bin,
            dir,
            account,
            netns: netns.map(str::to_owned),
            host: host.to_owned(),
            port: free_port(),
            server: None,
            tls: certs.is_some(),
        };
        let status = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        // Nodes on other test hosts connect from their own addresses.
        let hba = pg.data().join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        rules.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules).expect("write pg_hba.conf");
        if let Some(certs) = certs {
            use std::os::unix::fs::PermissionsExt;
            for (file, pem) in [
                ("server.crt", &certs.server_cert),
                ("server.key", &certs.server_key),
            ] {
                let path = pg.data().join(file);
                std::fs::write(&path, pem).expect("write a certificate file");
                // PostgreSQL refuses a key others may read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                if let Some((uid, gid)) = pg.account {
                    chown(&path, Some(uid), Some(gid)).expect("chown a certificate file");
                }
            }
        }
        pg.resume();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bin.join(program);
        let mut cmd = match &self.netns {
            // `ip netns exec` needs root; the server then drops to its
            // account (setpriv execs, so the pid stays the server's).
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]);
                if let Some((uid, gid)) = self.account {
                    cmd.args([
                        "setpriv",
                        &format!("--reuid={uid}"),
                        &format!("--regid={gid}"),
                        "--clear-groups",
                    ]);
                }
                cmd.arg(bin);
                cmd
            }
            None => {
                let mut cmd = Command::new(bin);
                if let Some((uid, gid)) = self.account {
                    cmd.uid(uid).gid(gid);
                }
                cmd
            }
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// The URL nodes connect with.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}/postgres", self.host, self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts
    /// connections.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", &format!("listen_addresses={}", self.host)])
            // Tests do not outlive the machine: commits reach the kernel
            // (they survive the server's death), not the platter.
            .args(["-c", "fsync=off", "-c", "max_connections=200"]);
        if self.tls {
            // server.crt and server.key in the data directory.
            cmd.args(["-c", "ssl=on"]);
        }
        // The server logs on stderr; read it as the lines to wait on.
        // Its own process group, so that a crash takes the backends too.
        cmd.process_group(0);
        let server = Server::spawn(cmd, "postgres");
        server.wait_for(
            "PostgreSQL",
            "database system is ready to accept connections",
        );
        self.server = Some(server);
    }

    /// Stops the server: `kill -9` of the postmaster and its backends when
    /// `crash`, else a fast shutdown.
    pub fn stop(&mut self, crash: bool) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if crash {
            // The postmaster and every backend at once: nothing gets a
            // chance to finish cleanly.
            server.signal("KILL", &format!("-{}", server.child.id()));
        } else {
            server.signal("INT", &server.child.id().to_string());
        }
        server.wait_exit();
        if crash {
            // A killed postmaster leaves its pid file; the next start
            // recovers from the log.
            let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
        }
    }

    /// Runs one SQL statement with psql and returns its unaligned output.
    pub fn sql(&self, statement: &str) -> String {
        let out = self
            .command("psql")
            .args(["-h", &self.host, "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-At", "-c", statement])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {statement:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A private NATS server.
pub struct Nats {
    netns: Option<String>,
    pub host: String,
    pub port: u16,
    server: Option<Server>,
}

impl Nats {
    /// Starts nats-server, or `None` (after [`missing`]) when it is not
    /// installed.
    pub fn start() -> Option<Self> {
        Self::start_on(None, "127.0.0.1")
    }

    /// The same in network namespace `netns` (a test host), on `host`.
    pub fn start_on(netns: Option<&str>, host: &str) -> Option<Self> {
        if !on_path("nats-server") {
            missing("nats-server");
            return None;
        }
        let mut nats = Self {
            netns: netns.map(str::to_owned),
            host: host.to_owned(),
            port: free_port(),
            server: None,
        };
        nats.resume();
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Starts the server (again) on its port.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "nats-server"]);
                cmd
            }
            None => Command::new("nats-server"),
        };
        cmd.args(["-a", &self.host, "-p", &self.port.to_string()]);
        let server = Server::spawn(cmd, "nats-server");
        server.wait_for("NATS", "Server is ready");
        self.server = Some(server);
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.signal("KILL", &server.child.id().to_string());
            server.wait_exit();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).exists()))
}

/// The database a node started on `data_dir` keeps its claims in when
/// the tests run against PostgreSQL: `MESSENGER_TEST_STORE` names a
/// server (`postgres://user@host:port`, one .ci/run starts) on which each
/// data directory gets a database of its own, so that a node started
/// again on the same directory finds its claims. `None`: the embedded
/// store, as a node has by default.
pub fn test_store_for(data_dir: &std::path::Path) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let server = std::env::var("MESSENGER_TEST_STORE").ok()?;
    let server = server.trim_end_matches('/');
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    let database = format!("node_{:016x}", hasher.finish());
    let psql = postgres_bin_dir()
        .map(|dir| dir.join("psql"))
        .expect("psql, to create the test databases on MESSENGER_TEST_STORE");
    let out = Command::new(psql)
        .arg(format!("{server}/postgres"))
        .args(["-At", "-c", &format!("CREATE DATABASE {database}")])
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("already exists"),
        "cannot create {database} on {server}: {stderr}"
    );
    Some(format!("{server}/{database}"))
}

/// The flags of a node of the cluster on `pg` and `nats` whose nodes sign
/// certificates with the key in file `key`.
pub fn cluster_flags(pg: &Postgres, nats: &Nats, key: &std::path::Path) -> Vec<String> {
    vec![
        "--store".into(),
        pg.url(),
        "--presence".into(),
        nats.url(),
        "--certificate-key".into(),
        key.to_str().expect("a UTF-8 key path").into(),
    ]
}

/// Both servers, or `None` when either is missing (see [`missing`]).
pub fn postgres_and_nats() -> Option<(Postgres, Nats)> {
    Some((Postgres::start()?, Nats::start()?))
}
