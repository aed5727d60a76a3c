//! Where homes live: the [`Backend`] a gateway holds, one per process, which
//! opens each account's home as a [`Storage`] and does what concerns the
//! storage as a whole (removing a home, sweeping a crash's temporaries).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{LocalStorage, Storage, VfsError, VfsResult};

/// What a backend can do. The protocol layers decide from these (and from
/// what each open file offers, such as [`crate::FileReader::local_file`]),
/// never from which backend it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// An upload may be written at any offset, out of order (SFTP writes
    /// arriving in parallel, a write in the middle of a kept file). Without
    /// it, an upload is a sequence of appends from its start.
    pub random_writes: bool,
    /// Symbolic and hard links.
    pub links: bool,
    /// Files are local descriptors: zero-copy transfers (`sendfile`,
    /// `splice`) and hashing straight from the file.
    pub local_files: bool,
    /// Renaming a folder is one atomic step (not a copy of each object).
    pub atomic_folder_rename: bool,
    /// An upload in `direct` mode is visible under its name while it is
    /// written (object stores publish an object only when it is complete).
    pub in_place_uploads: bool,
    /// File times can be set (FTP `MFMT`, SFTP `SETSTAT` times).
    pub set_times: bool,
    /// A stored file's size can be changed to any length (SFTP `SETSTAT`
    /// size); without it only to 0 or its current size.
    pub resize: bool,
    /// A file opened for reading keeps its content when its name is
    /// replaced meanwhile; without it such a read fails ("file changed").
    pub stable_reads: bool,
    /// `fs_stats` describes a real device; without it the session reports
    /// the account's quota instead (SFTP `statvfs`, `df`).
    pub device_stats: bool,
}

impl Capabilities {
    /// Everything: a POSIX filesystem.
    pub const ALL: Capabilities = Capabilities {
        random_writes: true,
        links: true,
        local_files: true,
        atomic_folder_rename: true,
        in_place_uploads: true,
        set_times: true,
        resize: true,
        stable_reads: true,
        device_stats: true,
    };
}

/// A storage backend for the whole gateway (`[storage] backend`).
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Its name in the configuration and in logs (`local`, `memory`, `s3`).
    fn kind(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Opens an account's home, creating it when missing. `home` is a
    /// relative path of plain names resolved beneath the backend's root;
    /// anything that would leave it is refused.
    async fn open_home(&self, home: &str) -> VfsResult<Arc<dyn Storage>>;
    /// Removes a home and everything in it; `false` if there was none.
    /// Refused (`PermissionDenied`, nothing removed) for a home that is the
    /// root itself, leaves it, or (local disk) is a symbolic link.
    async fn remove_home(&self, home: &str) -> VfsResult<bool>;
    /// Several nodes may serve the same homes from it at once (an object
    /// store): their quota counts must then be shared.
    fn shared(&self) -> bool {
        false
    }
    /// Removes the upload temporaries a crash of this node left behind;
    /// how many. Run once at start-up, before any client connects.
    async fn sweep_temporaries(&self) -> VfsResult<usize>;
}

/// Homes as folders below one local folder (`[storage] root`), each jailed
/// at the OS level ([`LocalStorage`]).
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// Homes below `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    /// The folder the homes live in.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    async fn open_home(&self, home: &str) -> VfsResult<Arc<dyn Storage>> {
        // On the calling thread, as logins always did: the folders are in
        // the kernel's caches after the first login, and a hop to the
        // blocking pool would cost every login two thread switches.
        home_components(home)?;
        Ok(Arc::new(LocalStorage::open(&self.root, home)?))
    }

    async fn remove_home(&self, home: &str) -> VfsResult<bool> {
        LocalStorage::remove_home(&self.root, home).await
    }

    async fn sweep_temporaries(&self) -> VfsResult<usize> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || crate::sweep_stale_temporaries(&root))
            .await
            .map_err(|e| VfsError::Io(std::io::Error::other(e)))?
            .map_err(VfsError::from)
    }
}

/// `home` as plain names (no `.`, `..` or empty parts between slashes);
/// none for the root itself.
pub(crate) fn home_components(home: &str) -> VfsResult<Vec<&str>> {
    let home = home.trim_matches('/');
    if home.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = home.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains(['\\', '\0']))
    {
        return Err(VfsError::PermissionDenied);
    }
    Ok(parts)
}
