//! Mixed load (issue #17): FTP, FTPS and SFTP sessions at once against the
//! real `dropgate serve` — logins, listings, uploads and downloads with
//! SHA-256 checks — with zero errors and zero corrupted files, and the server
//! back near its memory and descriptor baseline afterwards.
//!
//! The load generator is `bench/loadgen` (also a binary: the 1,000-session,
//! 60 s variant is in its README). Here: 100 sessions for 15 s;
//! `DROPGATE_LOAD_SESSIONS` and `DROPGATE_LOAD_SECS` change that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Gateway;
use dropgate_loadgen::{LoadConfig, Op, Protocol, procstat};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// RSS may stay this far above the baseline once the load has ended. The
/// server's allocator (glibc malloc) keeps freed memory in its per-thread
/// arenas instead of returning all of it, and under load more blocking-pool
/// threads (file I/O) each touch an arena and their stacks; a leak of the
/// sessions themselves (100+ sessions, thousands of transfers of up to
/// 8 MiB) shows up far beyond this.
const RSS_SLACK: u64 = 64 * 1024 * 1024;

/// Descriptors may stay this many above the baseline: idle SQLite
/// connections the pool opened during the load beyond those the warm-up
/// opened (sqlx keeps an idle connection 10 minutes), two descriptors each
/// (the database and its WAL; measured), at most `[database]
/// max_connections` = 16 of them. Every session and data connection of the
/// load is a descriptor of its own, so a leak per connection or per transfer
/// is far larger.
const FD_SLACK: usize = 2 * 16;

fn config(gw: &Gateway, users: &[(String, String)], sessions: usize, secs: u64) -> LoadConfig {
    let mut cfg = LoadConfig::new(gw.addr("ftp"), gw.addr("sftp"), users.to_vec());
    // Explicit FTPS: AUTH TLS on the FTP listener, the generated certificate trusted.
    cfg.ftps = Some(gw.addr("ftp"));
    cfg.tls_ca = Some(gw.dir.path().join("data/ftps-cert.pem"));
    cfg.sessions = sessions;
    cfg.duration = Duration::from_secs(secs);
    cfg.ramp_up = Duration::from_secs(2);
    cfg.op_timeout = Duration::from_secs(30);
    cfg
}

#[test]
fn mixed_load_has_no_errors_and_the_server_returns_to_its_baseline() {
    let sessions = env_num("DROPGATE_LOAD_SESSIONS", 100) as usize;
    let secs = env_num("DROPGATE_LOAD_SECS", 15);
    // Every client is 127.0.0.1: lift the per-address limit (default 50)
    // and the total above the sessions (a session's previous connection may
    // still be closing on the server when its next one arrives).
    let max = (sessions * 2 + 100).max(2000);
    let gw = Gateway::start(&format!(
        "[limits]\nmax_connections = {max}\nmax_connections_per_ip = {max}\n"
    ));
    let token = gw.token();
    let users: Vec<(String, String)> = (1..=10)
        .map(|i| (format!("load{i:02}"), format!("Load-pw-{i:02}")))
        .collect();
    for (u, p) in &users {
        gw.create_user(&token, &serde_json::json!({"username": u, "password": p}));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = gw.pid();

    // Warm-up: every code path, the TLS and SSH machinery, the login cache,
    // some database connections; then the baseline.
    let mut warm = config(&gw, &users, 30, 3);
    warm.folder_prefix = "warmup-".into();
    let r = rt.block_on(dropgate_loadgen::run(&warm)).unwrap();
    assert!(r.clean(), "warm-up failed:\n{r}");
    std::thread::sleep(Duration::from_secs(2));
    let base = procstat::sample(pid).unwrap();
    let base_fds = procstat::descriptors(pid).unwrap();
    println!("server baseline after warm-up: {base}");

    let cfg = config(&gw, &users, sessions, secs);
    let t = Instant::now();
    let report = rt.block_on(dropgate_loadgen::run(&cfg)).unwrap();
    let during = procstat::sample(pid).unwrap();
    println!(
        "{sessions} sessions for {secs} s (run took {:.1} s):\n{report}",
        t.elapsed().as_secs_f64()
    );
    println!("server right after the load: {during}");

    // The server's own complaints, if any (not asserted: shown for the record).
    let log = gw.log.lock().unwrap().clone();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("panicked"))
        .collect();
    println!("server log: {} WARN/ERROR lines", bad.len());
    for l in bad.iter().take(20) {
        println!("  {l}");
    }
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");

    assert_eq!(report.corrupted(), 0, "corrupted files:\n{report}");
    assert_eq!(report.errors(), 0, "errors under load:\n{report}");
    for proto in [Protocol::Ftp, Protocol::Ftps, Protocol::Sftp] {
        let p = &report.protocols[&proto];
        assert!(p.sessions > 0, "{proto}: no sessions");
        for op in [
            Op::Login,
            Op::Mkdir,
            Op::Upload,
            Op::List,
            Op::Download,
            Op::Delete,
        ] {
            assert!(
                p.count(op) > 0,
                "{proto}: no successful {}:\n{report}",
                op.name()
            );
        }
        // Every session logged in at least once, and out again.
        assert!(p.count(Op::Login) >= p.sessions, "{proto}:\n{report}");
        assert_eq!(
            p.count(Op::Rmdir),
            p.sessions,
            "{proto}: clean-up:\n{report}"
        );
    }

    // Back to the baseline once the sessions are gone (bounded wait).
    let (after, ok) = procstat::settle(
        pid,
        base.rss + RSS_SLACK,
        base.fds + FD_SLACK,
        Duration::from_secs(20),
    )
    .unwrap();
    println!(
        "server once settled (at most 20 s): {after} (baseline {base}; allowed +{} MiB, +{FD_SLACK} descriptors)",
        RSS_SLACK / (1024 * 1024)
    );
    let added = procstat::descriptors_added(&base_fds, &procstat::descriptors(pid).unwrap());
    println!("descriptors open now that were not at the baseline: {added:?}");
    assert!(
        ok,
        "server did not return near its baseline: {after}, baseline {base}"
    );
}
