//! The store's suite, run unchanged against SQLite (always) and PostgreSQL
//! (when `DROPGATE_TEST_POSTGRES_URL` is set: each run gets its own database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use dropgate_store::scratch::ScratchPostgres;
use dropgate_store::{
    AttemptResult, Delivery, DeliveryQuery, DeliveryStatus, Event, EventKind, EventQuery,
    EventRule, KeyedEvent, Outcome, Permission, Protocol, RuleAction, RuleFilter, Store,
    StoreError, Trigger, User, Verified,
};

async fn suite(store: Store) {
    store.migrate().await.unwrap();
    // Migrations are idempotent.
    store.migrate().await.unwrap();

    // Users: create, read back every field, duplicate refused.
    let mut u = User::new("alice");
    u.public_keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG3cQ alice@laptop".into()];
    u.permissions.insert(
        "/inbox".into(),
        [Permission::List, Permission::Upload].into(),
    );
    u.quota.max_bytes = 1 << 30;
    u.bandwidth.download_kib_s = 512;
    u.allowed_ips = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    u.protocols = vec![Protocol::Sftp];
    u.expires_at = Some(Utc::now() + Duration::days(30));
    u.description = "partner ACME".into();
    let hash = store.hasher().hash("pw-alice").await.unwrap();
    store.create_user(&u, Some(&hash)).await.unwrap();
    assert!(matches!(
        store.create_user(&u, None).await,
        Err(StoreError::Duplicate(_))
    ));

    let rec = store
        .get_user("alice")
        .await
        .unwrap()
        .expect("alice exists");
    assert_eq!(rec.user.public_keys, u.public_keys);
    assert_eq!(rec.user.permissions, u.permissions);
    assert_eq!(rec.user.quota, u.quota);
    assert_eq!(rec.user.bandwidth, u.bandwidth);
    assert_eq!(rec.user.allowed_ips, u.allowed_ips);
    assert_eq!(rec.user.protocols, u.protocols);
    assert_eq!(rec.user.description, u.description);
    assert_eq!(
        rec.user.expires_at.map(|t| t.timestamp_millis()),
        u.expires_at.map(|t| t.timestamp_millis())
    );
    assert_eq!(
        store
            .hasher()
            .verify("pw-alice", rec.password_hash.as_deref())
            .await,
        Verified::Ok
    );
    assert!(store.get_user("nobody").await.unwrap().is_none());

    // Invalid fields are refused with the field named, before any SQL.
    let mut bad = User::new("bob");
    bad.home = "../escape".into();
    match store.create_user(&bad, None).await {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "home"),
        other => panic!("expected invalid home, got {other:?}"),
    }
    assert!(matches!(
        store.create_user(&User::new("-x"), None).await,
        Err(StoreError::Invalid(_))
    ));

    // Update, password change, login time, pagination, delete.
    let mut u2 = rec.user.clone();
    u2.enabled = false;
    u2.home = "partners/alice".into();
    store.update_user(&u2).await.unwrap();
    let back = store.get_user("alice").await.unwrap().unwrap();
    assert!(!back.user.enabled);
    assert_eq!(back.user.home, "partners/alice");
    assert!(back.password_hash.is_some(), "update keeps the password");
    assert!(matches!(
        store.update_user(&User::new("ghost")).await,
        Err(StoreError::NotFound(_))
    ));
    let h2 = store.hasher().hash("new-pw").await.unwrap();
    store
        .set_user_password_hash("alice", Some(&h2))
        .await
        .unwrap();
    let back = store.get_user("alice").await.unwrap().unwrap();
    assert_eq!(
        store
            .hasher()
            .verify("new-pw", back.password_hash.as_deref())
            .await,
        Verified::Ok
    );
    store.touch_user_login("alice", Utc::now()).await.unwrap();
    assert!(
        store
            .get_user("alice")
            .await
            .unwrap()
            .unwrap()
            .user
            .last_login_at
            .is_some()
    );

    for i in 0..5 {
        store
            .create_user(&User::new(&format!("user{i}")), None)
            .await
            .unwrap();
    }
    let (page, total) = store.list_users(2, 1).await.unwrap();
    assert_eq!(total, 6);
    assert_eq!(
        page.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["user0", "user1"]
    );
    assert!(store.delete_user("user0").await.unwrap());
    assert!(!store.delete_user("user0").await.unwrap());

    // Admins, tokens and API keys (only digests stored).
    assert_eq!(store.count_admins().await.unwrap(), 0);
    let ah = store.hasher().hash("admin-pw").await.unwrap();
    store.create_admin("admin", &ah).await.unwrap();
    assert!(matches!(
        store.create_admin("admin", &ah).await,
        Err(StoreError::Duplicate(_))
    ));
    let admin = store.get_admin("admin").await.unwrap().unwrap();
    store
        .create_admin_token(admin.id, "tok-123", Utc::now() + Duration::hours(1))
        .await
        .unwrap();
    store
        .create_admin_token(admin.id, "tok-old", Utc::now() - Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        store.admin_for_token("tok-123").await.unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(store.admin_for_token("tok-old").await.unwrap(), None);
    assert_eq!(store.admin_for_token("tok-xyz").await.unwrap(), None);
    assert_eq!(store.purge_expired_tokens().await.unwrap(), 1);
    store
        .create_api_key("k1", admin.id, "secret-key-value", "ci")
        .await
        .unwrap();
    assert_eq!(
        store
            .admin_for_api_key("secret-key-value")
            .await
            .unwrap()
            .as_deref(),
        Some("admin")
    );
    assert_eq!(store.admin_for_api_key("wrong").await.unwrap(), None);
    let keys = store.list_api_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].last_used_at.is_some());
    assert!(store.delete_api_key("k1").await.unwrap());
    assert_eq!(
        store.admin_for_api_key("secret-key-value").await.unwrap(),
        None
    );

    // Events: insert, filter, cursor pagination newest first.
    let t0 = Utc::now();
    let ev = |i: i64, kind: EventKind, user: &str| Event {
        id: 0,
        time: t0 + Duration::seconds(i),
        kind,
        username: user.into(),
        protocol: "sftp".into(),
        remote_addr: "127.0.0.1:4000".into(),
        path: Some(format!("/f{i}")),
        target_path: None,
        bytes: Some(i as u64 * 10),
        duration_ms: Some(5),
        outcome: Outcome::Ok,
        sha256: (kind == EventKind::Upload).then(|| "ab".repeat(32)),
        message: None,
        node: "n1".into(),
        session_id: Some("s1".into()),
    };
    let batch: Vec<Event> = (0..10)
        .map(|i| {
            ev(
                i,
                if i % 2 == 0 {
                    EventKind::Upload
                } else {
                    EventKind::Download
                },
                if i < 6 { "alice" } else { "bob" },
            )
        })
        .collect();
    store.insert_events(&batch).await.unwrap();
    let all = store
        .query_events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let alice_up = store
        .query_events(&EventQuery {
            username: Some("alice".into()),
            kind: Some(EventKind::Upload),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice_up.len(), 3);
    assert!(
        alice_up
            .iter()
            .all(|e| e.sha256.as_deref() == Some(&"ab".repeat(32)))
    );
    let page1 = store
        .query_events(&EventQuery {
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    let page2 = store
        .query_events(&EventQuery {
            limit: 4,
            before_id: Some(page1[3].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.len(), 4);
    assert!(page2[0].id < page1[3].id);
    let ranged = store
        .query_events(&EventQuery {
            since: Some(t0 + Duration::seconds(2)),
            until: Some(t0 + Duration::seconds(5)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ranged.len(), 3);

    outbox(&store).await;
    nodes(&store).await;
    cluster_keys(&store).await;
    shared_bans(&store).await;
    node_sessions(&store).await;
    quota_usage(&store).await;
    store.close().await;
}

/// Shared quota usage: the first measurement wins, changes add up (never
/// below zero), a forgotten account has no row.
async fn quota_usage(store: &Store) {
    assert_eq!(store.quota_usage("q").await.unwrap(), None);
    assert_eq!(store.add_quota_usage("q", 5, 1).await.unwrap(), None);
    assert_eq!(store.init_quota_usage("q", 100, 2).await.unwrap(), (100, 2));
    // A second node measuring meanwhile gets the stored counts.
    assert_eq!(store.init_quota_usage("q", 7, 7).await.unwrap(), (100, 2));
    assert_eq!(
        store.add_quota_usage("q", 50, 1).await.unwrap(),
        Some((150, 3))
    );
    assert_eq!(
        store.add_quota_usage("q", -1000, -9).await.unwrap(),
        Some((0, 0))
    );
    store.init_quota_usage("r", u64::MAX, 1).await.unwrap();
    let all = store.all_quota_usage().await.unwrap();
    assert!(all.contains(&("q".into(), 0, 0)), "{all:?}");
    assert!(all.contains(&("r".into(), i64::MAX as u64, 1)), "{all:?}");
    store.forget_quota_usage("q").await.unwrap();
    assert_eq!(store.quota_usage("q").await.unwrap(), None);
}

/// Node heartbeats: written, refreshed in place, listed by freshness, removed.
async fn nodes(store: &Store) {
    use dropgate_store::NodeInfo;
    let t0 = Utc::now();
    let node = |name: &str, seen: chrono::DateTime<Utc>| NodeInfo {
        name: name.into(),
        version: "0.1.0".into(),
        started_at: t0 - Duration::seconds(60),
        last_seen_at: seen,
        listeners: vec!["ftp 127.0.0.1:2121".into(), "sftp 127.0.0.1:2222".into()],
    };
    store.node_heartbeat(&node("b", t0)).await.unwrap();
    store
        .node_heartbeat(&node("a", t0 - Duration::seconds(40)))
        .await
        .unwrap();
    let all = store
        .list_nodes(t0 - Duration::seconds(3600))
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(all[1].listeners.len(), 2);
    assert_eq!(
        all[1].last_seen_at.timestamp_millis(),
        t0.timestamp_millis()
    );
    // A stale node drops out of a recent view; a heartbeat brings it back.
    let recent = store.list_nodes(t0 - Duration::seconds(30)).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].name, "b");
    store.node_heartbeat(&node("a", t0)).await.unwrap();
    assert_eq!(
        store
            .list_nodes(t0 - Duration::seconds(30))
            .await
            .unwrap()
            .len(),
        2
    );
    // Only the row of the node that started then: not a newer one's.
    store
        .remove_node("a", t0 - Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_nodes(t0 - Duration::seconds(30))
            .await
            .unwrap()
            .len(),
        2
    );
    let started = t0 - Duration::seconds(60);
    store.remove_node("a", started).await.unwrap();
    store.remove_node("b", started).await.unwrap();
    assert!(
        store
            .list_nodes(t0 - Duration::seconds(3600))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Event rules and the outbox: deliveries stored with their event, claimed
/// once under concurrency, leases, attempts, schedules won by one caller.
async fn outbox(store: &Store) {
    let rule = EventRule {
        id: 0,
        name: "notify".into(),
        enabled: true,
        trigger: Trigger::Upload,
        every_secs: 0,
        filter: RuleFilter {
            path_globs: vec!["/inbox/**".into()],
            ..Default::default()
        },
        action: RuleAction::Webhook {
            url: "https://erp.example/h".into(),
            secret: "k".into(),
            timeout_secs: 5,
        },
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let rule = store.create_rule(&rule).await.unwrap();
    assert!(rule.id > 0);
    assert!(matches!(
        store.create_rule(&rule).await,
        Err(StoreError::Duplicate(_))
    ));
    let back = store.get_rule(rule.id).await.unwrap().unwrap();
    assert_eq!(back.action, rule.action);
    assert_eq!(back.filter, rule.filter);
    let mut changed = back.clone();
    changed.enabled = false;
    store.update_rule(&changed).await.unwrap();
    assert!(!store.get_rule(rule.id).await.unwrap().unwrap().enabled);

    // 40 deliveries stored with one event, in one transaction.
    let now = Utc::now();
    let event = Event {
        id: 0,
        time: now,
        kind: EventKind::Upload,
        username: "alice".into(),
        protocol: "ftp".into(),
        remote_addr: "127.0.0.1:1".into(),
        path: Some("/inbox/a".into()),
        target_path: None,
        bytes: Some(1),
        duration_ms: None,
        outcome: Outcome::Ok,
        sha256: None,
        message: None,
        node: "n1".into(),
        session_id: None,
    };
    let ds: Vec<Delivery> = (0..40)
        .map(|i| Delivery::new(rule.id, Trigger::Upload, format!("{{\"n\":{i}}}"), now))
        .collect();
    let keyed = KeyedEvent::new(Event {
        username: "replayed".into(),
        ..event.clone()
    });
    store
        .insert_events_with_deliveries(std::slice::from_ref(&keyed), &ds)
        .await
        .unwrap();
    // A replay of the same batch keeps each delivery and the event once.
    store
        .insert_events_with_deliveries(std::slice::from_ref(&keyed), &ds)
        .await
        .unwrap();
    store.insert_events_with_deliveries(&[], &ds).await.unwrap();
    // A lone event (one statement, no transaction) stored twice: one row.
    // Events without a key (spooled before keys existed) never conflict.
    let lone = KeyedEvent::new(Event {
        username: "carol".into(),
        ..event.clone()
    });
    let unkeyed = KeyedEvent {
        key: None,
        event: Event {
            username: "carol".into(),
            ..event.clone()
        },
    };
    for k in [&lone, &lone, &unkeyed, &unkeyed] {
        store
            .insert_events_with_deliveries(std::slice::from_ref(k), &[])
            .await
            .unwrap();
    }
    let count = |user: &'static str| async move {
        store
            .query_events(&EventQuery {
                username: Some(user.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    };
    assert_eq!(
        count("replayed").await,
        1,
        "a replayed batch's event is kept once"
    );
    assert_eq!(count("carol").await, 3, "one keyed row and two unkeyed");
    // A statement's rows are padded to a power of two with all-NULL rows
    // that its WHERE drops: none of them is stored, and an unkeyed event is
    // stored once, with keys in the batch or without.
    let named = |user: &str| Event {
        username: user.into(),
        ..event.clone()
    };
    let unkeyed = |user: &str| KeyedEvent {
        key: None,
        event: named(user),
    };
    let mixed = [
        KeyedEvent::new(named("mixed")),
        KeyedEvent::new(named("mixed")),
        unkeyed("mixed"),
    ];
    store
        .insert_events_with_deliveries(&mixed, &[])
        .await
        .unwrap();
    assert_eq!(
        count("mixed").await,
        3,
        "three rows sent in four, three kept"
    );
    let keyless = [unkeyed("keyless"), unkeyed("keyless"), unkeyed("keyless")];
    store
        .insert_events_with_deliveries(&keyless, &[])
        .await
        .unwrap();
    assert_eq!(count("keyless").await, 3);

    // Batches as the writer and the spool's replay send them: up to 256
    // events in one statement, more in chunks of one transaction. Every
    // field comes back, in the order sent, each key once (within one
    // statement, across two, and when a batch is replayed).
    let batch_event = |i: u64| {
        KeyedEvent::new(Event {
            kind: if i.is_multiple_of(2) {
                EventKind::Upload
            } else {
                EventKind::Setstat
            },
            username: "batch".into(),
            path: Some(format!("/b/{i}")),
            target_path: i.is_multiple_of(3).then(|| format!("/t/{i}")),
            bytes: (!i.is_multiple_of(5)).then_some(i),
            duration_ms: Some(i * 7),
            outcome: if i.is_multiple_of(4) {
                Outcome::Failed
            } else {
                Outcome::Ok
            },
            sha256: i.is_multiple_of(2).then(|| format!("{i:064x}")),
            message: i.is_multiple_of(4).then(|| format!("it's \"odd\" {i}")),
            session_id: Some(format!("s{i}")),
            ..event.clone()
        })
    };
    let small: Vec<KeyedEvent> = (0..40).map(batch_event).collect();
    let mut large: Vec<KeyedEvent> = (40..640).map(batch_event).collect();
    // The same event twice in one statement and across two statements.
    large.insert(10, large[3].clone());
    large.insert(400, large[20].clone());
    store
        .insert_events_with_deliveries(&small, &[])
        .await
        .unwrap();
    // The rest on a connection of its own, as the audit writer sends them.
    // With deliveries (already stored above, so still 40 of them): the
    // chunks and the deliveries in one transaction.
    let mut writer = store.event_connection(true).await.unwrap();
    writer
        .insert_events_with_deliveries(&large, &ds)
        .await
        .unwrap();
    writer
        .insert_events_with_deliveries(&small[..17], &[])
        .await
        .unwrap();
    let mut back = store
        .query_events(&EventQuery {
            username: Some("batch".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    back.reverse();
    assert_eq!(back.len(), 640, "each key kept once");
    for (i, got) in back.iter().enumerate() {
        let want = batch_event(i as u64).event;
        assert_eq!(
            (&got.path, &got.target_path, got.bytes, got.duration_ms),
            (&want.path, &want.target_path, want.bytes, want.duration_ms),
            "row {i}"
        );
        assert_eq!(
            (got.kind, got.outcome, &got.sha256, &got.message),
            (want.kind, want.outcome, &want.sha256, &want.message),
            "row {i}"
        );
        assert_eq!(
            (&got.node, &got.session_id, &got.remote_addr, &got.protocol),
            (
                &want.node,
                &want.session_id,
                &want.remote_addr,
                &want.protocol
            ),
            "row {i}"
        );
        assert_eq!(got.time.timestamp_millis(), now.timestamp_millis());
    }

    // Two nodes claiming at once never get the same delivery.
    let lease = std::time::Duration::from_secs(60);
    let (a, b) = tokio::join!(
        store.claim_deliveries("n1", Utc::now(), lease, 25),
        store.claim_deliveries("n2", Utc::now(), lease, 25)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 40, "{} + {}", a.len(), b.len());
    let mut ids: Vec<&str> = a.iter().chain(&b).map(|d| d.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert!(
        store
            .claim_deliveries("n3", Utc::now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "all leased"
    );

    // Only the lease holder renews or records an attempt.
    let later = Utc::now() + Duration::seconds(120);
    assert!(store.renew_lease(&a[0].id, "n1", later).await.unwrap());
    assert!(!store.renew_lease(&a[0].id, "n2", later).await.unwrap());
    let first = &a[0];
    let retry = AttemptResult {
        status: DeliveryStatus::Pending,
        error: Some("HTTP 500".into()),
        output: None,
        next_attempt_at: Utc::now() + Duration::seconds(1),
    };
    assert!(!store.finish_attempt(&first.id, "n2", &retry).await.unwrap());
    assert!(store.finish_attempt(&first.id, "n1", &retry).await.unwrap());
    // Not due yet; due a second later.
    assert!(
        store
            .claim_deliveries("n1", Utc::now(), lease, 50)
            .await
            .unwrap()
            .is_empty()
    );
    let due = store
        .claim_deliveries("n1", Utc::now() + Duration::seconds(2), lease, 50)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    let done = AttemptResult {
        status: DeliveryStatus::Succeeded,
        error: None,
        output: Some("HTTP 200".into()),
        next_attempt_at: Utc::now(),
    };
    assert!(store.finish_attempt(&due[0].id, "n1", &done).await.unwrap());
    // A restarted n2 frees its leases at once.
    assert_eq!(store.release_leases("n2").await.unwrap(), b.len() as u64);
    assert_eq!(
        store
            .claim_deliveries("n1", Utc::now(), lease, 50)
            .await
            .unwrap()
            .len(),
        b.len()
    );
    let listed = store
        .list_deliveries(&DeliveryQuery {
            rule_id: Some(rule.id),
            status: Some(DeliveryStatus::Succeeded),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attempts, 2);
    assert_eq!(listed[0].output.as_deref(), Some("HTTP 200"));
    assert!(listed[0].finished_at.is_some());

    // A schedule run is won by one of two concurrent callers.
    let mut sched = rule.clone();
    sched.name = "nightly".into();
    sched.trigger = Trigger::Schedule;
    sched.every_secs = 60;
    sched.action = RuleAction::Retention {
        path: "/outbox".into(),
        older_than_days: 30,
    };
    let sched = store.create_rule(&sched).await.unwrap();
    let marks = store.schedule_marks().await.unwrap();
    assert_eq!(marks, vec![(sched.id, None)]);
    let d1 = Delivery::new(sched.id, Trigger::Schedule, "{}".into(), Utc::now());
    let d2 = Delivery::new(sched.id, Trigger::Schedule, "{}".into(), Utc::now());
    let (w1, w2) = tokio::join!(
        store.fire_schedule(sched.id, None, &d1),
        store.fire_schedule(sched.id, None, &d2)
    );
    assert!(w1.unwrap() ^ w2.unwrap(), "exactly one wins");

    assert!(store.delete_rule(rule.id).await.unwrap());
    assert!(!store.delete_rule(rule.id).await.unwrap());
    assert_eq!(
        store
            .prune_deliveries(Utc::now() + Duration::days(1))
            .await
            .unwrap(),
        1,
        "only finished deliveries are pruned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/dropgate.db", dir.path().display());
    suite(Store::connect(&url, 4).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_suite() {
    // A database of its own, so runs never see each other's rows.
    let Some(db) = ScratchPostgres::create("dropgate_store").await else {
        eprintln!("DROPGATE_TEST_POSTGRES_URL not set: PostgreSQL half of the store suite not run");
        return;
    };
    suite(Store::connect(db.url(), 4).await.unwrap()).await;
    db.drop_database().await;
}

/// Shared keys: the first offer wins, later offers get the stored value.
async fn cluster_keys(store: &Store) {
    assert_eq!(
        store.cluster_key("ssh_host_ed25519_key").await.unwrap(),
        None
    );
    let first = store
        .share_cluster_key("ssh_host_ed25519_key", "{\"a\":\"1\"}")
        .await
        .unwrap();
    assert_eq!(first, "{\"a\":\"1\"}");
    let second = store
        .share_cluster_key("ssh_host_ed25519_key", "{\"a\":\"2\"}")
        .await
        .unwrap();
    assert_eq!(second, first);
    assert_eq!(
        store
            .cluster_key("ssh_host_ed25519_key")
            .await
            .unwrap()
            .as_deref(),
        Some(first.as_str())
    );
}

/// Shared bans: written, kept at the later end, listed while running,
/// lifted, and swept once over.
async fn shared_bans(store: &Store) {
    use dropgate_store::StoredBan;
    let now = Utc::now();
    let ban = |source: &str, ends_in: i64| StoredBan {
        source: source.into(),
        failures: 10,
        banned_at: now - Duration::seconds(5),
        expires_at: now + Duration::seconds(ends_in),
    };
    store.put_ban(&ban("192.0.2.1", 600)).await.unwrap();
    store.put_ban(&ban("2001:db8:1:2::/64", 600)).await.unwrap();
    store.put_ban(&ban("192.0.2.9", -1)).await.unwrap();
    // An earlier end does not shorten a running ban; a later one extends it.
    store.put_ban(&ban("192.0.2.1", 60)).await.unwrap();
    let active = store.active_bans(now).await.unwrap();
    let sources: Vec<&str> = active.iter().map(|b| b.source.as_str()).collect();
    assert_eq!(sources.len(), 2, "{active:?}");
    assert!(sources.contains(&"192.0.2.1") && sources.contains(&"2001:db8:1:2::/64"));
    let first = active.iter().find(|b| b.source == "192.0.2.1").unwrap();
    assert_eq!(
        first.expires_at.timestamp_millis(),
        (now + Duration::seconds(600)).timestamp_millis()
    );
    store.put_ban(&ban("192.0.2.1", 900)).await.unwrap();
    let first = store.active_bans(now).await.unwrap();
    let first = first.iter().find(|b| b.source == "192.0.2.1").unwrap();
    assert_eq!(
        first.expires_at.timestamp_millis(),
        (now + Duration::seconds(900)).timestamp_millis()
    );
    // Lifted: gone for every node; an ended ban does not count as lifted.
    assert!(store.delete_ban("192.0.2.1", now).await.unwrap());
    assert!(!store.delete_ban("192.0.2.1", now).await.unwrap());
    assert!(!store.delete_ban("192.0.2.9", now).await.unwrap());
    store.put_ban(&ban("192.0.2.8", -1)).await.unwrap();
    assert_eq!(store.delete_expired_bans(now).await.unwrap(), 1);
    assert_eq!(store.active_bans(now).await.unwrap().len(), 1);
    assert!(store.delete_ban("2001:db8:1:2::/64", now).await.unwrap());
}

/// Sessions published per node, replaced in place, dropped; kick requests
/// taken once by their node.
async fn node_sessions(store: &Store) {
    let now = Utc::now();
    store.publish_sessions("n1", "[1]", now).await.unwrap();
    store
        .publish_sessions("n2", "[2]", now - Duration::seconds(60))
        .await
        .unwrap();
    store.publish_sessions("n1", "[1,1]", now).await.unwrap();
    let fresh = store
        .node_sessions(now - Duration::seconds(20))
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    assert_eq!((fresh[0].0.as_str(), fresh[0].1.as_str()), ("n1", "[1,1]"));
    assert_eq!(
        store
            .node_sessions(now - Duration::seconds(3600))
            .await
            .unwrap()
            .len(),
        2
    );
    store.drop_node_sessions("n2").await.unwrap();
    assert_eq!(
        store
            .node_sessions(now - Duration::seconds(3600))
            .await
            .unwrap()
            .len(),
        1
    );

    store.request_kick("abc", "n1", now).await.unwrap();
    store.request_kick("abc", "n1", now).await.unwrap();
    store
        .request_kick("old", "gone", now - Duration::seconds(120))
        .await
        .unwrap();
    assert!(store.take_kicks("n2", now).await.unwrap().is_empty());
    assert_eq!(store.take_kicks("n1", now).await.unwrap(), ["abc"]);
    assert!(store.take_kicks("n1", now).await.unwrap().is_empty());
    assert!(
        store.take_kicks("gone", now).await.unwrap().is_empty(),
        "stale request dropped"
    );
    store.drop_node_sessions("n1").await.unwrap();
}
