//! The API client behind `herald send` and `herald status` (and the demo).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::wire::{
    ActionRequest, Broadcast, BroadcastList, Delivery, DeliveryEvent, DestinationHealth, ErrorBody,
    SendRequest,
};

/// The pause before `watch` reconnects to a server that went away.
const WATCH_RECONNECT_PAUSE_MS: u64 = 500;
/// Timeout for one API call.
const API_TIMEOUT_MS: u64 = 30_000;

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
    #[error("herald answered something this client cannot read: {0}")]
    Decode(String),
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
        let server = reqwest::Url::parse(server)
            .map_err(|_| ClientError::BadServer(crate::redact::redact_url(server)))?;
        let http = crate::connector::http_client_builder()
            .timeout(Duration::from_millis(API_TIMEOUT_MS))
            .build()
            .map_err(|e| ClientError::BadServer(e.to_string()))?;
        let stream_http = crate::connector::http_client_builder()
            .connect_timeout(Duration::from_millis(API_TIMEOUT_MS))
            .read_timeout(Duration::from_millis(STREAM_READ_TIMEOUT_MS))
            .build()
            .map_err(|e| ClientError::BadServer(e.to_string()))?;
        Ok(Client {
            http,
            stream_http,
            server,
            token,
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

    pub async fn status(&self, id: &str) -> Result<Broadcast, ClientError> {
        self.get_json(&format!("v1/broadcasts/{id}")).await
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

    /// Retries the failed and dead deliveries (only `destinations`' when
    /// given).
    pub async fn retry(
        &self,
        id: &str,
        destinations: Vec<String>,
    ) -> Result<Broadcast, ClientError> {
        self.post_json(
            &format!("v1/broadcasts/{id}/retry"),
            &ActionRequest { destinations },
        )
        .await
    }

    /// Cancels the unfinished deliveries (only `destinations`' when given).
    pub async fn cancel(
        &self,
        id: &str,
        destinations: Vec<String>,
    ) -> Result<Broadcast, ClientError> {
        self.post_json(
            &format!("v1/broadcasts/{id}/cancel"),
            &ActionRequest { destinations },
        )
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
        mut on_change: impl FnMut(Duration, &Delivery),
    ) -> Result<Broadcast, ClientError> {
        let started = Instant::now();
        let mut seen: HashMap<String, (String, u32, Option<u16>)> = HashMap::new();
        let mut unreachable_since: Option<Instant> = None;
        loop {
            match self
                .follow(
                    id,
                    started,
                    &mut seen,
                    &mut on_change,
                    &mut unreachable_since,
                )
                .await
            {
                Ok(()) => return self.status(id).await,
                Err(ClientError::Unreachable { .. } | ClientError::Stream(_))
                    if unreachable_since.get_or_insert_with(Instant::now).elapsed()
                        < Duration::from_millis(WATCH_RECONNECT_MS_MAX) =>
                {
                    tokio::time::sleep(Duration::from_millis(WATCH_RECONNECT_PAUSE_MS)).await;
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
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("v1/broadcasts/{id}/events"))?;
        let response = self
            .authorized(self.stream_http.get(url))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: crate::redact::redact_url(self.server.as_str()),
                reason: e.without_url().to_string(),
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        // Connected: a later break gets the full reconnect window again.
        *unreachable_since = None;
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

    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let response = response.map_err(|e| ClientError::Unreachable {
            server: crate::redact::redact_url(self.server.as_str()),
            reason: e.without_url().to_string(),
        })?;
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

fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
        },
        Err(_) => ClientError::Decode(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
    }
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
    let width = broadcast
        .deliveries
        .iter()
        .map(|d| d.destination.len())
        .max()
        .unwrap_or(0)
        .max("DESTINATION".len());
    out.push_str(&format!("\n{:width$}  STATE\n", "DESTINATION"));
    for d in &broadcast.deliveries {
        out.push_str(&format!("{:width$}  {}\n", d.destination, d.describe()));
        for a in &d.attempts {
            out.push_str(&format!(
                "{:width$}    #{} {} {}{} {}ms{}\n",
                "",
                a.number,
                a.kind,
                a.outcome,
                a.http_status
                    .map(|s| format!(" HTTP {s}"))
                    .unwrap_or_default(),
                a.latency_ms,
                a.error
                    .as_ref()
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
