//! The PROXY protocol (v1 text and v2 binary) that a TCP load balancer such
//! as HAProxy puts in front of a connection it forwards, so the gateway sees
//! the client's address instead of the balancer's (`[cluster]
//! proxy_protocol`, `trusted_proxies`).
//!
//! Only a connection *from* a trusted proxy is read for a header, and it must
//! carry one: a proxy that forgot `send-proxy` would otherwise make every
//! client look like the proxy (one ban would lock everyone out). A connection
//! from anywhere else is a direct client and its address is its own; a header
//! it sends is never believed (the protocol layers refuse it as garbage).
//!
//! The header is consumed byte-exactly (no read-ahead), so the protocol that
//! follows starts on a clean stream. Parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted proxy may take to send the header after connecting.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest header accepted. v1 is at most 107 bytes; v2 may carry TLVs up to
/// 64 KiB, but HAProxy sends a few dozen bytes, and a cap keeps a broken
/// proxy from making every connection buffer 64 KiB.
pub const MAX_HEADER: usize = 1024;

/// A v2 header's fixed part: signature, version and command, family and
/// protocol, and the length of what follows.
const V2_FIXED: usize = 16;

/// Which peers may speak for their clients.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    trusted: Vec<IpNet>,
}

impl ProxyPolicy {
    /// A policy trusting these networks (an IPv4-mapped IPv6 network counts
    /// as its IPv4 network, as peers do).
    pub fn new(trusted: Vec<IpNet>) -> ProxyPolicy {
        let trusted = trusted.into_iter().map(canonical_net).collect();
        ProxyPolicy { trusted }
    }

    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// `::ffff:10.0.0.0/104` as `10.0.0.0/8`: peers are compared canonically.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// A forwarded client: its address, and the address it connected to
    /// (the balancer's front end, which is what PASV should advertise).
    Client {
        /// The client's address.
        source: SocketAddr,
        /// Where the client connected.
        destination: SocketAddr,
    },
    /// The proxy speaking for itself (v2 LOCAL, v1 UNKNOWN: health checks):
    /// the connection's own addresses stand.
    Local,
}

/// Why a connection from a trusted proxy was closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing, or not all of it, within [`PROXY_HEADER_TIMEOUT`].
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// Closed before sending a byte (a TCP health check).
    #[error("closed before sending a header")]
    Closed,
    /// The bytes are not a PROXY header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The connection failed or closed mid-header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// The outcome of parsing bytes that should start with a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// Not a header (or a header this gateway does not accept).
    Invalid(String),
    /// A header of `len` bytes.
    Header {
        /// Bytes the header takes at the start of the input.
        len: usize,
        /// What it says.
        proxied: Proxied,
    },
}

/// A forwarded client from a header's four address fields.
fn client(source: IpAddr, source_port: u16, destination: IpAddr, destination_port: u16) -> Proxied {
    Proxied::Client {
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
    }
}

/// Parses the header at the start of `input` (pure: the fuzz target's entry).
pub fn parse_header(input: &[u8]) -> Parsed {
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return if input.len() >= MAX_HEADER {
            Parsed::Invalid(format!("longer than {MAX_HEADER} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            proxied: match h.addresses {
                v1::Addresses::Tcp4(a) => client(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                ),
                v1::Addresses::Tcp6(a) => client(
                    a.source_address.into(),
                    a.source_port,
                    a.destination_address.into(),
                    a.destination_port,
                ),
                v1::Addresses::Unknown => Proxied::Local,
            },
        },
        HeaderResult::V2(Ok(h)) => {
            let len = h.len();
            if len > MAX_HEADER {
                return Parsed::Invalid(format!("longer than {MAX_HEADER} bytes"));
            }
            if h.command == v2::Command::Local {
                return Parsed::Header {
                    len,
                    proxied: Proxied::Local,
                };
            }
            match (h.protocol, h.addresses) {
                (v2::Protocol::Stream, v2::Addresses::IPv4(a)) => Parsed::Header {
                    len,
                    proxied: client(
                        a.source_address.into(),
                        a.source_port,
                        a.destination_address.into(),
                        a.destination_port,
                    ),
                },
                (v2::Protocol::Stream, v2::Addresses::IPv6(a)) => Parsed::Header {
                    len,
                    proxied: client(
                        a.source_address.into(),
                        a.source_port,
                        a.destination_address.into(),
                        a.destination_port,
                    ),
                },
                // The spec lets a receiver treat an unsupported family as
                // LOCAL, but a PROXY command with no usable address from a
                // balancer in front of TCP services is a misconfiguration:
                // refuse rather than credit the balancer with the client.
                (protocol, addresses) => Parsed::Invalid(format!(
                    "unsupported PROXY v2 protocol {protocol:?} / family {:?}",
                    addresses.address_family()
                )),
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

/// Reads the header at the start of `stream`, consuming exactly its bytes.
///
/// Reads 8 bytes first (both versions are longer), then the rest a version
/// at a time: v1 a byte at a time up to its CRLF, v2 its fixed part and then
/// its stated length. Byte-wise reads cost a few dozen syscalls per
/// connection, only for connections from a proxy; a buffered read would
/// swallow the start of the protocol behind the header.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Proxied, ProxyError> {
    let read = async {
        let mut buf = vec![0u8; 8];
        let mut got = 0;
        while got < buf.len() {
            match stream.read(&mut buf[got..]).await? {
                0 if got == 0 => return Err(ProxyError::Closed),
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                n => got += n,
            }
        }
        if buf.starts_with(b"PROXY ") {
            let mut byte = [0u8; 1];
            while buf.last() != Some(&b'\n') {
                if buf.len() >= 107 {
                    return Err(ProxyError::Malformed("v1 header without CRLF".into()));
                }
                stream.read_exact(&mut byte).await?;
                buf.push(byte[0]);
            }
        } else if v2::PROTOCOL_PREFIX.starts_with(&buf) {
            buf.resize(V2_FIXED, 0);
            stream.read_exact(&mut buf[8..]).await?;
            let stated = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if V2_FIXED + stated > MAX_HEADER {
                return Err(ProxyError::Malformed(format!(
                    "longer than {MAX_HEADER} bytes"
                )));
            }
            buf.resize(V2_FIXED + stated, 0);
            stream.read_exact(&mut buf[V2_FIXED..]).await?;
        } else {
            return Err(ProxyError::Malformed("no PROXY signature".into()));
        }
        match parse_header(&buf) {
            Parsed::Header { len, proxied } if len == buf.len() => Ok(proxied),
            Parsed::Header { .. } => Err(ProxyError::Malformed("trailing bytes".into())),
            Parsed::Incomplete => Err(ProxyError::Malformed("truncated".into())),
            Parsed::Invalid(why) => Err(ProxyError::Malformed(why)),
        }
    };
    tokio::time::timeout(PROXY_HEADER_TIMEOUT, read)
        .await
        .unwrap_or(Err(ProxyError::Timeout(PROXY_HEADER_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2_header(source: &str, destination: &str) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (addr(source), addr(destination)),
        )
        .build()
        .unwrap()
    }

    async fn read_from(bytes: &[u8]) -> (Result<Proxied, ProxyError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(bytes).await.unwrap();
        drop(client);
        let got = read_header(&mut server).await;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        (got, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_yield_the_client_and_leave_the_protocol_unread() {
        let (got, rest) =
            read_from(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 2121\r\nUSER x\r\n").await;
        assert_eq!(
            got.unwrap(),
            Proxied::Client {
                source: addr("192.0.2.7:40000"),
                destination: addr("198.51.100.1:2121")
            }
        );
        assert_eq!(rest, b"USER x\r\n");

        let mut bytes = v2_header("[2001:db8::5]:5555", "[2001:db8::1]:22");
        bytes.extend_from_slice(b"SSH-2.0-x\r\n");
        let (got, rest) = read_from(&bytes).await;
        assert_eq!(
            got.unwrap(),
            Proxied::Client {
                source: addr("[2001:db8::5]:5555"),
                destination: addr("[2001:db8::1]:22")
            }
        );
        assert_eq!(rest, b"SSH-2.0-x\r\n");
    }

    #[tokio::test]
    async fn local_and_unknown_keep_the_connections_own_address() {
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(read_from(&local).await.0.unwrap(), Proxied::Local);
        assert_eq!(
            read_from(b"PROXY UNKNOWN\r\n").await.0.unwrap(),
            Proxied::Local
        );
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"USER anonymous\r\n"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 2121 and then some more bytes to go past the one hundred and seven byte limit\r\n",
            b"PROXY TCP4 192.0.2.7",
        ] {
            let (got, _) = read_from(bad).await;
            assert!(got.is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        // A v2 header stating 60 KiB of TLVs.
        let mut big = v2::PROTOCOL_PREFIX.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xF0, 0x00]);
        assert!(matches!(
            read_from(&big).await.0,
            Err(ProxyError::Malformed(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_proxy_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        assert!(matches!(
            read_header(&mut server).await,
            Err(ProxyError::Timeout(_))
        ));
    }

    #[test]
    fn trust_is_by_network_and_sees_through_mapped_addresses() {
        let policy = ProxyPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(policy.trusts("10.1.2.3".parse().unwrap()));
        assert!(policy.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!policy.trusts("11.0.0.1".parse().unwrap()));
        let mapped = ProxyPolicy::new(vec!["::ffff:10.0.0.10/128".parse().unwrap()]);
        assert!(mapped.trusts("10.0.0.10".parse().unwrap()));
        assert!(!mapped.trusts("10.0.0.11".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_health_check_that_sends_nothing_is_told_apart() {
        assert!(matches!(read_from(b"").await.0, Err(ProxyError::Closed)));
        assert!(matches!(read_from(b"PRO").await.0, Err(ProxyError::Io(_))));
    }

    #[test]
    fn parse_never_claims_more_than_it_was_given() {
        let full = v2_header("192.0.2.7:1", "192.0.2.8:2");
        for cut in 0..full.len() {
            assert_eq!(parse_header(&full[..cut]), Parsed::Incomplete, "cut {cut}");
        }
        match parse_header(&full) {
            Parsed::Header { len, .. } => assert_eq!(len, full.len()),
            other => panic!("{other:?}"),
        }
    }
}
