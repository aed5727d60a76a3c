//! Write-behind for durable uploads: their pages go to disk while the client
//! is still sending, and an upload of any size holds only a bounded share of
//! the page cache.
//!
//! Without it the kernel starts writing an upload to disk only when its dirty
//! pages age out (30 s) or pass `dirty_background_ratio`, so a 1 GiB upload
//! sat in the page cache and the final sync wrote all of it while the client
//! waited (measured: 0.54 s of a 1.4 s upload). Every [`WINDOW`] written,
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` queues the dirty pages for
//! writing and returns; the pages more than [`BEHIND`] below the furthest
//! write are then waited for and dropped from the cache
//! (`POSIX_FADV_DONTNEED`), so the next writes reuse them.
//!
//! That reuse is the point. Into fresh pages a buffered GiB ran at 350-630
//! MB/s on the benchmark VMs (their host takes freed guest memory back, and
//! the kernel pays for every new page), which is why sessions 34-36 wrote
//! durable uploads `O_DIRECT` (1,100-1,730 MB/s there). Recycling about
//! 40 MiB of pages, the same disk took the GiB at 1,600-1,960 MB/s, and on
//! disks where `O_DIRECT` itself is slow (session 36: 349 MB/s direct, 603
//! buffered) the kernel's write-back keeps its deep queue and large merged
//! writes (docs/benchmarks.md, session 37). Like a direct write, a durable
//! upload evicts no other file's cache. None of this makes anything durable
//! by itself: the commit's `fdatasync` does, and it finds at most about
//! `BEHIND + WINDOW` still to write.

use std::fs::File;
use std::io;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes written after which the next write-back is started.
pub(crate) const WINDOW: u64 = 8 << 20;
/// How far below the furthest write an upload's pages are waited for and
/// dropped: deep enough that the device always has work queued, small
/// enough to stay in the CPU-near part of the cache.
pub(crate) const BEHIND: u64 = 32 << 20;

/// Counts an upload's written bytes, starts write-back every [`WINDOW`] and
/// settles what lies [`BEHIND`].
#[derive(Debug)]
pub(crate) struct WriteBack {
    pending: AtomicU64,
    /// The furthest end written so far.
    end: AtomicU64,
    /// Below this, everything written was on disk and dropped from the
    /// cache when last settled (a later rewrite below it simply stays dirty
    /// until the commit's sync).
    settled: Mutex<u64>,
    /// Off for uploads answered from the page cache (`durable_uploads =
    /// false`): nothing waits for a final sync there, and writing back early
    /// would only spend CPU and disk time while the client is still sending.
    off: bool,
}

impl WriteBack {
    /// Write-behind for an upload whose commit syncs (`durable`), none otherwise.
    pub(crate) fn new(durable: bool) -> WriteBack {
        WriteBack {
            pending: AtomicU64::new(0),
            end: AtomicU64::new(0),
            settled: Mutex::new(0),
            off: !durable,
        }
    }

    /// Whether writing `len` more bytes would fill the window, so that
    /// [`WriteBack::wrote`] starts write-back and may wait for the device.
    pub(crate) fn fills_window(&self, len: u64) -> bool {
        !self.off && self.pending.load(Ordering::Acquire).saturating_add(len) >= WINDOW
    }

    /// Records `len` bytes just written at `offset` of `file`; once a window
    /// has filled, starts their write-back and settles the pages behind.
    /// Called on a blocking thread: waiting for the device here is the
    /// back-pressure we want.
    ///
    /// An error is the device failing a write-back this call waited for: the
    /// kernel reports such an error once per descriptor, to this wait and
    /// not again to the commit's `fdatasync`, so it must fail the upload.
    pub(crate) fn wrote(&self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        if self.off {
            return Ok(());
        }
        let end = self
            .end
            .fetch_max(offset.saturating_add(len), Ordering::AcqRel)
            .max(offset.saturating_add(len));
        let before = self.pending.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) < WINDOW {
            return Ok(());
        }
        self.pending.store(0, Ordering::Release);
        start(file);
        // Parallel writers (SFTP) skip a settling already under way: the
        // next window takes what it leaves.
        let Ok(mut settled) = self.settled.try_lock() else {
            return Ok(());
        };
        let upto = end.saturating_sub(BEHIND) / WINDOW * WINDOW;
        if upto > *settled {
            settle(file, *settled, upto - *settled)?;
            *settled = upto;
        }
        Ok(())
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
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed");
    }
}

/// Waits until `len` bytes of `file` from `offset` are written back (writing
/// any still dirty), then drops them from the page cache.
#[cfg(target_os = "linux")]
fn settle(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    #[allow(unsafe_code)]
    // SAFETY: as in `start`; the range is plain numbers.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, flags) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Refused outright (a file system without it): nothing was waited
        // for, so nothing was reported; the commit's sync does the work.
        if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ESPIPE) {
            return Ok(());
        }
        return Err(e);
    }
    // Advice only: the pages are clean, so dropping them loses nothing, and
    // should it fail they merely stay cached.
    if let Err(e) = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    ) {
        tracing::debug!(error = %e, "fadvise(DONTNEED) failed");
    }
    Ok(())
}

/// Elsewhere the final sync does all the work.
#[cfg(not(target_os = "linux"))]
fn start(_file: &File) {}

#[cfg(not(target_os = "linux"))]
fn settle(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn settled(w: &WriteBack) -> u64 {
        *w.settled.lock().unwrap()
    }

    #[test]
    fn settles_whole_windows_behind_the_furthest_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        let file = File::create(&path).unwrap();
        let w = WriteBack::new(true);
        let chunk = vec![5u8; 1 << 20];
        let mut at = 0u64;
        let mut write = |n: usize| {
            for _ in 0..n {
                file.write_all_at(&chunk, at).unwrap();
                w.wrote(&file, at, chunk.len() as u64).unwrap();
                at += chunk.len() as u64;
            }
        };
        write(40);
        assert_eq!(settled(&w), 8 << 20, "40 MiB written: the first window");
        write(8);
        assert_eq!(settled(&w), 16 << 20);
        // A rewrite far below the mark moves nothing back.
        file.write_all_at(b"again", 4096).unwrap();
        w.wrote(&file, 4096, 5).unwrap();
        assert_eq!(settled(&w), 16 << 20);
        file.sync_data().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 48 << 20);
        assert_eq!(&back[4096..4101], b"again");
        assert!(back[..4096].iter().all(|b| *b == 5));
    }

    #[test]
    fn says_which_write_fills_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("upload")).unwrap();
        let w = WriteBack::new(true);
        assert!(!w.fills_window(4096));
        assert!(w.fills_window(WINDOW));
        w.wrote(&file, 0, WINDOW - 4096).unwrap();
        assert!(!w.fills_window(4095));
        assert!(w.fills_window(4096));
        // That write starts write-back and empties the window.
        w.wrote(&file, WINDOW - 4096, 4096).unwrap();
        assert!(!w.fills_window(4096));
        assert!(
            !WriteBack::new(false).fills_window(WINDOW),
            "nothing to fill"
        );
    }

    #[test]
    fn page_cache_uploads_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("upload")).unwrap();
        let w = WriteBack::new(false);
        w.wrote(&file, 0, 100 << 20).unwrap();
        assert_eq!(settled(&w), 0);
    }
}
