//! Attacks on the permission and quota rules with real clients (paramiko,
//! OpenSSH `sftp`): symlinks and folder moves across rule boundaries, hard
//! links and deletes during uploads against the quota, parallel and offset
//! writes, `max_files`, names with line breaks. Each would succeed without
//! its check in core.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use dropgate_core::store::{Permission, User};

const PRELUDE: &str = r#"
import errno, os, sys, threading
import paramiko

PORT = int(sys.argv[1])

def connect(user, **kw):
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.banner_timeout = 30
    t.connect(username=user, **kw)
    return t

def code(f):
    try:
        f()
        return "ok"
    except IOError as e:
        return "errno=%s" % e.errno
"#;

async fn script(h: &Harness, body: &str) -> BTreeMap<String, String> {
    let out = python(&format!("{PRELUDE}\n{body}"), &[h.port.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn perms(rules: &[(&str, &[Permission])]) -> BTreeMap<String, BTreeSet<Permission>> {
    rules
        .iter()
        .map(|(p, r)| (p.to_string(), r.iter().copied().collect()))
        .collect()
}

/// What the quota should count for a home: bytes once per inode, files per name.
fn on_disk(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files, mut seen) = (0, 0, HashSet::new());
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                if seen.insert(m.ino()) {
                    bytes += m.len();
                }
            }
        }
    }
    (bytes, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_folder_moves_cannot_cross_a_rule_boundary() {
    use Permission::*;
    let mut h = Harness::start().await;
    // Everything allowed, except a read-only archive.
    let mut ann = User::new("ann");
    ann.permissions = perms(&[("/", &[All]), ("/archive", &[List, Download])]);
    h.tg.add_user_with(ann, Some("pw")).await;
    // The standard drop box.
    let mut bob = User::new("bob");
    bob.permissions = perms(&[
        ("/", &[List]),
        ("/inbox", &[List, Upload, Rename]),
        ("/outbox", &[List, Download]),
    ]);
    h.tg.add_user_with(bob, Some("pw")).await;
    // A read-only folder deep inside a writable one.
    let mut cy = User::new("cy");
    cy.permissions = perms(&[("/", &[All]), ("/a/ro", &[List, Download])]);
    h.tg.add_user_with(cy, Some("pw")).await;
    // The default: rights are the same everywhere, links work as before.
    h.tg.add_user("dee", "pw").await;

    let ann_home = h.home("ann");
    std::fs::create_dir_all(ann_home.join("archive")).unwrap();
    std::fs::write(ann_home.join("archive/x"), b"keep me").unwrap();
    // A link the operator placed, stored relative to its folder: moved to
    // another folder it would point into the archive.
    std::fs::create_dir_all(ann_home.join("sub")).unwrap();
    std::os::unix::fs::symlink("archive", ann_home.join("sub/l")).unwrap();
    // Links already there (placed by the operator, or made before the
    // rights were narrowed) are judged where they lead.
    std::os::unix::fs::symlink("archive", ann_home.join("al")).unwrap();
    let bob_home = h.home("bob");
    std::fs::create_dir_all(bob_home.join("inbox")).unwrap();
    std::fs::create_dir_all(bob_home.join("outbox")).unwrap();
    std::fs::write(bob_home.join("outbox/report.csv"), b"for bob").unwrap();
    std::os::unix::fs::symlink("../outbox", bob_home.join("inbox/o2")).unwrap();
    let cy_home = h.home("cy");
    std::fs::create_dir_all(cy_home.join("a/ro")).unwrap();
    std::fs::write(cy_home.join("a/ro/f"), b"read only").unwrap();

    let r = script(
        &h,
        r#"
t = connect("ann", password="pw")
s = paramiko.SFTPClient.from_transport(t)
print("ann-symlink-root", code(lambda: s.symlink("/", "/l")))
print("ann-remove-through", code(lambda: s.remove("/l/archive/x")))
print("ann-remove-direct", code(lambda: s.remove("/archive/x")))
print("ann-symlink-plain", code(lambda: s.symlink("/notes", "/n")))
print("ann-move-link", code(lambda: s.rename("/sub/l", "/l2")))
print("ann-remove-moved", code(lambda: s.remove("/l2/x")))
print("ann-remove-via-link", code(lambda: s.remove("/al/x")))
print("ann-write-via-link", code(lambda: s.open("/al/new", "wb").write(b"x")))
print("ann-read-via-link", code(lambda: s.open("/al/x").read()))
print("ann-mkdir-via-link", code(lambda: s.mkdir("/al/d")))
t.close()

t = connect("bob", password="pw")
s = paramiko.SFTPClient.from_transport(t)
print("bob-symlink", code(lambda: s.symlink("/outbox", "/inbox/o")))
print("bob-upload-through", code(lambda: s.open("/inbox/o/evil.csv", "wb").write(b"x")))
print("bob-upload-via-link", code(lambda: s.open("/inbox/o2/evil.csv", "wb").write(b"x")))
print("bob-upload-inbox", code(lambda: s.open("/inbox/in.csv", "wb").write(b"ok")))
print("bob-read-inbox", code(lambda: s.open("/inbox/in.csv").read()))
print("bob-delete-inbox", code(lambda: s.remove("/inbox/in.csv")))
print("bob-overwrite-inbox", code(lambda: s.open("/inbox/in.csv", "wb").write(b"!")))
print("bob-mkdir-inbox", code(lambda: s.mkdir("/inbox/d")))
print("bob-move-out", code(lambda: s.rename("/inbox/in.csv", "/outbox/in.csv")))
t.close()

t = connect("cy", password="pw")
s = paramiko.SFTPClient.from_transport(t)
print("cy-move-parent", code(lambda: s.rename("/a", "/b")))
print("cy-posix-move-parent", code(lambda: s.posix_rename("/a", "/b")))
print("cy-delete-ro", code(lambda: s.remove("/a/ro/f")))
s.mkdir("/c")
s.open("/c/f", "wb").write(b"free")
print("cy-move-free", code(lambda: s.rename("/c", "/d")))
t.close()

t = connect("dee", password="pw")
s = paramiko.SFTPClient.from_transport(t)
s.open("/f", "wb").write(b"x")
print("dee-symlink", code(lambda: s.symlink("/f", "/link")))
print("dee-read-link", code(lambda: s.open("/link").read()))
t.close()
"#,
    )
    .await;
    let denied = "errno=13";
    assert_eq!(r["ann-symlink-root"], denied, "{r:?}");
    assert_ne!(r["ann-remove-through"], "ok", "{r:?}");
    assert_eq!(r["ann-remove-direct"], denied, "{r:?}");
    assert_eq!(
        r["ann-symlink-plain"], denied,
        "no links where rights differ: {r:?}"
    );
    assert_eq!(r["ann-move-link"], denied, "{r:?}");
    assert_ne!(r["ann-remove-moved"], "ok", "{r:?}");
    assert_eq!(r["ann-remove-via-link"], denied, "{r:?}");
    assert_eq!(r["ann-write-via-link"], denied, "{r:?}");
    assert_eq!(r["ann-mkdir-via-link"], denied, "{r:?}");
    assert_eq!(r["ann-read-via-link"], "ok", "{r:?}");
    assert_eq!(r["bob-upload-via-link"], denied, "{r:?}");
    assert_eq!(
        std::fs::read(ann_home.join("archive/x")).unwrap(),
        b"keep me"
    );
    assert!(!ann_home.join("archive/new").exists() && !ann_home.join("archive/d").exists());

    assert_eq!(r["bob-symlink"], denied, "{r:?}");
    assert_ne!(r["bob-upload-through"], "ok", "{r:?}");
    assert_eq!(r["bob-upload-inbox"], "ok", "{r:?}");
    for op in ["read", "delete", "overwrite", "mkdir"] {
        assert_eq!(r[&format!("bob-{op}-inbox")], denied, "{op}: {r:?}");
    }
    assert_eq!(r["bob-move-out"], denied, "{r:?}");
    let outbox: Vec<_> = std::fs::read_dir(bob_home.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outbox, ["report.csv"]);

    assert_eq!(r["cy-move-parent"], denied, "{r:?}");
    assert_eq!(r["cy-posix-move-parent"], denied, "{r:?}");
    assert_eq!(r["cy-delete-ro"], denied, "{r:?}");
    assert_eq!(r["cy-move-free"], "ok", "{r:?}");
    assert!(cy_home.join("a/ro/f").exists() && !cy_home.join("b").exists());

    assert_eq!(r["dee-symlink"], "ok", "{r:?}");
    assert_eq!(r["dee-read-link"], "ok", "{r:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_holds_against_hard_links_deletes_during_uploads_and_resumes() {
    let mut h = Harness::start().await;
    let key = h.user_with_key("quinn", "pw").await;
    let mut user = h.tg.store.get_user("quinn").await.unwrap().unwrap().user;
    user.quota.max_bytes = 1024 * 1024;
    h.tg.store.update_user(&user).await.unwrap();
    let home = h.home("quinn");

    // A hard link shares its file's bytes: deleting it must not give them back.
    let r = script(
        &h,
        r#"
t = connect("quinn", password="pw")
s = paramiko.SFTPClient.from_transport(t)
with s.open("/f", "wb") as f:
    f.write(os.urandom(600 * 1024))
t.close()
"#,
    )
    .await;
    assert!(r.is_empty(), "{r:?}");
    let out = run_with_input(
        tokio::process::Command::new("sftp")
            .args(h.ssh_opts(&key))
            .args(["-b", "-", "-P", &h.port.to_string(), "quinn@127.0.0.1"]),
        b"ln /f /g\nrm /g\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(home.join("f").exists() && !home.join("g").exists());

    let r = script(
        &h,
        r#"
t = connect("quinn", password="pw")
s = paramiko.SFTPClient.from_transport(t)
def upload(name, size):
    with s.open(name, "wb") as f:
        f.write(os.urandom(size))
# 600 KiB are in use: another 600 KiB do not fit.
print("second-600k", code(lambda: upload("/h", 600 * 1024)))
# Replace /f while deleting it: the delete waits for the upload.
f = s.open("/f", "wb")
f.write(os.urandom(300 * 1024))
print("delete-during-upload", code(lambda: s.remove("/f")))
print("rename-during-upload", code(lambda: s.rename("/f", "/f2")))
f.close()
# An atomic resume copies the kept prefix: it needs room for it twice.
def resume():
    with s.open("/f", "r+") as f:
        f.seek(300 * 1024)
        f.write(os.urandom(1024))
upload("/g", 500 * 1024)
print("resume-needs-room", code(resume))
s.remove("/g")
print("resume-fits", code(resume))
# A rename onto itself removes nothing, so it frees nothing.
for _ in range(3):
    s.posix_rename("/f", "/f")
# An upload over a symlink replaces the link, not the file behind it.
s.symlink("/f", "/l")
with s.open("/l", "wb") as f:
    f.write(b"x")
t.close()
"#,
    )
    .await;
    assert_ne!(r["second-600k"], "ok", "{r:?}");
    assert_eq!(r["delete-during-upload"], "errno=13", "{r:?}");
    assert_eq!(r["rename-during-upload"], "errno=13", "{r:?}");
    assert_ne!(r["resume-needs-room"], "ok", "{r:?}");
    assert_eq!(r["resume-fits"], "ok", "{r:?}");
    assert_eq!(std::fs::metadata(home.join("f")).unwrap().len(), 301 * 1024);
    assert!(temporaries(&home).is_empty());
    let user = h.tg.store.get_user("quinn").await.unwrap().unwrap().user;
    assert_eq!(h.tg.gateway.usage(&user).await.unwrap(), on_disk(&home));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_holds_under_parallel_and_offset_writes_and_max_files() {
    let mut h = Harness::start().await;
    let mut user = User::new("par");
    user.quota.max_bytes = 2 * 1024 * 1024;
    user.quota.max_files = 12;
    h.tg.add_user_with(user, Some("pw")).await;
    let home = h.home("par");
    let r = script(
        &h,
        r#"
t = connect("par", password="pw")
results = {}
def upload(i):
    s = paramiko.SFTPClient.from_transport(t)
    def go():
        with s.open("/p%d.bin" % i, "wb") as f:
            for _ in range(4):
                f.write(os.urandom(128 * 1024))
    results[i] = code(go)
    s.close()
threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
for th in threads: th.start()
for th in threads: th.join()
print("parallel-ok", sum(1 for v in results.values() if v == "ok"))
s = paramiko.SFTPClient.from_transport(t)
# A write far past the end reserves everything up to it.
def sparse():
    with s.open("/sparse.bin", "wb") as f:
        f.seek(3 * 1024 * 1024)
        f.write(b"x")
print("offset-write", code(sparse))
for i in range(8):
    try: s.remove("/p%d.bin" % i)
    except IOError: pass
made = 0
for i in range(20):
    if code(lambda: s.open("/n%d" % i, "wb").write(b"n")) == "ok":
        made += 1
print("small-files", made)
t.close()
"#,
    )
    .await;
    let ok: u64 = r["parallel-ok"].parse().unwrap();
    assert!(ok <= 4, "2 MiB hold at most four 512 KiB files: {r:?}");
    assert_ne!(r["offset-write"], "ok", "{r:?}");
    assert_eq!(r["small-files"], "12", "max_files: {r:?}");
    let user = h.tg.store.get_user("par").await.unwrap().unwrap().user;
    let counted = h.tg.gateway.usage(&user).await.unwrap();
    assert_eq!(counted, on_disk(&home));
    assert!(counted.0 <= 2 * 1024 * 1024);
    assert!(temporaries(&home).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_line_breaks_are_refused() {
    let mut h = Harness::start().await;
    h.tg.add_user("lee", "pw").await;
    let r = script(
        &h,
        r#"
t = connect("lee", password="pw")
s = paramiko.SFTPClient.from_transport(t)
forged = "a\r\n-rw-r--r--    1 ftp      ftp             0 Jan 01 00:00 forged"
print("upload", code(lambda: s.open(forged, "wb").write(b"x")))
print("mkdir", code(lambda: s.mkdir("d\nx")))
s.open("plain", "wb").write(b"x")
print("rename", code(lambda: s.rename("plain", "p\rq")))
print("listing", ",".join(sorted(s.listdir("/"))))
t.close()
"#,
    )
    .await;
    for op in ["upload", "mkdir", "rename"] {
        assert!(r[op].starts_with("errno="), "{op}: {r:?}");
    }
    assert_eq!(r["listing"], "plain", "{r:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_directory_handles_cannot_starve_other_accounts() {
    let mut h = Harness::start().await;
    h.tg.add_user("hog", "pw").await;
    h.tg.add_user("other", "pw").await;
    let big = h.home("hog").join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..2000 {
        std::fs::write(big.join(format!("entry-{i:05}")), b"").unwrap();
    }
    h.home("other");
    let r = script(
        &h,
        r#"
import time
from paramiko.sftp import CMD_OPENDIR, CMD_READDIR, CMD_HANDLE, CMD_NAME
# Two sessions of one account, each with as many open directory handles as
# it may have, each read once and then left alone.
held = []
for _ in range(2):
    t = connect("hog", password="pw")
    s = paramiko.SFTPClient.from_transport(t)
    handles = []
    for i in range(256):
        try:
            kind, msg = s._request(CMD_OPENDIR, "/big")
        except IOError:
            break
        handles.append(msg.get_binary())
    for hd in handles:
        s._request(CMD_READDIR, hd)
    held.append((t, s, handles))
print("handles", sum(len(x[2]) for x in held))
# Another account's transfer still completes promptly.
started = time.time()
t = connect("other", password="pw")
s = paramiko.SFTPClient.from_transport(t)
with s.open("/f.bin", "wb") as f:
    f.write(os.urandom(1024 * 1024))
data = s.open("/f.bin").read()
s.listdir("/")
print("other-secs", "%.2f" % (time.time() - started))
print("other-ok", len(data) == 1024 * 1024)
# And the held handles still read on.
kind, msg = held[0][1]._request(CMD_READDIR, held[0][2][0])
print("still-reads", kind == CMD_NAME)
t.close()
for x in held:
    x[0].close()
"#,
    )
    .await;
    assert!(r["handles"].parse::<u32>().unwrap() >= 500, "{r:?}");
    assert_eq!(r["other-ok"], "True", "{r:?}");
    let secs: f64 = r["other-secs"].parse().unwrap();
    assert!(secs < 10.0, "another account waited {secs} s: {r:?}");
    assert_eq!(r["still-reads"], "True", "{r:?}");
    h.stop().await;
}
