//! Links and the inbox over libp2p's in-memory transport: no sockets, no
//! node (names are vouched for by certificates of a test node's key).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use messenger_proto::Identity;
use messenger_proto::certificate::{NameCertificate, SignedCertificate};
use messenger_proto::chat::{Message, MessageId, RejectCode};
use messenger_proto::name::ScreenName;
use messenger_proto::rate::Rate;
use messenger_proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger_proto::time::now_ms;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ACK_TIMEOUT, ChatLink, DeliveryError, Inbox, MessageSink, Signal};
use crate::network::{Network, NetworkConfig, NetworkTask};

/// Keeps messages in memory, refusing the names in `refused`; with
/// `stall`, never finishes keeping one (a recipient whose disk hangs).
/// Each kept message's verdict (its signature checked after the ack) is
/// recorded in `verdicts`, and `judged` is notified.
#[derive(Default, Clone)]
struct TestSink {
    kept: Arc<Mutex<Vec<Message>>>,
    verdicts: Arc<Mutex<Vec<(MessageId, bool)>>>,
    judged: Arc<tokio::sync::Notify>,
    signals: Arc<Mutex<Vec<(ScreenName, Signal)>>>,
    refused: Vec<ScreenName>,
    stall: bool,
}

impl TestSink {
    /// Waits for the verdict on `id`.
    async fn verdict(&self, id: MessageId) -> bool {
        loop {
            let judged = self.judged.notified();
            if let Some((_, ok)) = self.verdicts.lock().unwrap().iter().find(|(i, _)| *i == id) {
                return *ok;
            }
            judged.await;
        }
    }
}

impl MessageSink for TestSink {
    fn refuse(&self, from: &ScreenName, _: &PeerId) -> Option<RejectCode> {
        self.refused
            .contains(from)
            .then_some(RejectCode::NotDelivered)
    }

    async fn seen(&self, id: MessageId, _: PeerId) -> bool {
        self.kept.lock().unwrap().iter().any(|m| m.id == id)
    }

    type Kept = MessageId;

    async fn verified(&self, id: MessageId) {
        self.verdicts.lock().unwrap().push((id, true));
        self.judged.notify_waiters();
    }

    async fn signal(&self, from: ScreenName, _: PeerId, signal: Signal) {
        self.signals.lock().unwrap().push((from, signal));
    }

    async fn forged(&self, id: MessageId) {
        self.verdicts.lock().unwrap().push((id, false));
        self.judged.notify_waiters();
    }

    async fn keep(
        &self,
        message: Message,
        _: Signed,
        _: PeerId,
    ) -> Result<Option<MessageId>, super::KeepError> {
        if self.stall {
            std::future::pending::<()>().await;
        }
        let mut kept = self.kept.lock().unwrap();
        if kept.iter().any(|m| m.id == message.id) {
            return Ok(None);
        }
        let id = message.id;
        kept.push(message);
        Ok(Some(id))
    }
}

fn name(s: &str) -> ScreenName {
    ScreenName::parse(s).unwrap()
}

fn memory() -> NetworkConfig {
    NetworkConfig {
        memory_only: true,
        ..NetworkConfig::default()
    }
}

struct Pair {
    alice: Identity,
    alice_net: Network,
    _bob_net: Network,
    link: ChatLink,
    bob_peer: PeerId,
    cert_rx: watch::Receiver<Option<SignedCertificate>>,
    sink: TestSink,
    stop: CancellationToken,
    _tasks: (NetworkTask, NetworkTask),
    _cert: watch::Sender<Option<SignedCertificate>>,
    _inbox: tokio::task::JoinHandle<()>,
}

/// Bob's inbox with `sink` and `rate`, and a link from alice carrying a
/// certificate for `certified` (none: no certificate).
async fn pair(sink: TestSink, rate: Rate, certified: Option<&str>) -> Pair {
    let node = Identity::from_seed([9; 32]);
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (bob_net, bob_task, streams) = Network::start(&bob, memory()).unwrap();
    let port = rand_port();
    let addr: Multiaddr = format!("/memory/{port}").parse().unwrap();
    bob_net.listen(addr.clone()).await.unwrap();
    let stop = CancellationToken::new();
    // No directory session: a sender without a valid certificate cannot be
    // checked, and its stream is reset.
    let inbox = Inbox::new(
        name("bob"),
        watch::channel(vec![node.peer_id()]).1,
        watch::channel(None).1,
        sink.clone(),
        rate,
    );
    let inbox = tokio::spawn(inbox.serve(streams.chat, stop.clone()));
    let (alice_net, alice_task, _) = Network::start(&alice, memory()).unwrap();
    alice_net.dial(bob.peer_id(), vec![addr]).await.unwrap();
    let cert = certified.map(|n| {
        NameCertificate {
            name: name(n),
            owner: alice.peer_id(),
            node: node.peer_id(),
            issued_at: now_ms(),
            expires_at: now_ms() + 60_000,
        }
        .sign(&node)
    });
    let (cert_tx, cert_rx) = watch::channel(cert);
    let link = ChatLink::open(&alice_net, bob.peer_id(), cert_rx.clone())
        .await
        .unwrap();
    Pair {
        alice,
        alice_net,
        _bob_net: bob_net,
        link,
        bob_peer: bob.peer_id(),
        cert_rx,
        sink,
        stop,
        _tasks: (bob_task, alice_task),
        _cert: cert_tx,
        _inbox: inbox,
    }
}

fn rand_port() -> u64 {
    u64::from_le_bytes(MessageId::random().0[..8].try_into().unwrap()) | 1
}

fn message(from: &str, to: &str, text: &str) -> Message {
    Message {
        id: MessageId::random(),
        from: name(from),
        to: name(to),
        sent_at: now_ms(),
        text: text.into(),
        file: None,
        invite: None,
    }
}

impl Pair {
    async fn deliver(&self, m: &Message) -> Result<(), DeliveryError> {
        self.deliver_on(&self.link, m).await
    }

    async fn deliver_on(&self, link: &ChatLink, m: &Message) -> Result<(), DeliveryError> {
        let signed = Signed::sign(&self.alice, MESSAGE_CONTEXT, m);
        link.deliver(m.id, signed).await
    }

    /// Another stream from alice to bob.
    async fn new_link(&self) -> ChatLink {
        ChatLink::open(&self.alice_net, self.bob_peer, self.cert_rx.clone())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_sender_is_acknowledged_once_per_message_and_repeats_are_acked_again() {
    let p = pair(
        TestSink::default(),
        super::DEFAULT_MESSAGE_RATE,
        Some("alice"),
    )
    .await;
    let m = message("alice", "bob", "hello");
    p.deliver(&m).await.unwrap();
    p.deliver(&m).await.unwrap();
    assert_eq!(p.sink.kept.lock().unwrap().len(), 1, "kept once");
    assert!(p.sink.verdict(m.id).await, "its signature checked out");
    assert_eq!(p.sink.verdicts.lock().unwrap().len(), 1, "checked once");
    assert_eq!(
        p.alice_net.path(p.link.peer()).await,
        Some(crate::network::Path::Direct)
    );
    p.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_code_and_close_the_stream() {
    let sink = TestSink {
        refused: vec![name("alice")],
        ..TestSink::default()
    };
    let p = pair(sink, super::DEFAULT_MESSAGE_RATE, Some("alice")).await;
    let blocked = message("alice", "bob", "let me in");
    let elsewhere = message("alice", "carol", "not for bob");
    let empty = Message {
        text: String::new(),
        ..message("alice", "bob", "")
    };
    for (m, code) in [
        (blocked, RejectCode::NotDelivered),
        (elsewhere, RejectCode::WrongRecipient),
        (empty, RejectCode::BadText),
    ] {
        let link = p.new_link().await;
        assert_eq!(
            p.deliver_on(&link, &m).await,
            Err(DeliveryError::Rejected(code))
        );
        // A stream that earned a refusal is closed: a sender that keeps
        // sending what is refused pays for a new stream each time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !link.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "{code}: still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(p.sink.kept.lock().unwrap().is_empty());
    p.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_nobody_vouches_for_gets_its_stream_reset_not_an_answer() {
    // The certificate is for another name than the messages say.
    let p = pair(
        TestSink::default(),
        super::DEFAULT_MESSAGE_RATE,
        Some("carol"),
    )
    .await;
    let m = message("alice", "bob", "who am I?");
    assert_eq!(p.deliver(&m).await, Err(DeliveryError::ConnectionLost));
    assert!(p.link.is_closed());
    assert!(p.sink.kept.lock().unwrap().is_empty());
    p.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signature_is_never_shown_and_closes_the_link() {
    let p = pair(
        TestSink::default(),
        super::DEFAULT_MESSAGE_RATE,
        Some("alice"),
    )
    .await;
    // Right name, right connection, but signed by another key: only a
    // broken or hostile client of alice's own sends this.
    let m = message("alice", "bob", "not really signed");
    let forged = Signed::sign(&Identity::generate().unwrap(), MESSAGE_CONTEXT, &m);
    // The signature is checked after the ack (the connection vouches for
    // the key), so the ack may come; what matters is what follows.
    let _ = p.link.deliver(m.id, forged).await;
    assert!(!p.sink.verdict(m.id).await, "found forged");
    let after = message("alice", "bob", "and now a real one");
    assert_eq!(
        p.deliver(&after).await,
        Err(DeliveryError::ConnectionLost),
        "the link is closed"
    );
    assert!(
        p.sink.verdicts.lock().unwrap().iter().all(|(_, ok)| !ok),
        "nothing shown"
    );
    p.stop.cancel();
}

// Time-outs and pacing run on tokio's paused clock: the test does not wait
// for them, and they are exact.

#[tokio::test(start_paused = true)]
async fn a_peer_over_its_rate_is_slowed_down_and_loses_nothing() {
    // 10 per second after a burst of 2: 12 messages and the certificate
    // frame before them (every frame counts) need 1.1 s.
    let p = pair(TestSink::default(), Rate::new(10.0, 2), Some("alice")).await;
    let started = Instant::now();
    let mut acks = Vec::new();
    for i in 0..12 {
        let m = message("alice", "bob", &format!("m{i}"));
        let signed = Signed::sign(&p.alice, MESSAGE_CONTEXT, &m);
        acks.push(p.link.submit(m.id, signed).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(1100)..Duration::from_millis(1150)).contains(&took),
        "paced to the rate: {took:?}"
    );
    assert_eq!(p.sink.kept.lock().unwrap().len(), 12, "nothing lost");
    p.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_recipient_that_never_answers_is_given_up_on_after_the_ack_timeout() {
    let sink = TestSink {
        stall: true,
        ..TestSink::default()
    };
    let p = pair(sink, super::DEFAULT_MESSAGE_RATE, Some("alice")).await;
    let started = Instant::now();
    let m = message("alice", "bob", "are you there?");
    assert_eq!(
        p.deliver(&m).await,
        Err(DeliveryError::Timeout(ACK_TIMEOUT))
    );
    let took = started.elapsed();
    assert!(
        (ACK_TIMEOUT..ACK_TIMEOUT + Duration::from_millis(100)).contains(&took),
        "given up after {took:?}"
    );
    assert!(p.sink.kept.lock().unwrap().is_empty());
    p.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn typing_and_nudges_are_taken_within_their_rates_under_a_certified_name() {
    let p = pair(
        TestSink::default(),
        super::DEFAULT_MESSAGE_RATE,
        Some("alice"),
    )
    .await;
    // A message first, so that the certificate is on the stream.
    p.deliver(&message("alice", "bob", "hi")).await.unwrap();
    for _ in 0..10 {
        p.link.signal(Signal::Typing(true)).unwrap();
    }
    p.link.signal(Signal::Nudge).unwrap();
    p.link.signal(Signal::Nudge).unwrap();
    // Frames are read in order: once this is acknowledged, the signals
    // before it were handled.
    p.deliver(&message("alice", "bob", "and")).await.unwrap();
    let taken = |signal: Signal| {
        p.sink
            .signals
            .lock()
            .unwrap()
            .iter()
            .filter(|(from, s)| *s == signal && from.as_str() == "alice")
            .count()
    };
    assert_eq!(
        taken(Signal::Typing(true)),
        4,
        "a burst of 4 typing signals"
    );
    assert_eq!(taken(Signal::Nudge), 1, "one nudge per 10 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    p.link.signal(Signal::Nudge).unwrap();
    p.deliver(&message("alice", "bob", "again")).await.unwrap();
    assert_eq!(taken(Signal::Nudge), 2, "another after 10 s");
    p.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_without_a_certificate_are_ignored() {
    let p = pair(TestSink::default(), super::DEFAULT_MESSAGE_RATE, None).await;
    p.link.signal(Signal::Typing(true)).unwrap();
    p.link.signal(Signal::Nudge).unwrap();
    // No node to vouch for a message either: the stream is reset after it,
    // so both signals before it were read.
    let _ = p.deliver(&message("alice", "bob", "hi")).await;
    assert!(p.sink.signals.lock().unwrap().is_empty());
    p.stop.cancel();
}
