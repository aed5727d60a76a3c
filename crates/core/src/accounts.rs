//! Account lifecycle: create, change and delete a partner account, with
//! everything that must follow each (ending live sessions whose rights
//! changed, recounting usage, removing the home through `vfs`). The admin API
//! and the CLI both call these, so neither reaches the store or the disk
//! around core.

use chrono::Utc;
use dropgate_store::{StoreError, User};
use dropgate_vfs::VfsError;

use crate::Gateway;

/// What an update does to the account's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordChange {
    /// Leave it as it is.
    Keep,
    /// Remove password login (keys only).
    Remove,
    /// Set this new password (hashed with argon2id here).
    Set(String),
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The store refused or failed (duplicate, not found, invalid field, down).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `delete_files`: another account lives in the same folder, inside it
    /// or around it; nothing was deleted.
    #[error("the home {home:?} overlaps the home of account {other:?}; delete its files by hand")]
    SharedHome {
        /// The home that was to be removed.
        home: String,
        /// The account that shares it.
        other: String,
    },
    /// `delete_files`: the home is a symlink or resolves outside the storage
    /// root; the account was deleted, its files were not.
    #[error(
        "the home {0:?} is a symbolic link or lies outside the storage root; its files are kept"
    )]
    HomeNotRemovable(String),
    /// Removing the home failed after the account was deleted.
    #[error("account deleted, but removing its home {home:?} failed: {source}")]
    HomeRemoval {
        /// The home.
        home: String,
        /// What went wrong.
        source: VfsError,
    },
}

/// Accounts listed per page while looking for shared homes.
const PAGE: u32 = 500;

impl Gateway {
    /// Creates an account (`password`: plain text, hashed here).
    pub async fn create_account(
        &self,
        user: &User,
        password: Option<&str>,
    ) -> Result<User, AccountError> {
        let hash = match password {
            Some(p) => Some(self.store.hasher().hash(p).await?),
            None => None,
        };
        self.store.create_user(user, hash.as_deref()).await?;
        tracing::info!(user = %user.username, "account created");
        self.record_account_change(&user.username, "created").await;
        self.reload(&user.username).await
    }

    /// Replaces the account `old` with `new` (same username) and applies the
    /// password change, in one store transaction. Sessions whose rights the
    /// change takes away (password, keys, enabled, expiry, allowed IPs,
    /// protocols, home, permissions) are ended; quota and home changes are
    /// counted afresh at the next login; bandwidth applies to new sessions.
    pub async fn update_account(
        &self,
        old: &User,
        new: &User,
        password: PasswordChange,
    ) -> Result<User, AccountError> {
        // Hashed before anything is written, so a bad password changes nothing.
        let hash = match &password {
            PasswordChange::Keep => None,
            PasswordChange::Remove => Some(None),
            PasswordChange::Set(p) => Some(Some(self.store.hasher().hash(p).await?)),
        };
        self.store
            .update_user_and_password(new, hash.as_ref().map(|h| h.as_deref()))
            .await?;
        if ends_sessions(old, new, password != PasswordChange::Keep) {
            let n = self.sessions.disconnect_user(&new.username);
            self.end_sessions_elsewhere(&new.username).await;
            if n > 0 {
                tracing::info!(user = %new.username, sessions = n, "account changed: live sessions ended");
            }
        }
        if old.quota != new.quota || old.home != new.home {
            self.quotas.forget(&new.username).await;
        }
        tracing::info!(user = %new.username, "account updated");
        let what = if password != PasswordChange::Keep && old == new {
            "password changed"
        } else {
            "updated"
        };
        self.record_account_change(&new.username, what).await;
        self.reload(&new.username).await
    }

    /// Deletes an account and ends its sessions; with `delete_files`, also
    /// removes its home (refused before anything is deleted when another
    /// account shares the folder). Returns whether a home was removed.
    pub async fn delete_account(
        &self,
        username: &str,
        delete_files: bool,
    ) -> Result<bool, AccountError> {
        let Some(record) = self.store.get_user(username).await? else {
            return Err(StoreError::NotFound(format!("user {username:?}")).into());
        };
        let home = record.user.home;
        if delete_files {
            self.ensure_home_not_shared(username, &home).await?;
        }
        if !self.store.delete_user(username).await? {
            return Err(StoreError::NotFound(format!("user {username:?}")).into());
        }
        let ended = self.sessions.disconnect_user(username);
        self.end_sessions_elsewhere(username).await;
        self.quotas.forget(username).await;
        tracing::info!(user = %username, sessions_ended = ended, delete_files, "account deleted");
        self.record_account_change(username, "deleted").await;
        if !delete_files {
            return Ok(false);
        }
        match self.config.storage.remove_home(&home).await {
            Ok(removed) => Ok(removed),
            Err(VfsError::PermissionDenied) => Err(AccountError::HomeNotRemovable(home)),
            Err(source) => Err(AccountError::HomeRemoval { home, source }),
        }
    }

    /// Sets a new password (or removes password login) and ends the
    /// account's live sessions.
    pub async fn set_account_password(
        &self,
        username: &str,
        password: PasswordChange,
    ) -> Result<User, AccountError> {
        let Some(record) = self.store.get_user(username).await? else {
            return Err(StoreError::NotFound(format!("user {username:?}")).into());
        };
        self.update_account(&record.user, &record.user, password)
            .await
    }

    /// The `account_changed` event (rules can act on it). The change is
    /// already stored, so a failure to record it is logged, not returned.
    async fn record_account_change(&self, username: &str, what: &str) {
        let event = dropgate_store::Event {
            id: 0,
            time: Utc::now(),
            kind: dropgate_store::EventKind::AccountChanged,
            username: username.to_owned(),
            protocol: "admin".to_owned(),
            remote_addr: String::new(),
            path: None,
            target_path: None,
            bytes: None,
            duration_ms: None,
            outcome: dropgate_store::Outcome::Ok,
            sha256: None,
            message: Some(what.to_owned()),
            node: self.config.node_name.clone(),
            session_id: None,
        };
        if let Err(e) = self.audit.record_durable(event).await {
            tracing::error!(error = %e, user = %username, what, "account change not recorded");
        }
    }

    async fn reload(&self, username: &str) -> Result<User, AccountError> {
        match self.store.get_user(username).await? {
            Some(r) => Ok(r.user),
            None => Err(StoreError::NotFound(format!("user {username:?}")).into()),
        }
    }

    async fn ensure_home_not_shared(&self, username: &str, home: &str) -> Result<(), AccountError> {
        let mut offset = 0u64;
        loop {
            let (page, _) = self.store.list_users(PAGE, offset).await?;
            if let Some(other) = page
                .iter()
                .find(|o| o.username != username && homes_overlap(home, &o.home))
            {
                return Err(AccountError::SharedHome {
                    home: home.to_owned(),
                    other: other.username.clone(),
                });
            }
            if page.len() < PAGE as usize {
                return Ok(());
            }
            offset += page.len() as u64;
        }
    }
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
        // A session keeps the quota it logged in with: it must not go on
        // counting against the old limit beside new sessions.
        || old.quota != new.quota
}

/// Whether one home is the other or lies inside it.
fn homes_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_matches('/'), b.trim_matches('/'));
    let inside =
        |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    inside(a, b) || inside(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_homes() {
        assert!(homes_overlap("a", "a"));
        assert!(homes_overlap("a/b", "a"));
        assert!(homes_overlap("a", "a/b"));
        assert!(homes_overlap("/a/", "a"));
        assert!(!homes_overlap("a", "ab"));
        assert!(!homes_overlap("a/b", "a/c"));
    }

    #[test]
    fn what_ends_sessions() {
        let old = User::new("x");
        let mut new = old.clone();
        new.description = "changed".into();
        new.bandwidth.upload_kib_s = 5;
        assert!(!ends_sessions(&old, &new, false));
        new.quota.max_bytes = 5;
        assert!(ends_sessions(&old, &new, false));
        assert!(ends_sessions(&old, &new, true));
        new.enabled = false;
        assert!(ends_sessions(&old, &new, false));
    }
}
