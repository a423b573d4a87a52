//! Jira (stub, filled in next).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Admission, Incoming};

pub const PREFIX: &str = "/jira/";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JiraStats {
    pub projects: BTreeMap<String, JiraProjectStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JiraProjectStats {
    pub issues: u64,
}

#[derive(Default)]
pub(crate) struct Jira {}

impl Jira {
    pub(crate) fn handle(&mut self, _incoming: &Incoming, _admission: &Admission) -> Response {
        StatusCode::NOT_FOUND.into_response()
    }

    pub(crate) fn stats(&self) -> JiraStats {
        JiraStats::default()
    }
}
