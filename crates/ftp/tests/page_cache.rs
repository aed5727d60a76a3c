//! Large page-cache uploads (`durable_uploads = false`): past the part the
//! stream hash follows (`HASH_AFTER_REPLY_FROM`) their hash is finished
//! from the committed file after the reply. What the client sent is what
//! is stored and hashed, whatever its pace and wherever the end falls;
//! quota, rate limit, STAT, ABOR, a resume, a cut connection and parallel
//! uploads behave as for any upload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Options, WAIT, temporaries};
use dropgate_core::HASH_AFTER_REPLY_FROM;
use dropgate_core::store::User;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;

fn page_cache() -> Options {
    Options {
        durable_uploads: false,
        ..Default::default()
    }
}

/// `len` bytes that differ everywhere (a misplaced chunk shows).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `data` in writes of uneven sizes, pausing now and then so that
/// the server finds the socket empty with part of a buffer filled.
async fn send_unevenly(d: &mut TcpStream, data: &[u8]) {
    let mut at = 0;
    let mut step = 0u64;
    while at < data.len() {
        step += 1;
        let size = 1 + ((step * 7919) % 300_000) as usize;
        let end = (at + size).min(data.len());
        d.write_all(&data[at..end]).await.unwrap();
        at = end;
        if step.is_multiple_of(16) {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

/// Ends an upload's data connection, then checks the `226`, the bytes
/// stored under `name` in `home` and the SHA-256 in the upload's event.
async fn finish_and_check(
    server: &common::Server,
    c: &mut common::Client,
    mut d: TcpStream,
    home: &Path,
    name: &str,
    data: &[u8],
) {
    d.shutdown().await.unwrap();
    drop(d);
    let r = c.reply().await;
    assert_eq!(r.code, 226, "{name}: {r:?}");
    assert!(std::fs::read(home.join(name)).unwrap() == data, "{name}");
    assert_eq!(
        server.upload_event_sha256("u", &format!("/{name}")).await,
        common::sha256_hex(data),
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_writes_arrive_whole_and_are_hashed() {
    let server = common::start_with(page_cache()).await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let threshold = usize::try_from(HASH_AFTER_REPLY_FROM).unwrap();
    // An end in the middle of a 1 MiB chunk, one on a chunk's boundary (the
    // last read finds only the end), and one right past the threshold.
    for (name, len) in [
        ("odd.bin", threshold + 12 * MIB + 12_345),
        ("even.bin", threshold + 2 * MIB),
        ("edge.bin", threshold + 1),
    ] {
        let data = bytes(len, len as u64);
        let mut d = c.epsv_connect().await;
        c.expect(&format!("STOR {name}"), 150).await;
        send_unevenly(&mut d, &data).await;
        finish_and_check(&server, &mut c, d, &home, name, &data).await;
    }
    assert!(temporaries(&home).is_empty());
    server.stop().await;
}

/// A client that trickles past the threshold (a slow link: one small
/// segment per wake-up): every byte arrives, nothing stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_past_the_threshold_goes_on() {
    let server = common::start_with(page_cache()).await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let threshold = usize::try_from(HASH_AFTER_REPLY_FROM).unwrap();
    let pieces = 700;
    let data = bytes(threshold + MIB + pieces * 100, 9);
    let mut d = c.epsv_connect().await;
    d.set_nodelay(true).unwrap();
    c.expect("STOR slow.bin", 150).await;
    let bulk = threshold + MIB;
    d.write_all(&data[..bulk]).await.unwrap();
    for piece in data[bulk..].chunks(100) {
        d.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    finish_and_check(&server, &mut c, d, &home, "slow.bin", &data).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upload_past_the_threshold_is_whole_and_hashed() {
    let server = common::start_with(page_cache()).await;
    let home = server.user("u", "pw-u-1").await;
    let whole = bytes(14 * MIB + 777, 5);
    let kept = 9 * MIB + 7;
    std::fs::write(home.join("r.bin"), &whole[..kept]).unwrap();
    let mut c = server.login("u", "pw-u-1").await;
    let mut d = c.epsv_connect().await;
    c.expect(&format!("REST {kept}"), 350).await;
    c.expect("STOR r.bin", 150).await;
    send_unevenly(&mut d, &whole[kept..]).await;
    finish_and_check(&server, &mut c, d, &home, "r.bin", &whole).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_stops_a_large_upload_with_552_and_leaves_nothing() {
    let server = common::start_with(page_cache()).await;
    let mut user = User::new("q");
    user.quota.max_bytes = 12 * MIB as u64;
    server.tg.add_user_with(user, Some("pw-q-1")).await;
    let home = server.home("q");
    let mut c = server.login("q", "pw-q-1").await;
    let r = c.stor("over.bin", &bytes(30 * MIB, 1)).await;
    assert_eq!(r.code, 552, "{r:?}");
    assert!(!home.join("over.bin").exists());
    assert!(temporaries(&home).is_empty());
    let user = server.tg.store.get_user("q").await.unwrap().unwrap().user;
    assert_eq!(server.tg.gateway.usage(&user).await.unwrap(), (0, 0));
    // Nothing of it counts: 11 MiB still fit.
    let fits = bytes(11 * MIB, 2);
    assert_eq!(c.stor("fits.bin", &fits).await.code, 226);
    assert!(std::fs::read(home.join("fits.bin")).unwrap() == fits);
    assert_eq!(
        server.tg.gateway.usage(&user).await.unwrap(),
        (11 * MIB as u64, 1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_large_upload_keeps_to_its_rate() {
    let server = common::start_with(page_cache()).await;
    let mut user = User::new("slow");
    user.bandwidth.upload_kib_s = 4096;
    server.tg.add_user_with(user, Some("pw-s-1")).await;
    let home = server.home("slow");
    let mut c = server.login("slow", "pw-s-1").await;
    let data = bytes(16 * MIB, 3);
    let started = Instant::now();
    assert_eq!(c.stor("slow.bin", &data).await.code, 226);
    let took = started.elapsed();
    // 16 MiB at 4 MiB/s: about 4 s. The half past the threshold, if the
    // limit let it go, would end in about 2.
    assert!(took >= Duration::from_millis(3500), "{took:?}");
    assert!(std::fs::read(home.join("slow.bin")).unwrap() == data);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_then_abor_during_a_large_upload() {
    let server = common::start_with(page_cache()).await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let mut d = c.epsv_connect().await;
    c.expect("STOR up.bin", 150).await;
    let sent = 12 * MIB;
    d.write_all(&bytes(sent, 4)).await.unwrap();
    c.stat_until(sent).await;
    c.send("ABOR").await;
    assert_eq!(c.reply().await.code, 426);
    assert_eq!(c.reply().await.code, 226);
    c.expect("NOOP", 200).await;
    assert!(!home.join("up.bin").exists());
    assert!(temporaries(&home).is_empty(), "{:?}", temporaries(&home));
    drop(d);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_cut_midway_leaves_the_old_file() {
    let server = common::start_with(page_cache()).await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("keep.bin"), b"old content").unwrap();
    // Both connections gone at once (the client was killed), then the data
    // connection reset while the control connection stays.
    let mut c = server.login("u", "pw-u-1").await;
    let mut d = c.epsv_connect().await;
    c.expect("STOR keep.bin", 150).await;
    d.write_all(&bytes(12 * MIB, 6)).await.unwrap();
    drop(c);
    drop(d);
    let mut c = server.login("u", "pw-u-1").await;
    let mut d = c.epsv_connect().await;
    c.expect("STOR keep.bin", 150).await;
    d.write_all(&bytes(12 * MIB, 7)).await.unwrap();
    d.set_zero_linger().unwrap();
    drop(d);
    let r = c.reply().await;
    assert_eq!(r.code, 426, "{r:?}");
    c.expect("NOOP", 200).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !temporaries(&home).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            temporaries(&home)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read(home.join("keep.bin")).unwrap(),
        b"old content"
    );
    server.stop().await;
}

/// curl, eight uploads at once into one folder: every file and every
/// event (each hashed after its reply) is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_parallel_large_curl_uploads() {
    dropgate_testkit::require_tool("curl", "curl");
    let server = common::start_with(page_cache()).await;
    let home = server.user("u", "pw-u-1").await;
    let work = tempfile::tempdir().unwrap();
    let threshold = usize::try_from(HASH_AFTER_REPLY_FROM).unwrap();
    let mut sent = Vec::new();
    let mut runs = Vec::new();
    for i in 0..8 {
        let src = work.path().join(format!("p{i}.bin"));
        let data =
            dropgate_testkit::write_random_file(&src, threshold + (i + 1) * 700_001, 40 + i as u64);
        let args: Vec<String> = vec![
            "-sS".into(),
            "--fail".into(),
            "--max-time".into(),
            "120".into(),
            "-T".into(),
            src.display().to_string(),
            server.url("u", "pw-u-1", &format!("/p{i}.bin")),
        ];
        runs.push(tokio::spawn(async move {
            common::run_tool("curl", &args, None).await
        }));
        sent.push(data);
    }
    for run in runs {
        run.await.unwrap();
    }
    for (i, data) in sent.iter().enumerate() {
        let name = format!("p{i}.bin");
        assert!(std::fs::read(home.join(&name)).unwrap() == *data, "{name}");
        assert_eq!(
            server.upload_event_sha256("u", &format!("/{name}")).await,
            common::sha256_hex(data),
            "{name}"
        );
    }
    assert!(temporaries(&home).is_empty());
    server.stop().await;
}
