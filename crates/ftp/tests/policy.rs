//! The policy rules over FTP with real clients (curl) and raw commands: the
//! inbox account, folder moves across a rule boundary, names with line
//! breaks in listings, and quota (552 read reliably, parallel uploads).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use dropgate_core::store::{Permission, User};
use dropgate_testkit::{require_tool, write_random_file};
use tokio::io::AsyncWriteExt;

fn perms(rules: &[(&str, &[Permission])]) -> BTreeMap<String, BTreeSet<Permission>> {
    rules
        .iter()
        .map(|(p, r)| (p.to_string(), r.iter().copied().collect()))
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs curl and returns its output, whether it succeeded or not.
async fn curl_output(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("run curl")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_account_can_upload_and_nothing_else() {
    use Permission::*;
    require_tool("curl", "curl");
    let server = common::start().await;
    let mut user = User::new("inbox");
    user.permissions = perms(&[("/", &[List]), ("/inbox", &[List, Upload])]);
    server.tg.add_user_with(user, Some("pw")).await;
    let home = server.home("inbox");
    std::fs::create_dir_all(home.join("inbox")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("a.csv");
    let data = write_random_file(&src, 10_000, 3);
    let url = |p: &str| server.url("inbox", "pw", p);
    let curl = |extra: Vec<String>| async move {
        let mut a = strings(&["-s", "--max-time", "30"]);
        a.extend(extra);
        curl_output(a).await
    };

    let up = curl(vec![
        "-T".into(),
        src.display().to_string(),
        url("/inbox/a.csv"),
    ])
    .await;
    assert!(up.status.success(), "{up:?}");
    assert_eq!(std::fs::read(home.join("inbox/a.csv")).unwrap(), data);
    // Read back: 550 (curl 78: the remote file was not found or not allowed).
    let down = curl(vec!["-o".into(), "/dev/null".into(), url("/inbox/a.csv")]).await;
    assert_eq!(down.status.code(), Some(78), "{down:?}");
    // Overwrite, delete, mkdir: refused, nothing changes.
    let again = curl(vec![
        "-T".into(),
        src.display().to_string(),
        url("/inbox/a.csv"),
    ])
    .await;
    assert!(!again.status.success(), "{again:?}");
    let mut c = server.login("inbox", "pw").await;
    c.expect("DELE /inbox/a.csv", 550).await;
    c.expect("MKD /inbox/sub", 550).await;
    c.expect("RNFR /inbox/a.csv", 350).await;
    c.expect("RNTO /inbox/b.csv", 550).await;
    let (_, r) = c.retr("/inbox/a.csv").await;
    assert_eq!(r.code, 550);
    // A new file at the root: refused.
    assert_eq!(c.stor("/root.csv", b"x").await.code, 550);
    assert_eq!(std::fs::read(home.join("inbox/a.csv")).unwrap(), data);
    assert!(!home.join("inbox/sub").exists() && !home.join("root.csv").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_move_cannot_carry_a_rule_boundary() {
    use Permission::*;
    let server = common::start().await;
    let mut user = User::new("mover");
    user.permissions = perms(&[("/", &[All]), ("/a/ro", &[List, Download])]);
    server.tg.add_user_with(user, Some("pw")).await;
    let home = server.home("mover");
    std::fs::create_dir_all(home.join("a/ro")).unwrap();
    std::fs::write(home.join("a/ro/f"), b"read only").unwrap();
    std::fs::create_dir_all(home.join("free")).unwrap();
    let mut c = server.login("mover", "pw").await;
    c.expect("RNFR /a", 350).await;
    c.expect("RNTO /b", 550).await;
    c.expect("DELE /a/ro/f", 550).await;
    c.expect("RNFR /free", 350).await;
    c.expect("RNTO /moved", 250).await;
    assert!(home.join("a/ro/f").exists() && !home.join("b").exists());
    assert!(home.join("moved").is_dir());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_line_breaks_cannot_forge_listing_entries() {
    let server = common::start().await;
    let home = server.user("lister", "pw").await;
    // Made on disk by other means: no protocol here accepts such a name.
    let forged = "x\r\n-rw-r--r--    1 ftp      ftp             0 Jan 01 00:00 forged";
    std::fs::write(home.join(forged), b"").unwrap();
    std::fs::write(home.join("y\nz"), b"").unwrap();
    std::fs::write(home.join("plain"), b"").unwrap();
    let mut c = server.login("lister", "pw").await;
    for command in ["LIST", "NLST", "MLSD"] {
        let (text, r) = c.listing(command).await;
        assert_eq!(r.code, 226, "{command}");
        let entries: Vec<&str> = text
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.contains("type=cdir") && !l.contains("type=pdir"))
            .collect();
        assert_eq!(entries.len(), 3, "{command}: {text:?}");
        assert_eq!(entries.iter().filter(|l| l.contains("forged")).count(), 1);
        assert!(text.contains("x??-rw"), "{command}: {text:?}");
        assert!(text.contains("y?z"), "{command}: {text:?}");
        assert!(!text.contains('\n') || !text.replace("\r\n", "").contains(['\r', '\n']));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_the_client_reads_552_not_a_reset() {
    let server = common::start().await;
    let mut user = User::new("full");
    user.quota.max_bytes = 1024 * 1024;
    server.tg.add_user_with(user, Some("pw")).await;
    let home = server.home("full");
    let mut c = server.login("full", "pw").await;
    for round in 0..3 {
        let mut d = c.epsv_connect().await;
        c.expect(&format!("STOR big{round}.bin"), 150).await;
        // Everything the client sends is taken (and dropped) after the
        // quota is hit, so the whole write succeeds...
        let data = vec![7u8; 6 * 1024 * 1024];
        d.write_all(&data).await.expect("no reset while sending");
        d.shutdown().await.unwrap();
        drop(d);
        // ...and the reply says why.
        let r = c.reply().await;
        assert_eq!(r.code, 552, "round {round}: {r:?}");
    }
    assert_eq!(
        std::fs::read_dir(&home).unwrap().count(),
        0,
        "nothing left behind"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_holds_under_eight_parallel_curl_uploads() {
    require_tool("curl", "curl");
    let server = common::start().await;
    let mut user = User::new("par");
    user.quota.max_bytes = 2 * 1024 * 1024;
    server.tg.add_user_with(user, Some("pw")).await;
    let home = server.home("par");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("half.bin");
    write_random_file(&src, 512 * 1024, 9);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let args = strings(&[
            "-s",
            "--max-time",
            "60",
            "-T",
            src.to_str().unwrap(),
            &server.url("par", "pw", &format!("/p{i}.bin")),
        ]);
        tasks.push(tokio::spawn(curl_output(args)));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().status.success() {
            ok += 1;
        }
    }
    assert!(ok <= 4, "{ok} uploads of 512 KiB fit in 2 MiB");
    let on_disk: u64 = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 2 * 1024 * 1024, "{on_disk}");
    let user = server.tg.store.get_user("par").await.unwrap().unwrap().user;
    let (bytes, files) = server.tg.gateway.usage(&user).await.unwrap();
    assert_eq!(bytes, on_disk);
    assert_eq!(files, std::fs::read_dir(&home).unwrap().count() as u64);
    server.stop().await;
}
