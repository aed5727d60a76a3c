//! A real admin server on 127.0.0.1:0 over a real gateway, and a small HTTP
//! client for it. Shared by the admin integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::net::SocketAddr;

use bytes::Bytes;
use dropgate_admin::{AdminConfig, AdminServer};
use dropgate_core::store::Protocol;
use dropgate_core::{Credential, Session};
use dropgate_testkit::TestGateway;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use axum::http::{HeaderMap, Method, StatusCode};

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// The protocol listener `GET /api/v1/status` is told about.
pub const FTP_LISTENER: &str = "127.0.0.1:2121";

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// The console's session cookie, with the CSRF header when given.
    Cookie {
        session: &'a str,
        csrf: Option<&'a str>,
    },
}

/// One answer.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the API's error form and returns `(code, message, field)`.
    pub fn error(&self) -> (String, String, Option<String>) {
        let v = self.json();
        let e = &v["error"];
        assert!(e.is_object(), "not an error body: {}", self.text);
        (
            e["code"].as_str().unwrap().to_owned(),
            e["message"].as_str().unwrap().to_owned(),
            e["field"].as_str().map(str::to_owned),
        )
    }
}

/// A gateway with an admin and a running admin API.
pub struct Api {
    pub tg: TestGateway,
    pub addr: SocketAddr,
    /// A login token of `admin`.
    pub token: String,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Api {
    pub async fn start() -> Api {
        let tg = TestGateway::new().await;
        let hash = tg.store.hasher().hash(ADMIN_PASSWORD).await.unwrap();
        tg.store.create_admin(ADMIN, &hash).await.unwrap();
        std::fs::create_dir_all(tg.storage_root()).unwrap();
        let mut api = Api {
            tg,
            addr: "127.0.0.1:0".parse().unwrap(),
            token: String::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            shutdown: CancellationToken::new(),
            server: None,
        };
        api.restart().await;
        let login = api
            .send(
                Method::POST,
                "/api/v1/auth/token",
                Some(serde_json::json!({"username": ADMIN, "password": ADMIN_PASSWORD})),
                Auth::None,
            )
            .await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.text);
        api.token = login.json()["token"].as_str().unwrap().to_owned();
        api
    }

    /// Stops the admin server (if running) and starts a new one on the same
    /// gateway and store, as a process restart would (fresh in-memory state).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.shutdown = CancellationToken::new();
        let server = AdminServer::bind(
            AdminConfig {
                listen: vec!["127.0.0.1:0".parse().unwrap()],
                listeners: vec![("ftp".to_owned(), FTP_LISTENER.parse().unwrap())],
            },
            self.tg.gateway.clone(),
        )
        .await
        .unwrap();
        self.addr = server.local_addrs()[0];
        self.server = Some(tokio::spawn(server.run(self.shutdown.clone())));
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.server.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("admin server did not stop")
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request; `body` is sent as JSON.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        auth: Auth<'_>,
    ) -> Reply {
        let (ctype, bytes) = match body {
            Some(v) => (
                Some("application/json"),
                Bytes::from(serde_json::to_vec(&v).unwrap()),
            ),
            None => (None, Bytes::new()),
        };
        self.send_raw(method, path, ctype, bytes, auth).await
    }

    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        auth: Auth<'_>,
    ) -> Reply {
        match self
            .try_send_raw(method.clone(), path, content_type, body.clone(), auth)
            .await
        {
            Ok(r) => r,
            // A pooled keep-alive connection the server had just closed
            // (after a 413, say) fails the request that reused it; a real
            // client sends it again on a new connection.
            Err(e) if format!("{e:?}").contains("IncompleteMessage") => self
                .try_send_raw(method, path, content_type, body, auth)
                .await
                .unwrap(),
            Err(e) => panic!("{method} {path}: {e:?}"),
        }
    }

    /// [`Api::send_raw`], with transport errors returned.
    pub async fn try_send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        auth: Auth<'_>,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => req = req.header("authorization", format!("Bearer {t}")),
            Auth::Cookie { session, csrf } => {
                req = req.header("cookie", format!("theme=dark; dropgate_session={session}"));
                if let Some(csrf) = csrf {
                    req = req.header("x-csrf-token", csrf);
                }
            }
        }
        let resp = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Authenticated as the admin (login token).
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, Auth::Bearer(&self.token))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body), Auth::Bearer(&self.token))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(body), Auth::Bearer(&self.token))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Some(body), Auth::Bearer(&self.token))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, Auth::Bearer(&self.token))
            .await
    }

    /// Creates an API key for `admin` and returns `(id, key)`.
    pub async fn api_key(&self, description: &str) -> (String, String) {
        let r = self
            .post(
                "/api/v1/api-keys",
                serde_json::json!({"description": description}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Logs `username` in over FTP through core, as a listener would.
    pub async fn login(&self, username: &str, password: &str) -> Session {
        self.tg.home(username);
        self.tg
            .gateway
            .authenticate(
                Protocol::Ftp,
                username,
                Credential::Password(password),
                "127.0.0.1:40000".parse().unwrap(),
            )
            .await
            .expect("login")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
