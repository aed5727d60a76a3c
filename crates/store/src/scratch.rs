//! A PostgreSQL database of a test's own (tests only: the feature
//! `test-postgres`, and this crate's own unit tests).
//!
//! Tests that run against PostgreSQL whenever `DROPGATE_TEST_POSTGRES_URL`
//! is set each make a database of their own, so that runs never see each
//! other's rows, and drop it at the end. The name is ours (a prefix and the
//! process id and a count, never input), hence the assembled statements.

use std::sync::atomic::{AtomicU32, Ordering};

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
    /// A fresh, empty database `<prefix>_<pid>_<n>` (an earlier run's of that
    /// name is dropped first), or `None` when [`TEST_POSTGRES_URL`] is not
    /// set: the caller says which test did not run. Panics when the server
    /// is set but refuses (a test failure, not a skip).
    pub async fn create(prefix: &str) -> Option<ScratchPostgres> {
        let base = std::env::var(TEST_POSTGRES_URL).ok()?;
        assert!(
            !prefix.is_empty()
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "a scratch database's prefix is [a-z0-9_]+: {prefix}"
        );
        // Two tests of one binary never share a name.
        static MADE: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        // Checked before anything is made, so that a bad url leaves nothing.
        let Some(url) = with_database(&base, &name) else {
            panic!("{TEST_POSTGRES_URL} is not a postgres://host/database url");
        };
        let admin = match PgPool::connect(&base).await {
            Ok(pool) => pool,
            Err(e) => panic!("{TEST_POSTGRES_URL}: cannot connect: {e}"),
        };
        let scratch = ScratchPostgres { url, admin, name };
        scratch.drop_if_there().await;
        scratch.drop_left_behind(prefix).await;
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

    /// Drops this prefix's databases whose process has ended: what a test
    /// that panicked or was killed before [`Self::drop_database`] left.
    /// A running process's are kept (tests of several binaries run at once).
    async fn drop_left_behind(&self, prefix: &str) {
        // Without a /proc of our own no process can be told to run.
        if !cfg!(target_os = "linux") || !std::path::Path::new("/proc/self").exists() {
            return;
        }
        let names: Vec<String> = match sqlx::query_scalar("SELECT datname FROM pg_database")
            .fetch_all(&self.admin)
            .await
        {
            Ok(names) => names,
            Err(e) => panic!("listing databases: {e}"),
        };
        for name in names {
            if let Some(pid) = scratch_pid(&name, prefix)
                && pid != std::process::id()
                && !process_runs(pid)
            {
                // Best effort: one we may not drop (another role's) stays.
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&self.admin)
                    .await
                {
                    eprintln!("leaving database {name}: {e}");
                }
            }
        }
    }

    async fn drop_if_there(&self) {
        self.execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

/// The process id in `name` when it is a scratch database of `prefix`
/// (`<prefix>_<pid>_<n>`, nothing else: the name is then safe to assemble
/// into a statement).
fn scratch_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, n) = name
        .strip_prefix(prefix)?
        .strip_prefix('_')?
        .split_once('_')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Whether process `pid` still runs, by `/proc` (the sweep runs only where
/// that exists). Processes in another PID namespace or on another machine
/// that share the server are not seen: point such runs at servers of
/// their own.
fn process_runs(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `base` with its database (the url's path) replaced by `name`, its
/// query (`?host=/run/postgresql`, `?sslmode=…`) kept; `None` when `base`
/// names no database.
fn with_database(base: &str, name: &str) -> Option<String> {
    let (url, query) = match base.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (base, None),
    };
    let authority = url.find("://")? + 3;
    let path = authority + url[authority..].find('/')?;
    let mut out = format!("{}/{name}", &url[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{process_runs, scratch_pid, with_database};

    #[test]
    fn only_a_prefixs_own_names_are_read_as_scratch_databases() {
        assert_eq!(scratch_pid("dg_x_123_0", "dg_x"), Some(123));
        assert_eq!(scratch_pid("dg_x_123_45", "dg_x"), Some(123));
        assert_eq!(scratch_pid("dg_x_123", "dg_x"), None);
        assert_eq!(scratch_pid("dg_x_y_123_0", "dg_x"), None);
        assert_eq!(scratch_pid("dg_x_123_0; DROP", "dg_x"), None);
        assert_eq!(scratch_pid("dg_xy_123_0", "dg_x"), None);
        assert_eq!(scratch_pid("test", "dg_x"), None);
        assert_eq!(scratch_pid("dg_x_99999999999_0", "dg_x"), None);
    }

    #[test]
    fn this_process_runs() {
        assert!(process_runs(std::process::id()));
    }

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_query_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x_1").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/x_1")
        );
        assert_eq!(
            with_database("postgres:///test?host=/run/postgresql", "x_1").as_deref(),
            Some("postgres:///x_1?host=/run/postgresql")
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=require", "x_1").as_deref(),
            Some("postgres://u@h/x_1?sslmode=require")
        );
        assert_eq!(with_database("postgres://u@h:5432", "x_1"), None);
        assert_eq!(with_database("test", "x_1"), None);
    }
}
