//! The audit trail: events are queued without blocking a transfer and written
//! to the store in batches by one task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use dropgate_store::{Event, Store};

/// Most events written in one transaction.
const BATCH: usize = 256;
/// How long the writer gathers events after the first of a batch. Busy
/// periods (hundreds of small uploads a second) then cost a few transactions
/// a second instead of one per event; a flush or a full batch ends the wait.
const LINGER: Duration = Duration::from_millis(25);

enum Msg {
    Event(Box<Event>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Sends events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

/// What senders and the writer share besides the queue.
#[derive(Default)]
struct Shared {
    /// Events queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// Ends the writer's linger early (a flush, a full batch).
    hurry: Notify,
}

impl AuditLog {
    /// Starts the writer task on `store`.
    pub fn start(store: Store) -> AuditLog {
        // Unbounded on purpose: an audit record must never be dropped, and
        // recording must work from `Drop` (an aborted transfer); events are small.
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let shared = Arc::new(Shared::default());
        tokio::spawn(write_events(store, rx, shared.clone()));
        AuditLog { tx, shared }
    }

    /// Queues one event.
    pub fn record(&self, event: Event) {
        if self.tx.send(Msg::Event(Box::new(event))).is_err() {
            tracing::error!("audit writer stopped; event lost");
            return;
        }
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) + 1 == BATCH {
            self.shared.hurry.notify_one();
        }
    }

    /// Waits until every event queued so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            self.shared.hurry.notify_one();
            let _ = wait.await;
        }
    }
}

/// The writer: wakes for the first event of a batch, then sleeps through the
/// linger instead of waking for every event that follows (each wake of an
/// idle task from a busy worker can cost a thread switch: the audit trail
/// must not add latency to the transfer it records).
async fn write_events(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>, shared: Arc<Shared>) {
    let mut msgs = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut msgs, BATCH).await > 0 {
        let deadline = Instant::now() + LINGER;
        let mut flushing = msgs.iter().any(|m| matches!(m, Msg::Flush(_)));
        while !flushing && msgs.len() < BATCH {
            let woken = tokio::select! {
                () = tokio::time::sleep_until(deadline) => false,
                () = shared.hurry.notified() => true,
            };
            let room = BATCH - msgs.len();
            if !rx.is_empty() {
                rx.recv_many(&mut msgs, room).await;
            }
            flushing = msgs.iter().any(|m| matches!(m, Msg::Flush(_)));
            if !woken {
                break;
            }
        }
        let mut flushes = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => {
                    shared.queued.fetch_sub(1, Ordering::AcqRel);
                    batch.push(*e)
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        let mut attempt = 0;
        while let Err(e) = store.insert_events(&batch).await {
            attempt += 1;
            tracing::error!(error = %e, events = batch.len(), attempt, "writing audit events failed");
            if attempt >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
        batch.clear();
        for f in flushes {
            let _ = f.send(());
        }
    }
}
