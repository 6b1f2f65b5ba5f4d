//! The buddy list: presence pushes, pinned contacts, blocks, an outbox that
//! loses nothing across kill -9, and history.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::Value;

use crate::support::{Node, User, alice_and_bob};

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn history(user: &User, with: &str) -> Vec<Value> {
    json_lines(
        &user
            .ok(&["--json", "history", with, "--limit", "5000"])
            .stdout,
    )
}

#[test]
fn presence_changes_are_pushed_to_watchers() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    let mut watcher = alice.online();
    watcher.stdout.expect_presence("bob", "offline");

    let started = Instant::now();
    let mut bob_online = bob.online();
    watcher.stdout.expect_presence("bob", "online");
    eprintln!(
        "online reached the watcher {:?} after bob's process started",
        started.elapsed()
    );

    // Through bob's running client (control socket).
    let ran = bob.ok(&["status", "away", "back at 3"]);
    assert!(ran.stdout.contains("status: away \"back at 3\""), "{ran:?}");
    let started = Instant::now();
    let away = watcher.stdout.expect_presence("bob", "away");
    eprintln!(
        "away reached the watcher {:?} after the status command returned",
        started.elapsed()
    );
    assert_eq!(away["text"], "back at 3");

    // contacts list shows the live presence and text.
    let list = json_lines(&alice.ok(&["--json", "contacts", "list"]).stdout);
    assert_eq!(list[0]["name"], "bob");
    assert_eq!(list[0]["status"], "away");
    assert_eq!(list[0]["text"], "back at 3");

    // Invisible looks like offline to watchers.
    bob.ok(&["status", "invisible"]);
    watcher.stdout.expect_presence("bob", "offline");
    bob.ok(&["status", "online"]);
    watcher.stdout.expect_presence("bob", "online");

    bob_online.signal("INT");
    assert_eq!(bob_online.wait_exit(), Some(0));
    watcher.stdout.expect_presence("bob", "offline");

    // A killed client turns offline too (its connection closes).
    let bob_online = bob.online();
    watcher.stdout.expect_presence("bob", "online");
    drop(bob_online);
    watcher.stdout.expect_presence("bob", "offline");
}

#[test]
fn an_invisible_user_still_receives_from_contacts() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    bob.ok(&["contacts", "add", "alice"]);
    bob.ok(&["status", "invisible"]);
    let mut bob_online = bob.online();
    assert_eq!(
        alice.ok(&["--json", "whois", "bob"]).json()["online"],
        false
    );
    let ran = alice.ok(&["send", "bob", "psst"]);
    assert!(ran.stdout.starts_with("delivered"), "{ran:?}");
    assert_eq!(bob_online.stdout.expect_event("message")["text"], "psst");
}

#[test]
fn a_message_to_an_offline_contact_is_delivered_when_it_comes_online() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    alice.ok(&["contacts", "add", "bob"]);
    // Each other's: more than a stranger's allowance comes in.
    bob.ok(&["contacts", "add", "alice"]);
    let mut alice_online = alice.online();

    let n = 100;
    for i in 0..n {
        let ran = alice.run(&["send", "bob", &format!("queued {i:03}")]);
        assert_eq!(ran.code, 7, "{ran:?}");
        assert!(ran.stdout.starts_with("queued: bob is offline"), "{ran:?}");
    }
    let outbox = json_lines(&alice.ok(&["--json", "outbox"]).stdout);
    assert_eq!(outbox.len(), n);

    let mut bob_online = bob.online();
    let came_online = Instant::now();
    for i in 0..n {
        let msg = bob_online.stdout.expect_event("message");
        assert_eq!(
            msg["text"],
            format!("queued {i:03}"),
            "in the order written"
        );
    }
    let mut delivered = 0;
    while delivered < n {
        alice_online.stdout.expect_event("delivered");
        delivered += 1;
    }
    eprintln!(
        "MEASURED: {n} queued messages delivered and acknowledged {:?} after the recipient came online",
        came_online.elapsed()
    );
    assert!(json_lines(&alice.ok(&["--json", "outbox"]).stdout).is_empty());
    let states: HashSet<String> = history(&alice, "bob")
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, HashSet::from(["delivered".to_owned()]));
    let received = history(&bob, "alice");
    assert_eq!(received.len(), n);
    assert!(
        received
            .iter()
            .all(|m| m["state"] == "received" && m["direction"] == "in")
    );
}

#[test]
fn a_burst_survives_the_receiver_being_killed_midway() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    // A contact of bob's: more than a stranger's allowance comes in.
    bob.ok(&["contacts", "add", "alice"]);
    let mut bob_online = bob.online();
    let mut chat = alice.spawn(&["--json", "chat", "bob", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    chat.stdout.expect_event("online");

    let n = 1000;
    let burst: String = (0..n).map(|i| format!("m{i:04}\n")).collect();
    chat.write_stdin(&burst);

    // Kill the receiver once part of the burst has arrived.
    let mut shown = Vec::new();
    for _ in 0..150 {
        shown.push(
            bob_online.stdout.expect_event("message")["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    bob_online.signal("KILL");
    bob_online.wait_exit();
    let mut bob_online = bob.online();

    let mut delivered = 0;
    while delivered < n {
        chat.stdout.expect_event("delivered");
        delivered += 1;
    }
    // Everything after the restart is shown by the new process. An
    // acknowledged message is shown (and in history) once its signature
    // is checked, just after the ack: wait for the last one to be shown.
    let last = format!("m{:04}", n - 1);
    loop {
        let event = bob_online.stdout.expect_event("message");
        shown.push(event["id"].as_str().unwrap().to_owned());
        if event["text"] == last.as_str() {
            break;
        }
    }
    let received = history(&bob, "alice");
    let texts: Vec<&str> = received
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("m{i:04}")).collect();
    assert_eq!(texts, expected, "complete and in order in bob's history");
    let ids: HashSet<&str> = received.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), n, "no duplicates");

    let unique: HashSet<&String> = shown.iter().collect();
    assert_eq!(unique.len(), shown.len(), "no message shown twice");
    chat.close_stdin();
    assert_eq!(chat.wait_exit(), Some(0));
}

#[test]
fn a_sender_killed_with_queued_messages_delivers_them_after_restart() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut alice_online = alice.online();
    for text in ["one", "two", "three"] {
        assert_eq!(alice.run(&["send", "bob", text]).code, 7);
    }
    alice_online.signal("KILL");
    alice_online.wait_exit();
    assert!(
        alice.home.path().join("control.sock").exists(),
        "a stale socket is left behind"
    );
    // With no client running, commands work on their own despite the stale socket.
    assert_eq!(json_lines(&alice.ok(&["--json", "outbox"]).stdout).len(), 3);

    let mut bob_online = bob.online();
    let _alice_again = alice.online();
    for text in ["one", "two", "three"] {
        assert_eq!(bob_online.stdout.expect_event("message")["text"], text);
    }
}

#[test]
fn a_contact_whose_key_changed_is_refused_until_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let bob = User::new(&node);
    let impostor = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    alice.ok(&["contacts", "add", "bob"]);
    let mut alice_online = alice.online();

    // bob's name passes to another key.
    bob.ok(&["release", "bob"]);
    impostor.register("bob");
    let mut impostor_online = impostor.online();
    let warning = alice_online.stdout.expect_event("key_changed");
    assert_eq!(warning["name"], "bob");
    assert_eq!(warning["current"], impostor.peer_id());

    let ran = alice.run(&["send", "bob", "secret"]);
    assert_eq!(ran.code, 8, "{ran:?}");
    assert!(ran.stderr.contains("KEY CHANGED"), "{ran:?}");
    let ran = impostor.run(&["send", "alice", "it's me, bob"]);
    assert_eq!(ran.code, 6, "{ran:?}");
    assert!(ran.stderr.contains("not delivered"), "{ran:?}");
    let list = json_lines(&alice.ok(&["--json", "contacts", "list"]).stdout);
    assert_eq!(list[0]["key_changed_to"], impostor.peer_id());

    let ran = alice.ok(&["contacts", "trust", "bob"]);
    assert!(ran.stdout.contains("now pinned"), "{ran:?}");
    alice.ok(&["send", "bob", "hello, new bob"]);
    assert_eq!(
        impostor_online.stdout.expect_event("message")["text"],
        "hello, new bob"
    );
    assert!(
        history(&alice, "bob")
            .iter()
            .all(|m| m["text"] != "it's me, bob")
    );
}

#[test]
fn a_blocked_sender_is_refused_without_being_told_why() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let mallory = User::new(&node);
    alice.register("alice");
    mallory.register("mallory");
    let mut alice_online = alice.online();
    alice.ok(&["block", "mallory"]);

    let ran = mallory.run(&["send", "alice", "spam"]);
    assert_eq!(ran.code, 6, "{ran:?}");
    assert!(ran.stderr.contains("not delivered"), "{ran:?}");
    assert!(
        !ran.stderr.contains("block"),
        "the block is not revealed: {ran:?}"
    );
    let mallory_history = history(&mallory, "alice");
    assert_eq!(mallory_history[0]["state"], "failed");
    assert!(history(&alice, "mallory").is_empty());

    alice.ok(&["unblock", "mallory"]);
    mallory.ok(&["send", "alice", "sorry"]);
    let msg = alice_online.stdout.expect_event("message");
    assert_eq!(msg["text"], "sorry");
    assert!(
        alice_online
            .stdout
            .drain()
            .iter()
            .all(|l| !l.contains("spam"))
    );
}

#[test]
fn a_key_is_pinned_under_one_contact_name_only() {
    let (_dir, _node, alice, bob) = crate::support::alice_and_bob();
    // alice's key owns a second name.
    alice.register("alice.work");
    bob.ok(&["contacts", "add", "alice"]);
    let refused = bob.run(&["contacts", "add", "alice.work"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("is pinned for your contact alice already"),
        "{refused:?}"
    );
    // Under the other name once the first is gone.
    bob.ok(&["contacts", "remove", "alice"]);
    bob.ok(&["contacts", "add", "alice.work"]);
    let list = bob.ok(&["--json", "contacts", "list"]).stdout;
    assert!(
        list.contains("alice.work") && !list.contains("\"alice\""),
        "{list}"
    );
}
