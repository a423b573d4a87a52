//! Microsoft Teams through a workflow webhook ("post to a channel when a
//! webhook request is received"): the message is an Adaptive Card 1.5 in the
//! `attachments` envelope, and 202 means accepted. A workflow has no message
//! id and no read-back, so an ambiguous outcome is sent again and the
//! delivery is flagged `possible_duplicate`. A thread's updates are new
//! cards that name the incident.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::Value;

use crate::connector::http::{exchange, status_class};
use crate::connector::shared::{parse_retry_after_ms, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::{Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

pub struct TeamsConnector {
    client: reqwest::Client,
    url: reqwest::Url,
    rendering: Rendering,
}

/// The workflow's outcome classes, from the status line.
pub fn classify_teams_response(status: u16, retry_after: Option<&str>, now_ms: i64) -> Outcome {
    let class = status_class(status);
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    if matches!(class, OutcomeClass::RateLimited | OutcomeClass::Retryable) {
        outcome.retry_after_ms = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms));
    }
    if class != OutcomeClass::Success {
        outcome.error = Some(match status {
            400 => "HTTP 400: the workflow refused the card".to_owned(),
            401 | 403 => format!("HTTP {status}: the workflow URL's signature is not accepted"),
            404 => "HTTP 404: the workflow does not exist (deleted or turned off)".to_owned(),
            429 => "HTTP 429: the workflow is throttled".to_owned(),
            _ => format!("HTTP {status} from the workflow"),
        });
    }
    outcome
}

/// Teams' default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Teams' default template.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The request body with the default template and no mention: one
/// Adaptive Card (1.5) in the message envelope.
pub fn teams_card_message(delivery: &ClaimedDelivery) -> Value {
    render_card_message(&Rendering::default(), delivery)
        .expect("the default template renders every valid message")
}

/// The request body from the destination's template. A workflow takes
/// the whole message; nothing in it is herald's protocol (a workflow has
/// no idempotency key and no thread to attach to).
pub fn render_card_message(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<Value, TemplateError> {
    let body = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    if !body.is_object() {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (the workflow's message)".into(),
        });
    }
    Ok(body)
}

impl TeamsConnector {
    pub fn new(
        url: reqwest::Url,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<TeamsConnector> {
        Ok(TeamsConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            url,
            rendering,
        })
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let body = match render_card_message(&self.rendering, delivery) {
            Ok(body) => serde_json::to_vec(&body).expect("JSON serialises"),
            Err(error) => return render_failed(&error),
        };
        let request = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(body);
        match exchange(request).await {
            Ok(reply) => {
                let mut outcome =
                    classify_teams_response(reply.status, reply.header("retry-after"), now_ms);
                outcome.excerpt = reply.excerpt();
                outcome
            }
            Err(outcome) => outcome,
        }
    }

    /// A workflow cannot be read back: the next send may show the card twice.
    pub async fn verify(&self, _delivery: &ClaimedDelivery) -> VerifyReport {
        VerifyReport::unknown(
            "a Teams workflow cannot be read back; posting again, which may show the card twice",
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_answers_map_to_outcome_classes() {
        assert_eq!(
            classify_teams_response(202, None, 0).class,
            OutcomeClass::Success
        );
        let limited = classify_teams_response(429, Some("5"), 0);
        assert_eq!(limited.class, OutcomeClass::RateLimited);
        assert_eq!(limited.retry_after_ms, Some(5_000));
        assert_eq!(
            classify_teams_response(502, None, 0).class,
            OutcomeClass::Retryable
        );
        let gone = classify_teams_response(404, None, 0);
        assert_eq!(gone.class, OutcomeClass::Permanent);
        assert!(gone.error.unwrap().contains("does not exist"));
        assert_eq!(
            classify_teams_response(400, None, 0).class,
            OutcomeClass::Permanent
        );
    }
}
