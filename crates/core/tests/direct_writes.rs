//! Zero-copy writes (`Upload::write_direct`, FTP's splice): offered only
//! where nothing in the process needs the bytes (a local file answered from
//! the page cache, past the part the stream hash follows), held to quota
//! like any write, and the committed file's event still carries the
//! SHA-256 of all of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use dropgate_core::store::{EventKind, EventQuery, Protocol, Store, User};
use dropgate_core::vfs::{MemoryBackend, VfsError, VirtualPath, WriteStart};
use dropgate_core::{
    Credential, FsError, Gateway, GatewayConfig, HASH_AFTER_REPLY_FROM, Session, Upload,
};
use sha2::Digest;

async fn gateway(dir: &Path, config: impl FnOnce(&mut GatewayConfig)) -> (Arc<Gateway>, Store) {
    let url = format!("sqlite://{}/dropgate.db", dir.display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let mut c = GatewayConfig::new(dir.join("files"));
    c.spool_dir = Some(dir.join("spool"));
    config(&mut c);
    (Gateway::new(store.clone(), c), store)
}

async fn login(gateway: &Arc<Gateway>, store: &Store, user: User) -> Session {
    let hash = store.hasher().hash("pw-123456").await.unwrap();
    store.create_user(&user, Some(&hash)).await.unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    gateway
        .authenticate(
            Protocol::Ftp,
            &user.username,
            Credential::Password("pw-123456"),
            peer,
        )
        .await
        .unwrap()
}

fn p(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

/// A direct write that puts `data` at the offset it is given.
fn put(data: Vec<u8>) -> dropgate_core::vfs::DirectWrite {
    Box::new(move |file, offset| {
        file.write_all_at(&data, offset)?;
        Ok(data.len() as u64)
    })
}

const THRESHOLD: u64 = HASH_AFTER_REPLY_FROM;

/// The first `THRESHOLD` bytes through the stream, as FTP sends them.
async fn start_upload(s: &Session, path: &str, data: &[u8]) -> Upload {
    let up = s
        .open_upload(&p(path), WriteStart::Truncate, false)
        .await
        .unwrap();
    let head = usize::try_from(THRESHOLD).unwrap();
    up.write_next(0, Bytes::copy_from_slice(&data[..head]))
        .await
        .unwrap();
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cache_upload_takes_direct_writes_past_the_streamed_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, store) = gateway(dir.path(), |c| c.durable_uploads = false).await;
    let s = login(&gateway, &store, User::new("alice")).await;
    let data = content(usize::try_from(THRESHOLD).unwrap() + 3_000_000);
    let up = start_upload(&s, "/big.bin", &data).await;
    assert!(!up.writes_direct(THRESHOLD - 1), "the stream hash's part");
    assert!(up.writes_direct(THRESHOLD));
    let head = usize::try_from(THRESHOLD).unwrap();
    let mut at = head;
    for chunk in data[head..].chunks(1 << 20) {
        up.write_direct(at as u64, chunk.len() as u64, put(chunk.to_vec()))
            .await
            .unwrap();
        at += chunk.len();
    }
    assert_eq!(up.bytes(), data.len() as u64);
    assert_eq!(up.commit().await.unwrap(), data.len() as u64);
    assert!(std::fs::read(dir.path().join("files/alice/big.bin")).unwrap() == data);
    // Hashed from the committed file after the reply: the whole content.
    let want = hex::encode(sha2::Sha256::digest(&data));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        gateway.audit().flush().await;
        let q = EventQuery {
            kind: Some(EventKind::Upload),
            ..Default::default()
        };
        let events = store.query_events(&q).await.unwrap();
        if let Some(e) = events.iter().find(|e| e.sha256.is_some()) {
            assert_eq!(e.sha256.as_deref(), Some(want.as_str()));
            assert_eq!(e.bytes, Some(data.len() as u64));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_are_held_to_quota_and_a_short_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, store) = gateway(dir.path(), |c| c.durable_uploads = false).await;
    let mut user = User::new("bob");
    user.quota.max_bytes = THRESHOLD + 1_000_000;
    let s = login(&gateway, &store, user).await;
    let data = content(usize::try_from(THRESHOLD).unwrap() + 2_000_000);
    let up = start_upload(&s, "/q.bin", &data).await;
    let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = called.clone();
    let over: dropgate_core::vfs::DirectWrite = Box::new(move |_, _| {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(2_000_000)
    });
    let refused = up.write_direct(THRESHOLD, 2_000_000, over).await;
    assert!(
        matches!(refused, Err(FsError::QuotaExceeded)),
        "{refused:?}"
    );
    assert!(
        !called.load(std::sync::atomic::Ordering::SeqCst),
        "refused before the write"
    );
    up.abort("quota").await;
    assert_eq!(gateway.usage(&User::new("bob")).await.unwrap(), (0, 0));

    // A write that moves fewer bytes than it stands for fails the upload.
    let up = start_upload(&s, "/short.bin", &data).await;
    let short: dropgate_core::vfs::DirectWrite = Box::new(|_, _| Ok(10));
    assert!(up.write_direct(THRESHOLD, 100, short).await.is_err());
    up.abort("short").await;
    assert!(!dir.path().join("files/bob/short.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_and_non_local_uploads_take_no_direct_writes() {
    let dir = tempfile::tempdir().unwrap();
    // Durable: the hash must see every byte before the reply.
    let (gateway, store) = gateway(dir.path(), |_| {}).await;
    let s = login(&gateway, &store, User::new("carol")).await;
    let data = content(usize::try_from(THRESHOLD).unwrap() + 10);
    let up = start_upload(&s, "/d.bin", &data).await;
    assert!(!up.writes_direct(THRESHOLD));
    let refused = up
        .write_direct(THRESHOLD, 10, put(data[..10].to_vec()))
        .await;
    assert!(
        matches!(refused, Err(FsError::Vfs(VfsError::Unsupported(_)))),
        "{refused:?}"
    );
    up.abort("test").await;

    // No local file (memory here; S3 alike).
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dropgate.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let mut c = GatewayConfig::with_backend(Arc::new(MemoryBackend::new()));
    c.durable_uploads = false;
    let gateway = Gateway::new(store.clone(), c);
    let s = login(&gateway, &store, User::new("dave")).await;
    let up = start_upload(&s, "/m.bin", &data).await;
    assert!(!up.writes_direct(THRESHOLD));
    up.abort("test").await;
}
