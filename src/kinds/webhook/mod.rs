//! The generic webhook: POST JSON with `Idempotency-Key` and the Standard
//! Webhooks headers.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`signature`]: the Standard Webhooks signature (signed by the
//!   connector, checked by the mock).
//! - [`mock`]: the receiver that deduplicates by key, for `herald mock`;
//!   it serves every path no other kind serves.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;
pub mod signature;

use std::time::Duration;

use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::config::Target;
use crate::mock::faults::Faults;
use crate::mock::shared::{Admission, Emulation, Incoming, PathStats};

impl connector::WebhookConnector {
    /// The connector of a webhook target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::WebhookConnector>> {
        let Target::Webhook {
            url,
            secret,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::WebhookConnector::new(
            url.clone(),
            secret.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

/// The generic webhook's counts live in its paths' counters (`distinct`,
/// `duplicates`); this section is empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookStats {}

impl Emulation for mock::Webhook {
    type Stats = WebhookStats;

    fn serves(_path: &str) -> bool {
        true
    }

    fn signature_ok(faults: &Faults, incoming: &Incoming) -> bool {
        mock::signature_ok(faults, &incoming.headers, &incoming.body)
    }

    fn accepts_fault_option(option: &str) -> bool {
        option == "secret"
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        path_stats: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission, path_stats)
    }

    fn counted(&self) -> WebhookStats {
        WebhookStats {}
    }
}
