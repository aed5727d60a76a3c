//! Upload modes of the local backend: atomic replace, resume, append,
//! exclusivity, direct writes, and recovery after a crash mid-upload.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use dropgate_vfs::{
    LocalStorage, Replaced, Storage, TEMP_PREFIX, UploadMode, VfsError, VirtualPath, WriteStart,
    sweep_stale_temporaries,
};

const OLD: &[u8] = b"old content, 0123456789";

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

/// A fixture with `/f.txt` holding [`OLD`].
fn with_old_file() -> Jail {
    let j = Jail::new();
    std::fs::write(j.home.join("f.txt"), OLD).unwrap();
    j
}

/// What an upload in progress shows in `dir` on a file system with
/// `O_TMPFILE` (every one the tests run on): no name at all.
fn assert_unnamed_temporary(dir: &Path) {
    let temps = temporaries_in(dir);
    assert!(temps.is_empty(), "named temporaries: {temps:?}");
}

fn temporaries_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

#[tokio::test]
async fn atomic_abort_keeps_the_old_content() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    let w = s
        .create(&f, opts(UploadMode::Atomic, WriteStart::Truncate, false))
        .await
        .unwrap();
    assert_eq!(w.initial_len(), 0);
    w.write_at(0, b(b"new and different")).await.unwrap();
    // In progress: the bytes sit in an unnamed file nobody can see.
    assert_unnamed_temporary(&j.home);
    assert_eq!(
        list_names(s, &VirtualPath::root()).await.unwrap(),
        vec!["f.txt".to_owned()]
    );
    assert_eq!(read_all(s, &f).await.unwrap(), OLD);
    w.abort().await;
    assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), OLD);
    j.assert_no_temporaries();
}

#[tokio::test]
async fn atomic_drop_without_commit_keeps_the_old_content() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    for start in ALL_STARTS {
        let w = s
            .create(&f, opts(UploadMode::Atomic, start, false))
            .await
            .unwrap();
        w.write_at(w.initial_len(), b(b"new and different"))
            .await
            .unwrap();
        assert_unnamed_temporary(&j.home);
        drop(w);
        assert_eq!(
            std::fs::read(j.home.join("f.txt")).unwrap(),
            OLD,
            "{start:?}"
        );
        j.assert_no_temporaries();
    }
    // A new name that was never committed does not appear at all.
    let w = s
        .create(
            &vp("/new.txt"),
            opts(UploadMode::Atomic, WriteStart::Truncate, false),
        )
        .await
        .unwrap();
    w.write_at(0, b(b"partial")).await.unwrap();
    drop(w);
    assert!(!j.home.join("new.txt").exists());
    j.assert_no_temporaries();
}

/// `write_at_inspect` writes like `write_at` and hands the inspector exactly
/// the bytes written, on the thread that wrote them.
#[tokio::test]
async fn an_inspected_write_shows_the_written_bytes() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    let w = s
        .create(&f, opts(UploadMode::Atomic, WriteStart::Truncate, false))
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for (offset, part) in [(0u64, b(b"hello ")), (6, b(b"world"))] {
        let seen = seen.clone();
        w.write_at_inspect(
            offset,
            part,
            Box::new(move |data: &[u8]| seen.lock().unwrap().extend_from_slice(data)),
        )
        .await
        .unwrap();
    }
    assert_eq!(&seen.lock().unwrap()[..], b"hello world");
    let committed = w.commit().await.unwrap();
    assert_eq!(
        &committed.content.read_at(0, 100).await.unwrap()[..],
        b"hello world"
    );
    assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), b"hello world");
}

/// `write_and_commit` writes the last bytes and commits in one call: the
/// final name holds everything, the inspector saw the last bytes, and no
/// temporary is left.
#[tokio::test]
async fn the_last_write_and_the_commit_in_one_call() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    let w = s
        .create(&f, opts(UploadMode::Atomic, WriteStart::Truncate, false))
        .await
        .unwrap();
    w.write_at(0, b(b"hello ")).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let inspect = {
        let seen = seen.clone();
        Box::new(move |data: &[u8]| seen.lock().unwrap().extend_from_slice(data))
    };
    let committed = w
        .write_and_commit(6, b(b"world"), Some(inspect))
        .await
        .unwrap();
    assert_eq!(committed.size, 11);
    assert_eq!(&seen.lock().unwrap()[..], b"world");
    assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), b"hello world");
    assert!(temporaries_in(&j.home).is_empty());
    // Without an inspector, into a new name.
    let g = vp("/g.txt");
    let w = s
        .create(&g, opts(UploadMode::Atomic, WriteStart::Truncate, true))
        .await
        .unwrap();
    w.write_and_commit(0, b(b"all of it"), None).await.unwrap();
    assert_eq!(std::fs::read(j.home.join("g.txt")).unwrap(), b"all of it");
    assert!(temporaries_in(&j.home).is_empty());
}

#[tokio::test]
async fn atomic_commit_replaces_in_one_step() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    let old_ino = std::fs::metadata(j.home.join("f.txt")).unwrap();
    // A reader opened before the upload keeps seeing the old content.
    let before = s.open_read(&f).await.unwrap();

    let w = s
        .create(&f, opts(UploadMode::Atomic, WriteStart::Truncate, false))
        .await
        .unwrap();
    w.write_at(0, b(b"hello ")).await.unwrap();
    w.write_at(6, b(b"world")).await.unwrap();
    assert_eq!(
        list_names(s, &VirtualPath::root()).await.unwrap(),
        vec!["f.txt".to_owned()]
    );
    let committed = w.commit().await.unwrap();
    assert_eq!(committed.size, 11);
    assert_eq!(committed.content.len(), 11);
    assert_eq!(
        &committed.content.read_at(0, 100).await.unwrap()[..],
        b"hello world"
    );
    assert_eq!(&committed.content.read_at(6, 3).await.unwrap()[..], b"wor");
    assert!(committed.content.read_at(11, 10).await.unwrap().is_empty());
    assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), b"hello world");
    assert_eq!(read_all(s, &f).await.unwrap(), b"hello world");
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(j.home.join("f.txt")).unwrap()),
        std::os::unix::fs::MetadataExt::ino(&old_ino),
        "atomic upload must replace the inode, not rewrite it"
    );
    assert_eq!(&before.read_at(0, 100).await.unwrap()[..], OLD);
    j.assert_no_temporaries();

    // The committed content stays readable after the name is replaced.
    upload(s, &f, UploadMode::Atomic, b"third").await.unwrap();
    assert_eq!(
        &committed.content.read_at(0, 100).await.unwrap()[..],
        b"hello world"
    );

    // Committing a brand-new name in a subfolder.
    s.create_dir(&vp("/sub")).await.unwrap();
    let w = s
        .create(
            &vp("/sub/new.bin"),
            opts(UploadMode::Atomic, WriteStart::Truncate, false),
        )
        .await
        .unwrap();
    assert_unnamed_temporary(&j.home.join("sub"));
    assert!(list_names(s, &vp("/sub")).await.unwrap().is_empty());
    let data = vec![7u8; 200_000];
    w.write_at(0, Bytes::from(data.clone())).await.unwrap();
    let committed = w.commit().await.unwrap();
    assert_eq!(committed.size, 200_000);
    assert_eq!(std::fs::read(j.home.join("sub/new.bin")).unwrap(), data);
    assert_eq!(
        list_names(s, &vp("/sub")).await.unwrap(),
        vec!["new.bin".to_owned()]
    );
    j.assert_no_temporaries();
}

#[tokio::test]
async fn resume_and_append_keep_the_right_prefix() {
    for mode in ALL_MODES {
        let j = Jail::new();
        let s: &dyn Storage = &j.storage;
        let f = vp("/f.bin");
        let on_disk = j.home.join("f.bin");
        let reset = || std::fs::write(&on_disk, b"0123456789").unwrap();

        reset();
        let w = s
            .create(&f, opts(mode, WriteStart::ResumeAt(4), false))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 4, "{mode:?}");
        w.write_at(4, b(b"abc")).await.unwrap();
        assert_eq!(w.commit().await.unwrap().size, 7);
        assert_eq!(
            std::fs::read(&on_disk).unwrap(),
            b"0123abc",
            "{mode:?} ResumeAt(4)"
        );

        reset();
        let w = s
            .create(&f, opts(mode, WriteStart::ResumeAt(10), false))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 10);
        w.write_at(10, b(b"AB")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            std::fs::read(&on_disk).unwrap(),
            b"0123456789AB",
            "{mode:?} ResumeAt(len)"
        );

        reset();
        let r = s
            .create(&f, opts(mode, WriteStart::ResumeAt(11), false))
            .await;
        assert!(
            matches!(r, Err(VfsError::InvalidOffset)),
            "{mode:?} ResumeAt(len+1)"
        );
        assert_eq!(std::fs::read(&on_disk).unwrap(), b"0123456789");
        let r = s
            .create(&vp("/missing"), opts(mode, WriteStart::ResumeAt(1), false))
            .await;
        assert!(
            matches!(r, Err(VfsError::InvalidOffset)),
            "{mode:?} ResumeAt on missing file"
        );
        assert!(!j.home.join("missing").exists());

        let w = s
            .create(&f, opts(mode, WriteStart::Append, false))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 10);
        w.write_at(10, b(b"XYZ")).await.unwrap();
        assert_eq!(w.commit().await.unwrap().size, 13);
        assert_eq!(
            std::fs::read(&on_disk).unwrap(),
            b"0123456789XYZ",
            "{mode:?} Append"
        );

        reset();
        let w = s
            .create(&f, opts(mode, WriteStart::Keep, false))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 10);
        w.write_at(2, b(b"ab")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            std::fs::read(&on_disk).unwrap(),
            b"01ab456789",
            "{mode:?} Keep"
        );

        reset();
        let w = s
            .create(&f, opts(mode, WriteStart::Truncate, false))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 0);
        w.write_at(0, b(b"T")).await.unwrap();
        let c = w.commit().await.unwrap();
        assert_eq!(
            (c.size, &c.content.read_at(0, 10).await.unwrap()[..]),
            (1, &b"T"[..])
        );
        assert_eq!(std::fs::read(&on_disk).unwrap(), b"T", "{mode:?} Truncate");

        // Append to a file that does not exist starts empty.
        let w = s
            .create(&vp("/fresh"), opts(mode, WriteStart::Append, false))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 0);
        w.write_at(0, b(b"fresh")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(std::fs::read(j.home.join("fresh")).unwrap(), b"fresh");
        j.assert_no_temporaries();
    }
}

#[tokio::test]
async fn exclusive_refuses_an_existing_target() {
    for mode in ALL_MODES {
        let j = with_old_file();
        let s: &dyn Storage = &j.storage;
        for start in ALL_STARTS {
            let r = s.create(&vp("/f.txt"), opts(mode, start, true)).await;
            assert!(
                matches!(r, Err(VfsError::AlreadyExists)),
                "{mode:?} {start:?}"
            );
        }
        assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), OLD);
        // A folder is never a file target.
        std::fs::create_dir(j.home.join("dir")).unwrap();
        for exclusive in [false, true] {
            let r = s
                .create(&vp("/dir"), opts(mode, WriteStart::Truncate, exclusive))
                .await;
            assert!(
                matches!(r, Err(VfsError::IsADirectory | VfsError::AlreadyExists)),
                "{mode:?} dir"
            );
        }
        // A new name works.
        let w = s
            .create(&vp("/new.txt"), opts(mode, WriteStart::Truncate, true))
            .await
            .unwrap();
        w.write_at(0, b(b"new")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(std::fs::read(j.home.join("new.txt")).unwrap(), b"new");
        j.assert_no_temporaries();
    }
}

/// A symlink put at the final name while the upload runs (pointing out of
/// the jail, or dangling to a name outside) is replaced by the upload, never
/// written through: `linkat` refuses a taken name, and the replacement goes
/// through a hidden name renamed over the link. An exclusive upload loses
/// to it and leaves it alone.
#[tokio::test]
async fn a_symlink_put_at_the_name_meanwhile_is_replaced_not_followed() {
    for (exclusive, mode) in [
        (false, UploadMode::Atomic),
        (false, UploadMode::AtomicResume),
        (true, UploadMode::Atomic),
    ] {
        let j = Jail::new();
        std::fs::write(j.root.join("secret.txt"), b"secret").unwrap();
        let s: &dyn Storage = &j.storage;
        let mut uploads = Vec::new();
        for name in ["to_secret", "dangling"] {
            let w = s
                .create(
                    &vp(&format!("/{name}")),
                    opts(mode, WriteStart::Truncate, exclusive),
                )
                .await
                .unwrap();
            w.write_at(0, b(b"uploaded")).await.unwrap();
            uploads.push((name, w));
        }
        std::os::unix::fs::symlink(j.root.join("secret.txt"), j.home.join("to_secret")).unwrap();
        std::os::unix::fs::symlink(j.root.join("made.txt"), j.home.join("dangling")).unwrap();
        let outside = j.snapshot_outside();
        for (name, w) in uploads {
            let on_disk = j.home.join(name);
            let r = w.commit().await;
            if exclusive {
                assert!(matches!(r, Err(VfsError::AlreadyExists)), "{name}");
                assert!(on_disk.symlink_metadata().unwrap().is_symlink(), "{name}");
            } else {
                r.unwrap();
                let meta = on_disk.symlink_metadata().unwrap();
                assert!(meta.is_file(), "{name} {mode:?}: still a link");
                assert_eq!(std::fs::read(&on_disk).unwrap(), b"uploaded");
            }
        }
        assert_eq!(
            j.snapshot_outside(),
            outside,
            "exclusive={exclusive} {mode:?}"
        );
        assert_eq!(std::fs::read(j.root.join("secret.txt")).unwrap(), b"secret");
        assert!(!j.root.join("made.txt").exists());
        j.assert_no_temporaries();
    }
}

/// The quota gives back what the final name held at the moment the upload
/// took it over, so the commit (and an `atomic_resume` abort, which keeps
/// the partial) must say what that was, including what appeared at the name
/// while the upload ran.
#[tokio::test]
async fn the_commit_says_what_the_name_held_when_it_was_taken() {
    for mode in [UploadMode::Atomic, UploadMode::AtomicResume] {
        let j = Jail::new();
        let s: &dyn Storage = &j.storage;
        let start = |name: &'static str| async move {
            let w = s
                .create(&vp(name), opts(mode, WriteStart::Truncate, false))
                .await
                .unwrap();
            w.write_at(0, b(b"uploaded")).await.unwrap();
            w
        };
        // A new name, free to the end.
        let w = start("/new").await;
        assert_eq!(w.commit().await.unwrap().replaced, Replaced::Nothing);

        // A file that was there before the upload began, with a second link.
        std::fs::write(j.home.join("linked"), b"twelve bytes").unwrap();
        std::fs::hard_link(j.home.join("linked"), j.home.join("other")).unwrap();
        let w = start("/linked").await;
        assert_eq!(
            w.commit().await.unwrap().replaced,
            Replaced::File { size: 12, nlink: 2 },
            "{mode:?}"
        );

        // A file, and a symlink, that appeared while the upload ran.
        let file = start("/appeared").await;
        let link = start("/link").await;
        std::fs::write(j.home.join("appeared"), b"theirs").unwrap();
        std::os::unix::fs::symlink("new", j.home.join("link")).unwrap();
        assert_eq!(
            file.commit().await.unwrap().replaced,
            Replaced::File { size: 6, nlink: 1 },
            "{mode:?}"
        );
        assert_eq!(link.commit().await.unwrap().replaced, Replaced::Other);
        assert!(j.home.join("link").symlink_metadata().unwrap().is_file());

        if mode == UploadMode::AtomicResume {
            // An abort keeps the partial under the name, and says the same.
            let free = start("/partial").await;
            let taken = start("/taken").await;
            std::fs::write(j.home.join("taken"), b"four").unwrap();
            let placed = free.abort().await.unwrap();
            assert_eq!((placed.size, placed.replaced), (8, Replaced::Nothing));
            let placed = taken.abort().await.unwrap();
            assert_eq!(
                (placed.size, placed.replaced),
                (8, Replaced::File { size: 4, nlink: 1 })
            );
            assert_eq!(std::fs::read(j.home.join("taken")).unwrap(), b"uploaded");
        }
        j.assert_no_temporaries();
    }
}

#[tokio::test]
async fn exclusive_commit_loses_to_a_file_created_meanwhile() {
    for mode in [UploadMode::Atomic, UploadMode::AtomicResume] {
        let j = Jail::new();
        let s: &dyn Storage = &j.storage;
        let w = s
            .create(&vp("/race.txt"), opts(mode, WriteStart::Truncate, true))
            .await
            .unwrap();
        w.write_at(0, b(b"mine")).await.unwrap();
        // Someone else (another session) wins the name meanwhile.
        std::fs::write(j.home.join("race.txt"), b"theirs").unwrap();
        let r = w.commit().await;
        assert!(
            matches!(r, Err(VfsError::AlreadyExists)),
            "{mode:?}: {:?}",
            r.err()
        );
        assert_eq!(
            std::fs::read(j.home.join("race.txt")).unwrap(),
            b"theirs",
            "{mode:?}"
        );
        j.assert_no_temporaries();
    }
}

#[tokio::test]
async fn atomic_resume_keeps_the_partial_on_abort() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    let on_disk = j.home.join("f.txt");

    // Nothing written: the old content stays.
    let w = s
        .create(
            &f,
            opts(UploadMode::AtomicResume, WriteStart::Truncate, false),
        )
        .await
        .unwrap();
    assert_unnamed_temporary(&j.home);
    w.abort().await;
    assert_eq!(std::fs::read(&on_disk).unwrap(), OLD);
    j.assert_no_temporaries();

    // Something written, explicit abort: the partial takes the final name.
    let w = s
        .create(
            &f,
            opts(UploadMode::AtomicResume, WriteStart::Truncate, false),
        )
        .await
        .unwrap();
    w.write_at(0, b(b"PART")).await.unwrap();
    assert_eq!(
        list_names(s, &VirtualPath::root()).await.unwrap(),
        vec!["f.txt".to_owned()]
    );
    assert_eq!(
        read_all(s, &f).await.unwrap(),
        OLD,
        "partial visible before abort"
    );
    w.abort().await;
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"PART");
    j.assert_no_temporaries();

    // A resumed upload interrupted by a dropped connection keeps prefix + new bytes,
    // and can be resumed again from there.
    let w = s
        .create(
            &f,
            opts(UploadMode::AtomicResume, WriteStart::ResumeAt(2), false),
        )
        .await
        .unwrap();
    w.write_at(2, b(b"rt-2")).await.unwrap();
    drop(w);
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"PArt-2");
    let w = s
        .create(
            &f,
            opts(UploadMode::AtomicResume, WriteStart::ResumeAt(6), false),
        )
        .await
        .unwrap();
    w.write_at(6, b(b"+done")).await.unwrap();
    assert_eq!(w.commit().await.unwrap().size, 11);
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"PArt-2+done");

    // A new name gets its partial too.
    let w = s
        .create(
            &vp("/new"),
            opts(UploadMode::AtomicResume, WriteStart::Truncate, false),
        )
        .await
        .unwrap();
    w.write_at(0, b(b"half")).await.unwrap();
    w.abort().await;
    assert_eq!(std::fs::read(j.home.join("new")).unwrap(), b"half");
    j.assert_no_temporaries();
}

#[tokio::test]
async fn direct_mode_writes_in_place() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    let on_disk = j.home.join("f.txt");
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let old_ino = ino(&on_disk);

    let w = s
        .create(&f, opts(UploadMode::Direct, WriteStart::Truncate, false))
        .await
        .unwrap();
    // Truncated at once, no temporary.
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"");
    assert!(temporaries_in(&j.home).is_empty());
    w.write_at(0, b(b"direct")).await.unwrap();
    assert_eq!(
        std::fs::read(&on_disk).unwrap(),
        b"direct",
        "bytes not visible in place"
    );
    assert_eq!(read_all(s, &f).await.unwrap(), b"direct");
    let c = w.commit().await.unwrap();
    assert_eq!(c.size, 6);
    assert_eq!(
        ino(&on_disk),
        old_ino,
        "direct mode must write the same inode"
    );

    // Abort keeps what was written.
    let w = s
        .create(&f, opts(UploadMode::Direct, WriteStart::Append, false))
        .await
        .unwrap();
    w.write_at(6, b(b"+more")).await.unwrap();
    w.abort().await;
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"direct+more");
    j.assert_no_temporaries();
}

#[tokio::test]
async fn upload_targets_must_be_valid() {
    let j = Jail::new();
    let s: &dyn Storage = &j.storage;
    for mode in ALL_MODES {
        let r = s
            .create(
                &VirtualPath::root(),
                opts(mode, WriteStart::Truncate, false),
            )
            .await;
        assert!(r.is_err(), "{mode:?} created the root");
        let r = s
            .create(
                &vp("/no/such/dir/x"),
                opts(mode, WriteStart::Truncate, false),
            )
            .await;
        assert!(matches!(r, Err(VfsError::NotFound)), "{mode:?}");
    }
    // The hidden names a replacement passes through cannot be named by
    // clients.
    let temp = format!("{TEMP_PREFIX}0123456789abcdef");
    assert!(VirtualPath::parse(&temp).is_err());
    assert!(VirtualPath::parse(&format!("/sub/../{temp}")).is_err());
}

// ---------------------------------------------------------------------------
// Crash mid-upload
// ---------------------------------------------------------------------------

const CRASH_ENV: &str = "DROPGATE_VFS_CRASH_CHILD";
const CRASH_CHILD_TEST: &str = "crash_child_helper";

/// Not a test on its own: the child side of `crash_mid_upload_*`. With
/// `DROPGATE_VFS_CRASH_CHILD=<storage root>` it starts an atomic upload of
/// `/f.txt` in home `alice`, writes, says READY and waits to be killed.
#[test]
fn crash_child_helper() {
    let Some(root) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let storage = LocalStorage::open(Path::new(&root), "alice").unwrap();
        let w = storage
            .create(
                &vp("/f.txt"),
                opts(UploadMode::Atomic, WriteStart::Truncate, false),
            )
            .await
            .unwrap();
        w.write_at(0, Bytes::from(vec![b'N'; 64 * 1024]))
            .await
            .unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY").unwrap();
        out.flush().unwrap();
        drop(out);
        std::thread::sleep(Duration::from_secs(120));
        // Never reached in practice: the parent kills us first.
        drop(w);
    });
}

/// Runs the crash child against `root`, kills it with SIGKILL once it is mid-upload.
fn run_and_kill_child(root: &Path) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            CRASH_CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("READY") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        ready.is_ok(),
        "child never became ready (status {status:?})"
    );
    assert!(!status.success());
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

async fn crash_mid_upload(pre_existing: Option<&[u8]>) {
    let j = Jail::new();
    let f = j.home.join("f.txt");
    if let Some(old) = pre_existing {
        std::fs::write(&f, old).unwrap();
    }
    let started = Instant::now();
    run_and_kill_child(&j.root);
    assert!(started.elapsed() < Duration::from_secs(90));

    // The final name is untouched.
    match pre_existing {
        Some(old) => assert_eq!(std::fs::read(&f).unwrap(), old),
        None => assert!(!f.exists()),
    }
    // The partial was an unnamed file: it went with the process.
    j.assert_no_temporaries();
    let s: &dyn Storage = &j.storage;
    let names = list_names(s, &VirtualPath::root()).await.unwrap();
    let expected: Vec<String> = pre_existing.iter().map(|_| "f.txt".to_owned()).collect();
    assert_eq!(names, expected);

    // What a crash leaves where the upload had to take a named temporary
    // (a file system without O_TMPFILE, a replacement between its link and
    // its rename): the startup sweep removes it and nothing else.
    std::fs::write(
        j.home.join(format!("{TEMP_PREFIX}00ff00ff00ff00ff")),
        [b'N'; 64],
    )
    .unwrap();
    std::fs::write(j.home.join("keep.txt"), b"keep").unwrap();
    let outside = j.snapshot_outside();
    assert_eq!(sweep_stale_temporaries(&j.root).unwrap(), 1);
    j.assert_no_temporaries();
    assert_eq!(std::fs::read(j.home.join("keep.txt")).unwrap(), b"keep");
    if let Some(old) = pre_existing {
        assert_eq!(std::fs::read(&f).unwrap(), old);
    }
    assert_eq!(j.snapshot_outside(), outside);
    assert_eq!(sweep_stale_temporaries(&j.root).unwrap(), 0);
}

#[tokio::test]
async fn crash_mid_upload_over_an_existing_file() {
    crash_mid_upload(Some(OLD)).await;
}

#[tokio::test]
async fn crash_mid_upload_of_a_new_file() {
    crash_mid_upload(None).await;
}

#[test]
fn sweep_does_not_follow_symlinks() {
    let j = Jail::new();
    // A temporary-looking file outside the swept tree, reachable only by a symlink.
    let elsewhere = j.tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join(format!("{TEMP_PREFIX}0000")), b"not ours").unwrap();
    std::os::unix::fs::symlink(&elsewhere, j.home.join("link")).unwrap();
    std::fs::create_dir_all(j.home.join("a/b")).unwrap();
    std::fs::write(j.home.join(format!("a/b/{TEMP_PREFIX}1111")), b"stale").unwrap();
    std::fs::write(j.home.join("a/b/regular"), b"regular").unwrap();
    assert_eq!(sweep_stale_temporaries(&j.root).unwrap(), 1);
    assert!(elsewhere.join(format!("{TEMP_PREFIX}0000")).exists());
    assert!(j.home.join("a/b/regular").exists());
    assert!(!j.home.join(format!("a/b/{TEMP_PREFIX}1111")).exists());
    assert_eq!(
        sweep_stale_temporaries(&j.tmp.path().join("missing")).unwrap(),
        0
    );
}

/// Uploads larger than the write-back window (8 MiB) start write-back while
/// they run; that must change nothing about what is committed or aborted,
/// also when the chunks arrive out of order (SFTP).
#[tokio::test]
async fn large_uploads_across_write_back_windows() {
    let j = with_old_file();
    let s: &dyn Storage = &j.storage;
    let f = vp("/f.txt");
    const CHUNK: usize = 1 << 20;
    let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);

    let w = s
        .create(&f, opts(UploadMode::Atomic, WriteStart::Truncate, false))
        .await
        .unwrap();
    // 20 MiB: odd chunks first, then even ones.
    for i in (1..20).step_by(2).chain((0..20).step_by(2)) {
        w.write_at((i * CHUNK) as u64, chunk(i)).await.unwrap();
    }
    // Before the commit the old content is what readers see.
    assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), OLD);
    let committed = w.commit().await.unwrap();
    assert_eq!(committed.size, (20 * CHUNK) as u64);
    let on_disk = std::fs::read(j.home.join("f.txt")).unwrap();
    assert_eq!(on_disk.len(), 20 * CHUNK);
    for i in 0..20 {
        assert!(
            on_disk[i * CHUNK..(i + 1) * CHUNK]
                .iter()
                .all(|&b| b == (i % 251) as u8),
            "chunk {i}"
        );
    }
    j.assert_no_temporaries();

    // An abort after several windows leaves the committed file and no debris.
    let w = s
        .create(&f, opts(UploadMode::Atomic, WriteStart::Truncate, false))
        .await
        .unwrap();
    for i in 0..12 {
        w.write_at((i * CHUNK) as u64, Bytes::from(vec![0xEE; CHUNK]))
            .await
            .unwrap();
    }
    w.abort().await;
    assert_eq!(std::fs::read(j.home.join("f.txt")).unwrap(), on_disk);
    j.assert_no_temporaries();
}

/// Reads are served from the page cache when they can be and from the disk
/// otherwise; either way a reader sees the file as it is, also after it
/// shrank or grew behind the open handle.
#[tokio::test]
async fn reads_follow_the_file_whatever_its_cache_state() {
    let j = Jail::new();
    let s: &dyn Storage = &j.storage;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(j.home.join("r.bin"), &data).unwrap();
    let r = s.open_read(&vp("/r.bin")).await.unwrap();
    assert_eq!(r.len(), 100_000);
    assert_eq!(&r.read_at(0, 32_768).await.unwrap()[..], &data[..32_768]);
    assert_eq!(
        &r.read_at(90_000, 32_768).await.unwrap()[..],
        &data[90_000..],
        "a read across the end is short"
    );
    assert!(r.read_at(100_000, 10).await.unwrap().is_empty());
    assert!(r.read_at(5, 0).await.unwrap().is_empty());
    let m = r.stat().unwrap();
    assert_eq!(m.size, 100_000);

    // Shrunk behind the handle: the read stops at the new end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(j.home.join("r.bin"))
        .unwrap()
        .set_len(10_000)
        .unwrap();
    assert_eq!(&r.read_at(0, 65_536).await.unwrap()[..], &data[..10_000]);
    assert_eq!(
        r.stat().unwrap().size,
        10_000,
        "stat is of the open file, now"
    );
    // Grown: bytes past the size at open are readable too.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(j.home.join("r.bin"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[9u8; 150_000]).unwrap();
    let tail = r.read_at(100_000, 50_000).await.unwrap();
    assert_eq!(tail.len(), 50_000);
    assert!(tail.iter().all(|&b| b == 9));
}

/// Durable uploads are written behind (their pages written back while the
/// client sends and dropped from the page cache 32 MiB behind the furthest
/// write): whatever the alignment of the resume point and of each write, a
/// rewrite of a range already dropped, and in every upload mode, the
/// committed file holds exactly the bytes written and the inspector saw
/// them in order.
#[tokio::test]
async fn durable_large_uploads_land_whole_through_the_write_behind() {
    for mode in ALL_MODES {
        let j = Jail::new();
        let s: &dyn Storage = &j.storage;
        let f = vp("/big.bin");
        let on_disk = j.home.join("big.bin");
        let old = pattern(3 << 20, 200);
        std::fs::write(&on_disk, &old).unwrap();
        // Resumed at an odd offset, then written in the chunk sizes FTP's
        // receive loop and ASCII conversion produce, far enough past the
        // write-behind's reach that it settles several windows, the last
        // one through write_and_commit.
        let keep = 1_000_003u64;
        let w = s
            .create(&f, opts(mode, WriteStart::ResumeAt(keep), false))
            .await
            .unwrap();
        let mut expect = old[..keep as usize].to_vec();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sizes = [1 << 20, (1 << 20) + 5, 1 << 20, 300_000, 4096, 1 << 20];
        for i in 0..80 {
            let len = sizes[i % sizes.len()];
            let chunk = pattern(len, i as u8);
            let seen = seen.clone();
            w.write_at_inspect(
                expect.len() as u64,
                Bytes::from(chunk.clone()),
                Box::new(move |data: &[u8]| seen.lock().unwrap().extend_from_slice(data)),
            )
            .await
            .unwrap();
            expect.extend_from_slice(&chunk);
        }
        assert!(
            expect.len() > 48 << 20,
            "the write-behind settled something"
        );
        // An SFTP client rewriting a range long written back and dropped.
        let again = pattern(100_000, 77);
        let at = (2 << 20) + 13;
        w.write_at(at as u64, Bytes::from(again.clone()))
            .await
            .unwrap();
        let inspected = expect[keep as usize..].to_vec();
        expect[at..at + again.len()].copy_from_slice(&again);
        let last = pattern((1 << 20) + 99, 99);
        let committed = w
            .write_and_commit(expect.len() as u64, Bytes::from(last.clone()), None)
            .await
            .unwrap();
        expect.extend_from_slice(&last);
        assert_eq!(committed.size, expect.len() as u64, "{mode:?}");
        assert!(
            std::fs::read(&on_disk).unwrap() == expect,
            "{mode:?}: the committed file differs from what was written"
        );
        assert!(
            seen.lock().unwrap()[..] == inspected[..],
            "{mode:?}: the inspector saw other bytes"
        );
    }
}

/// A page-cache upload written front to back (`write_next_at`, FTP's way)
/// lands whole on a multi-thread runtime, where its 512 KiB-1 MiB chunks are
/// copied in place (`block_in_place`) and the others on the blocking pool,
/// while other tasks on the runtime go on (two uploads interleaved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_cache_uploads_written_in_place_land_whole() {
    for mode in ALL_MODES {
        let j = Jail::new();
        let s: &dyn Storage = &j.storage;
        let sizes = [
            1 << 20,
            512 << 10,
            (512 << 10) - 1,
            (1 << 20) + 1,
            4096,
            1 << 20,
        ];
        let upload = |name: &'static str, seed: u8| {
            let f = vp(name);
            async move {
                let w = s.create(&f, page_cache_opts(mode)).await.unwrap();
                let mut expect = Vec::new();
                for (i, len) in sizes.iter().enumerate() {
                    let chunk = pattern(*len, seed ^ i as u8);
                    w.write_next_at(expect.len() as u64, Bytes::from(chunk.clone()))
                        .await
                        .unwrap();
                    expect.extend_from_slice(&chunk);
                    tokio::task::yield_now().await;
                }
                let committed = w.commit().await.unwrap();
                assert_eq!(committed.size, expect.len() as u64, "{mode:?}");
                expect
            }
        };
        let (a, b) = tokio::join!(upload("/a.bin", 1), upload("/b.bin", 2));
        assert!(
            std::fs::read(j.home.join("a.bin")).unwrap() == a,
            "{mode:?}"
        );
        assert!(
            std::fs::read(j.home.join("b.bin")).unwrap() == b,
            "{mode:?}"
        );
    }
}

/// A committed upload's content reader holds dropgate's own truncation of
/// that file by path back until it is dropped (the SHA-256 of an upload
/// answered from the page cache is read from it after the reply), in the
/// modes that write a temporary; `direct` mode offers no such reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_uploads_content_stays_as_committed_while_it_is_read_back() {
    let data = vec![7u8; 300_000];
    for mode in [
        UploadMode::Atomic,
        UploadMode::AtomicResume,
        UploadMode::Direct,
    ] {
        let j = Jail::new();
        let s = std::sync::Arc::new(j.storage.clone());
        let f = vp("/up.bin");
        let w = s.create(&f, page_cache_opts(mode)).await.unwrap();
        assert_eq!(w.stable_content(), mode != UploadMode::Direct, "{mode:?}");
        w.write_at(0, Bytes::from(data.clone())).await.unwrap();
        let committed = w.commit().await.unwrap();

        let truncate = {
            let (s, f) = (s.clone(), f.clone());
            tokio::spawn(async move { s.set_len(&f, 10).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        if mode == UploadMode::Direct {
            assert!(truncate.is_finished(), "nothing sealed in direct mode");
        } else {
            assert!(
                !truncate.is_finished(),
                "{mode:?}: truncated while read back"
            );
            let back = committed.content.read_at(0, data.len()).await.unwrap();
            assert_eq!(back.len(), data.len(), "{mode:?}");
        }
        drop(committed);
        truncate.await.unwrap().unwrap();
        assert_eq!(std::fs::metadata(j.home.join("up.bin")).unwrap().len(), 10);
    }
}

/// On the multi-thread runtime (the server's) creates and page-cache
/// commits run on the worker itself (one at a time with two workers) or in
/// place (`block_in_place`), and a last write over 64 KiB in place: many
/// uploads at once, new names and replacements, in both durability modes,
/// each lands whole under its name and leaves no temporary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_on_the_server_runtime_commit_in_place() {
    let j = Jail::new();
    let s: std::sync::Arc<dyn Storage> = std::sync::Arc::new(j.storage.clone());
    for round in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let s = s.clone();
            tasks.spawn(async move {
                let mut o = opts(UploadMode::Atomic, WriteStart::Truncate, false);
                o.durable = i % 4 == 0;
                let w = s.create(&vp(&format!("/f{i}")), o).await.unwrap();
                // Some last writes too large for the worker itself.
                let times = if i % 8 == 2 { 10_000 } else { 100 + i as usize };
                let body = format!("round {round} file {i}").repeat(times);
                let half = body.len() / 2;
                w.write_at(0, Bytes::from(body.as_bytes()[..half].to_vec()))
                    .await
                    .unwrap();
                let last = Bytes::from(body.as_bytes()[half..].to_vec());
                let committed = if i % 2 == 0 {
                    w.write_and_commit(half as u64, last, None)
                        .await
                        .ok()
                        .unwrap()
                } else {
                    w.write_at(half as u64, last).await.unwrap();
                    w.commit().await.unwrap()
                };
                assert_eq!(committed.size, body.len() as u64);
                (i, body)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (i, body) = done.unwrap();
            assert_eq!(
                std::fs::read(j.home.join(format!("f{i}"))).unwrap(),
                body.as_bytes(),
                "round {round} file {i}"
            );
        }
        j.assert_no_temporaries();
    }
}
