//! argon2id password hashing with a bounded number of verifications in flight.
//!
//! Each verification costs about 19 MiB and tens of milliseconds of CPU: a
//! semaphore caps how many run at once so a login burst cannot exhaust memory,
//! and unknown users are checked against a dummy hash so the reply time does
//! not reveal which accounts exist.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::StoreError;

/// Longest password accepted, in bytes (argon2 would take more; nobody needs it).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane.
const POLICY_M_COST: u32 = 19 * 1024;
const POLICY_T_COST: u32 = 2;
const POLICY_P_COST: u32 = 1;

/// The result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Right password, hash meets policy.
    Ok,
    /// Right password, but the stored hash is below policy: store a new one.
    OkNeedsRehash,
    /// Wrong password, unknown user, or unusable hash.
    Wrong,
}

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    params: Params,
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    /// `max_concurrent` bounds simultaneous hash computations.
    pub fn new(max_concurrent: usize) -> Result<Self, StoreError> {
        let params = Params::new(POLICY_M_COST, POLICY_T_COST, POLICY_P_COST, None)
            .map_err(|e| StoreError::Hash(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = argon
            .hash_password(b"dropgate dummy password for unknown users")
            .map_err(|e| StoreError::Hash(e.to_string()))?
            .to_string();
        Ok(PasswordHasher {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            params,
            dummy_hash: dummy.into(),
        })
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, StoreError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(StoreError::PasswordTooLong);
        }
        if password.is_empty() {
            return Err(StoreError::Invalid(crate::FieldError::new(
                "password",
                "must not be empty",
            )));
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Hash("hasher closed".into()))?;
        let params = self.params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| StoreError::Hash(e.to_string()))
        })
        .await
        .map_err(|e| StoreError::Hash(e.to_string()))?
    }

    /// Checks `password` against `stored` (or a dummy hash when `None`, so an
    /// unknown user costs the same time as a known one).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Verified {
        let known = stored.is_some();
        let hash = stored
            .map(str::to_owned)
            .unwrap_or_else(|| self.dummy_hash.to_string());
        // An over-long password still costs one verification, against the dummy.
        let (password, known) = if password.len() > MAX_PASSWORD_LEN {
            (String::new(), false)
        } else {
            (password.to_owned(), known)
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Verified::Wrong;
        };
        let policy = self.params.clone();
        let result = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Verified::Wrong;
            };
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            if !ok || !known {
                return Verified::Wrong;
            }
            let meets_policy = parsed.algorithm.as_str() == "argon2id"
                && Params::try_from(&parsed)
                    .map(|p| {
                        p.m_cost() >= policy.m_cost()
                            && p.t_cost() >= policy.t_cost()
                            && p.p_cost() >= policy.p_cost()
                    })
                    .unwrap_or(false);
            if meets_policy {
                Verified::Ok
            } else {
                Verified::OkNeedsRehash
            }
        })
        .await;
        result.unwrap_or(Verified::Wrong)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn hash_verify_and_policy() {
        let h = PasswordHasher::new(2).unwrap();
        let phc = h.hash("s3cret").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(h.verify("s3cret", Some(&phc)).await, Verified::Ok);
        assert_eq!(h.verify("wrong", Some(&phc)).await, Verified::Wrong);
        assert_eq!(h.verify("s3cret", None).await, Verified::Wrong);
        assert!(matches!(
            h.hash(&"x".repeat(1025)).await,
            Err(StoreError::PasswordTooLong)
        ));
        assert_eq!(
            h.verify(&"x".repeat(1025), Some(&phc)).await,
            Verified::Wrong
        );

        // A weaker (but valid) hash verifies and asks to be re-hashed.
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"old")
        .unwrap()
        .to_string();
        assert_eq!(h.verify("old", Some(&weak)).await, Verified::OkNeedsRehash);
    }
}
