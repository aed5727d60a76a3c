//! The policy layer through the real binary and real clients: connection
//! caps across listeners, the ban list shared by FTP, SFTP and the admin
//! login (listed and lifted over REST), the FTP login grace, and the
//! per-account rules (expiry, disabled, source address, protocol, sessions).
//!
//! Clients that must come from "another" address bind to 127.0.0.2 (curl
//! `--interface`, OpenSSH `BindAddress`): the whole 127/8 is loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Gateway, connect_from, curl, require_tool};
use serde_json::json;

const PASSWORD: &str = "Right-pass-1";

/// The first line the server sends ("" if it closed without a word).
fn first_line(stream: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.trim_end().to_owned()
}

/// Whether the server closed the connection without sending anything.
fn closed_silently(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// `curl ftp://user:pw@addr/` (a directory listing) from `local`.
fn ftp_login(gw: &Gateway, local: &str, user: &str, password: &str) -> Output {
    curl(&[
        "--interface",
        local,
        "--max-time",
        "20",
        &format!("ftp://{user}:{password}@{}/", gw.addr("ftp")),
    ])
}

/// An OpenSSH `sftp` password login from `local`, running `ls` (one try).
fn sftp_password(gw: &Gateway, local: &str, user: &str, password: &str) -> Output {
    common::sftp_password(gw.addr("sftp"), local, user, password, "ls\nquit\n")
}

/// `POST /api/v1/auth/token` from `local`: the HTTP status.
fn admin_login(gw: &Gateway, local: &str, password: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            local,
        ])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(json!({"username": "admin", "password": password}).to_string())
        .arg(format!("http://{}/api/v1/auth/token", gw.addr("admin")))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn create_partner(gw: &Gateway, token: &str, name: &str, extra: serde_json::Value) {
    let mut body = json!({"username": name, "password": PASSWORD});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    gw.create_user(token, &body);
}

#[test]
fn failed_logins_on_any_protocol_ban_the_source_everywhere_until_lifted() {
    require_tool("curl", "curl");
    let gw = Gateway::start("[limits]\nlogin_failures_before_ban = 10\n");
    let token = gw.token();
    create_partner(&gw, &token, "acme", json!({}));
    // A connection admitted before the ban, to log in after it.
    let early = connect_from("127.0.0.1", gw.addr("ftp"));
    assert!(first_line(&early).starts_with("220"));

    // 4 over FTP, 3 over SFTP, 3 at the admin login: 10 failures in all.
    for _ in 0..4 {
        let out = ftp_login(&gw, "127.0.0.1", "acme", "wrong");
        assert_eq!(out.status.code(), Some(67), "curl: login denied");
    }
    for _ in 0..3 {
        let out = sftp_password(&gw, "127.0.0.1", "acme", "wrong");
        assert!(!out.status.success());
    }
    for _ in 0..2 {
        assert_eq!(admin_login(&gw, "127.0.0.1", "wrong"), 401);
    }
    // The tenth failure is still answered as a failure...
    assert_eq!(admin_login(&gw, "127.0.0.1", "wrong"), 401);
    // ...and from now on the right secrets do not help from this source.
    let started = Instant::now();
    let mut c = connect_from("127.0.0.1", gw.addr("ftp"));
    assert!(
        first_line(&c).starts_with("421 "),
        "a banned source gets 421 at once"
    );
    let _ = c.write_all(b"USER acme\r\n");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(closed_silently(connect_from("127.0.0.1", gw.addr("sftp"))));
    let out = ftp_login(&gw, "127.0.0.1", "acme", PASSWORD);
    assert!(!out.status.success());
    let out = sftp_password(&gw, "127.0.0.1", "acme", PASSWORD);
    assert!(!out.status.success());
    assert_eq!(admin_login(&gw, "127.0.0.1", &gw.admin_password), 429);

    // Another source is served on every protocol meanwhile.
    let out = ftp_login(&gw, "127.0.0.2", "acme", PASSWORD);
    assert!(out.status.success(), "{out:?}");
    let out = sftp_password(&gw, "127.0.0.2", "acme", PASSWORD);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(admin_login(&gw, "127.0.0.2", &gw.admin_password), 200);

    // Listed over REST (the token from before the ban still works)...
    let (status, bans) = gw.api("GET", "/api/v1/bans", Some(&token), None);
    assert_eq!(status, 200, "{bans}");
    let items = bans["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{bans}");
    assert_eq!(items[0]["ip"], "127.0.0.1");
    assert_eq!(items[0]["failures"], 10);
    assert!(items[0]["expires_at"].as_str().unwrap() > items[0]["banned_at"].as_str().unwrap());
    let (status, metrics) = (200, metrics(&gw));
    assert_eq!(status, 200);
    assert!(metrics.contains("dropgate_bans_total 1"), "{metrics}");
    assert!(metrics.contains("dropgate_banned_sources 1"), "{metrics}");

    // ...and lifted.
    let (status, _) = gw.api("DELETE", "/api/v1/bans/10.9.9.9", Some(&token), None);
    assert_eq!(status, 404);
    let (status, v) = gw.api("DELETE", "/api/v1/bans/not-an-ip", Some(&token), None);
    assert_eq!(status, 422, "{v}");
    let (status, _) = gw.api("DELETE", "/api/v1/bans/127.0.0.1", Some(&token), None);
    assert_eq!(status, 204);
    let out = ftp_login(&gw, "127.0.0.1", "acme", PASSWORD);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(admin_login(&gw, "127.0.0.1", &gw.admin_password), 200);
    let (_, bans) = gw.api("GET", "/api/v1/bans", Some(&token), None);
    assert_eq!(bans["items"].as_array().unwrap().len(), 0);

    // A connection admitted before the ban cannot log in after it either
    // (the ban was lifted above, so ban again through it first).
    let mut r = BufReader::new(early.try_clone().unwrap());
    let mut w = early;
    let mut line = String::new();
    // (Nine here: an FTP connection ends itself after ten refused commands.)
    for _ in 0..9 {
        write!(w, "USER acme\r\nPASS wrong\r\n").unwrap();
        for _ in 0..2 {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        assert_eq!(line.trim_end(), "530 Login incorrect.");
    }
    assert_eq!(
        ftp_login(&gw, "127.0.0.1", "acme", "wrong").status.code(),
        Some(67)
    );
    write!(w, "USER acme\r\nPASS {PASSWORD}\r\n").unwrap();
    for _ in 0..2 {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    assert_eq!(
        line.trim_end(),
        "421 Too many failed logins from your address; try again later."
    );
    // The refusal is in the audit log.
    gw.wait_events(&token, "username=acme&kind=login", |items| {
        items
            .iter()
            .any(|e| e["message"] == "source banned" && e["outcome"] == "denied")
    });
}

fn metrics(gw: &Gateway) -> String {
    let out = Command::new("curl")
        .args(["-s"])
        .arg(format!("http://{}/metrics", gw.addr("admin")))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_burst_of_parallel_admin_login_failures_cannot_exceed_the_limit() {
    require_tool("curl", "curl");
    let gw = Gateway::start("[limits]\nlogin_failures_before_ban = 10\n");
    // 40 wrong passwords at once: each is counted before its (slow, argon2)
    // verification, so exactly 10 are ever verified.
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| s.spawn(|| admin_login(&gw, "127.0.0.1", "wrong")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let verified = codes.iter().filter(|c| **c == 401).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert_eq!((verified, refused), (10, 30), "{codes:?}");
}

#[test]
fn connection_caps_count_every_listener_per_source_and_in_total() {
    let gw = Gateway::start("[limits]\nmax_connections = 8\nmax_connections_per_ip = 5\n");
    let mut held = Vec::new();
    // Five from 127.0.0.1, across FTP and SFTP.
    for i in 0..5 {
        let listener = if i % 2 == 0 { "ftp" } else { "sftp" };
        let c = connect_from("127.0.0.1", gw.addr(listener));
        let greeting = first_line(&c);
        assert!(
            greeting.starts_with("220 ") || greeting.starts_with("SSH-2.0-"),
            "{greeting}"
        );
        held.push(c);
    }
    // The sixth is refused at once, on either listener...
    let started = Instant::now();
    let c = connect_from("127.0.0.1", gw.addr("ftp"));
    assert_eq!(first_line(&c), "421 Too many connections.");
    assert!(closed_silently(connect_from("127.0.0.1", gw.addr("sftp"))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused quickly"
    );
    // ...while another source is served.
    for listener in ["ftp", "ftp", "sftp"] {
        let c = connect_from("127.0.0.2", gw.addr(listener));
        assert!(!first_line(&c).is_empty(), "127.0.0.2 is served");
        held.push(c);
    }
    // Eight in all: a third source finds the server full on both listeners.
    let c = connect_from("127.0.0.3", gw.addr("ftp"));
    assert_eq!(first_line(&c), "421 Too many connections.");
    assert!(closed_silently(connect_from("127.0.0.3", gw.addr("sftp"))));
    // Places come back when connections end.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = connect_from("127.0.0.3", gw.addr("ftp"));
        if first_line(&c).starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "places were not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ftp_clients_must_log_in_within_the_grace_time_whatever_they_send() {
    let gw = Gateway::start("[limits]\nlogin_grace_secs = 2\n");
    let mut c = connect_from("127.0.0.1", gw.addr("ftp"));
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "{line}");
    let started = Instant::now();
    // NOOP and FEAT keep an idle timer alive, but not the login grace.
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(6) {
        if c.write_all(b"NOOP\r\n").is_err() {
            break;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => last = line.trim_end().to_owned(),
        }
        if last.starts_with("421") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(last, "421 Login timeout.");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn account_rules_refuse_logins_with_the_generic_failure() {
    require_tool("curl", "curl");
    // Many refusals below: keep them from banning the test's own address.
    let gw = Gateway::start("[limits]\nlogin_failures_before_ban = 1000\n");
    let token = gw.token();
    create_partner(
        &gw,
        &token,
        "expired",
        json!({"expires_at": "2020-01-01T00:00:00Z"}),
    );
    create_partner(&gw, &token, "off", json!({"enabled": false}));
    create_partner(
        &gw,
        &token,
        "elsewhere",
        json!({"allowed_ips": ["10.1.0.0/16"]}),
    );
    create_partner(&gw, &token, "sftponly", json!({"protocols": ["sftp"]}));
    create_partner(&gw, &token, "single", json!({"max_sessions": 1}));
    create_partner(&gw, &token, "fine", json!({"allowed_ips": ["127.0.0.0/8"]}));

    // Over FTP every refusal reads exactly like a wrong password.
    let reply = |user: &str, pw: &str| {
        let c = connect_from("127.0.0.1", gw.addr("ftp"));
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        write!(w, "USER {user}\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        write!(w, "PASS {pw}\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        (line.trim_end().to_owned(), w, r)
    };
    let wrong = reply("fine", "nope").0;
    assert_eq!(wrong, "530 Login incorrect.");
    for user in ["expired", "off", "elsewhere", "sftponly"] {
        assert_eq!(reply(user, PASSWORD).0, wrong, "{user}");
    }
    assert!(reply("fine", PASSWORD).0.starts_with("230"));
    // SFTP refuses the same accounts, and lets `sftponly` in.
    for user in ["expired", "off", "elsewhere"] {
        let out = sftp_password(&gw, "127.0.0.1", user, PASSWORD);
        assert!(!out.status.success(), "{user}");
    }
    let out = sftp_password(&gw, "127.0.0.1", "sftponly", PASSWORD);
    assert!(out.status.success(), "{out:?}");

    // max_sessions = 1: a second login, on any protocol, is refused while
    // the first lasts, and allowed once it has ended.
    let (first, mut w, _r) = reply("single", PASSWORD);
    assert!(first.starts_with("230"), "{first}");
    assert_eq!(reply("single", PASSWORD).0, wrong);
    let out = sftp_password(&gw, "127.0.0.1", "single", PASSWORD);
    assert!(!out.status.success());
    let _ = w.write_all(b"QUIT\r\n");
    drop((w, _r));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, _, _) = reply("single", PASSWORD);
        if r.starts_with("230") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session's place never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The reasons are in the audit log, not in the replies.
    let token = gw.token();
    for (user, why) in [
        ("expired", "account expired"),
        ("off", "account disabled"),
        ("elsewhere", "source address not allowed"),
        ("sftponly", "protocol not allowed"),
        ("single", "too many sessions"),
    ] {
        gw.wait_events(&token, &format!("username={user}&kind=login"), |items| {
            items.iter().any(|e| e["message"] == why)
        });
    }
}

/// Runs `curl` with `args` (asserting success), returning when its transfer
/// started and ended, in seconds from its start, by curl's own clock. The
/// login before the transfer (an argon2 hash, an SSH key exchange) is not the
/// limit under test and, on a slow machine running other tests, took over a
/// second: rates are taken over the transfer alone.
fn timed_curl(args: &[&str]) -> (f64, f64) {
    let mut all = vec!["-w", "\n%{time_pretransfer} %{time_total}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let times: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(times.len(), 2, "curl {args:?} printed no times: {text}");
    (times[0], times[1])
}

/// How long a transfer took, login excluded.
fn transfer_secs(args: &[&str]) -> f64 {
    let (start, end) = timed_curl(args);
    end - start
}

#[test]
fn bandwidth_limits_hold_on_every_protocol_and_are_shared() {
    require_tool("curl", "curl");
    let gw = Gateway::start("");
    let token = gw.token();
    create_partner(
        &gw,
        &token,
        "slow",
        json!({"bandwidth": {"upload_kib_s": 1024, "download_kib_s": 1024}}),
    );
    const SIZE: u64 = 3 * 1024 * 1024;
    let src = gw.dir.path().join("three-mib.bin");
    dropgate_testkit::write_random_file(&src, SIZE as usize, 7);
    let src = src.to_str().unwrap().to_owned();
    let ftp = format!("ftp://slow:{PASSWORD}@{}", gw.addr("ftp"));
    let sftp = format!("sftp://slow:{PASSWORD}@{}", gw.addr("sftp"));
    // 1 MiB/s each way: 3 MiB take about 3 s (a burst of 1/8 s aside).
    let within = |secs: f64, what: &str| {
        let rate = SIZE as f64 / secs / (1024.0 * 1024.0);
        assert!(
            (0.8..=1.2).contains(&rate),
            "{what}: {rate:.2} MiB/s in {secs:.2} s"
        );
    };
    within(
        transfer_secs(&["-T", &src, &format!("{ftp}/up.bin")]),
        "FTP upload",
    );
    within(
        transfer_secs(&["-o", "/dev/null", &format!("{ftp}/up.bin")]),
        "FTP download",
    );
    within(
        transfer_secs(&["-k", "-T", &src, &format!("{sftp}/up2.bin")]),
        "SFTP upload",
    );
    within(
        transfer_secs(&["-k", "-o", "/dev/null", &format!("{sftp}/up2.bin")]),
        "SFTP download",
    );
    // Two downloads at once (FTP and SFTP) share the account's 1 MiB/s:
    // both curls start together, so the span from the first transfer's start
    // to the last one's end carries both files at the account's rate (one
    // that logs in later finds the other alone at the full rate meanwhile).
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| timed_curl(&["-o", "/dev/null", &format!("{ftp}/up.bin")]));
        let b = s.spawn(|| timed_curl(&["-k", "-o", "/dev/null", &format!("{sftp}/up2.bin")]));
        (a.join().unwrap(), b.join().unwrap())
    });
    // Shared, each takes about twice as long as alone: the two must overlap
    // for most of the span (accounts with a bucket each would pass the rate
    // below if one login came seconds after the other).
    assert!(
        a.0.max(b.0) < a.1.min(b.1) - 1.5,
        "the downloads barely overlapped: FTP {a:.2?} s, SFTP {b:.2?} s"
    );
    let together = a.1.max(b.1) - a.0.min(b.0);
    let rate = 2.0 * SIZE as f64 / together / (1024.0 * 1024.0);
    assert!(
        (0.8..=1.2).contains(&rate),
        "shared: {rate:.2} MiB/s (FTP {a:.2?} s, SFTP {b:.2?} s from start to end)"
    );

    // The REST usage is what the home holds.
    let (status, user) = gw.api("GET", "/api/v1/users/slow", Some(&token), None);
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        user["usage"],
        json!({"bytes": 2 * SIZE, "files": 2}),
        "{user}"
    );
}
