//! Per-account transfer rates (`bandwidth.upload_kib_s`, `download_kib_s`),
//! shared by every transfer of the account at once, on every protocol.
//!
//! A GCRA limiter from `governor` per account and direction, counting bytes:
//! a transfer takes its bytes from the limiter before it moves them and waits
//! (a tokio timer, no thread) when there are none, so concurrent transfers
//! share the rate smoothly instead of each getting it whole.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dropgate_store::Bandwidth;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware>;

/// Bytes a transfer may move at once after being idle, as a share of one
/// second's worth: small enough that short transfers keep to the rate,
/// large enough for whole protocol chunks.
const BURST_DIVISOR: u32 = 8;
/// The smallest burst, so one SFTP or FTP chunk never needs splitting into
/// many tiny waits.
const MIN_BURST: u32 = 64 * 1024;

/// One direction's rate limit.
pub(crate) struct Throttle {
    limiter: Limiter,
    clock: MonotonicClock,
    burst: u32,
    /// Waiters take their turn in the order they came (tokio's mutex is
    /// fair): the limiter alone lets whoever wakes first win, so one of an
    /// SFTP client's 64 pipelined reads could wait a minute while later ones
    /// went ahead, and its in-order reply held up all the others.
    queue: tokio::sync::Mutex<()>,
}

impl Throttle {
    fn new(kib_s: u64) -> Option<Arc<Throttle>> {
        if kib_s == 0 {
            return None;
        }
        // Cells are bytes; u32 allows up to 4 GiB/s, far beyond any limit set.
        let rate = u32::try_from(kib_s.saturating_mul(1024)).unwrap_or(u32::MAX);
        let rate = NonZeroU32::new(rate)?;
        let burst = (rate.get() / BURST_DIVISOR).max(MIN_BURST.min(rate.get()));
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst)?);
        let clock = MonotonicClock;
        Some(Arc::new(Throttle {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            burst,
            queue: tokio::sync::Mutex::new(()),
        }))
    }

    /// Waits until `bytes` may move, after those who asked before. A take
    /// larger than a burst queues again for each burst-sized piece, so
    /// concurrent transfers of the account alternate instead of one large
    /// read holding the others back for its whole wait.
    pub(crate) async fn take(&self, bytes: u64) {
        let mut left = bytes;
        while left > 0 {
            let n = u32::try_from(left.min(u64::from(self.burst))).unwrap_or(self.burst);
            let Some(cells) = NonZeroU32::new(n) else {
                return;
            };
            let _turn = self.queue.lock().await;
            loop {
                match self.limiter.check_n(cells) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                    }
                    // Cannot happen (n <= burst); never spin on it.
                    Err(_) => return,
                }
            }
            left -= u64::from(n);
        }
    }
}

/// An account's limiters for both directions.
#[derive(Clone, Default)]
pub(crate) struct AccountThrottles {
    pub(crate) upload: Option<Arc<Throttle>>,
    pub(crate) download: Option<Arc<Throttle>>,
}

/// The limiters of every account with a bandwidth limit, so that all its
/// sessions draw from the same ones.
#[derive(Default)]
pub(crate) struct BandwidthTracker {
    accounts: Mutex<HashMap<String, (Bandwidth, AccountThrottles)>>,
}

impl BandwidthTracker {
    /// The limiters for an account; new ones when its limits changed (the
    /// sessions still holding the old ones keep the old rate until they end).
    pub(crate) fn for_account(&self, username: &str, limits: Bandwidth) -> AccountThrottles {
        let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if limits == Bandwidth::default() {
            map.remove(username);
            return AccountThrottles::default();
        }
        if let Some((current, throttles)) = map.get(username)
            && *current == limits
        {
            return throttles.clone();
        }
        let throttles = AccountThrottles {
            upload: Throttle::new(limits.upload_kib_s),
            download: Throttle::new(limits.download_kib_s),
        };
        map.insert(username.to_owned(), (limits, throttles.clone()));
        throttles
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn keeps_to_the_rate_across_concurrent_takers() {
        let tracker = BandwidthTracker::default();
        let limits = Bandwidth {
            upload_kib_s: 1024,
            download_kib_s: 0,
        };
        let a = tracker.for_account("x", limits);
        let b = tracker.for_account("x", limits);
        assert!(a.download.is_none());
        let (ta, tb) = (a.upload.clone(), b.upload.clone());
        let started = Instant::now();
        // 2 MiB in 64 KiB pieces from two tasks at once: shared, about 2 s
        // (less one burst of 128 KiB).
        let run = |t: Option<Arc<Throttle>>| async move {
            if let Some(t) = t {
                for _ in 0..16 {
                    t.take(64 * 1024).await;
                }
            }
        };
        tokio::join!(run(ta), run(tb));
        let secs = started.elapsed().as_secs_f64();
        assert!((1.7..2.4).contains(&secs), "{secs}");
    }

    #[tokio::test]
    async fn waiters_take_their_turn_in_the_order_they_came() {
        let tracker = BandwidthTracker::default();
        let limits = Bandwidth {
            upload_kib_s: 0,
            download_kib_s: 512,
        };
        let t = tracker
            .for_account("x", limits)
            .download
            .unwrap_or_else(|| unreachable!());
        // The burst spent, one transfer asks for a whole burst (1/8 s of the
        // rate), then 16 others for 4 KiB each. Without the queue the small
        // ones, needing less, kept slipping ahead of the large one.
        t.take(64 * 1024).await;
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..17 {
            let (t, done) = (t.clone(), done.clone());
            let bytes = if i == 0 { 64 * 1024 } else { 4 * 1024 };
            tasks.push(tokio::spawn(async move {
                t.take(bytes).await;
                done.lock().unwrap_or_else(|p| p.into_inner()).push(i);
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap_or_else(|_| unreachable!());
        }
        let order = done.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(order, (0..17).collect::<Vec<_>>());
    }

    #[test]
    fn unlimited_and_changed_limits() {
        let tracker = BandwidthTracker::default();
        let none = tracker.for_account("x", Bandwidth::default());
        assert!(none.upload.is_none() && none.download.is_none());
        let one = Bandwidth {
            upload_kib_s: 10,
            download_kib_s: 20,
        };
        let a = tracker.for_account("x", one);
        let same = tracker.for_account("x", one);
        assert!(Arc::ptr_eq(
            a.upload.as_ref().unwrap_or_else(|| unreachable!()),
            same.upload.as_ref().unwrap_or_else(|| unreachable!())
        ));
        let other = tracker.for_account(
            "x",
            Bandwidth {
                upload_kib_s: 11,
                download_kib_s: 20,
            },
        );
        assert!(!Arc::ptr_eq(
            a.upload.as_ref().unwrap_or_else(|| unreachable!()),
            other.upload.as_ref().unwrap_or_else(|| unreachable!())
        ));
    }
}
