//! An in-memory backend: every home in one tree in RAM, gone when the
//! process ends. It lets the layers above the storage (sessions, quotas,
//! permissions, the protocols) be tested without a disk, and, as a second
//! implementation of [`Storage`], keeps that contract honest. It has no
//! links and no local descriptors; uploads are atomic by nature (the new
//! content is put under its name in one step at commit).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{Backend, Capabilities, home_components};
use crate::{
    Committed, CreateOptions, DirEntry, DirSource, DirStream, FileKind, FileReader, FileWriter,
    Found, FsStats, Metadata, Placed, Replaced, Storage, TEMP_PREFIX, UploadMode, VfsError,
    VfsResult, VirtualPath, WriteStart,
};

/// What `fs_stats` reports as the capacity (the backend itself has no limit
/// but the process's memory; quotas are what limit an account).
const CAPACITY: u64 = 1 << 40;
const BLOCK: u64 = 4096;

/// A file's bytes, shared by the tree and an upload writing in place.
type Content = Arc<Mutex<Vec<u8>>>;

enum NodeKind {
    Dir,
    File(Content),
}

struct Node {
    kind: NodeKind,
    modified: SystemTime,
    accessed: SystemTime,
    ino: u64,
}

/// Every node of every home, keyed by its path below the backend's root
/// (`""` is the root, `alice/in/a.csv` a file): a folder's entries are the
/// keys that extend its own by one name.
struct Tree {
    nodes: BTreeMap<String, Node>,
    next_ino: u64,
}

impl Tree {
    fn node(&mut self, kind: NodeKind) -> Node {
        self.next_ino += 1;
        let now = SystemTime::now();
        Node {
            kind,
            modified: now,
            accessed: now,
            ino: self.next_ino,
        }
    }

    fn get(&self, key: &str) -> VfsResult<&Node> {
        self.nodes.get(key).ok_or(VfsError::NotFound)
    }

    /// The folder `key` must be in to be created or renamed to.
    fn require_parent_dir(&self, key: &str) -> VfsResult<()> {
        match self.get(parent_key(key))?.kind {
            NodeKind::Dir => Ok(()),
            NodeKind::File(_) => Err(VfsError::NotADirectory),
        }
    }

    fn has_children(&self, key: &str) -> bool {
        let prefix = child_prefix(key);
        self.nodes
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(k, _)| k != key)
    }

    /// `key` and everything below it.
    fn subtree(&self, key: &str) -> Vec<String> {
        let prefix = child_prefix(key);
        let mut keys = vec![key.to_owned()];
        keys.extend(
            self.nodes
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix))
                .filter(|k| *k != key)
                .cloned(),
        );
        keys
    }
}

fn parent_key(key: &str) -> &str {
    key.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn child_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}/")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the tree consistent (every
    // change is one map operation), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn meta_of(node: &Node) -> Metadata {
    let (kind, size, mode, nlink) = match &node.kind {
        NodeKind::Dir => (FileKind::Dir, 0, 0o040755, 2),
        NodeKind::File(c) => (FileKind::File, lock(c).len() as u64, 0o100644, 1),
    };
    Metadata {
        kind,
        size,
        modified: node.modified,
        accessed: node.accessed,
        mode,
        nlink,
        unique: node.ino,
    }
}

/// Homes kept in memory, all in one tree; clones share it.
#[derive(Clone)]
pub struct MemoryBackend {
    tree: Arc<Mutex<Tree>>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("nodes", &lock(&self.tree).nodes.len())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty tree.
    pub fn new() -> MemoryBackend {
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            next_ino: 0,
        };
        let root = tree.node(NodeKind::Dir);
        tree.nodes.insert(String::new(), root);
        MemoryBackend {
            tree: Arc::new(Mutex::new(tree)),
        }
    }

    /// A home's storage (what [`Backend::open_home`] returns, typed).
    pub fn storage(&self, home: &str) -> VfsResult<MemoryStorage> {
        let parts = home_components(home)?;
        let mut tree = lock(&self.tree);
        let mut key = String::new();
        for part in parts {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(part);
            match tree
                .nodes
                .get(&key)
                .map(|n| matches!(n.kind, NodeKind::Dir))
            {
                Some(true) => {}
                Some(false) => return Err(VfsError::NotADirectory),
                None => {
                    let node = tree.node(NodeKind::Dir);
                    tree.nodes.insert(key.clone(), node);
                }
            }
        }
        Ok(MemoryStorage {
            tree: self.tree.clone(),
            home: key,
        })
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            links: false,
            local_files: false,
            ..Capabilities::ALL
        }
    }

    async fn open_home(&self, home: &str) -> VfsResult<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage(home)?))
    }

    async fn remove_home(&self, home: &str) -> VfsResult<bool> {
        let parts = home_components(home)?;
        if parts.is_empty() {
            return Err(VfsError::PermissionDenied);
        }
        let key = parts.join("/");
        let mut tree = lock(&self.tree);
        if !tree.nodes.contains_key(&key) {
            return Ok(false);
        }
        for k in tree.subtree(&key) {
            tree.nodes.remove(&k);
        }
        Ok(true)
    }

    async fn sweep_temporaries(&self) -> VfsResult<usize> {
        // Nothing outlives the process, so nothing is left from a crash.
        Ok(0)
    }
}

/// One home of a [`MemoryBackend`].
#[derive(Clone)]
pub struct MemoryStorage {
    tree: Arc<Mutex<Tree>>,
    /// The home's key in the tree.
    home: String,
}

impl MemoryStorage {
    fn key(&self, path: &VirtualPath) -> String {
        if path.is_root() {
            return self.home.clone();
        }
        let rel = path.relative();
        if self.home.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.home)
        }
    }

    fn file_content(&self, path: &VirtualPath) -> VfsResult<Content> {
        let tree = lock(&self.tree);
        match &tree.get(&self.key(path))?.kind {
            NodeKind::File(c) => Ok(c.clone()),
            NodeKind::Dir => Err(VfsError::IsADirectory),
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn metadata(&self, path: &VirtualPath) -> VfsResult<Metadata> {
        let tree = lock(&self.tree);
        Ok(meta_of(tree.get(&self.key(path))?))
    }

    async fn symlink_metadata(&self, path: &VirtualPath) -> VfsResult<Metadata> {
        self.metadata(path).await
    }

    async fn list(&self, path: &VirtualPath) -> VfsResult<DirStream> {
        let key = self.key(path);
        {
            let tree = lock(&self.tree);
            if let NodeKind::File(_) = tree.get(&key)?.kind {
                return Err(VfsError::NotADirectory);
            }
        }
        Ok(DirStream::new(Box::new(MemoryDirSource {
            tree: self.tree.clone(),
            prefix: child_prefix(&key),
            after: None,
        })))
    }

    async fn open_read(&self, path: &VirtualPath) -> VfsResult<Arc<dyn FileReader>> {
        let mut tree = lock(&self.tree);
        let key = self.key(path);
        let node = tree.nodes.get_mut(&key).ok_or(VfsError::NotFound)?;
        let NodeKind::File(content) = &node.kind else {
            return Err(VfsError::IsADirectory);
        };
        // A copy: what was opened stays readable whatever happens to the name.
        let data = Bytes::copy_from_slice(&lock(content));
        node.accessed = SystemTime::now();
        let meta = meta_of(node);
        Ok(Arc::new(MemoryReader { data, meta }))
    }

    async fn create(
        &self,
        path: &VirtualPath,
        opts: CreateOptions,
    ) -> VfsResult<Box<dyn FileWriter>> {
        if path.is_root() {
            return Err(VfsError::IsADirectory);
        }
        let key = self.key(path);
        let mut tree = lock(&self.tree);
        tree.require_parent_dir(&key)?;
        let existing = match tree.nodes.get(&key) {
            None => None,
            Some(Node {
                kind: NodeKind::Dir,
                ..
            }) => return Err(VfsError::IsADirectory),
            Some(_) if opts.exclusive => return Err(VfsError::AlreadyExists),
            Some(Node {
                kind: NodeKind::File(c),
                ..
            }) => Some(c.clone()),
        };
        let existing_len = existing.as_ref().map_or(0, |c| lock(c).len() as u64);
        let found = match existing {
            Some(_) => Found::File {
                size: existing_len,
                nlink: 1,
            },
            None => Found::Nothing,
        };
        let keep = match opts.start {
            WriteStart::Truncate => 0,
            WriteStart::ResumeAt(n) if n > existing_len => return Err(VfsError::InvalidOffset),
            WriteStart::ResumeAt(n) => n,
            WriteStart::Append | WriteStart::Keep => existing_len,
        };
        let (content, in_place) = match (opts.mode, existing) {
            (UploadMode::Direct, Some(c)) => {
                lock(&c).truncate(keep as usize);
                (c, true)
            }
            (UploadMode::Direct, None) => {
                let c: Content = Arc::default();
                let node = tree.node(NodeKind::File(c.clone()));
                tree.nodes.insert(key.clone(), node);
                (c, true)
            }
            (_, existing) => {
                let mut kept = Vec::new();
                if let Some(c) = existing {
                    kept.extend_from_slice(&lock(&c)[..keep as usize]);
                }
                (Arc::new(Mutex::new(kept)), false)
            }
        };
        Ok(Box::new(MemoryWriter {
            tree: self.tree.clone(),
            key,
            content,
            in_place,
            mode: opts.mode,
            exclusive: opts.exclusive,
            initial_len: keep,
            found,
            wrote: AtomicBool::new(false),
            finished: false,
        }))
    }

    async fn rename(&self, from: &VirtualPath, to: &VirtualPath, overwrite: bool) -> VfsResult<()> {
        if from.is_root() || to.is_root() {
            return Err(VfsError::PermissionDenied);
        }
        let (from, to) = (self.key(from), self.key(to));
        let mut tree = lock(&self.tree);
        let from_is_dir = matches!(tree.get(&from)?.kind, NodeKind::Dir);
        tree.require_parent_dir(&to)?;
        if from == to {
            return Ok(());
        }
        if from_is_dir && to.starts_with(&child_prefix(&from)) {
            return Err(VfsError::InvalidName("a folder cannot move into itself"));
        }
        if let Some(target) = tree.nodes.get(&to) {
            if !overwrite {
                return Err(VfsError::AlreadyExists);
            }
            match (&target.kind, from_is_dir) {
                (NodeKind::Dir, false) => return Err(VfsError::IsADirectory),
                (NodeKind::File(_), true) => return Err(VfsError::NotADirectory),
                (NodeKind::Dir, true) if tree.has_children(&to) => {
                    return Err(VfsError::DirectoryNotEmpty);
                }
                _ => {}
            }
            tree.nodes.remove(&to);
        }
        for old in tree.subtree(&from) {
            if let Some(node) = tree.nodes.remove(&old) {
                let new = format!("{to}{}", &old[from.len()..]);
                tree.nodes.insert(new, node);
            }
        }
        Ok(())
    }

    async fn remove_file(&self, path: &VirtualPath) -> VfsResult<()> {
        let key = self.key(path);
        let mut tree = lock(&self.tree);
        if let NodeKind::Dir = tree.get(&key)?.kind {
            return Err(VfsError::IsADirectory);
        }
        tree.nodes.remove(&key);
        Ok(())
    }

    async fn create_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        if path.is_root() {
            return Err(VfsError::AlreadyExists);
        }
        let key = self.key(path);
        let mut tree = lock(&self.tree);
        tree.require_parent_dir(&key)?;
        if tree.nodes.contains_key(&key) {
            return Err(VfsError::AlreadyExists);
        }
        let node = tree.node(NodeKind::Dir);
        tree.nodes.insert(key, node);
        Ok(())
    }

    async fn remove_dir(&self, path: &VirtualPath) -> VfsResult<()> {
        if path.is_root() {
            return Err(VfsError::PermissionDenied);
        }
        let key = self.key(path);
        let mut tree = lock(&self.tree);
        if let NodeKind::File(_) = tree.get(&key)?.kind {
            return Err(VfsError::NotADirectory);
        }
        if tree.has_children(&key) {
            return Err(VfsError::DirectoryNotEmpty);
        }
        tree.nodes.remove(&key);
        Ok(())
    }

    async fn set_times(
        &self,
        path: &VirtualPath,
        accessed: Option<SystemTime>,
        modified: Option<SystemTime>,
    ) -> VfsResult<()> {
        let key = self.key(path);
        let mut tree = lock(&self.tree);
        let node = tree.nodes.get_mut(&key).ok_or(VfsError::NotFound)?;
        if let Some(t) = accessed {
            node.accessed = t;
        }
        if let Some(t) = modified {
            node.modified = t;
        }
        Ok(())
    }

    async fn set_len(&self, path: &VirtualPath, size: u64) -> VfsResult<()> {
        let content = self.file_content(path)?;
        let size = usize::try_from(size).map_err(|_| VfsError::NoSpace)?;
        lock(&content).resize(size, 0);
        Ok(())
    }

    async fn read_link(&self, path: &VirtualPath) -> VfsResult<VirtualPath> {
        self.metadata(path).await?;
        Err(VfsError::Unsupported(
            "Links are not supported by this storage",
        ))
    }

    async fn symlink(&self, _target: &VirtualPath, _link: &VirtualPath) -> VfsResult<()> {
        Err(VfsError::Unsupported(
            "Links are not supported by this storage",
        ))
    }

    async fn hard_link(&self, _src: &VirtualPath, _dst: &VirtualPath) -> VfsResult<()> {
        Err(VfsError::Unsupported(
            "Links are not supported by this storage",
        ))
    }

    async fn fs_stats(&self, _path: &VirtualPath) -> VfsResult<FsStats> {
        let tree = lock(&self.tree);
        let used: u64 = tree
            .nodes
            .values()
            .map(|n| match &n.kind {
                NodeKind::File(c) => (lock(c).len() as u64).div_ceil(BLOCK),
                NodeKind::Dir => 1,
            })
            .sum();
        let blocks = CAPACITY / BLOCK;
        let free = blocks.saturating_sub(used);
        Ok(FsStats {
            block_size: BLOCK,
            fragment_size: BLOCK,
            blocks,
            blocks_free: free,
            blocks_available: free,
            files: u64::from(u32::MAX),
            files_free: u64::from(u32::MAX).saturating_sub(tree.nodes.len() as u64),
            name_max: crate::MAX_NAME_LEN as u64,
        })
    }
}

/// A listing read from the tree a batch at a time, resuming after the last
/// name it returned (entries added or removed meanwhile show or not, as in
/// a directory read on disk).
struct MemoryDirSource {
    tree: Arc<Mutex<Tree>>,
    /// The folder's key with a trailing `/` (empty for the root).
    prefix: String,
    after: Option<String>,
}

#[async_trait]
impl DirSource for MemoryDirSource {
    async fn next_batch(&mut self, max: usize) -> Vec<VfsResult<DirEntry>> {
        let tree = lock(&self.tree);
        let start = match &self.after {
            Some(name) => Bound::Excluded(format!("{}{name}", self.prefix)),
            None => Bound::Included(self.prefix.clone()),
        };
        let mut batch = Vec::new();
        for (key, node) in tree
            .nodes
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&self.prefix))
        {
            let name = &key[self.prefix.len()..];
            if name.is_empty() || name.contains('/') || name.starts_with(TEMP_PREFIX) {
                continue;
            }
            batch.push(Ok(DirEntry {
                name: name.to_owned(),
                meta: meta_of(node),
            }));
            if batch.len() >= max {
                break;
            }
        }
        if let Some(Ok(last)) = batch.last() {
            self.after = Some(last.name.clone());
        }
        batch
    }
}

/// A file as it was when opened.
struct MemoryReader {
    data: Bytes,
    meta: Metadata,
}

#[async_trait]
impl FileReader for MemoryReader {
    async fn read_at(&self, offset: u64, len: usize) -> VfsResult<Bytes> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        Ok(self.data.slice(start..end))
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn local_file(&self) -> Option<&std::fs::File> {
        None
    }

    fn stat(&self) -> Option<Metadata> {
        Some(self.meta.clone())
    }
}

/// An upload into memory: into its own buffer, put under its name at
/// commit (atomic modes), or into the file's own content (`direct`).
struct MemoryWriter {
    tree: Arc<Mutex<Tree>>,
    key: String,
    content: Content,
    /// `direct` mode: `content` is the file under `key`.
    in_place: bool,
    mode: UploadMode,
    exclusive: bool,
    initial_len: u64,
    found: Found,
    wrote: AtomicBool,
    finished: bool,
}

impl MemoryWriter {
    fn write(&self, offset: u64, data: &[u8]) -> VfsResult<()> {
        self.wrote.store(true, Ordering::Relaxed);
        let start = usize::try_from(offset).map_err(|_| VfsError::NoSpace)?;
        let end = start.checked_add(data.len()).ok_or(VfsError::NoSpace)?;
        let mut content = lock(&self.content);
        if content.len() < end {
            content.resize(end, 0);
        }
        content[start..end].copy_from_slice(data);
        drop(content);
        if self.in_place {
            self.touch();
        }
        Ok(())
    }

    /// A write in place changes the file's modification time.
    fn touch(&self) {
        let mut tree = lock(&self.tree);
        if let Some(node) = tree.nodes.get_mut(&self.key)
            && matches!(&node.kind, NodeKind::File(c) if Arc::ptr_eq(c, &self.content))
        {
            node.modified = SystemTime::now();
        }
    }

    /// Puts the upload's content under its name: what that name held.
    fn place(&mut self) -> VfsResult<Placed> {
        let mut tree = lock(&self.tree);
        tree.require_parent_dir(&self.key)?;
        let replaced = match tree.nodes.get(&self.key) {
            None => Replaced::Nothing,
            Some(Node {
                kind: NodeKind::Dir,
                ..
            }) => return Err(VfsError::IsADirectory),
            Some(_) if self.exclusive => return Err(VfsError::AlreadyExists),
            Some(Node {
                kind: NodeKind::File(c),
                ..
            }) => Replaced::File {
                size: lock(c).len() as u64,
                nlink: 1,
            },
        };
        let node = tree.node(NodeKind::File(self.content.clone()));
        tree.nodes.insert(self.key.clone(), node);
        self.finished = true;
        Ok(Placed {
            size: lock(&self.content).len() as u64,
            replaced,
        })
    }

    fn commit_now(mut self) -> VfsResult<Committed> {
        let placed = if self.in_place {
            self.finished = true;
            Placed {
                size: lock(&self.content).len() as u64,
                replaced: Replaced::InPlace,
            }
        } else {
            self.place()?
        };
        let data = Bytes::copy_from_slice(&lock(&self.content));
        let meta = {
            let tree = lock(&self.tree);
            tree.nodes.get(&self.key).map(meta_of)
        };
        let meta = meta.unwrap_or(Metadata {
            kind: FileKind::File,
            size: placed.size,
            modified: SystemTime::now(),
            accessed: SystemTime::now(),
            mode: 0o100644,
            nlink: 1,
            unique: 0,
        });
        Ok(Committed {
            size: placed.size,
            replaced: placed.replaced,
            content: Arc::new(MemoryReader { data, meta }),
        })
    }

    fn abort_now(&mut self) -> Option<Placed> {
        if self.finished {
            return None;
        }
        let placed = if self.in_place {
            Some(Placed {
                size: lock(&self.content).len() as u64,
                replaced: Replaced::InPlace,
            })
        } else if self.mode == UploadMode::AtomicResume && self.wrote.load(Ordering::Relaxed) {
            // The partial stays under the final name, for the client to resume.
            self.place().ok()
        } else {
            None
        };
        self.finished = true;
        placed
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        let _ = self.abort_now();
    }
}

#[async_trait]
impl FileWriter for MemoryWriter {
    async fn write_at(&self, offset: u64, data: Bytes) -> VfsResult<()> {
        self.write(offset, &data)
    }

    async fn set_len(&self, len: u64) -> VfsResult<()> {
        self.wrote.store(true, Ordering::Relaxed);
        let len = usize::try_from(len).map_err(|_| VfsError::NoSpace)?;
        lock(&self.content).resize(len, 0);
        Ok(())
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
        (*self).commit_now()
    }

    async fn abort(mut self: Box<Self>) -> Option<Placed> {
        self.abort_now()
    }

    fn in_place_identity(&self) -> Option<u64> {
        if !self.in_place {
            return None;
        }
        let tree = lock(&self.tree);
        tree.nodes.get(&self.key).map(|n| n.ino)
    }
}
