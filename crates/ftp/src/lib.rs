//! The FTP listener: RFC 959 with FEAT/OPTS (RFC 2389), EPRT/EPSV (RFC 2428),
//! SIZE/MDTM/REST STREAM/MLST/MLSD (RFC 3659), UTF-8 (RFC 2640), MFMT and
//! HASH, over passive and active data connections.
//!
//! Owns: the accept loop and connection limits ([`FtpServer`]), control
//! connection framing, the command parser and reply formatting, listing
//! formats, the passive port pool shared by all sessions of a listener, and
//! moving bytes over data connections (zero-copy downloads).
//!
//! Must not: touch the database or the disk directly, or decide policy. A
//! login is `Gateway::authenticate`; every file operation is a method of the
//! `dropgate_core::Session` it returns (permissions, quota and audit happen
//! there); every client path goes through `VirtualPath::resolve`. It must not
//! let a data connection from another host in (passive) or connect anywhere
//! but the client (active: no FTP bounce), nor reveal a host path in a reply.
//!
//! FTPS (RFC 4217) is plugged in at `security.rs`: with
//! [`FtpConfig::tls`] set, `AUTH TLS` upgrades the control connection and
//! `PROT P` data connections are TLS (handshaken by `dropgate-ftps`, which
//! owns certificates and the per-control-connection session store); with
//! [`FtpConfig::implicit_tls`] the listener speaks TLS from the first byte.

mod ascii;
mod commands;
mod connection;
mod control;
mod data;
mod error;
mod listing;
mod parse;
mod passive;
mod reply;
mod security;
mod server;
mod transfer;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

pub use dropgate_ftps::{FtpsTls, TlsSettings};

pub use error::FtpError;
pub use server::FtpServer;

/// Settings of one FTP listener (the `[ftp]` section). Connection caps and
/// bans are the gateway's ([`dropgate_core::Admission`]), shared by every listener.
#[derive(Debug, Clone)]
pub struct FtpConfig {
    /// Addresses to listen on (port 0: any free port, see
    /// [`FtpServer::local_addrs`]).
    pub listen: Vec<SocketAddr>,
    /// Ports for passive data connections, shared by every session.
    pub passive_ports: RangeInclusive<u16>,
    /// IPv4 address or DNS name announced in PASV replies (behind NAT);
    /// `None`: the control connection's local address.
    pub passive_address: Option<String>,
    /// Whether PORT/EPRT are allowed (only ever to the client's own address).
    pub active_mode: bool,
    /// A session with no command and no transfer for this long is closed.
    pub idle_timeout: Duration,
    /// Text of the 220 greeting.
    pub banner: String,
    /// Certificate and TLS settings for FTPS (`[ftps]`); `None`: no TLS on
    /// this listener (`AUTH` is answered 502).
    pub tls: Option<Arc<FtpsTls>>,
    /// Explicit FTPS policy (`[ftp] tls`). Ignored for the control
    /// connection of an implicit listener (always TLS), but `Required`
    /// still forbids `PROT C` data connections there. `Required` needs
    /// `tls` ([`FtpServer::bind`] refuses it otherwise).
    pub tls_mode: TlsMode,
    /// This listener speaks TLS from the first byte (implicit FTPS, the
    /// `[ftps] implicit_listen` addresses): the handshake comes before the
    /// 220 greeting and data connections default to `PROT P`. Needs `tls`.
    pub implicit_tls: bool,
}

/// Explicit FTPS policy of a listener (`[ftp] tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// No TLS: `AUTH` is refused (502) even when a certificate is loaded.
    Off,
    /// `AUTH TLS` is offered; clear-text sessions are allowed too.
    #[default]
    Optional,
    /// `USER`/`PASS` before `AUTH TLS` get `530 Please use AUTH TLS.` (no
    /// credential is ever checked in the clear), and data connections must
    /// be protected (`PROT P`; transfers under `PROT C` get 521).
    Required,
}

/// Pure functions exposed for `cargo bench` (`benches/protocol.rs`); not a
/// stable API.
#[doc(hidden)]
pub mod bench_support {
    use std::time::SystemTime;

    use dropgate_vfs::Metadata;

    /// Parses one control line (without CR LF); true if it is a command.
    pub fn parse_line(line: &[u8]) -> bool {
        crate::parse::parse(line).is_ok()
    }

    /// One `LIST` (`ls -l`) line.
    pub fn list_line(name: &str, meta: &Metadata, now: SystemTime) -> String {
        crate::listing::long_line(name, meta, now)
    }

    /// One `MLSD` line with every fact, for an account with every right.
    pub fn mlsd_line(name: &str, meta: &Metadata) -> String {
        let rights = crate::listing::EntryRights {
            list: true,
            download: true,
            upload: true,
            overwrite: true,
            delete: true,
            rename: true,
            mkdir: true,
            rmdir: true,
        };
        crate::listing::facts_line(name, meta, crate::parse::Facts::ALL, rights)
    }
}
