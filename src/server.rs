//! `herald serve`: the store, the dispatcher and the HTTP API in one process.
//! `start` takes a bound listener so tests and the demo bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{router, AppState};
use crate::clock::now_ms;
use crate::config::Config;
use crate::connections::ConnectionLimits;
use crate::dispatch::{Dispatcher, SHUTDOWN_DRAIN_MS};
use crate::store::{AnyStore, PostgresOptions, PostgresStore, SqliteStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reason is in the message, not the error's source chain, so
    /// `{:#}` does not print it twice.
    #[error("cannot open the database {path}: {reason}")]
    Store { path: String, reason: StoreError },
    #[error("cannot build the HTTP client for a destination: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot read the listening address: {0}")]
    Listener(std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// Whether the database setting names a PostgreSQL server.
pub fn is_postgres_url(database: &std::path::Path) -> bool {
    database
        .to_str()
        .is_some_and(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"))
}

/// The database setting without a password, for logs and errors.
pub fn describe_database(database: &std::path::Path) -> String {
    let text = database.display().to_string();
    if !is_postgres_url(database) {
        return text;
    }
    crate::redact::redact_url(&text)
}

/// Opens the store the config names: a SQLite file, or a PostgreSQL
/// database shared with other nodes.
pub async fn open_store(config: &Config) -> Result<AnyStore, ServeError> {
    let store_error = |reason| ServeError::Store {
        path: describe_database(&config.database),
        reason,
    };
    if !is_postgres_url(&config.database) {
        return Ok(AnyStore::Sqlite(
            SqliteStore::open(&config.database).map_err(store_error)?,
        ));
    }
    // Leases are not renewed: one must outlast any attempt with a margin.
    let longest_timeout_ms = config
        .destinations
        .iter()
        .map(|d| d.timeout_ms)
        .max()
        .unwrap_or(0);
    if config.lease_ms < 2 * longest_timeout_ms {
        return Err(ServeError::Config(format!(
            "server.lease_ms ({} ms) must be at least twice the longest destination timeout ({longest_timeout_ms} ms)",
            config.lease_ms
        )));
    }
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let options = PostgresOptions {
        url: config.database.display().to_string(),
        node_id,
        lease_ms: config.lease_ms,
        destinations: config
            .destinations
            .iter()
            .map(|d| (d.name.clone(), d.isolation))
            .collect(),
        take_over_expired_leases: true,
    };
    Ok(AnyStore::Postgres(
        PostgresStore::open(options).await.map_err(store_error)?,
    ))
}

/// A server running on its own tasks. Dropping it does not stop it; call
/// [`RunningServer::stop`].
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    purge: JoinHandle<()>,
    retention: JoinHandle<()>,
    wakeups: Option<JoinHandle<()>>,
    objectives: JoinHandle<()>,
    app: Arc<AppState<AnyStore>>,
}

impl RunningServer {
    /// Lets `reload` (SIGHUP, `POST /v1/config/reload`) read the config
    /// again from `source`.
    pub fn enable_reload(&self, source: crate::api::reload::ConfigSource) {
        self.app.reloads.set_source(source);
    }

    /// Loads, validates and applies the config file again; on an error the
    /// running configuration stays.
    pub async fn reload(
        &self,
    ) -> Result<crate::api::wire::ReloadAnswer, crate::api::reload::ReloadError> {
        crate::api::reload::reload(&self.app).await
    }

    /// Stops taking requests and new work, lets attempts in flight finish
    /// and record their outcome, then returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        let _ = self.dispatcher.await;
        let _ = self.purge.await;
        let _ = self.retention.await;
        let _ = self.objectives.await;
        if let Some(wakeups) = self.wakeups {
            let _ = wakeups.await;
        }
    }
}

pub async fn start(config: Config, listener: TcpListener) -> Result<RunningServer, ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let path = describe_database(&config.database);
    let store_error = |reason| ServeError::Store {
        path: path.clone(),
        reason,
    };
    let store = Arc::new(open_store(&config).await?);
    let recovery = store.recover(now_ms()).await.map_err(store_error)?;
    if recovery.interrupted > 0 || recovery.released > 0 {
        tracing::warn!(
            interrupted = recovery.interrupted,
            released = recovery.released,
            "resumed after an unclean stop: deliveries that were in flight are verified before any re-send"
        );
    }
    for name in store.destinations_with_work().await.map_err(store_error)? {
        if config.destination(&name).is_none() {
            tracing::warn!(destination = %name,
                "unfinished deliveries target a destination that is no longer configured; they wait until it is");
        }
    }
    // A PostgreSQL lease expires: an attempt may hold it through a pause
    // for half of it at most (the attempt itself takes at most the other
    // half, as lease_ms is at least twice the longest timeout).
    let lease_hold_max_ms = match store.as_ref() {
        AnyStore::Postgres(_) => Some(config.lease_ms / 2),
        AnyStore::Sqlite(_) => None,
    };
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        &config.destinations,
        crate::events::EventBus::default(),
        lease_hold_max_ms,
    )?);
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Operators' pauses outlive restarts.
    for pause in store
        .destination_pauses(now_ms())
        .await
        .map_err(store_error)?
    {
        dispatcher.hold(&pause.destination, pause.until_ms);
    }
    let dispatcher_task = tokio::spawn(dispatcher.clone().run(shutdown_rx.clone()));
    let wakeups = match store.as_ref() {
        AnyStore::Postgres(pg) => {
            tracing::info!(node = pg.node_id(), "joined the PostgreSQL cluster");
            Some(tokio::spawn(forward_wakeups(
                pg.wakeups(),
                dispatcher.clone(),
                shutdown_rx.clone(),
            )))
        }
        AnyStore::Sqlite(_) => None,
    };
    if config.tokens.is_empty() {
        tracing::warn!("no [[tokens]] configured: the API is open to anyone who can reach {addr}");
    }
    let retention = tokio::spawn(delete_old_broadcasts(
        store.clone(),
        config.broadcast_retention_secs,
        shutdown_rx.clone(),
    ));
    let open_files_max = raise_open_files_limit();
    let limits = ConnectionLimits {
        header_read_timeout_ms: config.header_read_timeout_ms,
        idle_timeout_ms: config.idle_timeout_ms,
        connections_max: config
            .connections_max
            .unwrap_or_else(|| default_connections_max(open_files_max)),
        drain_ms: SHUTDOWN_DRAIN_MS,
    };
    tracing::info!(
        connections_max = limits.connections_max,
        open_files_max = open_files_max
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unlimited".into()),
        header_read_timeout_ms = limits.header_read_timeout_ms,
        idle_timeout_ms = limits.idle_timeout_ms,
        "connection limits"
    );
    let lease_ms = config.lease_ms;
    let tls = config
        .tls
        .as_ref()
        .map(|tls| Arc::new(crate::tls::LiveTls::new(tls.server_config.clone())));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let app_state = Arc::new(AppState::new(store.clone(), dispatcher, Arc::new(config)));
    if lease_hold_max_ms.is_some() {
        app_state.reloads.set_lease_ms(lease_ms);
    }
    if let Some(tls) = &tls {
        app_state.reloads.set_tls(tls.clone());
    }
    let app = router(app_state.clone());
    let objectives = tokio::spawn(
        crate::dispatch::objectives::ObjectiveWatcher {
            store: store.clone(),
            dispatcher: app_state.dispatcher.clone(),
            signals: app_state.objectives.clone(),
            policy_of: {
                let state = app_state.clone();
                Arc::new(move |name: &str| state.config.load().destination(name).map(|d| d.policy))
            },
            idle_poll_ms: match lease_hold_max_ms {
                Some(_) => crate::dispatch::objectives::OBJECTIVES_IDLE_POLL_MS_SHARED,
                None => crate::dispatch::objectives::OBJECTIVES_IDLE_POLL_MS_SQLITE,
            },
        }
        .run(shutdown_rx.clone()),
    );
    let purge = tokio::spawn(purge_ingest_keys(store.clone(), shutdown_rx.clone()));
    let mut streams_shutdown = shutdown_rx.clone();
    let http_shutdown = shutdown_rx;
    let state = app_state.clone();
    let http = tokio::spawn(async move {
        // At shutdown every event stream sends its last event and ends, so
        // its connection can close within the drain.
        let end_streams = async move {
            if streams_shutdown.wait_for(|stop| *stop).await.is_ok() {
                state.stopping.send_replace(true);
            }
        };
        tokio::join!(
            crate::connections::serve_with_tls(listener, app, limits, tls, http_shutdown),
            end_streams
        );
    });
    tracing::info!(%addr, scheme, database = %path, "herald serving");
    Ok(RunningServer {
        addr,
        shutdown,
        http,
        dispatcher: dispatcher_task,
        purge,
        retention,
        wakeups,
        objectives,
        app: app_state,
    })
}

/// Connections open at once when `server.connections_max` is not set, with
/// no open-file limit.
pub const DEFAULT_CONNECTIONS_MAX_CEILING: usize = 65_536;

/// Half the open files go to connections; the rest stay for the database
/// (SQLite's readers, PostgreSQL's pool), the destinations' HTTP client
/// pools and the log.
pub fn default_connections_max(open_files_max: Option<u64>) -> usize {
    open_files_max
        .map(|n| (n / 2).min(DEFAULT_CONNECTIONS_MAX_CEILING as u64) as usize)
        .unwrap_or(DEFAULT_CONNECTIONS_MAX_CEILING)
        .max(1)
}

/// Raises the soft open-file limit to the hard one (a common soft limit is
/// 1,024, far below what a server needs) and returns the limit now in force
/// (None: unlimited).
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
        if current < maximum {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            if let Err(error) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(%error, current, maximum, "cannot raise the open-file limit");
                return Some(current);
            }
            return Some(maximum);
        }
    }
    limit.current
}

/// Turns the cluster's notifications into lane wake-ups, until shutdown.
async fn forward_wakeups(
    mut wakeups: tokio::sync::broadcast::Receiver<String>,
    dispatcher: Arc<Dispatcher<AnyStore>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let destination = tokio::select! {
            received = wakeups.recv() => received,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match destination {
            Ok(destination) if destination != crate::store::postgres::WAKE_ALL => {
                match destination.strip_suffix(crate::store::postgres::ROUTINE_WAKE_SUFFIX) {
                    Some(destination) => dispatcher.wake_routine(destination),
                    None => dispatcher.wake(&destination),
                }
            }
            // Missed some (fell behind) or reconnected: look everywhere.
            Ok(_) | Err(RecvError::Lagged(_)) => {
                // The configured destinations now (a reload may change them).
                dispatcher.wake_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// How often expired ingest idempotency keys are deleted.
const PURGE_EVERY_SECS: u64 = 600;

/// Forgets expired ingest keys every `PURGE_EVERY_SECS`, until shutdown.
async fn purge_ingest_keys<S: Store>(store: Arc<S>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(PURGE_EVERY_SECS)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match store.purge_ingest_keys(now_ms()).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "forgot expired idempotency keys"),
            Err(error) => tracing::warn!(%error, "cannot purge expired idempotency keys"),
        }
    }
}

/// How often retention looks for finished broadcasts past their age, at
/// most (a short retention looks twice per retention period).
const RETENTION_PASS_EVERY_MS: u64 = 60_000;
/// Broadcasts deleted per transaction: a batch holds the SQLite writer, or
/// its PostgreSQL row locks, for a few milliseconds only.
pub const RETENTION_BATCH_BROADCASTS_MAX: usize = 256;
/// Batches in one pass at most; a larger backlog goes on at the next pass.
const RETENTION_BATCHES_PER_PASS_MAX: usize = 1_000;

/// Deletes finished broadcasts older than `retention_secs` (0: never), in
/// batches, one pass every `RETENTION_PASS_EVERY_MS` or half the retention
/// if that is shorter, until shutdown. Between two batches other writes go
/// first: each batch is a transaction of its own.
async fn delete_old_broadcasts<S: Store>(
    store: Arc<S>,
    retention_secs: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    if retention_secs == 0 {
        return;
    }
    let retention_ms = retention_secs.saturating_mul(1000);
    let every_ms = RETENTION_PASS_EVERY_MS.min(retention_ms / 2).max(500);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(every_ms)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let before_ms = now_ms().saturating_sub(retention_ms as i64);
        let mut after_id = None;
        let mut deleted = 0;
        for _ in 0..RETENTION_BATCHES_PER_PASS_MAX {
            if *shutdown.borrow() {
                return;
            }
            match store
                .delete_finished_broadcasts(
                    before_ms,
                    after_id.take(),
                    RETENTION_BATCH_BROADCASTS_MAX,
                )
                .await
            {
                Ok(batch) => {
                    deleted += batch.deleted;
                    if batch.examined < RETENTION_BATCH_BROADCASTS_MAX {
                        break;
                    }
                    after_id = batch.last_id;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot delete old finished broadcasts; the next pass tries again");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(
                deleted,
                retention_secs,
                "deleted finished broadcasts past their retention"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_get_half_the_open_files_within_a_ceiling() {
        assert_eq!(default_connections_max(Some(1_024)), 512);
        assert_eq!(default_connections_max(Some(1)), 1);
        assert_eq!(
            default_connections_max(Some(1 << 40)),
            DEFAULT_CONNECTIONS_MAX_CEILING
        );
        assert_eq!(
            default_connections_max(None),
            DEFAULT_CONNECTIONS_MAX_CEILING
        );
    }
}
