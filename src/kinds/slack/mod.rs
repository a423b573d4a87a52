//! Slack: `chat.postMessage` into a channel, threads by `thread_ts`,
//! read-back by `conversations.history`/`conversations.replies`.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the Web API emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::SlackConnector {
    /// The connector of a Slack target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::SlackConnector>> {
        let Target::Slack {
            api_url,
            channel,
            token,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::SlackConnector::new(
            api_url.clone(),
            channel.clone(),
            token.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Slack {
    type Stats = mock::SlackStats;

    fn serves(path: &str) -> bool {
        path.starts_with(mock::PREFIX) || path == "/slack"
    }

    fn accepts_fault_option(option: &str) -> bool {
        option == "slack_error"
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        _: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission)
    }

    fn counted(&self) -> mock::SlackStats {
        self.stats()
    }
}
