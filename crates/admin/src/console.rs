//! The web console: `web/index.html` at `/` and the files of `web/assets/`
//! at `/assets/{file}`, embedded in the binary at compile time (no build
//! step, nothing generated). The console is a client of the REST API like
//! any script; this module only hands out its files.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorBody};

/// One embedded file.
struct Asset {
    /// Its name under `/assets/`.
    name: &'static str,
    /// Its media type.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

/// Embeds `web/assets/<name>` for each name, with its media type.
macro_rules! assets {
    ($($name:literal => $mime:expr),* $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $mime,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/assets/", $name)),
        }),*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the console loads. A new file is one line here.
const ASSETS: &[Asset] = assets![
    "app.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "api.js" => JS,
    "ui.js" => JS,
    "chart.js" => JS,
    "app.js" => JS,
    "dashboard.js" => JS,
    "accounts.js" => JS,
    "sessions.js" => JS,
    "audit.js" => JS,
    "apikeys.js" => JS,
    "rules.js" => JS,
    "bans.js" => JS,
    "status.js" => JS,
];

/// The console's one page.
const INDEX: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/index.html"));

/// Embedded files change only with the binary, so browsers may keep them
/// but must ask again (a cheap 200 on loopback) after an upgrade.
const CACHE: &str = "no-cache";

/// The web console.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    responses((status = 200, description = "The console's page", body = String, content_type = "text/html"))
)]
pub(crate) async fn index() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(CACHE)),
        ],
        INDEX,
    )
        .into_response()
}

/// A script, style sheet or image of the console.
#[utoipa::path(
    get,
    path = "/assets/{file}",
    tag = "console",
    params(("file" = String, Path, description = "The file's name", example = "app.js")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == file)
        .ok_or_else(|| ApiError::NotFound(format!("asset {file:?}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(CACHE)),
        ],
        asset.body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        for name in INDEX
            .split("/assets/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
        {
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "{name} is not embedded"
            );
        }
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{}", asset.name);
        }
    }

    #[test]
    fn modules_import_only_embedded_files() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap_or_default();
            for target in text.split(" from '").skip(1) {
                let target = target.split('\'').next().unwrap_or_default();
                let Some(name) = target.strip_prefix("./") else {
                    panic!(
                        "{}: imports must be relative ('./x.js'): {target}",
                        asset.name
                    );
                };
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} imports {name}, which is not embedded",
                    asset.name
                );
            }
        }
    }
}
