//! The admin REST API of SPEC section 7 (axum), and the web console.
//!
//! Owns: the HTTP routes under `/api/v1` with their JSON shapes and error
//! mapping, admin authentication (login tokens, API keys; failed logins
//! count toward core's ban list), the OpenAPI document generated from the handlers
//! (`/api/v1/openapi.json`), `/healthz`, `/metrics`, the console's embedded
//! files (`web/`, served at `/`) with its cookie sign-in and CSRF check, and
//! the hardening of the admin listener (body limit, timeout, security
//! headers, no CORS).
//!
//! Module layers, each importing only those below it: `limits` and
//! `cookie_auth` (leaves that import nothing of this crate); `error`,
//! `extract`, `schema`; one module per resource (`auth`, `console_session`,
//! `users`, `sessions`, `events`, `bans`, `system`, `console`); and `server`,
//! which assembles the router.
//!
//! Must not: write SQL (reads go through `dropgate-store`; account changes
//! through core's `create_account`, `update_account` and `delete_account`,
//! which also end sessions and remove homes), decide login policy (that is
//! `dropgate-core`), or touch the file storage.
//!
//! The binary binds with [`AdminServer::bind`] and serves with
//! [`AdminServer::run`]; tests may take the bare [`router`].

mod auth;
mod bans;
mod console;
mod console_session;
mod cookie_auth;
mod error;
mod event_rules;
mod events;
mod extract;
mod limits;
mod nodes;
mod schema;
mod server;
mod sessions;
mod system;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dropgate_core::Gateway;
use serde::Serialize;

pub use server::AdminServer;

/// What the admin listener needs from the configuration.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `[admin] listen`: where the API listens.
    pub listen: Vec<SocketAddr>,
    /// The protocol listeners of this process, `(protocol, address)`, as
    /// `GET /api/v1/status` reports them (the admin's own are added).
    pub listeners: Vec<(String, SocketAddr)>,
}

/// What `GET /api/v1/status` reports besides the gateway's own state.
#[derive(Debug, Clone)]
pub struct StatusInfo {
    /// Listening sockets, `(protocol, address)`.
    pub listeners: Vec<(String, SocketAddr)>,
    /// When the server started (uptime is measured from here).
    pub started: Instant,
}

impl StatusInfo {
    /// Status for these listeners, started now.
    pub fn new(listeners: Vec<(String, SocketAddr)>) -> StatusInfo {
        StatusInfo {
            listeners,
            started: Instant::now(),
        }
    }
}

/// The complete application (every route and layer) without a listener.
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()`, or
/// the login limiter sees every client as one address.
pub fn router(gateway: Arc<Gateway>, status: StatusInfo) -> axum::Router {
    server::build_router(gateway, status)
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The gateway: store, sessions, metrics.
    pub(crate) gateway: Arc<Gateway>,
    /// Listeners and start time.
    pub(crate) status: Arc<StatusInfo>,
}

/// A list response: `{"items": [...]}`.
#[derive(Debug, Serialize)]
pub(crate) struct Items<T> {
    pub(crate) items: Vec<T>,
}
