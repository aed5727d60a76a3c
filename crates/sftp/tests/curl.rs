//! curl's SFTP support (libssh2) with password logins, on the storage under
//! test (`DROPGATE_TEST_STORAGE`: local disk or S3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use dropgate_testkit::write_random_file;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_and_uploads_with_a_password() {
    let version = run(Command::new("curl").arg("-V")).await;
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("sftp"),
        "this curl has no SFTP support: {}",
        text(&version)
    );
    let mut h = Harness::start_on_storage_under_test().await;
    h.tg.add_user("carl", "curl-pw").await;
    let home = h.files("carl").await;
    let data = write_random_file(&h.work("down.bin"), 2 * 1024 * 1024 + 3, 11);
    home.write("down.bin", data.clone()).await;
    let url = |p: &str| format!("sftp://127.0.0.1:{}/{p}", h.port);
    let curl = || {
        let mut c = Command::new("curl");
        // -k: no known_hosts check (a test server with fresh keys).
        c.args(["-sS", "-k", "--max-time", "60", "--user", "carl:curl-pw"]);
        c
    };

    let out = run(curl().arg(url("down.bin")).arg("-o").arg(h.work("got.bin"))).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(h.work("got.bin")).unwrap(), data);

    let up = write_random_file(&h.work("up.bin"), 1024 * 1024 + 5, 12);
    let out = run(curl().arg("-T").arg(h.work("up.bin")).arg(url("up.bin"))).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(home.read("up.bin").await, up);

    // A directory listing (READDIR) and a missing file.
    let out = run(curl().arg(url(""))).await;
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("down.bin") && listing.contains("up.bin"),
        "{listing}"
    );
    let out = run(curl().arg(url("missing.bin"))).await;
    assert!(!out.status.success(), "{}", text(&out));

    // A wrong password is refused.
    let out = run(Command::new("curl")
        .args(["-sS", "-k", "--max-time", "60", "--user", "carl:wrong"])
        .arg(url("down.bin")))
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    h.stop().await;
}
