//! Several nodes on one PostgreSQL (a private cluster of the test's own):
//! each lists the other in `GET /api/v1/nodes`, an account and an admin
//! token made on one work on the other, both present the same host keys and
//! certificate, a ban made on one holds on the other (and a lift on either
//! ends it), and a node that stops drops out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, PrivatePostgres, connect_from, curl, require_tool};
use serde_json::json;

const PASSWORD: &str = "Right-pass-1";
/// Long enough for one node to publish its sessions and another to read
/// them (two rounds of 2 s, with room to spare).
const SYNC_TWICE: Duration = Duration::from_secs(5);

/// The node names `gw` lists, waiting (up to 15 s) until `want` holds.
fn nodes_until(
    gw: &Gateway,
    token: &str,
    want: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v) = gw.api("GET", "/api/v1/nodes", Some(token), None);
        assert_eq!(status, 200, "{v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if want(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "nodes never matched: {items:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names(items: &[serde_json::Value]) -> Vec<&str> {
    items.iter().filter_map(|n| n["name"].as_str()).collect()
}

#[test]
fn two_nodes_on_one_postgres_see_each_other_share_accounts_and_part_cleanly() {
    require_tool("curl", "curl");
    let pg = PrivatePostgres::start();
    let config = |name: &str| {
        format!(
            "[database]\nurl = {:?}\n[cluster]\nnode_name = {name:?}\n\
             [limits]\nlogin_failures_before_ban = 3\n",
            pg.url()
        )
    };
    let n1 = Gateway::start(&config("n1"));
    // The first node made the first admin; the second finds it in the store.
    let n2 = Gateway::start_next_node(&n1, &config("n2"), &[]);

    // A token from one node is good on the other (tokens live in the store).
    let token = n1.token();
    let items = nodes_until(&n1, &token, |items| names(items) == ["n1", "n2"]);
    let sftp2 = format!("sftp {}", n2.addr("sftp"));
    assert!(
        items[1]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == sftp2.as_str()),
        "{items:#?}"
    );
    assert!(items[0]["version"].is_string() && items[0]["last_seen_at"].is_string());
    nodes_until(&n2, &token, |items| names(items) == ["n1", "n2"]);

    // An account made through one node logs in on the other at once.
    n1.create_user(
        &token,
        &json!({"username": "partner", "password": PASSWORD}),
    );
    let out = curl(&[&format!("ftp://partner:{PASSWORD}@{}/", n2.addr("ftp"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both present the same SSH host keys and FTPS certificate: the second
    // node took the first one's from the store instead of generating its own.
    for alg in ["ssh-ed25519", "rsa-sha2-512"] {
        let (k1, k2) = (
            host_key(n1.addr("sftp"), alg),
            host_key(n2.addr("sftp"), alg),
        );
        assert!(k1.starts_with("ssh-") && k1.contains(" AAAA"), "{k1}");
        assert_eq!(k1, k2, "{alg}");
    }
    let (c1, c2) = (ftps_cert(n1.addr("ftp")), ftps_cert(n2.addr("ftp")));
    assert!(c1.contains("BEGIN CERTIFICATE"), "{c1}");
    assert_eq!(c1, c2);
    assert!(!n2.log.lock().unwrap().contains("generated SSH host key"));
    assert!(
        n2.log
            .lock()
            .unwrap()
            .contains("took the cluster's key from the store")
    );

    // A ban made on one node holds on the other within a few seconds, and a
    // lift on the other ends it on both.
    for _ in 0..3 {
        let out = curl(&[
            "--interface",
            "127.0.0.6",
            &format!("ftp://partner:wrong@{}/", n1.addr("ftp")),
        ]);
        assert!(!out.status.success());
    }
    let refused_on_n2 = || {
        let mut s = connect_from("127.0.0.6", n2.addr("ftp"));
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut s), &mut line);
        line.starts_with("421")
    };
    wait_until("the ban to reach n2", &refused_on_n2);
    let (status, bans) = n2.api("GET", "/api/v1/bans", Some(&token), None);
    assert_eq!(status, 200);
    assert_eq!(bans["items"][0]["ip"], "127.0.0.6", "{bans}");
    let (status, _) = n2.api("DELETE", "/api/v1/bans/127.0.0.6", Some(&token), None);
    assert_eq!(status, 204);
    wait_until("the lift to reach n1", &|| {
        curl(&[
            "--interface",
            "127.0.0.6",
            &format!("ftp://partner:{PASSWORD}@{}/", n1.addr("ftp")),
        ])
        .status
        .success()
    });
    assert!(!refused_on_n2());

    // Sessions: one node lists the other's, `max_sessions` counts both, and
    // a session is ended from the node that does not hold it.
    n1.create_user(
        &token,
        &json!({"username": "solo", "password": PASSWORD, "max_sessions": 1}),
    );
    let mut held = ftp_login_raw(n2.addr("ftp"), "solo");
    let listed = wait_for("n2's session listed on n1", || {
        let (status, v) = n1.api("GET", "/api/v1/sessions", Some(&token), None);
        assert_eq!(status, 200, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["username"] == "solo")
            .cloned()
    });
    assert_eq!(listed["node"], "n2", "{listed}");
    assert_eq!(listed["protocol"], "ftp");
    // (A refused login counts as a failed one: one try from an address of
    // its own after the counts had time to travel, so no ban gets in the way.)
    let solo_on_n1 = || {
        curl(&[
            "--interface",
            "127.0.0.7",
            &format!("ftp://solo:{PASSWORD}@{}/", n1.addr("ftp")),
        ])
        .status
        .success()
    };
    std::thread::sleep(SYNC_TWICE);
    assert!(!solo_on_n1(), "n1 let solo in past max_sessions = 1");
    let id = listed["id"].as_str().unwrap();
    let (status, v) = n1.api(
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 204, "{v}");
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut held, &mut rest);
    assert!(
        rest.contains("421"),
        "the held session was not ended: {rest:?}"
    );
    std::thread::sleep(SYNC_TWICE);
    assert!(solo_on_n1(), "the ended session still holds solo's place");
    let (status, _) = n1.api(
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 404);

    // An account disabled through one node loses its sessions on the other.
    let mut held = ftp_login_raw(n2.addr("ftp"), "solo");
    std::thread::sleep(SYNC_TWICE);
    let (status, v) = n1.api(
        "PATCH",
        "/api/v1/users/solo",
        Some(&token),
        Some(r#"{"enabled": false}"#),
    );
    assert_eq!(status, 200, "{v}");
    held.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut held, &mut rest);
    assert!(
        rest.contains("421"),
        "n2 kept the disabled account's session: {rest:?}"
    );

    // A node that stops leaves the list at once.
    let (code, _, _) = n2.terminate();
    assert_eq!(code, Some(0));
    nodes_until(&n1, &token, |items| names(items) == ["n1"]);
}

/// The host key of type `alg` the SSH listener at `addr` presents, as
/// `ssh-keyscan` (OpenSSH) reads it: "type base64".
fn host_key(addr: std::net::SocketAddr, alg: &str) -> String {
    require_tool("ssh-keyscan", "openssh-client");
    let out = std::process::Command::new("ssh-keyscan")
        .args(["-T", "10", "-t", alg, "-p", &addr.port().to_string()])
        .arg(addr.ip().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap_or_else(|| panic!("no {alg} key from {addr}: {out:?}"));
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The certificate the FTP listener at `addr` presents after AUTH TLS.
fn ftps_cert(addr: std::net::SocketAddr) -> String {
    require_tool("openssl", "openssl");
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "ftp",
            "-connect",
            &addr.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    match (begin, end) {
        (Some(b), Some(e)) => text[b..e].to_owned(),
        _ => panic!("no certificate from {addr}: {text}"),
    }
}

/// Waits (up to 10 s: a few ban exchanges) until `cond` holds.
fn wait_until(what: &str, cond: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (up to 10 s) until `get` returns something.
fn wait_for<T>(what: &str, get: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = get() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A logged-in FTP control connection, left open.
fn ftp_login_raw(addr: std::net::SocketAddr, user: &str) -> std::net::TcpStream {
    use std::io::{BufRead, BufReader, Write};
    let mut s = connect_from("127.0.0.1", addr);
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "{line}");
    write!(s, "USER {user}\r\nPASS {PASSWORD}\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("230") {
            return s;
        }
        assert!(line.starts_with("331"), "login failed: {line}");
    }
}
