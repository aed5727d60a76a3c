//! The ban list shared by the nodes on one store (see migration 0006).
//! Nodes keep their own list in memory for the accept loop and exchange it
//! through this table: written on a ban, read every few seconds, deleted on
//! a lift.

use chrono::{DateTime, Utc};

use crate::{Store, StoreResult, from_ms, on_pool, to_ms};

/// Most rows one read returns (as many as a node tracks).
pub const MAX_BANS_READ: usize = 100_000;

/// One stored ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBan {
    /// An IPv4 address or an IPv6 `/64` (`2001:db8:1:2::/64`).
    pub source: String,
    /// Failed logins that led to it.
    pub failures: u32,
    /// When it began.
    pub banned_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Records a ban; a source banned already keeps the later end.
    pub async fn put_ban(&self, ban: &StoredBan) -> StoreResult<()> {
        const Q: &str = "INSERT INTO bans (source, failures, banned_at, expires_at) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (source) DO UPDATE SET \
                         failures = excluded.failures, banned_at = excluded.banned_at, \
                         expires_at = excluded.expires_at \
                         WHERE bans.expires_at < excluded.expires_at";
        on_pool!(self, p => sqlx::query(Q)
            .bind(&ban.source)
            .bind(i64::from(ban.failures))
            .bind(to_ms(ban.banned_at))
            .bind(to_ms(ban.expires_at))
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The bans still running at `now`, oldest first.
    pub async fn active_bans(&self, now: DateTime<Utc>) -> StoreResult<Vec<StoredBan>> {
        const Q: &str = "SELECT source, failures, banned_at, expires_at FROM bans \
                         WHERE expires_at > $1 ORDER BY banned_at LIMIT $2";
        let rows: Vec<(String, i64, i64, i64)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(to_ms(now))
            .bind(MAX_BANS_READ as i64)
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(source, failures, banned_at, expires_at)| StoredBan {
                source,
                failures: u32::try_from(failures).unwrap_or(u32::MAX),
                banned_at: from_ms(banned_at),
                expires_at: from_ms(expires_at),
            })
            .collect())
    }

    /// Lifts the ban on `source`; whether one was running at `now`.
    pub async fn delete_ban(&self, source: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        const Q: &str = "DELETE FROM bans WHERE source = $1 RETURNING expires_at";
        let rows: Vec<(i64,)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(source)
            .fetch_all(p)
            .await?);
        Ok(rows.iter().any(|(e,)| *e > to_ms(now)))
    }

    /// Forgets bans that ended before `now`.
    pub async fn delete_expired_bans(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        const Q: &str = "DELETE FROM bans WHERE expires_at <= $1";
        let n = on_pool!(self, p => sqlx::query(Q)
            .bind(to_ms(now))
            .execute(p)
            .await
            .map(|r| r.rows_affected())?);
        Ok(n)
    }
}
