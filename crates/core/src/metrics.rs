//! Process-wide counters for `/metrics`: logins, bytes, transfers, errors.
//! Plain atomics indexed by protocol, so counting costs nothing on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

use dropgate_store::Protocol;

fn idx(p: Protocol) -> usize {
    match p {
        Protocol::Ftp => 0,
        Protocol::Ftps => 1,
        Protocol::Sftp => 2,
    }
}

/// Counters since start, per protocol (`ftp`, `ftps`, `sftp`).
#[derive(Default)]
pub struct Metrics {
    logins_ok: [AtomicU64; 3],
    logins_failed: [AtomicU64; 3],
    bytes_in: [AtomicU64; 3],
    bytes_out: [AtomicU64; 3],
    uploads_ok: [AtomicU64; 3],
    uploads_failed: [AtomicU64; 3],
    downloads_ok: [AtomicU64; 3],
    downloads_failed: [AtomicU64; 3],
    errors: [AtomicU64; 3],
}

/// A point-in-time copy of one protocol's counters.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProtocolCounters {
    /// Successful logins.
    pub logins_ok: u64,
    /// Failed logins.
    pub logins_failed: u64,
    /// Bytes received from clients (uploads).
    pub bytes_in: u64,
    /// Bytes sent to clients (downloads).
    pub bytes_out: u64,
    /// Completed uploads.
    pub uploads_ok: u64,
    /// Failed or interrupted uploads.
    pub uploads_failed: u64,
    /// Completed downloads.
    pub downloads_ok: u64,
    /// Failed or interrupted downloads.
    pub downloads_failed: u64,
    /// Operations that failed for reasons other than the client's request.
    pub errors: u64,
}

impl Metrics {
    pub(crate) fn login(&self, p: Protocol, ok: bool) {
        let c = if ok {
            &self.logins_ok
        } else {
            &self.logins_failed
        };
        c[idx(p)].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn upload(&self, p: Protocol, bytes: u64, ok: bool) {
        self.bytes_in[idx(p)].fetch_add(bytes, Ordering::Relaxed);
        let c = if ok {
            &self.uploads_ok
        } else {
            &self.uploads_failed
        };
        c[idx(p)].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn download(&self, p: Protocol, bytes: u64, ok: bool) {
        self.bytes_out[idx(p)].fetch_add(bytes, Ordering::Relaxed);
        let c = if ok {
            &self.downloads_ok
        } else {
            &self.downloads_failed
        };
        c[idx(p)].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn error(&self, p: Protocol) {
        self.errors[idx(p)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of one protocol.
    pub fn snapshot(&self, p: Protocol) -> ProtocolCounters {
        let i = idx(p);
        let g = |a: &[AtomicU64; 3]| a[i].load(Ordering::Relaxed);
        ProtocolCounters {
            logins_ok: g(&self.logins_ok),
            logins_failed: g(&self.logins_failed),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            uploads_ok: g(&self.uploads_ok),
            uploads_failed: g(&self.uploads_failed),
            downloads_ok: g(&self.downloads_ok),
            downloads_failed: g(&self.downloads_failed),
            errors: g(&self.errors),
        }
    }
}
