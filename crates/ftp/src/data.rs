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

impl DataStream {
    /// Asks the kernel to report a clear-text connection readable only once
    /// `bytes` have arrived, or its end (`SO_RCVLOWAT`; 1 is the default). A
    /// reader that drains the socket faster than the client fills it
    /// otherwise sleeps and is woken for every segment, and the client pays
    /// each wake-up: curl spent 0.66 s of CPU a GiB sending to us against
    /// 0.50 with a mark of 512 KiB, and the upload ran 1.3x as fast
    /// (docs/benchmarks.md, session 35). Linux caps the value at half the
    /// socket's largest receive buffer, grows the buffer to hold it (and
    /// then clamps the window to the mark until autotuning raises it).
    ///
    /// Only where taking the mark down wakes a reader already waiting
    /// (Linux 5.8 and later, [`low_water_works`]): before 4.18 lowering it
    /// woke nobody, and a client waiting for us with its last bytes under
    /// the mark would hang until the idle timeout. TLS connections keep the
    /// default: no gain was measured there, and a TLS client that waits for
    /// our `close_notify` would wait out the patience on every upload.
    /// Best effort: a refusal only means more wake-ups. `false`: not set
    /// (TLS, an older kernel, refused).
    pub(crate) fn set_low_water(&self, bytes: usize) -> bool {
        match self {
            DataStream::Plain(tcp) if low_water_works() => set_rcvlowat(tcp, bytes),
            _ => false,
        }
    }
}

/// Whether this kernel wakes a waiting reader when `SO_RCVLOWAT` goes down
/// and after the 5.8 fixes of its hangs: checked once.
#[cfg(target_os = "linux")]
fn low_water_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let uname = rustix::system::uname();
        kernel_at_least(&uname.release().to_string_lossy(), (5, 8))
    })
}

#[cfg(not(target_os = "linux"))]
fn low_water_works() -> bool {
    false
}

/// Whether a kernel release such as `6.18.44-fc-v1272` is `min` or later.
fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

#[cfg(target_os = "linux")]
fn set_rcvlowat(tcp: &TcpStream, bytes: usize) -> bool {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // Neither rustix nor socket2 wraps SO_RCVLOWAT; it is one plain call.
    #[allow(unsafe_code)]
    // SAFETY: the descriptor is open while `tcp` is borrowed; the kernel
    // reads `size_of::<c_int>()` bytes from a live local `c_int`.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "SO_RCVLOWAT refused");
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn set_rcvlowat(_tcp: &TcpStream, _bytes: usize) -> bool {
    false
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.18.44-fc-v1272", (5, 8)));
        assert!(kernel_at_least("5.8.0", (5, 8)));
        assert!(kernel_at_least("5.10.0-28-amd64", (5, 8)));
        assert!(!kernel_at_least("5.7.19", (5, 8)));
        assert!(!kernel_at_least("4.19.0-26-amd64", (5, 8)));
        assert!(!kernel_at_least("", (5, 8)));
        assert!(!kernel_at_least("garbage", (5, 8)));
    }

    #[cfg(target_os = "linux")]
    fn rcvlowat(tcp: &TcpStream) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        #[allow(unsafe_code)]
        // SAFETY: a live descriptor, and a live `c_int` with its length.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_low_water_mark_goes_up_and_down_on_a_clear_text_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream = DataStream::Plain(server);
        let DataStream::Plain(tcp) = &stream else {
            unreachable!()
        };
        assert_eq!(rcvlowat(tcp), 1);
        let set = stream.set_low_water(512 << 10);
        assert_eq!(set, low_water_works());
        assert_eq!(rcvlowat(tcp), if set { 512 << 10 } else { 1 });
        stream.set_low_water(1);
        assert_eq!(rcvlowat(tcp), 1);
    }
}
