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
//!
//! TLS goes through [`FlushingTls`], not suppaftp's own rustls stream: see
//! there why.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use suppaftp::Mode;
use suppaftp::tokio::{AsyncTlsConnector, ImplAsyncFtpStream, TokioTlsStream};
use suppaftp::types::{FileType, FtpError, FtpResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::ConfigError;
use crate::content;

type Stream = ImplAsyncFtpStream<FlushingTls>;

/// A client TLS stream that sends what was written before it reads.
///
/// tokio-rustls takes a write's bytes into rustls and sends the records as
/// far as the socket takes them at that moment; when the socket says "not
/// now" (a full buffer, or tokio's cooperative budget of the task spent),
/// the records wait in rustls for the next write or flush, and the write
/// still reports success. suppaftp sends each command with `write_all` and
/// no flush, then reads the reply: now and then (about one command in
/// 70,000 of the load test) the command never left this process, and the
/// session waited for a reply until its step timed out (a DELE or the EPSV
/// of an upload "timed out after 30s", with the server idle and silent).
/// Flushing before every read sends it; a flush with nothing pending costs
/// nothing.
#[derive(Debug)]
pub(crate) struct FlushingTls(TlsStream<TcpStream>);

impl AsyncRead for FlushingTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.0).poll_flush(cx))?;
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for FlushingTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TokioTlsStream for FlushingTls {
    type InnerStream = TlsStream<TcpStream>;

    fn tcp_stream(self) -> FtpResult<TcpStream> {
        Ok(self.0.into_inner().0)
    }

    fn get_ref(&self) -> &TcpStream {
        self.0.get_ref().0
    }

    fn mut_ref(&mut self) -> &mut Self::InnerStream {
        &mut self.0
    }
}

/// Makes [`FlushingTls`] streams (control and data connections).
struct FlushingConnector(tokio_rustls::TlsConnector);

impl std::fmt::Debug for FlushingConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushingConnector")
    }
}

#[async_trait::async_trait]
impl AsyncTlsConnector for FlushingConnector {
    type Stream = FlushingTls;

    async fn connect(&self, domain: &str, stream: TcpStream) -> FtpResult<FlushingTls> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| FtpError::SecureError(e.to_string()))?;
        self.0
            .connect(name, stream)
            .await
            .map(FlushingTls)
            .map_err(|e| FtpError::SecureError(e.to_string()))
    }
}

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
    /// Where the current transfer is, for the report when a step runs out
    /// of time: the timeout drops the step's future, and with it anything
    /// the future knew.
    stage: Arc<Mutex<Stage>>,
}

/// The step a transfer is at and its data connection's ports (local ->
/// server) once known; shared with the data connection builder.
#[derive(Clone, Copy, Default)]
struct Stage {
    step: &'static str,
    from: Option<u16>,
    to: Option<u16>,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.step)?;
        match (self.from, self.to) {
            (Some(from), Some(to)) => write!(f, " (data {from}->{to})"),
            (None, Some(to)) => write!(f, " (data ->{to})"),
            _ => Ok(()),
        }
    }
}

/// Changes the shared stage.
fn update(stage: &Mutex<Stage>, change: impl FnOnce(&mut Stage)) {
    change(&mut stage.lock().unwrap_or_else(|p| p.into_inner()));
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
            let connector = FlushingConnector(tokio_rustls::TlsConnector::from(Arc::new(own)));
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
        let stage = Arc::new(Mutex::new(Stage::default()));
        let seen = stage.clone();
        let ftp = ftp.passive_stream_builder(move |to| {
            let seen = seen.clone();
            Box::pin(async move {
                update(&seen, |s| {
                    s.step = "connecting the data connection";
                    s.to = Some(to.port());
                });
                let tcp = TcpStream::connect(to)
                    .await
                    .map_err(FtpError::ConnectionError)?;
                let from = tcp.local_addr().ok().map(|a| a.port());
                update(&seen, |s| {
                    s.step = "transfer command's reply or TLS handshake";
                    s.from = from;
                });
                Ok(tcp)
            })
        });
        Ok(FtpConn { ftp, stage })
    }

    /// The step the last transfer reached, e.g. "sending data (data
    /// 41000->46012)".
    pub(crate) fn stage(&self) -> String {
        self.stage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_string()
    }

    /// A new transfer: no step, no data connection yet.
    fn start(&self, step: &'static str) {
        update(&self.stage, |s| {
            *s = Stage {
                step,
                ..Stage::default()
            }
        });
    }

    /// The next step of the current transfer (same data connection).
    fn next(&self, step: &'static str) {
        update(&self.stage, |s| s.step = step);
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
        self.start("EPSV");
        let mut data = self
            .ftp
            .put_with_stream(path)
            .await
            .map_err(|e| err("STOR", e))?;
        self.next("sending data");
        let digest = content::write(&mut data, seed, size)
            .await
            .map_err(|e| err("STOR data", e))?;
        self.next("close_notify, the server's end and its 226");
        data.finish().await.map_err(|e| err("STOR reply", e))?;
        Ok(digest)
    }

    /// `RETR`: (bytes, SHA-256) once the server has confirmed (226).
    pub(crate) async fn download(&mut self, path: &str) -> Result<(u64, [u8; 32]), String> {
        self.start("EPSV");
        let mut data = self
            .ftp
            .retr_as_stream(path)
            .await
            .map_err(|e| err("RETR", e))?;
        self.next("receiving data");
        let got = content::read(&mut data)
            .await
            .map_err(|e| err("RETR data", e))?;
        self.next("close and the 226");
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A TLS "FTP server" on loopback that answers one command line with
    /// `200 ok`, and the generator's client configuration trusting it.
    async fn server() -> (SocketAddr, Arc<rustls::ClientConfig>) {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("cert.pem");
        std::fs::write(&ca, pair.cert.pem()).unwrap();
        let client = client_tls(&ca).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pair.cert.der().clone()], key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = BufReader::new(acceptor.accept(tcp).await.unwrap());
            let mut line = String::new();
            tls.read_line(&mut line).await.unwrap();
            tls.get_mut().write_all(b"200 ok\r\n").await.unwrap();
            tls.get_mut().flush().await.unwrap();
        });
        (addr, client)
    }

    /// Spends the task's cooperative budget, then writes a command in the
    /// same poll.
    async fn write_on_a_spent_budget<S: AsyncWrite + Unpin>(tls: &mut S) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            for _ in 0..10_000 {
                if !tokio::task::coop::has_budget_remaining() {
                    break;
                }
                if let Poll::Ready(spent) = tokio::task::coop::poll_proceed(cx) {
                    spent.made_progress();
                }
            }
            assert!(
                !tokio::task::coop::has_budget_remaining(),
                "this runtime does not budget its tasks"
            );
            match Pin::new(&mut *tls).poll_write(cx, b"NOOP\r\n") {
                Poll::Ready(r) => Poll::Ready(r),
                Poll::Pending => Poll::Ready(Err(io::Error::other("the write was refused"))),
            }
        })
        .await
    }

    /// The load test's rare hang, made certain: a command written while the
    /// task's cooperative budget is spent is taken by rustls but not sent,
    /// and the write still succeeds. A bare tokio-rustls stream then waits
    /// for a reply that cannot come; reading through `FlushingTls` sends it.
    #[tokio::test]
    async fn a_command_written_on_a_spent_budget_still_reaches_the_server() {
        let mut reply = [0u8; 8];

        let (addr, client) = server().await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut bare = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(write_on_a_spent_budget(&mut bare).await.unwrap(), 6);
        assert!(bare.get_ref().1.wants_write(), "the record waits in rustls");
        let unsent = tokio::time::timeout(Duration::from_millis(300), bare.read_exact(&mut reply));
        assert!(unsent.await.is_err(), "answered although never flushed");
        bare.flush().await.unwrap();
        bare.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"200 ok\r\n");

        let (addr, client) = server().await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = FlushingConnector(tokio_rustls::TlsConnector::from(client));
        let mut tls = connector.connect("localhost", tcp).await.unwrap();
        assert_eq!(write_on_a_spent_budget(&mut tls).await.unwrap(), 6);
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut reply))
            .await
            .expect("the command was never sent")
            .unwrap();
        assert_eq!(&reply, b"200 ok\r\n");
    }

    #[test]
    fn a_stage_names_its_step_and_data_ports() {
        let mut stage = Stage {
            step: "EPSV",
            ..Stage::default()
        };
        assert_eq!(stage.to_string(), "EPSV");
        stage.to = Some(46012);
        assert_eq!(stage.to_string(), "EPSV (data ->46012)");
        stage.from = Some(41000);
        stage.step = "sending data";
        assert_eq!(stage.to_string(), "sending data (data 41000->46012)");
    }

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
