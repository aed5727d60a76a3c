//! The audit trail: events are queued without blocking a transfer and written
//! to the store in batches by one task.

use std::time::Duration;

use tokio::time::Instant;

use dropgate_store::{Event, Store};
use tokio::sync::{mpsc, oneshot};

/// Most events written in one transaction.
const BATCH: usize = 256;
/// How long the writer waits for more events after the first of a batch.
/// Busy periods (hundreds of small uploads a second) then cost a few
/// transactions a second instead of one per event; a flush ends the wait.
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
}

impl AuditLog {
    /// Starts the writer task on `store`.
    pub fn start(store: Store) -> AuditLog {
        // Unbounded on purpose: an audit record must never be dropped, and
        // recording must work from `Drop` (an aborted transfer); events are small.
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut msgs = Vec::with_capacity(BATCH);
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut msgs, BATCH).await > 0 {
                let deadline = Instant::now() + LINGER;
                while msgs.len() < BATCH && !msgs.iter().any(|m| matches!(m, Msg::Flush(_))) {
                    let room = BATCH - msgs.len();
                    match tokio::time::timeout_at(deadline, rx.recv_many(&mut msgs, room)).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                let mut flushes = Vec::new();
                for m in msgs.drain(..) {
                    match m {
                        Msg::Event(e) => batch.push(*e),
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
        });
        AuditLog { tx }
    }

    /// Queues one event.
    pub fn record(&self, event: Event) {
        if self.tx.send(Msg::Event(Box::new(event))).is_err() {
            tracing::error!("audit writer stopped; event lost");
        }
    }

    /// Waits until every event queued so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}
