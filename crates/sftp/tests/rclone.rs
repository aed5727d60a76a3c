//! rclone's SFTP backend (Go's x/crypto/ssh and pkg/sftp) copying trees
//! both ways, on the storage under test (`DROPGATE_TEST_STORAGE`: local disk
//! or S3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use dropgate_testkit::{require_tool, write_random_file};
use tokio::process::Command;

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_copies_a_tree_up_and_down() {
    require_tool("rclone", "rclone");
    let mut h = Harness::start_on_storage_under_test().await;
    h.tg.add_user("rick", "rclone-pw").await;
    // Storage that keeps no times it is given: rclone is told not to set
    // them (README, "Storage on S3").
    let set_modtime = if h.tg.capabilities().set_times {
        ""
    } else {
        ",set_modtime=false"
    };
    let obscured =
        run(Command::new("rclone").args(["--config", "/dev/null", "obscure", "rclone-pw"])).await;
    assert!(obscured.status.success(), "{}", text(&obscured));
    let pass = String::from_utf8_lossy(&obscured.stdout).trim().to_owned();
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=rick,pass={pass}{set_modtime}:",
        h.port
    );

    let src = h.work("src");
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    write_random_file(&src.join("top.bin"), 1_500_000, 31);
    write_random_file(&src.join("a/one.bin"), 70_000, 32);
    write_random_file(&src.join("a/b/two.bin"), 1, 33);
    write_random_file(&src.join("a/b/c/three.bin"), 300_000, 34);
    std::fs::write(src.join("a/empty.txt"), b"").unwrap();

    let rclone = |args: &[String]| {
        let mut c = Command::new("rclone");
        c.args([
            "--config",
            "/dev/null",
            "--retries",
            "1",
            "--low-level-retries",
            "2",
            "--contimeout",
            "20s",
        ]);
        c.args(args);
        c
    };
    let out = run(&mut rclone(&[
        "copy".into(),
        src.display().to_string(),
        format!("{remote}up"),
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let home = h.files("rick").await;
    assert_eq!(home.tree("up").await, tree(&src), "uploaded tree");
    assert!(home.temporaries().is_empty(), "{:?}", home.temporaries());

    let out = run(&mut rclone(&[
        "lsf".into(),
        "-R".into(),
        format!("{remote}up"),
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("a/b/c/three.bin"),
        "{}",
        text(&out)
    );

    let dst = h.work("dst");
    let out = run(&mut rclone(&[
        "copy".into(),
        format!("{remote}up"),
        dst.display().to_string(),
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&dst), tree(&src), "downloaded tree");

    // A second copy finds nothing to do (sizes and modification times match).
    let out = run(&mut rclone(&[
        "copy".into(),
        "-v".into(),
        src.display().to_string(),
        format!("{remote}up"),
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Copied (new)"),
        "{}",
        text(&out)
    );
    h.stop().await;
}
