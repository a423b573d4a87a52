//! PagerDuty Events API v2, at `POST /pagerduty/v2/enqueue` (the connector's
//! events URL is `<mock>/pagerduty/v2/enqueue`).
//!
//! An event is checked as PagerDuty checks it: `routing_key` (32
//! characters), `event_action` (`trigger`, `acknowledge`, `resolve`),
//! `dedup_key` (required for acknowledge and resolve, at most 255
//! characters), and for a trigger a `payload` with `summary` (at most 1,024
//! characters), `source` and `severity` (`critical`, `error`, `warning`,
//! `info`); `links` need `href`, `images` need `src`. Valid: 202
//! `{"status":"success","message":"Event processed","dedup_key"}` (a
//! trigger without a key gets a generated one); invalid: 400
//! `{"status":"invalid event","message":"Event object is invalid","errors":[..]}`.
//!
//! Incidents are kept by dedup_key, as PagerDuty deduplicates: a trigger for
//! an open (triggered or acknowledged) incident adds to it instead of opening
//! another; a trigger after a resolve opens a new one under the same key;
//! acknowledge and resolve of a key with no open incident are accepted and
//! change nothing (`ignored_events`).
//!
//! Faults: 429 answers `Retry-After` and no body (the description gives its
//! 429 none); a failure answers its status with `{"status","message"}`.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/pagerduty/";
const ENQUEUE_PATH: &str = "/pagerduty/v2/enqueue";

const ROUTING_KEY_CHARS: usize = 32;
const DEDUP_KEY_CHARS_MAX: usize = 255;
const SUMMARY_CHARS_MAX: usize = 1_024;
const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PagerDutyStats {
    /// Valid events accepted (202).
    pub events: u64,
    /// Acknowledges and resolves that found no open incident.
    pub ignored_events: u64,
    /// Incidents by dedup_key.
    pub incidents: BTreeMap<String, PagerDutyIncidentStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PagerDutyIncidentStats {
    /// `triggered`, `acknowledged` or `resolved`.
    pub status: String,
    /// Incidents opened under this key (more than one only after a resolve).
    pub opened: u64,
    /// Every action applied under this key, in order of arrival.
    pub actions: Vec<String>,
    /// The summary of the trigger that opened the current incident.
    pub summary: String,
}

#[derive(Default)]
pub(crate) struct PagerDuty {
    stats: PagerDutyStats,
}

fn invalid(errors: Vec<String>) -> Response {
    crate::mock::shared::json(
        StatusCode::BAD_REQUEST,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

fn generated_dedup_key() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every reason the event is invalid, in PagerDuty's words.
fn validate(event: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let text = |v: &Value| {
        v.as_str()
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
    };
    match text(&event["routing_key"]) {
        None => errors.push("'routing_key' is missing or blank".to_owned()),
        Some(key) if key.chars().count() != ROUTING_KEY_CHARS => errors.push(format!(
            "Length of 'routing_key' is incorrect (should be {ROUTING_KEY_CHARS} characters)"
        )),
        Some(_) => {}
    }
    let action = event["event_action"].as_str();
    if !matches!(action, Some("trigger" | "acknowledge" | "resolve")) {
        errors.push(
            "'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')"
                .to_owned(),
        );
    }
    match &event["dedup_key"] {
        Value::Null => {
            if matches!(action, Some("acknowledge" | "resolve")) {
                errors.push("'dedup_key' is missing or blank".to_owned());
            }
        }
        Value::String(key) if key.trim().is_empty() => {
            errors.push("'dedup_key' is missing or blank".to_owned())
        }
        Value::String(key) if key.chars().count() > DEDUP_KEY_CHARS_MAX => errors.push(format!(
            "Length of 'dedup_key' is too long (should be at most {DEDUP_KEY_CHARS_MAX} characters)"
        )),
        Value::String(_) => {}
        _ => errors.push("'dedup_key' must be a string".to_owned()),
    }
    if action == Some("trigger") {
        let payload = &event["payload"];
        if !payload.is_object() {
            errors.push("'payload' is missing or blank".to_owned());
        } else {
            match text(&payload["summary"]) {
                None => errors.push("'payload.summary' is missing or blank".to_owned()),
                Some(s) if s.chars().count() > SUMMARY_CHARS_MAX => errors.push(format!(
                    "Length of 'payload.summary' is too long (should be at most {SUMMARY_CHARS_MAX} characters)"
                )),
                Some(_) => {}
            }
            if text(&payload["source"]).is_none() {
                errors.push("'payload.source' is missing or blank".to_owned());
            }
            match payload["severity"].as_str() {
                None => errors.push("'payload.severity' is missing or blank".to_owned()),
                Some(s) if !SEVERITIES.contains(&s) => errors.push(
                    "'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')"
                        .to_owned(),
                ),
                Some(_) => {}
            }
            if !payload["custom_details"].is_null() && !payload["custom_details"].is_object() {
                errors.push("'payload.custom_details' must be an object".to_owned());
            }
        }
    }
    for (list, required) in [("links", "href"), ("images", "src")] {
        match &event[list] {
            Value::Null => {}
            Value::Array(items) => {
                if items.iter().any(|item| text(&item[required]).is_none()) {
                    errors.push(format!("'{list}.{required}' is missing or blank"));
                }
            }
            _ => errors.push(format!("'{list}' must be an array")),
        }
    }
    errors
}

impl PagerDuty {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match &admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                // Described without a body.
                let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(*retry_after_secs));
                return response;
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
                let reason = status.canonical_reason().unwrap_or("Error");
                return crate::mock::shared::json(
                    status,
                    json!({"status": "error", "message": reason}),
                );
            }
            _ => {}
        }
        if incoming.path != ENQUEUE_PATH {
            return crate::mock::shared::json(
                StatusCode::NOT_FOUND,
                json!({"status": "Not found", "message": "Not found"}),
            );
        }
        if incoming.method != Method::POST {
            return crate::mock::shared::json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"status": "Method not allowed", "message": "Use POST"}),
            );
        }
        let event: Value = match serde_json::from_slice(&incoming.body) {
            Ok(Value::Object(event)) => Value::Object(event),
            _ => {
                return crate::mock::shared::json(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "status": "Unrecognized object",
                        "message": "Event object format is unrecognized",
                        "errors": ["JSON parse error"],
                    }),
                )
            }
        };
        let errors = validate(&event);
        if !errors.is_empty() {
            return invalid(errors);
        }
        let action = event["event_action"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let dedup_key = event["dedup_key"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(generated_dedup_key);
        self.apply(&dedup_key, &action, &event);
        crate::mock::shared::json(
            StatusCode::ACCEPTED,
            json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
        )
    }

    fn apply(&mut self, dedup_key: &str, action: &str, event: &Value) {
        self.stats.events += 1;
        let open = self
            .stats
            .incidents
            .get(dedup_key)
            .is_some_and(|i| i.status != "resolved");
        if action == "trigger" {
            let incident = self
                .stats
                .incidents
                .entry(dedup_key.to_owned())
                .or_default();
            if !open {
                incident.status = "triggered".to_owned();
                incident.opened += 1;
                incident.summary = event["payload"]["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            incident.actions.push(action.to_owned());
        } else if open {
            let incident = self.stats.incidents.get_mut(dedup_key).expect("open above");
            incident.status = if action == "acknowledge" {
                "acknowledged"
            } else {
                "resolved"
            }
            .to_owned();
            incident.actions.push(action.to_owned());
        } else {
            self.stats.ignored_events += 1;
        }
    }

    pub(crate) fn stats(&self) -> PagerDutyStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::faults::Faults;
    use crate::mock::testing::{Answer, TestMock};

    const ROUTING_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";

    fn enqueue(mock: &TestMock, event: Value) -> Answer {
        mock.send(
            "POST",
            ENQUEUE_PATH,
            &[("content-type", "application/json")],
            &event.to_string(),
        )
    }

    fn trigger(key: Option<&str>) -> Value {
        let mut event = json!({
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "payload": {"summary": "P1 INC-42", "source": "herald", "severity": "critical"},
        });
        if let Some(key) = key {
            event["dedup_key"] = json!(key);
        }
        event
    }

    fn action(action: &str, key: &str) -> Value {
        json!({"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": key})
    }

    #[test]
    fn events_are_checked_as_pagerduty_checks_them() {
        let mock = TestMock::new();
        let cases = [
            (
                json!({"event_action": "trigger"}),
                "'routing_key' is missing or blank",
            ),
            (
                json!({"routing_key": "short", "event_action": "trigger"}),
                "Length of 'routing_key'",
            ),
            (
                json!({"routing_key": ROUTING_KEY, "event_action": "page"}),
                "'event_action' is invalid",
            ),
            (
                json!({"routing_key": ROUTING_KEY, "event_action": "resolve"}),
                "'dedup_key' is missing",
            ),
            (
                json!({"routing_key": ROUTING_KEY, "event_action": "trigger"}),
                "'payload' is missing",
            ),
            (
                json!({"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "k".repeat(256),
                       "payload": {"summary": "s", "source": "h", "severity": "critical"}}),
                "'dedup_key' is too long",
            ),
            (
                json!({"routing_key": ROUTING_KEY, "event_action": "trigger",
                       "payload": {"summary": "s", "source": "h", "severity": "P1"}}),
                "'payload.severity' is invalid",
            ),
            (
                json!({"routing_key": ROUTING_KEY, "event_action": "trigger",
                       "payload": {"summary": "s".repeat(1025), "source": "h", "severity": "info"}}),
                "'payload.summary' is too long",
            ),
        ];
        for (event, expected) in cases {
            let answer = enqueue(&mock, event.clone());
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{event}");
            assert_eq!(answer.body["status"], "invalid event");
            let errors = answer.body["errors"].to_string();
            assert!(
                errors.contains(expected.trim_start_matches("Length of ")),
                "{event}: {errors}"
            );
        }
        let garbage = mock.send("POST", ENQUEUE_PATH, &[], "not json");
        assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
        assert_eq!(mock.stats().pagerduty.events, 0);
    }

    #[test]
    fn incidents_deduplicate_by_key() {
        let mock = TestMock::new();
        let first = enqueue(&mock, trigger(Some("INC-42")));
        assert_eq!(first.status, StatusCode::ACCEPTED);
        assert_eq!(
            first.body,
            json!({"status": "success", "message": "Event processed", "dedup_key": "INC-42"})
        );
        enqueue(&mock, trigger(Some("INC-42")));
        enqueue(&mock, action("acknowledge", "INC-42"));
        enqueue(&mock, action("resolve", "INC-42"));
        enqueue(&mock, action("resolve", "INC-7"));
        enqueue(&mock, trigger(Some("INC-42")));
        let generated = enqueue(&mock, trigger(None));
        let generated_key = generated.body["dedup_key"].as_str().unwrap();
        assert_eq!(generated_key.len(), 32);

        let stats = mock.stats().pagerduty;
        assert_eq!((stats.events, stats.ignored_events), (7, 1));
        let incident = &stats.incidents["INC-42"];
        assert_eq!(incident.status, "triggered");
        assert_eq!(incident.opened, 2);
        assert_eq!(
            incident.actions,
            ["trigger", "trigger", "acknowledge", "resolve", "trigger"]
        );
        assert!(!stats.incidents.contains_key("INC-7"));
        assert_eq!(stats.incidents[generated_key].opened, 1);
    }

    #[test]
    fn faults_answer_in_pagerdutys_shapes() {
        let mock = TestMock::new();
        mock.set_faults(
            ENQUEUE_PATH,
            Faults {
                rate_limit_first: 1,
                fail_first: 1,
                fail_status: 500,
                drop_first: 1,
                ..Faults::default()
            },
        );
        let limited = enqueue(&mock, trigger(Some("k")));
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(limited.text.is_empty(), "a 429 is described without a body");
        assert_eq!(limited.headers["retry-after"], "1");
        let failed = enqueue(&mock, trigger(Some("k")));
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(failed.body["message"].is_string());
        let dropped = enqueue(&mock, trigger(Some("k")));
        assert!(dropped.hang_ms.is_some());
        assert_eq!(mock.stats().pagerduty.incidents["k"].actions, ["trigger"]);
    }
}
