//! What a stranger can make a user spend: keys with no name of their own,
//! driven in-process with the library, against the real node and client
//! processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use messenger::chat::{ChatLink, DeliveryError};
use messenger::proto::chat::RejectCode;

use crate::metrics::{node_metrics_url, scrape};
use crate::support::{Node, User};
use messenger::testing::Key;

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
    // look-ups and sends to a contact, each of which must succeed; a
    // round of the three, timed, before the stranger starts and during.
    let round = |bob: &User, i: usize| {
        let started = Instant::now();
        bob.ok(&["register", "bob"]);
        bob.ok(&["whois", "alice"]);
        bob.ok(&["send", "alice", &format!("still here {i}")]);
        started.elapsed()
    };
    let mut idle: Vec<Duration> = (0..5).map(|i| round(&bob, i)).collect();
    idle.sort();
    let attacking = Arc::new(AtomicBool::new(true));
    let user = {
        let attacking = attacking.clone();
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while attacking.load(Ordering::Relaxed) || took.len() < 3 {
                took.push(round(&bob, took.len()));
                // A busy user, well within his own budget at the node.
                std::thread::sleep(Duration::from_millis(250));
            }
            took
        })
    };

    const MESSAGES: u64 = 2_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answers = Arc::new(Answers::default());
    let started = Instant::now();
    runtime.block_on(async {
        let stranger = Key::new(&node_addr).await;
        let bob = stranger.reach("bob").await.peer_id;
        let stranger = Arc::new(stranger);
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
                            link = stranger.link(bob).await;
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
    let mut rounds = user
        .join()
        .expect("every one of bob's own requests succeeded");
    rounds.sort();

    let scraped = scrape(&metrics);
    let requests = "rendezvous_directory_requests_total";
    let sender_checks = scraped.sum_matching(requests, "op=\"resolve_sender\"");
    let lookups = scraped.sum_matching(requests, "op=\"resolve\"");
    let own_limited = scraped.sum_matching(requests, "result=\"rate_limited\"");
    // What bob's client may ask in all: its burst, then its pace.
    let bound = 20.0 + 5.0 * took.as_secs_f64() + 5.0;
    eprintln!(
        "STRANGER RESULT: {MESSAGES} messages under made-up and others' names in {took:?} \
         ({:?}); bob's own rounds (renew, whois, send) meanwhile: {}, all succeeded, median {:?} \
         against {:?} before; the node answered {sender_checks} sender checks for bob (bound \
         {bound:.0}), {lookups} resolves of everyone's own, {own_limited} rate-limited",
        answers,
        rounds.len(),
        rounds[rounds.len() / 2],
        idle[idle.len() / 2]
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

/// A stranger with a name of its own (so that its messages pass every
/// check but the allowance), connected to `victim`: the key, and the
/// victim's.
async fn named_stranger(node: &Multiaddr, name: &str, victim: &str) -> (Key, PeerId) {
    let key = Key::named(node, name, "").await;
    let victim = key.reach(victim).await.peer_id;
    (key, victim)
}

/// The store file's allocated bytes.
fn store_bytes(home: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(home.join("messenger.redb"))
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[test]
fn strangers_filling_the_disk_get_an_allowance_and_contacts_get_through() {
    const STRANGERS: usize = 20;
    const EACH: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let alice = User::new(&node);
    let bob = User::new(&node);
    alice.register("alice");
    bob.register("bob");
    bob.ok(&["contacts", "add", "alice"]);
    let mut bob_online = bob.online();
    let before = store_bytes(bob.home.path());
    let node_addr: Multiaddr = node.addr.parse().unwrap();

    // Alice, a contact, writes all along; each of hers must arrive.
    let mut idle: Vec<Duration> = (0..5)
        .map(|i| {
            let started = Instant::now();
            alice.ok(&["send", "bob", &format!("before {i}")]);
            started.elapsed()
        })
        .collect();
    idle.sort();
    let flooding = Arc::new(AtomicBool::new(true));
    let contact = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while flooding.load(Ordering::Relaxed) || took.len() < 3 {
                let started = Instant::now();
                alice.ok(&["send", "bob", &format!("from a contact {}", took.len())]);
                took.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(200));
            }
            took
        })
    };

    let text = "s".repeat(messenger::proto::chat::MAX_TEXT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let (kept, refused, other) = runtime.block_on(async {
        let tallies = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for i in 0..STRANGERS {
            let (stranger, bob) = named_stranger(&node_addr, &format!("spam{i:02}"), "bob").await;
            let (tallies, text) = (tallies.clone(), text.clone());
            tasks.push(tokio::spawn(async move {
                let from = format!("spam{i:02}");
                let mut link: Option<ChatLink> = None;
                for _ in 0..EACH {
                    let (id, signed) = stranger.message(&from, "bob", &text);
                    // A stream closed under a message (the last one was
                    // refused, and closed) is no answer: tried again.
                    for attempt in 0.. {
                        if attempt == 10 {
                            tallies.2.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if link.as_ref().is_none_or(ChatLink::is_closed) {
                            link = stranger.link(bob).await;
                        }
                        let Some(open) = &link else { continue };
                        match open.deliver(id, signed.clone()).await {
                            Ok(()) => tallies.0.fetch_add(1, Ordering::Relaxed),
                            Err(DeliveryError::Rejected(RejectCode::RequestsFull)) => {
                                tallies.1.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(DeliveryError::ConnectionLost) if attempt < 5 => {
                                link = None;
                                continue;
                            }
                            Err(_) => tallies.2.fetch_add(1, Ordering::Relaxed),
                        };
                        break;
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        (
            tallies.0.load(Ordering::Relaxed),
            tallies.1.load(Ordering::Relaxed),
            tallies.2.load(Ordering::Relaxed),
        )
    });
    let took = started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let mut sends = contact
        .join()
        .expect("every message of alice's was delivered");
    sends.sort();
    let grew = store_bytes(bob.home.path()).saturating_sub(before);
    let requests = bob.ok(&["--json", "requests"]).stdout;
    let listed: Vec<serde_json::Value> = requests
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let waiting: u64 = listed
        .iter()
        .map(|r| r["messages"].as_u64().unwrap_or(0))
        .sum();
    let bound = 32.0 * 1.5 + 4.0;
    eprintln!(
        "REQUESTS RESULT: {STRANGERS} strangers x {EACH} messages of 64 KiB in {took:?}: {kept} \
         taken in, {refused} refused as requests_full, {other} otherwise; {waiting} waiting from \
         {} senders; bob's store grew {:.1} MiB (bound {bound} MiB); alice's {} sends all \
         delivered, median {:?} against {:?} before",
        listed.len(),
        grew as f64 / (1 << 20) as f64,
        sends.len(),
        sends[sends.len() / 2],
        idle[idle.len() / 2]
    );
    assert_eq!(kept, waiting, "what was taken in is what is waiting");
    assert!(
        (100..=500).contains(&kept),
        "the allowance, no more: {kept}"
    );
    assert_eq!(kept + refused, STRANGERS as u64 * EACH, "{other} otherwise");
    assert!(
        (grew as f64) < bound * (1 << 20) as f64,
        "the store grew by {grew} bytes"
    );
    // Bob was told, as it happened.
    bob_online.stdout.expect("the requests told", |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["event"] == "requests" && v["messages"].as_u64() == Some(kept))
    });
    // Declining them all removes what they sent.
    bob.ok(&["requests", "decline", "--all"]);
    let left = bob.ok(&["--json", "requests"]).stdout;
    assert!(left.trim().is_empty(), "{left}");
}
