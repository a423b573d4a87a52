//! What every kind's connector shares: a message's role in its thread, the
//! headline, the read-back report, Retry-After parsing and the HTTP client
//! builder. A leaf: it uses no kind, and the kinds' connectors import from
//! it (never through `crate::connector`'s re-exports).

use crate::domain::{ClaimedDelivery, Outcome, OutcomeClass, Verification};

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

/// A resolve's edit of the thread's first message (Slack, Matrix, Google
/// Chat) did not go through: nothing of the resolve was sent yet, so even
/// an ambiguous edit is simply tried again (the edit is the same edit).
/// `doing` names the edit in the error ("marking the first message
/// resolved").
pub fn edit_not_done(mut outcome: Outcome, doing: &str) -> Outcome {
    if outcome.class == OutcomeClass::Ambiguous {
        outcome.class = OutcomeClass::Retryable;
    }
    outcome.error = Some(format!("{doing}: {}", outcome.error.unwrap_or_default()));
    outcome
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
