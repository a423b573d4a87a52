//! `herald mock`: a separate HTTP server that plays destinations, with
//! scriptable faults and counters of what it actually received, so tests,
//! the demo and benchmarks can count duplicates.
//!
//! Each destination API is emulated at its own path prefix, with the
//! request and response shapes of the published API descriptions (Slack's
//! Web API OpenAPI, Jira Cloud platform v3, PagerDuty Events v2, Discord's
//! OpenAPI, the Adaptive Card 1.5 schema) and the state a read-back needs:
//!
//! - `/slack/api/<method>`: Slack Web API ([`slack`]).
//! - `/teams/<anything>`: a Teams (Power Automate) workflow webhook
//!   ([`teams`]).
//! - `/jira/rest/api/3/...`: Jira Cloud REST v3 ([`jira`]).
//! - `/pagerduty/v2/enqueue`: PagerDuty Events v2 ([`pagerduty`]).
//! - `/discord/api/webhooks/<id>/<token>...`: Discord webhooks ([`discord`]).
//! - `/discord/api/v10/channels/<id>/messages...`: Discord's bot API for
//!   channel messages, with `nonce` and `enforce_nonce` ([`discord_bot`]).
//! - `/matrix/_matrix/client/v3/rooms/<id>/...`: a Matrix homeserver's
//!   client-server API, sends deduplicated by token and txnId
//!   (`crate::kinds::matrix::mock`).
//! - `/twilio/2010-04-01/Accounts/<sid>/Messages.json`: Twilio's Messages
//!   (create, list, fetch) for `sms` ([`sms`]).
//! - `/google-chat/v1/spaces/<space>/messages...`: Google Chat, a webhook
//!   or the API as an app (create, get, patch), with its token endpoint
//!   `/google-chat/oauth2/token` ([`google_chat`]).
//! - `/telegram/bot<token>/<method>`: the Telegram Bot API ([`telegram`]).
//! - `/zulip/api/v1/messages...`: Zulip's messages ([`zulip`]).
//! - SMTP on its own port, next to the HTTP one (the port after it where
//!   [`bind_pair`] or `herald mock` chose them): an SMTP server with a
//!   mailbox per recipient, whose faults and counters are at the paths
//!   `/smtp/<address>` (`crate::kinds::email::mock`).
//! - every other path outside `/_mock/`: a generic webhook receiver that
//!   deduplicates by `Idempotency-Key` (falling back to `webhook-id`) the way
//!   a well-behaved receiver would ([`webhook`]).
//!
//! Faults are configured per path: a configured path matches exactly, or,
//! when it ends in `/*`, as a prefix (`/jira/rest/api/3/issue/*`). An exact
//! match wins, then the longest prefix; only that one entry applies (entries
//! do not merge). The phases count the requests that
//! matched that configured path (all paths under a prefix together), in
//! order of arrival: the first `rate_limit_first` requests get 429 with
//! Retry-After, the next `fail_first` get `fail_status`, the next
//! `slack_error_first` get Slack's `{"ok":false,"error":slack_error}`, the
//! next `drop_first` are processed (the message is stored, so a read-back
//! finds it) and then never answered (the client times out), and after that
//! each request gets 429 with probability `rate_limit_rate` or fails with
//! probability `failure_rate`. `latency_ms` delays every answer (after the
//! effect). Each destination answers faults in its own error shape.
//!
//! Control API: `GET /_mock/stats` ([`MockStats`]), `PUT /_mock/faults` (a
//! [`PathFaults`] with its `path`), `POST /_mock/reset`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::now_ms;

// What each kind's emulation counts, where callers have always found it.
pub(crate) mod faults;

pub(crate) mod shared;

use crate::kinds::email::mock as email;
use faults::validate_path;
pub use faults::{Faults, FaultsFile, PathFaults};
pub use shared::PathStats;
pub(crate) use shared::{json, Admission, Emulation, Fault, Incoming};

/// Request arrival times kept per path (for checking pauses); older ones
/// beyond this are not kept.
const ARRIVALS_KEPT_MAX: usize = 1_000;

impl MockStats {
    pub fn path(&self, path: &str) -> PathStats {
        self.paths.get(path).cloned().unwrap_or_default()
    }
}

/// Generates, from the list of kinds, the mock's state (one emulation per
/// kind), its statistics and the routing of a request to the first
/// emulation that serves its path.
macro_rules! mock_state {
    ($($variant:ident {
        field: $field:ident,
        connector: $($connector:ident)::+,
        emulation: $($emulation:ident)::+,
        stats: $($stats:ident)::+,
        demo: $demo:ident,
        config: $config:ident $(,)?
    }),* $(,)?) => {
        /// Everything the mock counted. `paths` has every route; the
        /// destination sections count effects (messages, issues, incidents)
        /// so tests can count duplicates.
        #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
        #[serde(default)]
        pub struct MockStats {
            pub paths: BTreeMap<String, PathStats>,
            $(pub $field: crate::kinds::$($stats)::+,)*
        }

        /// True when the emulation serving `path` understands the fault
        /// option `option`.
        pub(super) fn serving_accepts(path: &str, option: &str) -> bool {
            $(
                if <crate::kinds::$($emulation)::+ as Emulation>::serves(path) {
                    return <crate::kinds::$($emulation)::+ as Emulation>::accepts_fault_option(
                        option,
                    );
                }
            )*
            false
        }

        /// The checks of the emulation serving `path` on faults there.
        pub(super) fn serving_checks(path: &str, faults: &Faults) -> Result<(), String> {
            $(
                if <crate::kinds::$($emulation)::+ as Emulation>::serves(path) {
                    return <crate::kinds::$($emulation)::+ as Emulation>::check_faults(faults);
                }
            )*
            Ok(())
        }

        #[derive(Default)]
        struct Inner {
            faults: HashMap<String, FaultEntry>,
            paths: HashMap<String, PathStats>,
            $($field: crate::kinds::$($emulation)::+,)*
        }

        impl Inner {
            /// Runs one request through its emulation; returns the answer
            /// and, for a drop, how long to hang before it.
            fn respond(&mut self, incoming: &Incoming) -> (Response, Option<u64>) {
                $(
                    if <crate::kinds::$($emulation)::+ as Emulation>::serves(&incoming.path) {
                        let admission = self.admit(&incoming.path, incoming.now_ms, |faults| {
                            <crate::kinds::$($emulation)::+ as Emulation>::signature_ok(
                                faults, incoming,
                            )
                        });
                        let (path_stats, hang_ms) =
                            admitted(&mut self.paths, &incoming.path, &admission);
                        let response = self.$field.answer(incoming, &admission, path_stats);
                        return (response, hang_ms);
                    }
                )*
                unreachable!("the generic webhook serves every path")
            }

            fn stats(&self) -> MockStats {
                MockStats {
                    paths: self
                        .paths
                        .iter()
                        .filter(|(_, p)| p.requests > 0)
                        .map(|(path, p)| (path.clone(), p.clone()))
                        .collect(),
                    $($field: self.$field.counted(),)*
                }
            }
        }
    };
}

crate::kinds::with_kinds!(mock_state);

/// Counts an admitted request's receipt when it reaches the emulation;
/// returns its path's counters and, for a drop, how long to hang.
fn admitted<'p>(
    paths: &'p mut HashMap<String, PathStats>,
    path: &str,
    admission: &Admission,
) -> (&'p mut PathStats, Option<u64>) {
    let hang_ms = match admission.fault {
        Fault::Drop { hang_ms } => Some(hang_ms),
        _ => None,
    };
    let reaches_emulation = matches!(
        admission.fault,
        Fault::None | Fault::Drop { .. } | Fault::SlackError { .. }
    );
    let stats = paths.get_mut(path).expect("admit counted the path");
    if reaches_emulation {
        stats.receipts += 1;
    }
    (stats, hang_ms)
}

/// Faults configured for a path (or prefix) and its phase counter.
#[derive(Default)]
struct FaultEntry {
    faults: Faults,
    /// Requests matched since the faults were set.
    matched: u64,
    /// The clock second being counted for `rate_limit_per_sec`, and its count.
    window: (i64, u32),
}

#[derive(Default)]
struct MockState {
    inner: Mutex<Inner>,
}

impl Inner {
    /// The configured entry for `path`: exact match, else the longest
    /// `/*` prefix.
    fn fault_entry(&mut self, path: &str) -> Option<&mut FaultEntry> {
        let key = if self.faults.contains_key(path) {
            path.to_owned()
        } else {
            self.faults
                .keys()
                .filter(|k| k.ends_with("/*") && path.starts_with(&k[..k.len() - 1]))
                .max_by_key(|k| k.len())?
                .clone()
        };
        self.faults.get_mut(&key)
    }

    /// Counts the request and decides its fault. `signature_ok` is asked
    /// first (a bad signature is refused before any phase).
    fn admit(
        &mut self,
        path: &str,
        now_ms: i64,
        signature_ok: impl FnOnce(&Faults) -> bool,
    ) -> Admission {
        let stats = self.paths.entry(path.to_owned()).or_default();
        stats.requests += 1;
        if stats.arrivals_ms.len() < ARRIVALS_KEPT_MAX {
            stats.arrivals_ms.push(now_ms);
        }
        let Some(entry) = self.fault_entry(path) else {
            return Admission {
                fault: Fault::None,
                faults: Faults::default(),
            };
        };
        entry.matched += 1;
        let n = entry.matched;
        let f = &entry.faults;
        let fault = if !signature_ok(f) {
            Fault::BadSignature
        } else {
            let rate_limit_end = u64::from(f.rate_limit_first);
            let fail_end = rate_limit_end + u64::from(f.fail_first);
            let slack_error_end = fail_end + u64::from(f.slack_error_first);
            let drop_end = slack_error_end + u64::from(f.drop_first);
            let per_sec_exceeded = match f.rate_limit_per_sec {
                Some(limit) if n > rate_limit_end => {
                    let second = now_ms.div_euclid(1000);
                    if entry.window.0 != second {
                        entry.window = (second, 0);
                    }
                    let exceeded = entry.window.1 >= limit;
                    if !exceeded {
                        entry.window.1 += 1;
                    }
                    exceeded
                }
                _ => false,
            };
            let random = |rate: f64| n > drop_end && rate > 0.0 && rand::rng().random_bool(rate);
            if n <= rate_limit_end {
                Fault::RateLimit {
                    retry_after_secs: f.retry_after_secs,
                }
            } else if per_sec_exceeded {
                Fault::RateLimit {
                    retry_after_secs: 1,
                }
            } else if random(f.rate_limit_rate) {
                Fault::RateLimit {
                    retry_after_secs: f.retry_after_secs,
                }
            } else if n <= fail_end || random(f.failure_rate) {
                Fault::Fail {
                    status: f.fail_status,
                }
            } else if n <= slack_error_end {
                Fault::SlackError {
                    code: f.slack_error.clone().unwrap_or_default(),
                }
            } else if n <= drop_end {
                Fault::Drop {
                    hang_ms: f.drop_hang_ms,
                }
            } else {
                Fault::None
            }
        };
        let faults = f.clone();
        let stats = self.paths.get_mut(path).expect("counted above");
        match fault {
            Fault::RateLimit { .. } => stats.rate_limited += 1,
            Fault::Fail { .. } => stats.failed += 1,
            Fault::Drop { .. } => stats.dropped += 1,
            Fault::BadSignature => stats.bad_signature += 1,
            Fault::SlackError { .. } | Fault::None => {}
        }
        Admission { fault, faults }
    }
}

impl MockState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mock state poisoned")
    }

    fn set_faults(&self, path: &str, faults: Faults) {
        self.lock().faults.insert(
            path.to_owned(),
            FaultEntry {
                faults,
                ..FaultEntry::default()
            },
        );
    }

    fn stats(&self) -> MockStats {
        self.lock().stats()
    }

    fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

// The checks that need the list of kinds live here, on top of the kinds,
// so `faults.rs` stays a leaf the emulations can use.
impl Faults {
    /// The checks that depend on where the faults apply: destination-only
    /// options are refused elsewhere rather than silently ignored.
    pub(crate) fn validate_for(&self, path: &str) -> Result<(), String> {
        self.validate()?;
        let accepts = |option: &str| serving_accepts(path.trim_end_matches('*'), option);
        if self.slack_error.is_some() && !accepts("slack_error") {
            return Err("slack_error: applies only under /slack/".to_owned());
        }
        if self.secret.is_some() && !accepts("secret") {
            return Err("secret: applies only to generic webhook paths".to_owned());
        }
        if self.search_lag_ms > 0 && !accepts("search_lag_ms") {
            return Err("search_lag_ms: applies only under /jira/".to_owned());
        }
        serving_checks(path.trim_end_matches('*'), self)
    }
}

impl FaultsFile {
    pub fn load(path: &Path) -> Result<FaultsFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: FaultsFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        file.validate()
            .map_err(|reason| format!("{}: {reason}", path.display()))?;
        Ok(file)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, faults) in &self.paths {
            validate_path(name)
                .and_then(|()| faults.validate_for(name))
                .map_err(|reason| format!("paths.{name:?}.{reason}"))?;
        }
        Ok(())
    }
}

/// The mock's routes; `state` is shared with [`RunningMock`].
fn router(state: Arc<MockState>, shutdown: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/_mock/stats", get(stats))
        .route("/_mock/faults", put(set_faults))
        .route("/_mock/reset", post(reset))
        .fallback(move |state, method, uri, headers, body| {
            receive(state, method, uri, headers, body, shutdown.clone())
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
            p.faults.validate_for(&p.path)?;
            Ok(p)
        });
    match parsed {
        Ok(p) => {
            state.set_faults(&p.path, p.faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": {"code": "invalid_faults", "message": message, "field": null}}),
        ),
    }
}

async fn reset(State(state): State<Arc<MockState>>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

async fn receive(
    State(state): State<Arc<MockState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    mut shutdown: watch::Receiver<bool>,
) -> Response {
    let incoming = Incoming {
        method,
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers,
        body,
        now_ms: now_ms(),
    };
    let latency_ms;
    let (response, hang_ms) = {
        let mut inner = state.lock();
        let answer = inner.respond(&incoming);
        latency_ms = inner
            .fault_entry(&incoming.path)
            .map_or(0, |e| e.faults.latency_ms);
        answer
    };
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    if let Some(hang_ms) = hang_ms {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(hang_ms)) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
    response
}

impl email::MailSink for MockState {
    fn login(&self, user: &str, password: &str) -> bool {
        self.lock().email.login(user, password)
    }

    /// A message at the end of DATA is admitted at its first recipient's
    /// path like a request (its faults, its counters), then held.
    fn deliver(&self, mail: email::Mail) -> (email::Verdict, Duration) {
        let now_ms = now_ms();
        let path = email::mailbox_path(mail.rcpt_to.first().map_or("", String::as_str));
        let mut inner = self.lock();
        let admission = inner.admit(&path, now_ms, |_| true);
        let _ = admitted(&mut inner.paths, &path, &admission);
        let verdict = inner.email.receive(&mail, &admission, now_ms);
        let latency_ms = inner.fault_entry(&path).map_or(0, |e| e.faults.latency_ms);
        (verdict, Duration::from_millis(latency_ms))
    }
}

pub struct RunningMock {
    pub addr: SocketAddr,
    /// The SMTP server's address (email destinations at the mock).
    pub smtp_addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    smtp_task: JoinHandle<()>,
}

impl RunningMock {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stats(&self) -> MockStats {
        self.state.stats()
    }

    /// Sets the faults of a path, or of a prefix when `path` ends in `/*`.
    pub fn set_faults(&self, path: &str, faults: Faults) {
        self.state.set_faults(path, faults);
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let _ = self.smtp_task.await;
    }
}

/// How many pairs of ports [`bind_pair`] tries before it gives up.
const PAIR_TRIES_MAX: usize = 50;

/// The port of the SMTP server next to an HTTP port: the one after it.
pub fn smtp_port_next_to(http_port: u16) -> u16 {
    http_port.wrapping_add(1)
}

/// Listeners on `ip` for the HTTP and the SMTP server, on free ports next
/// to each other ([`smtp_port_next_to`]), so a destination at the mock
/// finds its SMTP server from its HTTP address.
pub async fn bind_pair(ip: std::net::IpAddr) -> std::io::Result<(TcpListener, TcpListener)> {
    let mut last_error = None;
    for _ in 0..PAIR_TRIES_MAX {
        let http = TcpListener::bind((ip, 0)).await?;
        let port = smtp_port_next_to(http.local_addr()?.port());
        if port == 0 {
            continue;
        }
        match TcpListener::bind((ip, port)).await {
            Ok(smtp) => return Ok((http, smtp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no pair of free ports")))
}

/// Starts the mock on `listener`, its SMTP server on the port after it
/// when that one is free, else on a free port of the same address
/// ([`RunningMock::smtp_addr`] says which).
pub fn start(listener: TcpListener, faults: FaultsFile) -> Result<RunningMock, std::io::Error> {
    let addr = listener.local_addr()?;
    let next = std::net::TcpListener::bind((addr.ip(), smtp_port_next_to(addr.port())))
        .or_else(|_| std::net::TcpListener::bind((addr.ip(), 0)))?;
    next.set_nonblocking(true)?;
    start_with_smtp(listener, TcpListener::from_std(next)?, faults)
}

/// Starts the mock: its HTTP server on `listener`, its SMTP server on
/// `smtp`.
pub fn start_with_smtp(
    listener: TcpListener,
    smtp: TcpListener,
    faults: FaultsFile,
) -> Result<RunningMock, std::io::Error> {
    let addr = listener.local_addr()?;
    let smtp_addr = smtp.local_addr()?;
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
    let sink: Arc<dyn email::MailSink> = state.clone();
    let smtp_task = tokio::spawn(email::serve(smtp, sink, shutdown.subscribe()));
    Ok(RunningMock {
        addr,
        smtp_addr,
        state,
        shutdown,
        task,
        smtp_task,
    })
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
