//! The agent against a real node in this process (on loopback), with
//! stores in memory: what it asks the node, and that it ends cleanly.

use std::time::Duration;

use messenger_proto::Identity;

use super::{Agent, AgentConfig};
use crate::api::{Event, Request, Response, SendOutcome};
use crate::testing::TestNode;

/// An agent registered as `name` and online; its events go to the
/// returned receiver.
async fn online(node: &TestNode, name: &str) -> (Agent, tokio::sync::mpsc::Receiver<Event>) {
    crate::testing::online_agent(&node.addr, name).await
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
    // The node's own limits, as a public node has them (20 requests per
    // second per peer, bursts of 100): what must not be hit.
    let node = TestNode::start().await;
    let (bob, bob_events) = online(&node, "bob").await;
    let bob_messages = drain(bob_events);
    let (alice, alice_events) = online(&node, "alice").await;
    let alice_drain = drain(alice_events);
    let added = alice
        .call(Request::ContactsAdd {
            name: crate::testing::screen_name("bob"),
        })
        .await;
    assert!(matches!(added, Response::Done { .. }), "{added:?}");
    // Alice is bob's contact too: more than a stranger's allowance of
    // message requests comes in.
    let added = bob
        .call(Request::ContactsAdd {
            name: crate::testing::screen_name("alice"),
        })
        .await;
    assert!(matches!(added, Response::Done { .. }), "{added:?}");
    let before = node.server.counters();
    for i in 0..1_000 {
        let outcome = alice.send("bob", &format!("message {i}")).await.unwrap();
        assert!(
            matches!(outcome, SendOutcome::Delivered { .. }),
            "message {i}: {outcome:?}"
        );
    }
    let after = node.server.counters();
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
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_one_recipient_each_learn_they_were_delivered() {
    // The node's own limits, as a public node has them (20 requests per
    // second per peer, bursts of 100): what must not be hit.
    let node = TestNode::start().await;
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
    node.stop().await;
}

#[test]
fn shutting_down_an_online_client_ends_every_task_in_bounded_time() {
    // The node runs on a runtime of its own, so that what is counted on
    // the clients' runtime is the clients' tasks alone.
    let node_runtime = tokio::runtime::Runtime::new().unwrap();
    let node = node_runtime.block_on(TestNode::start());
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    clients.block_on(clients_end_with_their_shutdown(&node));
    node_runtime.block_on(node.stop());
}

async fn clients_end_with_their_shutdown(node: &TestNode) {
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

/// A delivery worker on tokio's paused clock, over the in-memory transport:
/// a recipient that is not there yet keeps its message queued (its sender
/// hears so at the end of `SEND_WAIT`, not before and not never: the
/// worker's deadlines are on tokio's clock), and the presence push that
/// says it is back delivers the message by itself.
#[tokio::test(start_paused = true)]
async fn a_worker_keeps_a_message_for_an_absent_recipient_and_delivers_it_when_pushed_back() {
    use std::sync::Arc;

    use messenger_proto::certificate::NameCertificate;
    use messenger_proto::chat::{Message, MessageId};
    use messenger_proto::name::ScreenName;
    use messenger_proto::presence::Presence;
    use messenger_proto::time::now_ms;
    use tokio::sync::{mpsc, oneshot, watch};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::outbox::{Mode, SEND_WAIT, Worker, WorkerEnv, WorkerMsg};
    use super::sink::StoreSink;
    use crate::chat::Inbox;
    use crate::network::{Network, NetworkConfig};
    use crate::peer::PeerInfo;
    use crate::store::{MessageState, StoreHandle};
    use crate::trust::Trust;

    let memory = || NetworkConfig {
        memory_only: true,
        ..NetworkConfig::default()
    };
    let name = |s: &str| ScreenName::parse(s).unwrap();
    let node = Identity::from_seed([7; 32]);
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (alice_net, _alice_task, _) = Network::start(&alice, memory()).unwrap();
    let (store, _store_thread) = StoreHandle::in_memory().unwrap();
    let message = Message {
        id: MessageId::random(),
        from: name("alice"),
        to: name("bob"),
        sent_at: now_ms(),
        text: "there when you are back".into(),
        file: None,
        invite: None,
    };
    let id = message.id;
    store
        .call(move |s| s.add_outgoing(message, now_ms()))
        .await
        .unwrap();
    let certificate = NameCertificate {
        name: name("alice"),
        owner: alice.peer_id(),
        node: node.peer_id(),
        issued_at: now_ms(),
        expires_at: now_ms() + 3_600_000,
    }
    .sign(&node);
    let (_cert_tx, cert_rx) = watch::channel(Some(certificate));
    let (_trust_tx, trust_rx) = watch::channel(Arc::new(Trust::default()));
    let (events_tx, mut events) = mpsc::channel(16);
    let (notes_tx, _notes) = mpsc::channel(16);
    let env = Arc::new(WorkerEnv {
        identity: alice.clone(),
        store: store.clone(),
        network: alice_net.clone(),
        session: watch::channel(None).1,
        certificate: cert_rx,
        trust: trust_rx,
        events: crate::events::EventSender::new(events_tx, None),
        notes: notes_tx,
        mode: Mode::Online,
    });
    let addr: libp2p::Multiaddr = "/memory/4242".parse().unwrap();
    let bob_info = PeerInfo {
        name: name("bob"),
        peer_id: bob.peer_id(),
        presence: Presence::Online,
        status_text: String::new(),
        reachable: true,
        addrs: vec![addr.clone()],
        last_seen: None,
        valid_until: now_ms() + 3_600_000,
    };
    let (to_worker, worker_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let worker = Worker::new(name("bob"), env, Some(bob_info.clone()));
    let worker = tokio::spawn(worker.run(worker_rx, cancel.clone()));

    // Nobody listens at bob's address: the sender waits SEND_WAIT and is
    // told the message stays queued.
    let started = Instant::now();
    let (reply, answer) = oneshot::channel();
    to_worker
        .send(WorkerMsg::Deliver {
            id,
            reply,
            resolved: Duration::ZERO,
        })
        .await
        .unwrap();
    let answer = answer.await.unwrap();
    let waited = started.elapsed();
    assert!(
        matches!(answer, Response::Sent(SendOutcome::Queued { .. })),
        "{answer:?}"
    );
    // A loose upper bound: while the store's thread works, the paused
    // clock may leap to the next timer (a retry). A deadline kept on
    // another clock than tokio's would spin it on for days.
    assert!(
        (SEND_WAIT..SEND_WAIT * 2).contains(&waited),
        "told after {waited:?}"
    );
    let stored = store.call(move |s| s.message(&id)).await.unwrap().unwrap();
    assert_eq!(stored.state, MessageState::Queued, "still queued");

    // bob comes up, and the node's push says so: delivered, unasked.
    let (bob_net, _bob_task, streams) = Network::start(&bob, memory()).unwrap();
    bob_net.listen(addr).await.unwrap();
    let (bob_store, _bob_store_thread) = StoreHandle::in_memory().unwrap();
    let (bob_events_tx, mut bob_events) = mpsc::channel(16);
    let sink = StoreSink::new(
        bob_store,
        watch::channel(Arc::new(Trust::default())).1,
        crate::events::EventSender::new(bob_events_tx, None),
        bob_net.clone(),
        mpsc::channel(16).0,
        crate::store::RequestLimits::default(),
    );
    let inbox = Inbox::new(
        name("bob"),
        watch::channel(vec![node.peer_id()]).1,
        watch::channel(None).1,
        sink,
        crate::chat::DEFAULT_MESSAGE_RATE,
    );
    let stop = CancellationToken::new();
    let inbox = tokio::spawn(inbox.serve(streams.chat, stop.clone()));
    // Its failed dials made the worker forget bob's address, and with no
    // node to ask it cannot find him again: only the push can deliver.
    to_worker.send(WorkerMsg::Peer(bob_info)).await.unwrap();
    let delivered = loop {
        match events.recv().await.unwrap() {
            Event::Delivered(m) => break m,
            _ => continue,
        }
    };
    assert_eq!(delivered.message.id, id);
    let received = loop {
        match bob_events.recv().await.unwrap() {
            Event::Message { message, .. } => break message,
            _ => continue,
        }
    };
    assert_eq!(received.message.text, "there when you are back");
    cancel.cancel();
    worker.await.unwrap();
    stop.cancel();
    inbox.await.unwrap();
}

/// Messages kept and acknowledged but not yet checked when the client
/// stopped (it was killed between the two) are checked when it starts:
/// the good one is shown, the forged one removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_left_unchecked_by_a_crash_are_checked_at_the_next_start() {
    use messenger_proto::chat::{Message, MessageId};
    use messenger_proto::name::ScreenName;
    use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};
    use messenger_proto::time::now_ms;

    use crate::store::{MessageState, StoreHandle};

    let (store, store_thread) = StoreHandle::in_memory().unwrap();
    let alice = Identity::generate().unwrap();
    let message = |text: &str| Message {
        id: MessageId::random(),
        from: ScreenName::parse("alice").unwrap(),
        to: ScreenName::parse("bob").unwrap(),
        sent_at: now_ms(),
        text: text.into(),
        file: None,
        invite: None,
    };
    let (good, forged) = (message("kept before the crash"), message("forged"));
    let signed_good = Signed::sign(&alice, MESSAGE_CONTEXT, &good);
    let signed_forged = Signed::sign(&Identity::generate().unwrap(), MESSAGE_CONTEXT, &forged);
    for (m, signed) in [(good.clone(), signed_good), (forged.clone(), signed_forged)] {
        let from = alice.peer_id();
        store
            .call(move |s| s.add_incoming(&m, signed, from, now_ms()))
            .await
            .unwrap()
            .unwrap();
    }
    let mut config = AgentConfig::ephemeral(
        Identity::generate().unwrap(),
        "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
    )
    .unwrap();
    config.store = (store.clone(), store_thread);
    let (agent, mut events) = Agent::start(config).await.unwrap();
    match events.recv().await.unwrap() {
        Event::Message { message, .. } => {
            assert_eq!(message.message.id, good.id);
            assert_eq!(message.state, MessageState::Received);
        }
        other => panic!("the good message is shown first: {other:?}"),
    }
    let history = agent
        .call(Request::History {
            name: crate::testing::screen_name("alice"),
            limit: 10,
            before: None,
        })
        .await;
    let Response::Messages { messages } = history else {
        panic!("{history:?}");
    };
    let texts: Vec<&str> = messages.iter().map(|m| m.message.text.as_str()).collect();
    assert_eq!(texts, ["kept before the crash"]);
    let forged_id = forged.id;
    assert!(
        store
            .call(move |s| s.message(&forged_id))
            .await
            .unwrap()
            .is_none(),
        "the forgery is gone"
    );
    // (The store's thread ends with its last handle.)
    drop(store);
    assert!(agent.shutdown().await.clean);
}
