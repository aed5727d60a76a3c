//! Behind a real HAProxy (Debian's `haproxy`) speaking the PROXY protocol:
//! v2 on FTP control and passive data connections, v1 on SSH. The gateway
//! must see the client's address (audit log, sessions, bans), serve the
//! client through the balancer, require a header from the trusted proxy and
//! refuse one from anyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, connect_from, curl, require_tool, sftp_password};
use serde_json::json;

const PASSWORD: &str = "Proxy-pass-1";
/// Where HAProxy listens; the gateway listens on 127.0.0.1 and trusts only
/// 127.0.0.1 (HAProxy's source address towards it).
const FRONT: &str = "127.0.0.3";
/// Clients, each from its own loopback address.
const CLIENT: &str = "127.0.0.5";
const GUESSER: &str = "127.0.0.6";

/// A HAProxy process, stopped on drop.
struct Haproxy {
    child: Child,
    ftp: SocketAddr,
    ssh: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Haproxy {
    /// Forwards FTP (and the gateway's passive range, port for port) with
    /// PROXY v2 and SSH with PROXY v1 to the gateway on 127.0.0.1.
    fn start(gw: &Gateway) -> Haproxy {
        require_tool("haproxy", "haproxy");
        let dir = tempfile::tempdir().unwrap();
        let (ftp_port, ssh_port) = (free_port(FRONT), free_port(FRONT));
        let config = format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend ftp\n  bind {FRONT}:{ftp_port}\n  default_backend ftp\n\
             backend ftp\n  server n1 127.0.0.1:{} send-proxy-v2\n\
             frontend ftpdata\n  bind {FRONT}:46000-46999\n  default_backend ftpdata\n\
             backend ftpdata\n  server n1 127.0.0.1 send-proxy-v2\n\
             frontend ssh\n  bind {FRONT}:{ssh_port}\n  default_backend ssh\n\
             backend ssh\n  server n1 127.0.0.1:{} send-proxy\n",
            gw.addr("ftp").port(),
            gw.addr("sftp").port(),
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ftp: SocketAddr = format!("{FRONT}:{ftp_port}").parse().unwrap();
        let ssh: SocketAddr = format!("{FRONT}:{ssh_port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(ftp).is_err() || TcpStream::connect(ssh).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Haproxy {
            child,
            ftp,
            ssh,
            _dir: dir,
        }
    }
}

/// Reads what the server says until it closes (or 5 s pass); whether it closed.
fn read_until_closed(stream: &mut TcpStream) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Closed with our bytes unread: a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true);
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[test]
fn behind_haproxy_the_client_address_is_seen_and_headers_are_only_believed_from_the_proxy() {
    require_tool("curl", "curl");
    let gw = Gateway::start(
        "[cluster]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [limits]\nlogin_failures_before_ban = 3\n",
    );
    let token = gw.token();
    gw.create_user(
        &token,
        &json!({"username": "pat", "password": PASSWORD, "permissions": {"/": ["*"]}}),
    );
    let proxy = Haproxy::start(&gw);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("up.bin");
    std::fs::write(&file, vec![7u8; 300_000]).unwrap();

    // FTP through the balancer, passive data through it as well (PROXY v2
    // on both connections; the data connection's header must name the
    // same client as the control connection's).
    let out = curl(&[
        "--interface",
        CLIENT,
        "-T",
        file.to_str().unwrap(),
        &format!("ftp://pat:{PASSWORD}@{}/via-ftp.bin", proxy.ftp),
    ]);
    assert!(out.status.success(), "{out:?}\n{}", gw.log.lock().unwrap());
    let back = curl(&[
        "--interface",
        CLIENT,
        &format!("ftp://pat:{PASSWORD}@{}/via-ftp.bin", proxy.ftp),
    ]);
    assert!(back.status.success(), "{back:?}");
    assert_eq!(back.stdout.len(), 300_000);

    // SFTP through the balancer (PROXY v1).
    let out = sftp_password(
        proxy.ssh,
        CLIENT,
        "pat",
        PASSWORD,
        &format!("put {} /via-sftp.bin\n", file.display()),
    );
    assert!(out.status.success(), "{out:?}");

    // The audit log names the client, not HAProxy.
    let events = gw.wait_events(&token, "username=pat&kind=upload", |items| items.len() >= 2);
    for e in &events {
        let addr = e["remote_addr"].as_str().unwrap();
        assert!(addr.starts_with(&format!("{CLIENT}:")), "{e}");
    }

    // Failed logins through the balancer ban the guesser, not the balancer:
    // the client behind the same proxy still logs in.
    for _ in 0..3 {
        let out = curl(&[
            "--interface",
            GUESSER,
            &format!("ftp://pat:wrong@{}/", proxy.ftp),
        ]);
        assert!(!out.status.success());
    }
    let (status, bans) = gw.api("GET", "/api/v1/bans", Some(&token), None);
    assert_eq!(status, 200);
    let banned: Vec<&str> = bans["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["ip"].as_str())
        .collect();
    assert_eq!(banned, [GUESSER], "{bans}");
    let out = curl(&[
        "--interface",
        CLIENT,
        "-l",
        &format!("ftp://pat:{PASSWORD}@{}/", proxy.ftp),
    ]);
    assert!(out.status.success(), "{out:?}");
    // The banned guesser is refused at once, through the proxy too.
    let mut s = connect_from(GUESSER, proxy.ftp);
    let (said, closed) = read_until_closed(&mut s);
    assert!(said.starts_with("421"), "{said:?}");
    assert!(closed);

    // A header from a source that is not a trusted proxy is refused: FTP
    // answers 421 and closes; SSH closes without a session.
    let mut s = connect_from("127.0.0.2", gw.addr("ftp"));
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 21\r\nUSER pat\r\n")
        .unwrap();
    let (said, closed) = read_until_closed(&mut s);
    assert!(said.contains("\r\n421 "), "{said:?}");
    assert!(closed, "{said:?}");
    let mut s = connect_from("127.0.0.2", gw.addr("sftp"));
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 22\r\nSSH-2.0-OpenSSH_9.2\r\n")
        .unwrap();
    let (_, closed) = read_until_closed(&mut s);
    assert!(closed);
    gw.wait_log("PROXY header from an untrusted source refused");

    // The trusted proxy's address without a header is refused too (a
    // balancer that forgot `send-proxy` must not make every client look
    // like itself), on both listeners, within the header timeout.
    for addr in [gw.addr("ftp"), gw.addr("sftp")] {
        let started = Instant::now();
        let mut s = connect_from("127.0.0.1", addr);
        s.write_all(b"USER pat\r\nSSH-2.0-x\r\n").unwrap();
        let (said, closed) = read_until_closed(&mut s);
        assert!(closed && said.is_empty(), "{addr}: {said:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    gw.wait_log("connection from a trusted proxy closed");

    // Nothing of the above is listed as a session or banned beyond the guesser.
    let (_, sessions) = gw.api("GET", "/api/v1/sessions", Some(&token), None);
    assert!(!sessions.to_string().contains("203.0.113.9"), "{sessions}");
}
