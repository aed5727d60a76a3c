//! FTPS against the real listener: explicit `AUTH TLS` and the implicit
//! listener, with curl, lftp, Python's ftplib, `openssl s_client`, and a
//! rustls client for what real clients cannot be made to do (pipelining
//! before the handshake, cutting an upload without `close_notify`).
//!
//! The certificate is the self-signed one `dropgate-ftps` generates into the
//! test gateway's temporary folder; clients do not verify it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{FtpsOptions, Options, Reply, Server, WAIT, run_tool, sha256_hex, temporaries, tree};
use dropgate_core::store::{EventKind, EventQuery, Protocol, User};
use dropgate_ftp::TlsMode;
use dropgate_testkit::{require_tool, write_random_file};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const SIX_MIB: usize = 6 * 1024 * 1024 + 12345;

async fn start(mode: TlsMode, require_session_reuse: bool) -> Server {
    common::start_with(Options {
        ftps: Some(FtpsOptions {
            mode,
            require_session_reuse,
            tls12_only: false,
        }),
        ..Default::default()
    })
    .await
}

fn implicit_addr(server: &Server) -> SocketAddr {
    server.implicit_addr.expect("implicit listener")
}

// ---------------------------------------------------------------------------
// A small rustls FTPS client.

/// Accepts any certificate (the test server's is self-signed) but still
/// checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration with its own session cache (so data connections
/// made with it resume the control connection's session).
fn client_config(tls12: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"ftp".to_vec()];
    Arc::new(cfg)
}

async fn handshake(
    cfg: &Arc<ClientConfig>,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(cfg.clone()).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
}

/// Reads one reply (multi-line aware), `None` at end of stream.
async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Option<Reply> {
    let read = async {
        let mut raw = Vec::new();
        let mut lines = Vec::new();
        let mut code: Option<u16> = None;
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            let this: Option<u16> = text.get(..3).and_then(|c| c.parse().ok());
            let sep = text.as_bytes().get(3).copied();
            lines.push(text.clone());
            match code {
                None => {
                    code = Some(this.unwrap_or_else(|| panic!("not a reply line: {text:?}")));
                    if sep != Some(b'-') {
                        break;
                    }
                }
                Some(c) if this == Some(c) && sep == Some(b' ') => break,
                Some(_) => {}
            }
        }
        Some(Reply {
            code: code.unwrap_or(0),
            text: lines.join("\n"),
            raw,
        })
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("reply in time")
}

/// An FTPS control connection.
struct Ftps {
    io: BufReader<TlsStream<TcpStream>>,
    cfg: Arc<ClientConfig>,
}

impl Ftps {
    /// Explicit FTPS: greeting, `AUTH TLS`, handshake.
    async fn explicit(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Ftps {
        let mut plain = BufReader::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(read_reply(&mut plain).await.unwrap().code, 220);
        plain.get_mut().write_all(b"AUTH TLS\r\n").await.unwrap();
        let r = read_reply(&mut plain).await.unwrap();
        assert_eq!(r.code, 234, "{}", r.text);
        assert!(plain.buffer().is_empty(), "nothing after 234 in the clear");
        let tls = handshake(&cfg, plain.into_inner())
            .await
            .expect("handshake");
        Ftps {
            io: BufReader::new(tls),
            cfg,
        }
    }

    /// Implicit FTPS: handshake, then the greeting over TLS.
    async fn implicit(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Ftps {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = handshake(&cfg, tcp).await.expect("handshake");
        let mut c = Ftps {
            io: BufReader::new(tls),
            cfg,
        };
        assert_eq!(c.reply().await.code, 220);
        c
    }

    async fn reply(&mut self) -> Reply {
        read_reply(&mut self.io).await.expect("a reply")
    }

    async fn cmd(&mut self, line: &str) -> Reply {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.io.get_mut().flush().await.unwrap();
        self.reply().await
    }

    async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line).await;
        assert_eq!(r.code, code, "{line:?} -> {}", r.text);
        r
    }

    async fn login(&mut self, user: &str, password: &str) {
        self.expect(&format!("USER {user}"), 331).await;
        self.expect(&format!("PASS {password}"), 230).await;
    }

    /// EPSV, then a TCP connection to the announced port.
    async fn epsv_connect(&mut self) -> TcpStream {
        let r = self.expect("EPSV", 229).await;
        let port: u16 = r
            .text
            .split("(|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .and_then(|p| p.parse().ok())
            .expect("EPSV port");
        let ip = self.io.get_ref().get_ref().0.peer_addr().unwrap().ip();
        common::connect_from(None, SocketAddr::new(ip, port)).await
    }

    /// TLS on a data connection (after the 150); asserts that it resumed
    /// this control connection's session.
    async fn data_tls(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let tls = handshake(&self.cfg, tcp).await?;
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "the data connection resumed the control session"
        );
        Ok(tls)
    }

    /// STOR over a protected passive data connection.
    async fn stor(&mut self, name: &str, data: &[u8]) -> Reply {
        let d = self.epsv_connect().await;
        let r = self.cmd(&format!("STOR {name}")).await;
        if r.code != 150 {
            return r;
        }
        let mut tls = self.data_tls(d).await.expect("data handshake");
        // Nothing arrives on an upload connection after the handshake (no
        // TLS 1.3 tickets): a client that never reads would reset it on
        // close, destroying data in flight (lftp did).
        let mut byte = [0u8; 1];
        let peeked =
            tokio::time::timeout(Duration::from_millis(150), tls.get_ref().0.peek(&mut byte)).await;
        assert!(peeked.is_err(), "unsolicited bytes on an upload connection");
        tls.write_all(data).await.unwrap();
        tls.shutdown().await.unwrap(); // close_notify, then FIN
        // The server answers with its own close_notify (this also reads the
        // session tickets it sent, which rustls clients use once each).
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, tls.read_to_end(&mut rest))
            .await
            .expect("close_notify in time")
            .expect("upload answered with close_notify");
        assert!(rest.is_empty());
        self.reply().await
    }

    /// RETR over a protected passive data connection.
    async fn retr(&mut self, name: &str) -> (Vec<u8>, Reply) {
        let d = self.epsv_connect().await;
        let r = self.cmd(&format!("RETR {name}")).await;
        if r.code != 150 {
            return (Vec::new(), r);
        }
        let mut tls = self.data_tls(d).await.expect("data handshake");
        let mut data = Vec::new();
        // Ends cleanly only on the server's close_notify.
        tokio::time::timeout(WAIT, tls.read_to_end(&mut data))
            .await
            .expect("data in time")
            .expect("download ends with close_notify");
        (data, self.reply().await)
    }

    /// A listing over a protected passive data connection.
    async fn listing(&mut self, command: &str) -> (String, Reply) {
        let d = self.epsv_connect().await;
        let r = self.cmd(command).await;
        if r.code != 150 {
            return (String::new(), r);
        }
        let mut tls = self.data_tls(d).await.expect("data handshake");
        let mut data = Vec::new();
        tokio::time::timeout(WAIT, tls.read_to_end(&mut data))
            .await
            .expect("listing in time")
            .expect("listing ends with close_notify");
        (
            String::from_utf8_lossy(&data).into_owned(),
            self.reply().await,
        )
    }
}

/// Writes one TLS record per `write` with Nagle's algorithm left on, as
/// GnuTLS clients (lftp) do: each record then waits until the one before it
/// is acknowledged.
struct RecordAtATime(TcpStream);

impl tokio::io::AsyncRead for RecordAtATime {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for RecordAtATime {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // A record: type, version (2), length (2), then the length's bytes.
        let record = match buf {
            [_, _, _, hi, lo, ..] => 5 + usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => buf.len(),
        };
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, &buf[..record.min(buf.len())])
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The client's `Finished` waits for the ACK of its `ChangeCipherSpec`
/// (see [`RecordAtATime`]) while the server waits for the `Finished`: Linux
/// delays that ACK by at least 40 ms, which every control and data
/// connection of such a client paid. The fastest of several handshakes,
/// each with one reply or one file after it, stays well under that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_do_not_wait_for_delayed_acks() {
    let server = start(TlsMode::Optional, true).await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f.txt"), b"hello").unwrap();
    let cfg = client_config(false);
    let name = ServerName::try_from("localhost").unwrap();
    let (mut control, mut data) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let mut plain = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
        assert_eq!(read_reply(&mut plain).await.unwrap().code, 220);
        plain.get_mut().write_all(b"AUTH TLS\r\n").await.unwrap();
        assert_eq!(read_reply(&mut plain).await.unwrap().code, 234);
        let started = std::time::Instant::now();
        let tls = TlsConnector::from(cfg.clone())
            .connect(name.clone(), RecordAtATime(plain.into_inner()))
            .await
            .unwrap();
        let mut c = BufReader::new(tls);
        let mut expect = async |line: &str, code: u16| {
            c.get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
            let r = read_reply(&mut c).await.expect("a reply");
            assert_eq!(r.code, code, "{line:?} -> {}", r.text);
            r.text
        };
        expect("PBSZ 0", 200).await;
        control = control.min(started.elapsed());
        expect("USER u", 331).await;
        expect("PASS pw-u-1", 230).await;
        expect("PROT P", 200).await;
        let epsv = expect("EPSV", 229).await;
        let port: u16 = epsv
            .split("(|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .and_then(|p| p.parse().ok())
            .expect("EPSV port");
        let d = TcpStream::connect((server.addr.ip(), port)).await.unwrap();
        expect("RETR f.txt", 150).await;
        let started = std::time::Instant::now();
        let mut tls = TlsConnector::from(cfg.clone())
            .connect(name.clone(), RecordAtATime(d))
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed)
        );
        let mut got = Vec::new();
        tokio::time::timeout(WAIT, tls.read_to_end(&mut got))
            .await
            .expect("data in time")
            .expect("download ends with close_notify");
        data = data.min(started.elapsed());
        assert_eq!(got, b"hello");
        assert_eq!(read_reply(&mut c).await.unwrap().code, 226);
    }
    eprintln!("fastest control handshake + PBSZ {control:?}, data handshake + 5 bytes {data:?}");
    assert!(
        control < Duration::from_millis(25) && data < Duration::from_millis(25),
        "fastest control handshake + PBSZ {control:?}, data handshake + 5 bytes {data:?}"
    );
}

async fn events(
    server: &Server,
    user: &str,
    kind: Option<EventKind>,
) -> Vec<dropgate_core::store::Event> {
    server.tg.flush_events().await;
    let q = EventQuery {
        username: Some(user.into()),
        kind,
        limit: 1000,
        ..Default::default()
    };
    server.tg.store.query_events(&q).await.unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------
// Protocol behaviour (rustls client).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_pbsz_prot_ccc_and_feat() {
    let server = start(TlsMode::Optional, true).await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f.txt"), b"hello").unwrap();

    // In the clear.
    let mut c = server.client().await;
    let feat = c.expect("FEAT", 211).await.text;
    for f in [" AUTH SSL", " AUTH TLS", " PBSZ", " PROT"] {
        assert!(feat.lines().any(|l| l == f), "FEAT lacks {f:?}:\n{feat}");
    }
    c.expect("PBSZ 0", 503).await;
    c.expect("PROT P", 536).await;
    c.expect("PROT C", 200).await;
    c.expect("CCC", 502).await;
    c.expect("AUTH KERBEROS_V4", 504).await;
    // AUTH after a clear-text login logs out: the session starts over.
    c.login("u", "pw-u-1").await;
    c.expect("AUTH TLS", 234).await;
    let tcp = c.r.into_inner().reunite(c.w).unwrap();
    let cfg = client_config(false);
    let mut t = Ftps {
        io: BufReader::new(handshake(&cfg, tcp).await.unwrap()),
        cfg,
    };
    t.expect("PWD", 530).await;

    // Over TLS.
    let feat = t.expect("FEAT", 211).await.text;
    assert!(!feat.contains("AUTH"), "AUTH is done:\n{feat}");
    assert!(feat.lines().any(|l| l == " PBSZ") && feat.lines().any(|l| l == " PROT"));
    t.expect("AUTH TLS", 503).await;
    t.expect("PBSZ 0", 200).await;
    t.expect("PROT S", 536).await;
    t.expect("PROT E", 536).await;
    t.expect("PROT X", 504).await;
    t.expect("CCC", 533).await;
    t.expect("PROT P", 200).await;
    t.login("u", "pw-u-1").await;
    let stat = t.expect("STAT", 211).await.text;
    assert!(stat.contains("Control connection is encrypted"), "{stat}");
    assert!(
        stat.contains("Data connections will be encrypted"),
        "{stat}"
    );
    let (data, r) = t.retr("f.txt").await;
    assert_eq!((data.as_slice(), r.code), (&b"hello"[..], 226));

    // REIN: logged out, TLS stays, PROT starts over at C (optional mode:
    // clear-text data is allowed).
    t.expect("REIN", 220).await;
    t.expect("PWD", 530).await;
    t.login("u", "pw-u-1").await;
    let mut d = t.epsv_connect().await;
    t.expect("RETR f.txt", 150).await;
    let mut clear = Vec::new();
    d.read_to_end(&mut clear).await.unwrap();
    assert_eq!(clear, b"hello");
    assert_eq!(t.reply().await.code, 226);
    t.expect("QUIT", 221).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_before_the_handshake_are_never_run() {
    let server = start(TlsMode::Optional, true).await;
    server.user("x", "pw-x-1").await;
    for pipelined in [
        &b"AUTH TLS\r\nUSER x\r\n"[..],
        &b"AUTH TLS\r\nUSER x\r\nPASS pw-x-1\r\n"[..],
        &b"AUTH SSL\r\nUSER x\r\nPASS pw-x-1\r\nFEAT\r\nNOOP\r\n"[..],
    ] {
        let mut plain = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
        assert_eq!(read_reply(&mut plain).await.unwrap().code, 220);
        // One write: the commands arrive in the same segment as AUTH.
        plain.get_mut().write_all(pipelined).await.unwrap();
        let r = read_reply(&mut plain).await.unwrap();
        assert_eq!(r.code, 234, "{}", r.text);
        // Had the server answered USER in the clear, these bytes would be
        // here and the handshake below would fail on them.
        assert!(plain.buffer().is_empty());
        let cfg = client_config(false);
        let tls = handshake(&cfg, plain.into_inner())
            .await
            .expect("handshake after pipelined commands");
        let mut t = Ftps {
            io: BufReader::new(tls),
            cfg,
        };
        let first = t.cmd("NOOP").await;
        assert_eq!(first.code, 200, "first reply over TLS: {}", first.text);
        // USER was dropped, not remembered: PASS has no user to go with.
        t.expect("PASS pw-x-1", 503).await;
        t.expect("PWD", 530).await;
    }
    assert!(
        events(&server, "x", Some(EventKind::Login))
            .await
            .is_empty(),
        "no login was attempted"
    );
    server.stop().await;
}

/// Explicit and implicit, passive and active, with events saying `ftps`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_over_tls_resume_the_session_and_are_audited_as_ftps() {
    let server = start(TlsMode::Optional, true).await;
    let home = server.user("u", "pw-u-1").await;
    let work = tempfile::tempdir().unwrap();
    let data = write_random_file(&work.path().join("src"), 3 * 1024 * 1024 + 7, 11);

    for (implicit, tls12) in [(false, false), (true, false), (false, true), (true, true)] {
        let cfg = client_config(tls12);
        let mut c = if implicit {
            Ftps::implicit(implicit_addr(&server), cfg).await
        } else {
            let mut c = Ftps::explicit(server.addr, cfg).await;
            c.expect("PBSZ 0", 200).await;
            c.expect("PROT P", 200).await;
            c
        };
        c.login("u", "pw-u-1").await;
        let name = format!("f-{implicit}-{tls12}.bin");
        assert_eq!(c.stor(&name, &data).await.code, 226);
        assert_eq!(std::fs::read(home.join(&name)).unwrap(), data);
        let (back, r) = c.retr(&name).await;
        assert_eq!(r.code, 226);
        assert!(back == data, "downloaded bytes differ");
        // Several data connections in a row all resume.
        c.expect("REST 1000", 350).await;
        let (tail, r) = c.retr(&name).await;
        assert_eq!(r.code, 226);
        assert!(tail == data[1000..], "REST + RETR");
        let (list, r) = c.listing("LIST").await;
        assert_eq!(r.code, 226);
        assert!(list.contains(&name), "{list}");

        // Active mode: we connect nowhere, the server connects to us and is
        // still the TLS server.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        c.expect(&format!("EPRT |1|127.0.0.1|{port}|"), 200).await;
        c.expect(&format!("RETR {name}"), 150).await;
        let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut tls = c.data_tls(tcp).await.unwrap();
        let mut active = Vec::new();
        tls.read_to_end(&mut active).await.unwrap();
        assert!(active == data, "active-mode download");
        assert_eq!(c.reply().await.code, 226);
        c.expect("QUIT", 221).await;
    }

    // A clear-text session on the same listener is audited as plain ftp.
    let mut plain = server.login("u", "pw-u-1").await;
    plain.expect("QUIT", 221).await;

    let all = events(&server, "u", None).await;
    let logins: Vec<_> = all.iter().filter(|e| e.kind == EventKind::Login).collect();
    assert_eq!(logins.len(), 5, "{logins:?}");
    assert_eq!(
        logins.iter().filter(|e| e.protocol == "ftps").count(),
        4,
        "{logins:?}"
    );
    assert_eq!(logins.iter().filter(|e| e.protocol == "ftp").count(), 1);
    let transfers: Vec<_> = all
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Upload | EventKind::Download))
        .collect();
    assert_eq!(transfers.len(), 4 * 4, "{transfers:?}");
    assert!(
        transfers.iter().all(|e| e.protocol == "ftps"),
        "{transfers:?}"
    );
    assert_eq!(
        server.upload_event_sha256("u", "/f-true-true.bin").await,
        sha256_hex(&data)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_protocols_tell_ftp_from_ftps() {
    let server = start(TlsMode::Optional, true).await;
    let mut only_ftps = User::new("secure");
    only_ftps.protocols = vec![Protocol::Ftps];
    server.tg.add_user_with(only_ftps, Some("pw-secure")).await;
    let mut only_ftp = User::new("legacy");
    only_ftp.protocols = vec![Protocol::Ftp];
    server.tg.add_user_with(only_ftp, Some("pw-legacy")).await;
    server.tg.home("secure");
    server.tg.home("legacy");

    let mut c = server.client().await;
    c.expect("USER secure", 331).await;
    c.expect("PASS pw-secure", 530).await;
    let mut t = Ftps::explicit(server.addr, client_config(false)).await;
    t.login("secure", "pw-secure").await;
    let mut t = Ftps::implicit(implicit_addr(&server), client_config(false)).await;
    t.login("secure", "pw-secure").await;

    let mut t = Ftps::explicit(server.addr, client_config(false)).await;
    t.expect("USER legacy", 331).await;
    t.expect("PASS pw-legacy", 530).await;
    server.login("legacy", "pw-legacy").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_connections_must_resume_the_control_session() {
    for require in [true, false] {
        let server = start(TlsMode::Optional, require).await;
        let home = server.user("u", "pw-u-1").await;
        std::fs::write(home.join("f.txt"), b"hello").unwrap();
        let mut c = Ftps::explicit(server.addr, client_config(false)).await;
        c.login("u", "pw-u-1").await;
        c.expect("PBSZ 0", 200).await;
        c.expect("PROT P", 200).await;

        // A data connection with a brand-new TLS session (another client
        // configuration has no ticket of this control connection).
        for command in ["RETR f.txt", "STOR new.bin", "LIST"] {
            let d = c.epsv_connect().await;
            c.expect(command, 150).await;
            let fresh = client_config(false);
            let handshake = handshake(&fresh, d).await;
            if require {
                // The handshake itself completes; then the server closes.
                if let Ok(mut tls) = handshake {
                    assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
                    let _ = tls.write_all(b"data").await;
                    let mut sink = Vec::new();
                    let _ = tls.read_to_end(&mut sink).await;
                    assert!(sink.is_empty());
                }
                let r = c.reply().await;
                assert_eq!(r.code, 425, "{command}: {}", r.text);
                assert_eq!(
                    r.text,
                    "425 Unable to build data connection: TLS session of data connection not resumed."
                );
            } else {
                let mut tls = handshake.expect("full handshake accepted");
                if command.starts_with("STOR") {
                    tls.write_all(b"data").await.unwrap();
                    tls.shutdown().await.unwrap();
                } else {
                    let mut sink = Vec::new();
                    tls.read_to_end(&mut sink).await.unwrap();
                }
                let r = c.reply().await;
                assert_eq!(r.code, 226, "{command}: {}", r.text);
            }
        }
        c.expect("NOOP", 200).await;
        assert_eq!(home.join("new.bin").exists(), !require);
        assert!(temporaries(&home).is_empty());
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_clear_logins_and_clear_data() {
    let server = start(TlsMode::Required, true).await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f.txt"), b"hello").unwrap();

    let mut c = server.client().await;
    let r = c.expect("USER u", 530).await;
    assert_eq!(r.text, "530 Please use AUTH TLS.");
    c.expect("PASS pw-u-1", 530).await;
    c.expect("USER nobody", 530).await;
    c.expect("PASS wrong", 530).await;
    c.expect("NOOP", 200).await;
    assert!(
        events(&server, "u", Some(EventKind::Login))
            .await
            .is_empty(),
        "no credential was checked in the clear"
    );
    assert!(
        events(&server, "nobody", Some(EventKind::Login))
            .await
            .is_empty()
    );

    let mut t = Ftps::explicit(server.addr, client_config(false)).await;
    t.login("u", "pw-u-1").await;
    // PROT C is refused at the command, and without PROT P no clear-text
    // data connection is opened either.
    let r = t.expect("PROT C", 534).await;
    assert_eq!(
        r.text,
        "534 PROT C not allowed: data connections must be encrypted."
    );
    for command in [
        "LIST",
        "RETR f.txt",
        "STOR up.bin",
        "NLST",
        "MLSD",
        "APPE f.txt",
        "STOU",
    ] {
        let _d = t.epsv_connect().await;
        let r = t.expect(command, 521).await;
        assert_eq!(r.text, "521 Data connections must be encrypted.");
    }
    assert!(!home.join("up.bin").exists());
    assert_eq!(std::fs::read(home.join("f.txt")).unwrap(), b"hello");
    t.expect("PBSZ 0", 200).await;
    t.expect("PROT P", 200).await;
    let (data, r) = t.retr("f.txt").await;
    assert_eq!((data.as_slice(), r.code), (&b"hello"[..], 226));
    assert_eq!(t.stor("up.bin", b"up").await.code, 226);

    let logins = events(&server, "u", Some(EventKind::Login)).await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0].protocol, "ftps");

    // The implicit listener defaults to PROT P.
    let mut t = Ftps::implicit(implicit_addr(&server), client_config(false)).await;
    t.login("u", "pw-u-1").await;
    let (data, r) = t.retr("f.txt").await;
    assert_eq!((data.as_slice(), r.code), (&b"hello"[..], 226));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upload_cut_without_close_notify_is_aborted() {
    let server = start(TlsMode::Optional, true).await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("keep.bin"), b"old content").unwrap();
    for target in ["new.bin", "keep.bin"] {
        // A fresh control connection each time: rustls clients use each
        // TLS 1.3 ticket once, and a cut connection never reads new ones.
        let mut c = Ftps::implicit(implicit_addr(&server), client_config(false)).await;
        c.login("u", "pw-u-1").await;
        let d = c.epsv_connect().await;
        c.expect(&format!("STOR {target}"), 150).await;
        let mut tls = c.data_tls(d).await.unwrap();
        tls.write_all(&vec![7u8; 2_000_000]).await.unwrap();
        tls.flush().await.unwrap();
        // A TCP FIN with no close_notify before it: what a truncation
        // attack (or a crashed TLS stack) looks like.
        tls.get_mut().0.shutdown().await.unwrap();
        let r = c.reply().await;
        assert_eq!(r.code, 426, "{target}: {}", r.text);
        drop(tls);
        c.expect("NOOP", 200).await;
    }
    let mut c = Ftps::implicit(implicit_addr(&server), client_config(false)).await;
    c.login("u", "pw-u-1").await;
    // The same upload ended properly is committed.
    assert_eq!(c.stor("whole.bin", &[7u8; 100_000]).await.code, 226);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!home.join("new.bin").exists());
    assert_eq!(
        std::fs::read(home.join("keep.bin")).unwrap(),
        b"old content"
    );
    assert_eq!(
        std::fs::read(home.join("whole.bin")).unwrap().len(),
        100_000
    );
    assert!(temporaries(&home).is_empty(), "{:?}", temporaries(&home));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_connections_from_another_address_are_refused_before_tls() {
    let server = start(TlsMode::Optional, true).await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f.txt"), b"hello").unwrap();
    let mut c = Ftps::explicit(server.addr, client_config(false)).await;
    c.login("u", "pw-u-1").await;
    c.expect("PROT P", 200).await;
    let r = c.expect("EPSV", 229).await;
    let port: u16 = r
        .text
        .split("(|||")
        .nth(1)
        .and_then(|s| s.split('|').next())
        .unwrap()
        .parse()
        .unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let foreign = common::connect_from(Some("127.0.0.2"), to).await;
    let real = common::connect_from(None, to).await;
    c.expect("RETR f.txt", 150).await;
    // The foreign connection is closed without a single TLS byte.
    let cfg = c.cfg.clone();
    let stranger = tokio::spawn(async move { handshake(&cfg, foreign).await.is_err() });
    let mut tls = c.data_tls(real).await.unwrap();
    let mut data = Vec::new();
    tls.read_to_end(&mut data).await.unwrap();
    assert_eq!(data, b"hello");
    assert_eq!(c.reply().await.code, 226);
    assert!(stranger.await.unwrap(), "the stranger got no TLS session");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_reload_applies_to_new_sessions() {
    let server = start(TlsMode::Optional, true).await;
    server.user("u", "pw-u-1").await;
    let tls = server.tls.clone().unwrap();
    let cert_of = |c: &Ftps| {
        c.io.get_ref().get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let mut before = Ftps::explicit(server.addr, client_config(false)).await;
    before.login("u", "pw-u-1").await;
    before.expect("PROT P", 200).await;
    let old_cert = cert_of(&before);

    // A new self-signed pair is generated by the reload (as after SIGHUP
    // with new files in place).
    let data_dir = server.tg.dir.path().join("data");
    std::fs::remove_file(data_dir.join(dropgate_ftps::GENERATED_CERT)).unwrap();
    std::fs::remove_file(data_dir.join(dropgate_ftps::GENERATED_KEY)).unwrap();
    tls.reload().unwrap();

    for implicit in [false, true] {
        let mut after = if implicit {
            Ftps::implicit(implicit_addr(&server), client_config(false)).await
        } else {
            Ftps::explicit(server.addr, client_config(false)).await
        };
        assert_ne!(
            cert_of(&after),
            old_cert,
            "new sessions use the new certificate"
        );
        after.login("u", "pw-u-1").await;
        after.expect("PROT P", 200).await;
        let (list, r) = after.listing("NLST").await;
        assert_eq!((list.as_str(), r.code), ("", 226));
    }
    // The session that started earlier goes on with its own configuration,
    // and its data connections still resume it.
    let (list, r) = before.listing("NLST").await;
    assert_eq!((list.as_str(), r.code), ("", 226));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_without_a_certificate_are_refused() {
    let tg = dropgate_testkit::TestGateway::new().await;
    for (implicit_tls, tls_mode) in [(true, TlsMode::Optional), (false, TlsMode::Required)] {
        let config = dropgate_ftp::FtpConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            passive_ports: 1024..=1030,
            passive_address: None,
            active_mode: false,
            idle_timeout: Duration::from_secs(10),
            banner: "x".into(),
            tls: None,
            tls_mode,
            implicit_tls,
        };
        let Err(err) = dropgate_ftp::FtpServer::bind(config, tg.gateway.clone()).await else {
            panic!("bound without TLS settings");
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("certificate"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// Real clients.

/// Upload, download and both resumes of a 6 MiB file with curl.
async fn curl_round_trip(server: &Server, url_base: &str, extra: &[&str], seed: u64) {
    let home = server.home("alice");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.bin");
    let data = write_random_file(&src, SIX_MIB, seed);
    let common_args = |out: &mut Vec<String>| {
        out.extend(args(&[
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-k",
            "--ssl-reqd",
        ]));
        out.extend(args(extra));
    };

    let mut up = Vec::new();
    common_args(&mut up);
    up.extend(args(&[
        "-T",
        &src.display().to_string(),
        &format!("{url_base}/big.bin"),
    ]));
    run_tool("curl", &up, None).await;
    assert!(
        std::fs::read(home.join("big.bin")).unwrap() == data,
        "uploaded bytes"
    );

    let dst = work.path().join("dst.bin");
    let mut down = Vec::new();
    common_args(&mut down);
    down.extend(args(&[
        "-o",
        &dst.display().to_string(),
        &format!("{url_base}/big.bin"),
    ]));
    run_tool("curl", &down, None).await;
    assert!(std::fs::read(&dst).unwrap() == data, "downloaded bytes");

    // A partial upload is on the server; `-C -` sends the rest.
    std::fs::write(home.join("up.bin"), &data[..2_500_000]).unwrap();
    let mut up = Vec::new();
    common_args(&mut up);
    up.extend(args(&[
        "-C",
        "-",
        "-T",
        &src.display().to_string(),
        &format!("{url_base}/up.bin"),
    ]));
    run_tool("curl", &up, None).await;
    assert!(
        std::fs::read(home.join("up.bin")).unwrap() == data,
        "resumed upload"
    );

    // A partial download is here; `-C -` fetches the rest.
    let part = work.path().join("part.bin");
    std::fs::write(&part, &data[..1_000_000]).unwrap();
    let mut down = Vec::new();
    common_args(&mut down);
    down.extend(args(&[
        "-C",
        "-",
        "-o",
        &part.display().to_string(),
        &format!("{url_base}/up.bin"),
    ]));
    run_tool("curl", &down, None).await;
    assert!(std::fs::read(&part).unwrap() == data, "resumed download");

    assert_eq!(
        server.upload_event_sha256("alice", "/up.bin").await,
        sha256_hex(&data)
    );
    std::fs::remove_file(home.join("big.bin")).unwrap();
    std::fs::remove_file(home.join("up.bin")).unwrap();
}

/// Every event of `user` says ftps.
async fn all_ftps(server: &Server, user: &str) {
    let all = events(server, user, None).await;
    assert!(!all.is_empty());
    assert!(all.iter().all(|e| e.protocol == "ftps"), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_explicit_ftps() {
    require_tool("curl", "curl");
    // Required: a clear-text data connection would fail the transfer, so
    // success proves the data was protected.
    let server = start(TlsMode::Required, true).await;
    server.user("alice", "pw-alice-1").await;
    let base = format!("ftp://alice:pw-alice-1@{}", server.addr);
    curl_round_trip(&server, &base, &[], 21).await;
    // Not active mode: curl 7.88 (Debian 12) never starts TLS on an active
    // data connection (curl/curl#10666, fixed in 8.0 by #10669), so the
    // server's handshake fails and it answers 425. Active FTPS is covered by
    // the rustls client in `transfers_over_tls_resume_the_session_...`.
    all_ftps(&server, "alice").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_implicit_ftps() {
    require_tool("curl", "curl");
    let server = start(TlsMode::Required, true).await;
    server.user("alice", "pw-alice-1").await;
    let base = format!("ftps://alice:pw-alice-1@{}", implicit_addr(&server));
    curl_round_trip(&server, &base, &[], 23).await;
    all_ftps(&server, "alice").await;
    server.stop().await;
}

fn make_tree(root: &Path) {
    for (i, d) in ["", "a", "a/b", "c d"].iter().enumerate() {
        std::fs::create_dir_all(root.join(d)).unwrap();
        for (j, size) in [0usize, 1, 5000, 300_000, 1_200_000].iter().enumerate() {
            write_random_file(
                &root.join(d).join(format!("f{i}-{j}.bin")),
                *size,
                (i * 10 + j) as u64,
            );
        }
    }
}

fn quote(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_put_get_mirror_with_session_reuse() {
    require_tool("lftp", "lftp");
    let server = start(TlsMode::Required, true).await;
    let home = server.user("mirror", "mirror-pw").await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let files = tree(&src);
    let one = work.path().join("one.bin");
    let one_data = write_random_file(&one, SIX_MIB, 31);

    for (label, open) in [
        (
            "explicit",
            format!(
                "open -u mirror,mirror-pw -p {} {}",
                server.addr.port(),
                server.addr.ip()
            ),
        ),
        (
            "implicit",
            format!("open -u mirror,mirror-pw ftps://{}", implicit_addr(&server)),
        ),
    ] {
        let back = work.path().join(format!("back-{label}"));
        let got = work.path().join(format!("got-{label}.bin"));
        let script = format!(
            "set net:max-retries 1; set net:timeout 20; set net:reconnect-interval-base 1; \
             set cmd:fail-exit yes; set xfer:clobber yes; \
             set ftp:ssl-force true; set ftp:ssl-protect-data true; set ftp:ssl-protect-list true; \
             set ssl:verify-certificate no; \
             {open}; \
             put {one} -o /{label}.bin; get /{label}.bin -o {got}; \
             mirror -R --parallel=2 {src} /{label}; \
             mirror --parallel=2 /{label} {back}; quit",
            one = quote(&one),
            got = quote(&got),
            src = quote(&src),
            back = quote(&back),
        );
        run_tool("lftp", &["-c".to_owned(), script], None).await;
        assert!(
            std::fs::read(home.join(format!("{label}.bin"))).unwrap() == one_data,
            "{label}: put"
        );
        assert!(std::fs::read(&got).unwrap() == one_data, "{label}: get");
        assert_eq!(tree(&home.join(label)), files, "{label}: mirror up");
        assert_eq!(tree(&back), files, "{label}: mirror down");
    }
    assert!(temporaries(&home).is_empty());
    all_ftps(&server, "mirror").await;
    server.stop().await;
}

async fn ftplib(require_reuse: bool, mode: &str) {
    let server = start(TlsMode::Optional, require_reuse).await;
    let home = server.user("py", "py-secret").await;
    std::fs::write(home.join("exists.bin"), vec![5u8; 200_000]).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ftps_client.py");
    let args = vec![
        script.display().to_string(),
        server.addr.ip().to_string(),
        server.addr.port().to_string(),
        "py".to_owned(),
        "py-secret".to_owned(),
        mode.to_owned(),
    ];
    let out = run_tool("python3", &args, None).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    if mode == "noreuse-refused" {
        assert!(!home.join("nope.bin").exists());
    } else {
        let part = std::fs::read(home.join("part.bin")).unwrap();
        let big = std::fs::read(home.join("big.bin")).unwrap();
        assert_eq!(&part[..big.len()], &big[..]);
        assert_eq!(
            server.upload_event_sha256("py", "/big.bin").await,
            sha256_hex(&big)
        );
    }
    assert!(temporaries(&home).is_empty());
    all_ftps(&server, "py").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_resuming_the_session_is_accepted() {
    require_tool("python3", "python3");
    ftplib(true, "reuse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_without_session_reuse_is_refused_when_required() {
    require_tool("python3", "python3");
    ftplib(true, "noreuse-refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftplib_without_session_reuse_works_when_not_required() {
    require_tool("python3", "python3");
    ftplib(false, "noreuse-ok").await;
}

/// Runs `openssl s_client` (stdin closed, so it quits once connected) and
/// returns whether it connected, with its output.
async fn s_client(addr: SocketAddr, extra: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("30")
        .arg("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .args(extra)
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_versions_and_alpn() {
    require_tool("openssl", "openssl");
    let server = start(TlsMode::Optional, true).await;
    let implicit = implicit_addr(&server);
    // SECLEVEL=0 lets OpenSSL offer TLS 1.0/1.1 at all, so the refusal
    // is the server's.
    let old = "DEFAULT@SECLEVEL=0";
    for (addr, starttls) in [
        (implicit, &[][..]),
        (server.addr, &["-starttls", "ftp"][..]),
    ] {
        for version in ["-tls1", "-tls1_1"] {
            let mut a = starttls.to_vec();
            a.extend([version, "-cipher", old]);
            let (ok, out) = s_client(addr, &a).await;
            assert!(!ok, "{version} accepted on {addr}:\n{out}");
            // rustls answers a ClientHello without TLS 1.2 with an alert.
            assert!(out.contains("alert"), "{version}:\n{out}");
        }
        for version in ["-tls1_2", "-tls1_3"] {
            let mut a = starttls.to_vec();
            a.push(version);
            let (ok, out) = s_client(addr, &a).await;
            assert!(ok, "{version} refused on {addr}:\n{out}");
        }
        let mut a = starttls.to_vec();
        a.extend(["-alpn", "http/1.1"]);
        let (ok, out) = s_client(addr, &a).await;
        assert!(!ok, "ALPN http/1.1 accepted on {addr}:\n{out}");
        assert!(out.contains("no application protocol"), "{out}");

        let mut a = starttls.to_vec();
        a.extend(["-alpn", "ftp"]);
        let (ok, out) = s_client(addr, &a).await;
        assert!(ok, "ALPN ftp refused on {addr}:\n{out}");
        assert!(out.contains("ALPN protocol: ftp"), "{out}");

        let (ok, out) = s_client(addr, starttls).await;
        assert!(ok, "no ALPN refused on {addr}:\n{out}");
        assert!(out.contains("No ALPN negotiated"), "{out}");
    }
    server.stop().await;
}
