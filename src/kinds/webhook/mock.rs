//! The generic webhook receiver, at every path no destination emulation
//! claims. It answers 200 `{"received": true, "duplicate": bool}` and
//! deduplicates by `Idempotency-Key` (falling back to `webhook-id`) the way a
//! well-behaved receiver would; with a `secret` fault it checks Standard
//! Webhooks signatures (401 when wrong).

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::signature::sign_webhook;
use crate::config::WebhookSecret;
use crate::mock::faults::Faults;
use crate::mock::shared::{Admission, Fault, Incoming, PathStats};

/// Distinct keys remembered per path; enough for the benchmarks' bursts.
const KEYS_PER_PATH_MAX: usize = 4_000_000;

#[derive(Default)]
pub(crate) struct Webhook {
    /// Per path: how often each idempotency key was received.
    keys: HashMap<String, HashMap<String, u32>>,
}

impl Webhook {
    pub(crate) fn handle(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        stats: &mut PathStats,
    ) -> Response {
        match &admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", retry_after_secs.to_string())],
                    axum::Json(json!({"error": "rate limited"})),
                )
                    .into_response();
            }
            Fault::Fail { status } => {
                return crate::mock::shared::json(
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    json!({"error": "injected failure"}),
                );
            }
            Fault::BadSignature => {
                return crate::mock::shared::json(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "invalid webhook-signature"}),
                );
            }
            Fault::None | Fault::Drop { .. } | Fault::SlackError { .. } => {}
        }
        let key = incoming
            .header("idempotency-key")
            .or_else(|| incoming.header("webhook-id"))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("(no key, request {})", stats.requests));
        let keys = self.keys.entry(incoming.path.clone()).or_default();
        let duplicate = match keys.get_mut(&key) {
            Some(count) => {
                *count += 1;
                true
            }
            None => {
                if keys.len() < KEYS_PER_PATH_MAX {
                    keys.insert(key, 1);
                }
                false
            }
        };
        if duplicate {
            stats.duplicates += 1;
        } else {
            stats.distinct += 1;
        }
        crate::mock::shared::json(
            StatusCode::OK,
            json!({"received": true, "duplicate": duplicate}),
        )
    }
}

/// True when no secret is set, or the request carries a valid Standard
/// Webhooks signature for it.
pub(crate) fn signature_ok(faults: &Faults, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(secret) = &faults.secret else {
        return true;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    signature_is_valid(
        secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
    )
}

fn signature_is_valid(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
) -> bool {
    let (Ok(secret), Some(id), Some(Ok(timestamp)), Some(signatures)) = (
        WebhookSecret::parse(secret),
        id,
        timestamp.map(str::parse::<i64>),
        signatures,
    ) else {
        return false;
    };
    let expected = sign_webhook(&secret, id, timestamp, body);
    // Constant-time enough for a test double: compare every candidate fully.
    signatures.split(' ').fold(false, |found, candidate| {
        found | (candidate.as_bytes() == expected.as_bytes())
    })
}
