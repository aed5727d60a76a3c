//! Errors of this crate and the one table that turns a failure into an FTP
//! reply code.

use std::io;

use dropgate_core::{ErrorClass, FsError};

use crate::parse::ParseError;
use crate::reply::Reply;

/// Why a transfer (RETR, STOR, LIST, ...) did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// No data connection could be set up (timeout, refused, no port left).
    #[error("cannot open data connection: {0}")]
    Connect(io::Error),
    /// The data connection's TLS handshake did not resume the control
    /// connection's session (`require_session_reuse`).
    #[error("data connection TLS session not resumed")]
    NotResumed,
    /// The data connection failed while bytes were flowing (for TLS, also
    /// a TCP end without `close_notify`: a truncated upload).
    #[error("data connection failed: {0}")]
    Data(io::Error),
    /// The storage or the account's policy refused.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The client sent ABOR, disconnected, or the session was ended.
    #[error("transfer aborted")]
    Aborted,
}

impl From<crate::data::OpenError> for TransferError {
    fn from(e: crate::data::OpenError) -> TransferError {
        match e {
            crate::data::OpenError::Io(e) => TransferError::Connect(e),
            crate::data::OpenError::NotResumed => TransferError::NotResumed,
        }
    }
}

impl TransferError {
    /// The reply for a failed transfer. `Aborted` has its own sequence
    /// (426 then 226) handled by the connection.
    pub(crate) fn reply(&self) -> Reply {
        match self {
            TransferError::Connect(_) => Reply::new(425, "Can't open data connection."),
            // FileZilla Server's wording; vsftpd says 522.
            TransferError::NotResumed => Reply::new(
                425,
                "Unable to build data connection: TLS session of data connection not resumed.",
            ),
            TransferError::Data(_) | TransferError::Aborted => {
                Reply::new(426, "Connection closed; transfer aborted.")
            }
            TransferError::Fs(e) => fs_reply(e),
        }
    }
}

/// Errors of the listener itself.
#[derive(Debug, thiserror::Error)]
pub enum FtpError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// `implicit_tls` or `TlsMode::Required` without TLS settings
    /// (`tls: None`): nobody could ever log in.
    #[error("implicit FTPS and `tls = required` need TLS settings (a certificate)")]
    MissingTls,
}

/// THE table: the FTP code for each class of filesystem error.
pub(crate) fn code_for(class: ErrorClass) -> u16 {
    match class {
        ErrorClass::NotFound
        | ErrorClass::Denied
        | ErrorClass::Exists
        | ErrorClass::WrongKind
        | ErrorClass::NotEmpty
        | ErrorClass::Unsupported => 550,
        ErrorClass::BadName => 553,
        ErrorClass::QuotaExceeded => 552,
        ErrorClass::NoSpace => 452,
        ErrorClass::BadArgument => 554,
        ErrorClass::Internal => 451,
    }
}

/// The reply for a failed filesystem operation; the text never names a host
/// path (core's client message is fixed text).
pub(crate) fn fs_reply(err: &FsError) -> Reply {
    let class = err.class();
    if class == ErrorClass::Internal {
        tracing::warn!(error = %err, "storage failure");
    }
    Reply::new(code_for(class), format!("{}.", err.client_message()))
}

/// The reply for a line that does not parse.
pub(crate) fn parse_reply(err: &ParseError) -> Reply {
    match err {
        ParseError::Empty => Reply::new(500, "Empty command."),
        ParseError::MissingArgument(_) | ParseError::BadArgument(_) | ParseError::NotUtf8 => {
            Reply::new(501, format!("Syntax error: {err}."))
        }
        ParseError::Unsupported(_) => Reply::new(504, format!("{err}.")),
        ParseError::NetworkProtocol => {
            Reply::new(522, "Network protocol not supported, use (1,2).")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropgate_core::vfs::VfsError;

    #[test]
    fn table() {
        assert_eq!(fs_reply(&FsError::Denied).code(), 550);
        assert_eq!(fs_reply(&FsError::Vfs(VfsError::NotFound)).code(), 550);
        assert_eq!(fs_reply(&FsError::QuotaExceeded).code(), 552);
        assert_eq!(fs_reply(&FsError::Vfs(VfsError::NoSpace)).code(), 452);
        // A storage out of upload buffers for now: 452 with its reason.
        let busy = fs_reply(&FsError::Vfs(VfsError::Busy("buffers are full; try again")));
        assert_eq!(busy.code(), 452);
        assert!(busy.to_wire().contains("buffers are full; try again"));
        assert_eq!(
            fs_reply(&FsError::Vfs(VfsError::InvalidName("x"))).code(),
            553
        );
        assert_eq!(
            fs_reply(&FsError::Vfs(VfsError::Io(io::Error::other("/srv/secret")))).code(),
            451
        );
        assert!(
            !fs_reply(&FsError::Vfs(VfsError::Io(io::Error::other("/srv/secret"))))
                .to_wire()
                .contains("/srv")
        );
        assert_eq!(
            TransferError::Connect(io::Error::other("x")).reply().code(),
            425
        );
        assert_eq!(
            TransferError::Data(io::Error::other("x")).reply().code(),
            426
        );
        assert_eq!(TransferError::NotResumed.reply().code(), 425);
        assert_eq!(
            TransferError::Fs(FsError::QuotaExceeded).reply().code(),
            552
        );
        assert_eq!(parse_reply(&ParseError::NetworkProtocol).code(), 522);
        assert_eq!(parse_reply(&ParseError::Unsupported("TYPE")).code(), 504);
    }
}
