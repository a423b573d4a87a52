//! `herald demo`'s second act: Slack and Teams are both down when a P1
//! arrives; its route promises a confirmation on one of them within 10 s.
//! The deadline passes, herald escalates once: PagerDuty gets the message
//! and the ops webhook a meta-alert naming what failed and why. A server
//! and a mock of their own, on a database beside the first act's.
//! `demo.rs` calls it and hands it its helpers (a destination at the mock,
//! where it sends), so this file does not import `demo.rs` back.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::api::wire::SendRequest;
use crate::client::Client;
use crate::config::{Config, Destination};
use crate::domain::{Objective, Severity};
use crate::mock::{Faults, FaultsFile};
use crate::routing::{Route, Routing};

/// The objective's window in the demo.
const WITHIN_MS: i64 = 10_000;
/// How long the act waits for the escalation and its deliveries, at most.
const ACT_MS_MAX: u64 = 60_000;
/// How often the act looks at the broadcast.
const POLL_MS: u64 = 250;

const CHAT: [(&str, &str); 2] = [("slack", "slack-incidents"), ("teams", "teams-ops")];
const FALLBACK: (&str, &str) = ("pagerduty", "pagerduty-oncall");
const META: (&str, &str) = ("webhook", "ops-webhook");

/// A destination of a kind at the mock (base, kind, name): `demo::mock_destination`.
pub type MockDestination = fn(&str, &str, &str) -> Destination;
/// Where a destination of a kind sends at the mock (kind, name):
/// `demo::mock_send_path`.
pub type MockSendPath = fn(&str, &str) -> String;

/// Plays the act, printing to `out`; true when the escalation happened
/// once, and the fallback and the meta-alert landed once each.
pub async fn second_act(
    workdir: &std::path::Path,
    out: &mut impl Write,
    mock_destination: MockDestination,
    mock_send_path: MockSendPath,
) -> anyhow::Result<bool> {
    let down = Faults {
        fail_first: u32::MAX,
        fail_status: 503,
        ..Faults::default()
    };
    let mut faults = FaultsFile::default();
    for (kind, name) in CHAT {
        faults
            .paths
            .insert(mock_send_path(kind, name), down.clone());
    }
    let mock = crate::mock::start(TcpListener::bind("127.0.0.1:0").await?, faults)?;
    let mock_base = format!("http://{}", mock.addr);
    let names = |list: &[(&str, &str)]| -> Vec<String> {
        list.iter().map(|(_, name)| (*name).to_owned()).collect()
    };
    let route = Route {
        name: "p1-objective".into(),
        severities: vec![Severity::P1],
        labels: Vec::new(),
        source: None,
        targets: names(&CHAT),
        continue_matching: false,
        objective: Some(Objective {
            any: 1,
            of: names(&CHAT),
            within_ms: WITHIN_MS,
            fallback: vec![FALLBACK.1.to_owned()],
            on_escalation: Some(META.1.to_owned()),
        }),
    };
    let config = Config {
        database: workdir.join("herald-act-two.db"),
        destinations: CHAT
            .iter()
            .chain([&FALLBACK, &META])
            .map(|(kind, name)| mock_destination(&mock_base, kind, name))
            .collect(),
        routing: Routing {
            routes: vec![route],
            ..Routing::default()
        },
        ..Config::default()
    };
    let server = crate::server::start(config, TcpListener::bind("127.0.0.1:0").await?).await?;
    writeln!(
        out,
        "\nact two: Slack and Teams are both down. The P1 route promises a confirmation on one of them within {} s, else PagerDuty and a meta-alert to the ops webhook.",
        WITHIN_MS / 1_000
    )?;
    let client = Client::new(&format!("http://{}", server.addr))?;
    let accepted = client
        .send(&SendRequest {
            title: "INC-43: payments API returning 500s".into(),
            body: Some("Error rate above 20% for 5 minutes.".into()),
            severity: Some("P1".into()),
            thread: Some("INC-43".into()),
            ..SendRequest::default()
        })
        .await?;
    writeln!(out, "p1      accepted as broadcast {}", accepted.id)?;
    let started = Instant::now();
    let mut said = String::new();
    let mut children_final = false;
    let mut last = accepted;
    while started.elapsed() < Duration::from_millis(ACT_MS_MAX) {
        let objective = last.objective.clone().unwrap_or_default();
        // Printed when it changes: each second left while pending.
        let line = format!("objective {}", objective.summary);
        if line != said {
            writeln!(out, "[{:>6.2}s] {line}", started.elapsed().as_secs_f64())?;
            said = line;
        }
        if objective.state == "escalated" {
            let mut finals = Vec::new();
            for id in [
                &objective.fallback_broadcast,
                &objective.meta_alert_broadcast,
            ]
            .into_iter()
            .flatten()
            {
                finals.push(client.status(id).await?);
            }
            if finals.iter().all(|b| b.is_final()) {
                for broadcast in &finals {
                    let delivery = &broadcast.deliveries[0];
                    writeln!(
                        out,
                        "[{:>6.2}s] {:<16} {} ({})",
                        started.elapsed().as_secs_f64(),
                        format!("{}:", delivery.destination),
                        delivery.describe(),
                        broadcast.title
                    )?;
                }
                if let Some(meta) = finals.get(1) {
                    for line in meta.body.lines().filter(|l| l.starts_with("- ")) {
                        writeln!(out, "          meta-alert: {line}")?;
                    }
                }
                children_final = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        last = client.status(&last.id).await?;
    }
    let stats = mock.stats();
    let receipts = |kind: &str, name: &str| {
        stats
            .paths
            .get(&mock_send_path(kind, name))
            .map_or(0, |p| p.receipts)
    };
    let paged = receipts(FALLBACK.0, FALLBACK.1);
    let meta_alerts = stats
        .paths
        .get(&mock_send_path(META.0, META.1))
        .map_or(0, |p| p.distinct);
    writeln!(
        out,
        "{:<16} {paged} message(s)\n{:<16} {meta_alerts} meta-alert(s)",
        FALLBACK.1, META.1
    )?;
    let once = children_final && paged == 1 && meta_alerts == 1;
    writeln!(
        out,
        "{}",
        if once {
            "the objective passed unmet: escalated once, the fallback and the meta-alert landed once each"
        } else {
            "NOT escalated as expected: see above"
        }
    )?;
    server.stop().await;
    mock.stop().await;
    Ok(once)
}
