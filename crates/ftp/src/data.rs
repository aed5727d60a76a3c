//! Data connections: what PASV/EPSV/PORT/EPRT prepared, and opening it when
//! a transfer command arrives.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dropgate_ftps::{ControlTls, DataTlsError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::passive::PendingPassive;

/// How long an active-mode connect to the client may take.
const ACTIVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a passive listener waits for the client's data connection.
pub(crate) const PASSIVE_WAIT: Duration = Duration::from_secs(30);

/// How long the TLS handshake of a data connection may take.
const DATA_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// An open data connection.
///
/// Plain TCP stays a bare [`TcpStream`] so downloads can use `sendfile`;
/// `PROT P` connections are TLS over it. Code that only needs bytes uses
/// the `AsyncRead`/`AsyncWrite` impls below and works with either.
pub(crate) enum DataStream {
    /// Clear-text TCP (`PROT C`, plain FTP).
    Plain(TcpStream),
    /// TLS (`PROT P`). Shutting it down sends `close_notify`; reading a
    /// TCP end without one fails with `UnexpectedEof` (a truncated upload).
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why no data connection could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// No TCP connection (timeout, refused, no port), or its TLS handshake
    /// failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake did not resume the control connection's session
    /// (`require_session_reuse`).
    #[error("data connection did not resume the control connection's TLS session")]
    NotResumed,
}

impl AsyncRead for DataStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            DataStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
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
            DataStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_flush(cx),
            DataStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DataStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            DataStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
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
    /// local address: active connections come from it. With `tls` (`PROT
    /// P`) the connection is then handshaken as the TLS server, whichever
    /// side connected (RFC 4217 section 7); a passive connection from
    /// another host was already refused before any TLS. `upload`: the
    /// client only writes (no TLS 1.3 tickets are sent it would not read).
    pub(crate) async fn open(
        self,
        local_ip: IpAddr,
        tls: Option<&ControlTls>,
        upload: bool,
    ) -> Result<DataStream, OpenError> {
        let tcp = match self {
            DataSetup::Passive(pending) => pending.accept().await?,
            DataSetup::Active(addr) => connect_active(local_ip, addr).await?,
        };
        let Some(tls) = tls else {
            return Ok(DataStream::Plain(tcp));
        };
        let handshake = async {
            if upload {
                tls.accept_upload(tcp).await
            } else {
                tls.accept_data(tcp).await
            }
        };
        match tokio::time::timeout(DATA_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(DataStream::Tls(Box::new(stream))),
            Ok(Err(DataTlsError::NotResumed)) => Err(OpenError::NotResumed),
            Ok(Err(DataTlsError::Handshake(e))) => Err(OpenError::Io(e)),
            Err(_) => Err(OpenError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "data connection TLS handshake timed out",
            ))),
        }
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
