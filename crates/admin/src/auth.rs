//! Who may use the API: admin logins (`POST /api/v1/auth/token`), the bearer
//! check every other `/api/v1` route sits behind, API keys, and the per-IP
//! limit on failed logins.
//!
//! Tokens and API keys are 256-bit random strings; the store keeps only their
//! SHA-256 digest, so a copy of the database does not hand out sessions, and
//! tokens survive a restart because they live in the database.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ClientIp, JsonBody};
use crate::schema::ApiKeyListDoc;

/// How long a token from `POST /api/v1/auth/token` stays valid.
pub(crate) const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Prefix of API keys, so a bearer credential is looked up in one table only.
const API_KEY_PREFIX: &str = "dgk_";
/// Prefix of login tokens.
const TOKEN_PREFIX: &str = "dgt_";
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

/// `Authorization: Bearer <token or API key>` on every protected route.
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let credential = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| value.trim().to_owned())
        });
    let Some(credential) = credential else {
        return ApiError::Unauthorized(
            "authentication required: Authorization: Bearer <token or API key>",
        )
        .into_response();
    };
    match admin_for_credential(&state, &credential).await {
        Ok(Some(username)) => {
            req.extensions_mut().insert(AdminIdentity { username });
            next.run(req).await
        }
        Ok(None) => ApiError::Unauthorized("invalid or expired credential").into_response(),
        Err(e) => e.into_response(),
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
    username: String,
    /// Admin password.
    #[schema(format = Password)]
    password: String,
}

/// A bearer token for `Authorization: Bearer <token>`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The token; send it as `Authorization: Bearer <token>`.
    token: String,
    /// When it stops working.
    expires_at: DateTime<Utc>,
}

/// Log in as an admin and get a bearer token.
///
/// Failed logins are limited per source address: after 5 failures within
/// 5 minutes further attempts get 429 with `Retry-After` until the oldest
/// failure leaves the window. This is separate from the protocols' ban list.
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
        (status = 429, description = "Too many failed logins from this address", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the next attempt is allowed"))),
    )
)]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(login): JsonBody<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    state.login_limiter.check(ip)?;
    let store = state.gateway.store();
    // A name that cannot exist is not looked up, but still costs one hash.
    let admin = if dropgate_store::validate_username(&login.username).is_ok() {
        store.get_admin(&login.username).await?
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
            state.login_limiter.record_failure(ip);
            let name: String = login.username.chars().take(64).collect();
            tracing::warn!(%ip, username = %name.escape_debug(), "admin login failed");
            return Err(ApiError::Unauthorized("wrong username or password"));
        }
    };
    state.login_limiter.forget(ip);
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
    crate::users::check_text("description", &new.description)?;
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

/// Failed admin logins per source address within a sliding window.
///
/// Hand-written rather than `governor`/`tower_governor`: only *failures*
/// count (an admin who types the password right is never slowed down), the
/// reply needs the time until the oldest failure expires for `Retry-After`,
/// and tracked addresses need a hard cap; that is less code than adapting a
/// request-rate limiter, and it pulls in no dependency tree.
pub(crate) struct LoginLimiter {
    /// Failures allowed within `window`; the next attempt is refused.
    max_failures: usize,
    /// How long a failure counts.
    window: Duration,
    /// Most addresses tracked at once (memory bound under a spray of sources).
    max_tracked: usize,
    /// Failure times per source, oldest first.
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// `max_failures` within `window` per source address.
    pub(crate) fn new(max_failures: usize, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max_failures: max_failures.max(1),
            window,
            max_tracked: 10_000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a source that has used up its failures.
    pub(crate) fn check(&self, ip: IpAddr) -> ApiResult<()> {
        let key = source_key(ip);
        let now = Instant::now();
        let mut map = self.lock();
        let Some(times) = map.get_mut(&key) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() < self.max_failures {
            if times.is_empty() {
                map.remove(&key);
            }
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        let retry_after = self.window.saturating_sub(now.duration_since(oldest));
        Err(ApiError::RateLimited { retry_after })
    }

    /// Counts one failed login from `ip`.
    pub(crate) fn record_failure(&self, ip: IpAddr) {
        let key = source_key(ip);
        let now = Instant::now();
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= self.max_tracked {
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
            if map.len() >= self.max_tracked {
                // Still full of live entries: drop the one idle the longest.
                let stalest = map
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(k, _)| *k);
                if let Some(stalest) = stalest {
                    map.remove(&stalest);
                }
            }
        }
        let times = map.entry(key).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
    }

    /// A successful login clears the source's failures.
    pub(crate) fn forget(&self, ip: IpAddr) {
        self.lock().remove(&source_key(ip));
    }
}

/// IPv4-mapped addresses count as IPv4, and an IPv6 client is counted per
/// /64: one host can use every address of its prefix.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limiter_counts_failures_per_source() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.record_failure(a);
        }
        match limiter.check(a) {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(60))
            }
            other => panic!("{other:?}"),
        }
        assert!(limiter.check(b).is_ok());
        // The mapped form of the same address is the same source.
        assert!(limiter.check("::ffff:192.0.2.1".parse().unwrap()).is_err());
        limiter.forget(a);
        assert!(limiter.check(a).is_ok());
    }

    #[test]
    fn limiter_window_expires_and_v6_counts_per_prefix() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(20));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        limiter.record_failure(a);
        assert!(limiter.check("2001:db8::ffff".parse().unwrap()).is_err());
        assert!(limiter.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.check(a).is_ok());
    }

    #[test]
    fn limiter_memory_is_bounded() {
        let mut limiter = LoginLimiter::new(2, Duration::from_secs(60));
        limiter.max_tracked = 4;
        for i in 0..10u8 {
            limiter.record_failure(IpAddr::from([10, 0, 0, i]));
        }
        assert!(limiter.lock().len() <= 4);
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let a = new_secret(API_KEY_PREFIX);
        assert_eq!(a.len(), API_KEY_PREFIX.len() + 64);
        assert_ne!(a, new_secret(API_KEY_PREFIX));
    }
}
