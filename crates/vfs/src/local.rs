//! Local-disk backend, confined under one account's home with cap-std.
//!
//! Every operation goes through a `cap_std::fs::Dir` opened on the home, which
//! resolves paths with `openat2(RESOLVE_BENEATH)` (or a careful userspace walk
//! on older kernels): `..` past the home, absolute symlinks and symlinks that
//! lead outside all fail with EACCES. That is the second line of defence; the
//! first is [`VirtualPath`]'s canonicalizer. cap-std calls block, so they run
//! on tokio's blocking pool; only lookups the kernel can answer from its
//! caches (see [`cached`]) and reads the page cache holds run inline.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cap_fs_ext::{DirExt, SystemTimeSpec};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};

use crate::brief::{self, Blocking};
use crate::seal::{self, Seal};
use crate::writeback::WriteBack;
use crate::{
    Committed, CreateOptions, DirEntry, DirSource, DirStream, FileKind, FileReader, FileWriter,
    Found, FsStats, Inspect, LIST_BATCH, LastWrite, Metadata, Placed, Replaced, Storage,
    TEMP_PREFIX, UploadMode, VfsError, VfsResult, VirtualPath, WriteStart,
};

/// Local-disk storage rooted at one account's home.
#[derive(Clone)]
pub struct LocalStorage {
    home: Arc<Dir>,
    /// Atomic uploads try `O_TMPFILE` first (see [`unnamed`]); off only in
    /// tests of the named fallback.
    unnamed_temporaries: bool,
}

impl LocalStorage {
    /// Opens (creating it if needed) the home `home` below `storage_root`.
    /// `home` itself is resolved beneath the root, so it cannot point elsewhere.
    pub fn open(storage_root: &Path, home: &str) -> VfsResult<Self> {
        std::fs::create_dir_all(storage_root)?;
        let root = Dir::open_ambient_dir(storage_root, ambient_authority())?;
        let home = home.trim_matches('/');
        let home_dir = if home.is_empty() {
            root
        } else {
            root.create_dir_all(home)?;
            root.open_dir(home)?
        };
        Ok(LocalStorage {
            home: Arc::new(home_dir),
            unnamed_temporaries: true,
        })
    }

    /// This storage with every atomic upload in a named temporary, as on a
    /// file system without `O_TMPFILE`.
    #[cfg(test)]
    fn with_named_temporaries(mut self) -> Self {
        self.unnamed_temporaries = false;
        self
    }

    /// Removes an account's home and everything in it; `false` if there was
    /// none. Refused (`PermissionDenied`, nothing removed) when the home is a
    /// symlink or resolves to the storage root or outside it: removing it
    /// would remove what it points at.
    pub async fn remove_home(storage_root: &Path, home: &str) -> VfsResult<bool> {
        let (root, home) = (storage_root.to_owned(), home.to_owned());
        blocking(move || {
            let Some(real) = home_to_remove(&root, &home)? else {
                return Ok(false);
            };
            match std::fs::remove_dir_all(&real) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }
}

/// The real path of a home to remove, if it exists, after checking that it
/// is not a symlink and lies strictly below the storage root.
fn home_to_remove(root: &Path, home: &str) -> VfsResult<Option<std::path::PathBuf>> {
    let home = home.trim_matches('/');
    if home.is_empty() || home.split('/').any(|c| c == ".." || c == ".") {
        return Err(VfsError::PermissionDenied);
    }
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let path = root.join(home);
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => return Err(VfsError::PermissionDenied),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let real = path.canonicalize()?;
    if real == root || !real.starts_with(&root) {
        return Err(VfsError::PermissionDenied);
    }
    Ok(Some(real))
}

/// Batches of directory entries read on the blocking pool, a few listings
/// at a time for the whole process: each batch holds a thread only while it
/// reads, and many listings at once cannot crowd out transfers.
struct LocalDirSource {
    /// `None` once the end was reached (or while a batch is being read).
    state: Option<(Dir, cap_std::fs::ReadDir)>,
}

/// Directory batches read at once, process-wide.
static LISTING_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);
/// Atomic resumes copying their kept prefix at once, process-wide.
static PREFIX_COPIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

#[async_trait]
impl DirSource for LocalDirSource {
    async fn next_batch(&mut self, max: usize) -> Vec<VfsResult<DirEntry>> {
        let Some((dir, mut entries)) = self.state.take() else {
            return Vec::new();
        };
        let Ok(_permit) = LISTING_READS.acquire().await else {
            return Vec::new();
        };
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(max.min(LIST_BATCH));
            let mut ended = true;
            for entry in entries.by_ref() {
                let item = entry.map_err(VfsError::from).and_then(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let meta = entry.metadata()?;
                    let mut meta = to_meta(&meta);
                    if meta.kind == FileKind::Symlink {
                        // Show what the link points at, if that stays inside the jail.
                        if let Ok(target) = dir.metadata(&name) {
                            meta = to_meta(&target);
                        }
                    }
                    Ok(DirEntry { name, meta })
                });
                if let Ok(e) = &item
                    && e.name.starts_with(TEMP_PREFIX)
                {
                    continue;
                }
                out.push(item);
                if out.len() >= max {
                    ended = false;
                    break;
                }
            }
            (out, (!ended).then_some((dir, entries)))
        })
        .await;
        match read {
            Ok((batch, rest)) => {
                self.state = rest;
                batch
            }
            Err(e) => vec![Err(VfsError::Io(io::Error::other(e)))],
        }
    }
}

async fn blocking<T, F>(f: F) -> VfsResult<T>
where
    F: FnOnce() -> VfsResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VfsError::Io(io::Error::other(e)))?
}

fn to_meta(m: &cap_std::fs::Metadata) -> Metadata {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let time = |secs: i64, nsec: i64| {
        if secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(secs as u64, nsec.clamp(0, 999_999_999) as u32)
        } else {
            UNIX_EPOCH
        }
    };
    Metadata {
        kind,
        size: m.len(),
        modified: time(m.mtime(), m.mtime_nsec()),
        accessed: time(m.atime(), m.atime_nsec()),
        mode: m.mode(),
        nlink: m.nlink(),
        unique: m.ino(),
    }
}

/// Splits a path into its parent (relative) and final name; the root has no name.
fn split(path: &VirtualPath) -> VfsResult<(String, String)> {
    let name = path.file_name().ok_or(VfsError::PermissionDenied)?;
    // Callers use `name` as a raw single component (renameat): never `.`/`..`.
    if name == "." || name == ".." {
        return Err(VfsError::PermissionDenied);
    }
    Ok((path.parent().relative().to_owned(), name.to_owned()))
}

/// Where an atomic upload's bytes wait until the commit names them.
enum Temp {
    /// A hidden name in the folder (`.dropgate-part-…`), renamed into place.
    Named(String),
    /// An `O_TMPFILE` inode, linked into place: see [`unnamed`].
    Unnamed,
}

/// Atomic uploads into files that have no name until the commit.
///
/// A named temporary costs two directory updates per upload (its create and
/// the rename that removes it again) on top of the one that matters; an
/// `O_TMPFILE` inode costs none until `linkat` gives it its final name, and
/// a crash leaves nothing behind for the startup sweep. Measured on ext4
/// here: 1.3-1.4x the files per second of create + write + rename.
///
/// Replacing an existing file cannot be a plain `linkat` (it never
/// replaces): the inode is linked under a hidden name next to it and renamed
/// over it, which keeps the replacement atomic. Where `O_TMPFILE` is refused
/// (a file system without it, no `/proc` to link through) the upload takes a
/// named temporary as before.
mod unnamed {
    use std::io;
    use std::os::fd::AsRawFd;
    use std::sync::OnceLock;
    #[cfg(target_os = "linux")]
    use std::sync::atomic::{AtomicBool, Ordering};

    use cap_std::fs::Dir;

    /// Whether `/proc/self/fd` exists, through which the inode is linked
    /// where `linkat` with `AT_EMPTY_PATH` is refused.
    fn linkable() -> bool {
        static LINKABLE: OnceLock<bool> = OnceLock::new();
        *LINKABLE.get_or_init(|| std::path::Path::new("/proc/self/fd").is_dir())
    }

    /// A new unnamed file in `parent`; `None` where that is refused (the
    /// caller's named create then gives the canonical error, if any).
    #[cfg(target_os = "linux")]
    pub(super) fn create(parent: &Dir) -> Option<std::fs::File> {
        use rustix::fs::{Mode, OFlags, openat};
        if !linkable() {
            return None;
        }
        // Not O_EXCL: that would forbid the link.
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        openat(parent, ".", flags, Mode::from_raw_mode(0o666))
            .ok()
            .map(std::fs::File::from)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn create(_parent: &Dir) -> Option<std::fs::File> {
        None
    }

    /// Set once `linkat` with `AT_EMPTY_PATH` was refused where the link
    /// through `/proc` worked: before Linux 6.10 the former needs
    /// CAP_DAC_READ_SEARCH even for a file this process opened.
    #[cfg(target_os = "linux")]
    static NO_EMPTY_PATH: AtomicBool = AtomicBool::new(false);

    /// Gives `file` the name `name` in `parent`; fails with `AlreadyExists`
    /// if the name is taken (by anything, a symlink included).
    ///
    /// Straight from the descriptor where the kernel allows it: the path
    /// through `/proc/self/fd` costs a procfs lookup (~1.3 µs a link here,
    /// docs/benchmarks.md, session 30).
    #[cfg(target_os = "linux")]
    pub(super) fn link(file: &std::fs::File, parent: &Dir, name: &str) -> io::Result<()> {
        if NO_EMPTY_PATH.load(Ordering::Relaxed) {
            return link_through_proc(file, parent, name);
        }
        match rustix::fs::linkat(file, "", parent, name, rustix::fs::AtFlags::EMPTY_PATH) {
            Ok(()) => Ok(()),
            // What the kernel answers without the capability (and for a
            // folder removed meanwhile, which the other way tells apart).
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
                link_through_proc(file, parent, name)?;
                NO_EMPTY_PATH.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn link(file: &std::fs::File, parent: &Dir, name: &str) -> io::Result<()> {
        link_through_proc(file, parent, name)
    }

    fn link_through_proc(file: &std::fs::File, parent: &Dir, name: &str) -> io::Result<()> {
        let source = format!("/proc/self/fd/{}", file.as_raw_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            source.as_str(),
            parent,
            name,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(io::Error::from)
    }

    /// Both ways of naming an unnamed file, each called directly (which one
    /// `link` takes depends on the kernel): the bytes arrive under the
    /// name, and a taken name is refused, not replaced.
    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use std::io::Write;

        use super::*;

        #[test]
        fn an_unnamed_file_is_named_through_proc_and_from_its_descriptor() {
            let dir = tempfile::tempdir().unwrap();
            let parent = Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap();
            std::fs::write(dir.path().join("taken"), b"old").unwrap();
            type Link = fn(&std::fs::File, &Dir, &str) -> io::Result<()>;
            let ways: [(&str, Link); 2] = [("proc", link_through_proc), ("link", link)];
            for (name, way) in ways {
                let Some(mut file) = create(&parent) else {
                    eprintln!("O_TMPFILE refused here: nothing to name");
                    return;
                };
                file.write_all(name.as_bytes()).unwrap();
                way(&file, &parent, name).unwrap();
                assert_eq!(
                    std::fs::read(dir.path().join(name)).unwrap(),
                    name.as_bytes()
                );
                let taken = way(&file, &parent, "taken").unwrap_err();
                assert_eq!(taken.kind(), io::ErrorKind::AlreadyExists, "{name}");
                assert_eq!(std::fs::read(dir.path().join("taken")).unwrap(), b"old");
            }
        }
    }
}

fn random_suffix() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

/// Resolves a symlink's stored target against the link's folder, refusing any
/// target that is absolute or climbs above the home.
fn resolve_link_target(link_parent: &VirtualPath, target: &str) -> VfsResult<VirtualPath> {
    if target.starts_with('/') || target.contains('\0') {
        return Err(VfsError::PermissionDenied);
    }
    let mut parts: Vec<&str> = link_parent.components().collect();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(VfsError::PermissionDenied);
                }
            }
            name => parts.push(name),
        }
    }
    VirtualPath::parse(&format!("/{}", parts.join("/")))
}

/// Most symlinks one path may pass through (as Linux's ELOOP limit).
const MAX_LINK_HOPS: usize = 40;

/// Resolves every symlink along `path`, one component at a time from the
/// home, each link's target taken relative to its own folder.
fn real_path_in(home: &Dir, path: &VirtualPath) -> VfsResult<VirtualPath> {
    let mut done = VirtualPath::root();
    let mut rest: std::collections::VecDeque<String> =
        path.components().map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(name) = rest.pop_front() {
        let next = done.join(&name)?;
        match home.symlink_metadata(next.relative()) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(VfsError::PermissionDenied);
                }
                let target = home.read_link_contents(next.relative())?;
                let target = target.to_str().ok_or(VfsError::PermissionDenied)?;
                let resolved = resolve_link_target(&done, target)?;
                // The target may pass through links too: walk it again.
                let mut again: std::collections::VecDeque<String> =
                    resolved.components().map(str::to_owned).collect();
                again.extend(rest.drain(..));
                rest = again;
                done = VirtualPath::root();
            }
            Ok(_) => done = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                done = next;
                for name in rest.drain(..) {
                    done = done.join(&name)?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// The relative path from folder `from` to `to`, for storing symlink targets
/// that stay valid inside the jail (absolute targets would point at the host).
fn relative_between(from_dir: &VirtualPath, to: &VirtualPath) -> String {
    let a: Vec<&str> = from_dir.components().collect();
    let b: Vec<&str> = to.components().collect();
    let common = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
    let mut out: Vec<&str> = std::iter::repeat_n("..", a.len() - common).collect();
    out.extend_from_slice(&b[common..]);
    if out.is_empty() {
        ".".to_owned()
    } else {
        out.join("/")
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn metadata(&self, path: &VirtualPath) -> VfsResult<Metadata> {
        if let Some(meta) = cached::open(&self.home, path.relative(), cached::Open::Path)
            .and_then(|f| f.metadata().ok())
        {
            return Ok(to_meta(&cap_std::fs::Metadata::from_just_metadata(meta)));
        }
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || Ok(to_meta(&home.metadata(rel)?))).await
    }

    async fn symlink_metadata(&self, path: &VirtualPath) -> VfsResult<Metadata> {
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || Ok(to_meta(&home.symlink_metadata(rel)?))).await
    }

    async fn list(&self, path: &VirtualPath) -> VfsResult<DirStream> {
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        let state = blocking(move || {
            let dir = home.open_dir(rel)?;
            let entries = dir.entries()?;
            Ok((dir, entries))
        })
        .await?;
        Ok(DirStream::new(Box::new(LocalDirSource {
            state: Some(state),
        })))
    }

    async fn open_read(&self, path: &VirtualPath) -> VfsResult<Arc<dyn FileReader>> {
        if let Some(file) = cached::open(&self.home, path.relative(), cached::Open::Read) {
            return reader_for(file);
        }
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || {
            let mut options = OpenOptions::new();
            options.read(true).custom_flags(libc::O_NONBLOCK);
            reader_for(home.open_with(rel, &options)?.into_std())
        })
        .await
    }

    async fn create(
        &self,
        path: &VirtualPath,
        opts: CreateOptions,
    ) -> VfsResult<Box<dyn FileWriter>> {
        let home = self.home.clone();
        let try_unnamed = self.unnamed_temporaries;
        let (parent_rel, name) = split(path)?;
        // An atomic resume copies the kept prefix on the blocking pool, which
        // can take a while for a large file: a few at a time, process-wide.
        let _copying = if opts.mode == UploadMode::Atomic && opts.start != WriteStart::Truncate {
            Some(
                PREFIX_COPIES
                    .acquire()
                    .await
                    .map_err(|e| VfsError::Io(io::Error::other(e)))?,
            )
        } else {
            None
        };
        // A create is a few metadata calls the upload waits for; an atomic
        // resume's prefix copy can take a while.
        // `direct` truncates an existing file in place, which frees its
        // blocks there and then: not brief.
        let how = match (opts.start, opts.mode) {
            (WriteStart::Truncate, UploadMode::Direct) => Blocking::Short,
            (WriteStart::Truncate, _) => Blocking::Brief,
            (_, UploadMode::Direct) => Blocking::Short,
            _ => Blocking::Long,
        };
        brief::run(how, move || {
            let parent = home.open_dir(parent_rel)?;
            let existing = match parent.metadata(&name) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // A dangling or escaping symlink must not be written
                    // through (only `direct` writes through the name; the
                    // atomic modes rename over it, so they need no lstat).
                    if opts.mode == UploadMode::Direct && parent.symlink_metadata(&name).is_ok() {
                        return Err(VfsError::PermissionDenied);
                    }
                    None
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(m) = &existing {
                if m.is_dir() {
                    return Err(VfsError::IsADirectory);
                }
                if opts.exclusive {
                    return Err(VfsError::AlreadyExists);
                }
            }
            let existing_len = existing.as_ref().map(|m| m.len()).unwrap_or(0);
            let keep = match opts.start {
                WriteStart::Truncate => 0,
                WriteStart::ResumeAt(n) if n > existing_len => return Err(VfsError::InvalidOffset),
                WriteStart::ResumeAt(n) => n,
                WriteStart::Append | WriteStart::Keep => existing_len,
            };
            let (file, temp) = match opts.mode {
                UploadMode::Direct => {
                    let mut o = OpenOptions::new();
                    o.read(true).write(true);
                    if opts.exclusive {
                        o.create_new(true);
                    } else {
                        o.create(true);
                    }
                    let file = parent.open_with(&name, &o)?.into_std();
                    if existing.is_some() && keep != existing_len {
                        file.set_len(keep)?;
                    }
                    (file, None)
                }
                UploadMode::Atomic | UploadMode::AtomicResume => {
                    let unnamed = try_unnamed.then(|| unnamed::create(&parent)).flatten();
                    let (file, temp) = match unnamed {
                        Some(file) => (file, Temp::Unnamed),
                        None => {
                            let temp_name = format!("{TEMP_PREFIX}{}", random_suffix());
                            let mut o = OpenOptions::new();
                            o.read(true).write(true).create_new(true);
                            let file = parent.open_with(&temp_name, &o)?.into_std();
                            (file, Temp::Named(temp_name))
                        }
                    };
                    if keep > 0 {
                        // copy_file_range under the hood: no bytes through userspace.
                        let copied = parent.open(&name).and_then(|src| {
                            io::copy(&mut (&src.into_std()).take(keep), &mut &file)
                        });
                        if let Err(e) = copied {
                            if let Temp::Named(temp_name) = &temp {
                                let _ = parent.remove_file(temp_name);
                            }
                            return Err(e.into());
                        }
                    }
                    (file, Some(temp))
                }
            };
            Ok(Box::new(LocalWriter {
                file: Arc::new(file),
                parent,
                name,
                temp,
                mode: opts.mode,
                exclusive: opts.exclusive,
                durable: opts.durable,
                initial_len: keep,
                found: match &existing {
                    Some(m) => Found::File {
                        size: m.len(),
                        nlink: m.nlink(),
                    },
                    None => Found::Nothing,
                },
                wrote: AtomicBool::new(false),
                writeback: Arc::new(WriteBack::new(opts.durable)),
                finished: false,
            }) as Box<dyn FileWriter>)
        })
        .await
        .map_err(|e| VfsError::Io(io::Error::other(e)))?
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> VfsResult<()> {
        let home = self.home.clone();
        let (from_parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        blocking(move || {
            let src_dir = home.open_dir(from_parent)?;
            let dst_dir = home.open_dir(to_parent)?;
            let flags = if overwrite {
                rustix::fs::RenameFlags::empty()
            } else {
                rustix::fs::RenameFlags::NOREPLACE
            };
            // Single-component names on jailed directory handles: nothing to escape through.
            rustix::fs::renameat_with(
                &src_dir,
                from_name.as_str(),
                &dst_dir,
                to_name.as_str(),
                flags,
            )
            .map_err(io::Error::from)?;
            Ok(())
        })
        .await
    }

    async fn remove_file(&self, path: &VirtualPath) -> VfsResult<()> {
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || {
            if home.symlink_metadata(&rel)?.is_dir() {
                return Err(VfsError::IsADirectory);
            }
            Ok(home.remove_file(rel)?)
        })
        .await
    }

    async fn remove_if_older(
        &self,
        path: &VirtualPath,
        cutoff: std::time::SystemTime,
    ) -> VfsResult<Option<Metadata>> {
        let Some(name) = path.file_name().map(str::to_owned) else {
            return Ok(None);
        };
        let (home, parent) = (self.home.clone(), path.parent());
        blocking(move || {
            // Folder by folder, never following a link: every step is
            // relative to the handle of the one before.
            let mut dir = home.try_clone()?;
            for component in parent
                .relative()
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
            {
                dir = dir.open_dir_nofollow(component)?;
            }
            let meta = dir.symlink_metadata(&name)?;
            if !meta.is_file() || meta.modified()?.into_std() >= cutoff {
                return Ok(None);
            }
            dir.remove_file(&name)?;
            Ok(Some(to_meta(&meta)))
        })
        .await
    }

    async fn create_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        if path.is_root() {
            return Err(VfsError::AlreadyExists);
        }
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || Ok(home.create_dir(rel)?)).await
    }

    async fn remove_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        if path.is_root() {
            return Err(VfsError::PermissionDenied);
        }
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || Ok(home.remove_dir(rel)?)).await
    }

    async fn set_times(
        &self,
        path: &VirtualPath,
        accessed: Option<SystemTime>,
        modified: Option<SystemTime>,
    ) -> VfsResult<()> {
        // Clients set times right after an upload (lftp's MFMT after every
        // file), when the name is in the cache: no blocking-pool hop then.
        if cached::set_times(&self.home, path.relative(), accessed, modified) {
            return Ok(());
        }
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        let spec = |t: SystemTime| SystemTimeSpec::Absolute(cap_std::time::SystemTime::from_std(t));
        blocking(move || Ok(home.set_times(rel, accessed.map(spec), modified.map(spec))?)).await
    }

    async fn set_len(&self, path: &VirtualPath, size: u64) -> VfsResult<()> {
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        blocking(move || {
            let mut o = OpenOptions::new();
            o.write(true);
            let file = home.open_with(rel, &o)?.into_std();
            seal::wait_unsealed(&file)?;
            Ok(file.set_len(size)?)
        })
        .await
    }

    async fn read_link(&self, path: &VirtualPath) -> VfsResult<VirtualPath> {
        let (home, rel) = (self.home.clone(), path.relative().to_owned());
        let parent = path.parent();
        blocking(move || {
            let target = home.read_link_contents(rel)?;
            let target = target.to_str().ok_or(VfsError::PermissionDenied)?;
            resolve_link_target(&parent, target)
        })
        .await
    }

    async fn real_path(&self, path: &VirtualPath) -> VfsResult<VirtualPath> {
        let (home, path) = (self.home.clone(), path.clone());
        blocking(move || real_path_in(&home, &path)).await
    }

    async fn symlink(&self, target: &VirtualPath, link: &VirtualPath) -> VfsResult<()> {
        let stored = relative_between(&link.parent(), target);
        // Paths are canonical, so this only bites on a bypassed canonicalizer;
        // never store a link that `read_link` would refuse.
        resolve_link_target(&link.parent(), &stored)?;
        let (home, rel) = (self.home.clone(), link.relative().to_owned());
        blocking(move || Ok(home.symlink(stored, rel)?)).await
    }

    async fn hard_link(&self, src: &VirtualPath, dst: &VirtualPath) -> VfsResult<()> {
        let home = self.home.clone();
        let (src, dst) = (src.relative().to_owned(), dst.relative().to_owned());
        blocking(move || {
            if !home.symlink_metadata(&src)?.is_file() {
                return Err(VfsError::PermissionDenied);
            }
            Ok(home.hard_link(src, &home, dst)?)
        })
        .await
    }

    async fn fs_stats(&self, _path: &VirtualPath) -> VfsResult<FsStats> {
        let home = self.home.clone();
        blocking(move || {
            let s = rustix::fs::fstatvfs(&*home).map_err(io::Error::from)?;
            Ok(FsStats {
                block_size: s.f_bsize,
                fragment_size: s.f_frsize,
                blocks: s.f_blocks,
                blocks_free: s.f_bfree,
                blocks_available: s.f_bavail,
                files: s.f_files,
                files_free: s.f_ffree,
                name_max: s.f_namemax,
            })
        })
        .await
    }
}

/// Path lookups served on the calling thread when the kernel's caches hold
/// every component, so that the common case (a file just listed, uploaded or
/// downloaded before) skips the round trip to the blocking pool: two thread
/// switches and most of a small download's latency.
///
/// The jail is the same one cap-std applies on this kernel, `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` from the home's descriptor,
/// plus `RESOLVE_CACHED`, which makes the lookup fail with EAGAIN instead of
/// waiting for the disk. Any failure (not cached, not found, an escaping
/// symlink, an older kernel) returns `None` and the caller takes cap-std's
/// blocking path, which gives the canonical answer and error.
mod cached {
    use std::sync::atomic::{AtomicBool, Ordering};

    use cap_std::fs::Dir;

    /// What the descriptor is for.
    #[derive(Clone, Copy)]
    pub(super) enum Open {
        /// Reading the file (opened `O_NONBLOCK`: a FIFO does not wait for
        /// a writer; the caller accepts regular files only).
        Read,
        /// Only its metadata (`O_PATH`: opens nothing, never blocks).
        Path,
    }

    /// Set once the kernel refused the flags (before Linux 5.12, or a
    /// seccomp filter): later lookups go straight to the blocking path.
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

    #[cfg(target_os = "linux")]
    pub(super) fn open(home: &Dir, rel: &str, how: Open) -> Option<std::fs::File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
        use rustix::io::Errno;
        // The home itself is opened by the blocking path (an empty path is
        // not a lookup).
        if rel.is_empty() || UNSUPPORTED.load(Ordering::Relaxed) {
            return None;
        }
        let flags = match how {
            Open::Read => OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Open::Path => OFlags::PATH,
        } | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::CACHED;
        match openat2(home, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => Some(std::fs::File::from(fd)),
            Err(Errno::NOSYS | Errno::INVAL | Errno::TOOBIG) => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn open(_home: &Dir, _rel: &str, _how: Open) -> Option<std::fs::File> {
        None
    }

    /// Sets the times of `rel` (following a final symlink, as the blocking
    /// path does, inside the jail) through an `O_PATH` descriptor, which
    /// opens nothing: `utimensat(fd, "", AT_EMPTY_PATH)`. `false`: not done
    /// (not cached, any error, an older kernel); the caller takes the
    /// blocking path, which gives the canonical answer.
    #[cfg(target_os = "linux")]
    pub(super) fn set_times(
        home: &Dir,
        rel: &str,
        accessed: Option<std::time::SystemTime>,
        modified: Option<std::time::SystemTime>,
    ) -> bool {
        use rustix::fs::{AtFlags, Timespec, Timestamps, UTIME_OMIT, utimensat};
        fn spec(t: Option<std::time::SystemTime>) -> Option<Timespec> {
            match t {
                None => Some(Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                }),
                // Before 1970 (rare): left to the blocking path.
                Some(t) => {
                    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
                    Some(Timespec {
                        tv_sec: i64::try_from(d.as_secs()).ok()?,
                        tv_nsec: i64::from(d.subsec_nanos()),
                    })
                }
            }
        }
        let (Some(last_access), Some(last_modification)) = (spec(accessed), spec(modified)) else {
            return false;
        };
        let Some(file) = open(home, rel, Open::Path) else {
            return false;
        };
        let times = Timestamps {
            last_access,
            last_modification,
        };
        utimensat(&file, "", &times, AtFlags::EMPTY_PATH).is_ok()
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn set_times(
        _home: &Dir,
        _rel: &str,
        _accessed: Option<std::time::SystemTime>,
        _modified: Option<std::time::SystemTime>,
    ) -> bool {
        false
    }
}

/// A reader for a file just opened `O_NONBLOCK` (so that a FIFO or a device
/// cannot make the open wait): only regular files are served, and they go
/// back to blocking mode.
fn reader_for(file: std::fs::File) -> VfsResult<Arc<dyn FileReader>> {
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(VfsError::IsADirectory);
    }
    if !meta.is_file() {
        return Err(VfsError::PermissionDenied);
    }
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty()).map_err(io::Error::from)?;
    Ok(Arc::new(LocalReader {
        file: Arc::new(file),
        len: meta.len(),
        _seal: None,
    }))
}

/// A file opened for reading; positioned reads, shareable across tasks.
struct LocalReader {
    file: Arc<std::fs::File>,
    len: u64,
    /// A committed upload's content: held unchanged while this lives.
    _seal: Option<Seal>,
}

#[async_trait]
impl FileReader for LocalReader {
    async fn read_at(&self, offset: u64, len: usize) -> VfsResult<Bytes> {
        if let Some(cached) = self.read_cached(offset, len) {
            return Ok(cached);
        }
        let file = self.file.clone();
        blocking(move || {
            let mut buf = BytesMut::zeroed(len);
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            buf.truncate(filled);
            Ok(buf.freeze())
        })
        .await
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        Some(&self.file)
    }

    fn stat(&self) -> Option<Metadata> {
        // fstat of an open local file reads the in-memory inode: no disk wait.
        let m = self.file.metadata().ok()?;
        Some(to_meta(&cap_std::fs::Metadata::from_just_metadata(m)))
    }
}

impl LocalReader {
    /// Serves a read on the calling thread when the page cache holds all of
    /// it (`preadv2(RWF_NOWAIT)` never waits for the disk: it fails with
    /// EAGAIN instead). Most downloads are served from the cache, and the hop
    /// to the blocking pool and back cost more than the copy: two context
    /// switches per SFTP READ. `None` means "take the blocking path".
    #[cfg(target_os = "linux")]
    fn read_cached(&self, offset: u64, len: usize) -> Option<Bytes> {
        use rustix::io::{ReadWriteFlags, preadv2};
        /// Buffer for a read at or past the end as opened: almost always
        /// the end (an SFTP client's last READ), but the file may have grown.
        const PAST_END: usize = 64 * 1024;
        if len == 0 {
            return Some(Bytes::new());
        }
        // Sized to what the file holds, not to what was asked (a 4 KiB file
        // read with 256 KiB requests).
        let want = match self.len.checked_sub(offset) {
            Some(left) if left > 0 => len.min(usize::try_from(left).unwrap_or(usize::MAX)),
            _ => len.min(PAST_END),
        };
        let mut buf = BytesMut::zeroed(want);
        let n = preadv2(
            &*self.file,
            &mut [io::IoSliceMut::new(&mut buf)],
            offset,
            ReadWriteFlags::NOWAIT,
        )
        .ok()?;
        // 0 is the end of the file (an uncached range fails with EAGAIN,
        // never reads 0). A short read is complete only at the end of the
        // file as opened; otherwise part of the range is not cached (or the
        // file changed): let the blocking path read it whole.
        if n == want || n == 0 || offset + n as u64 >= self.len {
            buf.truncate(n);
            Some(buf.freeze())
        } else {
            None
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read_cached(&self, _offset: u64, _len: usize) -> Option<Bytes> {
        None
    }
}

/// An upload in progress on local disk.
struct LocalWriter {
    file: Arc<std::fs::File>,
    /// The folder that holds both the temporary and the final name.
    parent: Dir,
    /// The final name in `parent`.
    name: String,
    /// Where the bytes wait for the commit (atomic modes only).
    temp: Option<Temp>,
    mode: UploadMode,
    exclusive: bool,
    /// Sync the data and the folder before the commit returns.
    durable: bool,
    initial_len: u64,
    found: Found,
    /// Whether any byte was written (atomic_resume keeps only real partials).
    wrote: AtomicBool,
    /// A durable upload's write-behind (nothing for a page-cache one).
    writeback: Arc<WriteBack>,
    finished: bool,
}

/// Writes `data` at `offset` of an upload's `file`, through the page cache,
/// and feeds the upload's write-behind.
fn write_data(
    file: &std::fs::File,
    writeback: &WriteBack,
    data: &[u8],
    offset: u64,
) -> io::Result<()> {
    file.write_all_at(data, offset)?;
    writeback.wrote(file, offset, data.len() as u64)
}

impl LocalWriter {
    /// Where this upload's front-to-back write of `len` bytes at `offset`
    /// runs (`write_next_at`, `write_at_inspect`): see [`front_write`].
    fn write_blocking(&self, offset: u64, len: usize) -> Blocking {
        // The first bytes of a new (or truncated) file: no page of it needs
        // reading from the disk first.
        let first = offset == 0 && self.initial_len == 0;
        front_write(
            self.durable,
            first,
            len,
            self.writeback.fills_window(len as u64),
        )
    }

    /// What the final name holds right now (not following a symlink).
    fn current_target(&self) -> Replaced {
        match self.parent.symlink_metadata(&self.name) {
            Ok(m) if m.is_file() => Replaced::File {
                size: m.len(),
                nlink: m.nlink(),
            },
            Ok(_) => Replaced::Other,
            Err(_) => Replaced::Nothing,
        }
    }

    /// Puts the temporary under the final name, replacing what is there
    /// unless `exclusive` (then taken names fail with `AlreadyExists`), and
    /// says what the name held.
    fn place(&self, temp: &Temp) -> io::Result<Replaced> {
        let rename = |from: &str| {
            let flags = if self.exclusive {
                rustix::fs::RenameFlags::NOREPLACE
            } else {
                rustix::fs::RenameFlags::empty()
            };
            rustix::fs::renameat_with(&self.parent, from, &self.parent, self.name.as_str(), flags)
                .map_err(io::Error::from)
        };
        match temp {
            Temp::Named(temp) => {
                let replaced = self.current_target();
                rename(temp).map(|()| replaced)
            }
            Temp::Unnamed => match unnamed::link(&self.file, &self.parent, &self.name) {
                // `linkat` never replaces: the name was free at that moment,
                // which no look before it could tell as surely (and a new
                // file costs no `statx` of its name).
                Ok(()) => Ok(Replaced::Nothing),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !self.exclusive => {
                    let replaced = self.current_target();
                    let hidden = format!("{TEMP_PREFIX}{}", random_suffix());
                    unnamed::link(&self.file, &self.parent, &hidden)?;
                    rename(&hidden)
                        .inspect_err(|_| {
                            let _ = self.parent.remove_file(&hidden);
                        })
                        .map(|()| replaced)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Makes the upload durable (`durable`) and visible under its final
    /// name; on a blocking thread.
    fn commit_now(mut self) -> VfsResult<Committed> {
        let result = (|| -> VfsResult<(std::fs::Metadata, Replaced)> {
            if self.durable {
                self.file.sync_data()?;
            }
            let mut replaced = Replaced::InPlace;
            if let Some(temp) = &self.temp {
                replaced = self.place(temp)?;
                self.finished = true;
                // Make the rename itself durable.
                // cap-std holds folders as O_PATH handles, which cannot be
                // fsynced: open the folder itself (read-only) for that.
                if self.durable {
                    match self.parent.open(".") {
                        Ok(dir) => {
                            if let Err(e) = dir.sync_all() {
                                tracing::warn!(error = %e, "could not fsync the upload's folder");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not open the upload's folder to fsync it")
                        }
                    }
                }
            }
            self.finished = true;
            Ok((self.file.metadata()?, replaced))
        })();
        // Sealed before the reader exists: a truncation by path that
        // started before this point has already happened, and the read-back
        // hashes what it left, which is then what the name holds.
        let seal = match &result {
            Ok((meta, _)) if self.temp.is_some() => Some(Seal::new(meta)),
            _ => None,
        };
        match result {
            Ok((meta, replaced)) => Ok(Committed {
                size: meta.len(),
                replaced,
                content: Arc::new(LocalReader {
                    file: self.file.clone(),
                    len: meta.len(),
                    _seal: seal,
                }) as Arc<dyn FileReader>,
            }),
            Err(e) => {
                let _ = self.abort_now();
                Err(e)
            }
        }
    }

    /// Abandons the upload; returns what stays under the final name.
    fn abort_now(&mut self) -> Option<Placed> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let Some(temp) = &self.temp else {
            // Direct mode: the partial is the final file.
            let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            return Some(Placed {
                size,
                replaced: Replaced::InPlace,
            });
        };
        let keep = self.mode == UploadMode::AtomicResume && self.wrote.load(Ordering::Relaxed);
        if keep {
            // An exclusive upload never replaces a file that appeared meanwhile.
            if let Ok(replaced) = self.place(temp) {
                let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
                return Some(Placed { size, replaced });
            }
        }
        // An unnamed temporary goes with its last descriptor.
        if let Temp::Named(temp) = temp
            && let Err(e) = self.parent.remove_file(temp)
        {
            tracing::warn!(error = %e, "could not remove an aborted upload's temporary");
        }
        None
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        let _ = self.abort_now();
    }
}

#[async_trait]
impl FileWriter for LocalWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> VfsResult<()> {
        let file = self.file.clone();
        let writeback = self.writeback.clone();
        self.wrote.store(true, Ordering::Relaxed);
        blocking(move || Ok(write_data(&file, &writeback, &data, offset)?)).await
    }

    async fn write_next_at(&self, offset: u64, data: Bytes) -> VfsResult<()> {
        let file = self.file.clone();
        let writeback = self.writeback.clone();
        self.wrote.store(true, Ordering::Relaxed);
        let how = self.write_blocking(offset, data.len());
        brief::run(how, move || {
            Ok(write_data(&file, &writeback, &data, offset)?)
        })
        .await
        .map_err(|e| VfsError::Io(io::Error::other(e)))?
    }

    async fn write_at_inspect(&self, offset: u64, data: Bytes, inspect: Inspect) -> VfsResult<()> {
        let file = self.file.clone();
        let writeback = self.writeback.clone();
        self.wrote.store(true, Ordering::Relaxed);
        let how = self.write_blocking(offset, data.len());
        brief::run(how, move || {
            let written = write_data(&file, &writeback, &data, offset);
            inspect(&data);
            Ok(written?)
        })
        .await
        .map_err(|e| VfsError::Io(io::Error::other(e)))?
    }

    async fn set_len(&self, len: u64) -> VfsResult<()> {
        let file = self.file.clone();
        self.wrote.store(true, Ordering::Relaxed);
        blocking(move || Ok(file.set_len(len)?)).await
    }

    async fn sync(&self) -> VfsResult<()> {
        let file = self.file.clone();
        blocking(move || Ok(file.sync_data()?)).await
    }

    fn initial_len(&self) -> u64 {
        self.initial_len
    }

    fn found(&self) -> Found {
        self.found
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        Some(&self.file)
    }

    async fn commit(self: Box<Self>) -> VfsResult<Committed> {
        // Brief unless it syncs (a durable commit can take a while).
        let how = if self.durable {
            Blocking::Long
        } else {
            self.commit_blocking()
        };
        brief::run(how, move || (*self).commit_now())
            .await
            .map_err(|e| VfsError::Io(io::Error::other(e)))?
    }

    async fn write_and_commit(
        mut self: Box<Self>,
        offset: u64,
        data: Bytes,
        inspect: Option<Inspect>,
    ) -> Result<Committed, LastWrite> {
        // A page-cache upload's last write of at most a chunk (1 MiB from
        // FTP, a packet from SFTP) is a copy into memory; a small one is
        // brief (below the pages a task dirties between checks of the
        // kernel's dirty-page throttling, 32 or more).
        let how = if self.durable || data.len() > MAX_SHORT_WRITE {
            Blocking::Long
        } else if data.len() > BRIEF_WRITE {
            Blocking::Short
        } else {
            self.commit_blocking()
        };
        brief::run(how, move || {
            self.wrote.store(true, Ordering::Relaxed);
            let written = write_data(&self.file, &self.writeback, &data, offset);
            if let Some(inspect) = inspect {
                inspect(&data);
            }
            match written {
                Ok(()) => (*self).commit_now().map_err(LastWrite::Commit),
                Err(e) => {
                    let placed = self.abort_now();
                    Err(LastWrite::Write(e.into(), placed))
                }
            }
        })
        .await
        .map_err(|e| LastWrite::Commit(VfsError::Io(io::Error::other(e))))?
    }

    async fn abort(mut self: Box<Self>) -> Option<Placed> {
        tokio::task::spawn_blocking(move || self.abort_now())
            .await
            .ok()
            .flatten()
    }

    fn stable_content(&self) -> bool {
        // A hidden temporary renamed into place: nothing writes into it
        // again but a truncation by path, which waits for the seal.
        self.temp.is_some()
    }

    fn in_place_identity(&self) -> Option<u64> {
        if self.temp.is_some() {
            return None;
        }
        use std::os::unix::fs::MetadataExt as _;
        self.file.metadata().ok().map(|m| m.ino())
    }
}

impl LocalWriter {
    /// A page-cache commit is brief unless it replaces the last name of a
    /// large file: the filesystem then frees that file's blocks within the
    /// rename (as the create saw it; one that grew since is caught by
    /// [`brief`]'s back-off).
    fn commit_blocking(&self) -> Blocking {
        match self.found {
            Found::File { size, nlink: 1 } if size > LARGE_REPLACED => Blocking::Short,
            _ => Blocking::Brief,
        }
    }
}

/// A replaced file larger than this makes its upload's commit not brief.
const LARGE_REPLACED: u64 = 16 << 20;

/// Where a front-to-back write of `len` bytes runs: `first` says it starts a
/// new or truncated file, `fills` that it completes a write-behind window
/// (which may wait for the device).
///
/// A page-cache upload's large chunk (1 MiB from FTP) is a copy into
/// memory: it runs in place (`block_in_place`) on the thread that just
/// received it, whose cache still holds it; on the blocking pool another core
/// read it all again from memory (12% less server CPU a GiB in place,
/// docs/benchmarks.md session 34). An upload's first write of at most
/// [`BRIEF_WRITE`] (all of a small file) is a copy into the page cache in
/// either mode (durable uploads are written behind, not `O_DIRECT`, since
/// session 37): brief, so a small durable upload does not pay a hand-off for
/// it before its commit (session 43). Other smaller writes stay on the pool,
/// where one hand-off does not cost a worker's; a durable write that starts
/// write-back can wait for the device: the pool too.
fn front_write(durable: bool, first: bool, len: usize, fills: bool) -> Blocking {
    if first && len <= BRIEF_WRITE && !fills {
        Blocking::Brief
    } else if !durable && (MIN_IN_PLACE_WRITE..=MAX_SHORT_WRITE).contains(&len) {
        Blocking::Short
    } else {
        Blocking::Long
    }
}

/// The largest last write of an upload that runs on the worker itself
/// (see [`brief`]).
const BRIEF_WRITE: usize = 64 << 10;
/// The largest that runs in place at all.
const MAX_SHORT_WRITE: usize = 1 << 20;
/// The smallest page-cache write before the last that runs in place.
const MIN_IN_PLACE_WRITE: usize = 512 << 10;

/// Removes upload temporaries left by a crash anywhere below `root`.
/// Symlinks are never followed. Returns how many were removed.
pub fn sweep_stale_temporaries(root: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temporaries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    /// An atomic upload of `name` begun with `body` written.
    async fn begin(
        s: &LocalStorage,
        name: &str,
        mode: UploadMode,
        exclusive: bool,
        body: &'static [u8],
    ) -> Box<dyn FileWriter> {
        let opts = CreateOptions {
            mode,
            start: WriteStart::Truncate,
            exclusive,
            durable: false,
        };
        let w = s
            .create(&VirtualPath::parse(name).unwrap(), opts)
            .await
            .unwrap();
        w.write_at(0, Bytes::from_static(body)).await.unwrap();
        w
    }

    /// The named temporary that file systems without `O_TMPFILE` get: one
    /// hidden name while the upload runs, none after a commit or an abort,
    /// the same replacement, exclusivity and partials as the unnamed one.
    #[tokio::test]
    async fn named_temporaries_where_unnamed_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path(), "alice")
            .unwrap()
            .with_named_temporaries();
        let home = dir.path().join("alice");
        std::fs::write(home.join("old"), b"old").unwrap();

        for (name, exclusive) in [("new", true), ("old", false)] {
            let w = begin(&s, name, UploadMode::Atomic, exclusive, b"fresh").await;
            assert_eq!(temporaries(&home).len(), 1, "{name}");
            w.commit().await.unwrap();
            assert_eq!(std::fs::read(home.join(name)).unwrap(), b"fresh");
            assert!(temporaries(&home).is_empty(), "{name}");
        }

        // Aborted: the old file stays, the temporary goes.
        let w = begin(&s, "old", UploadMode::Atomic, false, b"abandoned").await;
        w.abort().await;
        assert_eq!(std::fs::read(home.join("old")).unwrap(), b"fresh");
        assert!(temporaries(&home).is_empty());

        // Exclusive loses to a name taken meanwhile.
        let w = begin(&s, "race", UploadMode::Atomic, true, b"mine").await;
        std::fs::write(home.join("race"), b"theirs").unwrap();
        assert!(matches!(w.commit().await, Err(VfsError::AlreadyExists)));
        assert_eq!(std::fs::read(home.join("race")).unwrap(), b"theirs");
        assert!(temporaries(&home).is_empty());

        // atomic_resume keeps the partial under the final name.
        let w = begin(&s, "old", UploadMode::AtomicResume, false, b"PART").await;
        drop(w);
        assert_eq!(std::fs::read(home.join("old")).unwrap(), b"PART");
        assert!(temporaries(&home).is_empty());
    }

    #[test]
    fn small_first_writes_are_brief_in_either_mode() {
        for durable in [true, false] {
            // All of a small file: a copy into the page cache.
            assert_eq!(front_write(durable, true, 4096, false), Blocking::Brief);
            assert_eq!(
                front_write(durable, true, BRIEF_WRITE, false),
                Blocking::Brief
            );
            // A later write, a larger one, or one starting write-back: the pool.
            assert_eq!(front_write(durable, false, 4096, false), Blocking::Long);
            let larger = front_write(durable, true, BRIEF_WRITE + 1, false);
            assert_eq!(larger, Blocking::Long);
            assert_eq!(front_write(durable, true, 4096, true), Blocking::Long);
        }
        // A page-cache chunk of 512 KiB-1 MiB runs where it was received; a
        // durable one, which may start write-back, on the pool.
        assert_eq!(front_write(false, false, 1 << 20, false), Blocking::Short);
        assert_eq!(front_write(false, true, 1 << 20, false), Blocking::Short);
        assert_eq!(front_write(true, false, 1 << 20, false), Blocking::Long);
    }

    #[test]
    fn link_targets_stay_in_jail() {
        let root = VirtualPath::root();
        let a = VirtualPath::parse("/a/b").unwrap_or_else(|_| VirtualPath::root());
        assert_eq!(
            resolve_link_target(&a, "../c").map(|p| p.to_string()).ok(),
            Some("/a/c".into())
        );
        assert!(resolve_link_target(&root, "../x").is_err());
        assert!(resolve_link_target(&a, "/etc/passwd").is_err());
        assert!(resolve_link_target(&a, "../../../x").is_err());
    }

    #[test]
    fn real_paths_resolve_links_inside_the_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
        std::fs::create_dir_all(dir.path().join("outbox/deep")).unwrap();
        std::fs::create_dir_all(dir.path().join("inbox/sub")).unwrap();
        std::os::unix::fs::symlink("../outbox", dir.path().join("inbox/o")).unwrap();
        std::os::unix::fs::symlink("o/deep", dir.path().join("inbox/d")).unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        let real = |p: &str| {
            real_path_in(&home, &VirtualPath::parse(p).unwrap()).map(|v| v.as_str().to_owned())
        };
        assert_eq!(real("/inbox/sub/x").unwrap(), "/inbox/sub/x");
        assert_eq!(real("/inbox/o/report.csv").unwrap(), "/outbox/report.csv");
        assert_eq!(real("/inbox/d/new/file").unwrap(), "/outbox/deep/new/file");
        assert_eq!(real("/inbox/o").unwrap(), "/outbox");
        assert!(real("/loop/x").is_err(), "a link cycle");
    }

    #[test]
    fn homes_to_remove_stay_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir_all(root.join("acme")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/x")).unwrap();
        assert_eq!(
            home_to_remove(&root, "acme").unwrap(),
            Some(root.canonicalize().unwrap().join("acme"))
        );
        assert_eq!(home_to_remove(&root, "missing").unwrap(), None);
        assert!(home_to_remove(&root, "../outside").is_err());
        assert!(home_to_remove(&root, "").is_err());
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        assert!(home_to_remove(&root, "link").is_err(), "a symlinked home");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("acme/out")).unwrap();
        assert!(
            home_to_remove(&root, "acme/out/x").is_err(),
            "through a symlink"
        );
        assert!(dir.path().join("outside/x").exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cached_set_times_changes_files_in_the_jail_and_declines_escapes() {
        use std::time::{Duration, UNIX_EPOCH};
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let home = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::write(dir.path().join("in/f"), b"x").unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("in/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("in/out"))
            .unwrap();
        std::os::unix::fs::symlink("../../escape", dir.path().join("in/up")).unwrap();
        let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let when = UNIX_EPOCH + Duration::new(1_000_000_000, 500);
        // The file was just written: its name is cached.
        assert!(cached::set_times(&home, "in/f", None, Some(when)));
        assert_eq!(mtime(&dir.path().join("in/f")), when);
        // Through a link inside the home, as the blocking path follows it:
        // whether a lookup through a link counts as cached is the kernel's
        // call (a first follow may want to update the link's atime), so
        // only what it does when it answers is checked.
        let later = when + Duration::from_secs(60);
        let expected = if cached::set_times(&home, "in/link", None, Some(later)) {
            later
        } else {
            when
        };
        assert_eq!(mtime(&dir.path().join("in/f")), expected);
        // Out of the jail: declined (the blocking path then refuses it).
        let before = mtime(&outside.path().join("secret"));
        assert!(!cached::set_times(&home, "in/out", None, Some(when)));
        assert!(!cached::set_times(&home, "in/up", None, Some(when)));
        assert!(!cached::set_times(&home, "in/missing", None, Some(when)));
        assert_eq!(mtime(&outside.path().join("secret")), before);
        // Before 1970: left to the blocking path.
        let early = UNIX_EPOCH - Duration::from_secs(1);
        assert!(!cached::set_times(&home, "in/f", None, Some(early)));
    }

    #[test]
    fn relative_paths_between_folders() {
        let p = |s: &str| VirtualPath::parse(s).unwrap_or_else(|_| VirtualPath::root());
        assert_eq!(relative_between(&p("/a/b"), &p("/a/c/d")), "../c/d");
        assert_eq!(relative_between(&p("/"), &p("/x")), "x");
        assert_eq!(relative_between(&p("/x/y"), &p("/")), "../..");
    }
}
