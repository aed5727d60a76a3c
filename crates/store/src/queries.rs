//! Every query, written once for both dialects with bound parameters only.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{
    Admin, ApiKey, Bandwidth, Event, EventKind, EventQuery, KeyedEvent, Outcome, Quota, Store,
    StoreError, StoreResult, User, UserRecord, from_ms, on_pool, to_i64, to_ms, to_u64,
};

#[derive(sqlx::FromRow)]
struct UserRow {
    username: String,
    password_hash: Option<String>,
    home: String,
    enabled: bool,
    expires_at: Option<i64>,
    quota_max_bytes: i64,
    quota_max_files: i64,
    upload_kib_s: i64,
    download_kib_s: i64,
    max_sessions: i64,
    allowed_ips: String,
    protocols: String,
    public_keys: String,
    permissions: String,
    description: String,
    created_at: i64,
    last_login_at: Option<i64>,
}

fn json<T: DeserializeOwned>(s: &str, what: &'static str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt(what))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

impl UserRow {
    fn into_record(self) -> StoreResult<UserRecord> {
        Ok(UserRecord {
            user: User {
                username: self.username,
                public_keys: json(&self.public_keys, "users.public_keys")?,
                home: self.home,
                permissions: json(&self.permissions, "users.permissions")?,
                enabled: self.enabled,
                expires_at: self.expires_at.map(from_ms),
                quota: Quota {
                    max_bytes: to_u64(self.quota_max_bytes),
                    max_files: to_u64(self.quota_max_files),
                },
                bandwidth: Bandwidth {
                    upload_kib_s: to_u64(self.upload_kib_s),
                    download_kib_s: to_u64(self.download_kib_s),
                },
                max_sessions: to_u64(self.max_sessions),
                allowed_ips: json(&self.allowed_ips, "users.allowed_ips")?,
                protocols: json(&self.protocols, "users.protocols")?,
                description: self.description,
                created_at: from_ms(self.created_at),
                last_login_at: self.last_login_at.map(from_ms),
            },
            password_hash: self.password_hash,
        })
    }
}

// Spelled out in full: `query()` takes `&'static str` and SQL is never built at run time.
const USER_BY_NAME: &str = "SELECT username, password_hash, home, enabled, expires_at, quota_max_bytes, \
    quota_max_files, upload_kib_s, download_kib_s, max_sessions, allowed_ips, protocols, public_keys, permissions, description, \
    created_at, last_login_at FROM users WHERE username = $1";
const USER_PAGE: &str = "SELECT username, password_hash, home, enabled, expires_at, quota_max_bytes, \
    quota_max_files, upload_kib_s, download_kib_s, max_sessions, allowed_ips, protocols, public_keys, permissions, description, \
    created_at, last_login_at FROM users ORDER BY username LIMIT $1 OFFSET $2";

/// Hashes an API key or token for storage: they are long random strings, so
/// a fast hash is enough (no dictionary to resist) and lookups stay indexable.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Store {
    // ---------------------------------------------------------------- users

    /// One account with its password hash.
    pub async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = on_pool!(self, p => {
            sqlx::query_as(USER_BY_NAME).bind(username).fetch_optional(p).await?
        });
        row.map(UserRow::into_record).transpose()
    }

    /// A page of accounts ordered by name, and the total count.
    pub async fn list_users(&self, limit: u32, offset: u64) -> StoreResult<(Vec<User>, u64)> {
        let (rows, total): (Vec<UserRow>, i64) = on_pool!(self, p => {
            let rows = sqlx::query_as(USER_PAGE).bind(i64::from(limit)).bind(to_i64(offset)).fetch_all(p).await?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(p).await?;
            (rows, total)
        });
        let users = rows
            .into_iter()
            .map(|r| r.into_record().map(|r| r.user))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((users, to_u64(total)))
    }

    /// Creates an account. Fails with `Duplicate` if the name is taken.
    pub async fn create_user(&self, user: &User, password_hash: Option<&str>) -> StoreResult<()> {
        user.validate()?;
        let now = to_ms(Utc::now());
        let result = on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO users (username, password_hash, home, enabled, expires_at, quota_max_bytes, \
                 quota_max_files, upload_kib_s, download_kib_s, allowed_ips, protocols, public_keys, permissions, \
                 description, created_at, updated_at, last_login_at, max_sessions) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            )
            .bind(&user.username)
            .bind(password_hash)
            .bind(&user.home)
            .bind(user.enabled)
            .bind(user.expires_at.map(to_ms))
            .bind(to_i64(user.quota.max_bytes))
            .bind(to_i64(user.quota.max_files))
            .bind(to_i64(user.bandwidth.upload_kib_s))
            .bind(to_i64(user.bandwidth.download_kib_s))
            .bind(to_json(&user.allowed_ips))
            .bind(to_json(&user.protocols))
            .bind(to_json(&user.public_keys))
            .bind(to_json(&user.permissions))
            .bind(&user.description)
            .bind(to_ms(user.created_at))
            .bind(now)
            .bind(user.last_login_at.map(to_ms))
            .bind(to_i64(user.max_sessions))
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) => match StoreError::from(e) {
                StoreError::Duplicate(_) => {
                    Err(StoreError::Duplicate(format!("user {:?}", user.username)))
                }
                other => Err(other),
            },
        }
    }

    /// Replaces every editable field of an account (not the password, not
    /// `created_at`/`last_login_at`). Fails with `NotFound`.
    pub async fn update_user(&self, user: &User) -> StoreResult<()> {
        self.update_user_and_password(user, None).await
    }

    /// Replaces every editable field of an account and, with
    /// `Some(hash)`, its password hash (`Some(None)` removes password login),
    /// in one transaction. Fails with `NotFound`.
    pub async fn update_user_and_password(
        &self,
        user: &User,
        password_hash: Option<Option<&str>>,
    ) -> StoreResult<()> {
        user.validate()?;
        let now = to_ms(Utc::now());
        let done = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE users SET home = $2, enabled = $3, expires_at = $4, quota_max_bytes = $5, \
                 quota_max_files = $6, upload_kib_s = $7, download_kib_s = $8, allowed_ips = $9, protocols = $10, \
                 public_keys = $11, permissions = $12, description = $13, updated_at = $14, max_sessions = $15 \
                 WHERE username = $1",
            )
            .bind(&user.username)
            .bind(&user.home)
            .bind(user.enabled)
            .bind(user.expires_at.map(to_ms))
            .bind(to_i64(user.quota.max_bytes))
            .bind(to_i64(user.quota.max_files))
            .bind(to_i64(user.bandwidth.upload_kib_s))
            .bind(to_i64(user.bandwidth.download_kib_s))
            .bind(to_json(&user.allowed_ips))
            .bind(to_json(&user.protocols))
            .bind(to_json(&user.public_keys))
            .bind(to_json(&user.permissions))
            .bind(&user.description)
            .bind(now)
            .bind(to_i64(user.max_sessions))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 && let Some(hash) = password_hash {
                sqlx::query("UPDATE users SET password_hash = $2 WHERE username = $1")
                    .bind(&user.username)
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            n
        });
        if done == 0 {
            return Err(StoreError::NotFound(format!("user {:?}", user.username)));
        }
        Ok(())
    }

    /// Stores a new password hash (`None` removes password login).
    pub async fn set_user_password_hash(
        &self,
        username: &str,
        hash: Option<&str>,
    ) -> StoreResult<()> {
        let done = on_pool!(self, p => {
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE username = $1")
                .bind(username)
                .bind(hash)
                .bind(to_ms(Utc::now()))
                .execute(p)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(StoreError::NotFound(format!("user {username:?}")));
        }
        Ok(())
    }

    /// Records a successful login.
    pub async fn touch_user_login(&self, username: &str, at: DateTime<Utc>) -> StoreResult<()> {
        on_pool!(self, p => {
            sqlx::query("UPDATE users SET last_login_at = $2 WHERE username = $1")
                .bind(username)
                .bind(to_ms(at))
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Deletes an account; `false` if there was none.
    pub async fn delete_user(&self, username: &str) -> StoreResult<bool> {
        let n = on_pool!(self, p => {
            sqlx::query("DELETE FROM users WHERE username = $1").bind(username).execute(p).await?.rows_affected()
        });
        Ok(n > 0)
    }

    // --------------------------------------------------------------- admins

    /// Creates an admin. Fails with `Duplicate`.
    pub async fn create_admin(&self, username: &str, password_hash: &str) -> StoreResult<()> {
        crate::validate_username(username)?;
        let r = on_pool!(self, p => {
            sqlx::query("INSERT INTO admins (username, password_hash, created_at) VALUES ($1, $2, $3)")
                .bind(username)
                .bind(password_hash)
                .bind(to_ms(Utc::now()))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        });
        match r {
            Ok(_) => Ok(()),
            Err(e) => match StoreError::from(e) {
                StoreError::Duplicate(_) => {
                    Err(StoreError::Duplicate(format!("admin {username:?}")))
                }
                other => Err(other),
            },
        }
    }

    /// One admin by name.
    pub async fn get_admin(&self, username: &str) -> StoreResult<Option<Admin>> {
        let row: Option<(i64, String, String, i64)> = on_pool!(self, p => {
            sqlx::query_as("SELECT id, username, password_hash, created_at FROM admins WHERE username = $1")
                .bind(username)
                .fetch_optional(p)
                .await?
        });
        Ok(row.map(|(id, username, password_hash, created_at)| Admin {
            id,
            username,
            password_hash,
            created_at: from_ms(created_at),
        }))
    }

    /// How many admins exist (the first start creates one when there is none).
    pub async fn count_admins(&self) -> StoreResult<u64> {
        let n: i64 = on_pool!(self, p => sqlx::query_scalar("SELECT COUNT(*) FROM admins").fetch_one(p).await?);
        Ok(to_u64(n))
    }

    /// Stores a new admin password hash.
    pub async fn set_admin_password_hash(&self, username: &str, hash: &str) -> StoreResult<()> {
        let n = on_pool!(self, p => {
            sqlx::query("UPDATE admins SET password_hash = $2 WHERE username = $1")
                .bind(username)
                .bind(hash)
                .execute(p)
                .await?
                .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound(format!("admin {username:?}")));
        }
        Ok(())
    }

    // ------------------------------------------------------------- api keys

    /// Stores an API key (only its digest) for `admin_id`.
    pub async fn create_api_key(
        &self,
        id: &str,
        admin_id: i64,
        key: &str,
        description: &str,
    ) -> StoreResult<()> {
        on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO api_keys (id, admin_id, key_hash, description, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(admin_id)
            .bind(secret_digest(key))
            .bind(description)
            .bind(to_ms(Utc::now()))
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Every API key (descriptions only).
    pub async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let rows: Vec<(String, String, String, i64, Option<i64>)> = on_pool!(self, p => {
            sqlx::query_as(
                "SELECT k.id, a.username, k.description, k.created_at, k.last_used_at \
                 FROM api_keys k JOIN admins a ON a.id = k.admin_id ORDER BY k.created_at",
            )
            .fetch_all(p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(id, admin, description, created_at, last_used_at)| ApiKey {
                    id,
                    admin,
                    description,
                    created_at: from_ms(created_at),
                    last_used_at: last_used_at.map(from_ms),
                },
            )
            .collect())
    }

    /// Deletes an API key; `false` if there was none.
    pub async fn delete_api_key(&self, id: &str) -> StoreResult<bool> {
        let n = on_pool!(self, p => {
            sqlx::query("DELETE FROM api_keys WHERE id = $1").bind(id).execute(p).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// The admin an API key acts as, if the key is valid.
    pub async fn admin_for_api_key(&self, key: &str) -> StoreResult<Option<String>> {
        let digest = secret_digest(key);
        let row: Option<(String, String)> = on_pool!(self, p => {
            sqlx::query_as(
                "SELECT k.id, a.username FROM api_keys k JOIN admins a ON a.id = k.admin_id WHERE k.key_hash = $1",
            )
            .bind(&digest)
            .fetch_optional(p)
            .await?
        });
        if let Some((id, _)) = &row {
            on_pool!(self, p => {
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(to_ms(Utc::now()))
                    .execute(p)
                    .await?
                    .rows_affected()
            });
        }
        Ok(row.map(|(_, admin)| admin))
    }

    // ---------------------------------------------------------- admin tokens

    /// Stores a bearer token (its digest) valid until `expires_at`.
    pub async fn create_admin_token(
        &self,
        admin_id: i64,
        token: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_pool!(self, p => {
            sqlx::query("INSERT INTO admin_tokens (token_hash, admin_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(secret_digest(token))
                .bind(admin_id)
                .bind(to_ms(Utc::now()))
                .bind(to_ms(expires_at))
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// The admin a bearer token belongs to, if it is valid and unexpired.
    pub async fn admin_for_token(&self, token: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = on_pool!(self, p => {
            sqlx::query_as(
                "SELECT a.username FROM admin_tokens t JOIN admins a ON a.id = t.admin_id \
                 WHERE t.token_hash = $1 AND t.expires_at > $2",
            )
            .bind(secret_digest(token))
            .bind(to_ms(Utc::now()))
            .fetch_optional(p)
            .await?
        });
        Ok(row.map(|(u,)| u))
    }

    /// Ends one bearer token at once (sign-out); `false` if it was unknown.
    pub async fn delete_admin_token(&self, token: &str) -> StoreResult<bool> {
        let n = on_pool!(self, p => {
            sqlx::query("DELETE FROM admin_tokens WHERE token_hash = $1")
                .bind(secret_digest(token))
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Removes expired tokens.
    pub async fn purge_expired_tokens(&self) -> StoreResult<u64> {
        let n = on_pool!(self, p => {
            sqlx::query("DELETE FROM admin_tokens WHERE expires_at <= $1")
                .bind(to_ms(Utc::now()))
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    // --------------------------------------------------------------- events

    /// Appends audit events in one transaction, each under a fresh key.
    pub async fn insert_events(&self, events: &[Event]) -> StoreResult<()> {
        let keyed: Vec<KeyedEvent> = events.iter().cloned().map(KeyedEvent::new).collect();
        self.insert_events_with_deliveries(&keyed, &[]).await
    }

    /// Reads the audit log, newest first.
    pub async fn query_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>> {
        type Row = (
            i64,
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
        );
        const Q: &str = "SELECT id, ts, kind, username, protocol, remote_addr, path, target_path, bytes, \
            duration_ms, outcome, sha256, message, node, session_id FROM events \
            WHERE ($1 IS NULL OR username = $1) AND ($2 IS NULL OR kind = $2) \
            AND ($3 IS NULL OR ts >= $3) AND ($4 IS NULL OR ts < $4) AND ($5 IS NULL OR id < $5) \
            ORDER BY id DESC LIMIT $6";
        let limit = i64::from(q.limit.clamp(1, 1000));
        let rows: Vec<Row> = on_pool!(self, p => {
            sqlx::query_as(Q)
                .bind(q.username.as_deref())
                .bind(q.kind.map(EventKind::as_str))
                .bind(q.since.map(to_ms))
                .bind(q.until.map(to_ms))
                .bind(q.before_id)
                .bind(limit)
                .fetch_all(p)
                .await?
        });
        rows.into_iter()
            .map(|r| {
                Ok(Event {
                    id: r.0,
                    time: from_ms(r.1),
                    kind: EventKind::parse(&r.2).ok_or(StoreError::Corrupt("events.kind"))?,
                    username: r.3,
                    protocol: r.4,
                    remote_addr: r.5,
                    path: r.6,
                    target_path: r.7,
                    bytes: r.8.map(to_u64),
                    duration_ms: r.9.map(to_u64),
                    outcome: match r.10.as_str() {
                        "ok" => Outcome::Ok,
                        "denied" => Outcome::Denied,
                        _ => Outcome::Failed,
                    },
                    sha256: r.11,
                    message: r.12,
                    node: r.13,
                    session_id: r.14,
                })
            })
            .collect()
    }
}
