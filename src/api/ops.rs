//! Operating herald: health, readiness, destinations, metrics, OpenAPI.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::authorize;
use super::wire::DestinationHealth;
use super::{ApiError, AppState};
use crate::config::Scope;
use crate::dispatch::now_ms;
use crate::domain::format_rfc3339_ms;
use crate::metrics;
use crate::store::Store;

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers.
pub(super) async fn readyz<S: Store>(
    State(app): State<Arc<AppState<S>>>,
) -> Result<&'static str, ApiError> {
    app.store.ping().await.map_err(|error| {
        tracing::warn!(%error, "not ready: the database does not answer");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the database does not answer",
        )
    })?;
    Ok("ready\n")
}

pub(super) async fn destinations<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<DestinationHealth>>, ApiError> {
    authorize(&app.config, &headers, Scope::Read)?;
    let backlog = app.store.backlog().await?;
    let list = app
        .config
        .destinations
        .iter()
        .filter_map(|d| {
            let health = app.dispatcher.health(&d.name)?;
            let waiting = backlog.iter().find(|b| b.destination == d.name);
            Some(DestinationHealth {
                name: d.name.clone(),
                kind: health.kind.to_owned(),
                concurrency: health.concurrency,
                in_flight: health.in_flight,
                paused_until: health.paused_until_ms.map(format_rfc3339_ms),
                consecutive_failures: health.consecutive_failures,
                circuit: health.circuit.as_str().to_owned(),
                rate_limit_per_sec: health.rate_per_sec,
                backlog: waiting.map(|w| w.unfinished).unwrap_or(0),
                oldest_waiting_since: waiting
                    .and_then(|w| w.oldest_unfinished_since_ms)
                    .map(format_rfc3339_ms),
                last_error: health.last_error,
            })
        })
        .collect();
    Ok(Json(list))
}

pub(super) async fn metrics<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if app.config.metrics_require_token {
        authorize(&app.config, &headers, Scope::Read)?;
    }
    let backlog = app.store.backlog().await?;
    let now = now_ms();
    let mut out = String::with_capacity(8 * 1024);
    metrics::render_counter(
        &mut out,
        "herald_broadcasts_accepted_total",
        "Broadcasts accepted by the API since start.",
        app.accepted.load(Ordering::Relaxed),
    );
    metrics::render_gauge_value(
        &mut out,
        "herald_broadcasts_stored",
        "Broadcasts in the database (finished ones go after server.broadcast_retention_secs).",
        app.store.stored_broadcasts().await? as f64,
    );
    metrics::render_destinations(&app.dispatcher.metrics(), &mut out);
    let names: Vec<&str> = app
        .config
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let of = |name: &str| backlog.iter().find(|b| b.destination == name);
    let samples = |f: &dyn Fn(&str) -> f64| names.iter().map(|n| (*n, f(n))).collect::<Vec<_>>();
    metrics::render_gauge(
        &mut out,
        "herald_backlog",
        "Unfinished deliveries, by destination.",
        &samples(&|n| of(n).map(|b| b.unfinished as f64).unwrap_or(0.0)),
    );
    metrics::render_gauge(
        &mut out,
        "herald_oldest_due_age_seconds",
        "How overdue the earliest due delivery is, by destination (0 when none is due).",
        &samples(&|n| {
            of(n)
                .and_then(|b| b.oldest_due_at_ms)
                .map(|due| ((now - due).max(0)) as f64 / 1000.0)
                .unwrap_or(0.0)
        }),
    );
    metrics::render_gauge(
        &mut out,
        "herald_destination_paused",
        "1 while a destination is paused after a 429.",
        &samples(&|n| {
            let paused = app
                .dispatcher
                .health(n)
                .and_then(|h| h.paused_until_ms)
                .is_some();
            f64::from(u8::from(paused))
        }),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

pub(super) async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}
