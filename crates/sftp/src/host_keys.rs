//! Host keys: the configured ones, or an ed25519 and an RSA-3072 key generated
//! into `data_dir` on first start and loaded on every start after, so the
//! fingerprints clients pinned never change across restarts.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::{Algorithm, HashAlg, PrivateKey};

use crate::SftpError;

/// File name of the generated ed25519 key (OpenSSH's naming).
pub(crate) const ED25519_FILE: &str = "ssh_host_ed25519_key";
/// File name of the generated RSA key.
pub(crate) const RSA_FILE: &str = "ssh_host_rsa_key";
/// The generated keys and their `.pub` files: what every node of a cluster
/// must hold alike (`dropgate serve` shares them through the store).
pub const DEFAULT_HOST_KEY_FILES: [(&str, &str); 2] = [
    (ED25519_FILE, "ssh_host_ed25519_key.pub"),
    (RSA_FILE, "ssh_host_rsa_key.pub"),
];
/// RSA size for generated keys (OpenSSH's default since 9.x is 3072).
const RSA_BITS: usize = 3072;

/// Loads the explicit keys, or loads/generates the default pair in `data_dir`.
pub(crate) async fn load_or_generate(
    explicit: &[PathBuf],
    data_dir: &Path,
) -> Result<Vec<PrivateKey>, SftpError> {
    if !explicit.is_empty() {
        return explicit.iter().map(|p| load(p)).collect();
    }
    let mut keys = Vec::with_capacity(2);
    for (file, kind) in [(ED25519_FILE, KeyKind::Ed25519), (RSA_FILE, KeyKind::Rsa)] {
        let path = data_dir.join(file);
        if path.exists() {
            keys.push(load(&path)?);
        } else {
            let (dir, target) = (data_dir.to_owned(), path.clone());
            // RSA generation takes a while: keep it off the async workers.
            let key = tokio::task::spawn_blocking(move || generate(&dir, &target, kind))
                .await
                .map_err(|e| SftpError::CreateHostKey {
                    path,
                    message: e.to_string(),
                })??;
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Generates whichever default key is missing from `data_dir` (no
/// configured `host_keys`), loading the others to check them.
pub async fn ensure_default_host_keys(data_dir: &Path) -> Result<(), SftpError> {
    load_or_generate(&[], data_dir).await.map(|_| ())
}

/// Checks a host key given as text (what the store holds for a cluster)
/// the way a key file is checked, and returns its public half as an
/// OpenSSH line (for the `.pub` file) and its fingerprint. Errors never
/// repeat the key's text.
pub fn check_host_key(pem: &str) -> Result<(String, String), SftpError> {
    let fail = |message: String| SftpError::LoadHostKey {
        path: PathBuf::from("(stored host key)"),
        message,
    };
    let key = russh::keys::decode_secret_key(pem, None)
        .map_err(|_| fail("not a readable private key".into()))?;
    let algorithm = key.algorithm();
    if algorithm != Algorithm::Ed25519 && !algorithm.clone().is_rsa() {
        return Err(fail(format!("unsupported host key type {algorithm}")));
    }
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| fail(e.to_string()))?;
    Ok((public, fingerprint(&key)))
}

/// `SHA256:…` fingerprint of a host key, as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

fn load(path: &Path) -> Result<PrivateKey, SftpError> {
    let key = russh::keys::load_secret_key(path, None).map_err(|e| SftpError::LoadHostKey {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // Only these are offered (see the algorithm policy in server.rs); any
    // other key would silently never be used.
    let algorithm = key.algorithm();
    if algorithm != Algorithm::Ed25519 && !key.algorithm().is_rsa() {
        return Err(SftpError::LoadHostKey {
            path: path.to_owned(),
            message: format!("unsupported host key type {algorithm} (use ed25519 or RSA)"),
        });
    }
    Ok(key)
}

#[derive(Clone, Copy)]
enum KeyKind {
    Ed25519,
    Rsa,
}

/// Generates a key and writes it (mode 0600, via a temporary renamed into
/// place so a crash never leaves a half-written key), plus its `.pub`.
fn generate(data_dir: &Path, path: &Path, kind: KeyKind) -> Result<PrivateKey, SftpError> {
    let fail = |message: String| SftpError::CreateHostKey {
        path: path.to_owned(),
        message,
    };
    std::fs::create_dir_all(data_dir).map_err(|e| fail(e.to_string()))?;
    let mut rng = russh::keys::key::safe_rng();
    let key = match kind {
        KeyKind::Ed25519 => PrivateKey::random(&mut rng, Algorithm::Ed25519),
        KeyKind::Rsa => RsaKeypair::random(&mut rng, RSA_BITS)
            .and_then(|pair| PrivateKey::new(KeypairData::from(pair), "dropgate host key")),
    }
    .map_err(|e| fail(e.to_string()))?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| fail(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| fail(e.to_string()))?;

    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::write(path.with_extension("pub"), format!("{public}\n"))?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e.to_string())
    })?;
    tracing::info!(path = %path.display(), fingerprint = %fingerprint(&key), "generated SSH host key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stored_key_is_checked_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        ensure_default_host_keys(dir.path()).await.unwrap();
        let pem = std::fs::read_to_string(dir.path().join(ED25519_FILE)).unwrap();
        let public = std::fs::read_to_string(dir.path().join("ssh_host_ed25519_key.pub")).unwrap();
        let (line, fp) = check_host_key(&pem).unwrap();
        assert_eq!(format!("{line}\n"), public);
        assert!(fp.starts_with("SHA256:"));
        let cut = &pem[..pem.len() / 2];
        let err = check_host_key(cut).unwrap_err().to_string();
        assert!(!err.contains(&cut[40..80]), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn generated_keys_persist_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(&[], dir.path()).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].algorithm(), Algorithm::Ed25519);
        assert!(first[1].algorithm().is_rsa());
        for f in [ED25519_FILE, RSA_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
            assert!(dir.path().join(format!("{f}.pub")).exists());
        }
        let second = load_or_generate(&[], dir.path()).await.unwrap();
        let fp = |k: &Vec<PrivateKey>| k.iter().map(fingerprint).collect::<Vec<_>>();
        assert_eq!(fp(&first), fp(&second));
        assert!(fp(&first)[0].starts_with("SHA256:"));
        // Explicit keys replace the generated pair.
        let only = load_or_generate(&[dir.path().join(ED25519_FILE)], dir.path())
            .await
            .unwrap();
        assert_eq!(fp(&only), vec![fp(&first)[0].clone()]);
        let missing = load_or_generate(&[dir.path().join("nope")], dir.path()).await;
        assert!(matches!(missing, Err(SftpError::LoadHostKey { .. })));
        // An ECDSA key is refused with a clear message rather than never offered.
        let mut rng = russh::keys::key::safe_rng();
        let ecdsa = PrivateKey::random(
            &mut rng,
            Algorithm::Ecdsa {
                curve: russh::keys::EcdsaCurve::NistP256,
            },
        )
        .unwrap();
        let ecdsa_path = dir.path().join("ecdsa");
        ecdsa
            .write_openssh_file(&ecdsa_path, LineEnding::LF)
            .unwrap();
        match load_or_generate(&[ecdsa_path], dir.path()).await {
            Err(SftpError::LoadHostKey { message, .. }) => {
                assert!(message.contains("unsupported"), "{message}")
            }
            other => panic!("ECDSA host key accepted: {:?}", other.map(|k| k.len())),
        }
    }
}
