//! `dropgate-loadgen`: mixed FTP/FTPS/SFTP load against a running
//! `dropgate serve` (or one it starts itself with `--spawn`); prints the
//! report and exits 1 on any error, corrupted file, or (with `--pid` or
//! `--spawn`) a server that does not return near its memory and descriptor
//! baseline. See bench/loadgen/README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use dropgate_loadgen::{FileSizes, LoadConfig, Op, procstat, run, spawn};

/// Mixed-load generator for dropgate: concurrent FTP, FTPS and SFTP sessions
/// that log in, upload, list, download (SHA-256 checked) and delete.
#[derive(Debug, Parser)]
#[command(name = "dropgate-loadgen", version)]
struct Args {
    /// FTP listener (FTPS sessions use it too, with AUTH TLS).
    #[arg(long, default_value = "127.0.0.1:2121")]
    ftp: SocketAddr,
    /// Where FTPS sessions connect (default: the FTP listener).
    #[arg(long)]
    ftps: Option<SocketAddr>,
    /// No FTPS sessions: FTP and SFTP take halves.
    #[arg(long)]
    no_ftps: bool,
    /// SFTP listener.
    #[arg(long, default_value = "127.0.0.1:2222")]
    sftp: SocketAddr,
    /// An account as NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// A file of NAME:PASSWORD lines (blank lines and # comments skipped).
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Accounts PREFIX01..PREFIXnn (with --user-count and --password).
    #[arg(long)]
    user_prefix: Option<String>,
    /// How many PREFIX accounts.
    #[arg(long, default_value_t = 10)]
    user_count: usize,
    /// The PREFIX accounts' password.
    #[arg(long, env = "LOADGEN_PASSWORD")]
    password: Option<String>,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Seconds of load (sessions then clean up and log out).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Seconds over which the sessions start.
    #[arg(long, default_value_t = 5)]
    ramp_secs: u64,
    /// Limit of each network step, seconds.
    #[arg(long, default_value_t = 60)]
    op_timeout_secs: u64,
    /// PEM certificate to trust for FTPS (the server's data_dir/ftps-cert.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name checked against the FTPS certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Smallest file, KiB.
    #[arg(long, default_value_t = 4)]
    min_kib: u64,
    /// Largest ordinary file, KiB.
    #[arg(long, default_value_t = 1024)]
    max_kib: u64,
    /// Largest of the occasional large files, KiB.
    #[arg(long, default_value_t = 8192)]
    large_kib: u64,
    /// Percent of uploads that are large.
    #[arg(long, default_value_t = 2)]
    large_percent: u32,
    /// Seed of sizes and contents.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// The server's process id: sample its RSS and descriptors before (after
    /// a short warm-up) and after the load.
    #[arg(long)]
    pid: Option<u32>,
    /// Start this `dropgate` binary in a scratch folder (under --workdir)
    /// with a configuration for the load and 10 accounts, instead of using
    /// a running server; the addresses, accounts and CA options are then
    /// ignored.
    #[arg(long, value_name = "DROPGATE_BIN")]
    spawn: Option<PathBuf>,
    /// Where --spawn puts its folder (default: a temporary one, removed).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Passive port range of the --spawn server.
    #[arg(long, default_value = "20000-24999")]
    passive_ports: String,
    /// `[limits] login_failures_before_ban` of the --spawn server (default:
    /// the server's own, 10; 0 turns bans off).
    #[arg(long)]
    ban_threshold: Option<u32>,
    /// Seconds of warm-up load before the baseline (with --pid or --spawn).
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// How far above its baseline the server's RSS may stay after the load, MiB.
    #[arg(long, default_value_t = 64)]
    rss_slack_mib: u64,
    /// How far above baseline its open descriptors may stay after the load:
    /// idle SQLite connections the pool opened under load stay open (sqlx
    /// keeps them 10 minutes), two descriptors each (database and WAL), up
    /// to `[database] max_connections` (16).
    #[arg(long, default_value_t = 32)]
    fd_slack: usize,
}

fn users(a: &Args) -> Result<Vec<(String, String)>, String> {
    let split = |s: &str| {
        s.split_once(':')
            .map(|(u, p)| (u.to_owned(), p.to_owned()))
            .ok_or_else(|| format!("`{s}`: expected NAME:PASSWORD"))
    };
    let mut out = Vec::new();
    for u in &a.users {
        out.push(split(u)?);
    }
    if let Some(f) = &a.users_file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                out.push(split(line)?);
            }
        }
    }
    if let Some(prefix) = &a.user_prefix {
        let pw = a
            .password
            .clone()
            .ok_or("--user-prefix needs --password (or LOADGEN_PASSWORD)")?;
        for i in 1..=a.user_count {
            out.push((format!("{prefix}{i:02}"), pw.clone()));
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let a = Args::parse();
    match real_main(a) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dropgate-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Ok(passed).
fn real_main(a: Args) -> Result<bool, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // --spawn: a server of our own.
    let mut _scratch = None;
    let mut server = None;
    let (mut ftp, mut sftp, mut ca, mut users, mut pid) =
        (a.ftp, a.sftp, a.ca.clone(), users(&a)?, a.pid);
    if let Some(bin) = &a.spawn {
        let dir = match &a.workdir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
                d.clone()
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("dropgate-loadgen-")
                    .tempdir()
                    .map_err(|e| format!("scratch folder: {e}"))?;
                let p = t.path().to_path_buf();
                _scratch = Some(t);
                p
            }
        };
        users = (1..=10)
            .map(|i| (format!("lg{i:02}"), format!("loadgen-pw-{i:02}")))
            .collect();
        let cfg = spawn::config_toml(a.sessions, &a.passive_ports, a.ban_threshold);
        eprintln!("starting {} in {}", bin.display(), dir.display());
        let s = spawn::start(bin, &dir, &cfg, &users)?;
        (ftp, sftp, ca, pid) = (s.ftp, s.sftp, Some(s.cert.clone()), Some(s.pid()));
        eprintln!("server pid {} ftp {} sftp {}", s.pid(), s.ftp, s.sftp);
        server = Some(s);
    }
    if users.is_empty() {
        return Err("no accounts: give --user, --users-file, --user-prefix or --spawn".into());
    }
    let mut cfg = LoadConfig::new(ftp, sftp, users);
    cfg.ftps = match (a.no_ftps, a.ftps) {
        (true, _) => None,
        (false, Some(ftps)) if a.spawn.is_none() => Some(ftps),
        (false, _) => Some(ftp),
    };
    cfg.tls_ca = ca;
    cfg.tls_server_name = a.server_name.clone();
    cfg.sessions = a.sessions;
    cfg.duration = Duration::from_secs(a.secs);
    cfg.ramp_up = Duration::from_secs(a.ramp_secs);
    cfg.op_timeout = Duration::from_secs(a.op_timeout_secs);
    cfg.seed = a.seed;
    cfg.file_sizes = FileSizes {
        min: a.min_kib * 1024,
        max: a.max_kib * 1024,
        large_max: a.large_kib * 1024,
        large_percent: a.large_percent,
    };

    let mut passed = true;
    // The baseline is taken after a short warm-up (TLS and SSH machinery,
    // login cache, database connections, allocator arenas in use).
    if pid.is_some() && a.warmup_secs > 0 {
        let mut w = cfg.clone();
        w.sessions = cfg.sessions.min(30);
        w.duration = Duration::from_secs(a.warmup_secs);
        w.ramp_up = Duration::from_secs(1);
        w.folder_prefix = "warmup-".into();
        let r = rt.block_on(run(&w)).map_err(|e| e.to_string())?;
        eprintln!("warm-up: {} sessions, {} errors", w.sessions, r.errors());
        if !r.clean() {
            println!("warm-up failed:\n{r}");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let baseline = match pid {
        Some(pid) => Some((
            pid,
            procstat::sample(pid).map_err(|e| e.to_string())?,
            procstat::descriptors(pid).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    if let Some((_, b, _)) = &baseline {
        println!("server baseline: {b}");
    }
    // Peak RSS and descriptors while the load runs, sampled every 500 ms.
    let peak = Arc::new((AtomicU64::new(0), AtomicUsize::new(0)));
    let report = rt.block_on(async {
        let sampler = baseline.as_ref().map(|&(pid, _, _)| {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(s) = procstat::sample(pid) {
                        peak.0.fetch_max(s.rss, Ordering::Relaxed);
                        peak.1.fetch_max(s.fds, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        });
        let r = run(&cfg).await;
        if let Some(s) = sampler {
            s.abort();
        }
        r
    });
    let report = report.map_err(|e| e.to_string())?;
    println!(
        "{} sessions ({} FTP / {} FTPS / {} SFTP thirds), {} s, {} accounts",
        cfg.sessions,
        report
            .protocols
            .get(&dropgate_loadgen::Protocol::Ftp)
            .map_or(0, |p| p.sessions),
        report
            .protocols
            .get(&dropgate_loadgen::Protocol::Ftps)
            .map_or(0, |p| p.sessions),
        report
            .protocols
            .get(&dropgate_loadgen::Protocol::Sftp)
            .map_or(0, |p| p.sessions),
        a.secs,
        cfg.users.len()
    );
    println!("{report}");
    if !report.clean() {
        passed = false;
    }
    for op in [Op::Login, Op::List, Op::Upload, Op::Download] {
        for (proto, p) in &report.protocols {
            if p.count(op) == 0 {
                println!("FAIL: no successful {} on {proto}", op.name());
                passed = false;
            }
        }
    }
    if let Some((pid, b, b_fds)) = baseline {
        println!(
            "server peak during load: RSS {:.1} MiB, {} open descriptors",
            peak.0.load(Ordering::Relaxed) as f64 / 1048576.0,
            peak.1.load(Ordering::Relaxed)
        );
        let max_rss = b.rss + a.rss_slack_mib * 1024 * 1024;
        let max_fds = b.fds + a.fd_slack;
        let (after, ok) = procstat::settle(pid, max_rss, max_fds, Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        println!(
            "server after load: {after} (baseline {b}; bounds: RSS <= baseline + {} MiB, descriptors <= baseline + {})",
            a.rss_slack_mib, a.fd_slack
        );
        let now = procstat::descriptors(pid).map_err(|e| e.to_string())?;
        let added = procstat::descriptors_added(&b_fds, &now);
        if !added.is_empty() {
            println!("descriptors open now that were not at the baseline: {added:?}");
        }
        if !ok {
            println!("FAIL: the server did not return near its baseline within 20 s");
            passed = false;
        }
    }
    if let Some(s) = server {
        let dir = s.dir.clone();
        let st = s.stop();
        eprintln!(
            "server stopped: {st:?}; its log: {}",
            dir.join("serve.log").display()
        );
    }
    println!("{}", if passed { "PASS" } else { "FAIL" });
    Ok(passed)
}
