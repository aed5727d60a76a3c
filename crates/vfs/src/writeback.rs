//! Early write-back of uploads, so that the `fdatasync` before an upload is
//! acknowledged waits for the last few MiB, not for the whole file.
//!
//! Without it the kernel starts writing an upload to disk only when its dirty
//! pages age out (30 s) or pass `dirty_background_ratio`, so a 1 GiB upload
//! sat in the page cache and the final sync wrote all of it while the client
//! waited (measured: 0.54 s of a 1.4 s upload). `sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE` queues the pages for writing and returns; it does
//! not make anything durable by itself (the commit's `fdatasync` still does).

use std::fs::File;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes written since the last write-back start after which the next one is started.
pub(crate) const WINDOW: u64 = 8 << 20;

/// Counts written bytes and starts write-back every [`WINDOW`].
#[derive(Debug)]
pub(crate) struct WriteBack {
    pending: AtomicU64,
    /// Off for uploads answered from the page cache (`durable_uploads =
    /// false`): nothing waits for a final sync there, and writing back early
    /// would only spend CPU and disk time while the client is still sending.
    off: bool,
}

impl WriteBack {
    /// Write-back for an upload whose commit syncs (`durable`), none otherwise.
    pub(crate) fn new(durable: bool) -> WriteBack {
        WriteBack {
            pending: AtomicU64::new(0),
            off: !durable,
        }
    }

    /// Records `len` bytes just written to `file`; starts the write-back of
    /// its dirty pages once a window has filled. Called on a blocking thread:
    /// the call can block briefly while the device queue is full, which is
    /// the back-pressure we want.
    pub(crate) fn wrote(&self, file: &File, len: u64) {
        if self.off {
            return;
        }
        let before = self.pending.fetch_add(len, Ordering::Relaxed);
        if before + len >= WINDOW {
            self.pending.store(0, Ordering::Relaxed);
            start(file);
        }
    }
}

/// Queues every dirty page of `file` for writing, without waiting for it.
/// Best effort: an error here only means the final sync has more to do.
#[cfg(target_os = "linux")]
fn start(file: &File) {
    // Neither rustix nor nix wraps sync_file_range(2); it is one plain call on
    // a descriptor we own.
    #[allow(unsafe_code)]
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and the
    // call reads no memory of ours (offset 0 and length 0 mean the whole file).
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed");
    }
}

/// Elsewhere the final sync does all the work.
#[cfg(not(target_os = "linux"))]
fn start(_file: &File) {}
