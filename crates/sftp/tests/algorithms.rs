//! The SSH algorithm policy as an OpenSSH client sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use dropgate_testkit::TestGateway;
use tokio::process::Command;

/// Runs `sftp -b` (a single `pwd`) with extra `-o` options.
async fn try_login(h: &Harness, key: &std::path::Path, opts: &[&str]) -> std::process::Output {
    let batch = h.work("pwd-batch");
    std::fs::write(&batch, "pwd\n").unwrap();
    let mut c = Command::new("sftp");
    c.args(h.ssh_opts(key))
        .args(["-P", &h.port.to_string(), "-b"])
        .arg(&batch);
    for o in opts {
        c.args(["-o", o]);
    }
    c.arg("ava@127.0.0.1");
    run(&mut c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_algorithms_only_with_strict_kex() {
    let mut h = Harness::start().await;
    let key = h.user_with_key("ava", "pw").await;
    for cipher in [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    ] {
        let out = try_login(
            &h,
            &key,
            &[
                &format!("Ciphers={cipher}"),
                "MACs=hmac-sha2-256-etm@openssh.com",
            ],
        )
        .await;
        assert!(out.status.success(), "{cipher}: {}", text(&out));
    }
    for host_key in ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"] {
        let out = try_login(&h, &key, &[&format!("HostKeyAlgorithms={host_key}")]).await;
        assert!(out.status.success(), "{host_key}: {}", text(&out));
    }
    let out = try_login(&h, &key, &["KexAlgorithms=curve25519-sha256"]).await;
    assert!(out.status.success(), "{}", text(&out));

    for refused in [
        "Ciphers=aes128-cbc,aes256-cbc,3des-cbc",
        "KexAlgorithms=diffie-hellman-group14-sha1,diffie-hellman-group1-sha1",
        "KexAlgorithms=diffie-hellman-group14-sha256,diffie-hellman-group16-sha512",
        "HostKeyAlgorithms=ssh-rsa",
    ] {
        let out = try_login(&h, &key, &[refused]).await;
        assert!(
            !out.status.success(),
            "{refused} was accepted: {}",
            text(&out)
        );
    }
    let out = try_login(
        &h,
        &key,
        &[
            "Ciphers=aes128-ctr",
            "MACs=hmac-sha1,hmac-sha1-etm@openssh.com",
        ],
    )
    .await;
    assert!(
        !out.status.success(),
        "SHA-1 MACs were accepted: {}",
        text(&out)
    );

    // Strict key exchange (the Terrapin countermeasure) is negotiated.
    let batch = h.work("pwd-batch");
    let mut c = Command::new("sftp");
    c.arg("-vvv")
        .args(h.ssh_opts(&key))
        .args(["-P", &h.port.to_string(), "-b"])
        .arg(&batch)
        .arg("ava@127.0.0.1");
    let out = run(&mut c).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("strict KEX"),
        "{}",
        text(&out)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_algorithms_are_opt_in() {
    let mut h =
        Harness::start_configured(TestGateway::new().await, |c| c.legacy_algorithms = true).await;
    let key = h.user_with_key("ava", "pw").await;
    let out = try_login(
        &h,
        &key,
        &[
            "KexAlgorithms=diffie-hellman-group14-sha1",
            "HostKeyAlgorithms=ssh-rsa",
            "Ciphers=aes128-ctr",
            "MACs=hmac-sha1",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    // Still no CBC, even for old clients.
    let out = try_login(&h, &key, &["Ciphers=aes128-cbc"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    h.stop().await;
}
