//! TLS for FTP: certificates, the rustls server configuration, and the
//! binding of data channels to their control connection.
//!
//! Owns: loading the PEM certificate chain and key (or generating a
//! self-signed pair into `data_dir` on first start), reloading them on SIGHUP,
//! TLS 1.2/1.3 only with the aws-lc-rs provider, ALPN `ftp` (ALPACA), and one
//! private session store per control connection so a data channel can prove
//! it resumed *this* control session (what vsftpd's `require_ssl_reuse` and
//! FileZilla Server enforce; it stops passive-port theft behind a shared NAT).
//!
//! Must not: parse FTP commands or touch accounts and files — the FTP
//! listener (`dropgate-ftp`) drives these streams.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::Poll;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::{HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// File names of the generated self-signed pair inside `data_dir`.
pub const GENERATED_CERT: &str = "ftps-cert.pem";
/// See [`GENERATED_CERT`].
pub const GENERATED_KEY: &str = "ftps-key.pem";

/// Sessions one control connection may cache (its own data channels only).
const SESSIONS_PER_CONTROL: usize = 64;

/// What can go wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("config key `ftps.cert`: {0}")]
    Cert(String),
    /// The key file could not be read or holds no private key.
    #[error("config key `ftps.key`: {0}")]
    Key(String),
    /// The key does not belong to the certificate, or rustls refused them.
    #[error("config keys `ftps.cert`/`ftps.key`: {0}")]
    Mismatch(String),
    /// Generating or writing the self-signed pair failed.
    #[error("generating the self-signed FTPS certificate in {0}: {1}")]
    Generate(PathBuf, String),
}

/// Why a data-channel handshake was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataTlsError {
    /// The TLS handshake itself failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake did not resume this control connection's TLS session.
    #[error("data connection did not resume the control connection's TLS session")]
    NotResumed,
}

/// A transport a TLS handshake can ask to acknowledge what it has read at
/// once, instead of after the kernel's delayed-ACK timer.
///
/// Why: GnuTLS clients (lftp) send their `ChangeCipherSpec` and `Finished`,
/// and then their first command or a small file, as separate small writes
/// with Nagle's algorithm on, so each waits until the one before is
/// acknowledged. Linux delays that ACK by 40 ms or more once the server has
/// answered anything (the `ServerHello`), so every control and every data
/// connection handshake paid ~40 ms. The handshakes here re-arm
/// `TCP_QUICKACK` after each step; the option does not stick, so plain
/// transfers keep the kernel's usual delayed ACKs.
pub trait AckNow {
    /// Sends the ACK for data already read now. Not a TCP socket: nothing.
    fn ack_now(&self) {}
}

impl AckNow for tokio::net::TcpStream {
    fn ack_now(&self) {
        // Best effort: a socket that refuses it only loses the shortcut.
        let _ = rustix::net::sockopt::set_tcp_quickack(self, true);
    }
}

/// A TLS stream on top of a TCP stream is past its handshake.
impl<IO> AckNow for TlsStream<IO> {}
/// In-memory streams (tests) have no ACKs.
impl AckNow for tokio::io::DuplexStream {}
impl<T> AckNow for std::io::Cursor<T> {}

/// The TLS server handshake, acknowledging each step of the client at once
/// (see [`AckNow`]), the last one too: the client's next small write (a
/// command, a small upload) would otherwise wait for that ACK.
async fn handshake<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + AckNow + Unpin,
{
    let mut accept = TlsAcceptor::from(config).accept(io);
    std::future::poll_fn(|cx| {
        let step = Pin::new(&mut accept).poll(cx);
        match &step {
            Poll::Pending => {
                if let Some(io) = accept.get_ref() {
                    io.ack_now();
                }
            }
            Poll::Ready(Ok(stream)) => stream.get_ref().0.ack_now(),
            Poll::Ready(Err(_)) => {}
        }
        step
    })
    .await
}

/// Where certificates come from and how strict data channels are.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM chain (`[ftps] cert`); `None`: generated into `data_dir`.
    pub cert: Option<PathBuf>,
    /// PEM private key (`[ftps] key`).
    pub key: Option<PathBuf>,
    /// Where a generated pair lives.
    pub data_dir: PathBuf,
    /// `[ftps] require_session_reuse`.
    pub require_session_reuse: bool,
    /// `[ftps] data_tls12_only`: hold FTPS to TLS 1.2, for clients that
    /// break on TLS 1.3 resumption of data channels.
    pub tls12_only: bool,
}

/// The FTPS certificate and base configuration, reloadable while running.
pub struct FtpsTls {
    settings: TlsSettings,
    base: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for FtpsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpsTls")
            .field("settings", &self.settings)
            .finish()
    }
}

impl FtpsTls {
    /// Loads (or generates) the certificate and builds the base configuration.
    pub fn load(settings: TlsSettings) -> Result<Arc<FtpsTls>, TlsError> {
        let base = build_config(&settings)?;
        Ok(Arc::new(FtpsTls {
            settings,
            base: RwLock::new(base),
        }))
    }

    /// Re-reads the certificate files (SIGHUP). Sessions already running keep
    /// the configuration they started with; new ones get the new certificate.
    /// On error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build_config(&self.settings)?;
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The TLS state of one control connection: a configuration whose session
    /// cache and ticket keys belong to it alone, shared with its data channels.
    pub fn control_session(&self) -> ControlTls {
        let base = self.base.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut cfg = (*base).clone();
        cfg.session_storage = ServerSessionMemoryCache::new(SESSIONS_PER_CONTROL);
        match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => cfg.ticketer = t,
            Err(e) => {
                tracing::warn!(error = %e, "no TLS ticketer; TLS 1.3 data channels may not resume")
            }
        }
        // A clone shares the session store and the ticketer (both Arcs).
        let mut upload_cfg = cfg.clone();
        upload_cfg.send_tls13_tickets = 0;
        upload_cfg.max_tls13_tickets = 0;
        ControlTls {
            config: Arc::new(cfg),
            upload_config: Arc::new(upload_cfg),
            require_reuse: self.settings.require_session_reuse,
        }
    }

    /// Whether data channels must resume the control session.
    pub fn require_session_reuse(&self) -> bool {
        self.settings.require_session_reuse
    }
}

/// TLS for one control connection and its data channels.
#[derive(Clone)]
pub struct ControlTls {
    config: Arc<ServerConfig>,
    /// The same session store and ticket keys, but no TLS 1.3 tickets sent:
    /// for data connections the client only writes to (uploads).
    upload_config: Arc<ServerConfig>,
    require_reuse: bool,
}

impl std::fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTls")
            .field("require_reuse", &self.require_reuse)
            .finish_non_exhaustive()
    }
}

impl ControlTls {
    /// Handshakes the control connection (after `AUTH TLS`, or at once on the
    /// implicit listener).
    pub async fn accept_control<IO>(&self, io: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + AckNow + Unpin,
    {
        handshake(self.config.clone(), io).await
    }

    /// Handshakes a data connection; with session reuse required, refuses any
    /// handshake that did not resume this control connection's session.
    pub async fn accept_data<IO>(&self, io: IO) -> Result<TlsStream<IO>, DataTlsError>
    where
        IO: AsyncRead + AsyncWrite + AckNow + Unpin,
    {
        Self::accept_with(self.config.clone(), self.require_reuse, io).await
    }

    /// [`accept_data`](Self::accept_data) for a data connection the client
    /// only writes to (an upload): no TLS 1.3 session tickets are sent on
    /// it. A client that never reads them (lftp/GnuTLS) closes its socket
    /// with unread bytes, which makes the kernel send a reset that destroys
    /// upload data still in flight. Clients resume the control session's
    /// ticket anyway.
    pub async fn accept_upload<IO>(&self, io: IO) -> Result<TlsStream<IO>, DataTlsError>
    where
        IO: AsyncRead + AsyncWrite + AckNow + Unpin,
    {
        Self::accept_with(self.upload_config.clone(), self.require_reuse, io).await
    }

    async fn accept_with<IO>(
        config: Arc<ServerConfig>,
        require_reuse: bool,
        io: IO,
    ) -> Result<TlsStream<IO>, DataTlsError>
    where
        IO: AsyncRead + AsyncWrite + AckNow + Unpin,
    {
        let stream = handshake(config, io)
            .await
            .map_err(DataTlsError::Handshake)?;
        if require_reuse && stream.get_ref().1.handshake_kind() != Some(HandshakeKind::Resumed) {
            return Err(DataTlsError::NotResumed);
        }
        Ok(stream)
    }
}

fn build_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&settings.cert, &settings.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_generated(&settings.data_dir)?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| TlsError::Cert(format!("{}: {e}", cert_path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert(format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(format!(
            "{}: no PEM certificate found",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| TlsError::Key(format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    // ALPACA: a client that offers ALPN must offer "ftp", or rustls ends the
    // handshake with no_application_protocol.
    cfg.alpn_protocols = vec![b"ftp".to_vec()];
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Checks a certificate chain and private key given as PEM text (what the
/// store holds for a cluster): both parse and the key belongs to the
/// certificate. Errors never repeat the key's text.
pub fn check_pair(cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Cert("stored certificate: not PEM".into()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert("stored certificate: none found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Key("stored key: not a PEM private key".into()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(())
}

/// Returns the generated pair's paths, creating it on first use.
pub fn ensure_generated(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = data_dir.join(GENERATED_CERT);
    let key = data_dir.join(GENERATED_KEY);
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let fail =
        |e: &dyn std::fmt::Display| TlsError::Generate(data_dir.to_path_buf(), e.to_string());
    std::fs::create_dir_all(data_dir).map_err(|e| fail(&e))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut names = vec!["localhost".to_owned()];
    if !host.is_empty() && host != "localhost" {
        names.push(host);
    }
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| fail(&e))?;
    write_file(&key, &pair.signing_key.serialize_pem(), 0o600).map_err(|e| fail(&e))?;
    write_file(&cert, &pair.cert.pem(), 0o644).map_err(|e| fail(&e))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed FTPS certificate");
    Ok((cert, key))
}

fn write_file(path: &Path, content: &str, mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pair_is_checked_whole_and_never_quoted() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        let (cert_a, key_a) = (a.cert.pem(), a.signing_key.serialize_pem());
        check_pair(&cert_a, &key_a).unwrap();
        let mismatched = check_pair(&cert_a, &b.signing_key.serialize_pem());
        assert!(mismatched.is_err(), "another certificate's key accepted");
        let garbage = check_pair(&cert_a, "not a key");
        assert!(garbage.is_err());
        let broken = check_pair("x", &key_a).unwrap_err().to_string();
        assert!(!broken.contains("PRIVATE KEY"), "{broken}");
    }

    #[test]
    fn generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let s = TlsSettings {
            cert: None,
            key: None,
            data_dir: dir.path().to_path_buf(),
            require_session_reuse: true,
            tls12_only: false,
        };
        let _ = FtpsTls::load(s.clone()).unwrap();
        let first = std::fs::read(dir.path().join(GENERATED_CERT)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(GENERATED_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let tls = FtpsTls::load(s).unwrap();
        assert_eq!(
            first,
            std::fs::read(dir.path().join(GENERATED_CERT)).unwrap()
        );
        tls.reload().unwrap();
    }

    #[test]
    fn mismatched_or_missing_files_are_named() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let gen_in = |d: &Path| {
            FtpsTls::load(TlsSettings {
                cert: None,
                key: None,
                data_dir: d.to_path_buf(),
                require_session_reuse: true,
                tls12_only: false,
            })
            .unwrap()
        };
        gen_in(a.path());
        gen_in(b.path());
        let err = FtpsTls::load(TlsSettings {
            cert: Some(a.path().join(GENERATED_CERT)),
            key: Some(b.path().join(GENERATED_KEY)),
            data_dir: a.path().to_path_buf(),
            require_session_reuse: true,
            tls12_only: false,
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Mismatch(_)), "{err}");
        let err = FtpsTls::load(TlsSettings {
            cert: Some(a.path().join("nope.pem")),
            key: Some(a.path().join(GENERATED_KEY)),
            data_dir: a.path().to_path_buf(),
            require_session_reuse: true,
            tls12_only: false,
        })
        .unwrap_err();
        assert!(err.to_string().contains("ftps.cert"), "{err}");
    }
}
