//! PagerDuty (stub, filled in next).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Admission, Incoming};

pub const PREFIX: &str = "/pagerduty/";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PagerDutyStats {
    pub incidents: BTreeMap<String, PagerDutyIncidentStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PagerDutyIncidentStats {
    pub status: String,
}

#[derive(Default)]
pub(crate) struct PagerDuty {}

impl PagerDuty {
    pub(crate) fn handle(&mut self, _incoming: &Incoming, _admission: &Admission) -> Response {
        StatusCode::NOT_FOUND.into_response()
    }

    pub(crate) fn stats(&self) -> PagerDutyStats {
        PagerDutyStats::default()
    }
}
