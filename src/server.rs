//! `herald serve`: the store, the dispatcher and the HTTP API in one process.
//! `start` takes a bound listener so tests and the demo bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{router, AppState};
use crate::config::Config;
use crate::dispatch::{now_ms, Dispatcher};
use crate::store::{SqliteStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot build the HTTP client for a destination: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot read the listening address: {0}")]
    Listener(std::io::Error),
}

/// A server running on its own tasks. Dropping it does not stop it; call
/// [`RunningServer::stop`].
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    purge: JoinHandle<()>,
}

impl RunningServer {
    /// Stops taking requests and new work, lets attempts in flight finish
    /// and record their outcome, then returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        let _ = self.dispatcher.await;
        let _ = self.purge.await;
    }
}

pub async fn start(config: Config, listener: TcpListener) -> Result<RunningServer, ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let path = config.database.display().to_string();
    let store_error = |source| ServeError::Store {
        path: path.clone(),
        source,
    };
    let store = Arc::new(SqliteStore::open(&config.database).map_err(store_error)?);
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
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        &config.destinations,
        crate::events::EventBus::default(),
    )?);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let dispatcher_task = tokio::spawn(dispatcher.clone().run(shutdown_rx.clone()));
    if config.tokens.is_empty() {
        tracing::warn!("no [[tokens]] configured: the API is open to anyone who can reach {addr}");
    }
    let app = router(Arc::new(AppState::new(
        store.clone(),
        dispatcher,
        Arc::new(config),
    )));
    let purge = tokio::spawn(purge_ingest_keys(store.clone(), shutdown_rx.clone()));
    let mut http_shutdown = shutdown_rx;
    let http = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        });
        if let Err(error) = serve.await {
            tracing::error!(%error, "HTTP server stopped");
        }
    });
    tracing::info!(%addr, database = %path, "herald serving");
    Ok(RunningServer {
        addr,
        shutdown,
        http,
        dispatcher: dispatcher_task,
        purge,
    })
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
