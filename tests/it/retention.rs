//! Retention through the real server: finished broadcasts past
//! `server.broadcast_retention_secs` go, with their deliveries and
//! attempts; unfinished ones stay however old; `/metrics` counts what is
//! stored.

use std::time::{Duration, Instant};

use herald::config::Config;
use herald::mock::Faults;

use crate::support::{
    client, count_rows, metric, request, start_mock, temp_dir, wait_final, webhook,
};

fn http() -> reqwest::Client {
    herald::connector::http_client_builder().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_broadcasts_past_their_retention_are_deleted_and_unfinished_ones_stay() {
    let dir = temp_dir();
    let database = dir.path().join("herald.db");
    let down = Faults {
        fail_first: 1_000,
        fail_status: 503,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/down", down)]).await;
    let mut failing = webhook(&mock, "down");
    failing.policy.attempts_max = 100;
    let config = Config {
        database: database.clone(),
        destinations: vec![webhook(&mock, "ok"), failing],
        broadcast_retention_secs: 1,
        ..Config::default()
    };
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let api = client(&server);
    let done = api.send(&request("delivered", &["ok"])).await.unwrap();
    let open = api
        .send(&request("still retrying", &["down"]))
        .await
        .unwrap();
    wait_final(&api, &done.id, Duration::from_secs(20)).await;
    assert_eq!(
        metric(server.addr, "herald_broadcasts_stored").await,
        Some(2.0)
    );
    assert!(count_rows(&database, "attempts") >= 2);

    // The finished one goes once it is a second old.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http()
            .get(format!("http://{}/v1/broadcasts/{}", server.addr, done.id))
            .send()
            .await
            .unwrap();
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "{} was never deleted", done.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The unfinished one stays, with its delivery and every attempt.
    let still = api.status(&open.id).await.unwrap();
    assert!(!still.is_final(), "{still:#?}");
    assert!(!still.deliveries[0].attempts.is_empty());
    assert_eq!(count_rows(&database, "broadcasts"), 1);
    assert_eq!(count_rows(&database, "deliveries"), 1);
    let attempts = count_rows(&database, "attempts") as usize;
    assert!(attempts >= still.deliveries[0].attempts.len(), "{attempts}");
    assert_eq!(
        metric(server.addr, "herald_broadcasts_stored").await,
        Some(1.0)
    );
    server.stop().await;
}
