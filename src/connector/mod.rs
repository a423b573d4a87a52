//! Connectors turn a claimed delivery into a request and a response into an
//! [`Outcome`]. They never touch the store; each decides its outcome classes
//! in one function.

mod webhook;

use std::time::Duration;

use crate::config::{Destination, Target};
use crate::domain::{Outcome, Verification};
use crate::store::ClaimedDelivery;

pub use webhook::{classify_webhook_response, sign_webhook, webhook_payload, WebhookConnector};

/// What a read-back after an ambiguous outcome found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub result: Verification,
    /// A re-send could duplicate the message (the destination cannot
    /// deduplicate by key).
    pub resend_may_duplicate: bool,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// What the read-back found at the destination (Slack `ts`, Jira key).
    pub remote_ref: Option<String>,
}

/// One configured destination's connector.
pub enum Connector {
    Webhook(WebhookConnector),
}

impl Connector {
    pub fn new(destination: &Destination) -> Result<Connector, reqwest::Error> {
        let timeout = Duration::from_millis(destination.timeout_ms);
        match &destination.target {
            Target::Webhook { url, secret } => Ok(Connector::Webhook(WebhookConnector::new(
                url.clone(),
                secret.clone(),
                timeout,
                destination.concurrency as usize,
            )?)),
        }
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        match self {
            Connector::Webhook(c) => c.send(delivery, now_ms).await,
        }
    }

    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        match self {
            Connector::Webhook(c) => c.verify(delivery).await,
        }
    }
}

/// Every HTTP client herald builds starts here: reqwest is built without a
/// default TLS crypto provider, and herald uses ring.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    // Fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Parses Retry-After: delta seconds or an HTTP date, relative to `now_ms`.
pub fn parse_retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(at_ms.saturating_sub(now_ms).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_http_date() {
        assert_eq!(parse_retry_after_ms("2", 0), Some(2_000));
        let now_ms = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after_ms("Wed, 21 Oct 2015 07:28:30 GMT", now_ms),
            Some(30_000)
        );
        assert_eq!(
            parse_retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now_ms),
            Some(0)
        );
        assert_eq!(parse_retry_after_ms("soon", 0), None);
    }
}
