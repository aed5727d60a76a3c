//! Nodes sharing one store (`GET /api/v1/nodes`): each running `dropgate
//! serve` refreshes its row (a heartbeat) and removes it when it stops
//! cleanly; a node whose row has not been refreshed recently is gone (killed,
//! or cut off from the store) and drops out of the view.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Store, StoreResult, from_ms, on_pool, to_ms};

/// How often a running node refreshes its row.
pub const NODE_HEARTBEAT: Duration = Duration::from_secs(5);
/// A node not heard from for this long is gone.
pub const NODE_GONE_AFTER: Duration = Duration::from_secs(20);

/// One node as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    /// `[cluster] node_name` (default: the host name).
    pub name: String,
    /// The node's dropgate version.
    pub version: String,
    /// When the node started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen_at: DateTime<Utc>,
    /// What it listens on, as `"protocol address"` (`"sftp 0.0.0.0:2222"`).
    pub listeners: Vec<String>,
}

impl Store {
    /// Writes (or refreshes) `node`'s row.
    pub async fn node_heartbeat(&self, node: &NodeInfo) -> StoreResult<()> {
        const Q: &str = "INSERT INTO nodes (name, version, started_at, last_seen_at, listeners) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
                         started_at = excluded.started_at, last_seen_at = excluded.last_seen_at, \
                         listeners = excluded.listeners";
        let listeners = serde_json::to_string(&node.listeners).unwrap_or_else(|_| "[]".into());
        on_pool!(self, p => sqlx::query(Q)
            .bind(&node.name)
            .bind(&node.version)
            .bind(to_ms(node.started_at))
            .bind(to_ms(node.last_seen_at))
            .bind(&listeners)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The nodes heard from at `seen_since` or later, by name.
    pub async fn list_nodes(&self, seen_since: DateTime<Utc>) -> StoreResult<Vec<NodeInfo>> {
        const Q: &str = "SELECT name, version, started_at, last_seen_at, listeners FROM nodes \
                         WHERE last_seen_at >= $1 ORDER BY name";
        let rows: Vec<(String, String, i64, i64, String)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(to_ms(seen_since))
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(|(name, version, started, seen, listeners)| NodeInfo {
                name,
                version,
                started_at: from_ms(started),
                last_seen_at: from_ms(seen),
                listeners: serde_json::from_str(&listeners).unwrap_or_default(),
            })
            .collect())
    }

    /// Removes the row of the node `name` that started at `started_at` (a
    /// clean stop). A node of the same name started since (a restart that
    /// overlapped) keeps its row.
    pub async fn remove_node(&self, name: &str, started_at: DateTime<Utc>) -> StoreResult<()> {
        const Q: &str = "DELETE FROM nodes WHERE name = $1 AND started_at = $2";
        on_pool!(self, p => sqlx::query(Q)
            .bind(name)
            .bind(to_ms(started_at))
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The shared key material stored under `name`, if any.
    pub async fn cluster_key(&self, name: &str) -> StoreResult<Option<String>> {
        const Q: &str = "SELECT value FROM cluster_keys WHERE name = $1";
        let row: Option<(String,)> = on_pool!(self, p => sqlx::query_as(Q)
            .bind(name)
            .fetch_optional(p)
            .await?);
        Ok(row.map(|(v,)| v))
    }

    /// Stores `value` under `name` unless a value is there already, and
    /// returns what is stored: of two nodes offering their own at once,
    /// both get the one that won.
    pub async fn share_cluster_key(&self, name: &str, value: &str) -> StoreResult<String> {
        const Q: &str = "INSERT INTO cluster_keys (name, value, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO NOTHING";
        on_pool!(self, p => sqlx::query(Q)
            .bind(name)
            .bind(value)
            .bind(to_ms(Utc::now()))
            .execute(p)
            .await
            .map(|_| ())?);
        self.cluster_key(name)
            .await?
            .ok_or_else(|| crate::StoreError::NotFound(format!("cluster key {name}")))
    }
}
