//! Bad input gets a clear error and crashes nothing.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Node, User, alice_and_bob};

#[test]
fn invalid_names_state_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let long = "a".repeat(33);
    for bad in ["ab", "9lives", "a b", "émile", long.as_str(), "_under"] {
        let ran = alice.run(&["register", bad]);
        assert_eq!(ran.code, 2, "{bad}: {ran:?}");
        assert!(
            ran.stderr.contains("3-32 characters of a-z, 0-9"),
            "{bad}: {ran:?}"
        );
        let ran = alice.run(&["whois", bad]);
        assert_eq!(ran.code, 2, "{bad}: {ran:?}");
        let ran = alice.run(&["send", bad, "hi"]);
        assert_eq!(ran.code, 2, "{bad}: {ran:?}");
    }
    // The node is still fine.
    alice.register("alice");
}

#[test]
fn empty_and_oversized_text_is_refused_before_anything_is_sent() {
    let (_dir, _node, alice, bob) = alice_and_bob();
    let mut online = bob.online();

    let ran = alice.run(&["send", "bob", ""]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("message is empty"), "{ran:?}");

    let big = vec![b'x'; 64 * 1024 + 1];
    let ran = alice.run_with_stdin(&["send", "bob", "-"], Some(&big));
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(
        ran.stderr
            .contains("65537 bytes long; the limit is 65536 bytes"),
        "{ran:?}"
    );

    // Exactly the limit goes through.
    let max = vec![b'y'; 64 * 1024];
    let ran = alice.run_with_stdin(&["send", "bob", "-"], Some(&max));
    assert_eq!(ran.code, 0, "{ran:?}");
    let msg = online.stdout.expect_event("message");
    assert_eq!(msg["text"].as_str().unwrap().len(), 64 * 1024);
    // Nothing oversized or empty arrived.
    assert_eq!(
        online
            .stdout
            .drain()
            .iter()
            .filter(|l| l.contains("\"message\""))
            .count(),
        1
    );
}

#[test]
fn a_damaged_key_file_is_an_error_never_a_new_identity() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let before = alice.peer_id();
    let key = alice.home.path().join("identity.key");
    let good = std::fs::read(&key).unwrap();

    // Truncated.
    std::fs::write(&key, &good[..30]).unwrap();
    let ran = alice.run(&["id"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("is corrupt"), "{ran:?}");
    assert_eq!(std::fs::read(&key).unwrap(), &good[..30], "left as it was");

    // Garbage.
    std::fs::write(&key, b"\x00\x01garbage").unwrap();
    let ran = alice.run(&["register", "alice"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("is corrupt"), "{ran:?}");

    // Readable by others.
    std::fs::write(&key, &good).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ran = alice.run(&["id"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("chmod 600"), "{ran:?}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(alice.peer_id(), before);
}

#[test]
fn bad_rendezvous_addresses_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let mut alice = User::new(&node);

    alice.rendezvous = "/ip4/127.0.0.1/tcp/4001".into();
    let ran = alice.run(&["whois", "bob"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("must end in /p2p/"), "{ran:?}");

    alice.rendezvous = "not-an-address".into();
    let ran = alice.run(&["whois", "bob"]);
    assert_eq!(ran.code, 2, "{ran:?}");

    // A node that is not there: a closed port on loopback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    alice.rendezvous = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", node.peer_id());
    let ran = alice.run(&["register", "alice"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("cannot reach the rendezvous node"),
        "{ran:?}"
    );

    let ran = alice.run_bare(&["whois", "bob"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("no rendezvous node known"), "{ran:?}");
}
