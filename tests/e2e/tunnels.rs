//! Invite to connect, and pipes: a contact's program reaching a port on
//! my machine by my name, through both clients over the direct
//! connection; refusals for the uninvited, other ports and withdrawn
//! invitations; stdin to a contact's `pipe --listen`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Lines, Proc, TIMEOUT, User, alice_and_bob};

/// An echo server on 127.0.0.1 (threads, for the test's life): every
/// connection gets back what it sends, until it half-closes.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Sends `data` through `addr`, half-closes, and reads everything back.
fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let data = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    back
}

fn json_event(lines: &mut Lines, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let line = lines.expect(what, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| pred(&v))
    });
    serde_json::from_str(&line).unwrap()
}

/// `connect` as a running process, once it listens: its local address.
fn connect(user: &User, to: &str, port: u16) -> (Proc, SocketAddr) {
    let mut proc = user.spawn(&["--json", "connect", to, &port.to_string()]);
    let listening = proc.stdout.expect_event("listening");
    let addr = listening["addr"].as_str().unwrap().parse().unwrap();
    (proc, addr)
}

fn tunnel_event(lines: &mut Lines, state: &str) -> Value {
    json_event(lines, &format!("a tunnel {state}"), |v| {
        v["event"] == "tunnel" && v["tunnel"]["state"]["state"] == state
    })
}

#[test]
fn an_invited_contact_reaches_the_port_by_name_and_everyone_else_is_refused() {
    let (_dir, node, alice, bob) = alice_and_bob();
    let carol = User::new(&node);
    carol.register("carol");
    let port = echo_server();
    let other_port = echo_server();
    alice.ok(&["contacts", "add", "bob"]);
    let mut alice_online = alice.online();
    let mut bob_online = bob.online();

    // Not invited yet: refused at once, by bob's side of the question.
    let refused = bob.run(&["connect", "alice", &port.to_string()]);
    assert_eq!(refused.code, 11, "{refused:?}");
    assert!(
        refused.stderr.contains("have not invited you"),
        "{refused:?}"
    );

    let invited = alice.ok(&["invite", "bob", "--port", &port.to_string()]);
    assert!(invited.stdout.contains("bob may connect"), "{invited:?}");
    let told = json_event(&mut bob_online.stdout, "the invitation", |v| {
        v["event"] == "message" && v["invite"]["port"] == port
    });
    // The data is in the signed frame; the text is a sentence for people,
    // with no front end's command in it.
    let text = told["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("invites you to connect to port {port}"))
            && !text.contains("messenger"),
        "{text}"
    );

    // Several connections at once, each with its own bytes.
    let (mut tunnel, local) = connect(&bob, "alice", port);
    let senders: Vec<_> = (0..8u8)
        .map(|i| {
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..300_000u32)
                    .map(|n| (n as u8) ^ i.wrapping_mul(37))
                    .collect();
                let back = round_trip(local, &data);
                assert!(
                    back == data,
                    "connection {i}: {} bytes back of {}",
                    back.len(),
                    data.len()
                );
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    for _ in 0..8 {
        let closed = tunnel_event(&mut alice_online.stdout, "closed");
        assert_eq!(closed["tunnel"]["peer"], "bob");
        assert_eq!(closed["tunnel"]["target"]["port"], port);
        assert_eq!(closed["tunnel"]["state"]["received"], 300_000);
        assert_eq!(closed["tunnel"]["state"]["sent"], 300_000);
    }
    json_event(
        &mut tunnel.stdout,
        "bob's log of a closed connection",
        |v| v["event"] == "connection" && v["state"] == "closed" && v["sent"] == 300_000,
    );

    // At most 16 tunnels from one peer at once: the 17th is refused busy.
    let held: Vec<TcpStream> = (0..16)
        .map(|i| {
            let mut conn = TcpStream::connect(local).unwrap();
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            conn.write_all(&[i]).unwrap();
            let mut back = [0u8; 1];
            conn.read_exact(&mut back).unwrap();
            assert_eq!(back[0], i);
            conn
        })
        .collect();
    let mut extra = TcpStream::connect(local).unwrap();
    extra.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = extra.write_all(b"one more");
    let mut back = Vec::new();
    let _ = extra.read_to_end(&mut back);
    assert!(back.is_empty(), "the 17th tunnel got {back:?}");
    let busy = tunnel_event(&mut alice_online.stdout, "refused");
    assert_eq!(busy["tunnel"]["state"]["code"], "busy");
    json_event(&mut tunnel.stdout, "bob's log of the busy refusal", |v| {
        v["event"] == "connection"
            && v["state"] == "refused"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("too many tunnels"))
    });
    drop(held);
    for _ in 0..16 {
        tunnel_event(&mut alice_online.stdout, "closed");
    }

    // Another port of alice's, and a stranger: refused.
    let other = bob.run(&["connect", "alice", &other_port.to_string()]);
    assert_eq!(other.code, 11, "{other:?}");
    assert!(other.stderr.contains("other ports"), "{other:?}");
    let stranger = carol.run(&["connect", "alice", &port.to_string()]);
    assert_eq!(stranger.code, 11, "{stranger:?}");
    assert!(
        stranger.stderr.contains("have not invited you"),
        "{stranger:?}"
    );
    let refusal = tunnel_event(&mut alice_online.stdout, "refused");
    assert_eq!(refusal["tunnel"]["state"]["code"], "port_not_invited");
    let refusal = tunnel_event(&mut alice_online.stdout, "refused");
    assert_eq!(refusal["tunnel"]["state"]["code"], "not_invited");
    assert!(
        refusal["tunnel"]["peer"].is_null(),
        "carol is nobody to alice"
    );

    // A connection open while the invitation is withdrawn is closed; new
    // ones are refused as withdrawn.
    let mut held = TcpStream::connect(local).unwrap();
    held.set_read_timeout(Some(TIMEOUT)).unwrap();
    held.write_all(b"ping").unwrap();
    let mut ping = [0u8; 4];
    held.read_exact(&mut ping).unwrap();
    assert_eq!(&ping, b"ping");
    alice.ok(&["invite", "bob", "--port", &port.to_string(), "--revoke"]);
    let mut rest = Vec::new();
    let ended = held.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the held connection got {rest:?}");
    assert!(
        !matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the held connection stayed open after the withdrawal"
    );
    json_event(
        &mut alice_online.stdout,
        "the held tunnel closed as withdrawn",
        |v| {
            v["event"] == "tunnel"
                && v["tunnel"]["state"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("withdrawn"))
        },
    );
    // A new connection is closed at once (reset, or ended: nothing back).
    let mut after = TcpStream::connect(local).unwrap();
    after.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = after.write_all(b"after");
    let mut back = Vec::new();
    let _ = after.read_to_end(&mut back);
    assert!(back.is_empty(), "a refused connection got {back:?}");
    json_event(&mut tunnel.stdout, "bob's log of the refusal", |v| {
        v["event"] == "connection"
            && v["state"] == "refused"
            && v["error"].as_str().is_some_and(|e| e.contains("withdrew"))
    });
    let withdrawn = bob.run(&["connect", "alice", &port.to_string()]);
    assert_eq!(withdrawn.code, 11, "{withdrawn:?}");
    assert!(withdrawn.stderr.contains("withdrew"), "{withdrawn:?}");

    // Bob was told of both: the invitation, then its withdrawal.
    json_event(&mut bob_online.stdout, "the withdrawal", |v| {
        v["event"] == "message" && v["invite"]["withdrawn"] == true
    });
    let told = bob.ok(&["--json", "invites"]);
    let told: Value = serde_json::from_str(told.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(told["event"], "invited_me", "{told}");
    assert_eq!(told["from"], "alice");
    assert_eq!(told["port"], port);
    assert_eq!(told["open"], false, "the last word was the withdrawal");

    let invitations = alice.ok(&["--json", "invites"]);
    let listed: Value = serde_json::from_str(invitations.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(listed["name"], "bob");
    assert_eq!(listed["port"], port);
    assert_eq!(listed["open"], false);

    tunnel.signal("INT");
    assert_eq!(tunnel.wait_exit(), Some(0));
}

#[test]
fn a_pipe_carries_stdin_to_a_contacts_listener_and_back() {
    let (dir, node, alice, bob) = alice_and_bob();
    let carol = User::new(&node);
    carol.register("carol");
    alice.ok(&["contacts", "add", "bob"]);
    let _alice_online = alice.online();

    // Alice listens through her running client; bob pipes through a
    // client of his own (none runs on his home).
    let received = dir.path().join("received");
    let mut listener = alice
        .command(&["pipe", "--listen"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&received).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = Lines::spawn(listener.stderr.take().unwrap());
    said.expect("the listener waiting", |l| l.contains("waiting for a pipe"));
    let mut answer = listener.stdin.take().unwrap();
    answer.write_all(b"got it\n").unwrap();
    drop(answer);

    let stranger = carol.run_with_stdin(&["pipe", "alice"], Some(b"hello?"));
    assert_eq!(stranger.code, 11, "{stranger:?}");
    assert!(
        stranger.stderr.contains("have not invited you"),
        "{stranger:?}"
    );

    let data: Vec<u8> = (0..(2u32 << 20)).map(|n| (n % 251) as u8).collect();
    let piped = bob.run_with_stdin(&["pipe", "alice"], Some(&data));
    assert_eq!(piped.code, 0, "{piped:?}");
    assert_eq!(piped.stdout, "got it\n");

    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = listener.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    said.expect("the listener saying who piped", |l| {
        l.contains("pipe from bob")
    });
    let got = std::fs::read(&received).unwrap();
    assert!(
        got == data,
        "received {} bytes of {}, or other bytes",
        got.len(),
        data.len()
    );
}
