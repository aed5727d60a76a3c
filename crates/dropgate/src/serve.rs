//! `dropgate serve`: open the store, make the first admin, start every
//! enabled listener with one shared shutdown token, stop on SIGINT/SIGTERM.

use dropgate_actions::Dispatcher;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use anyhow::Context;
use dropgate_admin::{AdminConfig, AdminServer};
use dropgate_core::{AdmissionConfig, Gateway, GatewayConfig, ProxyPolicy};
use dropgate_ftp::{FtpConfig, FtpServer, TlsMode};
use dropgate_ftps::{FtpsTls, TlsError, TlsSettings};
use dropgate_sftp::{SftpConfig, SftpError, SftpServer};
use dropgate_store::{NodeInfo, Store};
use dropgate_vfs::{Backend, LocalBackend, UploadMode};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::CliError;
use crate::config::{Effective, TlsSetting, UploadModeSetting};

/// How long `serve` waits for every listener together after a stop signal:
/// each drains its sessions within core's `SHUTDOWN_GRACE` (the admin API
/// within 5 s), plus a margin for the aborts that follow.
const SHUTDOWN_DEADLINE: Duration =
    Duration::from_secs(dropgate_core::SHUTDOWN_GRACE.as_secs() + 5);

/// The storage backend `[storage] backend` names, ready to open homes.
pub(crate) fn storage_backend(cfg: &Effective) -> Result<Arc<dyn Backend>, CliError> {
    match cfg.raw.storage.backend {
        crate::config::Backend::Local => {
            std::fs::create_dir_all(&cfg.storage_root)
                .with_context(|| format!("creating storage root {}", cfg.storage_root.display()))?;
            Ok(Arc::new(LocalBackend::new(cfg.storage_root.clone())))
        }
        crate::config::Backend::S3 => {
            let s3 = &cfg.raw.storage.s3;
            let backend = dropgate_vfs::S3Backend::new(&dropgate_vfs::S3Settings {
                bucket: s3.bucket.clone(),
                prefix: s3.prefix.clone(),
                region: s3.region.clone(),
                endpoint: s3.endpoint.clone(),
                path_style: s3.path_style,
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.clone(),
            })
            .context("setting up the S3 storage backend")?;
            if cfg.raw.storage.upload_mode == UploadModeSetting::Direct {
                tracing::info!(
                    "storage.upload_mode = \"direct\" on S3 behaves as \"atomic_resume\": an object appears only when complete"
                );
            }
            Ok(Arc::new(backend))
        }
    }
}

pub(crate) async fn serve(cfg: Effective) -> Result<(), CliError> {
    // Before anything else: a stop signal that arrives while the store opens
    // or the listeners start must still mean a clean stop, not death by the
    // default SIGTERM action.
    let stop = StopSignals::install()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let max_connections = raise_descriptor_limit(cfg.raw.limits.max_connections);
    let store = crate::users::open_store(&cfg).await?;
    ensure_first_admin(&store, &cfg.data_dir).await?;

    let storage = storage_backend(&cfg)?;
    // Only this process writes below the root at start-up, so any upload
    // temporary there is debris of a crash. (S3 keeps none: see the backend.)
    match storage.sweep_temporaries().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "swept stale upload temporaries"),
        Err(e) => tracing::warn!(error = %e, "could not sweep upload temporaries"),
    }

    let gateway = Gateway::new(
        store.clone(),
        GatewayConfig {
            storage,
            upload_mode: match cfg.raw.storage.upload_mode {
                UploadModeSetting::Atomic => UploadMode::Atomic,
                UploadModeSetting::AtomicResume => UploadMode::AtomicResume,
                UploadModeSetting::Direct => UploadMode::Direct,
            },
            durable_uploads: cfg.raw.storage.durable_uploads,
            node_name: cfg.node_name.clone(),
            admission: AdmissionConfig {
                max_connections,
                max_connections_per_source: cfg.raw.limits.max_connections_per_ip,
                failures_before_ban: cfg.raw.limits.login_failures_before_ban,
                ban_window: Duration::from_secs(cfg.raw.limits.ban_window_secs),
                ban_duration: Duration::from_secs(cfg.raw.limits.ban_secs),
            },
            login_grace: Duration::from_secs(cfg.raw.limits.login_grace_secs),
            spool_dir: Some(cfg.data_dir.join("spool")),
            proxy: cfg
                .proxy_policy
                .clone()
                .map(|nets| Arc::new(ProxyPolicy::new(nets))),
        },
    );
    if let Err(e) = gateway.reload_rules().await {
        return Err(CliError::Runtime(anyhow::anyhow!(
            "loading event rules: {e}"
        )));
    }

    let shutdown = CancellationToken::new();
    let mut listeners = JoinSet::new();
    // Event actions: resumes what the outbox holds from before a restart.
    let dispatcher = Dispatcher::new(gateway.clone(), &cfg.raw.events.allowed_webhook_hosts)
        .map_err(|e| CliError::Usage(format!("config key `events.allowed_webhook_hosts`: {e}")))?;
    listeners.spawn(dispatcher.run(shutdown.clone()));
    // Before any listener loads a key: nodes sharing this store present the
    // same generated host keys and certificate.
    let wants_tls = (cfg.raw.ftp.enabled && cfg.raw.ftp.tls != TlsSetting::Off)
        || !cfg.implicit_ftps_listen.is_empty();
    crate::cluster_keys::share(
        &store,
        &cfg.data_dir,
        crate::cluster_keys::Wanted {
            host_keys: cfg.raw.sftp.enabled
                && !cfg.sftp_listen.is_empty()
                && cfg.raw.sftp.host_keys.is_empty(),
            ftps_pair: wants_tls && cfg.raw.ftps.cert.as_os_str().is_empty(),
        },
    )
    .await
    .map_err(CliError::Runtime)?;
    let bound = start_listeners(&cfg, &gateway, &shutdown, &mut listeners).await?;
    let node = NodeInfo {
        name: cfg.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: chrono::Utc::now(),
        last_seen_at: chrono::Utc::now(),
        listeners: bound.iter().map(|(p, a)| format!("{p} {a}")).collect(),
    };
    let heartbeat = tokio::spawn(heartbeat(store.clone(), node.clone(), shutdown.clone()));
    // Several nodes share a PostgreSQL store (a SQLite file is one node's):
    // bans hold on every node, and GET /api/v1/sessions and max_sessions
    // see every node's sessions.
    if store.dialect() == "postgres" {
        listeners.spawn(gateway.clone().share_bans(shutdown.clone()));
        listeners.spawn(gateway.clone().share_sessions(shutdown.clone()));
    }
    // Quota counts of homes several nodes share (S3) live in the store.
    listeners.spawn(gateway.clone().share_quota_counts(shutdown.clone()));
    listeners.spawn(return_memory_after_load(
        gateway.admission().clone(),
        shutdown.clone(),
    ));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), node = %cfg.node_name, "dropgate started");

    stop.wait().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    gateway.sessions().disconnect_all();
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while listeners.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some listeners did not stop in time");
        listeners.abort_all();
    }
    // What the ended sessions gave back reaches the shared quota counts.
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), gateway.quotas().sync()).await
    {
        tracing::warn!(error = %e, "cannot share the last quota counts with the store");
    }
    // Leave the node list at once rather than after the heartbeat ages out.
    let _ = heartbeat.await;
    let leave = store.remove_node(&node.name, node.started_at);
    if let Err(e) = tokio::time::timeout(Duration::from_secs(2), leave)
        .await
        .unwrap_or(Ok(()))
    {
        tracing::warn!(error = %e, "could not remove this node from the node list");
    }
    gateway.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn start_listeners(
    cfg: &Effective,
    gateway: &Arc<Gateway>,
    shutdown: &CancellationToken,
    set: &mut JoinSet<()>,
) -> Result<Vec<(String, SocketAddr)>, CliError> {
    let mut bound: Vec<(String, SocketAddr)> = Vec::new();
    let announce = |protocol: &str, addrs: &[SocketAddr], bound: &mut Vec<(String, SocketAddr)>| {
        for a in addrs {
            tracing::info!(protocol, address = %a, "listening");
            bound.push((protocol.to_owned(), *a));
        }
    };

    // One certificate for explicit and implicit FTPS; loaded (or generated)
    // only when some listener can use it, reloaded on SIGHUP.
    let wants_tls = (cfg.raw.ftp.enabled && cfg.raw.ftp.tls != TlsSetting::Off)
        || !cfg.implicit_ftps_listen.is_empty();
    let tls = if wants_tls {
        let settings = TlsSettings {
            cert: Some(cfg.raw.ftps.cert.clone()).filter(|p| !p.as_os_str().is_empty()),
            key: Some(cfg.raw.ftps.key.clone()).filter(|p| !p.as_os_str().is_empty()),
            data_dir: cfg.data_dir.clone(),
            require_session_reuse: cfg.raw.ftps.require_session_reuse,
            tls12_only: cfg.raw.ftps.data_tls12_only,
        };
        let tls = FtpsTls::load(settings).map_err(|e| match e {
            TlsError::Generate(..) => CliError::Runtime(anyhow::anyhow!(e)),
            other => CliError::Usage(other.to_string()),
        })?;
        set.spawn(reload_on_sighup(tls.clone(), shutdown.clone()));
        Some(tls)
    } else {
        None
    };
    let tls_mode = match cfg.raw.ftp.tls {
        TlsSetting::Off => TlsMode::Off,
        TlsSetting::Optional => TlsMode::Optional,
        TlsSetting::Required => TlsMode::Required,
    };

    // The explicit listener's settings; the implicit FTPS listener differs
    // only in address, passive range and TLS from the first byte.
    let ftp_cfg = FtpConfig {
        listen: cfg.ftp_listen.clone(),
        passive_ports: cfg.passive_ports.clone(),
        passive_address: Some(cfg.raw.ftp.passive_address.clone()).filter(|s| !s.is_empty()),
        active_mode: cfg.raw.ftp.active_mode,
        idle_timeout: Duration::from_secs(cfg.raw.ftp.idle_timeout_secs),
        banner: cfg.raw.ftp.banner.clone(),
        tls: tls.clone(),
        tls_mode,
        implicit_tls: false,
    };

    if !cfg.implicit_ftps_listen.is_empty() {
        // The port pool is per listener, so the two listeners must not hand
        // out the same ports: the implicit one takes the upper half.
        let (lo, hi) = (*cfg.passive_ports.start(), *cfg.passive_ports.end());
        let mid = lo + (hi - lo) / 2;
        let implicit_ports = if hi > lo { (mid + 1)..=hi } else { lo..=hi };
        let ftps_cfg = FtpConfig {
            listen: cfg.implicit_ftps_listen.clone(),
            passive_ports: implicit_ports,
            tls_mode: TlsMode::Required,
            implicit_tls: true,
            ..ftp_cfg.clone()
        };
        let server = FtpServer::bind(ftps_cfg, gateway.clone())
            .await
            .with_context(|| {
                format!(
                    "starting the implicit FTPS listener on {:?}",
                    cfg.implicit_ftps_listen
                )
            })?;
        announce("ftps", &server.local_addrs(), &mut bound);
        set.spawn(server.run(shutdown.clone()));
    }

    if cfg.raw.ftp.enabled && !cfg.ftp_listen.is_empty() {
        let mut explicit = ftp_cfg;
        if !cfg.implicit_ftps_listen.is_empty() {
            let (lo, hi) = (*cfg.passive_ports.start(), *cfg.passive_ports.end());
            explicit.passive_ports = lo..=(lo + (hi - lo) / 2);
        }
        let server = FtpServer::bind(explicit, gateway.clone())
            .await
            .with_context(|| format!("starting the FTP listener on {:?}", cfg.ftp_listen))?;
        announce("ftp", &server.local_addrs(), &mut bound);
        set.spawn(server.run(shutdown.clone()));
    }

    if cfg.raw.sftp.enabled && !cfg.sftp_listen.is_empty() {
        let sftp_cfg = SftpConfig {
            listen: cfg.sftp_listen.clone(),
            host_keys: cfg.raw.sftp.host_keys.clone(),
            data_dir: cfg.data_dir.clone(),
            legacy_algorithms: cfg.raw.sftp.legacy_algorithms,
            idle_timeout: Duration::from_secs(cfg.raw.ftp.idle_timeout_secs.max(60) * 2),
        };
        let server = SftpServer::bind(sftp_cfg, gateway.clone())
            .await
            .map_err(|e| match e {
                e @ SftpError::LoadHostKey { .. } if !cfg.raw.sftp.host_keys.is_empty() => {
                    CliError::Usage(format!("config key `sftp.host_keys`: {e}"))
                }
                other => CliError::Runtime(anyhow::anyhow!(
                    "starting the SFTP listener on {:?}: {other}",
                    cfg.sftp_listen
                )),
            })?;
        for fp in server.host_key_fingerprints() {
            tracing::info!(fingerprint = %fp, "SFTP host key");
        }
        announce("sftp", &server.local_addrs(), &mut bound);
        set.spawn(server.run(shutdown.clone()));
    }

    if cfg.raw.admin.enabled && !cfg.admin_listen.is_empty() {
        let admin_cfg = AdminConfig {
            listen: cfg.admin_listen.clone(),
            listeners: bound.clone(),
        };
        let server = AdminServer::bind(admin_cfg, gateway.clone())
            .await
            .with_context(|| format!("starting the admin listener on {:?}", cfg.admin_listen))?;
        announce("admin", &server.local_addrs(), &mut bound);
        set.spawn(server.run(shutdown.clone()));
    }
    Ok(bound)
}

/// Descriptors one connection may hold at once: an FTP session has its
/// control and data connections, a passive listener, an open file and its
/// home folder's handle.
const DESCRIPTORS_PER_CONNECTION: u64 = 5;
/// Descriptors for everything else (listeners, database, logs, hashing).
const DESCRIPTORS_SPARE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the usual soft 1024
/// would refuse connections long before `max_connections`) and returns how
/// many connections the server admits: `max_connections`, or fewer when even
/// the hard limit cannot give each its descriptors. Refusing the connection
/// past that point (421, as for a full server) keeps the descriptors of the
/// sessions already running for their data connections and files; otherwise
/// the newest connection would take the last one and an existing session's
/// next transfer would fail.
fn raise_descriptor_limit(max_connections: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    // The soft limit is never above the hard one (`None` is unlimited).
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            limit.current = before;
        }
    }
    let Some(open_files) = limit.current else {
        tracing::info!("open-file limit: unlimited");
        return max_connections;
    };
    let fit = admissible_connections(open_files);
    if fit < max_connections as u64 {
        let admitted = usize::try_from(fit).unwrap_or(max_connections).max(1);
        tracing::warn!(
            open_files,
            needed = descriptors_needed(max_connections),
            admitted,
            "the open-file limit is below what limits.max_connections can need; \
             admitting at most {admitted} connections (raise `ulimit -n` or LimitNOFILE)"
        );
        admitted
    } else {
        tracing::info!(open_files, "open-file limit");
        max_connections
    }
}

/// Descriptors `max_connections` sessions can hold, plus the spare.
fn descriptors_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(DESCRIPTORS_PER_CONNECTION)
        .saturating_add(DESCRIPTORS_SPARE)
}

/// How many connections fit in `open_files` descriptors.
fn admissible_connections(open_files: u64) -> u64 {
    open_files.saturating_sub(DESCRIPTORS_SPARE) / DESCRIPTORS_PER_CONNECTION
}

/// Refreshes this node's row in the store's node list until shutdown. A node
/// with the same name seen recently is another process (two nodes left on
/// the default name, say): said once, since their rows would overwrite each
/// other.
async fn heartbeat(store: Store, mut node: NodeInfo, shutdown: CancellationToken) {
    let recent = chrono::Utc::now()
        - chrono::Duration::from_std(dropgate_store::NODE_GONE_AFTER).unwrap_or_default();
    let others = tokio::time::timeout(Duration::from_secs(5), store.list_nodes(recent)).await;
    if let Ok(Ok(nodes)) = others
        && nodes.iter().any(|n| n.name == node.name)
    {
        tracing::warn!(
            node = %node.name,
            "another node with this name was seen in the last seconds; give each node its own [cluster] node_name"
        );
    }
    loop {
        node.last_seen_at = chrono::Utc::now();
        // A database that does not answer must not hold up the shutdown.
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = store.node_heartbeat(&node) => if let Err(e) = r {
                tracing::warn!(error = %e, "node heartbeat failed");
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(dropgate_store::NODE_HEARTBEAT) => {}
        }
    }
}

/// How often the connection count is looked at for [`return_memory_after_load`].
const LOAD_SAMPLE: Duration = Duration::from_secs(5);

/// Gives memory freed after a burst of load back to the system. glibc keeps
/// what a thousand sessions freed in its per-thread arenas (measured: 93 MiB
/// idle, 331 MiB under 1,000 sessions, still 256 MiB minutes after they
/// ended, while `malloc_trim` brought it to 113 MiB). So once the connection
/// count has fallen to half of its peak since the last trim, trim once. A
/// steady load never trims, so no memory is handed back only to be faulted
/// in again.
async fn return_memory_after_load(
    admission: Arc<dropgate_core::Admission>,
    shutdown: CancellationToken,
) {
    let mut peak = 0u64;
    let mut trimmed_at_zero = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LOAD_SAMPLE) => {}
        }
        let now = admission.connections() as u64;
        peak = peak.max(now);
        let fell = now.saturating_mul(2) <= peak && peak >= 8;
        let idle = now == 0 && !trimmed_at_zero;
        if fell || idle {
            let _ = tokio::task::spawn_blocking(trim_heap).await;
            tracing::debug!(
                connections = now,
                peak,
                "returned freed memory to the system"
            );
            peak = now;
            trimmed_at_zero = now == 0;
        } else if now > 0 {
            trimmed_at_zero = false;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and only releases free pages of
    // glibc's own arenas; it is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// SIGHUP re-reads the FTPS certificate; sessions already running keep theirs.
async fn reload_on_sighup(tls: Arc<FtpsTls>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; certificate reload disabled");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                match tls.reload() {
                    Ok(()) => tracing::info!("FTPS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "FTPS certificate reload failed; keeping the old one"),
                }
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, CliError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Returns once either signal has arrived (also before this call).
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// SPEC 2: with no admin at all, create `admin` with a random password, print
/// it once and leave it in `<data_dir>/initial-admin-password` (0600).
async fn ensure_first_admin(store: &Store, data_dir: &Path) -> Result<(), CliError> {
    if store.count_admins().await.context("counting admins")? > 0 {
        return Ok(());
    }
    let password = random_password();
    let hash = store
        .hasher()
        .hash(&password)
        .await
        .context("hashing the admin password")?;
    store
        .create_admin("admin", &hash)
        .await
        .context("creating the first admin")?;
    let file = data_dir.join("initial-admin-password");
    write_private(&file, &format!("{password}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    eprintln!("dropgate: created admin account `admin` with password: {password}");
    eprintln!(
        "dropgate: (also written to {}; change it and delete the file)",
        file.display()
    );
    Ok(())
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Writes a file readable by its owner only (created 0600, never widened).
pub(crate) fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}
