//! The API client behind `herald send` and `herald status` (and the demo).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::wire::{Broadcast, Delivery, ErrorBody, SendRequest};

/// How often `watch` reads the broadcast while it is delivering.
const WATCH_POLL_MS: u64 = 100;
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
}

pub struct Client {
    http: reqwest::Client,
    server: reqwest::Url,
}

impl Client {
    pub fn new(server: &str) -> Result<Client, ClientError> {
        let server =
            reqwest::Url::parse(server).map_err(|_| ClientError::BadServer(server.to_owned()))?;
        let http = crate::connector::http_client_builder()
            .timeout(Duration::from_millis(API_TIMEOUT_MS))
            .build()
            .map_err(|e| ClientError::BadServer(e.to_string()))?;
        Ok(Client { http, server })
    }

    pub async fn send(&self, request: &SendRequest) -> Result<Broadcast, ClientError> {
        let url = self.url("v1/broadcasts")?;
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode(e.to_string()))?;
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        self.decode(response).await
    }

    pub async fn status(&self, id: &str) -> Result<Broadcast, ClientError> {
        let url = self.url(&format!("v1/broadcasts/{id}"))?;
        let response = self.http.get(url).send().await;
        self.decode(response).await
    }

    /// Reads the broadcast until it is final, calling `on_change` for each
    /// delivery whenever its state, attempt count or last status changes.
    pub async fn watch(
        &self,
        id: &str,
        mut on_change: impl FnMut(Duration, &Delivery),
    ) -> Result<Broadcast, ClientError> {
        let started = Instant::now();
        let mut seen: HashMap<String, (String, u32, Option<u16>)> = HashMap::new();
        loop {
            let broadcast = self.status(id).await?;
            for delivery in &broadcast.deliveries {
                let key = (
                    delivery.state.clone(),
                    delivery.attempts_made,
                    delivery.last_http_status,
                );
                if seen.get(&delivery.destination) != Some(&key) {
                    on_change(started.elapsed(), delivery);
                    seen.insert(delivery.destination.clone(), key);
                }
            }
            if broadcast.is_final() {
                return Ok(broadcast);
            }
            tokio::time::sleep(Duration::from_millis(WATCH_POLL_MS)).await;
        }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        self.server
            .join(path)
            .map_err(|_| ClientError::BadServer(self.server.to_string()))
    }

    async fn decode(
        &self,
        response: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Broadcast, ClientError> {
        let response = response.map_err(|e| ClientError::Unreachable {
            server: self.server.to_string(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: self.server.to_string(),
                reason: e.to_string(),
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                field: body.error.field,
            }),
            Err(_) => Err(ClientError::Decode(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))),
        }
    }
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
