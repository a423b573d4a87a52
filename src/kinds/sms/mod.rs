//! SMS through Twilio's Messages API: one message per recipient, no
//! threads (each message names its incident), read back by listing the
//! recipient's messages.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the Messages API emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::SmsConnector {
    /// The connector of an SMS target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::SmsConnector>> {
        let Target::Sms {
            api_url,
            account_sid,
            auth_token,
            from,
            to,
            text_chars_max,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::SmsConnector::new(
            api_url.clone(),
            account_sid.clone(),
            auth_token.clone(),
            from.clone(),
            to.clone(),
            *text_chars_max,
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Twilio {
    type Stats = mock::SmsStats;

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

    fn counted(&self) -> mock::SmsStats {
        self.stats()
    }
}
