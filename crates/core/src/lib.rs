//! What every protocol shares.
//!
//! Owns: authentication (`Gateway::authenticate`), the [`Session`] a protocol
//! gets back (every filesystem operation goes through it: permission check,
//! quota, audit event), the live-session registry, and the audit writer.
//!
//! Protocol crates (`ftp`, `ftps`, `sftp`) talk to this crate and to
//! `dropgate-vfs` types only: never to the database or the disk directly.
//! This crate must not know any wire protocol.

mod accounts;
mod admission;
mod audit;
mod audit_journal;
mod bandwidth;
mod error;
mod listener;
mod metrics;
mod permissions;
pub mod proxy;
mod quota;
mod registry;
pub mod rules;
mod session;
mod share_health;
mod shared_bans;
mod shared_sessions;
mod stream_hash;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use dropgate_store::{Event, EventKind, Outcome, Protocol, Store, Verified};
use dropgate_vfs::{Backend, LocalBackend, Storage, UploadMode};

pub use accounts::{AccountError, PasswordChange};
pub use admission::{
    Admission, AdmissionConfig, AdmissionCounters, BanSnapshot, ConnectionPermit, LoginAttempt,
    Refusal, SharedBan, Source,
};
pub use audit::{AuditLog, JournalMode, SPOOL_MAX_BYTES, Unrecorded};
pub use error::{ErrorClass, FsError, FsResult};
pub use listener::{Accepted, AdmittingListener, Incoming};
pub use metrics::{Metrics, ProtocolCounters};
pub use permissions::PermissionSet;
pub use proxy::ProxyPolicy;
pub use quota::{QuotaGuard, QuotaTracker, Usage};
pub use registry::{Direction, SessionRegistry, SessionSnapshot, TransferSnapshot};
pub use rules::Rules;
pub use session::{Download, HASH_AFTER_REPLY_FROM, Session, Upload};
pub use shared_bans::BAN_SYNC;
pub use shared_sessions::{EndSession, SESSION_SYNC};

pub use dropgate_store as store;
pub use dropgate_store::{Permission, User};
pub use dropgate_vfs as vfs;

/// How long sessions get to finish after a stop signal (SIGTERM, SIGINT)
/// before they are dropped: every listener drains within it, and `serve`
/// waits for all of them together.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a login waits for the account's record. Past it the login
/// fails closed as "service unavailable" instead of holding the client
/// (and its connection slot) while the database is down; the pool's own
/// acquire timeout is far longer, for the admin API's sake.
pub const LOGIN_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The refusal reason of a login past the account's `max_sessions`.
const TOO_MANY_SESSIONS: &str = "too many sessions";

/// Settings `core` needs from the configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where homes live (`[storage] backend`).
    pub storage: Arc<dyn Backend>,
    /// `[storage] upload_mode`.
    pub upload_mode: UploadMode,
    /// `[storage] durable_uploads`: answer an upload only once it is on
    /// disk (`true`, the default) or from the page cache.
    pub durable_uploads: bool,
    /// Shown in events and sessions (`[cluster] node_name`).
    pub node_name: String,
    /// Connection caps and the ban rules (`[limits]`).
    pub admission: AdmissionConfig,
    /// How long a client may take to log in after connecting, on every
    /// protocol (`[limits] login_grace_secs`).
    pub login_grace: std::time::Duration,
    /// Where audit events wait while the store is down (`<data_dir>/spool`);
    /// `None`: they are retried in memory only.
    pub spool_dir: Option<PathBuf>,
    /// `[cluster] proxy_protocol` with its `trusted_proxies`; `None`: no
    /// PROXY headers are read.
    pub proxy: Option<Arc<ProxyPolicy>>,
}

impl GatewayConfig {
    /// Defaults, with the homes as folders below `storage_root`.
    pub fn new(storage_root: PathBuf) -> GatewayConfig {
        GatewayConfig::with_backend(Arc::new(LocalBackend::new(storage_root)))
    }

    /// Defaults for everything but where the homes live.
    pub fn with_backend(storage: Arc<dyn Backend>) -> GatewayConfig {
        GatewayConfig {
            storage,
            upload_mode: UploadMode::Atomic,
            durable_uploads: true,
            node_name: String::new(),
            admission: AdmissionConfig::default(),
            login_grace: std::time::Duration::from_secs(60),
            spool_dir: None,
            proxy: None,
        }
    }
}

/// What a client proved its identity with.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A password (FTP PASS, SSH password auth).
    Password(&'a str),
    /// An SSH public key whose signature the SSH layer already verified,
    /// in OpenSSH one-line form (`ssh-ed25519 AAAA…`; a comment is ignored).
    PublicKey(&'a str),
}

/// Why a login failed, as far as a protocol may know.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong name or secret, disabled, expired, wrong IP or protocol: one
    /// generic failure for every reason (the reason goes to the audit log).
    #[error("authentication failed")]
    Failed,
    /// The store or the storage is unreachable (temporary; 421 / disconnect).
    #[error("service unavailable")]
    Unavailable,
    /// The source address is banned for failed logins: end the connection
    /// (FTP 421, SSH disconnect) rather than let it keep guessing.
    #[error("source banned")]
    Banned,
}

/// The shared heart of the gateway: one per process, shared by every listener.
pub struct Gateway {
    store: Store,
    config: GatewayConfig,
    sessions: SessionRegistry,
    admission: Arc<Admission>,
    quotas: QuotaTracker,
    bandwidth: bandwidth::BandwidthTracker,
    audit: AuditLog,
    /// Event rules, compiled; the audit writer matches every event.
    rules: Arc<Rules>,
    /// Woken when new deliveries are in the outbox.
    deliveries: Arc<tokio::sync::Notify>,
    /// When each account last had a `quota_exceeded` event.
    quota_events: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    metrics: Metrics,
    /// Bounds background SHA-256 computations of committed uploads.
    hash_permits: tokio::sync::Semaphore,
    /// Work an upload's reply no longer waits for (the hash and the event of
    /// a large upload answered from the page cache); shutdown waits for it.
    after_reply: tokio_util::task::TaskTracker,
    /// Usage measured for accounts this node does not count live.
    usage_cache: std::sync::Mutex<UsageCache>,
    /// Live sessions per account on the other nodes, as they last
    /// published them (for `max_sessions` across nodes).
    remote_sessions: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// username -> (home, when measured, (bytes, files)).
type UsageCache = std::collections::HashMap<String, (String, std::time::Instant, (u64, u64))>;

/// Most uploads hashed after their reply at a time, waiting ones included.
const AFTER_REPLY_MAX: usize = 64;

/// How long a measured usage is reused (accounts counted live are exact).
pub const USAGE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Most measured usages kept.
const USAGE_CACHE_MAX: usize = 10_000;

impl Gateway {
    /// Builds the gateway and starts its audit writer (needs a tokio runtime).
    pub fn new(store: Store, config: GatewayConfig) -> Arc<Gateway> {
        let rules = Arc::new(Rules::default());
        let deliveries = Arc::new(tokio::sync::Notify::new());
        let audit = AuditLog::start(
            store.clone(),
            rules.clone(),
            deliveries.clone(),
            config.spool_dir.clone(),
            // Events as durable as the uploads: a journal line stands for
            // SQLite's unflushed commit, a synced one (durable uploads) for
            // its flushed commit. PostgreSQL commits are flushed (on
            // another machine, often): kept so.
            match (store.dialect(), config.durable_uploads) {
                ("sqlite", false) => audit::JournalMode::PageCache,
                ("sqlite", true) => audit::JournalMode::Durable,
                _ => audit::JournalMode::Off,
            },
        );
        let admission = Admission::new(config.admission.clone());
        let quotas = if config.storage.shared() {
            QuotaTracker::shared(store.clone())
        } else {
            QuotaTracker::default()
        };
        Arc::new(Gateway {
            store,
            sessions: SessionRegistry::new(config.node_name.clone()),
            config,
            remote_sessions: std::sync::Mutex::default(),
            admission,
            quotas,
            bandwidth: bandwidth::BandwidthTracker::default(),
            audit,
            rules,
            deliveries,
            quota_events: std::sync::Mutex::default(),
            metrics: Metrics::default(),
            hash_permits: tokio::sync::Semaphore::new(2),
            after_reply: tokio_util::task::TaskTracker::new(),
            usage_cache: std::sync::Mutex::default(),
        })
    }

    /// The account store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live sessions.
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Connection caps and the ban list, for every listener and the admin login.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Who may send PROXY headers (`[cluster]`), for every listener.
    pub fn proxy_policy(&self) -> Option<Arc<ProxyPolicy>> {
        self.config.proxy.clone()
    }

    /// How long a client may take to log in after connecting.
    pub fn login_grace(&self) -> std::time::Duration {
        self.config.login_grace
    }

    /// Whether the storage has links (what measuring a home must follow).
    fn links(&self) -> bool {
        self.config.storage.capabilities().links
    }

    /// Where the homes live, and what that storage can do.
    pub fn storage(&self) -> &Arc<dyn Backend> {
        &self.config.storage
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The event rules every audited event is matched against.
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// Reloads the event rules from the store (after a change over REST,
    /// and periodically for changes made on other nodes).
    pub async fn reload_rules(&self) -> Result<(), dropgate_store::StoreError> {
        self.rules.reload(&self.store).await
    }

    /// Whether `username` may have another `quota_exceeded` event: one a
    /// minute per account, so a client retrying a refused write in a loop
    /// cannot flood the audit log and the rules' outbox (each refusal is
    /// still recorded as the failed operation itself).
    pub(crate) fn quota_event_due(&self, username: &str) -> bool {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let mut map = self.quota_events.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if map.len() >= 10_000 {
            map.retain(|_, t| now.duration_since(*t) < EVERY);
        }
        match map.get(username) {
            Some(t) if now.duration_since(*t) < EVERY => false,
            _ => {
                map.insert(username.to_owned(), now);
                true
            }
        }
    }

    /// Woken whenever deliveries were added to the outbox.
    pub fn deliveries_notify(&self) -> &Arc<tokio::sync::Notify> {
        &self.deliveries
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// Disconnects every session and waits until all audit events are stored.
    pub async fn shutdown(&self) {
        self.sessions.disconnect_all();
        // Give sessions a moment to record their final events (an upload
        // dropped mid-way aborts in a task that holds its session).
        for _ in 0..100 {
            if self.sessions.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Events of answered uploads still being hashed.
        self.after_reply.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.after_reply.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.after_reply.len(),
                "uploads still being hashed at shutdown: their events are lost"
            );
        }
        self.audit.close().await;
    }

    /// Checks a login and opens a session jailed to the account's home.
    ///
    /// With the store unreachable, the login fails closed
    /// ([`AuthError::Unavailable`]) within [`LOGIN_LOOKUP_TIMEOUT`].
    ///
    /// Order matters: a password attempt is counted against the source's
    /// failure allowance before anything else (see [`Admission::begin_login`]);
    /// the account's own rules (enabled, expiry, source address, protocol,
    /// sessions) are decided before the secret, and an account they refuse
    /// is verified against a dummy hash, so a right password for a refused
    /// account is never cached and never answers faster than a wrong one.
    /// (At `max_sessions` alone the real hash is checked, so a right password
    /// refused for the cap does not count as a failed guess.)
    pub async fn authenticate(
        self: &Arc<Self>,
        protocol: Protocol,
        username: &str,
        credential: Credential<'_>,
        peer: SocketAddr,
    ) -> Result<Session, AuthError> {
        let attempt = match credential {
            Credential::Password(_) => match self.admission.begin_login(peer.ip()).await {
                Ok(a) => Some(a),
                Err(Refusal::LoginsBusy) => {
                    tracing::warn!(%peer, "login refused: its address's failure allowance stayed in use");
                    return Err(AuthError::Unavailable);
                }
                Err(_) => return self.refuse_banned(protocol, username, peer),
            },
            // A key cannot be guessed, and clients offer several in turn:
            // only the ban itself applies.
            Credential::PublicKey(_) if self.admission.is_banned(peer.ip()) => {
                return self.refuse_banned(protocol, username, peer);
            }
            Credential::PublicKey(_) => None,
        };
        let lookup = tokio::time::timeout(LOGIN_LOOKUP_TIMEOUT, self.store.get_user(username));
        let record = match lookup.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "user lookup failed");
                if let Some(a) = attempt {
                    a.succeeded(); // our failure, not the client's
                }
                return Err(AuthError::Unavailable);
            }
            Err(_) => {
                tracing::error!(
                    timeout_secs = LOGIN_LOOKUP_TIMEOUT.as_secs(),
                    "user lookup timed out: is the database reachable?"
                );
                if let Some(a) = attempt {
                    a.succeeded(); // our failure, not the client's
                }
                return Err(AuthError::Unavailable);
            }
        };
        let fail = |reason: &str| {
            self.metrics.login(protocol, false);
            self.record_login(protocol, username, peer, Outcome::Failed, Some(reason));
            Err(AuthError::Failed)
        };

        let refused = record
            .as_ref()
            .and_then(|r| self.account_refusal(&r.user, protocol, peer));
        // The secret is checked the same way whether or not the account
        // exists or may log in, so timing tells none of them apart.
        let verified = match credential {
            Credential::Password(pw) => {
                // At `max_sessions` the real secret is checked too: a right
                // password refused for the cap is not a guess, and must not
                // ban a partner whose client retries.
                let stored = record
                    .as_ref()
                    .filter(|_| refused.is_none() || refused == Some(TOO_MANY_SESSIONS))
                    .and_then(|r| r.password_hash.as_deref());
                self.store.hasher().verify(pw, stored).await
            }
            Credential::PublicKey(offered) => {
                let matches = record.as_ref().is_some_and(|r| {
                    r.user
                        .public_keys
                        .iter()
                        .any(|k| same_public_key(k, offered))
                });
                if matches {
                    Verified::Ok
                } else {
                    Verified::Wrong
                }
            }
        };
        let Some(record) = record else {
            return fail("unknown user");
        };
        if let Some(reason) = refused {
            if reason == TOO_MANY_SESSIONS
                && verified != Verified::Wrong
                && let Some(a) = attempt
            {
                a.succeeded();
            }
            return fail(reason);
        }
        if verified == Verified::Wrong {
            return fail(match credential {
                Credential::Password(_) => "wrong password",
                Credential::PublicKey(_) => "unknown public key",
            });
        }
        if let Some(a) = attempt {
            a.succeeded();
        }
        let user = record.user;

        if verified == Verified::OkNeedsRehash
            && let Credential::Password(pw) = credential
        {
            match self.store.hasher().hash(pw).await {
                Ok(h) => {
                    if let Err(e) = self
                        .store
                        .set_user_password_hash(&user.username, Some(&h))
                        .await
                    {
                        tracing::warn!(error = %e, "could not upgrade a password hash");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not re-hash a password"),
            }
        }

        let fs: Arc<dyn Storage> = match self.config.storage.open_home(&user.home).await {
            Ok(fs) => fs,
            Err(e) => {
                tracing::error!(error = %e, user = %user.username, "cannot open home");
                self.record_login(
                    protocol,
                    username,
                    peer,
                    Outcome::Failed,
                    Some("home unavailable"),
                );
                return Err(AuthError::Unavailable);
            }
        };
        let quota = self
            .quotas
            .guard(&user.username, user.quota, fs.as_ref(), self.links())
            .await;
        let throttles = self.bandwidth.for_account(&user.username, user.bandwidth);
        let now = Utc::now();
        let store = self.store.clone();
        let name = user.username.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_user_login(&name, now).await {
                tracing::warn!(error = %e, "could not record last login");
            }
        });
        let Some(session) = Session::open(
            self.clone(),
            user,
            session::Origin::Client(protocol),
            peer,
            fs,
            quota,
            throttles,
        ) else {
            // Lost a race for the last place: the same generic failure.
            return fail(TOO_MANY_SESSIONS);
        };
        self.metrics.login(protocol, true);
        self.audit
            .record(session.event(EventKind::Login, None, Outcome::Ok));
        Ok(session)
    }

    /// A session for event actions (move, copy, retention) on `username`'s
    /// home: jailed and counted against the quota like a client's, with the
    /// account's permissions unless `full_rights`; not bound by the account's
    /// login rules (enabled, source addresses, protocols, session cap) or
    /// rate limits. Its events say protocol `actions` and trigger no rules.
    pub async fn action_session(
        self: &Arc<Self>,
        username: &str,
        full_rights: bool,
    ) -> Result<Session, FsError> {
        let record = self
            .store
            .get_user(username)
            .await
            .map_err(|e| FsError::Vfs(dropgate_vfs::VfsError::Io(std::io::Error::other(e))))?
            .ok_or(FsError::Vfs(dropgate_vfs::VfsError::NotFound))?;
        let user = record.user;
        let fs = self.config.storage.open_home(&user.home).await?;
        let quota = self
            .quotas
            .guard(&user.username, user.quota, fs.as_ref(), self.links())
            .await;
        // Not the partner's traffic: no rate limit.
        let throttles = bandwidth::AccountThrottles::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut user = user;
        user.max_sessions = 0;
        Session::open(
            self.clone(),
            user,
            session::Origin::Actions { full_rights },
            peer,
            fs,
            quota,
            throttles,
        )
        .ok_or(FsError::Closed)
    }

    /// Why the account's own rules refuse this login, if they do.
    fn account_refusal(
        &self,
        user: &User,
        protocol: Protocol,
        peer: SocketAddr,
    ) -> Option<&'static str> {
        if !user.enabled {
            return Some("account disabled");
        }
        if user.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Some("account expired");
        }
        if !user.allowed_ips.is_empty()
            && !user
                .allowed_ips
                .iter()
                .any(|net| net.contains(&canonical_ip(peer.ip())))
        {
            return Some("source address not allowed");
        }
        if !user.protocols.contains(&protocol) {
            return Some("protocol not allowed");
        }
        if user.max_sessions > 0
            && (self.sessions.count_user(&user.username)
                + self.remote_session_count(&user.username)) as u64
                >= user.max_sessions
        {
            return Some(TOO_MANY_SESSIONS);
        }
        None
    }

    fn refuse_banned(
        &self,
        protocol: Protocol,
        username: &str,
        peer: SocketAddr,
    ) -> Result<Session, AuthError> {
        self.metrics.login(protocol, false);
        self.record_login(
            protocol,
            username,
            peer,
            Outcome::Denied,
            Some("source banned"),
        );
        Err(AuthError::Banned)
    }

    fn record_login(
        &self,
        protocol: Protocol,
        username: &str,
        peer: SocketAddr,
        outcome: Outcome,
        why: Option<&str>,
    ) {
        // Cap what a client can make us store; control characters (a NUL
        // PostgreSQL would refuse, a newline that would forge a log line)
        // are shown as U+FFFD.
        let username: String = username
            .chars()
            .take(128)
            .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
            .collect();
        self.audit.record(Event {
            id: 0,
            time: Utc::now(),
            kind: EventKind::Login,
            username,
            protocol: protocol.as_str().to_owned(),
            remote_addr: peer.to_string(),
            path: None,
            target_path: None,
            bytes: None,
            duration_ms: None,
            outcome,
            sha256: None,
            message: why.map(str::to_owned),
            node: self.config.node_name.clone(),
            session_id: None,
        });
    }

    /// What an account's home holds now, as the quota counts it: `(bytes,
    /// files)`, each file's bytes once however many hard links it has. The
    /// live count when this node tracks the account (it has a quota and has
    /// logged in), otherwise measured from the storage.
    ///
    /// A measured figure is reused for [`USAGE_CACHE_TTL`] unless the account
    /// changed its files through this node meanwhile, so listing a page of
    /// accounts with large homes does not walk them all every time.
    pub async fn usage(&self, user: &User) -> Result<(u64, u64), FsError> {
        if let Some(u) = self.quotas.current(&user.username) {
            return Ok(u);
        }
        if let Some((home, at, u)) = self.lock_usage_cache().get(&user.username)
            && *home == user.home
            && at.elapsed() < USAGE_CACHE_TTL
        {
            return Ok(*u);
        }
        let fs = self.config.storage.open_home(&user.home).await?;
        let measured = quota::measure(fs.as_ref(), self.links()).await;
        let mut cache = self.lock_usage_cache();
        if cache.len() >= USAGE_CACHE_MAX {
            cache.retain(|_, (_, at, _)| at.elapsed() < USAGE_CACHE_TTL);
            if cache.len() >= USAGE_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            user.username.clone(),
            (user.home.clone(), std::time::Instant::now(), measured),
        );
        Ok(measured)
    }

    /// Forgets a measured usage after the account changed its files.
    pub(crate) fn usage_changed(&self, username: &str) {
        let mut cache = self.lock_usage_cache();
        if !cache.is_empty() {
            cache.remove(username);
        }
    }

    fn lock_usage_cache(&self) -> std::sync::MutexGuard<'_, UsageCache> {
        // Every update leaves the map consistent, so a poisoned lock is usable.
        self.usage_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Per-account usage counters (the admin API forgets an account's on delete).
    pub fn quotas(&self) -> &QuotaTracker {
        &self.quotas
    }

    pub(crate) fn hash_permits(&self) -> &tokio::sync::Semaphore {
        &self.hash_permits
    }

    /// Where an answered upload's remaining hash and its event may run after
    /// the reply; `None` (the reply waits, as in durable mode) when the
    /// audit log is degraded (the event could be lost, so the client must
    /// hear of it) or [`AFTER_REPLY_MAX`] uploads are pending already (the
    /// hashes fall behind: waiting holds the next upload back).
    pub(crate) fn after_reply(&self) -> Option<tokio_util::task::TaskTracker> {
        (self.after_reply.len() < AFTER_REPLY_MAX && !self.audit.degraded())
            .then(|| self.after_reply.clone())
    }
}

/// Two OpenSSH key lines name the same key when type and blob match
/// (comments and options differ freely).
fn same_public_key(stored: &str, offered: &str) -> bool {
    let key = |s: &str| {
        let mut it = s.split_whitespace();
        (it.next().map(str::to_owned), it.next().map(str::to_owned))
    };
    let (a, b) = (key(stored), key(offered));
    a.0.is_some() && a.1.is_some() && a == b
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) match IPv4 rules.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison_ignores_comments() {
        assert!(same_public_key(
            "ssh-ed25519 AAAA1 alice@x",
            "ssh-ed25519 AAAA1"
        ));
        assert!(!same_public_key("ssh-ed25519 AAAA1", "ssh-ed25519 AAAA2"));
        assert!(!same_public_key("ssh-rsa AAAA1", "ssh-ed25519 AAAA1"));
        assert!(!same_public_key("", ""));
    }

    #[test]
    fn mapped_addresses_match_v4_rules() {
        let ip: IpAddr = "::ffff:10.1.2.3"
            .parse()
            .unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        assert_eq!(canonical_ip(ip), IpAddr::V4([10, 1, 2, 3].into()));
    }
}
