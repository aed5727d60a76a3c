//! OpenSSH clients (`sftp`, `scp`, `ssh`, `ssh-keyscan`, `sshpass`) against
//! the real listener. The file-moving cases run on the storage under test
//! (`DROPGATE_TEST_STORAGE`: local disk or S3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use dropgate_testkit::{require_tool, write_random_file};
use tokio::process::Command;

/// `sftp` with key login and `extra` options; the destination goes last.
fn sftp_cmd(h: &Harness, key: &std::path::Path, user: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("sftp");
    c.args(h.ssh_opts(key))
        .args(["-P", &h.port.to_string()])
        .args(extra)
        .arg(format!("{user}@127.0.0.1"));
    c.current_dir(h.work.path());
    c
}

async fn batch(
    h: &Harness,
    key: &std::path::Path,
    user: &str,
    commands: &str,
) -> std::process::Output {
    let file = h.work(&format!("batch-{}", rand_suffix()));
    std::fs::write(&file, commands).unwrap();
    let file = file.display().to_string();
    run(&mut sftp_cmd(h, key, user, &["-b", &file])).await
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_batch_put_get_resume_rename_remove() {
    let mut h = Harness::start_on_storage_under_test().await;
    let key = h.user_with_key("alice", "pw-alice").await;
    let big = write_random_file(&h.work("big.bin"), 5 * 1024 * 1024 + 123, 1);
    std::fs::write(h.work("half.bin"), &big[..2 * 1024 * 1024]).unwrap();
    std::fs::write(h.work("regot.bin"), &big[..1024 * 1024 + 7]).unwrap();
    // All of it in the upload's first write (written and hashed in one
    // brief call).
    std::fs::write(h.work("small.bin"), &big[..4096]).unwrap();

    let out = batch(
        &h,
        &key,
        "alice",
        "mkdir dir\n\
         put big.bin dir/big.bin\n\
         ls -l dir\n\
         get dir/big.bin got.bin\n\
         rename dir/big.bin dir/moved.bin\n\
         put half.bin dir/resume.bin\n\
         reput big.bin dir/resume.bin\n\
         reget dir/moved.bin regot.bin\n\
         put -f big.bin dir/synced.bin\n\
         put small.bin dir/small.bin\n\
         ls -l dir\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `ls -l` shows OpenSSH-style long names from our READDIR.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("-rw") && l.contains("alice") && l.ends_with("big.bin")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{}", big.len())), "{stdout}");

    let home = h.files("alice").await;
    assert_eq!(
        std::fs::read(h.work("got.bin")).unwrap(),
        big,
        "get is byte-identical"
    );
    assert_eq!(
        home.read("dir/synced.bin").await,
        big,
        "put -f (fsync@openssh.com before CLOSE)"
    );
    assert_eq!(home.read("dir/moved.bin").await, big, "put + rename");
    assert!(!home.exists("dir/big.bin").await);
    assert_eq!(home.read("dir/resume.bin").await, big, "reput resumed");
    assert_eq!(
        std::fs::read(h.work("regot.bin")).unwrap(),
        big,
        "reget resumed"
    );
    assert!(home.temporaries().is_empty());

    // Audit: the upload event carries the content's SHA-256.
    assert_eq!(
        h.upload_sha256("alice", "/dir/big.bin").await,
        sha256_hex(&big)
    );
    assert_eq!(home.read("dir/small.bin").await, &big[..4096]);
    assert_eq!(
        h.upload_sha256("alice", "/dir/small.bin").await,
        sha256_hex(&big[..4096])
    );

    // Rename refuses to replace (SFTP v3 semantics), remove and rmdir work.
    // `rename -l` is the plain v3 RENAME (refuses to replace); the default
    // uses posix-rename@openssh.com (replaces).
    home.write("dir/other.bin", b"other").await;
    let out = batch(
        &h,
        &key,
        "alice",
        "-rename -l dir/moved.bin dir/resume.bin\n\
         rename dir/other.bin dir/resume.bin\n\
         rm dir/moved.bin\n\
         get dir/resume.bin other-back.bin\n\
         rm dir/resume.bin\n\
         rm dir/synced.bin\n\
         rm dir/small.bin\n\
         rmdir dir\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("remote rename"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(h.work("other-back.bin")).unwrap(), b"other");
    assert!(!home.exists("dir").await);

    // Errors map to the right statuses.
    let out = batch(&h, &key, "alice", "get nothing-here x\n").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        text(&out)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realpath_stays_in_the_jail() {
    let mut h = Harness::start_on_storage_under_test().await;
    let key = h.user_with_key("bob", "pw").await;
    h.files("bob").await.mkdir_all("sub").await;
    let out = batch(
        &h,
        &key,
        "bob",
        "cd /../..\npwd\ncd sub/../../..\npwd\ncd /sub/../sub\npwd\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let pwds: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("Remote working directory: "))
        .collect();
    assert_eq!(pwds, vec!["/", "/", "/sub"], "{}", text(&out));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_both_ways_and_recursive() {
    let mut h = Harness::start_on_storage_under_test().await;
    let key = h.user_with_key("carol", "pw").await;
    let home = h.files("carol").await;
    let version = run(Command::new("ssh").arg("-V")).await;
    let version = String::from_utf8_lossy(&version.stderr).to_string();
    // OpenSSH >= 9.0 speaks SFTP under scp by default; older ones need -s.
    let major: u32 = version
        .strip_prefix("OpenSSH_")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let sftp_flag: &[&str] = if major >= 9 { &[] } else { &["-s"] };

    let data = write_random_file(&h.work("up.bin"), 3 * 1024 * 1024 + 1, 2);
    let mut c = Command::new("scp");
    c.args(h.ssh_opts(&key))
        .args(sftp_flag)
        .args(["-P", &h.port.to_string()]);
    c.arg(h.work("up.bin")).arg("carol@127.0.0.1:up.bin");
    let out = run(&mut c).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(home.read("up.bin").await, data);

    // Overwriting a larger file: OpenSSH 9.x scp writes in place (no TRUNC)
    // and truncates with FSETSTAT at the end; no stale tail may survive.
    home.write("shrink.bin", vec![0xAAu8; 5 * 1024 * 1024])
        .await;
    let mut c = Command::new("scp");
    c.args(h.ssh_opts(&key))
        .args(sftp_flag)
        .args(["-P", &h.port.to_string()]);
    c.arg(h.work("up.bin")).arg("carol@127.0.0.1:shrink.bin");
    let out = run(&mut c).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(home.read("shrink.bin").await, data);

    let mut c = Command::new("scp");
    c.args(h.ssh_opts(&key))
        .args(sftp_flag)
        .args(["-P", &h.port.to_string()]);
    c.arg("carol@127.0.0.1:up.bin").arg(h.work("down.bin"));
    let out = run(&mut c).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(h.work("down.bin")).unwrap(), data);

    // A tree, with `~/` paths (expand-path@openssh.com) and a nested folder.
    let tree = h.work("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    let f1 = write_random_file(&tree.join("a/one.bin"), 100_000, 3);
    let f2 = write_random_file(&tree.join("a/b/two.bin"), 1, 4);
    let mut c = Command::new("scp");
    c.args(h.ssh_opts(&key))
        .args(sftp_flag)
        .args(["-r", "-P", &h.port.to_string()]);
    c.arg(&tree).arg("carol@127.0.0.1:~/copied");
    let out = run(&mut c).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(home.read("copied/a/one.bin").await, f1);
    assert_eq!(home.read("copied/a/b/two.bin").await, f2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_with_sshpass() {
    require_tool("sshpass", "sshpass");
    let mut h = Harness::start_on_storage_under_test().await;
    h.tg.add_user("dave", "s3cret-pw").await;
    let data = write_random_file(&h.work("p.bin"), 200_000, 5);
    let sftp = |pw: &str| {
        let mut c = Command::new("sshpass");
        c.args(["-p", pw, "sftp"]).args(base_ssh_opts());
        c.args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-P",
            &h.port.to_string(),
        ]);
        c.arg("dave@127.0.0.1").current_dir(h.work.path());
        c
    };
    // sftp -b forces BatchMode (no password prompts): commands go on stdin.
    let out = run_with_input(&mut sftp("s3cret-pw"), b"put p.bin\nbye\n").await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(h.files("dave").await.read("p.bin").await, data);

    let out = run_with_input(&mut sftp("wrong"), b"bye\n").await;
    assert!(!out.status.success(), "{}", text(&out));
    h.stop().await;
}

/// What OpenSSH prints for a failed login, with the user name taken out.
fn denial(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("Permission denied"))
        .unwrap_or("<none>");
    line.split_once(": ")
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| line.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_wrong_password_and_unknown_user_look_alike() {
    require_tool("sshpass", "sshpass");
    let mut h = Harness::start().await;
    let good = h.user_with_key("erin", "right-pw").await;
    let (other, _) = keygen(h.work.path(), "stranger").await;

    let ssh_key = |key: &std::path::Path, user: &str| {
        let mut c = Command::new("sftp");
        c.args(h.ssh_opts(key)).args([
            "-o",
            "PasswordAuthentication=no",
            "-P",
            &h.port.to_string(),
        ]);
        c.arg(format!("{user}@127.0.0.1"));
        c
    };
    let ok = run(&mut ssh_key(&good, "erin")).await;
    assert!(ok.status.success(), "the right key works: {}", text(&ok));
    let wrong_key = run(&mut ssh_key(&other, "erin")).await;
    let unknown_user_key = run(&mut ssh_key(&good, "nobody")).await;

    let ssh_pw = |pw: &str, user: &str| {
        let mut c = Command::new("sshpass");
        c.args(["-p", pw, "sftp"]).args(base_ssh_opts());
        c.args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-P",
            &h.port.to_string(),
        ]);
        c.arg(format!("{user}@127.0.0.1"));
        c
    };
    let wrong_pw = run_with_input(&mut ssh_pw("nope", "erin"), b"bye\n").await;
    let unknown_user_pw = run_with_input(&mut ssh_pw("nope", "nobody"), b"bye\n").await;

    for o in [&wrong_key, &unknown_user_key] {
        assert_eq!(o.status.code(), Some(255), "{}", text(o));
        assert_eq!(denial(o), denial(&wrong_key), "{}", text(o));
        assert!(
            denial(o).contains("Permission denied (publickey,password)"),
            "{}",
            text(o)
        );
    }
    for o in [&wrong_pw, &unknown_user_pw] {
        assert!(!o.status.success(), "{}", text(o));
        assert_eq!(o.status.code(), wrong_pw.status.code());
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_shell_and_other_subsystems_are_refused() {
    let mut h = Harness::start().await;
    let key = h.user_with_key("frank", "pw").await;
    let mut c = Command::new("ssh");
    c.args(h.ssh_opts(&key)).args([
        "-p",
        &h.port.to_string(),
        "frank@127.0.0.1",
        "ls",
        "-la",
        "/",
    ]);
    let out = run(&mut c).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shell access is not available, use SFTP"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty());

    // A shell gets the same answer.
    let mut c = Command::new("ssh");
    c.args(h.ssh_opts(&key))
        .args(["-T", "-p", &h.port.to_string(), "frank@127.0.0.1"]);
    let out = run(&mut c).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shell access is not available"),
        "{}",
        text(&out)
    );

    // A pty is refused (`-tt` makes that fatal for the client).
    let mut c = Command::new("ssh");
    c.args(h.ssh_opts(&key))
        .args(["-tt", "-p", &h.port.to_string(), "frank@127.0.0.1"]);
    let out = run(&mut c).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PTY allocation request failed"),
        "{}",
        text(&out)
    );

    let mut c = Command::new("ssh");
    c.args(h.ssh_opts(&key)).args([
        "-p",
        &h.port.to_string(),
        "-s",
        "frank@127.0.0.1",
        "netconf",
    ]);
    let out = run(&mut c).await;
    assert!(!out.status.success(), "{}", text(&out));

    // Port forwarding is refused too.
    let mut c = Command::new("ssh");
    c.args(h.ssh_opts(&key)).args([
        "-p",
        &h.port.to_string(),
        "-W",
        "127.0.0.1:22",
        "frank@127.0.0.1",
    ]);
    let out = run(&mut c).await;
    assert!(!out.status.success(), "{}", text(&out));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_survive_a_restart() {
    let tg = dropgate_testkit::TestGateway::new().await;
    let data_dir = tempfile::tempdir().unwrap();
    let bind = || async {
        dropgate_sftp::SftpServer::bind(config(data_dir.path()), tg.gateway.clone())
            .await
            .unwrap()
    };
    let first = bind().await;
    let fps = first.host_key_fingerprints();
    assert_eq!(fps.len(), 2);
    assert!(fps.iter().all(|f| f.starts_with("SHA256:")));
    for f in ["ssh_host_ed25519_key", "ssh_host_rsa_key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let scanned_first = keyscan(first).await;
    let second = bind().await;
    assert_eq!(second.host_key_fingerprints(), fps);
    let scanned_second = keyscan(second).await;
    assert_eq!(scanned_first, scanned_second);
    // What clients see is exactly what the server reports.
    for fp in &fps {
        assert!(scanned_first.contains(fp), "{fp} not in {scanned_first}");
    }
}

/// Runs the server, asks `ssh-keyscan` for its keys, returns their fingerprints.
async fn keyscan(server: dropgate_sftp::SftpServer) -> String {
    let port = server.local_addrs()[0].port();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let out = run(Command::new("ssh-keyscan").args([
        "-p",
        &port.to_string(),
        "-t",
        "ed25519,rsa",
        "127.0.0.1",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys"), &out.stdout).unwrap();
    let fp = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(dir.path().join("keys")))
    .await;
    assert!(fp.status.success(), "{}", text(&fp));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap();
    // "256 SHA256:… [127.0.0.1]:PORT (ED25519)": the port differs per run.
    let mut lines: Vec<String> = String::from_utf8_lossy(&fp.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .enumerate()
                .filter(|(i, _)| *i != 2)
                .map(|(_, w)| w)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_mid_upload_leaves_nothing() {
    let mut h = Harness::start_on_storage_under_test().await;
    let key = h.user_with_key("gina", "pw").await;
    write_random_file(&h.work("slow.bin"), 24 * 1024 * 1024, 6);
    std::fs::write(h.work("slow-batch"), "put slow.bin slow.bin\n").unwrap();
    // 32000 Kbit/s: the 24 MiB upload takes about 6 s, long enough to interrupt.
    let batch_file = h.work("slow-batch").display().to_string();
    let mut c = sftp_cmd(&h, &key, "gina", &["-l", "32000", "-b", &batch_file]);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = c.spawn().unwrap();
    let home = h.files("gina").await;
    // Interrupted once the upload is visible where it is kept: a temporary
    // on disk, an unfinished multipart upload in a bucket (begun once a
    // second 8 MiB part follows the first).
    let started = wait_for(40, || {
        h.uploading("/slow.bin").is_some_and(|b| b > 256 * 1024) && !home.temporaries().is_empty()
    })
    .await;
    assert!(started, "upload never started");
    child.kill().await.unwrap();
    let _ = child.wait().await;
    // The server notices the vanished client and aborts: no final file, no debris.
    assert!(
        wait_for(20, || h.uploading("/slow.bin").is_none()
            && home.temporaries().is_empty())
        .await,
        "upload still running or temporary left behind"
    );
    assert!(
        !home.exists("slow.bin").await,
        "partial upload visible under its final name"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_six_authentication_attempts_per_connection() {
    let mut h = Harness::start().await;
    let good = h.user_with_key("hank", "pw").await;
    // Eight unknown keys first, the right one last: the server hangs up
    // after six failures, so the right key is never reached.
    let mut c = Command::new("ssh");
    c.args(base_ssh_opts())
        .args(["-o", "BatchMode=yes", "-o", "PasswordAuthentication=no"]);
    for i in 0..8 {
        let (k, _) = keygen(h.work.path(), &format!("junk{i}")).await;
        c.arg("-i").arg(k);
    }
    c.arg("-i")
        .arg(&good)
        .args(["-p", &h.port.to_string(), "-s", "hank@127.0.0.1", "sftp"]);
    let out = run(&mut c).await;
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Too many authentication"), "{}", text(&out));
    h.stop().await;
}
