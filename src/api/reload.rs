//! Live configuration reload, on SIGHUP (see `herald serve`) and on
//! `POST /v1/config/reload`. The file is loaded and validated whole with the
//! loader `serve` uses; if it is invalid nothing changes. Otherwise the
//! destinations (lanes), their policies, the tokens and the Alertmanager
//! routes are swapped; settings fixed at start are reported, not applied.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::auth::authorize;
use super::wire::ReloadAnswer;
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::config::{Config, Scope};
use crate::store::Store;

/// Where the configuration comes from: the file, and what the command line
/// overrides in it (applied again after every load).
pub struct ConfigSource {
    pub path: PathBuf,
    pub overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
}

/// How reloads went, for `/metrics`; one reload at a time.
pub struct Reloads {
    source: OnceLock<ConfigSource>,
    one_at_a_time: tokio::sync::Mutex<()>,
    /// On PostgreSQL a lease must outlast twice the longest timeout.
    lease_ms: OnceLock<u64>,
    /// The API's TLS configuration, when it serves TLS: new connections
    /// take the reloaded certificate.
    tls: OnceLock<Arc<crate::tls::LiveTls>>,
    last_success: AtomicBool,
    last_success_at_ms: AtomicI64,
}

impl Default for Reloads {
    fn default() -> Reloads {
        Reloads::new()
    }
}

impl Reloads {
    /// The configuration loaded at start counts as the first success.
    pub fn new() -> Reloads {
        Reloads {
            source: OnceLock::new(),
            one_at_a_time: tokio::sync::Mutex::new(()),
            lease_ms: OnceLock::new(),
            tls: OnceLock::new(),
            last_success: AtomicBool::new(true),
            last_success_at_ms: AtomicI64::new(now_ms()),
        }
    }

    /// Enables reloads from `source` (a server started without one answers
    /// that it has no file to reload).
    pub fn set_source(&self, source: ConfigSource) {
        let _ = self.source.set(source);
    }

    /// Checks reloaded timeouts against this lease (PostgreSQL).
    pub fn set_lease_ms(&self, lease_ms: u64) {
        let _ = self.lease_ms.set(lease_ms);
    }

    /// Lets a reload give new connections the files' new certificate.
    pub fn set_tls(&self, tls: Arc<crate::tls::LiveTls>) {
        let _ = self.tls.set(tls);
    }

    pub fn last_success(&self) -> bool {
        self.last_success.load(Ordering::SeqCst)
    }

    pub fn last_success_at_ms(&self) -> i64 {
        self.last_success_at_ms.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this server was started without a config file to reload")]
    NoFile,
    #[error("the new configuration is invalid, the running one stays: {0}")]
    Invalid(String),
    #[error(
        "cannot build the HTTP client for a destination, the running configuration stays: {0}"
    )]
    Client(#[from] reqwest::Error),
}

/// Settings read once at start; a reload reports a change of them.
fn keep_fixed_settings(old: &Config, new: &mut Config) -> Vec<String> {
    let mut not_applied = Vec::new();
    let mut fixed = |changed: bool, key: &str| {
        if changed {
            not_applied.push(format!(
                "{key} changed; it takes a restart and was not applied"
            ));
        }
    };
    fixed(old.listen != new.listen, "server.listen");
    // The database setting may hold a password: never printed.
    fixed(old.database != new.database, "server.database");
    fixed(old.node_id != new.node_id, "server.node_id");
    fixed(old.lease_ms != new.lease_ms, "server.lease_ms");
    fixed(
        old.request_body_bytes_max != new.request_body_bytes_max,
        "server.request_body_bytes_max",
    );
    fixed(
        old.request_timeout_ms != new.request_timeout_ms,
        "server.request_timeout_ms",
    );
    fixed(
        old.broadcast_retention_secs != new.broadcast_retention_secs,
        "server.broadcast_retention_secs",
    );
    fixed(
        old.header_read_timeout_ms != new.header_read_timeout_ms,
        "server.header_read_timeout_ms",
    );
    fixed(
        old.idle_timeout_ms != new.idle_timeout_ms,
        "server.idle_timeout_ms",
    );
    fixed(
        old.connections_max != new.connections_max,
        "server.connections_max",
    );
    fixed(old.log_format != new.log_format, "server.log_format");
    // The certificate and key are read again at every reload; turning TLS
    // on or off changes the API's scheme and takes a restart.
    if old.tls.is_some() != new.tls.is_some() {
        fixed(true, "server.tls_cert_file (TLS on or off)");
        new.tls = old.tls.clone();
    }
    // The ingest route's limit as the router applies it.
    let alertmanager_body_max = |config: &Config| {
        config.alertmanager.as_ref().map_or(
            crate::config::DEFAULT_ALERTMANAGER_BODY_BYTES_MAX,
            |routes| routes.request_body_bytes_max,
        )
    };
    let old_alertmanager_body_max = alertmanager_body_max(old);
    fixed(
        old_alertmanager_body_max != alertmanager_body_max(new),
        "alertmanager.request_body_bytes_max",
    );
    new.listen = old.listen;
    new.database = old.database.clone();
    new.node_id = old.node_id.clone();
    new.lease_ms = old.lease_ms;
    new.request_body_bytes_max = old.request_body_bytes_max;
    new.request_timeout_ms = old.request_timeout_ms;
    new.broadcast_retention_secs = old.broadcast_retention_secs;
    new.header_read_timeout_ms = old.header_read_timeout_ms;
    new.idle_timeout_ms = old.idle_timeout_ms;
    new.connections_max = old.connections_max;
    new.log_format = old.log_format;
    if let Some(routes) = new.alertmanager.as_mut() {
        routes.request_body_bytes_max = old_alertmanager_body_max;
    }
    not_applied
}

/// Loads, validates and applies the config file; on any error the running
/// configuration stays, and the gauge says the last reload failed.
pub async fn reload<S: Store>(app: &AppState<S>) -> Result<ReloadAnswer, ReloadError> {
    let _one = app.reloads.one_at_a_time.lock().await;
    let result = apply(app);
    match &result {
        Ok(answer) => {
            app.reloads.last_success.store(true, Ordering::SeqCst);
            app.reloads
                .last_success_at_ms
                .store(now_ms(), Ordering::SeqCst);
            for warning in &answer.not_applied {
                tracing::warn!("configuration reload: {warning}");
            }
            tracing::info!(added = ?answer.added, removed = ?answer.removed, changed = ?answer.changed,
                tokens = answer.tokens, "configuration reloaded");
        }
        Err(error) => {
            app.reloads.last_success.store(false, Ordering::SeqCst);
            tracing::error!(%error, "configuration reload failed");
        }
    }
    result
}

fn apply<S: Store>(app: &AppState<S>) -> Result<ReloadAnswer, ReloadError> {
    let source = app.reloads.source.get().ok_or(ReloadError::NoFile)?;
    let mut new = Config::load(&source.path, |k| std::env::var(k).ok())
        .map_err(|e| ReloadError::Invalid(e.to_string()))?;
    (source.overrides)(&mut new);
    for warning in &new.warnings {
        tracing::warn!("configuration reload: {warning}");
    }
    let old = app.config.load();
    let not_applied = keep_fixed_settings(&old, &mut new);
    if let Some(lease_ms) = app.reloads.lease_ms.get() {
        let longest_timeout_ms = new.destinations.iter().map(|d| d.timeout_ms).max();
        if let Some(timeout_ms) = longest_timeout_ms.filter(|t| lease_ms / 2 < *t) {
            return Err(ReloadError::Invalid(format!(
                "server.lease_ms ({lease_ms} ms) must be at least twice the longest destination timeout ({timeout_ms} ms)"
            )));
        }
    }
    let changes = app.dispatcher.reload(&new.destinations)?;
    app.store.destinations_changed(
        new.destinations
            .iter()
            .map(|d| (d.name.clone(), d.isolation))
            .collect(),
    );
    let answer = ReloadAnswer {
        added: changes.added,
        removed: changes.removed,
        changed: changes.changed,
        tokens: new.tokens.len(),
        not_applied,
    };
    if let (Some(live), Some(tls)) = (app.reloads.tls.get(), &new.tls) {
        live.replace(tls.server_config.clone());
    }
    app.config.store(Arc::new(new));
    Ok(answer)
}

/// `POST /v1/config/reload` (scope `operate`).
pub(super) async fn reload_route<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Json<ReloadAnswer>, ApiError> {
    authorize(&app.config.load(), &headers, Scope::Operate)?;
    reload(&app).await.map(Json).map_err(|error| match error {
        ReloadError::NoFile => {
            ApiError::new(StatusCode::CONFLICT, "no_config_file", error.to_string())
        }
        ReloadError::Invalid(_) | ReloadError::Client(_) => ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_config",
            message: error.to_string(),
            field: Some("config".to_owned()),
        },
    })
}
