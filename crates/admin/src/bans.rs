//! `/api/v1/bans`: sources banned for failed logins (core's ban list), and
//! lifting a ban.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use dropgate_core::{BanSnapshot, Source};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::AdminIdentity;
use crate::error::{ApiError, ApiResult, ErrorBody};

/// A banned source.
#[derive(ToSchema)]
#[schema(as = Ban)]
#[allow(dead_code)] // documentation only: the response is core's BanSnapshot
pub(crate) struct BanDoc {
    /// The source: an IPv4 address, or an IPv6 /64 network (`2001:db8:1:2::/64`).
    #[schema(example = "203.0.113.7")]
    ip: String,
    /// Failed logins counted in the window that led to the ban.
    failures: u32,
    /// When the ban began.
    banned_at: DateTime<Utc>,
    /// When it ends by itself.
    expires_at: DateTime<Utc>,
}

/// Every banned source, longest-standing first.
#[derive(ToSchema)]
#[schema(as = BanList)]
#[allow(dead_code)] // documentation only
pub(crate) struct BanListDoc {
    /// The bans.
    items: Vec<BanDoc>,
}

/// List the sources banned for failed logins.
///
/// A source that fails `[limits] login_failures_before_ban` logins (FTP,
/// FTPS, SFTP or the admin login together) within `ban_window_secs` is
/// refused on every listener for `ban_secs`.
#[utoipa::path(
    get,
    path = "/api/v1/bans",
    tag = "bans",
    responses(
        (status = 200, description = "Banned sources", body = BanListDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    )
)]
pub(crate) async fn list_bans(State(state): State<AppState>) -> Json<crate::Items<BanSnapshot>> {
    Json(crate::Items {
        items: state.gateway.admission().bans(),
    })
}

/// Lift a ban (and forget the source's failures).
#[utoipa::path(
    delete,
    path = "/api/v1/bans/{ip}",
    tag = "bans",
    params(("ip" = String, Path,
        description = "The banned address, any address of a banned IPv6 /64, or the listed form")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "That source is not banned", body = ErrorBody),
        (status = 422, description = "Not an IP address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; nothing was lifted", body = ErrorBody),
    )
)]
pub(crate) async fn delete_ban(
    State(state): State<AppState>,
    caller: AdminIdentity,
    Path(ip): Path<String>,
) -> ApiResult<StatusCode> {
    let source: Source = ip.parse().map_err(|_| ApiError::Invalid {
        field: "ip".into(),
        message: "not an IP address".into(),
    })?;
    // Lifted on every node (the ban list is shared through the store).
    let lifted = state.gateway.lift_ban(source).await.map_err(|e| {
        tracing::warn!(error = %e, %source, "cannot lift a ban: store unavailable");
        ApiError::Unavailable
    })?;
    if !lifted {
        return Err(ApiError::NotFound(format!("ban of {source}")));
    }
    tracing::info!(admin = %caller.username, %source, "ban lifted by an admin");
    Ok(StatusCode::NO_CONTENT)
}
