//! Name certificates: two users who have exchanged messages keep messaging,
//! both ways and acknowledged, while the node is stopped, for as long as
//! their certificates are valid; then the sender is told plainly why its
//! message waits, and it goes once the node is back.

use std::time::{Duration, Instant};

use crate::support::{Node, User};

/// Certificates this short make the test quick; the default is an hour.
const VALIDITY_SECS: u64 = 6;

#[test]
fn users_keep_messaging_while_the_node_is_down_until_their_certificates_expire() {
    let dir = tempfile::tempdir().unwrap();
    let validity = VALIDITY_SECS.to_string();
    let mut node = Node::start_with(dir.path(), &["--certificate-validity", &validity]);
    let port = node.port();
    let alice = User::new(&node);
    let bob = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    let mut alice_online = alice.online();
    let mut bob_online = bob.online();

    // Both ways once with the node up: each side holds a chat link, and
    // each has seen the other's certificate.
    alice.ok(&["send", "bob", "hello bob"]);
    assert_eq!(
        bob_online.stdout.expect_event("message")["text"],
        "hello bob"
    );
    bob.ok(&["send", "alice", "hello alice"]);
    assert_eq!(
        alice_online.stdout.expect_event("message")["text"],
        "hello alice"
    );

    node.proc.signal("KILL");
    node.proc.wait_exit();
    let down = Instant::now();
    alice_online.stdout.expect_event("reconnecting");
    bob_online.stdout.expect_event("reconnecting");

    // The node is gone: names are vouched for by the certificates alone.
    let sent = alice
        .ok(&["--json", "send", "bob", "the node is down"])
        .json();
    assert_eq!(sent["event"], "delivered", "{sent}");
    assert_eq!(
        bob_online.stdout.expect_event("message")["text"],
        "the node is down"
    );
    let sent = bob.ok(&["--json", "send", "alice", "still here"]).json();
    assert_eq!(sent["event"], "delivered", "{sent}");
    assert_eq!(
        alice_online.stdout.expect_event("message")["text"],
        "still here"
    );
    eprintln!(
        "CERTIFICATE RESULT: both ways delivered {:?} after the node was killed",
        down.elapsed()
    );

    // Past their validity (issued at the last renewal before the kill).
    let expired = down + Duration::from_secs(VALIDITY_SECS) + Duration::from_millis(500);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    let queued = alice.run(&["--json", "send", "bob", "after expiry"]);
    assert_eq!(queued.code, 7, "queued, not delivered: {queued:?}");
    let event = queued.json();
    assert_eq!(event["event"], "queued", "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(
        reason.contains("certificate expired") && reason.contains("unreachable"),
        "the reason says why: {reason}"
    );
    eprintln!("CERTIFICATE RESULT: after expiry, send says: {reason}");

    // The node comes back: new certificates, and the message goes.
    let _node = Node::start_on(dir.path(), port);
    alice_online.stdout.expect_event("online");
    assert_eq!(
        bob_online.stdout.expect_event("message")["text"],
        "after expiry"
    );
}
