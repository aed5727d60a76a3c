//! The admin console end to end: the real binary, real headless Chromium
//! (Debian's `chromium`, driven by `playwright-core` from `web/`), a real FTP
//! client. The browser part is `web/tests/console.spec.mjs`; this test starts
//! the gateway, runs it and fails with its output. Nothing is skipped: a
//! missing browser or `node_modules` is a failure that says how to install
//! it (`scripts/test` does both).
//!
//! Screenshots of every page are written to a scratch folder; set
//! `DROPGATE_UPDATE_SCREENSHOTS=1` to write them to `docs/console/` instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Gateway;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn console_end_to_end_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (`apt-get install chromium`; scripts/test does)"
    );
    let web = repo_root().join("web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run `npm ci --prefix web` (scripts/test does)"
    );
    common::require_tool("python3", "python3");

    let gw = Gateway::start("");
    let shots = if std::env::var_os("DROPGATE_UPDATE_SCREENSHOTS").is_some() {
        repo_root().join("docs/console")
    } else {
        gw.dir.path().join("screenshots")
    };
    let out = Command::new("node")
        .arg("tests/console.spec.mjs")
        .current_dir(&web)
        .env("DROPGATE_URL", format!("http://{}", gw.addr("admin")))
        .env("DROPGATE_ADMIN_PASSWORD", &gw.admin_password)
        .env("DROPGATE_FTP", gw.addr("ftp").to_string())
        .env("DROPGATE_SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs (install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    if !out.status.success() {
        let log = gw.log.lock().unwrap().clone();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "the console test failed ({}); gateway log, last lines:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(stdout.contains("PASS"), "{stdout}");
    for page in [
        "sign-in",
        "dashboard",
        "sessions",
        "audit-log",
        "accounts",
        "account-edit",
        "api-keys",
        "event-rules",
        "event-rule-edit",
        "status",
        "dashboard-phone",
    ] {
        let file = shots.join(format!("{page}.png"));
        assert!(file.is_file(), "no screenshot {}", file.display());
    }
}
