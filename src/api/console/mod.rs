//! The console: a web page served by `herald serve` at `/`, its script,
//! style sheet and icon under `console/`, all compiled into the binary
//! (`include_str!`), nothing fetched from elsewhere at run time. The page
//! is a client of the HTTP API like any other: it sends the bearer token
//! the operator enters (kept in the tab's sessionStorage) and never uses
//! cookies. Every URL it uses is relative, so it works behind a proxy that
//! serves herald under a path prefix (`https://ops.example/herald/`).

mod whoami;

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::{ApiError, AppState};
use crate::store::Store;

#[cfg(test)]
use whoami::WhoAmI;

/// The policy of every console response: only this origin's script, style,
/// images and API; no inline script or style, no eval, no framing, no form
/// posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's files: (name under `console/`, content type, content).
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
];

const INDEX_HTML: &str = include_str!("assets/index.html");

/// The console's routes and `GET /v1/whoami`, merged into the API router.
pub fn router<S: Store>() -> Router<Arc<AppState<S>>> {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(asset))
        .route("/v1/whoami", get(whoami::whoami::<S>))
}

fn with_security_headers(mut response: Response, cache_control: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
}

async fn index() -> Response {
    let response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response();
    // The page names its assets without a version: revalidate each time,
    // so an upgraded herald never runs an old script.
    with_security_headers(response, "no-cache")
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, content)) => with_security_headers(
            ([(header::CONTENT_TYPE, *content_type)], *content).into_response(),
            "no-cache",
        ),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the console has no file {file:?}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_assets_that_are_served_and_relative_urls() {
        for (name, _, _) in ASSETS {
            if name == "icon.svg" || name == "app.js" || name == "app.css" {
                assert!(
                    INDEX_HTML.contains(&format!("\"console/{name}\"")),
                    "index.html does not load console/{name} by a relative URL"
                );
            }
        }
        assert!(
            !INDEX_HTML.contains("src=\"/"),
            "an absolute URL breaks a path prefix"
        );
        assert!(
            !INDEX_HTML.contains("href=\"/"),
            "an absolute URL breaks a path prefix"
        );
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script under the CSP"
        );
        assert!(
            !INDEX_HTML.contains("style="),
            "no inline style under the CSP"
        );
        let script = ASSETS[0].2;
        assert!(!script.contains("eval("), "no eval under the CSP");
        assert!(
            !script.contains("fetch('/"),
            "an absolute URL breaks a path prefix"
        );
        assert!(
            !script.contains("document.cookie"),
            "the console uses no cookies"
        );
    }

    #[test]
    fn the_openapi_schema_of_whoami_is_its_wire_type() {
        let document = crate::api::openapi::document();
        let mut declared: Vec<String> = document["components"]["schemas"]["WhoAmI"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        declared.sort();
        let answer = serde_json::to_value(WhoAmI {
            name: String::new(),
            scopes: Vec::new(),
            tokens_required: false,
        })
        .unwrap();
        let mut fields: Vec<String> = answer.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(declared, fields);
    }
}
