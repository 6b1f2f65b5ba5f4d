//! Claiming and resolving names.

use crate::support::{Node, User, alice_and_bob};

#[test]
fn register_then_whois() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let bob = User::new(&node);

    let ran = alice.ok(&["register", "Alice"]);
    assert!(ran.stdout.contains("registered alice"), "{ran:?}");

    // The claim is recorded and the name stays offline until `online`.
    let whois = bob.ok(&["--json", "whois", "ALICE"]).json();
    assert_eq!(whois["name"], "alice");
    assert_eq!(whois["peer_id"], alice.peer_id());
    assert_eq!(whois["online"], false);

    let _online = alice.online();
    let whois = bob.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(whois["online"], true);
    let addrs = whois["addrs"].as_array().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("/ip4/127.0.0.1/tcp/")),
        "{whois}"
    );
    let human = bob.ok(&["whois", "alice"]);
    assert!(human.stdout.contains("status:    online"), "{human:?}");

    // Registering a name I own again succeeds and keeps me online.
    let again = alice.ok(&["register", "alice"]);
    assert!(again.stdout.contains("already yours"), "{again:?}");
    assert_eq!(bob.ok(&["--json", "whois", "alice"]).json()["online"], true);

    // `id` shows the name, and the home remembers the node.
    let id = alice.ok(&["--json", "id"]).json();
    assert_eq!(id["name"], "alice");
    let bare = alice.run_bare(&["--json", "whois", "alice"]);
    assert_eq!(bare.code, 0, "{bare:?}");
}

#[test]
fn a_name_taken_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let mallory = User::new(&node);
    alice.register("alice");

    let ran = mallory.run(&["register", "ALICE"]);
    assert_eq!(ran.code, 4, "{ran:?}");
    assert!(ran.stderr.contains("name taken"), "{ran:?}");
    let whois = mallory.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(whois["peer_id"], alice.peer_id());
    // Mallory's home did not adopt the name.
    assert_eq!(
        mallory.ok(&["--json", "id"]).json()["name"],
        serde_json::Value::Null
    );
}

#[test]
fn release_frees_a_name_for_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let carol = User::new(&node);
    alice.register("alice");
    let ran = carol.run(&["release", "alice"]);
    assert_eq!(ran.code, 1, "only the owner may release: {ran:?}");
    assert!(ran.stderr.contains("only its owner"), "{ran:?}");
    alice.ok(&["release", "alice"]);
    carol.register("alice");
    assert_eq!(
        alice.ok(&["--json", "whois", "alice"]).json()["peer_id"],
        carol.peer_id()
    );
}

#[test]
fn a_name_registered_while_online_under_another_is_used_from_the_next_start() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut bob_online = bob.online();
    let mut alice_online = alice.online();

    // Through the running client: claimed and remembered, not switched to.
    let ran = alice.ok(&["--json", "register", "alice2"]);
    assert_eq!(ran.json()["name"], "alice2", "{ran:?}");
    let whois = alice.ok(&["--json", "whois", "alice2"]).json();
    assert_eq!(whois["peer_id"], alice.peer_id());

    // Still alice while this client runs: the sender named in messages
    // matches the certificate it holds.
    alice.ok(&["send", "bob", "from the running client"]);
    let msg = bob_online.stdout.expect_event("message");
    assert_eq!(msg["from"], "alice", "{msg}");
    assert_eq!(msg["text"], "from the running client");

    // Started again, it is online as the name registered last.
    alice_online.signal("TERM");
    alice_online.wait_exit();
    let mut alice_online = alice.spawn(&["--json", "online", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let online = alice_online.stdout.expect_event("online");
    assert_eq!(online["name"], "alice2", "{online}");
    alice.ok(&["send", "bob", "from alice2"]);
    let msg = bob_online.stdout.expect_event("message");
    assert_eq!(msg["from"], "alice2", "{msg}");
}
