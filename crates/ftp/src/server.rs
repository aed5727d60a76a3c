//! The accept loop: binds the listen addresses, lets core's admission
//! (connection caps, bans) decide on each connection, starts one task per
//! control connection, and on shutdown stops
//! accepting and lets every session say goodbye (421) before returning.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dropgate_core::{Accepted, AdmittingListener, Gateway, Incoming, Refusal};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, ServerContext};
use crate::control::ControlStream;
use crate::passive::{AdvertisedAddress, PassivePortPool};
use crate::security::{ChannelSecurity, TLS_HANDSHAKE_TIMEOUT};
use crate::{FtpConfig, FtpError, TlsMode};

/// Pending connections the kernel queues per listen socket.
const BACKLOG: u32 = 1024;
use dropgate_core::SHUTDOWN_GRACE;

/// A bound FTP listener, ready to [`run`](FtpServer::run).
pub struct FtpServer {
    listeners: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    ctx: Arc<ServerContext>,
}

impl FtpServer {
    /// Binds every address of `config.listen` (port 0 picks a free port).
    /// An implicit-FTPS listener, or `TlsMode::Required`, without TLS
    /// settings is refused ([`FtpError::MissingTls`], kind `InvalidInput`).
    pub async fn bind(config: FtpConfig, gateway: Arc<Gateway>) -> io::Result<FtpServer> {
        let needs_tls = config.implicit_tls || config.tls_mode == TlsMode::Required;
        if needs_tls && config.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                FtpError::MissingTls,
            ));
        }
        let mut listeners = Vec::with_capacity(config.listen.len());
        let mut addrs = Vec::with_capacity(config.listen.len());
        for &addr in &config.listen {
            let listener = bind_listener(addr)
                .map_err(|source| io::Error::new(source.kind(), FtpError::Bind { addr, source }))?;
            addrs.push(listener.local_addr()?);
            listeners.push(listener);
        }
        let ctx = Arc::new(ServerContext {
            gateway,
            pool: PassivePortPool::new(config.passive_ports.clone()),
            advertised: AdvertisedAddress::new(config.passive_address.as_deref()),
            config,
        });
        Ok(FtpServer {
            listeners,
            addrs,
            ctx,
        })
    }

    /// The bound addresses (with the real ports when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Serves until `shutdown` is cancelled; then every session gets
    /// `421 Server shutting down` and is closed before this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let FtpServer { listeners, ctx, .. } = self;
        let (accepted_tx, mut accepted) = mpsc::channel::<Accepted>(64);
        let mut acceptors = JoinSet::new();
        for listener in listeners {
            let listener = AdmittingListener::new(listener, ctx.gateway.admission().clone())
                .with_proxy(ctx.gateway.proxy_policy());
            acceptors.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(conn) = accepted.recv() => match conn {
                    Accepted::Admitted(Incoming { stream, peer, destination, permit }) => {
                        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                        sessions.spawn(async move {
                            serve_connection(stream, peer, destination, ctx, shutdown).await;
                            drop(permit);
                        });
                    }
                    Accepted::Refused(stream, _, why) => {
                        // An implicit-FTPS client expects a TLS handshake,
                        // not a clear-text reply: just close.
                        if !ctx.config.implicit_tls {
                            sessions.spawn(refuse(stream, why));
                        }
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        acceptors.shutdown().await;
        drop(accepted);
        // Sessions watch `shutdown` themselves and close with 421.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = sessions.len(),
                "sessions still open after the shutdown grace period; dropping them"
            );
            sessions.shutdown().await;
        }
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // "[::]:21" next to "0.0.0.0:21" must not collide.
        rustix::net::sockopt::set_ipv6_v6only(&socket, true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(mut listener: AdmittingListener, out: mpsc::Sender<Accepted>) {
    loop {
        let conn = listener.accept().await;
        if out.send(conn).await.is_err() {
            return;
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "connection gone before it started");
            return;
        }
    };
    let (stream, security): (ControlStream, ChannelSecurity) = match &ctx.config.tls {
        Some(tls) if ctx.config.implicit_tls => {
            // Implicit FTPS: TLS before the greeting. A fresh session per
            // connection, so a certificate reload applies from now on.
            let control = tls.control_session();
            let handshake = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, control.accept_control(stream)) => r,
            };
            match handshake {
                Ok(Ok(tls_stream)) => (
                    Box::new(tls_stream),
                    ChannelSecurity::implicit(&ctx.config, control),
                ),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "implicit FTPS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "implicit FTPS handshake timed out");
                    return;
                }
            }
        }
        _ => (Box::new(stream), ChannelSecurity::new(&ctx.config)),
    };
    // Behind a proxy, the address the client connected to is the one to
    // advertise for passive data connections.
    let front = destination.map_or(local.ip(), |d| d.ip());
    Connection::new(ctx, stream, security, peer, local, front, shutdown)
        .serve()
        .await;
}

/// The one line a refused client reads before the close.
async fn refuse(mut stream: TcpStream, why: Refusal) {
    let line: &[u8] = match why {
        Refusal::Banned => b"421 Too many failed logins from your address; try again later.\r\n",
        Refusal::ServerFull | Refusal::SourceFull | Refusal::LoginsBusy => {
            b"421 Too many connections.\r\n"
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(line).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
