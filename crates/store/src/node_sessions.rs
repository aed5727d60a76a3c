//! Live sessions across nodes (migration 0007): each node publishes its
//! sessions as one row, and asks another node to end one of its sessions
//! through `session_kicks`.

use chrono::{DateTime, Utc};

use crate::{Store, StoreResult, from_ms, on_pool, to_ms};

/// Kick requests older than this are dropped (their node is gone).
const KICK_TTL_MS: i64 = 60_000;

impl Store {
    /// Replaces `node`'s published sessions (`sessions`: a JSON array).
    pub async fn publish_sessions(
        &self,
        node: &str,
        sessions: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        const Q: &str = "INSERT INTO node_sessions (node, sessions, updated_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (node) DO UPDATE SET sessions = excluded.sessions, \
                         updated_at = excluded.updated_at";
        on_pool!(self, p => sqlx::query(Q)
            .bind(node)
            .bind(sessions)
            .bind(to_ms(now))
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Every node's published sessions updated at `since` or later:
    /// `(node, JSON array, updated_at)`.
    pub async fn node_sessions(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, String, DateTime<Utc>)>> {
        const Q: &str = "SELECT node, sessions, updated_at FROM node_sessions \
                         WHERE updated_at >= $1 ORDER BY node";
        let rows: Vec<(String, String, i64)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(to_ms(since))
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(node, sessions, at)| (node, sessions, from_ms(at)))
            .collect())
    }

    /// Removes `node`'s published sessions (it stopped).
    pub async fn drop_node_sessions(&self, node: &str) -> StoreResult<()> {
        const Q: &str = "DELETE FROM node_sessions WHERE node = $1";
        on_pool!(self, p => sqlx::query(Q)
            .bind(node)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Asks `node` to end session `id`.
    pub async fn request_kick(&self, id: &str, node: &str, now: DateTime<Utc>) -> StoreResult<()> {
        const Q: &str = "INSERT INTO session_kicks (id, node, requested_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (id) DO NOTHING";
        on_pool!(self, p => sqlx::query(Q)
            .bind(id)
            .bind(node)
            .bind(to_ms(now))
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Takes (removes and returns) the sessions `node` was asked to end,
    /// and drops requests nobody took within a minute.
    pub async fn take_kicks(&self, node: &str, now: DateTime<Utc>) -> StoreResult<Vec<String>> {
        const TAKE: &str = "DELETE FROM session_kicks WHERE node = $1 RETURNING id";
        const STALE: &str = "DELETE FROM session_kicks WHERE requested_at < $1";
        let ids: Vec<(String,)> = on_pool!(self, p => sqlx::query_as(TAKE)
            .bind(node)
            .fetch_all(p)
            .await?);
        on_pool!(self, p => sqlx::query(STALE)
            .bind(to_ms(now) - KICK_TTL_MS)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}
