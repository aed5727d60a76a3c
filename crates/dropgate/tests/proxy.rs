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

use common::{
    Gateway, PrivatePostgres, connect_from, curl, require_tool, sftp_password, sftp_password_with,
};
use serde_json::json;

const PASSWORD: &str = "Proxy-pass-1";
/// Where HAProxy listens; the gateway listens on 127.0.0.1 and trusts only
/// 127.0.0.1 (HAProxy's source address towards it).
const FRONT: &str = "127.0.0.3";
/// The second test's balancer (both run at once; each binds its own).
const FRONT2: &str = "127.0.0.4";
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

/// The balancer tests run one after the other, each with passive ports of
/// its own above the kernel's ephemeral range (32768-60999): a balancer
/// forwards every port of a range to whatever listens there on 127.0.0.1,
/// so another test's gateway or a client socket on one of them would take
/// its data connections.
fn one_balancer_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One gateway behind the balancer, with the passive range it was given.
struct Backend<'a> {
    gw: &'a Gateway,
    passive: (u16, u16),
}

impl Haproxy {
    /// Forwards FTP (round robin, and each node's passive range to that
    /// node, port for port) with PROXY v2, and SSH (round robin) with PROXY
    /// `ssh_proxy` (`send-proxy` for v1, `send-proxy-v2`), to gateways on
    /// 127.0.0.1.
    fn start(front: &str, nodes: &[Backend<'_>], ssh_proxy: &str) -> Haproxy {
        require_tool("haproxy", "haproxy");
        let dir = tempfile::tempdir().unwrap();
        let (ftp_port, ssh_port) = (free_port(front), free_port(front));
        let mut config = format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend ftp\n  bind {front}:{ftp_port}\n  default_backend ftp\n\
             frontend ssh\n  bind {front}:{ssh_port}\n  default_backend ssh\n"
        );
        let mut ftp = String::from("backend ftp\n  balance roundrobin\n");
        let mut ssh = String::from("backend ssh\n  balance roundrobin\n");
        for (i, node) in nodes.iter().enumerate() {
            let (lo, hi) = node.passive;
            ftp += &format!(
                "  server n{i} 127.0.0.1:{} send-proxy-v2\n",
                node.gw.addr("ftp").port()
            );
            ssh += &format!(
                "  server n{i} 127.0.0.1:{} {ssh_proxy}\n",
                node.gw.addr("sftp").port()
            );
            config += &format!(
                "frontend ftpdata{i}\n  bind {front}:{lo}-{hi}\n  default_backend ftpdata{i}\n\
                 backend ftpdata{i}\n  server n{i} 127.0.0.1 send-proxy-v2\n"
            );
        }
        config += &ftp;
        config += &ssh;
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
        let ftp: SocketAddr = format!("{front}:{ftp_port}").parse().unwrap();
        let ssh: SocketAddr = format!("{front}:{ssh_port}").parse().unwrap();
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
    let _alone = one_balancer_at_a_time();
    let gw = Gateway::start_env(
        tempfile::tempdir().unwrap(),
        "[cluster]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [limits]\nlogin_failures_before_ban = 3\n",
        &[("DROPGATE_FTP__PASSIVE_PORTS", "61000-61499")],
    );
    let token = gw.token();
    gw.create_user(
        &token,
        &json!({"username": "pat", "password": PASSWORD, "permissions": {"/": ["*"]}}),
    );
    let proxy = Haproxy::start(
        FRONT,
        &[Backend {
            gw: &gw,
            passive: (61000, 61499),
        }],
        "send-proxy",
    );
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

#[test]
fn two_nodes_behind_haproxy_serve_one_service_with_one_host_key() {
    require_tool("curl", "curl");
    let _alone = one_balancer_at_a_time();
    require_tool("sshpass", "sshpass");
    require_tool("ssh-keyscan", "openssh-client");
    let pg = PrivatePostgres::start();
    let config = |name: &str| {
        format!(
            "[database]\nurl = {:?}\n[cluster]\nnode_name = {name:?}\nproxy_protocol = true\n\
             trusted_proxies = [\"127.0.0.1/32\"]\n",
            pg.url()
        )
    };
    // Each node its own passive range; the balancer routes each to its node.
    let n1 = Gateway::start_env(
        tempfile::tempdir().unwrap(),
        &config("n1"),
        &[("DROPGATE_FTP__PASSIVE_PORTS", "61500-61749")],
    );
    let n2 = Gateway::start_next_node(
        &n1,
        &config("n2"),
        &[("DROPGATE_FTP__PASSIVE_PORTS", "61750-61989")],
    );
    let proxy = Haproxy::start(
        FRONT2,
        &[
            Backend {
                gw: &n1,
                passive: (61500, 61749),
            },
            Backend {
                gw: &n2,
                passive: (61750, 61989),
            },
        ],
        "send-proxy-v2",
    );
    let token = n1.token();
    n1.create_user(
        &token,
        &json!({"username": "pat", "password": PASSWORD, "permissions": {"/": ["*"]}}),
    );
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("up.bin");
    std::fs::write(&file, vec![3u8; 100_000]).unwrap();

    // FTP uploads through the balancer land on both nodes (round robin),
    // passive data included.
    for i in 0..4 {
        let out = curl(&[
            "--interface",
            CLIENT,
            "-T",
            file.to_str().unwrap(),
            &format!("ftp://pat:{PASSWORD}@{}/f{i}.bin", proxy.ftp),
        ]);
        assert!(out.status.success(), "upload {i}: {out:?}");
    }

    // SSH through the balancer: the host key pinned on the first connection
    // holds on every node (strict checking would refuse a different one).
    let known = work.path().join("known_hosts");
    let scan = Command::new("ssh-keyscan")
        .args([
            "-T",
            "10",
            "-t",
            "ed25519",
            "-p",
            &proxy.ssh.port().to_string(),
            FRONT2,
        ])
        .output()
        .unwrap();
    assert!(!scan.stdout.is_empty(), "{scan:?}");
    std::fs::write(&known, &scan.stdout).unwrap();
    let known_hosts = format!("UserKnownHostsFile={}", known.display());
    let strict = [
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "HostKeyAlgorithms=ssh-ed25519",
        "-o",
        known_hosts.as_str(),
    ];
    let front: SocketAddr = format!("{FRONT2}:{}", proxy.ssh.port()).parse().unwrap();
    for i in 0..2 {
        let out = sftp_password_with(
            front,
            CLIENT,
            "pat",
            PASSWORD,
            &format!("put {} /s{i}.bin\n", file.display()),
            &strict,
        );
        assert!(out.status.success(), "sftp {i}: {out:?}");
    }

    // One audit log: uploads from both nodes, each with the client's address.
    let events = n2.wait_events(&token, "username=pat&kind=upload", |items| items.len() >= 6);
    let nodes: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        ["n1", "n2"],
        "{events:#?}"
    );
    for e in &events {
        let addr = e["remote_addr"].as_str().unwrap();
        assert!(addr.starts_with(&format!("{CLIENT}:")), "{e}");
    }
}

/// The several-nodes files at the repository root stay valid: the nodes'
/// config (as docker-compose.yml sets its environment) passes
/// `check-config`, and HAProxy accepts its config (node names pointed at
/// loopback, as there is no container network here).
#[test]
fn the_docker_compose_topology_files_are_valid() {
    require_tool("haproxy", "haproxy");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    for needle in [
        "deploy/node.toml",
        "deploy/haproxy.cfg",
        "172.28.0.10",
        "50050-50099",
        "minio/minio",
        "mc mb --ignore-existing local/dropgate",
    ] {
        assert!(compose.contains(needle), "docker-compose.yml lost {needle}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dropgate"))
        .arg("--config")
        .arg(root.join("deploy/node.toml"))
        .arg("check-config")
        .env("DROPGATE_CLUSTER__NODE_NAME", "node2")
        .env("DROPGATE_FTP__PASSIVE_PORTS", "50050-50099")
        .env("DROPGATE_FTP__PASSIVE_ADDRESS", "127.0.0.1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proxy_protocol = true") && text.contains("172.28.0.10/32"),
        "{text}"
    );
    // Files in the shared bucket; its secret never printed.
    assert!(
        text.contains("backend = \"s3\"")
            && text.contains("http://minio:9000")
            && !text.contains("dropgate-secret"),
        "{text}"
    );

    let cfg = std::fs::read_to_string(root.join("deploy/haproxy.cfg"))
        .unwrap()
        .replace("node1:", "127.0.0.1:")
        .replace("node2:", "127.0.0.1:")
        .replace(" node1 send-proxy", " 127.0.0.1 send-proxy")
        .replace(" node2 send-proxy", " 127.0.0.1 send-proxy");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
