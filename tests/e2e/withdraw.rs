//! Access ends when trust ends: a contact removed, re-pinned to a new key
//! (a stolen laptop), or blocked loses at once what its key could reach
//! on my machine: its open tunnels and pipes close, its invitations are
//! withdrawn, its transfers stop, and what it asks next is refused.
//!
//! The contact's old key is driven in-process with the library (it must
//! live on after its name has gone to another key); alice is the real
//! client process.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::Multiaddr;
use messenger::proto::codec;
use messenger::proto::tunnel::{self, TunnelAnswer, TunnelRequest};
use serde_json::Value;

use crate::support::{Lines, Node, User, alice_and_bob};
use messenger::testing::Key;

/// How soon "at once" must be: a contact's streams close within this of
/// the command that ended the trust.
const AT_ONCE: Duration = Duration::from_secs(3);

/// An echo server on 127.0.0.1: every connection gets back what it sends.
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut writer);
            });
        }
    });
    port
}

/// Asks alice for a tunnel as `key`: the open stream, or her refusal.
async fn ask(key: &Key, request: TunnelRequest) -> Result<libp2p::Stream, String> {
    let alice = key.reach("alice").await.peer_id;
    let mut stream = key
        .network
        .control()
        .open_stream(alice, tunnel::PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    codec::write_frame(&mut stream, &request, tunnel::MAX_FRAME)
        .await
        .map_err(|e| e.to_string())?;
    match codec::read_frame::<_, TunnelAnswer>(&mut stream, tunnel::MAX_FRAME).await {
        Ok(Some(TunnelAnswer::Open)) => Ok(stream),
        Ok(Some(TunnelAnswer::Refused { code })) => Err(code.to_string()),
        other => Err(format!("answered {other:?}")),
    }
}

/// What `key` asks next is refused: not invited (any more).
async fn refused(key: &Key, request: TunnelRequest) {
    let why = ask(key, request).await.unwrap_err();
    assert!(
        why.contains("withdrew") || why.contains("have not invited you"),
        "{why}"
    );
}

/// Bytes go through the tunnel to alice's echo server and back.
async fn echoes(stream: &mut libp2p::Stream) {
    stream.write_all(b"ping").await.unwrap();
    stream.flush().await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("the echo came back in time")
        .unwrap();
    assert_eq!(&back, b"ping");
}

/// Waits until alice's side ends `stream`; how long it took from `since`.
async fn ended(stream: &mut libp2p::Stream, since: Instant, what: &str) -> Duration {
    let mut buf = [0u8; 64];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(AT_ONCE, read_to_end)
        .await
        .unwrap_or_else(|_| panic!("{what}: the stream was still open {AT_ONCE:?} later"));
    since.elapsed()
}

/// Alice's invitation of bob to `port`, as `invites --json` lists it.
fn invitation(alice: &User, port: u16) -> Value {
    alice
        .ok(&["--json", "invites"])
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "invitation" && v["name"] == "bob" && v["port"] == port)
        .expect("the invitation is listed")
}

#[test]
fn a_contact_removed_re_pinned_or_blocked_loses_tunnels_pipes_and_invitations_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    alice.register("alice");
    let _alice_online = alice.online();
    let port = echo_server();
    let port_arg = port.to_string();
    let node_addr: Multiaddr = node.addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let old = runtime.block_on(Key::named(&node_addr, "bob", ""));
    let connect = TunnelRequest::Connect { port };
    let mut took = Vec::new();

    // 1. Removed: the tunnel and a pipe close, the invitation is withdrawn.
    alice.ok(&["contacts", "add", "bob"]);
    alice.ok(&["invite", "bob", "--port", &port_arg]);
    let mut listener = alice
        .command(&["pipe", "--listen"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = Lines::spawn(listener.stderr.take().unwrap());
    said.expect("the listener waiting", |l| l.contains("waiting for a pipe"));
    let (mut tunnel, mut pipe) = runtime.block_on(async {
        let mut tunnel = ask(&old, connect).await.expect("invited: the tunnel opens");
        echoes(&mut tunnel).await;
        let pipe = ask(&old, TunnelRequest::Pipe)
            .await
            .expect("a contact's pipe opens");
        (tunnel, pipe)
    });
    let since = Instant::now();
    let removed = alice.ok(&["contacts", "remove", "bob"]);
    assert!(
        removed
            .stdout
            .contains("1 invitation(s) to connect withdrawn"),
        "{removed:?}"
    );
    runtime.block_on(async {
        took.push((
            "removed: tunnel",
            ended(&mut tunnel, since, "removed: tunnel").await,
        ));
        took.push((
            "removed: pipe",
            ended(&mut pipe, since, "removed: pipe").await,
        ));
        refused(&old, connect).await;
    });
    assert_eq!(invitation(&alice, port)["open"], false);
    let _ = listener.kill();
    let _ = listener.wait();

    // 2. Blocked (a contact again, invited again): the same.
    alice.ok(&["contacts", "add", "bob"]);
    alice.ok(&["invite", "bob", "--port", &port_arg]);
    let mut tunnel = runtime.block_on(async {
        let mut tunnel = ask(&old, connect).await.expect("invited again");
        echoes(&mut tunnel).await;
        tunnel
    });
    let since = Instant::now();
    alice.ok(&["block", "bob"]);
    runtime.block_on(async {
        took.push((
            "blocked: tunnel",
            ended(&mut tunnel, since, "blocked").await,
        ));
        refused(&old, connect).await;
    });
    assert_eq!(invitation(&alice, port)["open"], false);
    alice.ok(&["unblock", "bob"]);

    // 3. Re-pinned: the name goes to a new key, alice trusts it, and the
    // old key loses its tunnel while it still holds it open.
    alice.ok(&["invite", "bob", "--port", &port_arg]);
    let mut tunnel = runtime.block_on(async {
        let mut tunnel = ask(&old, connect).await.expect("invited once more");
        echoes(&mut tunnel).await;
        old.session.release("bob").await.unwrap();
        tunnel
    });
    let new_bob = User::new(&node);
    new_bob.register("bob");
    let since = Instant::now();
    let trusted = alice.ok(&["contacts", "trust", "bob"]);
    assert!(trusted.stdout.contains("now pinned to key"), "{trusted:?}");
    runtime.block_on(async {
        took.push((
            "re-pinned: tunnel",
            ended(&mut tunnel, since, "re-pinned").await,
        ));
        refused(&old, connect).await;
    });
    assert_eq!(invitation(&alice, port)["open"], false);
    eprintln!("closed after the command began: {took:?}");
}

#[test]
fn a_blocked_contacts_file_transfer_stops_and_is_not_served_again() {
    let (dir, _node, alice, bob) = alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    let mut alice_online = alice.online();
    let mut bob_online = bob.online();
    // Large enough to be on its way when the block comes.
    let size = 256usize << 20;
    let path = dir.path().join("big.bin");
    let mut content = vec![0u8; size];
    blake3::Hasher::new()
        .update(b"withdrawn")
        .finalize_xof()
        .fill(&mut content);
    std::fs::write(&path, &content).unwrap();
    drop(content);
    let offered = alice.ok(&[
        "--json",
        "file",
        "send",
        "bob",
        path.to_str().unwrap(),
        "--no-wait",
    ]);
    let id = offered.json()["id"].as_str().unwrap().to_owned();
    let downloads = dir.path().join("downloads");
    bob_online.stdout.expect("the offer", |l| l.contains(&id));
    // Bob's client is frozen as soon as it has accepted (so that the
    // block surely comes before the end: loopback carries 256 MiB in well
    // under a second), and thawed once alice has blocked him.
    bob.ok(&[
        "file",
        "accept",
        &id,
        "--to",
        downloads.to_str().unwrap(),
        "--no-wait",
    ]);
    bob_online.signal("STOP");
    let blocked = alice.ok(&["block", "bob"]);
    bob_online.signal("CONT");
    assert!(
        blocked.stdout.contains("1 file transfer(s) stopped"),
        "{blocked:?}"
    );
    let failed = alice_online
        .stdout
        .expect("alice's transfer withdrawn", |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["event"] == "transfer"
                    && v["transfer"]["id"] == id
                    && v["transfer"]["state"] == "failed"
            })
        });
    assert!(failed.contains("withdrawn: bob is blocked"), "{failed}");
    // Bob's client, asking again, is refused: his transfer fails, short.
    bob_online.stdout.expect("bob's transfer refused", |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["event"] == "transfer"
                && v["transfer"]["id"] == id
                && v["transfer"]["state"] == "failed"
        })
    });
    let partial = std::fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0);
    assert!(
        partial < size as u64,
        "the transfer stopped before the end: {partial} of {size}"
    );
    assert!(
        !downloads.join("big.bin").exists(),
        "nothing was saved under its name"
    );
}
