//! `herald demo`: the mock and the server in one process, on free ports,
//! with a temporary database; one P1 to four webhook destinations with
//! faults scripted, and the convergence printed live.

use std::io::Write;

use base64::Engine;
use rand::Rng;
use tokio::net::TcpListener;

use crate::api::wire::SendRequest;
use crate::client::Client;
use crate::config::{Config, Destination, Target, WebhookSecret};
use crate::domain::RetryPolicy;
use crate::mock::{Faults, FaultsFile};

/// The four destinations of the demo and what goes wrong with each.
pub fn demo_faults() -> Vec<(&'static str, &'static str, Faults)> {
    vec![
        ("slack-sim", "healthy", Faults::default()),
        (
            "teams-sim",
            "rate limited once (429, Retry-After: 2)",
            Faults {
                rate_limit_first: 1,
                retry_after_secs: 2,
                ..Faults::default()
            },
        ),
        (
            "jira-sim",
            "fails three times (503)",
            Faults {
                fail_first: 3,
                fail_status: 503,
                ..Faults::default()
            },
        ),
        (
            "status-hook",
            "accepts once, then drops the response",
            Faults {
                drop_first: 1,
                drop_hang_ms: 10_000,
                ..Faults::default()
            },
        ),
    ]
}

/// The demo's destination config for a mock at `mock_base`: short timeouts
/// and backoff so the run takes seconds.
pub fn demo_destinations(mock_base: &str, secrets: &[WebhookSecret]) -> Vec<Destination> {
    demo_faults()
        .into_iter()
        .zip(secrets)
        .map(|((name, _, _), secret)| Destination {
            name: name.to_owned(),
            target: Target::Webhook {
                url: reqwest::Url::parse(&format!("{mock_base}/hooks/{name}")).expect("valid URL"),
                secret: Some(secret.clone()),
            },
            timeout_ms: 1_000,
            concurrency: 4,
            policy: RetryPolicy {
                attempts_max: 8,
                base_ms: 500,
                cap_ms: 5_000,
                deadline_ms: None,
            },
            isolation: Default::default(),
        })
        .collect()
}

/// A fresh random Standard Webhooks secret, as text (`whsec_...`).
pub fn random_secret_text() -> String {
    let key: [u8; 32] = rand::rng().random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Runs the demo, printing to `out`. Returns whether every destination
/// ended confirmed with exactly one message and no duplicated message.
pub async fn run(out: &mut impl Write) -> anyhow::Result<bool> {
    let workdir = std::env::temp_dir().join(format!(
        "herald-demo-{}-{}",
        std::process::id(),
        crate::dispatch::now_ms()
    ));
    std::fs::create_dir_all(&workdir)?;
    let result = run_in(&workdir, out).await;
    let _ = std::fs::remove_dir_all(&workdir);
    result
}

async fn run_in(workdir: &std::path::Path, out: &mut impl Write) -> anyhow::Result<bool> {
    let secret_texts: Vec<String> = demo_faults().iter().map(|_| random_secret_text()).collect();
    let secrets: Vec<WebhookSecret> = secret_texts
        .iter()
        .map(|t| WebhookSecret::parse(t).expect("generated secret is valid"))
        .collect();
    let mut faults_file = FaultsFile::default();
    for ((name, _, faults), secret) in demo_faults().into_iter().zip(&secret_texts) {
        faults_file.paths.insert(
            format!("/hooks/{name}"),
            Faults {
                secret: Some(secret.clone()),
                ..faults
            },
        );
    }
    let mock = crate::mock::start(TcpListener::bind("127.0.0.1:0").await?, faults_file)?;
    let mock_base = format!("http://{}", mock.addr);
    let config = Config {
        database: workdir.join("herald.db"),
        destinations: demo_destinations(&mock_base, &secrets),
        ..Config::default()
    };
    let server = crate::server::start(config, TcpListener::bind("127.0.0.1:0").await?).await?;
    writeln!(
        out,
        "herald demo: mock destinations at {mock_base}, herald at http://{}",
        server.addr
    )?;
    writeln!(
        out,
        "database: {} (temporary)",
        workdir.join("herald.db").display()
    )?;
    for (name, what, _) in demo_faults() {
        writeln!(out, "  {name:<12} {what}")?;
    }
    let client = Client::new(&format!("http://{}", server.addr))?;
    let request = SendRequest {
        title: "INC-42: checkout database down".into(),
        body: Some(
            "Primary checkout database is not accepting connections. Orders are failing.".into(),
        ),
        severity: Some("P1".into()),
        thread: Some("INC-42".into()),
        resolved: false,
        destinations: demo_faults()
            .iter()
            .map(|(name, _, _)| (*name).to_owned())
            .collect(),
    };
    let accepted = client.send(&request).await?;
    writeln!(
        out,
        "\nP1 accepted as broadcast {} ({} destinations)\n",
        accepted.id,
        accepted.deliveries.len()
    )?;
    let final_state = client
        .watch(&accepted.id, |elapsed, delivery| {
            let _ = writeln!(
                out,
                "[{:>6.2}s] {:<12} {}",
                elapsed.as_secs_f64(),
                format!("{}:", delivery.destination),
                delivery.describe()
            );
        })
        .await?;
    writeln!(
        out,
        "\nbroadcast {}: {}\n",
        final_state.id, final_state.status
    )?;
    let stats = mock.stats();
    writeln!(
        out,
        "{:<12} {:>8} {:>8} {:>9} {:>12}",
        "mock path", "requests", "receipts", "messages", "deduplicated"
    )?;
    let mut one_each = true;
    for (name, _, _) in demo_faults() {
        let s = stats.path(&format!("/hooks/{name}"));
        writeln!(
            out,
            "{:<12} {:>8} {:>8} {:>9} {:>12}",
            name, s.requests, s.receipts, s.distinct, s.duplicates
        )?;
        one_each &= s.distinct == 1 && s.bad_signature == 0;
    }
    let converged = final_state.status == "converged";
    writeln!(
        out,
        "\n{}",
        if converged && one_each {
            "every destination has exactly one message; no message was duplicated (re-sends carried the same Idempotency-Key)"
        } else {
            "NOT converged as expected: see above"
        }
    )?;
    server.stop().await;
    mock.stop().await;
    Ok(converged && one_each)
}
