//! The operator's surface through real HTTP: idempotent ingest, retry after
//! dead, Alertmanager threads, auth, live events, graceful shutdown.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::api::wire::{Broadcast, ErrorBody};
use herald::client::Client;
use herald::config::{AlertmanagerRoutes, Config};
use herald::mock::Faults;

use crate::support::*;

fn http() -> reqwest::Client {
    herald::connector::http_client_builder().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_creates_one_broadcast() {
    let dir = temp_dir();
    let database = dir.path().join("herald.db");
    let mock = start_mock(&[("/hooks/a", Faults::default())]).await;
    let server = start_server(&database, vec![webhook(&mock, "a")]).await;
    let url = format!("http://{}/v1/broadcasts", server.addr);
    let body = r#"{"title": "INC-1 api down", "destinations": ["a"]}"#;
    let post = |body: &'static str| {
        let url = url.clone();
        async move {
            let response = http()
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "deploy-7f3a")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap())
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        requests.spawn(post(body));
    }
    let mut ids = std::collections::HashSet::new();
    let (mut accepted, mut conflicts) = (0, 0);
    while let Some(answer) = requests.join_next().await {
        let (status, bytes) = answer.unwrap();
        match status {
            202 => {
                accepted += 1;
                ids.insert(serde_json::from_slice::<Broadcast>(&bytes).unwrap().id);
            }
            409 => {
                conflicts += 1;
                let error: ErrorBody = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(error.error.code, "idempotency_key_in_flight");
            }
            other => panic!(
                "unexpected HTTP {other}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    assert!(accepted >= 1, "{accepted} accepted, {conflicts} conflicts");
    assert_eq!(ids.len(), 1, "every 202 names the same broadcast");
    assert_eq!(accepted + conflicts, 20);

    let (status, bytes) = post(body).await;
    assert_eq!(status, 202, "a later replay gets the first answer again");
    assert!(ids.contains(&serde_json::from_slice::<Broadcast>(&bytes).unwrap().id));

    let (status, bytes) = post(r#"{"title": "INC-2 something else", "destinations": ["a"]}"#).await;
    assert_eq!(status, 422);
    let error: ErrorBody = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(error.error.code, "idempotency_key_reused");
    assert_eq!(error.error.field.as_deref(), Some("Idempotency-Key"));

    server.stop().await;
    assert_eq!(count_rows(&database, "broadcasts"), 1);
    assert_eq!(mock.stats().path("/hooks/a").distinct, 1);
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_brings_a_dead_delivery_back_with_the_same_key_and_touches_nothing_else() {
    let dir = temp_dir();
    let mock = start_mock(&[
        (
            "/hooks/flaky",
            Faults {
                fail_first: 3,
                fail_status: 503,
                ..Faults::default()
            },
        ),
        ("/hooks/steady", Faults::default()),
    ])
    .await;
    let mut flaky = webhook(&mock, "flaky");
    flaky.policy.attempts_max = 3;
    flaky.policy.base_ms = 20;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![flaky, webhook(&mock, "steady")],
    )
    .await;
    let client = client(&server);
    let accepted = client
        .send(&request("INC-5 payments degraded", &["flaky", "steady"]))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "partial");
    let dead = done
        .deliveries
        .iter()
        .find(|d| d.destination == "flaky")
        .unwrap();
    assert_eq!((dead.state.as_str(), dead.attempts_made), ("dead", 3));
    assert_eq!(mock.stats().path("/hooks/flaky").requests, 3);

    mock.set_faults("/hooks/flaky", Faults::default()); // the destination heals
    let output = tokio::task::spawn_blocking({
        let id = accepted.id.clone();
        let server_url = format!("http://{}", server.addr);
        move || {
            Command::new(HERALD)
                .args(["retry", &id, "--to", "flaky", "--server", &server_url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = wait_final(&client, &accepted.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let flaky = mock.stats().path("/hooks/flaky");
    assert_eq!(
        (flaky.requests, flaky.distinct),
        (4, 1),
        "one more request, under the same key"
    );
    assert_eq!(
        mock.stats().path("/hooks/steady").requests,
        1,
        "the other destination got nothing new"
    );

    // Retrying again is a no-op: nothing is failed or dead any more.
    let again = client.retry(&accepted.id, vec![]).await.unwrap();
    assert_eq!(again.broadcast.status, "converged");
    assert!(again.changed.is_empty());
    server.stop().await;
    assert_eq!(mock.stats().path("/hooks/flaky").requests, 4);
    mock.stop().await;
}

const FIRING: &str = r#"{
  "version": "4",
  "groupKey": "{}/{severity=\"critical\"}:{alertname=\"CheckoutDown\"}",
  "truncatedAlerts": 0,
  "status": "firing",
  "receiver": "oncall",
  "groupLabels": {"alertname": "CheckoutDown"},
  "commonLabels": {"alertname": "CheckoutDown", "severity": "critical", "service": "checkout"},
  "commonAnnotations": {"summary": "checkout error rate above 50%"},
  "externalURL": "http://alertmanager.internal:9093",
  "alerts": [{
    "status": "firing",
    "labels": {"alertname": "CheckoutDown", "severity": "critical", "service": "checkout", "instance": "checkout-1"},
    "annotations": {"summary": "checkout error rate above 50%"},
    "startsAt": "2026-11-27T23:10:00.000Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus.internal:9090/graph?g0.expr=errors",
    "fingerprint": "5b1c2d3e4f5a6b7c"
  }]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_firing_then_resolved_land_in_order_on_one_thread() {
    let dir = temp_dir();
    let slow = Faults {
        latency_ms: 300,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/a", slow.clone()), ("/hooks/b", slow)]).await;
    let config = Config {
        database: dir.path().join("herald.db"),
        destinations: vec![webhook(&mock, "a"), webhook(&mock, "b")],
        alertmanager: Some(AlertmanagerRoutes {
            destinations: vec!["a".into(), "b".into()],
            ..Default::default()
        }),
        ..Config::default()
    };
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/v1/ingest/alertmanager", server.addr);
    let mut broadcasts = Vec::new();
    for payload in [
        FIRING.to_owned(),
        FIRING.replace("\"status\": \"firing\"", "\"status\": \"resolved\""),
    ] {
        let response = http()
            .post(&url)
            .header("content-type", "application/json")
            .body(payload)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        broadcasts
            .push(serde_json::from_slice::<Broadcast>(&response.bytes().await.unwrap()).unwrap());
    }
    assert_eq!(broadcasts[0].thread, broadcasts[1].thread);
    // Alertmanager re-sending the same notification (it saw a timeout) gets
    // the same broadcast, not a second page.
    let again = http()
        .post(&url)
        .header("content-type", "application/json")
        .body(FIRING)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(
        serde_json::from_slice::<Broadcast>(&again.bytes().await.unwrap())
            .unwrap()
            .id,
        broadcasts[0].id
    );
    assert!(broadcasts[0].title.starts_with("[FIRING:1] CheckoutDown"));
    assert!(broadcasts[1].title.starts_with("[RESOLVED] CheckoutDown"));
    assert_eq!(broadcasts[0].severity, "P1");
    let client = client(&server);
    let firing = wait_final(&client, &broadcasts[0].id, Duration::from_secs(20)).await;
    let resolved = wait_final(&client, &broadcasts[1].id, Duration::from_secs(20)).await;
    for destination in ["a", "b"] {
        let of = |b: &Broadcast| {
            b.deliveries
                .iter()
                .find(|d| d.destination == destination)
                .unwrap()
                .clone()
        };
        let (first, update) = (of(&firing), of(&resolved));
        assert_eq!(
            (first.state.as_str(), update.state.as_str()),
            ("confirmed", "confirmed")
        );
        let firing_done = &first.attempts.last().unwrap().finished_at;
        let resolved_sent = &update.attempts.first().unwrap().started_at;
        assert!(resolved_sent >= firing_done, "{destination}: resolved sent at {resolved_sent}, before firing confirmed at {firing_done}");
        assert_eq!(
            mock.stats().path(&format!("/hooks/{destination}")).distinct,
            2
        );
    }
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_show_every_change_in_order_and_end_with_the_final_state() {
    let dir = temp_dir();
    let mock = start_mock(&[(
        "/hooks/a",
        Faults {
            fail_first: 2,
            fail_status: 503,
            // The stream must be open before the first outcome lands, also
            // on a loaded machine, or its snapshot skips "retrying 1".
            latency_ms: 300,
            ..Faults::default()
        },
    )])
    .await;
    let mut a = webhook(&mock, "a");
    a.policy.base_ms = 50;
    let server = start_server(&dir.path().join("herald.db"), vec![a]).await;
    let client = client(&server);
    let accepted = client
        .send(&request("INC-8 queue backed up", &["a"]))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = client
        .watch(&accepted.id, |_, delivery| {
            seen.push((delivery.state.clone(), delivery.attempts_made))
        })
        .await
        .unwrap();
    assert_eq!(done.status, "converged");
    assert_eq!(seen.last().unwrap().0, "confirmed", "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "attempt numbers only grow: {seen:?}"
    );
    let retries: Vec<u32> = seen
        .iter()
        .filter(|(s, _)| s == "retrying")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(retries, [1, 2], "{seen:?}");

    // The raw stream of a final broadcast: a snapshot, then the status event.
    let text = http()
        .get(format!(
            "http://{}/v1/broadcasts/{}/events",
            server.addr, accepted.id
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events, ["delivery", "status"], "{text}");
    assert!(text.contains("\"status\":\"converged\""), "{text}");
    server.stop().await;
    mock.stop().await;
}

/// A config file with three tokens, for the process tests.
fn token_config(mock_url: &str) -> (String, [String; 3]) {
    let mut config = format!(
        "[destinations.a]\nkind = \"webhook\"\nurl = \"{mock_url}\"\nretry = {{ base_ms = 50 }}\n\n"
    );
    let mut secrets = Vec::new();
    for (name, scopes) in [
        ("sender", "[\"send\"]"),
        ("reader", "[\"read\"]"),
        ("operator", "[\"operate\", \"read\"]"),
    ] {
        let (token, sha256) = herald::api::auth::new_token();
        config.push_str(&format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\nscopes = {scopes}\n\n"
        ));
        secrets.push(token);
    }
    (config, secrets.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_401_and_403_and_no_token_reaches_the_log() {
    let dir = temp_dir();
    let mock = start_mock(&[("/hooks/a", Faults::default())]).await;
    let (config, [sender, reader, operator]) = token_config(&mock.url("/hooks/a"));
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("herald.log");
    let addr = free_addr();
    let mut child = spawn_server_with_env(
        &config_path,
        &dir.path().join("herald.db"),
        addr,
        &log,
        &[("RUST_LOG", "debug")],
    );
    wait_healthy(addr).await;
    let base = format!("http://{addr}");
    let http = http();
    let call = |method: &str, path: &str, token: Option<&str>| {
        let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if method == "POST" {
            request = request.header("content-type", "application/json");
        }
        let body = if path == "/v1/broadcasts" {
            r#"{"title": "t", "destinations": ["a"]}"#
        } else {
            ""
        };
        let request = request.body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let created = Client::with_token(&base, Some(sender.clone()))
        .unwrap()
        .send(&request("INC-3 auth test", &["a"]))
        .await
        .unwrap();
    let id = created.id.as_str();
    let routes = [
        ("POST", "/v1/broadcasts".to_owned(), &sender, &reader),
        ("GET", "/v1/broadcasts".to_owned(), &reader, &sender),
        ("GET", format!("/v1/broadcasts/{id}"), &reader, &sender),
        (
            "POST",
            format!("/v1/broadcasts/{id}/retry"),
            &operator,
            &reader,
        ),
        (
            "POST",
            format!("/v1/broadcasts/{id}/cancel"),
            &operator,
            &sender,
        ),
        ("GET", "/v1/destinations".to_owned(), &reader, &sender),
        (
            "POST",
            "/v1/ingest/alertmanager".to_owned(),
            &sender,
            &reader,
        ),
    ];
    for (method, path, allowed, forbidden) in &routes {
        assert_eq!(
            call(method, path, None).await,
            401,
            "{method} {path} without a token"
        );
        assert_eq!(
            call(method, path, Some("hrld_not-a-real-token")).await,
            401,
            "{method} {path} with an unknown token"
        );
        assert_eq!(
            call(method, path, Some(forbidden)).await,
            403,
            "{method} {path} without the scope"
        );
        let status = call(method, path, Some(allowed)).await;
        assert!(
            ![401, 403].contains(&status),
            "{method} {path} with the right token got {status}"
        );
    }
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(call("GET", open, None).await, 200, "{open} is open");
    }
    let events = Client::with_token(&base, Some(reader.clone())).unwrap();
    let followed = tokio::time::timeout(Duration::from_secs(30), events.watch(id, |_, _| {})).await;
    assert_eq!(
        followed.expect("the stream ends").unwrap().id,
        id,
        "the reader can follow events; /v1/destinations and /metrics answered"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("broadcast accepted"),
        "the log was captured"
    );
    for secret in [&sender, &reader, &operator] {
        assert!(
            !logged.contains(secret.as_str()),
            "a token's secret is in the log"
        );
        assert!(
            !logged.contains(&secret["hrld_".len()..]),
            "part of a token's secret is in the log"
        );
    }
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() {
    let dir = temp_dir();
    // 200 deliveries per destination, 2 at a time, 100 ms each: about 10 s
    // of work, so SIGTERM lands mid-run however slow the machine is.
    let slow = Faults {
        latency_ms: 100,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/a", slow.clone()), ("/hooks/b", slow)]).await;
    let mut config = String::new();
    for name in ["a", "b"] {
        config.push_str(&format!(
            "[destinations.{name}]\nkind = \"webhook\"\nurl = \"{}\"\nconcurrency = 2\nretry = {{ base_ms = 50, cap_ms = 500 }}\n\n",
            mock.url(&format!("/hooks/{name}"))
        ));
    }
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let (database, log, addr) = (
        dir.path().join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    let mut child = spawn_server(&config_path, &database, addr, &log);
    wait_healthy(addr).await;
    let client = Arc::new(Client::new(&format!("http://{addr}")).unwrap());
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        sends.spawn(async move {
            let request = request(&format!("INC-{i} load"), &["a", "b"]);
            client.send(&request).await.unwrap().id
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = sends.join_next().await {
        ids.push(id.unwrap());
    }
    let delivered_before: u64 = mock.stats().paths.values().map(|s| s.distinct).sum();
    assert!(
        delivered_before < 400,
        "the load is still in flight when SIGTERM arrives"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped_by = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < stopped_by,
            "herald did not stop within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "herald exits cleanly on SIGTERM: {exit:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopping"));
    let interrupted: i64 = rusqlite::Connection::open(&database)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE state = 'sending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(interrupted, 0, "a clean stop leaves no attempt in doubt");

    let mut child = spawn_server(&config_path, &database, addr, &log);
    wait_healthy(addr).await;
    for id in &ids {
        assert_eq!(
            wait_final(&client, id, Duration::from_secs(60))
                .await
                .status,
            "converged"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for path in ["/hooks/a", "/hooks/b"] {
        assert_eq!(
            mock.stats().path(path).distinct,
            200,
            "{path}: nothing lost"
        );
    }
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_an_attempt_that_outlives_the_deadline() {
    let dir = temp_dir();
    // The destination takes the message and then never answers.
    let mock = start_mock(&[(
        "/hooks/slow",
        Faults {
            drop_first: 1,
            drop_hang_ms: 60_000,
            ..Faults::default()
        },
    )])
    .await;
    let config = format!(
        "[destinations.slow]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout_ms = 60000\nretry = {{ base_ms = 50 }}\n",
        mock.url("/hooks/slow")
    );
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let (database, log, addr) = (
        dir.path().join("herald.db"),
        dir.path().join("herald.log"),
        free_addr(),
    );
    let mut child = spawn_server(&config_path, &database, addr, &log);
    wait_healthy(addr).await;
    let client = Client::new(&format!("http://{addr}")).unwrap();
    let id = client
        .send(&request("INC-11 slow receiver", &["slow"]))
        .await
        .unwrap()
        .id;
    while mock.stats().path("/hooks/slow").requests == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "no exit within the shutdown deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success());
    assert!(std::fs::read_to_string(&log).unwrap().contains("abandoned"));

    let mut child = spawn_server(&config_path, &database, addr, &log);
    wait_healthy(addr).await;
    let done = wait_final(&client, &id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged");
    let outcomes: Vec<&str> = done.deliveries[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["interrupted", "unknown", "success"],
        "verified before the re-send"
    );
    let stats = mock.stats().path("/hooks/slow");
    assert_eq!((stats.requests, stats.distinct), (2, 1));
    child.kill().unwrap();
    child.wait().unwrap();
    mock.stop().await;
}
