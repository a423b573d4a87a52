//! Microsoft Teams: an Adaptive Card posted to a Power Automate workflow
//! webhook (no threads, no read-back).
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the workflow webhook emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::TeamsConnector {
    /// The connector of a Teams target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::TeamsConnector>> {
        let Target::Teams { url, rendering } = target else {
            return None;
        };
        Some(connector::TeamsConnector::new(
            url.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Teams {
    type Stats = mock::TeamsStats;

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

    fn counted(&self) -> mock::TeamsStats {
        self.stats()
    }
}
