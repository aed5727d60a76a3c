//! End to end through the real binary: an operator provisions over REST, a
//! partner moves files over FTP and SFTP with real clients, the operator
//! disables, kicks and deletes, and the audit log proves what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, curl, sftp_batch, sftp_command, ssh_key};
use dropgate_testkit::write_random_file;

fn sha256_file(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn user_lifecycle_over_rest_ftp_and_sftp() {
    let gw = Gateway::start("");
    let token = gw.token();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(work.path(), "partner");

    // The operator creates a partner inbox over REST.
    let body = serde_json::json!({
        "username": "acme",
        "password": "S3cure-pass",
        "public_keys": [public],
        "permissions": {"/": ["list"], "/inbox": ["list", "upload", "mkdir"], "/outbox": ["list", "download"]},
    });
    let user = gw.create_user(&token, &body);
    assert!(!user.to_string().contains("S3cure-pass") && !user.to_string().contains("argon2"));
    std::fs::create_dir_all(gw.home("acme").join("outbox")).unwrap();
    std::fs::create_dir_all(gw.home("acme").join("inbox")).unwrap();
    std::fs::write(
        gw.home("acme").join("outbox/prices.csv"),
        "sku,price\n1,9.99\n",
    )
    .unwrap();

    // FTP with the password: upload into the inbox, refused at the root.
    let local = work.path().join("orders.csv");
    write_random_file(&local, 300_000, 1);
    let ftp = gw.addr("ftp");
    let out = curl(&[
        "-T",
        local.to_str().unwrap(),
        &format!("ftp://acme:S3cure-pass@{ftp}/inbox/orders.csv"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = curl(&[
        "-T",
        local.to_str().unwrap(),
        &format!("ftp://acme:S3cure-pass@{ftp}/orders.csv"),
    ]);
    assert!(
        !out.status.success(),
        "upload outside the inbox must be refused"
    );

    // SFTP with the key sees the same file at once (listed with its size), may
    // not read it back (the inbox is write-only), and can fetch from the outbox.
    let on_disk = gw.home("acme").join("inbox/orders.csv");
    assert_eq!(
        std::fs::read(&on_disk).unwrap(),
        std::fs::read(&local).unwrap(),
        "byte-identical"
    );
    let out = sftp_batch(
        gw.addr("sftp"),
        "acme",
        &key,
        &format!(
            "ls -l /inbox\nget /outbox/prices.csv {}\n-get /inbox/orders.csv {}\n",
            work.path().join("p.csv").display(),
            work.path().join("back.csv").display()
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("orders.csv") && listing.contains("300000"),
        "{listing}"
    );
    assert_eq!(
        std::fs::read(work.path().join("p.csv")).unwrap(),
        b"sku,price\n1,9.99\n"
    );
    assert!(
        !work.path().join("back.csv").exists(),
        "download from the inbox must be refused"
    );
    // Permission refusals are ordinary errors, not disconnects.
    let out = sftp_batch(
        gw.addr("sftp"),
        "acme",
        &key,
        "-rm /outbox/prices.csv\nls /inbox\n",
    );
    assert!(
        out.status.success(),
        "session survives a refusal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gw.home("acme").join("outbox/prices.csv").exists());

    // Disabled: both protocols refuse, with the same failure as a wrong password.
    let (status, _) = gw.api(
        "PATCH",
        "/api/v1/users/acme",
        Some(&token),
        Some(r#"{"enabled": false}"#),
    );
    assert_eq!(status, 200);
    let refused = curl(&[&format!("ftp://acme:S3cure-pass@{ftp}/inbox/")]);
    let wrong_pw = curl(&[&format!("ftp://acme:wrong@{ftp}/inbox/")]);
    assert_eq!(refused.status.code(), Some(67), "curl: login denied");
    assert_eq!(refused.status.code(), wrong_pw.status.code());
    let out = sftp_batch(gw.addr("sftp"), "acme", &key, "ls /\n");
    assert!(
        !out.status.success(),
        "disabled account must not log in over SFTP"
    );

    // Enabled again, then deleted: refused, files kept.
    let (status, _) = gw.api(
        "PATCH",
        "/api/v1/users/acme",
        Some(&token),
        Some(r#"{"enabled": true}"#),
    );
    assert_eq!(status, 200);
    let ok = curl(&[&format!("ftp://acme:S3cure-pass@{ftp}/inbox/")]);
    assert!(ok.status.success());
    let (status, _) = gw.api("DELETE", "/api/v1/users/acme", Some(&token), None);
    assert_eq!(status, 204);
    let out = curl(&[&format!("ftp://acme:S3cure-pass@{ftp}/inbox/")]);
    assert_eq!(out.status.code(), Some(67));
    assert!(
        !sftp_batch(gw.addr("sftp"), "acme", &key, "ls /\n")
            .status
            .success()
    );
    assert!(
        gw.home("acme").join("inbox/orders.csv").exists(),
        "files are kept unless delete_files=true"
    );
}

#[test]
fn admin_kick_ends_live_ftp_and_sftp_sessions() {
    let gw = Gateway::start("");
    let token = gw.token();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(work.path(), "kick");
    let body =
        serde_json::json!({"username": "bob", "password": "pw-bob-123", "public_keys": [public]});
    gw.create_user(&token, &body);

    // A live FTP session (raw control connection) ...
    let ctl = TcpStream::connect(gw.addr("ftp")).unwrap();
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(ctl.try_clone().unwrap());
    let mut w = ctl;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "{line}");
    for (cmd, want) in [("USER bob", "331"), ("PASS pw-bob-123", "230")] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with(want), "{cmd}: {line}");
    }
    // ... and a live SFTP session (interactive client waiting on stdin).
    let mut sftp = sftp_command(gw.addr("sftp"), "bob", &key)
        .args(["-b", "-"])
        .arg(format!("bob@{}", gw.addr("sftp").ip()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sftp_in = sftp.stdin.take().unwrap();
    sftp_in.write_all(b"pwd\n").unwrap();

    // Both show up in the sessions list.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sessions = loop {
        let (status, v) = gw.api("GET", "/api/v1/sessions", Some(&token), None);
        assert_eq!(status, 200);
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if items.iter().any(|s| s["protocol"] == "sftp")
            && items.iter().any(|s| s["protocol"] == "ftp")
        {
            break items;
        }
        assert!(Instant::now() < deadline, "sessions not listed: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for s in &sessions {
        assert_eq!(s["username"], "bob");
        let id = s["id"].as_str().unwrap();
        assert_eq!(
            gw.api(
                "DELETE",
                &format!("/api/v1/sessions/{id}"),
                Some(&token),
                None
            )
            .0,
            204
        );
    }

    // FTP: 421 then close.
    line.clear();
    let n = reader.read_line(&mut line).unwrap_or(0);
    assert!(
        n == 0 || line.starts_with("421"),
        "expected 421 or close, got {line:?}"
    );
    // SFTP: the client (which only notices at its next command) finds the
    // connection gone: the command fails, where a live session would succeed.
    std::thread::sleep(Duration::from_millis(500));
    let _ = sftp_in.write_all(b"ls /\n");
    drop(sftp_in);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = sftp.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "sftp client still connected after the kick"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the kicked SFTP session must be gone");
    let (_, v) = gw.api("GET", "/api/v1/sessions", Some(&token), None);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{v}");
}

#[test]
fn audit_events_record_real_transfers_with_sha256() {
    let gw = Gateway::start("");
    let token = gw.token();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(work.path(), "audit");
    let body =
        serde_json::json!({"username": "carol", "password": "pw-carol-1", "public_keys": [public]});
    gw.create_user(&token, &body);

    // Both cross several 8 MiB write-back windows (crates/vfs/src/writeback.rs);
    // OpenSSH's pipelined 32 KiB writes may arrive out of order.
    let up_ftp = work.path().join("a.bin");
    write_random_file(&up_ftp, 20 * 1024 * 1024 + 7, 2);
    let up_sftp = work.path().join("b.bin");
    write_random_file(&up_sftp, 17 * 1024 * 1024 + 1, 3);
    // Small ones are hashed before the commit returns, large ones in the
    // background (crates/core/src/session.rs, INLINE_HASH_MAX).
    let small_ftp = work.path().join("s.bin");
    write_random_file(&small_ftp, 4096 + 3, 4);
    let small_sftp = work.path().join("t.bin");
    write_random_file(&small_sftp, 64 * 1024, 5);
    let ftp = gw.addr("ftp");
    for (local, name) in [(&up_ftp, "a.bin"), (&small_ftp, "s.bin")] {
        assert!(
            curl(&[
                "-T",
                local.to_str().unwrap(),
                &format!("ftp://carol:pw-carol-1@{ftp}/{name}")
            ])
            .status
            .success()
        );
    }
    let out = sftp_batch(
        gw.addr("sftp"),
        "carol",
        &key,
        &format!(
            "put {} /b.bin\nput {} /t.bin\nmkdir /d\nrename /b.bin /d/b.bin\nget /a.bin {}\nrm /a.bin\n",
            up_sftp.display(),
            small_sftp.display(),
            work.path().join("x").display()
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !curl(&[&format!("ftp://carol:nope@{ftp}/")])
            .status
            .success()
    );

    let events = gw.wait_events(&token, "username=carol&kind=upload", |items| {
        items.len() >= 4 && items.iter().all(|e| e["sha256"].is_string())
    });
    let by_path = |p: &str| events.iter().find(|e| e["path"] == p).unwrap().clone();
    let a = by_path("/a.bin");
    assert_eq!(a["protocol"], "ftp");
    assert_eq!(a["outcome"], "ok");
    assert_eq!(a["bytes"], 20 * 1024 * 1024 + 7);
    // Read back over SFTP (page-cache reads) before it was removed: byte-identical.
    assert!(std::fs::read(work.path().join("x")).unwrap() == std::fs::read(&up_ftp).unwrap());
    assert_eq!(a["sha256"].as_str().unwrap(), sha256_file(&up_ftp));
    let b = by_path("/b.bin");
    assert_eq!(b["protocol"], "sftp");
    assert_eq!(b["sha256"].as_str().unwrap(), sha256_file(&up_sftp));
    for (path, local) in [("/s.bin", &small_ftp), ("/t.bin", &small_sftp)] {
        let e = by_path(path);
        assert_eq!(e["sha256"].as_str().unwrap(), sha256_file(local), "{path}");
        assert_eq!(
            e["bytes"],
            std::fs::metadata(local).unwrap().len(),
            "{path}"
        );
    }
    assert!(a["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));

    let all = gw.wait_events(&token, "username=carol&limit=100", |items| {
        ["download", "rename", "mkdir", "delete"]
            .iter()
            .all(|k| items.iter().any(|e| e["kind"] == *k))
    });
    let rename = all.iter().find(|e| e["kind"] == "rename").unwrap();
    assert_eq!(rename["path"], "/b.bin");
    assert_eq!(rename["target_path"], "/d/b.bin");
    let failed_login = all
        .iter()
        .find(|e| e["kind"] == "login" && e["outcome"] == "failed")
        .unwrap();
    assert_eq!(failed_login["protocol"], "ftp");
}

#[test]
fn ftps_explicit_and_implicit_listeners_share_one_filesystem() {
    let gw = Gateway::start("[ftps]\nimplicit_listen = \"127.0.0.1:0\"\n");
    let token = gw.token();
    let body = serde_json::json!({"username": "dana", "password": "pw-dana-1"});
    gw.create_user(&token, &body);
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("tls.bin");
    write_random_file(&local, 2_000_000, 6);
    let (ftp, ftps) = (gw.addr("ftp"), gw.addr("ftps"));

    // Up over explicit AUTH TLS (PROT P data), down over the implicit listener.
    let up = curl(&[
        "--ssl-reqd",
        "-k",
        "-T",
        local.to_str().unwrap(),
        &format!("ftp://dana:pw-dana-1@{ftp}/tls.bin"),
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let back = work.path().join("back.bin");
    let down = curl(&[
        "-k",
        "-o",
        back.to_str().unwrap(),
        &format!("ftps://dana:pw-dana-1@{ftps}/tls.bin"),
    ]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&local).unwrap()
    );
    // The generated certificate persists in data_dir.
    assert!(gw.dir.path().join("data/ftps-cert.pem").is_file());

    let events = gw.wait_events(&token, "username=dana&limit=50", |items| {
        items
            .iter()
            .any(|e| e["kind"] == "upload" && e["sha256"].is_string())
            && items.iter().any(|e| e["kind"] == "download")
    });
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] != "account_changed")
            .all(|e| e["protocol"] == "ftps"),
        "TLS sessions are audited as ftps: {events:#?}"
    );
}
