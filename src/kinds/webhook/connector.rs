//! The generic webhook: POST JSON with `Idempotency-Key` and the Standard
//! Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;

use crate::config::WebhookSecret;
use crate::connector::http::{classify_transport_error, read_excerpt, CONNECT_TIMEOUT_MS_MAX};
use crate::connector::shared::{parse_retry_after_ms, VerifyReport};

pub use super::signature::sign_webhook;
use crate::domain::ClaimedDelivery;
use crate::domain::{format_rfc3339_ms, Field, Link, Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

pub struct WebhookConnector {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Option<WebhookSecret>,
    rendering: Rendering,
}

#[derive(Serialize)]
struct Payload<'a> {
    r#type: &'static str,
    timestamp: String,
    data: PayloadData<'a>,
}

/// What a receiver gets: the shape `schemas/webhook-payload.schema.json`
/// documents (a test checks every kind of message against it). Every field
/// is always present, so a receiver needs no guesswork: `thread` is null
/// outside a thread, `resolved` is false but for the message that closes
/// the thread's incident.
#[derive(Serialize)]
struct PayloadData<'a> {
    broadcast_id: &'a str,
    destination: &'a str,
    title: &'a str,
    body: &'a str,
    /// `P1` (most urgent) to `P5`.
    severity: &'static str,
    /// The incident key: messages of one thread are one incident's updates.
    thread: Option<&'a str>,
    /// This message resolves the thread's incident.
    resolved: bool,
    // The message's details, each only when it has them, so a plain
    // message's payload is what it always was.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "<[Link]>::is_empty")]
    links: &'a [Link],
    #[serde(skip_serializing_if = "<[Field]>::is_empty")]
    fields: &'a [Field],
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a str>,
    /// Who the destination mentions for this severity (first message of a
    /// thread only).
    #[serde(skip_serializing_if = "Option::is_none")]
    mention: Option<&'a str>,
}

/// The webhook's default template (`template.json.j2`): what
/// [`webhook_payload`] writes, for a destination to start its own from.
/// The default is written by serde, not rendered: the webhook is the
/// throughput path, and a test checks both give the same JSON.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// The webhook's default template.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The body sent for a delivery: the destination's own template's output,
/// or the default payload ([`webhook_payload`]). The same bytes are signed
/// and sent.
pub fn render_webhook_body(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<Vec<u8>, TemplateError> {
    match &rendering.template {
        None => Ok(payload_with_mention(
            delivery,
            rendering.mentions.for_delivery(delivery),
        )),
        Some(template) => {
            let body = rendering.render(template, delivery)?;
            Ok(serde_json::to_vec(&body).expect("JSON serialises"))
        }
    }
}

/// The JSON body sent for a delivery. The same bytes are signed and sent.
pub fn webhook_payload(delivery: &ClaimedDelivery) -> Vec<u8> {
    payload_with_mention(delivery, None)
}

fn payload_with_mention(delivery: &ClaimedDelivery, mention: Option<&str>) -> Vec<u8> {
    let m = &delivery.message;
    let details = m.details();
    let payload = Payload {
        r#type: "incident.message",
        timestamp: format_rfc3339_ms(delivery.broadcast_created_at_ms),
        data: PayloadData {
            broadcast_id: &delivery.broadcast_id,
            destination: &delivery.destination,
            title: m.title(),
            body: m.body(),
            severity: m.severity().as_str(),
            thread: m.thread(),
            resolved: m.resolved(),
            labels: &details.labels,
            links: &details.links,
            fields: &details.fields,
            source: details.source.as_deref(),
            summary: details.summary.as_deref(),
            mention,
        },
    };
    serde_json::to_vec(&payload).expect("payload serialises")
}

/// The webhook's outcome classes (DESIGN.md table), from the status line.
pub fn classify_webhook_response(status: u16, retry_after: Option<&str>, now_ms: i64) -> Outcome {
    let class = match status {
        200..=299 => OutcomeClass::Success,
        429 => OutcomeClass::RateLimited,
        // The receiver did not process it: timed out reading it, or another
        // request with the same Idempotency-Key is in progress.
        408 | 409 | 425 => OutcomeClass::Retryable,
        500..=599 => OutcomeClass::Retryable,
        // Redirects are not followed: the URL must be the final one.
        300..=499 => OutcomeClass::Permanent,
        _ => OutcomeClass::Retryable,
    };
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    if matches!(class, OutcomeClass::RateLimited | OutcomeClass::Retryable) {
        outcome.retry_after_ms = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms));
    }
    if class != OutcomeClass::Success {
        outcome.error = Some(match status {
            300..=399 => {
                format!("HTTP {status}: redirects are not followed; configure the final URL")
            }
            401 | 403 => {
                format!("HTTP {status}: the receiver refused our credentials or signature")
            }
            404 | 410 => format!("HTTP {status}: the receiver's URL does not exist"),
            429 => format!("HTTP {status}: rate limited"),
            _ => format!("HTTP {status}"),
        });
    }
    outcome
}

impl WebhookConnector {
    pub fn new(
        url: reqwest::Url,
        secret: Option<WebhookSecret>,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> Result<WebhookConnector, reqwest::Error> {
        let client = crate::connector::http::client(timeout, connections_max)?;
        Ok(WebhookConnector {
            client,
            url,
            secret,
            rendering,
        })
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let body = match render_webhook_body(&self.rendering, delivery) {
            Ok(body) => body,
            Err(error) => return render_failed(&error),
        };
        let id = delivery.idempotency_key.as_str();
        let timestamp_secs = now_ms.div_euclid(1000);
        // Headers by constant names into a map sized for them: the request
        // builder's `.header("name", ..)` parsed and allocated each custom
        // name on every attempt, and grew the map twice.
        let Ok(id_value) = HeaderValue::from_str(id) else {
            let mut outcome = Outcome::new(OutcomeClass::Permanent);
            outcome.error = Some(format!(
                "could not build the request: the idempotency key {id:?} is not a valid header value"
            ));
            return outcome;
        };
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(IDEMPOTENCY_KEY, id_value.clone());
        headers.insert(WEBHOOK_ID, id_value);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp_secs));
        if let Some(secret) = &self.secret {
            let signature = sign_webhook(secret, id, timestamp_secs, &body);
            headers.insert(
                WEBHOOK_SIGNATURE,
                HeaderValue::from_str(&signature).expect("base64 is a valid header value"),
            );
        }
        let mut request = reqwest::Request::new(reqwest::Method::POST, self.url.clone());
        *request.headers_mut() = headers;
        *request.body_mut() = Some(body.into());
        let started = Instant::now();
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(error) => return classify_transport_error(&error),
        };
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status().as_u16();
        let mut outcome = classify_webhook_response(status, retry_after.as_deref(), now_ms);
        // In a thread, the message's id (its `webhook-id`) is what it
        // created: the thread's later messages then know they are updates
        // (no mention on them). Outside a thread nothing refers to it, and
        // the hot path writes nothing more.
        if outcome.class == OutcomeClass::Success && delivery.message.thread().is_some() {
            outcome.remote_ref = Some(delivery.idempotency_key.clone());
        }
        let deadline = started + Duration::from_millis(CONNECT_TIMEOUT_MS_MAX);
        outcome.excerpt = read_excerpt(response, deadline).await;
        outcome
    }

    /// A generic webhook cannot be read back. A re-send carries the same
    /// `Idempotency-Key` and `webhook-id`, which receivers use to
    /// deduplicate, so it is not counted as a possible duplicate.
    pub async fn verify(&self, _delivery: &ClaimedDelivery) -> VerifyReport {
        VerifyReport::unknown(
            "a webhook cannot be read back, re-sending with the same Idempotency-Key",
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign_webhook(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[tokio::test]
    async fn a_transport_error_never_carries_the_url() {
        use crate::domain::{DeliveryProgress, Message, RetryPolicy, Severity};
        // Nothing listens on port 1: the connect fails. The URL's path is a
        // credential, as with many webhook services.
        let url: reqwest::Url = "http://127.0.0.1:1/hooks/T000/B000/SECRET-PATH-TOKEN"
            .parse()
            .unwrap();
        let connector = WebhookConnector::new(
            url,
            None,
            Rendering::default(),
            Duration::from_millis(500),
            1,
        )
        .unwrap();
        let delivery = ClaimedDelivery {
            delivery_id: 1,
            broadcast_id: "B".into(),
            destination: "d".into(),
            idempotency_key: "B-d".into(),
            progress: DeliveryProgress::new(&RetryPolicy::default(), false, 0),
            message: Message::new("t", "", Severity::P1, None).unwrap(),
            broadcast_created_at_ms: 0,
            last_error: None,
            lease_epoch: 1,
            thread_ref: None,
            remote_ref: None,
        };
        let outcome = connector.send(&delivery, 0).await;
        assert_eq!(outcome.class, OutcomeClass::Retryable);
        let error = outcome.error.unwrap();
        assert!(!error.contains("SECRET-PATH-TOKEN"), "{error}");
        assert!(error.starts_with("could not connect"), "{error}");
    }

    #[test]
    fn the_default_template_writes_what_the_default_payload_is() {
        use crate::domain::{Message, Severity};
        use crate::template::{context, sample_deliveries, Mentions};
        let mut deliveries = sample_deliveries();
        let mut plain = deliveries[0].clone();
        plain.message = Message::new("t \"q\" \\", "", Severity::P4, None).unwrap();
        deliveries.push(plain);
        let mentions = Mentions::parse([("P1", "@oncall")]).unwrap();
        for delivery in &deliveries {
            for mention in [None, mentions.for_delivery(delivery)] {
                let rendered = default_template()
                    .render_json(&context(delivery, mention))
                    .unwrap();
                let written: serde_json::Value =
                    serde_json::from_slice(&payload_with_mention(delivery, mention)).unwrap();
                assert_eq!(rendered, written);
            }
        }
    }

    #[test]
    fn classifies_statuses() {
        let class = |status| classify_webhook_response(status, None, 0).class;
        assert_eq!(class(200), OutcomeClass::Success);
        assert_eq!(class(204), OutcomeClass::Success);
        assert_eq!(class(500), OutcomeClass::Retryable);
        assert_eq!(class(503), OutcomeClass::Retryable);
        assert_eq!(class(429), OutcomeClass::RateLimited);
        for status in [400, 401, 403, 404, 410, 301] {
            assert_eq!(class(status), OutcomeClass::Permanent, "{status}");
        }
        let limited = classify_webhook_response(429, Some("2"), 0);
        assert_eq!(limited.retry_after_ms, Some(2_000));
        assert_eq!(limited.error.as_deref(), Some("HTTP 429: rate limited"));
    }
}
