//! Faults: the server killed with SIGKILL in the middle of many concurrent
//! uploads loses nothing it acknowledged. Every upload a client was told
//! succeeded is there under its name with its content, and has its audit
//! event with the right SHA-256; no temporary survives the restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Gateway;
use serde_json::json;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "Kill-Nine-77";
/// Concurrent clients per protocol.
const CLIENTS: usize = 50;

/// Every upload event in the audit log: path -> sha256.
fn uploads_audited(gw: &Gateway, token: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = "/api/v1/events?kind=upload&username=acme&limit=500".to_owned();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, v) = gw.api("GET", &q, Some(token), None);
        assert_eq!(status, 200, "{v}");
        for e in v["items"].as_array().unwrap() {
            if e["outcome"] == "ok" {
                out.insert(
                    e["path"].as_str().unwrap().to_owned(),
                    e["sha256"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[test]
fn sigkill_during_concurrent_uploads_loses_nothing_acknowledged() {
    sigkill_during_concurrent_uploads(false);
}

/// The same with uploads answered from the page cache: the kernel keeps
/// the files, and their events are in the audit journal (stored in the
/// database at the restart if the writer had not stored them yet).
#[test]
fn sigkill_during_page_cache_uploads_loses_no_event() {
    sigkill_during_concurrent_uploads(true);
}

fn sigkill_during_concurrent_uploads(page_cache: bool) {
    let config = if page_cache {
        "[storage]\ndurable_uploads = false\n"
    } else {
        ""
    };
    dropgate_testkit::require_tool("curl", "curl");
    let gw = Gateway::start(config);
    let token = gw.token();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = common::ssh_key(work.path(), "acme");
    gw.create_user(
        &token,
        &json!({"username": "acme", "password": PASSWORD, "public_keys": [public]}),
    );
    let ftp = format!("ftp://acme:{PASSWORD}@{}", gw.addr("ftp"));
    let sftp_addr = gw.addr("sftp");

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..2 * CLIENTS {
        let proto = if c % 2 == 0 { "ftp" } else { "sftp" };
        let ftp = ftp.clone();
        let key = key.clone();
        let stop = stop.clone();
        let acked = acked.clone();
        let dir = work.path().to_owned();
        clients.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("{proto}-{c}-{i}.bin");
                let local = dir.join(&name);
                // Sizes from 1 KiB to ~300 KiB: several write chunks for some.
                let size = 1024 + ((c as u64 * 7919 + i * 104_729) % 300_000) as usize;
                let content =
                    dropgate_testkit::write_random_file(&local, size, c as u64 * 1000 + i);
                // Clients that report a failed final reply: curl waits for
                // FTP's 226; OpenSSH's sftp fails a `put` whose CLOSE fails
                // (curl's SFTP ignores a failed close, so it cannot tell).
                let ok = if proto == "ftp" {
                    std::process::Command::new("curl")
                        .args(["-s", "--max-time", "20", "-T"])
                        .arg(&local)
                        .arg(format!("{ftp}/{name}"))
                        .output()
                        .unwrap()
                        .status
                        .success()
                } else {
                    common::sftp_batch(
                        sftp_addr,
                        "acme",
                        &key,
                        &format!("put {} /{name}\n", local.display()),
                    )
                    .status
                    .success()
                };
                if ok {
                    acked
                        .lock()
                        .unwrap()
                        .push((format!("/{name}"), hex::encode(Sha256::digest(&content))));
                }
                let _ = std::fs::remove_file(&local);
                i += 1;
            }
        }));
    }
    // Kill mid-stream once enough uploads went through (a loaded machine
    // takes longer).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && (started.elapsed() < Duration::from_secs(3) || acked.lock().unwrap().len() < 100)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = gw.kill9();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "too few uploads finished to prove anything: {}",
        acked.len()
    );

    // Both modes journal (durable uploads: the event synced beside the
    // upload's own sync), so the restart must store the journal's events.
    let journaled = journal_lines(dir.path());
    assert!(journaled > 0, "the audit journal holds the last events");
    let gw = Gateway::start_in(dir, config);
    let token = gw.token();
    let home = gw.home("acme");
    // The restart moves the journal into the spool, then the store.
    gw.wait_events(&token, "kind=upload&username=acme&limit=1", |_| {
        journal_lines(gw.dir.path()) == 0 && spooled(gw.dir.path()) == 0
    });
    let audited = uploads_audited(&gw, &token);
    let mut missing_event = Vec::new();
    for (path, sha) in &acked {
        let on_disk = std::fs::read(home.join(&path[1..]))
            .unwrap_or_else(|e| panic!("acknowledged {path} is missing: {e}"));
        assert_eq!(
            &hex::encode(Sha256::digest(&on_disk)),
            sha,
            "{path}: content differs from what was acknowledged"
        );
        match audited.get(path) {
            Some(s) if s == sha => {}
            other => missing_event.push((path.clone(), other.cloned())),
        }
    }
    assert!(
        missing_event.is_empty(),
        "{} of {} acknowledged uploads have no (or a wrong) audit event: {:?}",
        missing_event.len(),
        acked.len(),
        &missing_event[..missing_event.len().min(10)]
    );
    let debris: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".dropgate-part-")
        })
        .collect();
    assert!(debris.is_empty(), "temporaries left: {debris:?}");
    eprintln!(
        "{} uploads acknowledged before SIGKILL; all present with their audit event \
         ({journaled} events in the audit journal at the kill)",
        acked.len()
    );
}

/// Lines in the audit journal's files below a data folder.
fn journal_lines(data_dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(data_dir.join("data/spool/journal")) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| std::fs::read(e.path()).unwrap_or_default())
        .map(|body| body.iter().filter(|b| **b == b'\n').count())
        .sum()
}

/// Batch files waiting in the spool below a data folder.
fn spooled(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("data/spool"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sigterm_during_uploads_drains_in_time_and_leaves_no_debris() {
    dropgate_testkit::require_tool("curl", "curl");
    let gw = Gateway::start("");
    let token = gw.token();
    gw.create_user(&token, &json!({"username": "acme", "password": PASSWORD}));
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    dropgate_testkit::write_random_file(&big, 4 << 20, 9);
    let ftp = format!("ftp://acme:{PASSWORD}@{}", gw.addr("ftp"));
    let sftp = format!("sftp://acme:{PASSWORD}@{}", gw.addr("sftp"));
    // Slow uploads (4 MiB at 512 KiB/s): all are mid-stream at the signal.
    let mut clients = Vec::new();
    for i in 0..10 {
        let url = if i % 2 == 0 {
            format!("{ftp}/up-{i}.bin")
        } else {
            format!("{sftp}/up-{i}.bin")
        };
        clients.push(
            std::process::Command::new("curl")
                .args(["-s", "-k", "--limit-rate", "512k", "--max-time", "60", "-T"])
                .arg(&big)
                .arg(url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    // Wait until every upload is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = gw.api("GET", "/api/v1/sessions", Some(&token), None);
        let moving = v["items"]
            .as_array()
            .map(|s| s.iter().filter(|s| !s["transfer"].is_null()).count())
            .unwrap_or(0);
        if moving == 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uploads never started: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, took, dir) = gw.terminate();
    for mut c in clients {
        let _ = c.wait();
    }
    assert_eq!(code, Some(0), "a clean exit");
    assert!(
        took < dropgate_core::SHUTDOWN_GRACE + Duration::from_secs(5),
        "stopped in {took:?}"
    );
    let home = dir.path().join("data/files/acme");
    let names: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".dropgate-part-")),
        "temporaries left after a clean stop: {names:?}"
    );
    // Atomic uploads: an interrupted one leaves nothing under its name.
    for n in &names {
        let len = std::fs::metadata(home.join(n)).unwrap().len();
        assert_eq!(len, 4 << 20, "{n} is a partial file");
    }
}

#[test]
fn uploads_answered_from_the_page_cache_when_durability_is_off() {
    dropgate_testkit::require_tool("curl", "curl");
    let gw = Gateway::start("[storage]\ndurable_uploads = false\n");
    let token = gw.token();
    gw.create_user(&token, &json!({"username": "acme", "password": PASSWORD}));
    let work = tempfile::tempdir().unwrap();
    // A small upload's event is in the audit journal before its reply and
    // in the node's API at once (a listing stores what is queued first); a
    // large one's (beyond HASH_AFTER_REPLY_FROM, 8 MiB) once its hash is
    // done after the reply.
    let mut want = HashMap::new();
    for (len, seed, tag) in [(3 << 20, 11, "small"), (20 << 20, 12, "large")] {
        let src = work.path().join(format!("{tag}.bin"));
        let content = dropgate_testkit::write_random_file(&src, len, seed);
        let sha = hex::encode(Sha256::digest(&content));
        for proto in ["ftp", "sftp"] {
            let name = format!("{tag}-via-{proto}.bin");
            let out = std::process::Command::new("curl")
                .args(["-s", "-S", "-k", "-T"])
                .arg(&src)
                .arg(format!(
                    "{proto}://acme:{PASSWORD}@{}/{name}",
                    gw.addr(proto)
                ))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(std::fs::read(gw.home("acme").join(&name)).unwrap(), content);
            want.insert(format!("/{name}"), sha.clone());
            if tag == "small" {
                assert_eq!(
                    uploads_audited(&gw, &token).get(&format!("/{name}")),
                    Some(&sha)
                );
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let audited = uploads_audited(&gw, &token);
        if want
            .iter()
            .all(|(path, sha)| audited.get(path) == Some(sha))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audited {audited:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
