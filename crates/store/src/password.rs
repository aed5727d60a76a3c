//! argon2id password hashing on a small pool of dedicated threads, with a
//! short-lived cache of verified credentials.
//!
//! Each argon2 computation needs a 19 MiB work area. Allocated per call (as
//! `Argon2::verify_password` does), glibc did not hand those 64-byte-aligned
//! buffers back or reuse them: resident memory grew by ~19 MiB per login, to
//! several hundred MiB. Instead a fixed set of worker threads (one per core)
//! each keeps one work area for its lifetime and computes with
//! `hash_password_into_with_memory`: memory is bounded by the worker count,
//! and so is the concurrency (a login burst cannot exhaust memory). Unknown users are checked against a dummy hash
//! so the reply time does not reveal which accounts exist.
//!
//! The cache answers a repeated login with the *same correct* password for
//! the *same stored hash* without argon2 (scripts and benchmarks log in
//! hundreds of times a minute). Entries are keyed by a SHA-256 over a
//! per-process random key, the stored hash and the password, so memory never
//! holds a password, a password change (new stored hash) misses at once, and
//! wrong passwords are never cached: they always cost a full verification.
//! Verifications of one credential run one at a time, so a burst of logins
//! when its entry has expired (200 scripts starting together) costs one
//! argon2 run, not one each: the others find the fresh entry.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHasher as _;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::StoreError;

/// Longest password accepted, in bytes (argon2 would take more; nobody needs it).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane.
const POLICY_M_COST: u32 = 19 * 1024;
const POLICY_T_COST: u32 = 2;
const POLICY_P_COST: u32 = 1;

/// How long a verified credential is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered credentials (the cache is cleared when full).
const CACHE_MAX: usize = 10_000;

/// The result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Right password, hash meets policy.
    Ok,
    /// Right password, but the stored hash is below policy: store a new one.
    OkNeedsRehash,
    /// Wrong password, unknown user, or unusable hash.
    Wrong,
}

/// Held while one credential is being verified; others with it wait here.
type Gate = Arc<tokio::sync::Mutex<()>>;

/// Work for a hashing thread; it lends the job its reusable work area.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Largest work area a stored hash may ask for (256 MiB), so a corrupt or
/// hostile hash row cannot make a worker allocate without bound.
const MAX_BLOCKS: usize = 256 * 1024;

/// Hashes and verifies passwords; cheap to clone (clones share the workers).
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    params: Params,
    dummy_hash: Arc<str>,
    cache: Arc<Mutex<HashMap<[u8; 32], Instant>>>,
    cache_key: [u8; 32],
    /// One gate per credential being verified right now.
    inflight: Arc<Mutex<HashMap<[u8; 32], Gate>>>,
}

impl PasswordHasher {
    /// Starts `workers` hashing threads (they end when the last clone is dropped).
    pub fn new(workers: usize) -> Result<Self, StoreError> {
        let params = Params::new(POLICY_M_COST, POLICY_T_COST, POLICY_P_COST, None)
            .map_err(|e| StoreError::Hash(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = argon
            .hash_password(b"dropgate dummy password for unknown users")
            .map_err(|e| StoreError::Hash(e.to_string()))?
            .to_string();
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("dropgate-argon2-{i}"))
                .spawn(move || {
                    let mut work: Vec<Block> = Vec::new();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match lock(&rx).recv() {
                            Ok(job) => job,
                            Err(_) => return, // every hasher clone is gone
                        };
                        job(&mut work);
                    }
                })
                .map_err(|e| StoreError::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(PasswordHasher {
            jobs,
            params,
            dummy_hash: dummy.into(),
            cache: Arc::default(),
            cache_key: rand::random(),
            inflight: Arc::default(),
        })
    }

    /// Runs `f` on a hashing thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |work| {
            let _ = tx.send(f(work));
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, StoreError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(StoreError::PasswordTooLong);
        }
        if password.is_empty() {
            return Err(StoreError::Invalid(crate::FieldError::new(
                "password",
                "must not be empty",
            )));
        }
        let params = self.params.clone();
        let password = password.to_owned();
        self.run(move |work| hash_in(work, password.as_bytes(), params).map_err(StoreError::Hash))
            .await
            .unwrap_or_else(|| Err(StoreError::Hash("hashing threads stopped".into())))
    }

    fn cache_slot(&self, stored: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(stored.as_bytes());
        h.update([0u8]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Checks `password` against `stored` (or a dummy hash when `None`, so an
    /// unknown user costs the same time as a known one with a wrong password).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Verified {
        let Some(s) = stored.filter(|_| password.len() <= MAX_PASSWORD_LEN) else {
            return self.verify_uncached(password, stored).await;
        };
        let slot = self.cache_slot(s, password);
        if self.is_cached(&slot) {
            return Verified::Ok;
        }
        let gate = lock(&self.inflight).entry(slot).or_default().clone();
        let turn = gate.lock().await;
        // Whoever went first may have just verified this very credential.
        let result = if self.is_cached(&slot) {
            Verified::Ok
        } else {
            self.verify_uncached(password, stored).await
        };
        drop(turn);
        let mut inflight = lock(&self.inflight);
        // The map's clone and ours: nobody else waits at this gate.
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(&slot);
        }
        result
    }

    /// Whether `slot` holds a live entry (an expired one is dropped).
    fn is_cached(&self, slot: &[u8; 32]) -> bool {
        let mut cache = lock(&self.cache);
        if cache.get(slot).is_some_and(|t| t.elapsed() < CACHE_TTL) {
            return true;
        }
        cache.remove(slot);
        false
    }

    /// One argon2 verification; a right password meeting the policy is
    /// remembered.
    async fn verify_uncached(&self, password: &str, stored: Option<&str>) -> Verified {
        let known = stored.is_some();
        let hash = stored
            .map(str::to_owned)
            .unwrap_or_else(|| self.dummy_hash.to_string());
        // An over-long password still costs one verification, against the dummy.
        let (password, known) = if password.len() > MAX_PASSWORD_LEN {
            (String::new(), false)
        } else {
            (password.to_owned(), known)
        };
        let policy = self.params.clone();
        let stored_copy = hash.clone();
        let pw_copy = password.clone();
        let result = self
            .run(move |work| {
                let Ok(parsed) = PasswordHash::new(&hash) else {
                    return Verified::Wrong;
                };
                let ok = verify_in(work, password.as_bytes(), &parsed);
                if !ok || !known {
                    return Verified::Wrong;
                }
                let meets_policy = parsed.algorithm.as_str() == "argon2id"
                    && Params::try_from(&parsed)
                        .map(|p| {
                            p.m_cost() >= policy.m_cost()
                                && p.t_cost() >= policy.t_cost()
                                && p.p_cost() >= policy.p_cost()
                        })
                        .unwrap_or(false);
                if meets_policy {
                    Verified::Ok
                } else {
                    Verified::OkNeedsRehash
                }
            })
            .await
            .unwrap_or(Verified::Wrong);
        if result == Verified::Ok {
            let slot = self.cache_slot(&stored_copy, &pw_copy);
            let mut cache = lock(&self.cache);
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, t| t.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(slot, Instant::now());
        }
        result
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing is left half-updated under these locks by a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Grows the work area to `blocks` (never shrinks: it is reused).
fn work_area(work: &mut Vec<Block>, blocks: usize) -> Option<&mut [Block]> {
    if blocks > MAX_BLOCKS {
        return None;
    }
    if work.len() < blocks {
        work.resize(blocks, Block::default());
    }
    work.get_mut(..blocks)
}

/// A new PHC string for `password` with the policy parameters.
fn hash_in(work: &mut Vec<Block>, password: &[u8], params: Params) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let mut out = [0u8; 32];
    let blocks = params.block_count();
    let area = work_area(work, blocks).ok_or("work area too large")?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt_bytes, &mut out, area)
        .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(Salt::new(&salt_bytes).map_err(|e| e.to_string())?),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Recomputes a stored hash for `password` in the reusable work area and
/// compares in constant time.
fn verify_in(work: &mut Vec<Block>, password: &[u8], phc: &PasswordHash) -> bool {
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(phc) else {
        return false;
    };
    let expected = expected.as_bytes();
    let mut out = vec![0u8; expected.len()];
    let Some(area) = work_area(work, params.block_count()) else {
        return false;
    };
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, area)
        .is_err()
    {
        return false;
    }
    out.iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn hash_verify_and_policy() {
        let h = PasswordHasher::new(2).unwrap();
        let phc = h.hash("s3cret").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // Interoperable with the argon2 crate's own verifier.
        use argon2::password_hash::PasswordVerifier as _;
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"s3cret", &parsed)
                .is_ok()
        );
        assert!(Argon2::default().verify_password(b"nope", &parsed).is_err());
        assert_eq!(h.verify("s3cret", Some(&phc)).await, Verified::Ok);
        assert_eq!(h.verify("wrong", Some(&phc)).await, Verified::Wrong);
        assert_eq!(h.verify("s3cret", None).await, Verified::Wrong);
        assert!(matches!(
            h.hash(&"x".repeat(1025)).await,
            Err(StoreError::PasswordTooLong)
        ));
        assert_eq!(
            h.verify(&"x".repeat(1025), Some(&phc)).await,
            Verified::Wrong
        );

        // A weaker (but valid) hash verifies and asks to be re-hashed.
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"old")
        .unwrap()
        .to_string();
        assert_eq!(h.verify("old", Some(&weak)).await, Verified::OkNeedsRehash);
        assert_eq!(
            h.verify("old", Some(&weak)).await,
            Verified::OkNeedsRehash,
            "never cached"
        );
    }

    #[tokio::test]
    async fn cache_shortcuts_only_the_right_password_for_the_same_hash() {
        let h = PasswordHasher::new(1).unwrap();
        let phc = h.hash("pw-1").await.unwrap();
        let t = Instant::now();
        assert_eq!(h.verify("pw-1", Some(&phc)).await, Verified::Ok);
        let first = t.elapsed();
        let t = Instant::now();
        for _ in 0..20 {
            assert_eq!(h.verify("pw-1", Some(&phc)).await, Verified::Ok);
        }
        assert!(
            t.elapsed() < first,
            "20 cached verifications are cheaper than one argon2 run"
        );
        // Wrong passwords are never cached; a new stored hash misses.
        assert_eq!(h.verify("pw-2", Some(&phc)).await, Verified::Wrong);
        let other = h.hash("pw-1").await.unwrap();
        let slot_old = h.cache_slot(&phc, "pw-1");
        let slot_new = h.cache_slot(&other, "pw-1");
        assert_ne!(slot_old, slot_new);
        assert!(!h.cache.lock().unwrap().contains_key(&slot_new));
        assert_eq!(h.verify("pw-1", Some(&other)).await, Verified::Ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_logins_after_expiry_costs_one_argon2_run() {
        let h = PasswordHasher::new(1).unwrap();
        let phc = h.hash("pw-burst").await.unwrap();
        let t = Instant::now();
        assert_eq!(h.verify("pw-burst", Some(&phc)).await, Verified::Ok);
        let one_run = t.elapsed();
        // Expire the entry, as 5 minutes would.
        h.cache.lock().unwrap().clear();
        let t = Instant::now();
        let logins: Vec<_> = (0..16)
            .map(|_| {
                let (h, phc) = (h.clone(), phc.clone());
                tokio::spawn(async move { h.verify("pw-burst", Some(&phc)).await })
            })
            .collect();
        for login in logins {
            assert_eq!(login.await.unwrap(), Verified::Ok);
        }
        // 16 argon2 runs on one hashing thread would take 16 times as long.
        assert!(
            t.elapsed() < one_run * 8,
            "16 concurrent logins took {:?}, one argon2 run {one_run:?}",
            t.elapsed()
        );
        assert!(
            h.inflight.lock().unwrap().is_empty(),
            "gates are cleaned up"
        );
        // Wrong passwords are still each checked in full.
        assert_eq!(h.verify("nope", Some(&phc)).await, Verified::Wrong);
        assert!(h.inflight.lock().unwrap().is_empty());
    }
}
