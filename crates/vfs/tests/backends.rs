//! The `Storage` contract, run against every backend: what a client sees
//! through any protocol must not depend on where the homes live. Cases a
//! backend cannot support by its capabilities (links) check that it says so
//! with `Unsupported`. The local disk's own cases (symlinks racing the jail,
//! temporaries on disk, durability) are in `jail.rs` and `atomic.rs`.
//!
//! The S3 backend runs against a real S3-compatible server on loopback
//! (moto, installed by `scripts/test`; never skipped), a fresh bucket per
//! case.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

// The moto harness without the rest of testkit (which depends on this crate).
#[path = "../../testkit/src/moto.rs"]
mod moto;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dropgate_vfs::{
    Backend, CreateOptions, Found, LIST_BATCH, LocalBackend, MemoryBackend, Replaced, S3Backend,
    S3Settings, Storage, UploadMode, VfsError, VirtualPath, WriteStart,
};

/// Every backend, each with a fresh, empty root (the temporary folder
/// lives as long as the returned guard).
fn backends() -> Vec<(Arc<dyn Backend>, Option<tempfile::TempDir>)> {
    let tmp = tempfile::tempdir().unwrap();
    vec![
        (
            Arc::new(LocalBackend::new(tmp.path().join("root"))) as Arc<dyn Backend>,
            Some(tmp),
        ),
        (Arc::new(MemoryBackend::new()) as Arc<dyn Backend>, None),
        (Arc::new(s3_backend()) as Arc<dyn Backend>, None),
    ]
}

/// The S3 backend on a new bucket of the shared moto, below a prefix.
fn s3_backend() -> S3Backend {
    let moto = moto::Moto::shared();
    S3Backend::new(&S3Settings {
        bucket: moto.bucket(),
        prefix: "gateway/files".into(),
        region: "us-east-1".into(),
        endpoint: moto.endpoint(),
        path_style: true,
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
    })
    .unwrap()
}

fn p(s: &str) -> VirtualPath {
    VirtualPath::parse(s).unwrap()
}

fn opts(mode: UploadMode, start: WriteStart) -> CreateOptions {
    CreateOptions {
        mode,
        start,
        exclusive: false,
        durable: true,
    }
}

async fn put(fs: &dyn Storage, path: &str, data: &[u8]) {
    let w = fs
        .create(&p(path), opts(UploadMode::Atomic, WriteStart::Truncate))
        .await
        .unwrap();
    w.write_at(0, Bytes::copy_from_slice(data)).await.unwrap();
    w.commit().await.unwrap();
}

async fn read(fs: &dyn Storage, path: &str) -> Result<Vec<u8>, VfsError> {
    let r = fs.open_read(&p(path)).await?;
    let mut out = Vec::new();
    loop {
        let chunk = r.read_at(out.len() as u64, 7).await?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

async fn names(fs: &dyn Storage, path: &str) -> Vec<String> {
    let mut list = fs.list(&p(path)).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = list.next().await {
        out.push(e.unwrap().name);
    }
    out.sort();
    out
}

#[tokio::test]
async fn atomic_uploads_appear_whole_at_commit_and_not_before() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/a.txt", b"old").await;

        let w = fs
            .create(&p("/a.txt"), opts(UploadMode::Atomic, WriteStart::Truncate))
            .await
            .unwrap();
        assert_eq!(w.found(), Found::File { size: 3, nlink: 1 }, "{kind}");
        w.write_at(0, Bytes::from_static(b"new content"))
            .await
            .unwrap();
        assert_eq!(read(fs.as_ref(), "/a.txt").await.unwrap(), b"old", "{kind}");
        assert_eq!(
            names(fs.as_ref(), "/").await,
            ["a.txt"],
            "{kind}: no temporary listed"
        );
        let committed = w.commit().await.unwrap();
        assert_eq!(committed.size, 11, "{kind}");
        assert_eq!(
            committed.replaced,
            Replaced::File { size: 3, nlink: 1 },
            "{kind}"
        );
        assert_eq!(read(fs.as_ref(), "/a.txt").await.unwrap(), b"new content");
        assert_eq!(
            committed.content.read_at(4, 100).await.unwrap(),
            &b"content"[..]
        );

        // An abandoned atomic upload leaves the old file and nothing else.
        let w = fs
            .create(&p("/a.txt"), opts(UploadMode::Atomic, WriteStart::Truncate))
            .await
            .unwrap();
        w.write_at(0, Bytes::from_static(b"partial")).await.unwrap();
        assert!(w.abort().await.is_none(), "{kind}");
        let w = fs
            .create(&p("/b.txt"), opts(UploadMode::Atomic, WriteStart::Truncate))
            .await
            .unwrap();
        assert_eq!(w.found(), Found::Nothing, "{kind}");
        w.write_at(0, Bytes::from_static(b"dropped")).await.unwrap();
        drop(w);
        assert_eq!(read(fs.as_ref(), "/a.txt").await.unwrap(), b"new content");
        assert_eq!(names(fs.as_ref(), "/").await, ["a.txt"], "{kind}");
    }
}

#[tokio::test]
async fn resume_append_and_the_partial_of_each_mode() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/f", b"0123456789").await;

        let w = fs
            .create(&p("/f"), opts(UploadMode::Atomic, WriteStart::ResumeAt(4)))
            .await
            .unwrap();
        assert_eq!(w.initial_len(), 4, "{kind}");
        w.write_at(4, Bytes::from_static(b"xy")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(read(fs.as_ref(), "/f").await.unwrap(), b"0123xy", "{kind}");

        let w = fs
            .create(&p("/f"), opts(UploadMode::Atomic, WriteStart::Append))
            .await
            .unwrap();
        w.write_at(6, Bytes::from_static(b"!")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(read(fs.as_ref(), "/f").await.unwrap(), b"0123xy!", "{kind}");

        assert!(matches!(
            fs.create(&p("/f"), opts(UploadMode::Atomic, WriteStart::ResumeAt(99)))
                .await
                .err(),
            Some(VfsError::InvalidOffset)
        ));

        // atomic_resume keeps what arrived under the final name.
        let w = fs
            .create(
                &p("/r"),
                opts(UploadMode::AtomicResume, WriteStart::Truncate),
            )
            .await
            .unwrap();
        w.write_at(0, Bytes::from_static(b"half")).await.unwrap();
        let placed = w.abort().await.unwrap();
        assert_eq!(placed.size, 4, "{kind}");
        assert_eq!(placed.replaced, Replaced::Nothing, "{kind}");
        assert_eq!(read(fs.as_ref(), "/r").await.unwrap(), b"half", "{kind}");

        // direct writes in place: visible while it is written (an object
        // store publishes only whole objects: there it keeps the partial as
        // atomic_resume does).
        let w = fs
            .create(&p("/d"), opts(UploadMode::Direct, WriteStart::Truncate))
            .await
            .unwrap();
        w.write_at(0, Bytes::from_static(b"live")).await.unwrap();
        let placed = if backend.capabilities().in_place_uploads {
            assert_eq!(read(fs.as_ref(), "/d").await.unwrap(), b"live", "{kind}");
            assert!(w.in_place_identity().is_some(), "{kind}");
            let placed = w.abort().await.unwrap();
            assert_eq!(placed.replaced, Replaced::InPlace, "{kind}");
            placed
        } else {
            assert!(matches!(
                read(fs.as_ref(), "/d").await,
                Err(VfsError::NotFound)
            ));
            let placed = w.abort().await.unwrap();
            assert_eq!(placed.replaced, Replaced::Nothing, "{kind}");
            placed
        };
        assert_eq!(placed.size, 4, "{kind}");
        assert_eq!(read(fs.as_ref(), "/d").await.unwrap(), b"live", "{kind}");

        // Keep (SFTP open without TRUNC): a write at the end adds to the
        // file, one inside it replaces those bytes and the rest stays.
        let w = fs
            .create(&p("/f"), opts(UploadMode::Atomic, WriteStart::Keep))
            .await
            .unwrap();
        w.write_at(7, Bytes::from_static(b"?")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            read(fs.as_ref(), "/f").await.unwrap(),
            b"0123xy!?",
            "{kind}"
        );
        let w = fs
            .create(&p("/f"), opts(UploadMode::Atomic, WriteStart::Keep))
            .await
            .unwrap();
        w.write_at(2, Bytes::from_static(b"AB")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            read(fs.as_ref(), "/f").await.unwrap(),
            b"01ABxy!?",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn exclusive_creates_never_replace() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/taken", b"mine").await;
        let mut o = opts(UploadMode::Atomic, WriteStart::Truncate);
        o.exclusive = true;
        assert!(
            matches!(
                fs.create(&p("/taken"), o).await.err(),
                Some(VfsError::AlreadyExists)
            ),
            "{kind}"
        );
        // A name that appears while the upload runs is not replaced either.
        let w = fs.create(&p("/race"), o).await.unwrap();
        w.write_at(0, Bytes::from_static(b"late")).await.unwrap();
        put(fs.as_ref(), "/race", b"first").await;
        assert!(
            matches!(w.commit().await.err(), Some(VfsError::AlreadyExists)),
            "{kind}"
        );
        assert_eq!(
            read(fs.as_ref(), "/race").await.unwrap(),
            b"first",
            "{kind}"
        );
        assert_eq!(names(fs.as_ref(), "/").await, ["race", "taken"], "{kind}");
    }
}

#[tokio::test]
async fn folders_renames_and_removals() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        fs.create_dir(&p("/in")).await.unwrap();
        fs.create_dir(&p("/in/deep")).await.unwrap();
        put(fs.as_ref(), "/in/deep/x", b"x").await;
        put(fs.as_ref(), "/in/y", b"yy").await;
        // A sibling whose name sorts between "in" and "in/": not part of it.
        put(fs.as_ref(), "/in-not", b"z").await;

        assert!(matches!(
            fs.create_dir(&p("/in")).await.err(),
            Some(VfsError::AlreadyExists)
        ));
        assert!(matches!(
            fs.create_dir(&p("/missing/sub")).await.err(),
            Some(VfsError::NotFound)
        ));
        assert!(matches!(
            fs.create(
                &p("/missing/f"),
                opts(UploadMode::Atomic, WriteStart::Truncate)
            )
            .await
            .err(),
            Some(VfsError::NotFound)
        ));
        assert!(matches!(
            fs.remove_dir(&p("/in")).await.err(),
            Some(VfsError::DirectoryNotEmpty)
        ));
        assert!(matches!(
            fs.remove_file(&p("/in")).await.err(),
            Some(VfsError::IsADirectory)
        ));
        assert!(matches!(
            fs.create(&p("/in"), opts(UploadMode::Atomic, WriteStart::Truncate))
                .await
                .err(),
            Some(VfsError::IsADirectory)
        ));
        assert!(
            fs.rename(&p("/in"), &p("/in/deep/inner"), true)
                .await
                .is_err(),
            "{kind}: a folder into itself"
        );

        // A whole folder moves with what is in it.
        fs.rename(&p("/in"), &p("/out"), false).await.unwrap();
        assert_eq!(names(fs.as_ref(), "/").await, ["in-not", "out"], "{kind}");
        assert_eq!(names(fs.as_ref(), "/out").await, ["deep", "y"], "{kind}");
        assert_eq!(read(fs.as_ref(), "/out/deep/x").await.unwrap(), b"x");
        assert!(matches!(
            fs.metadata(&p("/in/y")).await.err(),
            Some(VfsError::NotFound)
        ));

        assert!(matches!(
            fs.rename(&p("/out/y"), &p("/in-not"), false).await.err(),
            Some(VfsError::AlreadyExists)
        ));
        fs.rename(&p("/out/y"), &p("/in-not"), true).await.unwrap();
        assert_eq!(read(fs.as_ref(), "/in-not").await.unwrap(), b"yy", "{kind}");

        fs.remove_file(&p("/out/deep/x")).await.unwrap();
        fs.remove_dir(&p("/out/deep")).await.unwrap();
        fs.remove_dir(&p("/out")).await.unwrap();
        assert!(matches!(
            fs.remove_dir(&p("/")).await.err(),
            Some(VfsError::PermissionDenied)
        ));
        assert_eq!(names(fs.as_ref(), "/").await, ["in-not"], "{kind}");
    }
}

#[tokio::test]
async fn large_folders_list_every_entry_once_in_batches() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        fs.create_dir(&p("/many")).await.unwrap();
        fs.create_dir(&p("/many/sub")).await.unwrap();
        put(fs.as_ref(), "/many/sub/hidden-below", b"").await;
        let count = LIST_BATCH * 2 + 17;
        for i in 0..count {
            put(fs.as_ref(), &format!("/many/f{i:05}"), b"").await;
        }
        let listed = names(fs.as_ref(), "/many").await;
        let unique: BTreeSet<_> = listed.iter().cloned().collect();
        assert_eq!(listed.len(), count + 1, "{kind}");
        assert_eq!(unique.len(), count + 1, "{kind}: no entry twice");
        assert!(unique.contains("sub") && !unique.contains("hidden-below"));
        assert!(matches!(
            fs.list(&p("/many/f00001")).await.err(),
            Some(VfsError::NotADirectory)
        ));
    }
}

#[tokio::test]
async fn an_open_file_keeps_its_content_when_the_name_is_replaced() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/doc", b"version one").await;
        let reader = fs.open_read(&p("/doc")).await.unwrap();
        put(fs.as_ref(), "/doc", b"v2").await;
        assert_eq!(reader.len(), 11, "{kind}");
        if backend.capabilities().stable_reads {
            assert_eq!(reader.read_at(0, 64).await.unwrap(), &b"version one"[..]);
        } else {
            // Never a mix of two versions: the read fails and says why.
            let err = reader.read_at(0, 64).await.unwrap_err();
            assert!(err.to_string().contains("changed"), "{kind}: {err}");
        }
        assert_eq!(read(fs.as_ref(), "/doc").await.unwrap(), b"v2", "{kind}");
    }
}

#[tokio::test]
async fn sizes_and_times_can_be_set() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/t", b"abcdef").await;
        fs.set_len(&p("/t"), 6).await.unwrap();
        let caps = backend.capabilities();
        if !caps.resize {
            assert!(matches!(
                fs.set_len(&p("/t"), 2).await,
                Err(VfsError::Unsupported(_))
            ));
            fs.set_len(&p("/t"), 0).await.unwrap();
            assert_eq!(read(fs.as_ref(), "/t").await.unwrap(), b"", "{kind}");
            assert!(matches!(
                fs.set_times(&p("/t"), None, Some(SystemTime::now())).await,
                Err(VfsError::Unsupported(_))
            ));
            assert!(fs.metadata(&p("/")).await.unwrap().is_dir(), "{kind}");
            assert!(fs.fs_stats(&p("/")).await.unwrap().blocks > 0, "{kind}");
            continue;
        }
        fs.set_len(&p("/t"), 2).await.unwrap();
        assert_eq!(read(fs.as_ref(), "/t").await.unwrap(), b"ab", "{kind}");
        fs.set_len(&p("/t"), 4).await.unwrap();
        assert_eq!(read(fs.as_ref(), "/t").await.unwrap(), b"ab\0\0", "{kind}");
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs.set_times(&p("/t"), None, Some(when)).await.unwrap();
        let meta = fs.metadata(&p("/t")).await.unwrap();
        assert_eq!(meta.modified, when, "{kind}");
        assert_eq!(meta.size, 4, "{kind}");
        assert!(meta.is_file() && !meta.is_dir());
        assert!(fs.metadata(&p("/")).await.unwrap().is_dir(), "{kind}");
        assert!(fs.fs_stats(&p("/")).await.unwrap().blocks > 0, "{kind}");
    }
}

#[tokio::test]
async fn links_work_where_the_backend_has_them_and_say_unsupported_elsewhere() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/target", b"t").await;
        let sym = fs.symlink(&p("/target"), &p("/sym")).await;
        let hard = fs.hard_link(&p("/target"), &p("/hard")).await;
        if backend.capabilities().links {
            sym.unwrap();
            hard.unwrap();
            assert_eq!(read(fs.as_ref(), "/sym").await.unwrap(), b"t", "{kind}");
            assert_eq!(fs.read_link(&p("/sym")).await.unwrap(), p("/target"));
        } else {
            assert!(matches!(sym, Err(VfsError::Unsupported(_))), "{kind}");
            assert!(matches!(hard, Err(VfsError::Unsupported(_))), "{kind}");
            assert_eq!(names(fs.as_ref(), "/").await, ["target"], "{kind}");
        }
    }
}

#[tokio::test]
async fn homes_are_separate_and_stay_below_the_root() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        for bad in ["../up", "a/../../b", "./x/."] {
            assert!(backend.open_home(bad).await.is_err(), "{kind}: {bad}");
            assert!(backend.remove_home(bad).await.is_err(), "{kind}: {bad}");
        }
        let alice = backend.open_home("alice").await.unwrap();
        let bob = backend.open_home("/partners/bob/").await.unwrap();
        put(alice.as_ref(), "/mine", b"alice's").await;
        put(bob.as_ref(), "/mine", b"bob's").await;
        assert_eq!(read(alice.as_ref(), "/mine").await.unwrap(), b"alice's");
        assert_eq!(read(bob.as_ref(), "/mine").await.unwrap(), b"bob's");
        assert!(matches!(
            backend.remove_home("").await,
            Err(VfsError::PermissionDenied)
        ));
        assert!(backend.remove_home("partners/bob").await.unwrap(), "{kind}");
        assert!(
            !backend.remove_home("partners/bob").await.unwrap(),
            "{kind}"
        );
        assert!(!backend.remove_home("nobody").await.unwrap(), "{kind}");
        assert_eq!(read(alice.as_ref(), "/mine").await.unwrap(), b"alice's");
        // Reopened, bob's home is new and empty.
        let bob = backend.open_home("partners/bob").await.unwrap();
        assert!(names(bob.as_ref(), "/").await.is_empty(), "{kind}");
        assert_eq!(backend.sweep_temporaries().await.unwrap(), 0, "{kind}");
    }
}

#[tokio::test]
async fn reads_land_at_any_offset_in_any_order() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        put(fs.as_ref(), "/big", &data).await;
        let reader = fs.open_read(&p("/big")).await.unwrap();
        // As SFTP clients send them: many in flight, arriving shuffled,
        // then jumps ahead and back, and one past the end.
        const K: u64 = 32 << 10;
        for at in [
            0,
            2 * K,
            K,
            4 * K,
            3 * K,
            64 * K,
            20 * K,
            2 << 20,
            1 << 20,
            0,
            5,
        ] {
            let want = &data[at as usize..(at + K) as usize];
            // Whole: a short read inside the file costs an SFTP client
            // another round trip for the rest.
            let got = reader.read_at(at, want.len()).await.unwrap();
            assert_eq!(got.len(), want.len(), "{kind}: short read at {at}");
            assert!(got == want, "{kind}: bytes at {at}");
        }
        // A read that starts in what was already streamed and runs past
        // it, in the middle and at the end of the file.
        let size = data.len() as u64;
        for (first, second, len) in [(0, K / 2, K), (size - 2 * K, size - K - 100, 2 * K)] {
            let reader = fs.open_read(&p("/big")).await.unwrap();
            let got = reader.read_at(first, K as usize).await.unwrap();
            assert!(got == data[first as usize..(first + K) as usize], "{kind}");
            let got = reader.read_at(second, len as usize).await.unwrap();
            let end = (second + len).min(size) as usize;
            assert_eq!(got.len(), end - second as usize, "{kind}: read at {second}");
            assert!(
                got == data[second as usize..end],
                "{kind}: bytes at {second}"
            );
        }
        assert!(reader.read_at(3 << 20, 10).await.unwrap().is_empty());
        assert!(reader.read_at(99 << 20, 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn keep_parks_writes_beyond_the_old_end_and_abort_keeps_only_what_was_written() {
    for (backend, _guard) in backends() {
        let kind = backend.kind();
        let fs = backend.open_home("alice").await.unwrap();
        put(fs.as_ref(), "/k", b"0123456789").await;
        // An SFTP reput's writes may arrive later ones first.
        let w = fs
            .create(&p("/k"), opts(UploadMode::Atomic, WriteStart::Keep))
            .await
            .unwrap();
        w.write_at(12, Bytes::from_static(b"cd")).await.unwrap();
        w.write_at(10, Bytes::from_static(b"ab")).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            read(fs.as_ref(), "/k").await.unwrap(),
            b"0123456789abcd",
            "{kind}"
        );
        // A resume that is abandoned before any byte arrives leaves the
        // file as it was (`direct` on a disk cuts it in place at once).
        for mode in [UploadMode::AtomicResume] {
            let w = fs
                .create(&p("/k"), opts(mode, WriteStart::ResumeAt(3)))
                .await
                .unwrap();
            let placed = w.abort().await;
            assert!(
                placed.is_none() || placed.is_some_and(|p| p.size == 14),
                "{kind}: {mode:?}"
            );
            assert_eq!(
                read(fs.as_ref(), "/k").await.unwrap(),
                b"0123456789abcd",
                "{kind}"
            );
        }
    }
}

#[tokio::test]
async fn s3_refuses_names_it_would_change() {
    let backend = s3_backend();
    // opendal trims white space at both ends of a key: " alice" would be
    // "alice", "/a " would be "/a".
    assert!(backend.open_home(" alice").await.is_err());
    assert!(backend.remove_home("alice ").await.is_err());
    let fs = backend.open_home("alice").await.unwrap();
    put(fs.as_ref(), "/a", b"keep me").await;
    assert!(matches!(
        fs.create(&p("/a "), opts(UploadMode::Atomic, WriteStart::Truncate))
            .await
            .err(),
        Some(VfsError::InvalidName(_))
    ));
    assert!(matches!(
        fs.rename(&p("/a"), &p("/a "), true).await,
        Err(VfsError::InvalidName(_))
    ));
    assert!(fs.create_dir(&p("/d ")).await.is_err());
    assert_eq!(read(fs.as_ref(), "/a").await.unwrap(), b"keep me");
    // Names inside a path keep their spaces.
    fs.create_dir(&p("/ in")).await.unwrap();
    put(fs.as_ref(), "/ in/ x y", b"ok").await;
    assert_eq!(names(fs.as_ref(), "/ in").await, [" x y"]);
}
