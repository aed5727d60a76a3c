//! Homes in an S3-compatible bucket (AWS S3, MinIO, Ceph), on opendal
//! (docs/design/s3-backend.md says why not object_store).
//!
//! The mapping: a home is the prefix `{home}/` below `[storage.s3] prefix`;
//! a file is an object; a folder is a prefix, with an empty `dir/` marker
//! object for the ones dropgate creates (folders made by other tools exist as
//! long as something is below them). Uploads stream as multipart uploads, so
//! an object appears only when it is complete: every upload mode is atomic
//! by nature, and an aborted upload is aborted on the server. What S3 cannot
//! do (writes in the middle of a file, links, times, resizing) is refused
//! with `Unsupported`, and [`Capabilities`] says so up front.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use opendal::{ErrorKind, Operator};

use crate::backend::{Backend, Capabilities, home_components};
use crate::{
    Committed, CreateOptions, DirEntry, DirSource, DirStream, FileKind, FileReader, FileWriter,
    Found, FsStats, MAX_NAME_LEN, Metadata, Placed, Replaced, Storage, TEMP_PREFIX, UploadMode,
    VfsError, VfsResult, VirtualPath, WriteStart,
};

/// Bytes buffered per multipart part. S3 allows 10,000 parts, so one object
/// can reach 80 GiB; the part minimum is 5 MiB.
const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Out-of-order writes (SFTP sends many at once) parked per upload until
/// the gap before them fills: the SFTP dispatcher's window, 64 × 255 KiB.
const PARK_LIMIT: usize = 16 << 20;
/// Bytes all uploads together may hold in memory (parked writes and parts
/// not yet sent): past it a write is refused rather than the process
/// growing without bound (256 handles of one SFTP session could otherwise
/// hold 6 GiB).
const BUFFER_BUDGET: u64 = 2 << 30;
/// What the uploads hold now, against [`BUFFER_BUDGET`].
static BUFFERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const BUFFERS_FULL: &str = "the gateway's upload buffers for S3 are full; try again shortly";
/// What the uploads into one home may hold of [`BUFFER_BUDGET`], so that one
/// account with many uploads at once cannot take every other account's.
const HOME_BUFFER_BUDGET: u64 = BUFFER_BUDGET / 4;
const HOME_BUFFERS_FULL: &str =
    "this account's upload buffers for S3 are full; let an upload finish first";
/// One server-side copy call moves at most this much (S3's limit).
const COPY_LIMIT: u64 = 5 << 30;
/// Keys listed per ListObjectsV2 page.
const LIST_PAGE: usize = 1000;
/// What `statvfs` reports: S3 has no device, so a large, mostly free one
/// (the account's quota is what really limits an upload).
const STATS_BLOCK: u64 = 4096;
const STATS_BLOCKS: u64 = 1 << 40;

// What a client is told when it asks for what S3 cannot do (README,
// "Storage on S3").
const NO_REWRITE: &str = "Writing in the middle of a file is not supported by this storage (S3)";
const NO_RESIZE: &str = "Changing a file's size is not supported by this storage (S3)";
const NO_TIMES: &str = "Setting file times is not supported by this storage (S3)";
const NO_LINKS: &str = "Links are not supported by this storage (S3)";

/// `[storage.s3]` (SPEC 3).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// Keys live below this prefix (empty: the whole bucket).
    pub prefix: String,
    /// The region requests are signed for.
    pub region: String,
    /// An S3-compatible endpoint URL; empty: AWS.
    pub endpoint: String,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual hosts.
    pub path_style: bool,
    /// Static credentials; empty: the AWS environment/profile chain.
    pub access_key_id: String,
    /// Goes with `access_key_id`.
    pub secret_access_key: String,
}

/// Homes as prefixes of one bucket.
#[derive(Clone)]
pub struct S3Backend {
    op: Operator,
    bucket: String,
    /// What each open home's uploads hold (against [`HOME_BUFFER_BUDGET`]),
    /// shared by every session of the home while one is open.
    held_by_home: Arc<std::sync::Mutex<HashMap<String, Weak<AtomicU64>>>>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("S3Backend")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl S3Backend {
    /// A backend for `settings` (no request is made yet).
    pub fn new(settings: &S3Settings) -> VfsResult<S3Backend> {
        // With opendal's default features off, its HTTP client is installed
        // by hand (idempotent).
        opendal::install_default();
        let prefix = settings.prefix.trim_matches('/');
        let mut builder = opendal::services::S3::default()
            .bucket(&settings.bucket)
            .region(&settings.region)
            .root(&format!("/{prefix}"));
        if !settings.endpoint.is_empty() {
            builder = builder.endpoint(&settings.endpoint);
        }
        if !settings.path_style {
            builder = builder.enable_virtual_host_style();
        }
        if !settings.access_key_id.is_empty() {
            builder = builder
                .access_key_id(&settings.access_key_id)
                .secret_access_key(&settings.secret_access_key)
                // Given keys are the only ones: no surprise from a profile
                // or the instance metadata service.
                .disable_config_load()
                .disable_ec2_metadata();
        }
        let op = Operator::new(builder)
            .map_err(map_err)?
            // A part of 8 MiB on a slow link takes longer than the default
            // 10 s per call.
            .layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(std::time::Duration::from_secs(120))
                    .with_io_timeout(std::time::Duration::from_secs(120)),
            )
            .layer(opendal::layers::RetryLayer::new().with_jitter());
        Ok(S3Backend {
            op,
            bucket: settings.bucket.clone(),
            held_by_home: Arc::default(),
        })
    }

    /// The buffer count of `home`, shared with its other open sessions.
    fn home_counter(&self, home: &str) -> Arc<AtomicU64> {
        let mut homes = self
            .held_by_home
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(counter) = homes.get(home).and_then(Weak::upgrade) {
            return counter;
        }
        // Homes nobody has open any more go now (rarely many).
        homes.retain(|_, c| c.strong_count() > 0);
        let counter = Arc::new(AtomicU64::new(0));
        homes.insert(home.to_owned(), Arc::downgrade(&counter));
        counter
    }

    /// A home's storage (what [`Backend::open_home`] returns, typed).
    pub async fn storage(&self, home: &str) -> VfsResult<S3Storage> {
        let parts = s3_home_components(home)?;
        let home = if parts.is_empty() {
            String::new()
        } else {
            format!("{}/", parts.join("/"))
        };
        let storage = S3Storage {
            op: self.op.clone(),
            held: self.home_counter(&home),
            home,
        };
        if !storage.home.is_empty() && !storage.prefix_exists(&storage.home).await? {
            storage
                .op
                .create_dir(&storage.home)
                .await
                .map_err(map_err)?;
        }
        Ok(storage)
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            random_writes: false,
            links: false,
            local_files: false,
            atomic_folder_rename: false,
            in_place_uploads: false,
            set_times: false,
            resize: false,
            stable_reads: false,
            device_stats: false,
        }
    }

    fn shared(&self) -> bool {
        true
    }

    async fn open_home(&self, home: &str) -> VfsResult<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage(home).await?))
    }

    async fn remove_home(&self, home: &str) -> VfsResult<bool> {
        let parts = s3_home_components(home)?;
        if parts.is_empty() {
            return Err(VfsError::PermissionDenied);
        }
        let prefix = format!("{}/", parts.join("/"));
        let probe = S3Storage {
            op: self.op.clone(),
            home: prefix.clone(),
            held: Arc::default(),
        };
        if !probe.prefix_exists(&prefix).await? {
            return Ok(false);
        }
        // A streamed listing deleted in batches of up to 1,000 keys.
        self.op
            .delete_with(&prefix)
            .recursive(true)
            .await
            .map_err(map_err)?;
        Ok(true)
    }

    async fn sweep_temporaries(&self) -> VfsResult<usize> {
        // Uploads are multipart uploads, never visible objects: a crash
        // leaves no temporary under any name. Parts of an upload a crash
        // interrupted are removed by the bucket's lifecycle rule
        // (AbortIncompleteMultipartUpload; README), which holds for every
        // node sharing the bucket.
        Ok(0)
    }
}

/// One home of an [`S3Backend`].
#[derive(Clone)]
pub struct S3Storage {
    op: Operator,
    /// `home/` (with the slash), or empty for the bucket prefix itself.
    home: String,
    /// What this home's uploads hold in memory (all its sessions).
    held: Arc<AtomicU64>,
}

impl S3Storage {
    /// The object key of `path`. opendal trims white space at both ends of
    /// every path it is given, so a key that starts or ends with some would
    /// reach another object (`/a ` would be `/a`): such names are refused.
    fn key(&self, path: &VirtualPath) -> VfsResult<String> {
        let key = format!("{}{}", self.home, path.as_str().trim_start_matches('/'));
        if key.starts_with(char::is_whitespace) || key.ends_with(char::is_whitespace) {
            return Err(VfsError::InvalidName(
                "names ending in white space are not supported by this storage (S3)",
            ));
        }
        Ok(key)
    }

    /// The prefix of the folder `path` (ends with `/`, or is empty).
    fn dir_prefix(&self, path: &VirtualPath) -> VfsResult<String> {
        if path.is_root() {
            Ok(self.home.clone())
        } else {
            Ok(format!("{}/", self.key(path)?))
        }
    }

    /// Whether anything (a marker or an object) is below `prefix`.
    async fn prefix_exists(&self, prefix: &str) -> VfsResult<bool> {
        if prefix.is_empty() {
            return Ok(true);
        }
        let mut lister = self
            .op
            .lister_with(prefix)
            .recursive(true)
            .limit(1)
            .await
            .map_err(map_err)?;
        match lister.next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) if e.kind() == ErrorKind::NotFound => Ok(false),
            Some(Err(e)) => Err(map_err(e)),
            None => Ok(false),
        }
    }

    /// A file's metadata from a HEAD, `None` if there is no such object.
    async fn head(&self, key: &str) -> VfsResult<Option<opendal::Metadata>> {
        match self.op.stat(key).await {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Fails unless `path`'s parent folder exists.
    async fn require_parent_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        let parent = path.parent();
        if parent.is_root() {
            return Ok(());
        }
        match self.metadata(&parent).await?.kind {
            FileKind::Dir => Ok(()),
            _ => Err(VfsError::NotADirectory),
        }
    }

    /// Every key below `prefix` (markers included), a page at a time.
    async fn keys_below(&self, prefix: &str) -> VfsResult<opendal::Lister> {
        self.op
            .lister_with(prefix)
            .recursive(true)
            .limit(LIST_PAGE)
            .await
            .map_err(map_err)
    }

    /// Copies one object, in calls of at most 5 GiB each.
    async fn copy_object(&self, from: &str, to: &str, size: u64) -> VfsResult<()> {
        if size <= COPY_LIMIT {
            self.op.copy(from, to).await.map_err(map_err)?;
            return Ok(());
        }
        let mut w = self
            .op
            .writer_with(to)
            .chunk(PART_SIZE)
            .await
            .map_err(map_err)?;
        let mut at = 0;
        while at < size {
            let end = (at + COPY_LIMIT).min(size);
            if let Err(e) = w.copy_from(from, at..end).await {
                let _ = w.abort().await;
                return Err(map_err(e));
            }
            at = end;
        }
        w.close().await.map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn metadata(&self, path: &VirtualPath) -> VfsResult<Metadata> {
        if path.is_root() {
            return Ok(dir_meta(&self.home, None));
        }
        let key = self.key(path)?;
        if let Some(m) = self.head(&key).await? {
            return Ok(file_meta(&key, &m));
        }
        if self.prefix_exists(&format!("{key}/")).await? {
            return Ok(dir_meta(&key, None));
        }
        Err(VfsError::NotFound)
    }

    async fn symlink_metadata(&self, path: &VirtualPath) -> VfsResult<Metadata> {
        self.metadata(path).await
    }

    async fn list(&self, path: &VirtualPath) -> VfsResult<DirStream> {
        if !self.metadata(path).await?.is_dir() {
            return Err(VfsError::NotADirectory);
        }
        let prefix = self.dir_prefix(path)?;
        let lister = self
            .op
            .lister_with(&prefix)
            .limit(LIST_PAGE)
            .await
            .map_err(map_err)?;
        Ok(DirStream::new(Box::new(S3DirSource {
            lister: Some(lister),
            prefix,
        })))
    }

    async fn open_read(&self, path: &VirtualPath) -> VfsResult<Arc<dyn FileReader>> {
        let key = self.key(path)?;
        match self.head(&key).await? {
            Some(m) => Ok(Arc::new(S3Reader::new(self.op.clone(), key, &m))),
            None if path.is_root() || self.prefix_exists(&format!("{key}/")).await? => {
                Err(VfsError::IsADirectory)
            }
            None => Err(VfsError::NotFound),
        }
    }

    async fn create(
        &self,
        path: &VirtualPath,
        opts: CreateOptions,
    ) -> VfsResult<Box<dyn FileWriter>> {
        if path.is_root() {
            return Err(VfsError::IsADirectory);
        }
        let key = self.key(path)?;
        let existing = self.head(&key).await?;
        if existing.is_none() {
            if self.prefix_exists(&format!("{key}/")).await? {
                return Err(VfsError::IsADirectory);
            }
            self.require_parent_dir(path).await?;
        } else if opts.exclusive {
            return Err(VfsError::AlreadyExists);
        }
        let existing_len = existing.as_ref().map_or(0, |m| m.content_length());
        let found = match &existing {
            Some(_) => Found::File {
                size: existing_len,
                nlink: 1,
            },
            None => Found::Nothing,
        };
        let (keep, deferred) = match opts.start {
            WriteStart::Truncate => (0, false),
            WriteStart::ResumeAt(n) if n > existing_len => return Err(VfsError::InvalidOffset),
            WriteStart::ResumeAt(n) => (n, false),
            WriteStart::Append => (existing_len, false),
            // Which prefix stays is known at the first write.
            WriteStart::Keep => (existing_len, true),
        };
        let mut writer = self
            .op
            .writer_with(&key)
            .chunk(PART_SIZE)
            .concurrent(PARTS_IN_FLIGHT)
            .if_not_exists(opts.exclusive)
            .await
            .map_err(map_err)?;
        let mut next = 0;
        if !deferred && keep > 0 {
            let etag = existing.as_ref().and_then(|m| m.etag());
            if let Err(e) = copy_range(&mut writer, &key, 0..keep, etag).await {
                let _ = writer.abort().await;
                return Err(e);
            }
            next = keep;
        }
        Ok(Box::new(S3Writer {
            op: self.op.clone(),
            key,
            mode: opts.mode,
            initial_len: keep,
            found,
            old_len: existing.as_ref().map(|m| m.content_length()),
            old_etag: existing.as_ref().and_then(|m| m.etag().map(str::to_owned)),
            exclusive: opts.exclusive,
            state: tokio::sync::Mutex::new(WriteState {
                writer: Some(writer),
                started: !deferred,
                next,
                parked: BTreeMap::new(),
                parked_bytes: 0,
                failed: false,
                end_at: None,
                run_start: next,
                held: 0,
                home_held: self.held.clone(),
                wrote: false,
                etag: None,
            }),
        }))
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> VfsResult<()> {
        if from.is_root() || to.is_root() {
            return Err(VfsError::PermissionDenied);
        }
        let source = self.metadata(from).await?;
        self.require_parent_dir(to).await?;
        if from == to {
            return Ok(());
        }
        if source.is_dir() && to.starts_with(from) {
            return Err(VfsError::InvalidName("a folder cannot move into itself"));
        }
        let target = match self.metadata(to).await {
            Ok(m) => Some(m),
            Err(VfsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(target) = &target {
            // Checked, not conditional: a name that appears between this
            // look and the copy is replaced (S3's CopyObject has no
            // If-None-Match that every implementation honours).
            if !overwrite {
                return Err(VfsError::AlreadyExists);
            }
            match (target.is_dir(), source.is_dir()) {
                (true, false) => return Err(VfsError::IsADirectory),
                (false, true) => return Err(VfsError::NotADirectory),
                (true, true) => {
                    // Only an empty folder may be replaced: its marker goes.
                    let prefix = self.dir_prefix(to)?;
                    let mut keys = self.keys_below(&prefix).await?;
                    while let Some(entry) = keys.next().await {
                        let entry = entry.map_err(map_err)?;
                        if entry.path() != prefix {
                            return Err(VfsError::DirectoryNotEmpty);
                        }
                    }
                    self.op.delete(&prefix).await.map_err(map_err)?;
                }
                (false, false) => {}
            }
        }
        let (from_key, to_key) = (self.key(from)?, self.key(to)?);
        if !source.is_dir() {
            // Copy, then delete: never a moment without the file.
            self.copy_object(&from_key, &to_key, source.size).await?;
            return self.op.delete(&from_key).await.map_err(map_err);
        }
        // A folder moves object by object (not atomic: README). Its new
        // marker first, so the target exists even if it was implicit.
        let (from_prefix, to_prefix) = (format!("{from_key}/"), format!("{to_key}/"));
        self.op.create_dir(&to_prefix).await.map_err(map_err)?;
        let mut keys = self.keys_below(&from_prefix).await?;
        while let Some(entry) = keys.next().await {
            let entry = entry.map_err(map_err)?;
            let old = entry.path();
            let Some(rest) = old.strip_prefix(&from_prefix) else {
                continue;
            };
            if !rest.is_empty() {
                let new = format!("{to_prefix}{rest}");
                if old.ends_with('/') {
                    self.op.create_dir(&new).await.map_err(map_err)?;
                } else {
                    self.copy_object(old, &new, entry.metadata().content_length())
                        .await?;
                }
            }
            self.op.delete(old).await.map_err(map_err)?;
        }
        Ok(())
    }

    async fn remove_file(&self, path: &VirtualPath) -> VfsResult<()> {
        let key = self.key(path)?;
        if path.is_root() {
            return Err(VfsError::IsADirectory);
        }
        if self.head(&key).await?.is_none() {
            return Err(if self.prefix_exists(&format!("{key}/")).await? {
                VfsError::IsADirectory
            } else {
                VfsError::NotFound
            });
        }
        self.op.delete(&key).await.map_err(map_err)
    }

    async fn create_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        if path.is_root() {
            return Err(VfsError::AlreadyExists);
        }
        match self.metadata(path).await {
            Ok(_) => return Err(VfsError::AlreadyExists),
            Err(VfsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        self.require_parent_dir(path).await.map_err(|e| match e {
            VfsError::NotADirectory => VfsError::NotFound,
            e => e,
        })?;
        self.op
            .create_dir(&self.dir_prefix(path)?)
            .await
            .map_err(map_err)
    }

    async fn remove_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        if path.is_root() {
            return Err(VfsError::PermissionDenied);
        }
        if !self.metadata(path).await?.is_dir() {
            return Err(VfsError::NotADirectory);
        }
        let prefix = self.dir_prefix(path)?;
        let mut keys = self
            .op
            .lister_with(&prefix)
            .recursive(true)
            .limit(2)
            .await
            .map_err(map_err)?;
        while let Some(entry) = keys.next().await {
            if entry.map_err(map_err)?.path() != prefix {
                return Err(VfsError::DirectoryNotEmpty);
            }
        }
        self.op.delete(&prefix).await.map_err(map_err)
    }

    async fn set_times(
        &self,
        path: &VirtualPath,
        _accessed: Option<SystemTime>,
        _modified: Option<SystemTime>,
    ) -> VfsResult<()> {
        // S3 sets LastModified itself.
        self.metadata(path).await?;
        Err(VfsError::Unsupported(NO_TIMES))
    }

    async fn set_len(&self, path: &VirtualPath, size: u64) -> VfsResult<()> {
        let meta = self.metadata(path).await?;
        if meta.is_dir() {
            return Err(VfsError::IsADirectory);
        }
        if size == meta.size {
            return Ok(());
        }
        if size == 0 {
            self.op
                .write(&self.key(path)?, Bytes::new())
                .await
                .map_err(map_err)?;
            return Ok(());
        }
        Err(VfsError::Unsupported(NO_RESIZE))
    }

    async fn read_link(&self, path: &VirtualPath) -> VfsResult<VirtualPath> {
        self.metadata(path).await?;
        Err(VfsError::Unsupported(NO_LINKS))
    }

    async fn symlink(&self, _target: &VirtualPath, _link: &VirtualPath) -> VfsResult<()> {
        Err(VfsError::Unsupported(NO_LINKS))
    }

    async fn hard_link(&self, _src: &VirtualPath, _dst: &VirtualPath) -> VfsResult<()> {
        Err(VfsError::Unsupported(NO_LINKS))
    }

    async fn fs_stats(&self, _path: &VirtualPath) -> VfsResult<FsStats> {
        Ok(FsStats {
            block_size: STATS_BLOCK,
            fragment_size: STATS_BLOCK,
            blocks: STATS_BLOCKS,
            blocks_free: STATS_BLOCKS,
            blocks_available: STATS_BLOCKS,
            files: u64::from(u32::MAX),
            files_free: u64::from(u32::MAX),
            name_max: MAX_NAME_LEN as u64,
        })
    }
}

/// A home's parts, refusing what opendal would trim (white space at the
/// ends of a key): `" alice"` must not open `alice`.
fn s3_home_components(home: &str) -> VfsResult<Vec<&str>> {
    let parts = home_components(home)?;
    if parts
        .iter()
        .any(|p| p.starts_with(char::is_whitespace) || p.ends_with(char::is_whitespace))
    {
        return Err(VfsError::PermissionDenied);
    }
    Ok(parts)
}

/// Copies `range` of the object `key` into `writer`, in calls S3 accepts.
/// With `etag`, only from that version of the object: one replaced
/// meanwhile fails the copy instead of mixing two versions.
async fn copy_range(
    writer: &mut opendal::Writer,
    key: &str,
    range: Range<u64>,
    etag: Option<&str>,
) -> VfsResult<()> {
    let mut at = range.start;
    while at < range.end {
        let end = (at + COPY_LIMIT).min(range.end);
        let options = opendal::options::ReadOptions {
            range: (at..end).into(),
            if_match: etag.map(str::to_owned),
            ..Default::default()
        };
        writer
            .copy_from_options(key, options)
            .await
            .map_err(map_read_err)?;
        at = end;
    }
    Ok(())
}

/// A folder listed a ListObjectsV2 page at a time.
struct S3DirSource {
    lister: Option<opendal::Lister>,
    /// The folder's prefix (with the slash; empty for the bucket prefix).
    prefix: String,
}

#[async_trait]
impl DirSource for S3DirSource {
    async fn next_batch(&mut self, max: usize) -> Vec<VfsResult<DirEntry>> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(lister) = self.lister.as_mut() else {
                break;
            };
            let entry = match lister.next().await {
                None => {
                    self.lister = None;
                    break;
                }
                Some(Err(e)) => {
                    self.lister = None;
                    batch.push(Err(map_err(e)));
                    break;
                }
                Some(Ok(entry)) => entry,
            };
            let path = entry.path();
            let Some(rest) = path.strip_prefix(&self.prefix) else {
                continue;
            };
            let (name, is_dir) = match rest.strip_suffix('/') {
                Some(name) => (name, true),
                None => (rest, false),
            };
            // The folder's own marker, upload temporaries, and keys other
            // tools wrote that cannot be a name here (`a//b`, line breaks,
            // too long: what the canonicalizer refuses) are left out, not a
            // failed listing.
            if name.is_empty()
                || name.contains('/')
                || name.starts_with(TEMP_PREFIX)
                || name.len() > MAX_NAME_LEN
                || name.contains(['\n', '\r', '\0'])
            {
                continue;
            }
            let meta = if is_dir {
                dir_meta(path, entry.metadata().last_modified().map(SystemTime::from))
            } else {
                file_meta(path, entry.metadata())
            };
            batch.push(Ok(DirEntry {
                name: name.to_owned(),
                meta,
            }));
        }
        batch
    }
}

/// A stable 64-bit identity for a key (MLSD `unique`, SFTP handles).
fn key_identity(key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn file_meta(key: &str, m: &opendal::Metadata) -> Metadata {
    let modified = m
        .last_modified()
        .map_or(SystemTime::UNIX_EPOCH, SystemTime::from);
    Metadata {
        kind: FileKind::File,
        size: m.content_length(),
        modified,
        accessed: modified,
        mode: 0o100_644,
        nlink: 1,
        unique: key_identity(key),
    }
}

fn dir_meta(key: &str, modified: Option<SystemTime>) -> Metadata {
    // A prefix has no time of its own.
    let modified = modified.unwrap_or_else(SystemTime::now);
    Metadata {
        kind: FileKind::Dir,
        size: 0,
        modified,
        accessed: modified,
        mode: 0o040_755,
        nlink: 2,
        unique: key_identity(key),
    }
}

fn map_err(e: opendal::Error) -> VfsError {
    match e.kind() {
        ErrorKind::NotFound => VfsError::NotFound,
        ErrorKind::PermissionDenied => VfsError::PermissionDenied,
        ErrorKind::AlreadyExists => VfsError::AlreadyExists,
        ErrorKind::IsADirectory => VfsError::IsADirectory,
        ErrorKind::NotADirectory => VfsError::NotADirectory,
        ErrorKind::RangeNotSatisfied => VfsError::InvalidOffset,
        ErrorKind::Unsupported => {
            VfsError::Unsupported("Operation not supported by this storage (S3)")
        }
        // opendal's messages name the operation, the service and the key,
        // never the credentials.
        _ => VfsError::Io(std::io::Error::other(e)),
    }
}

/// A read of an object that was replaced since it was opened (its ETag no
/// longer matches).
fn changed() -> VfsError {
    VfsError::Io(std::io::Error::other(
        "the file changed on the storage during the download",
    ))
}

fn map_read_err(e: opendal::Error) -> VfsError {
    if e.kind() == ErrorKind::ConditionNotMatch {
        changed()
    } else {
        map_err(e)
    }
}

fn map_stream_err(e: std::io::Error) -> VfsError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<opendal::Error>())
    {
        Some(inner) if inner.kind() == ErrorKind::ConditionNotMatch => changed(),
        Some(inner) if inner.kind() == ErrorKind::NotFound => changed(),
        _ => VfsError::Io(e),
    }
}

/// Reads of one object. Sequential reads (every download) share one
/// streaming ranged GET; a read elsewhere starts a new one. Every GET is
/// pinned to the ETag seen at open, so a replaced object fails the read
/// instead of mixing two versions.
struct S3Reader {
    op: Operator,
    key: String,
    meta: Metadata,
    etag: Option<String>,
    stream: tokio::sync::Mutex<Option<OpenStream>>,
}

/// How far a read may land behind or ahead of the stream and still be
/// served from it: SFTP clients keep many reads in flight, and they reach
/// the reader slightly out of order.
const READ_WINDOW: u64 = 4 << 20;

struct OpenStream {
    /// Where `pending` starts in the object.
    pos: u64,
    pending: Bytes,
    stream: opendal::FuturesBytesStream,
    /// What the stream yielded last (offset, bytes), up to `READ_WINDOW`.
    recent: std::collections::VecDeque<(u64, Bytes)>,
    recent_bytes: u64,
}

impl OpenStream {
    /// Up to `len` bytes at `offset` from what the stream already yielded,
    /// across as many of its chunks as needed (a short answer would make an
    /// SFTP client ask again for the rest); `None` if `offset` is not in the
    /// window. The window ends at `pos`, so a short result continues there.
    fn recent_slice(&self, offset: u64, len: usize) -> Option<Bytes> {
        // From the back: reads land near the stream's position.
        let index = self
            .recent
            .iter()
            .rposition(|(at, c)| *at <= offset && offset < at + c.len() as u64)?;
        let (at, chunk) = &self.recent[index];
        let start = (offset - at) as usize;
        let first = chunk.slice(start..chunk.len().min(start + len));
        if first.len() == len || index + 1 == self.recent.len() {
            return Some(first);
        }
        let mut out = BytesMut::with_capacity(len);
        out.extend_from_slice(&first);
        for (_, c) in self.recent.iter().skip(index + 1) {
            let take = (len - out.len()).min(c.len());
            out.extend_from_slice(&c[..take]);
            if out.len() == len {
                break;
            }
        }
        Some(out.freeze())
    }

    fn remember(&mut self, at: u64, chunk: Bytes) {
        self.recent_bytes += chunk.len() as u64;
        self.recent.push_back((at, chunk));
        while self.recent_bytes > READ_WINDOW {
            match self.recent.pop_front() {
                Some((_, old)) => self.recent_bytes -= old.len() as u64,
                None => break,
            }
        }
    }

    /// Up to `max` bytes from the stream's position; empty at the end.
    async fn next_part(&mut self, max: usize) -> VfsResult<Bytes> {
        if self.pending.is_empty() {
            match self.stream.next().await {
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => return Err(map_stream_err(e)),
                None => return Ok(Bytes::new()),
            }
        }
        let part = self.pending.split_to(max.min(self.pending.len()));
        let at = self.pos;
        self.pos += part.len() as u64;
        self.remember(at, part.clone());
        Ok(part)
    }
}

impl S3Reader {
    fn new(op: Operator, key: String, m: &opendal::Metadata) -> S3Reader {
        S3Reader {
            meta: file_meta(&key, m),
            etag: m.etag().map(str::to_owned),
            op,
            key,
            stream: tokio::sync::Mutex::new(None),
        }
    }

    async fn open(&self, at: u64) -> VfsResult<OpenStream> {
        let mut reader = self.op.reader_with(&self.key);
        if let Some(etag) = &self.etag {
            reader = reader.if_match(etag);
        }
        let reader = reader.await.map_err(map_read_err)?;
        let stream = reader
            .into_bytes_stream(at..self.meta.size)
            .await
            .map_err(map_read_err)?;
        Ok(OpenStream {
            pos: at,
            pending: Bytes::new(),
            stream,
            recent: std::collections::VecDeque::new(),
            recent_bytes: 0,
        })
    }
}

#[async_trait]
impl FileReader for S3Reader {
    async fn read_at(&self, offset: u64, len: usize) -> VfsResult<Bytes> {
        if offset >= self.meta.size || len == 0 {
            return Ok(Bytes::new());
        }
        let mut guard = self.stream.lock().await;
        // What the stream already yielded: a read that arrived after one
        // further along, or the start of one that continues past it.
        let head = guard
            .as_ref()
            .and_then(|s| s.recent_slice(offset, len))
            .unwrap_or_default();
        if head.len() == len {
            return Ok(head);
        }
        let offset = offset + head.len() as u64;
        let open = match guard.take() {
            Some(s) if offset >= s.pos && offset - s.pos <= READ_WINDOW => s,
            _ => self.open(offset).await?,
        };
        let open = guard.insert(open);
        let result = async {
            // A read a little ahead: what lies before it is kept for the
            // reads still on their way.
            while open.pos < offset {
                let gap = (offset - open.pos).min(usize::MAX as u64) as usize;
                if open.next_part(gap).await?.is_empty() {
                    return Ok(head.clone());
                }
            }
            let mut out = BytesMut::new();
            out.extend_from_slice(&head);
            while out.len() < len {
                let part = open.next_part(len - out.len()).await?;
                if part.is_empty() {
                    break;
                }
                if out.is_empty() && part.len() == len {
                    return Ok(part);
                }
                out.extend_from_slice(&part);
            }
            Ok(out.freeze())
        }
        .await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    fn len(&self) -> u64 {
        self.meta.size
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        None
    }

    fn stat(&self) -> Option<Metadata> {
        Some(self.meta.clone())
    }
}

/// An upload as one streaming multipart upload.
struct S3Writer {
    op: Operator,
    key: String,
    mode: UploadMode,
    initial_len: u64,
    found: Found,
    /// The object's size when the upload began (`None`: there was none).
    old_len: Option<u64>,
    /// Its ETag then: what the kept bytes are copied from.
    old_etag: Option<String>,
    /// SFTP `EXCL`/FTP `STOU`: the name must still be free at the end.
    exclusive: bool,
    state: tokio::sync::Mutex<WriteState>,
}

struct WriteState {
    /// `None` once committed or aborted.
    writer: Option<opendal::Writer>,
    /// Whether the kept prefix is in (`Keep` decides it at the first write).
    started: bool,
    /// The end of the contiguous run written so far.
    next: u64,
    /// Writes that arrived ahead of `next`, by offset.
    parked: BTreeMap<u64, Bytes>,
    parked_bytes: usize,
    /// A write failed: the upload can only be aborted.
    failed: bool,
    /// Where the content ends (SFTP size set at `next`): no kept tail.
    end_at: Option<u64>,
    /// Where the bytes sent through the writer began (parts fill from here).
    run_start: u64,
    /// What this upload counts in [`BUFFERED`] and in its home's count.
    held: u64,
    /// Its home's count (against [`HOME_BUFFER_BUDGET`]).
    home_held: Arc<AtomicU64>,
    /// The client wrote something (what `atomic_resume` keeps on abort).
    wrote: bool,
    /// The committed object's ETag, from the complete.
    etag: Option<String>,
}

impl WriteState {
    /// Counts what this upload would hold with `parked` bytes parked and
    /// its run ending at `next`; refused past the budget.
    fn hold(&mut self, parked: usize, next: u64) -> VfsResult<()> {
        use std::sync::atomic::Ordering;
        // opendal holds the part being filled, the last full part (it
        // begins the multipart upload only once a second part follows, so
        // that a small file is one PUT) and up to PARTS_IN_FLIGHT
        // being sent: counted in full once the upload is that large.
        let pipeline = ((2 + PARTS_IN_FLIGHT) * PART_SIZE) as u64;
        let want = parked as u64 + (next - self.run_start).min(pipeline);
        if want > self.held {
            let add = want - self.held;
            let before = BUFFERED.fetch_add(add, Ordering::AcqRel);
            let home_before = self.home_held.fetch_add(add, Ordering::AcqRel);
            if before + add > BUFFER_BUDGET || home_before + add > HOME_BUFFER_BUDGET {
                BUFFERED.fetch_sub(add, Ordering::AcqRel);
                self.home_held.fetch_sub(add, Ordering::AcqRel);
                let why = if before + add > BUFFER_BUDGET {
                    BUFFERS_FULL
                } else {
                    HOME_BUFFERS_FULL
                };
                return Err(VfsError::Busy(why));
            }
        } else {
            BUFFERED.fetch_sub(self.held - want, Ordering::AcqRel);
            self.home_held.fetch_sub(self.held - want, Ordering::AcqRel);
        }
        self.held = want;
        Ok(())
    }

    fn release(&mut self) {
        BUFFERED.fetch_sub(self.held, std::sync::atomic::Ordering::AcqRel);
        self.home_held
            .fetch_sub(self.held, std::sync::atomic::Ordering::AcqRel);
        self.held = 0;
    }
}

impl Drop for WriteState {
    fn drop(&mut self) {
        self.release();
    }
}

impl S3Writer {
    async fn write_locked(&self, st: &mut WriteState, offset: u64, data: Bytes) -> VfsResult<()> {
        if st.failed {
            return Err(VfsError::Io(std::io::Error::other(
                "an earlier write of this upload failed",
            )));
        }
        let Some(writer) = st.writer.as_mut() else {
            return Err(VfsError::Io(std::io::Error::other("the upload has ended")));
        };
        if !st.started {
            // `Keep`: the old content before the first write stays (all of
            // it when the first write to arrive lies beyond it: the writes
            // before it are on their way, and park until then).
            let start = offset.min(self.old_len.unwrap_or(0));
            copy_range(writer, &self.key, 0..start, self.old_etag.as_deref()).await?;
            st.started = true;
            st.next = start;
            st.run_start = start;
        }
        if data.is_empty() {
            return Ok(());
        }
        st.wrote = true;
        if offset < st.next {
            // A rewrite of what was sent: S3 cannot change written parts.
            return Err(VfsError::Unsupported(NO_REWRITE));
        }
        if offset > st.next {
            if st.parked_bytes + data.len() > PARK_LIMIT {
                return Err(VfsError::Unsupported(NO_REWRITE));
            }
            let next = st.next;
            st.hold(st.parked_bytes + data.len(), next)?;
            st.parked_bytes += data.len();
            if let Some(old) = st.parked.insert(offset, data) {
                st.parked_bytes -= old.len();
            }
            return Ok(());
        }
        let (parked, next) = (st.parked_bytes, st.next + data.len() as u64);
        st.hold(parked, next)?;
        st.next = next;
        let Some(writer) = st.writer.as_mut() else {
            return Err(VfsError::Io(std::io::Error::other("the upload has ended")));
        };
        writer.write(data).await.map_err(map_err)?;
        while let Some(entry) = st.parked.first_entry() {
            if *entry.key() > st.next {
                break;
            }
            let (at, chunk) = entry.remove_entry();
            st.parked_bytes -= chunk.len();
            let end = at + chunk.len() as u64;
            if end <= st.next {
                continue;
            }
            let chunk = chunk.slice((st.next - at) as usize..);
            st.next = end;
            writer.write(chunk).await.map_err(map_err)?;
        }
        let (parked, next) = (st.parked_bytes, st.next);
        // Less than before (parked bytes moved into parts): never refused.
        let _ = st.hold(parked, next);
        Ok(())
    }

    /// Publishes what was written: the object appears now.
    async fn close(&self, st: &mut WriteState) -> VfsResult<Placed> {
        st.release();
        let Some(mut writer) = st.writer.take() else {
            return Err(VfsError::Io(std::io::Error::other("the upload has ended")));
        };
        let result = self.finish(st, &mut writer).await;
        if result.is_err() {
            // A failed complete leaves the multipart upload open.
            let _ = writer.abort().await;
        }
        result
    }

    async fn finish(&self, st: &mut WriteState, writer: &mut opendal::Writer) -> VfsResult<Placed> {
        if !st.parked.is_empty() {
            // A gap no write filled: S3 cannot leave a hole.
            return Err(VfsError::Unsupported(NO_REWRITE));
        }
        if !st.started {
            // `Keep` without a write: the old content stays as it was.
            if let Some(old) = self.old_len {
                copy_range(writer, &self.key, 0..old, self.old_etag.as_deref()).await?;
                st.next = old;
            }
            st.started = true;
        }
        // `Keep`: what lies beyond the last write stays, as on a disk.
        if let (Some(old), None) = (self.old_len, st.end_at)
            && st.next < old
            && self.initial_len == old
        {
            copy_range(writer, &self.key, st.next..old, self.old_etag.as_deref()).await?;
            st.next = old;
        }
        let replaced = match self.op.stat(&self.key).await {
            Ok(m) if m.is_file() => Replaced::File {
                size: m.content_length(),
                nlink: 1,
            },
            Ok(_) => Replaced::Other,
            Err(e) if e.kind() == ErrorKind::NotFound => Replaced::Nothing,
            Err(e) => return Err(map_err(e)),
        };
        let meta = writer.close().await.map_err(|e| match e.kind() {
            // If-None-Match: * lost: 412, or 409 while another completes.
            ErrorKind::ConditionNotMatch | ErrorKind::Conflict if self.exclusive => {
                VfsError::AlreadyExists
            }
            _ => map_err(e),
        })?;
        st.etag = meta.etag().map(str::to_owned);
        Ok(Placed {
            size: st.next,
            replaced,
        })
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Neither committed nor aborted (a task cancelled mid-upload): end
        // the multipart upload on the server, as `abort` would.
        let Some(writer) = self.state.get_mut().writer.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut writer = writer;
        handle.spawn(async move {
            let _ = writer.abort().await;
        });
    }
}

#[async_trait]
impl FileWriter for S3Writer {
    async fn write_at(&self, offset: u64, data: Bytes) -> VfsResult<()> {
        let mut st = self.state.lock().await;
        let result = self.write_locked(&mut st, offset, data).await;
        if result.is_err() {
            st.failed = true;
        }
        result
    }

    async fn set_len(&self, len: u64) -> VfsResult<()> {
        let mut st = self.state.lock().await;
        if !st.started && len == 0 {
            // Nothing kept, nothing written: an empty file.
            st.started = true;
            st.next = 0;
            st.end_at = Some(0);
            return Ok(());
        }
        if st.started && st.parked.is_empty() && len == st.next {
            st.end_at = Some(len);
            return Ok(());
        }
        Err(VfsError::Unsupported(NO_RESIZE))
    }

    fn initial_len(&self) -> u64 {
        self.initial_len
    }

    fn found(&self) -> Found {
        self.found
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        None
    }

    async fn commit(self: Box<Self>) -> VfsResult<Committed> {
        let mut st = self.state.lock().await;
        if st.failed {
            drop(st);
            self.abort().await;
            return Err(VfsError::Io(std::io::Error::other(
                "an earlier write of this upload failed",
            )));
        }
        let placed = self.close(&mut st).await?;
        // The content as committed, for hashing when it was not streamed
        // (no further request: a failure now would report a stored upload
        // as failed).
        let now = SystemTime::now();
        let content = S3Reader {
            meta: Metadata {
                kind: FileKind::File,
                size: placed.size,
                modified: now,
                accessed: now,
                mode: 0o100_644,
                nlink: 1,
                unique: key_identity(&self.key),
            },
            etag: st.etag.take(),
            op: self.op.clone(),
            key: self.key.clone(),
            stream: tokio::sync::Mutex::new(None),
        };
        drop(st);
        Ok(Committed {
            size: placed.size,
            replaced: placed.replaced,
            content: Arc::new(content),
        })
    }

    async fn abort(self: Box<Self>) -> Option<Placed> {
        let mut st = self.state.lock().await;
        if self.mode != UploadMode::Atomic && st.wrote {
            // `atomic_resume`/`direct`: what arrived in order stays under
            // the name (writes parked beyond a gap cannot).
            st.parked.clear();
            st.parked_bytes = 0;
            return self.close(&mut st).await.ok();
        }
        if let Some(mut writer) = st.writer.take() {
            let _ = writer.abort().await;
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(home: &Arc<AtomicU64>) -> WriteState {
        WriteState {
            writer: None,
            started: true,
            next: 0,
            parked: BTreeMap::new(),
            parked_bytes: 0,
            failed: false,
            end_at: None,
            run_start: 0,
            held: 0,
            home_held: home.clone(),
            wrote: false,
            etag: None,
        }
    }

    // One test: the counts are process-wide.
    #[test]
    fn uploads_hold_no_more_than_their_home_and_the_node_budget() {
        use std::sync::atomic::Ordering;
        let base = BUFFERED.load(Ordering::Acquire);
        let homes: Vec<Arc<AtomicU64>> = (0..5).map(|_| Arc::default()).collect();
        let mut a = state(&homes[0]);
        // Parts count what is not sent yet: a run's bytes modulo the part.
        a.hold(0, PART_SIZE as u64 + 5).unwrap();
        assert_eq!(a.held, PART_SIZE as u64 + 5);
        // A large upload counts its whole part pipeline, no more.
        a.hold(0, 100 * PART_SIZE as u64).unwrap();
        assert_eq!(a.held, ((2 + PARTS_IN_FLIGHT) * PART_SIZE) as u64);
        assert_eq!(homes[0].load(Ordering::Acquire), a.held);

        // One home: at most its share, whatever the number of uploads.
        a.hold(HOME_BUFFER_BUDGET as usize, 0).unwrap();
        let mut b = state(&homes[0]);
        let refused = b.hold(1, 0).unwrap_err().to_string();
        assert!(
            refused.contains("this account's upload buffers"),
            "{refused}"
        );
        assert_eq!(b.held, 0, "a refused hold takes nothing");
        // ...while another home still gets buffers.
        let mut c = state(&homes[1]);
        c.hold(1 << 20, 0).unwrap();
        drop(a);
        assert_eq!(homes[0].load(Ordering::Acquire), 0);
        b.hold(1 << 20, 0).unwrap();
        drop(b);
        drop(c);

        // The node: all homes together at most the whole budget.
        let mut full: Vec<WriteState> = homes[..4].iter().map(state).collect();
        for s in &mut full {
            s.hold(HOME_BUFFER_BUDGET as usize, 0).unwrap();
        }
        let mut e = state(&homes[4]);
        let refused = e.hold(1, 0).unwrap_err().to_string();
        assert!(
            refused.contains("the gateway's upload buffers"),
            "{refused}"
        );
        assert_eq!(homes[4].load(Ordering::Acquire), 0);
        drop(full);
        e.hold(1 << 20, 0).unwrap();
        e.release();
        assert!(homes.iter().all(|h| h.load(Ordering::Acquire) == 0));
        assert_eq!(BUFFERED.load(Ordering::Acquire), base);
    }
}
