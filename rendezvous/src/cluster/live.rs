//! The cluster's live table: which node holds each online user's session,
//! and the record registered there.
//!
//! A row lives as long as its session and its node: the node deletes it
//! when the session ends, and a node that stops beating in `nodes` has its
//! rows ignored at once and deleted a minute later. Rows are found by name
//! or by owner only, never listed.

use std::time::Duration;

use deadpool_postgres::Pool;
use libp2p::PeerId;
use messenger_proto::codec;
use messenger_proto::name::ScreenName;
use messenger_proto::record::Registration;
use messenger_proto::time::now_ms;

use super::postgres::{ms, pg_err, pool_err};
use crate::shared::{Held, NodeId, SharedLive};
use crate::store::StoreError;

/// How often a node beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);

/// A node whose last beat is older than this is dead: three beats missed.
pub const NODE_GRACE: Duration = Duration::from_secs(6);

/// The live table, as one node uses it.
#[derive(Debug, Clone)]
pub struct LiveTable {
    pool: Pool,
    node: NodeId,
}

/// Writes rows of this node, one per element of the arrays ($3 is the
/// node).
const UPSERT: &str = "INSERT INTO live (name, owner, node, expires_at, entry) \
     SELECT name, owner, $3, expires_at, entry \
     FROM unnest($1::text[], $2::bytea[], $4::bigint[], $5::bytea[]) AS r(name, owner, expires_at, entry) \
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, node = excluded.node, \
     expires_at = excluded.expires_at, entry = excluded.entry";

/// Live rows as the columns [`UPSERT`] takes.
struct Rows {
    names: Vec<String>,
    owners: Vec<Vec<u8>>,
    expiries: Vec<i64>,
    entries: Vec<Vec<u8>>,
}

impl Rows {
    fn of<'a>(
        live: impl Iterator<Item = (&'a ScreenName, &'a SharedLive)>,
    ) -> Result<Self, StoreError> {
        let mut rows = Self {
            names: Vec::new(),
            owners: Vec::new(),
            expiries: Vec::new(),
            entries: Vec::new(),
        };
        for (name, live) in live {
            let (owner, expires_at) = owner_and_expiry(name, live)?;
            rows.names.push(name.as_str().to_owned());
            rows.owners.push(owner.to_bytes());
            rows.expiries.push(ms(expires_at));
            rows.entries.push(codec::to_cbor(live));
        }
        Ok(rows)
    }

    fn params<'a>(
        &'a self,
        node: &'a NodeId,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.names,
            &self.owners,
            node,
            &self.expiries,
            &self.entries,
        ]
    }
}

/// Rows of nodes dead this long are deleted.
const DEAD_ROWS_KEPT: &str = "1 minute";

/// Nodes dead this long are forgotten.
const DEAD_NODES_KEPT: &str = "1 day";

impl LiveTable {
    /// The table in `pool`'s database, written as `node`.
    pub fn new(pool: Pool, node: NodeId) -> Self {
        Self { pool, node }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The registration of `name` on a live node other than this one.
    pub async fn lookup(&self, name: &ScreenName) -> Result<Option<Held>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let statement = client
            .prepare_cached(
                "SELECT l.node, l.entry FROM live l JOIN nodes n ON n.node = l.node \
                 WHERE l.name = $1 AND l.node <> $2 AND l.expires_at > $3 \
                 AND n.beat_at > now() - make_interval(secs => $4)",
            )
            .await
            .map_err(pg_err)?;
        let row = client
            .query_opt(
                &statement,
                &[&name.as_str(), &self.node, &ms(now_ms()), &grace_secs()],
            )
            .await
            .map_err(pg_err)?;
        row.map(|row| held_from(name.as_str(), row.try_get(0), row.try_get(1)))
            .transpose()
    }

    /// Of `names`, the ones claimed, each with where it is online now (on
    /// a live node other than this one): one statement for them all, so
    /// that watching many names costs one round trip, and a name nobody
    /// claimed is left out (and costs no subscription).
    pub async fn claimed_among(
        &self,
        names: &[ScreenName],
    ) -> Result<Vec<(ScreenName, Option<Held>)>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await.map_err(pool_err)?;
        let asked: Vec<&str> = names.iter().map(ScreenName::as_str).collect();
        let rows = client
            .query(
                "SELECT c.name, l.node, l.entry FROM claims c \
                 LEFT JOIN live l ON l.name = c.name AND l.node <> $2 AND l.expires_at > $3 \
                 AND EXISTS (SELECT 1 FROM nodes n WHERE n.node = l.node \
                             AND n.beat_at > now() - make_interval(secs => $4)) \
                 WHERE c.name = ANY($1)",
                &[&asked, &self.node, &ms(now_ms()), &grace_secs()],
            )
            .await
            .map_err(pg_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let raw: String = row.try_get(0).map_err(pg_err)?;
            let name = ScreenName::parse_normal(&raw).map_err(|e| corrupt(&raw, e))?;
            let node: Option<String> = row.try_get(1).map_err(pg_err)?;
            let held = match node {
                Some(node) => Some(held_from(&raw, Ok(node), row.try_get(2))?),
                None => None,
            };
            out.push((name, held));
        }
        Ok(out)
    }

    /// The registrations of `owner` on live nodes other than this one.
    pub async fn lookup_owner(
        &self,
        owner: &PeerId,
    ) -> Result<Vec<(ScreenName, Held)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT l.name, l.node, l.entry FROM live l JOIN nodes n ON n.node = l.node \
                 WHERE l.owner = $1 AND l.node <> $2 AND l.expires_at > $3 \
                 AND n.beat_at > now() - make_interval(secs => $4)",
                &[&owner.to_bytes(), &self.node, &ms(now_ms()), &grace_secs()],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|row| {
                let raw: &str = row.try_get(0).map_err(pg_err)?;
                let name = ScreenName::parse(raw).map_err(|e| corrupt(raw, e))?;
                let held = held_from(raw, row.try_get(1), row.try_get(2))?;
                Ok((name, held))
            })
            .collect()
    }

    /// Each name is online here with its entry (`Some`), or no longer
    /// (`None`): two statements however many names, so that a burst of
    /// registrations does not queue one round trip per name.
    pub async fn write(
        &self,
        changes: &[(ScreenName, Option<SharedLive>)],
    ) -> Result<(), StoreError> {
        let rows = Rows::of(changes.iter().filter_map(|(n, l)| Some((n, l.as_ref()?))))?;
        let gone: Vec<&str> = changes
            .iter()
            .filter(|(_, l)| l.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        let client = self.pool.get().await.map_err(pool_err)?;
        if !rows.names.is_empty() {
            let statement = client.prepare_cached(UPSERT).await.map_err(pg_err)?;
            client
                .execute(&statement, &rows.params(&self.node))
                .await
                .map_err(pg_err)?;
        }
        if !gone.is_empty() {
            // Only our own rows: the user may be online at another node
            // by now.
            let statement = client
                .prepare_cached("DELETE FROM live WHERE node = $1 AND name = ANY($2)")
                .await
                .map_err(pg_err)?;
            client
                .execute(&statement, &[&self.node, &gone])
                .await
                .map_err(pg_err)?;
        }
        Ok(())
    }

    /// Makes this node's rows exactly `held` (after the table was out of
    /// reach and writes were missed).
    pub async fn replace_mine(&self, held: &[(ScreenName, SharedLive)]) -> Result<(), StoreError> {
        let rows = Rows::of(held.iter().map(|(n, l)| (n, l)))?;
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let txn = client.transaction().await.map_err(pg_err)?;
        txn.execute("DELETE FROM live WHERE node = $1", &[&self.node])
            .await
            .map_err(pg_err)?;
        if !rows.names.is_empty() {
            txn.execute(UPSERT, &rows.params(&self.node))
                .await
                .map_err(pg_err)?;
        }
        txn.commit().await.map_err(pg_err)
    }

    /// This node is alive; returns the nodes that are not (and deletes the
    /// rows of those dead for a while).
    pub async fn beat(&self) -> Result<Vec<NodeId>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "INSERT INTO nodes (node, beat_at) VALUES ($1, now()) \
                 ON CONFLICT (node) DO UPDATE SET beat_at = now()",
                &[&self.node],
            )
            .await
            .map_err(pg_err)?;
        client
            .batch_execute(&format!(
                "DELETE FROM live WHERE node IN \
                 (SELECT node FROM nodes WHERE beat_at < now() - interval '{DEAD_ROWS_KEPT}'); \
                 DELETE FROM nodes WHERE beat_at < now() - interval '{DEAD_NODES_KEPT}'"
            ))
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(
                "SELECT node FROM nodes WHERE beat_at <= now() - make_interval(secs => $1)",
                &[&grace_secs()],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(pg_err))
            .collect()
    }

    /// This node leaves (stopping, or starting again after a crash): its
    /// rows go.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute("DELETE FROM live WHERE node = $1", &[&self.node])
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}

fn grace_secs() -> f64 {
    NODE_GRACE.as_secs_f64()
}

fn corrupt(name: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

fn held_from(
    name: &str,
    node: Result<String, tokio_postgres::Error>,
    entry: Result<Vec<u8>, tokio_postgres::Error>,
) -> Result<Held, StoreError> {
    let node = node.map_err(pg_err)?;
    let entry = entry.map_err(pg_err)?;
    let live: SharedLive = codec::from_cbor(&entry).map_err(|e| corrupt(name, e))?;
    Ok(Held { node, live })
}

/// Owner and expiry of a record this node accepted (so checked already).
fn owner_and_expiry(name: &ScreenName, live: &SharedLive) -> Result<(PeerId, u64), StoreError> {
    let record: Registration = live
        .record
        .0
        .decode_unverified()
        .map_err(|e| corrupt(name.as_str(), e))?;
    Ok((record.peer_id, record.expires_at))
}
