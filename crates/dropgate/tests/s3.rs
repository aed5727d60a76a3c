//! `[storage] backend = "s3"` end to end: the real clients against a gateway
//! whose homes live in a bucket of a real S3-compatible server on loopback
//! (moto, installed by `scripts/test`), and two nodes sharing that bucket.
//! What S3 cannot do reaches the client as the README says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Gateway, PrivatePostgres, curl, require_tool, sftp_batch, ssh_key};
use dropgate_testkit::Moto;
use serde_json::json;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "Right-pass-1";

/// The `[storage]` part of a gateway's configuration for `bucket`.
fn s3_config(moto: &Moto, bucket: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = {bucket:?}\nprefix = \"dropgate/homes\"\n\
         region = \"us-east-1\"\nendpoint = {:?}\npath_style = true\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing-secret\"\n",
        moto.endpoint()
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn run_ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn ftp_and_sftp_clients_store_fetch_and_manage_files_in_the_bucket() {
    require_tool("lftp", "lftp");
    let moto = Moto::shared();
    let bucket = moto.bucket();
    let gw = Gateway::start(&s3_config(moto, &bucket));
    assert!(
        !gw.log.lock().unwrap().contains("testing-secret"),
        "the secret key must never be logged"
    );
    let token = gw.token();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(work.path(), "acme");
    gw.create_user(
        &token,
        &json!({"username": "acme", "password": PASSWORD, "public_keys": [public]}),
    );
    let ftp = format!("ftp://acme:{PASSWORD}@{}", gw.addr("ftp"));

    // 20 MiB: three multipart parts.
    let big = work.path().join("big.bin");
    let content = dropgate_testkit::write_random_file(&big, 20 << 20, 7);
    run_ok(
        &curl(&["-T", big.to_str().unwrap(), &format!("{ftp}/big.bin")]),
        "FTP upload",
    );
    let back = work.path().join("back.bin");
    run_ok(
        &curl(&["-o", back.to_str().unwrap(), &format!("{ftp}/big.bin")]),
        "FTP download",
    );
    assert!(std::fs::read(&back).unwrap() == content, "FTP round trip");
    // The audit log has the SHA-256 of what arrived, hashed while it streamed.
    let want = sha256_hex(&content);
    gw.wait_events(&token, "type=upload", |items| {
        items
            .iter()
            .any(|e| e["path"] == "/big.bin" && e["sha256"] == want.as_str())
    });
    // Nothing of it is on the local disk.
    assert!(!gw.home("acme").exists(), "the home is in the bucket");

    // Resume: curl sends the rest of a file after what the server has.
    let half = work.path().join("half.bin");
    std::fs::write(&half, &content[..(12 << 20) + 5]).unwrap();
    run_ok(
        &curl(&["-T", half.to_str().unwrap(), &format!("{ftp}/resumed.bin")]),
        "FTP upload of the first part",
    );
    run_ok(
        &curl(&[
            "-C",
            "-",
            "-T",
            big.to_str().unwrap(),
            &format!("{ftp}/resumed.bin"),
        ]),
        "FTP resume",
    );
    run_ok(
        &curl(&["-o", back.to_str().unwrap(), &format!("{ftp}/resumed.bin")]),
        "FTP download of the resumed file",
    );
    assert!(std::fs::read(&back).unwrap() == content, "resumed upload");

    // Folders, renames and deletes over FTP (lftp), and a listing.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for (name, text) in [
        ("a.txt", "alpha"),
        ("b.txt", "bravo"),
        ("sub/c.txt", "charlie"),
    ] {
        std::fs::write(tree.join(name), text).unwrap();
    }
    let lftp = |script: &str| {
        Command::new("lftp")
            .args(["-c", &format!("set ftp:ssl-allow no; set net:max-retries 1; open -u acme,{PASSWORD} ftp://{}; {script}", gw.addr("ftp"))])
            .output()
            .unwrap()
    };
    run_ok(
        &lftp(&format!("mirror -R {} /tree", tree.display())),
        "lftp mirror -R",
    );
    run_ok(&lftp("mv /tree/a.txt /tree/sub/a.txt"), "lftp mv");
    run_ok(&lftp("mv /tree/sub /tree/moved"), "lftp mv of a folder");
    let listing = run_ok(&lftp("cls -1 /tree/moved/"), "lftp cls");
    let mut names: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("/tree/moved/"))
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "c.txt"], "{listing}");
    let cat = run_ok(&lftp("cat /tree/moved/c.txt"), "lftp cat");
    assert_eq!(cat, "charlie");
    run_ok(
        &lftp("rm /tree/moved/a.txt /tree/moved/c.txt; rmdir /tree/moved"),
        "lftp rm",
    );
    let listing = run_ok(&lftp("cls -1 /tree/"), "lftp cls");
    assert_eq!(listing.trim(), "/tree/b.txt", "{listing}");
    // MFMT is not offered: S3 keeps no times it is given.
    let feat = run_ok(&lftp("quote FEAT"), "lftp FEAT");
    assert!(
        feat.contains("REST STREAM") && !feat.contains("MFMT"),
        "{feat}"
    );

    // OpenSSH sftp: the same files, and folders made over SFTP.
    let got = work.path().join("got.bin");
    let out = sftp_batch(
        gw.addr("sftp"),
        "acme",
        &key,
        &format!(
            "mkdir /s\nput {} /s/big\nrename /s/big /s/big2\nget /s/big2 {}\n-ln /s/big2 /s/hard\nls -1 /s\n",
            big.display(),
            got.display()
        ),
    );
    let stdout = run_ok(&out, "sftp batch");
    assert!(std::fs::read(&got).unwrap() == content, "SFTP round trip");
    let listed: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("sftp>")).collect();
    assert_eq!(listed, ["/s/big2"], "{stdout}");
    // No hardlink@openssh.com on S3: OpenSSH says the server lacks it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hardlink@openssh.com"),
        "{stdout}\n--- stderr:\n{stderr}"
    );

    // `put -p` asks to keep the file's times, which S3 cannot: the client
    // is told at once (OpenSSH shows the status, "Operation unsupported"),
    // not at CLOSE after the bytes were stored, so the upload itself stands.
    let out = sftp_batch(
        gw.addr("sftp"),
        "acme",
        &key,
        &format!("put -p {} /s/timed\n", half.display()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fsetstat") && stderr.contains("unsupported"),
        "{stderr}"
    );
    run_ok(
        &curl(&["-o", back.to_str().unwrap(), &format!("{ftp}/s/timed")]),
        "download of the file put with -p",
    );
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&half).unwrap());

    // `df` on S3 shows the account's quota: 100 MiB, 20 MiB of it used.
    gw.create_user(
        &token,
        &json!({"username": "limited", "password": PASSWORD, "public_keys": [public],
                "quota": {"max_bytes": 100 << 20}}),
    );
    let out = sftp_batch(
        gw.addr("sftp"),
        "limited",
        &key,
        &format!("put {} /big\ndf\n", big.display()),
    );
    let df = run_ok(&out, "sftp df");
    let sizes = df
        .lines()
        .skip_while(|l| !l.starts_with("sftp> df"))
        .nth(2)
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>();
    assert_eq!(sizes, ["102400", "20480", "81920"], "{df}");

    // rclone's SFTP backend: a tree up (parallel transfers, writes in
    // flight out of order) and down again. S3 keeps no times it is given,
    // so rclone is told not to set them (README, "Storage on S3").
    require_tool("rclone", "rclone");
    let obscured = Command::new("rclone")
        .args(["--config", "/dev/null", "obscure", PASSWORD])
        .output()
        .unwrap();
    let pass = run_ok(&obscured, "rclone obscure").trim().to_owned();
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=acme,pass={pass},set_modtime=false:",
        gw.addr("sftp").port()
    );
    let src = work.path().join("rc-src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    let mut files = vec![
        ("top.bin", 9 << 20),
        ("a/one.bin", 70_000),
        ("a/b/two.bin", 1),
        ("a/empty.bin", 0),
    ];
    files.sort();
    for (i, (name, size)) in files.iter().enumerate() {
        dropgate_testkit::write_random_file(&src.join(name), *size, 40 + i as u64);
    }
    let rclone = |args: &[&str]| {
        Command::new("rclone")
            .args([
                "--config",
                "/dev/null",
                "--retries",
                "1",
                "--low-level-retries",
                "2",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    run_ok(
        &rclone(&["copy", src.to_str().unwrap(), &format!("{remote}rc")]),
        "rclone copy up",
    );
    let dst = work.path().join("rc-dst");
    run_ok(
        &rclone(&["copy", &format!("{remote}rc"), dst.to_str().unwrap()]),
        "rclone copy down",
    );
    for (name, _) in &files {
        assert!(
            std::fs::read(src.join(name)).unwrap() == std::fs::read(dst.join(name)).unwrap(),
            "rclone round trip of {name}"
        );
    }

    // A write in the middle of a file: refused with the README's words.
    require_tool("python3", "python3");
    let script = format!(
        r#"
import paramiko, sys
t = paramiko.Transport(("127.0.0.1", {port}))
t.connect(username="acme", password="{PASSWORD}")
s = paramiko.SFTPClient.from_transport(t)
f = s.open("/s/rewrite", "w")
f.write(b"0123456789")
f.seek(2)
try:
    f.write(b"xx")
    f.close()
    print("accepted")
except IOError as e:
    print("refused:", e)
t.close()
"#,
        port = gw.addr("sftp").port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stdout = run_ok(&out, "paramiko");
    assert!(
        stdout.contains("refused:")
            && stdout
                .contains("Writing in the middle of a file is not supported by this storage (S3)"),
        "{stdout}"
    );
}

#[test]
fn two_nodes_share_one_bucket() {
    require_tool("curl", "curl");
    let moto = Moto::shared();
    let bucket = moto.bucket();
    let pg = PrivatePostgres::start();
    let config = |name: &str| {
        format!(
            "[database]\nurl = {:?}\n[cluster]\nnode_name = {name:?}\n{}",
            pg.url(),
            s3_config(moto, &bucket)
        )
    };
    let n1 = Gateway::start(&config("n1"));
    let n2 = Gateway::start_next_node(&n1, &config("n2"), &[]);
    let token = n1.token();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(work.path(), "acme");
    n1.create_user(
        &token,
        &json!({"username": "acme", "password": PASSWORD, "public_keys": [public]}),
    );

    // Uploaded through one node, fetched through the other, both ways.
    let one = work.path().join("one.bin");
    let content = dropgate_testkit::write_random_file(&one, 3 << 20, 11);
    run_ok(
        &curl(&[
            "-T",
            one.to_str().unwrap(),
            &format!("ftp://acme:{PASSWORD}@{}/one.bin", n1.addr("ftp")),
        ]),
        "upload through node 1",
    );
    let got = work.path().join("got.bin");
    run_ok(
        &sftp_batch(
            n2.addr("sftp"),
            "acme",
            &key,
            &format!(
                "get /one.bin {}\nput {} /two.bin\n",
                got.display(),
                one.display()
            ),
        ),
        "download and upload through node 2",
    );
    assert!(std::fs::read(&got).unwrap() == content);
    let back = work.path().join("back.bin");
    run_ok(
        &curl(&[
            "-o",
            back.to_str().unwrap(),
            &format!("ftp://acme:{PASSWORD}@{}/two.bin", n1.addr("ftp")),
        ]),
        "download through node 1",
    );
    assert!(std::fs::read(&back).unwrap() == content);
    assert!(!Path::new(&n1.home("acme")).exists() && !Path::new(&n2.home("acme")).exists());

    // A quota holds across the nodes: files stored through one count on
    // the other within a sync round (2 s).
    n1.create_user(
        &token,
        &json!({"username": "capped", "password": PASSWORD, "quota": {"max_files": 2}}),
    );
    let put = |node: &Gateway, name: &str| {
        curl(&[
            "-T",
            one.to_str().unwrap(),
            &format!("ftp://capped:{PASSWORD}@{}/{name}", node.addr("ftp")),
        ])
    };
    let settle = || std::thread::sleep(std::time::Duration::from_secs(5));
    run_ok(&put(&n1, "f1"), "first file through node 1");
    run_ok(&put(&n2, "f2"), "second file through node 2");
    settle();
    for node in [&n1, &n2] {
        let out = put(node, "f3");
        assert!(
            !out.status.success(),
            "a third file must be refused on every node"
        );
    }
    // Deleted through node 2: node 1 takes a file again.
    run_ok(
        &curl(&[
            &format!("ftp://capped:{PASSWORD}@{}/", n2.addr("ftp")),
            "-Q",
            "DELE f1",
        ]),
        "delete through node 2",
    );
    settle();
    run_ok(&put(&n1, "f4"), "a file through node 1 after the delete");
    let (status, user) = n1.api("GET", "/api/v1/users/capped", Some(&token), None);
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["usage"]["files"], 2, "{user}");
}

/// The peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

#[test]
fn a_1_gib_upload_and_download_hold_only_a_few_parts_in_memory() {
    let moto = Moto::shared();
    let bucket = moto.bucket();
    let gw = Gateway::start(&s3_config(moto, &bucket));
    let token = gw.token();
    gw.create_user(&token, &json!({"username": "acme", "password": PASSWORD}));
    let ftp = format!("ftp://acme:{PASSWORD}@{}", gw.addr("ftp"));
    let work = tempfile::tempdir().unwrap();
    // A sparse file: 1 GiB for curl to read, none of it on the disk.
    let big = work.path().join("1g.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let before = peak_rss(gw.pid());
    run_ok(
        &curl(&[
            "--max-time",
            "600",
            "-T",
            big.to_str().unwrap(),
            &format!("{ftp}/1g.bin"),
        ]),
        "1 GiB FTP upload",
    );
    let after_upload = peak_rss(gw.pid());
    let size = run_ok(
        &curl(&[
            "--max-time",
            "600",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("{ftp}/1g.bin"),
        ]),
        "1 GiB FTP download",
    );
    assert_eq!(size.trim(), (1u64 << 30).to_string());
    let after_download = peak_rss(gw.pid());
    eprintln!(
        "peak RSS: {} MiB at start, {} MiB after the upload, {} MiB after the download",
        before >> 20,
        after_upload >> 20,
        after_download >> 20
    );
    // Parts of 8 MiB: one filling and two in flight, plus the HTTP
    // client's buffers; a whole file would be 1,024 MiB.
    assert!(
        after_download.saturating_sub(before) < 96 << 20,
        "peak RSS grew by {} MiB",
        after_download.saturating_sub(before) >> 20
    );
}
