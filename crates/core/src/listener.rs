//! The one accept loop shape every protocol listener uses: accept, pause
//! (without spinning) when the process is out of descriptors, and pass each
//! connection through [`Admission`] before a byte is read from it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::admission::{Admission, ConnectionPermit, Refusal};
use crate::proxy::{self, Proxied, ProxyPolicy};

/// Longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// First pause after an accept error.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// Connections from trusted proxies whose header may be outstanding at once
/// per listener. Past it a new one is closed at once: `accept` itself never
/// stops, so direct clients are served whatever a trusted peer does.
/// (Counted in `serve`'s descriptor spare.)
pub(crate) const MAX_PENDING_HEADERS: usize = 64;

/// What an [`AdmittingListener`] hands over.
#[derive(Debug)]
pub enum Accepted {
    /// A connection that may be served; its place is freed when the permit drops.
    Admitted(Incoming),
    /// A connection to refuse at once (FTP says 421 first; SSH just closes).
    Refused(TcpStream, SocketAddr, Refusal),
}

/// An admitted connection and who is on the other end.
#[derive(Debug)]
pub struct Incoming {
    /// The connection, positioned after any PROXY header.
    pub stream: TcpStream,
    /// The client: the TCP peer, or the source a trusted proxy's header named.
    pub peer: SocketAddr,
    /// The address the client connected to when a proxy's header named it
    /// (the balancer's front end); `None`: the socket's own local address.
    pub destination: Option<SocketAddr>,
    /// Frees the connection's place when dropped.
    pub permit: ConnectionPermit,
}

/// A TCP listener whose connections pass the admission check.
pub struct AdmittingListener {
    listener: TcpListener,
    admission: Arc<Admission>,
    backoff: Duration,
    /// A descriptor held back for the moment the process runs out: closing
    /// it lets one pending connection be accepted and refused at once,
    /// instead of it waiting in the backlog with no answer (the client's
    /// connect succeeded, so it would hang until its own timeout).
    reserve: Option<std::fs::File>,
    /// `[cluster] proxy_protocol`: who may send a PROXY header.
    proxy: Option<Arc<ProxyPolicy>>,
    /// Connections from a trusted proxy whose header is being read.
    headers: JoinSet<(TcpStream, SocketAddr, Result<Proxied, proxy::ProxyError>)>,
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl AdmittingListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener, admission: Arc<Admission>) -> AdmittingListener {
        AdmittingListener {
            listener,
            admission,
            backoff: FIRST_ACCEPT_BACKOFF,
            reserve: open_reserve(),
            proxy: None,
            headers: JoinSet::new(),
        }
    }

    /// Reads a PROXY header from every connection whose peer the policy
    /// trusts (and requires one), and admits it by the client it names.
    pub fn with_proxy(mut self, policy: Option<Arc<ProxyPolicy>>) -> AdmittingListener {
        self.proxy = policy;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, admitted or refused. Accept errors (EMFILE and
    /// the like) are logged and waited out with a growing pause; this never
    /// fails. Cancel-safe.
    pub async fn accept(&mut self) -> Accepted {
        loop {
            if self.reserve.is_none() {
                self.reserve = open_reserve();
            }
            let accepted = tokio::select! {
                biased;
                Some(done) = self.headers.join_next(), if !self.headers.is_empty() => {
                    match done {
                        Ok((stream, from, Ok(Proxied::Client { source, destination }))) => {
                            tracing::debug!(proxy = %from, client = %source, "PROXY header");
                            return self.admit(stream, source, Some(destination));
                        }
                        Ok((stream, from, Ok(Proxied::Local))) => {
                            return self.admit(stream, from, None);
                        }
                        // A plain TCP health check: connect, close.
                        Ok((_, from, Err(proxy::ProxyError::Closed))) => {
                            tracing::debug!(proxy = %from, "trusted proxy closed before a header");
                        }
                        Ok((_, from, Err(e))) => {
                            tracing::warn!(proxy = %from, error = %e, "connection from a trusted proxy closed");
                        }
                        Err(e) => tracing::warn!(error = %e, "PROXY header task failed"),
                    }
                    continue;
                }
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((mut stream, peer)) => {
                    self.backoff = FIRST_ACCEPT_BACKOFF;
                    if self.proxy.as_ref().is_some_and(|p| p.trusts(peer.ip())) {
                        if self.headers.len() >= MAX_PENDING_HEADERS {
                            tracing::warn!(proxy = %peer, "too many connections awaiting a PROXY header; closing one");
                            drop(stream);
                            continue;
                        }
                        // A banned client behind the proxy is refused once
                        // its header names it; the proxy itself is not
                        // counted against any cap.
                        self.headers.spawn(async move {
                            let header = proxy::read_header(&mut stream).await;
                            (stream, peer, header)
                        });
                        continue;
                    }
                    return self.admit(stream, peer, None);
                }
                Err(e) if out_of_descriptors(&e) && self.reserve.take().is_some() => {
                    // The reserve is closed: take the waiting connection and
                    // refuse it as a full server would.
                    tracing::warn!(error = %e, "out of descriptors: refusing a connection");
                    let pending = tokio::select! {
                        biased;
                        r = self.listener.accept() => r.ok(),
                        () = std::future::ready(()) => None,
                    };
                    if let Some((stream, peer)) = pending {
                        return Accepted::Refused(stream, peer, Refusal::ServerFull);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn admit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        destination: Option<SocketAddr>,
    ) -> Accepted {
        match self.admission.admit(peer.ip()) {
            Ok(permit) => Accepted::Admitted(Incoming {
                stream,
                peer,
                destination,
                permit,
            }),
            Err(why) => {
                tracing::info!(%peer, reason = %why, "connection refused");
                Accepted::Refused(stream, peer, why)
            }
        }
    }
}
