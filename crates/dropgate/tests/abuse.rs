//! Abuse through the real binary: slow and half-open connections by the
//! hundred, thousands of connections from one address, and one SFTP account
//! flooding eight channels with requests it never lets finish. Each time a
//! real client (curl, OpenSSH) from another address must still get in
//! quickly, and the server must stay within its limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Gateway, curl, require_tool};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PASSWORD: &str = "Right-pass-1";

async fn connect_from(local: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local.parse::<IpAddr>().unwrap(), 0))?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Reads until the server closes the connection; when that happened.
async fn closed_at(mut stream: TcpStream, started: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 512];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A curl FTP listing and an OpenSSH `sftp` password login from `local`,
/// each timed; both must succeed.
async fn real_clients_log_in(gw: &Gateway, local: &'static str) -> (Duration, Duration) {
    let ftp = gw.addr("ftp");
    let sftp = gw.addr("sftp");
    let ftp_run = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = curl(&[
            "--interface",
            local,
            "--max-time",
            "20",
            &format!("ftp://partner:{PASSWORD}@{ftp}/"),
        ]);
        (started.elapsed(), out)
    });
    let sftp_run = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = common::sftp_password(sftp, local, "partner", PASSWORD, "ls\nquit\n");
        (started.elapsed(), out)
    });
    let (ftp_took, ftp_out) = ftp_run.await.unwrap();
    let (sftp_took, sftp_out) = sftp_run.await.unwrap();
    assert_ok("curl FTP listing", &ftp_out);
    assert_ok("sftp password login", &sftp_out);
    (ftp_took, sftp_took)
}

/// The issue's bar for a real client under abuse: logged in within 5 s.
fn assert_within_5s(ftp_took: Duration, sftp_took: Duration) {
    let limit = Duration::from_secs(5);
    assert!(ftp_took < limit, "FTP login took {ftp_took:?}");
    assert!(sftp_took < limit, "SFTP login took {sftp_took:?}");
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create_partner(gw: &Gateway) {
    let token = gw.token();
    gw.create_user(
        &token,
        &json!({"username": "partner", "password": PASSWORD}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_half_open_ssh_handshakes_are_timed_out_while_real_clients_get_in() {
    require_tool("curl", "curl");
    const GRACE: u64 = 5;
    let gw = Gateway::start(&format!(
        "[limits]\nmax_connections = 2000\nmax_connections_per_ip = 1100\nlogin_grace_secs = {GRACE}\n"
    ));
    create_partner(&gw);
    let started = Instant::now();
    let mut held = Vec::new();
    // 500 FTP clients that trickle a command line that never ends, a byte a
    // second (that keeps naive idle timers alive).
    for _ in 0..500 {
        let mut s = connect_from("127.0.0.1", gw.addr("ftp")).await.unwrap();
        held.push(tokio::spawn(async move {
            let mut greeting = [0u8; 4];
            s.read_exact(&mut greeting).await.ok()?;
            let mut buf = [0u8; 256];
            for b in b"NOOP-NOOP-NOOP-NOOP-NOOP-NOOP".iter().cycle() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    n = s.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { break },
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return None;
                }
            }
            Some(started.elapsed())
        }));
    }
    // 500 SSH clients that send their identification and then nothing: the
    // key exchange never starts.
    for _ in 0..500 {
        let mut s = connect_from("127.0.0.1", gw.addr("sftp")).await.unwrap();
        s.write_all(b"SSH-2.0-halfopen_0.1\r\n").await.unwrap();
        held.push(tokio::spawn(closed_at(s, started, Duration::from_secs(60))));
    }
    let opened = started.elapsed();
    // With all of them held, real clients from another address get in fast.
    let (ftp_took, sftp_took) = real_clients_log_in(&gw, "127.0.0.2").await;
    println!(
        "1000 slow connections opened in {opened:?}; curl FTP {ftp_took:?}, sftp {sftp_took:?}"
    );
    assert_within_5s(ftp_took, sftp_took);
    // Every one of them is closed by the login grace.
    let mut latest = Duration::ZERO;
    for (i, h) in held.into_iter().enumerate() {
        let closed = h.await.unwrap();
        let Some(at) = closed else {
            panic!("slow connection {i} was never closed");
        };
        latest = latest.max(at);
    }
    println!("all closed by {latest:?}");
    assert!(
        latest < opened + Duration::from_secs(GRACE + 5),
        "closed only after {latest:?}"
    );
    // And the server is none the worse.
    real_clients_log_in(&gw, "127.0.0.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_from_one_address_are_capped_while_another_is_served() {
    require_tool("curl", "curl");
    // The defaults: 50 per address, 2000 in all.
    let gw = Gateway::start("");
    create_partner(&gw);
    let started = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut attempts = Vec::new();
    for i in 0..2000 {
        let addr = gw.addr(if i % 2 == 0 { "ftp" } else { "sftp" });
        let gate = gate.clone();
        attempts.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut s = connect_from("127.0.0.1", addr).await.ok()?;
            let mut first = [0u8; 7];
            let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first)).await;
            drop(permit);
            let text = match got {
                Ok(Ok(n)) => String::from_utf8_lossy(&first[..n]).into_owned(),
                _ => String::new(),
            };
            // Admitted connections are held open; refused ones are closed.
            Some((text, s))
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for a in attempts {
        let (text, s) = a.await.unwrap().expect("connect");
        if text.starts_with("220") || text.starts_with("SSH-2.0") {
            admitted.push(s);
        } else {
            assert!(text.is_empty() || text.starts_with("421"), "{text:?}");
            refused += 1;
        }
    }
    let took = started.elapsed();
    println!(
        "2000 connections: {} admitted, {refused} refused in {took:?}",
        admitted.len()
    );
    assert_eq!(admitted.len(), 50, "max_connections_per_ip");
    assert_eq!(refused, 1950);
    assert!(took < Duration::from_secs(30), "refusals took {took:?}");
    // Meanwhile another address logs in at once.
    let (ftp_took, sftp_took) = real_clients_log_in(&gw, "127.0.0.2").await;
    assert_within_5s(ftp_took, sftp_took);
    drop(admitted);
}

/// A paramiko client that logs in once, opens eight SFTP channels and on
/// each asks for more reads than its window lets through (so replies stall
/// and requests stop finishing), then floods 255 KiB writes. Prints how many
/// bytes it sent before the server hung up.
const FLOOD: &str = r#"
import paramiko, socket, struct, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sock = socket.create_connection((host, port), timeout=30)
t = paramiko.Transport(sock)
t.connect(username=user, password=pw)
def pkt(kind, payload):
    body = bytes([kind]) + payload
    return struct.pack('>I', len(body)) + body
def s(b):
    return struct.pack('>I', len(b)) + b
def recv_packet(ch):
    def exact(n):
        got = b''
        while len(got) < n:
            part = ch.recv(n - len(got))
            if not part:
                raise EOFError
            got += part
        return got
    return exact(struct.unpack('>I', exact(4))[0])
def handle(ch, rid, name, flags):
    ch.sendall(pkt(3, struct.pack('>I', rid) + s(name) + struct.pack('>II', flags, 0)))
    r = recv_packet(ch)
    assert r[0] == 102, r
    n = struct.unpack('>I', r[5:9])[0]
    return r[9:9 + n]
chans = []
for i in range(8):
    ch = t.open_session()
    ch.invoke_subsystem('sftp')
    ch.sendall(pkt(1, struct.pack('>I', 3)))
    recv_packet(ch)
    rh = handle(ch, 1, b'big.bin', 1)
    wh = handle(ch, 2, b'flood%d.bin' % i, 2 | 8 | 16)
    chans.append((ch, rh, wh))
rid = 10
for ch, rh, wh in chans:
    for k in range(200):
        rid += 1
        ch.sendall(pkt(5, struct.pack('>I', rid) + s(rh) + struct.pack('>QI', k * 32768, 32768)))
data = b'x' * (255 * 1024)
sent = 0
dropped = False
try:
    for k in range(120):
        for ch, rh, wh in chans:
            rid += 1
            ch.sendall(pkt(6, struct.pack('>I', rid) + s(wh) + struct.pack('>Q', k * len(data)) + s(data)))
            sent += len(data)
except Exception as e:
    dropped = True
print('sent', sent, 'dropped', dropped, 'active', t.is_active())
"#;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_sftp_request_flood_over_eight_channels_is_bounded_per_connection() {
    require_tool("python3", "python3");
    let gw = Gateway::start("");
    create_partner(&gw);
    std::fs::write(gw.home("partner").join("big.bin"), vec![7u8; 8 << 20]).unwrap();
    // Warm up (a login, the hashing pool) before the baseline.
    assert_ok(
        "warm-up login",
        &common::sftp_password(gw.addr("sftp"), "127.0.0.1", "partner", PASSWORD, "ls\n"),
    );
    let baseline_kib = status_kib(gw.pid(), "VmHWM:");
    let sftp = gw.addr("sftp");
    let out = Command::new("timeout")
        .args(["120", "python3", "-c", FLOOD])
        .args([
            &sftp.ip().to_string(),
            &sftp.port().to_string(),
            "partner",
            PASSWORD,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak_kib = status_kib(gw.pid(), "VmHWM:");
    let growth_mib = (peak_kib.saturating_sub(baseline_kib)) / 1024;
    println!("{stdout} server peak grew by {growth_mib} MiB");
    // The flood (240 MiB offered over eight channels) ends the connection at
    // its 64 MiB budget, all channels together.
    assert!(stdout.contains("dropped True"), "{stdout}");
    let sent: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        sent < 160 << 20,
        "the server took {sent} bytes before hanging up"
    );
    assert!(
        growth_mib < 160,
        "server memory grew by {growth_mib} MiB under the flood"
    );
    gw.wait_log("bytes of requests outstanding on one connection");
    // Everyone else carries on.
    assert_ok(
        "login after the flood",
        &common::sftp_password(gw.addr("sftp"), "127.0.0.2", "partner", PASSWORD, "ls\n"),
    );
}
