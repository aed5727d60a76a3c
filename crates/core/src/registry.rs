//! Live sessions of every protocol: listed by the admin API, ended on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Direction of a transfer in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to server.
    Upload,
    /// Server to client.
    Download,
}

/// A transfer in progress, shown in the sessions list.
#[derive(Debug)]
pub(crate) struct TransferState {
    /// Virtual path.
    pub path: String,
    /// Which way.
    pub direction: Direction,
    /// Bytes moved so far (updated by the transfer as it goes).
    pub bytes: AtomicU64,
    /// When it started.
    pub started: Instant,
}

/// What the registry keeps about one session.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    /// Opaque id (hex).
    pub id: String,
    /// Account name.
    pub username: String,
    /// `ftp`, `ftps` or `sftp`.
    pub protocol: String,
    /// Client address.
    pub remote_addr: SocketAddr,
    /// `remote_addr` as events and snapshots show it, formatted once (every
    /// event of the session carries it).
    pub remote_text: String,
    /// Login time.
    pub started_at: DateTime<Utc>,
    /// Cancelled to disconnect the session.
    pub cancel: CancellationToken,
    /// Transfers in progress (SFTP may run several).
    pub transfers: Mutex<Vec<Arc<TransferState>>>,
}

/// A serialisable snapshot of a session for the admin API (and for the
/// other nodes, which read it back from the store).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: String,
    /// Account name.
    pub username: String,
    /// Protocol.
    pub protocol: String,
    /// Client address.
    pub remote_addr: String,
    /// The node serving it (`[cluster] node_name`).
    #[serde(default)]
    pub node: String,
    /// Login time.
    pub started_at: DateTime<Utc>,
    /// The current transfer, if any.
    pub transfer: Option<TransferSnapshot>,
}

/// A transfer in a [`SessionSnapshot`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferSnapshot {
    /// Virtual path.
    pub path: String,
    /// Which way.
    pub direction: Direction,
    /// Bytes so far.
    pub bytes: u64,
    /// Seconds since it started.
    pub elapsed_secs: f64,
}

/// All live sessions of this process.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<String, Arc<SessionEntry>>>,
    /// This node's name, put in every snapshot.
    node: String,
}

impl SessionRegistry {
    /// An empty registry of the node `node`.
    pub fn new(node: String) -> SessionRegistry {
        SessionRegistry {
            sessions: Mutex::default(),
            node,
        }
    }

    /// Registers a session unless its account already has `max_sessions`
    /// live ones (0: no limit); check and insert are one step, so parallel
    /// logins cannot overshoot.
    pub(crate) fn try_insert(&self, entry: Arc<SessionEntry>, max_sessions: u64) -> bool {
        let mut sessions = self.lock();
        if max_sessions > 0 {
            let live = sessions
                .values()
                .filter(|e| e.username == entry.username)
                .count() as u64;
            if live >= max_sessions {
                return false;
            }
        }
        sessions.insert(entry.id.clone(), entry);
        true
    }

    /// Live sessions of one account.
    pub fn count_user(&self, username: &str) -> usize {
        self.lock()
            .values()
            .filter(|e| e.username == username)
            .count()
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SessionEntry>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Snapshot of every live session, oldest first.
    pub fn list(&self) -> Vec<SessionSnapshot> {
        let mut out: Vec<SessionSnapshot> = self
            .lock()
            .values()
            .map(|e| {
                let transfer = e
                    .transfers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .first()
                    .map(|t| TransferSnapshot {
                        path: t.path.clone(),
                        direction: t.direction,
                        bytes: t.bytes.load(Ordering::Relaxed),
                        elapsed_secs: t.started.elapsed().as_secs_f64(),
                    });
                SessionSnapshot {
                    id: e.id.clone(),
                    username: e.username.clone(),
                    protocol: e.protocol.clone(),
                    remote_addr: e.remote_text.clone(),
                    node: self.node.clone(),
                    started_at: e.started_at,
                    transfer,
                }
            })
            .collect();
        out.sort_by_key(|s| s.started_at);
        out
    }

    /// Ends one session; `false` if there is no such session.
    pub fn disconnect(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(e) => {
                e.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Ends every session of one account; returns how many.
    pub fn disconnect_user(&self, username: &str) -> usize {
        let sessions = self.lock();
        let mut n = 0;
        for e in sessions.values().filter(|e| e.username == username) {
            e.cancel.cancel();
            n += 1;
        }
        n
    }

    /// Ends every session (shutdown).
    pub fn disconnect_all(&self) {
        for e in self.lock().values() {
            e.cancel.cancel();
        }
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
