//! `herald mock`: a separate HTTP server that plays destinations, with
//! scriptable faults and counters of what it actually received, so tests,
//! the demo and benchmarks can count duplicates.
//!
//! For now it plays a generic webhook receiver at any path outside
//! `/_mock/`. It deduplicates by `Idempotency-Key` (falling back to
//! `webhook-id`) the way a well-behaved receiver would.
//!
//! Faults apply per path, in phases over the order of arrival: the first
//! `rate_limit_first` requests get 429 with Retry-After, the next
//! `fail_first` get `fail_status`, the next `drop_first` are recorded as
//! delivered and then never answered (the client times out), and after that
//! each request gets 429 with probability `rate_limit_rate` or fails with
//! probability `failure_rate`. `latency_ms` delays
//! every answer.
//!
//! Control API: `GET /_mock/stats`, `PUT /_mock/faults` (a [`PathFaults`]
//! with its `path`), `POST /_mock/reset`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::WebhookSecret;
use crate::connector::sign_webhook;
use crate::dispatch::now_ms;

/// Request arrival times kept per path (for checking pauses); older ones
/// beyond this are not kept.
const ARRIVALS_KEPT_MAX: usize = 1_000;
/// Distinct keys remembered per path; enough for the benchmarks' bursts.
const KEYS_PER_PATH_MAX: usize = 4_000_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The first N requests answer 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_first: u32,
    pub retry_after_secs: u64,
    /// The next N requests answer `fail_status`.
    pub fail_first: u32,
    pub fail_status: u16,
    /// The next N requests are recorded as delivered, then left unanswered
    /// for `drop_hang_ms` (longer than the client's timeout).
    pub drop_first: u32,
    pub drop_hang_ms: u64,
    /// After the phases above, each request fails with this probability.
    pub failure_rate: f64,
    /// After the phases above, each request gets 429 with this probability.
    pub rate_limit_rate: f64,
    /// When set, at most this many requests per clock second are accepted;
    /// the rest get 429 with `Retry-After` until the next second.
    pub rate_limit_per_sec: Option<u32>,
    /// Every answer waits this long.
    pub latency_ms: u64,
    /// When set (`whsec_...`), requests must carry a valid Standard Webhooks
    /// signature or get 401.
    pub secret: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit_first: 0,
            retry_after_secs: 1,
            fail_first: 0,
            fail_status: 503,
            drop_first: 0,
            drop_hang_ms: 30_000,
            failure_rate: 0.0,
            rate_limit_rate: 0.0,
            rate_limit_per_sec: None,
            latency_ms: 0,
            secret: None,
        }
    }
}

impl Faults {
    /// Refuses scripts that would make the counters lie.
    pub fn validate(&self) -> Result<(), String> {
        if !(400..=599).contains(&self.fail_status) || self.fail_status == 429 {
            return Err(format!(
                "fail_status: {} is not a failure status; use 400..599 (rate limits are rate_limit_first/rate_limit_rate)",
                self.fail_status
            ));
        }
        for (name, rate) in [
            ("failure_rate", self.failure_rate),
            ("rate_limit_rate", self.rate_limit_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "{name}: {rate} is not a probability between 0 and 1"
                ));
            }
        }
        if let Some(secret) = &self.secret {
            WebhookSecret::parse(secret).map_err(|reason| format!("secret: {reason}"))?;
        }
        Ok(())
    }
}

fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.starts_with("/_mock") {
        return Err(format!(
            "path: {path:?} must start with / and not with /_mock"
        ));
    }
    Ok(())
}

/// Faults for one path, as the control API takes them:
/// `{"path": "/hooks/x", "faults": {...}}`. Setting faults restarts the
/// path's phases: "the first N" counts from this moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathFaults {
    pub path: String,
    #[serde(default)]
    pub faults: Faults,
}

/// The faults file: `[paths."/hooks/x"]` tables of [`Faults`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsFile {
    #[serde(default)]
    pub paths: BTreeMap<String, Faults>,
}

impl FaultsFile {
    pub fn load(path: &Path) -> Result<FaultsFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: FaultsFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (name, faults) in &file.paths {
            validate_path(name)
                .and_then(|()| faults.validate())
                .map_err(|reason| format!("{}: paths.{name:?}.{reason}", path.display()))?;
        }
        Ok(file)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PathStats {
    /// Every request that reached the path, faulted or not.
    pub requests: u64,
    /// Requests recorded as delivered (accepted, duplicates and drops).
    pub receipts: u64,
    /// Distinct idempotency keys recorded.
    pub distinct: u64,
    /// Receipts whose key had been recorded before.
    pub duplicates: u64,
    pub rate_limited: u64,
    pub failed: u64,
    pub dropped: u64,
    pub bad_signature: u64,
    /// Arrival times (ms since the epoch) of the first requests.
    pub arrivals_ms: Vec<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    pub paths: BTreeMap<String, PathStats>,
}

impl MockStats {
    pub fn path(&self, path: &str) -> PathStats {
        self.paths.get(path).cloned().unwrap_or_default()
    }
}

#[derive(Default)]
struct PathState {
    faults: Faults,
    /// Requests before the faults were set; phases count after these.
    phase_origin: u64,
    /// The clock second being counted for `rate_limit_per_sec`, and its count.
    window: (i64, u32),
    stats: PathStats,
    keys: HashMap<String, u32>,
}

#[derive(Default)]
struct MockState {
    paths: Mutex<HashMap<String, PathState>>,
}

enum Action {
    RateLimit(u64),
    Fail(u16),
    Drop(u64),
    Accept { duplicate: bool },
    BadSignature,
}

impl MockState {
    fn set_faults(&self, path: &str, faults: Faults) {
        let mut paths = self.paths.lock().expect("mock state poisoned");
        let state = paths.entry(path.to_owned()).or_default();
        state.faults = faults;
        state.phase_origin = state.stats.requests;
    }

    fn stats(&self) -> MockStats {
        let paths = self.paths.lock().expect("mock state poisoned");
        MockStats {
            paths: paths
                .iter()
                .filter(|(_, p)| p.stats.requests > 0)
                .map(|(path, p)| (path.clone(), p.stats.clone()))
                .collect(),
        }
    }

    /// Decides what to do with one request; holds the lock only for that.
    fn admit(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> (Action, u64) {
        let mut paths = self.paths.lock().expect("mock state poisoned");
        let state = paths.entry(path.to_owned()).or_default();
        state.stats.requests += 1;
        if state.stats.arrivals_ms.len() < ARRIVALS_KEPT_MAX {
            state.stats.arrivals_ms.push(now_ms());
        }
        let n = state.stats.requests - state.phase_origin;
        let f = &state.faults;
        let latency_ms = f.latency_ms;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(secret) = &f.secret {
            if !signature_is_valid(
                secret,
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                body,
            ) {
                state.stats.bad_signature += 1;
                return (Action::BadSignature, latency_ms);
            }
        }
        let rate_limit_end = u64::from(f.rate_limit_first);
        let fail_end = rate_limit_end + u64::from(f.fail_first);
        let drop_end = fail_end + u64::from(f.drop_first);
        if n <= rate_limit_end {
            state.stats.rate_limited += 1;
            return (Action::RateLimit(f.retry_after_secs), latency_ms);
        }
        if let Some(limit) = f.rate_limit_per_sec {
            let second = now_ms().div_euclid(1000);
            if state.window.0 != second {
                state.window = (second, 0);
            }
            if state.window.1 >= limit {
                state.stats.rate_limited += 1;
                return (Action::RateLimit(1), latency_ms);
            }
            state.window.1 += 1;
        }
        let random_rate_limit = n > drop_end
            && f.rate_limit_rate > 0.0
            && rand::rng().random_bool(f.rate_limit_rate.clamp(0.0, 1.0));
        if random_rate_limit {
            state.stats.rate_limited += 1;
            return (Action::RateLimit(f.retry_after_secs), latency_ms);
        }
        let random_failure = n > drop_end
            && f.failure_rate > 0.0
            && rand::rng().random_bool(f.failure_rate.clamp(0.0, 1.0));
        if n <= fail_end || random_failure {
            state.stats.failed += 1;
            return (Action::Fail(f.fail_status), latency_ms);
        }
        let drop_response = n <= drop_end;
        let key = header("idempotency-key")
            .or_else(|| header("webhook-id"))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("(no key, request {n})"));
        state.stats.receipts += 1;
        let duplicate = match state.keys.get_mut(&key) {
            Some(count) => {
                *count += 1;
                true
            }
            None => {
                if state.keys.len() < KEYS_PER_PATH_MAX {
                    state.keys.insert(key, 1);
                }
                false
            }
        };
        if duplicate {
            state.stats.duplicates += 1;
        } else {
            state.stats.distinct += 1;
        }
        if drop_response {
            state.stats.dropped += 1;
            (Action::Drop(f.drop_hang_ms), latency_ms)
        } else {
            (Action::Accept { duplicate }, latency_ms)
        }
    }
}

fn signature_is_valid(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
) -> bool {
    let (Ok(secret), Some(id), Some(Ok(timestamp)), Some(signatures)) = (
        WebhookSecret::parse(secret),
        id,
        timestamp.map(str::parse::<i64>),
        signatures,
    ) else {
        return false;
    };
    let expected = sign_webhook(&secret, id, timestamp, body);
    // Constant-time enough for a test double: compare every candidate fully.
    signatures.split(' ').fold(false, |found, candidate| {
        found | (candidate.as_bytes() == expected.as_bytes())
    })
}

/// The mock's routes; `state` is shared with [`RunningMock`].
fn router(state: Arc<MockState>, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/_mock/stats", get(stats))
        .route("/_mock/faults", put(set_faults))
        .route("/_mock/reset", post(reset))
        .fallback(move |state, uri, headers, body| {
            receive(state, uri, headers, body, shutdown.clone())
        })
        .with_state(state)
}

async fn stats(State(state): State<Arc<MockState>>) -> Json<MockStats> {
    Json(state.stats())
}

async fn set_faults(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<PathFaults>(&body)
        .map_err(|e| e.to_string())
        .and_then(|p| {
            validate_path(&p.path)?;
            p.faults.validate()?;
            Ok(p)
        });
    match parsed {
        Ok(p) => {
            state.set_faults(&p.path, p.faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": {"code": "invalid_faults", "message": message, "field": null}})),
        )
            .into_response(),
    }
}

async fn reset(State(state): State<Arc<MockState>>) -> StatusCode {
    state.paths.lock().expect("mock state poisoned").clear();
    StatusCode::NO_CONTENT
}

async fn receive(
    State(state): State<Arc<MockState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    mut shutdown: watch::Receiver<bool>,
) -> Response {
    let (action, latency_ms) = state.admit(uri.path(), &headers, &body);
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    match action {
        Action::RateLimit(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            Json(serde_json::json!({"error": "rate limited"})),
        )
            .into_response(),
        Action::Fail(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Json(serde_json::json!({"error": "injected failure"})),
        )
            .into_response(),
        Action::BadSignature => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "invalid webhook-signature"})),
        )
            .into_response(),
        Action::Drop(hang_ms) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(hang_ms)) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            (StatusCode::OK, Json(serde_json::json!({"received": true}))).into_response()
        }
        Action::Accept { duplicate } => (
            StatusCode::OK,
            Json(serde_json::json!({"received": true, "duplicate": duplicate})),
        )
            .into_response(),
    }
}

pub struct RunningMock {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningMock {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stats(&self) -> MockStats {
        self.state.stats()
    }

    pub fn set_faults(&self, path: &str, faults: Faults) {
        self.state.set_faults(path, faults);
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

pub fn start(listener: TcpListener, faults: FaultsFile) -> Result<RunningMock, std::io::Error> {
    let addr = listener.local_addr()?;
    let state = Arc::new(MockState::default());
    for (path, f) in faults.paths {
        state.set_faults(&path, f);
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let app = router(state.clone(), shutdown_rx.clone());
    let mut stop = shutdown_rx;
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(error) = serve.await {
            tracing::error!(%error, "mock server stopped");
        }
    });
    Ok(RunningMock {
        addr,
        state,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_faults_file_is_valid() {
        let file: FaultsFile = toml::from_str(include_str!("../mock-faults.example.toml")).unwrap();
        assert_eq!(file.paths["/hooks/flaky"].fail_first, 3);
        assert_eq!(file.paths["/hooks/flaky"].fail_status, 503);
        assert_eq!(file.paths["/hooks/ops"].retry_after_secs, 2);
    }

    #[test]
    fn nonsense_faults_are_refused() {
        assert!(Faults {
            fail_status: 200,
            ..Faults::default()
        }
        .validate()
        .is_err());
        assert!(Faults {
            failure_rate: 1.5,
            ..Faults::default()
        }
        .validate()
        .is_err());
        assert!(serde_json::from_str::<PathFaults>(r#"{"path": "/a", "fail_frist": 3}"#).is_err());
        assert!(validate_path("/_mock/stats").is_err());
    }

    #[test]
    fn faults_apply_in_phases_and_receipts_deduplicate_by_key() {
        let state = MockState::default();
        state.set_faults(
            "/h",
            Faults {
                rate_limit_first: 1,
                fail_first: 1,
                drop_first: 1,
                ..Faults::default()
            },
        );
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", "k1".parse().unwrap());
        let kinds: Vec<&str> = (0..5)
            .map(|_| match state.admit("/h", &headers, b"{}").0 {
                Action::RateLimit(_) => "429",
                Action::Fail(_) => "fail",
                Action::Drop(_) => "drop",
                Action::Accept { duplicate: false } => "new",
                Action::Accept { duplicate: true } => "dup",
                Action::BadSignature => "401",
            })
            .collect();
        assert_eq!(kinds, ["429", "fail", "drop", "dup", "dup"]);
        // Faults set later count from that moment.
        state.set_faults(
            "/h",
            Faults {
                fail_first: 1,
                ..Faults::default()
            },
        );
        assert!(matches!(
            state.admit("/h", &headers, b"{}").0,
            Action::Fail(503)
        ));
        assert!(matches!(
            state.admit("/h", &headers, b"{}").0,
            Action::Accept { duplicate: true }
        ));
        let stats = state.stats().path("/h");
        assert_eq!(
            (
                stats.requests,
                stats.receipts,
                stats.distinct,
                stats.duplicates
            ),
            (7, 4, 1, 3)
        );
    }
}
