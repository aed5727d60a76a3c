//! Real clients beyond curl: Python's ftplib (passive and active) and lftp
//! (mirror up and down of a tree, four connections in parallel), on the
//! storage under test (`DROPGATE_TEST_STORAGE`: local disk or S3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{run_tool, sha256_hex, tree};
use dropgate_core::store::{EventKind, Outcome};
use dropgate_testkit::{require_tool, write_random_file};

async fn ftplib(active: bool) {
    let server = common::start_on_storage_under_test().await;
    let home = server.account("py", "py-secret").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ftplib_client.py");
    let args = vec![
        script.display().to_string(),
        server.addr.ip().to_string(),
        server.addr.port().to_string(),
        "py".to_owned(),
        "py-secret".to_owned(),
        if active { "active" } else { "passive" }.to_owned(),
        if server.tg.capabilities().set_times {
            "set_times"
        } else {
            "none"
        }
        .to_owned(),
    ];
    let out = run_tool("python3", &args, None).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");

    // What the script left, as seen in the storage.
    assert_eq!(
        home.read("text.txt").await,
        b"line1\nline2\n",
        "TYPE A stores LF line ends"
    );
    assert!(
        home.is_file("répertoire/données-日本.txt").await,
        "non-ASCII name stored as UTF-8"
    );
    if server.tg.is_local() {
        // The name on disk itself, not only through the storage layer.
        let on_disk = server
            .home("py")
            .join("répertoire")
            .join("données-日本.txt");
        assert!(on_disk.is_file(), "{}", on_disk.display());
    }
    assert_eq!(home.read("new-by-appe.txt").await, b"fresh");
    assert!(!home.exists("app.txt").await && !home.exists("app2.txt").await);
    let part = home.read("part.bin").await;
    assert_eq!(
        part,
        home.read("big.bin").await,
        "REST+STOR rebuilt the file"
    );
    assert_eq!(
        server.upload_event_sha256("py", "/part.bin").await,
        sha256_hex(&part)
    );
    assert!(home.temporaries().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_passive() {
    require_tool("python3", "python3");
    ftplib(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_active() {
    require_tool("python3", "python3");
    ftplib(true).await;
}

/// A tree of nested folders with about fifty files of assorted sizes.
fn make_tree(root: &Path) {
    let dirs = ["a", "a/b", "a/b/c", "d", "e/f g", "e/ü-日本"];
    std::fs::create_dir_all(root).unwrap();
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let sizes = [0usize, 1, 100, 4096, 65_537, 300_000, 1_500_000];
    let mut n = 0u64;
    for (i, d) in [".", "a", "a/b", "a/b/c", "d", "e", "e/f g", "e/ü-日本"]
        .iter()
        .enumerate()
    {
        for (j, size) in sizes.iter().enumerate().take(6 + i % 2) {
            n += 1;
            let name = format!("file {i}-{j}.bin");
            write_random_file(&root.join(d).join(name), *size, n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_mirror_up_and_down() {
    require_tool("lftp", "lftp");
    let server = common::start_on_storage_under_test().await;
    let home = server.account("mirror", "mirror-pw").await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let back = work.path().join("back");
    make_tree(&src);
    let files = tree(&src);
    assert!(files.len() >= 50, "{} files", files.len());

    let script = format!(
        "set net:max-retries 2; set net:timeout 20; set net:reconnect-interval-base 1; set cmd:fail-exit yes; \
         set xfer:clobber yes; open -u mirror,mirror-pw -p {port} {host}; \
         mirror -R --parallel=4 {src} /up; \
         mirror --parallel=4 /up {back}; quit",
        port = server.addr.port(),
        host = server.addr.ip(),
        src = quote(&src),
        back = quote(&back),
    );
    run_tool("lftp", &["-c".to_owned(), script], None).await;

    assert_eq!(
        home.tree("up").await,
        files,
        "mirror up: server tree differs"
    );
    assert_eq!(tree(&back), files, "mirror down: local tree differs");
    assert!(home.temporaries().is_empty());
    // Every upload's event carries its content's SHA-256: durable uploads
    // (the default) of up to 64 KiB are written and hashed in one brief
    // call on the worker, larger ones chunk by chunk on the pool.
    let mut hashed: Vec<(String, String)> = server
        .events_of("mirror", EventKind::Upload)
        .await
        .into_iter()
        .filter(|e| e.outcome == Outcome::Ok)
        .filter_map(|e| Some((e.path?, e.sha256?)))
        .collect();
    hashed.sort();
    let mut expected: Vec<(String, String)> = files
        .iter()
        .map(|(rel, body)| (format!("/up/{rel}"), sha256_hex(body)))
        .collect();
    expected.sort();
    assert_eq!(
        hashed, expected,
        "an upload event with the right SHA-256 per file"
    );
    // lftp sets each uploaded file's time with MFMT (listed in FEAT where
    // the storage can set times). Answered without waiting for its event,
    // the event is still stored: one `setstat` per file.
    if server.tg.capabilities().set_times {
        let mut timed: Vec<String> = server
            .events_of("mirror", EventKind::Setstat)
            .await
            .into_iter()
            .filter(|e| e.outcome == Outcome::Ok)
            .filter_map(|e| e.path)
            .collect();
        timed.sort();
        timed.dedup();
        let mut uploaded: Vec<String> = files.iter().map(|(rel, _)| format!("/up/{rel}")).collect();
        uploaded.sort();
        assert_eq!(timed, uploaded, "a setstat event per uploaded file");
    }
    server.stop().await;
}

fn quote(p: &Path) -> String {
    format!("\"{}\"", p.display())
}
