//! Direct messages between real processes.

use std::time::Duration;

use crate::support::alice_and_bob;

#[test]
fn send_to_an_online_peer_is_acknowledged_and_printed() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut bob_online = bob.spawn(&["online", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    bob_online
        .stdout
        .expect("online line", |l| l.starts_with("online as bob"));

    let ran = alice.ok(&["--json", "send", "bob", "hello bob"]);
    let delivered = ran.json();
    assert_eq!(delivered["event"], "delivered");
    assert_eq!(delivered["to"], "bob");
    let line = bob_online
        .stdout
        .expect("the message", |l| l.ends_with("alice: hello bob"));
    // `[HH:MM:SS] alice: hello bob`
    let bytes = line.as_bytes();
    assert!(
        bytes[0] == b'[' && bytes[9] == b']' && bytes[3] == b':' && bytes[6] == b':',
        "{line}"
    );

    // Text from stdin, multi-line, and the JSON form of the received message.
    let mut bob_json = {
        drop(bob_online);
        bob.online()
    };
    let ran = alice.run_with_stdin(&["send", "bob", "-"], Some("two\nlines\n".as_bytes()));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.starts_with("delivered to bob"), "{ran:?}");
    let msg = bob_json.stdout.expect_event("message");
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["text"], "two\nlines");
    assert_eq!(msg["peer_id"], alice.peer_id());
    assert_eq!(msg["id"].as_str().unwrap().len(), 32);
}

#[test]
fn send_to_offline_and_unknown_names_fails_clearly() {
    let (_dir, _node, alice, bob) = alice_and_bob();

    let ran = alice.run(&["send", "bob", "are you there?"]);
    assert_eq!(ran.code, 7, "queued: {ran:?}");
    assert!(ran.stdout.starts_with("queued: bob is offline"), "{ran:?}");

    let ran = alice.run(&["send", "nobody", "hi"]);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(ran.stderr.contains("no such name: nobody"), "{ran:?}");

    // A client that went offline with Ctrl-C is offline at once.
    let mut online = bob.online();
    online.signal("INT");
    assert_eq!(online.wait_exit(), Some(0));
    let ran = alice.run(&["--json", "send", "bob", "still there?"]);
    assert_eq!(ran.code, 7, "{ran:?}");
    assert_eq!(ran.json()["event"], "queued");
    let outbox: Vec<serde_json::Value> = alice
        .ok(&["--json", "outbox"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = outbox.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["are you there?", "still there?"]);
}

#[test]
fn a_killed_peer_goes_offline_and_sending_says_what_was_tried() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let online = bob.online();
    drop(online); // SIGKILL: no goodbye to the node.
    // The node notices the closed connection; the message is then queued
    // as for an offline peer (or, if the node has not noticed yet, after
    // failing to reach the old address, which the answer names).
    let ran = alice.run(&["send", "bob", "hello?"]);
    assert_eq!(ran.code, 7, "{ran:?}");
    assert!(
        ran.stdout.contains("bob is offline") || ran.stdout.contains("tried /ip4/127.0.0.1/tcp/"),
        "{ran:?}"
    );
}

#[test]
fn chat_sends_typed_lines_and_prints_replies() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut bob_online = bob.online();
    // Its delivery worker's pauses are logged: twice in CI (once beside a
    // crowd test, once not) nothing was delivered within 20 s and the
    // sender said nothing; this shows why if it happens again.
    let mut chat = alice.spawn_logging(
        &["chat", "bob", "--listen", "/ip4/127.0.0.1/tcp/0"],
        "warn,messenger::agent::outbox=debug,messenger::chat=debug",
    );
    chat.stdout
        .expect("online line", |l| l.starts_with("online as alice"));
    for line in ["one", "two", "three"] {
        chat.write_stdin(&format!("{line}\n"));
    }
    // The sender's side first: should delivery stall, its output says why.
    // Up to a minute: a first attempt that fails waits out its back-off
    // (the worker retries after 0.5 s, 1 s, 2 s, ...).
    chat.stdout
        .expect_within(Duration::from_secs(60), "the last line delivered", |l| {
            l.ends_with("delivered to bob: three")
        });
    for expected in ["one", "two", "three"] {
        let msg = bob_online.stdout.expect_event("message");
        assert_eq!(msg["text"], expected, "messages arrive in the order typed");
    }
    let ran = bob.ok(&["send", "alice", "hi alice"]);
    assert!(ran.stdout.starts_with("delivered"), "{ran:?}");
    chat.stdout
        .expect("bob's reply", |l| l.ends_with("bob: hi alice"));
    chat.close_stdin();
    assert_eq!(chat.wait_exit(), Some(0));
}
