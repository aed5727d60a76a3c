//! The gateway over the in-memory backend: sessions, permissions, quotas,
//! the audit trail and account removal hold without a disk, because core
//! only ever talks to the storage through the `Backend` it is given.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use dropgate_core::store::{EventKind, EventQuery, Outcome, Protocol, Quota, Store, User};
use dropgate_core::vfs::{Backend, MemoryBackend, VirtualPath, WriteStart};
use dropgate_core::{Credential, FsError, Gateway, GatewayConfig, Permission, Session};

struct Fixture {
    gateway: Arc<Gateway>,
    store: Store,
    backend: Arc<MemoryBackend>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dropgate.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let backend = Arc::new(MemoryBackend::new());
    let mut config = GatewayConfig::with_backend(backend.clone());
    config.node_name = "mem".into();
    Fixture {
        gateway: Gateway::new(store.clone(), config),
        store,
        backend,
        _dir: dir,
    }
}

impl Fixture {
    async fn login(&self, user: User) -> Session {
        let hash = self.store.hasher().hash("pw-123456").await.unwrap();
        self.store.create_user(&user, Some(&hash)).await.unwrap();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        self.gateway
            .authenticate(
                Protocol::Sftp,
                &user.username,
                Credential::Password("pw-123456"),
                peer,
            )
            .await
            .unwrap()
    }
}

fn p(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

async fn upload(s: &Session, path: &str, data: &'static [u8]) -> Result<u64, FsError> {
    let up = s.open_upload(&p(path), WriteStart::Truncate, false).await?;
    up.write_next(0, Bytes::from_static(data)).await?;
    up.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_downloads_and_their_audit_trail() {
    let f = fixture().await;
    assert_eq!(f.gateway.storage().kind(), "memory");
    let s = f.login(User::new("alice")).await;
    s.create_dir(&p("/in")).await.unwrap();
    assert_eq!(upload(&s, "/in/a.txt", b"hello").await.unwrap(), 5);

    let down = s.open_download(&p("/in/a.txt")).await.unwrap();
    assert_eq!(down.len(), 5);
    assert!(
        down.reader().local_file().is_none(),
        "no descriptor to send"
    );
    assert_eq!(down.reader().read_at(0, 64).await.unwrap(), &b"hello"[..]);
    down.finish(None);

    s.rename(&p("/in/a.txt"), &p("/in/b.txt"), false)
        .await
        .unwrap();
    let mut list = s.list(&p("/in")).await.unwrap();
    let mut names = BTreeSet::new();
    while let Some(e) = list.next().await {
        names.insert(e.unwrap().name);
    }
    assert_eq!(names, BTreeSet::from(["b.txt".to_owned()]));

    f.gateway.audit().flush().await;
    let events = f
        .store
        .query_events(&EventQuery {
            username: Some("alice".into()),
            kind: Some(EventKind::Upload),
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::Ok);
    assert_eq!(events[0].bytes, Some(5));
    // SHA-256 of "hello".
    assert_eq!(
        events[0].sha256.as_deref(),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_quotas_hold() {
    let f = fixture().await;
    let mut reader = User::new("reader");
    reader.permissions = [(
        "/".to_owned(),
        [Permission::List, Permission::Download]
            .into_iter()
            .collect(),
    )]
    .into_iter()
    .collect();
    let r = f.login(reader).await;
    assert!(matches!(
        upload(&r, "/x", b"no").await,
        Err(FsError::Denied)
    ));
    assert!(matches!(r.create_dir(&p("/d")).await, Err(FsError::Denied)));

    let mut small = User::new("small");
    small.quota = Quota {
        max_bytes: 10,
        max_files: 0,
    };
    let s = f.login(small).await;
    upload(&s, "/one", b"12345678").await.unwrap();
    assert!(matches!(
        upload(&s, "/two", b"12345678").await,
        Err(FsError::QuotaExceeded)
    ));
    // The refused upload left nothing, and nothing counted.
    assert!(s.metadata(&p("/two")).await.is_err());
    s.remove_file(&p("/one")).await.unwrap();
    upload(&s, "/two", b"12345678").await.unwrap();

    // A file count: a new name needs room, replacing a file does not.
    let mut few = User::new("few");
    few.quota = Quota {
        max_bytes: 0,
        max_files: 1,
    };
    let s = f.login(few).await;
    upload(&s, "/only", b"1").await.unwrap();
    assert!(matches!(
        upload(&s, "/second", b"2").await,
        Err(FsError::QuotaExceeded)
    ));
    assert!(
        s.metadata(&p("/second")).await.is_err(),
        "nothing left behind"
    );
    assert_eq!(upload(&s, "/only", b"replaced").await.unwrap(), 8);
    let mut list = s.list(&p("/")).await.unwrap();
    let mut names = Vec::new();
    while let Some(e) = list.next().await {
        names.push(e.unwrap().name);
    }
    assert_eq!(names, ["only"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_account_with_its_files_empties_its_home() {
    let f = fixture().await;
    let s = f.login(User::new("gone")).await;
    upload(&s, "/keep-me-not", b"data").await.unwrap();
    drop(s);
    assert!(f.gateway.delete_account("gone", true).await.unwrap());
    let home = f.backend.open_home("gone").await.unwrap();
    let mut list = home.list(&p("/")).await.unwrap();
    assert!(list.next().await.is_none(), "the home is empty again");
}
