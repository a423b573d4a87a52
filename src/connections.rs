//! The API's connections: accepted under a cap, each served by hyper with a
//! header-read timeout and an idle timeout, and drained within a bound at
//! shutdown.
//!
//! A connection is *busy* while one of its requests is open (from its head
//! until its response body is finished or dropped, so an event stream is
//! busy for as long as it streams), and *idle* otherwise. A head must
//! arrive whole within `header_read_timeout_ms`, counted from the accept for
//! the first request and from its first byte for the next ones; a
//! connection with no request open and nothing arriving is closed after
//! `idle_timeout_ms`. (hyper's own header timeout also runs while a
//! keep-alive connection waits, so it would make the two one.) At the cap, a new
//! connection takes the place of the oldest idle one (as nginx reuses
//! keep-alive connections); when every connection is busy it waits in the
//! listen backlog until one finishes. So idle or slow clients can never
//! use up the open files, and `/healthz` or a POST always gets through.
//!
//! With TLS the same holds: the handshake runs on the connection's own task
//! and counts against the header-read timeout (a client that connects and
//! never finishes its handshake is a slow client), it takes the TLS
//! configuration in force at its accept, and the head detection watches the
//! decrypted bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::tls::LiveTls;

/// The limits of the API's connections (`[server]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A client must send a request's whole head within this long.
    pub header_read_timeout_ms: u64,
    /// A connection with no request open for this long is closed.
    pub idle_timeout_ms: u64,
    /// Connections open at once, at most.
    pub connections_max: usize,
    /// At shutdown, requests still open get this long; then their
    /// connections are dropped.
    pub drain_ms: u64,
}

/// At the cap with no idle connection to close, look again this often.
const SLOT_RECHECK_MS: u64 = 50;
/// After a failed accept (out of file descriptors, say), wait this long
/// before the next, rather than spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;
/// After a refused TLS handshake (a missing or untrusted client
/// certificate), the connection stays open this long at most, reading and
/// discarding what the client still sends, so that the alert saying why
/// reaches it (see `linger_after_refusal`).
const REFUSED_HANDSHAKE_LINGER_MS: u64 = 1_000;
/// ... and reads this much at most before it closes anyway.
const REFUSED_HANDSHAKE_LINGER_BYTES: usize = 64 * 1024;

/// One open connection, as the accept loop and its own task see it.
struct Connection {
    requests_open: AtomicUsize,
    /// When its last request finished (or it was accepted), in ms since
    /// the registry's start.
    idle_since_ms: AtomicU64,
    /// When the first byte of a head arrived, while no request was open
    /// (`NO_HEAD` when none is on its way).
    head_started_ms: AtomicU64,
    /// Told when a head starts arriving.
    head_started: Notify,
    /// Asks the connection to close if it is idle (the cap needs its slot).
    evict: Notify,
}

const NO_HEAD: u64 = u64::MAX;

struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `accepted_ms`: when the connection was accepted (before a TLS
    /// handshake), in ms since the registry's start.
    fn add(&self, accepted_ms: u64) -> (u64, Arc<Connection>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let connection = Arc::new(Connection {
            requests_open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(now),
            // The first head is timed from the accept: a client that
            // connects and sends nothing is a slow client.
            head_started_ms: AtomicU64::new(accepted_ms),
            head_started: Notify::new(),
            evict: Notify::new(),
        });
        self.lock().insert(id, connection.clone());
        (id, connection)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the oldest idle connection to close; false when all are busy.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.lock();
        match open
            .values()
            .find(|c| c.requests_open.load(Ordering::Acquire) == 0)
        {
            Some(connection) => {
                connection.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        // Held only to insert, remove or scan; never across an await.
        self.open.lock().expect("connection registry poisoned")
    }
}

/// Counts a request as open until its response body is done or dropped.
struct RequestOpen {
    connection: Arc<Connection>,
    registry: Arc<Registry>,
}

impl RequestOpen {
    fn start(connection: Arc<Connection>, registry: Arc<Registry>) -> RequestOpen {
        connection.requests_open.fetch_add(1, Ordering::AcqRel);
        connection.head_started_ms.store(NO_HEAD, Ordering::Release);
        RequestOpen {
            connection,
            registry,
        }
    }
}

impl Drop for RequestOpen {
    fn drop(&mut self) {
        self.connection
            .idle_since_ms
            .store(self.registry.now_ms(), Ordering::Release);
        self.connection.requests_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as open.
struct TrackedBody {
    inner: Body,
    _open: RequestOpen,
}

impl http_body::Body for TrackedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client's socket (or its TLS session), noting when a head starts
/// arriving on an idle connection.
struct WatchedStream<S> {
    inner: S,
    connection: Arc<Connection>,
    registry: Arc<Registry>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.connection.requests_open.load(Ordering::Acquire) == 0
            && self
                .connection
                .head_started_ms
                .compare_exchange(
                    NO_HEAD,
                    self.registry.now_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.connection.head_started.notify_one();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then drains:
/// idle connections close at once, open requests get `drain_ms` (event
/// streams end themselves), and whatever is still open is dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
) {
    serve_with_tls(listener, app, limits, None, shutdown).await
}

/// [`serve`], with TLS on every connection when `tls` is given: each new
/// connection is accepted with the configuration `tls` holds at its accept.
pub async fn serve_with_tls(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<LiveTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let registry = Arc::new(Registry {
        started: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(BTreeMap::new()),
    });
    let mut connections = JoinSet::new();
    let mut cap_logged = false;
    'accept: loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !cap_logged {
                    tracing::warn!(
                        connections_max = limits.connections_max,
                        "at server.connections_max: idle connections make room for new ones, \
                         which otherwise wait"
                    );
                    cap_logged = true;
                }
                loop {
                    registry.evict_oldest_idle();
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => break slot.expect("the semaphore is never closed"),
                        _ = tokio::time::sleep(Duration::from_millis(SLOT_RECHECK_MS)) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break 'accept,
                    }
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let accepted_ms = registry.now_ms();
        match &tls {
            None => connections.spawn(serve_connection(
                stream,
                accepted_ms,
                app.clone(),
                limits,
                registry.clone(),
                shutdown.clone(),
                slot,
            )),
            Some(tls) => connections.spawn(serve_tls_connection(
                stream,
                tls.acceptor(),
                app.clone(),
                limits,
                registry.clone(),
                shutdown.clone(),
                slot,
            )),
        };
    }
    drop(listener);
    let drained = tokio::time::timeout(Duration::from_millis(limits.drain_ms), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "connections still open at the shutdown deadline were dropped"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// The TLS handshake, within the header-read timeout (counted from the
/// accept) and abandoned at shutdown, then the connection as any other.
async fn serve_tls_connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    limits: ConnectionLimits,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) {
    let accepted_ms = registry.now_ms();
    let handshake = tokio::time::timeout(
        Duration::from_millis(limits.header_read_timeout_ms),
        acceptor.accept(stream).into_fallible(),
    );
    let finished = tokio::select! {
        finished = handshake => finished,
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    let stream = match finished {
        Ok(Ok(stream)) => stream,
        Ok(Err((error, stream))) => {
            tracing::debug!(%error, "TLS handshake failed");
            // Still under its connection slot: lingering is bounded.
            tokio::select! {
                () = linger_after_refusal(stream) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake not finished within server.header_read_timeout_ms");
            return;
        }
    };
    serve_connection(stream, accepted_ms, app, limits, registry, shutdown, slot).await
}

/// Closes a connection whose handshake was refused, without losing the
/// alert that says why. With TLS 1.3 the client counts its handshake done
/// before the server has checked its certificate, so its request is often
/// on the wire already; closing a socket with unread bytes sends a reset,
/// and a reset can reach the client before the alert, which then reads
/// "connection reset" instead of "certificate required". So: finish
/// sending (FIN), read and discard until the client closes, for a bounded
/// time and size, then close.
async fn linger_after_refusal(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discarded = 0;
    let mut buffer = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(REFUSED_HANDSHAKE_LINGER_MS), async {
        while discarded < REFUSED_HANDSHAKE_LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => discarded += read,
            }
        }
    })
    .await;
}

async fn serve_connection<S>(
    stream: S,
    accepted_ms: u64,
    app: Router,
    limits: ConnectionLimits,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (id, connection) = registry.add(accepted_ms);
    let service = {
        let (connection, registry) = (connection.clone(), registry.clone());
        let app = TowerToHyperService::new(app);
        hyper::service::service_fn(move |request| {
            let open = RequestOpen::start(connection.clone(), registry.clone());
            let response = hyper::service::Service::call(&app, request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _open: open }))
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // The timeouts are kept here (see the module's doc), not by hyper.
    http.timer(TokioTimer::new()).header_read_timeout(None);
    let stream = WatchedStream {
        inner: stream,
        connection: connection.clone(),
        registry: registry.clone(),
    };
    let served = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let is_idle = || connection.requests_open.load(Ordering::Acquire) == 0;
    let mut stopping = false;
    loop {
        // Busy: look again after a whole idle timeout. Idle: when the
        // head's or the idle time runs out.
        let wait_ms = if is_idle() {
            let now = registry.now_ms();
            let head_started = connection.head_started_ms.load(Ordering::Acquire);
            let (since, limit_ms) = if head_started == NO_HEAD {
                let idle_since = connection.idle_since_ms.load(Ordering::Acquire);
                (idle_since, limits.idle_timeout_ms)
            } else {
                (head_started, limits.header_read_timeout_ms)
            };
            let waited_ms = now.saturating_sub(since);
            if waited_ms >= limit_ms {
                break;
            }
            limit_ms - waited_ms
        } else {
            limits.idle_timeout_ms
        };
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            _ = connection.head_started.notified() => {}
            _ = connection.evict.notified() => {
                if is_idle() {
                    break;
                }
            }
            _ = shutdown.wait_for(|stop| *stop), if !stopping => {
                // No new request on this connection; an open one finishes
                // (an event stream ends itself) and then it closes.
                stopping = true;
                served.as_mut().graceful_shutdown();
                if is_idle() {
                    break;
                }
            }
        }
    }
    registry.remove(id);
}
