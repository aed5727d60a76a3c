//! Who may use the API: admin logins (`POST /api/v1/auth/token`), the
//! credential check every other `/api/v1` route sits behind (a bearer token,
//! an API key, or the console's cookie with its CSRF header), and API keys.
//! Failed logins count toward core's ban list, shared with FTP and SFTP.
//!
//! Tokens and API keys are 256-bit random strings; the store keeps only their
//! SHA-256 digest, so a copy of the database does not hand out sessions, and
//! tokens survive a restart because they live in the database.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use dropgate_store::Verified;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ClientIp, JsonBody};
use crate::schema::ApiKeyListDoc;
use crate::{AppState, cookie_auth};

/// How long a token from `POST /api/v1/auth/token` stays valid.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Prefix of API keys, so a bearer credential is looked up in one table only.
const API_KEY_PREFIX: &str = "dgk_";
/// Prefix of login tokens.
pub(crate) const TOKEN_PREFIX: &str = "dgt_";
/// Longest bearer credential looked up at all (ours are 68 characters).
const MAX_CREDENTIAL_LEN: usize = 256;
/// Longest API key description.
const MAX_DESCRIPTION_LEN: usize = 1024;

/// The admin a request acts as (set by [`require_admin`]).
#[derive(Debug, Clone)]
pub(crate) struct AdminIdentity {
    /// The admin's username.
    pub(crate) username: String,
}

impl<S: Send + Sync> FromRequestParts<S> for AdminIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AdminIdentity>()
            .cloned()
            .ok_or(ApiError::Unauthorized("authentication required"))
    }
}

/// `Authorization: Bearer <token or API key>` on every protected route, or
/// the console's session cookie; a write authenticated by the cookie must
/// also carry the session's CSRF token (see [`crate::cookie_auth`]).
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| value.trim().to_owned())
        });
    // A bearer credential wins: scripts keep working exactly as before, and a
    // browser never sends one on its own, so it needs no CSRF check.
    let (credential, via_cookie) = match bearer {
        Some(c) => (c, false),
        None => match cookie_auth::from_headers(req.headers()) {
            // Only login tokens live in the cookie, never API keys.
            Some(c) if c.starts_with(TOKEN_PREFIX) => (c, true),
            Some(_) => {
                return ApiError::Unauthorized("invalid or expired credential").into_response();
            }
            None => {
                return ApiError::Unauthorized(
                    "authentication required: Authorization: Bearer <token or API key>",
                )
                .into_response();
            }
        },
    };
    match admin_for_credential(&state, &credential).await {
        Ok(Some(username)) => {
            if via_cookie
                && !req.method().is_safe()
                && !cookie_auth::csrf_matches(req.headers(), &credential)
            {
                return ApiError::Forbidden(format!(
                    "a write signed in by cookie needs the {} header (see GET /api/v1/auth/session)",
                    cookie_auth::CSRF_HEADER
                ))
                .into_response();
            }
            req.extensions_mut().insert(AdminIdentity { username });
            req.extensions_mut().insert(Credential {
                secret: credential,
                via_cookie,
            });
            next.run(req).await
        }
        Ok(None) => ApiError::Unauthorized("invalid or expired credential").into_response(),
        Err(e) => e.into_response(),
    }
}

/// The credential a request was let in with (set by [`require_admin`]).
#[derive(Clone)]
pub(crate) struct Credential {
    /// The token or key itself.
    pub(crate) secret: String,
    /// It came in the console's cookie (always a login token), not an
    /// `Authorization` header.
    pub(crate) via_cookie: bool,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("via_cookie", &self.via_cookie)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Credential>()
            .cloned()
            .ok_or(ApiError::Unauthorized("authentication required"))
    }
}

async fn admin_for_credential(state: &AppState, credential: &str) -> ApiResult<Option<String>> {
    // Ours are short printable ASCII; anything else cannot match and is not
    // worth a query (nor able to upset a database with odd bytes).
    if credential.is_empty()
        || credential.len() > MAX_CREDENTIAL_LEN
        || !credential.bytes().all(|b| b.is_ascii_graphic())
    {
        return Ok(None);
    }
    let store = state.gateway.store();
    let admin = if credential.starts_with(API_KEY_PREFIX) {
        store.admin_for_api_key(credential).await?
    } else {
        store.admin_for_token(credential).await?
    };
    Ok(admin)
}

/// 32 random bytes, hex, behind a prefix that says what the secret is.
fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// An admin's login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// Admin username.
    #[schema(example = "admin")]
    pub(crate) username: String,
    /// Admin password.
    #[schema(format = Password)]
    pub(crate) password: String,
}

/// A bearer token for `Authorization: Bearer <token>`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The token; send it as `Authorization: Bearer <token>`.
    pub(crate) token: String,
    /// When it stops working.
    pub(crate) expires_at: DateTime<Utc>,
}

/// Log in as an admin and get a bearer token.
///
/// Failed logins count toward the same ban list as FTP and SFTP logins
/// (`[limits] login_failures_before_ban` within `ban_window_secs`), counted
/// before the password is checked. A banned address gets 429 with
/// `Retry-After` until the ban ends or is lifted (`DELETE /api/v1/bans/{ip}`).
#[utoipa::path(
    post,
    path = "/api/v1/auth/token",
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or has the wrong type", body = ErrorBody),
        (status = 429, description = "This address is banned for failed logins", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the ban ends"))),
    )
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(login): JsonBody<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let admission = state.gateway.admission();
    let attempt = admission
        .begin_login(ip)
        .await
        .map_err(|_| ApiError::RateLimited {
            // Not banned: the address's allowance was busy; soon, then.
            retry_after: admission
                .ban_remaining(ip)
                .unwrap_or(std::time::Duration::from_secs(1)),
        })?;
    let store = state.gateway.store();
    // A name that cannot exist is not looked up, but still costs one hash.
    let admin = if dropgate_store::validate_username(&login.username).is_ok() {
        let lookup = tokio::time::timeout(
            dropgate_core::LOGIN_LOOKUP_TIMEOUT,
            store.get_admin(&login.username),
        )
        .await;
        match lookup {
            Ok(Ok(admin)) => admin,
            // Our failure, not a wrong password: it does not count.
            Ok(Err(e)) => {
                attempt.succeeded();
                return Err(e.into());
            }
            Err(_) => {
                attempt.succeeded();
                return Err(ApiError::Unavailable);
            }
        }
    } else {
        None
    };
    let verified = store
        .hasher()
        .verify(
            &login.password,
            admin.as_ref().map(|a| a.password_hash.as_str()),
        )
        .await;
    let admin = match (admin, verified) {
        (Some(admin), Verified::Ok | Verified::OkNeedsRehash) => admin,
        _ => {
            drop(attempt); // stays counted as a failure
            let name: String = login.username.chars().take(64).collect();
            tracing::warn!(%ip, username = %name.escape_debug(), "admin login failed");
            return Err(ApiError::Unauthorized("wrong username or password"));
        }
    };
    attempt.succeeded();
    if verified == Verified::OkNeedsRehash {
        match store.hasher().hash(&login.password).await {
            Ok(hash) => {
                if let Err(e) = store.set_admin_password_hash(&admin.username, &hash).await {
                    tracing::warn!(error = %e, "could not upgrade an admin password hash");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not re-hash an admin password"),
        }
    }
    let token = new_secret(TOKEN_PREFIX);
    let lifetime = chrono::Duration::from_std(TOKEN_LIFETIME).unwrap_or(chrono::Duration::hours(1));
    let expires_at = Utc::now() + lifetime;
    store
        .create_admin_token(admin.id, &token, expires_at)
        .await?;
    if let Err(e) = store.purge_expired_tokens().await {
        tracing::warn!(error = %e, "could not purge expired admin tokens");
    }
    tracing::info!(%ip, admin = %admin.username, "admin logged in");
    Ok(Json(TokenResponse { token, expires_at }))
}

/// A new API key's description.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiKey {
    /// What the key is for (at most 1024 bytes).
    #[serde(default)]
    #[schema(example = "nightly provisioning job", max_length = 1024)]
    description: String,
}

/// A new API key: the only time the key itself is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedApiKey {
    /// Public id, for listing and deleting.
    id: String,
    /// The secret; send it as `Authorization: Bearer <key>`. Not retrievable later.
    key: String,
}

/// Create an API key acting as the calling admin.
#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    request_body = NewApiKey,
    responses(
        (status = 201, description = "Created; the key is shown only now", body = CreatedApiKey),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid description", body = ErrorBody),
    )
)]
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    caller: AdminIdentity,
    JsonBody(new): JsonBody<NewApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    if new.description.len() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::invalid("description", "at most 1024 bytes"));
    }
    crate::limits::check_text("description", &new.description)?;
    let store = state.gateway.store();
    let admin = store
        .get_admin(&caller.username)
        .await?
        .ok_or(ApiError::Unauthorized("the admin account no longer exists"))?;
    let id = hex::encode(rand::random::<[u8; 8]>());
    let key = new_secret(API_KEY_PREFIX);
    store
        .create_api_key(&id, admin.id, &key, &new.description)
        .await?;
    tracing::info!(admin = %admin.username, key_id = %id, "API key created");
    Ok((StatusCode::CREATED, Json(CreatedApiKey { id, key })))
}

/// List every API key (never the keys themselves).
#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    responses(
        (status = 200, description = "Every API key, oldest first", body = ApiKeyListDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    )
)]
pub(crate) async fn list_api_keys(State(state): State<AppState>) -> ApiResult<Response> {
    let items = state.gateway.store().list_api_keys().await?;
    Ok(Json(crate::Items { items }).into_response())
}

/// Delete an API key; requests using it fail from now on.
#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
    )
)]
pub(crate) async fn delete_api_key(
    State(state): State<AppState>,
    caller: AdminIdentity,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    // Ids are hex; anything else cannot exist.
    let plausible = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !plausible || !state.gateway.store().delete_api_key(&id).await? {
        return Err(ApiError::NotFound(format!("API key {id:?}")));
    }
    tracing::info!(admin = %caller.username, key_id = %id, "API key deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn secrets_are_long_and_distinct() {
        let a = new_secret(API_KEY_PREFIX);
        assert_eq!(a.len(), API_KEY_PREFIX.len() + 64);
        assert_ne!(a, new_secret(API_KEY_PREFIX));
    }
}
