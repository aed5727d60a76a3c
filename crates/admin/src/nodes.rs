//! `/api/v1/nodes`: the nodes sharing this store, from their heartbeats.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use dropgate_store::{NODE_GONE_AFTER, NodeInfo};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};

/// A running node.
#[derive(ToSchema)]
#[schema(as = Node)]
#[allow(dead_code)] // documentation only: the response is the store's NodeInfo
pub(crate) struct NodeDoc {
    /// `[cluster] node_name` (default: the host name).
    #[schema(example = "mft-1")]
    name: String,
    /// Its dropgate version.
    version: String,
    /// When it started.
    started_at: DateTime<Utc>,
    /// Its last heartbeat (every 5 s).
    last_seen_at: DateTime<Utc>,
    /// What it listens on, as "protocol address".
    #[schema(example = json!(["ftp 0.0.0.0:2121", "sftp 0.0.0.0:2222"]))]
    listeners: Vec<String>,
}

/// The nodes, by name.
#[derive(ToSchema)]
#[schema(as = NodeList)]
#[allow(dead_code)] // documentation only
pub(crate) struct NodeListDoc {
    /// The nodes.
    items: Vec<NodeDoc>,
}

/// List the nodes sharing this store.
///
/// Every running `dropgate serve` refreshes its entry every 5 s and removes
/// it when it stops; one not heard from for 20 s (killed, or cut off from
/// the database) is left out.
#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    tag = "nodes",
    responses(
        (status = 200, description = "Running nodes", body = NodeListDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    )
)]
pub(crate) async fn list_nodes(
    State(state): State<AppState>,
) -> ApiResult<Json<crate::Items<NodeInfo>>> {
    let since = Utc::now() - chrono::Duration::from_std(NODE_GONE_AFTER).unwrap_or_default();
    let items = state.gateway.store().list_nodes(since).await?;
    Ok(Json(crate::Items { items }))
}
