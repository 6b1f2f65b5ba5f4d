//! Durable claims: screen name → owning key, kept in an embedded database
//! (this module) or in PostgreSQL for a cluster ([`crate::cluster::claims`]).
//!
//! Only what must survive a restart lives here (who owns which name, the
//! last accepted sequence number, last seen). Addresses and presence are
//! live state in [`crate::registry`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use libp2p::PeerId;
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use prometheus_client::metrics::histogram::Histogram;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
const NAMES_BY_OWNER: MultimapTableDefinition<&[u8], &str> =
    MultimapTableDefinition::new("names_by_owner");

/// Names one key may hold unless the node says otherwise.
pub const DEFAULT_MAX_NAMES_PER_KEY: usize = 3;

/// A durable claim on a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The key that owns the name.
    pub owner: PeerId,
    /// When the claim was made (ms since epoch).
    pub claimed_at: u64,
    /// When the owner was last shown online before going offline (ms since
    /// epoch); recorded as the owner goes offline.
    pub last_seen: Option<u64>,
    /// Highest sequence number accepted from the owner.
    pub seq: u64,
    /// When the owner last registered it from a new session (ms since
    /// epoch); absent in claims stored before leases existed.
    #[serde(default)]
    pub renewed_at: Option<u64>,
}

impl Claim {
    /// When the owner last used the name: its lease runs from here.
    pub fn last_used(&self) -> u64 {
        self.claimed_at
            .max(self.renewed_at.unwrap_or(0))
            .max(self.last_seen.unwrap_or(0))
    }
}

/// What [`ClaimStore::claim`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The name was free and is now owned by the caller.
    Created(Claim),
    /// The caller already owned it; seq and last seen were updated.
    Renewed(Claim),
    /// Another key owns it.
    Taken(Claim),
    /// The caller owns it but the sequence number is not above the stored one.
    Stale(Claim),
    /// The name is free but the caller already holds this many names, the
    /// most one key may.
    TooMany(usize),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] redb::Error),
    /// The batch this request was committed in failed.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The store cannot be reached (a database server that is down or
    /// too slow to answer); nothing was changed that was acknowledged.
    #[error("claim store unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement.
    #[error("database error: {0}")]
    Postgres(String),
    /// A stored value could not be decoded.
    #[error("stored claim for {name:?} is unreadable: {reason}")]
    Corrupt {
        /// The key whose value is bad.
        name: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// This error as told to each of the claims of a batch it failed.
    pub fn for_one(&self) -> StoreError {
        match self {
            StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
            StoreError::Postgres(why) => StoreError::Postgres(why.clone()),
            other => StoreError::Commit(other.to_string()),
        }
    }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// The answer to a claim, to be awaited (see [`ClaimStore::claim`]).
pub type ClaimFuture = Pin<Box<dyn Future<Output = Result<ClaimOutcome, StoreError>> + Send>>;

/// Where claims are kept. Plain and synchronous, callers that must not
/// block running it on a blocking thread; except claims, the one write on
/// a registration's path, which are answered on a future that holds no
/// thread while the claim waits for its commit ([`ClaimStore::claim`]).
pub trait ClaimStore: Send + Sync + std::fmt::Debug + 'static {
    /// The claim on `name`, if any.
    fn get(&self, name: &ScreenName) -> Result<Option<Claim>, StoreError>;
    /// Atomically claims `name` for `owner`, or renews the owner's claim
    /// with `seq` if it is above the stored one. Claims waiting together
    /// are committed together.
    fn claim(&self, name: &ScreenName, owner: PeerId, seq: u64, now: u64) -> ClaimFuture;
    /// Records when the owner was last online.
    fn set_last_seen(&self, name: &ScreenName, at: u64) -> Result<(), StoreError>;
    /// Deletes the claim if `owner` owns it; returns whether it did.
    fn release(&self, name: &ScreenName, owner: &PeerId) -> Result<bool, StoreError>;
    /// The names `owner` holds.
    fn names_of(&self, owner: &PeerId) -> Result<Vec<ScreenName>, StoreError>;
    /// Deletes every claim last used before `cutoff` (ms since epoch) for
    /// which `keep` says no; returns the names released and their owners.
    fn release_unused(
        &self,
        cutoff: u64,
        keep: &dyn Fn(&ScreenName) -> bool,
    ) -> Result<Vec<(ScreenName, PeerId)>, StoreError>;
    /// How long its commits of claims take, if it measures them.
    fn commit_latency(&self) -> Option<Histogram> {
        None
    }
}

/// The claim store in a redb file; every change is committed durably
/// before it is acknowledged.
///
/// Claims made at the same time share one commit (group commit): each
/// caller queues its claim and waits for its answer; one writer thread,
/// owned by the store, commits everything queued so far in one
/// transaction, so one disk sync serves many registrations, and answers
/// them all at once (no caller waits in line behind the others' wake-ups).
#[derive(Debug)]
pub struct RedbStore {
    db: Arc<Database>,
    claims: Arc<ClaimQueue>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The claims waiting for the writer thread.
#[derive(Debug)]
struct ClaimQueue {
    state: Mutex<Queued>,
    work: Condvar,
    max_names_per_key: AtomicUsize,
    /// Seconds per group commit.
    commit_seconds: Histogram,
}

#[derive(Debug, Default)]
struct Queued {
    claims: Vec<PendingClaim>,
    /// The store is dropped: the writer commits what is queued and ends.
    stopping: bool,
}

#[derive(Debug)]
struct PendingClaim {
    name: ScreenName,
    owner: PeerId,
    seq: u64,
    now: u64,
    answer: oneshot::Sender<Result<ClaimOutcome, StoreError>>,
}

fn writer_stopped() -> StoreError {
    StoreError::Commit("the claims writer stopped".into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedbStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(CLAIMS).map_err(db_err)?;
        txn.open_multimap_table(NAMES_BY_OWNER).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let claims = Arc::new(ClaimQueue {
            state: Mutex::default(),
            work: Condvar::new(),
            max_names_per_key: AtomicUsize::new(DEFAULT_MAX_NAMES_PER_KEY),
            commit_seconds: commit_histogram(),
        });
        let writer = std::thread::Builder::new()
            .name("claims-writer".into())
            .spawn({
                let (db, claims) = (db.clone(), claims.clone());
                move || write_claims(&db, &claims)
            })
            .map_err(|e| StoreError::Commit(format!("cannot start the claims writer: {e}")))?;
        Ok(Self {
            db,
            claims,
            writer: Some(writer),
        })
    }

    /// At most `n` names per key (new claims over it are refused).
    pub fn with_max_names_per_key(self, n: usize) -> Self {
        self.claims.max_names_per_key.store(n, Ordering::Relaxed);
        self
    }

    /// Queues a claim for the writer's next commit; its answer comes on
    /// the returned channel.
    fn enqueue(
        &self,
        name: &ScreenName,
        owner: PeerId,
        seq: u64,
        now: u64,
    ) -> oneshot::Receiver<Result<ClaimOutcome, StoreError>> {
        let (answer, answered) = oneshot::channel();
        lock(&self.claims.state).claims.push(PendingClaim {
            name: name.clone(),
            owner,
            seq,
            now,
            answer,
        });
        self.claims.work.notify_one();
        answered
    }

    /// Number of claims held (for logs and benchmarks).
    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CLAIMS).map_err(db_err)?;
        table.len().map_err(db_err)
    }

    /// Whether no claim is held.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        lock(&self.claims.state).stopping = true;
        self.claims.work.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: commits what is queued, batch after batch, until the
/// store is dropped.
fn write_claims(db: &Database, claims: &ClaimQueue) {
    loop {
        let batch = {
            let mut queued = lock(&claims.state);
            while queued.claims.is_empty() && !queued.stopping {
                queued = claims.work.wait(queued).unwrap_or_else(|p| p.into_inner());
            }
            if queued.claims.is_empty() {
                return;
            }
            std::mem::take(&mut queued.claims)
        };
        let max = claims.max_names_per_key.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        commit_batch(db, batch, max);
        claims
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Commits every claim of `batch` in one transaction and answers each.
fn commit_batch(db: &Database, batch: Vec<PendingClaim>, max_names_per_key: usize) {
    let outcome = (|| {
        let txn = db.begin_write().map_err(db_err)?;
        let results: Vec<Result<ClaimOutcome, StoreError>> = batch
            .iter()
            .map(|p| claim_in(&txn, &p.name, p.owner, p.seq, p.now, max_names_per_key))
            .collect();
        txn.commit().map_err(db_err)?;
        Ok::<_, StoreError>(results)
    })();
    match outcome {
        Ok(results) => {
            for (p, result) in batch.into_iter().zip(results) {
                let _ = p.answer.send(result);
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.answer.send(Err(e.for_one()));
            }
        }
    }
}

/// Decodes the stored claim on `name`.
pub fn decode(name: &str, bytes: &[u8]) -> Result<Claim, StoreError> {
    codec::from_cbor(bytes).map_err(|e| StoreError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The claim on `name` in an open table.
fn read_claim(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &ScreenName,
) -> Result<Option<Claim>, StoreError> {
    let value = table.get(name.as_str()).map_err(db_err)?;
    value.map(|v| decode(name.as_str(), v.value())).transpose()
}

/// One claim inside a write transaction (see [`ClaimStore::claim`]).
fn claim_in(
    txn: &WriteTransaction,
    name: &ScreenName,
    owner: PeerId,
    seq: u64,
    now: u64,
    max_names: usize,
) -> Result<ClaimOutcome, StoreError> {
    let mut table = txn.open_table(CLAIMS).map_err(db_err)?;
    let outcome = match read_claim(&table, name)? {
        Some(claim) if claim.owner != owner => ClaimOutcome::Taken(claim),
        Some(claim) if seq <= claim.seq => ClaimOutcome::Stale(claim),
        Some(claim) => {
            let claim = Claim {
                seq,
                renewed_at: Some(now),
                ..claim
            };
            table
                .insert(name.as_str(), codec::to_cbor(&claim).as_slice())
                .map_err(db_err)?;
            ClaimOutcome::Renewed(claim)
        }
        None => {
            let mut owners = txn.open_multimap_table(NAMES_BY_OWNER).map_err(db_err)?;
            let held = owners
                .get(owner.to_bytes().as_slice())
                .map_err(db_err)?
                .len() as usize;
            if held >= max_names {
                return Ok(ClaimOutcome::TooMany(held));
            }
            let claim = Claim {
                owner,
                claimed_at: now,
                last_seen: None,
                seq,
                renewed_at: Some(now),
            };
            table
                .insert(name.as_str(), codec::to_cbor(&claim).as_slice())
                .map_err(db_err)?;
            owners
                .insert(owner.to_bytes().as_slice(), name.as_str())
                .map_err(db_err)?;
            ClaimOutcome::Created(claim)
        }
    };
    Ok(outcome)
}

impl ClaimStore for RedbStore {
    fn get(&self, name: &ScreenName) -> Result<Option<Claim>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CLAIMS).map_err(db_err)?;
        read_claim(&table, name)
    }

    fn claim(&self, name: &ScreenName, owner: PeerId, seq: u64, now: u64) -> ClaimFuture {
        let answered = self.enqueue(name, owner, seq, now);
        Box::pin(async move { answered.await.unwrap_or_else(|_| Err(writer_stopped())) })
    }

    fn set_last_seen(&self, name: &ScreenName, at: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(CLAIMS).map_err(db_err)?;
            let existing = read_claim(&table, name)?;
            if let Some(claim) = existing {
                let claim = Claim {
                    last_seen: Some(at),
                    ..claim
                };
                table
                    .insert(name.as_str(), codec::to_cbor(&claim).as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    fn release(&self, name: &ScreenName, owner: &PeerId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(CLAIMS).map_err(db_err)?;
            let existing = read_claim(&table, name)?;
            match existing {
                Some(claim) if &claim.owner == owner => {
                    table.remove(name.as_str()).map_err(db_err)?;
                    let mut owners = txn.open_multimap_table(NAMES_BY_OWNER).map_err(db_err)?;
                    owners
                        .remove(owner.to_bytes().as_slice(), name.as_str())
                        .map_err(db_err)?;
                }
                _ => return Ok(false),
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    fn release_unused(
        &self,
        cutoff: u64,
        keep: &dyn Fn(&ScreenName) -> bool,
    ) -> Result<Vec<(ScreenName, PeerId)>, StoreError> {
        // Claims are read in a snapshot, then deleted in one write
        // transaction that checks each again: a claim renewed meanwhile
        // stays.
        let candidates: Vec<ScreenName> = {
            let txn = self.db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CLAIMS).map_err(db_err)?;
            let mut names = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let claim = decode(key.value(), value.value())?;
                if claim.last_used() < cutoff
                    && let Ok(name) = ScreenName::parse(key.value())
                {
                    names.push(name);
                }
            }
            names
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut released = Vec::new();
        {
            let mut table = txn.open_table(CLAIMS).map_err(db_err)?;
            let mut owners = txn.open_multimap_table(NAMES_BY_OWNER).map_err(db_err)?;
            for name in candidates {
                let Some(claim) = read_claim(&table, &name)? else {
                    continue;
                };
                if claim.last_used() >= cutoff || keep(&name) {
                    continue;
                }
                table.remove(name.as_str()).map_err(db_err)?;
                owners
                    .remove(claim.owner.to_bytes().as_slice(), name.as_str())
                    .map_err(db_err)?;
                released.push((name, claim.owner));
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(released)
    }

    fn commit_latency(&self) -> Option<Histogram> {
        Some(self.claims.commit_seconds.clone())
    }

    fn names_of(&self, owner: &PeerId) -> Result<Vec<ScreenName>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let owners = txn.open_multimap_table(NAMES_BY_OWNER).map_err(db_err)?;
        let mut names = Vec::new();
        for value in owners.get(owner.to_bytes().as_slice()).map_err(db_err)? {
            let value = value.map_err(db_err)?;
            let raw = value.value();
            let name = ScreenName::parse(raw).map_err(|e| StoreError::Corrupt {
                name: raw.to_owned(),
                reason: e.to_string(),
            })?;
            names.push(name);
        }
        Ok(names)
    }
}

/// The buckets of the claim-commit latency, in seconds: 50 µs to ~1.6 s
/// (the store's figure, which the node's metrics publish).
pub fn commit_histogram() -> prometheus_client::metrics::histogram::Histogram {
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn name(s: &str) -> ScreenName {
        ScreenName::parse(s).unwrap()
    }

    #[test]
    fn first_key_owns_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claims.redb");
        let (alice, mallory) = (PeerId::random(), PeerId::random());
        {
            let store = RedbStore::open(&path).unwrap();
            assert!(matches!(
                block_on(store.claim(&name("alice"), alice, 1, 10)).unwrap(),
                ClaimOutcome::Created(_)
            ));
            assert!(
                matches!(block_on(store.claim(&name("alice"), mallory, 5, 11)).unwrap(), ClaimOutcome::Taken(c) if c.owner == alice)
            );
            assert!(matches!(
                block_on(store.claim(&name("alice"), alice, 1, 12)).unwrap(),
                ClaimOutcome::Stale(_)
            ));
            assert!(
                matches!(block_on(store.claim(&name("alice"), alice, 2, 13)).unwrap(), ClaimOutcome::Renewed(c) if c.seq == 2)
            );
        }
        let store = RedbStore::open(&path).unwrap();
        let claim = store.get(&name("alice")).unwrap().unwrap();
        assert_eq!((claim.owner, claim.seq, claim.claimed_at), (alice, 2, 10));
        assert_eq!(store.names_of(&alice).unwrap(), vec![name("alice")]);
        assert!(store.names_of(&mallory).unwrap().is_empty());
    }

    #[test]
    fn concurrent_claims_share_commits_and_first_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            RedbStore::open(&dir.path().join("claims.redb"))
                .unwrap()
                .with_max_names_per_key(100),
        );
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let handles: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(t, &peer)| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let outcome =
                            block_on(store.claim(&name(&format!("p{t}n{i}")), peer, 1, 1)).unwrap();
                        assert!(matches!(outcome, ClaimOutcome::Created(_)));
                    }
                    let shared = block_on(store.claim(&name("contested"), peer, 1, 1)).unwrap();
                    matches!(shared, ClaimOutcome::Created(_))
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1, "exactly one key gets a contested name");
        assert_eq!(store.len().unwrap(), 8 * 50 + 1);
        let owner = store.get(&name("contested")).unwrap().unwrap().owner;
        assert!(peers.contains(&owner));
        drop(store);
        // Everything acknowledged is there after reopening.
        let store = RedbStore::open(&dir.path().join("claims.redb")).unwrap();
        assert_eq!(store.get(&name("contested")).unwrap().unwrap().owner, owner);
    }

    #[test]
    fn only_the_owner_releases() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("claims.redb")).unwrap();
        let (alice, mallory) = (PeerId::random(), PeerId::random());
        block_on(store.claim(&name("alice"), alice, 1, 10)).unwrap();
        assert!(!store.release(&name("alice"), &mallory).unwrap());
        assert!(store.get(&name("alice")).unwrap().is_some());
        assert!(store.release(&name("alice"), &alice).unwrap());
        assert!(store.get(&name("alice")).unwrap().is_none());
        assert!(store.names_of(&alice).unwrap().is_empty());
        assert!(matches!(
            block_on(store.claim(&name("alice"), mallory, 1, 20)).unwrap(),
            ClaimOutcome::Created(_)
        ));
    }

    #[test]
    fn a_key_holds_at_most_the_limit_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("c.redb"))
            .unwrap()
            .with_max_names_per_key(2);
        let owner = PeerId::random();
        for n in ["one", "two"] {
            assert!(matches!(
                block_on(store.claim(&name(n), owner, 1, 10)).unwrap(),
                ClaimOutcome::Created(_)
            ));
        }
        assert_eq!(
            block_on(store.claim(&name("three"), owner, 1, 10)).unwrap(),
            ClaimOutcome::TooMany(2)
        );
        // Renewing a held name is not a new name.
        assert!(matches!(
            block_on(store.claim(&name("one"), owner, 2, 11)).unwrap(),
            ClaimOutcome::Renewed(_)
        ));
        // Giving one up makes room.
        assert!(store.release(&name("two"), &owner).unwrap());
        assert!(matches!(
            block_on(store.claim(&name("three"), owner, 1, 12)).unwrap(),
            ClaimOutcome::Created(_)
        ));
    }

    #[test]
    fn unused_names_are_released_and_used_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("c.redb")).unwrap();
        let (old, renewed, seen, online) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        block_on(store.claim(&name("old"), old, 1, 100)).unwrap();
        block_on(store.claim(&name("renewed"), renewed, 1, 100)).unwrap();
        block_on(store.claim(&name("renewed"), renewed, 2, 900)).unwrap();
        block_on(store.claim(&name("seen"), seen, 1, 100)).unwrap();
        store.set_last_seen(&name("seen"), 950).unwrap();
        block_on(store.claim(&name("online"), online, 1, 100)).unwrap();
        let released = store
            .release_unused(500, &|n: &ScreenName| n.as_str() == "online")
            .unwrap();
        assert_eq!(released, vec![(name("old"), old)]);
        assert!(store.get(&name("old")).unwrap().is_none());
        assert!(
            store.names_of(&old).unwrap().is_empty(),
            "the index follows"
        );
        for kept in ["renewed", "seen", "online"] {
            assert!(store.get(&name(kept)).unwrap().is_some(), "{kept}");
        }
        // A released name is free for a new key.
        assert!(matches!(
            block_on(store.claim(&name("old"), PeerId::random(), 1, 1000)).unwrap(),
            ClaimOutcome::Created(_)
        ));
    }
}
