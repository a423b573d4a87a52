//! Jira Cloud: an issue per thread (created with a label that finds it
//! again), comments for updates, a transition to resolve.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the REST v3 emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::JiraConnector {
    /// The connector of a Jira target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::JiraConnector>> {
        let Target::Jira { .. } = target else {
            return None;
        };
        Some(connector::JiraConnector::new(
            target,
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Jira {
    type Stats = mock::JiraStats;

    fn serves(path: &str) -> bool {
        path.starts_with(mock::PREFIX)
    }

    fn accepts_fault_option(option: &str) -> bool {
        option == "search_lag_ms"
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        _: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission)
    }

    fn counted(&self) -> mock::JiraStats {
        self.stats()
    }
}
