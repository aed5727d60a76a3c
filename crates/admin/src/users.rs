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

use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
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

/// What to do with the stored password.
enum PasswordChange {
    Keep,
    Remove,
    Set(String),
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

/// Hashes a new password (422 naming `password` if it is empty or too long).
async fn hash_password(
    state: &AppState,
    change: &PasswordChange,
) -> ApiResult<Option<Option<String>>> {
    Ok(match change {
        PasswordChange::Keep => None,
        PasswordChange::Remove => Some(None),
        PasswordChange::Set(p) => Some(Some(state.gateway.store().hasher().hash(p).await?)),
    })
}

/// A name that fails the username rule cannot exist: 404 without a query.
fn known_name(username: &str) -> ApiResult<()> {
    dropgate_store::validate_username(username)
        .map_err(|_| ApiError::NotFound(format!("user {username:?}")))
}

/// Whether the change from `old` to `new` must end live sessions.
fn ends_sessions(old: &User, new: &User, password_changed: bool) -> bool {
    password_changed
        || !new.enabled
        || new.expires_at.is_some_and(|t| t <= Utc::now())
        || old.public_keys != new.public_keys
        || old.allowed_ips != new.allowed_ips
        || old.protocols != new.protocols
        || old.home != new.home
        || old.permissions != new.permissions
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

/// `usage` of the user JSON.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Usage)]
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
    let hash = hash_password(&state, &password).await?.flatten();
    state
        .gateway
        .store()
        .create_user(&user, hash.as_deref())
        .await?;
    tracing::info!(user = %user.username, "account created");
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
    // Hash before writing anything, so a bad password changes nothing.
    let hash = hash_password(state, &password).await?;
    let store = state.gateway.store();
    store.update_user(&user).await?;
    if let Some(hash) = &hash {
        store
            .set_user_password_hash(&user.username, hash.as_deref())
            .await?;
    }
    if ends_sessions(&old, &user, hash.is_some()) {
        let n = state.gateway.sessions().disconnect_user(&user.username);
        if n > 0 {
            tracing::info!(user = %user.username, sessions = n, "account changed: live sessions ended");
        }
    }
    if old.quota != user.quota || old.home != user.home {
        // Measured again at the next login against the new limit or home.
        state.gateway.quotas().forget(&user.username);
    }
    tracing::info!(user = %user.username, "account updated");
    let user = load(state, &user.username).await?;
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
    let user = load(&state, &username).await?;
    let store = state.gateway.store();
    let home_dir = if options.delete_files.unwrap_or(false) {
        ensure_home_not_shared(&state, &user).await?;
        resolve_home(&state.storage_root, &user.home)?
    } else {
        None
    };
    if !store.delete_user(&username).await? {
        return Err(ApiError::NotFound(format!("user {username:?}")));
    }
    let ended = state.gateway.sessions().disconnect_user(&username);
    state.gateway.quotas().forget(&username);
    tracing::info!(user = %username, sessions_ended = ended, delete_files = home_dir.is_some(), "account deleted");
    if let Some(dir) = home_dir {
        let shown = user.home.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| ApiError::Internal(format!("removing home {shown:?}: {e}")))?
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(ApiError::Internal(format!(
                    "account deleted, but removing its home {shown:?} failed: {e}"
                ))),
            })?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses to delete a home another account also lives in.
async fn ensure_home_not_shared(state: &AppState, user: &User) -> ApiResult<()> {
    let store = state.gateway.store();
    let mut offset = 0u64;
    loop {
        let (page, _) = store.list_users(MAX_PAGE, offset).await?;
        for other in &page {
            if other.username != user.username && homes_overlap(&user.home, &other.home) {
                return Err(ApiError::Conflict(format!(
                    "the home {:?} overlaps the home of account {:?}; delete its files by hand",
                    user.home, other.username
                )));
            }
        }
        if page.len() < MAX_PAGE as usize {
            return Ok(());
        }
        offset += page.len() as u64;
    }
}

/// Whether one home is the other or lies inside it.
fn homes_overlap(a: &str, b: &str) -> bool {
    let inside =
        |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    inside(a, b) || inside(b, a)
}

/// The home's real path, if it exists, after checking it stays strictly
/// below the storage root (a symlinked home could point anywhere).
fn resolve_home(root: &FsPath, home: &str) -> ApiResult<Option<PathBuf>> {
    dropgate_store::validate_home(home)?;
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::Internal(format!("storage root: {e}"))),
    };
    let path = root.join(home);
    // The home itself must not be a symlink: removing it would remove the link's target tree.
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(ApiError::Forbidden(format!(
                "the home {home:?} is a symbolic link; its files are not deleted"
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::Internal(format!("home {home:?}: {e}"))),
    }
    let real = path
        .canonicalize()
        .map_err(|e| ApiError::Internal(format!("home {home:?}: {e}")))?;
    if real == root || !real.starts_with(&root) {
        return Err(ApiError::Forbidden(format!(
            "the home {home:?} resolves outside the storage root; its files are not deleted"
        )));
    }
    Ok(Some(real))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overlapping_homes() {
        assert!(homes_overlap("a", "a"));
        assert!(homes_overlap("a/b", "a"));
        assert!(homes_overlap("a", "a/b"));
        assert!(!homes_overlap("a", "ab"));
        assert!(!homes_overlap("a/b", "a/c"));
    }

    #[test]
    fn homes_must_stay_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir_all(root.join("acme")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        assert_eq!(
            resolve_home(&root, "acme").unwrap(),
            Some(root.canonicalize().unwrap().join("acme"))
        );
        assert_eq!(resolve_home(&root, "missing").unwrap(), None);
        assert!(matches!(
            resolve_home(&root, "../outside"),
            Err(ApiError::Invalid { .. })
        ));
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        assert!(matches!(
            resolve_home(&root, "link"),
            Err(ApiError::Forbidden(_))
        ));
        std::fs::create_dir_all(root.join("acme/inner")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("acme/out")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/x")).unwrap();
        assert!(matches!(
            resolve_home(&root, "acme/out/x"),
            Err(ApiError::Forbidden(_))
        ));
    }

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
        assert!(ends_sessions(&user, &patched, true));
        assert!(!ends_sessions(&patched, &patched, false));
    }
}
