//! `/api/v1/sessions`: the live sessions of this node, and ending one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::AdminIdentity;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::schema::SessionListDoc;

/// List the live sessions of every protocol, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    responses(
        (status = 200, description = "Live sessions", body = SessionListDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    )
)]
pub(crate) async fn list_sessions(State(state): State<AppState>) -> Response {
    Json(crate::Items {
        items: state.gateway.sessions().list(),
    })
    .into_response()
}

/// Disconnect a session at once (a transfer in progress is aborted).
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such live session", body = ErrorBody),
    )
)]
pub(crate) async fn delete_session(
    State(state): State<AppState>,
    caller: AdminIdentity,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !state.gateway.sessions().disconnect(&id) {
        return Err(ApiError::NotFound(format!("session {id:?}")));
    }
    tracing::info!(admin = %caller.username, session = %id, "session disconnected by an admin");
    Ok(StatusCode::NO_CONTENT)
}
