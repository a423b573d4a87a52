//! Telegram through the Bot API: `sendMessage`, a thread's updates as
//! replies to its first message, the resolve an `editMessageText` of it;
//! no read-back exists.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the Bot API emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::TelegramConnector {
    /// The connector of a Telegram target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::TelegramConnector>> {
        let Target::Telegram {
            api_url,
            token,
            chat_id,
            message_thread_id,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::TelegramConnector::new(
            api_url.clone(),
            token.clone(),
            chat_id.clone(),
            *message_thread_id,
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Telegram {
    type Stats = mock::TelegramStats;

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

    fn counted(&self) -> mock::TelegramStats {
        self.stats()
    }
}
