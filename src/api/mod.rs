//! The HTTP API. Only this module (and `wire`) knows the wire types.
//! `router` builds every route; handlers live in one file per wing.

mod alertmanager;
pub mod auth;
mod broadcasts;
mod console;
mod live;
pub mod openapi;
mod ops;
mod pause;
mod preview;
pub mod reload;
pub mod wire;

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::domain::InvalidInput;
use crate::store::{Store, StoreError};
use wire::{ErrorBody, ErrorDetail};

/// The configuration the API answers with; a reload swaps it whole.
/// Handlers take a snapshot (`load`) and keep it for the request, so one
/// request never mixes two configurations, and no lock is held across an
/// await.
pub struct LiveConfig(RwLock<Arc<Config>>);

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> LiveConfig {
        LiveConfig(RwLock::new(config))
    }

    pub fn load(&self) -> Arc<Config> {
        self.0.read().expect("config poisoned").clone()
    }

    pub fn store(&self, config: Arc<Config>) {
        *self.0.write().expect("config poisoned") = config;
    }
}

pub struct AppState<S> {
    pub store: Arc<S>,
    pub dispatcher: Arc<Dispatcher<S>>,
    pub config: LiveConfig,
    /// Reloads: where the file is, and how the last one went.
    pub reloads: reload::Reloads,
    /// Broadcasts accepted since start (for `/metrics`).
    pub accepted: AtomicU64,
    /// (caller, Idempotency-Key) of keyed requests being processed: a second
    /// request with the same key meanwhile gets 409.
    pub keys_in_flight: Mutex<HashSet<(String, String)>>,
    /// Turns true when the server stops: event streams send their last
    /// event and end.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Wakes the deadline watcher; its counters for `/metrics`.
    pub objectives: Arc<crate::dispatch::objectives::ObjectiveSignals>,
}

impl<S> AppState<S> {
    pub fn new(store: Arc<S>, dispatcher: Arc<Dispatcher<S>>, config: Arc<Config>) -> AppState<S> {
        AppState {
            store,
            dispatcher,
            reloads: reload::Reloads::new(),
            config: LiveConfig::new(config),
            accepted: AtomicU64::new(0),
            keys_in_flight: Mutex::new(HashSet::new()),
            stopping: tokio::sync::watch::Sender::new(false),
            objectives: Arc::default(),
        }
    }
}

pub fn router<S: Store>(state: Arc<AppState<S>>) -> Router {
    // Fixed at start: a reload reports a change of these as not applied.
    let config = state.config.load();
    let body_limit = config.request_body_bytes_max;
    let alertmanager_body_limit = config
        .alertmanager
        .as_ref()
        .map_or(crate::config::DEFAULT_ALERTMANAGER_BODY_BYTES_MAX, |a| {
            a.request_body_bytes_max
        });
    let timeout = Duration::from_millis(config.request_timeout_ms);
    Router::new()
        .route(
            "/v1/broadcasts",
            post(broadcasts::create::<S>).get(broadcasts::list::<S>),
        )
        .route("/v1/broadcasts/{id}", get(broadcasts::get::<S>))
        .route("/v1/broadcasts/{id}/retry", post(broadcasts::retry::<S>))
        .route("/v1/broadcasts/{id}/cancel", post(broadcasts::cancel::<S>))
        .route("/v1/broadcasts/{id}/events", get(live::broadcast_events::<S>))
        .route("/v1/events", get(live::all_events::<S>))
        .route("/v1/destinations", get(ops::destinations::<S>))
        .route(
            "/v1/destinations/{name}/pause",
            post(pause::pause::<S>),
        )
        .route(
            "/v1/destinations/{name}/resume",
            post(pause::resume::<S>),
        )
        .route("/v1/config/reload", post(reload::reload_route::<S>))
        .route("/v1/preview", post(preview::preview::<S>))
        .route(
            "/v1/broadcasts/{id}/preview",
            get(preview::broadcast_preview::<S>),
        )
        .route(
            "/v1/ingest/alertmanager",
            // Its own limit: Alertmanager sends whole groups (a 1,000-alert
            // group is about 1 MB) and never retries a 413.
            post(alertmanager::ingest::<S>).layer(DefaultBodyLimit::max(alertmanager_body_limit)),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz::<S>))
        .route("/metrics", get(ops::metrics::<S>))
        .route("/openapi.json", get(ops::openapi))
        .merge(console::router::<S>())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |request: Request, next: Next| async move {
            // Bounds the time to the response head; an event stream's body
            // is not limited by it.
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request took longer than server.request_timeout_ms; if it created something, \
                     retry with the same Idempotency-Key",
                )
                .into_response(),
            }
        }))
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
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
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

/// The body, or why it could not be read (over the size limit, cut off).
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
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
    })
}

/// Reads a JSON body into `T`; every failure names the field and the reason.
fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    parse_json_bytes(&read_body(body)?)
}

fn parse_json_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    };
    if let Some(field) = field_with_nul(bytes) {
        return Err(ApiError::invalid(field, crate::domain::NUL_REFUSED));
    }
    // Every JSON body of the API is an object. serde would read a struct
    // from an array of its fields in order (`[]` is an empty retry), which
    // the OpenAPI document does not allow, so the server does not either.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(malformed)?;
        let kind = match value {
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Null => "null",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "body_not_object",
            message: format!("the request body must be a JSON object ({{...}}), not {kind}"),
            // "." is the root, as for a NUL in a top-level string.
            field: Some(".".to_owned()),
        });
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let request: T = serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
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
    // Anything after the value (a second object, garbage) is refused too.
    deserializer.end().map_err(malformed)?;
    Ok(request)
}

/// The path (`alerts[0].labels.instance`) of the first JSON string, key or
/// value, that holds U+0000, which no PostgreSQL text column can store:
/// refused on both stores alike. A raw scan for the escape keeps the
/// common case to one pass over the bytes.
fn field_with_nul(bytes: &[u8]) -> Option<String> {
    let escaped_nul = bytes.windows(6).enumerate().any(|(at, window)| {
        window == b"\\u0000"
            && bytes[..at]
                .iter()
                .rev()
                .take_while(|b| **b == b'\\')
                .count()
                % 2
                == 0
    });
    if !escaped_nul {
        return None;
    }
    fn find(value: &serde_json::Value, path: &str) -> Option<String> {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            serde_json::Value::String(text) if text.contains('\0') => Some(path.to_owned()),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| find(item, &format!("{path}[{i}]"))),
            serde_json::Value::Object(map) => map.iter().find_map(|(key, item)| {
                if key.contains('\0') {
                    Some(join(&key.replace('\0', "\\u0000")))
                } else {
                    find(item, &join(key))
                }
            }),
            _ => None,
        }
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    find(&value, "").map(|path| {
        if path.is_empty() {
            ".".to_owned()
        } else {
            path
        }
    })
}
