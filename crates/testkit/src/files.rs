//! An account's home as the gateway's own storage sees it, whatever the
//! backend: how a test puts files in place before a client connects and
//! checks what the client left, on local disk and in a bucket alike.

use std::sync::Arc;

use dropgate_vfs::{
    Backend, CreateOptions, FileKind, Storage, UploadMode, VfsError, VirtualPath, WriteStart,
};

/// One home, opened through the gateway's [`Backend`].
pub struct HomeFiles {
    storage: Arc<dyn Storage>,
    unfinished: Unfinished,
}

/// Where the uploads in progress of a home can be seen.
pub(crate) enum Unfinished {
    /// The home's folder on local disk: hidden temporaries in it.
    Disk(std::path::PathBuf),
    /// A moto bucket: its multipart uploads.
    Bucket(String),
    /// Nowhere (the in-memory backend).
    Nothing,
}

fn path(rel: &str) -> VirtualPath {
    VirtualPath::parse(&format!("/{}", rel.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("test path {rel:?}: {e}"))
}

impl HomeFiles {
    pub(crate) async fn open(
        backend: &Arc<dyn Backend>,
        home: &str,
        unfinished: Unfinished,
    ) -> HomeFiles {
        let storage = backend
            .open_home(home)
            .await
            .unwrap_or_else(|e| panic!("opening home {home:?}: {e}"));
        HomeFiles {
            storage,
            unfinished,
        }
    }

    /// The whole content of a file; panics when it is missing.
    pub async fn read(&self, rel: &str) -> Vec<u8> {
        match self.try_read(rel).await {
            Some(data) => data,
            None => panic!("{rel} is not in the home"),
        }
    }

    /// The whole content of a file, `None` when there is none.
    pub async fn try_read(&self, rel: &str) -> Option<Vec<u8>> {
        let reader = match self.storage.open_read(&path(rel)).await {
            Ok(r) => r,
            Err(VfsError::NotFound) => return None,
            Err(e) => panic!("reading {rel}: {e}"),
        };
        let mut out = Vec::with_capacity(reader.len() as usize);
        loop {
            let chunk = reader
                .read_at(out.len() as u64, 1 << 20)
                .await
                .unwrap_or_else(|e| panic!("reading {rel}: {e}"));
            if chunk.is_empty() {
                return Some(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// Stores a file (its folders created first), replacing what was there.
    pub async fn write(&self, rel: &str, data: impl Into<Vec<u8>>) {
        let target = path(rel);
        self.mkdir_all(target.parent().relative()).await;
        let writer = self
            .storage
            .create(
                &target,
                CreateOptions {
                    mode: UploadMode::Atomic,
                    start: WriteStart::Truncate,
                    exclusive: false,
                    durable: false,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("creating {rel}: {e}"));
        if let Err(e) = writer
            .write_and_commit(0, bytes::Bytes::from(data.into()), None)
            .await
        {
            panic!("writing {rel}: {e:?}");
        }
    }

    /// Creates a folder and the folders above it.
    pub async fn mkdir_all(&self, rel: &str) {
        let mut at = VirtualPath::root();
        for name in path(rel).components() {
            at = at.join(name).expect("a plain name");
            match self.storage.create_dir(&at).await {
                Ok(()) | Err(VfsError::AlreadyExists) => {}
                Err(e) => panic!("creating folder {at}: {e}"),
            }
        }
    }

    /// Whether anything is there (a file, a folder, a link).
    pub async fn exists(&self, rel: &str) -> bool {
        self.kind(rel).await.is_some()
    }

    /// Whether a regular file is there.
    pub async fn is_file(&self, rel: &str) -> bool {
        self.kind(rel).await == Some(FileKind::File)
    }

    /// Whether a folder is there.
    pub async fn is_dir(&self, rel: &str) -> bool {
        self.kind(rel).await == Some(FileKind::Dir)
    }

    async fn kind(&self, rel: &str) -> Option<FileKind> {
        match self.storage.symlink_metadata(&path(rel)).await {
            Ok(m) => Some(m.kind),
            Err(VfsError::NotFound) => None,
            Err(e) => panic!("looking at {rel}: {e}"),
        }
    }

    /// The names in a folder, sorted.
    pub async fn names(&self, rel: &str) -> Vec<String> {
        let mut list = self
            .storage
            .list(&path(rel))
            .await
            .unwrap_or_else(|e| panic!("listing {rel}: {e}"));
        let mut names = Vec::new();
        while let Some(entry) = list.next().await {
            names.push(entry.unwrap_or_else(|e| panic!("listing {rel}: {e}")).name);
        }
        names.sort();
        names
    }

    /// Every file below a folder as (path relative to it, content), sorted:
    /// what a client's tree looks like once it arrived.
    pub async fn tree(&self, rel: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let mut list = self
                .storage
                .list(&path(&format!("{rel}/{dir}")))
                .await
                .unwrap_or_else(|e| panic!("listing {rel}/{dir}: {e}"));
            while let Some(entry) = list.next().await {
                let entry = entry.unwrap_or_else(|e| panic!("listing {rel}/{dir}: {e}"));
                let sub = if dir.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{dir}/{}", entry.name)
                };
                if entry.meta.is_dir() {
                    stack.push(sub);
                } else {
                    let data = self.read(&format!("{rel}/{sub}")).await;
                    out.push((sub, data));
                }
            }
        }
        out.sort();
        out
    }

    /// Uploads begun and not ended, anywhere in the home: on local disk
    /// the hidden `.dropgate-part-*` files and the unnamed (`O_TMPFILE`)
    /// ones this process holds open (a gateway under test in this process:
    /// a descriptor left open would keep its blocks allocated), in a bucket
    /// its unfinished multipart uploads (an aborted upload must be aborted
    /// on the server, leaving no parts).
    pub fn temporaries(&self) -> Vec<String> {
        let root = match &self.unfinished {
            Unfinished::Disk(root) => root,
            Unfinished::Bucket(bucket) => {
                // A blocking request: off the runtime's worker where there
                // is one to spare (the gateway under test runs on it too).
                let ask = || crate::Moto::shared().unfinished_uploads(bucket);
                return match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(ask)
                    }
                    _ => ask(),
                };
            }
            Unfinished::Nothing => return Vec::new(),
        };
        assert!(root.is_dir(), "no home at {}", root.display());
        let mut found = unnamed_files_open_below(root);
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed while we looked (a folder the test deletes).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("reading {}: {e}", dir.display()),
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                } else if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(dropgate_vfs::TEMP_PREFIX)
                {
                    found.push(entry.path().display().to_string());
                }
            }
        }
        found
    }
}

/// This process's open files below `root` that have no name: what
/// `/proc/self/fd` shows for an `O_TMPFILE` inode, `<folder>/#<inode>
/// (deleted)`.
fn unnamed_files_open_below(root: &std::path::Path) -> Vec<String> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&root))
        .map(|target| target.display().to_string())
        .filter(|t| {
            t.ends_with(" (deleted)")
                && t.rsplit('/')
                    .next()
                    .is_some_and(|name| name.starts_with('#'))
        })
        .collect()
}
