//! A mixed-load generator for dropgate (issue #17, "Mixed load").
//!
//! [`run`] drives many concurrent sessions spread in thirds over FTP,
//! explicit FTPS (`AUTH TLS`, `PROT P`, the server's certificate trusted
//! through a CA file) and SFTP (password authentication) until a deadline.
//! Each session loops: log in, make its own folder once, upload a file of
//! random content and random size, list the folder (the file must be there
//! with its size), download it and compare its SHA-256 with what was sent,
//! delete files now and then, and log out and in again every few iterations
//! so logins are part of the load. At the deadline every session empties and
//! removes its folder and logs out. Every network step has a time limit, and
//! the whole run has one, so it ends by itself even against a server that
//! hangs.
//!
//! Nothing the server sends is trusted: every failure is counted as an
//! error of its protocol (with the first messages kept), every content
//! mismatch as a corrupted file. The [`Report`] also has latency percentiles
//! per protocol and operation. [`procstat`] samples a server's resident
//! memory and open descriptors (Linux `/proc`), and [`spawn`] starts a
//! `dropgate serve` of its own for the binary's `--spawn` mode.
//!
//! Loopback only: the addresses are whatever the caller passes, and the
//! binary and tests pass 127.0.0.1.

mod content;
mod ftp;
pub mod procstat;
mod report;
mod sftp;
pub mod spawn;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

pub use report::{Latency, Op, ProtocolReport, Report};

use report::Stats;

/// The three ways a session talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Plain FTP, passive (EPSV) data connections.
    Ftp,
    /// Explicit FTPS: `AUTH TLS` on the FTP port, `PBSZ 0`, `PROT P`.
    Ftps,
    /// SFTP over SSH, password authentication.
    Sftp,
}

impl Protocol {
    /// Lower-case name, as in the report.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ftp => "ftp",
            Protocol::Ftps => "ftps",
            Protocol::Sftp => "sftp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How big the uploaded files are.
///
/// Most sizes are drawn log-uniformly between `min` and `max` (as many
/// 4–16 KiB files as 256 KiB–1 MiB ones); `large_percent` of the uploads
/// are drawn uniformly between `max` and `large_max` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSizes {
    /// Smallest file, bytes.
    pub min: u64,
    /// Largest ordinary file, bytes.
    pub max: u64,
    /// Largest of the occasional large files, bytes.
    pub large_max: u64,
    /// Share of large files, percent (0 to 100).
    pub large_percent: u32,
}

impl Default for FileSizes {
    fn default() -> Self {
        FileSizes {
            min: 4 * 1024,
            max: 1024 * 1024,
            large_max: 8 * 1024 * 1024,
            large_percent: 2,
        }
    }
}

impl FileSizes {
    fn pick(&self, rng: &mut StdRng) -> u64 {
        let min = self.min.max(1);
        let max = self.max.max(min);
        if self.large_percent > 0
            && self.large_max > max
            && rng.random_range(0..100) < self.large_percent
        {
            return rng.random_range(max..=self.large_max);
        }
        if max == min {
            return min;
        }
        // Log-uniform: ln(size) uniform between ln(min) and ln(max).
        let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
        let v = rng.random_range(lo..=hi).exp();
        (v as u64).clamp(min, max)
    }
}

/// What to run against which server.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The FTP listener (plain FTP sessions).
    pub ftp: SocketAddr,
    /// Where FTPS sessions connect and send `AUTH TLS` (explicit FTPS: the
    /// FTP listener itself, which accepts TLS by default, `[ftp] tls =
    /// "optional"`). `None`: no FTPS sessions, FTP and SFTP take halves.
    pub ftps: Option<SocketAddr>,
    /// The SFTP (SSH) listener.
    pub sftp: SocketAddr,
    /// Accounts (user, password); session `i` uses `users[i % len]`.
    pub users: Vec<(String, String)>,
    /// Concurrent sessions.
    pub sessions: usize,
    /// How long sessions keep starting new iterations.
    pub duration: Duration,
    /// Sizes of the uploaded files.
    pub file_sizes: FileSizes,
    /// PEM file with the certificate(s) to trust for FTPS: the server's own
    /// self-signed certificate, `<data_dir>/ftps-cert.pem`, unless
    /// `[ftps] cert` names another. Needed when `ftps` is set.
    pub tls_ca: Option<PathBuf>,
    /// Name checked against the certificate (the generated one is issued
    /// for `localhost` and the host name).
    pub tls_server_name: String,
    /// Limit of every single network step (connect + login, one upload,
    /// one listing, ...).
    pub op_timeout: Duration,
    /// Sessions start spread evenly over this time.
    pub ramp_up: Duration,
    /// A session logs out and in again after a random number of iterations
    /// between 1 and this.
    pub reconnect_every: u32,
    /// Files a session keeps in its folder at most (older ones are deleted).
    pub keep_files: usize,
    /// Seed of all random choices and contents (sizes, file bytes).
    pub seed: u64,
    /// Prefix of each session's folder name (`/<prefix><session>`).
    pub folder_prefix: String,
}

impl LoadConfig {
    /// A configuration with the defaults: 100 sessions for 15 s, FTPS on the
    /// FTP listener when a CA file is given later, 60 s per step.
    pub fn new(ftp: SocketAddr, sftp: SocketAddr, users: Vec<(String, String)>) -> LoadConfig {
        LoadConfig {
            ftp,
            ftps: None,
            sftp,
            users,
            sessions: 100,
            duration: Duration::from_secs(15),
            file_sizes: FileSizes::default(),
            tls_ca: None,
            tls_server_name: "localhost".to_owned(),
            op_timeout: Duration::from_secs(60),
            ramp_up: Duration::from_secs(2),
            reconnect_every: 5,
            keep_files: 3,
            seed: 17,
            folder_prefix: "loadgen-".to_owned(),
        }
    }

    /// The protocol of session `i`: thirds (FTP, FTPS, SFTP in turn), or
    /// halves without FTPS.
    pub fn protocol_of(&self, i: usize) -> Protocol {
        if self.ftps.is_some() {
            [Protocol::Ftp, Protocol::Ftps, Protocol::Sftp][i % 3]
        } else {
            [Protocol::Ftp, Protocol::Sftp][i % 2]
        }
    }

    /// When the run is cut short whatever happens: the deadline, then time
    /// for each session's last iteration (four steps) and its clean-up
    /// (listing, up to `keep_files + 1` deletes, rmdir, logout).
    pub fn hard_limit(&self) -> Duration {
        let steps = 4 + 4 + self.keep_files as u32 + 1;
        self.ramp_up + self.duration + self.op_timeout * steps + Duration::from_secs(5)
    }
}

/// The configuration cannot be run (nothing to do with the server).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What every session shares.
struct Shared {
    cfg: LoadConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    ssh: Arc<russh::client::Config>,
    stats: Stats,
    deadline: Instant,
}

/// Runs the load and reports what happened. Errors of the server or the
/// network are in the report; `Err` only for a configuration that cannot run
/// (no users, no sessions, an unreadable CA file).
pub async fn run(cfg: &LoadConfig) -> Result<Report, ConfigError> {
    if cfg.users.is_empty() {
        return Err(ConfigError("no users given".into()));
    }
    if cfg.sessions == 0 {
        return Err(ConfigError("sessions must be at least 1".into()));
    }
    let tls = match cfg.ftps {
        None => None,
        Some(_) => {
            let ca = cfg.tls_ca.as_deref().ok_or_else(|| {
                ConfigError("FTPS needs the server's certificate (tls_ca / --ca)".into())
            })?;
            Some(ftp::client_tls(ca)?)
        }
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        tls,
        ssh: sftp::client_config(),
        stats: Stats::default(),
        deadline: started + cfg.ramp_up + cfg.duration,
    });
    let mut set = JoinSet::new();
    for i in 0..cfg.sessions {
        let shared = shared.clone();
        let delay = cfg.ramp_up.mul_f64(i as f64 / cfg.sessions as f64);
        set.spawn(async move {
            tokio::time::sleep(delay).await;
            session(i, shared).await;
        });
    }
    let hard = started + cfg.hard_limit();
    loop {
        match tokio::time::timeout_at(hard.into(), set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => shared
                .stats
                .error(None, format!("session task failed: {e}")),
            Err(_) => {
                let left = set.len();
                set.abort_all();
                shared.stats.error(
                    None,
                    format!(
                        "{left} session(s) still running {:?} after the deadline; aborted",
                        cfg.hard_limit() - cfg.duration - cfg.ramp_up
                    ),
                );
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    Ok(shared.stats.report(started.elapsed()))
}

/// One session's open connection, whatever the protocol.
enum Conn {
    Ftp(ftp::FtpConn),
    Sftp(sftp::SftpConn),
}

impl Conn {
    async fn mkdir(&mut self, path: &str) -> Result<(), String> {
        match self {
            Conn::Ftp(c) => c.mkdir(path).await,
            Conn::Sftp(c) => c.mkdir(path).await,
        }
    }

    async fn rmdir(&mut self, path: &str) -> Result<(), String> {
        match self {
            Conn::Ftp(c) => c.rmdir(path).await,
            Conn::Sftp(c) => c.rmdir(path).await,
        }
    }

    async fn upload(&mut self, path: &str, seed: u64, size: u64) -> Result<[u8; 32], String> {
        match self {
            Conn::Ftp(c) => c.upload(path, seed, size).await,
            Conn::Sftp(c) => c.upload(path, seed, size).await,
        }
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<(String, u64)>, String> {
        match self {
            Conn::Ftp(c) => c.list(dir).await,
            Conn::Sftp(c) => c.list(dir).await,
        }
    }

    async fn download(&mut self, path: &str) -> Result<(u64, [u8; 32]), String> {
        match self {
            Conn::Ftp(c) => c.download(path).await,
            Conn::Sftp(c) => c.download(path).await,
        }
    }

    async fn delete(&mut self, path: &str) -> Result<(), String> {
        match self {
            Conn::Ftp(c) => c.delete(path).await,
            Conn::Sftp(c) => c.delete(path).await,
        }
    }

    async fn quit(self) -> Result<(), String> {
        match self {
            Conn::Ftp(c) => c.quit().await,
            Conn::Sftp(c) => c.quit().await,
        }
    }

    /// Where an FTP transfer that failed had got to (empty for SFTP).
    fn stage(&self) -> String {
        match self {
            Conn::Ftp(c) => format!(" [at: {}]", c.stage()),
            Conn::Sftp(_) => String::new(),
        }
    }
}

/// One step under the step time limit, timed into the report.
async fn step<T>(
    sh: &Shared,
    proto: Protocol,
    op: Op,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let t = Instant::now();
    let out = match tokio::time::timeout(sh.cfg.op_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", sh.cfg.op_timeout)),
    };
    if out.is_ok() {
        sh.stats.done(proto, op, t.elapsed());
    }
    out
}

async fn connect(sh: &Shared, proto: Protocol, user: &str, password: &str) -> Result<Conn, String> {
    let c = &sh.cfg;
    match proto {
        Protocol::Ftp => ftp::FtpConn::connect(c.ftp, None, user, password)
            .await
            .map(Conn::Ftp),
        Protocol::Ftps => {
            let (Some(addr), Some(tls)) = (c.ftps, sh.tls.as_ref()) else {
                return Err("FTPS is not configured".into());
            };
            ftp::FtpConn::connect(addr, Some((tls, &c.tls_server_name)), user, password)
                .await
                .map(Conn::Ftp)
        }
        Protocol::Sftp => {
            sftp::SftpConn::connect(c.sftp, sh.ssh.clone(), user, password, c.op_timeout)
                .await
                .map(Conn::Sftp)
        }
    }
}

/// What one session does until the deadline, then its clean-up.
async fn session(id: usize, sh: Arc<Shared>) {
    let cfg = &sh.cfg;
    let proto = cfg.protocol_of(id);
    let (user, password) = &cfg.users[id % cfg.users.len()];
    sh.stats.session(proto);
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let dir = format!("/{}{id}", cfg.folder_prefix);
    let say = |what: &str, e: String| format!("{proto} session {id} ({user}) {what}: {e}");

    let mut conn: Option<Conn> = None;
    let mut dir_made = false;
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut left_on_conn = 0u32;
    let mut n = 0u64;
    while Instant::now() < sh.deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match step(&sh, proto, Op::Login, connect(&sh, proto, user, password)).await {
                Ok(c) => {
                    left_on_conn = rng.random_range(1..=cfg.reconnect_every.max(1));
                    conn.insert(c)
                }
                Err(e) => {
                    sh.stats.error(Some(proto), say("login", e));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        if !dir_made {
            if let Err(e) = step(&sh, proto, Op::Mkdir, c.mkdir(&dir)).await {
                sh.stats.error(Some(proto), say(&format!("mkdir {dir}"), e));
                conn = None;
                continue;
            }
            dir_made = true;
        }
        n += 1;
        if let Err(e) = iteration(&sh, proto, c, &dir, n, &mut rng, &mut kept).await {
            sh.stats.error(Some(proto), say("", e));
            // Whatever state the connection is in, start afresh.
            conn = None;
            continue;
        }
        left_on_conn = left_on_conn.saturating_sub(1);
        if left_on_conn == 0
            && let Some(c) = conn.take()
            && let Err(e) = step(&sh, proto, Op::Logout, c.quit()).await
        {
            sh.stats.error(Some(proto), say("logout", e));
        }
    }
    if dir_made {
        if let Err(e) = cleanup(&sh, proto, conn.take(), &dir, user, password).await {
            sh.stats.error(Some(proto), say("clean-up", e));
        }
    } else if let Some(c) = conn.take()
        && let Err(e) = step(&sh, proto, Op::Logout, c.quit()).await
    {
        sh.stats.error(Some(proto), say("logout", e));
    }
}

/// Upload, list, download and check, delete now and then.
async fn iteration(
    sh: &Shared,
    proto: Protocol,
    c: &mut Conn,
    dir: &str,
    n: u64,
    rng: &mut StdRng,
    kept: &mut VecDeque<String>,
) -> Result<(), String> {
    let name = format!("f{n}.bin");
    let path = format!("{dir}/{name}");
    let size = sh.cfg.file_sizes.pick(rng);
    let seed: u64 = rng.random();

    let sent = step(sh, proto, Op::Upload, c.upload(&path, seed, size)).await;
    let sent = sent.map_err(|e| format!("upload {path} ({size} B): {e}{}", c.stage()))?;
    sh.stats.bytes(proto, size, 0);
    kept.push_back(name.clone());

    let listing = step(sh, proto, Op::List, c.list(dir))
        .await
        .map_err(|e| format!("list {dir}: {e}"))?;
    match listing.iter().find(|(f, _)| *f == name) {
        Some((_, listed)) if *listed == size => {}
        Some((_, listed)) => {
            return Err(format!(
                "list {dir}: {name} listed with {listed} B, uploaded {size} B"
            ));
        }
        None => return Err(format!("list {dir}: {name} missing after its upload")),
    }

    let got = step(sh, proto, Op::Download, c.download(&path)).await;
    let (got, digest) = got.map_err(|e| format!("download {path}: {e}{}", c.stage()))?;
    sh.stats.bytes(proto, 0, got);
    if got != size || digest != sent {
        sh.stats.corrupted(
            proto,
            format!(
                "{proto}: {path} came back with {got} B, sha256 {}; sent {size} B, sha256 {}",
                content::hex(&digest),
                content::hex(&sent)
            ),
        );
    }

    // Delete the file just checked half of the time, and the oldest ones
    // beyond `keep_files`.
    if rng.random_bool(0.5)
        && let Some(f) = kept.pop_back()
    {
        let p = format!("{dir}/{f}");
        step(sh, proto, Op::Delete, c.delete(&p))
            .await
            .map_err(|e| format!("delete {p}: {e}"))?;
    }
    while kept.len() > sh.cfg.keep_files {
        let Some(f) = kept.pop_front() else { break };
        let p = format!("{dir}/{f}");
        step(sh, proto, Op::Delete, c.delete(&p))
            .await
            .map_err(|e| format!("delete {p}: {e}"))?;
    }
    Ok(())
}

/// Empties and removes the session's folder (whatever is listed in it, so
/// files of a failed iteration go too), then logs out.
async fn cleanup(
    sh: &Shared,
    proto: Protocol,
    conn: Option<Conn>,
    dir: &str,
    user: &str,
    password: &str,
) -> Result<(), String> {
    let mut c = match conn {
        Some(c) => c,
        None => step(sh, proto, Op::Login, connect(sh, proto, user, password))
            .await
            .map_err(|e| format!("login: {e}"))?,
    };
    let files = step(sh, proto, Op::List, c.list(dir))
        .await
        .map_err(|e| format!("list {dir}: {e}"))?;
    for (f, _) in files {
        let p = format!("{dir}/{f}");
        step(sh, proto, Op::Delete, c.delete(&p))
            .await
            .map_err(|e| format!("delete {p}: {e}"))?;
    }
    step(sh, proto, Op::Rmdir, c.rmdir(dir))
        .await
        .map_err(|e| format!("rmdir {dir}: {e}"))?;
    step(sh, proto, Op::Logout, c.quit())
        .await
        .map_err(|e| format!("logout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_in_range_and_mix() {
        let s = FileSizes::default();
        let mut rng = StdRng::seed_from_u64(1);
        let sizes: Vec<u64> = (0..10_000).map(|_| s.pick(&mut rng)).collect();
        assert!(sizes.iter().all(|&v| (s.min..=s.large_max).contains(&v)));
        let small = sizes.iter().filter(|&&v| v < 16 * 1024).count();
        let big = sizes.iter().filter(|&&v| v > 256 * 1024).count();
        let large = sizes.iter().filter(|&&v| v > s.max).count();
        assert!(small > 1500 && big > 1500, "{small} {big}");
        assert!((100..400).contains(&large), "{large}");
    }

    #[test]
    fn protocols_in_thirds_or_halves() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let mut cfg = LoadConfig::new(a, a, vec![("u".into(), "p".into())]);
        assert_eq!(cfg.protocol_of(4), Protocol::Ftp);
        assert_eq!(cfg.protocol_of(5), Protocol::Sftp);
        cfg.ftps = Some(a);
        let p: Vec<_> = (0..6).map(|i| cfg.protocol_of(i)).collect();
        assert_eq!(
            p,
            [
                Protocol::Ftp,
                Protocol::Ftps,
                Protocol::Sftp,
                Protocol::Ftp,
                Protocol::Ftps,
                Protocol::Sftp
            ]
        );
    }
}
