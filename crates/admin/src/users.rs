//! `/api/v1/users`: partner accounts (SPEC section 4).
//!
//! Request bodies take the fields of the user JSON plus a write-only
//! `password`; responses are the store's `User` as it serializes (never a
//! password or hash). Unknown fields are refused with 422 naming the field, so
//! a typo (`"enable": false`) cannot silently leave an account open.
//!
//! An update that changes how or whether the account may log in, or what it
//! may reach (password, keys, enabled, expiry, allowed IPs, protocols, home,
//! permissions), ends the account's live sessions: they would otherwise keep
//! the old rights until they disconnect. Quota, bandwidth and description
//! take effect at the next login.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use dropgate_core::PasswordChange;
use dropgate_store::{Bandwidth, PermissionMap, Protocol, Quota, User};
use ipnet::IpNet;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, QueryParams};
use crate::limits::check_text;
use crate::schema::{
    BandwidthDoc, CidrDoc, HomeDoc, PermissionMapDoc, ProtocolDoc, PublicKeyDoc, QuotaDoc, UserDoc,
    UserListDoc,
};

/// Default page size of `GET /api/v1/users`.
const DEFAULT_PAGE: u32 = 100;
/// Largest page size.
const MAX_PAGE: u32 = 500;

/// `Some(value)` for a present field, `null` included: tells "absent" (keep)
/// from `null` (clear) in updates.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// An account to create (`POST`) or the full new state of one (`PUT`).
///
/// Missing fields take the defaults of a new account; `created_at` and
/// `last_login_at` are accepted (so a fetched user can be sent back) and
/// ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewUser)]
pub(crate) struct NewUser {
    /// 1–64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`. On `PUT` it
    /// must equal the name in the path.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", example = "acme")]
    username: String,
    /// The account's password (stored as an argon2id hash). On `PUT`, absent
    /// keeps the current password and `null` removes password login.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Password, write_only, min_length = 1, max_length = 1024)]
    password: Option<Option<String>>,
    /// OpenSSH one-line public keys.
    #[schema(value_type = Option<Vec<PublicKeyDoc>>)]
    public_keys: Option<Vec<String>>,
    /// Folder below the storage root; default: the username.
    #[schema(value_type = Option<HomeDoc>)]
    home: Option<String>,
    /// Virtual path prefix -> permissions; default `{"/": ["*"]}`.
    #[schema(value_type = Option<PermissionMapDoc>)]
    permissions: Option<PermissionMap>,
    /// Default true.
    enabled: Option<bool>,
    /// After this instant the account cannot log in; default never.
    expires_at: Option<DateTime<Utc>>,
    /// Default unlimited.
    #[schema(value_type = Option<QuotaDoc>)]
    quota: Option<Quota>,
    /// Default unlimited.
    #[schema(value_type = Option<BandwidthDoc>)]
    bandwidth: Option<Bandwidth>,
    /// Concurrent logged-in sessions, all protocols; default 0 (unlimited).
    max_sessions: Option<u64>,
    /// CIDRs allowed to log in; default any.
    #[schema(value_type = Option<Vec<CidrDoc>>)]
    allowed_ips: Option<Vec<IpNet>>,
    /// Default all.
    #[schema(value_type = Option<Vec<ProtocolDoc>>)]
    protocols: Option<Vec<Protocol>>,
    /// Free text, at most 1024 bytes.
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// Ignored.
    #[serde(rename = "created_at")]
    #[schema(value_type = Option<String>, format = DateTime, read_only)]
    _created_at: Option<IgnoredAny>,
    /// Ignored.
    #[serde(rename = "last_login_at")]
    #[schema(value_type = Option<String>, format = DateTime, read_only)]
    _last_login_at: Option<IgnoredAny>,
    /// Ignored (read-only).
    #[serde(rename = "usage")]
    #[schema(value_type = Option<Object>, read_only)]
    _usage: Option<IgnoredAny>,
}

/// Any subset of an account's fields (`PATCH`); absent fields keep their
/// value, `null` clears `expires_at` and `password`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UserPatch)]
pub(crate) struct UserPatch {
    /// Must equal the name in the path if present (accounts are not renamed).
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")]
    username: Option<String>,
    /// A new password; `null` removes password login.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Password, write_only, min_length = 1, max_length = 1024)]
    password: Option<Option<String>>,
    /// OpenSSH one-line public keys (replaces the list).
    #[schema(value_type = Option<Vec<PublicKeyDoc>>)]
    public_keys: Option<Vec<String>>,
    /// Folder below the storage root.
    #[schema(value_type = Option<HomeDoc>)]
    home: Option<String>,
    /// Virtual path prefix -> permissions (replaces the map).
    #[schema(value_type = Option<PermissionMapDoc>)]
    permissions: Option<PermissionMap>,
    /// Disabling ends the account's live sessions.
    enabled: Option<bool>,
    /// `null` removes the expiry.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    expires_at: Option<Option<DateTime<Utc>>>,
    /// Storage limits.
    #[schema(value_type = Option<QuotaDoc>)]
    quota: Option<Quota>,
    /// Rate limits.
    #[schema(value_type = Option<BandwidthDoc>)]
    bandwidth: Option<Bandwidth>,
    /// Concurrent logged-in sessions, all protocols (0: unlimited).
    max_sessions: Option<u64>,
    /// CIDRs allowed to log in (replaces the list).
    #[schema(value_type = Option<Vec<CidrDoc>>)]
    allowed_ips: Option<Vec<IpNet>>,
    /// Protocols allowed (replaces the list).
    #[schema(value_type = Option<Vec<ProtocolDoc>>)]
    protocols: Option<Vec<Protocol>>,
    /// Free text, at most 1024 bytes.
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// Ignored.
    #[serde(rename = "created_at")]
    #[schema(value_type = Option<String>, format = DateTime, read_only)]
    _created_at: Option<IgnoredAny>,
    /// Ignored.
    #[serde(rename = "last_login_at")]
    #[schema(value_type = Option<String>, format = DateTime, read_only)]
    _last_login_at: Option<IgnoredAny>,
    /// Ignored (read-only).
    #[serde(rename = "usage")]
    #[schema(value_type = Option<Object>, read_only)]
    _usage: Option<IgnoredAny>,
}

impl From<NewUser> for UserPatch {
    /// A full replacement is a patch that sets every field.
    fn from(n: NewUser) -> UserPatch {
        UserPatch {
            username: Some(n.username),
            password: n.password,
            public_keys: Some(n.public_keys.unwrap_or_default()),
            home: n.home,
            permissions: n.permissions,
            enabled: n.enabled,
            expires_at: Some(n.expires_at),
            quota: n.quota,
            bandwidth: n.bandwidth,
            max_sessions: n.max_sessions,
            allowed_ips: Some(n.allowed_ips.unwrap_or_default()),
            protocols: n.protocols,
            description: Some(n.description.unwrap_or_default()),
            _created_at: None,
            _last_login_at: None,
            _usage: None,
        }
    }
}

impl UserPatch {
    /// Applies the present fields to `user`; returns the password change.
    fn apply(self, user: &mut User) -> PasswordChange {
        if let Some(v) = self.public_keys {
            user.public_keys = v;
        }
        if let Some(v) = self.home {
            user.home = v;
        }
        if let Some(v) = self.permissions {
            user.permissions = v;
        }
        if let Some(v) = self.enabled {
            user.enabled = v;
        }
        if let Some(v) = self.expires_at {
            user.expires_at = v;
        }
        if let Some(v) = self.quota {
            user.quota = v;
        }
        if let Some(v) = self.bandwidth {
            user.bandwidth = v;
        }
        if let Some(v) = self.max_sessions {
            user.max_sessions = v;
        }
        if let Some(v) = self.allowed_ips {
            user.allowed_ips = v;
        }
        if let Some(v) = self.protocols {
            user.protocols = v;
        }
        if let Some(v) = self.description {
            user.description = v;
        }
        match self.password {
            None => PasswordChange::Keep,
            Some(None) => PasswordChange::Remove,
            Some(Some(p)) => PasswordChange::Set(p),
        }
    }
}

/// Checks what `User::validate` does not: text the database must store.
fn check_user(user: &User) -> ApiResult<()> {
    check_text("description", &user.description)?;
    for key in &user.public_keys {
        check_text("public_keys", key)?;
    }
    user.validate()?;
    Ok(())
}

/// A name that fails the username rule cannot exist: 404 without a query.
fn known_name(username: &str) -> ApiResult<()> {
    dropgate_store::validate_username(username)
        .map_err(|_| ApiError::NotFound(format!("user {username:?}")))
}

/// A page of accounts.
#[derive(Debug, Serialize)]
struct UserList {
    items: Vec<UserView>,
    total: u64,
}

/// The user JSON of SPEC section 4: the stored account and its `usage`.
#[derive(Debug, Serialize)]
pub(crate) struct UserView {
    #[serde(flatten)]
    user: User,
    /// What the home holds now, as the quota counts it.
    usage: UsageView,
}

/// `usage` of the user JSON (documented as `schema::UsageDoc`).
#[derive(Debug, Serialize)]
pub(crate) struct UsageView {
    /// Bytes (each file once, however many hard links it has).
    bytes: u64,
    /// Files (every name of a regular file).
    files: u64,
}

/// The account with its current usage (zero if the home cannot be read).
async fn view(state: &AppState, user: User) -> UserView {
    let (bytes, files) = match state.gateway.usage(&user).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(user = %user.username, error = %e, "cannot measure a home");
            (0, 0)
        }
    };
    UserView {
        user,
        usage: UsageView { bytes, files },
    }
}

/// Paging of `GET /api/v1/users`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UserPage {
    /// Page size, 1–500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Accounts to skip (default 0).
    offset: Option<u64>,
}

/// List accounts, ordered by username.
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    params(UserPage),
    responses(
        (status = 200, description = "A page of accounts", body = UserListDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "Bad `limit` or `offset`", body = ErrorBody),
    )
)]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    QueryParams(page): QueryParams<UserPage>,
) -> ApiResult<Response> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    // The store takes a signed offset; larger ones are past the end anyway.
    let offset = page.offset.unwrap_or(0).min(i64::MAX as u64);
    let (users, total) = state.gateway.store().list_users(limit, offset).await?;
    let mut items = Vec::with_capacity(users.len());
    for user in users {
        items.push(view(&state, user).await);
    }
    Ok(Json(UserList { items, total }).into_response())
}

/// Create an account.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserDoc,
            headers(("Location" = String, description = "The new account's URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is invalid; the message names it", body = ErrorBody),
    )
)]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewUser>,
) -> ApiResult<Response> {
    let mut user = User::new(&new.username);
    let password = UserPatch::from(new).apply(&mut user);
    check_user(&user)?;
    let password = match password {
        PasswordChange::Set(p) => Some(p),
        PasswordChange::Keep | PasswordChange::Remove => None,
    };
    state
        .gateway
        .create_account(&user, password.as_deref())
        .await?;
    // Answer with what a GET returns (the store keeps times in milliseconds).
    let user = load(&state, &user.username).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/users/{}", user.username)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view(&state, user).await)).into_response())
}

/// Get one account.
#[utoipa::path(
    get,
    path = "/api/v1/users/{username}",
    tag = "users",
    params(("username" = String, Path, description = "The account's username", pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", example = "bob")),
    responses(
        (status = 200, description = "The account", body = UserDoc),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
    )
)]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    Path(username): Path<String>,
) -> ApiResult<Json<UserView>> {
    let user = load(&state, &username).await?;
    Ok(Json(view(&state, user).await))
}

async fn load(state: &AppState, username: &str) -> ApiResult<User> {
    known_name(username)?;
    state
        .gateway
        .store()
        .get_user(username)
        .await?
        .map(|r| r.user)
        .ok_or_else(|| ApiError::NotFound(format!("user {username:?}")))
}

/// Replace an account: missing fields take the defaults of a new account,
/// except the password, which is kept when absent.
#[utoipa::path(
    put,
    path = "/api/v1/users/{username}",
    tag = "users",
    params(("username" = String, Path, description = "The account's username", pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", example = "bob")),
    request_body = NewUser,
    responses(
        (status = 200, description = "The account as stored", body = UserDoc),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is invalid, or `username` differs from the path", body = ErrorBody),
    )
)]
pub(crate) async fn replace_user(
    State(state): State<AppState>,
    Path(username): Path<String>,
    JsonBody(new): JsonBody<NewUser>,
) -> ApiResult<Json<UserView>> {
    let old = load(&state, &username).await?;
    let mut user = User::new(&username);
    user.created_at = old.created_at;
    user.last_login_at = old.last_login_at;
    update(&state, old, user, UserPatch::from(new)).await
}

/// Change some fields of an account.
#[utoipa::path(
    patch,
    path = "/api/v1/users/{username}",
    tag = "users",
    params(("username" = String, Path, description = "The account's username", pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", example = "bob")),
    request_body = UserPatch,
    responses(
        (status = 200, description = "The account as stored", body = UserDoc),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "A field is invalid, or `username` differs from the path", body = ErrorBody),
    )
)]
pub(crate) async fn patch_user(
    State(state): State<AppState>,
    Path(username): Path<String>,
    JsonBody(patch): JsonBody<UserPatch>,
) -> ApiResult<Json<UserView>> {
    let old = load(&state, &username).await?;
    let user = old.clone();
    update(&state, old, user, patch).await
}

/// Applies `patch` on `base` and stores the result over `old`.
async fn update(
    state: &AppState,
    old: User,
    mut user: User,
    patch: UserPatch,
) -> ApiResult<Json<UserView>> {
    if patch.username.as_deref().is_some_and(|n| n != old.username) {
        return Err(ApiError::invalid(
            "username",
            "must equal the username in the path (accounts cannot be renamed)",
        ));
    }
    let password = patch.apply(&mut user);
    check_user(&user)?;
    let user = state.gateway.update_account(&old, &user, password).await?;
    Ok(Json(view(state, user).await))
}

/// Options of `DELETE /api/v1/users/{username}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteOptions {
    /// Also remove the account's home folder and everything in it (default false).
    delete_files: Option<bool>,
}

/// Delete an account and end its live sessions. Its files are kept unless
/// `delete_files=true`.
///
/// `delete_files` is refused (409) when another account's home is the same
/// folder, inside it or around it, and (403) when the home resolves outside
/// the storage root; nothing is deleted then.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{username}",
    tag = "users",
    params(("username" = String, Path, description = "The account's username", pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$", example = "bob"), DeleteOptions),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "The home resolves outside the storage root", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Another account shares the home folder", body = ErrorBody),
        (status = 422, description = "Bad `delete_files`", body = ErrorBody),
    )
)]
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    Path(username): Path<String>,
    QueryParams(options): QueryParams<DeleteOptions>,
) -> ApiResult<StatusCode> {
    known_name(&username)?;
    state
        .gateway
        .delete_account(&username, options.delete_files.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn put_sets_every_field_and_patch_only_some() {
        let mut user = User::new("acme");
        user.description = "old".into();
        user.enabled = false;
        let new: NewUser = serde_json::from_str(r#"{"username":"acme"}"#).unwrap();
        let mut replaced = user.clone();
        assert!(matches!(
            UserPatch::from(new).apply(&mut replaced),
            PasswordChange::Keep
        ));
        assert_eq!(replaced.description, "");
        let patch: UserPatch = serde_json::from_str(r#"{"enabled":true,"password":null}"#).unwrap();
        let mut patched = user.clone();
        assert!(matches!(patch.apply(&mut patched), PasswordChange::Remove));
        assert!(patched.enabled);
        assert_eq!(patched.description, "old");
    }
}
