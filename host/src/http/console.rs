//! The web console: a static single-page app (HTML, CSS, JavaScript modules; no build step)
//! built into the binary from `host/console/`. It talks to the same API as everyone else with
//! the signed-in user's token, which never leaves the browser except in `Authorization`
//! headers (a sign-in link carries it in the URL fragment, which browsers do not send).

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// (name, content type, bytes) of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/api.js"),
    ),
    (
        "verify.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/verify.js"),
    ),
    (
        "guardian.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/guardian.js"),
    ),
    (
        "vendor.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/vendor.js"),
    ),
    (
        "platform.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/platform.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/ui.js"),
    ),
];

fn serve(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::not_found("console file"))?;
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The console runs only its own code and talks only to this host.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The console's page.
pub async fn index() -> Result<Response, ApiError> {
    serve("index.html")
}

/// One of the console's files.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    serve(&file)
}
