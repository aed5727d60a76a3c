//! curl against the real listener: passive (EPSV and PASV) and active
//! (EPRT and PORT) uploads and downloads, `--ftp-create-dirs`, and resumed
//! uploads and downloads (`-C -`). Runs on the storage under test
//! (`DROPGATE_TEST_STORAGE`: local disk or S3), except the case about
//! links and special files on the disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run_tool, sha256_hex};
use dropgate_core::HASH_AFTER_REPLY_FROM;
use dropgate_core::store::{Event, EventKind, EventQuery};
use dropgate_testkit::{require_tool, write_random_file};

const SIX_MIB: usize = 6 * 1024 * 1024 + 12345;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Upload then download one file with the given extra curl options, and
/// check the bytes on disk, the bytes downloaded, and the audit trail.
async fn round_trip(mode: &[&str], seed: u64) {
    require_tool("curl", "curl");
    let server = common::start_on_storage_under_test().await;
    let home = server.account("alice", "secret-pw").await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.bin");
    let data = write_random_file(&src, SIX_MIB, seed);

    let mut up = args(&["-sS", "--fail", "--max-time", "60", "-T"]);
    up.push(src.display().to_string());
    up.extend(args(mode));
    up.push(server.url("alice", "secret-pw", "/big.bin"));
    run_tool("curl", &up, None).await;
    assert_eq!(home.read("big.bin").await, data, "uploaded bytes");

    let dst = work.path().join("dst.bin");
    let mut down = args(&["-sS", "--fail", "--max-time", "60", "-o"]);
    down.push(dst.display().to_string());
    down.extend(args(mode));
    down.push(server.url("alice", "secret-pw", "/big.bin"));
    run_tool("curl", &down, None).await;
    assert_eq!(std::fs::read(&dst).unwrap(), data, "downloaded bytes");

    assert_eq!(
        server.upload_event_sha256("alice", "/big.bin").await,
        sha256_hex(&data)
    );
    assert!(
        server
            .has_event("alice", EventKind::Download, "/big.bin")
            .await
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_epsv() {
    round_trip(&[], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_pasv() {
    round_trip(&["--disable-epsv"], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_eprt() {
    round_trip(&["--ftp-port", "-"], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_port() {
    round_trip(&["--ftp-port", "-", "--disable-eprt"], 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_dirs() {
    require_tool("curl", "curl");
    let server = common::start_on_storage_under_test().await;
    let home = server.account("bob", "pw-bob-1").await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.txt");
    let data = write_random_file(&src, 1000, 5);
    let mut up = args(&[
        "-sS",
        "--fail",
        "--max-time",
        "60",
        "--ftp-create-dirs",
        "-T",
    ]);
    up.push(src.display().to_string());
    up.push(server.url("bob", "pw-bob-1", "/a/b/c/f.txt"));
    run_tool("curl", &up, None).await;
    assert_eq!(home.read("a/b/c/f.txt").await, data);

    // Without the option a missing folder is an error.
    let mut up = args(&["-sS", "--max-time", "60", "-T"]);
    up.push(src.display().to_string());
    up.push(server.url("bob", "pw-bob-1", "/x/y/f.txt"));
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg("curl")
        .args(&up)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!home.exists("x").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_upload_and_download() {
    require_tool("curl", "curl");
    for active in [false, true] {
        let server = common::start_on_storage_under_test().await;
        let home = server.account("carol", "pw-carol-1").await;
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src.bin");
        let data = write_random_file(&src, SIX_MIB, 6);
        let mode: Vec<String> = if active {
            args(&["--ftp-port", "-"])
        } else {
            Vec::new()
        };

        // A partial upload is on the server; `-C -` sends the rest.
        let cut = 2_500_000;
        home.write("up.bin", &data[..cut]).await;
        let mut up = args(&["-sS", "--fail", "--max-time", "60", "-C", "-", "-T"]);
        up.push(src.display().to_string());
        up.extend(mode.clone());
        up.push(server.url("carol", "pw-carol-1", "/up.bin"));
        run_tool("curl", &up, None).await;
        assert_eq!(
            home.read("up.bin").await,
            data,
            "resumed upload (active: {active})"
        );

        // A partial download is here; `-C -` fetches the rest (REST + RETR).
        let dst = work.path().join("down.bin");
        std::fs::write(&dst, &data[..1_000_000]).unwrap();
        let mut down = args(&["-sS", "--fail", "--max-time", "60", "-C", "-", "-o"]);
        down.push(dst.display().to_string());
        down.extend(mode);
        down.push(server.url("carol", "pw-carol-1", "/up.bin"));
        run_tool("curl", &down, None).await;
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            data,
            "resumed download (active: {active})"
        );

        assert_eq!(
            server.upload_event_sha256("carol", "/up.bin").await,
            sha256_hex(&data)
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_quote_commands() {
    require_tool("curl", "curl");
    let server = common::start_on_storage_under_test().await;
    let home = server.account("dave", "pw-dave-1").await;
    home.write("sub/one.txt", b"1").await;
    home.write("two.txt", b"22").await;

    let out = run_tool(
        "curl",
        &args(&[
            "-sS",
            "--fail",
            "--max-time",
            "30",
            &server.url("dave", "pw-dave-1", "/"),
        ]),
        None,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with('d') && l.ends_with(" sub")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with('-') && l.contains(" 2 ") && l.ends_with(" two.txt")),
        "{text}"
    );

    let out = run_tool(
        "curl",
        &args(&[
            "-sS",
            "--fail",
            "--max-time",
            "30",
            "--list-only",
            &server.url("dave", "pw-dave-1", "/sub/"),
        ]),
        None,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "one.txt");

    // -Q sends commands before the transfer: rename and delete.
    run_tool(
        "curl",
        &args(&[
            "-sS",
            "--fail",
            "--max-time",
            "30",
            "-Q",
            "RNFR two.txt",
            "-Q",
            "RNTO three.txt",
            "-Q",
            "DELE sub/one.txt",
            &server.url("dave", "pw-dave-1", "/"),
        ]),
        None,
    )
    .await;
    assert!(home.exists("three.txt").await && !home.exists("two.txt").await);
    assert!(!home.exists("sub/one.txt").await);
    server.stop().await;
}

/// Downloads take the inline lookup path when the kernel's caches hold the
/// path (crates/vfs/src/local.rs, `cached`): a symlink inside the home is
/// followed, one leading out is refused, and a FIFO someone left in the
/// storage is refused at once instead of hanging the server on the open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_follow_the_jail_and_refuse_special_files() {
    require_tool("curl", "curl");
    let server = common::start().await;
    let home = server.user("erin", "pw-erin-1").await;
    std::fs::write(home.join("real.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink("real.txt", home.join("link.txt")).unwrap();
    let outside = home.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, b"TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(&outside, home.join("out.txt")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        home.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();

    let get = |name: &str| {
        let url = server.url("erin", "pw-erin-1", &format!("/{name}"));
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("curl")
                    .args(["-sS", "--max-time", "20", &url])
                    .output()
            })
            .await
            .unwrap()
            .unwrap();
            (out.status.code(), out.stdout)
        }
    };
    let started = std::time::Instant::now();
    for _ in 0..2 {
        // The second round finds everything in the kernel's caches.
        assert_eq!(get("link.txt").await, (Some(0), b"inside".to_vec()));
        let (code, body) = get("out.txt").await;
        assert_ne!(code, Some(0), "a symlink out of the home is refused");
        assert!(!body.windows(10).any(|w| w == b"TOP-SECRET"));
        // curl exits 78 on "550 no such file / permission denied" for RETR;
        // 28 would be its timeout, i.e. a server stuck on the FIFO.
        let (code, _) = get("pipe").await;
        assert_eq!(code, Some(78), "the FIFO is refused with a 550 reply");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // The server still serves a normal file afterwards.
    assert_eq!(get("real.txt").await, (Some(0), b"inside".to_vec()));
    server.stop().await;
}

/// The SHA-256 of the upload event of `path` in the audit journal, if it
/// is there.
fn journaled_sha256(server: &common::Server, path: &str) -> Option<String> {
    let journaled = server.tg.journaled_events();
    let e = journaled
        .iter()
        .find(|e| e.event.kind == EventKind::Upload && e.event.path.as_deref() == Some(path));
    e.and_then(|e| e.event.sha256.clone())
}

/// Alice's upload events, newest first.
async fn alices_uploads(server: &common::Server) -> Vec<Event> {
    let q = EventQuery {
        username: Some("alice".into()),
        kind: Some(EventKind::Upload),
        limit: 100,
        ..Default::default()
    };
    server.tg.store.query_events(&q).await.unwrap()
}

/// With `durable_uploads = false` uploads are answered from the page cache.
/// One larger than `HASH_AFTER_REPLY_FROM` is hashed to the end, and its
/// event stored, after the reply; a small one is hashed and
/// its event in the audit journal before it, resumed or not (stored in the
/// database a moment later). Either way the event carries the SHA-256 of
/// what the client sent, even when the same name is replaced at once by
/// another upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_cache_uploads_are_audited_with_their_sha256() {
    require_tool("curl", "curl");
    let server = common::start_with(common::Options {
        durable_uploads: false,
        ..Default::default()
    })
    .await;
    let home = server.account("alice", "secret-pw").await;
    let work = tempfile::tempdir().unwrap();
    let big_len = usize::try_from(HASH_AFTER_REPLY_FROM).unwrap() * 2 + 4321;
    let small = write_random_file(&work.path().join("small.bin"), 5000, 8);
    let first = write_random_file(&work.path().join("first.bin"), big_len, 9);
    let second = write_random_file(&work.path().join("second.bin"), big_len - 1, 10);
    for (src, target) in [
        ("small.bin", "/small.bin"),
        ("first.bin", "/big.bin"),
        ("second.bin", "/big.bin"),
    ] {
        let mut up = args(&["-sS", "--fail", "--max-time", "60", "-T"]);
        up.push(work.path().join(src).display().to_string());
        up.push(server.url("alice", "secret-pw", target));
        run_tool("curl", &up, None).await;
        if src == "small.bin" {
            // Journaled before the reply: no flush, no waiting.
            assert_eq!(
                journaled_sha256(&server, "/small.bin"),
                Some(sha256_hex(&small))
            );
        }
    }
    assert_eq!(home.read("big.bin").await, second, "the last upload won");

    // A small resumed upload is hashed by reading the file back (its stream
    // did not start at 0); that too happens before the reply, and its event
    // is in the journal when curl ends.
    let whole = write_random_file(&work.path().join("resumed.bin"), 7000, 11);
    home.write("resumed.bin", &whole[..3000]).await;
    let mut up = args(&["-sS", "--fail", "--max-time", "60", "-C", "-", "-T"]);
    up.push(work.path().join("resumed.bin").display().to_string());
    up.push(server.url("alice", "secret-pw", "/resumed.bin"));
    run_tool("curl", &up, None).await;
    assert_eq!(home.read("resumed.bin").await, whole);
    assert_eq!(
        journaled_sha256(&server, "/resumed.bin"),
        Some(sha256_hex(&whole))
    );
    // And both are stored in the database.
    server.tg.flush_events().await;
    let events = alices_uploads(&server).await;
    for (path, content) in [("/small.bin", &small), ("/resumed.bin", &whole)] {
        let e = events.iter().find(|e| e.path.as_deref() == Some(path));
        assert_eq!(
            e.and_then(|e| e.sha256.clone()),
            Some(sha256_hex(content)),
            "{events:?}"
        );
    }

    // Both big uploads' events, each with its own content's hash.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        server.tg.flush_events().await;
        let events = alices_uploads(&server).await;
        let mut hashes: Vec<Option<String>> = events
            .iter()
            .filter(|e| e.path.as_deref() == Some("/big.bin"))
            .map(|e| e.sha256.clone())
            .collect();
        if hashes.len() == 2 {
            hashes.sort();
            let mut want = vec![Some(sha256_hex(&first)), Some(sha256_hex(&second))];
            want.sort();
            assert_eq!(hashes, want);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "big uploads' events missing: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}
