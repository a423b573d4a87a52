//! The HTTP API. Only this module (and `wire`) knows the wire types.

pub mod wire;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::config::Config;
use crate::dispatch::{now_ms, Dispatcher};
use crate::domain::{
    new_broadcast_id, InvalidInput, Message, Severity, DESTINATIONS_PER_BROADCAST_MAX,
};
use crate::store::{BroadcastView, DeliveryView, NewBroadcast, NewDelivery, Store, StoreError};
use wire::{Broadcast, ErrorBody, ErrorDetail, SendRequest};

pub struct AppState<S> {
    pub store: Arc<S>,
    pub dispatcher: Arc<Dispatcher<S>>,
    pub config: Arc<Config>,
}

pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    let body_limit = state.config.request_body_bytes_max;
    Router::new()
        .route("/v1/broadcasts", post(create_broadcast::<S>))
        .route("/v1/broadcasts/{id}", get(get_broadcast::<S>))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// One error type for every handler; it becomes the one JSON error shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> ApiError {
        ApiError::invalid(e.field.clone(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store error while answering a request");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database could not complete the request; nothing was accepted, try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn parse_send_request(body: Result<Bytes, BytesRejection>) -> Result<SendRequest, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the server's limit (server.request_body_bytes_max)",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                rejection.body_text(),
            )
        }
    })?;
    let malformed = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    };
    let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
    let request: SendRequest =
        serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                let field = if path == "." {
                    // Missing or unknown fields are reported at the top level;
                    // serde names them in the message.
                    inner.to_string().split('`').nth(1).map(str::to_owned)
                } else {
                    Some(path)
                };
                ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid_field",
                    message: format!("{inner}"),
                    field,
                }
            } else {
                malformed(inner)
            }
        })?;
    // Anything after the object (a second object, garbage) is refused too.
    deserializer.end().map_err(malformed)?;
    Ok(request)
}

async fn create_broadcast<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = parse_send_request(body)?;
    let severity = match request.severity.as_deref() {
        None => Severity::P3,
        Some(text) => Severity::parse(text)?,
    };
    let message = Message::new(
        &request.title,
        request.body.as_deref().unwrap_or(""),
        severity,
        request.thread.as_deref(),
    )?;
    if request.destinations.is_empty() {
        return Err(ApiError::invalid(
            "destinations",
            "name at least one destination",
        ));
    }
    if request.destinations.len() > DESTINATIONS_PER_BROADCAST_MAX {
        return Err(ApiError::invalid(
            "destinations",
            format!("at most {DESTINATIONS_PER_BROADCAST_MAX} destinations per broadcast"),
        ));
    }
    let mut deliveries = Vec::with_capacity(request.destinations.len());
    for (index, name) in request.destinations.iter().enumerate() {
        let field = format!("destinations[{index}]");
        let Some(destination) = app.config.destination(name) else {
            let known: Vec<&str> = app
                .config
                .destinations
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            return Err(ApiError::invalid(
                field,
                format!(
                    "unknown destination {name:?}; configured: {}",
                    known.join(", ")
                ),
            ));
        };
        if request.destinations[..index].contains(name) {
            return Err(ApiError::invalid(
                field,
                format!("destination {name:?} is named twice"),
            ));
        }
        deliveries.push(NewDelivery {
            destination: name.clone(),
            policy: destination.policy,
            lease_now: false,
        });
    }
    // Where a worker slot is free, the delivery is leased in the insert's
    // transaction and its first attempt starts without a claim round trip.
    let mut slots: Vec<_> = deliveries
        .iter_mut()
        .map(|d| {
            let slot = app.dispatcher.reserve_slot(&d.destination);
            d.lease_now = slot.is_some();
            slot
        })
        .collect();
    let created_at_ms = now_ms();
    let new = NewBroadcast {
        id: new_broadcast_id(created_at_ms, &mut rand::rng()),
        message,
        created_at_ms,
        deliveries,
    };
    let id = new.id.clone();
    let message = new.message.clone();
    let mut inserted = app.store.insert_broadcast(new).await?;
    for (delivery, slot) in inserted.iter_mut().zip(slots.iter_mut()) {
        match (delivery.leased.take(), slot.take()) {
            (Some(leased), Some(slot)) => app.dispatcher.hand_off(leased, slot),
            // Not leased (waiting behind its thread, or no slot was free):
            // the lane claims it; the unused slot is released here.
            _ => app.dispatcher.wake(&delivery.destination),
        }
    }
    tracing::info!(broadcast = %id, destinations = inserted.len(), "broadcast accepted");
    let view = BroadcastView {
        id: id.clone(),
        message,
        created_at_ms,
        deliveries: inserted
            .into_iter()
            .map(|d| DeliveryView {
                progress: d.progress,
                destination: d.destination,
                idempotency_key: d.idempotency_key,
                last_error: None,
                last_http_status: None,
                updated_at_ms: created_at_ms,
                attempts: Vec::new(),
            })
            .collect(),
    };
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/broadcasts/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::ACCEPTED,
        headers,
        Json(Broadcast::from_view(&view, created_at_ms)),
    )
        .into_response())
}

async fn get_broadcast<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    Path(id): Path<String>,
) -> Result<Json<Broadcast>, ApiError> {
    match app.store.broadcast(&id).await? {
        Some(view) => Ok(Json(Broadcast::from_view(&view, now_ms()))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "broadcast_not_found",
            format!("no broadcast with id {id:?}"),
        )),
    }
}
