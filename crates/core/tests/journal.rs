//! The audit journal of a gateway that answers uploads from the page cache
//! (`durable_uploads = false`): a waiting operation's event is appended to
//! `<spool>/journal` and answered without waiting for the store; the
//! writer stores it after; a graceful stop leaves no file; files an earlier
//! run left are stored at start, each event once. A real SQLite file,
//! locked by a second connection where the store must not answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::event;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropgate_core::store::{Event, EventQuery, KeyedEvent, Outcome, Store};
use dropgate_core::{Gateway, GatewayConfig};
use sqlx::Connection;

async fn open(dir: &Path) -> (Store, String) {
    let url = format!("sqlite://{}/dropgate.db", dir.display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    (store, url)
}

fn page_cache_gateway(store: &Store, dir: &Path) -> std::sync::Arc<Gateway> {
    let mut config = GatewayConfig::new(dir.join("files"));
    config.durable_uploads = false;
    config.spool_dir = Some(dir.join("spool"));
    Gateway::new(store.clone(), config)
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("spool/journal"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
    v.sort();
    v
}

/// The journal's lines as JSON: events, and void lines (`{"void": key}`).
fn journal_lines(dir: &Path) -> Vec<serde_json::Value> {
    journal_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn journaled_paths(dir: &Path) -> Vec<String> {
    journal_lines(dir)
        .into_iter()
        .map(|l| serde_json::from_value::<KeyedEvent>(l).unwrap())
        .filter_map(|e| e.event.path)
        .collect()
}

async fn stored_events(store: &Store) -> Vec<Event> {
    let q = EventQuery {
        limit: 1000,
        ..Default::default()
    };
    store.query_events(&q).await.unwrap()
}

async fn stored_paths(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = stored_events(store)
        .await
        .into_iter()
        .filter_map(|e| e.path)
        .collect();
    v.sort();
    v
}

/// Waits until the store holds exactly the events of `want` (sorted paths).
async fn wait_stored(store: &Store, want: &[&str], deadline: Instant) {
    loop {
        let stored = stored_paths(store).await;
        if stored == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stored: {stored:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_is_answered_once_its_event_is_journaled_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = open(dir.path()).await;
    let gateway = page_cache_gateway(&store, dir.path());

    // Another process holds the write lock: storing would wait (seconds,
    // then the spool); journaling does not.
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let t = Instant::now();
    for p in ["/a", "/b"] {
        gateway.audit().record_durable(event(p)).await.unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "answered after {:?}",
        t.elapsed()
    );
    assert_eq!(journaled_paths(dir.path()), ["/a", "/b"]);
    assert!(stored_paths(&store).await.is_empty());

    // Once the lock is gone the writer stores them; a graceful stop
    // removes the journal's file, every event in it being stored.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    gateway.audit().flush().await;
    assert_eq!(stored_paths(&store).await, ["/a", "/b"]);
    assert_eq!(journal_files(dir.path()).len(), 1, "kept while appended to");
    gateway.shutdown().await;
    assert!(journal_files(dir.path()).is_empty());
    assert!(
        std::fs::read_dir(dir.path().join("spool/journal"))
            .unwrap()
            .next()
            .is_none(),
        "nothing left, the run's lock file included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_left_by_an_earlier_run_is_stored_at_start_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    // What a run killed with SIGKILL leaves: three journaled events, the
    // first already stored by its writer, the file cut in the middle of a
    // fourth line (a power cut).
    let events: Vec<KeyedEvent> = ["/x", "/y", "/z"]
        .iter()
        .map(|p| KeyedEvent::new(event(p)))
        .collect();
    store
        .insert_events_with_deliveries(&events[..1], &[])
        .await
        .unwrap();
    let journal = dir.path().join("spool/journal");
    std::fs::create_dir_all(&journal).unwrap();
    let mut body = Vec::new();
    for e in &events {
        body.extend(serde_json::to_vec(e).unwrap());
        body.push(b'\n');
    }
    body.extend(br#"{"key":"01939","time":"2026-"#);
    std::fs::write(journal.join("00000000000000000001-000000.jsonl"), body).unwrap();

    let gateway = page_cache_gateway(&store, dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_stored(&store, &["/x", "/y", "/z"], deadline).await;
    assert!(journal_files(dir.path()).is_empty());
    // And this run's events journal as usual once the spool is empty.
    while gateway.audit().degraded() {
        assert!(Instant::now() < deadline, "the spool was never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.audit().record_durable(event("/now")).await.unwrap();
    assert_eq!(journaled_paths(dir.path()), ["/now"]);
    gateway.audit().flush().await;
    assert_eq!(stored_paths(&store).await, ["/now", "/x", "/y", "/z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_with_an_unreadable_line_before_its_end_is_kept_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let journal = dir.path().join("spool/journal");
    std::fs::create_dir_all(&journal).unwrap();
    // Not what a power cut leaves: a line another version wrote, between
    // two good ones.
    let mut body = serde_json::to_vec(&KeyedEvent::new(event("/before"))).unwrap();
    body.extend(b"\n{\"format\":2,\"event\":\"unknown\"}\n");
    body.extend(serde_json::to_vec(&KeyedEvent::new(event("/after"))).unwrap());
    body.push(b'\n');
    let name = "00000000000000000001-000000.jsonl";
    std::fs::write(journal.join(name), &body).unwrap();

    let gateway = page_cache_gateway(&store, dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_stored(&store, &["/after", "/before"], deadline).await;
    assert!(journal_files(dir.path()).is_empty());
    let kept = std::fs::read(dir.path().join("spool/rejected").join(name)).unwrap();
    assert_eq!(kept, body, "the whole file, for a person to look at");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_event_neither_stored_nor_spooled_is_kept_and_later_operations_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = open(dir.path()).await;
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    // A full spool (a sparse file the replay does not read).
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let filler = dir.path().join("spool/filler");
    std::fs::File::create(&filler)
        .unwrap()
        .set_len(dropgate_core::SPOOL_MAX_BYTES)
        .unwrap();
    let gateway = page_cache_gateway(&store, dir.path());

    // Answered from the journal; its batch then finds neither the store
    // nor the spool.
    gateway.audit().record_durable(event("/a")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gateway.audit().degraded() {
        assert!(
            Instant::now() < deadline,
            "the failed batch set no degraded mode"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more is journaled: the next operation waits for the spool,
    // which refuses, so it is refused too.
    assert!(gateway.audit().record_durable(event("/b")).await.is_err());
    assert_eq!(journaled_paths(dir.path()), ["/a"]);
    assert_eq!(gateway.audit().lost(), 1, "only /b, whose client was told");

    // Room again, the store back: the kept event goes in with the next.
    std::fs::remove_file(&filler).unwrap();
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    gateway.audit().record_durable(event("/c")).await.unwrap();
    wait_stored(&store, &["/a", "/c"], deadline).await;
    gateway.shutdown().await;
    assert!(journal_files(dir.path()).is_empty());
    assert_eq!(gateway.audit().lost(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_writable_journal_the_event_is_stored_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    // A file where the journal's folder should be: every append fails.
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    std::fs::write(dir.path().join("spool/journal"), b"not a folder").unwrap();
    let gateway = page_cache_gateway(&store, dir.path());
    for p in ["/a", "/b"] {
        gateway.audit().record_durable(event(p)).await.unwrap();
        // No flush: stored before the answer, as in durable mode.
        assert!(stored_paths(&store).await.contains(&p.to_owned()), "{p}");
    }
}

/// A durable gateway on local storage, its spool under `dir`, with alice
/// logged in (home `/`, every permission).
async fn durable_session(
    store: &Store,
    dir: &Path,
) -> (std::sync::Arc<Gateway>, dropgate_core::Session) {
    session_of(store, dir, true).await
}

/// A gateway on local storage (`durable_uploads` as given), its spool under
/// `dir`, with alice logged in (home `/`, every permission).
async fn session_of(
    store: &Store,
    dir: &Path,
    durable: bool,
) -> (std::sync::Arc<Gateway>, dropgate_core::Session) {
    let mut config = GatewayConfig::new(dir.join("files"));
    config.durable_uploads = durable;
    config.spool_dir = Some(dir.join("spool"));
    let gateway = Gateway::new(store.clone(), config);
    let user = dropgate_core::User::new("alice");
    let hash = store.hasher().hash("pw-123456").await.unwrap();
    store.create_user(&user, Some(&hash)).await.unwrap();
    let session = gateway
        .authenticate(
            dropgate_core::store::Protocol::Ftp,
            "alice",
            dropgate_core::Credential::Password("pw-123456"),
            "127.0.0.1:40000".parse().unwrap(),
        )
        .await
        .unwrap();
    (gateway, session)
}

/// A new upload of `path` (replacing, or `exclusive`).
async fn upload(
    session: &dropgate_core::Session,
    path: &str,
    exclusive: bool,
) -> dropgate_core::Upload {
    let path = dropgate_core::vfs::VirtualPath::parse(path).unwrap();
    session
        .open_upload(&path, dropgate_core::vfs::WriteStart::Truncate, exclusive)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_upload_is_answered_once_its_event_is_in_the_journal() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let (store, url) = open(dir.path()).await;
    let (gateway, session) = durable_session(&store, dir.path()).await;
    assert!(gateway.audit().journals_synced());

    // The store is locked: the upload's event cannot be stored before the
    // reply, so the reply proves it was journaled.
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let body: bytes::Bytes = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let want = hex::encode(sha2::Sha256::digest(&body));
    // Last bytes smaller and larger than a chunk hashed on the pool: the
    // same event either way, with every byte counted.
    for (path, split) in [("/d.bin", 60_000), ("/e.bin", 20_000)] {
        let up = upload(&session, path, false).await;
        up.write_next(0, body.slice(..split)).await.unwrap();
        let t = Instant::now();
        let size = up
            .commit_last(split as u64, body.slice(split..))
            .await
            .unwrap();
        assert_eq!(size, 100_000);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let lines = journal_lines(dir.path());
        assert!(
            lines.iter().any(|l| l["path"] == path
                && l["sha256"] == want.as_str()
                && l["bytes"] == 100_000
                && l["kind"] == "upload"),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| l.get("void").is_none()));
        assert_eq!(
            std::fs::read(dir.path().join(format!("files/alice{path}"))).unwrap(),
            body
        );
    }

    // Stored once the lock is gone; a graceful stop leaves no journal.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    gateway.audit().flush().await;
    let stored = stored_events(&store).await;
    for path in ["/d.bin", "/e.bin"] {
        let up = stored
            .iter()
            .find(|e| e.path.as_deref() == Some(path))
            .expect("the upload's event");
        assert_eq!(up.sha256.as_deref(), Some(want.as_str()));
        assert_eq!(up.bytes, Some(100_000));
    }
    gateway.shutdown().await;
    assert!(journal_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_upload_whose_commit_fails_takes_its_synced_event_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let (gateway, session) = durable_session(&store, dir.path()).await;
    // An exclusive upload whose name is taken while it runs: the commit's
    // link finds it, after the event was journaled.
    // Written before the commit, and written by it (its last bytes).
    for (path, last) in [("/x.txt", false), ("/y.txt", true)] {
        let up = upload(&session, path, true).await;
        let mine = bytes::Bytes::from_static(b"mine");
        let committed = if last {
            std::fs::write(dir.path().join(format!("files/alice{path}")), b"theirs").unwrap();
            up.commit_last(0, mine).await
        } else {
            up.write_next(0, mine).await.unwrap();
            std::fs::write(dir.path().join(format!("files/alice{path}")), b"theirs").unwrap();
            up.commit().await
        };
        assert!(committed.is_err());
        assert_eq!(
            std::fs::read(dir.path().join(format!("files/alice{path}"))).unwrap(),
            b"theirs"
        );
        let lines = journal_lines(dir.path());
        let key = lines
            .iter()
            .find(|l| l["path"] == path && l["outcome"] == "ok")
            .and_then(|l| l["key"].as_str())
            .expect("the event journaled before the commit")
            .to_owned();
        assert!(
            lines.iter().any(|l| l["void"] == key.as_str()),
            "taken back in the journal: {lines:?}"
        );
    }
    // Never stored as a success, by this run nor by the next one reading
    // the journal after a crash (the file as a killed run leaves it).
    gateway.audit().flush().await;
    let ok_uploads = |events: &[Event]| {
        events
            .iter()
            .filter(|e| {
                matches!(e.path.as_deref(), Some("/x.txt" | "/y.txt")) && e.outcome == Outcome::Ok
            })
            .count()
    };
    assert_eq!(ok_uploads(&stored_events(&store).await), 0);
    let copy = tempfile::tempdir().unwrap();
    let (store2, _) = open(copy.path()).await;
    let journal = copy.path().join("spool/journal");
    std::fs::create_dir_all(&journal).unwrap();
    for (i, f) in journal_files(dir.path()).iter().enumerate() {
        std::fs::copy(
            f,
            journal.join(format!("00000000000000000001-{i:06}.jsonl")),
        )
        .unwrap();
    }
    let next = page_cache_gateway(&store2, copy.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !journal_files(copy.path()).is_empty() || next.audit().degraded() {
        assert!(Instant::now() < deadline, "the journal was never adopted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next.audit().flush().await;
    let adopted = stored_events(&store2).await;
    assert_eq!(ok_uploads(&adopted), 0, "{adopted:?}");
    gateway.shutdown().await;
    next.shutdown().await;
}

/// A file's times (FTP `MFMT`, SFTP `SETSTAT`) change no bytes and no
/// name: the change is answered without waiting for its event (no journal
/// line, no store: here the store is locked), and the event is stored
/// once the store answers, in either durability mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_times_are_answered_without_waiting_for_their_event() {
    for durable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, url) = open(dir.path()).await;
        let (gateway, session) = session_of(&store, dir.path(), durable).await;
        let up = upload(&session, "/t.txt", false).await;
        up.commit_last(0, bytes::Bytes::from_static(b"times"))
            .await
            .unwrap();
        gateway.audit().flush().await;
        let lines_before = journal_lines(dir.path()).len();

        let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut locker)
            .await
            .unwrap();
        let path = dropgate_core::vfs::VirtualPath::parse("/t.txt").unwrap();
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let t = Instant::now();
        session.set_times(&path, None, Some(when)).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "durable {durable}: answered after {:?}",
            t.elapsed()
        );
        let modified = std::fs::metadata(dir.path().join("files/alice/t.txt"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(modified, when);
        assert_eq!(
            journal_lines(dir.path()).len(),
            lines_before,
            "durable {durable}: no journal line"
        );

        sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
        gateway.audit().flush().await;
        let stored = stored_events(&store).await;
        let kinds: Vec<&str> = stored
            .iter()
            .filter(|e| e.path.as_deref() == Some("/t.txt"))
            .map(|e| e.kind.as_str())
            .collect();
        assert!(
            kinds.contains(&"upload") && kinds.contains(&"setstat"),
            "durable {durable}: {kinds:?}"
        );
        gateway.shutdown().await;
        assert_eq!(gateway.audit().lost(), 0);
    }
}
