//! The agent against a real node in this process (on loopback), with
//! stores in memory: what it asks the node, and that it ends cleanly.

use std::time::Duration;

use messenger_proto::Identity;
use messenger_proto::rate::Rate;

use super::{Agent, AgentConfig};
use crate::api::{Event, Request, Response, SendOutcome};

async fn node() -> (rendezvous::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = rendezvous::Config::new(dir.path().join("node"));
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    // The node's own limits, as a public node has them (20 requests per
    // second per peer, bursts of 100): what must not be hit.
    let node = rendezvous::Server::bind(config).await.unwrap();
    (node, dir)
}

/// An agent registered as `name` and online; its events go to the
/// returned receiver.
async fn online(
    node: &rendezvous::Server,
    name: &str,
) -> (Agent, tokio::sync::mpsc::Receiver<Event>) {
    let mut config = AgentConfig::ephemeral(
        Identity::generate().unwrap(),
        node.listen_addrs()[0].clone(),
    )
    .unwrap();
    config.message_rate = Rate::new(1e9, u32::MAX);
    let (agent, events) = Agent::start(config).await.unwrap();
    agent.register(name).await.unwrap();
    agent
        .go_online(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .await
        .unwrap();
    (agent, events)
}

fn drain(mut events: tokio::sync::mpsc::Receiver<Event>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut messages = 0;
        while let Some(event) = events.recv().await {
            if let Event::Message { .. } = event {
                messages += 1;
            }
        }
        messages
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sends_to_a_contact_resolve_it_once_and_are_never_rate_limited() {
    let (node, _dir) = node().await;
    let (bob, bob_events) = online(&node, "bob").await;
    let bob_messages = drain(bob_events);
    let (alice, alice_events) = online(&node, "alice").await;
    let alice_drain = drain(alice_events);
    let added = alice
        .call(Request::ContactsAdd { name: "bob".into() })
        .await;
    assert!(matches!(added, Response::Done { .. }), "{added:?}");
    let before = node.counters();
    for i in 0..1_000 {
        let outcome = alice.send("bob", &format!("message {i}")).await.unwrap();
        assert!(
            matches!(outcome, SendOutcome::Delivered { .. }),
            "message {i}: {outcome:?}"
        );
    }
    let after = node.counters();
    eprintln!("1000 sends: node counters before {before:?}, after {after:?}");
    assert_eq!(
        after.rate_limited, 0,
        "no request was over the node's budget"
    );
    assert!(
        after.resolves - before.resolves <= 3,
        "the recipient is resolved at most a handful of times, not per send: {} resolves",
        after.resolves - before.resolves
    );
    assert!(alice.shutdown().await.clean);
    assert!(bob.shutdown().await.clean);
    assert_eq!(bob_messages.await.unwrap(), 1_000);
    alice_drain.await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_one_recipient_each_learn_they_were_delivered() {
    let (node, _dir) = node().await;
    let (bob, bob_events) = online(&node, "bob").await;
    let bob_messages = drain(bob_events);
    let (alice, alice_events) = online(&node, "alice").await;
    let alice_drain = drain(alice_events);
    // Many senders at once: a delivery round that reads the outbox while
    // another sender's message is stored but not yet handed over delivers
    // that one too, and its sender must still hear so (not "queued" at
    // the end of its wait).
    let started = tokio::time::Instant::now();
    let sends = (0..40).map(|i| {
        let alice = alice.clone();
        tokio::spawn(async move { alice.send("bob", &format!("at once {i}")).await })
    });
    for (i, send) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        let outcome = send.unwrap().unwrap();
        assert!(
            matches!(outcome, SendOutcome::Delivered { .. }),
            "send {i}: {outcome:?}"
        );
    }
    let took = started.elapsed();
    assert!(
        took < super::outbox::SEND_WAIT,
        "every answer came from its delivery, not from the end of a wait: {took:?}"
    );
    assert!(alice.shutdown().await.clean);
    assert!(bob.shutdown().await.clean);
    assert_eq!(bob_messages.await.unwrap(), 40);
    alice_drain.await.unwrap();
    node.shutdown().await;
}

#[test]
fn shutting_down_an_online_client_ends_every_task_in_bounded_time() {
    // The node runs on a runtime of its own, so that what is counted on
    // the clients' runtime is the clients' tasks alone.
    let node_runtime = tokio::runtime::Runtime::new().unwrap();
    let (node, dir) = node_runtime.block_on(node());
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    clients.block_on(clients_end_with_their_shutdown(&node));
    node_runtime.block_on(node.shutdown());
    drop(dir);
}

async fn clients_end_with_their_shutdown(node: &rendezvous::Server) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let (bob, bob_events) = online(node, "bob").await;
    let bob_messages = drain(bob_events);
    let (alice, alice_events) = online(node, "alice").await;
    let alice_drain = drain(alice_events);
    for i in 0..20 {
        alice.send("bob", &format!("hello {i}")).await.unwrap();
        bob.send("alice", &format!("hi {i}")).await.unwrap();
    }
    // A message to someone who never comes: its worker waits, paused.
    let queued = alice.send("nobody", "are you there?").await;
    assert!(queued.is_err(), "no such name: {queued:?}");
    assert!(
        metrics.num_alive_tasks() > baseline + 4,
        "the clients run tasks"
    );

    for agent in [alice, bob] {
        let report = agent.shutdown().await;
        assert!(report.clean, "every task ended by itself: {report:?}");
        assert!(report.took < Duration::from_secs(5), "{report:?}");
    }
    assert_eq!(bob_messages.await.unwrap(), 20);
    assert_eq!(alice_drain.await.unwrap(), 20);
    // Whatever is left ends promptly (a closing connection's last steps).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while metrics.num_alive_tasks() > baseline && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "no task of the clients outlives them"
    );
}
