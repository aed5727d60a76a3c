//! Data connections: what PASV/EPSV/PORT/EPRT prepared, and opening it when
//! a transfer command arrives.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::passive::PendingPassive;

/// How long an active-mode connect to the client may take.
const ACTIVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a passive listener waits for the client's data connection.
pub(crate) const PASSIVE_WAIT: Duration = Duration::from_secs(30);

/// An open data connection.
///
/// Plain TCP stays a bare [`TcpStream`] so downloads can use `sendfile`.
/// FTPS adds a variant for `PROT P` (a TLS stream over the TCP one); code
/// that only needs bytes uses the `AsyncRead`/`AsyncWrite` impls below and
/// works with either.
pub(crate) enum DataStream {
    /// Clear-text TCP (`PROT C`, plain FTP).
    Plain(TcpStream),
}

impl AsyncRead for DataStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DataStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the last PASV/EPSV/PORT/EPRT prepared; used by one transfer.
pub(crate) enum DataSetup {
    /// A listener waiting for the client.
    Passive(PendingPassive),
    /// Connect to the client at this (already vetted) address.
    Active(SocketAddr),
}

impl DataSetup {
    /// Opens the data connection. `local_ip` is the control connection's
    /// local address: active connections come from it.
    pub(crate) async fn open(self, local_ip: IpAddr) -> io::Result<DataStream> {
        let tcp = match self {
            DataSetup::Passive(pending) => pending.accept().await?,
            DataSetup::Active(addr) => connect_active(local_ip, addr).await?,
        };
        Ok(DataStream::Plain(tcp))
    }
}

async fn connect_active(local_ip: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let to = SocketAddr::new(to.ip().to_canonical(), to.port());
    let from = local_ip.to_canonical();
    let socket = match (from, to.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => TcpSocket::new_v4()?,
        (IpAddr::V6(_), IpAddr::V6(_)) => TcpSocket::new_v6()?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family differs from the control connection",
            ));
        }
    };
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(ACTIVE_CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "active connect timed out"))?
}
