//! Discord (stub, filled in next).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Admission, Incoming};

pub const PREFIX: &str = "/discord/";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscordStats {
    pub webhooks: BTreeMap<String, DiscordWebhookStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscordWebhookStats {
    pub messages: u64,
}

#[derive(Default)]
pub(crate) struct Discord {}

impl Discord {
    pub(crate) fn handle(&mut self, _incoming: &Incoming, _admission: &Admission) -> Response {
        StatusCode::NOT_FOUND.into_response()
    }

    pub(crate) fn stats(&self) -> DiscordStats {
        DiscordStats::default()
    }
}
