//! Operators pause and resume a destination (a maintenance window at the
//! destination): `POST /v1/destinations/{name}/pause` and `/resume`, scope
//! `operate`. The pause is stored (SQLite: `destination_pauses`;
//! PostgreSQL: the shared `destination_state`, so it holds on every node)
//! and survives restarts. While it lasts no request leaves for the
//! destination; its deliveries wait durably and go on at its end.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::auth::{authorize, Caller};
use super::ops::destination_views;
use super::wire::{DestinationHealth, PauseRequest};
use super::{parse_json, ApiError, AppState};
use crate::clock::now_ms;
use crate::config::Scope;
use crate::store::{DestinationPause, Store, PAUSED_UNTIL_RESUMED_MS};

/// The longest pause `for` may ask (an open-ended pause has no `for`).
pub const PAUSE_FOR_MS_MAX: i64 = 30 * 24 * 3_600_000;
/// The longest reason kept with a pause.
pub const PAUSE_REASON_CHARS_MAX: usize = 500;

/// `90s`, `15m`, `2h`, `1d` in milliseconds; None when not such a span.
pub fn parse_span_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let number: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(unit_ms).filter(|ms| *ms > 0)
}

fn destination_name(
    app: &AppState<impl Store>,
    name: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|rejection| ApiError::invalid("name", rejection.body_text()))?;
    let config = app.config.load();
    if config.destination(&name).is_none() {
        let known: Vec<&str> = config
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_destination",
            message: format!(
                "unknown destination {name:?}; configured: {}",
                known.join(", ")
            ),
            field: Some("name".to_owned()),
        });
    }
    Ok(name)
}

async fn view_of<S: Store>(app: &AppState<S>, name: &str) -> Result<DestinationHealth, ApiError> {
    destination_views(app)
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_destination", "gone"))
}

pub(super) async fn pause<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DestinationHealth>, ApiError> {
    let Caller { name: caller } = authorize(&app.config.load(), &headers, Scope::Operate)?;
    let name = destination_name(&app, name)?;
    let request: PauseRequest = parse_json(body)?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "say why the destination is paused, for the other operators",
        ));
    }
    if reason.chars().count() > PAUSE_REASON_CHARS_MAX {
        return Err(ApiError::invalid(
            "reason",
            format!("at most {PAUSE_REASON_CHARS_MAX} characters"),
        ));
    }
    let now = now_ms();
    let until_ms = match request.for_.as_deref() {
        None => PAUSED_UNTIL_RESUMED_MS,
        Some(text) => match parse_span_ms(text) {
            Some(ms) if ms <= PAUSE_FOR_MS_MAX => now + ms,
            Some(_) => {
                return Err(ApiError::invalid(
                    "for",
                    "at most 30d; leave it out to pause until resumed",
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "for",
                    format!("{text:?} is not a duration: a whole number and s, m, h or d (90s, 15m, 2h, 1d)"),
                ))
            }
        },
    };
    app.store
        .pause_destination(DestinationPause {
            destination: name.clone(),
            until_ms,
            reason: reason.to_owned(),
            paused_by: caller.clone(),
            paused_at_ms: now,
        })
        .await?;
    app.dispatcher.hold(&name, until_ms);
    tracing::warn!(destination = %name, %caller, reason, until_ms, "destination paused by an operator");
    Ok(Json(view_of(&app, &name).await?))
}

pub(super) async fn resume<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<DestinationHealth>, ApiError> {
    let Caller { name: caller } = authorize(&app.config.load(), &headers, Scope::Operate)?;
    let name = destination_name(&app, name)?;
    let was_paused = app.store.resume_destination(&name, now_ms()).await?;
    app.dispatcher.hold(&name, 0);
    if was_paused {
        tracing::warn!(destination = %name, %caller, "destination resumed by an operator");
    }
    Ok(Json(view_of(&app, &name).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_span_ms("90s"), Some(90_000));
        assert_eq!(parse_span_ms("2h"), Some(7_200_000));
        assert_eq!(parse_span_ms("1d"), Some(86_400_000));
        for bad in [
            "",
            "h",
            "2",
            "2w",
            "-2h",
            "0m",
            "1.5h",
            "99999999999999999d",
        ] {
            assert_eq!(parse_span_ms(bad), None, "{bad}");
        }
    }
}
