//! What the mock's central router and every kind's emulation share: the
//! [`Emulation`] trait a kind implements, a request as the emulations see
//! it ([`Incoming`]), the fault chosen for it ([`Admission`]), a path's
//! counters and small helpers (JSON answers, form decoding, UTC dates). A
//! leaf: it uses no kind, and the kinds' emulations import from it (never
//! through `crate::mock`'s re-exports).

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::faults::Faults;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PathStats {
    /// Every request that reached the path, faulted or not.
    pub requests: u64,
    /// Requests recorded as delivered (accepted, duplicates and drops); on
    /// destination routes, requests that reached the emulation.
    pub receipts: u64,
    /// Generic webhook: distinct idempotency keys recorded.
    pub distinct: u64,
    /// Generic webhook: receipts whose key had been recorded before.
    pub duplicates: u64,
    pub rate_limited: u64,
    pub failed: u64,
    pub dropped: u64,
    pub bad_signature: u64,
    /// Arrival times (ms since the epoch) of the first requests.
    pub arrivals_ms: Vec<i64>,
}

/// One destination kind's emulation: its state, the paths it serves, its
/// answers and its counters. Each kind implements it in its folder
/// (`crate::kinds::<kind>`); the mock calls it through the list of kinds.
pub(crate) trait Emulation: Default {
    /// True when this emulation answers `path`.
    fn serves(path: &str) -> bool;

    /// False when the request must be refused for its signature before any
    /// fault phase (only the generic webhook checks one).
    fn signature_ok(_faults: &Faults, _incoming: &Incoming) -> bool {
        true
    }

    /// Answers one admitted request; `path_stats` are the counters of its
    /// path.
    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        path_stats: &mut PathStats,
    ) -> Response;

    /// True when the fault option `option` (a [`Faults`] field that only
    /// some destinations understand) applies to this emulation's paths.
    fn accepts_fault_option(_option: &str) -> bool {
        false
    }

    /// Refuses faults this emulation cannot play at its paths (the SMTP
    /// server takes only SMTP codes as `fail_status`).
    fn check_faults(_faults: &Faults) -> Result<(), String> {
        Ok(())
    }

    type Stats;

    /// What this emulation counted, for `GET /_mock/stats`.
    fn counted(&self) -> Self::Stats;
}

/// The fault chosen for one request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fault {
    None,
    RateLimit { retry_after_secs: u64 },
    Fail { status: u16 },
    SlackError { code: String },
    Drop { hang_ms: u64 },
    BadSignature,
}

/// What the mock's admission of a request decided, with the faults in force.
pub(crate) struct Admission {
    pub fault: Fault,
    pub faults: Faults,
}

/// One request as the emulations see it.
pub(crate) struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub now_ms: i64,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `http://host` as the client addressed us, for `self` links.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.header("host").unwrap_or("localhost"))
    }

    pub fn query_pairs(&self) -> Vec<(String, String)> {
        parse_form(&self.query)
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, Json(value)).into_response()
}

/// Decodes `a=1&b=x%20y` (query strings and form bodies).
pub(crate) fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(year, month, day, hour, minute, second, millisecond)` in UTC.
pub(crate) fn civil_utc(ms: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = crate::domain::civil_from_days(days);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis,
    )
}
