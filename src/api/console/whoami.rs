//! `GET /v1/whoami`: which token the caller holds and its scopes, so a
//! client (the console) shows only the actions the server would allow. It
//! needs no scope: without a token it answers who an anonymous caller is
//! (every scope when the server has no tokens, none when it requires
//! them); a token that is not configured is a 401 as on every route.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::auth::authorize;
use crate::api::AppState;
use crate::config::Scope;
use crate::store::Store;

const SCOPES: [Scope; 3] = [Scope::Send, Scope::Read, Scope::Operate];

/// The answer of `GET /v1/whoami`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The token's name; `anonymous` without one.
    pub name: String,
    /// What this caller may do: `send`, `read`, `operate`.
    pub scopes: Vec<String>,
    /// Whether the server requires a token on its routes.
    pub tokens_required: bool,
}

pub(super) async fn whoami<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Response {
    let config = app.config.load();
    let tokens_required = !config.tokens.is_empty();
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        let scopes = if tokens_required {
            Vec::new()
        } else {
            SCOPES.iter().map(|s| s.as_str().to_owned()).collect()
        };
        return Json(WhoAmI {
            name: "anonymous".to_owned(),
            scopes,
            tokens_required,
        })
        .into_response();
    }
    // Every route's check, one scope at a time: a missing or unknown token
    // is refused here exactly as there.
    let mut scopes = Vec::new();
    let mut name = None;
    for scope in SCOPES {
        match authorize(&config, &headers, scope) {
            Ok(caller) => {
                scopes.push(scope.as_str().to_owned());
                name = Some(caller.name);
            }
            Err(error) => {
                let refused = error.into_response();
                if refused.status() != StatusCode::FORBIDDEN {
                    return refused;
                }
            }
        }
    }
    let name = name.unwrap_or_else(|| token_name(&config, &headers));
    Json(WhoAmI {
        name,
        scopes,
        tokens_required,
    })
    .into_response()
}

/// The name of a configured token that has no scope at all (authorize
/// accepted it for none, so it is known and the header is well formed).
fn token_name(config: &crate::config::Config, headers: &HeaderMap) -> String {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(7..))
        .map(str::trim)
        .unwrap_or_default();
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    config
        .tokens
        .iter()
        .find(|t| t.sha256 == hash)
        .map_or_else(|| "unknown".to_owned(), |t| t.name.clone())
}
