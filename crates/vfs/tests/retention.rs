//! `remove_if_older`, what retention deletes with: old regular files only,
//! reached without following links, so a folder swapped for a symlink
//! cannot point a removal outside the folder being cleaned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use dropgate_vfs::{LocalStorage, Storage, VirtualPath};

fn age(path: &std::path::Path, days: u64) {
    let t = SystemTime::now() - Duration::from_secs(days * 86_400);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn p(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_old_files_and_never_through_a_link() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("acme");
    for d in ["outbox/sub", "archive"] {
        std::fs::create_dir_all(home.join(d)).unwrap();
    }
    for (f, days) in [
        ("outbox/old.txt", 40),
        ("outbox/sub/old.txt", 40),
        ("outbox/new.txt", 1),
        ("archive/victim.txt", 40),
    ] {
        std::fs::write(home.join(f), b"x").unwrap();
        age(&home.join(f), days);
    }
    // A folder inside the cleaned path that leads elsewhere in the home,
    // and a link that is itself old.
    std::os::unix::fs::symlink(home.join("archive"), home.join("outbox/d")).unwrap();
    std::os::unix::fs::symlink("old.txt", home.join("outbox/link.txt")).unwrap();
    let fs = LocalStorage::open(root.path(), "acme").unwrap();
    let cutoff = SystemTime::now() - Duration::from_secs(30 * 86_400);

    assert!(
        fs.remove_if_older(&p("/outbox/old.txt"), cutoff)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        fs.remove_if_older(&p("/outbox/sub/old.txt"), cutoff)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        fs.remove_if_older(&p("/outbox/new.txt"), cutoff)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        fs.remove_if_older(&p("/outbox/link.txt"), cutoff)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        fs.remove_if_older(&p("/outbox/sub"), cutoff)
            .await
            .unwrap()
            .is_none()
    );
    // Through the link: refused, and the file it leads to stays.
    assert!(
        fs.remove_if_older(&p("/outbox/d/victim.txt"), cutoff)
            .await
            .is_err()
    );
    assert!(home.join("archive/victim.txt").exists());
    assert!(!home.join("outbox/old.txt").exists());
    assert!(!home.join("outbox/sub/old.txt").exists());
    assert!(home.join("outbox/new.txt").exists());
    assert!(home.join("outbox/link.txt").symlink_metadata().is_ok());
}
