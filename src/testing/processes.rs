//! Helpers to run the real `rendezvous` and `messenger` binaries as
//! processes on 127.0.0.1 with ephemeral ports and temporary homes.
//!
//! Every wait is on an output line or a process exit, with a timeout.
//! Processes are killed when their handle drops, so a failing test leaves
//! nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default wait for anything to happen.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The `messenger` binary under test: beside the test (or benchmark)
/// binary's own directory, where cargo builds it for integration tests;
/// `MESSENGER_BIN` overrides.
pub fn messenger_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MESSENGER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the running test's own path");
    let mut dir = exe.parent().expect("a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("messenger")
}

/// The `rendezvous` binary: built by `cargo test --workspace` next to
/// `messenger` (the rendezvous crate's own integration tests make cargo
/// build it). Built here if missing, e.g. under `cargo test -p messenger`.
pub fn rendezvous_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = messenger_bin().parent().expect("binary dir").to_owned();
            let bin = dir.join("rendezvous");
            if !bin.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args(["build", "-p", "rendezvous", "--bin", "rendezvous"]);
                if dir.ends_with("release") {
                    cmd.arg("--release");
                }
                let status = cmd.status().expect("run cargo to build rendezvous");
                assert!(
                    status.success(),
                    "building rendezvous failed; run `cargo test --workspace`"
                );
            }
            bin
        })
        .clone()
}

/// Lines a child printed on stdout, read by a thread.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn spawn(stdout: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `pred`; panics with everything seen on timeout.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.expect_within(TIMEOUT, what, pred)
    }

    /// [`Lines::expect`] with a time-out of its own.
    pub fn expect_within(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Next JSON line whose "event" is `event`.
    pub fn expect_event(&mut self, event: &str) -> serde_json::Value {
        let line = self.expect(&format!("a {event:?} event"), |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["event"] == event)
        });
        serde_json::from_str(&line).expect("json")
    }

    /// Waits for a presence event about `name` with `status`.
    pub fn expect_presence(&mut self, name: &str, status: &str) -> serde_json::Value {
        let line = self.expect(&format!("{name} {status}"), |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["event"] == "presence" && v["name"] == name && v["status"] == status
            })
        });
        serde_json::from_str(&line).expect("json")
    }

    /// Lines received so far without waiting.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        Self { child, stdout }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit after a signal; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn write_stdin(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rendezvous node process.
pub struct Node {
    pub proc: Proc,
    /// The TCP address it printed, with /p2p/.
    pub addr: String,
    pub data_dir: PathBuf,
}

impl Node {
    /// Starts a node on an ephemeral loopback port.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_on(data_dir, 0)
    }

    /// Starts a node on a given loopback port (0: ephemeral).
    pub fn start_on(data_dir: &Path, port: u16) -> Self {
        Self::start_in(None, data_dir, "127.0.0.1", port)
    }

    /// Starts a node in a network namespace (or not), on `ip`; in a
    /// namespace it listens on TCP and QUIC.
    pub fn start_in(netns: Option<&str>, data_dir: &Path, ip: &str, port: u16) -> Self {
        Self::spawn(netns, data_dir, ip, port, &[])
    }

    /// Starts a node on an ephemeral loopback port with extra flags.
    pub fn start_with(data_dir: &Path, flags: &[&str]) -> Self {
        Self::spawn(None, data_dir, "127.0.0.1", 0, flags)
    }

    pub fn spawn(
        netns: Option<&str>,
        data_dir: &Path,
        ip: &str,
        port: u16,
        flags: &[&str],
    ) -> Self {
        let mut cmd = in_netns(netns, rendezvous_bin());
        cmd.args(flags);
        // A namespace has a loopback of its own: the test server is not on it.
        if netns.is_none()
            && !flags.contains(&"--store")
            && let Some(store) = super::servers::test_store_for(data_dir)
        {
            cmd.args(["--store", &store]);
        }
        cmd.args(["--listen", &format!("/ip4/{ip}/tcp/{port}")]);
        if netns.is_some() {
            cmd.args(["--listen", &format!("/ip4/{ip}/udp/{port}/quic-v1")]);
        }
        cmd.arg("--data-dir").arg(data_dir);
        cmd.env(
            "RUST_LOG",
            std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let mut proc = Proc::spawn(cmd);
        let prefix = format!("/ip4/{ip}/tcp/");
        let addr = proc.stdout.expect("the node's address", |l| {
            l.starts_with(&prefix) && l.contains("/p2p/")
        });
        Self {
            proc,
            addr,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .split('/')
            .nth(4)
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    pub fn peer_id(&self) -> String {
        self.addr.rsplit('/').next().expect("peer id").to_owned()
    }

    /// The node process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.proc.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// The result of a finished command.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The first stdout line as JSON.
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().next().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// A node on loopback and two users who registered "alice" and "bob".
/// Bind the directory first (`let (_dir, node, alice, bob) = ...`): it must
/// outlive the node.
pub fn alice_and_bob() -> (tempfile::TempDir, Node, User, User) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let bob = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    (dir, node, alice, bob)
}

/// A command for `bin`, run inside network namespace `netns` if given.
pub fn in_netns(netns: Option<&str>, bin: PathBuf) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// A temporary directory only its owner may enter, as a home should be
/// (the client warns about one that others may list).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod 700");
    dir
}

/// A user: a temporary home and the node it talks to.
pub struct User {
    pub home: tempfile::TempDir,
    pub rendezvous: String,
    /// The network namespace (test host) the user runs in, if any.
    pub netns: Option<String>,
}

impl User {
    pub fn new(node: &Node) -> Self {
        Self {
            home: private_tempdir(),
            rendezvous: node.addr.clone(),
            netns: None,
        }
    }

    /// A user on a test host.
    pub fn on_host(node: &Node, netns: String) -> Self {
        Self {
            netns: Some(netns),
            ..Self::new(node)
        }
    }

    /// The command line of `messenger args` for this user (for tests that
    /// wire its standard streams themselves).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bare_command(args);
        cmd.env("MESSENGER_RENDEZVOUS", &self.rendezvous);
        cmd
    }

    /// A command that relies on the home's remembered rendezvous address.
    fn bare_command(&self, args: &[&str]) -> Command {
        let mut cmd = in_netns(self.netns.as_deref(), messenger_bin());
        cmd.arg("--home")
            .arg(self.home.path())
            .args(args)
            .env_remove("MESSENGER_RENDEZVOUS")
            .env_remove("MESSENGER_HOME")
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        cmd
    }

    /// Runs a command without giving the rendezvous address.
    pub fn run_bare(&self, args: &[&str]) -> Ran {
        run_to_end(self.bare_command(args), args, None)
    }

    /// Runs a command to completion (with a timeout).
    pub fn run(&self, args: &[&str]) -> Ran {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Ran {
        run_to_end(self.command(args), args, stdin)
    }
}

fn run_to_end(mut cmd: Command, args: &[&str], stdin: Option<&[u8]>) -> Ran {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn messenger");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.map(|s| s.to_vec()).unwrap_or_default();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("messenger {args:?} did not finish in time"))
        .expect("wait");
    let _ = writer.join();
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl User {
    /// Runs a command and asserts it succeeded.
    pub fn ok(&self, args: &[&str]) -> Ran {
        let ran = self.run(args);
        assert_eq!(ran.code, 0, "messenger {args:?} failed: {ran:?}");
        ran
    }

    /// Starts a long-running command (online, chat).
    pub fn spawn(&self, args: &[&str]) -> Proc {
        Proc::spawn(self.command(args))
    }

    /// [`User::spawn`], logging at `filter` to the test's stderr (unless
    /// E2E_RUST_LOG says otherwise): for a test whose failures must show
    /// what the client was doing.
    pub fn spawn_logging(&self, args: &[&str], filter: &str) -> Proc {
        let mut cmd = self.command(args);
        if std::env::var_os("E2E_RUST_LOG").is_none() {
            cmd.env("RUST_LOG", filter);
        }
        Proc::spawn(cmd)
    }

    /// Starts `online --json` on loopback and waits until it is registered.
    pub fn online(&self) -> Proc {
        let mut proc = self.spawn(&["--json", "online", "--listen", "/ip4/127.0.0.1/tcp/0"]);
        proc.stdout.expect_event("online");
        proc
    }

    /// Registers `name` and asserts success.
    pub fn register(&self, name: &str) {
        self.ok(&["register", name]);
    }

    /// My peer id.
    pub fn peer_id(&self) -> String {
        let ran = self.ok(&["--json", "id"]);
        ran.json()["peer_id"].as_str().expect("peer_id").to_owned()
    }
}

/// Skips `test` for want of `needs`, so that it shows: the line goes to
/// the terminal itself, past the test harness's capture of `eprintln!`
/// (which would hide it unless the test failed), so `cargo test`'s own
/// output says which tests did not run. Under CI, where everything is
/// installed and the suite runs as root, a missing piece fails the test.
pub fn skip(test: &str, needs: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {needs}; CI must provide it (see .ci/run)"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n!!!!! SKIPPED {test}: it needs {needs} !!!!!"
    );
}
