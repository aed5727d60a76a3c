//! What each SFTP request does, in terms of `core::Session` calls. Every path
//! goes through `VirtualPath` (the one canonicalizer); every filesystem
//! operation through the session (permissions, quota, audit).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dropgate_core::{ErrorClass, FsError, Permission, Session};
use dropgate_vfs::{VfsError, VirtualPath, WriteStart};

use crate::codec::{
    self, Attrs, ExtendedRequest, MAX_IO_LEN, MAX_PACKET_LEN, NameEntry, Request, StatusCode,
    open_flags,
};
use crate::dispatcher::{
    DirState, HandleKind, MAX_OPEN_HANDLES, OpenHandle, SequenceSlot, SessionState, Target,
    WriteHandle, lock, take_closed,
};
use crate::listing;
use crate::status;

/// Entries per READDIR reply (OpenSSH's server sends at most 100).
const MAX_NAMES_PER_REPLY: usize = 100;
/// Keeps a NAME reply well under the packet limit whatever the names.
const MAX_NAME_REPLY_BYTES: usize = MAX_PACKET_LEN as usize - 16 * 1024;

/// A failed request: the status to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure(pub(crate) StatusCode, pub(crate) &'static str);

impl From<FsError> for Failure {
    fn from(e: FsError) -> Self {
        let (code, msg) = status::of_fs_error(&e);
        Failure(code, msg)
    }
}

impl From<VfsError> for Failure {
    fn from(e: VfsError) -> Self {
        let (code, msg) = status::of_vfs_error(e);
        Failure(code, msg)
    }
}

const INVALID_HANDLE: Failure = Failure(StatusCode::Failure, "Invalid handle");
const NOT_UTF8: Failure = Failure(StatusCode::Failure, "File names must be valid UTF-8");

type OpResult = Result<Bytes, Failure>;

fn ok(id: u32) -> Bytes {
    codec::encode_status(id, StatusCode::Ok, "Success")
}

fn utf8(raw: &[u8]) -> Result<&str, Failure> {
    // Refused rather than altered: a lossy conversion would act on another name.
    std::str::from_utf8(raw).map_err(|_| NOT_UTF8)
}

/// A client path, canonicalized inside the jail (relative = from the home).
fn path(raw: &[u8]) -> Result<VirtualPath, Failure> {
    Ok(VirtualPath::parse(utf8(raw)?)?)
}

fn time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// Runs one request (`seq`: its arrival order) and returns its reply.
pub(crate) async fn execute(
    state: &SessionState,
    seq: u64,
    request: Request,
    target: Target,
) -> Bytes {
    let id = request.id().unwrap_or(0);
    let result = match target {
        Target::Closing(handle) => close(state, id, handle).await,
        Target::Handle {
            handle,
            registration,
            sequence,
        } => {
            // `handle` is consumed (dropped) inside, before the registration
            // ends: CLOSE relies on being the last owner once it may proceed.
            let r = on_handle(state, seq, request, handle, sequence).await;
            drop(registration);
            r
        }
        Target::None => without_handle(state, request).await,
    };
    result.unwrap_or_else(|Failure(code, msg)| codec::encode_status(id, code, msg))
}

async fn without_handle(state: &SessionState, request: Request) -> OpResult {
    let s = &state.session;
    match request {
        Request::Open {
            id,
            path: p,
            pflags,
            ..
        } => open(state, id, &p, pflags).await,
        Request::Opendir { id, path: p } => {
            let p = path(&p)?;
            if !state.handle_slots_left() {
                return Err(TOO_MANY_HANDLES);
            }
            let stream = s.list(&p).await?;
            let dir = DirState {
                stream,
                done: false,
            };
            insert(
                state,
                id,
                OpenHandle::new(p, HandleKind::Dir(tokio::sync::Mutex::new(dir))),
            )
            .await
        }
        Request::Stat { id, path: p } => Ok(codec::encode_attrs(
            id,
            &listing::attrs_of(&s.metadata(&path(&p)?).await?),
        )),
        Request::Lstat { id, path: p } => Ok(codec::encode_attrs(
            id,
            &listing::attrs_of(&s.symlink_metadata(&path(&p)?).await?),
        )),
        Request::Setstat { id, path: p, attrs } => {
            apply_attrs(s, &path(&p)?, &attrs).await?;
            Ok(ok(id))
        }
        Request::Remove { id, path: p } => {
            s.remove_file(&path(&p)?).await?;
            Ok(ok(id))
        }
        Request::Mkdir { id, path: p, .. } => {
            // Requested modes are ignored: the gateway decides them.
            s.create_dir(&path(&p)?).await?;
            Ok(ok(id))
        }
        Request::Rmdir { id, path: p } => {
            s.remove_dir(&path(&p)?).await?;
            Ok(ok(id))
        }
        Request::Realpath { id, path: p } => {
            // Purely lexical: answers for paths that do not exist yet (`put -r`
            // asks before creating), never reveals anything outside the jail.
            Ok(single_name(id, path(&p)?.as_str()))
        }
        Request::Rename { id, from, to } => {
            // Version 3 semantics: an existing target is an error.
            s.rename(&path(&from)?, &path(&to)?, false).await?;
            Ok(ok(id))
        }
        Request::Readlink { id, path: p } => {
            let target = s.read_link(&path(&p)?).await?;
            Ok(single_name(id, target.as_str()))
        }
        Request::Symlink { id, target, link } => {
            let link = path(&link)?;
            // A relative target is relative to the link's folder, as symlink(2).
            let target = VirtualPath::resolve(&link.parent(), utf8(&target)?)?;
            s.symlink(&target, &link).await?;
            Ok(ok(id))
        }
        Request::Extended { id, request } => extended(s, id, request).await,
        Request::Close { .. }
        | Request::Read { .. }
        | Request::Write { .. }
        | Request::Fstat { .. }
        | Request::Fsetstat { .. }
        | Request::Readdir { .. } => Err(INVALID_HANDLE),
        Request::Init { .. } => Err(Failure(StatusCode::BadMessage, "Unexpected INIT")),
    }
}

async fn extended(s: &Session, id: u32, request: ExtendedRequest) -> OpResult {
    match request {
        ExtendedRequest::PosixRename { from, to } => {
            s.rename(&path(&from)?, &path(&to)?, true).await?;
            Ok(ok(id))
        }
        ExtendedRequest::Hardlink { from, to } => {
            s.hard_link(&path(&from)?, &path(&to)?).await?;
            Ok(ok(id))
        }
        ExtendedRequest::Statvfs { path: p } => statvfs(s, id, &path(&p)?).await,
        ExtendedRequest::Limits => Ok(codec::encode_extended_u64s(
            id,
            &[
                u64::from(MAX_PACKET_LEN),
                u64::from(MAX_IO_LEN),
                u64::from(MAX_IO_LEN),
                MAX_OPEN_HANDLES as u64,
            ],
        )),
        ExtendedRequest::ExpandPath { path: p } => {
            let expanded = expand_path(utf8(&p)?, s.username())?;
            Ok(single_name(id, expanded.as_str()))
        }
        ExtendedRequest::Fstatvfs { .. } | ExtendedRequest::Fsync { .. } => Err(INVALID_HANDLE),
        ExtendedRequest::Unknown { .. } => {
            Err(Failure(StatusCode::OpUnsupported, "Unsupported extension"))
        }
    }
}

/// `~`, `~/x` and `~own-name/x` are the home, i.e. `/` and `/x`.
fn expand_path(raw: &str, username: &str) -> Result<VirtualPath, Failure> {
    let rest = match raw.strip_prefix('~') {
        None => raw,
        Some("") => "",
        Some(r) if r.starts_with('/') => r,
        Some(r) => {
            let (user, tail) = r.split_once('/').unwrap_or((r, ""));
            if user != username {
                return Err(Failure(StatusCode::NoSuchFile, "No such user"));
            }
            tail
        }
    };
    Ok(VirtualPath::parse(rest)?)
}

fn single_name(id: u32, name: &str) -> Bytes {
    codec::encode_name(
        id,
        &[NameEntry {
            filename: name.to_owned(),
            longname: name.to_owned(),
            attrs: Attrs::default(),
        }],
    )
}

async fn statvfs(s: &Session, id: u32, p: &VirtualPath) -> OpResult {
    let st = s.fs_stats(p).await?;
    Ok(codec::encode_extended_u64s(
        id,
        &[
            st.block_size,
            st.fragment_size,
            st.blocks,
            st.blocks_free,
            st.blocks_available,
            st.files,
            st.files_free,
            st.files_free,
            0, // fsid: nothing a client should learn about the host
            0, // flags
            st.name_max,
        ],
    ))
}

/// SETSTAT: size and times take effect (under `overwrite` and `chtimes`);
/// mode and owner changes are accepted without effect, as the gateway owns them.
async fn apply_attrs(s: &Session, p: &VirtualPath, attrs: &Attrs) -> Result<(), Failure> {
    if let Some(size) = attrs.size {
        s.set_len(p, size).await?;
    }
    if let Some((atime, mtime)) = attrs.times {
        s.set_times(p, Some(time(atime)), Some(time(mtime))).await?;
    }
    Ok(())
}

const TOO_MANY_HANDLES: Failure = Failure(StatusCode::Failure, "Too many open handles");

async fn insert(state: &SessionState, id: u32, handle: OpenHandle) -> OpResult {
    match state.insert_handle(handle) {
        Ok(h) => Ok(codec::encode_handle(id, &h)),
        Err(refused) => {
            // Lost a race for the last slot: undo cleanly.
            if let HandleKind::Write(w) = refused.kind {
                w.upload.abort("too many open handles").await;
            }
            Err(TOO_MANY_HANDLES)
        }
    }
}

/// OPEN: the flags decide between a download and an upload, and how the
/// upload starts (OpenSSH's `flags_from_portable`, onto core's WriteStart).
async fn open(state: &SessionState, id: u32, raw: &[u8], pflags: u32) -> OpResult {
    use open_flags as f;
    let s = &state.session;
    let p = path(raw)?;
    if !state.handle_slots_left() {
        return Err(TOO_MANY_HANDLES);
    }
    // Any flag that creates or changes the file makes an upload (paramiko's
    // mode "x" is CREAT|EXCL alone); READ|CREAT alone stays a download.
    let changes = f::WRITE | f::APPEND | f::TRUNC | f::EXCL;
    let writing =
        pflags & changes != 0 || (pflags & f::CREAT != 0 && pflags & open_flags::READ == 0);
    let kind = if writing {
        let start = if pflags & f::TRUNC != 0 {
            WriteStart::Truncate
        } else if pflags & f::APPEND != 0 {
            WriteStart::Append
        } else {
            // No TRUNC: existing bytes stay, writes land at their offsets (resume).
            WriteStart::Keep
        };
        if pflags & f::CREAT == 0
            && let Err(e) = s.metadata(&p).await
            && e.class() == ErrorClass::NotFound
        {
            return Err(e.into());
        }
        let upload = s.open_upload(&p, start, pflags & f::EXCL != 0).await?;
        let initial = upload.initial_len();
        HandleKind::Write(WriteHandle {
            upload,
            append: start == WriteStart::Append,
            end: initial.into(),
            failure: Default::default(),
            pending_times: Default::default(),
            pending_len: Default::default(),
        })
    } else {
        HandleKind::Read(s.open_download(&p).await?)
    };
    insert(state, id, OpenHandle::new(p, kind)).await
}

/// CLOSE: downloads are recorded, uploads committed (OK only once durable
/// under the final name) or, after a failed write, aborted.
async fn close(state: &SessionState, id: u32, handle: std::sync::Arc<OpenHandle>) -> OpResult {
    let Some(OpenHandle { path: p, kind, .. }) = take_closed(handle).await else {
        tracing::error!("closed handle still shared after its requests finished");
        return Err(Failure(StatusCode::Failure, "Internal error"));
    };
    match kind {
        HandleKind::Read(download) => {
            download.finish(None);
            Ok(ok(id))
        }
        HandleKind::Dir(_) => Ok(ok(id)),
        HandleKind::Write(w) => {
            let failure = lock(&w.failure).take();
            if let Some(Failure(code, msg)) = failure {
                w.upload.abort(msg).await;
                return Err(Failure(code, msg));
            }
            let times = lock(&w.pending_times).take();
            let resize = lock(&w.pending_len).take();
            if let Some((_, size)) = resize {
                // Applied to the upload itself, so the final name only ever
                // shows the whole, correctly sized content.
                w.upload.set_len(size).await?;
            }
            w.upload.commit().await?;
            if let Some((accessed, modified)) = times {
                state.session.set_times(&p, accessed, modified).await?;
            }
            Ok(ok(id))
        }
    }
}

async fn on_handle(
    state: &SessionState,
    seq: u64,
    request: Request,
    handle: std::sync::Arc<OpenHandle>,
    mut sequence: Option<SequenceSlot>,
) -> OpResult {
    if let Some(slot) = &mut sequence {
        slot.wait_turn().await;
    }
    let s = &state.session;
    match (request, &handle.kind) {
        (
            Request::Read {
                id, offset, len, ..
            },
            HandleKind::Read(d),
        ) => {
            let len = len.min(MAX_IO_LEN) as usize;
            if len == 0 {
                return Ok(codec::encode_data(id, &[]));
            }
            let data = d
                .reader()
                .read_at(offset, len)
                .await
                .map_err(FsError::from)?;
            if data.is_empty() {
                return Err(Failure(StatusCode::Eof, "End of file"));
            }
            if state
                .unless_gone(d.throttle(data.len() as u64))
                .await
                .is_none()
            {
                return Err(FsError::Closed.into());
            }
            d.add_bytes(data.len() as u64);
            Ok(codec::encode_data(id, &data))
        }
        (Request::Read { .. }, _) => {
            Err(Failure(StatusCode::Failure, "Handle not open for reading"))
        }
        (
            Request::Write {
                id, offset, data, ..
            },
            HandleKind::Write(w),
        ) => {
            if state.session.is_cancelled() {
                return Err(FsError::Closed.into());
            }
            let len = data.len() as u64;
            // Append handles run one write at a time (sequenced), so the end is stable.
            let at = if w.append {
                w.end.load(std::sync::atomic::Ordering::Acquire)
            } else {
                offset
            };
            // (A rate-limited write waits its turn inside.)
            let written = state.unless_gone(w.upload.write_at(at, data)).await;
            match written.unwrap_or(Err(FsError::Closed)) {
                Ok(()) => {
                    let reached = at.saturating_add(len);
                    w.end
                        .fetch_max(reached, std::sync::atomic::Ordering::AcqRel);
                    if let Some((set_at, size)) = lock(&w.pending_len).as_mut()
                        && seq > *set_at
                    {
                        *size = (*size).max(reached);
                    }
                    Ok(ok(id))
                }
                Err(e) => {
                    let failure = Failure::from(e);
                    lock(&w.failure).get_or_insert(failure);
                    Err(failure)
                }
            }
        }
        (Request::Write { .. }, _) => {
            Err(Failure(StatusCode::Failure, "Handle not open for writing"))
        }
        (Request::Readdir { id, .. }, HandleKind::Dir(dir)) => readdir(s, id, dir).await,
        (Request::Readdir { .. }, _) => Err(Failure(StatusCode::Failure, "Not a directory handle")),
        (Request::Fstat { id, .. }, kind) => {
            let attrs = match kind {
                HandleKind::Write(w) => Attrs {
                    size: Some(match *lock(&w.pending_len) {
                        Some((_, size)) => size,
                        None => w.end.load(std::sync::atomic::Ordering::Acquire),
                    }),
                    permissions: Some(0o100644),
                    ..Attrs::default()
                },
                HandleKind::Read(d) => match d.stat() {
                    Some(m) => listing::attrs_of(&m),
                    None => match s.metadata(&handle.path).await {
                        Ok(m) => listing::attrs_of(&m),
                        Err(_) => Attrs {
                            size: Some(d.len()),
                            permissions: Some(0o100644),
                            ..Attrs::default()
                        },
                    },
                },
                HandleKind::Dir(_) => listing::attrs_of(&s.metadata(&handle.path).await?),
            };
            Ok(codec::encode_attrs(id, &attrs))
        }
        (Request::Fsetstat { id, attrs, .. }, HandleKind::Write(w)) => {
            if let Some(size) = attrs.size {
                // A real size change needs `overwrite` when applied at CLOSE:
                // refuse it now rather than after the commit.
                if size != w.end.load(std::sync::atomic::Ordering::Acquire)
                    && !s.allows(&handle.path, Permission::Overwrite)
                {
                    return Err(Failure(StatusCode::PermissionDenied, "Permission denied"));
                }
                let mut pending = lock(&w.pending_len);
                if pending.is_none_or(|(set_at, _)| seq > set_at) {
                    *pending = Some((seq, size));
                }
            }
            if let Some((atime, mtime)) = attrs.times {
                if !s.allows(&handle.path, Permission::Chtimes) {
                    return Err(Failure(StatusCode::PermissionDenied, "Permission denied"));
                }
                if !s.capabilities().set_times {
                    // Refused now: at CLOSE it would fail an upload that
                    // was stored.
                    return Err(Failure(
                        StatusCode::OpUnsupported,
                        "Setting file times is not supported by this storage",
                    ));
                }
                *lock(&w.pending_times) = Some((Some(time(atime)), Some(time(mtime))));
            }
            Ok(ok(id))
        }
        (Request::Fsetstat { id, attrs, .. }, _) => {
            apply_attrs(s, &handle.path, &attrs).await?;
            Ok(ok(id))
        }
        (
            Request::Extended {
                id,
                request: ExtendedRequest::Fstatvfs { .. },
            },
            _,
        ) => statvfs(s, id, &handle.path).await,
        // The data written so far really reaches the disk (in the atomic
        // modes its final name still appears only at CLOSE).
        (
            Request::Extended {
                id,
                request: ExtendedRequest::Fsync { .. },
            },
            HandleKind::Write(w),
        ) => {
            w.upload.sync().await?;
            Ok(ok(id))
        }
        // Nothing of a download or a folder is waiting to be written.
        (
            Request::Extended {
                id,
                request: ExtendedRequest::Fsync { .. },
            },
            _,
        ) => Ok(ok(id)),
        (other, _) => {
            tracing::error!(request = ?other.id(), "request routed to a handle it does not use");
            Err(Failure(StatusCode::Failure, "Internal error"))
        }
    }
}

/// READDIR: up to 100 entries, pulled from the stream (never the whole folder).
async fn readdir(s: &Session, id: u32, dir: &tokio::sync::Mutex<DirState>) -> OpResult {
    let mut d = dir.lock().await;
    if d.done {
        return Err(Failure(StatusCode::Eof, "End of directory"));
    }
    let now = SystemTime::now();
    let mut entries = Vec::new();
    let mut bytes = 0;
    let mut pulled = 0;
    while pulled < MAX_NAMES_PER_REPLY && bytes < MAX_NAME_REPLY_BYTES {
        pulled += 1;
        match d.stream.next().await {
            Some(Ok(e)) => {
                let entry = NameEntry {
                    longname: listing::long_name(&e.name, &e.meta, s.username(), now),
                    attrs: listing::attrs_of(&e.meta),
                    filename: e.name,
                };
                bytes += codec::name_entry_len(&entry);
                entries.push(entry);
            }
            // One unreadable entry does not end the listing.
            Some(Err(e)) => tracing::debug!(error = %e, "skipping a directory entry"),
            None => {
                d.done = true;
                break;
            }
        }
    }
    if entries.is_empty() && d.done {
        return Err(Failure(StatusCode::Eof, "End of directory"));
    }
    Ok(codec::encode_name(id, &entries))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exp(raw: &str) -> Result<String, Failure> {
        expand_path(raw, "alice").map(|p| p.as_str().to_owned())
    }

    #[test]
    fn expand_path_maps_home_to_root() {
        assert_eq!(exp("~").unwrap(), "/");
        assert_eq!(exp("~/").unwrap(), "/");
        assert_eq!(exp("~/x/y").unwrap(), "/x/y");
        assert_eq!(exp("~alice/x").unwrap(), "/x");
        assert_eq!(exp("~alice").unwrap(), "/");
        assert_eq!(
            exp("~bob/x"),
            Err(Failure(StatusCode::NoSuchFile, "No such user"))
        );
        assert_eq!(exp("x").unwrap(), "/x");
        assert_eq!(exp("/../../etc").unwrap(), "/etc");
        assert_eq!(exp("").unwrap(), "/");
    }

    #[test]
    fn paths_are_canonical_and_utf8() {
        assert_eq!(
            path(b"/../..").map(|p| p.as_str().to_owned()),
            Ok("/".to_owned())
        );
        assert_eq!(
            path(b".").map(|p| p.as_str().to_owned()),
            Ok("/".to_owned())
        );
        assert_eq!(
            path(b"a/../b/./c").map(|p| p.as_str().to_owned()),
            Ok("/b/c".to_owned())
        );
        assert_eq!(
            path(b"/caf\xe9").map(|p| p.as_str().to_owned()),
            Err(NOT_UTF8)
        );
        assert!(path(b"a\0b").is_err());
    }
}
