//! PagerDuty Events API v2 (`POST /v2/enqueue`). PagerDuty deduplicates by
//! `dedup_key`, so herald derives one per thread (or per delivery when there
//! is no thread): the thread's messages are one incident, triggered by the
//! first and resolved by the resolve. An ambiguous outcome is simply sent
//! again under the same key: PagerDuty folds it into the same incident.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Secret;
use crate::connector::http::{exchange, status_class};
use crate::connector::shared::{parse_retry_after_ms, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::{Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

pub struct PagerDutyConnector {
    client: reqwest::Client,
    enqueue_url: reqwest::Url,
    routing_key: Secret,
    rendering: Rendering,
}

/// The incident's key: the thread's first delivery's, else derived from the
/// thread, else the delivery's own idempotency key. At most 255 characters
/// (a thread key is at most 128).
pub fn dedup_key(delivery: &ClaimedDelivery) -> String {
    if let Some(key) = &delivery.thread_ref {
        return key.clone();
    }
    match delivery.message.thread() {
        Some(thread) => format!("herald-thread-{thread}"),
        None => delivery.idempotency_key.clone(),
    }
}

/// PagerDuty's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// PagerDuty's default template.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The event with the default template. See [`render_event`].
pub fn pagerduty_event(delivery: &ClaimedDelivery, routing_key: &str) -> Value {
    render_event(&Rendering::default(), delivery, routing_key)
        .expect("the default template renders every valid message")
}

/// The event herald enqueues: a trigger (the first message and updates,
/// which PagerDuty folds into the open incident) with the payload and
/// links the destination's template renders, or a resolve. The keys that
/// make it idempotent and threaded are set here, after the template.
pub fn render_event(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    routing_key: &str,
) -> Result<Value, TemplateError> {
    let key = dedup_key(delivery);
    if delivery.message.resolved() {
        return Ok(json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": key,
        }));
    }
    let mut event = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(object) = event.as_object_mut() else {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (the event's payload and links)".into(),
        });
    };
    let Some(Value::Object(payload)) = object.get_mut("payload") else {
        return Err(TemplateError {
            line: None,
            reason: "the output must have a payload object (summary, source, severity)".into(),
        });
    };
    match payload.entry("custom_details").or_insert_with(|| json!({})) {
        Value::Object(details) => {
            details.insert("idempotency_key".into(), json!(delivery.idempotency_key));
        }
        _ => {
            return Err(TemplateError {
                line: None,
                reason: "payload.custom_details must be an object".into(),
            })
        }
    }
    object.insert("routing_key".into(), json!(routing_key));
    object.insert("event_action".into(), json!("trigger"));
    object.insert("dedup_key".into(), json!(key));
    object.insert("client".into(), json!("herald"));
    Ok(event)
}

/// PagerDuty's outcome classes: 202 accepted, 400 invalid (permanent), 429
/// throttled, 5xx retryable.
pub fn classify_pagerduty_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let class = status_class(status);
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    let answer: Option<Value> = serde_json::from_slice(body).ok();
    match class {
        OutcomeClass::Success => {
            outcome.remote_ref = answer
                .as_ref()
                .and_then(|a| a.get("dedup_key"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        OutcomeClass::RateLimited | OutcomeClass::Retryable => {
            outcome.retry_after_ms = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms));
            outcome.error = Some(format!("HTTP {status} from PagerDuty"));
        }
        _ => {
            let errors = answer
                .as_ref()
                .and_then(|a| a.get("errors"))
                .and_then(Value::as_array)
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|e| !e.is_empty());
            outcome.error = Some(match (status, errors) {
                (400, Some(errors)) => format!("HTTP 400: PagerDuty refused the event: {errors}"),
                (400, None) => "HTTP 400: PagerDuty refused the event".to_owned(),
                (404, _) => "HTTP 404: check the destination's url".to_owned(),
                _ => format!("HTTP {status} from PagerDuty"),
            });
        }
    }
    outcome
}

impl PagerDutyConnector {
    pub fn new(
        events_url: reqwest::Url,
        routing_key: Secret,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<PagerDutyConnector> {
        let enqueue_url = events_url
            .join("v2/enqueue")
            .expect("a relative path joins the base URL");
        Ok(PagerDutyConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            enqueue_url,
            routing_key,
            rendering,
        })
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let event = match render_event(&self.rendering, delivery, self.routing_key.expose()) {
            Ok(event) => event,
            Err(error) => return render_failed(&error),
        };
        let request = self
            .client
            .post(self.enqueue_url.clone())
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&event).expect("JSON serialises"));
        match exchange(request).await {
            Ok(reply) => {
                let mut outcome = classify_pagerduty_response(
                    reply.status,
                    reply.header("retry-after"),
                    &reply.body,
                    now_ms,
                );
                // Keep the key herald chose when the answer lacks it.
                if outcome.class == OutcomeClass::Success && outcome.remote_ref.is_none() {
                    outcome.remote_ref = Some(dedup_key(delivery));
                }
                outcome.excerpt = reply.excerpt();
                outcome
            }
            Err(outcome) => outcome,
        }
    }

    /// Events cannot be read back, but PagerDuty deduplicates by
    /// `dedup_key`: sending again is safe.
    pub async fn verify(&self, _delivery: &ClaimedDelivery) -> VerifyReport {
        VerifyReport::unknown(
            "PagerDuty events cannot be read back; sending again under the same dedup_key",
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_api_answers_map_to_outcome_classes() {
        let accepted = classify_pagerduty_response(
            202,
            None,
            br#"{"status":"success","message":"Event processed","dedup_key":"srv01/HTTP"}"#,
            0,
        );
        assert_eq!(accepted.class, OutcomeClass::Success);
        assert_eq!(accepted.remote_ref.as_deref(), Some("srv01/HTTP"));

        let invalid = classify_pagerduty_response(
            400,
            None,
            br#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect (should be 32 characters)"]}"#,
            0,
        );
        assert_eq!(invalid.class, OutcomeClass::Permanent);
        assert!(invalid.error.unwrap().contains("routing_key"));

        let throttled = classify_pagerduty_response(429, Some("3"), b"", 0);
        assert_eq!(throttled.class, OutcomeClass::RateLimited);
        assert_eq!(throttled.retry_after_ms, Some(3_000));
        assert_eq!(
            classify_pagerduty_response(503, None, b"", 0).class,
            OutcomeClass::Retryable
        );
    }
}
