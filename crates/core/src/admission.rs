//! Who may connect and who may try a password: the connection caps (whole
//! server and per source) and the ban list, shared by every listener.
//!
//! A *source* is an IPv4 address, or the /64 network of an IPv6 address
//! (one IPv6 host usually owns a whole /64, so counting exact addresses would
//! let it fill every slot); IPv4-mapped IPv6 addresses count as IPv4.
//!
//! Failed logins are counted *before* the secret is verified: each attempt
//! takes its place in the count first and gives it back only if it turns out
//! right, so a burst of parallel guesses cannot all slip in while the first
//! ones are still hashing.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Most sources the ban list tracks at once. Past this, expired records are
/// dropped, then records that are not banned; memory stays bounded however
/// many addresses an attacker has (about 100 bytes a record).
const MAX_TRACKED_SOURCES: usize = 100_000;

/// The limits of `[limits]` that admission applies.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Connections at once, all protocol listeners together (0: unlimited).
    pub max_connections: usize,
    /// Connections at once from one source (0: unlimited).
    pub max_connections_per_source: usize,
    /// Failed logins from one source within `ban_window` that ban it (0: never ban).
    pub failures_before_ban: u32,
    /// The window failures are counted in.
    pub ban_window: Duration,
    /// How long a ban lasts.
    pub ban_duration: Duration,
}

impl Default for AdmissionConfig {
    /// SPEC 3's defaults.
    fn default() -> Self {
        AdmissionConfig {
            max_connections: 2000,
            max_connections_per_source: 50,
            failures_before_ban: 10,
            ban_window: Duration::from_secs(600),
            ban_duration: Duration::from_secs(1800),
        }
    }
}

/// Where a connection comes from, as the limits and bans count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Net(u64),
}

impl Source {
    /// The source an address belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    /// `203.0.113.7`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = std::net::AddrParseError;

    /// An address (`203.0.113.7`, `2001:db8::5`) or the `/64` form `Display` prints.
    fn from_str(s: &str) -> Result<Source, Self::Err> {
        let addr = s.strip_suffix("/64").unwrap_or(s);
        addr.parse::<IpAddr>().map(Source::of)
    }
}

/// Why a connection or a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source is banned for failed logins.
    #[error("source banned after repeated failed logins")]
    Banned,
    /// The whole server is at `max_connections`.
    #[error("too many connections")]
    ServerFull,
    /// The source is at `max_connections_per_ip`.
    #[error("too many connections from this address")]
    SourceFull,
    /// The source's whole failure allowance is being verified right now,
    /// and none of it came back within [`LOGIN_SLOT_WAIT`].
    #[error("too many logins being verified from this address")]
    LoginsBusy,
}

/// How long a login waits for one of its source's attempts in flight to
/// end when the rest of the allowance is taken by them.
pub(crate) const LOGIN_SLOT_WAIT: Duration = Duration::from_secs(10);

/// A ban as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BanSnapshot {
    /// The banned source (`203.0.113.7` or `2001:db8:1:2::/64`).
    pub ip: String,
    /// Failed logins counted in the window that led to the ban.
    pub failures: u32,
    /// When the ban began.
    pub banned_at: DateTime<Utc>,
    /// When it ends by itself.
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug)]
struct FailureRecord {
    /// Failed logins since `window_start`.
    failures: u32,
    /// Attempts being verified now; each becomes a failure unless it was
    /// right. `failures + pending` never exceeds the allowance.
    pending: u32,
    window_start: Instant,
    ban: Option<Ban>,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    until: Instant,
    at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// In the shared list (written there, or read from it): once it is
    /// missing from the list, another node lifted it.
    shared: bool,
}

/// A ban as the nodes exchange it (core's side of the store's `bans`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBan {
    /// The banned source.
    pub source: Source,
    /// Failed logins that led to it.
    pub failures: u32,
    /// When it began.
    pub banned_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<Source, usize>,
}

#[derive(Default)]
struct Counters {
    refused_banned: AtomicU64,
    refused_server_full: AtomicU64,
    refused_source_full: AtomicU64,
    bans: AtomicU64,
}

/// Refusal and ban counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AdmissionCounters {
    /// Connections or logins refused because the source was banned.
    pub refused_banned: u64,
    /// Connections refused at the server-wide cap.
    pub refused_server_full: u64,
    /// Connections refused at the per-source cap.
    pub refused_source_full: u64,
    /// Bans imposed since start.
    pub bans: u64,
    /// Sources banned right now.
    pub banned_now: u64,
    /// Connections admitted and still open.
    pub connections: u64,
}

/// The connection caps and the ban list of one node.
///
/// The ban list lives in this process, so the accept loops never wait on
/// the database; `Gateway::share_bans` exchanges it with the other nodes on
/// the store (`unshared_bans`, `ban_shared`, `merge_shared_bans`).
pub struct Admission {
    config: AdmissionConfig,
    counts: Mutex<Counts>,
    failures: Mutex<HashMap<Source, FailureRecord>>,
    /// Woken whenever an attempt ends, for logins waiting on their source's
    /// allowance.
    attempt_ended: tokio::sync::Notify,
    counters: Counters,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    admission: Arc<Admission>,
    source: Source,
}

impl fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPermit")
            .field("source", &self.source)
            .finish()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self.admission.lock_counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// A login attempt holding one place of its source's failure allowance.
/// Call [`LoginAttempt::succeeded`] when the secret was right (or the
/// attempt should not count, e.g. the store was down); dropping it counts a
/// failure, and the failure that reaches the allowance bans the source.
#[must_use = "a right login must call succeeded() or it counts as a failure"]
pub struct LoginAttempt {
    admission: Arc<Admission>,
    source: Source,
    counted: bool,
}

impl fmt::Debug for LoginAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("source", &self.source)
            .finish()
    }
}

impl LoginAttempt {
    /// The attempt was right: its failure is taken back (and a ban it set
    /// lifted).
    pub fn succeeded(mut self) {
        self.end(false);
    }

    fn end(&mut self, failed: bool) {
        if !self.counted {
            return;
        }
        self.counted = false;
        let admission = &self.admission;
        let mut map = admission.lock_failures();
        if let Some(r) = map.get_mut(&self.source) {
            r.pending = r.pending.saturating_sub(1);
            if failed {
                r.failures = r.failures.saturating_add(1);
                if r.failures >= admission.config.failures_before_ban && r.ban.is_none() {
                    let now = Instant::now();
                    let at = Utc::now();
                    let duration = admission.config.ban_duration;
                    r.ban = Some(Ban {
                        until: now
                            .checked_add(duration)
                            .unwrap_or(now + Duration::from_secs(10 * 365 * 24 * 3600)),
                        at,
                        expires_at: at
                            + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX),
                        shared: false,
                    });
                    admission.counters.bans.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = %self.source, failures = r.failures, "source banned after failed logins");
                }
            }
            if r.failures == 0 && r.pending == 0 && r.ban.is_none() {
                map.remove(&self.source);
            }
        }
        drop(map);
        admission.attempt_ended.notify_waiters();
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        self.end(true);
    }
}

impl Admission {
    /// Caps and ban rules from `[limits]`.
    pub fn new(config: AdmissionConfig) -> Arc<Admission> {
        Arc::new(Admission {
            config,
            counts: Mutex::default(),
            failures: Mutex::default(),
            attempt_ended: tokio::sync::Notify::new(),
            counters: Counters::default(),
        })
    }

    fn lock_counts(&self) -> MutexGuard<'_, Counts> {
        // Nothing is left half-updated under these locks by a panic.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_failures(&self) -> MutexGuard<'_, HashMap<Source, FailureRecord>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not. Every protocol
    /// listener calls this before reading a byte.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let source = Source::of(ip);
        if self.is_banned(ip) {
            self.counters.refused_banned.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Banned);
        }
        let mut c = self.lock_counts();
        if self.config.max_connections != 0 && c.total >= self.config.max_connections {
            drop(c);
            self.counters
                .refused_server_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::ServerFull);
        }
        let from_source = c.per_source.get(&source).copied().unwrap_or(0);
        if self.config.max_connections_per_source != 0
            && from_source >= self.config.max_connections_per_source
        {
            drop(c);
            self.counters
                .refused_source_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SourceFull);
        }
        c.total += 1;
        c.per_source.insert(source, from_source + 1);
        Ok(ConnectionPermit {
            admission: self.clone(),
            source,
        })
    }

    /// Whether `ip`'s source is banned right now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.ban_remaining(ip).is_some()
    }

    /// How long `ip`'s source stays banned, if it is.
    pub fn ban_remaining(&self, ip: IpAddr) -> Option<Duration> {
        let source = Source::of(ip);
        let now = Instant::now();
        let mut map = self.lock_failures();
        let ban = map.get(&source)?.ban?;
        if ban.until > now {
            return Some(ban.until - now);
        }
        // Expired: the source starts over.
        map.remove(&source);
        None
    }

    /// Takes a place in `ip`'s failure allowance for a password attempt,
    /// *before* the password is verified, or refuses it because the source
    /// is banned. At most `login_failures_before_ban` minus the failures so
    /// far are verified at once: a further attempt waits (up to
    /// [`LOGIN_SLOT_WAIT`]) until one of them ends. So a burst of parallel
    /// guesses gets exactly the allowance, and parallel *right* logins (a
    /// script, many partners behind one NAT) only wait a moment instead of
    /// banning their own address.
    pub async fn begin_login(self: &Arc<Self>, ip: IpAddr) -> Result<LoginAttempt, Refusal> {
        let source = Source::of(ip);
        let deadline = tokio::time::Instant::now() + LOGIN_SLOT_WAIT;
        loop {
            let ended = self.attempt_ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so an attempt that ends between
            // the look and the wait still wakes us.
            ended.as_mut().enable();
            if let Some(attempt) = self.try_begin_login(source)? {
                return Ok(attempt);
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err(Refusal::LoginsBusy);
            }
        }
    }

    /// One look at the allowance: an attempt, no room yet (`None`), or a ban.
    fn try_begin_login(self: &Arc<Self>, source: Source) -> Result<Option<LoginAttempt>, Refusal> {
        let threshold = self.config.failures_before_ban;
        let now = Instant::now();
        let mut map = self.lock_failures();
        if let Some(r) = map.get(&source) {
            match r.ban {
                Some(b) if b.until > now => {
                    drop(map);
                    self.counters.refused_banned.fetch_add(1, Ordering::Relaxed);
                    return Err(Refusal::Banned);
                }
                Some(_) => {
                    map.remove(&source);
                }
                None => {}
            }
        }
        if threshold == 0 {
            return Ok(Some(LoginAttempt {
                admission: self.clone(),
                source,
                counted: false,
            }));
        }
        if !map.contains_key(&source) && map.len() >= MAX_TRACKED_SOURCES {
            make_room(&mut map, now, self.config.ban_window);
        }
        if !map.contains_key(&source) && map.len() >= MAX_TRACKED_SOURCES {
            // Every tracked source is banned or busy: the ban closest to its
            // end makes room, so new sources are still counted.
            let ending = map
                .iter()
                .filter(|(_, r)| r.pending == 0)
                .min_by_key(|(_, r)| r.ban.map(|b| b.until))
                .map(|(s, _)| *s);
            if let Some(ending) = ending {
                tracing::warn!(%ending, "ban list full; ending the ban closest to its end early");
                map.remove(&ending);
            }
        }
        let r = map.entry(source).or_insert(FailureRecord {
            failures: 0,
            pending: 0,
            window_start: now,
            ban: None,
        });
        if now.duration_since(r.window_start) > self.config.ban_window {
            r.failures = 0;
            r.window_start = now;
        }
        if r.failures.saturating_add(r.pending) >= threshold {
            return Ok(None);
        }
        r.pending += 1;
        Ok(Some(LoginAttempt {
            admission: self.clone(),
            source,
            counted: true,
        }))
    }

    /// The sources banned now, longest-standing first.
    pub fn bans(&self) -> Vec<BanSnapshot> {
        let now = Instant::now();
        let map = self.lock_failures();
        let mut out: Vec<(DateTime<Utc>, BanSnapshot)> = map
            .iter()
            .filter_map(|(source, r)| {
                let b = r.ban.filter(|b| b.until > now)?;
                Some((
                    b.at,
                    BanSnapshot {
                        ip: source.to_string(),
                        failures: r.failures,
                        banned_at: b.at,
                        expires_at: b.expires_at,
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(at, _)| *at);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// Lifts the ban on `source` (and forgets its failures); `false` if it
    /// was not banned.
    pub fn lift_ban(&self, source: Source) -> bool {
        let now = Instant::now();
        let mut map = self.lock_failures();
        let banned = map
            .get(&source)
            .and_then(|r| r.ban)
            .is_some_and(|b| b.until > now);
        if banned {
            map.remove(&source);
            tracing::info!(%source, "ban lifted");
        }
        banned
    }

    /// Bans this node imposed that the other nodes do not know yet.
    pub fn unshared_bans(&self) -> Vec<SharedBan> {
        let now = Instant::now();
        self.lock_failures()
            .iter()
            .filter_map(|(source, r)| {
                let b = r.ban.filter(|b| b.until > now && !b.shared)?;
                Some(SharedBan {
                    source: *source,
                    failures: r.failures,
                    banned_at: b.at,
                    expires_at: b.expires_at,
                })
            })
            .collect()
    }

    /// Records that `source`'s ban is in the shared list now; `false` if it
    /// was lifted here meanwhile (the caller takes it out of the list again).
    pub fn ban_shared(&self, source: Source) -> bool {
        match self
            .lock_failures()
            .get_mut(&source)
            .and_then(|r| r.ban.as_mut())
        {
            Some(ban) => {
                ban.shared = true;
                true
            }
            None => false,
        }
    }

    /// Makes this node's list agree with the shared one, read at `now`:
    /// bans from other nodes apply here, and (when `complete`: the read was
    /// not cut at its limit) a shared ban missing from the list was lifted
    /// on another node. Bans not yet shared are kept.
    pub fn merge_shared_bans(&self, list: &[SharedBan], now: DateTime<Utc>, complete: bool) {
        let instant = Instant::now();
        let listed: std::collections::HashSet<Source> = list.iter().map(|b| b.source).collect();
        let mut map = self.lock_failures();
        map.retain(|source, r| match r.ban {
            Some(b) if complete && b.shared && b.until > instant && !listed.contains(source) => {
                tracing::info!(%source, "ban lifted on another node");
                false
            }
            _ => true,
        });
        for shared in list {
            let Ok(left) = (shared.expires_at - now).to_std() else {
                continue;
            };
            if left.is_zero() {
                continue;
            }
            let ban = Ban {
                until: instant + left,
                at: shared.banned_at,
                expires_at: shared.expires_at,
                shared: true,
            };
            match map.get_mut(&shared.source) {
                Some(r) => match r.ban.as_mut() {
                    Some(b) if b.until > instant => {
                        b.shared = true;
                        if ban.until > b.until {
                            *b = ban;
                        }
                    }
                    _ => {
                        r.failures = r.failures.max(shared.failures);
                        r.ban = Some(ban);
                    }
                },
                None => {
                    if map.len() >= MAX_TRACKED_SOURCES {
                        make_room(&mut map, instant, self.config.ban_window);
                    }
                    map.insert(
                        shared.source,
                        FailureRecord {
                            failures: shared.failures,
                            pending: 0,
                            window_start: instant,
                            ban: Some(ban),
                        },
                    );
                }
            }
        }
    }

    /// Counters for `/metrics`.
    pub fn counters(&self) -> AdmissionCounters {
        let now = Instant::now();
        let banned_now = self
            .lock_failures()
            .values()
            .filter(|r| r.ban.is_some_and(|b| b.until > now))
            .count() as u64;
        let connections = self.lock_counts().total as u64;
        let c = &self.counters;
        AdmissionCounters {
            refused_banned: c.refused_banned.load(Ordering::Relaxed),
            refused_server_full: c.refused_server_full.load(Ordering::Relaxed),
            refused_source_full: c.refused_source_full.load(Ordering::Relaxed),
            bans: c.bans.load(Ordering::Relaxed),
            banned_now,
            connections,
        }
    }

    /// Connections admitted and still open (cheap: no ban list scan).
    pub fn connections(&self) -> usize {
        self.lock_counts().total
    }

    /// How many sources the ban list tracks (tests check it stays bounded).
    pub fn tracked_sources(&self) -> usize {
        self.lock_failures().len()
    }
}

/// Frees at least one place in a full failure map: first everything whose
/// window and ban are over, then (if still full) records that are not bans.
fn make_room(map: &mut HashMap<Source, FailureRecord>, now: Instant, window: Duration) {
    map.retain(|_, r| match r.ban {
        _ if r.pending > 0 => true,
        Some(b) => b.until > now,
        None => now.duration_since(r.window_start) <= window,
    });
    if map.len() >= MAX_TRACKED_SOURCES {
        // Drop a tenth of the unbanned records at once, so a flood does not
        // pay this scan on every attempt.
        let victims: Vec<Source> = map
            .iter()
            .filter(|(_, r)| r.ban.is_none() && r.pending == 0)
            .map(|(s, _)| *s)
            .take(MAX_TRACKED_SOURCES / 10)
            .collect();
        for s in victims {
            map.remove(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(total: usize, per_source: usize, failures: u32) -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            max_connections: total,
            max_connections_per_source: per_source,
            failures_before_ban: failures,
            ban_window: Duration::from_secs(60),
            ban_duration: Duration::from_secs(60),
        })
    }

    #[test]
    fn sources_fold_mapped_addresses_and_ipv6_networks() {
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            "2001:db8:1:2::/64".parse::<Source>().unwrap(),
            Source::of(ip("2001:db8:1:2::77"))
        );
        assert_eq!(
            "10.0.0.1".parse::<Source>().unwrap().to_string(),
            "10.0.0.1"
        );
    }

    #[test]
    fn caps_total_and_per_source() {
        let a = admission(3, 2, 0);
        let p1 = a.admit(ip("10.0.0.1")).unwrap();
        let p2 = a.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::SourceFull);
        let p3 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::ServerFull);
        drop(p1);
        let p4 = a.admit(ip("10.0.0.3")).unwrap();
        drop((p2, p3, p4));
        assert_eq!(a.counters().connections, 0);
        assert!(a.lock_counts().per_source.is_empty());
        let c = a.counters();
        assert_eq!((c.refused_source_full, c.refused_server_full), (1, 1));
    }

    #[test]
    fn one_ipv6_network_shares_one_allowance() {
        let a = admission(0, 2, 0);
        let _p1 = a.admit(ip("2001:db8::1")).unwrap();
        let _p2 = a.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::3")).unwrap_err(), Refusal::SourceFull);
        assert!(a.admit(ip("2001:db8:0:1::1")).is_ok());
    }

    /// Whether `begin_login` is still waiting after a short while.
    async fn waits(a: &Arc<Admission>, src: IpAddr) -> bool {
        tokio::time::timeout(Duration::from_millis(50), a.begin_login(src))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn failures_are_counted_before_verification_and_ban_at_the_allowance() {
        let a = admission(0, 0, 3);
        let src = ip("192.0.2.1");
        // Three attempts in flight take the whole allowance: a fourth waits.
        let t1 = a.begin_login(src).await.unwrap();
        let t2 = a.begin_login(src).await.unwrap();
        let t3 = a.begin_login(src).await.unwrap();
        assert!(!a.is_banned(src), "nothing has failed yet");
        assert!(waits(&a, src).await);
        // One was right: its place comes back.
        t3.succeeded();
        let t4 = a.begin_login(src).await.unwrap();
        // Three failures: banned, on every door.
        drop((t1, t2));
        assert!(!a.is_banned(src));
        drop(t4);
        assert!(a.is_banned(src));
        assert_eq!(a.begin_login(src).await.unwrap_err(), Refusal::Banned);
        assert_eq!(a.admit(src).unwrap_err(), Refusal::Banned);
        assert!(a.admit(ip("192.0.2.2")).is_ok(), "other sources unaffected");
        let bans = a.bans();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].ip, "192.0.2.1");
        assert_eq!(bans[0].failures, 3);
        assert!(a.lift_ban(Source::of(src)));
        assert!(!a.lift_ban(Source::of(src)));
        assert!(a.begin_login(src).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_of_parallel_guesses_gets_exactly_the_allowance() {
        let a = admission(0, 0, 5);
        let src = ip("192.0.2.7");
        let tries: Vec<_> = (0..64)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let attempt = a.begin_login(src).await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(attempt); // wrong password
                    Ok::<(), Refusal>(())
                })
            })
            .collect();
        let mut verified = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(()) => verified += 1,
                Err(r) => assert_eq!(r, Refusal::Banned),
            }
        }
        assert_eq!(verified, 5);
        assert!(a.is_banned(src));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_right_logins_never_ban_their_address() {
        let a = admission(0, 0, 3);
        let src = ip("192.0.2.8");
        let logins: Vec<_> = (0..64)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    let attempt = a.begin_login(src).await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    attempt.succeeded();
                    Ok::<(), Refusal>(())
                })
            })
            .collect();
        for l in logins {
            l.await.unwrap().unwrap();
        }
        assert!(!a.is_banned(src));
        assert_eq!(a.tracked_sources(), 0);
    }

    #[tokio::test]
    async fn a_right_password_does_not_count() {
        let a = admission(0, 0, 2);
        let src = ip("192.0.2.9");
        for _ in 0..10 {
            a.begin_login(src).await.unwrap().succeeded();
        }
        assert!(!a.is_banned(src));
        assert_eq!(a.tracked_sources(), 0);
    }

    #[tokio::test]
    async fn bans_expire() {
        let a = Admission::new(AdmissionConfig {
            max_connections: 0,
            max_connections_per_source: 0,
            failures_before_ban: 1,
            ban_window: Duration::from_secs(60),
            ban_duration: Duration::from_millis(20),
        });
        let src = ip("192.0.2.3");
        drop(a.begin_login(src).await.unwrap());
        assert!(a.is_banned(src));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!a.is_banned(src));
        assert!(a.bans().is_empty());
    }

    #[tokio::test]
    async fn memory_stays_bounded_under_many_sources() {
        let a = admission(0, 0, 10);
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 50_000) {
            let v4 = Ipv4Addr::from(0x0a00_0000 + i);
            drop(a.begin_login(IpAddr::V4(v4)).await.unwrap());
        }
        assert!(a.tracked_sources() <= MAX_TRACKED_SOURCES);
        // A banned source is never the one dropped to make room.
        let bad = ip("198.51.100.1");
        for _ in 0..10 {
            drop(a.begin_login(bad).await.unwrap());
        }
        for i in 0..(MAX_TRACKED_SOURCES as u32) {
            let v4 = Ipv4Addr::from(0x0b00_0000 + i);
            drop(a.begin_login(IpAddr::V4(v4)).await.unwrap());
        }
        assert!(a.is_banned(bad));
        assert!(a.tracked_sources() <= MAX_TRACKED_SOURCES);
    }

    #[tokio::test]
    async fn bans_travel_between_nodes_and_lifts_follow() {
        let (a, b) = (admission(0, 0, 2), admission(0, 0, 2));
        for _ in 0..2 {
            drop(a.begin_login(ip("192.0.2.1")).await.unwrap());
        }
        assert!(a.is_banned(ip("192.0.2.1")));
        // Node a's new ban goes to the list, once.
        let new = a.unshared_bans();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].source, Source::of(ip("192.0.2.1")));
        a.ban_shared(new[0].source);
        assert!(a.unshared_bans().is_empty());
        // Node b takes it from the list: refused there too, not re-shared.
        let now = Utc::now();
        b.merge_shared_bans(&new, now, true);
        assert!(b.is_banned(ip("192.0.2.1")));
        assert!(matches!(b.admit(ip("192.0.2.1")), Err(Refusal::Banned)));
        assert!(b.unshared_bans().is_empty());
        assert_eq!(b.bans().len(), 1);
        // A ban b makes meanwhile is kept by a merge that does not list it yet.
        for _ in 0..2 {
            drop(b.begin_login(ip("192.0.2.2")).await.unwrap());
        }
        b.merge_shared_bans(&new, now, true);
        assert!(b.is_banned(ip("192.0.2.2")));
        // Lifted elsewhere (missing from the list): gone on both nodes.
        a.merge_shared_bans(&[], now, true);
        b.merge_shared_bans(&[], now, true);
        assert!(!a.is_banned(ip("192.0.2.1")));
        assert!(!b.is_banned(ip("192.0.2.1")));
        assert!(b.is_banned(ip("192.0.2.2")), "not yet shared: kept");
        // An ended ban from the list is ignored.
        let ended = SharedBan {
            source: Source::of(ip("192.0.2.3")),
            failures: 9,
            banned_at: now - chrono::Duration::seconds(120),
            expires_at: now - chrono::Duration::seconds(1),
        };
        a.merge_shared_bans(&[ended], now, true);
        assert!(!a.is_banned(ip("192.0.2.3")));
    }
}
