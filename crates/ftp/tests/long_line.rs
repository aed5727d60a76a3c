//! A client that sends a 10 MiB line without a line end gets 500 and is
//! disconnected, and the server never buffers the line (alone in its test
//! binary so the memory measurement sees no other test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Resident memory of this process (server and client share it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_without_crlf_gets_500_and_close() {
    let server = common::start().await;
    server.user("u", "pw-u-1").await;
    for logged_in in [false, true] {
        let c = if logged_in {
            server.login("u", "pw-u-1").await
        } else {
            server.client().await
        };
        let common::Client { mut r, mut w, .. } = c;
        let before = rss();
        // Sent from one small buffer, so only the server could make RSS grow.
        let writer = tokio::spawn(async move {
            let chunk = vec![b'A'; 64 * 1024];
            for _ in 0..160 {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut line = String::new();
        tokio::time::timeout(common::WAIT, r.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(line.starts_with("500 "), "{line:?}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(common::WAIT, r.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection must be closed");
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
        let grown = rss().saturating_sub(before);
        assert!(grown < 8 << 20, "memory grew by {grown} bytes");
    }
    // The server is still fine.
    let mut c = server.login("u", "pw-u-1").await;
    c.expect("NOOP", 200).await;
    server.stop().await;
}
