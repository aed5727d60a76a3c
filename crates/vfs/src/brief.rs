//! Where a blocking call that an upload waits for runs: on the calling tokio
//! worker itself, with `block_in_place`, or on the blocking pool.
//!
//! tokio cannot hand a worker's tasks to another thread lazily, once a
//! system call turns out to be slow, as Go's scheduler does. So every
//! `block_in_place` wakes an idle thread to take over the worker and parks
//! the old one afterwards, whether the call took 20 µs or 20 ms: on a small
//! FTP upload, the one hand-off left was 15% of the time a file took (2,000
//! × 4 KiB, lftp one at a time; docs/benchmarks.md, session 25). A create or
//! a page-cache commit normally takes tens of microseconds, but can wait for
//! the disk (metadata blocks evicted, a journal commit, dirty-page
//! throttling: session 19 saw creates of 150-1,565 µs on one VM), and then
//! every task queued on that worker would wait with it.
//!
//! [`OnWorker`] runs such a call on the worker only while that cannot hurt
//! much: the runtime has at least two workers, and fewer such calls are in
//! progress than it has workers, so one worker is always free to run the
//! tasks a blocked one holds (tokio's idle workers steal them) and to poll
//! the sockets; and no such call was slow lately. A call that took over
//! [`SLOW`] sends every later one through `block_in_place` for [`BACK_OFF`]:
//! a disk that stalls costs at most one stalled worker per back-off.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

/// A brief call that took longer than this says the disk is slow now.
pub(crate) const SLOW: Duration = Duration::from_millis(1);
/// How long brief calls hand the worker off after a slow one.
pub(crate) const BACK_OFF: Duration = Duration::from_secs(10);

/// Where a blocking call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// A few metadata calls, or a small copy into the page cache: on the
    /// calling worker when [`OnWorker`] allows it, else as `Short`.
    Brief,
    /// On this thread with `block_in_place`: the worker's other tasks move
    /// to another thread, so a slow call stalls only its own session.
    Short,
    /// On the blocking pool: may take a while (a sync, a prefix copy).
    Long,
}

/// Runs `f` as `how` says. `Brief` and `Short` need the multi-thread
/// runtime (`block_in_place` panics on a current-thread one, which tests
/// use): elsewhere they run on the blocking pool.
pub(crate) async fn run<T, F>(how: Blocking, f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let handle = match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread && how != Blocking::Long => h,
        _ => return tokio::task::spawn_blocking(f).await,
    };
    if how == Blocking::Brief
        && let Some(turn) = OnWorker::process().take(handle.metrics().num_workers())
    {
        return Ok(turn.run(f));
    }
    Ok(tokio::task::block_in_place(f))
}

/// Brief calls on the workers themselves: how many are in progress, and
/// until when they are off because one was slow.
pub(crate) struct OnWorker {
    running: AtomicUsize,
    /// Milliseconds since `epoch` until which brief calls hand off.
    off_until_ms: AtomicU64,
    epoch: Instant,
}

impl OnWorker {
    pub(crate) fn new() -> OnWorker {
        OnWorker {
            running: AtomicUsize::new(0),
            off_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The process's one (every runtime's workers share the disk).
    fn process() -> &'static OnWorker {
        static ON_WORKER: std::sync::OnceLock<OnWorker> = std::sync::OnceLock::new();
        ON_WORKER.get_or_init(OnWorker::new)
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// A turn to run one brief call on a worker of a runtime with `workers`
    /// workers; `None`: hand the worker off instead.
    pub(crate) fn take(&self, workers: usize) -> Option<Turn<'_>> {
        let now = Instant::now();
        if self.millis(now) < self.off_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        // Never every worker at once: one stays free for the others' tasks.
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + 1 < workers).then_some(n + 1)
            })
            .ok()?;
        Some(Turn {
            on: self,
            started: now,
        })
    }
}

/// One brief call in progress on a worker; its end is measured, a panic
/// included.
pub(crate) struct Turn<'a> {
    on: &'a OnWorker,
    started: Instant,
}

impl Turn<'_> {
    pub(crate) fn run<T>(self, f: impl FnOnce() -> T) -> T {
        f()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.on.running.fetch_sub(1, Ordering::AcqRel);
        let ended = Instant::now();
        let took = ended.saturating_duration_since(self.started);
        if took > SLOW {
            let until = self.on.millis(ended + BACK_OFF);
            self.on.off_until_ms.fetch_max(until, Ordering::Relaxed);
            tracing::debug!(
                took_us = took.as_micros() as u64,
                "a create or commit on a worker was slow: hand-offs for the next {} s",
                BACK_OFF.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_worker_always_stays_free() {
        let on = OnWorker::new();
        assert!(on.take(1).is_none(), "a lone worker never blocks");
        let first = on.take(3).unwrap();
        let second = on.take(3).unwrap();
        assert!(on.take(3).is_none(), "two of three workers are busy");
        drop(first);
        let third = on.take(3).unwrap();
        assert!(on.take(3).is_none());
        drop((second, third));
        assert_eq!(on.running.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_slow_call_sends_the_next_ones_to_other_threads() {
        let on = OnWorker::new();
        assert_eq!(on.take(2).unwrap().run(|| 7), 7);
        assert!(on.take(2).is_some(), "a fast call changes nothing");
        on.take(2)
            .unwrap()
            .run(|| std::thread::sleep(SLOW + Duration::from_millis(2)));
        assert!(on.take(2).is_none(), "backing off after a slow call");
        assert_eq!(on.running.load(Ordering::Relaxed), 0);
        // The back-off ends: pretend it was set long ago.
        on.off_until_ms.store(0, Ordering::Relaxed);
        assert!(on.take(2).is_some());
    }

    #[test]
    fn a_panicking_call_gives_its_turn_back() {
        let on = OnWorker::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on.take(2).unwrap().run(|| panic!("boom"))
        }));
        assert!(r.is_err());
        // (Unwinding may have taken long enough to count as slow.)
        assert_eq!(on.running.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn brief_calls_take_a_turn_on_the_worker_and_long_ones_go_to_the_pool() {
        let on = OnWorker::process();
        let (on_worker, backing_off) = run(Blocking::Brief, move || {
            let off = on.millis(Instant::now()) < on.off_until_ms.load(Ordering::Relaxed);
            (on.running.load(Ordering::Relaxed) > 0, off)
        })
        .await
        .unwrap();
        // Only a slow call elsewhere in this process (a loaded machine) may
        // have sent it through `block_in_place` instead.
        assert!(on_worker || backing_off, "a brief call ran on the worker");
        let here = std::thread::current().id();
        let short = run(Blocking::Short, move || std::thread::current().id() == here)
            .await
            .unwrap();
        assert!(short, "a short call runs on the calling thread");
        let long = run(Blocking::Long, move || std::thread::current().id() == here)
            .await
            .unwrap();
        assert!(!long, "a long call runs on the blocking pool");
    }
}
