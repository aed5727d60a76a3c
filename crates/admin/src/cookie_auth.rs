//! The console's credential: a login token in an `HttpOnly` cookie, the
//! CSRF token every write made with it must echo in `X-CSRF-Token`, and the
//! memory of signed-out tokens. Primitives only: the check itself is
//! [`crate::auth::require_admin`], the routes are [`crate::console_session`].
//!
//! The CSRF token is derived from the session token (SHA-256 under a label
//! of its own), so it needs no storage, survives restarts like the session,
//! and cannot be computed by anyone who cannot read the cookie. Another
//! origin can neither read it (no CORS) nor send the cookie along
//! (`SameSite=Strict`): either alone stops cross-site writes.
//!
//! Sign-out ends the token at once. The store has no call to delete one
//! token yet, so this process remembers signed-out tokens until they expire
//! (a restart forgets them; they still expire within the token lifetime).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

/// The cookie that carries the console's login token.
pub(crate) const COOKIE_NAME: &str = "dropgate_session";
/// The header a cookie-authenticated write must carry.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// Most signed-out tokens remembered at once (each entry is 32 bytes and an
/// instant; only authenticated admins can add one).
const MAX_SIGNED_OUT: usize = 100_000;

/// The session token from the request's `Cookie` headers, if any.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The CSRF token that goes with a session token.
pub(crate) fn csrf_token(session: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"dropgate console csrf v1\0");
    hash.update(session.as_bytes());
    hex::encode(hash.finalize())
}

/// Whether the request carries the CSRF token of `session` (compared in
/// constant time).
pub(crate) fn csrf_matches(headers: &HeaderMap, session: &str) -> bool {
    let Some(sent) = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) else {
        return false;
    };
    let expected = csrf_token(session);
    let expected = expected.as_bytes();
    sent.len() == expected.len()
        && sent
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Login tokens ended by sign-out before their expiry, by digest.
#[derive(Default)]
pub(crate) struct SignedOut {
    /// Token digest -> when the token would have expired anyway.
    tokens: Mutex<HashMap<[u8; 32], Instant>>,
}

impl SignedOut {
    fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends `token`, which would otherwise work for up to `lifetime`.
    pub(crate) fn insert(&self, token: &str, lifetime: Duration) {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        if map.len() >= MAX_SIGNED_OUT {
            // Cannot happen with real use; keep the newest rather than grow.
            let oldest = map.iter().min_by_key(|(_, until)| **until).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(Self::digest(token), now + lifetime);
    }

    /// Whether `token` was signed out.
    pub(crate) fn contains(&self, token: &str) -> bool {
        let map = self.lock();
        !map.is_empty() && map.contains_key(&Self::digest(token))
    }
}

/// The `Set-Cookie` value for `token` valid for `lifetime` (or, for
/// `None`, one that removes the cookie).
pub(crate) fn set_cookie(
    headers: &HeaderMap,
    token: Option<&str>,
    lifetime: Duration,
) -> Option<HeaderValue> {
    // The admin listener speaks plain HTTP; behind a TLS-terminating proxy
    // the cookie must not travel in the clear later, so it is marked Secure.
    let over_tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let secure = if over_tls { "; Secure" } else { "" };
    let value = match token {
        Some(t) => format!(
            "{COOKIE_NAME}={t}; Path=/api/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            lifetime.as_secs()
        ),
        None => format!("{COOKIE_NAME}=; Path=/api/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; dropgate_session=dgt_x; b=2"),
        );
        assert_eq!(from_headers(&h).as_deref(), Some("dgt_x"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("dropgate_session="),
        );
        assert_eq!(from_headers(&h), None);
    }

    #[test]
    fn csrf_token_is_bound_to_its_session() {
        let mut h = HeaderMap::new();
        assert!(!csrf_matches(&h, "dgt_a"));
        h.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&csrf_token("dgt_a")).unwrap(),
        );
        assert!(csrf_matches(&h, "dgt_a"));
        assert!(!csrf_matches(&h, "dgt_b"));
        h.insert(CSRF_HEADER, HeaderValue::from_static("short"));
        assert!(!csrf_matches(&h, "dgt_a"));
    }

    #[test]
    fn cookie_flags() {
        let mut h = HeaderMap::new();
        let c = set_cookie(&h, Some("dgt_a"), Duration::from_secs(60)).unwrap();
        let c = c.to_str().unwrap();
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "{c}");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let c = set_cookie(&h, None, Duration::ZERO).unwrap();
        assert!(c.to_str().unwrap().contains("; Secure"));
        assert!(c.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn signed_out_tokens_are_remembered() {
        let s = SignedOut::default();
        assert!(!s.contains("dgt_a"));
        s.insert("dgt_a", Duration::from_secs(60));
        assert!(s.contains("dgt_a"));
        assert!(!s.contains("dgt_b"));
    }
}
