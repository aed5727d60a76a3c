//! `/api/v1/sessions`: the live sessions of every node sharing the store,
//! and ending one wherever it lives.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use dropgate_core::EndSession;

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
pub(crate) async fn list_sessions(State(state): State<AppState>) -> ApiResult<Response> {
    // With the store down this node's own sessions are still worth seeing
    // (to end one); the other nodes' are left out, and the log says so.
    let items = match state.gateway.all_sessions().await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read other nodes' sessions; listing this node's only");
            state.gateway.sessions().list()
        }
    };
    Ok(Json(crate::Items { items }).into_response())
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
        (status = 503, description = "The store, or the node holding the session, did not answer", body = ErrorBody),
    )
)]
pub(crate) async fn delete_session(
    State(state): State<AppState>,
    caller: AdminIdentity,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let ended = state.gateway.end_session(&id).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot reach the store to end a session");
        ApiError::Unavailable
    })?;
    match ended {
        EndSession::Ended => {}
        EndSession::NotFound => return Err(ApiError::NotFound(format!("session {id:?}"))),
        EndSession::NoAnswer(node) => {
            tracing::warn!(session = %id, %node, "the node holding the session did not end it");
            return Err(ApiError::Unavailable);
        }
    }
    tracing::info!(admin = %caller.username, session = %id, "session disconnected by an admin");
    Ok(StatusCode::NO_CONTENT)
}
