//! Claims in PostgreSQL, for nodes that share one directory.
//!
//! The rules of a claim are the database's: first claim wins on the
//! primary key, only the owner renews or releases (conditions in the
//! statements), sequence numbers grow (`claim_name` in the migrations),
//! so two nodes never give one name to two keys. Claims arriving together
//! go to it together (`claim_names`: one statement, so one transaction and
//! one durable commit, per batch), each answered once its batch committed.

use deadpool_postgres::Pool;
use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use prometheus_client::metrics::histogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;

use super::postgres::{block_on, from_ms, from_seq, ms, pg_err, pool_err, seq, timed};
use crate::store::{
    Claim, ClaimFuture, ClaimOutcome, ClaimStore, DEFAULT_MAX_NAMES_PER_KEY, StoreError,
};

/// The claim store in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool,
    runtime: Handle,
    max_names_per_key: usize,
    /// Seconds per batch of claims (one statement, one commit).
    commit_seconds: Histogram,
    /// Claims waiting for the batching task.
    batches: mpsc::Sender<QueuedClaim>,
}

/// A claim waiting for the next batch.
#[derive(Debug)]
struct QueuedClaim {
    name: ScreenName,
    owner: PeerId,
    seq: u64,
    now: u64,
    max: usize,
    answer: oneshot::Sender<Result<ClaimOutcome, StoreError>>,
}

/// The most claims one statement carries.
const MAX_BATCH: usize = 512;

/// How many times a batch that lost a deadlock to another node's batch is
/// sent again (PostgreSQL undoes the loser's whole transaction).
const CONFLICT_RETRIES: usize = 3;

impl PgStore {
    /// Claims in the database `pool` reaches (its schema migrated), used
    /// from code running on `runtime`.
    ///
    /// Starts the task that sends claims in batches; it ends when
    /// the last clone of the store is dropped.
    pub fn new(pool: Pool, runtime: Handle) -> Self {
        let commit_seconds = crate::store::commit_histogram();
        let (batches, queue) = mpsc::channel(MAX_BATCH);
        runtime.spawn(claim_in_batches(
            pool.clone(),
            queue,
            commit_seconds.clone(),
        ));
        Self {
            pool,
            runtime,
            max_names_per_key: DEFAULT_MAX_NAMES_PER_KEY,
            commit_seconds,
            batches,
        }
    }

    /// At most `n` names per key (new claims over it are refused).
    pub fn with_max_names_per_key(mut self, n: usize) -> Self {
        self.max_names_per_key = n;
        self
    }

    /// Number of claims held (for logs and benchmarks).
    pub async fn count(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one("SELECT count(*) FROM claims", &[])
            .await
            .map_err(pg_err)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn run<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        block_on(&self.runtime, what, work)
    }
}

/// Sends the queued claims, every claim that arrived while the last
/// statement ran in the next one, until the store is gone.
async fn claim_in_batches(pool: Pool, mut queue: mpsc::Receiver<QueuedClaim>, seconds: Histogram) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // One order of names for every node: two nodes' batches then
        // lock the names they share in the same order.
        batch.sort_by(|a, b| a.name.cmp(&b.name));
        let started = std::time::Instant::now();
        match timed("claiming names", claim_batch(&pool, &batch)).await {
            Ok(outcomes) => {
                seconds.observe(started.elapsed().as_secs_f64());
                for (claim, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = claim.answer.send(outcome);
                }
            }
            Err(e) => {
                for claim in batch.drain(..) {
                    let _ = claim.answer.send(Err(e.for_one()));
                }
            }
        }
    }
}

/// One statement claiming every name of `batch`; the outcomes in its order.
async fn claim_batch(
    pool: &Pool,
    batch: &[QueuedClaim],
) -> Result<Vec<Result<ClaimOutcome, StoreError>>, StoreError> {
    let names: Vec<&str> = batch.iter().map(|c| c.name.as_str()).collect();
    let owners: Vec<Vec<u8>> = batch.iter().map(|c| c.owner.to_bytes()).collect();
    let seqs: Vec<i64> = batch.iter().map(|c| seq(c.seq)).collect();
    let nows: Vec<i64> = batch.iter().map(|c| ms(c.now)).collect();
    let maxes: Vec<i32> = batch
        .iter()
        .map(|c| i32::try_from(c.max).unwrap_or(i32::MAX))
        .collect();
    let client = pool.get().await.map_err(pool_err)?;
    let statement = client
        .prepare_cached("SELECT * FROM claim_names($1, $2, $3, $4, $5)")
        .await
        .map_err(pg_err)?;
    let mut retries = 0;
    let rows = loop {
        match client
            .query(&statement, &[&names, &owners, &seqs, &nows, &maxes])
            .await
        {
            Ok(rows) => break rows,
            Err(e) if retries < CONFLICT_RETRIES && lost_a_conflict(&e) => retries += 1,
            Err(e) => return Err(pg_err(e)),
        }
    };
    if rows.len() != batch.len() {
        return Err(StoreError::Postgres(format!(
            "claim_names answered {} rows for {} claims",
            rows.len(),
            batch.len()
        )));
    }
    Ok(rows
        .iter()
        .zip(batch)
        .enumerate()
        .map(|(i, (row, claim))| {
            let k: i32 = row.try_get(0).map_err(pg_err)?;
            if usize::try_from(k).ok() != Some(i + 1) {
                return Err(StoreError::Postgres(format!(
                    "claim_names answered row {k} in place {}",
                    i + 1
                )));
            }
            outcome_from(claim.name.as_str(), row, 1)
        })
        .collect())
}

/// A transaction PostgreSQL undid to break a deadlock or a serialization
/// conflict with another: worth sending again.
fn lost_a_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A claim's outcome from a row of `claim_name`'s columns starting at `at`:
/// (outcome, owner, claimed_at, last_seen, seq, renewed_at, held).
fn outcome_from(name: &str, row: &Row, at: usize) -> Result<ClaimOutcome, StoreError> {
    let outcome: String = row.try_get(at).map_err(pg_err)?;
    if outcome == "too_many" {
        let held: i64 = row.try_get(at + 6).map_err(pg_err)?;
        return Ok(ClaimOutcome::TooMany(usize::try_from(held).unwrap_or(0)));
    }
    let claim = claim_from(name, row, at + 1)?;
    match outcome.as_str() {
        "created" => Ok(ClaimOutcome::Created(claim)),
        "renewed" => Ok(ClaimOutcome::Renewed(claim)),
        "taken" => Ok(ClaimOutcome::Taken(claim)),
        "stale" => Ok(ClaimOutcome::Stale(claim)),
        other => Err(StoreError::Postgres(format!(
            "claim_name answered {other:?}, not an outcome this node knows"
        ))),
    }
}

fn owner_of(name: &str, bytes: &[u8]) -> Result<PeerId, StoreError> {
    PeerId::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        name: name.to_owned(),
        reason: format!("owner is not a peer id: {e}"),
    })
}

/// A claim from a row of (owner, claimed_at, last_seen, seq, renewed_at)
/// starting at column `at`.
fn claim_from(name: &str, row: &Row, at: usize) -> Result<Claim, StoreError> {
    let owner: Vec<u8> = row.try_get(at).map_err(pg_err)?;
    let claimed_at: i64 = row.try_get(at + 1).map_err(pg_err)?;
    let last_seen: Option<i64> = row.try_get(at + 2).map_err(pg_err)?;
    let stored_seq: i64 = row.try_get(at + 3).map_err(pg_err)?;
    let renewed_at: Option<i64> = row.try_get(at + 4).map_err(pg_err)?;
    Ok(Claim {
        owner: owner_of(name, &owner)?,
        claimed_at: from_ms(claimed_at),
        last_seen: last_seen.map(from_ms),
        seq: from_seq(stored_seq),
        renewed_at: renewed_at.map(from_ms),
    })
}

fn parse_name(raw: &str) -> Result<ScreenName, StoreError> {
    ScreenName::parse(raw).map_err(|e| StoreError::Corrupt {
        name: raw.to_owned(),
        reason: e.to_string(),
    })
}

impl ClaimStore for PgStore {
    fn get(&self, name: &ScreenName) -> Result<Option<Claim>, StoreError> {
        self.run("reading a claim", async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let statement = client
                .prepare_cached(
                    "SELECT owner, claimed_at, last_seen, seq, renewed_at FROM claims WHERE name = $1",
                )
                .await
                .map_err(pg_err)?;
            let row = client
                .query_opt(&statement, &[&name.as_str()])
                .await
                .map_err(pg_err)?;
            row.map(|row| claim_from(name.as_str(), &row, 0))
                .transpose()
        })
    }

    fn claim(&self, name: &ScreenName, owner: PeerId, seq: u64, now: u64) -> ClaimFuture {
        let (answer, answered) = oneshot::channel();
        let queued = QueuedClaim {
            name: name.clone(),
            owner,
            seq,
            now,
            max: self.max_names_per_key,
            answer,
        };
        let batches = self.batches.clone();
        Box::pin(async move {
            let gone = || StoreError::Unavailable("the claim batching task stopped".into());
            batches.send(queued).await.map_err(|_| gone())?;
            answered.await.unwrap_or_else(|_| Err(gone()))
        })
    }

    fn commit_latency(&self) -> Option<Histogram> {
        Some(self.commit_seconds.clone())
    }

    fn set_last_seen(&self, name: &ScreenName, at: u64) -> Result<(), StoreError> {
        self.run("recording last seen", async {
            let client = self.pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "UPDATE claims SET last_seen = $2 WHERE name = $1",
                    &[&name.as_str(), &ms(at)],
                )
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn release(&self, name: &ScreenName, owner: &PeerId) -> Result<bool, StoreError> {
        self.run("releasing a name", async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let deleted = client
                .execute(
                    "DELETE FROM claims WHERE name = $1 AND owner = $2",
                    &[&name.as_str(), &owner.to_bytes()],
                )
                .await
                .map_err(pg_err)?;
            Ok(deleted == 1)
        })
    }

    fn names_of(&self, owner: &PeerId) -> Result<Vec<ScreenName>, StoreError> {
        self.run("listing a key's names", async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT name FROM claims WHERE owner = $1 ORDER BY name",
                    &[&owner.to_bytes()],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|row| parse_name(row.try_get(0).map_err(pg_err)?))
                .collect()
        })
    }

    fn release_unused(
        &self,
        cutoff: u64,
        keep: &dyn Fn(&ScreenName) -> bool,
    ) -> Result<Vec<(ScreenName, PeerId)>, StoreError> {
        const LAST_USED: &str =
            "greatest(claimed_at, coalesce(renewed_at, 0), coalesce(last_seen, 0))";
        let candidates: Vec<String> = self.run("finding unused names", async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    &format!("SELECT name FROM claims WHERE {LAST_USED} < $1"),
                    &[&ms(cutoff)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|row| row.try_get(0).map_err(pg_err))
                .collect()
        })?;
        let candidates: Vec<String> = candidates
            .into_iter()
            .filter(|raw| ScreenName::parse(raw).is_ok_and(|name| !keep(&name)))
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Checked again as they are deleted: a claim renewed meanwhile stays.
        self.run("releasing unused names", async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    &format!(
                        "DELETE FROM claims WHERE name = ANY($1) AND {LAST_USED} < $2 RETURNING name, owner"
                    ),
                    &[&candidates, &ms(cutoff)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|row| {
                    let raw: &str = row.try_get(0).map_err(pg_err)?;
                    let owner: Vec<u8> = row.try_get(1).map_err(pg_err)?;
                    Ok((parse_name(raw)?, owner_of(raw, &owner)?))
                })
                .collect()
        })
    }
}
