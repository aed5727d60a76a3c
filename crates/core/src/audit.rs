//! The event stream: every audited event goes through one writer task that
//! matches it against the event rules and stores it with the deliveries it
//! caused, in one transaction (the outbox).
//!
//! Operations a client is told succeeded wait for their event
//! ([`AuditLog::record_durable`]): the client hears "done" only once the
//! event, and any action it triggers, is in the store. (The one exception:
//! a large upload answered from the page cache, whose hash and event follow
//! its reply; see `Upload::commit`.) Waiting events are
//! committed in groups: while one transaction runs, the next batch gathers,
//! so hundreds of small uploads a second cost a few transactions a second.
//! When the writer is idle, nothing is queued and the event triggers no
//! action, the waiting task stores its event itself (one `INSERT`), which
//! spares the two task wake-ups of the round trip through the writer; if
//! that does not succeed at once, the event goes to the writer under the
//! same key, so a late landing of the first attempt cannot store it twice.
//!
//! When the store is down, batches go to an on-disk spool (one fsynced file
//! per batch) and are acknowledged from there; a replay task moves them
//! into the store once it answers again. Only when the spool is full or
//! unwritable are waiting operations answered with a failure.
//!
//! A gateway on SQLite journals instead: the waiting task appends its
//! event to a local file and is answered at once, and the writer stores it
//! with the next batch (see [`crate::audit_journal`]). With durable uploads
//! a completed upload's event is journaled synced, its sync running beside
//! the upload's own ([`AuditLog::begin_synced`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dropgate_store::{Delivery, Event, EventConnection, KeyedEvent, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::audit_journal::{self, Journal};
use crate::rules::Rules;

/// Most events written in one transaction.
const BATCH: usize = 256;
/// How long the writer gathers events nobody waits for after the first of a
/// batch (logouts, failed operations): fewer, larger transactions. A waiting
/// event, a flush or a full batch ends the wait.
const LINGER: Duration = Duration::from_millis(25);
/// How long one store write may take before the batch goes to the spool.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a waiting task's own store write may take before its event is
/// handed to the writer (which retries, then spools).
const INLINE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most journaled events waiting for the writer; beyond it events are
/// stored before their reply again, so a store slower than the clients
/// slows them down instead of the queue growing in memory.
const JOURNAL_BACKLOG: usize = 4 * BATCH;
/// How often the spool is offered to the store.
const REPLAY_EVERY: Duration = Duration::from_secs(2);
/// Most bytes the spool holds; beyond it, waiting operations fail.
pub const SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Why an event could not be recorded: the store is unavailable and the
/// spool is full, unwritable or not configured.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit log is unavailable")]
pub struct Unrecorded;

type Waiter = oneshot::Sender<Result<(), Unrecorded>>;

enum Msg {
    Event(Box<KeyedEvent>, Option<Waiter>),
    /// An event already in the journal, in the file of this generation.
    Journaled(Box<KeyedEvent>, u64),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Sends events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    /// For waiting tasks that store their own event while the writer idles.
    store: Store,
    /// The connections those tasks use, one at a time (`Shared::inline`).
    inline_conns: Arc<InlineConnections>,
}

/// The kept connections for events stored by their waiting task: one whose
/// commits are flushed as the store's are, one whose commits are not (see
/// [`synced`]). `None` until first needed and after a failed or abandoned
/// write.
#[derive(Default)]
struct InlineConnections {
    synced: std::sync::Mutex<Option<EventConnection>>,
    unsynced: std::sync::Mutex<Option<EventConnection>>,
}

/// Which events go through the journal (see [`crate::audit_journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// None: every waiting event is stored (or spooled) before its reply.
    Off,
    /// Uploads are answered from the page cache: every waiting event is
    /// journaled, none synced.
    PageCache,
    /// Uploads are durable: a completed upload's event is journaled synced
    /// beside its commit ([`AuditLog::begin_synced`]) or stored before its
    /// reply; the other waiting events (not flushed by the store either,
    /// see [`synced`]) are journaled.
    Durable,
}

/// What senders, the writer and the replay task share.
struct Shared {
    /// Events queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// Ends the writer's linger early (a waiting event, a flush, a full batch).
    hurry: Notify,
    /// Set while the writer holds events it has not finished writing.
    writing: AtomicBool,
    /// Set while a waiting task stores its own event: one at a time, so
    /// that SQLite's writers do not queue on its lock (whose busy handler
    /// sleeps a millisecond or more).
    inline: AtomicBool,
    /// Rules that turn events into deliveries.
    rules: Arc<Rules>,
    /// Woken when deliveries were stored (the dispatcher).
    deliveries: Arc<Notify>,
    /// Set while the store refuses writes: batches go to the spool.
    degraded: AtomicBool,
    /// Held while a batch is appended to the spool and `degraded` set, and
    /// while the replay finds the spool empty and clears it: the replay
    /// cannot leave the degraded mode between those two steps of the
    /// writer (a batch spooled, later ones bypassing it out of order).
    spool_gate: std::sync::Mutex<()>,
    spool: Option<Spool>,
    /// Where waiting events go before their reply.
    journal: Option<Journal>,
    /// Whether completed uploads are durable ([`JournalMode::Durable`]).
    durable: bool,
    /// Per earlier run's journal file being moved into the spool: its
    /// lines already there (the spool filled up midway), so that the next
    /// pass goes on from there.
    adopting: std::sync::Mutex<std::collections::HashMap<PathBuf, usize>>,
    /// Journaled events the writer holds because their batch was neither
    /// stored nor spooled: the degraded mode lasts while there are any.
    retrying: AtomicUsize,
    /// Events that could be neither stored nor spooled.
    lost: AtomicU64,
}

impl AuditLog {
    /// Starts the writer task on `store` (and, with a spool folder, the
    /// replay task). With a `journal_mode` other than `Off` (and a spool
    /// folder), waiting events are journaled in `<spool>/journal` instead
    /// of stored before their reply. Needs a tokio runtime.
    pub fn start(
        store: Store,
        rules: Arc<Rules>,
        deliveries: Arc<Notify>,
        spool_dir: Option<PathBuf>,
        journal_mode: JournalMode,
    ) -> AuditLog {
        // Unbounded on purpose: recording must work from `Drop` (an aborted
        // transfer) and never block a transfer; the writer drains it into
        // the store or the spool continuously, so it holds one batch or two.
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let journal = spool_dir
            .as_ref()
            .filter(|_| journal_mode != JournalMode::Off)
            .map(|d| Journal::new(d.join("journal")));
        let spool = spool_dir.map(Spool::new);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            hurry: Notify::new(),
            writing: AtomicBool::new(false),
            inline: AtomicBool::new(false),
            rules,
            deliveries,
            degraded: AtomicBool::new(false),
            spool_gate: std::sync::Mutex::new(()),
            spool,
            journal,
            durable: journal_mode == JournalMode::Durable,
            adopting: std::sync::Mutex::default(),
            retrying: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        });
        // Before the writer starts: an earlier run's journal goes into the
        // spool first (and the spool's replay before this run's events),
        // so events keep their order. Blocking file work, once, at start.
        if let Some(spool) = &shared.spool {
            // A batch half-written when a process died was never
            // acknowledged. Swept here, not in the replay task: there it
            // raced the writer's first append (and removed its temporary).
            spool.sweep_temporaries();
        }
        if shared
            .spool
            .as_ref()
            .is_some_and(|s| !s.pending().is_empty())
        {
            // Batches a stopped run spooled go in before anything newer.
            shared.degraded.store(true, Ordering::Release);
        }
        adopt_journals_now(&shared);
        if shared.spool.is_some() {
            tokio::spawn(replay_spool(store.clone(), shared.clone()));
        }
        tokio::spawn(write_events(store.clone(), rx, shared.clone()));
        AuditLog {
            tx,
            shared,
            store,
            inline_conns: Arc::default(),
        }
    }

    /// Queues one event nobody waits for (a logout, a failed operation).
    pub fn record(&self, event: Event) {
        self.send(event, None);
    }

    /// Records one event and waits until it (with the deliveries it causes)
    /// is in the store or the spool: what a client is told succeeded.
    pub async fn record_durable(&self, event: Event) -> Result<(), Unrecorded> {
        let mut event = KeyedEvent::new(event);
        // With durable uploads, a completed upload's event is synced: not
        // journaled here (see `begin_synced`).
        if let Some(journal) = &self.shared.journal
            && !(self.shared.durable && synced(&event.event))
            && let Some(appended) = self.journal(journal, &mut event)
        {
            self.journaled(event, appended.generation);
            return Ok(());
        }
        self.record_keyed(event).await
    }

    /// Hands a journaled event to the writer, which stores it with its next
    /// batch.
    fn journaled(&self, event: KeyedEvent, generation: u64) {
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self
            .tx
            .send(Msg::Journaled(Box::new(event), generation))
            .is_err()
        {
            // The writer has stopped (shutdown): the journal keeps it
            // for the next start.
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        } else if queued.wrapping_add(1) == BATCH {
            self.shared.hurry.notify_one();
        }
    }

    /// Appends a completed upload's event to the journal, to be synced
    /// beside the upload's commit ([`SyncedEvent::sync`]) and then confirmed
    /// or voided by its outcome; with durable uploads only. `Err`: not
    /// journaled (no journal, the conditions of [`AuditLog::journal`]), the
    /// event is given back to be recorded with
    /// [`AuditLog::record_durable`] after the commit.
    pub(crate) fn begin_synced(&self, event: Event) -> Result<SyncedEvent, Box<Event>> {
        let Some(journal) = self.shared.journal.as_ref().filter(|_| self.shared.durable) else {
            return Err(Box::new(event));
        };
        let mut keyed = KeyedEvent::new(event);
        match self.journal(journal, &mut keyed) {
            Some(appended) => Ok(SyncedEvent {
                log: self.clone(),
                event: Some(keyed),
                appended: Some(appended),
            }),
            None => Err(Box::new(keyed.event)),
        }
    }

    /// Whether completed uploads' events are journaled synced
    /// ([`AuditLog::begin_synced`]; [`JournalMode::Durable`] with a spool).
    pub fn journals_synced(&self) -> bool {
        self.shared.durable
            && self.shared.journal.is_some()
            && !self.shared.degraded.load(Ordering::Acquire)
    }

    /// [`AuditLog::record_durable`] past the journal.
    async fn record_keyed(&self, mut event: KeyedEvent) -> Result<(), Unrecorded> {
        if self.writer_idle()
            && let Some(_turn) = InlineTurn::take(&self.shared.inline)
            && self.store_now(&mut event).await
        {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        if !self.send_keyed(event, Some(done)) {
            return Err(Unrecorded);
        }
        self.shared.hurry.notify_one();
        wait.await.unwrap_or(Err(Unrecorded))
    }

    /// Appends `event` to the journal if it can stand for the stored event:
    /// the store takes writes (while the spool holds batches, operations
    /// wait for it, and fail when it is full), the writer keeps up
    /// ([`JOURNAL_BACKLOG`]) and the event triggers no action (a delivery
    /// is stored with its event before the reply).
    fn journal(
        &self,
        journal: &Journal,
        event: &mut KeyedEvent,
    ) -> Option<audit_journal::Appended> {
        if self.shared.degraded.load(Ordering::Acquire)
            || self.shared.queued.load(Ordering::Acquire) >= JOURNAL_BACKLOG
        {
            return None;
        }
        if self.triggers_action(event) {
            return None;
        }
        // On the calling thread: a small write into the page cache, cheaper
        // than the hop to the blocking pool.
        journal.append(event).ok()
    }

    /// Sanitizes `event` and says whether it matches a rule: its delivery
    /// must then be stored with it, in the writer's transaction.
    fn triggers_action(&self, event: &mut KeyedEvent) -> bool {
        sanitize(&mut event.event);
        !self
            .shared
            .rules
            .deliveries_for(std::iter::once(&event.event))
            .is_empty()
    }

    /// Nothing queued, nothing being written, the store taking writes: an
    /// event stored now cannot overtake an earlier one of this process.
    fn writer_idle(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) == 0
            && !self.shared.writing.load(Ordering::Acquire)
            && !self.shared.degraded.load(Ordering::Acquire)
    }

    /// Stores one event from the calling task, if it triggers no action
    /// (deliveries go through the writer, whose batch is their one
    /// transaction) and the store answers in time; `false`: not stored,
    /// or not known to be.
    async fn store_now(&self, event: &mut KeyedEvent) -> bool {
        if self.triggers_action(event) {
            return false;
        }
        // Taken out while in use: if this task is dropped mid-statement (its
        // client gone), the connection goes with it rather than back in a
        // state nobody knows.
        let synced = synced(&event.event);
        let slot = if synced {
            &self.inline_conns.synced
        } else {
            &self.inline_conns.unsynced
        };
        let kept = lock(slot).take();
        let attempt = tokio::time::timeout(INLINE_TIMEOUT, async {
            let mut conn = match kept {
                Some(c) => c,
                // Boxed: the pool's acquire is a future of ~8.7 KB, which
                // would otherwise be part of every future that records an
                // event (each command's, each transfer's) and be copied
                // with them; it runs once per kept connection.
                None => Box::pin(self.store.event_connection(synced)).await?,
            };
            conn.insert_event(event).await?;
            Ok::<_, dropgate_store::StoreError>(conn)
        })
        .await;
        match attempt {
            Ok(Ok(conn)) => {
                *lock(slot) = Some(conn);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "storing an audit event failed; handed to the writer");
                false
            }
            Err(_) => false,
        }
    }

    fn send(&self, event: Event, waiter: Option<Waiter>) -> bool {
        self.send_keyed(KeyedEvent::new(event), waiter)
    }

    fn send_keyed(&self, event: KeyedEvent, waiter: Option<Waiter>) -> bool {
        // Counted before it is sent: the writer may take it (and count it
        // off) before `send` returns.
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(Msg::Event(Box::new(event), waiter)).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit writer stopped; event lost");
            return false;
        }
        if queued.wrapping_add(1) == BATCH {
            self.shared.hurry.notify_one();
        }
        true
    }

    /// Waits until every event queued so far is stored or spooled.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            self.shared.hurry.notify_one();
            let _ = wait.await;
        }
    }

    /// At a graceful stop: stores what is queued and removes the journal's
    /// files whose events are all stored.
    pub async fn close(&self) {
        self.flush().await;
        if let Some(journal) = &self.shared.journal {
            journal.finish();
        }
    }

    /// Events that could be neither stored nor spooled since start.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }

    /// Whether batches currently go to the spool (the store refused).
    pub fn degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Relaxed)
    }
}

/// A completed upload's event in the journal, not yet known to be on disk
/// nor its upload committed ([`AuditLog::begin_synced`]). Dropped without
/// [`SyncedEvent::void`] (its commit's outcome unknown: the task was
/// cancelled mid-commit, which FTP and SFTP do not do, or the server is
/// forced down), it is stored as journaled: the commit runs on without its
/// task and most likely lands.
pub(crate) struct SyncedEvent {
    log: AuditLog,
    /// Both `Some` until consumed.
    event: Option<KeyedEvent>,
    appended: Option<audit_journal::Appended>,
}

impl SyncedEvent {
    /// Returns once the event is on disk (on the blocking pool, so that it
    /// runs beside the upload's commit).
    pub(crate) async fn sync(&self) -> std::io::Result<()> {
        let Some(appended) = &self.appended else {
            return Ok(());
        };
        let (file, end) = (appended.file.clone(), appended.end);
        tokio::task::spawn_blocking(move || file.sync_upto(end))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// The upload is committed and the event synced: the writer stores it.
    pub(crate) fn confirm(mut self) {
        self.hand_over();
    }

    /// The event's sync failed: it is recorded past the journal (stored
    /// before the reply) under the same key, so that the journal's line,
    /// should it be on disk after all, is not stored a second time.
    pub(crate) async fn record_instead(mut self) -> Result<(), Unrecorded> {
        let (Some(event), Some(appended)) = (self.event.take(), self.appended.take()) else {
            return Err(Unrecorded);
        };
        self.log.record_keyed(event).await?;
        // Only now: until then the journal's line may be its only copy (a
        // failed or cancelled store leaves it to the next start).
        if let Some(journal) = &self.log.shared.journal {
            journal.stored(&[appended.generation]);
        }
        Ok(())
    }

    /// The upload failed after all: its event is taken back (a void line,
    /// synced, in the same journal file) and never stored.
    pub(crate) async fn void(mut self) {
        let (Some(event), Some(appended)) = (self.event.take(), self.appended.take()) else {
            return;
        };
        let log = self.log.clone();
        let void = move || {
            let key = event.key.as_deref().unwrap_or_default();
            match &log.shared.journal {
                Some(journal) => journal.void(&appended, key),
                None => Ok(()),
            }
        };
        // On this worker, not the blocking pool: a runtime shutting down
        // refuses new blocking tasks, and this line must be written. A
        // failed commit is rare; the write and sync are short.
        let voided = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(void),
            _ => void(),
        };
        if let Err(e) = voided {
            tracing::error!(error = %e,
                "cannot take back the audit event of an upload that failed; a restart after a crash would store it");
        }
    }

    fn hand_over(&mut self) {
        if let (Some(event), Some(appended)) = (self.event.take(), self.appended.take()) {
            self.log.journaled(event, appended.generation);
        }
    }
}

impl Drop for SyncedEvent {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Whether `event`'s commit must reach the disk before it is acknowledged
/// (when the store syncs commits: `durable_uploads`): a completed upload,
/// which is itself on disk by then. Renames, deletes, folders and times are
/// not flushed by the file system either, so their events may share their
/// fate in a power cut (never in a crash of the process); storing them
/// without a sync spares a flush per operation (lftp's `MFMT` after each
/// file, say).
fn synced(event: &Event) -> bool {
    event.kind == dropgate_store::EventKind::Upload && event.outcome == dropgate_store::Outcome::Ok
}

/// Locks `m`, poisoned or not: what these locks guard (a connection slot,
/// the spool gate, the journal's counters) is never left half-changed by a
/// panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The one turn to store an event from a waiting task; given back on drop
/// (also when the waiting task is cancelled).
struct InlineTurn<'a>(&'a AtomicBool);

impl<'a> InlineTurn<'a> {
    fn take(flag: &'a AtomicBool) -> Option<InlineTurn<'a>> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| InlineTurn(flag))
    }
}

impl Drop for InlineTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The writer: wakes for the first event of a batch; for events nobody
/// waits for, sleeps through the linger instead of waking for every event
/// that follows (each wake of an idle task from a busy worker can cost a
/// thread switch).
async fn write_events(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>, shared: Arc<Shared>) {
    let mut msgs = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    // Journaled events of this batch: (index in `batch`, generation).
    let mut journaled: Vec<(usize, u64)> = Vec::new();
    // Journaled events whose batch was neither stored nor spooled: their
    // clients were answered, so they go again with the next batch.
    let mut retry: Vec<(KeyedEvent, u64)> = Vec::new();
    // The writer's own connection, kept from batch to batch (see
    // `EventConnection::insert_events_with_deliveries`).
    let mut conn: Option<EventConnection> = None;
    loop {
        let received = if retry.is_empty() {
            rx.recv_many(&mut msgs, BATCH).await
        } else {
            // Held events go again without waiting for a new one.
            tokio::time::timeout(REPLAY_EVERY, rx.recv_many(&mut msgs, BATCH))
                .await
                .unwrap_or(usize::MAX)
        };
        if received == 0 {
            // Stopped. Held events stay in the journal for the next start.
            break;
        }
        shared.writing.store(true, Ordering::Release);
        let deadline = Instant::now() + LINGER;
        let urgent = |m: &Msg| matches!(m, Msg::Flush(_)) || matches!(m, Msg::Event(_, Some(_)));
        let mut hurry = msgs.iter().any(urgent);
        while !hurry && msgs.len() < BATCH {
            let woken = tokio::select! {
                () = tokio::time::sleep_until(deadline) => false,
                () = shared.hurry.notified() => true,
            };
            let room = BATCH - msgs.len();
            if !rx.is_empty() {
                rx.recv_many(&mut msgs, room).await;
            }
            hurry = msgs.iter().any(urgent);
            if !woken {
                break;
            }
        }
        let mut flushes = Vec::new();
        for (e, generation) in retry.drain(..) {
            journaled.push((batch.len(), generation));
            batch.push(e);
        }
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e, waiter) => {
                    shared.queued.fetch_sub(1, Ordering::AcqRel);
                    batch.push(*e);
                    waiters.extend(waiter);
                }
                Msg::Journaled(e, generation) => {
                    shared.queued.fetch_sub(1, Ordering::AcqRel);
                    journaled.push((batch.len(), generation));
                    batch.push(*e);
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        for e in &mut batch {
            sanitize(&mut e.event);
        }
        let deliveries = shared.rules.deliveries_for(batch.iter().map(|k| &k.event));
        let result = write_batch(&store, &mut conn, &shared, &batch, &deliveries).await;
        if result.is_err() {
            shared
                .lost
                .fetch_add((batch.len() - journaled.len()) as u64, Ordering::Relaxed);
            if !journaled.is_empty() {
                // Answered from the journal, where they stay: retried with
                // the next batch (or after a while), and nothing more is
                // journaled meanwhile (operations wait for the spool, and
                // fail while it refuses). Under the gate: the replay must
                // not end the degraded mode between these two stores.
                retry.extend(journaled.iter().map(|(i, g)| (batch[*i].clone(), *g)));
                let _gate = lock(&shared.spool_gate);
                shared.retrying.store(retry.len(), Ordering::Release);
                shared.degraded.store(true, Ordering::Release);
                tracing::error!(
                    events = journaled.len(),
                    "journaled audit events neither stored nor spooled; kept and retried"
                );
            }
        } else {
            shared.retrying.store(0, Ordering::Release);
            if let Some(journal) = &shared.journal {
                let generations: Vec<u64> = journaled.iter().map(|(_, g)| *g).collect();
                journal.stored(&generations);
            }
            if !deliveries.is_empty() {
                shared.deliveries.notify_one();
            }
        }
        journaled.clear();
        batch.clear();
        for w in waiters.drain(..) {
            let _ = w.send(result);
        }
        for f in flushes {
            let _ = f.send(());
        }
        shared.writing.store(false, Ordering::Release);
    }
}

/// Stores one batch, or spools it when the store does not answer in time.
async fn write_batch(
    store: &Store,
    conn: &mut Option<EventConnection>,
    shared: &Arc<Shared>,
    events: &[KeyedEvent],
    deliveries: &[Delivery],
) -> Result<(), Unrecorded> {
    // While the spool holds batches the store refused, newer ones join them
    // there (the replay keeps their order) until the replay catches up.
    if !shared.degraded.load(Ordering::Acquire) {
        // Taken out while in use: after an error or a timeout its state is
        // unknown. A kept connection that fails (the server restarted, an
        // idle connection dropped on the way) is replaced at once, within
        // the same time limit: the pool checked a connection before lending
        // it, a kept one is not. Storing a batch again keeps each event and
        // delivery once.
        let kept = conn.take();
        let attempt = tokio::time::timeout(STORE_TIMEOUT, async {
            if let Some(mut c) = kept {
                match c.insert_events_with_deliveries(events, deliveries).await {
                    Ok(()) => return Ok(c),
                    Err(e) => tracing::debug!(error = %e, "the audit writer's connection failed; taking a new one"),
                }
            }
            let mut c = store.event_connection(true).await?;
            c.insert_events_with_deliveries(events, deliveries).await?;
            Ok::<_, dropgate_store::StoreError>(c)
        })
        .await;
        match attempt {
            Ok(Ok(c)) => {
                *conn = Some(c);
                return Ok(());
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, events = events.len(), "writing audit events failed")
            }
            Err(_) => tracing::error!(events = events.len(), "writing audit events timed out"),
        }
    }
    let Some(spool) = &shared.spool else {
        tracing::error!(
            events = events.len(),
            "audit events lost: the store refused and there is no spool"
        );
        return Err(Unrecorded);
    };
    let spool = spool.clone();
    let file = SpoolFile {
        events: events.to_vec(),
        deliveries: deliveries.to_vec(),
    };
    let gated = shared.clone();
    let appended = tokio::task::spawn_blocking(move || {
        let _gate = lock(&gated.spool_gate);
        spool.append(&file)?;
        gated.degraded.store(true, Ordering::Release);
        Ok::<_, std::io::Error>(())
    });
    match appended.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, events = events.len(), "audit events lost: the spool refused them");
            Err(Unrecorded)
        }
        Err(_) => Err(Unrecorded),
    }
}

/// Moves spooled batches into the store, oldest first, and ends the
/// degraded mode once the spool is empty.
async fn replay_spool(store: Store, shared: Arc<Shared>) {
    let Some(spool) = shared.spool.clone() else {
        return;
    };
    loop {
        adopt_journals(&shared).await;
        let files = {
            let s = spool.clone();
            tokio::task::spawn_blocking(move || s.pending())
                .await
                .unwrap_or_default()
        };
        let mut all_in = true;
        for path in files {
            let s = spool.clone();
            let p = path.clone();
            let Ok(Ok(batch)) = tokio::task::spawn_blocking(move || s.read(&p)).await else {
                tracing::error!(file = %path.display(), "unreadable audit spool file moved to spool/rejected");
                let s = spool.clone();
                let _ = tokio::task::spawn_blocking(move || s.reject(&path)).await;
                continue;
            };
            let attempt = tokio::time::timeout(
                STORE_TIMEOUT,
                store.insert_events_with_deliveries(&batch.events, &batch.deliveries),
            )
            .await;
            if !matches!(attempt, Ok(Ok(()))) {
                // A store that answers but refuses this one file would
                // otherwise hold back every later batch for ever: set it
                // aside (with a loud log) and go on. Not when it only did not
                // answer in time or was busy (a locked SQLite file still
                // answers a ping): that file goes in later, in its turn.
                let refused = match &attempt {
                    Ok(Err(e)) if !e.is_transient() => Some(e.to_string()),
                    _ => None,
                };
                if let Some(error) = refused
                    && store.ping().await
                {
                    tracing::error!(file = %path.display(), %error,
                        "the store refuses a spooled audit batch; moved to spool/rejected");
                    let s = spool.clone();
                    let _ = tokio::task::spawn_blocking(move || s.reject(&path)).await;
                    continue;
                }
                all_in = false;
                break;
            }
            // A crash between the commit and this removal replays the file
            // once more: its events and deliveries are kept once (same keys
            // and ids; spool files from before event keys excepted).
            let s = spool.clone();
            let _ = tokio::task::spawn_blocking(move || s.remove(&path)).await;
            if !batch.deliveries.is_empty() {
                shared.deliveries.notify_one();
            }
            tracing::info!(events = batch.events.len(), "spooled audit events stored");
        }
        if all_in && shared.degraded.load(Ordering::Acquire) {
            // Batches spooled while this pass ran are picked up next pass:
            // only leave the degraded mode when the folder is really empty.
            let (s, gated) = (spool.clone(), shared.clone());
            let cleared = tokio::task::spawn_blocking(move || {
                let _gate = lock(&gated.spool_gate);
                let clear = s.pending().is_empty() && gated.retrying.load(Ordering::Acquire) == 0;
                if clear {
                    gated.degraded.store(false, Ordering::Release);
                }
                clear
            })
            .await
            .unwrap_or(false);
            if cleared {
                tracing::info!("audit log writes to the store again");
            }
        }
        tokio::time::sleep(REPLAY_EVERY).await;
    }
}

/// Moves the journal files an earlier run left (a crash, or events neither
/// stored nor spooled) into the spool, whose replay stores them: the store
/// may not take writes yet. A file that cannot be moved now is tried again
/// next pass.
async fn adopt_journals(shared: &Arc<Shared>) {
    if shared.journal.is_none() {
        return;
    }
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || adopt_journals_now(&shared)).await;
}

/// [`adopt_journals`] on the calling thread.
fn adopt_journals_now(shared: &Shared) {
    let (Some(journal), Some(spool)) = (&shared.journal, &shared.spool) else {
        return;
    };
    for path in journal.earlier() {
        let _gate = lock(&shared.spool_gate);
        let mut adopting = lock(&shared.adopting);
        let done = adopting.entry(path.clone()).or_default();
        let moved = audit_journal::read_batches(&path, BATCH, done, |events| {
            spool.append(&SpoolFile {
                events,
                deliveries: Vec::new(),
            })?;
            shared.degraded.store(true, Ordering::Release);
            Ok(())
        });
        let found = match moved {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e,
                    "cannot move an audit journal into the spool; tried again later");
                continue;
            }
        };
        if found.events > 0 {
            tracing::info!(
                events = found.events,
                "audit journal of an earlier run moved to the spool"
            );
        }
        // Until the file has left the journal, `done` (now all its
        // lines) keeps the next pass from spooling it again.
        let gone = if found.unreadable > 0 {
            // Its readable events are in the spool; what could not be
            // read stays for a person (spool/rejected), never deleted.
            tracing::error!(file = %path.display(), lines = found.unreadable,
                "unreadable lines in an audit journal; the file is moved to spool/rejected");
            spool.reject(&path)
        } else {
            if found.torn_end {
                tracing::warn!(file = %path.display(),
                    "the last line of an audit journal was cut short (a power cut) and is skipped");
            }
            match std::fs::remove_file(&path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a moved audit journal");
                    false
                }
            }
        };
        if gone {
            adopting.remove(&path);
        }
    }
}

/// Text no SQL database refuses: NUL (PostgreSQL rejects it in `TEXT`)
/// becomes U+FFFD wherever a client may have put it.
fn sanitize(e: &mut Event) {
    fn clean(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    clean(&mut e.username);
    clean(&mut e.remote_addr);
    for s in [&mut e.path, &mut e.target_path, &mut e.message]
        .into_iter()
        .flatten()
    {
        clean(s);
    }
}

/// One spooled batch.
#[derive(Serialize, Deserialize)]
struct SpoolFile {
    /// Each with its key (files written before event keys existed have
    /// none, and read as `None`).
    events: Vec<KeyedEvent>,
    deliveries: Vec<Delivery>,
}

/// A folder of fsynced batch files, named so that they sort by age.
#[derive(Clone)]
struct Spool {
    dir: PathBuf,
    seq: Arc<AtomicU64>,
}

impl Spool {
    fn new(dir: PathBuf) -> Spool {
        // Names start with the creation time, so files of an earlier run
        // sort before this run's.
        let start = chrono::Utc::now().timestamp_micros().max(0) as u64;
        Spool {
            dir,
            seq: Arc::new(AtomicU64::new(start)),
        }
    }

    fn pending(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }

    fn size(&self) -> u64 {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn append(&self, batch: &SpoolFile) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let body = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
        if self.size() + body.len() as u64 > SPOOL_MAX_BYTES {
            return Err(std::io::Error::other("audit spool full"));
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{n:020}");
        let temp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&temp, self.dir.join(format!("{name}.json")))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn read(&self, path: &std::path::Path) -> std::io::Result<SpoolFile> {
        let body = std::fs::read(path)?;
        serde_json::from_slice(&body).map_err(std::io::Error::other)
    }

    /// Sets a file the store will not take aside, out of the replay (and
    /// out of the journal); `false`: it could not be moved at all.
    fn reject(&self, path: &std::path::Path) -> bool {
        let dir = self.dir.join("rejected");
        let moved = std::fs::create_dir_all(&dir).and_then(|()| {
            let name = path.file_name().unwrap_or_default();
            std::fs::rename(path, dir.join(name))
        });
        // Never retried for ever: without the move, drop it from the replay.
        moved.is_ok() || std::fs::rename(path, path.with_extension("rejected")).is_ok()
    }

    fn sweep_temporaries(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for p in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
            if p.extension().is_some_and(|x| x == "tmp") {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }
}
