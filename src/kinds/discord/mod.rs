//! Discord, in two modes, each an entry of the list of kinds:
//!
//! - a webhook (`url`, optionally a forum channel's): [`connector`] and its
//!   emulation [`mock`];
//! - a bot posting to a channel (`channel_id` and a bot token), with
//!   `nonce` and `enforce_nonce`: [`bot_connector`] and [`bot_mock`].

pub mod bot_connector;
pub mod bot_mock;
pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::DiscordConnector {
    /// The connector of a Discord webhook target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::DiscordConnector>> {
        let Target::Discord {
            url,
            forum,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::DiscordConnector::new(
            url.clone(),
            *forum,
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl bot_connector::DiscordBotConnector {
    /// The connector of a Discord bot target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<bot_connector::DiscordBotConnector>> {
        let Target::DiscordBot {
            api_url,
            channel_id,
            token,
            rendering,
        } = target
        else {
            return None;
        };
        Some(bot_connector::DiscordBotConnector::new(
            api_url.clone(),
            channel_id.clone(),
            token.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Discord {
    type Stats = mock::DiscordStats;

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

    fn counted(&self) -> mock::DiscordStats {
        self.stats()
    }
}

impl Emulation for bot_mock::DiscordBot {
    type Stats = bot_mock::DiscordBotStats;

    fn serves(path: &str) -> bool {
        path.starts_with(bot_mock::PREFIX)
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        _: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission)
    }

    fn counted(&self) -> bot_mock::DiscordBotStats {
        self.stats()
    }
}
