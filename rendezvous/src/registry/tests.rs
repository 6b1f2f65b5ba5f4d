use super::*;
use crate::store::RedbStore;
use messenger_proto::Identity;
use messenger_proto::directory::{ErrorCode, Reply, Resolution};
use messenger_proto::presence::Presence;
use messenger_proto::record::Registration;

const NOW: u64 = 1_700_000_000_000;

/// The registry as the wire shows it: each outcome as the reply a session
/// sends (certificates aside), so that tests read like the protocol.
struct Wire(Registry<RedbStore>);

impl std::ops::Deref for Wire {
    type Target = Registry<RedbStore>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn reply<T>(result: Result<T, Refusal>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match result {
        Ok(value) => ok(value),
        Err(refusal) => Reply::error(refusal.code(), refusal.to_string()),
    }
}

impl Wire {
    fn register(
        &self,
        peer: PeerId,
        session: SessionId,
        signed: SignedRecord,
        visible_to: Vec<PeerId>,
        now: u64,
    ) -> Reply {
        let key = PeerKey::of(peer);
        let signer = Signer {
            peer,
            key: key.as_ref(),
        };
        let registered =
            futures::executor::block_on(self.0.register(signer, session, signed, visible_to, now));
        reply(registered, |r| Reply::Registered {
            name: r.name,
            new_claim: r.new_claim,
            expires_at: r.expires_at,
            certificate: None,
        })
    }

    fn resolve(&self, raw: &str, viewer: PeerId, now: u64) -> Reply {
        reply(self.0.resolve(raw, viewer, now), Reply::Resolved)
    }

    fn resolve_peer(&self, peer_id: PeerId, viewer: PeerId, now: u64) -> Reply {
        reply(self.0.resolve_peer(peer_id, viewer, now), |names| {
            Reply::Names { peer_id, names }
        })
    }

    fn watch(&self, session: SessionId, raw: &[String]) -> Reply {
        reply(self.0.watch(session, raw), |watched| Reply::Watching {
            watched,
        })
    }

    fn unwatch(&self, session: SessionId, raw: &[String]) -> Reply {
        reply(self.0.unwatch(session, raw), |watched| Reply::Unwatched {
            watched,
        })
    }

    fn release(&self, peer: PeerId, raw: &str) -> Reply {
        reply(self.0.release(peer, raw), |name| Reply::Released { name })
    }
}

fn registry() -> (tempfile::TempDir, Wire) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("claims.redb")).unwrap();
    (dir, Wire(Registry::new(Arc::new(store))))
}

fn record_with(id: &Identity, name: &str, seq: u64, status: Status, text: &str) -> SignedRecord {
    Registration {
        name: ScreenName::parse(name).unwrap(),
        peer_id: id.peer_id(),
        addrs: vec!["/ip4/127.0.0.1/tcp/5000".parse().unwrap()],
        seq,
        expires_at: NOW + 60_000,
        status,
        status_text: text.into(),
    }
    .sign(id)
}

fn record(id: &Identity, name: &str, seq: u64) -> SignedRecord {
    record_with(id, name, seq, Status::Online, "")
}

fn code(reply: Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(code),
        _ => None,
    }
}

fn resolved(reg: &Wire, name: &str, viewer: PeerId, now: u64) -> Resolution {
    match reg.resolve(name, viewer, now) {
        Reply::Resolved(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn register_resolve_and_go_offline() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let viewer = PeerId::random();
    let reply = reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    assert!(
        matches!(
            reply,
            Reply::Registered {
                new_claim: true,
                ..
            }
        ),
        "{reply:?}"
    );
    let res = resolved(&reg, "ALICE", viewer, NOW);
    assert_eq!(res.presence, Presence::Online);
    assert_eq!(res.owner, alice.peer_id());
    let rec = res.verified_record(NOW).unwrap().unwrap();
    assert_eq!(rec.addrs.len(), 1);

    reg.session_ended(1, NOW + 5);
    let res = resolved(&reg, "alice", viewer, NOW + 10);
    assert_eq!(res.presence, Presence::Offline);
    assert!(res.record.is_none());
    assert_eq!(res.last_seen, Some(NOW + 5));
}

#[test]
fn name_taken_wrong_peer_and_forgery() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let mallory = Identity::from_seed([2; 32]);
    reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    // Another key claims the name.
    assert_eq!(
        code(reg.register(
            mallory.peer_id(),
            2,
            record(&mallory, "alice", 9),
            vec![],
            NOW
        )),
        Some(ErrorCode::NameTaken)
    );
    // Mallory relays Alice's genuine record on her own connection.
    assert_eq!(
        code(reg.register(
            mallory.peer_id(),
            2,
            record(&alice, "alice", 2),
            vec![],
            NOW
        )),
        Some(ErrorCode::WrongPeer)
    );
    // Mallory signs a record naming Alice's peer id.
    let forged = Registration {
        name: ScreenName::parse("alice").unwrap(),
        peer_id: alice.peer_id(),
        addrs: vec![],
        seq: 5,
        expires_at: NOW + 1000,
        status: Status::Online,
        status_text: String::new(),
    }
    .sign(&mallory);
    assert_eq!(
        code(reg.register(alice.peer_id(), 2, forged, vec![], NOW)),
        Some(ErrorCode::BadSignature)
    );
    assert_eq!(
        resolved(&reg, "alice", PeerId::random(), NOW).owner,
        alice.peer_id()
    );
}

#[test]
fn sequence_must_grow_within_and_across_sessions() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let p = alice.peer_id();
    assert!(code(reg.register(p, 1, record(&alice, "alice", 5), vec![], NOW)).is_none());
    assert_eq!(
        code(reg.register(p, 1, record(&alice, "alice", 5), vec![], NOW)),
        Some(ErrorCode::StaleSequence)
    );
    assert!(code(reg.register(p, 1, record(&alice, "alice", 6), vec![], NOW)).is_none());
    reg.session_ended(1, NOW);
    assert_eq!(
        code(reg.register(p, 2, record(&alice, "alice", 4), vec![], NOW)),
        Some(ErrorCode::StaleSequence)
    );
}

#[test]
fn expiry_bounds_records() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    let res = resolved(&reg, "alice", PeerId::random(), NOW + 60_001);
    assert_eq!(res.presence, Presence::Offline);
    assert_eq!(reg.sweep(NOW + 60_001), 1);
    assert_eq!(reg.online_count(), 0);
    let far = Registration {
        name: ScreenName::parse("alice").unwrap(),
        peer_id: alice.peer_id(),
        addrs: vec![],
        seq: 9,
        expires_at: NOW + 2 * MAX_RECORD_TTL_MS,
        status: Status::Online,
        status_text: String::new(),
    }
    .sign(&alice);
    assert_eq!(
        code(reg.register(alice.peer_id(), 1, far, vec![], NOW)),
        Some(ErrorCode::BadExpiry)
    );
}

#[test]
fn unknown_invalid_release_and_reverse_lookup() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let mallory = Identity::from_seed([2; 32]);
    let viewer = PeerId::random();
    assert_eq!(
        code(reg.resolve("nobody", viewer, NOW)),
        Some(ErrorCode::NoSuchName)
    );
    assert_eq!(
        code(reg.resolve("9x", viewer, NOW)),
        Some(ErrorCode::InvalidName)
    );
    reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    assert_eq!(
        reg.resolve_peer(alice.peer_id(), viewer, NOW),
        Reply::Names {
            peer_id: alice.peer_id(),
            names: vec![ScreenName::parse("alice").unwrap()]
        }
    );
    // Unknown peers and peers without a current registration get the
    // same answer: the directory cannot be walked by peer id.
    assert_eq!(
        code(reg.resolve_peer(mallory.peer_id(), viewer, NOW)),
        Some(ErrorCode::NoSuchName)
    );
    reg.session_ended(1, NOW + 1);
    assert_eq!(
        code(reg.resolve_peer(alice.peer_id(), viewer, NOW + 2)),
        Some(ErrorCode::NoSuchName)
    );
    assert_eq!(
        code(reg.release(mallory.peer_id(), "alice")),
        Some(ErrorCode::NotOwner)
    );
    assert!(matches!(
        reg.release(alice.peer_id(), "alice"),
        Reply::Released { .. }
    ));
    assert_eq!(
        code(reg.resolve("alice", viewer, NOW)),
        Some(ErrorCode::NoSuchName)
    );
}

#[test]
fn a_name_unused_past_its_lease_goes_to_the_next_key() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let bob = Identity::from_seed([3; 32]);
    let mallory = Identity::from_seed([2; 32]);
    let day = 24 * 60 * 60 * 1000;
    let lease = std::time::Duration::from_secs(180 * 24 * 60 * 60);
    reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    reg.register(bob.peer_id(), 2, record(&bob, "bob", 1), vec![], NOW);
    reg.session_ended(1, NOW + 1);
    // Bob stays online (renewing in his session) for the whole time.
    let later = NOW + 181 * day;
    assert_eq!(reg.release_unused(lease, later), 1);
    assert_eq!(
        code(reg.resolve("alice", mallory.peer_id(), later)),
        Some(ErrorCode::NoSuchName)
    );
    assert!(matches!(
        reg.resolve("bob", mallory.peer_id(), later),
        Reply::Resolved(_)
    ));
    let taken = Registration {
        name: ScreenName::parse("alice").unwrap(),
        peer_id: mallory.peer_id(),
        addrs: vec![],
        seq: 1,
        expires_at: later + 60_000,
        status: Status::Online,
        status_text: String::new(),
    };
    assert!(matches!(
        reg.register(mallory.peer_id(), 3, taken.sign(&mallory), vec![], later),
        Reply::Registered {
            new_claim: true,
            ..
        }
    ));
}

#[test]
fn one_key_holds_a_bounded_number_of_names() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    for (i, n) in ["alice", "alice2", "alice3"].iter().enumerate() {
        assert!(matches!(
            reg.register(alice.peer_id(), i as u64, record(&alice, n, 1), vec![], NOW),
            Reply::Registered { .. }
        ));
    }
    assert_eq!(
        code(reg.register(alice.peer_id(), 9, record(&alice, "alice4", 1), vec![], NOW)),
        Some(ErrorCode::LimitExceeded)
    );
}

#[test]
fn watchers_get_each_change_once_and_nothing_after_unwatch() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let queue = reg.open_session(7);
    assert!(matches!(
        reg.watch(7, &["Alice".into()]),
        Reply::Watching { watched: 1 }
    ));
    // The current state is pushed on watch (alice is unclaimed: the
    // session writer skips names nobody owns).
    assert_eq!(queue.take(), vec![ScreenName::parse("alice").unwrap()]);

    reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    reg.register(
        alice.peer_id(),
        1,
        record_with(&alice, "alice", 2, Status::Away, "back at 3"),
        vec![],
        NOW,
    );
    // Two changes before the writer ran: one push, coalesced.
    assert_eq!(queue.take().len(), 1);
    let res = reg
        .view(&ScreenName::parse("alice").unwrap(), PeerId::random(), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(
        (res.presence, res.status_text.as_str()),
        (Presence::Away, "back at 3")
    );

    // A renewal that changes nothing shown is not pushed.
    reg.register(
        alice.peer_id(),
        1,
        record_with(&alice, "alice", 3, Status::Away, "back at 3"),
        vec![],
        NOW,
    );
    assert!(queue.take().is_empty());

    reg.session_ended(1, NOW + 1);
    assert_eq!(queue.take().len(), 1, "going offline is pushed");

    reg.unwatch(7, &["alice".into()]);
    reg.register(
        alice.peer_id(),
        2,
        record(&alice, "alice", 9),
        vec![],
        NOW + 2,
    );
    assert!(queue.take().is_empty());
    reg.session_ended(7, NOW);
}

#[test]
fn watch_limits() {
    let (_dir, reg) = registry();
    reg.open_session(1);
    let many: Vec<String> = (0..=MAX_WATCH_PER_REQUEST)
        .map(|i| format!("name{i}"))
        .collect();
    assert_eq!(code(reg.watch(1, &many)), Some(ErrorCode::LimitExceeded));
    assert_eq!(
        code(reg.watch(1, &["9bad".into()])),
        Some(ErrorCode::InvalidName)
    );
    for chunk in 0..(MAX_WATCHED / MAX_WATCH_PER_REQUEST) {
        let names: Vec<String> = (0..MAX_WATCH_PER_REQUEST)
            .map(|i| format!("n{chunk}x{i}"))
            .collect();
        assert!(code(reg.watch(1, &names)).is_none());
    }
    assert_eq!(
        code(reg.watch(1, &["onemore".into()])),
        Some(ErrorCode::LimitExceeded)
    );
}

#[test]
fn invisible_shows_offline_but_named_peers_can_still_dial() {
    let (_dir, reg) = registry();
    let alice = Identity::from_seed([1; 32]);
    let (friend, stranger) = (PeerId::random(), PeerId::random());
    reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), vec![], NOW);
    reg.session_ended(1, NOW + 10);
    reg.register(
        alice.peer_id(),
        2,
        record_with(&alice, "alice", 2, Status::Invisible, "secret"),
        vec![friend],
        NOW + 20,
    );
    for viewer in [friend, stranger] {
        let res = resolved(&reg, "alice", viewer, NOW + 30);
        assert_eq!(res.presence, Presence::Offline);
        assert_eq!(res.status_text, "");
        assert_eq!(res.last_seen, Some(NOW + 10), "last seen is from before");
        assert_eq!(res.record.is_some(), viewer == friend);
    }
    // Leaving while invisible does not reveal when.
    reg.session_ended(2, NOW + 40);
    assert_eq!(
        resolved(&reg, "alice", stranger, NOW + 50).last_seen,
        Some(NOW + 10)
    );
}
