//! One SFTP session on one SSH channel: a pipelined dispatcher.
//!
//! Three roles, so that clients keeping 64 requests in flight (OpenSSH) or
//! thousands (paramiko's prefetch) get them served concurrently and nothing
//! can deadlock:
//!
//! - the **reader** (this task) drains the channel, frames and decodes
//!   packets, and registers each request with its handle *in arrival order*.
//!   It never waits for a reply to be sent: russh pushes incoming data into
//!   the channel from its single session loop, so a reader that stops
//!   draining would stall that loop, which then could not process the
//!   client's WINDOW_ADJUST, so our replies could never leave. Its memory is
//!   bounded instead by byte budgets for decoded requests, per connection
//!   and server-wide (`budget`); a client that exceeds them is dropped.
//! - the **executor** starts queued requests as tasks, at most
//!   [`MAX_CONCURRENT_REQUESTS`] at a time. When a slot is free and nothing
//!   waits, the reader starts a request itself and polls it once in place:
//!   most requests (a cached OPEN, READ, STAT, CLOSE of a download) finish
//!   in that poll and their reply goes straight to the writer; only those
//!   that must wait (disk, earlier requests on the handle) become tasks.
//!   Each hop between tasks is a wake-up, and tokio hands all but the first
//!   few of a chain to another worker thread: a session's request went
//!   through five hops, and its thread switches were most of its latency.
//! - the **writer** is the only sender on the channel (concurrent senders
//!   would interleave chunks and break framing). It sends replies in the
//!   order the requests arrived, batching small ones: OpenSSH's own server
//!   is sequential, and its clients up to at least 9.3 rely on that (scp
//!   truncates a file at the first write or read answered out of order).
//!   A request's concurrency permit is released only once its reply is
//!   sent, so finished replies waiting behind a slow one stay bounded.
//!
//! Ordering per handle: a CLOSE waits for every request registered on that
//! handle before it (a per-handle `TaskTracker`), so an upload is committed
//! only after all its writes landed; READDIR and writes on an APPEND handle
//! run one after another in arrival order (a chain of oneshots). Reads and
//! plain writes on one handle run concurrently (positioned I/O).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use dropgate_core::{Download, Session, Upload};
use dropgate_vfs::{DirStream, VirtualPath};
use futures_util::FutureExt;
use russh::server::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::budget::{Charge, ConnectionBudget};
use crate::codec::{self, DecodeError, FrameDecoder, Request, StatusCode};
use crate::ssh::ConnControl;

/// Requests of one session executing at the same time.
pub(crate) const MAX_CONCURRENT_REQUESTS: usize = 64;
/// Open file and directory handles per session (advertised in limits@openssh.com).
pub(crate) const MAX_OPEN_HANDLES: usize = 256;
/// Replies waiting for the writer (each holds a permit, so never more than
/// [`MAX_CONCURRENT_REQUESTS`]; the margin keeps senders from waiting).
const REPLY_QUEUE: usize = MAX_CONCURRENT_REQUESTS + 8;
/// The writer merges queued small replies into one buffer up to this size.
const COALESCE_BYTES: usize = 128 * 1024;

/// What a handle refers to.
pub(crate) enum HandleKind {
    /// A file opened for reading.
    Read(Download),
    /// A file opened for writing.
    Write(WriteHandle),
    /// An open directory listing.
    Dir(tokio::sync::Mutex<DirState>),
}

/// A file opened for writing: the core upload plus what SFTP adds to it.
pub(crate) struct WriteHandle {
    pub(crate) upload: Upload,
    /// Opened with APPEND: writes ignore their offset and land at the end, in
    /// arrival order (O_APPEND semantics, as OpenSSH's server gives).
    pub(crate) append: bool,
    /// One past the highest byte written (for FSTAT and appends).
    pub(crate) end: AtomicU64,
    /// The first write failure: CLOSE then aborts instead of committing
    /// a file with a hole or a quota-truncated tail, and reports it.
    pub(crate) failure: Mutex<Option<crate::ops::Failure>>,
    /// Times from FSETSTAT, applied after the commit (in atomic mode the
    /// final name does not exist until then).
    pub(crate) pending_times: Mutex<Option<(Option<SystemTime>, Option<SystemTime>)>>,
    /// A size from FSETSTAT (arrival order of that request, length), applied
    /// to the upload at CLOSE, before the commit. OpenSSH 9.x scp opens
    /// without TRUNC and truncates at the end this way. Writes that arrived
    /// later and reach further extend it.
    pub(crate) pending_len: Mutex<Option<(u64, u64)>>,
}

/// An open directory: its entry stream, read a page at a time.
pub(crate) struct DirState {
    pub(crate) stream: DirStream,
    pub(crate) done: bool,
}

/// An open handle and the bookkeeping that orders requests on it.
pub(crate) struct OpenHandle {
    pub(crate) path: VirtualPath,
    pub(crate) kind: HandleKind,
    /// Requests registered on this handle and not yet finished.
    ops: TaskTracker,
    /// Completion signal of the last sequential request (READDIR, append write).
    sequence_tail: Mutex<Option<oneshot::Receiver<()>>>,
}

impl OpenHandle {
    pub(crate) fn new(path: VirtualPath, kind: HandleKind) -> Self {
        OpenHandle {
            path,
            kind,
            ops: TaskTracker::new(),
            sequence_tail: Mutex::new(None),
        }
    }

    /// Takes the next place in this handle's sequential chain.
    fn sequence(&self) -> SequenceSlot {
        let (done, next_tail) = oneshot::channel();
        let previous = lock(&self.sequence_tail).replace(next_tail);
        SequenceSlot {
            previous,
            _done: done,
        }
    }
}

/// A place in a handle's sequential chain: wait for `previous`, run, then
/// drop the slot (which signals the next one).
pub(crate) struct SequenceSlot {
    previous: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl SequenceSlot {
    /// Waits until every earlier sequential request on the handle finished.
    pub(crate) async fn wait_turn(&mut self) {
        if let Some(prev) = self.previous.take() {
            // Err means the previous slot was dropped: it finished (or was cancelled).
            let _ = prev.await;
        }
    }
}

/// The handle a request refers to, resolved by the reader in arrival order.
pub(crate) enum Target {
    /// The request names no handle, or an unknown one.
    None,
    /// A live handle, with this request registered on it.
    Handle {
        handle: Arc<OpenHandle>,
        registration: TaskTrackerToken,
        sequence: Option<SequenceSlot>,
    },
    /// CLOSE of a live handle (already removed from the table).
    Closing(Arc<OpenHandle>),
}

/// A decoded request waiting for the executor.
struct Job {
    /// Arrival order: replies leave in this order.
    seq: u64,
    work: Work,
    _budget: Charge,
}

enum Work {
    /// A request to execute.
    Request(Request, Target),
    /// A reply known at decode time (VERSION, malformed packet).
    Reply(Bytes),
}

/// A reply on its way to the writer.
struct Outgoing {
    seq: u64,
    reply: Bytes,
    /// The request's concurrency slot, released once the reply is sent.
    _permit: OwnedSemaphorePermit,
    /// The request's budget charge, now the reply's size: a reply waiting
    /// for a client that does not open its window is memory too.
    _charge: Option<Charge>,
}

/// Everything a request task needs.
pub(crate) struct SessionState {
    pub(crate) session: Session,
    handles: Mutex<HashMap<u32, Arc<OpenHandle>>>,
    next_handle: AtomicU32,
    replies: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SessionState {
    /// Registers a new handle; gives it back when the session has too many open.
    pub(crate) fn insert_handle(&self, handle: OpenHandle) -> Result<[u8; 4], Box<OpenHandle>> {
        let mut table = lock(&self.handles);
        if table.len() >= MAX_OPEN_HANDLES {
            return Err(Box::new(handle));
        }
        // Handle values are never reused within a session, so a stale handle
        // can never reach a newer file.
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        table.insert(id, Arc::new(handle));
        Ok(id.to_be_bytes())
    }

    /// Whether another handle may be opened (checked before opening a file).
    pub(crate) fn handle_slots_left(&self) -> bool {
        lock(&self.handles).len() < MAX_OPEN_HANDLES
    }

    fn lookup(&self, raw: &[u8]) -> Option<Arc<OpenHandle>> {
        let id = u32::from_be_bytes(raw.try_into().ok()?);
        lock(&self.handles).get(&id).cloned()
    }

    fn remove(&self, raw: &[u8]) -> Option<Arc<OpenHandle>> {
        let id = u32::from_be_bytes(raw.try_into().ok()?);
        lock(&self.handles).remove(&id)
    }

    /// Runs `op` unless the channel or the connection ends first (then
    /// `None`): for waits that can last long, such as a rate-limited read or
    /// write, so that a cut connection ends its session at once instead of
    /// after every request in flight had its turn.
    pub(crate) async fn unless_gone<T>(&self, op: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            v = op => Some(v),
        }
    }

    async fn send(&self, reply: Outgoing) {
        tokio::select! {
            // Err: the writer is gone (channel closed); nobody is listening.
            _ = self.replies.send(reply) => {}
            () = self.cancel.cancelled() => {}
        }
    }
}

/// Why the reading phase ended.
enum End {
    /// The client sent EOF: finish what is queued, then close politely.
    Eof,
    /// The channel or connection is gone, or the session was cancelled.
    Gone,
    /// The client broke the protocol: drop the connection.
    Violation(String),
}

/// Runs one SFTP session until the client leaves or the connection ends.
pub(crate) async fn serve(
    mut rx: ChannelReadHalf,
    tx: ChannelWriteHalf<Msg>,
    session: Session,
    conn: ConnControl,
) {
    let cancel = conn.end.child_token();
    let (reply_tx, reply_rx) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write_replies(tx, reply_rx, cancel.clone()));
    let state = Arc::new(SessionState {
        session,
        handles: Mutex::new(HashMap::new()),
        next_handle: AtomicU32::new(1),
        replies: reply_tx,
        cancel: cancel.clone(),
    });
    let (job_tx, job_rx) = mpsc::unbounded_channel();
    let starter = Starter {
        state: state.clone(),
        tasks: TaskTracker::new(),
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
        queued: Arc::new(AtomicUsize::new(0)),
    };
    let tasks = starter.tasks.clone();
    let mut executor = tokio::spawn(execute(starter.clone(), job_rx));

    let hard_links = state.session.capabilities().links;
    let mut reader = Reader {
        hard_links,
        starter,
        jobs: job_tx,
        frames: FrameDecoder::default(),
        initialized: false,
        next_seq: 0,
        budget: conn.budget.clone(),
    };
    let end = reader.run(&mut rx, &cancel).await;
    drop(reader);

    let mut executor_done = false;
    if matches!(end, End::Eof) {
        // Answer everything already asked, but stop if the channel or the
        // connection goes away meanwhile (a client that sent EOF and then
        // never reads would otherwise hold us forever).
        let answered = async {
            let _ = (&mut executor).await;
            executor_done = true;
            tasks.close();
            tasks.wait().await;
        };
        tokio::select! {
            () = answered => {}
            () = watch_for_close(&mut rx) => cancel.cancel(),
            () = cancel.cancelled() => {}
        }
    } else {
        cancel.cancel();
    }
    drop(rx);
    // After a cancel, queued requests are dropped and running ones end soon
    // (their replies have nowhere to go); wait for them so no task still
    // holds a handle below. (A finished JoinHandle must not be polled again.)
    if !executor_done {
        let _ = executor.await;
    }
    tasks.close();
    tasks.wait().await;

    // Whatever is still open was never closed by the client: uploads are
    // aborted (atomic mode: nothing appears under the final name).
    let leftovers: Vec<Arc<OpenHandle>> = lock(&state.handles).drain().map(|(_, h)| h).collect();
    for handle in leftovers {
        release_unclosed(handle).await;
    }
    drop(state);

    let tx = writer.await.ok().flatten();
    match end {
        End::Eof => {
            if let Some(tx) = tx {
                // What OpenSSH's sshd sends when sftp-server exits.
                let _ = tx.exit_status(0).await;
                let _ = tx.eof().await;
                let _ = tx.close().await;
            }
        }
        End::Gone => {
            if let Some(tx) = tx {
                let _ = tx.close().await;
            }
        }
        End::Violation(why) => {
            tracing::info!(peer = %conn.peer, reason = %why, "dropping SFTP session: protocol violation");
            conn.drop_connection(russh::Disconnect::ProtocolError, "SFTP protocol violation")
                .await;
        }
    }
}

/// Resolves once the client closes the channel (data after EOF is ignored).
async fn watch_for_close(rx: &mut ChannelReadHalf) {
    loop {
        match rx.wait().await {
            None | Some(ChannelMsg::Close) => return,
            Some(_) => {}
        }
    }
}

/// Ends a handle the client never closed.
async fn release_unclosed(handle: Arc<OpenHandle>) {
    handle.ops.close();
    handle.ops.wait().await;
    match Arc::try_unwrap(handle) {
        Ok(h) => match h.kind {
            HandleKind::Write(w) => {
                w.upload
                    .abort("connection closed before the upload was closed")
                    .await
            }
            HandleKind::Read(d) => {
                d.finish(Some("connection closed before the download was closed"))
            }
            HandleKind::Dir(_) => {}
        },
        // A task still holds it (cannot happen once all tasks ended); its
        // drop aborts the upload the same way.
        Err(_) => tracing::warn!("open handle still referenced at session end"),
    }
}

/// Finishes a CLOSE: waits for the handle's earlier requests, then takes it apart.
pub(crate) async fn take_closed(handle: Arc<OpenHandle>) -> Option<OpenHandle> {
    handle.ops.close();
    handle.ops.wait().await;
    // Request tasks drop their reference before their registration token, so
    // after `wait` ours is the last one.
    Arc::try_unwrap(handle).ok()
}

struct Reader {
    /// Whether VERSION offers `hardlink@openssh.com` (the storage has links).
    hard_links: bool,
    starter: Starter,
    jobs: mpsc::UnboundedSender<Job>,
    frames: FrameDecoder,
    initialized: bool,
    next_seq: u64,
    budget: ConnectionBudget,
}

impl Reader {
    async fn run(&mut self, rx: &mut ChannelReadHalf, cancel: &CancellationToken) -> End {
        loop {
            let msg = tokio::select! {
                m = rx.wait() => m,
                () = cancel.cancelled() => return End::Gone,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    self.frames.push(&data);
                    loop {
                        match self.frames.next_frame() {
                            Ok(Some(frame)) => {
                                if let Err(why) = self.on_frame(frame) {
                                    return End::Violation(why);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return End::Violation(e.to_string()),
                        }
                    }
                }
                Some(ChannelMsg::Eof) => return End::Eof,
                None | Some(ChannelMsg::Close) => return End::Gone,
                Some(_) => {}
            }
        }
    }

    fn on_frame(&mut self, frame: Bytes) -> Result<(), String> {
        let charge = self.budget.charge(frame.len()).map_err(|e| e.to_string())?;
        let len = frame.len();
        let request = match codec::decode_request(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, len, "undecodable SFTP packet");
                let Some(id) = e.id() else {
                    return Err(e.to_string());
                };
                if !self.initialized {
                    return Err("request before INIT".into());
                }
                let (code, msg) = match e {
                    DecodeError::Malformed { .. } => (StatusCode::BadMessage, "Malformed request"),
                    DecodeError::Unsupported { .. } => {
                        (StatusCode::OpUnsupported, "Operation not supported")
                    }
                };
                self.queue(Work::Reply(codec::encode_status(id, code, msg)), charge);
                return Ok(());
            }
        };
        if let Request::Init { version } = request {
            if self.initialized {
                return Err("second INIT".into());
            }
            self.initialized = true;
            tracing::debug!(version, "SFTP session started");
            self.queue(Work::Reply(codec::encode_version(self.hard_links)), charge);
            return Ok(());
        }
        if !self.initialized {
            return Err("request before INIT".into());
        }
        let target = self.resolve(&request);
        self.queue(Work::Request(request, target), charge);
        Ok(())
    }

    /// Registers a request with the handle it names, in arrival order.
    fn resolve(&self, request: &Request) -> Target {
        use codec::ExtendedRequest as E;
        let (raw, sequential) = match request {
            Request::Close { handle, .. } => {
                return match self.starter.state.remove(handle) {
                    Some(h) => Target::Closing(h),
                    None => Target::None,
                };
            }
            Request::Readdir { handle, .. } => (handle, true),
            Request::Write { handle, .. } => (handle, false),
            Request::Read { handle, .. }
            | Request::Fstat { handle, .. }
            | Request::Fsetstat { handle, .. } => (handle, false),
            Request::Extended {
                request: E::Fstatvfs { handle } | E::Fsync { handle },
                ..
            } => (handle, false),
            _ => return Target::None,
        };
        let Some(handle) = self.starter.state.lookup(raw) else {
            return Target::None;
        };
        let sequential = sequential
            || matches!((request, &handle.kind), (Request::Write { .. }, HandleKind::Write(w)) if w.append);
        let registration = handle.ops.token();
        let sequence = sequential.then(|| handle.sequence());
        Target::Handle {
            handle,
            registration,
            sequence,
        }
    }

    fn queue(&mut self, work: Work, budget: Charge) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let job = Job {
            seq,
            work,
            _budget: budget,
        };
        // Start it here unless earlier ones wait for a slot (they go first).
        if self.starter.queued.load(Ordering::Acquire) == 0
            && let Ok(permit) = self.starter.permits.clone().try_acquire_owned()
        {
            self.starter.start(job, permit);
            return;
        }
        self.starter.queued.fetch_add(1, Ordering::AcqRel);
        // Err: the executor stopped (session ending); the job is dropped.
        let _ = self.jobs.send(job);
    }
}

/// Starts requests within the session's concurrency limit.
#[derive(Clone)]
struct Starter {
    state: Arc<SessionState>,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    /// Jobs handed to the executor and not yet started.
    queued: Arc<AtomicUsize>,
}

impl Starter {
    /// Runs `job` holding `permit`: polled once in place, and moved to a task
    /// of its own only if it has to wait. Never waits itself (the reader
    /// calls it).
    fn start(&self, job: Job, permit: OwnedSemaphorePermit) {
        let Job { seq, work, _budget } = job;
        let request = match work {
            Work::Reply(reply) => {
                let charge = _budget.resize(reply.len());
                self.reply(Outgoing {
                    seq,
                    reply,
                    _permit: permit,
                    _charge: Some(charge),
                });
                return;
            }
            Work::Request(request, target) => (request, target),
        };
        let state = self.state.clone();
        let mut run: Pin<Box<dyn Future<Output = Bytes> + Send>> = Box::pin(async move {
            let (request, target) = request;
            let id = request.id().unwrap_or(0);
            let run =
                AssertUnwindSafe(crate::ops::execute(&state, seq, request, target)).catch_unwind();
            // A bug in one request must not leave a hole in the reply
            // order (which would stall every later reply).
            run.await.unwrap_or_else(|_| {
                tracing::error!(id, "SFTP request handler panicked");
                codec::encode_status(id, StatusCode::Failure, "Internal error")
            })
        });
        // A no-op waker is enough for this first poll: a request that is
        // not done is spawned, and its task polls it again (with its own
        // waker) at once.
        if let Poll::Ready(reply) = run.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            let charge = _budget.resize(reply.len());
            self.reply(Outgoing {
                seq,
                reply,
                _permit: permit,
                _charge: Some(charge),
            });
            return;
        }
        let state = self.state.clone();
        self.tasks.spawn(async move {
            let reply = run.await;
            let charge = _budget.resize(reply.len());
            state
                .send(Outgoing {
                    seq,
                    reply,
                    _permit: permit,
                    _charge: Some(charge),
                })
                .await;
        });
    }

    /// Hands a reply to the writer without waiting. The queue has room for
    /// every reply that can exist (each holds one of the permits).
    fn reply(&self, out: Outgoing) {
        if let Err(TrySendError::Full(out)) = self.state.replies.try_send(out) {
            let state = self.state.clone();
            self.tasks.spawn(async move { state.send(out).await });
        }
    }
}

/// Starts queued requests, [`MAX_CONCURRENT_REQUESTS`] at a time.
async fn execute(starter: Starter, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let state = starter.state.clone();
    let permits = starter.permits.clone();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = state.cancel.cancelled() => return,
        };
        let job = tokio::select! {
            j = jobs.recv() => match j {
                Some(j) => j,
                None => return,
            },
            () = state.cancel.cancelled() => return,
        };
        starter.queued.fetch_sub(1, Ordering::AcqRel);
        starter.start(job, permit);
    }
}

/// The only sender on the channel: puts replies back into request order and
/// sends them, merging small ones. Returns the write half for the closing
/// messages, or `None` if the channel failed.
async fn write_replies(
    tx: ChannelWriteHalf<Msg>,
    mut replies: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) -> Option<ChannelWriteHalf<Msg>> {
    let mut order = ReplyOrder::default();
    let mut batch = BytesMut::new();
    loop {
        let received = tokio::select! {
            r = replies.recv() => r,
            () = cancel.cancelled() => return None,
        };
        let Some(received) = received else {
            return Some(tx);
        };
        order.insert(received);
        while let Ok(more) = replies.try_recv() {
            order.insert(more);
        }
        while let Some(first) = order.pop_next() {
            let mut sent = vec![first];
            let mut total = sent[0].reply.len();
            while total < COALESCE_BYTES
                && let Some(next) = order.pop_next()
            {
                total += next.reply.len();
                sent.push(next);
            }
            let out = if let [single] = &sent[..] {
                single.reply.clone()
            } else {
                for o in &sent {
                    batch.extend_from_slice(&o.reply);
                }
                batch.split().freeze()
            };
            tokio::select! {
                r = tx.data_bytes(out) => if r.is_err() { return None },
                () = cancel.cancelled() => return None,
            }
            // Dropping them releases their permits: new requests may start.
            drop(sent);
        }
    }
}

/// Replies that finished out of order, held until their turn.
#[derive(Default)]
struct ReplyOrder {
    next: u64,
    waiting: std::collections::BTreeMap<u64, Outgoing>,
}

impl ReplyOrder {
    fn insert(&mut self, o: Outgoing) {
        self.waiting.insert(o.seq, o);
    }

    fn pop_next(&mut self) -> Option<Outgoing> {
        let o = self.waiting.remove(&self.next)?;
        self.next += 1;
        Some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_request_order() {
        let permits = Arc::new(Semaphore::new(8));
        let out = |seq: u64| Outgoing {
            seq,
            reply: Bytes::from(vec![seq as u8]),
            _permit: permits
                .clone()
                .try_acquire_owned()
                .unwrap_or_else(|_| unreachable!()),
            _charge: None,
        };
        let mut order = ReplyOrder::default();
        order.insert(out(2));
        order.insert(out(1));
        assert!(order.pop_next().is_none(), "0 has not arrived");
        order.insert(out(0));
        let seqs: Vec<u64> = std::iter::from_fn(|| order.pop_next())
            .map(|o| o.seq)
            .collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        order.insert(out(4));
        assert!(order.pop_next().is_none());
        order.insert(out(3));
        assert_eq!(order.pop_next().map(|o| o.seq), Some(3));
        assert_eq!(order.pop_next().map(|o| o.seq), Some(4));
        // Permits come back once replies are gone.
        assert_eq!(permits.available_permits(), 8);
    }
}
