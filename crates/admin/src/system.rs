//! Routes about the server itself: `/healthz`, `/metrics`, `/api/v1/status`
//! and `/api/v1/openapi.json`.

use std::fmt::Write as _;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use dropgate_store::Protocol;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::ErrorBody;

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok"))
)]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics of this node (text exposition format 0.0.4).
///
/// `dropgate_sessions{protocol}`, `dropgate_logins_total{protocol,outcome}`,
/// `dropgate_bytes_total{protocol,direction}`,
/// `dropgate_transfers_total{protocol,direction,outcome}`,
/// `dropgate_errors_total{protocol}`,
/// `dropgate_connections_refused_total{reason}`, `dropgate_connections`,
/// `dropgate_bans_total`, `dropgate_banned_sources`, `dropgate_uptime_seconds`,
/// `dropgate_build_info{version}`. No authentication: the admin listener is
/// meant to be private (SPEC 7).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let body = render_metrics(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn render_metrics(state: &AppState) -> String {
    let sessions = state.gateway.sessions().list();
    let counters: Vec<_> = Protocol::ALL
        .iter()
        .map(|p| (p.as_str(), state.gateway.metrics().snapshot(*p)))
        .collect();
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    family(
        "dropgate_sessions",
        "gauge",
        "Live sessions by protocol.",
        Protocol::ALL
            .iter()
            .map(|p| {
                let n = sessions.iter().filter(|s| s.protocol == p.as_str()).count() as u64;
                (format!("protocol=\"{p}\""), n)
            })
            .collect(),
    );
    family(
        "dropgate_logins_total",
        "counter",
        "Login attempts by protocol and outcome (ok, failed).",
        counters
            .iter()
            .flat_map(|(p, c)| {
                [
                    (format!("protocol=\"{p}\",outcome=\"ok\""), c.logins_ok),
                    (
                        format!("protocol=\"{p}\",outcome=\"failed\""),
                        c.logins_failed,
                    ),
                ]
            })
            .collect(),
    );
    family(
        "dropgate_bytes_total",
        "counter",
        "Bytes transferred by protocol and direction (upload: from clients, download: to clients).",
        counters
            .iter()
            .flat_map(|(p, c)| {
                [
                    (format!("protocol=\"{p}\",direction=\"upload\""), c.bytes_in),
                    (
                        format!("protocol=\"{p}\",direction=\"download\""),
                        c.bytes_out,
                    ),
                ]
            })
            .collect(),
    );
    family(
        "dropgate_transfers_total",
        "counter",
        "Finished transfers by protocol, direction and outcome (ok, failed).",
        counters
            .iter()
            .flat_map(|(p, c)| {
                [
                    (
                        format!("protocol=\"{p}\",direction=\"upload\",outcome=\"ok\""),
                        c.uploads_ok,
                    ),
                    (
                        format!("protocol=\"{p}\",direction=\"upload\",outcome=\"failed\""),
                        c.uploads_failed,
                    ),
                    (
                        format!("protocol=\"{p}\",direction=\"download\",outcome=\"ok\""),
                        c.downloads_ok,
                    ),
                    (
                        format!("protocol=\"{p}\",direction=\"download\",outcome=\"failed\""),
                        c.downloads_failed,
                    ),
                ]
            })
            .collect(),
    );
    family(
        "dropgate_errors_total",
        "counter",
        "Operations that failed for reasons other than the client's request, by protocol.",
        counters
            .iter()
            .map(|(p, c)| (format!("protocol=\"{p}\""), c.errors))
            .collect(),
    );
    let adm = state.gateway.admission().counters();
    family(
        "dropgate_connections_refused_total",
        "counter",
        "Connections and logins refused by admission, by reason (banned, server_full, source_full).",
        vec![
            ("reason=\"banned\"".to_owned(), adm.refused_banned),
            ("reason=\"server_full\"".to_owned(), adm.refused_server_full),
            ("reason=\"source_full\"".to_owned(), adm.refused_source_full),
        ],
    );
    for (name, kind, help, value) in [
        (
            "dropgate_connections",
            "gauge",
            "Open protocol connections (FTP control and SFTP), all listeners.",
            adm.connections,
        ),
        (
            "dropgate_bans_total",
            "counter",
            "Sources banned for failed logins since start.",
            adm.bans,
        ),
        (
            "dropgate_banned_sources",
            "gauge",
            "Sources banned right now.",
            adm.banned_now,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP dropgate_uptime_seconds Seconds since the admin API started."
    );
    let _ = writeln!(out, "# TYPE dropgate_uptime_seconds gauge");
    let _ = writeln!(
        out,
        "dropgate_uptime_seconds {}",
        state.status.started.elapsed().as_secs()
    );
    let _ = writeln!(out, "# HELP dropgate_build_info The running version.");
    let _ = writeln!(out, "# TYPE dropgate_build_info gauge");
    let _ = writeln!(
        out,
        "dropgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// One listening socket.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ListenerStatus {
    /// `ftp`, `ftps`, `sftp` or `admin`.
    #[schema(example = "sftp")]
    protocol: String,
    /// `ip:port`.
    #[schema(example = "0.0.0.0:2222")]
    address: String,
}

/// What runs where.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Status {
    /// dropgate's version.
    version: &'static str,
    /// Seconds since the admin API started.
    uptime_secs: u64,
    /// This node's name (`[cluster] node_name`).
    node: String,
    /// Every listener of this process, the admin API's included.
    listeners: Vec<ListenerStatus>,
}

/// Version, uptime, node name and listeners.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "system",
    responses(
        (status = 200, description = "Status", body = Status),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    )
)]
pub(crate) async fn status(State(state): State<AppState>) -> Json<Status> {
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.status.started.elapsed().as_secs(),
        node: state.gateway.node_name().to_owned(),
        listeners: state
            .status
            .listeners
            .iter()
            .map(|(protocol, addr)| ListenerStatus {
                protocol: protocol.clone(),
                address: addr.to_string(),
            })
            .collect(),
    })
}

/// The OpenAPI document as served, built once per router.
#[derive(Clone)]
pub(crate) struct OpenApiJson(pub(crate) Bytes);

impl IntoResponse for OpenApiJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// This document. Public, like `/healthz`: it describes routes, not data.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 description of every route", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi(Extension(doc): Extension<OpenApiJson>) -> OpenApiJson {
    doc
}
