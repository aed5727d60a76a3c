//! Connection limits, idle timeout, administrator kick and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use dropgate_testkit::TestGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// Reads what the server sends first: its SSH identification, or nothing (closed).
async fn banner(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_applies_before_the_handshake_and_idle_connections_close() {
    let tg = TestGateway::with_config(|c| c.admission.max_connections_per_source = 2).await;
    let mut h = Harness::start_configured(tg, |c| {
        c.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let mut a = TcpStream::connect(h.addr).await.unwrap();
    let mut b = TcpStream::connect(h.addr).await.unwrap();
    assert!(banner(&mut a).await.starts_with("SSH-2.0-dropgate"));
    assert!(banner(&mut b).await.starts_with("SSH-2.0-dropgate"));
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    assert_eq!(
        banner(&mut c).await,
        "",
        "a third connection from the same address is closed at once"
    );

    // Silent connections end after the idle timeout, which frees their slots.
    let started = Instant::now();
    assert_eq!(banner(&mut a).await, "", "idle connection closed");
    assert!(started.elapsed() < Duration::from_secs(8));
    drop((a, b));
    let mut d = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        if banner(&mut s).await.starts_with("SSH-2.0-") {
            d = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.is_some(), "slots are given back");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_ssh_is_dropped() {
    let mut h = Harness::start().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    assert!(banner(&mut s).await.starts_with("SSH-2.0-"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the server closes the connection");
    h.stop().await;
}

/// Starts an interactive `sftp` whose stdin stays open; returns once logged in.
async fn live_sftp(h: &Harness, user: &str) -> tokio::process::Child {
    let key = h.user_with_key(user, "pw").await;
    let mut c = Command::new("sftp");
    c.args(h.ssh_opts(&key))
        .args(["-P", &h.port.to_string()])
        .arg(format!("{user}@127.0.0.1"));
    c.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = c.spawn().unwrap();
    let gw = h.tg.gateway.clone();
    let user = user.to_owned();
    assert!(
        wait_for(30, || gw
            .sessions()
            .list()
            .iter()
            .any(|s| s.username == user))
        .await,
        "the client never logged in"
    );
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_can_end_a_session() {
    let mut h = Harness::start().await;
    let mut child = live_sftp(&h, "kim").await;
    assert_eq!(h.tg.gateway.sessions().disconnect_user("kim"), 1);
    // (interactive sftp exits 0 when the server hangs up; that it exits is the point)
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("client disconnected")
        .unwrap();
    assert!(wait_for(10, || h.tg.gateway.sessions().is_empty()).await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_sessions_and_returns() {
    let mut h = Harness::start().await;
    let mut child = live_sftp(&h, "lee").await;
    let started = Instant::now();
    h.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "run() returned promptly"
    );
    // (interactive sftp exits 0 when the server hangs up; that it exits is the point)
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("client disconnected")
        .unwrap();
    assert!(
        TcpStream::connect(h.addr).await.is_err(),
        "the listener is closed"
    );
}
