//! `dropgate serve`: open the store, make the first admin, start every
//! enabled listener with one shared shutdown token, stop on SIGINT/SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dropgate_core::{Gateway, GatewayConfig};
use dropgate_store::Store;
use dropgate_vfs::UploadMode;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::CliError;
use crate::config::{Effective, UploadModeSetting};

/// How long listeners get to close their sessions after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub(crate) async fn serve(cfg: Effective) -> Result<(), CliError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let store = crate::users::open_store(&cfg).await?;
    ensure_first_admin(&store, &cfg.data_dir).await?;

    std::fs::create_dir_all(&cfg.storage_root)
        .with_context(|| format!("creating storage root {}", cfg.storage_root.display()))?;
    // Only this process writes below the root at start-up, so any upload
    // temporary there is debris of a crash.
    match dropgate_vfs::sweep_stale_temporaries(&cfg.storage_root) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "swept stale upload temporaries"),
        Err(e) => tracing::warn!(error = %e, "could not sweep upload temporaries"),
    }

    let gateway = Gateway::new(
        store.clone(),
        GatewayConfig {
            storage_root: cfg.storage_root.clone(),
            upload_mode: match cfg.raw.storage.upload_mode {
                UploadModeSetting::Atomic => UploadMode::Atomic,
                UploadModeSetting::AtomicResume => UploadMode::AtomicResume,
                UploadModeSetting::Direct => UploadMode::Direct,
            },
            node_name: cfg.node_name.clone(),
        },
    );

    let shutdown = CancellationToken::new();
    let mut listeners = JoinSet::new();
    start_listeners(&cfg, &gateway, &shutdown, &mut listeners).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), node = %cfg.node_name, "dropgate started");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    gateway.sessions().disconnect_all();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while listeners.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some listeners did not stop in time");
        listeners.abort_all();
    }
    gateway.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn start_listeners(
    _cfg: &Effective,
    _gateway: &Arc<Gateway>,
    _shutdown: &CancellationToken,
    _set: &mut JoinSet<()>,
) -> Result<(), CliError> {
    Ok(())
}

async fn wait_for_signal() -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// SPEC 2: with no admin at all, create `admin` with a random password, print
/// it once and leave it in `<data_dir>/initial-admin-password` (0600).
async fn ensure_first_admin(store: &Store, data_dir: &Path) -> Result<(), CliError> {
    if store.count_admins().await.context("counting admins")? > 0 {
        return Ok(());
    }
    let password = random_password();
    let hash = store.hasher().hash(&password).await.context("hashing the admin password")?;
    store.create_admin("admin", &hash).await.context("creating the first admin")?;
    let file = data_dir.join("initial-admin-password");
    write_private(&file, &format!("{password}\n")).with_context(|| format!("writing {}", file.display()))?;
    eprintln!("dropgate: created admin account `admin` with password: {password}");
    eprintln!("dropgate: (also written to {}; change it and delete the file)", file.display());
    Ok(())
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..24).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Writes a file readable by its owner only (created 0600, never widened).
pub(crate) fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}
