//! Zulip: a channel (stream), one topic per thread; read back by
//! searching the topic for the delivery's key; the resolve edits the
//! topic's first message.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the REST API emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::ZulipConnector {
    /// The connector of a Zulip target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::ZulipConnector>> {
        let Target::Zulip {
            site_url,
            email,
            api_key,
            stream,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::ZulipConnector::new(
            site_url.clone(),
            email.clone(),
            api_key.clone(),
            stream.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Zulip {
    type Stats = mock::ZulipStats;

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

    fn counted(&self) -> mock::ZulipStats {
        self.stats()
    }
}
