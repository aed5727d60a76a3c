//! The console's credential: a login token in an `HttpOnly` cookie, the
//! CSRF token every write made with it must echo in `X-CSRF-Token`.
//! Primitives only: the check itself is
//! [`crate::auth::require_admin`], the routes are [`crate::console_session`].
//!
//! The CSRF token is derived from the session token (SHA-256 under a label
//! of its own), so it needs no storage, survives restarts like the session,
//! and cannot be computed by anyone who cannot read the cookie. Another
//! origin can neither read it (no CORS) nor send the cookie along
//! (`SameSite=Strict`): either alone stops cross-site writes.
//!
//! Sign-out deletes the token from the store, so it ends at once and for
//! good (a restart does not bring it back).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

/// The cookie that carries the console's login token.
pub(crate) const COOKIE_NAME: &str = "dropgate_session";
/// The header a cookie-authenticated write must carry.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

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
}
