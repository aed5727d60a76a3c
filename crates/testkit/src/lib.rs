//! Test support: a real [`Gateway`] over a temporary SQLite file and storage
//! root, and helpers to create accounts and find client tools. Used by the
//! integration tests of every protocol crate so none of them copies set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod files;
mod moto;
pub use files::HomeFiles;
pub use moto::Moto;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use dropgate_core::store::{KeyedEvent, Store, User};
use dropgate_core::{Gateway, GatewayConfig};
use dropgate_vfs::{Backend, Capabilities, S3Backend, S3Settings, UploadMode};

/// The storage the gateways of a test run keep homes in, from
/// `DROPGATE_TEST_STORAGE`: `local` (the default) or `s3`, a fresh bucket
/// of moto's S3 server on loopback for each gateway. `scripts/test` runs the
/// real-client suites once with each; anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageUnderTest {
    /// Homes are folders on local disk.
    Local,
    /// Homes are prefixes of a bucket.
    S3,
}

impl StorageUnderTest {
    /// What `DROPGATE_TEST_STORAGE` asks for.
    pub fn from_env() -> StorageUnderTest {
        match std::env::var("DROPGATE_TEST_STORAGE").as_deref() {
            Err(_) | Ok("") | Ok("local") => StorageUnderTest::Local,
            Ok("s3") => StorageUnderTest::S3,
            Ok(other) => panic!("DROPGATE_TEST_STORAGE={other:?}: expected `local` or `s3`"),
        }
    }
}

/// Homes in a new bucket of the shared moto server; the bucket's name.
pub fn s3_backend() -> (Arc<dyn Backend>, String) {
    let moto = Moto::shared();
    let bucket = moto.bucket();
    let backend = S3Backend::new(&S3Settings {
        bucket: bucket.clone(),
        prefix: "homes".into(),
        region: "us-east-1".into(),
        endpoint: moto.endpoint(),
        path_style: true,
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
    })
    .expect("S3 backend on moto");
    (Arc::new(backend), bucket)
}

/// A gateway on a temporary directory; everything is deleted on drop.
pub struct TestGateway {
    /// The gateway, ready for listeners.
    pub gateway: Arc<Gateway>,
    /// The store behind it.
    pub store: Store,
    /// Temporary directory holding the database and the storage root.
    pub dir: tempfile::TempDir,
    /// The moto bucket the homes are in (S3 only).
    pub bucket: Option<String>,
}

impl TestGateway {
    /// A gateway in atomic upload mode.
    pub async fn new() -> TestGateway {
        Self::with_mode(UploadMode::Atomic).await
    }

    /// A gateway with the given upload mode.
    pub async fn with_mode(mode: UploadMode) -> TestGateway {
        Self::with_config(|c| c.upload_mode = mode).await
    }

    /// A gateway whose configuration `adjust` changes from the defaults
    /// (atomic uploads, SPEC 3's limits), with homes on local disk.
    pub async fn with_config(adjust: impl FnOnce(&mut GatewayConfig)) -> TestGateway {
        Self::build(StorageUnderTest::Local, adjust).await
    }

    /// Like [`TestGateway::with_config`], on the storage
    /// `DROPGATE_TEST_STORAGE` names: for the suites that run once per
    /// backend (they reach homes through [`TestGateway::files`]).
    pub async fn on_storage_under_test(adjust: impl FnOnce(&mut GatewayConfig)) -> TestGateway {
        Self::build(StorageUnderTest::from_env(), adjust).await
    }

    async fn build(
        storage: StorageUnderTest,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/dropgate.db", dir.path().display());
        let store = Store::connect(&url, 4).await.expect("connect sqlite");
        store.migrate().await.expect("migrate");
        let mut config = GatewayConfig::new(dir.path().join("files"));
        config.node_name = "test".into();
        // As `dropgate serve` has it (`<data_dir>/spool`, and the audit
        // journal below it in page-cache mode).
        config.spool_dir = Some(dir.path().join("spool"));
        let mut bucket = None;
        if storage == StorageUnderTest::S3 {
            let (backend, name) = s3_backend();
            config.storage = backend;
            bucket = Some(name);
        }
        adjust(&mut config);
        let gateway = Gateway::new(store.clone(), config);
        TestGateway {
            gateway,
            store,
            dir,
            bucket,
        }
    }

    /// The storage root (homes are folders below it).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// The on-disk home of `username` (created if missing). Only for a
    /// gateway on local disk: other tests go through [`TestGateway::files`].
    pub fn home(&self, username: &str) -> PathBuf {
        assert!(
            self.is_local(),
            "this test reads the home on local disk; the gateway keeps homes in {}",
            self.gateway.storage().kind()
        );
        let p = self.storage_root().join(username);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Whether homes are folders on local disk.
    pub fn is_local(&self) -> bool {
        self.gateway.storage().kind() == "local"
    }

    /// What the gateway's storage can do.
    pub fn capabilities(&self) -> Capabilities {
        self.gateway.storage().capabilities()
    }

    /// The home of `username` (default home: the user name), through the
    /// gateway's storage.
    pub async fn files(&self, username: &str) -> HomeFiles {
        let unfinished = match &self.bucket {
            Some(bucket) => files::Unfinished::Bucket(bucket.clone()),
            None if self.is_local() => files::Unfinished::Disk(self.storage_root().join(username)),
            None => files::Unfinished::Nothing,
        };
        HomeFiles::open(self.gateway.storage(), username, unfinished).await
    }

    /// Creates an account with a password and default permissions.
    pub async fn add_user(&self, username: &str, password: &str) -> User {
        self.add_user_with(User::new(username), Some(password))
            .await
    }

    /// Creates a customised account.
    pub async fn add_user_with(&self, user: User, password: Option<&str>) -> User {
        let hash = match password {
            Some(p) => Some(self.store.hasher().hash(p).await.unwrap()),
            None => None,
        };
        self.store
            .create_user(&user, hash.as_deref())
            .await
            .unwrap();
        user
    }

    /// Waits until queued audit events are in the store.
    pub async fn flush_events(&self) {
        self.gateway.audit().flush().await;
    }

    /// The events in the audit journal's files right now (page-cache mode:
    /// what waiting operations appended before their reply), oldest first.
    pub fn journaled_events(&self) -> Vec<KeyedEvent> {
        let Ok(rd) = std::fs::read_dir(self.dir.path().join("spool").join("journal")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = rd.map(|e| e.expect("journal entry").path()).collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                let body = std::fs::read_to_string(f).expect("read journal");
                body.lines()
                    .map(|l| serde_json::from_str::<KeyedEvent>(l).expect("journal line"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Makes sure a command-line tool is on PATH, installing its Debian package
/// when it is missing. Panics (failing the test) rather than skipping.
pub fn require_tool(tool: &str, package: &str) {
    if which(tool) {
        return;
    }
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(apt-get install -y --no-install-recommends {package} || (apt-get update && apt-get install -y --no-install-recommends {package})) >/dev/null 2>&1"
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok && which(tool),
        "{tool} is required (Debian package {package}) and could not be installed"
    );
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `len` deterministic pseudo-random bytes to `path`.
pub fn write_random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}
