//! Teams workflow webhook (stub, filled in next).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Admission, Incoming};

pub const PREFIX: &str = "/teams/";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TeamsStats {
    pub paths: BTreeMap<String, TeamsPathStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TeamsPathStats {
    pub cards: u64,
}

#[derive(Default)]
pub(crate) struct Teams {}

impl Teams {
    pub(crate) fn handle(&mut self, _incoming: &Incoming, _admission: &Admission) -> Response {
        StatusCode::NOT_FOUND.into_response()
    }

    pub(crate) fn stats(&self) -> TeamsStats {
        TeamsStats::default()
    }
}
