//! The console's side of the admin listener over real HTTP: its embedded
//! files and their headers, the cookie sign-in, the CSRF check on writes made
//! with the cookie, sign-out, and that bearer credentials are unaffected.
//! (The browser itself is driven in `crates/dropgate/tests/console.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, ADMIN_PASSWORD, Api, Auth, Method, StatusCode};
use serde_json::json;

/// Signs in through `/api/v1/auth/session`: (cookie value, CSRF token).
async fn sign_in(api: &Api) -> (String, String) {
    let r = api
        .send(
            Method::POST,
            "/api/v1/auth/session",
            Some(json!({"username": ADMIN, "password": ADMIN_PASSWORD})),
            Auth::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cookie = r.header("set-cookie").unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/api/", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("dropgate_session=")
        .unwrap()
        .to_owned();
    let body = r.json();
    assert!(!r.text.contains(&value), "the token is not in the body");
    assert_eq!(body["username"], ADMIN);
    assert!(body["expires_at"].is_string());
    (value, body["csrf_token"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_served_with_a_strict_policy() {
    let api = Api::start().await;
    let page = api.send(Method::GET, "/", None, Auth::None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    // No inline script or style in the page itself.
    assert!(!page.text.contains("<script>"), "inline script");
    assert!(!page.text.contains("style="), "inline style");
    assert!(!page.text.contains("<style"), "inline style sheet");

    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let r = api
            .send(Method::GET, &format!("/assets/{file}"), None, Auth::None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{file}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{file}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    for missing in ["/assets/nope.js", "/assets/..%2Fserver.rs", "/assets/"] {
        let r = api.send(Method::GET, missing, None, Auth::None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_need_the_csrf_token_for_writes() {
    let api = Api::start().await;
    let (session, csrf) = sign_in(&api).await;

    // Reads work with the cookie alone, and hand the CSRF token back.
    let r = api
        .send(
            Method::GET,
            "/api/v1/auth/session",
            None,
            Auth::Cookie {
                session: &session,
                csrf: None,
            },
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["csrf_token"], csrf.as_str());
    let r = api
        .send(
            Method::GET,
            "/api/v1/users",
            None,
            Auth::Cookie {
                session: &session,
                csrf: None,
            },
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Writes without it, or with another session's, are refused.
    let (_, other_csrf) = sign_in(&api).await;
    for bad in [None, Some("0"), Some(other_csrf.as_str())] {
        for (method, path, body) in [
            (
                Method::POST,
                "/api/v1/users",
                Some(json!({"username": "csrf"})),
            ),
            (Method::DELETE, "/api/v1/api-keys/00", None),
            (Method::PATCH, "/api/v1/users/x", Some(json!({}))),
            (Method::DELETE, "/api/v1/auth/session", None),
        ] {
            let r = api
                .send(
                    method.clone(),
                    path,
                    body,
                    Auth::Cookie {
                        session: &session,
                        csrf: bad,
                    },
                )
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path} {bad:?}");
            assert_eq!(r.error().0, "forbidden");
        }
    }
    assert_eq!(
        api.get("/api/v1/users/csrf").await.status,
        StatusCode::NOT_FOUND,
        "nothing was created"
    );

    // With it, the write goes through.
    let r = api
        .send(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "csrf"})),
            Auth::Cookie {
                session: &session,
                csrf: Some(&csrf),
            },
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // An API key in the cookie is not a session.
    let (_, key) = api.api_key("script").await;
    let r = api
        .send(
            Method::GET,
            "/api/v1/users",
            None,
            Auth::Cookie {
                session: &key,
                csrf: None,
            },
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Bearer credentials need no CSRF token and report none.
    for bearer in [api.token.as_str(), key.as_str()] {
        let r = api
            .send(
                Method::DELETE,
                "/api/v1/users/csrf",
                None,
                Auth::Bearer(bearer),
            )
            .await;
        assert!(
            matches!(r.status, StatusCode::NO_CONTENT | StatusCode::NOT_FOUND),
            "{}",
            r.text
        );
        let r = api
            .send(
                Method::GET,
                "/api/v1/auth/session",
                None,
                Auth::Bearer(bearer),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.json()["csrf_token"].is_null());
    }

    // Sign-out ends the session at once and removes the cookie.
    let r = api
        .send(
            Method::DELETE,
            "/api/v1/auth/session",
            None,
            Auth::Cookie {
                session: &session,
                csrf: Some(&csrf),
            },
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    for auth in [
        Auth::Cookie {
            session: &session,
            csrf: None,
        },
        Auth::Bearer(&session),
    ] {
        let r = api
            .send(Method::GET, "/api/v1/auth/session", None, auth)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Other sessions and the bearer token are untouched, and a bearer
    // sign-out ends nothing (scripts' tokens expire on their own).
    let r = api
        .send(
            Method::DELETE,
            "/api/v1/auth/session",
            None,
            Auth::Bearer(&api.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get("/api/v1/users").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_failures_count_like_token_logins() {
    let api = Api::start().await;
    let wrong = json!({"username": ADMIN, "password": "wrong"});
    let right = json!({"username": ADMIN, "password": ADMIN_PASSWORD});
    // Failed console sign-ins alone get the address refused…
    let mut refused = false;
    for attempt in 0..50 {
        let r = api
            .send(
                Method::POST,
                "/api/v1/auth/session",
                Some(wrong.clone()),
                Auth::None,
            )
            .await;
        assert!(r.header("set-cookie").is_none());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = true;
            break;
        }
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}: {}",
            r.text
        );
    }
    assert!(refused, "failed console sign-ins are never limited");
    // …on both login routes, even with the right password.
    for path in ["/api/v1/auth/session", "/api/v1/auth/token"] {
        let r = api
            .send(Method::POST, path, Some(right.clone()), Auth::None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}: {}",
            r.text
        );
        assert!(r.header("set-cookie").is_none());
    }
}
