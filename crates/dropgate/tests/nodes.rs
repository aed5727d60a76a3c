//! Several nodes on one PostgreSQL (a private cluster of the test's own):
//! each lists the other in `GET /api/v1/nodes`, an account and an admin
//! token made on one work on the other, and a node that stops drops out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, PrivatePostgres, curl, require_tool};
use serde_json::json;

const PASSWORD: &str = "Right-pass-1";

/// The node names `gw` lists, waiting (up to 15 s) until `want` holds.
fn nodes_until(
    gw: &Gateway,
    token: &str,
    want: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v) = gw.api("GET", "/api/v1/nodes", Some(token), None);
        assert_eq!(status, 200, "{v}");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if want(&items) {
            return items;
        }
        assert!(Instant::now() < deadline, "nodes never matched: {items:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names(items: &[serde_json::Value]) -> Vec<&str> {
    items.iter().filter_map(|n| n["name"].as_str()).collect()
}

#[test]
fn two_nodes_on_one_postgres_see_each_other_share_accounts_and_part_cleanly() {
    require_tool("curl", "curl");
    let pg = PrivatePostgres::start();
    let config = |name: &str| {
        format!(
            "[database]\nurl = {:?}\n[cluster]\nnode_name = {name:?}\n",
            pg.url()
        )
    };
    let n1 = Gateway::start(&config("n1"));
    // The first node made the first admin; the second finds it in the store.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("data")).unwrap();
    std::fs::copy(
        n1.dir.path().join("data/initial-admin-password"),
        dir2.path().join("data/initial-admin-password"),
    )
    .unwrap();
    let n2 = Gateway::start_in(dir2, &config("n2"));

    // A token from one node is good on the other (tokens live in the store).
    let token = n1.token();
    let items = nodes_until(&n1, &token, |items| names(items) == ["n1", "n2"]);
    let sftp2 = format!("sftp {}", n2.addr("sftp"));
    assert!(
        items[1]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == sftp2.as_str()),
        "{items:#?}"
    );
    assert!(items[0]["version"].is_string() && items[0]["last_seen_at"].is_string());
    nodes_until(&n2, &token, |items| names(items) == ["n1", "n2"]);

    // An account made through one node logs in on the other at once.
    n1.create_user(
        &token,
        &json!({"username": "partner", "password": PASSWORD}),
    );
    let out = curl(&[&format!("ftp://partner:{PASSWORD}@{}/", n2.addr("ftp"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A node that stops leaves the list at once.
    let (code, _, _) = n2.terminate();
    assert_eq!(code, Some(0));
    nodes_until(&n1, &token, |items| names(items) == ["n1"]);
}
