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
//! progress than it has workers, so one worker is always free to poll the
//! sockets (tokio's I/O driver belongs to whichever worker parks) and to
//! steal the blocked one's run queue; and no such call was slow lately.
//! What cannot be stolen waits for the call: the task in the blocked
//! worker's LIFO slot (the last one the upload's task woke) and tasks that
//! yielded (`block_in_place` hands those on first). A call that took over
//! [`SLOW`], or one still running after it, sends every later one through
//! `block_in_place` for [`BACK_OFF_FACTOR`] times as long as it took (at
//! most [`BACK_OFF`]): a disk that keeps stalling costs a stall of the calls
//! then in progress (at most one worker less than the runtime has, one on
//! two cores) per back-off, about 1% of their time, while one slow call
//! among thousands of quick ones (ext4 turning a folder's first block
//! into a hashed index as it fills, 1.1-1.2 ms here) costs a tenth of a
//! second of hand-offs, not ten seconds of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

/// A brief call that took longer than this says the disk is slow now.
pub(crate) const SLOW: Duration = Duration::from_millis(1);
/// After a slow call, brief calls hand the worker off for this many times
/// as long as it took (so a disk that stays slow holds up the workers
/// about 1% of the time).
pub(crate) const BACK_OFF_FACTOR: u32 = 100;
/// The longest back-off.
pub(crate) const BACK_OFF: Duration = Duration::from_secs(10);

/// Where a blocking call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocking {
    /// A few metadata calls, or a small copy into the page cache: on the
    /// calling worker when [`OnWorker`] allows it, else as `Short`.
    Brief,
    /// On this thread with `block_in_place`: the worker's other tasks move
    /// to another thread, so a slow call stalls only its own session. Its
    /// own task waits whole: futures joined or selected beside the call
    /// (a socket read, a cancellation) are not polled until it returns.
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
    /// Turns in progress (the top 16 bits) and when the latest of them
    /// began (the low 48, microseconds since `epoch`: 8.9 years), in one
    /// word so that a turn is counted and dated at once.
    turns: AtomicU64,
    /// Microseconds since `epoch` until which brief calls hand off.
    off_until_us: AtomicU64,
    epoch: Instant,
}

const COUNT_SHIFT: u32 = 48;
const START_MASK: u64 = (1 << COUNT_SHIFT) - 1;

impl OnWorker {
    pub(crate) fn new() -> OnWorker {
        OnWorker {
            turns: AtomicU64::new(0),
            off_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The process's one (every runtime's workers share the disk).
    fn process() -> &'static OnWorker {
        static ON_WORKER: std::sync::OnceLock<OnWorker> = std::sync::OnceLock::new();
        ON_WORKER.get_or_init(OnWorker::new)
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Turns in progress.
    #[cfg(test)]
    fn running(&self) -> u64 {
        self.turns.load(Ordering::Acquire) >> COUNT_SHIFT
    }

    /// Brief calls hand off for a while after `now`, a call having taken
    /// `took` (`BACK_OFF_FACTOR` times that, at most `BACK_OFF`).
    fn back_off(&self, now: Instant, took: Duration) -> Duration {
        let span = took.saturating_mul(BACK_OFF_FACTOR).min(BACK_OFF);
        self.off_until_us
            .fetch_max(self.micros(now + span), Ordering::Relaxed);
        span
    }

    /// A turn to run one brief call on a worker of a runtime with `workers`
    /// workers; `None`: hand the worker off instead.
    pub(crate) fn take(&self, workers: usize) -> Option<Turn<'_>> {
        let now = Instant::now();
        let now_us = self.micros(now);
        if now_us < self.off_until_us.load(Ordering::Relaxed) {
            return None;
        }
        let start = now_us.min(START_MASK);
        // Decided by the closure's last run (it runs again after a lost race):
        // how long the latest turn in progress has run, if over `SLOW`.
        let mut slow = None;
        let taken = self
            .turns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (n, latest) = (v >> COUNT_SHIFT, v & START_MASK);
                // Turns in progress, the latest begun over `SLOW` ago: all
                // of them are slow, and the disk with them.
                let running = start.saturating_sub(latest);
                slow = (n > 0 && running > SLOW.as_micros() as u64).then_some(running);
                // Never every worker at once: one stays free for the
                // others' tasks.
                (slow.is_none() && n + 1 < workers as u64)
                    .then(|| ((n + 1) << COUNT_SHIFT) | latest.max(start))
            })
            .is_ok();
        if let Some(running) = slow {
            // For as long as it has run so far; its end extends that.
            self.back_off(now, Duration::from_micros(running));
        }
        // Not `then_some`: a turn made and dropped would give back a count
        // it never took.
        taken.then(|| Turn {
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
        let ended = Instant::now();
        let took = ended.saturating_duration_since(self.started);
        // The back-off before the turn is given back: no call may start on
        // a worker in between.
        let span = (took > SLOW).then(|| self.on.back_off(ended, took));
        self.on.turns.fetch_sub(1 << COUNT_SHIFT, Ordering::AcqRel);
        if let Some(span) = span {
            tracing::debug!(
                took_us = took.as_micros() as u64,
                back_off_ms = span.as_millis() as u64,
                "a create or commit on a worker was slow: hand-offs for a while"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `on` as if no call had been slow (a loaded machine can make any
    /// turn in these tests take over `SLOW`).
    fn fresh(on: &OnWorker) -> &OnWorker {
        on.off_until_us.store(0, Ordering::Relaxed);
        let now = on.micros(Instant::now());
        on.turns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v & !START_MASK) | now)
            })
            .unwrap();
        on
    }

    #[test]
    fn one_worker_always_stays_free() {
        let on = OnWorker::new();
        assert!(on.take(1).is_none(), "a lone worker never blocks");
        let first = fresh(&on).take(3).unwrap();
        let second = fresh(&on).take(3).unwrap();
        assert!(
            fresh(&on).take(3).is_none(),
            "two of three workers are busy"
        );
        drop(first);
        let third = fresh(&on).take(3).unwrap();
        assert!(fresh(&on).take(3).is_none());
        drop((second, third));
        assert_eq!(on.running(), 0);
    }

    /// How long brief calls are off from now on.
    fn off_for(on: &OnWorker) -> Duration {
        Duration::from_micros(
            on.off_until_us
                .load(Ordering::Relaxed)
                .saturating_sub(on.micros(Instant::now())),
        )
    }

    #[test]
    fn a_slow_call_sends_the_next_ones_to_other_threads() {
        let on = OnWorker::new();
        assert_eq!(on.take(2).unwrap().run(|| 7), 7);
        let took = SLOW + Duration::from_millis(20);
        fresh(&on).take(2).unwrap().run(|| std::thread::sleep(took));
        assert!(on.take(2).is_none(), "backing off after a slow call");
        assert!(on.take(8).is_none(), "whatever the workers");
        assert_eq!(on.running(), 0);
        assert!(fresh(&on).take(2).is_some(), "the back-off ends");
    }

    #[test]
    fn the_back_off_grows_with_the_slow_call_up_to_a_limit() {
        let on = OnWorker::new();
        let now = Instant::now();
        let short = SLOW + Duration::from_millis(1);
        assert_eq!(on.back_off(now, short), short * BACK_OFF_FACTOR);
        let off = off_for(&on);
        assert!(
            off <= short * BACK_OFF_FACTOR && off > Duration::ZERO,
            "{off:?}"
        );
        // A longer stall extends it; a shorter one never shortens it.
        assert_eq!(on.back_off(now, Duration::from_secs(3600)), BACK_OFF);
        on.back_off(now, short);
        assert!(off_for(&on) > BACK_OFF - Duration::from_secs(1));
    }

    #[test]
    fn a_call_still_running_past_the_limit_stops_new_ones() {
        let on = OnWorker::new();
        let stuck = fresh(&on).take(4).unwrap();
        std::thread::sleep(SLOW + Duration::from_millis(2));
        assert!(on.take(4).is_none(), "the running turn is slow already");
        assert_eq!(on.running(), 1, "the refused turn is not counted");
        assert!(
            off_for(&on) > Duration::ZERO,
            "the refusal started a back-off before the slow turn ended"
        );
        drop(stuck);
        assert_eq!(on.running(), 0);
    }

    #[test]
    fn a_panicking_call_gives_its_turn_back() {
        let on = OnWorker::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on.take(2).unwrap().run(|| panic!("boom"))
        }));
        assert!(r.is_err());
        // (Unwinding may have taken long enough to count as slow.)
        assert_eq!(on.running(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn brief_calls_take_a_turn_on_the_worker_and_long_ones_go_to_the_pool() {
        let on = OnWorker::process();
        let (on_worker, backing_off) = run(Blocking::Brief, move || {
            let off = on.micros(Instant::now()) < on.off_until_us.load(Ordering::Relaxed);
            (on.running() > 0, off)
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
