//! Connectors turn a claimed delivery into a request and a response into an
//! [`Outcome`]. They never touch the store; each decides its outcome classes
//! in one function.

pub(crate) mod http;

use std::time::Duration;

use crate::config::Destination;
use crate::domain::{ClaimedDelivery, Outcome, Verification};

// Each kind's requests and classification, where callers and tests have
// always found them.
pub use crate::kinds::discord::bot_connector::{
    discord_create_message_body, discord_nonce, DiscordBotConnector,
};
pub use crate::kinds::discord::connector::{
    classify_discord_response, discord_execute_body, DiscordConnector,
};
pub use crate::kinds::jira::connector::{
    adf_document, classify_jira_response, jira_comment_body, jira_create_body, jira_label,
    JiraConnector,
};
pub use crate::kinds::pagerduty::connector::{
    classify_pagerduty_response, pagerduty_event, PagerDutyConnector,
};
pub use crate::kinds::slack::connector::{
    classify_slack_response, post_message_body, resolve_update_body, SlackConnector,
};
pub use crate::kinds::teams::connector::{
    classify_teams_response, teams_card_message, TeamsConnector,
};
pub use crate::kinds::webhook::connector::{
    classify_webhook_response, sign_webhook, webhook_payload, WebhookConnector,
};

/// What a delivery's message is within its thread, on its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No thread.
    Single,
    /// The first message of a thread here: it creates what the rest attach
    /// to (or the first one never landed).
    Opener,
    /// A later message of the thread: it attaches to `thread_ref`.
    Update,
    /// The message that resolves the thread's incident.
    Resolve,
}

impl Role {
    pub fn of(delivery: &ClaimedDelivery) -> Role {
        let m = &delivery.message;
        if m.resolved() {
            Role::Resolve
        } else if m.thread().is_none() {
            Role::Single
        } else if delivery.thread_ref.is_some() {
            Role::Update
        } else {
            Role::Opener
        }
    }
}

/// The one-line title every connector shows: `[P1] title`, or
/// `[RESOLVED] title` for a resolve.
pub fn headline(delivery: &ClaimedDelivery) -> String {
    let m = &delivery.message;
    if m.resolved() {
        format!("[RESOLVED] {}", m.title())
    } else {
        format!("[{}] {}", m.severity().as_str(), m.title())
    }
}

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

impl VerifyReport {
    /// Nothing could be read back; `resend_may_duplicate` when the
    /// destination cannot deduplicate a re-send by key.
    pub fn unknown(error: impl Into<String>, resend_may_duplicate: bool) -> VerifyReport {
        VerifyReport {
            result: Verification::Unknown,
            resend_may_duplicate,
            http_status: None,
            error: Some(error.into()),
            remote_ref: None,
        }
    }

    /// The read-back found the message; `remote_ref` is what it is there.
    pub fn found(remote_ref: String) -> VerifyReport {
        VerifyReport {
            result: Verification::Found,
            resend_may_duplicate: false,
            http_status: None,
            error: None,
            remote_ref: Some(remote_ref),
        }
    }

    /// The read-back is sure the destination does not have it.
    pub fn absent(error: impl Into<String>) -> VerifyReport {
        VerifyReport {
            result: Verification::Absent,
            resend_may_duplicate: false,
            http_status: None,
            error: Some(error.into()),
            remote_ref: None,
        }
    }

    pub fn with_status(mut self, http_status: Option<u16>) -> VerifyReport {
        self.http_status = http_status;
        self
    }
}

/// Generates [`Connector`] from the list of kinds: one variant per kind,
/// and a `match` per call, so a delivery's send is an enum dispatch (no box,
/// no allocation).
macro_rules! connector_enum {
    ($($variant:ident {
        field: $field:ident,
        connector: $($connector:ident)::+,
        emulation: $($emulation:ident)::+,
        stats: $($stats:ident)::+,
        demo: $demo:ident,
        config: $config:ident $(,)?
    }),* $(,)?) => {
        /// One configured destination's connector.
        pub enum Connector {
            $($variant(crate::kinds::$($connector)::+),)*
        }

        impl Connector {
            pub fn new(destination: &Destination) -> Result<Connector, reqwest::Error> {
                let timeout = Duration::from_millis(destination.timeout_ms);
                let connections = destination.concurrency as usize;
                $(
                    if let Some(connector) = crate::kinds::$($connector)::+::from_target(
                        &destination.target,
                        timeout,
                        connections,
                    ) {
                        return Ok(Connector::$variant(connector?));
                    }
                )*
                unreachable!("every target variant is a kind of the list")
            }

            pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
                match self {
                    $(Connector::$variant(c) => c.send(delivery, now_ms).await,)*
                }
            }

            pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
                match self {
                    $(Connector::$variant(c) => c.verify(delivery).await,)*
                }
            }
        }
    };
}

crate::kinds::with_kinds!(connector_enum);

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
