//! Durable uploads written around the page cache (`O_DIRECT`).
//!
//! A durable upload goes to disk before it is acknowledged anyway, so copying
//! it into the page cache first only costs: a second copy of every byte, 1 GiB
//! of cache taken (and other files' cache evicted) per 1 GiB upload, and the
//! kernel's allocation of every one of those pages. On the benchmark machines
//! (virtual machines whose host takes freed guest memory back) that
//! allocation is what limited durable uploads: buffered `pwrite` of 1 GiB ran
//! at about 350 MB/s into fresh pages and 4,000 MB/s into recycled ones, while
//! `O_DIRECT` wrote the same GiB to the same disk at 1,250-1,580 MB/s with a
//! tenth of the CPU (docs/benchmarks.md, session 14).
//!
//! Which way is faster depends on the disk, and no probe chooses: on
//! session 33's VM a buffered write synced once was 1.19x as fast as
//! `O_DIRECT`, on session 34's `O_DIRECT` was 1.1x (recycled pages) to 6x
//! (fresh ones) as fast as buffered. Always direct loses at most the smaller
//! of those, keeps a durable upload from evicting other files' cache, and a
//! probe at every start would write tens of MiB and still misjudge a memory
//! state that changes with use.
//!
//! Only the 4 KiB-aligned middle of a large write goes this way; the head and
//! tail of a write that starts or ends off a block boundary (a resumed or
//! ASCII upload, the last bytes of a file) and every small write stay
//! buffered, and the commit's `fdatasync` makes both kinds durable (it also
//! flushes the device's write cache). Linux keeps the two coherent: a direct
//! write first writes back and drops cached pages of its range. The file is
//! reopened through `/proc/self/fd`, so the second descriptor is certainly the
//! same inode (no second lookup of a name a client can change); where that or
//! `O_DIRECT` is refused (no /proc, tmpfs before Linux 6.6, FUSE) or a write
//! is refused for its alignment, the upload simply stays buffered.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Offset, length and memory alignment of direct writes. 4 KiB satisfies the
/// logical block size of every common device (512 B or 4 KiB).
const ALIGN: usize = 4096;

/// Below this a write stays buffered: small writes gain nothing, and a
/// direct write waits for the device while a buffered one does not. SFTP
/// writes (at most 256 KiB each, many in flight) all stay buffered: the direct
/// writes of one upload go one at a time. FTP writes 1 MiB chunks.
pub(crate) const MIN: usize = 512 << 10;

/// The part of a write of `len` bytes at `offset` that can go direct, as a
/// range of the write's bytes: block-aligned at both ends, at least [`MIN`].
pub(crate) fn middle(offset: u64, len: usize) -> Option<(usize, usize)> {
    let align = ALIGN as u64;
    let start = offset.checked_next_multiple_of(align)?;
    let end = offset.checked_add(len as u64)? / align * align;
    if end <= start || end - start < MIN as u64 {
        return None;
    }
    Some(((start - offset) as usize, (end - offset) as usize))
}

/// An upload's direct descriptor, opened on its first large write (small
/// uploads never pay for the reopen).
#[derive(Debug)]
pub(crate) struct Lazy {
    durable: bool,
    cell: OnceLock<Option<Uncached>>,
}

impl Lazy {
    /// Direct writes for a durable upload; none for one answered from the
    /// page cache (there the cache is the point).
    pub(crate) fn new(durable: bool) -> Lazy {
        Lazy {
            durable,
            cell: OnceLock::new(),
        }
    }

    /// Whether a write of `len` bytes at `offset` will go (partly) direct,
    /// without opening anything.
    pub(crate) fn would_use(&self, offset: u64, len: usize) -> bool {
        self.durable
            && middle(offset, len).is_some()
            && self
                .cell
                .get()
                .is_none_or(|u| u.as_ref().is_some_and(Uncached::is_on))
    }

    /// The direct descriptor for a write of `len` bytes at `offset` of
    /// `file`, if that write should use it.
    pub(crate) fn for_write(&self, file: &File, offset: u64, len: usize) -> Option<&Uncached> {
        if !self.durable || middle(offset, len).is_none() {
            return None;
        }
        self.cell
            .get_or_init(|| Uncached::open(file))
            .as_ref()
            .filter(|u| u.is_on())
    }
}

/// A second, `O_DIRECT` descriptor of an upload's file.
#[derive(Debug)]
pub(crate) struct Uncached {
    file: File,
    /// Cleared when the file system refused a direct write: the rest of the
    /// upload is written buffered.
    on: AtomicBool,
    /// A block-aligned copy of the bytes being written (network buffers are
    /// not aligned); reused, so it costs one allocation per upload.
    scratch: Mutex<Vec<u8>>,
}

impl Uncached {
    /// Reopens `file` for direct writes; `None` where that is refused.
    #[cfg(target_os = "linux")]
    pub(crate) fn open(file: &File) -> Option<Uncached> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match reopened {
            Ok(file) => Some(Uncached {
                file,
                on: AtomicBool::new(true),
                scratch: Mutex::new(Vec::new()),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no O_DIRECT for this upload; writing it buffered");
                None
            }
        }
    }

    /// Elsewhere every upload is written buffered.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn open(_file: &File) -> Option<Uncached> {
        None
    }

    /// Whether direct writes are still being made.
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Writes all of `data` at `offset`: its aligned [`middle`] direct, the
    /// rest through `buffered`. Returns how many bytes went through
    /// `buffered` (what early write-back has to start).
    pub(crate) fn write_all_at(
        &self,
        buffered: &File,
        data: &[u8],
        offset: u64,
    ) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let Some((start, end)) = middle(offset, data.len()).filter(|_| self.is_on()) else {
            buffered.write_all_at(data, offset)?;
            return Ok(data.len());
        };
        buffered.write_all_at(&data[..start], offset)?;
        let direct = self.write_direct(&data[start..end], offset + start as u64)?;
        let rest = start + direct;
        buffered.write_all_at(&data[rest..], offset + rest as u64)?;
        Ok(data.len() - direct)
    }

    /// Writes what it can of the block-aligned `data` at `offset` direct;
    /// returns how much. Less than all only when the file system refused a
    /// write for its alignment (a short write at a full disk can leave an
    /// unaligned remainder too): the caller writes the rest buffered, as every
    /// later write of the upload will be.
    fn write_direct(&self, data: &[u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let need = data.len() + ALIGN;
        if scratch.len() < need {
            scratch.resize(need, 0);
        }
        let pad = scratch.as_ptr().align_offset(ALIGN);
        let Some(aligned) = scratch.get_mut(pad..pad + data.len()) else {
            return Ok(0);
        };
        aligned.copy_from_slice(data);
        let mut done = 0;
        while done < aligned.len() {
            let at = offset + done as u64;
            if !at.is_multiple_of(ALIGN as u64) {
                return Ok(done);
            }
            match self.file.write_at(&aligned[done..], at) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(
                        "direct write refused; writing the rest of this upload buffered"
                    );
                    self.on.store(false, Ordering::Relaxed);
                    return Ok(done);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn middle_is_the_aligned_part_of_large_writes_only() {
        assert_eq!(middle(0, 1 << 20), Some((0, 1 << 20)));
        // a resumed upload: the head up to the next block stays buffered
        assert_eq!(middle(100, 1 << 20), Some((3996, (1 << 20) - 100)));
        // the tail past the last block boundary stays buffered
        assert_eq!(middle(1 << 20, (1 << 20) + 17), Some((0, 1 << 20)));
        assert_eq!(middle(0, MIN - 1), None);
        assert_eq!(middle(0, 4 << 10), None);
        assert_eq!(middle(4095, MIN), None);
        assert_eq!(middle(u64::MAX - 10, 1 << 20), None);
    }

    /// Distinct bytes, so a misplaced block shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn new_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("upload"))
            .unwrap();
        (dir, file)
    }

    #[test]
    fn large_writes_go_direct_and_land_byte_for_byte() {
        let (dir, file) = new_file();
        let direct = Uncached::open(&file).expect("the test folder takes O_DIRECT");
        let mut expect = Vec::new();
        // FTP's 1 MiB chunks from 0, all direct.
        for seed in 0..3u8 {
            let chunk = pattern(1 << 20, seed);
            let buffered = direct
                .write_all_at(&file, &chunk, expect.len() as u64)
                .unwrap();
            assert_eq!(buffered, 0, "an aligned 1 MiB write goes direct");
            expect.extend_from_slice(&chunk);
        }
        // An odd-sized chunk: its last partial block is written buffered.
        let chunk = pattern((1 << 20) + 777, 9);
        let buffered = direct
            .write_all_at(&file, &chunk, expect.len() as u64)
            .unwrap();
        assert_eq!(buffered, 777);
        expect.extend_from_slice(&chunk);
        // Now unaligned (as after a resume or ASCII conversion): the head up
        // to the next block and the tail stay buffered, the middle is direct.
        let chunk = pattern(1 << 20, 33);
        let buffered = direct
            .write_all_at(&file, &chunk, expect.len() as u64)
            .unwrap();
        assert_eq!(buffered, (4096 - 777) + 777);
        expect.extend_from_slice(&chunk);
        // Small writes stay buffered.
        let chunk = pattern(4096, 77);
        let buffered = direct
            .write_all_at(&file, &chunk, expect.len() as u64)
            .unwrap();
        assert_eq!(buffered, 4096);
        expect.extend_from_slice(&chunk);
        assert_eq!(std::fs::read(dir.path().join("upload")).unwrap(), expect);
    }

    #[test]
    fn a_direct_write_replaces_what_a_buffered_one_left_in_the_cache() {
        let (dir, file) = new_file();
        let direct = Uncached::open(&file).unwrap();
        use std::os::unix::fs::FileExt;
        // Buffered first (dirty in the page cache), then the same range direct
        // (an SFTP client rewriting a range), then a buffered partial rewrite.
        file.write_all_at(&pattern(2 << 20, 1), 0).unwrap();
        let mut expect = pattern(2 << 20, 2);
        assert_eq!(direct.write_all_at(&file, &expect, 0).unwrap(), 0);
        file.write_all_at(b"tail", 4094).unwrap();
        expect[4094..4098].copy_from_slice(b"tail");
        assert_eq!(std::fs::read(dir.path().join("upload")).unwrap(), expect);
    }

    #[test]
    fn once_refused_the_rest_is_written_buffered() {
        let (dir, file) = new_file();
        let direct = Uncached::open(&file).unwrap();
        direct.on.store(false, Ordering::Relaxed);
        let chunk = pattern(1 << 20, 5);
        assert_eq!(direct.write_all_at(&file, &chunk, 0).unwrap(), 1 << 20);
        assert_eq!(std::fs::read(dir.path().join("upload")).unwrap(), chunk);
        let lazy = Lazy::new(true);
        assert!(lazy.would_use(0, 1 << 20));
        assert!(lazy.for_write(&file, 0, 1 << 20).is_some());
        assert!(!lazy.would_use(0, 4096), "small writes stay buffered");
        assert!(
            !Lazy::new(false).would_use(0, 1 << 20),
            "page-cache uploads stay buffered"
        );
        assert!(Lazy::new(false).for_write(&file, 0, 1 << 20).is_none());
    }
}
