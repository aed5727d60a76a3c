//! FTP and explicit FTPS sessions (suppaftp over tokio, rustls with
//! aws-lc-rs), passive data connections (EPSV), binary type.
//!
//! dropgate requires FTPS data connections to resume the TLS session of
//! their control connection (`[ftps] require_session_reuse`, on by default).
//! rustls keys its client session cache by server name, and every session
//! here talks to the same name, so each control connection gets its own
//! clone of the client configuration with a cache of its own: a data
//! connection then offers a ticket of its own control session and never one
//! of a neighbour's (which the server would refuse).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use suppaftp::Mode;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsStream, ImplAsyncFtpStream};
use suppaftp::types::FileType;

use crate::ConfigError;
use crate::content;

type Stream = ImplAsyncFtpStream<AsyncRustlsStream>;

/// The TCP connect limit (the whole login step has the step limit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A client configuration trusting the certificates in `ca` (PEM), TLS 1.2
/// and 1.3 over aws-lc-rs, ALPN `ftp` (what dropgate's FTPS expects when a
/// client offers ALPN).
pub(crate) fn client_tls(ca: &Path) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let bad = |e: &dyn std::fmt::Display| ConfigError(format!("CA file {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))?;
    for cert in certs {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"ftp".to_vec()];
    Ok(Arc::new(cfg))
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// One logged-in FTP or FTPS control connection.
pub(crate) struct FtpConn {
    ftp: Stream,
}

impl FtpConn {
    /// Connects, secures the control connection when `tls` is given
    /// (`AUTH TLS`, `PBSZ 0`, `PROT P`), logs in, selects binary type and
    /// extended passive mode.
    pub(crate) async fn connect(
        addr: SocketAddr,
        tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
        user: &str,
        password: &str,
    ) -> Result<FtpConn, String> {
        let mut ftp = Stream::connect_timeout(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| err("connect", e))?;
        if let Some((base, name)) = tls {
            let mut own = (**base).clone();
            own.resumption = rustls::client::Resumption::in_memory_sessions(8);
            let connector =
                AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::new(own)));
            ftp = ftp
                .into_secure(connector, name)
                .await
                .map_err(|e| err("AUTH TLS", e))?;
        }
        ftp.login(user, password)
            .await
            .map_err(|e| err("login", e))?;
        ftp.transfer_type(FileType::Binary)
            .await
            .map_err(|e| err("TYPE I", e))?;
        ftp.set_mode(Mode::ExtendedPassive);
        Ok(FtpConn { ftp })
    }

    pub(crate) async fn mkdir(&mut self, path: &str) -> Result<(), String> {
        self.ftp.mkdir(path).await.map_err(|e| err("MKD", e))
    }

    pub(crate) async fn rmdir(&mut self, path: &str) -> Result<(), String> {
        self.ftp.rmdir(path).await.map_err(|e| err("RMD", e))
    }

    pub(crate) async fn delete(&mut self, path: &str) -> Result<(), String> {
        self.ftp.rm(path).await.map_err(|e| err("DELE", e))
    }

    /// `STOR`: generated content; the SHA-256 of what was sent once the
    /// server has confirmed the transfer (226).
    pub(crate) async fn upload(
        &mut self,
        path: &str,
        seed: u64,
        size: u64,
    ) -> Result<[u8; 32], String> {
        let mut data = self
            .ftp
            .put_with_stream(path)
            .await
            .map_err(|e| err("STOR", e))?;
        let digest = content::write(&mut data, seed, size)
            .await
            .map_err(|e| err("STOR data", e))?;
        data.finish().await.map_err(|e| err("STOR reply", e))?;
        Ok(digest)
    }

    /// `RETR`: (bytes, SHA-256) once the server has confirmed (226).
    pub(crate) async fn download(&mut self, path: &str) -> Result<(u64, [u8; 32]), String> {
        let mut data = self
            .ftp
            .retr_as_stream(path)
            .await
            .map_err(|e| err("RETR", e))?;
        let got = content::read(&mut data)
            .await
            .map_err(|e| err("RETR data", e))?;
        data.finish().await.map_err(|e| err("RETR reply", e))?;
        Ok(got)
    }

    /// `LIST dir`: (name, size) of the regular files in it.
    pub(crate) async fn list(&mut self, dir: &str) -> Result<Vec<(String, u64)>, String> {
        let lines = self.ftp.list(Some(dir)).await.map_err(|e| err("LIST", e))?;
        Ok(lines.iter().filter_map(|l| parse_list_line(l)).collect())
    }

    pub(crate) async fn quit(mut self) -> Result<(), String> {
        self.ftp.quit().await.map_err(|e| err("QUIT", e))
    }
}

/// A regular file's (name, size) from an `ls -l` style line
/// (`-rw-r--r-- 1 owner group SIZE Mon DD HH:MM NAME`); names here have no
/// spaces.
fn parse_list_line(line: &str) -> Option<(String, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 9 || !fields[0].starts_with('-') {
        return None;
    }
    let size = fields[4].parse().ok()?;
    Some((fields[8..].join(" "), size))
}

#[cfg(test)]
mod tests {
    use super::parse_list_line;

    #[test]
    fn ls_lines() {
        assert_eq!(
            parse_list_line("-rw-r--r-- 1 ftp ftp 12345 Nov 21 10:02 f1.bin"),
            Some(("f1.bin".to_owned(), 12345))
        );
        assert_eq!(
            parse_list_line("drwxr-xr-x 1 ftp ftp 0 Nov 21 10:02 sub"),
            None
        );
        assert_eq!(parse_list_line("total 3"), None);
    }
}
