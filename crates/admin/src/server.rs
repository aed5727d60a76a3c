//! The HTTP side: router assembly, the OpenAPI document built from the same
//! routes, hardening layers, and the listeners with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use dropgate_core::Gateway;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth;
use crate::console_session;
use crate::cookie_auth;
use crate::error::{ApiError, error_response};
use crate::limits::MAX_BODY_BYTES;
use crate::system::OpenApiJson;
use crate::{
    AdminConfig, AppState, StatusInfo, bans, console, event_rules, events, nodes, sessions, system,
    users,
};

/// A request still unanswered after this gets 408 (argon2 queues included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The name of the security scheme in the OpenAPI document.
const BEARER: &str = "bearer";
/// The name of the console's cookie scheme in the OpenAPI document.
const CONSOLE_COOKIE: &str = "console_cookie";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dropgate admin API",
        description = "Accounts, live sessions, the audit log, event rules and server status of a dropgate gateway.\n\n\
            Every `/api/v1` route except `POST /api/v1/auth/token`, `POST /api/v1/auth/session` and \
            `GET /api/v1/openapi.json` needs `Authorization: Bearer <token or API key>`, or the web \
            console's `dropgate_session` cookie; a POST, PUT, PATCH or DELETE authenticated by the cookie \
            must also send `X-CSRF-Token` (see `GET /api/v1/auth/session`), else 403. Errors are `{\"error\": {\"code\", \"message\"}}`; \
            a 422 also carries `field`, the name of the offending field or parameter. Request bodies \
            are JSON (`Content-Type: application/json`, at most 1 MiB) and unknown fields are refused \
            with 422.",
    ),
    tags(
        (name = "auth", description = "Admin login"),
        (name = "api-keys", description = "Long-lived credentials for scripts"),
        (name = "users", description = "Partner accounts"),
        (name = "sessions", description = "Live sessions"),
        (name = "nodes", description = "Nodes sharing the store"),
        (name = "events", description = "The audit log"),
        (name = "system", description = "Health, metrics, status"),
        (name = "bans", description = "Sources banned for failed logins"),
        (name = "event-rules", description = "Event rules (webhooks, commands, move, copy, retention) and their deliveries"),
        (name = "console", description = "The web console's page and files"),
    ),
    components(schemas(crate::error::ErrorBody))
)]
struct ApiDoc;

/// Builds the whole application.
pub(crate) fn build_router(gateway: Arc<Gateway>, status: StatusInfo) -> Router {
    let public = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
        .routes(routes!(system::openapi))
        .routes(routes!(auth::create_token))
        .routes(routes!(console_session::create_session));
    // Everything here sits behind the bearer check; the document says so for
    // exactly these operations, so the two cannot disagree.
    let protected = OpenApiRouter::new()
        .routes(routes!(
            console_session::get_session,
            console_session::delete_session
        ))
        .routes(routes!(auth::create_api_key, auth::list_api_keys))
        .routes(routes!(auth::delete_api_key))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(
            users::get_user,
            users::replace_user,
            users::patch_user,
            users::delete_user
        ))
        .routes(routes!(sessions::list_sessions))
        .routes(routes!(sessions::delete_session))
        .routes(routes!(events::list_events))
        .routes(routes!(bans::list_bans))
        .routes(routes!(bans::delete_ban))
        .routes(routes!(event_rules::list_rules, event_rules::create_rule))
        .routes(routes!(
            event_rules::get_rule,
            event_rules::replace_rule,
            event_rules::delete_rule
        ))
        .routes(routes!(event_rules::list_deliveries))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(system::status));

    let (public, mut doc) = public.split_for_parts();
    let (protected, mut protected_doc) = protected.split_for_parts();
    for item in protected_doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            // Either credential: a bearer one, or the console's cookie.
            op.security = Some(vec![
                SecurityRequirement::new(BEARER, Vec::<String>::new()),
                SecurityRequirement::new(CONSOLE_COOKIE, Vec::<String>::new()),
            ]);
        }
    }
    doc.merge(protected_doc);
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A token from POST /api/v1/auth/token or an API key from POST /api/v1/api-keys",
                ))
                .build(),
        ),
    );
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            CONSOLE_COOKIE,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                cookie_auth::COOKIE_NAME,
                "The web console's session from POST /api/v1/auth/session; writes also need X-CSRF-Token",
            ))),
        );
    let doc_json = match serde_json::to_vec(&doc) {
        Ok(json) => Bytes::from(json),
        Err(e) => {
            tracing::error!(error = %e, "could not serialize the OpenAPI document");
            Bytes::from_static(b"{}")
        }
    };

    let state = AppState {
        gateway,
        status: Arc::new(status),
    };
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_admin,
    ));
    public
        .merge(protected)
        .layer(Extension(OpenApiJson(doc_json)))
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(security_headers))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /api/v1/openapi.json".to_owned())
}

/// Rewrites the plain-text errors axum and tower-http produce themselves
/// (405, 408, 413, unparsable paths) into the API's JSON error form.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let rewritten = error_response(status, message, None);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, rewritten.into_body())
}

/// Headers every response carries; no CORS headers are ever sent, so
/// browsers keep other origins out.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_api = req.uri().path().starts_with("/api/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'self'",
        ),
    );
    if is_api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The admin API's listeners, bound and ready to serve.
pub struct AdminServer {
    /// One per `[admin] listen` address.
    listeners: Vec<TcpListener>,
    /// The application every listener serves.
    app: Router,
}

impl AdminServer {
    /// Binds every address of `config.listen` (port 0 picks a free port).
    pub async fn bind(config: AdminConfig, gateway: Arc<Gateway>) -> std::io::Result<AdminServer> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("admin listener {addr}: {e}"))
            })?;
            listeners.push(listener);
        }
        let mut all = config.listeners;
        for l in &listeners {
            all.push(("admin".to_owned(), l.local_addr()?));
        }
        let app = build_router(gateway, StatusInfo::new(all));
        Ok(AdminServer { listeners, app })
    }

    /// The bound addresses (with the actual ports).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then lets the requests in flight
    /// finish (at most [`SHUTDOWN_DRAIN`]) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        for listener in self.listeners {
            tasks.spawn(accept_loop(listener, self.app.clone(), shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Most connections one admin listener serves at once (a console uses a few).
const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's headers within this; ends slowloris
/// connections, which would otherwise also hold up shutdown.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may run on after shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Accepts connections on one listener until `shutdown` (after mini-redis:
/// a semaphore caps connections, accept errors back off).
async fn accept_loop(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "admin API listening");
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(?addr, error = %e, "admin listener: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        backoff = Duration::from_millis(5);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?addr,
            "admin connections still open after shutdown; dropping them"
        );
    }
    tracing::info!(?addr, "admin API stopped");
}
