//! The one accept loop shape every protocol listener uses: accept, pause
//! (without spinning) when the process is out of descriptors, and pass each
//! connection through [`Admission`] before a byte is read from it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::admission::{Admission, ConnectionPermit, Refusal};

/// Longest pause after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// First pause after an accept error.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// What an [`AdmittingListener`] hands over.
#[derive(Debug)]
pub enum Accepted {
    /// A connection that may be served; its place is freed when the permit drops.
    Admitted(TcpStream, SocketAddr, ConnectionPermit),
    /// A connection to refuse at once (FTP says 421 first; SSH just closes).
    Refused(TcpStream, SocketAddr, Refusal),
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
        }
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
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff = FIRST_ACCEPT_BACKOFF;
                    return match self.admission.admit(peer.ip()) {
                        Ok(permit) => Accepted::Admitted(stream, peer, permit),
                        Err(why) => {
                            tracing::info!(%peer, reason = %why, "connection refused");
                            Accepted::Refused(stream, peer, why)
                        }
                    };
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
}
