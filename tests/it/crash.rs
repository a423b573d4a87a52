//! kill -9 at random moments: every accepted broadcast still converges, the
//! destinations see each message once, and the database stays sound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::client::Client;
use herald::mock::Faults;
use rand::{Rng, SeedableRng};

use crate::support::*;

const BROADCASTS: usize = 300;
const DESTINATIONS: [&str; 3] = ["alpha", "bravo", "charlie"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_mid_delivery_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let seed: u64 = rand::random();
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = temp_dir();
    let slow = Faults {
        latency_ms: 30,
        ..Faults::default()
    };
    let paths: Vec<(String, Faults)> = DESTINATIONS
        .iter()
        .map(|d| (format!("/hooks/{d}"), slow.clone()))
        .collect();
    let path_refs: Vec<(&str, Faults)> =
        paths.iter().map(|(p, f)| (p.as_str(), f.clone())).collect();
    let mock = start_mock(&path_refs).await;

    let mut config = String::new();
    for name in DESTINATIONS {
        config.push_str(&format!(
            "[destinations.{name}]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout_ms = 2000\nconcurrency = 4\nretry = {{ attempts_max = 10, base_ms = 100, cap_ms = 1000 }}\n\n",
            mock.url(&format!("/hooks/{name}"))
        ));
    }
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let database = dir.path().join("herald.db");
    let log = dir.path().join("herald.log");
    let addr = free_addr();

    let mut child = spawn_server(&config_path, &database, addr, &log);
    wait_healthy(addr).await;
    let client = Arc::new(Client::new(&format!("http://{addr}")).unwrap());

    let mut sends = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..BROADCASTS {
        let client = client.clone();
        let slots = slots.clone();
        sends.spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            client
                .send(&request(&format!("INC-{i}: crash test"), &DESTINATIONS))
                .await
                .unwrap()
                .id
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = sends.join_next().await {
        ids.push(id.unwrap());
    }
    assert_eq!(ids.len(), BROADCASTS);

    for kill in 1..=2 {
        let delay_ms = rng.random_range(100..900);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let received: u64 = mock.stats().paths.values().map(|s| s.distinct).sum();
        eprintln!(
            "kill {kill} after {delay_ms} ms: {received} of {} messages had arrived",
            BROADCASTS * 3
        );
        child = spawn_server(&config_path, &database, addr, &log);
        wait_healthy(addr).await;
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending = ids.clone();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} broadcasts did not converge",
            pending.len()
        );
        let mut still = Vec::new();
        for id in pending {
            let broadcast = client.status(&id).await.unwrap();
            if !broadcast.is_final() {
                still.push(id);
            } else {
                assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let converged_after = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();

    let stats = mock.stats();
    let mut resent = 0;
    for name in DESTINATIONS {
        let s = stats.path(&format!("/hooks/{name}"));
        assert_eq!(
            s.distinct, BROADCASTS as u64,
            "{name}: lost messages ({s:?})"
        );
        resent += s.duplicates;
    }
    let conn = rusqlite::Connection::open(&database).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let interrupted: i64 = conn
        .query_row(
            "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    eprintln!(
        "crash test: {BROADCASTS} broadcasts x {} destinations converged {:.1}s after start; \
         {interrupted} attempts interrupted by SIGKILL were verified, {resent} re-sends were deduplicated by key, 0 lost",
        DESTINATIONS.len(),
        converged_after.as_secs_f64()
    );
    mock.stop().await;
}
