//! The command line as an operator uses it: the real binary, a real SQLite
//! file in a scratch folder, real signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dropgate(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dropgate"));
    c.current_dir(dir)
        .env_remove("DROPGATE_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn user_add_then_show_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("k.pub");
    std::fs::write(
        &keyfile,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8m partner@host\n",
    )
    .unwrap();
    let mut add = dropgate(dir.path());
    add.args([
        "user",
        "add",
        "acme",
        "--password-stdin",
        "--home",
        "partners/acme",
        "--quota-bytes",
        "1048576",
    ])
    .args(["--perm", "/=list", "--perm", "/inbox=list,upload", "--key"])
    .arg(&keyfile);
    let out = run_with_stdin(add, "s3cret\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = dropgate(dir.path())
        .args(["user", "show", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["username"], "acme");
    assert_eq!(v["home"], "partners/acme");
    assert_eq!(v["quota"]["max_bytes"], 1048576);
    assert_eq!(
        v["permissions"]["/inbox"],
        serde_json::json!(["list", "upload"])
    );
    assert_eq!(
        v["public_keys"][0],
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8m partner@host"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("argon2") && !text.contains("s3cret"),
        "no secret in output: {text}"
    );

    // The database landed in ./data by default.
    assert!(dir.path().join("data/dropgate.db").is_file());

    // Duplicate, list, passwd, delete.
    let out = run_with_stdin(
        {
            let mut c = dropgate(dir.path());
            c.args(["user", "add", "acme", "--password-stdin"]);
            c
        },
        "x\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = dropgate(dir.path())
        .args(["user", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme"));
    let out = run_with_stdin(
        {
            let mut c = dropgate(dir.path());
            c.args(["user", "passwd", "acme", "--password-stdin"]);
            c
        },
        "n3w\n",
    );
    assert!(out.status.success());
    // rescan counts the home from disk: a hard link's bytes once, every name.
    let home = dir.path().join("data/files/partners/acme");
    std::fs::create_dir_all(home.join("sub")).unwrap();
    std::fs::write(home.join("a.bin"), vec![1u8; 1000]).unwrap();
    std::fs::write(home.join("sub/b.bin"), vec![2u8; 234]).unwrap();
    std::fs::hard_link(home.join("a.bin"), home.join("sub/a-again.bin")).unwrap();
    let out = dropgate(dir.path())
        .args(["user", "rescan", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "acme: 1234 bytes in 3 files (quota: 1048576 bytes, unlimited files)"
    );
    let out = dropgate(dir.path())
        .args(["user", "delete", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(home.join("a.bin").exists(), "files kept");
    let out = dropgate(dir.path())
        .args(["user", "show", "acme"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "[ftp]\nidle_timeout_secs = \"soon\"\n",
            "ftp.idle_timeout_secs",
        ),
        ("[ftp]\npassive_ports = \"10-5\"\n", "ftp.passive_ports"),
        ("[sftp]\nlisten = \"nowhere\"\n", "sftp.listen"),
        (
            "[storage]\nupload_mode = \"sideways\"\n",
            "storage.upload_mode",
        ),
        ("[database]\nurl = \"mysql://x\"\n", "database.url"),
        ("[ftp]\nno_such_key = 1\n", "no_such_key"),
        (
            "[cluster]\nproxy_protocol = true\n",
            "cluster.trusted_proxies",
        ),
        (
            "[cluster]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "cluster.trusted_proxies[0]",
        ),
        (
            "[cluster]\ntrusted_proxies = [\"10.0.0.1\", \"::/0\"]\n",
            "cluster.trusted_proxies[1]",
        ),
        ("[storage]\nbackend = \"s3\"\n", "storage.s3.bucket"),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nendpoint = \"minio:9000\"\n",
            "storage.s3.endpoint",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\naccess_key_id = \"k\"\n",
            "storage.s3.access_key_id",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nprefix = \"a/../b\"\n",
            "storage.s3.prefix",
        ),
        ("not toml at all [[[", "TOML"),
    ];
    for (body, key) in cases {
        std::fs::write(dir.path().join("dropgate.toml"), body).unwrap();
        let out = dropgate(dir.path()).arg("check-config").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(
            err.contains(key),
            "{body}: error does not name {key}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    // Environment overrides are checked the same way.
    std::fs::remove_file(dir.path().join("dropgate.toml")).unwrap();
    let out = dropgate(dir.path())
        .arg("check-config")
        .env("DROPGATE_LIMITS__BAN_SECS", "later")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.ban_secs"));
    // A missing --config file is a usage error too.
    let out = dropgate(dir.path())
        .args(["--config", "nope.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_masks_secrets_and_applies_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dropgate.toml"),
        "[database]\nurl = \"postgres://svc:hunter2@127.0.0.1:5432/db\"\n[storage.s3]\nsecret_access_key = \"AKIASECRET\"\n",
    )
    .unwrap();
    let out = dropgate(dir.path())
        .arg("check-config")
        .env("DROPGATE_FTP__BANNER", "welcome partners")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("hunter2") && !text.contains("AKIASECRET"),
        "{text}"
    );
    assert!(text.contains("svc:****@"));
    assert!(text.contains("banner = \"welcome partners\""));
    // Relative paths resolve against the config file's folder.
    assert!(text.contains(&format!(
        "data_dir = \"{}",
        std::fs::canonicalize(dir.path()).unwrap().display()
    )));
}

#[test]
fn serve_creates_first_admin_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Listeners on ephemeral loopback ports so parallel tests never collide.
    std::fs::write(
        dir.path().join("dropgate.toml"),
        "[ftp]\nlisten = \"127.0.0.1:0\"\n[sftp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = dropgate(dir.path())
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pwfile = dir.path().join("data/initial-admin-password");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pwfile.exists() {
        assert!(Instant::now() < deadline, "no initial admin password file");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mode = std::fs::metadata(&pwfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pw = std::fs::read_to_string(&pwfile).unwrap();
    assert!(pw.trim().len() >= 20);

    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "serve did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(pw.trim()),
        "password printed once to stderr"
    );

    // A second start keeps the admin (no new password).
    let again = dropgate(dir.path())
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status()
        .unwrap();
    let out = again.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("created admin account"));
}

#[test]
fn serve_raises_the_open_file_limit_and_warns_when_it_is_too_low() {
    dropgate_testkit::require_tool("prlimit", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dropgate.toml"),
        "[ftp]\nlisten = \"127.0.0.1:0\"\n[sftp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    // Soft 256, hard 4096: raised to 4096, still below what 2,000 connections need.
    let mut child = Command::new("prlimit")
        .args(["--nofile=256:4096", "--"])
        .arg(env!("CARGO_BIN_EXE_dropgate"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("DROPGATE_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let started = line.contains("dropgate started");
            all.push_str(&line);
            all.push('\n');
            if started {
                break;
            }
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = reader.join().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(log.contains("open_files=4096"), "{log}");
    assert!(
        log.contains("below what limits.max_connections can need"),
        "{log}"
    );
}
