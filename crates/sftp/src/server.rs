//! The listener: binding, the accept loop with connection limits applied
//! before any SSH byte is exchanged, the login grace timer, and shutdown.

use crate::budget::ServerBudget;
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dropgate_core::{Accepted, AdmittingListener, ConnectionPermit, Gateway, Incoming};
use russh::keys::{Algorithm, HashAlg, PrivateKey};
use russh::{Preferred, cipher, compression, kex, mac};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::SftpError;
use crate::host_keys;
use crate::ssh::{ConnControl, ConnShared, SshHandler};

/// Settings of the SFTP listener (`[sftp]` of the config). Connection caps
/// and bans are the gateway's, shared by every listener.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    /// Addresses to listen on (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// Explicit host key files (OpenSSH, PEM or PKCS#8); empty: the keys
    /// generated into (and later loaded from) `data_dir`.
    pub host_keys: Vec<PathBuf>,
    /// Where generated host keys live: `ssh_host_ed25519_key`, `ssh_host_rsa_key` (mode 0600).
    pub data_dir: PathBuf,
    /// Also offer `ssh-rsa` (SHA-1) signatures and SHA-1 / older DH key
    /// exchanges, for old scanners and printers.
    pub legacy_algorithms: bool,
    /// A connection with no traffic for this long is closed (zero: never).
    pub idle_timeout: Duration,
}

impl Default for SftpConfig {
    fn default() -> Self {
        SftpConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 2222))],
            host_keys: Vec::new(),
            data_dir: PathBuf::from("data"),
            legacy_algorithms: false,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// How long a connection may take to end after being asked to.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// SSH channel window we grant clients. It is refilled on receipt, so its
/// size decides how much a client may have in flight: OpenSSH's sftp keeps
/// 64 writes of up to 255 KiB outstanding.
const WINDOW_SIZE: u32 = 32 * 1024 * 1024;
/// Largest SSH packet we accept on a channel (russh's ceiling).
const MAX_SSH_PACKET: u32 = 65535;

/// Key exchanges: post-quantum hybrid and curve25519 only. The last two are
/// markers, not algorithms: ext-info (server-sig-algs for rsa-sha2 client
/// keys) and OpenSSH's strict key exchange (the Terrapin fix), which russh
/// turns on only when the marker is in this list.
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];
/// `legacy_algorithms`: also finite-field DH, including SHA-1 group14.
const KEX_LEGACY: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::ECDH_SHA2_NISTP256,
    kex::DH_G16_SHA512,
    kex::DH_G14_SHA256,
    kex::DH_G14_SHA1,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];
const HOST_KEY_ALGS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];
const HOST_KEY_ALGS_LEGACY: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
    Algorithm::Rsa { hash: None },
];
/// AEAD ciphers first; CTR only with the MACs below. No CBC, no 3DES.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];
/// Encrypt-then-MAC first. The plain SHA-2 HMACs stay because libssh2
/// before 1.11 (curl on Debian 12, many appliances) knows no -etm MAC and
/// would otherwise find nothing in common with us; they are not SHA-1, and
/// strict kex closes the Terrapin prefix-truncation hole for them too.
const MACS: &[mac::Name] = &[
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256,
    mac::HMAC_SHA512,
];
const MACS_LEGACY: &[mac::Name] = &[
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256,
    mac::HMAC_SHA512,
    mac::HMAC_SHA1_ETM,
    mac::HMAC_SHA1,
];

fn ssh_config(keys: Vec<PrivateKey>, config: &SftpConfig) -> russh::server::Config {
    let legacy = config.legacy_algorithms;
    russh::server::Config {
        server_id: russh::SshId::Standard(Cow::Borrowed("SSH-2.0-dropgate")),
        methods: crate::ssh::auth_methods(),
        // Rejections take a constant second, so timing tells nothing; the
        // initial "none" probe every client sends is answered at once.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_SSH_PACKET,
        // Incoming data messages buffered per channel. Our reader drains them
        // continuously; the margin absorbs scheduling hiccups.
        channel_buffer_size: 256,
        event_buffer_size: 64,
        preferred: Preferred {
            kex: Cow::Borrowed(if legacy { KEX_LEGACY } else { KEX }),
            key: Cow::Borrowed(if legacy {
                HOST_KEY_ALGS_LEGACY
            } else {
                HOST_KEY_ALGS
            }),
            cipher: Cow::Borrowed(CIPHERS),
            mac: Cow::Borrowed(if legacy { MACS_LEGACY } else { MACS }),
            compression: Cow::Borrowed(&[compression::NONE]),
            ..Preferred::DEFAULT
        },
        max_auth_attempts: 6,
        inactivity_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
        nodelay: true,
        ..Default::default()
    }
}

/// The SFTP listener, bound and ready to [`run`](SftpServer::run).
pub struct SftpServer {
    listeners: Vec<TcpListener>,
    ssh: Arc<russh::server::Config>,
    gateway: Arc<Gateway>,
    fingerprints: Vec<String>,
}

impl std::fmt::Debug for SftpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpServer")
            .field("local_addrs", &self.local_addrs())
            .field("host_key_fingerprints", &self.fingerprints)
            .finish()
    }
}

impl SftpServer {
    /// Loads (or generates) the host keys and binds every listen address.
    pub async fn bind(config: SftpConfig, gateway: Arc<Gateway>) -> Result<SftpServer, SftpError> {
        if config.listen.is_empty() {
            return Err(SftpError::NoListenAddress);
        }
        let keys = host_keys::load_or_generate(&config.host_keys, &config.data_dir).await?;
        let fingerprints = keys.iter().map(host_keys::fingerprint).collect();
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| SftpError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(l);
        }
        Ok(SftpServer {
            listeners,
            ssh: Arc::new(ssh_config(keys, &config)),
            gateway,
            fingerprints,
        })
    }

    /// The bound addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// `SHA256:…` fingerprint of each host key, as `ssh-keygen -lf` shows it.
    pub fn host_key_fingerprints(&self) -> Vec<String> {
        self.fingerprints.clone()
    }

    /// Accepts connections until `shutdown` is cancelled, then disconnects
    /// every session and returns once they are gone.
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = Arc::new(Shared {
            ssh: self.ssh,
            gateway: self.gateway,
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
            budget: ServerBudget::default(),
        });
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "SFTP listening");
            }
            let listener = AdmittingListener::new(listener, shared.gateway.admission().clone())
                .with_proxy(shared.gateway.proxy_policy());
            shared.tasks.spawn(accept_loop(listener, shared.clone()));
        }
        shutdown.cancelled().await;
        shared.tasks.close();
        shared.tasks.wait().await;
        tracing::info!("SFTP listener stopped");
    }
}

/// What every connection task shares.
struct Shared {
    ssh: Arc<russh::server::Config>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    /// Accept loops and connections, awaited at shutdown.
    tasks: TaskTracker,
    /// Request bytes all connections together may queue.
    budget: ServerBudget,
}

async fn accept_loop(mut listener: AdmittingListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Accepted::Admitted(Incoming {
                stream,
                peer,
                permit,
                ..
            }) => {
                shared
                    .tasks
                    .spawn(serve_connection(stream, peer, shared.clone(), permit));
            }
            // Closed before the SSH identification: nothing to say to a
            // client that may not even speak SSH.
            Accepted::Refused(tcp, _, _) => drop(tcp),
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: ConnectionPermit,
) {
    let _ = tcp.set_nodelay(true);
    let conn = ConnShared::new(peer, shared.budget.connection());
    let stream = KillableStream::new(tcp, conn.clone());
    let handler = SshHandler::new(shared.gateway.clone(), conn.clone());
    let grace_end = Instant::now() + shared.gateway.login_grace();
    tracing::debug!(%peer, "SSH connection");

    let running = tokio::select! {
        r = russh::server::run_stream(shared.ssh.clone(), stream, handler) => match r {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "SSH connection failed before key exchange");
                conn.end.cancel();
                return;
            }
        },
        () = tokio::time::sleep_until(grace_end) => { conn.end.cancel(); return }
        () = shared.shutdown.cancelled() => { conn.end.cancel(); return }
    };
    let control = ConnControl::new(&conn, running.handle());
    tokio::pin!(running);
    let mut grace_checked = false;
    let mut closing: Option<Instant> = None;
    let result = loop {
        let deadline = closing.map(|t| t + CLOSE_TIMEOUT);
        tokio::select! {
            r = &mut running => break Some(r),
            () = tokio::time::sleep_until(grace_end), if !grace_checked => {
                grace_checked = true;
                if !conn.authenticated.load(std::sync::atomic::Ordering::Acquire) {
                    tracing::info!(%peer, "SSH login grace time exceeded");
                    control.drop_connection(russh::Disconnect::ByApplication, "login grace time exceeded").await;
                    closing = Some(Instant::now());
                }
            }
            () = shared.shutdown.cancelled(), if closing.is_none() => {
                control.drop_connection(russh::Disconnect::ByApplication, "server shutting down").await;
                closing = Some(Instant::now());
            }
            () = conn.closing.cancelled(), if closing.is_none() => {
                // Something inside the connection asked to end it.
                closing = Some(Instant::now());
            }
            () = sleep_until_opt(deadline) => {
                // russh is stuck (it never saw the socket fail): give up on it.
                tracing::warn!(%peer, "SSH connection did not close in time");
                break None;
            }
        }
    };
    conn.end.cancel();
    conn.kill.cancel();
    match result {
        Some(Ok(())) | None => tracing::debug!(%peer, "SSH connection closed"),
        Some(Err(e)) => match e {
            russh::Error::InactivityTimeout => tracing::info!(%peer, "SSH connection idle, closed"),
            e => tracing::debug!(%peer, error = %e, "SSH connection ended"),
        },
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A TCP stream that fails every read and write once `kill` is cancelled:
/// ends a connection from outside even when russh's loop is not listening.
///
/// Until the login has succeeded it also acknowledges what it reads at once
/// (`TCP_QUICKACK`, re-armed after every read because Linux drops back to
/// delayed ACKs as soon as we answer). Clients that leave Nagle's algorithm on
/// (OpenSSH's `sftp` and `scp`, paramiko) send their `KEXINIT` and then hold
/// their small `KEX_ECDH_INIT` until the `KEXINIT` is acknowledged; we have
/// nothing to send in between (our `KEXINIT` went out first), so without this
/// every such login waited out the 40 ms delayed-ACK timer. After the login the
/// exchange is request and reply, whose replies carry the ACKs.
struct KillableStream {
    inner: TcpStream,
    conn: Arc<ConnShared>,
    /// Still re-arming `TCP_QUICKACK` (cleared at the login, or if the socket
    /// refuses the option).
    quick_acks: bool,
    read_kill: Pin<Box<WaitForCancellationFutureOwned>>,
    write_kill: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableStream {
    fn new(inner: TcpStream, conn: Arc<ConnShared>) -> Self {
        KillableStream {
            inner,
            quick_acks: true,
            read_kill: Box::pin(conn.kill.clone().cancelled_owned()),
            write_kill: Box::pin(conn.kill.clone().cancelled_owned()),
            conn,
        }
    }

    fn killed(
        kill: &CancellationToken,
        fut: &mut Pin<Box<WaitForCancellationFutureOwned>>,
        cx: &mut Context<'_>,
    ) -> bool {
        kill.is_cancelled() || fut.as_mut().poll(cx).is_ready()
    }

    /// Sends the ACK of what was just read now instead of 40 ms or more later,
    /// while the login is under way.
    fn ack_at_once(&mut self) {
        if !self.quick_acks {
            return;
        }
        if self
            .conn
            .authenticated
            .load(std::sync::atomic::Ordering::Relaxed)
            || rustix::net::sockopt::set_tcp_quickack(&self.inner, true).is_err()
        {
            self.quick_acks = false;
        }
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if Self::killed(&this.conn.kill, &mut this.read_kill, cx) {
            return Poll::Ready(Err(aborted()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.ack_at_once();
        }
        read
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if Self::killed(&this.conn.kill, &mut this.write_kill, cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if Self::killed(&this.conn.kill, &mut this.write_kill, cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.kill.is_cancelled() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
