//! Helpers for the FTP integration tests: a real listener over a testkit
//! gateway, a minimal raw FTP client, and a runner for client programs.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use dropgate_core::store::{Event, EventKind, EventQuery};
use dropgate_core::vfs::UploadMode;
use dropgate_ftp::{FtpConfig, FtpServer, FtpsTls, TlsMode};
use dropgate_ftps::TlsSettings;
use dropgate_testkit::{HomeFiles, TestGateway};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Passive ranges: each server of a test binary gets its own slice.
static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

fn next_passive_range() -> RangeInclusive<u16> {
    let n = NEXT_RANGE.fetch_add(1, Ordering::Relaxed) % 200;
    let first = 40000 + n * 40;
    first..=first + 39
}

/// Settings a test may change.
pub struct Options {
    pub active_mode: bool,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub passive_ports: Option<RangeInclusive<u16>>,
    pub passive_address: Option<String>,
    pub upload_mode: UploadMode,
    /// `[storage] durable_uploads`.
    pub durable_uploads: bool,
    pub listen: SocketAddr,
    /// FTPS: a certificate generated in the gateway's temporary folder, and
    /// an implicit-FTPS listener next to the explicit one.
    pub ftps: Option<FtpsOptions>,
    /// Homes on the storage `DROPGATE_TEST_STORAGE` names (reach them
    /// through `Server::files`) instead of local disk.
    pub storage_under_test: bool,
}

/// FTPS settings of a test server.
#[derive(Debug, Clone, Copy)]
pub struct FtpsOptions {
    pub mode: TlsMode,
    pub require_session_reuse: bool,
    pub tls12_only: bool,
}

impl Default for FtpsOptions {
    fn default() -> Self {
        FtpsOptions {
            mode: TlsMode::Optional,
            require_session_reuse: true,
            tls12_only: false,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            active_mode: true,
            idle_timeout: Duration::from_secs(60),
            max_connections: 100,
            max_connections_per_ip: 50,
            passive_ports: None,
            passive_address: None,
            upload_mode: UploadMode::Atomic,
            durable_uploads: true,
            listen: "127.0.0.1:0".parse().unwrap(),
            ftps: None,
            storage_under_test: false,
        }
    }
}

/// A running FTP listener over a fresh gateway.
pub struct Server {
    pub tg: TestGateway,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
    /// The implicit-FTPS listener (with `Options::ftps`).
    pub implicit_addr: Option<SocketAddr>,
    pub implicit_task: Option<JoinHandle<()>>,
    pub tls: Option<Arc<FtpsTls>>,
}

pub async fn start() -> Server {
    start_with(Options::default()).await
}

/// A server whose homes are on the storage under test (local disk or S3).
pub async fn start_on_storage_under_test() -> Server {
    start_with(Options {
        storage_under_test: true,
        ..Options::default()
    })
    .await
}

pub async fn start_with(opts: Options) -> Server {
    let adjust = |c: &mut dropgate_core::GatewayConfig| {
        c.upload_mode = opts.upload_mode;
        c.durable_uploads = opts.durable_uploads;
        c.admission.max_connections = opts.max_connections;
        c.admission.max_connections_per_source = opts.max_connections_per_ip;
    };
    let tg = if opts.storage_under_test {
        TestGateway::on_storage_under_test(adjust).await
    } else {
        TestGateway::with_config(adjust).await
    };
    let tls = opts.ftps.map(|f| {
        FtpsTls::load(TlsSettings {
            cert: None,
            key: None,
            data_dir: tg.dir.path().join("data"),
            require_session_reuse: f.require_session_reuse,
            tls12_only: f.tls12_only,
        })
        .expect("FTPS certificate")
    });
    let tls_mode = opts.ftps.map(|f| f.mode).unwrap_or_default();
    let config = FtpConfig {
        listen: vec![opts.listen],
        passive_ports: opts.passive_ports.unwrap_or_else(next_passive_range),
        passive_address: opts.passive_address,
        active_mode: opts.active_mode,
        idle_timeout: opts.idle_timeout,
        banner: "dropgate ready".into(),
        tls: tls.clone(),
        tls_mode,
        implicit_tls: false,
    };
    let implicit_config = tls.as_ref().map(|_| FtpConfig {
        listen: vec![SocketAddr::new(opts.listen.ip(), 0)],
        passive_ports: next_passive_range(),
        implicit_tls: true,
        ..config.clone()
    });
    let server = FtpServer::bind(config, tg.gateway.clone())
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let (implicit_addr, implicit_task) = match implicit_config {
        Some(config) => {
            let server = FtpServer::bind(config, tg.gateway.clone())
                .await
                .expect("bind implicit");
            let addr = server.local_addrs()[0];
            (Some(addr), Some(tokio::spawn(server.run(shutdown.clone()))))
        }
        None => (None, None),
    };
    Server {
        tg,
        addr,
        shutdown,
        task: Some(task),
        implicit_addr,
        implicit_task,
        tls,
    }
}

impl Server {
    /// Creates an account with default permissions and its home.
    pub async fn user(&self, name: &str, password: &str) -> PathBuf {
        self.tg.add_user(name, password).await;
        self.tg.home(name)
    }

    /// Creates an account with default permissions; its home, on whatever
    /// storage the server uses.
    pub async fn account(&self, name: &str, password: &str) -> HomeFiles {
        self.tg.add_user(name, password).await;
        self.tg.files(name).await
    }

    /// The on-disk home of `name`.
    pub fn home(&self, name: &str) -> PathBuf {
        self.tg.home(name)
    }

    pub fn url(&self, user: &str, password: &str, path: &str) -> String {
        format!("ftp://{user}:{password}@{}{path}", self.addr)
    }

    /// A connected client (greeting read).
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A logged-in client.
    pub async fn login(&self, user: &str, password: &str) -> Client {
        let mut c = self.client().await;
        c.login(user, password).await;
        c
    }

    /// Stops the listener and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in [self.task.take(), self.implicit_task.take()]
            .into_iter()
            .flatten()
        {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }

    /// Waits for an upload event of `path` carrying a SHA-256, and returns it.
    pub async fn upload_event_sha256(&self, user: &str, path: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.tg.flush_events().await;
            let q = EventQuery {
                username: Some(user.into()),
                kind: Some(EventKind::Upload),
                limit: 100,
                ..Default::default()
            };
            let events = self.tg.store.query_events(&q).await.unwrap();
            if let Some(e) = events
                .iter()
                .find(|e| e.path.as_deref() == Some(path) && e.sha256.is_some())
            {
                return e.sha256.clone().unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no upload event with sha256 for {path}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `user`'s stored events of `kind` (what is queued is stored first).
    pub async fn events_of(&self, user: &str, kind: EventKind) -> Vec<Event> {
        self.tg.flush_events().await;
        let q = EventQuery {
            username: Some(user.into()),
            kind: Some(kind),
            limit: 1000,
            ..Default::default()
        };
        self.tg.store.query_events(&q).await.unwrap()
    }

    /// Whether any event of `kind` for `path` exists.
    pub async fn has_event(&self, user: &str, kind: EventKind, path: &str) -> bool {
        self.events_of(user, kind)
            .await
            .iter()
            .any(|e| e.path.as_deref() == Some(path))
    }
}

/// One FTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    /// All lines, joined with '\n' (without CR LF).
    pub text: String,
    /// The raw bytes as received.
    pub raw: Vec<u8>,
}

/// A raw FTP client speaking bytes over TCP.
pub struct Client {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
    pub peer: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        let greeting = c.reply().await;
        assert_eq!(greeting.code, 220, "greeting: {}", greeting.text);
        c
    }

    /// Connects without reading the greeting.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
            peer: addr,
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\r\n").as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("send");
    }

    /// Reads one complete reply (multi-line aware).
    pub async fn reply(&mut self) -> Reply {
        tokio::time::timeout(WAIT, self.read_reply())
            .await
            .expect("reply in time")
            .expect("reply")
    }

    /// Reads one reply, `None` if the connection ended first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        tokio::time::timeout(WAIT, self.read_reply())
            .await
            .expect("reply in time")
    }

    async fn read_reply(&mut self) -> Option<Reply> {
        let mut raw = Vec::new();
        let mut lines = Vec::new();
        let mut code: Option<u16> = None;
        loop {
            let mut line = Vec::new();
            match self.r.read_until(b'\n', &mut line).await {
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
                    let c = this.unwrap_or_else(|| panic!("not a reply line: {text:?}"));
                    code = Some(c);
                    if sep != Some(b'-') {
                        break;
                    }
                }
                Some(c) => {
                    if this == Some(c) && sep == Some(b' ') {
                        break;
                    }
                }
            }
        }
        Some(Reply {
            code: code.unwrap_or(0),
            text: lines.join("\n"),
            raw,
        })
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(line).await;
        self.reply().await
    }

    /// Sends `line` and asserts the reply code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line).await;
        assert_eq!(r.code, code, "{line:?} -> {}", r.text);
        r
    }

    /// Asks STAT until the transfer in progress reports `bytes` received;
    /// fails after [`WAIT`].
    #[allow(dead_code)] // not every test binary polls a transfer
    pub async fn stat_until(&mut self, bytes: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.expect("STAT", 213).await;
            if r.text.contains(&format!(" {bytes} bytes")) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}", r.text);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn login(&mut self, user: &str, password: &str) {
        self.expect(&format!("USER {user}"), 331).await;
        self.expect(&format!("PASS {password}"), 230).await;
    }

    /// EPSV, then connects the data socket.
    pub async fn epsv_connect(&mut self) -> TcpStream {
        let port = self.epsv().await;
        connect_from(None, SocketAddr::new(self.peer.ip(), port)).await
    }

    pub async fn epsv(&mut self) -> u16 {
        let r = self.expect("EPSV", 229).await;
        let inner = r
            .text
            .split("(|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .expect("EPSV reply");
        inner.parse().expect("EPSV port")
    }

    pub async fn pasv(&mut self) -> SocketAddr {
        let r = self.expect("PASV", 227).await;
        parse_pasv(&r.text)
    }

    /// Waits until the server closes the connection (EOF or reset).
    pub async fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match self.r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "connection was not closed");
    }

    /// Uploads `data` with STOR over passive mode; returns the final reply.
    pub async fn stor(&mut self, name: &str, data: &[u8]) -> Reply {
        let mut d = self.epsv_connect().await;
        let r = self.cmd(&format!("STOR {name}")).await;
        if r.code != 150 {
            return r;
        }
        // The server may close the data connection early on purpose (552
        // over quota, 426): a failed write is then expected, and the reply
        // below is what the caller asserts on.
        let _ = d.write_all(data).await;
        let _ = d.shutdown().await;
        drop(d);
        self.reply().await
    }

    /// Downloads `name` over passive mode; returns the bytes and final reply.
    pub async fn retr(&mut self, name: &str) -> (Vec<u8>, Reply) {
        let mut d = self.epsv_connect().await;
        let r = self.cmd(&format!("RETR {name}")).await;
        if r.code != 150 {
            return (Vec::new(), r);
        }
        let mut data = Vec::new();
        tokio::time::timeout(WAIT, d.read_to_end(&mut data))
            .await
            .expect("data in time")
            .expect("read data");
        (data, self.reply().await)
    }

    /// Runs a listing command over passive mode and returns its text.
    pub async fn listing(&mut self, command: &str) -> (String, Reply) {
        let mut d = self.epsv_connect().await;
        let r = self.cmd(command).await;
        if r.code != 150 {
            return (String::new(), r);
        }
        let mut data = Vec::new();
        tokio::time::timeout(WAIT, d.read_to_end(&mut data))
            .await
            .expect("data in time")
            .expect("read data");
        (
            String::from_utf8_lossy(&data).into_owned(),
            self.reply().await,
        )
    }
}

pub fn parse_pasv(text: &str) -> SocketAddr {
    let inner = text
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("PASV reply");
    let n: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    let ip = std::net::Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
    SocketAddr::new(ip.into(), n[4] * 256 + n[5])
}

/// Connects to `to`, from `from` (an address of this host) when given.
pub async fn connect_from(from: Option<&str>, to: SocketAddr) -> TcpStream {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4().unwrap()
    } else {
        TcpSocket::new_v6().unwrap()
    };
    if let Some(from) = from {
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    }
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("data connect in time")
        .expect("data connect")
}

/// Runs a client program (with a hard time limit) and returns its output;
/// panics with its stderr when it fails.
pub async fn run_tool(program: &str, args: &[String], cwd: Option<&Path>) -> std::process::Output {
    let (program, args, cwd) = (
        program.to_owned(),
        args.to_vec(),
        cwd.map(Path::to_path_buf),
    );
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("timeout");
        cmd.arg("180").arg(&program).args(&args);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let out = cmd.output().expect("run client program");
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    })
    .await
    .unwrap()
}

/// Files below `root`, as sorted (relative path, content) pairs.
pub fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Names in `dir` that look like upload temporaries.
pub fn temporaries(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".dropgate-part-")
            {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
