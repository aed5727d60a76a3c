//! Committed files whose content is still being read back (an upload's
//! SHA-256 computed after its reply, `durable_uploads = false`).
//!
//! In the atomic modes (the only ones where a hash is put off) no upload ever
//! writes into a committed file: each writes a fresh temporary and renames
//! it. What can still change a committed file in place is a truncation by
//! path (SFTP `SETSTAT` with a size): it waits here until the read-back is
//! done, so the recorded SHA-256 is always that of the bytes the client
//! sent. Only this process's own writes are held back: the seal is no lock
//! on the file against other programs.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::sync::{Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// A write that waits longer than this for a read-back goes ahead and says
/// so in the log: a stuck reader must not stall a session for ever.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The sealed files and who waits for one.
#[derive(Default)]
struct Sealed {
    /// (device, inode) -> how many readers hold a seal on it.
    held: HashMap<(u64, u64), usize>,
    /// Writers waiting for a file to leave `held`.
    waiting: usize,
}

/// The sealed files, and the signal that one was released.
static SEALED: LazyLock<(Mutex<Sealed>, Condvar)> =
    LazyLock::new(|| (Mutex::new(Sealed::default()), Condvar::new()));

/// Keeps dropgate's own in-place writes away from a file while it lives.
#[derive(Debug)]
pub(crate) struct Seal {
    key: (u64, u64),
}

impl Seal {
    /// Seals the file `meta` describes.
    pub(crate) fn new(meta: &Metadata) -> Seal {
        let key = (meta.dev(), meta.ino());
        let (set, _) = &*SEALED;
        *set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .entry(key)
            .or_insert(0) += 1;
        Seal { key }
    }
}

impl Drop for Seal {
    fn drop(&mut self) {
        let (set, released) = &*SEALED;
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        let mut unsealed = false;
        if let Some(n) = set.held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                set.held.remove(&self.key);
                unsealed = true;
            }
        }
        // Writers wait only for their file to leave the set, and count
        // themselves under the lock before they wait: `notify_all` is a
        // system call every time, once per upload otherwise.
        let wake = unsealed && set.waiting > 0;
        drop(set);
        if wake {
            released.notify_all();
        }
    }
}

/// Waits (on a blocking thread) until no seal is held on the file `file` is
/// open on, before it is written in place.
pub(crate) fn wait_unsealed(file: &File) -> io::Result<()> {
    let m = file.metadata()?;
    let key = (m.dev(), m.ino());
    let (set, released) = &*SEALED;
    let mut guard = set.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + MAX_WAIT;
    while guard.held.contains_key(&key) {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                inode = key.1,
                "a committed upload is still being hashed after 60 s; writing to it anyway"
            );
            break;
        }
        guard.waiting += 1;
        guard = released
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        guard.waiting -= 1;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_write_waits_until_the_last_seal_on_its_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let other = File::create(dir.path().join("g")).unwrap();
        let first = Seal::new(&file.metadata().unwrap());
        let second = Seal::new(&file.metadata().unwrap());
        // Another file is not held back.
        wait_unsealed(&other).unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let waiter = {
            let done = done.clone();
            let file = File::open(&path).unwrap();
            std::thread::spawn(move || {
                wait_unsealed(&file).unwrap();
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!done.load(Ordering::SeqCst), "went ahead while sealed");
        drop(first);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !done.load(Ordering::SeqCst),
            "went ahead with one seal left"
        );
        let released = Instant::now();
        drop(second);
        waiter.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // Woken by the last release, not by the 60 s deadline.
        assert!(released.elapsed() < Duration::from_secs(5));
    }
}
