//! Every front end shows the same state: a change made through one (the
//! command line, here) is an event that the front end running the client
//! (`online --json`) and one following it over the control socket
//! (`messenger events`) both see; a new follower starts from a snapshot
//! that holds what happened before, unread counts included.

use serde_json::Value;

use crate::support::{Lines, alice_and_bob};

/// The next `event` line of a `messenger --json events` whose event is
/// `kind`, with its number.
fn followed(lines: &mut Lines, kind: &str) -> (u64, Value) {
    let line = lines.expect(&format!("a followed {kind:?} event"), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["reply"] == "event" && v["event"]["event"] == kind)
    });
    let v: Value = serde_json::from_str(&line).expect("json");
    (v["seq"].as_u64().expect("seq"), v["event"].clone())
}

fn snapshot(lines: &mut Lines) -> Value {
    let line = lines.expect("the snapshot", |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["reply"] == "snapshot")
    });
    serde_json::from_str(&line).expect("json")
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect()
}

#[test]
fn a_change_made_on_the_command_line_is_an_event_in_every_front_end() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut online = alice.online();
    let mut follower = alice.spawn(&["--json", "events"]);
    let first = snapshot(&mut follower.stdout);
    assert_eq!(first["me"]["name"], "alice");
    assert_eq!(first["me"]["online"], true);
    assert!(names(&first["contacts"]).is_empty(), "{first}");

    // A contact added from the command line.
    alice.ok(&["contacts", "add", "bob"]);
    let shown = online.stdout.expect_event("contacts");
    assert_eq!(names(&shown["contacts"]), ["bob"], "{shown}");
    let (added_at, added) = followed(&mut follower.stdout, "contacts");
    assert_eq!(names(&added["contacts"]), ["bob"], "{added}");
    assert!(added_at > first["seq"].as_u64().unwrap());

    // My status, and a block.
    alice.ok(&["status", "away", "at lunch"]);
    let shown = online.stdout.expect_event("my_status");
    assert_eq!(
        (&shown["status"], &shown["text"]),
        (&"away".into(), &"at lunch".into())
    );
    let (status_at, status) = followed(&mut follower.stdout, "my_status");
    assert_eq!(status["status"], "away");
    assert!(status_at > added_at, "numbered in order");
    alice.ok(&["block", "mallory"]);
    let (_, blocked) = followed(&mut follower.stdout, "blocked");
    assert_eq!(blocked["names"], serde_json::json!(["mallory"]));

    // A message from bob: unread, counted in the client.
    bob.ok(&["send", "alice", "back at two?"]);
    online.stdout.expect_event("message");
    let (_, unread) = followed(&mut follower.stdout, "unread");
    assert_eq!(
        (&unread["name"], &unread["count"]),
        (&"bob".into(), &1.into())
    );

    // A follower that comes later starts from all of it.
    follower.signal("TERM");
    assert_eq!(
        follower.wait_exit(),
        Some(0),
        "Ctrl-C or TERM ends it quietly"
    );
    let mut later = alice.spawn(&["--json", "events"]);
    let now = snapshot(&mut later.stdout);
    assert_eq!(names(&now["contacts"]), ["bob"]);
    assert_eq!(now["blocked"], serde_json::json!(["mallory"]));
    assert_eq!(
        (&now["me"]["status"], &now["me"]["text"]),
        (&"away".into(), &"at lunch".into())
    );
    assert_eq!(
        now["unread"],
        serde_json::json!([{"name": "bob", "count": 1}])
    );
    assert!(now["seq"].as_u64().unwrap() >= status_at);

    // The counts outlive the client.
    later.signal("TERM");
    later.wait_exit();
    online.signal("TERM");
    assert_eq!(online.wait_exit(), Some(0));
    let mut again = alice.online();
    let mut after_restart = alice.spawn(&["--json", "events"]);
    let restarted = snapshot(&mut after_restart.stdout);
    assert_eq!(
        restarted["unread"],
        serde_json::json!([{"name": "bob", "count": 1}])
    );
    assert_ne!(restarted["run"], now["run"], "another run of the client");
    again.signal("TERM");
    again.wait_exit();
}

#[test]
fn following_from_a_number_of_another_run_is_refused_with_the_reason() {
    let (_dir, _node, alice, _bob) = alice_and_bob();
    let mut online = alice.online();
    // The control socket's own exchange, as a front end of another
    // language would speak it.
    use std::io::{BufRead, BufReader, Write};
    let socket = alice.home.path().join("control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream
        .write_all(b"{\"op\":\"follow\",\"run\":\"0000000000000000\",\"after\":0}\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    let reply: Value = serde_json::from_str(&reply).expect("json");
    assert_eq!(reply["reply"], "failed");
    assert_eq!(reply["kind"], "events_missed");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("take a new snapshot"),
        "{reply}"
    );
    online.signal("TERM");
    online.wait_exit();
}

#[test]
fn what_chat_prints_of_its_partner_is_read_in_every_front_end() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut chat = alice.spawn(&["--json", "chat", "bob", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    chat.stdout.expect_event("online");
    let mut follower = alice.spawn(&["--json", "events"]);
    snapshot(&mut follower.stdout);
    bob.ok(&["send", "alice", "are you there?"]);
    assert_eq!(
        chat.stdout.expect_event("message")["text"],
        "are you there?"
    );
    let (counted_at, counted) = followed(&mut follower.stdout, "unread");
    assert_eq!(
        (&counted["name"], &counted["count"]),
        (&"bob".into(), &1.into())
    );
    let (read_at, read) = followed(&mut follower.stdout, "unread");
    assert_eq!((&read["name"], &read["count"]), (&"bob".into(), &0.into()));
    assert!(read_at > counted_at);
    chat.signal("TERM");
    chat.wait_exit();
}
