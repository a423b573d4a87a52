//! Four webhooks through real HTTP, three of them misbehaving, each
//! converging on its own.

use std::time::Duration;

use herald::config::{Target, WebhookSecret};
use herald::demo::{mock_destination, random_secret_text};
use herald::mock::Faults;

use crate::support::*;

/// Four webhooks and what goes wrong with each.
fn scenario() -> Vec<(&'static str, Faults)> {
    vec![
        ("slack-sim", Faults::default()),
        (
            "teams-sim",
            Faults {
                rate_limit_first: 1,
                retry_after_secs: 2,
                ..Faults::default()
            },
        ),
        (
            "jira-sim",
            Faults {
                fail_first: 3,
                fail_status: 503,
                ..Faults::default()
            },
        ),
        (
            "status-hook",
            Faults {
                drop_first: 1,
                drop_hang_ms: 10_000,
                ..Faults::default()
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_destination_converges_on_its_own_without_duplicates() {
    let dir = temp_dir();
    let secret = random_secret_text();
    let paths: Vec<(String, Faults)> = scenario()
        .into_iter()
        .map(|(name, faults)| {
            (
                format!("/hooks/{name}"),
                Faults {
                    secret: Some(secret.clone()),
                    ..faults
                },
            )
        })
        .collect();
    let path_refs: Vec<(&str, Faults)> =
        paths.iter().map(|(p, f)| (p.as_str(), f.clone())).collect();
    let mock = start_mock(&path_refs).await;
    let destinations = scenario()
        .into_iter()
        .map(|(name, _)| {
            let mut d = mock_destination(&format!("http://{}", mock.addr), "webhook", name);
            if let Target::Webhook { secret: s, .. } = &mut d.target {
                *s = Some(WebhookSecret::parse(&secret).unwrap());
            }
            d
        })
        .collect();
    let server = start_server(&dir.path().join("herald.db"), destinations).await;
    let client = client(&server);

    let names: Vec<&str> = scenario().iter().map(|(n, _)| *n).collect();
    let accepted = client
        .send(&request("INC-42: checkout database down", &names))
        .await
        .unwrap();
    assert_eq!(accepted.status, "delivering");
    assert_eq!(accepted.deliveries.len(), 4);

    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    for delivery in &done.deliveries {
        assert_eq!(delivery.state, "confirmed", "{delivery:#?}");
        assert!(!delivery.possible_duplicate);
    }

    let stats = mock.stats();
    let healthy = stats.path("/hooks/slack-sim");
    assert_eq!(
        (healthy.requests, healthy.distinct),
        (1, 1),
        "the healthy destination got exactly one request"
    );

    let failing = stats.path("/hooks/jira-sim");
    assert_eq!(failing.requests, 4, "three failures then one success");
    assert_eq!(
        failing.distinct, 1,
        "every attempt carried the same idempotency key"
    );

    let limited = stats.path("/hooks/teams-sim");
    assert_eq!(
        (limited.requests, limited.rate_limited, limited.distinct),
        (2, 1, 1)
    );
    let gap_ms = limited.arrivals_ms[1] - limited.arrivals_ms[0];
    assert!(
        gap_ms >= 2_000,
        "the retry came {gap_ms} ms after a 429 with Retry-After: 2"
    );

    let dropped = stats.path("/hooks/status-hook");
    assert_eq!(
        (
            dropped.requests,
            dropped.dropped,
            dropped.distinct,
            dropped.duplicates
        ),
        (2, 1, 1, 1),
        "the dropped answer was re-sent once, with the same key, and deduplicated"
    );
    let status_hook = done
        .deliveries
        .iter()
        .find(|d| d.destination == "status-hook")
        .unwrap();
    let outcomes: Vec<(&str, &str)> = status_hook
        .attempts
        .iter()
        .map(|a| (a.kind.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ]
    );

    for (path, s) in &stats.paths {
        assert_eq!(
            s.bad_signature, 0,
            "{path} rejected a Standard Webhooks signature"
        );
    }
    server.stop().await;
    mock.stop().await;
}
