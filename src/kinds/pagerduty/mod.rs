//! PagerDuty Events v2: trigger and resolve by `dedup_key`.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the Events v2 emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::PagerDutyConnector {
    /// The connector of a PagerDuty target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::PagerDutyConnector>> {
        let Target::PagerDuty {
            events_url,
            routing_key,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::PagerDutyConnector::new(
            events_url.clone(),
            routing_key.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::PagerDuty {
    type Stats = mock::PagerDutyStats;

    fn serves(path: &str) -> bool {
        path.starts_with(mock::PREFIX)
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        _: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission)
    }

    fn counted(&self) -> mock::PagerDutyStats {
        self.stats()
    }
}
