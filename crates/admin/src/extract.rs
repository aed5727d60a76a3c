//! Request extractors whose failures are API errors that name the field:
//! axum's own `Json` and `Query` answer in plain text and lose the path of
//! the bad value.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body (`Content-Type: application/json`), decoded with the
/// path of any bad value: syntax errors are 400, wrong values, missing and
/// unknown fields 422 naming the field.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be JSON (Content-Type: application/json)",
            ));
        }
        // Bounded by the router's body limit (413 beyond it).
        // Bounded by the router's body limit.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// Decodes `bytes` as one JSON value of type `T`.
pub(crate) fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::BadRequest(format!("the request body is not valid JSON: {e}"))
        }
        Category::Data => {
            let message = strip_position(&e.to_string());
            let field = field_name(path, &message, "body");
            ApiError::invalid(field, message)
        }
    }
}

/// The full name of the field a serde message is about. serde_path_to_error
/// gives the path of the value being read: for an unknown field that ends in
/// the field, for a missing one it is the parent; `whole` names the root.
fn field_name(path: &str, message: &str, whole: &str) -> String {
    match (path, backticked(message)) {
        (".", Some(name)) => name,
        (".", None) => whole.to_owned(),
        (path, Some(name)) if path.rsplit(['.', '[']).next() != Some(name.as_str()) => {
            format!("{path}.{name}")
        }
        (path, _) => path.to_owned(),
    }
}

/// serde_json appends " at line 1 column 42"; the field name says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn is_field_message(message: &str) -> bool {
    message.starts_with("missing field")
        || message.starts_with("unknown field")
        || message.starts_with("duplicate field")
}

/// The first `name` in a serde message like "unknown field `name`, expected …".
fn backticked(message: &str) -> Option<String> {
    if !is_field_message(message) {
        return None;
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Query parameters decoded into `T`; a bad value is a 422 naming the
/// parameter. Unknown parameters are ignored, as HTTP clients expect.
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                let field = field_name(&path, &message, "query");
                ApiError::invalid(field, message)
            })
    }
}

/// The client's address, as the rate limiter sees it.
pub(crate) struct ClientIp(pub(crate) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Present when served by `AdminServer`; a router served without connect
        // info (a test harness) counts every client as one address.
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok(ClientIp(ip))
    }
}
