//! The directory's state and rules, apart from the network.
//!
//! Durable claims live in a [`ClaimStore`]; addresses and presence are live
//! state tied to the session that registered them. Every method is plain
//! synchronous code that the session tasks call, and that unit tests call
//! directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use messenger_proto::directory::{ErrorCode, MAX_RECORD_TTL_MS, Reply, Resolution};
use messenger_proto::name::ScreenName;
use messenger_proto::record::{RecordError, SignedRecord};
use messenger_proto::signed::SignedError;
use tracing::{info, warn};

use crate::store::{ClaimOutcome, ClaimStore, StoreError};

/// Identifies one directory session (one stream) for the node's lifetime.
pub type SessionId = u64;

/// Tolerated clock skew between a client and the node, in ms.
const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// A live registration: where the owner is now.
#[derive(Debug, Clone)]
struct Live {
    owner: PeerId,
    record: SignedRecord,
    seq: u64,
    expires_at: u64,
    session: SessionId,
}

#[derive(Debug, Default)]
struct LiveState {
    by_name: HashMap<ScreenName, Live>,
    /// Last seen of names that went offline while this node ran.
    last_seen: HashMap<ScreenName, u64>,
}

/// The directory: durable claims plus live presence.
#[derive(Debug)]
pub struct Registry<S> {
    store: Arc<S>,
    live: Mutex<LiveState>,
}

impl<S: ClaimStore> Registry<S> {
    /// A registry over `store`, with nobody online.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            live: Mutex::new(LiveState::default()),
        }
    }

    fn live(&self) -> MutexGuard<'_, LiveState> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Handles a registration from `peer` on `session`. May block on disk.
    pub fn register(
        &self,
        peer: PeerId,
        session: SessionId,
        signed: SignedRecord,
        now: u64,
    ) -> Reply {
        let record = match signed.open() {
            Ok(record) => record,
            Err(RecordError::Signed(SignedError::Malformed(e))) => {
                return Reply::error(ErrorCode::Malformed, format!("record payload: {e}"));
            }
            Err(RecordError::Signed(e)) => {
                return Reply::error(
                    ErrorCode::BadSignature,
                    format!("{e}: a record must be signed by the key of the peer id it names"),
                );
            }
            Err(e) => return Reply::error(ErrorCode::InvalidRecord, e.to_string()),
        };
        if record.peer_id != peer {
            return Reply::error(
                ErrorCode::WrongPeer,
                format!(
                    "the record names peer {} but this connection is peer {peer}; a peer registers only itself",
                    record.peer_id
                ),
            );
        }
        if record.expires_at <= now || record.expires_at > now + MAX_RECORD_TTL_MS + CLOCK_SKEW_MS {
            return Reply::error(
                ErrorCode::BadExpiry,
                format!(
                    "the record expires at {} ms but the node's clock says {now} ms; expiry must be in the future and at most {} hours ahead (check your clock)",
                    record.expires_at,
                    MAX_RECORD_TTL_MS / 3_600_000
                ),
            );
        }
        let name = record.name.clone();

        // A renewal within the same session is checked and kept in memory;
        // the first registration of a session goes to disk.
        let renewal = {
            let live = self.live();
            match live.by_name.get(&name) {
                Some(l) if l.owner == peer && l.session == session => {
                    if record.seq <= l.seq {
                        return stale(&name, record.seq, l.seq);
                    }
                    true
                }
                _ => false,
            }
        };
        let mut new_claim = false;
        if !renewal {
            match self.store.claim(&name, peer, record.seq, now) {
                Ok(ClaimOutcome::Created(_)) => {
                    info!(%name, %peer, "name claimed");
                    new_claim = true;
                }
                Ok(ClaimOutcome::Renewed(_)) => {}
                Ok(ClaimOutcome::Taken(_)) => {
                    return Reply::error(
                        ErrorCode::NameTaken,
                        format!("name taken: {name} is owned by another key"),
                    );
                }
                Ok(ClaimOutcome::Stale(claim)) => return stale(&name, record.seq, claim.seq),
                Err(e) => return internal(e),
            }
        }

        let expires_at = record.expires_at;
        let mut live = self.live();
        live.last_seen.remove(&name);
        live.by_name.insert(
            name.clone(),
            Live {
                owner: peer,
                record: signed,
                seq: record.seq,
                expires_at,
                session,
            },
        );
        Reply::Registered {
            name,
            new_claim,
            expires_at,
        }
    }

    /// Looks a name up.
    pub fn resolve(&self, raw: &str, now: u64) -> Reply {
        let name = match ScreenName::parse(raw) {
            Ok(name) => name,
            Err(e) => return Reply::error(ErrorCode::InvalidName, e.to_string()),
        };
        let claim = match self.store.get(&name) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                return Reply::error(ErrorCode::NoSuchName, format!("no such name: {name}"));
            }
            Err(e) => return internal(e),
        };
        let live = self.live();
        let current = live
            .by_name
            .get(&name)
            .filter(|l| l.owner == claim.owner && l.expires_at > now);
        let last_seen = match current {
            Some(_) => Some(now),
            None => live.last_seen.get(&name).copied().or(claim.last_seen),
        };
        Reply::Resolved(Resolution {
            name,
            owner: claim.owner,
            online: current.is_some(),
            last_seen,
            record: current.map(|l| l.record.clone()),
        })
    }

    /// The names a peer owns.
    pub fn resolve_peer(&self, peer_id: PeerId) -> Reply {
        match self.store.names_of(&peer_id) {
            Ok(names) => Reply::Names { peer_id, names },
            Err(e) => internal(e),
        }
    }

    /// Gives a name up, if `peer` owns it. May block on disk.
    pub fn release(&self, peer: PeerId, raw: &str) -> Reply {
        let name = match ScreenName::parse(raw) {
            Ok(name) => name,
            Err(e) => return Reply::error(ErrorCode::InvalidName, e.to_string()),
        };
        match self.store.get(&name) {
            Ok(None) => {
                return Reply::error(ErrorCode::NoSuchName, format!("no such name: {name}"));
            }
            Ok(Some(claim)) if claim.owner != peer => {
                return Reply::error(
                    ErrorCode::NotOwner,
                    format!("{name} is owned by another key; only its owner may release it"),
                );
            }
            Ok(Some(_)) => {}
            Err(e) => return internal(e),
        }
        match self.store.release(&name, &peer) {
            Ok(true) => {
                let mut live = self.live();
                live.by_name.remove(&name);
                live.last_seen.remove(&name);
                info!(%name, %peer, "name released");
                Reply::Released { name }
            }
            Ok(false) => Reply::error(
                ErrorCode::NotOwner,
                format!("{name} is not owned by this key"),
            ),
            Err(e) => internal(e),
        }
    }

    /// The session ended: everything it registered goes offline. May block on disk.
    pub fn session_ended(&self, session: SessionId, now: u64) {
        let gone: Vec<ScreenName> = {
            let mut live = self.live();
            let gone: Vec<_> = live
                .by_name
                .iter()
                .filter(|(_, l)| l.session == session)
                .map(|(n, _)| n.clone())
                .collect();
            for name in &gone {
                live.by_name.remove(name);
                live.last_seen.insert(name.clone(), now);
            }
            gone
        };
        for name in gone {
            info!(%name, "offline");
            if let Err(e) = self.store.set_last_seen(&name, now) {
                warn!(%name, "cannot record last seen: {e}");
            }
        }
    }

    /// Drops registrations whose record expired. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut live = self.live();
        let expired: Vec<ScreenName> = live
            .by_name
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &expired {
            live.by_name.remove(name);
            live.last_seen.insert(name.clone(), now);
        }
        expired.len()
    }

    /// Everyone goes offline (the node is stopping). May block on disk.
    pub fn all_offline(&self, now: u64) {
        let gone: Vec<ScreenName> = {
            let mut live = self.live();
            let gone: Vec<_> = live.by_name.drain().map(|(n, _)| n).collect();
            for name in &gone {
                live.last_seen.insert(name.clone(), now);
            }
            gone
        };
        for name in gone {
            if let Err(e) = self.store.set_last_seen(&name, now) {
                warn!(%name, "cannot record last seen: {e}");
            }
        }
    }

    /// How many names are online now.
    pub fn online_count(&self) -> usize {
        self.live().by_name.len()
    }
}

fn stale(name: &ScreenName, got: u64, have: u64) -> Reply {
    Reply::error(
        ErrorCode::StaleSequence,
        format!(
            "record for {name} has sequence {got}, not above the last accepted {have}; sequence numbers must grow"
        ),
    )
}

fn internal(e: StoreError) -> Reply {
    warn!("store failure: {e}");
    Reply::error(ErrorCode::Internal, "the node's store failed; retry later")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;
    use messenger_proto::Identity;
    use messenger_proto::record::Registration;

    const NOW: u64 = 1_700_000_000_000;

    fn registry() -> (tempfile::TempDir, Registry<RedbStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("claims.redb")).unwrap();
        (dir, Registry::new(Arc::new(store)))
    }

    fn record(id: &Identity, name: &str, seq: u64) -> SignedRecord {
        Registration {
            name: ScreenName::parse(name).unwrap(),
            peer_id: id.peer_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/5000".parse().unwrap()],
            seq,
            expires_at: NOW + 60_000,
        }
        .sign(id)
    }

    fn code(reply: Reply) -> Option<ErrorCode> {
        match reply {
            Reply::Error { code, .. } => Some(code),
            _ => None,
        }
    }

    #[test]
    fn register_resolve_and_go_offline() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let reply = reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), NOW);
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
        let Reply::Resolved(res) = reg.resolve("ALICE", NOW) else {
            panic!()
        };
        assert!(res.online);
        assert_eq!(res.owner, alice.peer_id());
        let rec = res.verified_record(NOW).unwrap().unwrap();
        assert_eq!(rec.addrs.len(), 1);

        reg.session_ended(1, NOW + 5);
        let Reply::Resolved(res) = reg.resolve("alice", NOW + 10) else {
            panic!()
        };
        assert!(!res.online);
        assert!(res.record.is_none());
        assert_eq!(res.last_seen, Some(NOW + 5));
    }

    #[test]
    fn name_taken_wrong_peer_and_forgery() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), NOW);
        // Another key claims the name.
        assert_eq!(
            code(reg.register(mallory.peer_id(), 2, record(&mallory, "alice", 9), NOW)),
            Some(ErrorCode::NameTaken)
        );
        // Mallory relays Alice's genuine record on her own connection.
        assert_eq!(
            code(reg.register(mallory.peer_id(), 2, record(&alice, "alice", 2), NOW)),
            Some(ErrorCode::WrongPeer)
        );
        // Mallory signs a record naming Alice's peer id.
        let forged = Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: alice.peer_id(),
            addrs: vec![],
            seq: 5,
            expires_at: NOW + 1000,
        }
        .sign(&mallory);
        assert_eq!(
            code(reg.register(alice.peer_id(), 2, forged, NOW)),
            Some(ErrorCode::BadSignature)
        );
        let Reply::Resolved(res) = reg.resolve("alice", NOW) else {
            panic!()
        };
        assert_eq!(res.owner, alice.peer_id());
    }

    #[test]
    fn sequence_must_grow_within_and_across_sessions() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        assert!(code(reg.register(alice.peer_id(), 1, record(&alice, "alice", 5), NOW)).is_none());
        assert_eq!(
            code(reg.register(alice.peer_id(), 1, record(&alice, "alice", 5), NOW)),
            Some(ErrorCode::StaleSequence)
        );
        assert!(code(reg.register(alice.peer_id(), 1, record(&alice, "alice", 6), NOW)).is_none());
        reg.session_ended(1, NOW);
        assert_eq!(
            code(reg.register(alice.peer_id(), 2, record(&alice, "alice", 4), NOW)),
            Some(ErrorCode::StaleSequence)
        );
    }

    #[test]
    fn expiry_bounds_records() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), NOW);
        let Reply::Resolved(res) = reg.resolve("alice", NOW + 60_001) else {
            panic!()
        };
        assert!(!res.online);
        assert_eq!(reg.sweep(NOW + 60_001), 1);
        assert_eq!(reg.online_count(), 0);
        let far = Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: alice.peer_id(),
            addrs: vec![],
            seq: 9,
            expires_at: NOW + 2 * MAX_RECORD_TTL_MS,
        }
        .sign(&alice);
        assert_eq!(
            code(reg.register(alice.peer_id(), 1, far, NOW)),
            Some(ErrorCode::BadExpiry)
        );
    }

    #[test]
    fn unknown_invalid_release_and_reverse_lookup() {
        let (_dir, reg) = registry();
        let alice = Identity::from_seed([1; 32]);
        let mallory = Identity::from_seed([2; 32]);
        assert_eq!(
            code(reg.resolve("nobody", NOW)),
            Some(ErrorCode::NoSuchName)
        );
        assert_eq!(code(reg.resolve("9x", NOW)), Some(ErrorCode::InvalidName));
        reg.register(alice.peer_id(), 1, record(&alice, "alice", 1), NOW);
        assert_eq!(
            reg.resolve_peer(alice.peer_id()),
            Reply::Names {
                peer_id: alice.peer_id(),
                names: vec![ScreenName::parse("alice").unwrap()]
            }
        );
        assert_eq!(
            code(reg.release(mallory.peer_id(), "alice")),
            Some(ErrorCode::NotOwner)
        );
        assert!(matches!(
            reg.release(alice.peer_id(), "alice"),
            Reply::Released { .. }
        ));
        assert_eq!(code(reg.resolve("alice", NOW)), Some(ErrorCode::NoSuchName));
    }
}
