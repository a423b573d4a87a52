//! The API client behind `herald send` and `herald status` (and the demo).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::wire::{
    ActionRequest, ActionResult, Broadcast, BroadcastList, Delivery, DeliveryEvent,
    DestinationHealth, ErrorBody, SendRequest,
};

/// The first pause before `watch` reconnects to a server that went away;
/// it doubles on each failed try, up to `WATCH_RECONNECT_PAUSE_MS_MAX`.
const WATCH_RECONNECT_PAUSE_MS: u64 = 250;
const WATCH_RECONNECT_PAUSE_MS_MAX: u64 = 4_000;
/// Timeout for one API call.
const API_TIMEOUT_MS: u64 = 30_000;
/// Tries of one keyed send in all, the first included: a transient failure
/// (no connection, a cut one, 502/503/504, 429, the same key in flight) is
/// tried again with the same `Idempotency-Key`, so the server answers a
/// try that follows an accepted one with that first answer.
pub const SEND_TRIES_MAX: u32 = 6;
/// The pause before the second try; it doubles for each next one (with
/// jitter), up to `SEND_RETRY_PAUSE_MS_MAX`.
const SEND_RETRY_PAUSE_MS_BASE: u64 = 250;
const SEND_RETRY_PAUSE_MS_MAX: u64 = 8_000;
/// A server's Retry-After is honoured up to this long.
const SEND_RETRY_AFTER_MS_MAX: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message}{}", field.as_ref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("cannot reach herald at {server}: {reason} (is `herald serve` running? see --server)")]
    Unreachable { server: String, reason: String },
    /// The TLS handshake failed: an untrusted or wrong certificate, or a
    /// client certificate the server wants. Not tried again.
    #[error("cannot reach herald at {server} over TLS: {reason}")]
    Tls { server: String, reason: String },
    #[error("cannot read the CA file {file} (--cacert, HERALD_CACERT): {reason}")]
    CaFile { file: String, reason: String },
    #[error("herald answered something this client cannot read: {0}")]
    Decode(String),
    /// An error answer that is not herald's JSON error shape (a proxy's).
    #[error("HTTP {status}: {excerpt}")]
    Status { status: u16, excerpt: String },
    #[error("{error} (tried {tries} times with Idempotency-Key {key}; to try again without a second broadcast, repeat the command with --idempotency-key {key})")]
    SendGaveUp {
        error: Box<ClientError>,
        tries: u32,
        key: String,
    },
    #[error("invalid server URL {0:?}")]
    BadServer(String),
    #[error("the event stream broke: {0}")]
    Stream(String),
}

pub struct Client {
    http: reqwest::Client,
    /// For event streams: no total timeout, only a read timeout longer than
    /// the server's keep-alive.
    stream_http: reqwest::Client,
    server: reqwest::Url,
    token: Option<String>,
    /// Set once a server asked this client for a certificate in a
    /// handshake (it has none to give).
    asked_for_certificate: Arc<AskedForCertificate>,
}

/// What `watch` reports besides delivery changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchNotice {
    /// The stream ended before the broadcast was final (herald is stopping,
    /// or went away); `watch` tries again.
    Lost { reason: String },
    /// Connected again; the stream starts with the broadcast's state.
    Reconnected,
}

/// Filters of `herald list`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub destination: Option<String>,
    pub thread: Option<String>,
    pub since: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// How long `watch` keeps trying to reach a server that went away (a
/// restart) before it gives up.
const WATCH_RECONNECT_MS_MAX: u64 = 60_000;
/// An event stream silent for this long is considered broken (the server
/// sends a keep-alive every 15 s).
const STREAM_READ_TIMEOUT_MS: u64 = 45_000;

impl Client {
    pub fn new(server: &str) -> Result<Client, ClientError> {
        Client::with_token(server, None)
    }

    /// `token`: a bearer token, for servers that require one.
    pub fn with_token(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_trust(server, token, None)
    }

    /// `cacert`: a PEM file of CA certificates trusted for `https://`
    /// servers besides the system's roots (read by the platform verifier
    /// from the operating system's store, so it works offline and follows
    /// the machine's own CA updates).
    pub fn with_trust(
        server: &str,
        token: Option<String>,
        cacert: Option<&std::path::Path>,
    ) -> Result<Client, ClientError> {
        let server = reqwest::Url::parse(server)
            .map_err(|_| ClientError::BadServer(crate::redact::redact_url(server)))?;
        let extra_roots = match cacert {
            None => Vec::new(),
            Some(file) => read_ca_file(file)?,
        };
        let asked_for_certificate = Arc::new(AskedForCertificate::default());
        let tls = tls_config(extra_roots, asked_for_certificate.clone())?;
        let http = crate::connector::http_client_builder()
            .tls_backend_preconfigured(tls.clone())
            .timeout(Duration::from_millis(API_TIMEOUT_MS))
            .build()
            .map_err(|e| ClientError::BadServer(e.to_string()))?;
        let stream_http = crate::connector::http_client_builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_millis(API_TIMEOUT_MS))
            .read_timeout(Duration::from_millis(STREAM_READ_TIMEOUT_MS))
            .build()
            .map_err(|e| ClientError::BadServer(e.to_string()))?;
        Ok(Client {
            http,
            stream_http,
            server,
            token,
            asked_for_certificate,
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    pub async fn send(&self, request: &SendRequest) -> Result<Broadcast, ClientError> {
        self.post_json("v1/broadcasts", request).await
    }

    /// Sends with `key` as the `Idempotency-Key`, trying again (same key,
    /// same body) after a transient failure, at most `SEND_TRIES_MAX` times
    /// in all, so a try after a lost answer is never a second broadcast.
    /// `on_retry` hears of each failed try and the pause before the next.
    pub async fn send_with_key(
        &self,
        request: &SendRequest,
        key: &str,
        mut on_retry: impl FnMut(&ClientError, u32, Duration),
    ) -> Result<Broadcast, ClientError> {
        let url = self.url("v1/broadcasts")?;
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut tries = 0;
        loop {
            tries += 1;
            let sent = self
                .authorized(self.http.post(url.clone()))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.clone())
                .send()
                .await;
            let retry_after_ms = sent
                .as_ref()
                .ok()
                .and_then(|r| r.headers().get("retry-after"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| secs.saturating_mul(1000).min(SEND_RETRY_AFTER_MS_MAX));
            let error = match self.decode(sent).await {
                Ok(broadcast) => return Ok(broadcast),
                Err(error) => error,
            };
            if !is_transient(&error) {
                return Err(error);
            }
            if tries >= SEND_TRIES_MAX {
                return Err(ClientError::SendGaveUp {
                    error: Box::new(error),
                    tries,
                    key: key.to_owned(),
                });
            }
            let pause = Duration::from_millis(
                retry_after_ms.unwrap_or_else(|| send_retry_pause_ms(tries, &mut rand::rng())),
            );
            on_retry(&error, tries, pause);
            tokio::time::sleep(pause).await;
        }
    }

    /// `GET /readyz`: "ready", or why not (the server's 503 message).
    pub async fn ready(&self) -> Result<String, ClientError> {
        let response = self
            .http
            .get(self.url("readyz")?)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        match (status, api_error(status, &bytes)) {
            (200, _) => Ok("ready".to_owned()),
            (503, ClientError::Api { message, .. }) => Ok(format!("not ready: {message}")),
            (_, error) => Err(error),
        }
    }

    pub async fn status(&self, id: &str) -> Result<Broadcast, ClientError> {
        let url = self.broadcast_url(id, None)?;
        let response = self.authorized(self.http.get(url)).send().await;
        self.decode(response).await
    }

    pub async fn list(&self, query: &ListQuery) -> Result<BroadcastList, ClientError> {
        let mut url = self.url("v1/broadcasts")?;
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in [
                ("status", &query.status),
                ("destination", &query.destination),
                ("thread", &query.thread),
                ("since", &query.since),
                ("cursor", &query.cursor),
            ] {
                if let Some(value) = value {
                    pairs.append_pair(name, value);
                }
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
        }
        let response = self.authorized(self.http.get(url)).send().await;
        self.decode(response).await
    }

    pub async fn destinations(&self) -> Result<Vec<DestinationHealth>, ClientError> {
        self.get_json("v1/destinations").await
    }

    /// Retries the failed, dead and cancelled deliveries (only
    /// `destinations`' when given).
    pub async fn retry(
        &self,
        id: &str,
        destinations: Vec<String>,
    ) -> Result<ActionResult, ClientError> {
        self.act(id, "retry", destinations).await
    }

    /// Cancels the unfinished deliveries (only `destinations`' when given).
    pub async fn cancel(
        &self,
        id: &str,
        destinations: Vec<String>,
    ) -> Result<ActionResult, ClientError> {
        self.act(id, "cancel", destinations).await
    }

    async fn act(
        &self,
        id: &str,
        action: &str,
        destinations: Vec<String>,
    ) -> Result<ActionResult, ClientError> {
        let url = self.broadcast_url(id, Some(action))?;
        let body = serde_json::to_vec(&ActionRequest { destinations })
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        let response = self.authorized(request).send().await;
        self.decode(response).await
    }

    /// `v1/broadcasts/{id}[/{action}]`, with `id` as one path segment
    /// whatever an operator typed.
    fn broadcast_url(&self, id: &str, action: Option<&str>) -> Result<reqwest::Url, ClientError> {
        let mut url = self.url("v1/broadcasts")?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| ClientError::BadServer(self.server.to_string()))?;
            segments.push(id);
            if let Some(action) = action {
                segments.push(action);
            }
        }
        Ok(url)
    }

    /// Pauses a destination: `for_` a span (`2h`), or until resumed.
    pub async fn pause_destination(
        &self,
        name: &str,
        for_: Option<String>,
        reason: String,
    ) -> Result<DestinationHealth, ClientError> {
        self.post_json(
            &format!("v1/destinations/{name}/pause"),
            &crate::api::wire::PauseRequest { for_, reason },
        )
        .await
    }

    pub async fn resume_destination(&self, name: &str) -> Result<DestinationHealth, ClientError> {
        self.post_json(
            &format!("v1/destinations/{name}/resume"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Asks the server to read its config file again.
    /// Where a message would go (routes, destinations), sending nothing.
    pub async fn preview(
        &self,
        request: &SendRequest,
    ) -> Result<crate::api::wire::Preview, ClientError> {
        self.post_json("v1/preview", request).await
    }

    pub async fn reload_config(&self) -> Result<crate::api::wire::ReloadAnswer, ClientError> {
        self.post_json("v1/config/reload", &serde_json::json!({}))
            .await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let response = self.authorized(self.http.get(url)).send().await;
        self.decode(response).await
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        let response = self.authorized(request).send().await;
        self.decode(response).await
    }

    /// Follows the broadcast's event stream until it is final, calling
    /// `on_change` for each delivery state it reports. If the server goes
    /// away (a restart), reconnects for up to a minute; the stream starts
    /// with a snapshot, so nothing is missed.
    pub async fn watch(
        &self,
        id: &str,
        on_change: impl FnMut(Duration, &Delivery),
    ) -> Result<Broadcast, ClientError> {
        self.watch_with_notices(id, on_change, |_| {}).await
    }

    /// `watch`, telling `on_notice` when the stream is lost and when it is
    /// back. Reconnects with a doubling pause (250 ms to 4 s), for at most
    /// `WATCH_RECONNECT_MS_MAX` without a connection.
    pub async fn watch_with_notices(
        &self,
        id: &str,
        mut on_change: impl FnMut(Duration, &Delivery),
        mut on_notice: impl FnMut(&WatchNotice),
    ) -> Result<Broadcast, ClientError> {
        let started = Instant::now();
        let mut seen: HashMap<String, (String, u32, Option<u16>)> = HashMap::new();
        let mut unreachable_since: Option<Instant> = None;
        let mut pause_ms = WATCH_RECONNECT_PAUSE_MS;
        let mut lost = false;
        loop {
            let followed = self
                .follow(
                    id,
                    started,
                    &mut seen,
                    &mut on_change,
                    &mut unreachable_since,
                    &mut |connected| {
                        if connected && lost {
                            lost = false;
                            pause_ms = WATCH_RECONNECT_PAUSE_MS;
                            on_notice(&WatchNotice::Reconnected);
                        }
                    },
                )
                .await;
            match followed {
                Ok(()) => return self.status(id).await,
                Err(error @ (ClientError::Unreachable { .. } | ClientError::Stream(_)))
                    if unreachable_since.get_or_insert_with(Instant::now).elapsed()
                        < Duration::from_millis(WATCH_RECONNECT_MS_MAX) =>
                {
                    if !lost {
                        lost = true;
                        on_notice(&WatchNotice::Lost {
                            reason: error.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    pause_ms = (pause_ms * 2).min(WATCH_RECONNECT_PAUSE_MS_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads one event stream to its `status` event.
    async fn follow(
        &self,
        id: &str,
        started: Instant,
        seen: &mut HashMap<String, (String, u32, Option<u16>)>,
        on_change: &mut impl FnMut(Duration, &Delivery),
        unreachable_since: &mut Option<Instant>,
        on_connected: &mut impl FnMut(bool),
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("v1/broadcasts/{id}/events"))?;
        let response = self
            .authorized(self.stream_http.get(url))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        // Connected: a later break gets the full reconnect window again.
        *unreachable_since = None;
        on_connected(true);
        let mut response = response;
        // Raw bytes: a character split across chunks is decoded whole.
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| ClientError::Stream(e.to_string()))?;
            let Some(chunk) = chunk else {
                return Err(ClientError::Stream("the event stream ended early".into()));
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = buffer.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&raw);
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = if name.trim() == "delivery" {
                            "delivery"
                        } else if name.trim() == "status" {
                            "status"
                        } else if name.trim() == "shutdown" {
                            "shutdown"
                        } else {
                            "other"
                        };
                    } else if let Some(text) = line.strip_prefix("data:") {
                        data.push_str(text.trim_start());
                    }
                }
                match event {
                    "delivery" => {
                        let change: DeliveryEvent = serde_json::from_str(&data)
                            .map_err(|e| ClientError::Decode(e.to_string()))?;
                        let key = (
                            change.state.clone(),
                            change.attempts_made,
                            change.last_http_status,
                        );
                        if seen.get(&change.destination) != Some(&key) {
                            on_change(started.elapsed(), &change.as_delivery());
                            seen.insert(change.destination.clone(), key);
                        }
                    }
                    "status" => return Ok(()),
                    "shutdown" => return Err(ClientError::Stream("herald is stopping".into())),
                    _ => {}
                }
            }
        }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        self.server
            .join(path)
            .map_err(|_| ClientError::BadServer(self.server.to_string()))
    }

    /// A failed request as the user should see it: a TLS refusal says
    /// why (with the hint to pass the CA), anything else is unreachable.
    ///
    /// A server that requires a client certificate refuses the handshake
    /// after the client counts it done (TLS 1.3), and when its alert comes
    /// before the request has left, the request fails as "connection was
    /// not ready", without the alert. So a failure after a server asked
    /// for a certificate this client does not have is said to be that.
    fn transport_error(&self, error: reqwest::Error) -> ClientError {
        let server = crate::redact::redact_url(self.server.as_str());
        match tls_failure(&error) {
            Some(reason) => ClientError::Tls { server, reason },
            None if self.asked_for_certificate.0.load(Ordering::Relaxed) => ClientError::Tls {
                server,
                reason: format!(
                    "the server asks for a client certificate, which this client does not send \
                     ({}); {CLIENT_CERTIFICATE_HINT}",
                    error.without_url()
                ),
            },
            None => ClientError::Unreachable {
                server,
                reason: error.without_url().to_string(),
            },
        }
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let response = response.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: crate::redact::redact_url(self.server.as_str()),
                reason: e.without_url().to_string(),
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()));
        }
        Err(api_error(status, &bytes))
    }
}

/// What a refusal for want of a client certificate tells the user.
const CLIENT_CERTIFICATE_HINT: &str =
    "the server's server.tls_client_ca_file requires one, and the CLI has none to present";

/// Records that a server asked for a client certificate (a
/// CertificateRequest in the handshake); this client presents none.
#[derive(Debug, Default)]
struct AskedForCertificate(AtomicBool);

impl rustls::client::ResolvesClientCert for AskedForCertificate {
    fn resolve(
        &self,
        _acceptable_issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The client's TLS: the platform's roots (the operating system's store)
/// and `extra_roots`, HTTP/1.1, no client certificate (`asked` hears when
/// a server wants one).
fn tls_config(
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    asked: Arc<AskedForCertificate>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| ClientError::BadServer(format!("cannot set up TLS: {e}"));
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
    }
    .map_err(tls_error)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(asked);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The CA certificates of a PEM file, for `--cacert`.
fn read_ca_file(
    file: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let ca_error = |reason: String| ClientError::CaFile {
        file: file.display().to_string(),
        reason,
    };
    let pem = std::fs::read(file).map_err(|e| ca_error(e.to_string()))?;
    let roots = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(e.to_string()))?;
    if roots.is_empty() {
        return Err(ca_error(
            "no PEM certificate (a \"BEGIN CERTIFICATE\" block) in it".to_owned(),
        ));
    }
    Ok(roots)
}

/// The TLS error behind a failed request, with what to do about it.
fn tls_failure(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tls) = rustls_error_in(current) {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "; if herald's certificate is signed by your own CA, pass it with --cacert FILE (or HERALD_CACERT)"
                }
                rustls::Error::AlertReceived(_) => {
                    "; the server may require a client certificate (server.tls_client_ca_file)"
                }
                _ => "",
            };
            return Some(format!("{tls}{hint}"));
        }
        source = current.source();
    }
    None
}

/// The rustls error this is, or that an I/O error wraps (hyper wraps it
/// in two), looking a few wrappers deep at most.
fn rustls_error_in<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut current = error;
    for _ in 0..4 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
    None
}

fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
        },
        Err(_) => ClientError::Status {
            status,
            excerpt: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        },
    }
}

/// Worth trying again with the same key: the request may not have arrived
/// or been answered (no connection, a cut one, a gateway's 502/503/504),
/// the server asked to slow down (429), or the first request with this key
/// is still in flight (409). Anything else is the answer.
fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, code, .. } => {
            matches!(status, 429 | 502 | 503 | 504)
                || (*status == 409 && code == "idempotency_key_in_flight")
        }
        ClientError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        _ => false,
    }
}

/// The pause after the `tries`-th failed try: exponential, with the upper
/// half jittered so that clients cut off together do not return together.
fn send_retry_pause_ms(tries: u32, rng: &mut impl rand::Rng) -> u64 {
    let ceiling_ms = SEND_RETRY_PAUSE_MS_BASE
        .saturating_mul(1u64 << tries.saturating_sub(1).min(16))
        .min(SEND_RETRY_PAUSE_MS_MAX);
    ceiling_ms / 2 + rng.random_range(0..=ceiling_ms / 2)
}

/// Longest `Idempotency-Key` the server takes.
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;

/// An operator's `--idempotency-key`: what the server takes (1 to 255
/// visible ASCII characters), checked before anything is sent.
pub fn parse_idempotency_key(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= IDEMPOTENCY_KEY_CHARS_MAX
        && text.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "use 1 to {IDEMPOTENCY_KEY_CHARS_MAX} visible ASCII characters (no spaces), such as deploy-42"
        ))
    }
}

/// `--label service=checkout`: a label's name and value, split at the
/// first `=` (the server checks both).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err("write NAME=VALUE, such as service=checkout".into()),
    }
}

/// `--field "Region=eu-west-1"`: a field's name and value, split at the
/// first `=`.
pub fn parse_field(text: &str) -> Result<crate::domain::Field, String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok(crate::domain::Field {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
        _ => Err("write NAME=VALUE, such as \"Region=eu-west-1\"".into()),
    }
}

/// `--link "Runbook=https://wiki.example/db"`: a link's text and URL, split
/// at the first `=` (a URL may hold more).
pub fn parse_link(text: &str) -> Result<crate::domain::Link, String> {
    match text.split_once('=') {
        Some((text, url)) if !text.trim().is_empty() => Ok(crate::domain::Link {
            text: text.to_owned(),
            url: url.to_owned(),
        }),
        _ => Err("write TEXT=URL, such as \"Runbook=https://wiki.example/db\"".into()),
    }
}

/// A new `Idempotency-Key` for one `herald send`: 128 random bits.
pub fn new_idempotency_key() -> String {
    format!("herald-cli-{:032x}", rand::random::<u128>())
}

/// `30s`, `5m`, `1h`, `500ms`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = [("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
        .into_iter()
        .find_map(|(suffix, unit_ms)| text.strip_suffix(suffix).map(|n| (n, unit_ms)))
        .unwrap_or((text, 1_000));
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            format!("{text:?} is not a duration: use a positive number with ms, s, m or h, such as 30s or 5m")
        })
}

/// Rows as columns padded to the widest cell, for people.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// A broadcast as an aligned table, for people.
/// The objective's lines of `herald status` and `send --wait`.
pub fn render_objective(objective: &crate::api::wire::ObjectiveView) -> String {
    let mut out = format!(
        "objective: {} (confirm {} of [{}] within {})\n",
        objective.summary,
        objective.any,
        objective.of.join(", "),
        crate::domain::format_duration_ms(objective.within_ms)
    );
    if let Some(id) = &objective.fallback_broadcast {
        out.push_str(&format!("  fallback broadcast {id}\n"));
    }
    if let Some(id) = &objective.meta_alert_broadcast {
        out.push_str(&format!(
            "  meta-alert broadcast {id} (to {})\n",
            objective.on_escalation.as_deref().unwrap_or("?")
        ));
    }
    out
}

pub fn render_broadcast(broadcast: &Broadcast) -> String {
    let mut out = format!(
        "broadcast {}  {}  {}\n{} {}{}\n",
        broadcast.id,
        broadcast.status,
        broadcast.created_at,
        broadcast.severity,
        broadcast.title,
        broadcast
            .thread
            .as_ref()
            .map(|t| format!("  (thread {t})"))
            .unwrap_or_default()
    );
    out.push_str(&render_details(broadcast));
    if let Some(objective) = &broadcast.objective {
        out.push_str(&render_objective(objective));
    }
    let width = broadcast
        .deliveries
        .iter()
        .map(|d| d.destination.len())
        .max()
        .unwrap_or(0)
        .max("DESTINATION".len());
    out.push_str(&format!("\n{:width$}  STATE\n", "DESTINATION"));
    for d in &broadcast.deliveries {
        let remote_ref = d
            .remote_ref
            .as_ref()
            .map(|r| format!("  ref {r}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:width$}  {}{remote_ref}\n",
            d.destination,
            d.describe()
        ));
        for a in &d.attempts {
            out.push_str(&format!(
                "{:width$}    #{} {} {} {}{} {}ms{}\n",
                "",
                a.number,
                a.started_at,
                a.kind,
                a.outcome,
                a.http_status
                    .map(|s| format!(" HTTP {s}"))
                    .unwrap_or_default(),
                a.latency_ms,
                // The reason, unless it only repeats the status.
                a.error
                    .as_ref()
                    .filter(|e| a.http_status.map(|s| format!("HTTP {s}")).as_ref() != Some(*e))
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// The summary, source, labels, fields, links and routes of a broadcast,
/// one line each (nothing for a plain message).
fn render_details(broadcast: &Broadcast) -> String {
    let mut out = String::new();
    if let Some(summary) = &broadcast.summary {
        out.push_str(&format!("summary: {summary}\n"));
    }
    if let Some(source) = &broadcast.source {
        out.push_str(&format!("source: {source}\n"));
    }
    if !broadcast.labels.is_empty() {
        let labels: Vec<String> = broadcast
            .labels
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        out.push_str(&format!("labels: {}\n", labels.join(", ")));
    }
    for field in &broadcast.fields {
        out.push_str(&format!("{}: {}\n", field.name, field.value));
    }
    for link in &broadcast.links {
        out.push_str(&format!("link {}: {}\n", link.text, link.url));
    }
    if !broadcast.routes.is_empty() {
        out.push_str(&format!("routed by: {}\n", broadcast.routes.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        for bad in ["", "0s", "-1s", "1d", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn send_retry_pauses_grow_and_stay_bounded() {
        let mut rng = StdRng::seed_from_u64(7);
        for tries in 1..=SEND_TRIES_MAX + 20 {
            let pause = send_retry_pause_ms(tries, &mut rng);
            assert!(pause <= SEND_RETRY_PAUSE_MS_MAX, "{tries}: {pause}");
            assert!(pause >= SEND_RETRY_PAUSE_MS_BASE / 2, "{tries}: {pause}");
        }
    }

    #[test]
    fn only_transient_failures_are_tried_again() {
        let api = |status: u16, code: &str| ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
            field: None,
        };
        assert!(is_transient(&api(503, "timeout")));
        assert!(is_transient(&api(429, "rate_limited")));
        assert!(is_transient(&api(409, "idempotency_key_in_flight")));
        assert!(!is_transient(&api(400, "invalid_field")));
        assert!(!is_transient(&api(422, "idempotency_key_reused")));
        assert!(!is_transient(&api(500, "internal")));
        assert!(parse_idempotency_key("deploy-42").is_ok());
        for bad in ["", "two words", "clé", &"k".repeat(256)] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad}");
        }
        assert!(is_transient(&ClientError::Status {
            status: 502,
            excerpt: String::new()
        }));
    }
}
