//! `/api/v1/events`: the audit log, newest first, in pages linked by a cursor.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use dropgate_store::{Event, EventKind, EventQuery};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::QueryParams;
use crate::schema::{EventKindDoc, EventListDoc};

/// Default page size.
const DEFAULT_PAGE: u32 = 100;
/// Largest page size (one more row is read to know whether a next page exists).
const MAX_PAGE: u32 = 500;
/// How long a listing waits for this node's queued events to be stored.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Filters and paging of `GET /api/v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventParams {
    /// Only this account's events.
    username: Option<String>,
    /// Only events of this kind.
    #[param(value_type = Option<EventKindDoc>)]
    kind: Option<EventKind>,
    /// At or after this instant (RFC 3339, e.g. `2026-01-31T12:00:00Z`).
    since: Option<DateTime<Utc>>,
    /// Before this instant (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// Page size, 1–500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page (opaque).
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct EventList {
    items: Vec<Event>,
    next_cursor: Option<String>,
}

/// Read the audit log, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventParams),
    responses(
        (status = 200, description = "A page of events", body = EventListDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "A bad parameter; the message names it", body = ErrorBody),
    )
)]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<EventParams>,
) -> ApiResult<Response> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let before_id = params.cursor.as_deref().map(parse_cursor).transpose()?;
    if let Some(name) = &params.username {
        crate::limits::check_text("username", name)?;
    }
    let query = EventQuery {
        username: params.username,
        kind: params.kind,
        since: params.since,
        until: params.until,
        before_id,
        limit: limit + 1,
    };
    // Read-your-writes on this node: events queued or journaled here
    // (answered operations whose batch is still gathering) are stored
    // first. Bounded: with the store hanging, the query says so anyway.
    let _ = tokio::time::timeout(FLUSH_WAIT, state.gateway.audit().flush()).await;
    let mut items = state.gateway.store().query_events(&query).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(EventList { items, next_cursor }).into_response())
}

/// The cursor is the id of the last event of the previous page; clients must
/// treat it as opaque so it can change form later.
fn parse_cursor(cursor: &str) -> ApiResult<i64> {
    cursor
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid("cursor", "not a cursor returned by this API"))
}
