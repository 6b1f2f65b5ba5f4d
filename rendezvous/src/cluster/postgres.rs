//! The cluster's PostgreSQL: a pool of connections, the schema's
//! migrations, and the bridge from the registry's synchronous calls.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::info;

use crate::store::StoreError;

/// Connections one node keeps open at most.
const POOL_SIZE: usize = 16;

/// How long a connection may take to open, and a caller to wait for a free
/// one: past it the store is unavailable, not slow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one statement may take before the store counts as unavailable.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Any number chosen once: nodes starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6d65_7373_656e_6772;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// A pool of connections to the cluster's database, its schema migrated.
pub async fn connect(url: &str) -> Result<Pool, StoreError> {
    let url = super::tls::parse(url)?;
    let mut config = tokio_postgres::Config::from_str(&url.url).map_err(|e| {
        StoreError::Unavailable(format!(
            "{e}: the store must be a PostgreSQL URL, e.g. postgres://user:password@host:5432/db"
        ))
    })?;
    config.connect_timeout(CONNECT_TIMEOUT);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match super::tls::client_config(&url)? {
        Some(tls) => {
            info!(mode = ?url.mode, "PostgreSQL over TLS");
            Manager::from_config(config, MakeRustlsConnect::new(tls), manager_config)
        }
        None => Manager::from_config(config, NoTls, manager_config),
    };
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    migrate(&pool).await?;
    Ok(pool)
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_err)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    let report = embedded::migrations::runner()
        .run_async(&mut **client)
        .await
        .map_err(|e| StoreError::Postgres(format!("cannot migrate the schema: {e}")));
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    for applied in report?.applied_migrations() {
        info!(migration = %applied, "database schema migrated");
    }
    Ok(())
}

/// A pool that cannot hand out a connection: the database is down or
/// unreachable.
pub fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    // The pool's own words ("error occurred while creating a new object")
    // hide why: the server's refusal or the network error underneath.
    let why = match &e {
        deadpool_postgres::PoolError::Backend(pg) => describe(pg),
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("cannot reach PostgreSQL: {why}"))
}

/// A driver error with its cause: the server's message, or the I/O error.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.to_string(),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// A failed statement: a lost connection is the store being unavailable,
/// anything else is the database refusing it.
pub fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if !is_shutdown(db.code()) => StoreError::Postgres(db.to_string()),
        _ => StoreError::Unavailable(format!("PostgreSQL: {}", describe(&e))),
    }
}

/// Codes PostgreSQL gives as it stops or restarts.
fn is_shutdown(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
}

/// Runs `work` against the database within [`QUERY_TIMEOUT`].
pub async fn timed<T>(
    what: &str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(QUERY_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "PostgreSQL did not answer within {} s ({what})",
                QUERY_TIMEOUT.as_secs()
            )))
        })
}

/// Runs async database work from the registry's synchronous code, which
/// runs on the node's (multi-threaded) runtime: on a blocking thread, or
/// briefly holding a worker that hands its other tasks on meanwhile.
pub fn block_on<T>(
    runtime: &tokio::runtime::Handle,
    what: &str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::task::block_in_place(|| runtime.block_on(timed(what, work)))
}

/// Milliseconds since the epoch as PostgreSQL's bigint (saturating).
pub fn ms(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// Back from bigint milliseconds (a negative one is read as 0).
pub fn from_ms(at: i64) -> u64 {
    u64::try_from(at).unwrap_or(0)
}

/// A u64 sequence number as an order-keeping bigint (top bit flipped).
pub fn seq(seq: u64) -> i64 {
    (seq ^ (1 << 63)) as i64
}

/// Back from [`seq`].
pub fn from_seq(stored: i64) -> u64 {
    (stored as u64) ^ (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_keep_their_order_in_bigint() {
        let samples = [
            0,
            1,
            41,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        for pair in samples.windows(2) {
            assert!(seq(pair[0]) < seq(pair[1]), "{pair:?}");
        }
        for s in samples {
            assert_eq!(from_seq(seq(s)), s);
        }
    }
}
