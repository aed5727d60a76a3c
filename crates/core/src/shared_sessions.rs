//! Live sessions across the nodes on one store. Each node publishes its
//! sessions every [`SESSION_SYNC`] (one row per node, replaced), takes the
//! requests other nodes left to end one of its sessions, and keeps the other
//! nodes' per-account counts for `max_sessions`. The admin API lists every
//! node's sessions and ends one wherever it lives.
//!
//! The counts of other nodes are at most [`SESSION_SYNC`] old: two logins
//! on two nodes within that window may together exceed `max_sessions` by
//! one each. Within one node the check stays exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dropgate_store::{NODE_GONE_AFTER, StoreError};
use tokio_util::sync::CancellationToken;

use crate::share_health::ShareHealth;
use crate::{Gateway, SessionSnapshot};

/// How often sessions are published and kick requests taken.
pub const SESSION_SYNC: Duration = Duration::from_secs(2);
/// How long `end_session` waits for another node to end a session.
const KICK_WAIT: Duration = Duration::from_secs(8);

/// What `end_session` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndSession {
    /// Ended (here, or by the node holding it).
    Ended,
    /// No live session has that id.
    NotFound,
    /// The node holding it did not end it within the wait.
    NoAnswer(String),
}

impl Gateway {
    /// Publishes this node's sessions and takes kick requests every
    /// [`SESSION_SYNC`] until `shutdown`; then removes this node's row.
    pub async fn share_sessions(self: Arc<Self>, shutdown: CancellationToken) {
        let mut health = ShareHealth::new("live sessions", "");
        loop {
            health.record(self.exchange_sessions().await);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(SESSION_SYNC) => {}
            }
        }
        let node = &self.config.node_name;
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.store.drop_node_sessions(node)).await;
    }

    /// Keeps the quota counts of shared homes (S3) in the store every
    /// [`SESSION_SYNC`] until `shutdown` (on SQLite too, where the store is
    /// what a restart counts from; the last round runs once the sessions
    /// have ended: `serve` calls [`crate::QuotaTracker::sync`]). Nothing to
    /// do (it returns at once) when this node counts alone.
    pub async fn share_quota_counts(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.quotas.is_shared() {
            return;
        }
        let mut health = ShareHealth::new("quota counts", "");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(SESSION_SYNC) => {}
            };
            health.record(self.quotas.sync().await);
        }
    }

    /// One round: publish, end what was asked, read the others' counts.
    pub async fn exchange_sessions(&self) -> Result<(), StoreError> {
        let node = &self.config.node_name;
        let now = Utc::now();
        let mine = serde_json::to_string(&self.sessions.list()).unwrap_or_else(|_| "[]".into());
        self.store.publish_sessions(node, &mine, now).await?;
        for id in self.store.take_kicks(node, now).await? {
            if self.sessions.disconnect(&id) {
                tracing::info!(session = %id, "session ended at another node's request");
            }
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for session in self.other_nodes_sessions().await? {
            *counts.entry(session.username).or_default() += 1;
        }
        *self
            .remote_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = counts;
        Ok(())
    }

    /// Live sessions of `username` on the other nodes, as last read.
    pub fn remote_session_count(&self, username: &str) -> usize {
        self.remote_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(username)
            .copied()
            .unwrap_or(0)
    }

    /// The sessions the other nodes published recently (a node silent for
    /// `NODE_GONE_AFTER` is left out).
    async fn other_nodes_sessions(&self) -> Result<Vec<SessionSnapshot>, StoreError> {
        let since = Utc::now() - chrono::Duration::from_std(NODE_GONE_AFTER).unwrap_or_default();
        let mut out = Vec::new();
        for (node, json, _) in self.store.node_sessions(since).await? {
            if node == self.config.node_name {
                continue;
            }
            match serde_json::from_str::<Vec<SessionSnapshot>>(&json) {
                Ok(list) => out.extend(list.into_iter().map(|mut s| {
                    s.node = node.clone();
                    s
                })),
                Err(e) => tracing::warn!(%node, error = %e, "unreadable session list of a node"),
            }
        }
        Ok(out)
    }

    /// Every node's live sessions, oldest first: this node's as they are
    /// now, the others' as they last published them.
    pub async fn all_sessions(&self) -> Result<Vec<SessionSnapshot>, StoreError> {
        let mut all = self.sessions.list();
        all.extend(self.other_nodes_sessions().await?);
        all.sort_by_key(|s| s.started_at);
        Ok(all)
    }

    /// Asks the other nodes to end `username`'s sessions there (an account
    /// changed or deleted through this node). Best effort: the store being
    /// down is logged, and those sessions end at their next login check.
    pub async fn end_sessions_elsewhere(&self, username: &str) {
        let others = match self.other_nodes_sessions().await {
            Ok(others) => others,
            Err(e) => {
                tracing::warn!(user = %username, error = %e, "cannot ask other nodes to end the account's sessions");
                return;
            }
        };
        for s in others.iter().filter(|s| s.username == username) {
            if let Err(e) = self.store.request_kick(&s.id, &s.node, Utc::now()).await {
                tracing::warn!(user = %username, node = %s.node, error = %e, "cannot ask a node to end a session");
            }
        }
    }

    /// Ends session `id` wherever it lives: here at once, on another node by
    /// a request that node takes within [`SESSION_SYNC`] (waited for).
    pub async fn end_session(&self, id: &str) -> Result<EndSession, StoreError> {
        if self.sessions.disconnect(id) {
            return Ok(EndSession::Ended);
        }
        let Some(holder) = self
            .other_nodes_sessions()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.node)
        else {
            return Ok(EndSession::NotFound);
        };
        self.store.request_kick(id, &holder, Utc::now()).await?;
        let deadline = tokio::time::Instant::now() + KICK_WAIT;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let still = self
                .other_nodes_sessions()
                .await?
                .iter()
                .any(|s| s.id == id);
            if !still {
                return Ok(EndSession::Ended);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(EndSession::NoAnswer(holder));
            }
        }
    }
}
