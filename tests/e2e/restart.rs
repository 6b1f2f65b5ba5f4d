//! The node restarted on the same data dir.

use crate::support::{Node, User};

#[test]
fn claims_survive_kill_and_online_clients_re_register() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let (port, node_id) = (node.port(), node.peer_id());
    let alice = User::new(&node);
    let bob = User::new(&node);
    let mallory = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    let mut bob_online = bob.online();

    node.proc.signal("KILL");
    node.proc.wait_exit();
    bob_online.stdout.expect_event("reconnecting");

    let node = Node::start_on(dir.path(), port);
    assert_eq!(
        node.peer_id(),
        node_id,
        "the node's key lives in its data dir"
    );
    let back = bob_online.stdout.expect_event("online");
    assert_eq!(back["reconnected"], true);

    let whois = mallory.ok(&["--json", "whois", "alice"]).json();
    assert_eq!(whois["peer_id"], alice.peer_id(), "claim survived kill -9");
    assert_eq!(mallory.run(&["register", "alice"]).code, 4);

    alice.ok(&["send", "bob", "after the restart"]);
    let msg = bob_online.stdout.expect_event("message");
    assert_eq!(msg["text"], "after the restart");

    // A clean stop exits 0.
    let mut node = node;
    node.proc.signal("TERM");
    assert_eq!(node.proc.wait_exit(), Some(0));
}
