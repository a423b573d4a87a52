//! The load: broadcasts submitted through the API by concurrent
//! submitters, and the baseline that sends the same requests straight to
//! the mock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn payload(i: usize, destinations: &[String], severity: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "title": format!("INC-{i}: bench load"),
        "body": "Synthetic load from herald bench. Checkout latency above threshold on 3 of 8 nodes.",
        "severity": severity,
        "destinations": destinations,
    }))
    .expect("payload serialises")
}

/// One batch of broadcasts to submit through the API.
pub(super) struct Load<'a> {
    pub(super) count: usize,
    /// Titles are numbered from here.
    pub(super) first_index: usize,
    pub(super) destinations: &'a [String],
    pub(super) severity: &'a str,
    /// API calls in flight.
    pub(super) submitters: usize,
    /// Space submissions evenly at this rate; as fast as possible if absent.
    pub(super) per_sec: Option<f64>,
}

/// Submits a load and returns the seconds it took. With several servers
/// (the nodes of one run) broadcast `i` goes to server `i % servers.len()`,
/// so every node accepts its share.
pub(super) async fn submit(
    http: &reqwest::Client,
    servers: &[SocketAddr],
    load: Load<'_>,
) -> anyhow::Result<f64> {
    anyhow::ensure!(!servers.is_empty(), "no server to submit to");
    let Load {
        count,
        first_index,
        destinations,
        severity,
        submitters,
        per_sec,
    } = load;
    let urls: Vec<Arc<str>> = servers
        .iter()
        .map(|server| Arc::from(format!("http://{server}/v1/broadcasts")))
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(submitters.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        if let Some(rate) = per_sec {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let http = http.clone();
        let url = urls[i % urls.len()].clone();
        let body = payload(first_index + i, destinations, severity);
        tasks.spawn(async move {
            let _permit = permit;
            let response = http
                .post(&*url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let _ = response.bytes().await?;
            anyhow::ensure!(
                status.as_u16() == 202,
                "herald answered HTTP {status} to a valid broadcast"
            );
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The no-store baseline: `requests` POSTs straight to the mock, spread over
/// `destinations` paths, `in_flight` at once.
pub(super) async fn baseline(
    http: &reqwest::Client,
    mock: SocketAddr,
    requests: usize,
    destinations: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let body = bytes_payload();
    for i in 0..requests {
        let permit = slots.clone().acquire_owned().await?;
        let http = http.clone();
        let url = format!("http://{mock}/baseline/d{}", i % destinations);
        let body = body.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("baseline-{i}"))
                .body(body)
                .send()
                .await?;
            let ok = response.status().is_success();
            let _ = response.bytes().await?;
            anyhow::ensure!(ok, "the mock refused a baseline request");
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

pub(super) fn bytes_payload() -> axum::body::Bytes {
    // The same shape and size as herald's webhook payload.
    axum::body::Bytes::from_static(
        br#"{"type":"incident.message","timestamp":"2026-11-27T23:31:02.120Z","data":{"broadcast_id":"01M8FP314VJG503MQ8TWFEJMFD","destination":"d0","title":"INC-1: bench load","body":"Synthetic load from herald bench. Checkout latency above threshold on 3 of 8 nodes.","severity":"P3","thread":null,"resolved":false}}"#,
    )
}
