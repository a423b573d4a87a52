//! Per-destination isolation: the circuit breaker stops hammering a
//! destination that keeps failing and probes it to resume; the token bucket
//! keeps to a destination's rate.

use std::time::Duration;

use herald::api::wire::DestinationHealth;
use herald::config::Isolation;
use herald::mock::Faults;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_failures_in_a_row_and_probes_one_at_a_time() {
    let dir = temp_dir();
    let mock = start_mock(&[(
        "/hooks/sick",
        Faults {
            fail_first: 6,
            fail_status: 503,
            ..Faults::default()
        },
    )])
    .await;
    let mut sick = webhook(&mock, "sick");
    sick.policy.attempts_max = 20;
    sick.policy.base_ms = 10;
    sick.policy.cap_ms = 20;
    sick.isolation = Isolation {
        breaker_failures: 3,
        breaker_cooldown_ms: 500,
        ..Isolation::default()
    };
    let server = start_server(&dir.path().join("herald.db"), vec![sick]).await;
    let client = client(&server);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            client
                .send(&request(&format!("INC-{i} sick"), &["sick"]))
                .await
                .unwrap()
                .id,
        );
    }
    // Three failures in a row open the circuit; the API shows it.
    let health_url = format!("http://{}/v1/destinations", server.addr);
    let http = herald::connector::http_client_builder().build().unwrap();
    let mut saw_open = false;
    for _ in 0..100 {
        let health: Vec<DestinationHealth> = http
            .get(&health_url)
            .send()
            .await
            .unwrap()
            .json_like()
            .await;
        if health[0].circuit == "open" {
            saw_open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_open, "the circuit opened");
    for id in &ids {
        assert_eq!(
            wait_final(&client, id, Duration::from_secs(20))
                .await
                .status,
            "converged"
        );
    }
    let stats = mock.stats().path("/hooks/sick");
    assert_eq!(stats.distinct, 3);
    assert_eq!(
        stats.requests, 9,
        "3 failures open it, 3 failed probes, 1 good probe, then the 2 others"
    );
    // Six failures in all. The third opens the circuit; a few more may
    // already have been in flight (k failures before the first long gap).
    // From then on every request is a lone probe after a full cool-down:
    // the 6 - k failing probes and the one that heals.
    let gaps: Vec<i64> = stats.arrivals_ms.windows(2).map(|p| p[1] - p[0]).collect();
    let first_cooldown = gaps
        .iter()
        .position(|gap| *gap >= 480)
        .expect("the circuit held requests back");
    let failed_before_open = first_cooldown + 1;
    assert!((3..=6).contains(&failed_before_open), "gaps {gaps:?}");
    let probes = 6 - failed_before_open + 1;
    assert!(
        gaps[first_cooldown..first_cooldown + probes]
            .iter()
            .all(|gap| *gap >= 480),
        "a probe did not wait out the cool-down: gaps {gaps:?}"
    );
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_bucket_keeps_to_the_destinations_rate() {
    let dir = temp_dir();
    let mock = start_mock(&[("/hooks/paced", Faults::default())]).await;
    let mut paced = webhook(&mock, "paced");
    paced.isolation = Isolation {
        rate_per_sec: Some(10.0),
        rate_burst: 1,
        ..Isolation::default()
    };
    let server = start_server(&dir.path().join("herald.db"), vec![paced]).await;
    let client = client(&server);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            client
                .send(&request(&format!("INC-{i} paced"), &["paced"]))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        assert_eq!(
            wait_final(&client, id, Duration::from_secs(20))
                .await
                .status,
            "converged"
        );
    }
    let arrivals = mock.stats().path("/hooks/paced").arrivals_ms;
    assert_eq!(arrivals.len(), 10);
    let span_ms = arrivals[9] - arrivals[0];
    assert!(
        span_ms >= 850,
        "10 requests at 10/s with a burst of 1 took {span_ms} ms"
    );
    server.stop().await;
    mock.stop().await;
}

trait JsonLike {
    async fn json_like<T: serde::de::DeserializeOwned>(self) -> T;
}

impl JsonLike for reqwest::Response {
    async fn json_like<T: serde::de::DeserializeOwned>(self) -> T {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}
