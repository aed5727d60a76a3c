//! Per-account storage usage, enforced while bytes flow.
//!
//! Usage is counted in memory, shared by every session of an account, so two
//! concurrent uploads cannot both slip under the limit: each write reserves
//! the bytes it adds before they reach the disk. The first session of an
//! account with a quota measures its home once; from then on uploads and
//! deletes keep the count.
//!
//! When several nodes share the homes (S3), the count lives in the store
//! too: each node adds what its sessions changed every [`crate::SESSION_SYNC`]
//! and takes the totals back, so another node's uploads count here within a
//! few seconds (two uploads on two nodes within that window may each pass
//! the limit, as `max_sessions` may).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dropgate_store::{Quota, Store, StoreError};
use dropgate_vfs::{Storage, VirtualPath};

use crate::FsError;

/// Bytes and files in use by one account (committed plus reserved).
#[derive(Debug, Default)]
pub struct Usage {
    counts: Mutex<Counts>,
    /// Paths with an upload in progress, and how many. Deleting, renaming
    /// or resizing such a path is refused until the upload ends: otherwise
    /// its size would be given back twice (once by the delete, once by the
    /// upload's commit, which releases what it replaces).
    busy: Mutex<HashMap<String, u32>>,
    /// Inodes written in place (`direct` uploads), refused the same way
    /// whatever name reaches them (a renamed folder, a link).
    busy_inodes: Mutex<HashMap<u64, u32>>,
    /// Held by every step that changes the count from what is on disk (an
    /// upload's commit or abort, delete, rename, resize, hard link), so the
    /// look at the disk and the count change happen as one.
    ops: Arc<tokio::sync::Mutex<()>>,
}

/// The numbers of a [`Usage`], changed together.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    bytes: u64,
    files: u64,
    /// Changes not yet added to the store's shared count (shared mode).
    unsynced_bytes: i64,
    unsynced_files: i64,
}

impl Counts {
    fn add_bytes(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_add(n);
        self.unsynced_bytes = self.unsynced_bytes.saturating_add(signed(n));
    }
    fn sub_bytes(&mut self, n: u64) {
        // The whole change goes to the store even when this node's view is
        // lower (another node's upload it has not heard of yet).
        self.bytes = self.bytes.saturating_sub(n);
        self.unsynced_bytes = self.unsynced_bytes.saturating_sub(signed(n));
    }
    fn add_file(&mut self) {
        self.files += 1;
        self.unsynced_files += 1;
    }
    fn sub_file(&mut self) {
        self.files = self.files.saturating_sub(1);
        self.unsynced_files -= 1;
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Usage {
    fn new(bytes: u64, files: u64) -> Usage {
        Usage {
            counts: Mutex::new(Counts {
                bytes,
                files,
                ..Counts::default()
            }),
            ..Usage::default()
        }
    }
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        lock(&self.counts)
    }
    /// Current bytes (committed + reserved by uploads in progress).
    pub fn bytes(&self) -> u64 {
        self.counts().bytes
    }
    /// Current files.
    pub fn files(&self) -> u64 {
        self.counts().files
    }
}

/// An account's quota together with its live usage.
#[derive(Debug, Clone)]
pub struct QuotaGuard {
    limit: Quota,
    usage: Option<Arc<Usage>>,
}

impl QuotaGuard {
    /// No limits, nothing counted.
    pub fn unlimited() -> Self {
        QuotaGuard {
            limit: Quota::default(),
            usage: None,
        }
    }

    /// A guard counting from `bytes` and `files` already in use (what the
    /// tracker builds after measuring a home; also for tests).
    pub fn counting(limit: Quota, bytes: u64, files: u64) -> Self {
        QuotaGuard {
            limit,
            usage: Some(Arc::new(Usage::new(bytes, files))),
        }
    }

    /// Reserves `bytes` more, or fails without reserving anything.
    pub fn reserve_bytes(&self, bytes: u64) -> Result<(), FsError> {
        let Some(usage) = &self.usage else {
            return Ok(());
        };
        if bytes == 0 {
            return Ok(());
        }
        let mut counts = usage.counts();
        if self.limit.max_bytes > 0 && counts.bytes.saturating_add(bytes) > self.limit.max_bytes {
            return Err(FsError::QuotaExceeded);
        }
        counts.add_bytes(bytes);
        Ok(())
    }

    /// Counts bytes without checking the limit (content that is already on
    /// disk, e.g. the kept prefix of a committed resume).
    pub fn reserve_bytes_unchecked(&self, bytes: u64) {
        if let Some(usage) = &self.usage {
            usage.counts().add_bytes(bytes);
        }
    }

    /// Gives bytes back (aborted upload, deleted or replaced file).
    pub fn release_bytes(&self, bytes: u64) {
        if let Some(usage) = &self.usage {
            usage.counts().sub_bytes(bytes);
        }
    }

    /// Reserves one more file, or fails.
    pub fn reserve_file(&self) -> Result<(), FsError> {
        let Some(usage) = &self.usage else {
            return Ok(());
        };
        let mut counts = usage.counts();
        if self.limit.max_files > 0 && counts.files + 1 > self.limit.max_files {
            return Err(FsError::QuotaExceeded);
        }
        counts.add_file();
        Ok(())
    }

    /// Gives one file back.
    pub fn release_file(&self) {
        if let Some(usage) = &self.usage {
            usage.counts().sub_file();
        }
    }

    /// The account's usage, when it has a quota.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_deref()
    }

    /// Counts one file without checking the limit (an upload that turned
    /// out to create its name after all).
    pub(crate) fn add_file_unchecked(&self) {
        if let Some(usage) = &self.usage {
            usage.counts().add_file();
        }
    }

    /// Serialises the steps that change the count (see [`Usage`]'s `ops`);
    /// `None` (nothing to serialise) without a quota.
    pub(crate) async fn serialize(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.usage {
            Some(u) => Some(u.ops.clone().lock_owned().await),
            None => None,
        }
    }

    /// Marks `path` (and, for an upload written in place, its inode) as
    /// being uploaded until the returned guard drops.
    pub(crate) fn mark_busy(&self, path: &VirtualPath, inode: Option<u64>) -> BusyPath {
        if let Some(usage) = &self.usage {
            *lock(&usage.busy)
                .entry(path.as_str().to_owned())
                .or_insert(0) += 1;
            if let Some(ino) = inode {
                *lock(&usage.busy_inodes).entry(ino).or_insert(0) += 1;
            }
        }
        BusyPath {
            usage: self.usage.clone(),
            path: path.as_str().to_owned(),
            inode,
        }
    }

    /// Whether an upload to `path`, or to the file `inode`, is in progress.
    pub(crate) fn is_busy(&self, path: &VirtualPath, inode: Option<u64>) -> bool {
        self.usage.as_ref().is_some_and(|u| {
            lock(&u.busy).contains_key(path.as_str())
                || inode.is_some_and(|i| lock(&u.busy_inodes).contains_key(&i))
        })
    }
}

/// An upload's mark on its target path (see [`Usage`]'s `busy`).
pub(crate) struct BusyPath {
    usage: Option<Arc<Usage>>,
    path: String,
    inode: Option<u64>,
}

impl Drop for BusyPath {
    fn drop(&mut self) {
        if let Some(usage) = &self.usage {
            let mut busy = lock(&usage.busy);
            if let Some(n) = busy.get_mut(&self.path) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(&self.path);
                }
            }
            drop(busy);
            if let Some(ino) = self.inode {
                let mut inodes = lock(&usage.busy_inodes);
                if let Some(n) = inodes.get_mut(&ino) {
                    *n -= 1;
                    if *n == 0 {
                        inodes.remove(&ino);
                    }
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update leaves the map consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Usage of every account with a quota, shared by all sessions of this process.
#[derive(Default)]
pub struct QuotaTracker {
    accounts: Mutex<HashMap<String, Arc<Usage>>>,
    /// The store that holds the count shared with other nodes, when the
    /// homes are shared (S3); `None`: this process counts alone.
    shared: Option<Store>,
}

impl QuotaTracker {
    /// A tracker whose counts are shared with the other nodes through `store`.
    pub fn shared(store: Store) -> QuotaTracker {
        QuotaTracker {
            accounts: Mutex::default(),
            shared: Some(store),
        }
    }

    /// The guard for an account; measures the home on first use (shared:
    /// takes the store's count, measuring only when there is none).
    pub async fn guard(
        &self,
        username: &str,
        limit: Quota,
        fs: &dyn Storage,
        links: bool,
    ) -> QuotaGuard {
        if limit.max_bytes == 0 && limit.max_files == 0 {
            return QuotaGuard::unlimited();
        }
        let existing = self
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(username)
            .cloned();
        let usage = match existing {
            Some(u) => u,
            None => {
                let (bytes, files) = self.first_count(username, fs, links).await;
                let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
                map.entry(username.to_owned())
                    .or_insert_with(|| Arc::new(Usage::new(bytes, files)))
                    .clone()
            }
        };
        QuotaGuard {
            limit,
            usage: Some(usage),
        }
    }

    /// Whether the counts are shared through the store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// An account's count when this process starts counting it.
    async fn first_count(&self, username: &str, fs: &dyn Storage, links: bool) -> (u64, u64) {
        let Some(store) = &self.shared else {
            return measure(fs, links).await;
        };
        match store.quota_usage(username).await {
            Ok(Some(counts)) => return counts,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(user = %username, error = %e, "cannot read the shared quota count; measuring the home")
            }
        }
        let (bytes, files) = measure(fs, links).await;
        match store.init_quota_usage(username, bytes, files).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(user = %username, error = %e, "cannot share the quota count");
                (bytes, files)
            }
        }
    }

    /// Forgets an account's count (it is measured again at the next login,
    /// on every node).
    pub async fn forget(&self, username: &str) {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(username);
        if let Some(store) = &self.shared
            && let Err(e) = store.forget_quota_usage(username).await
        {
            tracing::warn!(user = %username, error = %e, "cannot drop the shared quota count");
        }
    }

    /// Shared mode: adds this node's changes to the store's counts and takes
    /// the totals (with the other nodes' changes) back. A failed round keeps
    /// the changes for the next one.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let Some(store) = &self.shared else {
            return Ok(());
        };
        let accounts: Vec<(String, Arc<Usage>)> = lock(&self.accounts)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if accounts.is_empty() {
            return Ok(());
        }
        let mut totals: HashMap<String, (u64, u64)> = store
            .all_quota_usage()
            .await?
            .into_iter()
            .map(|(u, b, f)| (u, (b, f)))
            .collect();
        for (username, usage) in accounts {
            let (bytes, files) = {
                let mut c = usage.counts();
                let taken = (c.unsynced_bytes, c.unsynced_files);
                c.unsynced_bytes = 0;
                c.unsynced_files = 0;
                taken
            };
            let result = if bytes == 0 && files == 0 {
                Ok(totals.remove(&username))
            } else {
                store.add_quota_usage(&username, bytes, files).await
            };
            if let Ok(None) = result {
                // Dropped meanwhile (its quota or home changed on some
                // node): the next login here counts it afresh.
                let mut map = lock(&self.accounts);
                if map.get(&username).is_some_and(|u| Arc::ptr_eq(u, &usage)) {
                    map.remove(&username);
                }
                continue;
            }
            let mut c = usage.counts();
            match result {
                Ok(Some((b, f))) => {
                    // The store's total plus what changed here since.
                    c.bytes = b.saturating_add_signed(c.unsynced_bytes);
                    c.files = f.saturating_add_signed(c.unsynced_files);
                }
                Ok(None) => {}
                Err(e) => {
                    c.unsynced_bytes = c.unsynced_bytes.saturating_add(bytes);
                    c.unsynced_files = c.unsynced_files.saturating_add(files);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The usage of an account as counted now, if this process counts it.
    pub fn current(&self, username: &str) -> Option<(u64, u64)> {
        lock(&self.accounts)
            .get(username)
            .map(|u| (u.bytes(), u.files()))
    }
}

/// Walks a home and adds up what the quota counts: every name of a regular
/// file is a file, and each file's bytes count once however many hard links
/// it has (symlinks and special files count nothing). Without `links` the
/// listing's own metadata is the truth (on S3, one request per 1,000
/// objects instead of one per object).
pub(crate) async fn measure(fs: &dyn Storage, links: bool) -> (u64, u64) {
    let mut seen_linked = std::collections::HashSet::new();
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![VirtualPath::root()];
    while let Some(dir) = stack.pop() {
        let Ok(mut entries) = fs.list(&dir).await else {
            continue;
        };
        while let Some(Ok(entry)) = entries.next().await {
            let Ok(path) = dir.join(&entry.name) else {
                continue;
            };
            let meta = if links {
                let Ok(meta) = fs.symlink_metadata(&path).await else {
                    continue;
                };
                meta
            } else {
                entry.meta
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                files += 1;
                if meta.nlink <= 1 || seen_linked.insert(meta.unique) {
                    bytes += meta.size;
                }
            }
        }
    }
    (bytes, files)
}
