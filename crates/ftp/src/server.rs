//! The accept loop: binds the listen addresses, applies the connection
//! limits, starts one task per control connection, and on shutdown stops
//! accepting and lets every session say goodbye (421) before returning.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dropgate_core::Gateway;
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
/// How long sessions get to finish after shutdown before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Longest pause after repeated accept errors (out of descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

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
        let limits = Arc::new(ConnectionLimits::new(
            ctx.config.max_connections,
            ctx.config.max_connections_per_ip,
        ));
        let (accepted_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let mut acceptors = JoinSet::new();
        for listener in listeners {
            acceptors.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((stream, peer)) = accepted.recv() => {
                    match limits.admit(peer.ip()) {
                        Some(slot) => {
                            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                            sessions.spawn(async move {
                                serve_connection(stream, peer, ctx, shutdown).await;
                                drop(slot);
                            });
                        }
                        None => {
                            tracing::info!(%peer, "connection refused: too many connections");
                            // An implicit-FTPS client expects a TLS handshake,
                            // not a clear-text reply: just close.
                            if !ctx.config.implicit_tls {
                                sessions.spawn(refuse(stream));
                            }
                        }
                    }
                }
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

async fn accept_loop(listener: TcpListener, out: mpsc::Sender<(TcpStream, SocketAddr)>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(conn) => {
                backoff = Duration::from_millis(5);
                if out.send(conn).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
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
    Connection::new(ctx, stream, security, peer, local, shutdown)
        .serve()
        .await;
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(b"421 Too many connections.\r\n").await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Counts connections, in total and per source address.
struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<LimitState>,
}

#[derive(Default)]
struct LimitState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            max_per_ip,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let ip = ip.to_canonical();
        let mut st = self.lock();
        let from_ip = st.per_ip.get(&ip).copied().unwrap_or(0);
        if (self.max_total != 0 && st.total >= self.max_total)
            || (self.max_per_ip != 0 && from_ip >= self.max_per_ip)
        {
            return None;
        }
        st.total += 1;
        st.per_ip.insert(ip, from_ip + 1);
        Some(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut st = self.limits.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_total_and_per_ip() {
        let limits = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "per-IP limit");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(
            limits.admit(mapped).is_none(),
            "IPv4-mapped counts as the same IP"
        );
        let b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "total limit");
        drop(a1);
        let b2 = limits.admit(b).unwrap();
        drop((a2, b1, b2));
        assert_eq!(limits.lock().total, 0);
        assert!(limits.lock().per_ip.is_empty());
    }

    #[test]
    fn zero_means_unlimited() {
        let limits = Arc::new(ConnectionLimits::new(0, 0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| limits.admit(ip).unwrap()).collect();
        assert_eq!(limits.lock().total, 100);
        drop(slots);
    }
}
