use libp2p::PeerId;
use messenger_proto::chat::{Message, MessageId};
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use messenger_proto::signed::Signed;

use super::*;

fn name(s: &str) -> ScreenName {
    ScreenName::parse(s).unwrap()
}

fn msg(from: &str, to: &str, text: &str) -> Message {
    Message {
        id: MessageId::random(),
        from: name(from),
        to: name(to),
        sent_at: 1,
        text: text.into(),
        file: None,
        invite: None,
    }
}

#[test]
fn outbox_keeps_order_and_delivered_messages_leave_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
    let (a, _) = store.add_outgoing(msg("mine", "bob", "1"), 1).unwrap();
    let (b, _) = store.add_outgoing(msg("mine", "carol", "x"), 1).unwrap();
    let (c, _) = store.add_outgoing(msg("mine", "bob", "2"), 1).unwrap();
    let bob: Vec<_> = store
        .outbox(Some(&name("bob")))
        .unwrap()
        .iter()
        .map(|m| m.message.text.clone())
        .collect();
    assert_eq!(bob, ["1", "2"]);
    assert_eq!(store.outbox(None).unwrap().len(), 3);

    store
        .set_state(&[a.message.id], MessageState::Sent, None, None, 2)
        .unwrap();
    store
        .set_state(&[a.message.id], MessageState::Delivered, None, None, 3)
        .unwrap();
    store
        .set_state(
            &[b.message.id],
            MessageState::Failed,
            Some("not delivered"),
            None,
            3,
        )
        .unwrap();
    // A late failure does not undo a delivery.
    assert!(
        store
            .set_state(&[a.message.id], MessageState::Failed, None, None, 4)
            .unwrap()
            .is_empty()
    );
    let left: Vec<_> = store
        .outbox(None)
        .unwrap()
        .iter()
        .map(|m| m.message.id)
        .collect();
    assert_eq!(left, [c.message.id]);
    let h = store.history(&name("bob"), 10, None).unwrap();
    assert_eq!(
        h.iter().map(|m| m.state).collect::<Vec<_>>(),
        [MessageState::Delivered, MessageState::Queued]
    );
    assert_eq!(
        store
            .message(&b.message.id)
            .unwrap()
            .unwrap()
            .error
            .as_deref(),
        Some("not delivered")
    );
}

fn signed(m: &Message) -> Signed {
    use messenger_proto::signed::MESSAGE_CONTEXT;
    Signed::sign(
        &messenger_proto::Identity::from_seed([3; 32]),
        MESSAGE_CONTEXT,
        m,
    )
}

#[test]
fn unread_counts_follow_checked_messages_survive_reopening_and_clear_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let counts = |store: &Store| -> Vec<(String, u64)> {
        let all = store.unread_counts().unwrap();
        all.into_iter()
            .map(|u| (u.name.to_string(), u.count))
            .collect()
    };
    {
        let store = Store::open(&path, false).unwrap();
        assert!(receive(&store, &msg("alice", "mine", "1"), 1));
        assert!(receive(&store, &msg("alice", "mine", "2"), 2));
        assert!(receive(&store, &msg("carol", "mine", "x"), 3));
        // Mine count nothing, nor one whose signature is not checked.
        store.add_outgoing(msg("mine", "alice", "r"), 4).unwrap();
        let unchecked = msg("alice", "mine", "?");
        let signature = signed(&unchecked);
        store
            .add_incoming(&unchecked, signature, PeerId::random(), 5)
            .unwrap();
        assert_eq!(store.unread(&name("alice")).unwrap(), 2);
    }
    let store = Store::open(&path, true).unwrap();
    assert_eq!(counts(&store), [("alice".into(), 2), ("carol".into(), 1)]);
    assert!(store.mark_read(&name("alice")).unwrap());
    assert!(!store.mark_read(&name("alice")).unwrap(), "nothing left");
    assert_eq!(store.unread(&name("alice")).unwrap(), 0);

    // A declined request takes its count with it.
    let stranger = msg("mallory", "mine", "hi");
    let limits = RequestLimits::default();
    let signature = signed(&stranger);
    store
        .receive(&stranger, signature, PeerId::random(), 6, Some(&limits))
        .unwrap();
    store.settle_incoming(&stranger.id, true, 6).unwrap();
    assert_eq!(store.unread(&name("mallory")).unwrap(), 1);
    store.decline_requests(Some(&name("mallory"))).unwrap();
    assert_eq!(counts(&store), [("carol".into(), 1)]);
}

/// Keeps a received message and settles it as checked.
fn receive(store: &Store, m: &Message, now: u64) -> bool {
    let kept = store
        .add_incoming(m, signed(m), PeerId::random(), now)
        .unwrap();
    if kept.is_some() {
        assert!(store.settle_incoming(&m.id, true, now).unwrap().is_some());
    }
    kept.is_some()
}

#[test]
fn incoming_duplicates_are_dropped_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let m = msg("alice", "mine", "hi");
    {
        let store = Store::open(&path, false).unwrap();
        assert!(receive(&store, &m, 1));
        assert!(!receive(&store, &m, 2));
        // Only one process may hold the store.
        assert!(matches!(
            Store::open(&path, true),
            Err(StoreError::InUse(_))
        ));
    }
    let store = Store::open(&path, false).unwrap();
    assert!(!receive(&store, &m, 3));
    let h = store.history(&name("alice"), 10, None).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].direction, Direction::In);
    assert_eq!(h[0].signed, Some(signed(&m)), "kept as signed");
}

#[test]
fn a_received_message_is_shown_only_once_its_signature_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (good, bad) = (msg("alice", "mine", "good"), msg("alice", "mine", "bad"));
    {
        let store = Store::open(&path, false).unwrap();
        for m in [&good, &bad] {
            store
                .add_incoming(m, signed(m), PeerId::random(), 1)
                .unwrap()
                .unwrap();
        }
        assert!(store.history(&name("alice"), 10, None).unwrap().is_empty());
    }
    // Kept across a restart, still waiting for its check.
    let store = Store::open(&path, true).unwrap();
    let waiting: Vec<MessageId> = store
        .unverified()
        .unwrap()
        .iter()
        .map(|m| m.message.id)
        .collect();
    assert_eq!(waiting, [good.id, bad.id]);
    let shown = store.settle_incoming(&good.id, true, 2).unwrap().unwrap();
    assert_eq!(shown.state, MessageState::Received);
    assert!(store.settle_incoming(&bad.id, false, 2).unwrap().is_none());
    assert!(
        store.settle_incoming(&good.id, true, 3).unwrap().is_none(),
        "once"
    );
    let h = store.history(&name("alice"), 10, None).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].message.text, "good");
    assert!(store.unverified().unwrap().is_empty());
    assert!(
        store.message(&bad.id).unwrap().is_none(),
        "a forgery leaves no trace"
    );
}

#[test]
fn history_limit_takes_the_latest_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
    for i in 0..5 {
        store
            .add_outgoing(msg("mine", "bob", &format!("out{i}")), 1)
            .unwrap();
        receive(&store, &msg("bob", "mine", &format!("in{i}")), 1);
    }
    let h = store.history(&name("bob"), 3, None).unwrap();
    let texts: Vec<_> = h.iter().map(|m| m.message.text.as_str()).collect();
    assert_eq!(texts, ["in3", "out4", "in4"]);
    // Paging back from the oldest shown reaches the start, and no further.
    let mut pages = Vec::new();
    let mut before = h[0].seq;
    loop {
        let page = store.history(&name("bob"), 3, Some(before)).unwrap();
        let Some(first) = page.first() else { break };
        before = first.seq;
        pages.push(
            page.iter()
                .map(|m| m.message.text.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        pages,
        [
            vec!["out2", "in2", "out3"],
            vec!["in0", "out1", "in1"],
            vec!["out0"]
        ]
    );
}

#[test]
fn contacts_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), false).unwrap();
    let c = Contact {
        name: name("bob"),
        pinned: PeerId::random(),
        added_at: 1,
        key_changed_to: None,
        auto_accept_below: None,
    };
    store.put_contact(&c).unwrap();
    assert_eq!(store.contact(&name("bob")).unwrap(), Some(c));
    assert!(store.remove_contact(&name("bob")).unwrap());
    assert!(store.contacts().unwrap().is_empty());
    assert!(store.set_blocked(&name("eve"), true, 1).unwrap());
    assert!(store.blocked().unwrap().contains(&name("eve")));
    assert_eq!(store.blocked().unwrap(), vec![name("eve")]);
    assert!(store.set_blocked(&name("eve"), false, 1).unwrap());
    assert!(store.blocked().unwrap().is_empty());
}

mod legacy {
    use super::*;

    #[test]
    fn records_written_before_bodies_were_kept_apart_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, false).unwrap();
        let message = Message {
            id: MessageId::random(),
            from: ScreenName::parse("bob").unwrap(),
            to: ScreenName::parse("alice").unwrap(),
            sent_at: 1,
            text: "from an older version".into(),
            file: None,
            invite: None,
        };
        let old = StoredMessage {
            seq: 1,
            message: message.clone(),
            direction: Direction::In,
            state: MessageState::Received,
            updated_at: 1,
            error: None,
            peer_id: None,
            signed: None,
        };
        store
            .write(|txn| {
                txn.open_table(HISTORY)?
                    .insert(("bob", 1), codec::to_cbor(&old).as_slice())?;
                txn.open_table(BY_ID)?
                    .insert(message.id.0.as_slice(), ("bob", 1))?;
                Ok(())
            })
            .unwrap();
        drop(store);
        // Opening reads every record through; both ways of reading agree.
        let store = Store::open(&path, true).unwrap();
        assert_eq!(
            store.history(&message.from, 10, None).unwrap(),
            std::slice::from_ref(&old)
        );
        assert_eq!(store.message(&message.id).unwrap(), Some(old));
    }
}

mod room {
    //! What the store takes on disk for what it keeps.
    use super::*;
    use messenger_proto::Identity;
    use messenger_proto::signed::MESSAGE_CONTEXT;
    use std::os::unix::fs::MetadataExt;

    /// Bytes the file takes on disk (allocated blocks), and its length.
    fn on_disk(path: &Path) -> (u64, u64) {
        let meta = std::fs::metadata(path).unwrap();
        (meta.blocks() * 512, meta.len())
    }

    /// Receives `n` messages of `len` bytes of text (kept, acknowledged,
    /// then verified: the path every received message takes); returns
    /// how much the file grew on disk, per byte of text kept.
    fn growth_per_byte(n: usize, len: usize) -> (f64, f64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, false).unwrap();
        let (before, before_len) = on_disk(&path);
        let sender = Identity::generate().unwrap();
        let text: String = "x".repeat(len);
        for i in 0..n {
            let message = Message {
                id: MessageId::random(),
                from: ScreenName::parse(&format!("sender{}", i % 20)).unwrap(),
                to: ScreenName::parse("myself").unwrap(),
                sent_at: 1,
                text: text.clone(),
                file: None,
                invite: None,
            };
            let signed = Signed::sign(&sender, MESSAGE_CONTEXT, &message);
            store
                .add_incoming(&message, signed, sender.peer_id(), 1)
                .unwrap()
                .unwrap();
            store
                .settle_incoming(&message.id, true, 2)
                .unwrap()
                .unwrap();
        }
        drop(store);
        let (after, after_len) = on_disk(&path);
        let kept = (n * len) as f64;
        (
            (after - before) as f64 / kept,
            (after_len - before_len) as f64 / kept,
        )
    }

    #[test]
    fn received_messages_take_about_their_size_on_disk() {
        let (large, large_len) = growth_per_byte(300, 64 * 1024);
        let (small, small_len) = growth_per_byte(2_000, 100);
        eprintln!(
            "STORE RESULT: 64 KiB messages: {large:.2}x on disk ({large_len:.2}x file length); \
             100-byte messages: {small:.2}x ({small_len:.2}x)"
        );
        assert!(large <= 1.5, "64 KiB messages take {large:.2}x their size");
    }
}
