//! What a stranger can make a user spend: keys with no name of their own,
//! driven in-process with the library, against the real node and client
//! processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use messenger::chat::{ChatLink, DeliveryError};
use messenger::directory::DirectorySession;
use messenger::network::{Network, NetworkConfig, NetworkTask};
use messenger::peer::PeerInfo;
use messenger::proto::Identity;
use messenger::proto::chat::{Message, MessageId, RejectCode};
use messenger::proto::name::ScreenName;
use messenger::proto::signed::{MESSAGE_CONTEXT, Signed};
use messenger::proto::time::now_ms;

use crate::metrics::{node_metrics_url, scrape};
use crate::support::{Node, User};

/// A key with no name of its own, connected to `victim`.
struct Stranger {
    id: Identity,
    network: Network,
    victim: PeerId,
    _task: NetworkTask,
}

impl Stranger {
    /// A fresh key that looks `victim` up through the node and dials it.
    async fn near(node: &Multiaddr, victim: &str) -> Self {
        let id = Identity::generate().unwrap();
        let (network, task, _inbound) = Network::start(&id, NetworkConfig::default()).unwrap();
        let session = DirectorySession::open(&network, node, None).await.unwrap();
        let info = PeerInfo::from_resolution(&session.resolve(victim).await.unwrap()).unwrap();
        network.dial(info.peer_id, info.addrs).await.unwrap();
        session.close().await;
        Self {
            id,
            network,
            victim: info.peer_id,
            _task: task,
        }
    }

    /// A message to `to` signed by this key, claiming to be `from`.
    fn message(&self, from: &str, to: &str, text: &str) -> (MessageId, Signed) {
        let m = Message {
            id: MessageId::random(),
            from: ScreenName::parse(from).unwrap(),
            to: ScreenName::parse(to).unwrap(),
            sent_at: now_ms(),
            text: text.into(),
            file: None,
            invite: None,
        };
        (m.id, Signed::sign(&self.id, MESSAGE_CONTEXT, &m))
    }

    /// A chat stream to the victim, with no certificate.
    async fn link(&self) -> Option<ChatLink> {
        let (_keep, none) = tokio::sync::watch::channel(None);
        ChatLink::open(&self.network, self.victim, none).await.ok()
    }
}

/// How the victim's client answered a stranger's messages.
#[derive(Debug, Default)]
struct Answers {
    mismatch: AtomicU64,
    closed: AtomicU64,
    other: AtomicU64,
}

#[test]
fn a_stranger_writing_under_other_names_spends_its_own_budget_not_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_with(dir.path(), &["--metrics", "127.0.0.1:0"]);
    let metrics = node_metrics_url(&mut node);
    let alice = User::new(&node);
    let bob = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    bob.ok(&["contacts", "add", "alice"]);
    let _alice_online = alice.online();
    let mut bob_online = bob.online();
    let node_addr: Multiaddr = node.addr.parse().unwrap();

    // Bob goes on with his day while the stranger writes: renewals,
    // look-ups and sends to a contact, each of which must succeed.
    let attacking = Arc::new(AtomicBool::new(true));
    let user = {
        let attacking = attacking.clone();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while attacking.load(Ordering::Relaxed) || rounds < 3 {
                bob.ok(&["register", "bob"]);
                bob.ok(&["whois", "alice"]);
                bob.ok(&["send", "alice", &format!("still here {rounds}")]);
                rounds += 1;
                // A busy user, well within his own budget at the node.
                std::thread::sleep(Duration::from_millis(250));
            }
            (bob, rounds)
        })
    };

    const MESSAGES: u64 = 2_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answers = Arc::new(Answers::default());
    let started = Instant::now();
    runtime.block_on(async {
        let stranger = Arc::new(Stranger::near(&node_addr, "bob").await);
        let sent = Arc::new(AtomicU64::new(0));
        // Four streams at once (what a peer may have), as fast as bob lets.
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (stranger, sent, answers) = (stranger.clone(), sent.clone(), answers.clone());
                tokio::spawn(async move {
                    let mut link = None;
                    loop {
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        if n >= MESSAGES {
                            break;
                        }
                        // Names nobody owns, and names others own.
                        let from = match n % 3 {
                            0 => "alice".to_owned(),
                            1 => format!("ghost{n}"),
                            _ => "bob".to_owned(),
                        };
                        if link.as_ref().is_none_or(ChatLink::is_closed) {
                            link = stranger.link().await;
                        }
                        let Some(open) = &link else { continue };
                        let (id, signed) = stranger.message(&from, "bob", "buy my coin");
                        match open.deliver(id, signed).await {
                            Err(DeliveryError::Rejected(RejectCode::SenderMismatch)) => {
                                answers.mismatch.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(DeliveryError::ConnectionLost) => {
                                answers.closed.fetch_add(1, Ordering::Relaxed)
                            }
                            _ => answers.other.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let took = started.elapsed();
    attacking.store(false, Ordering::Relaxed);
    let (_bob, rounds) = user
        .join()
        .expect("every one of bob's own requests succeeded");

    let scraped = scrape(&metrics);
    let requests = "rendezvous_directory_requests_total";
    let sender_checks = scraped.sum_matching(requests, "op=\"resolve_sender\"");
    let lookups = scraped.sum_matching(requests, "op=\"resolve\"");
    let own_limited = scraped.sum_matching(requests, "result=\"rate_limited\"");
    // What bob's client may ask in all: its burst, then its pace.
    let bound = 20.0 + 5.0 * took.as_secs_f64() + 5.0;
    eprintln!(
        "STRANGER RESULT: {MESSAGES} messages under made-up and others' names in {took:?} \
         ({:?}); bob's own rounds (renew, whois, send) meanwhile: {rounds}, all succeeded; the \
         node answered {sender_checks} sender checks for bob (bound {bound:.0}), {lookups} resolves \
         of everyone's own, {own_limited} rate-limited",
        answers
    );
    assert!(
        sender_checks <= bound,
        "bob's client asked the node {sender_checks} times (bound {bound})"
    );
    assert_eq!(own_limited, 0.0, "nothing of anyone's was rate-limited");
    assert_eq!(answers.other.load(Ordering::Relaxed), 0, "{answers:?}");
    assert!(
        answers.mismatch.load(Ordering::Relaxed) > 0,
        "refused as not their name: {answers:?}"
    );
    // Nothing the stranger sent was shown.
    let shown = bob_online
        .stdout
        .drain()
        .iter()
        .filter(|l| l.contains("buy my coin"))
        .count();
    assert_eq!(shown, 0);
}
