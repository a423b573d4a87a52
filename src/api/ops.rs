//! Operating herald: health, readiness, destinations, metrics, OpenAPI.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::authorize;
use super::wire::{DestinationHealth, PauseView};
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::config::Scope;
use crate::domain::format_rfc3339_ms;
use crate::metrics;
use crate::store::{Store, PAUSED_UNTIL_RESUMED_MS};

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database can commit: the store's last commit went
/// through (and it answers), or, after a failed one, a probe commit does.
pub(super) async fn readyz<S: Store>(
    State(app): State<Arc<AppState<S>>>,
) -> Result<&'static str, ApiError> {
    app.store.ping().await.map_err(|error| {
        tracing::debug!(%error, "not ready: the database cannot commit");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the database cannot commit: {error}"),
        )
    })?;
    Ok("ready\n")
}

pub(super) async fn destinations<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<DestinationHealth>>, ApiError> {
    authorize(&app.config.load(), &headers, Scope::Read)?;
    Ok(Json(destination_views(&app).await?))
}

/// Every configured destination, then every removed one that still has
/// unfinished deliveries (held until it is configured again or they are
/// cancelled), with operators' pauses.
pub(super) async fn destination_views<S: Store>(
    app: &AppState<S>,
) -> Result<Vec<DestinationHealth>, ApiError> {
    let config = app.config.load();
    let backlog = app.store.backlog().await?;
    let pauses = app.store.destination_pauses(now_ms()).await?;
    let pause_of = |name: &str| {
        pauses
            .iter()
            .find(|p| p.destination == name)
            .map(|p| PauseView {
                until: (p.until_ms != PAUSED_UNTIL_RESUMED_MS)
                    .then(|| format_rfc3339_ms(p.until_ms)),
                reason: p.reason.clone(),
                paused_by: p.paused_by.clone(),
                paused_at: format_rfc3339_ms(p.paused_at_ms),
            })
    };
    let mut list: Vec<DestinationHealth> = config
        .destinations
        .iter()
        .filter_map(|d| {
            let health = app.dispatcher.health(&d.name)?;
            let waiting = backlog.iter().find(|b| b.destination == d.name);
            let pause = pause_of(&d.name);
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
                last_error_at: health.last_error_at_ms.map(format_rfc3339_ms),
                status: if pause.is_some() { "paused" } else { "active" }.to_owned(),
                pause,
            })
        })
        .collect();
    for held in backlog
        .iter()
        .filter(|b| b.unfinished > 0 && config.destination(&b.destination).is_none())
    {
        list.push(DestinationHealth {
            name: held.destination.clone(),
            kind: "removed".to_owned(),
            concurrency: 0,
            in_flight: 0,
            paused_until: None,
            consecutive_failures: 0,
            circuit: "closed".to_owned(),
            rate_limit_per_sec: None,
            backlog: held.unfinished,
            oldest_waiting_since: held.oldest_unfinished_since_ms.map(format_rfc3339_ms),
            last_error: None,
            last_error_at: None,
            status: "removed".to_owned(),
            pause: pause_of(&held.destination),
        });
    }
    Ok(list)
}

pub(super) async fn metrics<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let config = app.config.load();
    if config.metrics_require_token {
        authorize(&config, &headers, Scope::Read)?;
    }
    let backlog = app.store.backlog().await?;
    let pauses = app.store.destination_pauses(now_ms()).await?;
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
    metrics::render_counter(
        &mut out,
        "herald_log_lines_dropped_total",
        "Log lines dropped because the log queue was full or the write failed.",
        crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed),
    );
    app.objectives.render(&mut out);
    let lane_metrics = app.dispatcher.metrics();
    let lane_metrics: Vec<(&str, &metrics::DestinationMetrics)> = lane_metrics
        .iter()
        .map(|(name, m)| (name.as_str(), &**m))
        .collect();
    metrics::render_destinations(&lane_metrics, &mut out);
    // Removed destinations whose deliveries are held count too.
    let names: Vec<&str> = config
        .destinations
        .iter()
        .map(|d| d.name.as_str())
        .chain(
            backlog
                .iter()
                .filter(|b| b.unfinished > 0 && config.destination(&b.destination).is_none())
                .map(|b| b.destination.as_str()),
        )
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
        "1 while a destination is paused, after a 429 or by an operator.",
        &samples(&|n| {
            let paused = app
                .dispatcher
                .health(n)
                .and_then(|h| h.paused_until_ms)
                .is_some()
                || pauses.iter().any(|p| p.destination == n);
            f64::from(u8::from(paused))
        }),
    );
    metrics::render_gauge(
        &mut out,
        "herald_destination_paused_by_operator",
        "1 while an operator has paused a destination (herald destinations pause).",
        &samples(&|n| f64::from(u8::from(pauses.iter().any(|p| p.destination == n)))),
    );
    metrics::render_plain_gauge(
        &mut out,
        "herald_config_last_reload_success",
        "1 if the last configuration reload succeeded (the one at start counts), 0 if it failed.",
        f64::from(u8::from(app.reloads.last_success())),
    );
    metrics::render_plain_gauge(
        &mut out,
        "herald_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully, in seconds since the epoch.",
        app.reloads.last_success_at_ms() as f64 / 1000.0,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

pub(super) async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}
