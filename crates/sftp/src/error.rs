//! Errors of starting the SFTP listener. Once running, per-connection
//! problems are logged and end only that connection.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why [`crate::SftpServer::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    /// `listen` is empty: there is nothing to bind.
    #[error("sftp: no listen address configured")]
    NoListenAddress,
    /// A listen address could not be bound (in use, no permission).
    #[error("sftp: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configured or previously generated host key could not be read or parsed.
    #[error("sftp: cannot load host key {path}: {message}")]
    LoadHostKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong (parse error, wrong passphrase, I/O).
        message: String,
    },
    /// A host key could not be generated or written into `data_dir`.
    #[error("sftp: cannot create host key {path}: {message}")]
    CreateHostKey {
        /// The key file that was being created.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
