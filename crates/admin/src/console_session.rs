//! `/api/v1/auth/session`: the console signs in and out here. Sign-in is the
//! token login of [`crate::auth`] with the token put in an `HttpOnly` cookie
//! instead of the body, so page scripts never hold the credential; the body
//! carries the CSRF token writes must echo (see [`crate::cookie_auth`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{self, AdminIdentity, Credential, TOKEN_LIFETIME, TokenRequest};
use crate::cookie_auth::{csrf_token, set_cookie};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ClientIp, JsonBody};

/// The signed-in console session.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConsoleSession {
    /// The admin signed in.
    #[schema(example = "admin")]
    username: String,
    /// Send this as `X-CSRF-Token` with every POST, PUT, PATCH and DELETE
    /// authenticated by the cookie. Null for bearer credentials, which need none.
    csrf_token: Option<String>,
    /// When the session ends (present on sign-in only).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
}

/// Sign in to the console: like `POST /api/v1/auth/token`, but the token is
/// set as an `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the request
/// came through a proxy with `X-Forwarded-Proto: https`) instead of being
/// returned.
///
/// Failed sign-ins count against the same per-address limit as token logins.
#[utoipa::path(
    post,
    path = "/api/v1/auth/session",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Signed in; the cookie is set", body = ConsoleSession,
            headers(("Set-Cookie" = String, description = "dropgate_session=…; Path=/api/; HttpOnly; SameSite=Strict"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or has the wrong type", body = ErrorBody),
        (status = 429, description = "Too many failed logins from this address", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the next attempt is allowed"))),
    )
)]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    JsonBody(login): JsonBody<TokenRequest>,
) -> ApiResult<Response> {
    let username = login.username.clone();
    // The very same login as the token route: limits, bans, hash upgrade.
    let Json(issued) = auth::create_token(State(state), ClientIp(ip), JsonBody(login)).await?;
    let body = ConsoleSession {
        username,
        csrf_token: Some(csrf_token(&issued.token)),
        expires_at: Some(issued.expires_at),
    };
    let mut response = Json(body).into_response();
    if let Some(c) = set_cookie(&headers, Some(&issued.token), TOKEN_LIFETIME) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(response)
}

/// Who is signed in, and the CSRF token of a cookie session (how the
/// console resumes after a page reload).
#[utoipa::path(
    get,
    path = "/api/v1/auth/session",
    tag = "auth",
    responses(
        (status = 200, description = "Signed in", body = ConsoleSession),
        (status = 401, description = "Not signed in, or the session expired", body = ErrorBody),
    )
)]
pub(crate) async fn get_session(caller: AdminIdentity, credential: Credential) -> Response {
    Json(ConsoleSession {
        username: caller.username,
        csrf_token: credential
            .via_cookie
            .then(|| csrf_token(&credential.secret)),
        expires_at: None,
    })
    .into_response()
}

/// Sign out of the console: the cookie's login token stops working at once
/// and the cookie is removed. Bearer credentials are not ended here (a
/// script's token expires on its own; an API key is deleted), so a bearer
/// call is answered 204 with nothing ended.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/session",
    tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 403, description = "Cookie session without the X-CSRF-Token header", body = ErrorBody),
    )
)]
pub(crate) async fn delete_session(
    State(state): State<AppState>,
    caller: AdminIdentity,
    credential: Credential,
    headers: HeaderMap,
) -> Response {
    if credential.via_cookie {
        if let Err(e) = state
            .gateway
            .store()
            .delete_admin_token(&credential.secret)
            .await
        {
            return crate::error::ApiError::from(e).into_response();
        }
        tracing::info!(admin = %caller.username, "admin signed out");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(c) = set_cookie(&headers, None, TOKEN_LIFETIME) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response
}
