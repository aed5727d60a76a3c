//! A PostgreSQL database of a test's own (tests only: the feature
//! `test-postgres`, and this crate's own unit tests).
//!
//! Tests that run against PostgreSQL whenever `DROPGATE_TEST_POSTGRES_URL`
//! is set each make a database of their own, so that runs never see each
//! other's rows, and drop it at the end. The name is ours (a prefix and the
//! process id, never input), hence the assembled statements.

use sqlx::postgres::{PgPool, PgQueryResult};

/// The variable naming the server's maintenance database (CI sets it).
pub const TEST_POSTGRES_URL: &str = "DROPGATE_TEST_POSTGRES_URL";

/// A database made for one test; [`ScratchPostgres::drop_database`] removes it.
pub struct ScratchPostgres {
    admin: PgPool,
    name: String,
    url: String,
}

impl ScratchPostgres {
    /// A fresh, empty database `<prefix>_<pid>` (an earlier run's of that
    /// name is dropped first), or `None` when [`TEST_POSTGRES_URL`] is not
    /// set: the caller says which test did not run. Panics when the server
    /// is set but refuses (a test failure, not a skip).
    pub async fn create(prefix: &str) -> Option<ScratchPostgres> {
        let base = std::env::var(TEST_POSTGRES_URL).ok()?;
        let Some((head, _)) = base.rsplit_once('/') else {
            panic!("{TEST_POSTGRES_URL} is not a postgres://…/database url");
        };
        let name = format!("{prefix}_{}", std::process::id());
        let admin = match PgPool::connect(&base).await {
            Ok(pool) => pool,
            Err(e) => panic!("{TEST_POSTGRES_URL}: cannot connect: {e}"),
        };
        let scratch = ScratchPostgres {
            url: format!("{head}/{name}"),
            admin,
            name,
        };
        scratch.drop_if_there().await;
        scratch
            .execute(&format!("CREATE DATABASE {}", scratch.name))
            .await;
        Some(scratch)
    }

    /// The database's own url.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name (for statements about its backends).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` over the maintenance connection; panics on an error.
    pub async fn execute(&self, sql: &str) -> PgQueryResult {
        match sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.admin)
            .await
        {
            Ok(done) => done,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// Drops the database (its remaining connections are ended).
    pub async fn drop_database(self) {
        self.drop_if_there().await;
        self.admin.close().await;
    }

    async fn drop_if_there(&self) {
        self.execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}
