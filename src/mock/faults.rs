//! The faults the mock plays, per path or prefix: what the control API
//! (`PUT /_mock/faults`) and the faults file take, and their validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::WebhookSecret;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The first N requests answer 429 with `Retry-After: retry_after_secs`
    /// (at an SMTP mailbox's path: 421, and the connection closes).
    pub rate_limit_first: u32,
    pub retry_after_secs: u64,
    /// The next N requests answer `fail_status` (at an SMTP mailbox's
    /// path, an SMTP reply code: 451, 554, ...).
    pub fail_first: u32,
    pub fail_status: u16,
    /// Slack only: the next N requests answer HTTP 200
    /// `{"ok":false,"error":slack_error}`. For `internal_error` and
    /// `fatal_error` the effect happens first (the message is stored), as it
    /// may on Slack; for other codes nothing is stored.
    pub slack_error_first: u32,
    pub slack_error: Option<String>,
    /// The next N requests are processed (recorded, message stored), then
    /// left unanswered for `drop_hang_ms` (longer than the client's timeout).
    /// At an SMTP mailbox's path the message is held and the connection
    /// closes at once, before the reply to the end of DATA.
    pub drop_first: u32,
    pub drop_hang_ms: u64,
    /// After the phases above, each request fails with this probability.
    pub failure_rate: f64,
    /// After the phases above, each request gets 429 with this probability.
    pub rate_limit_rate: f64,
    /// When set, at most this many requests per clock second are accepted;
    /// the rest get 429 with `Retry-After` until the next second.
    pub rate_limit_per_sec: Option<u32>,
    /// Every answer waits this long.
    pub latency_ms: u64,
    /// Generic webhook only: when set (`whsec_...`), requests must carry a
    /// valid Standard Webhooks signature or get 401.
    pub secret: Option<String>,
    /// Jira only: an issue becomes visible to search this long after it was
    /// created (the value in force for the path of the create request), as
    /// Jira's search is not read-after-write.
    pub search_lag_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit_first: 0,
            retry_after_secs: 1,
            fail_first: 0,
            fail_status: 503,
            slack_error_first: 0,
            slack_error: None,
            drop_first: 0,
            drop_hang_ms: 30_000,
            failure_rate: 0.0,
            rate_limit_rate: 0.0,
            rate_limit_per_sec: None,
            latency_ms: 0,
            secret: None,
            search_lag_ms: 0,
        }
    }
}

impl Faults {
    /// Refuses scripts that would make the counters lie.
    pub fn validate(&self) -> Result<(), String> {
        if !(400..=599).contains(&self.fail_status) || self.fail_status == 429 {
            return Err(format!(
                "fail_status: {} is not a failure status; use 400..599 (rate limits are rate_limit_first/rate_limit_rate)",
                self.fail_status
            ));
        }
        for (name, rate) in [
            ("failure_rate", self.failure_rate),
            ("rate_limit_rate", self.rate_limit_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "{name}: {rate} is not a probability between 0 and 1"
                ));
            }
        }
        if let Some(secret) = &self.secret {
            WebhookSecret::parse(secret).map_err(|reason| format!("secret: {reason}"))?;
        }
        match &self.slack_error {
            Some(code)
                if code.is_empty()
                    || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
            {
                return Err(format!(
                    "slack_error: {code:?} is not a Slack error code (lowercase letters and _, e.g. \"internal_error\")"
                ));
            }
            None if self.slack_error_first > 0 => {
                return Err(
                    "slack_error_first: needs slack_error, the code to answer with".to_owned(),
                );
            }
            _ => {}
        }
        Ok(())
    }
}

pub(super) fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.starts_with("/_mock") {
        return Err(format!(
            "path: {path:?} must start with / and not with /_mock"
        ));
    }
    let star_ok = match path.find('*') {
        None => true,
        Some(at) => at == path.len() - 1 && path.ends_with("/*"),
    };
    if !star_ok {
        return Err(format!(
            "path: {path:?}: a prefix ends in /* and has no other *"
        ));
    }
    Ok(())
}

/// Faults for one path, as the control API takes them:
/// `{"path": "/hooks/x", "faults": {...}}`. A path ending in `/*` is a
/// prefix. Setting faults restarts that path's phases: "the first N" counts
/// from this moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathFaults {
    pub path: String,
    #[serde(default)]
    pub faults: Faults,
}

/// The faults file: `[paths."/hooks/x"]` tables of [`Faults`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsFile {
    #[serde(default)]
    pub paths: BTreeMap<String, Faults>,
}
