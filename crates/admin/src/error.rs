//! The one error type of the API and its JSON form,
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.
//!
//! Every failure a handler can meet is mapped here, once, to a status code:
//! the client's mistakes to 4xx with a message that names what was wrong, our
//! own failures to 5xx with a generic message (the detail goes to the log).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dropgate_store::{FieldError, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body is not JSON, or the request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or a wrong or expired one (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but the operation is refused by policy (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The name is already taken, or the state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the limit (413).
    #[error(
        "the request body is larger than {} bytes",
        crate::limits::MAX_BODY_BYTES
    )]
    PayloadTooLarge,
    /// The body is not JSON of the declared media type (415).
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    /// A field or parameter has a bad value; `field` names it (422).
    #[error("{field}: {message}")]
    Invalid {
        /// The field's or query parameter's name as the client wrote it.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Too many failed logins from this address (429).
    #[error("too many failed logins; retry in {} s", retry_after.as_secs())]
    RateLimited {
        /// When the client may try again.
        retry_after: Duration,
    },
    /// The store is unreachable (503).
    #[error("the account store is unavailable")]
    Unavailable,
    /// Our own failure; the detail is logged, never sent (500).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 naming `field`.
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The status code this error is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The machine-readable `code` of each status this API answers with.
pub(crate) fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_field",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// The error.
    pub(crate) error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `timeout`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `invalid_field`,
    /// `rate_limited`, `unavailable`, `internal`.
    #[schema(example = "invalid_field")]
    pub(crate) code: &'static str,
    /// Human-readable; for `invalid_field` it starts with the field's name.
    #[schema(example = "home: a relative folder below the storage root, without '..'")]
    pub(crate) message: String,
    /// For `invalid_field`: the offending field or query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "home")]
    pub(crate) field: Option<String>,
}

/// Builds an error response from its parts (also used to rewrite the plain
/// text errors of axum's own rejections, see `server::json_errors`).
pub(crate) fn error_response(
    status: StatusCode,
    message: String,
    field: Option<String>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code_for(status),
            message,
            field,
        },
    };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "admin API request failed")
            }
            ApiError::Unavailable => tracing::warn!("admin API: store unavailable"),
            _ => {}
        }
        let field = match &self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let mut response = error_response(status, self.to_string(), field);
        match &self {
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after } => {
                // Round up: a client that waits exactly this long must get through.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Invalid(f) => f.into(),
            StoreError::PasswordTooLong => ApiError::invalid(
                "password",
                format!("at most {} bytes", dropgate_store::MAX_PASSWORD_LEN),
            ),
            StoreError::Db(e) => {
                tracing::warn!(error = %e, "admin API: database error");
                ApiError::Unavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<dropgate_core::AccountError> for ApiError {
    fn from(e: dropgate_core::AccountError) -> Self {
        use dropgate_core::AccountError as A;
        match e {
            A::Store(e) => e.into(),
            e @ A::SharedHome { .. } => ApiError::Conflict(e.to_string()),
            e @ A::HomeNotRemovable(_) => ApiError::Forbidden(e.to_string()),
            e @ A::HomeRemoval { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

/// Result alias for handlers.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
