//! The audit log while the store refuses writes: events are acknowledged
//! from the on-disk spool and move into the store, in order, once it takes
//! writes again. A real SQLite file, locked by a second connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::event;

use std::time::{Duration, Instant};

use dropgate_core::store::{Event, EventQuery, KeyedEvent, Store};
use dropgate_core::{Gateway, GatewayConfig};
use dropgate_store::scratch::ScratchPostgres;
use sqlx::Connection;

fn spooled(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// The store's ten newest events.
async fn latest(store: &Store) -> Vec<Event> {
    store
        .query_events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_spool_while_the_store_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dropgate.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let spool = dir.path().join("spool");
    let mut config = GatewayConfig::new(dir.path().join("files"));
    config.spool_dir = Some(spool.clone());
    let gateway = Gateway::new(store.clone(), config);

    gateway
        .audit()
        .record_durable(event("/before"))
        .await
        .unwrap();

    // Another process holds the write lock.
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();

    let t = Instant::now();
    gateway
        .audit()
        .record_durable(event("/during-1"))
        .await
        .expect("acknowledged from the spool");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(gateway.audit().degraded());
    assert_eq!(spooled(&spool), 1);
    // Later batches join the spool at once (order is kept).
    let t = Instant::now();
    gateway
        .audit()
        .record_durable(event("/during-2"))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(spooled(&spool), 2);

    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    drop(locker);

    // Replayed within a few seconds, in order; the spool empties.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = latest(&store).await;
        if events.len() == 3 && spooled(&spool) == 0 && !gateway.audit().degraded() {
            let paths: Vec<_> = events
                .iter()
                .rev()
                .map(|e| e.path.clone().unwrap())
                .collect();
            assert_eq!(paths, ["/before", "/during-1", "/during-2"]);
            break;
        }
        assert!(Instant::now() < deadline, "not replayed: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back to the store directly.
    gateway
        .audit()
        .record_durable(event("/after"))
        .await
        .unwrap();
    assert_eq!(spooled(&spool), 0);
    assert_eq!(gateway.audit().lost(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_an_unrecordable_success_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dropgate.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let gateway = Gateway::new(store, GatewayConfig::new(dir.path().join("files")));
    let mut locker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    assert!(gateway.audit().record_durable(event("/x")).await.is_err());
    assert_eq!(gateway.audit().lost(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_file_the_store_cannot_take_is_set_aside_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dropgate.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // Left by an earlier run: one unreadable batch, then a good one.
    std::fs::write(spool.join("00000000000000000001.json"), b"{not json").unwrap();
    let good = serde_json::json!({"events": [event("/from-spool")], "deliveries": []});
    std::fs::write(
        spool.join("00000000000000000002.json"),
        serde_json::to_vec(&good).unwrap(),
    )
    .unwrap();
    let mut config = GatewayConfig::new(dir.path().join("files"));
    config.spool_dir = Some(spool.clone());
    let gateway = Gateway::new(store.clone(), config);
    // A NUL in a client-typed name cannot poison a batch either.
    gateway
        .audit()
        .record_durable(Event {
            username: "evil\0name".into(),
            ..event("/nul")
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = latest(&store).await;
        if events.len() == 2 && spooled(&spool) == 0 {
            assert!(
                events
                    .iter()
                    .any(|e| e.path.as_deref() == Some("/from-spool"))
            );
            assert!(events.iter().any(|e| e.username == "evil\u{FFFD}name"));
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(spool.join("rejected/00000000000000000001.json").exists());
}

/// A batch that reached the store and was spooled as well (a store write the
/// writer gave up on that landed anyway; a crash between a replay's commit
/// and the spool file's removal) is kept once when the spool is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_batch_that_already_landed_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/dropgate.db", dir.path().display());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let landed = KeyedEvent::new(event("/landed"));
    store
        .insert_events_with_deliveries(std::slice::from_ref(&landed), &[])
        .await
        .unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let fresh = KeyedEvent::new(event("/fresh"));
    let batch = serde_json::json!({"events": [landed, fresh], "deliveries": []});
    std::fs::write(
        spool.join("00000000000000000001.json"),
        serde_json::to_vec(&batch).unwrap(),
    )
    .unwrap();
    let mut config = GatewayConfig::new(dir.path().join("files"));
    config.spool_dir = Some(spool.clone());
    let _gateway = Gateway::new(store.clone(), config);
    let deadline = Instant::now() + Duration::from_secs(15);
    while spooled(&spool) > 0 {
        assert!(Instant::now() < deadline, "spool not replayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut paths: Vec<String> = latest(&store)
        .await
        .into_iter()
        .filter_map(|e| e.path)
        .collect();
    paths.sort();
    assert_eq!(paths, ["/fresh", "/landed"]);
}

/// The audit writer keeps one connection from batch to batch, which the
/// pool no longer checks: when the server ends it (a restart, a proxy's
/// idle timeout), the batch goes again at once on a new connection instead
/// of into the spool. PostgreSQL, whose backends can be ended from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_replaces_a_connection_the_server_ended() {
    // A database of its own.
    let Some(db) = ScratchPostgres::create("dropgate_core_writer").await else {
        eprintln!("DROPGATE_TEST_POSTGRES_URL not set: the writer's PostgreSQL test not run");
        return;
    };
    let store = Store::connect(db.url(), 2).await.unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut config = GatewayConfig::new(dir.path().join("files"));
    config.spool_dir = Some(spool.clone());
    let gateway = Gateway::new(store.clone(), config);

    // Until `path` is stored; the spool is never used on the way.
    let stored = |path: &'static str| {
        let (store, gateway, spool) = (store.clone(), gateway.clone(), spool.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                assert!(!gateway.audit().degraded(), "a batch went to the spool");
                assert_eq!(spooled(&spool), 0);
                let events = latest(&store).await;
                if events.iter().any(|e| e.path.as_deref() == Some(path)) {
                    return;
                }
                assert!(Instant::now() < deadline, "{path} not stored");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // Through the writer (not stored inline by the caller): it now holds
    // its connection.
    gateway.audit().record(event("/before"));
    stored("/before").await;
    // Every backend of the database ends: the writer's and the pool's.
    let ended = db
        .execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name()
        ))
        .await;
    assert!(ended.rows_affected() >= 2, "the backends were not ended");
    gateway.audit().record(event("/after"));
    stored("/after").await;
    assert_eq!(gateway.audit().lost(), 0);
    drop(gateway);
    store.close().await;
    db.drop_database().await;
}
