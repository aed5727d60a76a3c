//! The one table from core's error classes to SFTP status codes.

use dropgate_core::{ErrorClass, FsError};
use dropgate_vfs::VfsError;

use crate::codec::StatusCode;

/// The status code for an error class (SFTP v3 has few codes: everything
/// without its own code is FAILURE with a message that says what happened).
pub(crate) fn status_code(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::NotFound => StatusCode::NoSuchFile,
        ErrorClass::Denied => StatusCode::PermissionDenied,
        ErrorClass::Unsupported => StatusCode::OpUnsupported,
        ErrorClass::Exists
        | ErrorClass::BadName
        | ErrorClass::WrongKind
        | ErrorClass::NotEmpty
        | ErrorClass::QuotaExceeded
        | ErrorClass::NoSpace
        | ErrorClass::BadArgument
        | ErrorClass::Internal => StatusCode::Failure,
    }
}

/// A status reply's code and message for a session error.
pub(crate) fn of_fs_error(e: &FsError) -> (StatusCode, &'static str) {
    if e.class() == ErrorClass::Internal {
        tracing::warn!(error = %e, "filesystem operation failed");
    }
    (status_code(e.class()), e.client_message())
}

/// A status for a path the canonicalizer refused.
pub(crate) fn of_vfs_error(e: VfsError) -> (StatusCode, &'static str) {
    of_fs_error(&FsError::Vfs(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(status_code(ErrorClass::NotFound), StatusCode::NoSuchFile);
        assert_eq!(
            status_code(ErrorClass::Denied),
            StatusCode::PermissionDenied
        );
        assert_eq!(status_code(ErrorClass::QuotaExceeded), StatusCode::Failure);
        assert_eq!(status_code(ErrorClass::NoSpace), StatusCode::Failure);
        assert_eq!(
            status_code(ErrorClass::Unsupported),
            StatusCode::OpUnsupported
        );
        assert_eq!(
            of_fs_error(&FsError::QuotaExceeded),
            (StatusCode::Failure, "Quota exceeded")
        );
        assert_eq!(
            of_vfs_error(VfsError::InvalidName("x")),
            (StatusCode::Failure, "Invalid file name")
        );
    }
}
