//! The demo's scenario through real HTTP: four destinations, three of them
//! misbehaving, each converging on its own.

use std::time::Duration;

use herald::config::WebhookSecret;
use herald::demo::{demo_destinations, demo_faults, random_secret_text};
use herald::mock::Faults;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_destination_converges_on_its_own_without_duplicates() {
    let dir = temp_dir();
    let secrets: Vec<String> = demo_faults().iter().map(|_| random_secret_text()).collect();
    let paths: Vec<(String, Faults)> = demo_faults()
        .into_iter()
        .zip(&secrets)
        .map(|((name, _, faults), secret)| {
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
    let parsed: Vec<WebhookSecret> = secrets
        .iter()
        .map(|s| WebhookSecret::parse(s).unwrap())
        .collect();
    let server = start_server(
        &dir.path().join("herald.db"),
        demo_destinations(&format!("http://{}", mock.addr), &parsed),
    )
    .await;
    let client = client(&server);

    let names: Vec<&str> = demo_faults().iter().map(|(n, _, _)| *n).collect();
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
