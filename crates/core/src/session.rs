//! A logged-in session: the only door protocols have to the filesystem.
//!
//! Every method checks the account's permission on the (already jailed)
//! virtual path, keeps the quota, and records an audit event, so no protocol
//! can forget one of the three.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use chrono::Utc;
use dropgate_store::{Event, EventKind, Outcome, Permission, Protocol, User};
use dropgate_vfs::{
    CreateOptions, DirStream, FileKind, FileReader, FileWriter, Found, FsStats, LastWrite,
    Metadata, Replaced, Storage, UploadMode, VfsError, VirtualPath, WriteStart,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::audit::SyncedEvent;
use crate::bandwidth::AccountThrottles;
use crate::quota::BusyPath;
use crate::registry::{Direction, SessionEntry, TransferState};
use crate::stream_hash::{Hashed, Lent, StreamHash};
use crate::{FsError, FsResult, Gateway, PermissionSet, QuotaGuard};

/// A logged-in session; cheap to clone (all clones are the same session).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Arc<Gateway>,
    entry: Arc<SessionEntry>,
    user: User,
    protocol: Protocol,
    perms: PermissionSet,
    /// Every path has the same rights (the default `{"/": ["*"]}`): links
    /// and folder moves cannot change what is allowed, so they need no
    /// extra checks.
    uniform_rights: bool,
    fs: Arc<dyn Storage>,
    quota: QuotaGuard,
    /// The account's rate limits, shared with its other sessions.
    throttles: AccountThrottles,
    upload_mode: UploadMode,
    started: Instant,
    /// A session of event actions (move, copy, retention), not a client's:
    /// its events say protocol `actions` and trigger no rules.
    actions: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.gateway.sessions().remove(&self.entry.id);
        let mut e = event_base(&self.gateway, &self.entry, EventKind::Logout, Outcome::Ok);
        e.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        self.gateway.audit().record(e);
    }
}

fn event_base(gw: &Gateway, entry: &SessionEntry, kind: EventKind, outcome: Outcome) -> Event {
    Event {
        id: 0,
        time: Utc::now(),
        kind,
        username: entry.username.clone(),
        protocol: entry.protocol.clone(),
        remote_addr: entry.remote_text.clone(),
        path: None,
        target_path: None,
        bytes: None,
        duration_ms: None,
        outcome,
        sha256: None,
        message: None,
        node: gw.node_name().to_owned(),
        session_id: Some(entry.id.clone()),
    }
}

fn full_rights() -> dropgate_store::PermissionMap {
    dropgate_store::default_permissions()
}

fn outcome_of(e: &FsError) -> Outcome {
    match e {
        FsError::Denied | FsError::QuotaExceeded => Outcome::Denied,
        FsError::Vfs(VfsError::PermissionDenied) => Outcome::Denied,
        _ => Outcome::Failed,
    }
}

/// Who a session is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// A client logged in over this protocol.
    Client(Protocol),
    /// Event actions; `full_rights`: the account's permissions are not
    /// applied (retention cleans folders the partner may only read), the
    /// jail and the quota are.
    Actions { full_rights: bool },
}

impl Session {
    pub(crate) fn open(
        gateway: Arc<Gateway>,
        user: User,
        origin: Origin,
        peer: SocketAddr,
        fs: Arc<dyn Storage>,
        quota: QuotaGuard,
        throttles: AccountThrottles,
    ) -> Option<Session> {
        let (protocol, protocol_name, actions) = match origin {
            Origin::Client(p) => (p, p.as_str(), false),
            Origin::Actions { .. } => (Protocol::Sftp, crate::rules::ACTIONS_PROTOCOL, true),
        };
        let upload_mode = gateway.config.upload_mode;
        let id = format!("{:016x}", rand_id());
        let entry = Arc::new(SessionEntry {
            id,
            username: user.username.clone(),
            protocol: protocol_name.to_owned(),
            remote_addr: peer,
            remote_text: peer.to_string(),
            started_at: Utc::now(),
            cancel: CancellationToken::new(),
            transfers: Default::default(),
        });
        // Sessions on other nodes count against `max_sessions` too (as
        // they last published them; see shared_sessions).
        let elsewhere = gateway.remote_session_count(&user.username) as u64;
        let admitted = if user.max_sessions == 0 {
            gateway.sessions().try_insert(entry.clone(), 0)
        } else {
            user.max_sessions > elsewhere
                && gateway
                    .sessions()
                    .try_insert(entry.clone(), user.max_sessions - elsewhere)
        };
        if !admitted {
            return None;
        }
        let perms = match origin {
            Origin::Actions { full_rights: true } => PermissionSet::new(&full_rights()),
            _ => PermissionSet::new(&user.permissions),
        };
        let uniform_rights = perms.is_uniform();
        Some(Session {
            inner: Arc::new(Inner {
                gateway,
                entry,
                user,
                protocol,
                perms,
                uniform_rights,
                fs,
                quota,
                throttles,
                upload_mode,
                started: Instant::now(),
                actions,
            }),
        })
    }

    /// The session id (as listed by the admin API).
    pub fn id(&self) -> &str {
        &self.inner.entry.id
    }

    /// The account.
    /// What the storage behind this session can do (protocols decide from
    /// this what to offer, never from which backend it is).
    pub fn capabilities(&self) -> dropgate_vfs::Capabilities {
        self.inner.gateway.storage().capabilities()
    }

    pub fn user(&self) -> &User {
        &self.inner.user
    }

    /// The account name.
    pub fn username(&self) -> &str {
        &self.inner.user.username
    }

    /// The protocol this session speaks.
    pub fn protocol(&self) -> Protocol {
        self.inner.protocol
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.inner.entry.remote_addr
    }

    /// Cancelled when an admin ends the session or the server shuts down;
    /// protocol loops select on it and disconnect.
    pub fn cancelled(&self) -> CancellationToken {
        self.inner.entry.cancel.clone()
    }

    /// Whether the session has been ended from outside.
    pub fn is_cancelled(&self) -> bool {
        self.inner.entry.cancel.is_cancelled()
    }

    /// Whether the account may do `perm` on `path` (no error, no event).
    pub fn allows(&self, path: &VirtualPath, perm: Permission) -> bool {
        self.inner.perms.allows(path, perm)
    }

    fn check(&self, path: &VirtualPath, perm: Permission) -> FsResult<()> {
        if self.is_cancelled() {
            return Err(FsError::Closed);
        }
        if self.inner.perms.allows(path, perm) {
            Ok(())
        } else {
            Err(FsError::Denied)
        }
    }

    /// [`Session::check`], and where rights differ by path, the same right
    /// at the real location: a path that passes through a symlink (one the
    /// operator placed, or one made before the rights were narrowed) is
    /// judged where it really leads too. `follow`: whether the operation
    /// follows a symlink in the last component (open, list) or acts on the
    /// entry itself (delete, rename).
    async fn check_real(&self, path: &VirtualPath, perm: Permission, follow: bool) -> FsResult<()> {
        self.check(path, perm)?;
        if self.inner.uniform_rights {
            return Ok(());
        }
        let real = match path.file_name() {
            Some(name) if !follow => self
                .inner
                .fs
                .real_path(&path.parent())
                .await
                .and_then(|p| p.join(name)),
            _ => self.inner.fs.real_path(path).await,
        };
        match real {
            Ok(real) if real != *path && !self.inner.perms.allows(&real, perm) => {
                Err(FsError::Denied)
            }
            // Unresolvable (a cycle, a link out of the jail): the operation
            // itself is refused by the jail.
            _ => Ok(()),
        }
    }

    pub(crate) fn event(
        &self,
        kind: EventKind,
        path: Option<&VirtualPath>,
        outcome: Outcome,
    ) -> Event {
        let mut e = event_base(&self.inner.gateway, &self.inner.entry, kind, outcome);
        e.path = path.map(|p| p.as_str().to_owned());
        e
    }

    /// Records the outcome of an operation. A success is answered only
    /// once its event is stored (or spooled): if it cannot be recorded, the
    /// client hears a failure rather than an unaudited "done".
    async fn record<T>(
        &self,
        kind: EventKind,
        path: &VirtualPath,
        target: Option<&VirtualPath>,
        r: FsResult<T>,
    ) -> FsResult<T> {
        let e = self.outcome_event(kind, path, target, &r);
        if r.is_ok() {
            self.inner.gateway.usage_changed(self.username());
            self.inner.gateway.audit().record_durable(e).await?;
        } else {
            self.inner.gateway.audit().record(e);
        }
        r
    }

    /// Records an operation that changes no bytes and no name, and that no
    /// rule triggers on (a file's times), without waiting for the event to
    /// be stored or journaled: the writer stores it with its next batch, as
    /// it does a refused operation's. What that spares the reply is the
    /// journal line, or with PostgreSQL a store round trip, before it.
    fn record_queued<T>(&self, kind: EventKind, path: &VirtualPath, r: FsResult<T>) -> FsResult<T> {
        let e = self.outcome_event(kind, path, None, &r);
        self.inner.gateway.audit().record(e);
        r
    }

    /// The event of an operation's outcome; a failure is counted, and a
    /// quota refusal is also recorded as an event of its own.
    fn outcome_event<T>(
        &self,
        kind: EventKind,
        path: &VirtualPath,
        target: Option<&VirtualPath>,
        r: &FsResult<T>,
    ) -> Event {
        let mut e = self.event(
            kind,
            Some(path),
            r.as_ref().map_or_else(outcome_of, |_| Outcome::Ok),
        );
        e.target_path = target.map(|t| t.as_str().to_owned());
        if let Err(err) = r {
            if err.class() == crate::ErrorClass::Internal {
                self.count_error();
            }
            e.message = Some(err.to_string());
            self.record_quota_refusal(err, path);
        }
        e
    }

    /// A quota refusal is also an event of its own (rules can act on it).
    fn record_quota_refusal(&self, err: &FsError, path: &VirtualPath) {
        if matches!(err, FsError::QuotaExceeded)
            && self.inner.gateway.quota_event_due(self.username())
        {
            let mut e = self.event(EventKind::QuotaExceeded, Some(path), Outcome::Denied);
            e.message = Some(err.to_string());
            self.inner.gateway.audit().record(e);
        }
    }

    fn count_error(&self) {
        if let Some(p) = self.metrics_protocol() {
            self.inner.gateway.metrics().error(p);
        }
    }

    /// Operations of event actions are not client traffic.
    fn metrics_protocol(&self) -> Option<Protocol> {
        (!self.inner.actions).then_some(self.inner.protocol)
    }

    /// Metadata of `path` (symlinks inside the jail followed). Needs `list`
    /// on the containing folder.
    pub async fn metadata(&self, path: &VirtualPath) -> FsResult<Metadata> {
        self.check_real(&path.parent(), Permission::List, true)
            .await?;
        Ok(self.inner.fs.metadata(path).await?)
    }

    /// Metadata of the entry itself. Needs `list` on the containing folder.
    pub async fn symlink_metadata(&self, path: &VirtualPath) -> FsResult<Metadata> {
        self.check_real(&path.parent(), Permission::List, true)
            .await?;
        Ok(self.inner.fs.symlink_metadata(path).await?)
    }

    /// Streams a folder's entries. Needs `list` on the folder.
    pub async fn list(&self, path: &VirtualPath) -> FsResult<DirStream> {
        self.check_real(path, Permission::List, true).await?;
        Ok(self.inner.fs.list(path).await?)
    }

    /// Opens a file for download. Needs `download`.
    pub async fn open_download(&self, path: &VirtualPath) -> FsResult<Download> {
        let r = async {
            self.check_real(path, Permission::Download, true).await?;
            Ok(self.inner.fs.open_read(path).await?)
        }
        .await;
        match r {
            Ok(reader) => Ok(Download {
                transfer: self.start_transfer(path, Direction::Download),
                session: self.clone(),
                path: path.clone(),
                reader,
                started: Instant::now(),
                finished: false,
            }),
            Err(e) => {
                let mut ev = self.event(EventKind::Download, Some(path), outcome_of(&e));
                ev.message = Some(e.to_string());
                self.inner.gateway.audit().record(ev);
                Err(e)
            }
        }
    }

    /// Starts an upload. A new file needs `upload`; writing into an existing
    /// one (replace, resume, append) needs `overwrite`.
    pub async fn open_upload(
        &self,
        path: &VirtualPath,
        start: WriteStart,
        exclusive: bool,
    ) -> FsResult<Upload> {
        let r = self.open_upload_inner(path, start, exclusive).await;
        if let Err(e) = &r {
            let mut ev = self.event(EventKind::Upload, Some(path), outcome_of(e));
            ev.message = Some(e.to_string());
            self.inner.gateway.audit().record(ev);
            self.record_quota_refusal(e, path);
        }
        r
    }

    async fn open_upload_inner(
        &self,
        path: &VirtualPath,
        start: WriteStart,
        exclusive: bool,
    ) -> FsResult<Upload> {
        if self.is_cancelled() {
            return Err(FsError::Closed);
        }
        // Without any write right here the answer is "denied", before the
        // target is even looked at (so it does not tell what exists).
        if !self.allows(path, Permission::Upload) && !self.allows(path, Permission::Overwrite) {
            return Err(FsError::Denied);
        }
        // Where neither the rights nor the reservation depend on what the
        // name holds now, the backend's create looks it up itself: one
        // round trip (a blocking-pool hop on local disk) fewer per upload.
        // Not in `direct` mode, whose create makes the final file at once,
        // which a refused reservation would then leave behind.
        if self.inner.uniform_rights
            && self.inner.upload_mode != UploadMode::Direct
            && self.allows(path, Permission::Upload)
            && self.allows(path, Permission::Overwrite)
        {
            return self.open_upload_unchecked(path, start, exclusive).await;
        }
        let existing = match self.inner.fs.metadata(path).await {
            Ok(m) if m.is_dir() => return Err(VfsError::IsADirectory.into()),
            // A file with other hard links keeps its bytes when this name is
            // replaced: nothing of it is given back.
            Ok(m) if m.nlink > 1 => Some(0),
            Ok(m) => Some(m.size),
            Err(VfsError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        match existing {
            Some(_) if exclusive => return Err(VfsError::AlreadyExists.into()),
            Some(_) => self.check_real(path, Permission::Overwrite, true).await?,
            None => self.check_real(path, Permission::Upload, true).await?,
        }
        let new_file = existing.is_none();
        if new_file {
            self.inner.quota.reserve_file()?;
        }
        let opts = CreateOptions {
            mode: self.inner.upload_mode,
            start,
            exclusive,
            durable: self.inner.gateway.config.durable_uploads,
        };
        let writer = match self.inner.fs.create(path, opts).await {
            Ok(w) => w,
            Err(e) => {
                if new_file {
                    self.inner.quota.release_file();
                }
                return Err(e.into());
            }
        };
        self.started_upload(path, start, writer, existing).await
    }

    /// [`Session::open_upload`] for a session whose rights allow both a new
    /// file and a replacement here: the create itself finds out which it
    /// is, and the file is reserved against the quota after it.
    async fn open_upload_unchecked(
        &self,
        path: &VirtualPath,
        start: WriteStart,
        exclusive: bool,
    ) -> FsResult<Upload> {
        let opts = CreateOptions {
            mode: self.inner.upload_mode,
            start,
            exclusive,
            durable: self.inner.gateway.config.durable_uploads,
        };
        let writer = self.inner.fs.create(path, opts).await?;
        let existing = match writer.found() {
            // A file with other hard links keeps its bytes when this name
            // is replaced: nothing of it is given back.
            Found::File { nlink, .. } if nlink > 1 => Some(0),
            Found::File { size, .. } => Some(size),
            Found::Nothing => None,
        };
        if existing.is_none()
            && let Err(e) = self.inner.quota.reserve_file()
        {
            // Nothing written yet: an atomic upload leaves nothing behind.
            writer.abort().await;
            return Err(e);
        }
        self.started_upload(path, start, writer, existing).await
    }

    /// The quota reservation of a kept prefix and the upload's state, once
    /// its writer exists (and, for a new file, the file is reserved).
    async fn started_upload(
        &self,
        path: &VirtualPath,
        start: WriteStart,
        writer: Box<dyn FileWriter>,
        existing: Option<u64>,
    ) -> FsResult<Upload> {
        let new_file = existing.is_none();
        let initial = writer.initial_len();
        // An atomic resume or append copies the kept prefix into the
        // temporary: until the commit, the disk holds it twice.
        let prefix_copy = match (self.inner.upload_mode, start) {
            (UploadMode::Atomic, WriteStart::Truncate) => 0,
            (UploadMode::Atomic, _) => initial,
            _ => 0,
        };
        if let Err(e) = self.inner.quota.reserve_bytes(prefix_copy) {
            writer.abort().await;
            if new_file {
                self.inner.quota.release_file();
            }
            return Err(e);
        }
        // Answered from the page cache: a large upload is hashed after the
        // reply, from the committed file, when that file cannot change
        // meanwhile (the hash would otherwise be half the server's work
        // while the client waits).
        let hash_after_reply =
            !self.inner.gateway.config.durable_uploads && writer.stable_content();
        let hash_until = if hash_after_reply {
            HASH_AFTER_REPLY_FROM
        } else {
            u64::MAX
        };
        Ok(Upload {
            busy: Some(self.inner.quota.mark_busy(path, writer.in_place_identity())),
            transfer: self.start_transfer(path, Direction::Upload),
            session: self.clone(),
            path: path.clone(),
            writer: Some(writer),
            started: Instant::now(),
            initial_len: initial,
            old_size: existing.unwrap_or(0),
            new_file,
            end: AtomicU64::new(initial),
            reserved: AtomicU64::new(prefix_copy),
            failed: AtomicBool::new(false),
            hash: StreamHash::until(initial == 0, hash_until),
            hash_after_reply,
        })
    }

    /// Renames a file or folder. Needs `rename` on both paths, and
    /// `overwrite` on the target when it exists and `overwrite` is asked for.
    pub async fn rename(
        &self,
        from: &VirtualPath,
        to: &VirtualPath,
        overwrite: bool,
    ) -> FsResult<()> {
        let r = async {
            self.check_real(from, Permission::Rename, false).await?;
            self.check_real(to, Permission::Rename, false).await?;
            if from.is_root() || to.is_root() {
                return Err(FsError::Denied);
            }
            if !self.inner.uniform_rights {
                self.check_move_keeps_rights(from, to).await?;
            }
            let _counting = self.inner.quota.serialize().await;
            let source = self.inner.fs.symlink_metadata(from).await?;
            let target = self.inner.fs.symlink_metadata(to).await.ok();
            let quota = &self.inner.quota;
            if quota.is_busy(from, Some(source.unique))
                || quota.is_busy(to, target.as_ref().map(|m| m.unique))
            {
                return Err(FsError::Busy);
            }
            let replaced = match target {
                // Two names of one file (or a name onto itself): the rename
                // removes nothing, so nothing is given back.
                Some(m) if m.unique == source.unique && m.kind == source.kind => None,
                Some(m) if overwrite => {
                    self.check_real(to, Permission::Overwrite, false).await?;
                    m.is_file().then_some(if m.nlink > 1 { 0 } else { m.size })
                }
                Some(_) => return Err(VfsError::AlreadyExists.into()),
                None => None,
            };
            self.inner.fs.rename(from, to, overwrite).await?;
            if let Some(size) = replaced {
                self.inner.quota.release_bytes(size);
                self.inner.quota.release_file();
            }
            Ok(())
        }
        .await;
        self.record(EventKind::Rename, from, Some(to), r).await
    }

    /// Where rights differ by path, a move must not change the rights of
    /// anything it carries: a folder moves only if every rule below it maps
    /// onto an identical rule at the target (`/a` with a read-only `/a/ro`
    /// cannot become `/b`, where `ro` would fall under `/`'s rules), and a
    /// symlink stays in its folder (its target is stored relative to it, so
    /// elsewhere it would point somewhere else).
    async fn check_move_keeps_rights(&self, from: &VirtualPath, to: &VirtualPath) -> FsResult<()> {
        let meta = self.inner.fs.symlink_metadata(from).await?;
        let allowed = match meta.kind {
            FileKind::Dir => self.inner.perms.subtree_moves_intact(from, to),
            FileKind::Symlink => from.parent() == to.parent(),
            FileKind::File | FileKind::Other => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(FsError::Denied)
        }
    }

    /// Deletes a file. Needs `delete`.
    pub async fn remove_file(&self, path: &VirtualPath) -> FsResult<()> {
        let r = async {
            self.check_real(path, Permission::Delete, false).await?;
            let _counting = self.inner.quota.serialize().await;
            let meta = self.inner.fs.symlink_metadata(path).await?;
            if self.inner.quota.is_busy(path, Some(meta.unique)) {
                return Err(FsError::Busy);
            }
            self.inner.fs.remove_file(path).await?;
            if meta.is_file() {
                // Bytes are counted once per file, not per name: with other
                // hard links left, they stay in use.
                if meta.nlink <= 1 {
                    self.inner.quota.release_bytes(meta.size);
                }
                self.inner.quota.release_file();
            }
            Ok(())
        }
        .await;
        self.record(EventKind::Delete, path, None, r).await
    }

    /// Deletes `path` if it is a regular file last modified before `cutoff`
    /// (retention), reached without following any symbolic link. Needs
    /// `delete`. Returns the bytes freed, `None` if the file was left alone.
    pub async fn remove_if_older(
        &self,
        path: &VirtualPath,
        cutoff: SystemTime,
    ) -> FsResult<Option<u64>> {
        self.check(path, Permission::Delete)?;
        let _counting = self.inner.quota.serialize().await;
        if self.inner.quota.is_busy(path, None) {
            return Err(FsError::Busy);
        }
        let removed = match self.inner.fs.remove_if_older(path, cutoff).await {
            Ok(None) => return Ok(None),
            Ok(Some(meta)) => meta,
            Err(e) => return Err(e.into()),
        };
        if removed.nlink <= 1 {
            self.inner.quota.release_bytes(removed.size);
        }
        self.inner.quota.release_file();
        drop(_counting);
        let mut e = self.event(EventKind::Delete, Some(path), Outcome::Ok);
        e.message = Some("retention".into());
        self.inner.gateway.usage_changed(self.username());
        self.inner.gateway.audit().record_durable(e).await?;
        Ok(Some(removed.size))
    }

    /// Creates a folder. Needs `mkdir`.
    pub async fn create_dir(&self, path: &VirtualPath) -> FsResult<()> {
        let r = async {
            self.check_real(path, Permission::Mkdir, false).await?;
            Ok(self.inner.fs.create_dir(path).await?)
        }
        .await;
        self.record(EventKind::Mkdir, path, None, r).await
    }

    /// Removes an empty folder. Needs `rmdir`.
    pub async fn remove_dir(&self, path: &VirtualPath) -> FsResult<()> {
        let r = async {
            self.check_real(path, Permission::Rmdir, false).await?;
            Ok(self.inner.fs.remove_dir(path).await?)
        }
        .await;
        self.record(EventKind::Rmdir, path, None, r).await
    }

    /// Sets times. Needs `chtimes`.
    pub async fn set_times(
        &self,
        path: &VirtualPath,
        accessed: Option<SystemTime>,
        modified: Option<SystemTime>,
    ) -> FsResult<()> {
        let r = async {
            self.check_real(path, Permission::Chtimes, true).await?;
            Ok(self.inner.fs.set_times(path, accessed, modified).await?)
        }
        .await;
        self.record_queued(EventKind::Setstat, path, r)
    }

    /// Truncates or extends a file. Needs `overwrite`; growth counts against the quota.
    pub async fn set_len(&self, path: &VirtualPath, size: u64) -> FsResult<()> {
        let r = async {
            self.check_real(path, Permission::Overwrite, true).await?;
            let _counting = self.inner.quota.serialize().await;
            let meta = self.inner.fs.metadata(path).await?;
            if self.inner.quota.is_busy(path, Some(meta.unique)) {
                return Err(FsError::Busy);
            }
            let old = meta.size;
            if size > old {
                self.inner.quota.reserve_bytes(size - old)?;
            }
            match self.inner.fs.set_len(path, size).await {
                Ok(()) => {
                    if size < old {
                        self.inner.quota.release_bytes(old - size);
                    }
                    Ok(())
                }
                Err(e) => {
                    if size > old {
                        self.inner.quota.release_bytes(size - old);
                    }
                    Err(e.into())
                }
            }
        }
        .await;
        self.record(EventKind::Setstat, path, None, r).await
    }

    /// Where a symlink points (inside the jail). Needs `list` on its folder.
    pub async fn read_link(&self, path: &VirtualPath) -> FsResult<VirtualPath> {
        self.check_real(&path.parent(), Permission::List, true)
            .await?;
        Ok(self.inner.fs.read_link(path).await?)
    }

    /// Where the entry `path` names really is (its folder's links resolved);
    /// the path itself when that cannot be told.
    async fn real_entry(&self, path: &VirtualPath) -> VirtualPath {
        let Some(name) = path.file_name() else {
            return path.clone();
        };
        self.inner
            .fs
            .real_path(&path.parent())
            .await
            .and_then(|p| p.join(name))
            .unwrap_or_else(|_| path.clone())
    }

    /// Links may not become a way around path permissions: both ends must be
    /// governed by exactly the same rights.
    fn same_rights(&self, a: &VirtualPath, b: &VirtualPath) -> bool {
        Permission::EACH
            .iter()
            .all(|p| self.inner.perms.allows(a, *p) == self.inner.perms.allows(b, *p))
    }

    /// Creates a symlink `link` -> `target`. Needs `upload` on the link,
    /// and an account whose rights are the same everywhere: where rights
    /// differ by path, a link (or a folder holding one, once moved) could
    /// reach a path under the rights of another, so none can be made.
    pub async fn symlink(&self, target: &VirtualPath, link: &VirtualPath) -> FsResult<()> {
        let r = async {
            self.check(link, Permission::Upload)?;
            if !self.inner.uniform_rights || !self.same_rights(target, link) {
                return Err(FsError::Denied);
            }
            Ok(self.inner.fs.symlink(target, link).await?)
        }
        .await;
        self.record(EventKind::Link, link, Some(target), r).await
    }

    /// Creates a hard link `dst` to `src`. Needs `upload` on `dst` and the same
    /// rights on both ends.
    pub async fn hard_link(&self, src: &VirtualPath, dst: &VirtualPath) -> FsResult<()> {
        let r = async {
            self.check_real(dst, Permission::Upload, false).await?;
            if !self.same_rights(src, dst) {
                return Err(FsError::Denied);
            }
            if !self.inner.uniform_rights {
                let (real_src, real_dst) = (self.real_entry(src).await, self.real_entry(dst).await);
                if !self.same_rights(&real_src, &real_dst) {
                    return Err(FsError::Denied);
                }
            }
            let _counting = self.inner.quota.serialize().await;
            let meta = self.inner.fs.symlink_metadata(src).await?;
            if self.inner.quota.is_busy(src, Some(meta.unique)) {
                return Err(FsError::Busy);
            }
            self.inner.quota.reserve_file()?;
            let res = self.inner.fs.hard_link(src, dst).await;
            if res.is_err() {
                self.inner.quota.release_file();
            }
            Ok(res?)
        }
        .await;
        self.record(EventKind::Link, dst, Some(src), r).await
    }

    /// Filesystem capacity (for SFTP statvfs). Needs `list`.
    pub async fn fs_stats(&self, path: &VirtualPath) -> FsResult<FsStats> {
        self.check_real(path, Permission::List, true).await?;
        let mut stats = self.inner.fs.fs_stats(path).await?;
        if !self.capabilities().device_stats {
            self.quota_as_stats(&mut stats);
        }
        Ok(stats)
    }

    /// Storage without a device (S3): what `df` shows is the account's
    /// quota, the one limit an upload can meet.
    fn quota_as_stats(&self, stats: &mut FsStats) {
        let limit = self.inner.user.quota;
        let usage = self.inner.quota.usage();
        let block = stats.fragment_size.max(1);
        if limit.max_bytes > 0 {
            let used = usage.map_or(0, |u| u.bytes());
            stats.blocks = limit.max_bytes / block;
            stats.blocks_free = limit.max_bytes.saturating_sub(used) / block;
            stats.blocks_available = stats.blocks_free;
        }
        if limit.max_files > 0 {
            let used = usage.map_or(0, |u| u.files());
            stats.files = limit.max_files;
            stats.files_free = limit.max_files.saturating_sub(used);
        }
    }

    fn start_transfer(&self, path: &VirtualPath, direction: Direction) -> Arc<TransferState> {
        let t = Arc::new(TransferState {
            path: path.as_str().to_owned(),
            direction,
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        });
        self.inner
            .entry
            .transfers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t.clone());
        t
    }

    fn end_transfer(&self, t: &Arc<TransferState>) {
        self.inner
            .entry
            .transfers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|x| !Arc::ptr_eq(x, t));
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per instance: unique enough for an id
    // that only has to be unguessable-ish and unique within one process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A download in progress. Report progress with [`Download::add_bytes`] and
/// end with [`Download::finish`]; dropping it records a failed transfer.
pub struct Download {
    session: Session,
    path: VirtualPath,
    reader: Arc<dyn FileReader>,
    transfer: Arc<TransferState>,
    started: Instant,
    finished: bool,
}

impl Download {
    /// The file content (positioned reads; `local_file()` for zero-copy).
    pub fn reader(&self) -> &Arc<dyn FileReader> {
        &self.reader
    }

    /// The file size when opened.
    pub fn len(&self) -> u64 {
        self.reader.len()
    }

    /// The open file's current metadata (SFTP `FSTAT`), when the backend has
    /// it without waiting and the session may list the file's folder (the
    /// same rule as [`Session::metadata`]); otherwise `None`.
    pub fn stat(&self) -> Option<Metadata> {
        if !self.session.allows(&self.path.parent(), Permission::List) {
            return None;
        }
        self.reader.stat()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the account's download rate allows `bytes` more; call
    /// before sending them. Returns at once without a limit.
    pub async fn throttle(&self, bytes: u64) {
        if let Some(t) = &self.session.inner.throttles.download {
            t.take(bytes).await;
        }
    }

    /// Whether the account has a download rate limit (senders then move
    /// smaller pieces, so the rate is smooth).
    pub fn is_throttled(&self) -> bool {
        self.session.inner.throttles.download.is_some()
    }

    /// Counts bytes sent to the client.
    pub fn add_bytes(&self, n: u64) {
        self.transfer.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes sent so far.
    pub fn bytes(&self) -> u64 {
        self.transfer.bytes.load(Ordering::Relaxed)
    }

    /// Ends the download and records it (`error`: why it failed).
    pub fn finish(mut self, error: Option<&str>) {
        self.finish_inner(error);
    }

    fn finish_inner(&mut self, error: Option<&str>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.session.end_transfer(&self.transfer);
        let outcome = if error.is_some() {
            Outcome::Failed
        } else {
            Outcome::Ok
        };
        if let Some(p) = self.session.metrics_protocol() {
            self.session
                .inner
                .gateway
                .metrics()
                .download(p, self.bytes(), error.is_none());
        }
        let mut e = self
            .session
            .event(EventKind::Download, Some(&self.path), outcome);
        e.bytes = Some(self.bytes());
        e.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        e.message = error.map(str::to_owned);
        self.session.inner.gateway.audit().record(e);
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.finish_inner(Some("interrupted"));
    }
}

/// An upload in progress. Write with [`Upload::write_at`] (bytes beyond the
/// current end are reserved against the quota first), then [`Upload::commit`]
/// or [`Upload::abort`]. Dropping it aborts.
pub struct Upload {
    session: Session,
    path: VirtualPath,
    writer: Option<Box<dyn FileWriter>>,
    transfer: Arc<TransferState>,
    started: Instant,
    /// Bytes kept from the existing file (resume/append).
    initial_len: u64,
    /// Size of the file this upload replaces (0 if new).
    old_size: u64,
    new_file: bool,
    /// Highest offset written so far.
    end: AtomicU64,
    /// Bytes reserved against the quota: beyond `initial_len`, plus the
    /// copied prefix of an atomic resume.
    reserved: AtomicU64,
    /// While it lives, the target cannot be deleted, renamed or resized.
    /// `None` only while a dropped upload winds down in its own task.
    #[allow(dead_code)] // held for its Drop
    busy: Option<BusyPath>,
    failed: AtomicBool,
    /// SHA-256 of the content, computed while it streams in.
    hash: StreamHash,
    /// Hash what the stream did not cover after the reply (see
    /// [`HASH_AFTER_REPLY_FROM`]).
    hash_after_reply: bool,
}

/// With `durable_uploads = false`, uploads larger than this are hashed from
/// this offset on after the client has its reply, from the committed file,
/// and their event is stored then. Smaller ones are hashed as they stream
/// in and their event is stored before the reply, as in durable mode.
pub const HASH_AFTER_REPLY_FROM: u64 = 8 << 20;

/// A completed upload's event prepared before its commit (durable uploads).
struct Early {
    /// The digest of the bytes written, and how many they are: the event
    /// stands only if the commit has exactly that many.
    sha256: String,
    hashed: u64,
    /// In the journal, to be synced beside the commit; or not journaled
    /// (recorded after the commit).
    event: Result<SyncedEvent, Box<Event>>,
}

impl Upload {
    /// Bytes already in the file when the upload started (resume/append offset).
    pub fn initial_len(&self) -> u64 {
        self.initial_len
    }

    /// The virtual path being written.
    pub fn path(&self) -> &VirtualPath {
        &self.path
    }

    /// Bytes written so far by this upload.
    pub fn bytes(&self) -> u64 {
        self.transfer.bytes.load(Ordering::Relaxed)
    }

    /// Writes `data` at `offset` (absolute in the final file). Writes may
    /// run concurrently and arrive out of order (SFTP).
    pub async fn write_at(&self, offset: u64, data: Bytes) -> FsResult<()> {
        self.write(offset, data, false).await
    }

    /// Writes `data` at `offset` for a caller that writes front to back, one
    /// write at a time (FTP): the bytes are hashed on the thread that writes
    /// them, one hand-off per chunk instead of two.
    pub async fn write_next(&self, offset: u64, data: Bytes) -> FsResult<()> {
        self.write(offset, data, true).await
    }

    async fn write(&self, offset: u64, data: Bytes, in_order: bool) -> FsResult<()> {
        let len = data.len() as u64;
        self.prepare_write(offset, len).await?;
        let Some(writer) = &self.writer else {
            return Err(FsError::Closed);
        };
        let lent = if in_order {
            self.hash.lend(offset).await
        } else {
            None
        };
        let written = match lent {
            Some(lent) => {
                let written = writer.write_at_inspect(offset, data, lent.digester()).await;
                self.hash
                    .give_back(lent, written.is_ok().then_some(len))
                    .await;
                written
            }
            None => {
                // Hashed while the write runs (large chunks on another
                // thread; a chunk written in place is hashed after it).
                let write = async {
                    if in_order {
                        writer.write_next_at(offset, data.clone()).await
                    } else {
                        writer.write_at(offset, data.clone()).await
                    }
                };
                let (written, ()) = tokio::join!(write, self.hash.feed(offset, &data));
                written
            }
        };
        match written {
            Ok(()) => {
                self.transfer.bytes.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                self.hash.stop().await;
                Err(e.into())
            }
        }
    }

    /// What every write does first: refuses one on an ended session, reserves
    /// what it adds beyond the furthest byte so far against the quota, and
    /// waits for the account's upload rate limit.
    async fn prepare_write(&self, offset: u64, len: u64) -> FsResult<()> {
        if self.session.is_cancelled() {
            return Err(FsError::Closed);
        }
        let new_end = offset.saturating_add(len);
        let mut cur = self.end.load(Ordering::Acquire);
        while new_end > cur {
            let grow = new_end - cur;
            self.session.inner.quota.reserve_bytes(grow)?;
            match self
                .end
                .compare_exchange(cur, new_end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.reserved.fetch_add(grow, Ordering::AcqRel);
                    break;
                }
                Err(actual) => {
                    self.session.inner.quota.release_bytes(grow);
                    cur = actual;
                }
            }
        }
        if let Some(t) = &self.session.inner.throttles.upload {
            t.take(len).await;
        }
        Ok(())
    }

    /// Truncates or extends the upload to `size` before it is committed
    /// (growth is reserved against the quota first).
    pub async fn set_len(&self, size: u64) -> FsResult<()> {
        if self.session.is_cancelled() {
            return Err(FsError::Closed);
        }
        let cur = self.end.load(Ordering::Acquire);
        if size > cur {
            self.session.inner.quota.reserve_bytes(size - cur)?;
            self.reserved.fetch_add(size - cur, Ordering::AcqRel);
        }
        // Shrinking keeps its reservation until commit, which recounts exactly.
        self.end.store(size, Ordering::Release);
        self.hash.stop().await;
        let Some(writer) = &self.writer else {
            return Err(FsError::Closed);
        };
        writer.set_len(size).await.map_err(|e| {
            self.failed.store(true, Ordering::Relaxed);
            FsError::from(e)
        })
    }

    /// Flushes what was written so far to the disk (the name appears only at
    /// commit in the atomic modes).
    pub async fn sync(&self) -> FsResult<()> {
        let Some(writer) = &self.writer else {
            return Err(FsError::Closed);
        };
        writer.sync().await.map_err(|e| {
            self.failed.store(true, Ordering::Relaxed);
            FsError::from(e)
        })
    }

    /// Makes the upload durable and visible under its final name, then
    /// records it with the content's SHA-256. Returns the final size once
    /// the event (and any delivery it causes) is stored: only then may the
    /// client be told the upload succeeded. Except with `durable_uploads =
    /// false`, for an upload beyond [`HASH_AFTER_REPLY_FROM`] whose committed
    /// bytes cannot change (`FileWriter::stable_content`): it returns once
    /// the file is in place, and the hash and the event follow.
    pub async fn commit(self) -> FsResult<u64> {
        self.finish(None).await
    }

    /// Writes the upload's last bytes at `offset` and commits it, in one
    /// blocking call on local storage (FTP: the last chunk, all of a small
    /// file); with durable uploads whose event is synced beside the commit,
    /// in two (the event needs the whole hash first). For a caller that
    /// writes front to back, as with [`Upload::write_next`]. A failed write
    /// aborts the upload.
    pub async fn commit_last(self, offset: u64, data: Bytes) -> FsResult<u64> {
        if data.is_empty() {
            return self.finish(None).await;
        }
        self.finish(Some((offset, data))).await
    }

    async fn finish(mut self, mut last: Option<(u64, Bytes)>) -> FsResult<u64> {
        // A session that has been ended (kicked, its account changed, the
        // server stopping) commits nothing more: an SFTP CLOSE arriving after
        // that is a client reacting to the disconnect, not one that finished
        // its upload, and would put a partial file under the final name.
        // Dropping the upload aborts it.
        if self.session.is_cancelled() {
            return Err(FsError::Closed);
        }
        // A durable upload's event is synced beside its commit, so its hash
        // must be whole before the commit: the last bytes are written first
        // (one hand-off more, against a flush less).
        let beside = self.event_beside_commit();
        if beside
            && let Some((offset, data)) = last.take()
            && let Err(e) = self.write_next(offset, data).await
        {
            self.abort(&e.to_string()).await;
            return Err(e);
        }
        if let Some((offset, data)) = &last
            && let Err(e) = self.prepare_write(*offset, data.len() as u64).await
        {
            self.abort(&e.to_string()).await;
            return Err(e);
        }
        let Some(writer) = self.writer.take() else {
            return Err(FsError::Closed);
        };
        let session = self.session.clone();
        // What the final name held is looked at during the rename, and the
        // count changed, with no other counting step of the account between.
        let counting = session.inner.quota.serialize().await;
        let early = match beside {
            true => self.early_event().await,
            false => None,
        };
        let mut early_synced = None;
        let result = match last {
            None => match early.as_ref().and_then(|e| e.event.as_ref().ok()) {
                Some(synced) => {
                    let (committed, sync) = tokio::join!(writer.commit(), synced.sync());
                    early_synced = Some(sync);
                    committed.map_err(LastWrite::Commit)
                }
                None => writer.commit().await.map_err(LastWrite::Commit),
            },
            Some((offset, data)) => {
                let len = data.len() as u64;
                let lent = self.hash.lend(offset).await;
                if lent.is_none() {
                    // Not where the hash stands: read back from there.
                    self.hash.skip(offset).await;
                }
                let inspect = lent.as_ref().map(Lent::digester);
                let result = writer.write_and_commit(offset, data, inspect).await;
                let wrote = !matches!(result, Err(LastWrite::Write(..)));
                if let Some(lent) = lent {
                    self.hash.give_back(lent, wrote.then_some(len)).await;
                }
                if wrote {
                    self.transfer.bytes.fetch_add(len, Ordering::Relaxed);
                }
                result
            }
        };
        // A failed commit's event is taken back before the failure is
        // answered (once the account's count is let go).
        let (early, void) = match early {
            Some(Early {
                event: Ok(synced), ..
            }) if result.is_err() => (None, Some(synced)),
            early => (early, None),
        };
        let result = match result {
            Ok(committed) => Ok(committed),
            Err(LastWrite::Commit(e)) => Err(e),
            Err(LastWrite::Write(e, kept)) => {
                // As after a failed write and `abort`.
                self.failed.store(true, Ordering::Relaxed);
                self.hash.stop().await;
                if let Some(kept) = kept {
                    self.settle(kept.size, kept.replaced);
                    session.inner.gateway.usage_changed(session.username());
                }
                drop(counting);
                if let Some(synced) = void {
                    synced.void().await;
                }
                let err = FsError::from(e);
                self.release_and_record(Some(&err.to_string()));
                return Err(err);
            }
        };
        session.end_transfer(&self.transfer);
        match result {
            Ok(committed) => {
                self.settle(committed.size, committed.replaced);
                drop(counting);
                session.inner.gateway.usage_changed(session.username());
                if let Some(p) = session.metrics_protocol() {
                    session
                        .inner
                        .gateway
                        .metrics()
                        .upload(p, self.bytes(), true);
                }
                let size = committed.size;
                let gateway = session.inner.gateway.clone();
                self.reserved.store(0, Ordering::Relaxed);
                self.new_file = false;
                if let Some(early) = early {
                    if early.hashed == size {
                        match (early.event, early_synced) {
                            (Ok(synced), Some(Ok(()))) => synced.confirm(),
                            (Ok(synced), _) => {
                                tracing::warn!(
                                    "syncing the audit journal failed; the upload's event is stored instead"
                                );
                                synced.record_instead().await?;
                            }
                            (Err(mut event), _) => {
                                event.sha256 = Some(early.sha256);
                                gateway.audit().record_durable(*event).await?;
                            }
                        }
                        return Ok(size);
                    }
                    // Not the content that was hashed (cannot happen with
                    // an atomic upload): taken back, and read back below.
                    if let Ok(synced) = early.event {
                        synced.void().await;
                    }
                }
                let mut event = self.completed_event();
                let from = match self.hash.finish(size).await {
                    Hashed::Done(digest) => {
                        event.sha256 = Some(digest);
                        gateway.audit().record_durable(event).await?;
                        return Ok(size);
                    }
                    Hashed::Upto(hasher, at) => Some((hasher, at)),
                    // Not streamed in order (resume, rewrite): read back.
                    Hashed::Nothing => None,
                };
                if self.hash_after_reply
                    && size > HASH_AFTER_REPLY_FROM
                    && let Some(after) = gateway.after_reply()
                {
                    // The client is answered now; the rest of the hash and
                    // the event follow (their share of the work is the
                    // same, it just no longer delays the reply).
                    after.spawn(async move {
                        let _permit = gateway.hash_permits().acquire().await;
                        event.sha256 = sha256_of(committed.content, from).await;
                        gateway.audit().record(event);
                    });
                    return Ok(size);
                }
                let _permit = gateway.hash_permits().acquire().await;
                event.sha256 = sha256_of(committed.content, from).await;
                gateway.audit().record_durable(event).await?;
                Ok(size)
            }
            Err(e) => {
                drop(counting);
                if let Some(synced) = void {
                    synced.void().await;
                }
                let err = FsError::from(e);
                self.release_and_record(Some(&err.to_string()));
                Err(err)
            }
        }
    }

    /// Whether the upload's event is journaled and synced beside its commit
    /// (durable uploads, a gateway on SQLite).
    fn event_beside_commit(&self) -> bool {
        let gateway = &self.session.inner.gateway;
        // A resume or append keeps bytes the hash never saw: read back.
        self.initial_len == 0 && gateway.config.durable_uploads && gateway.audit().journals_synced()
    }

    /// The completed upload's event, with the digest of everything written,
    /// journaled (when it can be) to be synced beside the commit; `None`
    /// when the stream did not follow all of the upload (read back after
    /// the commit instead).
    async fn early_event(&self) -> Option<Early> {
        let (sha256, hashed) = self.hash.finish_whole().await?;
        let mut event = self.completed_event();
        event.sha256 = Some(sha256.clone());
        let event = self.session.inner.gateway.audit().begin_synced(event);
        Some(Early {
            sha256,
            hashed,
            event,
        })
    }

    /// The event of this upload completed (without its SHA-256).
    fn completed_event(&self) -> Event {
        let mut event = self
            .session
            .event(EventKind::Upload, Some(&self.path), Outcome::Ok);
        event.bytes = Some(self.bytes());
        event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        event
    }

    /// Abandons the upload (what stays on disk depends on the upload mode)
    /// and records why.
    pub async fn abort(mut self, reason: &str) {
        if let Some(w) = self.writer.take() {
            let quota = self.session.inner.quota.clone();
            let _counting = quota.serialize().await;
            if let Some(kept) = w.abort().await {
                // A partial stays under the final name: counted like a commit.
                self.settle(kept.size, kept.replaced);
                self.session
                    .inner
                    .gateway
                    .usage_changed(self.session.username());
            }
        }
        self.release_and_record(Some(reason));
    }

    /// Moves the count from "reserved by this upload" to what the final name
    /// holds now: `size` bytes, in place of what it `replaced`.
    fn settle(&mut self, size: u64, replaced: Replaced) {
        let reserved = self.reserved.swap(0, Ordering::AcqRel);
        let new_file = std::mem::replace(&mut self.new_file, false);
        settle(
            &self.session.inner.quota,
            Reservation {
                bytes: reserved,
                new_file,
                old_size: self.old_size,
            },
            size,
            replaced,
        );
    }

    fn release_and_record(&mut self, reason: Option<&str>) {
        let quota = &self.session.inner.quota;
        quota.release_bytes(self.reserved.swap(0, Ordering::AcqRel));
        if self.new_file {
            quota.release_file();
            self.new_file = false;
        }
        self.session.end_transfer(&self.transfer);
        if let Some(reason) = reason {
            if let Some(p) = self.session.metrics_protocol() {
                self.session
                    .inner
                    .gateway
                    .metrics()
                    .upload(p, self.bytes(), false);
            }
            let mut e = self
                .session
                .event(EventKind::Upload, Some(&self.path), Outcome::Failed);
            e.bytes = Some(self.bytes());
            e.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            e.message = Some(reason.to_owned());
            self.session.inner.gateway.audit().record(e);
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let Some(w) = self.writer.take() else {
            return;
        };
        // What stays of an interrupted upload (a partial in `direct` and
        // `atomic_resume` modes) must be counted like a commit: the abort
        // and the count change run in a task of their own, holding the
        // upload's busy mark until they are done.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(w); // the writer's own Drop aborts on disk
            self.release_and_record(Some("interrupted"));
            return;
        };
        let quota = self.session.inner.quota.clone();
        let reservation = Reservation {
            bytes: self.reserved.swap(0, Ordering::AcqRel),
            new_file: std::mem::replace(&mut self.new_file, false),
            old_size: self.old_size,
        };
        let busy = self.busy.take();
        let gateway = self.session.inner.gateway.clone();
        let username = self.session.username().to_owned();
        self.release_and_record(Some("interrupted"));
        runtime.spawn(async move {
            let _counting = quota.serialize().await;
            match w.abort().await {
                Some(kept) => {
                    settle(&quota, reservation, kept.size, kept.replaced);
                    gateway.usage_changed(&username);
                }
                None => {
                    quota.release_bytes(reservation.bytes);
                    if reservation.new_file {
                        quota.release_file();
                    }
                }
            }
            drop(busy);
        });
    }
}

/// What an upload holds against the quota until it ends.
struct Reservation {
    /// Bytes reserved (writes past the start, a copied prefix).
    bytes: u64,
    /// One file was reserved for a name that did not exist.
    new_file: bool,
    /// The size counted for the file an in-place upload rewrites.
    old_size: u64,
}

/// Moves an upload's count from its reservation to what the final name
/// holds now: `size` bytes, in place of what it `replaced`.
fn settle(quota: &QuotaGuard, r: Reservation, size: u64, replaced: Replaced) {
    quota.release_bytes(r.bytes);
    match replaced {
        // Written in place: the old content was counted as `old_size`.
        Replaced::InPlace => quota.release_bytes(r.old_size),
        Replaced::File { size: old, nlink } => {
            if nlink <= 1 {
                quota.release_bytes(old);
            }
            // The name was counted already.
            if r.new_file {
                quota.release_file();
            }
        }
        // A new name after all (what was there went away, or was a link).
        Replaced::Nothing | Replaced::Other => {
            if !r.new_file {
                quota.add_file_unchecked();
            }
        }
    }
    quota.reserve_bytes_unchecked(size);
}

/// Files up to this size are read back on the calling thread (the backend
/// serves them from cache); larger ones on the blocking pool.
const INLINE_HASH_MAX: u64 = 64 * 1024;

/// The hex SHA-256 of `content`, read back from offset 0, or continuing
/// `from` a hash of its first bytes.
async fn sha256_of(
    content: Arc<dyn FileReader>,
    from: Option<(Box<Sha256>, u64)>,
) -> Option<String> {
    let len = content.len();
    let (mut hasher, start) = from.unwrap_or_else(|| (Box::new(Sha256::new()), 0));
    if content.local_file().is_some() && len - start.min(len) > INLINE_HASH_MAX {
        return tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = content.local_file()?;
            // Sized to the file: most uploads are small, and a zeroed 1 MiB
            // buffer per 4 KiB file showed up in profiles.
            let mut buf = vec![0u8; usize::try_from(len.clamp(1, 1 << 20)).ok()?];
            let mut off = start;
            while off < len {
                let want = usize::try_from((len - off).min(buf.len() as u64)).ok()?;
                let n = file.read_at(&mut buf[..want], off).ok()?;
                if n == 0 {
                    return None;
                }
                hasher.update(&buf[..n]);
                off += n as u64;
            }
            Some(hex::encode(hasher.finalize()))
        })
        .await
        .ok()
        .flatten();
    }
    let mut off = start;
    while off < len {
        let chunk = content.read_at(off, 1 << 20).await.ok()?;
        if chunk.is_empty() {
            // Shorter than committed: no digest rather than a wrong one.
            return None;
        }
        hasher.update(&chunk);
        off += chunk.len() as u64;
    }
    Some(hex::encode(hasher.finalize()))
}
