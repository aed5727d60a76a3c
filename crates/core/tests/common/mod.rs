//! What the audit-log tests share: an upload event by path.
#![allow(dead_code)]

use chrono::Utc;
use dropgate_core::store::{Event, EventKind, Outcome};

/// A completed upload of `path` by alice.
pub(crate) fn event(path: &str) -> Event {
    Event {
        id: 0,
        time: Utc::now(),
        kind: EventKind::Upload,
        username: "alice".into(),
        protocol: "sftp".into(),
        remote_addr: "127.0.0.1:1".into(),
        path: Some(path.into()),
        target_path: None,
        bytes: Some(1),
        duration_ms: None,
        outcome: Outcome::Ok,
        sha256: Some("00".into()),
        message: None,
        node: "n".into(),
        session_id: None,
    }
}
