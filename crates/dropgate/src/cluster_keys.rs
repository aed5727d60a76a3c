//! Keys that every node sharing one PostgreSQL must present alike: the SSH
//! host keys and the self-signed FTPS pair that dropgate generates when none
//! is configured. Behind a load balancer, a client that reaches another node
//! must see the same host key, or OpenSSH refuses with "REMOTE HOST
//! IDENTIFICATION HAS CHANGED".
//!
//! Each set is stored once (`cluster_keys`, first writer wins) as a JSON map
//! of file name to contents; a node takes the stored set into its `data_dir`
//! before its listeners load keys from there, so everything downstream
//! (loading, SIGHUP reload, fingerprints in the log) stays file-based. A node
//! with no stored set offers its own files (generating them if missing), and
//! installs whatever the store returns, so two nodes starting at once still
//! end up with one set and no node ever serves a key of its own.
//!
//! A stored set is checked (keys parse, the certificate matches its key)
//! before it touches the disk, and files it replaces are kept beside as
//! `<name>.replaced-<unix time>`. Errors never quote the stored text.
//!
//! Only on PostgreSQL: a SQLite store is one node's own, and its keys have
//! no reason to sit in the database too. Keys given by path (`[sftp]
//! host_keys`, `[ftps] cert`/`key`) are the operator's: never stored.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use dropgate_core::store::Store;

/// The name of the FTPS set in `cluster_keys`.
const FTPS_SET: &str = "ftps_self_signed";

/// One set of files stored under one name.
enum KeySet {
    /// An SSH host key: the private key is stored, its `.pub` derived.
    HostKey {
        key: &'static str,
        public: &'static str,
    },
    /// The generated FTPS certificate and its key.
    FtpsPair,
}

impl KeySet {
    fn name(&self) -> &'static str {
        match self {
            KeySet::HostKey { key, .. } => key,
            KeySet::FtpsPair => FTPS_SET,
        }
    }

    /// The files stored for this set.
    fn stored_files(&self) -> Vec<&'static str> {
        match self {
            KeySet::HostKey { key, .. } => vec![key],
            KeySet::FtpsPair => vec![dropgate_ftps::GENERATED_CERT, dropgate_ftps::GENERATED_KEY],
        }
    }

    /// Checks a stored set and returns every file to write, with contents.
    fn files_to_write(
        &self,
        stored: &BTreeMap<String, String>,
    ) -> anyhow::Result<Vec<(&'static str, String)>> {
        let get = |file: &str| {
            stored
                .get(file)
                .cloned()
                .with_context(|| format!("the stored {} lacks {file}", self.name()))
        };
        match self {
            KeySet::HostKey { key, public } => {
                let pem = get(key)?;
                let (line, _) = dropgate_sftp::check_host_key(&pem)
                    .with_context(|| format!("the stored {key} is not usable"))?;
                Ok(vec![(*key, pem), (*public, format!("{line}\n"))])
            }
            KeySet::FtpsPair => {
                let cert = get(dropgate_ftps::GENERATED_CERT)?;
                let key = get(dropgate_ftps::GENERATED_KEY)?;
                dropgate_ftps::check_pair(&cert, &key)
                    .context("the stored FTPS certificate and key are not usable")?;
                Ok(vec![
                    (dropgate_ftps::GENERATED_CERT, cert),
                    (dropgate_ftps::GENERATED_KEY, key),
                ])
            }
        }
    }
}

/// Which generated sets this node uses.
pub(crate) struct Wanted {
    /// SFTP on, with no `[sftp] host_keys`.
    pub(crate) host_keys: bool,
    /// FTPS on (explicit or implicit), with no `[ftps] cert`.
    pub(crate) ftps_pair: bool,
}

/// Makes `data_dir` hold the cluster's generated keys (see the module docs).
pub(crate) async fn share(store: &Store, data_dir: &Path, wanted: Wanted) -> anyhow::Result<()> {
    if store.dialect() != "postgres" {
        return Ok(());
    }
    let mut sets = Vec::new();
    if wanted.host_keys {
        for (key, public) in dropgate_sftp::DEFAULT_HOST_KEY_FILES {
            sets.push(KeySet::HostKey { key, public });
        }
    }
    if wanted.ftps_pair {
        sets.push(KeySet::FtpsPair);
    }
    let mut missing = Vec::new();
    for set in sets {
        match store
            .cluster_key(set.name())
            .await
            .with_context(|| format!("reading the cluster's {}", set.name()))?
        {
            Some(stored) => install(data_dir, &set, &stored)?,
            None => missing.push(set),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    // First node (or first with these keys): generate what this node lacks
    // (only missing files are made), then offer it.
    if wanted.host_keys {
        dropgate_sftp::ensure_default_host_keys(data_dir)
            .await
            .context("generating SSH host keys")?;
    }
    if wanted.ftps_pair {
        dropgate_ftps::ensure_generated(data_dir).context("generating the FTPS certificate")?;
    }
    for set in missing {
        let mut local = BTreeMap::new();
        for file in set.stored_files() {
            let path = data_dir.join(file);
            let content = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            local.insert(file.to_owned(), content);
        }
        let offer = serde_json::to_string(&local)?;
        let stored = store
            .share_cluster_key(set.name(), &offer)
            .await
            .with_context(|| format!("storing the cluster's {}", set.name()))?;
        if stored == offer {
            tracing::info!(
                key = set.name(),
                "stored this node's key for the other nodes"
            );
        } else {
            install(data_dir, &set, &stored)?;
        }
    }
    Ok(())
}

/// Writes the stored set into `data_dir` where it differs from what is
/// there, after checking all of it; replaced files are kept beside.
fn install(data_dir: &Path, set: &KeySet, stored: &str) -> anyhow::Result<()> {
    // serde_json's message could quote the stored text (a private key):
    // say where it broke, not what it read.
    let files: BTreeMap<String, String> = match serde_json::from_str(stored) {
        Ok(files) => files,
        Err(e) => bail!(
            "the stored {} is not a set of files (line {}, column {})",
            set.name(),
            e.line(),
            e.column()
        ),
    };
    let to_write = set.files_to_write(&files)?;
    let changed: Vec<_> = to_write
        .into_iter()
        .filter(|(file, content)| {
            std::fs::read_to_string(data_dir.join(file)).ok().as_deref() != Some(content.as_str())
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut kept = Vec::new();
    for (file, content) in &changed {
        let path = data_dir.join(file);
        if path.exists() {
            let aside = data_dir.join(format!("{file}.replaced-{stamp}"));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("keeping {} aside", path.display()))?;
            kept.push(aside.display().to_string());
        }
        write_private(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    if kept.is_empty() {
        tracing::info!(key = set.name(), "took the cluster's key from the store");
    } else {
        tracing::warn!(
            key = set.name(),
            kept = ?kept,
            "took the cluster's key from the store in place of this node's own (kept beside)"
        );
    }
    Ok(())
}

/// Writes `content` to `path` through a fresh temporary (owner-only),
/// renamed into place; the temporary never outlives a failure.
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".cluster-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
