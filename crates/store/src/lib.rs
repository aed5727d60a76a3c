//! The account store: accounts, admins, API keys, admin tokens, the audit
//! log and the event rules with their outbox, in SQLite (the embedded default) or PostgreSQL, through sqlx.
//!
//! Owns: every line of SQL in dropgate (one migration set per dialect, one
//! query set that both dialects accept, always with bound parameters) and
//! argon2id password hashing.
//!
//! Must not: decide policy (who may log in, what a permission allows: that is
//! `dropgate-core`) or touch the file storage.

mod bans;
mod model;
mod node_sessions;
mod nodes;
mod outbox;
mod password;
mod queries;
mod quota_usage;
#[cfg(any(test, feature = "test-postgres"))]
pub mod scratch;

pub use queries::secret_digest;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use bans::{MAX_BANS_READ, StoredBan};
pub use model::*;
pub use nodes::{NODE_GONE_AFTER, NODE_HEARTBEAT, NodeInfo};
pub use outbox::*;
pub use password::{MAX_PASSWORD_LEN, PasswordHasher, Verified};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name (username, admin) is already taken.
    #[error("{0} already exists")]
    Duplicate(String),
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A field failed validation.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Passwords are limited to 1 KiB.
    #[error("password longer than {MAX_PASSWORD_LEN} bytes")]
    PasswordTooLong,
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The database URL is not usable.
    #[error("database url: {0}")]
    Url(String),
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {0}")]
    Corrupt(&'static str),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Duplicate("record".into());
        }
        StoreError::Db(e)
    }
}

impl StoreError {
    /// Whether trying again later may succeed: the database is unreachable,
    /// busy or locked, shutting down, or the pool had no connection in time.
    /// Anything else (a constraint, a value it cannot take) fails the same
    /// way again.
    pub fn is_transient(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // Primary result codes (the low byte of an extended
                    // one): BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN,
                    // PROTOCOL. What is wrong is the database or its disk,
                    // not the data.
                    matches!(code.parse::<i64>(), Ok(n) if matches!(n & 0xff, 5 | 6 | 8 | 10 | 13 | 14 | 15))
                } else {
                    // SQLSTATE: connection exceptions (08), insufficient
                    // resources (53), operator intervention (57), system
                    // errors (58), serialization failures and deadlocks,
                    // a read-only transaction (a standby during fail-over),
                    // locks not available.
                    ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))
                        || ["40001", "40P01", "25006", "55P03", "55006"].contains(&code.as_ref())
                }
            }
            _ => false,
        }
    }
}

/// Result alias for the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// The two SQL dialects behind one API.
#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same sqlx expression on whichever pool this store holds: both
/// dialects accept the one query text (`$N` placeholders, `RETURNING`,
/// `ON CONFLICT`), and rows decode through the same `FromRow` types.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            crate::Db::Sqlite($pool) => $body,
            crate::Db::Postgres($pool) => $body,
        }
    };
    // With `$db` naming the database type, for code whose query type or
    // text depends on it (the audit batch insert, `outbox.rs`).
    ($store:expr, $pool:ident, $db:ident => $body:expr) => {
        match &$store.db {
            crate::Db::Sqlite($pool) => {
                type $db = sqlx::Sqlite;
                $body
            }
            crate::Db::Postgres($pool) => {
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    hasher: PasswordHasher,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect())
            .finish()
    }
}

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://…`). SQLite files
    /// and their folder are created if missing, in WAL mode with a busy
    /// timeout; a commit is on disk at the next checkpoint (see
    /// [`Store::connect_synced`]).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Store> {
        Store::connect_synced(url, max_connections, false).await
    }

    /// [`Store::connect`]; with `synced`, every SQLite commit is on disk
    /// before it returns (`synchronous = FULL`: the WAL is flushed at each
    /// commit), so that an audit event outlives a power cut as the upload it
    /// records does (`durable_uploads`). Without it a power cut can roll back
    /// the last commits (never corrupt the file). PostgreSQL's commits follow
    /// the server's `synchronous_commit` (on by default).
    pub async fn connect_synced(
        url: &str,
        max_connections: u32,
        synced: bool,
    ) -> StoreResult<Store> {
        let max_connections = max_connections.max(1);
        let db = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(if synced {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            if let Some(parent) = opts.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)
                    .map_err(|e| StoreError::Url(format!("{}: {e}", parent.display())))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            Db::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts =
                PgConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            Db::Postgres(pool)
        } else {
            return Err(StoreError::Url(
                "must start with sqlite:// or postgres://".into(),
            ));
        };
        Ok(Store {
            db,
            hasher: PasswordHasher::new(default_hash_concurrency())?,
        })
    }

    /// Applies the embedded migrations of this dialect.
    pub async fn migrate(&self) -> StoreResult<()> {
        match &self.db {
            Db::Sqlite(p) => sqlx::migrate!("../../migrations/sqlite").run(p).await?,
            Db::Postgres(p) => sqlx::migrate!("../../migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn dialect(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// The password hasher shared by every login path.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Whether the database answers at all (a trivial query).
    pub async fn ping(&self) -> bool {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.is_ok())
    }

    /// Closes the pool (waits for connections to return).
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// One hash at a time per core: more would only queue inside the CPU and
/// multiply memory (19 MiB each).
fn default_hash_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sqlx::Connection;

    /// What `PRAGMA synchronous` says on each of the pool's connections
    /// (the setting is per connection): 2 = FULL, 1 = NORMAL.
    async fn synchronous_levels(store: &Store) -> Vec<i64> {
        let Db::Sqlite(pool) = &store.db else {
            panic!("not SQLite")
        };
        let mut conns = Vec::new();
        for _ in 0..2 {
            conns.push(pool.acquire().await.unwrap());
        }
        let mut levels = Vec::new();
        for c in &mut conns {
            let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            levels.push(level);
        }
        levels
    }

    #[tokio::test]
    async fn a_synced_sqlite_store_flushes_every_commit_the_default_at_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let synced = Store::connect_synced(&url, 2, true).await.unwrap();
        assert_eq!(synchronous_levels(&synced).await, [2, 2]);
        synced.close().await;
        let default = Store::connect(&url, 2).await.unwrap();
        assert_eq!(synchronous_levels(&default).await, [1, 1]);
    }

    #[tokio::test]
    async fn busy_and_unreachable_databases_are_transient_bad_statements_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::ZERO);
        let mut a = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let mut b = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut a)
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut a)
            .await
            .unwrap();
        let busy = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut b)
            .await
            .unwrap_err();
        assert!(StoreError::from(busy).is_transient());
        let bad = sqlx::query("SELECT * FROM nope")
            .execute(&mut b)
            .await
            .unwrap_err();
        assert!(!StoreError::from(bad).is_transient());
        // Nothing listens on port 1 of loopback.
        let refused = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:1/x")
            .await
            .unwrap_err();
        assert!(StoreError::from(refused).is_transient());
        if let Ok(url) = std::env::var("DROPGATE_TEST_POSTGRES_URL") {
            let mut pg = sqlx::PgConnection::connect(&url).await.unwrap();
            // 22012: division by zero (and numeric, like 42501, whose low
            // byte would read as SQLite's BUSY).
            let e = sqlx::query("SELECT 1/0")
                .execute(&mut pg)
                .await
                .unwrap_err();
            assert!(!StoreError::from(e).is_transient());
            let e = sqlx::query("SELECT chr(0)")
                .execute(&mut pg)
                .await
                .unwrap_err();
            assert!(!StoreError::from(e).is_transient());
        }
    }
}
