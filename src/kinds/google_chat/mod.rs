//! Google Chat through a space's incoming webhook or the Chat API as an
//! app: messages with a request ID and a client-set message ID derived
//! from the delivery's key, so Chat itself folds a re-send; a thread is one
//! Chat thread.
//!
//! - [`connector`]: the message, classification, send, verify (both modes).
//! - [`app`]: the API mode's calls (create, read-back, the resolve's edit).
//! - [`auth`]: the service account's JWT bearer grant and token cache.
//! - [`mock`]: the emulation for `herald mock` (webhook, API, token).

pub mod app;
pub mod auth;
pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;
pub mod pem;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::GoogleChatConnector {
    /// The connector of a Google Chat target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::GoogleChatConnector>> {
        let Target::GoogleChat { mode, rendering } = target else {
            return None;
        };
        Some(connector::GoogleChatConnector::new(
            mode,
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::GoogleChat {
    type Stats = mock::GoogleChatStats;

    fn serves(path: &str) -> bool {
        path.starts_with(mock::ROOT)
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        _: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission)
    }

    fn counted(&self) -> mock::GoogleChatStats {
        self.stats()
    }
}
