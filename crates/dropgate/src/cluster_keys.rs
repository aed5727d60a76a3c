//! Keys that every node sharing one store must present alike: the SSH host
//! keys and the self-signed FTPS pair that dropgate generates when none is
//! configured. Behind a load balancer, a client that reaches another node
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
//! Keys given by path (`[sftp] host_keys`, `[ftps] cert`/`key`) are the
//! operator's: they are never stored, and every node must be given the same.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use dropgate_core::store::Store;

/// One set of files stored under one name.
struct KeySet {
    name: &'static str,
    files: Vec<&'static str>,
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
    let mut sets = Vec::new();
    if wanted.host_keys {
        for (key, public) in dropgate_sftp::DEFAULT_HOST_KEY_FILES {
            sets.push(KeySet {
                name: key,
                files: vec![key, public],
            });
        }
    }
    if wanted.ftps_pair {
        sets.push(KeySet {
            name: "ftps_self_signed",
            files: vec![dropgate_ftps::GENERATED_CERT, dropgate_ftps::GENERATED_KEY],
        });
    }
    if sets.is_empty() {
        return Ok(());
    }
    let mut missing = Vec::new();
    for set in sets {
        match store
            .cluster_key(set.name)
            .await
            .with_context(|| format!("reading the cluster's {}", set.name))?
        {
            Some(stored) => install(data_dir, &set, &stored)?,
            None => missing.push(set),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    // First node (or first with these keys): generate what this node lacks,
    // then offer it. Generation only fills in missing files.
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
        for file in &set.files {
            let path = data_dir.join(file);
            let content = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            local.insert((*file).to_owned(), content);
        }
        let offer = serde_json::to_string(&local)?;
        let stored = store
            .share_cluster_key(set.name, &offer)
            .await
            .with_context(|| format!("storing the cluster's {}", set.name))?;
        if stored == offer {
            tracing::info!(
                key = set.name,
                "stored this node's generated key for the other nodes"
            );
        } else {
            install(data_dir, &set, &stored)?;
        }
    }
    Ok(())
}

/// Writes the stored set into `data_dir` where it differs from what is there
/// (atomically, owner-only).
fn install(data_dir: &Path, set: &KeySet, stored: &str) -> anyhow::Result<()> {
    let files: BTreeMap<String, String> = serde_json::from_str(stored)
        .with_context(|| format!("the stored {} is not a set of files", set.name))?;
    let mut changed = false;
    for file in &set.files {
        let content = files
            .get(*file)
            .with_context(|| format!("the stored {} lacks {file}", set.name))?;
        let path = data_dir.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let tmp = path.with_extension("cluster-tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(content.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().with_context(|| format!("writing {}", path.display()))?;
        changed = true;
    }
    if changed {
        tracing::info!(key = set.name, "took the cluster's key from the store");
    }
    Ok(())
}
