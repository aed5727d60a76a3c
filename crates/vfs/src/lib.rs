//! The virtual filesystem every protocol shares.
//!
//! Owns: turning client paths into [`VirtualPath`]s (one canonicalizer for all
//! protocols), the [`Storage`] trait that covers what FTP and SFTP need, and
//! the [`Backend`]s that hold the homes: [`LocalBackend`] (each home a folder,
//! confined at the OS level with cap-std so a symlink or a race cannot leave
//! it), `S3Backend` (homes as prefixes of a bucket; feature `s3`) and
//! [`MemoryBackend`] (for tests).
//!
//! Must not: know about accounts, permissions, quotas or audit (that is
//! `dropgate-core`), or speak any wire protocol.

mod backend;
mod brief;
mod local;
mod memory;
mod path;
#[cfg(feature = "s3")]
mod s3;
mod seal;
mod writeback;

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use backend::{Backend, Capabilities, LocalBackend};
pub use local::{LocalStorage, sweep_stale_temporaries};
pub use memory::{MemoryBackend, MemoryStorage};
pub use path::{MAX_NAME_LEN, MAX_PATH_LEN, TEMP_PREFIX, VirtualPath};
#[cfg(feature = "s3")]
pub use s3::{S3Backend, S3Settings, S3Storage};

/// What went wrong in the filesystem, in terms every protocol can map to its
/// own reply codes.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The path (or a component of it) does not exist.
    #[error("no such file or directory")]
    NotFound,
    /// The OS refused, or the path tried to leave the jail (symlink outside).
    #[error("permission denied")]
    PermissionDenied,
    /// The target exists and the operation must not replace it.
    #[error("file exists")]
    AlreadyExists,
    /// A directory was needed.
    #[error("not a directory")]
    NotADirectory,
    /// A file was needed.
    #[error("is a directory")]
    IsADirectory,
    /// rmdir of a folder that still has entries.
    #[error("directory not empty")]
    DirectoryNotEmpty,
    /// The client-supplied name is not acceptable (NUL, too long, reserved).
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    /// The disk (or the filesystem's own quota) is full.
    #[error("no space left on device")]
    NoSpace,
    /// A resource the storage keeps for uploads is used up for now (the
    /// S3 buffer budget); the reason is shown to the client, who may try
    /// again once uploads finish.
    #[error("{0}")]
    Busy(&'static str),
    /// A resume offset past the end of the existing file.
    #[error("invalid offset")]
    InvalidOffset,
    /// The backend does not support this operation; the reason is shown
    /// to the client as it is.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Any other I/O failure (not the client's fault).
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl From<io::Error> for VfsError {
    fn from(e: io::Error) -> Self {
        use io::ErrorKind as K;
        use rustix::io::Errno;
        match Errno::from_io_error(&e) {
            Some(Errno::NOSPC | Errno::DQUOT) => return VfsError::NoSpace,
            Some(Errno::NOTDIR) => return VfsError::NotADirectory,
            Some(Errno::ISDIR) => return VfsError::IsADirectory,
            Some(Errno::NOTEMPTY) => return VfsError::DirectoryNotEmpty,
            // ELOOP: O_NOFOLLOW on a symlink, or a symlink cycle.
            Some(Errno::LOOP) => return VfsError::PermissionDenied,
            Some(Errno::NAMETOOLONG) => return VfsError::InvalidName("name too long"),
            Some(Errno::XDEV) => return VfsError::Unsupported(LINK_ACROSS_DEVICES),
            _ => {}
        }
        match e.kind() {
            K::NotFound => VfsError::NotFound,
            K::PermissionDenied => VfsError::PermissionDenied,
            K::AlreadyExists => VfsError::AlreadyExists,
            K::NotADirectory => VfsError::NotADirectory,
            K::IsADirectory => VfsError::IsADirectory,
            K::DirectoryNotEmpty => VfsError::DirectoryNotEmpty,
            K::StorageFull | K::QuotaExceeded => VfsError::NoSpace,
            K::InvalidFilename => VfsError::InvalidName("invalid file name"),
            _ => VfsError::Io(e),
        }
    }
}

/// Why a hard link across file systems (EXDEV) is refused.
const LINK_ACROSS_DEVICES: &str = "Operation not supported across file systems";

/// Result alias for filesystem operations.
pub type VfsResult<T> = Result<T, VfsError>;

/// The kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (only from `symlink_metadata`, or one that leads outside the jail).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// What `stat` returns, backend-neutral.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// File, folder, link.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
    /// Last access time.
    pub accessed: SystemTime,
    /// Unix permission bits (including the file type bits).
    pub mode: u32,
    /// Link count (shown in `ls -l` listings).
    pub nlink: u64,
    /// A stable identity within the backend (inode), for MLSD's `unique` fact.
    pub unique: u64,
}

impl Metadata {
    /// Whether this is a folder.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The entry's name (a single component).
    pub name: String,
    /// Its metadata (symlinks inside the jail are followed).
    pub meta: Metadata,
}

/// A directory listing that streams: entries are read from the backend in
/// batches, one batch each time the previous one has been consumed, so a
/// folder of a million entries never sits in memory, and a listing nobody
/// reads holds no thread (an open-but-unread SFTP directory handle costs a
/// few kilobytes, not a blocking-pool thread).
pub struct DirStream {
    source: Option<Box<dyn DirSource>>,
    batch: std::collections::VecDeque<VfsResult<DirEntry>>,
}

/// Where a [`DirStream`] gets its entries from (one per backend).
#[async_trait]
pub trait DirSource: Send {
    /// Up to `max` more entries; an empty batch means the end.
    async fn next_batch(&mut self, max: usize) -> Vec<VfsResult<DirEntry>>;
}

/// Entries read from the backend at a time.
pub const LIST_BATCH: usize = 256;

impl DirStream {
    /// The next entry, or `None` at the end.
    pub async fn next(&mut self) -> Option<VfsResult<DirEntry>> {
        if self.batch.is_empty() {
            let source = self.source.as_mut()?;
            self.batch.extend(source.next_batch(LIST_BATCH).await);
            if self.batch.is_empty() {
                self.source = None;
                return None;
            }
        }
        self.batch.pop_front()
    }

    /// A stream over a backend's source.
    pub fn new(source: Box<dyn DirSource>) -> Self {
        DirStream {
            source: Some(source),
            batch: std::collections::VecDeque::new(),
        }
    }
}

/// Filesystem capacity, for SFTP `statvfs` and FTP `AVBL`-style questions.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStats {
    /// Block size in bytes.
    pub block_size: u64,
    /// Fragment size in bytes.
    pub fragment_size: u64,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Blocks available to unprivileged users.
    pub blocks_available: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Maximum name length.
    pub name_max: u64,
}

/// How uploads reach their final name (SPEC 5.4, `[storage] upload_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadMode {
    /// Hidden temporary, renamed into place on commit, deleted on abort.
    #[default]
    Atomic,
    /// Like atomic, but an interrupted upload keeps its partial under the final name.
    AtomicResume,
    /// Write in place.
    Direct,
}

/// Where a new upload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStart {
    /// Replace whatever is there (FTP STOR, SFTP open with TRUNC).
    Truncate,
    /// Keep the first N bytes of the existing file and continue there (FTP REST+STOR).
    ResumeAt(u64),
    /// Keep the whole existing file and append (FTP APPE, SFTP APPEND).
    Append,
    /// Keep the existing file and write at any offset (SFTP open without TRUNC).
    Keep,
}

/// Options for [`Storage::create`].
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// The account's upload mode.
    pub mode: UploadMode,
    /// Where the new content starts.
    pub start: WriteStart,
    /// Fail with [`VfsError::AlreadyExists`] if the target exists (SFTP EXCL, FTP STOU).
    pub exclusive: bool,
    /// The commit returns only once the data, the rename and the folder are
    /// on disk (`[storage] durable_uploads`); `false`: from the page cache.
    pub durable: bool,
}

/// Readable file content, positioned reads (safe to share between tasks).
#[async_trait]
pub trait FileReader: Send + Sync {
    /// Reads up to `len` bytes at `offset`; an empty result means end of file.
    async fn read_at(&self, offset: u64, len: usize) -> VfsResult<Bytes>;
    /// The size when opened.
    fn len(&self) -> u64;
    /// Whether the file was empty when opened.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The underlying local file, for zero-copy transfers (sendfile/splice).
    fn local_file(&self) -> Option<&std::fs::File>;
    /// The open file's own metadata (`fstat`), when the backend has it without
    /// waiting: the file as opened, even if its name was replaced since.
    fn stat(&self) -> Option<Metadata> {
        None
    }
}

/// What [`FileWriter::write_at_inspect`] hands the written bytes to.
pub type Inspect = Box<dyn FnOnce(&[u8]) + Send>;

/// Why [`FileWriter::write_and_commit`] failed.
#[derive(Debug)]
pub enum LastWrite {
    /// The write failed: nothing was committed and the upload was aborted,
    /// leaving what [`FileWriter::abort`] would have left.
    Write(VfsError, Option<Placed>),
    /// The commit failed (the upload is abandoned, as after `commit`).
    Commit(VfsError),
}

/// What an upload's final name held when the upload was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing (a new file).
    Nothing,
    /// A regular file (followed through a symlink inside the jail).
    File {
        /// Its size.
        size: u64,
        /// Its hard links.
        nlink: u64,
    },
}

/// An upload in progress. Dropping it without [`FileWriter::commit`] aborts it.
#[async_trait]
pub trait FileWriter: Send + Sync {
    /// Writes all of `data` at `offset` (offsets are absolute in the final file).
    async fn write_at(&self, offset: u64, data: Bytes) -> VfsResult<()>;
    /// Writes like [`FileWriter::write_at`] for a caller that writes front
    /// to back and waits for each write before it goes on (FTP): a local
    /// page-cache upload then writes a large chunk in place, on the thread
    /// that received it, and the call cannot be cancelled until the copy
    /// into memory is done.
    async fn write_next_at(&self, offset: u64, data: Bytes) -> VfsResult<()> {
        self.write_at(offset, data).await
    }
    /// Writes like [`FileWriter::write_next_at`] and hands the same bytes to
    /// `inspect` where the write runs (a local file: on the same thread),
    /// so that a caller digesting an upload pays one thread hand-off per
    /// chunk instead of two. `inspect` runs whether or not the write
    /// succeeds.
    async fn write_at_inspect(
        &self,
        offset: u64,
        data: Bytes,
        inspect: crate::Inspect,
    ) -> VfsResult<()> {
        inspect(&data);
        self.write_at(offset, data).await
    }
    /// Truncates or extends the upload's content to `len` (SFTP fsetstat size,
    /// scp overwriting a longer file), before it is committed.
    async fn set_len(&self, len: u64) -> VfsResult<()>;
    /// Flushes what was written so far to the disk (SFTP `fsync@openssh.com`).
    /// In the atomic modes the final name still appears only at commit.
    async fn sync(&self) -> VfsResult<()> {
        Ok(())
    }
    /// Bytes already in the file before this upload wrote anything
    /// (the kept prefix of a resume or append).
    fn initial_len(&self) -> u64;
    /// What the final name held when [`Storage::create`] looked at it, so
    /// that a caller need not look it up first (one round trip fewer per
    /// upload). Required: every backend looks before it creates.
    fn found(&self) -> Found;
    /// The underlying local file, for zero-copy uploads (splice).
    fn local_file(&self) -> Option<&std::fs::File>;
    /// Makes the upload durable and visible under its final name.
    /// Returns a reader over exactly the committed content (for hashing).
    async fn commit(self: Box<Self>) -> VfsResult<Committed>;
    /// Writes the upload's last bytes (handed to `inspect` as
    /// [`FileWriter::write_at_inspect`] does), then commits: one call, so
    /// that a local file does both in one blocking call (the end of every
    /// upload; all of a small one).
    async fn write_and_commit(
        self: Box<Self>,
        offset: u64,
        data: Bytes,
        inspect: Option<Inspect>,
    ) -> Result<Committed, LastWrite> {
        let written = match inspect {
            Some(inspect) => self.write_at_inspect(offset, data, inspect).await,
            None => self.write_at(offset, data).await,
        };
        if let Err(e) = written {
            return Err(LastWrite::Write(e, self.abort().await));
        }
        self.commit().await.map_err(LastWrite::Commit)
    }
    /// Abandons the upload. What stays depends on the mode: nothing
    /// (`atomic`), or the partial under the final name (`atomic_resume`
    /// once something was written, `direct`), described by the result.
    async fn abort(self: Box<Self>) -> Option<Placed>;
    /// The inode written in place (`direct` mode), which other operations
    /// must leave alone until the upload ends; `None` for a hidden temporary.
    fn in_place_identity(&self) -> Option<u64> {
        None
    }
    /// Whether [`Committed::content`] reads the committed bytes from this
    /// machine's storage, and they stay as committed while that reader
    /// lives: no upload writes into a committed file in place and the
    /// backend holds its own in-place writes back meanwhile. The caller may
    /// then hash the upload after answering the client. `false` by default
    /// (a read-back over the network, or content another upload may change).
    fn stable_content(&self) -> bool {
        false
    }
}

/// What the final name held just before an upload took it over: what the
/// quota gives back is decided from this, at the moment of the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The upload wrote the final file in place (`direct` mode).
    InPlace,
    /// Nothing was there.
    Nothing,
    /// A regular file, with its size and link count.
    File {
        /// Its size.
        size: u64,
        /// Its hard links before the rename (more than one: its bytes stay).
        nlink: u64,
    },
    /// A symlink or another kind of entry (it counted nothing).
    Other,
}

/// What an upload left under its final name.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    /// The size of the file now under the final name.
    pub size: u64,
    /// What that name held before.
    pub replaced: Replaced,
}

/// A committed upload.
pub struct Committed {
    /// Final size in bytes.
    pub size: u64,
    /// What the final name held before.
    pub replaced: Replaced,
    /// The committed content, still readable even if the name is replaced later.
    pub content: Arc<dyn FileReader>,
}

/// A storage backend, already confined to one account's home.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Metadata, following symlinks that stay inside the jail.
    async fn metadata(&self, path: &VirtualPath) -> VfsResult<Metadata>;
    /// Metadata of the entry itself (a symlink is reported as one).
    async fn symlink_metadata(&self, path: &VirtualPath) -> VfsResult<Metadata>;
    /// Streams the entries of a folder (hidden upload temporaries excluded).
    async fn list(&self, path: &VirtualPath) -> VfsResult<DirStream>;
    /// Opens a file for reading.
    async fn open_read(&self, path: &VirtualPath) -> VfsResult<Arc<dyn FileReader>>;
    /// Starts an upload.
    async fn create(
        &self,
        path: &VirtualPath,
        opts: CreateOptions,
    ) -> VfsResult<Box<dyn FileWriter>>;
    /// Renames; with `overwrite = false` an existing target is an error.
    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> VfsResult<()>;
    /// Deletes a file (or a symlink itself).
    async fn remove_file(&self, path: &VirtualPath) -> VfsResult<()>;
    /// Removes `path` if it is a regular file last modified before `cutoff`,
    /// reaching it without following any symbolic link on the way (a folder
    /// swapped for a link cannot redirect it); `Ok(None)` if it was left
    /// alone. What retention uses. Backends without links can rely on this
    /// default.
    async fn remove_if_older(
        &self,
        path: &VirtualPath,
        cutoff: std::time::SystemTime,
    ) -> VfsResult<Option<Metadata>> {
        let meta = self.symlink_metadata(path).await?;
        if meta.kind != FileKind::File || meta.modified >= cutoff {
            return Ok(None);
        }
        self.remove_file(path).await?;
        Ok(Some(meta))
    }
    /// Creates one folder.
    async fn create_dir(&self, path: &VirtualPath) -> VfsResult<()>;
    /// Removes an empty folder.
    async fn remove_dir(&self, path: &VirtualPath) -> VfsResult<()>;
    /// Sets access and modification times.
    async fn set_times(
        &self,
        path: &VirtualPath,
        accessed: Option<SystemTime>,
        modified: Option<SystemTime>,
    ) -> VfsResult<()>;
    /// Truncates or extends a file to `size` (SFTP setstat size).
    async fn set_len(&self, path: &VirtualPath, size: u64) -> VfsResult<()>;
    /// The target of a symlink, as a virtual path (refused if it leaves the jail).
    async fn read_link(&self, path: &VirtualPath) -> VfsResult<VirtualPath>;
    /// Creates `link` pointing at `target` (both inside the jail).
    async fn symlink(&self, target: &VirtualPath, link: &VirtualPath) -> VfsResult<()>;
    /// Creates a hard link `dst` to the file `src`.
    async fn hard_link(&self, src: &VirtualPath, dst: &VirtualPath) -> VfsResult<()>;
    /// Capacity of the filesystem holding `path`.
    async fn fs_stats(&self, path: &VirtualPath) -> VfsResult<FsStats>;
    /// Where `path` really is: every symlink along it resolved (inside the
    /// jail); a part that does not exist yet is kept as spelled. Backends
    /// without links return the path itself.
    async fn real_path(&self, path: &VirtualPath) -> VfsResult<VirtualPath> {
        Ok(path.clone())
    }
}
