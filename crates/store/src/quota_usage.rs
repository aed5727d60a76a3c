//! Storage in use per account across the nodes sharing one bucket
//! (migration 0009). The counts are what every node's sessions committed
//! and reserved; each node adds its own changes and reads the totals.

use crate::{Store, StoreResult, on_pool};

impl Store {
    /// The stored usage of `username`: `(bytes, files)`.
    pub async fn quota_usage(&self, username: &str) -> StoreResult<Option<(u64, u64)>> {
        const Q: &str = "SELECT bytes, files FROM quota_usage WHERE username = $1";
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(username)
            .fetch_optional(p)
            .await?);
        Ok(row.map(counts))
    }

    /// Every stored usage: `(username, bytes, files)`.
    pub async fn all_quota_usage(&self) -> StoreResult<Vec<(String, u64, u64)>> {
        const Q: &str = "SELECT username, bytes, files FROM quota_usage";
        let rows: Vec<(String, i64, i64)> = on_pool!(self, p => sqlx::query_as(Q)
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(u, b, f)| {
                let (b, f) = counts((b, f));
                (u, b, f)
            })
            .collect())
    }

    /// Stores `(bytes, files)` for `username` unless a row is there, and
    /// returns what is stored: of two nodes measuring at once, both get the
    /// one that won.
    pub async fn init_quota_usage(
        &self,
        username: &str,
        bytes: u64,
        files: u64,
    ) -> StoreResult<(u64, u64)> {
        const Q: &str = "INSERT INTO quota_usage (username, bytes, files) VALUES ($1, $2, $3) \
                         ON CONFLICT (username) DO NOTHING";
        on_pool!(self, p => sqlx::query(Q)
            .bind(username)
            .bind(clamp(bytes))
            .bind(clamp(files))
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(self.quota_usage(username).await?.unwrap_or((bytes, files)))
    }

    /// Adds changes (negative: given back) to `username`'s usage, never
    /// below zero, and returns the new totals; `None` if it has no row.
    pub async fn add_quota_usage(
        &self,
        username: &str,
        bytes: i64,
        files: i64,
    ) -> StoreResult<Option<(u64, u64)>> {
        const Q: &str = "UPDATE quota_usage SET \
                         bytes = CASE WHEN bytes + $2 < 0 THEN 0 ELSE bytes + $2 END, \
                         files = CASE WHEN files + $3 < 0 THEN 0 ELSE files + $3 END \
                         WHERE username = $1 RETURNING bytes, files";
        let row: Option<(i64, i64)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(username)
            .bind(bytes)
            .bind(files)
            .fetch_optional(p)
            .await?);
        Ok(row.map(counts))
    }

    /// Drops `username`'s row (the next login measures its home again).
    pub async fn forget_quota_usage(&self, username: &str) -> StoreResult<()> {
        const Q: &str = "DELETE FROM quota_usage WHERE username = $1";
        on_pool!(self, p => sqlx::query(Q)
            .bind(username)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }
}

fn counts((bytes, files): (i64, i64)) -> (u64, u64) {
    (bytes.max(0) as u64, files.max(0) as u64)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
