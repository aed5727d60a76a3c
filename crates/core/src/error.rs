//! Errors of session operations, classified once for every protocol.

use dropgate_vfs::VfsError;

/// What a session operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The filesystem refused or failed.
    #[error(transparent)]
    Vfs(#[from] VfsError),
    /// The account's permissions do not allow it.
    #[error("permission denied")]
    Denied,
    /// The account's quota would be exceeded.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The session was ended (admin kick, shutdown).
    #[error("session closed")]
    Closed,
    /// An upload to this path is in progress (delete, rename and resize
    /// wait for it to end).
    #[error("file is being uploaded")]
    Busy,
    /// The operation was done but could not be recorded in the audit log
    /// (store down, spool full): it is not reported as a success.
    #[error(transparent)]
    Unrecorded(#[from] crate::Unrecorded),
}

/// The protocol-neutral class of an error; each protocol maps these to its
/// reply codes in one table (FTP 550/553/552/452, SFTP status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No such file or folder.
    NotFound,
    /// Permission denied (policy or OS).
    Denied,
    /// Target exists.
    Exists,
    /// The name is not acceptable.
    BadName,
    /// The operation needs a file, got a folder, or the reverse.
    WrongKind,
    /// Folder not empty.
    NotEmpty,
    /// Account quota exceeded.
    QuotaExceeded,
    /// Disk full.
    NoSpace,
    /// Bad offset or argument.
    BadArgument,
    /// Not supported by this backend.
    Unsupported,
    /// Our own failure (I/O error, bug); details go to the log, not the client.
    Internal,
}

impl FsError {
    /// The class that decides the protocol reply.
    pub fn class(&self) -> ErrorClass {
        match self {
            FsError::Denied | FsError::Closed | FsError::Busy => ErrorClass::Denied,
            FsError::Unrecorded(_) => ErrorClass::Internal,
            FsError::QuotaExceeded => ErrorClass::QuotaExceeded,
            FsError::Vfs(v) => match v {
                VfsError::NotFound => ErrorClass::NotFound,
                VfsError::PermissionDenied => ErrorClass::Denied,
                VfsError::AlreadyExists => ErrorClass::Exists,
                VfsError::NotADirectory | VfsError::IsADirectory => ErrorClass::WrongKind,
                VfsError::DirectoryNotEmpty => ErrorClass::NotEmpty,
                VfsError::InvalidName(_) => ErrorClass::BadName,
                VfsError::NoSpace | VfsError::Busy(_) => ErrorClass::NoSpace,
                VfsError::InvalidOffset => ErrorClass::BadArgument,
                VfsError::Unsupported(_) => ErrorClass::Unsupported,
                VfsError::Io(_) => ErrorClass::Internal,
            },
        }
    }

    /// A short message safe to show a client (never a host path).
    pub fn client_message(&self) -> &'static str {
        match self.class() {
            ErrorClass::NotFound => "No such file or directory",
            ErrorClass::Denied => "Permission denied",
            ErrorClass::Exists => "File exists",
            ErrorClass::BadName => "Invalid file name",
            ErrorClass::WrongKind => match self {
                FsError::Vfs(VfsError::NotADirectory) => "Not a directory",
                _ => "Is a directory",
            },
            ErrorClass::NotEmpty => "Directory not empty",
            ErrorClass::QuotaExceeded => "Quota exceeded",
            ErrorClass::NoSpace => match self {
                FsError::Vfs(VfsError::Busy(why)) => why,
                _ => "No space left on device",
            },
            ErrorClass::BadArgument => "Invalid argument",
            ErrorClass::Unsupported => match self {
                FsError::Vfs(VfsError::Unsupported(why)) => why,
                _ => "Operation not supported",
            },
            ErrorClass::Internal => "Internal error",
        }
    }
}

/// Result alias for session operations.
pub type FsResult<T> = Result<T, FsError>;
