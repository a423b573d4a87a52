//! `POST /v1/preview`: where a message would go, without storing or
//! sending anything. Takes the body of `POST /v1/broadcasts` and answers
//! the routes it matches and the destinations it expands to, decided by the
//! very code a send runs (`broadcasts::targets`), so a preview and a send
//! of the same message agree. Needs the `send` scope: it is a dry run of a
//! send, and it reveals the routing a sender would use.
//!
//! Each destination is an object so a later step can add the request body
//! it would be sent as.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::auth::authorize;
use super::broadcasts::Intent;
use super::wire::{Preview, PreviewDestination, SendRequest};
use super::{parse_json_bytes, ApiError, AppState};
use crate::config::Scope;
use crate::store::Store;

pub(super) async fn preview<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Preview>, ApiError> {
    let config = app.config.load();
    authorize(&config, &headers, Scope::Send)?;
    let bytes = super::read_body(body)?;
    let request: SendRequest = parse_json_bytes(&bytes)?;
    // The same checks and routing as a send; `targets` runs inside.
    let intent = Intent::from_request(&app, &request)?;
    let destinations = intent
        .destinations
        .iter()
        .map(|name| PreviewDestination {
            name: name.clone(),
            kind: config
                .destination(name)
                .map(|d| d.target.kind().to_owned())
                .unwrap_or_default(),
        })
        .collect();
    Ok(Json(Preview {
        routes: intent.routes,
        destinations,
    }))
}
