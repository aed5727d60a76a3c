//! The admin REST API over real HTTP: a real gateway (SQLite, temporary
//! storage), the real server on 127.0.0.1:0, a plain HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{ADMIN, ADMIN_PASSWORD, Api, Auth, FTP_LISTENER, Method, StatusCode};
use dropgate_core::vfs::VirtualPath;
use serde_json::{Value, json};

/// Asserts that a reply is a user JSON without any password material.
fn assert_no_secret(text: &str) {
    assert!(
        !text.contains("password"),
        "a response names a password: {text}"
    );
    assert!(
        !text.contains("$argon2"),
        "a response carries a hash: {text}"
    );
}

/// The operations of the OpenAPI document, as (method, path, needs auth).
fn operations(doc: &Value) -> Vec<(Method, String, bool)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (name, op) in item.as_object().unwrap() {
            let method = match name.as_str() {
                "get" => Method::GET,
                "put" => Method::PUT,
                "post" => Method::POST,
                "delete" => Method::DELETE,
                "patch" => Method::PATCH,
                "head" => Method::HEAD,
                "options" => Method::OPTIONS,
                _ => continue,
            };
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            out.push((method, path.clone(), secured));
        }
    }
    out
}

/// Fills `{param}` segments with a placeholder.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "x"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_needs_a_credential() {
    let api = Api::start().await;
    let doc = api
        .send(Method::GET, "/api/v1/openapi.json", None, Auth::None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let ops = operations(&doc);
    let public: BTreeSet<String> = ops
        .iter()
        .filter(|(_, _, secured)| !secured)
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    let expected: BTreeSet<String> = [
        "GET /",
        "GET /assets/{file}",
        "GET /healthz",
        "GET /metrics",
        "GET /api/v1/openapi.json",
        "POST /api/v1/auth/token",
        "POST /api/v1/auth/session",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(public, expected, "the public routes are exactly these");
    // Every route of SPEC 7 that exists so far is documented.
    for route in [
        "POST /api/v1/api-keys",
        "GET /api/v1/api-keys",
        "DELETE /api/v1/api-keys/{id}",
        "GET /api/v1/users",
        "POST /api/v1/users",
        "GET /api/v1/users/{username}",
        "PUT /api/v1/users/{username}",
        "PATCH /api/v1/users/{username}",
        "DELETE /api/v1/users/{username}",
        "GET /api/v1/sessions",
        "DELETE /api/v1/sessions/{id}",
        "GET /api/v1/events",
        "GET /api/v1/status",
    ] {
        assert!(
            ops.iter()
                .any(|(m, p, secured)| format!("{m} {p}") == route && *secured),
            "{route} is not a protected operation of the document"
        );
    }

    for (method, path, secured) in &ops {
        let path = concrete(path);
        let body = matches!(*method, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
        let anonymous = api
            .send(method.clone(), &path, body.clone(), Auth::None)
            .await;
        let forged = api
            .send(
                method.clone(),
                &path,
                body.clone(),
                Auth::Bearer(
                    "dgt_0000000000000000000000000000000000000000000000000000000000000000",
                ),
            )
            .await;
        let bad_key = api
            .send(
                method.clone(),
                &path,
                body.clone(),
                Auth::Bearer("dgk_not-a-key"),
            )
            .await;
        if *secured {
            for reply in [&anonymous, &forged, &bad_key] {
                assert_eq!(
                    reply.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}: {}",
                    reply.text
                );
                assert_eq!(reply.error().0, "unauthorized");
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            }
        } else {
            assert_ne!(
                anonymous.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} is public: {}",
                anonymous.text
            );
            assert!(
                anonymous.status.as_u16() < 500,
                "{method} {path}: {}",
                anonymous.text
            );
        }
    }
    // With a credential the protected routes answer (404 for the placeholder ids).
    let r = api.get("/api/v1/users/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // A malformed Authorization header is a 401 too, never a 5xx.
    for header in [
        &b"Bearer"[..],
        b"Basic YWRtaW46YWRtaW4=",
        b"Bearer  ",
        b"bearer \xff\xfe",
        b"Bearer dgk_\x80",
    ] {
        let req = axum::http::Request::builder()
            .uri(api.url("/api/v1/users"))
            .header(
                "authorization",
                axum::http::HeaderValue::from_bytes(header).unwrap(),
            )
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_login_expiry_restart_and_rate_limit() {
    let mut api = Api::start().await;
    let login = |user: &str, pw: &str| json!({"username": user, "password": pw});

    // A fresh token works, expires in about an hour, and survives a restart.
    let r = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login(ADMIN, ADMIN_PASSWORD)),
            Auth::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 64, "{token}");
    let expires: chrono::DateTime<chrono::Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires - chrono::Utc::now();
    assert!(
        lifetime > chrono::Duration::minutes(50) && lifetime <= chrono::Duration::minutes(61),
        "{lifetime}"
    );
    assert_eq!(
        api.send(Method::GET, "/api/v1/status", None, Auth::Bearer(&token))
            .await
            .status,
        StatusCode::OK
    );
    api.restart().await;
    assert_eq!(
        api.send(Method::GET, "/api/v1/status", None, Auth::Bearer(&token))
            .await
            .status,
        StatusCode::OK
    );

    // Malformed logins are client errors and do not count as failures.
    let r = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(json!({"username": ADMIN})),
            Auth::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.error().2.as_deref(), Some("password"));

    // Wrong password and unknown admin: the same 401.
    let wrong = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login(ADMIN, "nope")),
            Auth::None,
        )
        .await;
    let unknown = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login("ghost", "nope")),
            Auth::None,
        )
        .await;
    let invalid = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login("\0bad", "nope")),
            Auth::None,
        )
        .await;
    for r in [&wrong, &unknown, &invalid] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    }
    assert_eq!(wrong.text, unknown.text);
    // A user account is not an admin.
    api.tg.add_user("partner", "partner-pass").await;
    let r = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login("partner", "partner-pass")),
            Auth::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login(ADMIN, "nope")),
            Auth::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Five failures so far; five more reach the ban threshold (10, SPEC 3).
    for _ in 0..5 {
        let r = api
            .send(
                Method::POST,
                "/api/v1/auth/token",
                Some(login(ADMIN, "nope")),
                Auth::None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    // The address is banned: the next attempt, even a right one, waits.
    let r = api
        .send(
            Method::POST,
            "/api/v1/auth/token",
            Some(login(ADMIN, ADMIN_PASSWORD)),
            Auth::None,
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.error().0, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1800).contains(&retry), "{retry}");
    // Existing credentials are not affected.
    assert_eq!(
        api.send(Method::GET, "/api/v1/status", None, Auth::Bearer(&token))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_create_list_use_delete() {
    let api = Api::start().await;
    let (id, key) = api.api_key("nightly job").await;
    assert!(key.starts_with("dgk_"), "{key}");

    let list = api.get("/api/v1/api-keys").await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["admin"], ADMIN);
    assert_eq!(items[0]["description"], "nightly job");
    assert!(!list.text.contains(&key), "the key is shown only once");

    // The key authenticates like a token, and its use is recorded.
    let r = api
        .send(Method::GET, "/api/v1/users", None, Auth::Bearer(&key))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = api.get("/api/v1/api-keys").await.json();
    assert!(list["items"][0]["last_used_at"].is_string(), "{list}");
    // An API key can manage keys too.
    let r = api
        .send(
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({})),
            Auth::Bearer(&key),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let r = api
        .post(
            "/api/v1/api-keys",
            json!({"description": "x", "scope": "all"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(r.error().1.contains("scope"), "{}", r.text);
    let r = api
        .post("/api/v1/api-keys", json!({"description": "x".repeat(2000)}))
        .await;
    assert_eq!(r.error().2.as_deref(), Some("description"));

    assert_eq!(
        api.delete(&format!("/api/v1/api-keys/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    let r = api
        .send(Method::GET, "/api/v1/users", None, Auth::Bearer(&key))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = api.delete(&format!("/api/v1/api-keys/{id}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error().0, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_lifecycle() {
    let api = Api::start().await;
    let acme = json!({
        "username": "acme",
        "password": "S3cure-pass",
        "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl acme@laptop"],
        "permissions": {"/": ["list"], "/inbox": ["list", "upload"]},
        "quota": {"max_bytes": 1000000},
        "allowed_ips": ["127.0.0.0/8"],
        "protocols": ["sftp", "ftps"],
        "description": "ACME Corp",
        "created_at": "2000-01-01T00:00:00Z"
    });

    // Create.
    let r = api.post("/api/v1/users", acme.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/users/acme"));
    assert_no_secret(&r.text);
    let created = r.json();
    assert_eq!(created["home"], "acme", "home defaults to the username");
    assert_eq!(created["enabled"], true);
    assert_eq!(
        created["quota"],
        json!({"max_bytes": 1000000, "max_files": 0})
    );
    assert_eq!(created["protocols"], json!(["sftp", "ftps"]));
    assert_eq!(created["permissions"]["/inbox"], json!(["list", "upload"]));
    assert_ne!(
        created["created_at"], "2000-01-01T00:00:00Z",
        "created_at is not taken from input"
    );
    // The response is exactly the store's User JSON, with the home's usage.
    let stored = api.tg.store.get_user("acme").await.unwrap().unwrap();
    let mut expected = serde_json::to_value(&stored.user).unwrap();
    expected["usage"] = json!({"bytes": 0, "files": 0});
    assert_eq!(created, expected);
    assert!(stored.password_hash.unwrap().starts_with("$argon2id$"));

    // Duplicate.
    let r = api.post("/api/v1/users", json!({"username": "acme"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.error().0, "conflict");

    // Invalid fields: 422 naming the field, and nothing is created.
    for (body, field) in [
        (json!({"username": "-bad"}), "username"),
        (json!({"username": "a/b"}), "username"),
        (json!({"username": "evil", "home": "../etc"}), "home"),
        (json!({"username": "evil", "home": "/abs"}), "home"),
        (
            json!({"username": "evil", "permissions": {"/../x": ["list"]}}),
            "permissions",
        ),
        (
            json!({"username": "evil", "permissions": {"/": ["fly"]}}),
            "permissions./[0]",
        ),
        (
            json!({"username": "evil", "public_keys": ["not a key"]}),
            "public_keys",
        ),
        (
            json!({"username": "evil", "allowed_ips": ["10.0.0.0/99"]}),
            "allowed_ips[0]",
        ),
        (
            json!({"username": "evil", "protocols": ["http"]}),
            "protocols[0]",
        ),
        (
            json!({"username": "evil", "quota": {"max_bytes": -1}}),
            "quota.max_bytes",
        ),
        (
            json!({"username": "evil", "quota": {"max_gigs": 1}}),
            "quota.max_gigs",
        ),
        (json!({"username": "evil", "enabled": "yes"}), "enabled"),
        (
            json!({"username": "evil", "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (json!({"username": "evil", "password": ""}), "password"),
        (
            json!({"username": "evil", "description": "nul\u{0}byte"}),
            "description",
        ),
        (json!({"username": "evil", "enable": false}), "enable"),
        (json!({"home": "evil"}), "username"),
        (json!(["username"]), "body"),
    ] {
        let r = api.post("/api/v1/users", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        let (code, message, got) = r.error();
        assert_eq!(code, "invalid_field");
        assert_eq!(got.as_deref(), Some(field), "{body}: {message}");
        assert!(
            message.contains(field.split(['.', '[']).next().unwrap()),
            "{body}: {message}"
        );
    }
    assert_eq!(
        api.get("/api/v1/users/evil").await.status,
        StatusCode::NOT_FOUND
    );

    // Bad JSON is 400; the wrong media type 415; neither is a 5xx.
    let r = api
        .send_raw(
            Method::POST,
            "/api/v1/users",
            Some("application/json"),
            Bytes::from("{\"username\":"),
            Auth::Bearer(&api.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error().0, "bad_request");
    let r = api
        .send_raw(
            Method::POST,
            "/api/v1/users",
            Some("text/plain"),
            Bytes::from("{}"),
            Auth::Bearer(&api.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text);

    // Get.
    let r = api.get("/api/v1/users/acme").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), created);
    assert_no_secret(&r.text);
    assert_eq!(
        api.get("/api/v1/users/nobody").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/users/..%2Fetc").await.status,
        StatusCode::NOT_FOUND
    );

    // List with pagination, ordered by name.
    for name in ["bravo", "charlie", "delta"] {
        assert_eq!(
            api.post("/api/v1/users", json!({"username": name}))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let r = api
            .get(&format!("/api/v1/users?limit=3&offset={offset}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_no_secret(&r.text);
        let v = r.json();
        assert_eq!(v["total"], 4);
        let items = v["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        seen.extend(
            items
                .iter()
                .map(|u| u["username"].as_str().unwrap().to_owned()),
        );
        offset += items.len();
    }
    assert_eq!(seen, ["acme", "bravo", "charlie", "delta"]);
    for bad in ["limit=0", "limit=501", "limit=x", "offset=-1"] {
        let r = api.get(&format!("/api/v1/users?{bad}")).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text
        );
        assert_eq!(r.error().2.as_deref(), Some(bad.split('=').next().unwrap()));
    }

    // PUT replaces everything but the password (kept when absent).
    let r = api
        .put(
            "/api/v1/users/acme",
            json!({"username": "acme", "description": "replaced"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_no_secret(&r.text);
    let v = r.json();
    assert_eq!(v["description"], "replaced");
    assert_eq!(
        v["permissions"],
        json!({"/": ["*"]}),
        "defaults of a new account"
    );
    assert_eq!(v["public_keys"], json!([]));
    assert_eq!(v["created_at"], created["created_at"]);
    drop(api.login("acme", "S3cure-pass").await);
    let r = api
        .put("/api/v1/users/acme", json!({"username": "other"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.error().2.as_deref(), Some("username"));
    assert_eq!(
        api.put("/api/v1/users/ghost", json!({"username": "ghost"}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // A fetched user can be sent back as is.
    let fetched = api.get("/api/v1/users/acme").await.json();
    assert_eq!(
        api.put("/api/v1/users/acme", fetched.clone()).await.json(),
        fetched
    );

    // PATCH changes only what it names.
    let r = api
        .patch(
            "/api/v1/users/acme",
            json!({"enabled": false, "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["enabled"], false);
    assert_eq!(v["description"], "replaced");
    assert_eq!(v["expires_at"], "2999-01-01T00:00:00Z");
    let v = api
        .patch(
            "/api/v1/users/acme",
            json!({"expires_at": null, "enabled": true}),
        )
        .await
        .json();
    assert_eq!(v["expires_at"], Value::Null);
    let r = api
        .patch("/api/v1/users/acme", json!({"password": "new-pass"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_no_secret(&r.text);
    drop(api.login("acme", "new-pass").await);
    let r = api
        .patch("/api/v1/users/acme", json!({"home": "a/../../b"}))
        .await;
    assert_eq!(r.error().2.as_deref(), Some("home"));
    assert_eq!(
        api.patch("/api/v1/users/ghost", json!({})).await.status,
        StatusCode::NOT_FOUND
    );

    // DELETE keeps the files by default.
    let acme_home = api.tg.home("acme");
    std::fs::write(acme_home.join("report.csv"), b"data").unwrap();
    assert_eq!(
        api.delete("/api/v1/users/acme").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("/api/v1/users/acme").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.delete("/api/v1/users/acme").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        acme_home.join("report.csv").exists(),
        "files are kept by default"
    );

    // ...and removes the home with delete_files=true.
    let bravo_home = api.tg.home("bravo");
    std::fs::create_dir_all(bravo_home.join("inbox")).unwrap();
    std::fs::write(bravo_home.join("inbox/f"), b"data").unwrap();
    let r = api.delete("/api/v1/users/bravo?delete_files=maybe").await;
    assert_eq!(r.error().2.as_deref(), Some("delete_files"));
    assert_eq!(
        api.delete("/api/v1/users/bravo?delete_files=true")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(!bravo_home.exists(), "the home is removed");
    assert!(api.tg.storage_root().exists(), "the storage root stays");

    // A home shared with another account is not removed.
    assert_eq!(
        api.post(
            "/api/v1/users",
            json!({"username": "echo", "home": "delta/echo"})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let delta_home = api.tg.home("delta");
    let r = api.delete("/api/v1/users/delta?delete_files=true").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(delta_home.exists());
    assert_eq!(
        api.get("/api/v1/users/delta").await.status,
        StatusCode::OK,
        "nothing was deleted"
    );

    // A home that is a symlink out of the root is not followed.
    let outside = api.tg.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(&outside, api.tg.storage_root().join("linked")).unwrap();
    assert_eq!(
        api.post("/api/v1/users", json!({"username": "linked"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let r = api.delete("/api/v1/users/linked?delete_files=true").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(outside.join("precious").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_kicked() {
    let api = Api::start().await;
    api.tg.add_user("alice", "alice-pass").await;
    let session = api.login("alice", "alice-pass").await;

    let r = api.get("/api/v1/sessions").await;
    assert_eq!(r.status, StatusCode::OK);
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", r.text);
    let s = &items[0];
    assert_eq!(s["id"], session.id());
    assert_eq!(s["username"], "alice");
    assert_eq!(s["protocol"], "ftp");
    assert_eq!(s["remote_addr"], "127.0.0.1:40000");
    assert!(s["started_at"].is_string());
    assert_eq!(s["transfer"], Value::Null);

    assert!(!session.is_cancelled());
    let r = api
        .delete(&format!("/api/v1/sessions/{}", session.id()))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(
        session.is_cancelled(),
        "the session is told to disconnect at once"
    );
    drop(session);
    let r = api.delete("/api/v1/sessions/0123456789abcdef").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/api/v1/sessions").await.json()["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_changes_end_live_sessions() {
    let api = Api::start().await;
    api.tg.add_user("alice", "alice-pass").await;
    api.tg.add_user("bob", "bob-pass").await;

    // Disabling ends the account's sessions, and only its sessions.
    let alice = api.login("alice", "alice-pass").await;
    let bob = api.login("bob", "bob-pass").await;
    let r = api
        .patch("/api/v1/users/alice", json!({"enabled": false}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(alice.is_cancelled());
    assert!(!bob.is_cancelled());

    // A description does not; a password change does.
    let r = api
        .patch("/api/v1/users/bob", json!({"description": "vip"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!bob.is_cancelled());
    api.patch("/api/v1/users/bob", json!({"password": "rotated"}))
        .await;
    assert!(bob.is_cancelled());

    // Expiring and deleting do too.
    let bob = api.login("bob", "rotated").await;
    api.patch(
        "/api/v1/users/bob",
        json!({"expires_at": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert!(bob.is_cancelled());
    api.patch("/api/v1/users/bob", json!({"expires_at": null}))
        .await;
    let bob = api.login("bob", "rotated").await;
    assert_eq!(
        api.delete("/api/v1/users/bob").await.status,
        StatusCode::NO_CONTENT
    );
    assert!(bob.is_cancelled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_filtered_and_paginated() {
    let api = Api::start().await;
    api.tg.add_user("alice", "alice-pass").await;
    api.tg.add_user("bob", "bob-pass").await;
    let alice = api.login("alice", "alice-pass").await;
    let bob = api.login("bob", "bob-pass").await;
    for i in 0..7 {
        alice
            .create_dir(&VirtualPath::parse(&format!("/dir{i}")).unwrap())
            .await
            .unwrap();
    }
    bob.create_dir(&VirtualPath::parse("/b").unwrap())
        .await
        .unwrap();
    let _ = api
        .tg
        .gateway
        .authenticate(
            dropgate_core::store::Protocol::Sftp,
            "alice",
            dropgate_core::Credential::Password("wrong"),
            "127.0.0.1:40001".parse().unwrap(),
        )
        .await;
    api.tg.flush_events().await;

    // Alice's mkdirs, three per page, newest first, linked by the cursor.
    let mut paths = Vec::new();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = "/api/v1/events?username=alice&kind=mkdir&limit=3".to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = api.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let v = r.json();
        pages += 1;
        for e in v["items"].as_array().unwrap() {
            assert_eq!(e["username"], "alice");
            assert_eq!(e["kind"], "mkdir");
            assert_eq!(e["outcome"], "ok");
            assert_eq!(e["protocol"], "ftp");
            paths.push(e["path"].as_str().unwrap().to_owned());
            ids.push(e["id"].as_i64().unwrap());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        paths,
        (0..7).rev().map(|i| format!("/dir{i}")).collect::<Vec<_>>()
    );
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Kind alone: every account's; the failed login is there with its outcome.
    let v = api.get("/api/v1/events?kind=mkdir&limit=100").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 8);
    assert_eq!(v["next_cursor"], Value::Null);
    let v = api
        .get("/api/v1/events?kind=login&username=alice")
        .await
        .json();
    let outcomes: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "ok"], "{v}");

    // Time windows.
    let newest = &api.get("/api/v1/events?limit=1").await.json()["items"][0];
    let t: chrono::DateTime<chrono::Utc> = newest["time"].as_str().unwrap().parse().unwrap();
    let after =
        (t + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let before =
        (t - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let v = api
        .get(&format!("/api/v1/events?since={after}"))
        .await
        .json();
    assert_eq!(v["items"], json!([]));
    let v = api
        .get(&format!(
            "/api/v1/events?since={before}&until={after}&username=bob&kind=mkdir"
        ))
        .await
        .json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    let v = api
        .get(&format!("/api/v1/events?until={before}"))
        .await
        .json();
    assert_eq!(v["items"], json!([]));

    // Bad parameters: 422 naming the parameter.
    for (query, field) in [
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("kind=teleport", "kind"),
        ("cursor=abc", "cursor"),
        ("cursor=-5", "cursor"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("username=a%00b", "username"),
    ] {
        let r = api.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            r.text
        );
        assert_eq!(r.error().2.as_deref(), Some(field), "{query}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_status() {
    let api = Api::start().await;
    let r = api.send(Method::GET, "/healthz", None, Auth::None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "ok"));

    api.tg.add_user("alice", "alice-pass").await;
    let session = api.login("alice", "alice-pass").await;
    let r = api.send(Method::GET, "/metrics", None, Auth::None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    for needle in [
        "# TYPE dropgate_sessions gauge",
        "dropgate_sessions{protocol=\"ftp\"} 1",
        "dropgate_sessions{protocol=\"sftp\"} 0",
        "# TYPE dropgate_logins_total counter",
        "dropgate_logins_total{protocol=\"ftp\",outcome=\"ok\"} 1",
        "dropgate_logins_total{protocol=\"ftp\",outcome=\"failed\"} 0",
        "# HELP dropgate_bytes_total",
        "dropgate_bytes_total{protocol=\"ftps\",direction=\"upload\"} 0",
        "dropgate_transfers_total{protocol=\"sftp\",direction=\"download\",outcome=\"failed\"} 0",
        "dropgate_errors_total{protocol=\"ftp\"} 0",
        "dropgate_uptime_seconds ",
    ] {
        assert!(r.text.contains(needle), "missing {needle:?} in\n{}", r.text);
    }
    // Every sample line belongs to a family with HELP and TYPE.
    for line in r.text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(r.text.contains(&format!("# TYPE {name} ")), "{line}");
        assert!(r.text.contains(&format!("# HELP {name} ")), "{line}");
    }
    drop(session);

    let r = api.get("/api/v1/status").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["node"], "test");
    assert!(v["uptime_secs"].is_u64());
    let listeners = v["listeners"].as_array().unwrap();
    assert!(
        listeners.contains(&json!({"protocol": "ftp", "address": FTP_LISTENER})),
        "{v}"
    );
    assert!(
        listeners.contains(&json!({"protocol": "admin", "address": api.addr.to_string()})),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_headers_limits_and_errors() {
    let api = Api::start().await;
    let r = api.get("/api/v1/users").await;
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(r.header(name), Some(value), "{name}");
    }
    assert!(r.header("access-control-allow-origin").is_none(), "no CORS");

    // The console's page.
    let r = api.send(Method::GET, "/", None, Auth::None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text.contains("dropgate"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    // A CORS preflight gets no CORS grant.
    let r = api
        .send(Method::OPTIONS, "/api/v1/users", None, Auth::None)
        .await;
    assert!(r.header("access-control-allow-origin").is_none());

    // Too large a body: 413 in the JSON error form.
    let huge = format!(
        "{{\"username\":\"big\",\"description\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    // The server answers without reading the whole body and closes; the
    // client, still sending, may see the close (a reset) before the answer
    // (RFC 9112 9.6): try a few times, the answer must be a 413 each time
    // one arrives.
    let huge = Bytes::from(huge);
    let mut r = None;
    for _ in 0..5 {
        match api
            .try_send_raw(
                Method::POST,
                "/api/v1/users",
                Some("application/json"),
                huge.clone(),
                Auth::Bearer(&api.token),
            )
            .await
        {
            Ok(reply) => {
                r = Some(reply);
                break;
            }
            Err(e) => eprintln!("oversized body: connection closed before the answer: {e}"),
        }
    }
    let r = r.expect("a 413 within 5 tries");
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        &r.text[..r.text.len().min(200)]
    );
    assert_eq!(r.error().0, "payload_too_large");

    // Unknown route and wrong method: JSON errors too.
    let r = api.get("/api/v1/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error().0, "not_found");
    let r = api
        .send(
            Method::PUT,
            "/api/v1/sessions",
            Some(json!({})),
            Auth::Bearer(&api.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    assert_eq!(r.error().0, "method_not_allowed");
    // A path segment that is not UTF-8.
    let r = api.get("/api/v1/users/%FF").await;
    assert!(r.status.is_client_error(), "{}", r.text);
    r.error();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_cannot_hold_up_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut api = Api::start().await;
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "a client that never finishes its headers is disconnected"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    let mut stuck = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    stuck
        .write_all(b"POST /api/v1/users HTTP/1.1\r\n")
        .await
        .unwrap();
    let stopping = std::time::Instant::now();
    api.stop().await;
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_stops_listening() {
    let mut api = Api::start().await;
    let addr = api.addr;
    api.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}
