//! Jail confinement of the local backend, tested against real files, real
//! symlinks and a real race: nothing outside an account's home can be read,
//! written or even observed, whether the path comes through the canonicalizer
//! or bypasses it.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use dropgate_vfs::{
    CreateOptions, FileKind, LocalStorage, MAX_NAME_LEN, MAX_PATH_LEN, Storage, UploadMode,
    VfsError, VirtualPath, WriteStart,
};

// ---------------------------------------------------------------------------
// 1. Escape corpus through the canonicalizer
// ---------------------------------------------------------------------------

/// Client inputs that try to leave the home, with where the canonicalizer must
/// put them (always inside the home).
const CORPUS: &[(&str, &str)] = &[
    ("../", "/"),
    ("..", "/"),
    ("/..", "/"),
    ("/../..", "/"),
    ("../../etc/passwd", "/etc/passwd"),
    ("/etc/passwd", "/etc/passwd"),
    ("\\etc\\passwd", "/etc/passwd"),
    ("..\\..\\x", "/x"),
    ("%2e%2e/%2e%2e/x", "/%2e%2e/%2e%2e/x"),
    (
        "%2e%2e%2f%2e%2e%2fsecret.txt",
        "/%2e%2e%2f%2e%2e%2fsecret.txt",
    ),
    ("\u{ff0e}\u{ff0e}/x", "/\u{ff0e}\u{ff0e}/x"),
    (
        "\u{ff0e}\u{ff0e}\u{ff0f}secret.txt",
        "/\u{ff0e}\u{ff0e}\u{ff0f}secret.txt",
    ),
    ("../secret.txt", "/secret.txt"),
    ("../../above.txt", "/above.txt"),
    ("../bob/file", "/bob/file"),
    ("/../bob/file", "/bob/file"),
    ("../alice/../bob/file", "/bob/file"),
    ("a/../../secret.txt", "/secret.txt"),
    ("./.././../outside_dir/f", "/outside_dir/f"),
    ("..\\outside_dir\\only-outside", "/outside_dir/only-outside"),
    ("....//x", "/..../x"),
    ("..././x", "/.../x"),
    ("bob\\..\\..\\secret.txt", "/secret.txt"),
    ("//..//..//secret.txt", "/secret.txt"),
    (" ../x", "/ ../x"),
];

#[test]
fn canonicalizer_refuses_nul_and_overlong_input() {
    let long_name = "n".repeat(MAX_NAME_LEN + 1);
    let long_path = "d/".repeat(MAX_PATH_LEN / 2 + 1);
    assert!(long_path.len() > MAX_PATH_LEN);
    let bad = [
        "a\0b".to_owned(),
        "../\0secret.txt".to_owned(),
        "\0".to_owned(),
        long_name.clone(),
        format!("../{long_name}"),
        format!("/dir/{long_name}/x"),
        long_path.clone(),
        format!("../{long_path}"),
        "/.dropgate-part-0123456789abcdef".to_owned(),
        "../.dropgate-part-x".to_owned(),
    ];
    for input in &bad {
        assert!(
            matches!(VirtualPath::parse(input), Err(VfsError::InvalidName(_))),
            "{:?} was accepted",
            &input[..input.len().min(40)]
        );
        let cwd = vp("/some/dir");
        assert!(matches!(
            VirtualPath::resolve(&cwd, input),
            Err(VfsError::InvalidName(_))
        ));
    }
    // A path whose input is short enough but whose result (against a deep
    // cwd) would be too long is refused as well.
    let deep = VirtualPath::parse(&"d/".repeat(MAX_PATH_LEN / 2 - 2)).unwrap();
    assert!(VirtualPath::resolve(&deep, "abcdefgh").is_err());
    // The limits themselves are accepted.
    let max_name = "n".repeat(MAX_NAME_LEN);
    assert_eq!(
        VirtualPath::parse(&max_name).unwrap().as_str().len(),
        MAX_NAME_LEN + 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_corpus_through_canonicalizer_stays_in_home() {
    let j = Jail::new();
    let outside = j.snapshot_outside();
    for (input, expected) in CORPUS {
        let path = VirtualPath::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(path.as_str(), *expected, "canonical form of {input:?}");
        // Relative resolution against a cwd inside the home stays inside too.
        let from_cwd = VirtualPath::resolve(&vp("/deep/er"), input).unwrap();
        assert!(from_cwd.starts_with(&VirtualPath::root()));
        exercise_everything(&j, &path, input).await;
        assert_eq!(
            j.snapshot_outside(),
            outside,
            "outside changed after {input:?}"
        );
        assert!(
            j.snapshot_home().is_empty(),
            "home not clean after {input:?}: {:?}",
            j.snapshot_home()
        );
    }
    // A name at the length limit works end to end.
    let max = vp(&format!("../{}", "m".repeat(MAX_NAME_LEN)));
    exercise_everything(&j, &max, "max-length name").await;
    assert_eq!(j.snapshot_outside(), outside);
}

/// Runs every operation on `path` (already canonical) and checks each one
/// touched only the home. Leaves the home empty.
async fn exercise_everything(j: &Jail, path: &VirtualPath, input: &str) {
    let s: &dyn Storage = &j.storage;
    let ctx = |op: &str| format!("{op} {input:?} -> {path:?}");
    let on_disk = j.home.join(path.relative());

    if path.is_root() {
        // The root is the home itself, never its parent.
        let m = s.metadata(path).await.unwrap();
        assert!(m.is_dir());
        assert_eq!(
            m.unique,
            std::fs::metadata(&j.home).unwrap().ino(),
            "{}",
            ctx("metadata")
        );
        assert!(
            list_all(s, path).await.unwrap().is_empty(),
            "{}",
            ctx("list")
        );
        assert!(matches!(
            s.open_read(path).await,
            Err(VfsError::IsADirectory)
        ));
        for mode in ALL_MODES {
            assert!(
                s.create(path, opts(mode, WriteStart::Truncate, false))
                    .await
                    .is_err(),
                "{}",
                ctx("create")
            );
        }
        assert!(s.remove_file(path).await.is_err(), "{}", ctx("remove_file"));
        assert!(s.remove_dir(path).await.is_err(), "{}", ctx("remove_dir"));
        assert!(matches!(
            s.create_dir(path).await,
            Err(VfsError::AlreadyExists)
        ));
        assert!(
            s.rename(path, &vp("/moved"), false).await.is_err(),
            "{}",
            ctx("rename")
        );
        assert!(
            s.hard_link(path, &vp("/hl")).await.is_err(),
            "{}",
            ctx("hard_link")
        );
        assert!(
            s.symlink(&vp("/x"), path).await.is_err(),
            "{}",
            ctx("symlink")
        );
        assert!(s.read_link(path).await.is_err(), "{}", ctx("read_link"));
        return;
    }

    // Nothing of that name exists in the (empty) home, whatever exists outside.
    assert!(
        matches!(s.metadata(path).await, Err(VfsError::NotFound)),
        "{}",
        ctx("metadata")
    );
    assert!(
        matches!(s.symlink_metadata(path).await, Err(VfsError::NotFound)),
        "{}",
        ctx("lstat")
    );
    assert!(
        matches!(s.open_read(path).await, Err(VfsError::NotFound)),
        "{}",
        ctx("open_read")
    );
    assert!(
        matches!(s.list(path).await, Err(VfsError::NotFound)),
        "{}",
        ctx("list")
    );
    assert!(
        matches!(s.read_link(path).await, Err(VfsError::NotFound)),
        "{}",
        ctx("read_link")
    );
    assert!(
        matches!(s.remove_file(path).await, Err(VfsError::NotFound)),
        "{}",
        ctx("remove_file")
    );
    assert!(
        s.rename(path, &vp("/moved"), true).await.is_err(),
        "{}",
        ctx("rename")
    );
    assert!(
        s.hard_link(path, &vp("/hl")).await.is_err(),
        "{}",
        ctx("hard_link")
    );
    assert!(!j.home.join("moved").exists() && !j.home.join("hl").exists());

    // Create the folders leading to it: they appear inside the home.
    let ancestors: Vec<VirtualPath> = {
        let mut v = Vec::new();
        let mut p = path.parent();
        while !p.is_root() {
            v.push(p.clone());
            p = p.parent();
        }
        v.reverse();
        v
    };
    if let Some(first) = ancestors.last() {
        // Without its folder, an upload cannot start.
        let r = s
            .create(path, opts(UploadMode::Atomic, WriteStart::Truncate, false))
            .await;
        assert!(
            matches!(r, Err(VfsError::NotFound)),
            "{}",
            ctx("create without parent")
        );
        assert!(!j.home.join(first.relative()).exists());
    }
    for dir in &ancestors {
        s.create_dir(dir)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", ctx("create_dir")));
        assert!(
            j.home.join(dir.relative()).is_dir(),
            "{}",
            ctx("create_dir")
        );
    }
    if let Some(parent) = ancestors.last() {
        assert!(
            list_all(s, parent).await.unwrap().is_empty(),
            "{}",
            ctx("list parent")
        );
    }

    // Upload in every mode: the file lands in the home, and reads back.
    for (i, mode) in ALL_MODES.into_iter().enumerate() {
        let content = format!("payload {i} for {input:?}").into_bytes();
        let size = upload(s, path, mode, &content)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", ctx("upload")));
        assert_eq!(size, content.len() as u64);
        assert_eq!(
            std::fs::read(&on_disk).unwrap(),
            content,
            "{}",
            ctx("upload on disk")
        );
        assert_eq!(
            read_all(s, path).await.unwrap(),
            content,
            "{}",
            ctx("open_read")
        );
        let m = s.metadata(path).await.unwrap();
        assert!(m.is_file());
        assert_eq!(m.size, content.len() as u64);
        assert_eq!(m.unique, std::fs::metadata(&on_disk).unwrap().ino());
    }
    let content = std::fs::read(&on_disk).unwrap();
    let listed = list_all(s, &path.parent()).await.unwrap();
    assert_eq!(
        listed,
        vec![(
            path.file_name().unwrap().to_owned(),
            FileKind::File,
            content.len() as u64
        )],
        "{}",
        ctx("list parent")
    );

    // Hard link, symlink, read_link, rename: all inside the home.
    s.hard_link(path, &vp("/hl")).await.unwrap();
    assert_eq!(
        std::fs::metadata(j.home.join("hl")).unwrap().ino(),
        std::fs::metadata(&on_disk).unwrap().ino(),
        "{}",
        ctx("hard_link")
    );
    s.symlink(path, &vp("/sl")).await.unwrap();
    let stored = std::fs::read_link(j.home.join("sl")).unwrap();
    assert!(
        !stored.is_absolute(),
        "symlink stored an absolute target {stored:?}"
    );
    assert_eq!(
        &s.read_link(&vp("/sl")).await.unwrap(),
        path,
        "{}",
        ctx("read_link")
    );
    assert_eq!(
        read_all(s, &vp("/sl")).await.unwrap(),
        content,
        "{}",
        ctx("read via symlink")
    );
    s.rename(path, &vp("/moved"), false).await.unwrap();
    assert!(!on_disk.exists());
    assert_eq!(std::fs::read(j.home.join("moved")).unwrap(), content);
    s.rename(&vp("/moved"), path, false).await.unwrap();
    assert_eq!(std::fs::read(&on_disk).unwrap(), content);
    s.set_times(path, Some(UNIX_EPOCH), Some(UNIX_EPOCH))
        .await
        .unwrap();
    s.set_len(path, 3).await.unwrap();
    assert_eq!(std::fs::read(&on_disk).unwrap(), &content[..3]);

    // Clean up through the storage too.
    for p in ["/sl", "/hl"] {
        s.remove_file(&vp(p)).await.unwrap();
    }
    s.remove_file(path).await.unwrap();
    assert!(!on_disk.exists());
    for dir in ancestors.iter().rev() {
        s.remove_dir(dir).await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// 2. OS-level confinement with the canonicalizer bypassed
// ---------------------------------------------------------------------------

/// Unchecked paths that point outside the home (existing or not).
const RAW_ESCAPES: &[&str] = &[
    "/../secret.txt",
    "/../bob/file",
    "/../bob",
    "/../bob/new",
    "/../../etc/passwd",
    "/../../above.txt",
    "/../../new-above.txt",
    "/..",
    "/../",
    "/../..",
    "/../outside_dir",
    "/../outside_dir/f",
    "/../outside_dir/new",
    "/../new.txt",
    "/./../secret.txt",
    "//../secret.txt",
    "/inside/../../secret.txt",
    "/inside/../../bob/file",
    "/nonexistent/../../secret.txt",
    "/../alice/inside.txt",
    "/../alice/../secret.txt",
];

#[tokio::test(flavor = "multi_thread")]
async fn raw_paths_cannot_leave_the_home() {
    let j = Jail::new();
    let s: &dyn Storage = &j.storage;
    std::fs::create_dir(j.home.join("inside")).unwrap();
    std::fs::write(j.home.join("inside.txt"), b"inside").unwrap();
    let outside = j.snapshot_outside();
    let home = j.snapshot_home();
    let inside_file = vp("/inside.txt");
    let inside_dir = vp("/inside");

    for raw_path in RAW_ESCAPES {
        let p = raw(raw_path);
        let c = |op: &str| format!("{op} {raw_path:?}");
        assert_refused(&c("metadata"), s.metadata(&p).await);
        assert_refused(&c("symlink_metadata"), s.symlink_metadata(&p).await);
        assert_refused(&c("open_read"), s.open_read(&p).await.map(|_| ()));
        assert_refused(&c("list"), s.list(&p).await.map(|_| ()));
        assert_refused(&c("read_link"), s.read_link(&p).await);
        assert_refused(&c("remove_file"), s.remove_file(&p).await);
        assert_refused(&c("remove_dir"), s.remove_dir(&p).await);
        assert_refused(&c("create_dir"), s.create_dir(&p).await);
        assert_refused(&c("set_len"), s.set_len(&p, 0).await);
        assert_refused(
            &c("set_times"),
            s.set_times(&p, Some(UNIX_EPOCH), Some(UNIX_EPOCH)).await,
        );
        for mode in ALL_MODES {
            for start in ALL_STARTS {
                for exclusive in [false, true] {
                    let r = s.create(&p, opts(mode, start, exclusive)).await;
                    assert_refused(
                        &c(&format!("create {mode:?} {start:?} excl={exclusive}")),
                        r.map(|_| ()),
                    );
                }
            }
        }
        for overwrite in [false, true] {
            assert_refused(
                &c("rename from"),
                s.rename(&p, &vp("/stolen"), overwrite).await,
            );
            assert_refused(&c("rename to"), s.rename(&inside_file, &p, overwrite).await);
            assert_refused(
                &c("rename dir to"),
                s.rename(&inside_dir, &p, overwrite).await,
            );
        }
        assert_refused(&c("hard_link from"), s.hard_link(&p, &vp("/stolen")).await);
        assert_refused(&c("hard_link to"), s.hard_link(&inside_file, &p).await);
        assert_refused(&c("symlink at"), s.symlink(&inside_file, &p).await);
        assert_refused(&c("symlink to"), s.symlink(&p, &vp("/stolen")).await);

        assert_eq!(
            j.snapshot_outside(),
            outside,
            "outside changed by {raw_path:?}"
        );
        assert_eq!(j.snapshot_home(), home, "home changed by {raw_path:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. Symlinks
// ---------------------------------------------------------------------------

fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_leading_outside_are_refused() {
    let j = Jail::new();
    let s: &dyn Storage = &j.storage;
    let h = &j.home;
    std::fs::create_dir_all(h.join("sub/deeper")).unwrap();
    std::fs::write(h.join("real.txt"), b"real content").unwrap();
    // Escaping file links.
    symlink(j.root.join("secret.txt"), h.join("abs_file"));
    symlink("../secret.txt", h.join("rel_file"));
    symlink("../../secret.txt", h.join("sub/rel_file"));
    symlink("../../../secret.txt", h.join("sub/deeper/rel_file"));
    symlink("../bob/file", h.join("bob_file"));
    symlink("sub/../../secret.txt", h.join("winding_file"));
    // Escaping folder links.
    symlink(j.root.join("bob"), h.join("abs_dir"));
    symlink("../outside_dir", h.join("rel_dir"));
    symlink("../../outside_dir", h.join("sub/rel_dir"));
    symlink("..", h.join("parent_dir"));
    symlink("/", h.join("host_root"));
    // Escaping links whose target does not exist (yet): must not be created.
    symlink(
        j.tmp.path().join("created_outside.txt"),
        h.join("abs_dangling"),
    );
    symlink("../created_outside.txt", h.join("rel_dangling"));
    // A chain: an in-jail link to an escaping link.
    symlink("abs_file", h.join("chain"));
    // Links that stay inside.
    symlink("real.txt", h.join("in_file"));
    symlink("../real.txt", h.join("sub/up_file"));
    symlink("sub", h.join("in_dir"));

    let outside = j.snapshot_outside();
    let escaping_files = [
        "/abs_file",
        "/rel_file",
        "/sub/rel_file",
        "/sub/deeper/rel_file",
        "/bob_file",
        "/winding_file",
        "/abs_dangling",
        "/rel_dangling",
        "/chain",
    ];
    let escaping_dirs = [
        "/abs_dir",
        "/rel_dir",
        "/sub/rel_dir",
        "/parent_dir",
        "/host_root",
    ];

    for link in escaping_files.iter().chain(&escaping_dirs) {
        let p = vp(link);
        assert_refused(
            &format!("open_read {link}"),
            s.open_read(&p).await.map(|_| ()),
        );
        assert_refused(&format!("metadata {link}"), s.metadata(&p).await);
        if *link != "/chain" {
            assert!(
                s.read_link(&p).await.is_err(),
                "read_link {link} revealed an escaping target"
            );
        }
        assert_refused(&format!("set_len {link}"), s.set_len(&p, 0).await);
        assert_refused(
            &format!("set_times {link}"),
            s.set_times(&p, Some(UNIX_EPOCH), Some(UNIX_EPOCH)).await,
        );
        // The link itself is in the jail and may be looked at as a link.
        assert_eq!(
            s.symlink_metadata(&p).await.unwrap().kind,
            FileKind::Symlink
        );
        for mode in ALL_MODES {
            for start in ALL_STARTS {
                for exclusive in [false, true] {
                    // Durable, and answered from the page cache (no sync,
                    // the commit's other path).
                    for durable in [true, false] {
                        let o = CreateOptions {
                            durable,
                            ..opts(mode, start, exclusive)
                        };
                        let r = s.create(&p, o).await;
                        assert!(
                            r.is_err(),
                            "create {link} {mode:?} {start:?} excl={exclusive} durable={durable} succeeded"
                        );
                    }
                }
            }
        }
        assert_eq!(j.snapshot_outside(), outside, "outside changed via {link}");
    }

    for link in escaping_dirs {
        let d = vp(link);
        assert_refused(&format!("list {link}"), s.list(&d).await.map(|_| ()));
        let file = d.join("f").unwrap();
        let new = d.join("new").unwrap();
        for name in ["f", "file", "only-outside", "secret.txt", "etc"] {
            let p = d.join(name).unwrap();
            assert_refused(&format!("open_read {p}"), s.open_read(&p).await.map(|_| ()));
            assert_refused(&format!("metadata {p}"), s.metadata(&p).await);
            assert_refused(&format!("remove_file {p}"), s.remove_file(&p).await);
        }
        for mode in ALL_MODES {
            for start in ALL_STARTS {
                for durable in [true, false] {
                    let o = CreateOptions {
                        durable,
                        ..opts(mode, start, false)
                    };
                    assert_refused(
                        &format!("create {new} durable={durable}"),
                        s.create(&new, o).await.map(|_| ()),
                    );
                    assert_refused(
                        &format!("create {file} durable={durable}"),
                        s.create(&file, o).await.map(|_| ()),
                    );
                }
            }
        }
        assert_refused(&format!("create_dir {new}"), s.create_dir(&new).await);
        assert_refused(
            &format!("rename into {link}"),
            s.rename(&vp("/real.txt"), &new, false).await,
        );
        assert_refused(
            &format!("rename out of {link}"),
            s.rename(&file, &vp("/stolen"), false).await,
        );
        assert_refused(
            &format!("hard_link into {link}"),
            s.hard_link(&vp("/real.txt"), &new).await,
        );
        assert_refused(
            &format!("hard_link out of {link}"),
            s.hard_link(&file, &vp("/stolen")).await,
        );
        assert_refused(
            &format!("symlink into {link}"),
            s.symlink(&vp("/real.txt"), &new).await,
        );
        assert_refused(
            &format!("remove_dir via {link}"),
            s.remove_dir(&d.join("x").unwrap()).await,
        );
        assert_eq!(j.snapshot_outside(), outside, "outside changed via {link}");
    }
    assert!(!j.home.join("stolen").exists());
    assert!(!j.tmp.path().join("created_outside.txt").exists());

    // Listing the home shows escaping links as links, never the metadata of
    // what they point at.
    let listing = list_all(s, &VirtualPath::root()).await.unwrap();
    for (name, kind, size) in &listing {
        let on_disk = std::fs::symlink_metadata(h.join(name)).unwrap();
        if escaping_files.contains(&format!("/{name}").as_str())
            || escaping_dirs.contains(&format!("/{name}").as_str())
        {
            assert_eq!(*kind, FileKind::Symlink, "{name}");
            assert_eq!(*size, on_disk.len(), "{name}: size of the target leaked");
        }
    }
    let names: Vec<&str> = listing.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(
        names.contains(&"abs_file") && names.contains(&"in_file") && !names.contains(&"secret.txt")
    );
    // An in-jail link in the listing shows its target.
    let in_file = listing.iter().find(|(n, _, _)| n == "in_file").unwrap();
    assert_eq!((in_file.1, in_file.2), (FileKind::File, 12));

    // Links that stay inside work.
    assert_eq!(read_all(s, &vp("/in_file")).await.unwrap(), b"real content");
    assert_eq!(
        read_all(s, &vp("/sub/up_file")).await.unwrap(),
        b"real content"
    );
    assert_eq!(
        read_all(s, &vp("/in_dir/up_file")).await.unwrap(),
        b"real content"
    );
    assert_eq!(s.metadata(&vp("/in_file")).await.unwrap().size, 12);
    assert_eq!(s.read_link(&vp("/in_file")).await.unwrap(), vp("/real.txt"));
    assert_eq!(
        s.read_link(&vp("/sub/up_file")).await.unwrap(),
        vp("/real.txt")
    );
    assert_eq!(s.read_link(&vp("/in_dir")).await.unwrap(), vp("/sub"));
    let in_dir = list_names(s, &vp("/in_dir")).await.unwrap();
    assert!(in_dir.contains(&"deeper".to_owned()) && in_dir.contains(&"up_file".to_owned()));

    // symlink() between two in-jail paths creates a working, relative link.
    s.symlink(&vp("/real.txt"), &vp("/sub/deeper/made"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_link(h.join("sub/deeper/made")).unwrap(),
        Path::new("../../real.txt")
    );
    assert_eq!(
        read_all(s, &vp("/sub/deeper/made")).await.unwrap(),
        b"real content"
    );
    assert_eq!(
        s.read_link(&vp("/sub/deeper/made")).await.unwrap(),
        vp("/real.txt")
    );
    s.symlink(&vp("/sub/deeper"), &vp("/to_deeper"))
        .await
        .unwrap();
    assert_eq!(
        read_all(s, &vp("/to_deeper/made")).await.unwrap(),
        b"real content"
    );
    assert!(matches!(
        s.symlink(&vp("/real.txt"), &vp("/in_file")).await,
        Err(VfsError::AlreadyExists)
    ));
    // read_link is one level: a link to an escaping link is itself in the jail.
    assert_eq!(s.read_link(&vp("/chain")).await.unwrap(), vp("/abs_file"));

    // Writing through an in-jail link reaches the in-jail target (direct mode).
    let w = s
        .create(
            &vp("/in_file"),
            opts(UploadMode::Direct, WriteStart::Append, false),
        )
        .await
        .unwrap();
    assert_eq!(w.initial_len(), 12);
    w.write_at(12, Bytes::from_static(b"!")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(std::fs::read(h.join("real.txt")).unwrap(), b"real content!");

    // Removing or replacing an escaping link touches the link, not the target.
    s.remove_file(&vp("/abs_file")).await.unwrap();
    assert!(std::fs::symlink_metadata(h.join("abs_file")).is_err());
    s.rename(&vp("/real.txt"), &vp("/rel_file"), true)
        .await
        .unwrap();
    assert_eq!(std::fs::read(h.join("rel_file")).unwrap(), b"real content!");
    s.remove_file(&vp("/abs_dir")).await.unwrap();
    assert!(matches!(
        s.remove_dir(&vp("/rel_dir")).await,
        Err(VfsError::NotADirectory)
    ));
    assert_eq!(j.snapshot_outside(), outside);
}

// ---------------------------------------------------------------------------
// 4. Race: a folder swapped with an escaping symlink while reading through it
// ---------------------------------------------------------------------------

const INSIDE_F: &[u8] = b"inside";

/// Swaps `a` and `b` atomically (RENAME_EXCHANGE); falls back to a
/// non-atomic rename dance where the filesystem cannot exchange.
fn swap(a: &Path, b: &Path, spare: &Path) {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    if renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).is_ok() {
        return;
    }
    std::fs::rename(a, spare).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(spare, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swapping_a_folder_for_an_escaping_symlink_never_leaks() {
    const ITERATIONS: usize = 2000;
    const TIME_LIMIT: Duration = Duration::from_secs(30);

    let j = Jail::new();
    let h = j.home.clone();
    std::fs::create_dir(h.join("d")).unwrap();
    std::fs::write(h.join("d/f"), INSIDE_F).unwrap();
    symlink(j.root.join("outside_dir"), h.join("d_abs"));
    symlink("../outside_dir", h.join("d_rel"));
    let outside = j.snapshot_outside();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let h = h.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            let deadline = Instant::now() + TIME_LIMIT * 2;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let other = if swaps % 4 < 2 { "d_abs" } else { "d_rel" };
                swap(&h.join("d"), &h.join(other), &h.join("d_spare"));
                swaps += 1;
            }
            swaps
        })
    };

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let storage: LocalStorage = j.storage.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0usize, 0usize);
            let f = vp("/d/f");
            let d = vp("/d");
            for i in 0..ITERATIONS / 4 {
                if started.elapsed() > TIME_LIMIT {
                    break;
                }
                match storage.open_read(&f).await {
                    Ok(r) => {
                        let data = r.read_at(0, 256).await.unwrap();
                        assert_not_secret(&data);
                        assert_eq!(&data[..], INSIDE_F, "open_read returned foreign content");
                        assert_eq!(r.len(), INSIDE_F.len() as u64);
                        ok += 1;
                    }
                    Err(VfsError::PermissionDenied | VfsError::NotFound) => refused += 1,
                    Err(e) => panic!("open_read: unexpected error {e:?}"),
                }
                if i % 4 == 1 {
                    // A page-cache upload into the swapped folder: it lands
                    // inside or is refused (checked at the end).
                    let o = page_cache_opts(UploadMode::Atomic);
                    if let Ok(w) = storage.create(&d.join("new").unwrap(), o).await {
                        let _ = w
                            .write_and_commit(0, Bytes::from_static(b"new"), None)
                            .await;
                    }
                }
                if i % 4 == 0 {
                    if let Ok(m) = storage.metadata(&f).await {
                        assert_eq!(
                            m.size,
                            INSIDE_F.len() as u64,
                            "metadata of the outside file leaked"
                        );
                    }
                    if let Ok(mut names) = list_names(&storage, &d).await {
                        names.retain(|n| n != "new");
                        assert_eq!(
                            names,
                            vec!["f".to_owned()],
                            "listing of the outside folder leaked"
                        );
                    }
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok += o;
        refused += r;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("race: {ok} reads ok, {refused} refused, {swaps} swaps");
    assert!(ok + refused > 0);
    assert!(swaps > 0);
    assert_eq!(j.snapshot_outside(), outside);
}

// ---------------------------------------------------------------------------
// Misc: the home itself cannot be redirected
// ---------------------------------------------------------------------------

#[tokio::test]
async fn home_name_is_resolved_beneath_the_storage_root() {
    let j = Jail::new();
    for home in ["../escape", "alice/../../escape", "/../escape"] {
        assert!(
            LocalStorage::open(&j.root, home).is_err(),
            "home {home:?} accepted"
        );
    }
    assert!(!j.tmp.path().join("escape").exists());
    // A home that is a symlink pointing outside the storage root is refused.
    symlink(j.tmp.path(), j.root.join("mallory"));
    assert!(LocalStorage::open(&j.root, "mallory").is_err());
    // A leading or trailing slash is just the same home.
    let same = LocalStorage::open(&j.root, "/alice/").unwrap();
    std::fs::write(j.home.join("x"), b"x").unwrap();
    assert_eq!(read_all(&same, &vp("/x")).await.unwrap(), b"x");
}

/// Lookups the kernel answers from its caches run on the calling thread;
/// they must give the same answers as the blocking path, and a special file
/// must never stall the caller: opening a FIFO for reading would wait for a
/// writer forever.
#[tokio::test]
async fn cached_lookups_answer_like_the_disk_and_never_wait() {
    let j = Jail::new();
    let s: &dyn Storage = &j.storage;
    std::fs::create_dir_all(j.home.join("d/e")).unwrap();
    std::fs::write(j.home.join("d/e/f.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink("e/f.txt", j.home.join("d/link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        j.home.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();

    for (path, on_disk) in [
        ("/d/e/f.txt", "d/e/f.txt"),
        ("/d/link", "d/e/f.txt"),
        ("/d/e", "d/e"),
    ] {
        let ours = s.metadata(&vp(path)).await.unwrap();
        let theirs = std::fs::metadata(j.home.join(on_disk)).unwrap();
        assert_eq!(ours.size, theirs.len(), "{path}");
        assert_eq!(ours.unique, theirs.ino(), "{path}");
        assert_eq!(ours.mode, theirs.mode(), "{path}");
        assert_eq!(ours.is_dir(), theirs.is_dir(), "{path}");
    }
    let r = s.open_read(&vp("/d/link")).await.unwrap();
    assert_eq!(&r.read_at(0, 100).await.unwrap()[..], b"hello");
    assert!(matches!(
        s.open_read(&vp("/d/e")).await.map(|_| ()),
        Err(VfsError::IsADirectory)
    ));
    assert!(matches!(
        s.open_read(&vp("/d/missing")).await.map(|_| ()),
        Err(VfsError::NotFound)
    ));

    assert_eq!(
        s.metadata(&vp("/fifo")).await.unwrap().kind,
        FileKind::Other
    );
    let opened = tokio::time::timeout(Duration::from_secs(10), s.open_read(&vp("/fifo"))).await;
    assert!(
        matches!(opened, Ok(Err(VfsError::PermissionDenied))),
        "a FIFO is refused at once, not waited on"
    );
}
