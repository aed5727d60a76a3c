//! Event rules end to end (SPEC 8): the real server, real clients (curl over
//! FTP and SFTP), a real HTTP receiver on loopback, rules made over REST.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, curl};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PASSWORD: &str = "Correct-Horse-9";
const SECRET: &str = "s3cret-for-hmac";
const ALLOW_LOOPBACK: &str = "[events]\nallowed_webhook_hosts = [\"127.0.0.1\"]\n";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 receiver on loopback that records every request and
/// answers with a fixed status (and `Location`, for redirects).
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(status: u16, location: Option<String>) -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), status, location)
    }

    fn start_on(listener: TcpListener, status: u16, location: Option<String>) -> Receiver {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, c, s) = (hits.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                h.lock().unwrap().push(Hit { headers, body });
                let extra = location
                    .as_ref()
                    .map(|l| format!("Location: {l}\r\n"))
                    .unwrap_or_default();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver {
            addr,
            hits,
            connections,
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn wait_hits(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n} requests",
                hits.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn verify_signature(hit: &Hit) {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&hit.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        hit.headers.get("x-dropgate-signature"),
        Some(&expected),
        "signature of {:?}",
        String::from_utf8_lossy(&hit.body)
    );
}

fn setup(extra: &str) -> (Gateway, String) {
    let gw = Gateway::start(extra);
    let token = gw.token();
    gw.create_user(&token, &json!({"username": "acme", "password": PASSWORD}));
    (gw, token)
}

fn create_rule(gw: &Gateway, token: &str, rule: Value) -> Value {
    let (status, v) = gw.api(
        "POST",
        "/api/v1/event-rules",
        Some(token),
        Some(&rule.to_string()),
    );
    assert_eq!(status, 201, "{v}");
    v
}

fn deliveries(gw: &Gateway, token: &str, query: &str) -> Vec<Value> {
    let (status, v) = gw.api(
        "GET",
        &format!("/api/v1/event-deliveries?{query}"),
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

fn wait_deliveries(
    gw: &Gateway,
    token: &str,
    query: &str,
    within: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let items = deliveries(gw, token, query);
        if pred(&items) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never matched: {items:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn upload_ftp(gw: &Gateway, local: &std::path::Path, path: &str) {
    let out = curl(&[
        "--ftp-create-dirs",
        "-T",
        local.to_str().unwrap(),
        &format!("ftp://acme:{PASSWORD}@{}{path}", gw.addr("ftp")),
    ]);
    assert!(out.status.success(), "{out:?}");
}

fn upload_sftp(gw: &Gateway, local: &std::path::Path, path: &str) {
    let out = curl(&[
        "-k",
        "--ftp-create-dirs",
        "-T",
        local.to_str().unwrap(),
        &format!("sftp://acme:{PASSWORD}@{}{path}", gw.addr("sftp")),
    ]);
    assert!(out.status.success(), "{out:?}");
}

fn random_file(gw: &Gateway, name: &str, size: usize, seed: u64) -> (std::path::PathBuf, String) {
    let p = gw.dir.path().join(name);
    dropgate_testkit::write_random_file(&p, size, seed);
    let digest = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
    (p, digest)
}

#[test]
fn ftp_and_sftp_uploads_each_send_one_signed_webhook() {
    let receiver = Receiver::start(200, None);
    let (gw, token) = setup(ALLOW_LOOPBACK);
    let rule = create_rule(
        &gw,
        &token,
        json!({
            "name": "notify-erp",
            "trigger": "upload",
            "filter": {"path_globs": ["/inbox/**"]},
            "action": {"type": "webhook", "url": receiver.url("/hook"), "secret": SECRET, "timeout_secs": 5}
        }),
    );
    assert!(
        rule["action"].get("secret").is_none(),
        "the secret is write-only: {rule}"
    );
    let (a, a_sha) = random_file(&gw, "a.bin", 300_000, 1);
    let (b, b_sha) = random_file(&gw, "b.bin", 4_000, 2);
    upload_ftp(&gw, &a, "/inbox/a.bin");
    upload_sftp(&gw, &b, "/inbox/sub/b.bin");
    upload_ftp(&gw, &b, "/elsewhere/b.bin");

    let hits = receiver.wait_hits(2, Duration::from_secs(20));
    // Give a stray third delivery (the upload outside the glob) time to show.
    std::thread::sleep(Duration::from_secs(2));
    let hits_after = receiver.hits();
    assert_eq!(hits_after.len(), 2, "{hits_after:#?}");
    let mut seen = HashMap::new();
    for hit in &hits {
        verify_signature(hit);
        let body: Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(
            hit.headers.get("x-dropgate-delivery").map(String::as_str),
            body["id"].as_str()
        );
        assert_eq!(
            hit.headers.get("x-dropgate-event").map(String::as_str),
            Some("upload")
        );
        assert_eq!(body["event"], "upload");
        assert_eq!(body["username"], "acme");
        assert!(body["time"].as_str().unwrap().ends_with('Z'), "{body}");
        seen.insert(body["path"].as_str().unwrap().to_owned(), body);
    }
    let a_body = &seen["/inbox/a.bin"];
    assert_eq!(a_body["protocol"], "ftp");
    assert_eq!(a_body["size"], 300_000);
    assert_eq!(a_body["sha256"], a_sha.as_str());
    let b_body = &seen["/inbox/sub/b.bin"];
    assert_eq!(b_body["protocol"], "sftp");
    assert_eq!(b_body["size"], 4_000);
    assert_eq!(b_body["sha256"], b_sha.as_str());

    let done = wait_deliveries(
        &gw,
        &token,
        &format!("rule={}", rule["id"]),
        Duration::from_secs(10),
        |d| d.len() == 2 && d.iter().all(|d| d["status"] == "succeeded"),
    );
    assert!(done.iter().all(|d| d["attempts"] == 1), "{done:#?}");
    // The audit log has the same hash.
    let events = gw.wait_events(&token, "kind=upload&username=acme", |e| e.len() >= 3);
    assert!(
        events
            .iter()
            .any(|e| e["path"] == "/inbox/a.bin" && e["sha256"] == a_sha.as_str()),
        "{events:#?}"
    );
}

#[test]
fn a_delivery_survives_sigkill_and_is_delivered_once_after_restart() {
    // Reserve a port for the receiver, which is down at first: a socket
    // bound to it but not listening refuses connections and holds the port
    // (a listener dropped and bound again later lost it now and then to
    // another test's outgoing connection, which took it as its own port).
    let reserved = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(
        &reserved,
        &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
    )
    .unwrap();
    let port = SocketAddr::try_from(rustix::net::getsockname(&reserved).unwrap())
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let (gw, token) = setup(ALLOW_LOOPBACK);
    create_rule(
        &gw,
        &token,
        json!({"name": "hook", "trigger": "upload",
               "action": {"type": "webhook", "url": url, "secret": SECRET, "timeout_secs": 2}}),
    );
    let (f, sha) = random_file(&gw, "f.bin", 10_000, 3);
    upload_ftp(&gw, &f, "/f.bin");
    // The upload was acknowledged, so its delivery is in the outbox; wait
    // for a failed attempt (receiver down) so the kill hits a retrying one.
    wait_deliveries(&gw, &token, "", Duration::from_secs(20), |d| {
        d.len() == 1 && d[0]["attempts"].as_u64() >= Some(1) && d[0]["status"] == "pending"
    });
    let dir = gw.kill9();

    let gw = Gateway::start_in(dir, ALLOW_LOOPBACK);
    let token = gw.token();
    rustix::net::listen(&reserved, 128).expect("listen on the reserved port");
    let receiver = Receiver::start_on(TcpListener::from(reserved), 200, None);
    let hits = receiver.wait_hits(1, Duration::from_secs(90));
    let body: Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(body["sha256"], sha.as_str());
    verify_signature(&hits[0]);
    let done = wait_deliveries(&gw, &token, "", Duration::from_secs(10), |d| {
        d.len() == 1 && d[0]["status"] == "succeeded"
    });
    assert_eq!(done[0]["id"], body["id"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.hits().len(), 1, "delivered exactly once");
}

#[test]
fn a_move_rule_files_uploads_by_date() {
    let (gw, token) = setup("");
    create_rule(
        &gw,
        &token,
        json!({"name": "file-away", "trigger": "upload",
               "filter": {"path_globs": ["/inbox/*.csv"]},
               "action": {"type": "move", "to": "/processed/{date}/{name}"}}),
    );
    let (f, _) = random_file(&gw, "orders.csv", 2_000, 4);
    upload_sftp(&gw, &f, "/inbox/orders.csv");
    let (g, _) = random_file(&gw, "notes.txt", 100, 5);
    upload_ftp(&gw, &g, "/inbox/notes.txt");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let moved = gw
        .home("acme")
        .join("processed")
        .join(&today)
        .join("orders.csv");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !moved.exists() {
        assert!(Instant::now() < deadline, "never moved to {moved:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(&moved).unwrap(), std::fs::read(&f).unwrap());
    assert!(!gw.home("acme").join("inbox/orders.csv").exists());
    assert!(
        gw.home("acme").join("inbox/notes.txt").exists(),
        "outside the glob: left alone"
    );
    // The move is audited as the actions' own rename.
    let events = gw.wait_events(&token, "kind=rename&username=acme", |e| !e.is_empty());
    assert_eq!(events[0]["protocol"], "actions");
    assert_eq!(
        events[0]["target_path"],
        format!("/processed/{today}/orders.csv")
    );
}

#[test]
fn webhooks_to_private_addresses_and_redirects_are_refused() {
    let target = Receiver::start(200, None);
    let redirector = Receiver::start(302, Some(target.url("/stolen")));
    // Not allowed: anything but the redirector's literal address.
    let local = Receiver::start(200, None);
    let (gw, token) = setup(ALLOW_LOOPBACK);
    let rules = [
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        (
            "by-name",
            format!("http://localhost:{}/hook", local.addr.port()),
        ),
        ("redirect", redirector.url("/hook")),
    ];
    let mut ids = HashMap::new();
    for (name, url) in &rules {
        let r = create_rule(
            &gw,
            &token,
            json!({"name": name, "trigger": "upload",
                   "action": {"type": "webhook", "url": url, "secret": SECRET, "timeout_secs": 3}}),
        );
        ids.insert(*name, r["id"].as_i64().unwrap());
    }
    let (f, _) = random_file(&gw, "x.bin", 100, 6);
    upload_ftp(&gw, &f, "/x.bin");
    for name in ["metadata", "by-name"] {
        let d = wait_deliveries(
            &gw,
            &token,
            &format!("rule={}", ids[name]),
            Duration::from_secs(20),
            |d| d.len() == 1 && d[0]["status"] == "failed",
        );
        let err = d[0]["last_error"].as_str().unwrap_or_default().to_owned();
        assert!(err.contains("refused"), "{name}: {err}");
    }
    let d = wait_deliveries(
        &gw,
        &token,
        &format!("rule={}", ids["redirect"]),
        Duration::from_secs(20),
        |d| d.len() == 1 && d[0]["attempts"].as_u64() >= Some(1),
    );
    assert_ne!(d[0]["status"], "succeeded", "a 3xx is a failure: {d:#?}");
    assert!(
        d[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("302"),
        "{d:#?}"
    );
    assert!(!redirector.hits().is_empty());
    assert_eq!(
        target.connections.load(Ordering::SeqCst),
        0,
        "the redirect target is never contacted"
    );
    assert_eq!(
        local.connections.load(Ordering::SeqCst),
        0,
        "a host resolving to loopback is never contacted"
    );
}

#[test]
fn command_actions_get_the_event_and_are_killed_at_their_timeout() {
    let (gw, token) = setup("");
    let out = gw.dir.path().join("command-output.txt");
    let script = format!(
        "printf '%s %s %s' \"$DROPGATE_EVENT_PATH\" \"$DROPGATE_EVENT_SHA256\" \"$DROPGATE_EVENT_ID\" > {}",
        out.display()
    );
    let echo = create_rule(
        &gw,
        &token,
        json!({"name": "scan", "trigger": "upload",
               "action": {"type": "command", "argv": ["/bin/sh", "-c", script], "timeout_secs": 10}}),
    );
    let hang = create_rule(
        &gw,
        &token,
        json!({"name": "hang", "trigger": "upload",
               "action": {"type": "command", "argv": ["/bin/sleep", "600"], "timeout_secs": 1}}),
    );
    let (f, sha) = random_file(&gw, "scan.bin", 5_000, 7);
    upload_sftp(&gw, &f, "/scan.bin");
    let d = wait_deliveries(
        &gw,
        &token,
        &format!("rule={}", echo["id"]),
        Duration::from_secs(20),
        |d| d.len() == 1 && d[0]["status"] == "succeeded",
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text,
        format!("/scan.bin {sha} {}", d[0]["id"].as_str().unwrap())
    );
    let started = Instant::now();
    let d = wait_deliveries(
        &gw,
        &token,
        &format!("rule={}", hang["id"]),
        Duration::from_secs(20),
        |d| d.len() == 1 && d[0]["attempts"].as_u64() >= Some(1),
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        d[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("killed after 1 s"),
        "{d:#?}"
    );
    let sleeping = std::process::Command::new("pgrep")
        .args(["-f", "^/bin/sleep 600$"])
        .output()
        .unwrap();
    assert!(
        sleeping.stdout.is_empty(),
        "the hung command was killed: {sleeping:?}"
    );
}

#[test]
fn retention_deletes_old_files_below_its_path_and_nothing_else() {
    let (gw, token) = setup("");
    // The home appears at the first login; make it and the files by hand.
    let home = gw.home("acme");
    let old = |rel: &str| {
        let p = home.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"old").unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        p
    };
    let gone = [old("outbox/old.txt"), old("outbox/sub/deeper/old.csv")];
    let kept_elsewhere = old("archive/old.txt");
    let fresh = home.join("outbox/fresh.txt");
    std::fs::write(&fresh, b"new").unwrap();
    let link = home.join("outbox/link-to-archive");
    std::os::unix::fs::symlink(home.join("archive/old.txt"), &link).unwrap();
    create_rule(
        &gw,
        &token,
        json!({"name": "cleanup", "trigger": "schedule", "every_secs": 3600,
               "action": {"type": "retention", "path": "/outbox", "older_than_days": 30}}),
    );
    let d = wait_deliveries(&gw, &token, "", Duration::from_secs(20), |d| {
        d.len() == 1 && d[0]["status"] == "succeeded"
    });
    for p in &gone {
        assert!(!p.exists(), "{p:?} should be deleted");
    }
    assert!(fresh.exists(), "younger than 30 days: kept");
    assert!(kept_elsewhere.exists(), "outside /outbox: kept");
    assert!(link.symlink_metadata().is_ok(), "links are left alone");
    assert!(home.join("outbox/sub/deeper").is_dir(), "folders stay");
    assert!(
        d[0]["output"].as_str().unwrap().contains("deleted 2 files"),
        "{d:#?}"
    );
    // One run per period: no second delivery right away.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(deliveries(&gw, &token, "").len(), 1);
}

#[test]
fn rules_are_validated_and_secrets_never_shown() {
    let (gw, token) = setup("");
    let bad = [
        (
            json!({"name": "x", "trigger": "uploaded", "action": {"type": "move", "to": "/a"}}),
            "trigger",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "webhook", "url": "ftp://x/", "secret": "k"}}),
            "action.url",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "webhook", "url": "http://x/"}}),
            "action.secret",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "mail"}}),
            "action.type",
        ),
        (
            json!({"name": "x", "trigger": "upload", "filter": {"path_globs": ["inbox/*"]}, "action": {"type": "move", "to": "/a"}}),
            "filter.path_globs",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "command", "argv": ["sh", "-c", "x"]}}),
            "action.argv",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "move", "to": "/p/{when}"}}),
            "action.to",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "retention", "path": "/o", "older_than_days": 3}}),
            "trigger",
        ),
        (
            json!({"name": "x", "trigger": "schedule", "action": {"type": "retention", "path": "/o", "older_than_days": 3}}),
            "every_secs",
        ),
        (
            json!({"name": "x", "trigger": "upload", "action": {"type": "move", "to": "/a", "extra": 1}}),
            "action.extra",
        ),
    ];
    for (body, field) in bad {
        let (status, v) = gw.api(
            "POST",
            "/api/v1/event-rules",
            Some(&token),
            Some(&body.to_string()),
        );
        assert_eq!(status, 422, "{body} -> {v}");
        assert_eq!(v["error"]["field"], field, "{body} -> {v}");
    }
    let rule = create_rule(
        &gw,
        &token,
        json!({"name": "hook", "trigger": "upload",
               "action": {"type": "webhook", "url": "https://erp.example/hook", "secret": SECRET}}),
    );
    let (status, v) = gw.api(
        "POST",
        "/api/v1/event-rules",
        Some(&token),
        Some(
            &json!({"name": "hook", "trigger": "upload", "action": {"type": "move", "to": "/a"}})
                .to_string(),
        ),
    );
    assert_eq!(status, 409, "{v}");
    let id = rule["id"].as_i64().unwrap();
    // A PUT without the secret keeps it; no response ever shows it.
    let (status, v) = gw.api(
        "PUT",
        &format!("/api/v1/event-rules/{id}"),
        Some(&token),
        Some(
            &json!({"name": "hook", "trigger": "upload", "enabled": false,
                     "action": {"type": "webhook", "url": "https://erp.example/v2"}})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["enabled"], false);
    let (status, all) = gw.api("GET", "/api/v1/event-rules", Some(&token), None);
    assert_eq!(status, 200);
    assert!(!all.to_string().contains(SECRET), "{all}");
    assert_eq!(all["items"][0]["action"]["url"], "https://erp.example/v2");
    let (status, _) = gw.api(
        "DELETE",
        &format!("/api/v1/event-rules/{id}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = gw.api(
        "GET",
        &format!("/api/v1/event-rules/{id}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 404);
    let (status, doc) = gw.api("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/v1/event-rules/{id}"].is_object());
    assert!(doc["paths"]["/api/v1/event-deliveries"].is_object());
}
