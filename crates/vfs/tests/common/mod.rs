//! Shared fixture for the vfs integration tests: a real storage root in a
//! temporary directory, one jailed account ("alice") and things outside her
//! home that must stay unreadable and unchanged.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use dropgate_vfs::{
    CreateOptions, FileKind, LocalStorage, Storage, TEMP_PREFIX, UploadMode, VfsError, VfsResult,
    VirtualPath, WriteStart,
};

/// Content of `root/secret.txt` (a sibling of the home).
pub const SECRET_ROOT: &[u8] = b"TOP-SECRET: root/secret.txt";
/// Content of `root/bob/file` (another account's home).
pub const SECRET_BOB: &[u8] = b"TOP-SECRET: bob's private file, do not read";
/// Content of `root/outside_dir/f`.
pub const SECRET_OUTSIDE_F: &[u8] = b"TOP-SECRET: outside_dir/f -- the racing target";
/// Content of `tmp/above.txt` (above the storage root).
pub const SECRET_ABOVE: &[u8] = b"TOP-SECRET: above the storage root";

/// All secret contents, to check nothing read ever contains one of them.
pub const SECRETS: &[&[u8]] = &[SECRET_ROOT, SECRET_BOB, SECRET_OUTSIDE_F, SECRET_ABOVE];

/// Layout:
///
/// ```text
/// tmp/
///   above.txt
///   root/                 <- storage root
///     secret.txt
///     bob/file
///     outside_dir/f
///     outside_dir/only-outside
///     alice/              <- alice's home, the jail
/// ```
pub struct Jail {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    pub storage: LocalStorage,
}

impl Jail {
    pub fn new() -> Jail {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("bob")).unwrap();
        std::fs::create_dir_all(root.join("outside_dir")).unwrap();
        std::fs::write(tmp.path().join("above.txt"), SECRET_ABOVE).unwrap();
        std::fs::write(root.join("secret.txt"), SECRET_ROOT).unwrap();
        std::fs::write(root.join("bob/file"), SECRET_BOB).unwrap();
        std::fs::write(root.join("outside_dir/f"), SECRET_OUTSIDE_F).unwrap();
        std::fs::write(root.join("outside_dir/only-outside"), b"x").unwrap();
        let storage = LocalStorage::open(&root, "alice").unwrap();
        let home = root.join("alice");
        assert!(home.is_dir());
        Jail {
            tmp,
            root,
            home,
            storage,
        }
    }

    /// Everything in the temporary directory except alice's home.
    pub fn snapshot_outside(&self) -> BTreeMap<PathBuf, Node> {
        let mut out = BTreeMap::new();
        snapshot_into(self.tmp.path(), self.tmp.path(), Some(&self.home), &mut out);
        out
    }

    /// Everything inside alice's home.
    pub fn snapshot_home(&self) -> BTreeMap<PathBuf, Node> {
        let mut out = BTreeMap::new();
        snapshot_into(&self.home, &self.home, None, &mut out);
        out
    }

    /// Fails the test if any temporary of an atomic upload exists anywhere.
    pub fn assert_no_temporaries(&self) {
        let temps = find_temporaries(self.tmp.path());
        assert!(temps.is_empty(), "leftover upload temporaries: {temps:?}");
    }
}

/// One file-system entry, as far as the tests care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: (i64, i64),
        ino: u64,
        nlink: u64,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
    Other,
}

fn snapshot_into(base: &Path, dir: &Path, skip: Option<&Path>, out: &mut BTreeMap<PathBuf, Node>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if Some(path.as_path()) == skip {
            continue;
        }
        let rel = path.strip_prefix(base).unwrap().to_path_buf();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let node = if ft.is_symlink() {
            Node::Symlink {
                target: std::fs::read_link(&path).unwrap(),
            }
        } else if ft.is_dir() {
            snapshot_into(base, &path, skip, out);
            Node::Dir { mode: m.mode() }
        } else if ft.is_file() {
            Node::File {
                content: std::fs::read(&path).unwrap(),
                mode: m.mode(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ino: m.ino(),
                nlink: m.nlink(),
            }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
}

/// Paths of all upload temporaries below `dir` (symlinks not followed).
pub fn find_temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                found.push(entry.path());
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// Fails the test if `data` contains any of the secrets.
pub fn assert_not_secret(data: &[u8]) {
    for s in SECRETS {
        assert!(
            !data.windows(s.len()).any(|w| w == *s),
            "read returned secret content: {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

pub fn vp(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

pub fn raw(s: &str) -> VirtualPath {
    VirtualPath::from_raw_unchecked(s)
}

/// Reads a whole file through the storage.
pub async fn read_all(s: &dyn Storage, path: &VirtualPath) -> VfsResult<Vec<u8>> {
    let r = s.open_read(path).await?;
    let mut out = Vec::new();
    loop {
        let chunk = r.read_at(out.len() as u64, 4096).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    assert_not_secret(&out);
    Ok(out)
}

/// A listing as (name, kind, size), sorted by name.
pub async fn list_all(
    s: &dyn Storage,
    path: &VirtualPath,
) -> VfsResult<Vec<(String, FileKind, u64)>> {
    let mut stream = s.list(path).await?;
    let mut out = Vec::new();
    while let Some(e) = stream.next().await {
        let e = e?;
        out.push((e.name, e.meta.kind, e.meta.size));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub async fn list_names(s: &dyn Storage, path: &VirtualPath) -> VfsResult<Vec<String>> {
    Ok(list_all(s, path)
        .await?
        .into_iter()
        .map(|(n, _, _)| n)
        .collect())
}

pub fn opts(mode: UploadMode, start: WriteStart, exclusive: bool) -> CreateOptions {
    CreateOptions {
        mode,
        start,
        exclusive,
        durable: true,
    }
}

/// A new upload answered from the page cache (`durable_uploads = false`).
pub fn page_cache_opts(mode: UploadMode) -> CreateOptions {
    CreateOptions {
        durable: false,
        ..opts(mode, WriteStart::Truncate, false)
    }
}

/// `len` bytes that differ with `seed` and do not repeat within a block.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Writes `data` as a whole new file and commits it.
pub async fn upload(
    s: &dyn Storage,
    path: &VirtualPath,
    mode: UploadMode,
    data: &[u8],
) -> VfsResult<u64> {
    let w = s
        .create(path, opts(mode, WriteStart::Truncate, false))
        .await?;
    w.write_at(0, bytes::Bytes::copy_from_slice(data)).await?;
    Ok(w.commit().await?.size)
}

pub const ALL_MODES: [UploadMode; 3] = [
    UploadMode::Atomic,
    UploadMode::AtomicResume,
    UploadMode::Direct,
];

pub const ALL_STARTS: [WriteStart; 4] = [
    WriteStart::Truncate,
    WriteStart::Append,
    WriteStart::ResumeAt(0),
    WriteStart::Keep,
];

/// Asserts the result is a refusal: permission denied or not found.
#[track_caller]
pub fn assert_refused<T>(what: &str, r: VfsResult<T>) {
    match r {
        Ok(_) => panic!("{what}: unexpectedly succeeded"),
        Err(VfsError::PermissionDenied | VfsError::NotFound) => {}
        Err(e) => panic!("{what}: expected PermissionDenied or NotFound, got {e:?}"),
    }
}
