//! Live configuration reload: real `herald serve` processes, real SIGHUP,
//! the reload call and the CLI verb, with the mock as destination.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald::api::wire::DestinationHealth;
use herald::client::{Client, ClientError};
use herald::mock::{Faults, RunningMock};

use crate::support::*;

/// A webhook destination at the mock's `/hooks/PATH`, as config text.
pub fn destination_toml(mock: &RunningMock, name: &str, path: &str) -> String {
    format!(
        "[destinations.{name}]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout_ms = 1000\nretry = {{ attempts_max = 50, base_ms = 100, cap_ms = 1000 }}\n\n",
        mock.url(&format!("/hooks/{path}"))
    )
}

/// A token with every scope, as config text, and the token itself.
fn token_toml(name: &str) -> (String, String) {
    let (token, sha256) = herald::api::auth::new_token();
    (
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\nscopes = [\"send\", \"read\", \"operate\"]\n\n"
        ),
        token,
    )
}

pub struct Served {
    pub process: ServerProcess,
    pub addr: SocketAddr,
    pub config: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Served {
    pub fn client(&self, token: Option<&str>) -> Client {
        Client::with_token(&format!("http://{}", self.addr), token.map(str::to_owned)).unwrap()
    }

    pub fn hangup(&self) {
        let status = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(self.process.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Stops the server with SIGTERM and starts it again on the same files.
    pub async fn restart(&mut self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.process.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.process.wait().unwrap();
        self.addr = free_addr();
        self.process = spawn_server(
            &self.config,
            &self.dir.path().join("herald.db"),
            self.addr,
            &self.log,
        );
        wait_healthy(self.addr).await;
    }
}

pub async fn serve(config: &str) -> Served {
    let dir = temp_dir();
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let addr = free_addr();
    let log = dir.path().join("serve.log");
    let process = spawn_server(&config_path, &dir.path().join("herald.db"), addr, &log);
    wait_healthy(addr).await;
    Served {
        process,
        addr,
        config: config_path,
        log,
        dir,
    }
}

/// Polls (at most 20 s) until `check` holds for the server's destinations.
pub async fn wait_destinations(
    client: &Client,
    what: &str,
    check: impl Fn(&[DestinationHealth]) -> bool,
) -> Vec<DestinationHealth> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = client.destinations().await.unwrap();
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "never {what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn still_running(served: &mut Served) {
    assert!(
        served.process.try_wait().unwrap().is_none(),
        "herald serve exited; log:\n{}",
        served.log_text()
    );
}

#[tokio::test]
async fn sighup_adds_a_destination_that_then_takes_and_delivers_broadcasts() {
    let mock = start_mock(&[]).await;
    let first = destination_toml(&mock, "a", "a");
    let mut served = serve(&first).await;
    let client = served.client(None);
    let refused = client.send(&request("before", &["b"])).await.unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api { status: 400, .. }),
        "{refused}"
    );

    std::fs::write(
        &served.config,
        format!("{first}{}", destination_toml(&mock, "b", "b")),
    )
    .unwrap();
    served.hangup();
    wait_destinations(&client, "listed b", |list| {
        list.iter().any(|d| d.name == "b")
    })
    .await;
    still_running(&mut served);

    let accepted = client.send(&request("after", &["a", "b"])).await.unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    assert_eq!(mock.stats().path("/hooks/b").receipts, 1);
    assert_eq!(
        metric(served.addr, "herald_config_last_reload_success").await,
        Some(1.0)
    );
    assert!(served.log_text().contains("configuration reloaded"));
}

#[tokio::test]
async fn an_invalid_file_on_sighup_keeps_the_running_config_and_reports_it() {
    let mock = start_mock(&[]).await;
    let good = destination_toml(&mock, "a", "a");
    let mut served = serve(&good).await;
    assert_eq!(
        metric(served.addr, "herald_config_last_reload_success").await,
        Some(1.0)
    );
    // A new destination of an unknown kind, beside the good one.
    std::fs::write(
        &served.config,
        format!("{good}[destinations.b]\nkind = \"carrier-pigeon\"\nurl = \"http://x\"\n"),
    )
    .unwrap();
    served.hangup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(served.addr, "herald_config_last_reload_success").await != Some(0.0) {
        assert!(Instant::now() < deadline, "the reload gauge never said 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_running(&mut served);
    let log = served.log_text();
    assert!(log.contains("configuration reload failed"), "{log}");
    assert!(
        log.contains("carrier-pigeon"),
        "the log names the problem: {log}"
    );

    // The old configuration still runs: a, and no b.
    let client = served.client(None);
    let names: Vec<String> = client
        .destinations()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a"]);
    let accepted = client.send(&request("still works", &["a"])).await.unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged");
}

#[tokio::test]
async fn the_reload_call_and_verb_answer_the_error_naming_the_problem() {
    let mock = start_mock(&[]).await;
    let good = destination_toml(&mock, "a", "a");
    let served = serve(&good).await;
    let client = served.client(None);
    std::fs::write(
        &served.config,
        format!("{good}[destinations.b]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nconcurrency = \"many\"\n"),
    )
    .unwrap();
    match client.reload_config().await {
        Err(ClientError::Api {
            status,
            code,
            message,
            ..
        }) => {
            assert_eq!((status, code.as_str()), (422, "invalid_config"));
            // The file, the line and what is wrong there.
            assert!(message.contains("herald.toml:10"), "{message}");
            assert!(message.contains("\"many\""), "{message}");
        }
        other => panic!("expected the reload to be refused: {other:?}"),
    }
    assert_eq!(
        metric(served.addr, "herald_config_last_reload_success").await,
        Some(0.0)
    );

    // The CLI verb says the same and exits non-zero.
    let server = format!("http://{}", served.addr);
    let output = std::process::Command::new(HERALD)
        .args(["reload", "--server", &server])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("herald.toml:10"), "{stderr}");

    // Fixed: the reload says what changed, and what takes a restart.
    std::fs::write(
        &served.config,
        format!(
            "[server]\nrequest_timeout_ms = 1234\n\n{good}{}",
            destination_toml(&mock, "b", "b")
        ),
    )
    .unwrap();
    let output = std::process::Command::new(HERALD)
        .args(["reload", "--json", "--server", &server])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let answer: herald::api::wire::ReloadAnswer = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer.added, ["b"]);
    assert!(answer.removed.is_empty() && answer.changed.is_empty());
    assert_eq!(answer.not_applied.len(), 1, "{answer:?}");
    assert!(answer.not_applied[0].contains("server.request_timeout_ms"));
    assert_eq!(
        metric(served.addr, "herald_config_last_reload_success").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_token_added_by_reload_works_and_a_removed_one_stops_working() {
    let mock = start_mock(&[]).await;
    let destination = destination_toml(&mock, "a", "a");
    let (old_toml, old_token) = token_toml("old");
    let (new_toml, new_token) = token_toml("new");
    let served = serve(&format!("{old_toml}{destination}")).await;
    let old = served.client(Some(&old_token));
    let new = served.client(Some(&new_token));
    old.destinations().await.unwrap();
    let refused = new.destinations().await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Api { status: 401, .. }),
        "{refused}"
    );

    std::fs::write(&served.config, format!("{new_toml}{destination}")).unwrap();
    let answer = old.reload_config().await.unwrap();
    assert_eq!(answer.tokens, 1);
    new.destinations().await.unwrap();
    let refused = old.destinations().await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Api { status: 401, .. }),
        "{refused}"
    );
}

#[tokio::test]
async fn a_removed_destinations_deliveries_are_held_until_it_comes_back() {
    // b's first address fails every time: its delivery keeps retrying.
    let mock = start_mock(&[(
        "/hooks/b-down",
        Faults {
            fail_first: 1_000_000,
            fail_status: 503,
            ..Faults::default()
        },
    )])
    .await;
    let a = destination_toml(&mock, "a", "a");
    let mut served = serve(&format!("{a}{}", destination_toml(&mock, "b", "b-down"))).await;
    let client = served.client(None);
    let accepted = client.send(&request("held", &["a", "b"])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.stats().path("/hooks/b-down").failed == 0 {
        assert!(Instant::now() < deadline, "b was never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::write(&served.config, &a).unwrap();
    served.hangup();
    let list = wait_destinations(&client, "listed b as removed", |list| {
        list.iter().any(|d| d.name == "b" && d.status == "removed")
    })
    .await;
    let b = list.iter().find(|d| d.name == "b").unwrap();
    assert_eq!(b.backlog, 1, "{b:#?}");
    still_running(&mut served);
    // Held, not failed: the broadcast is still delivering, b not final.
    let now = client.status(&accepted.id).await.unwrap();
    assert_eq!(now.status, "delivering", "{now:#?}");
    let held = now
        .deliveries
        .iter()
        .find(|d| d.destination == "b")
        .unwrap();
    assert!(
        ["pending", "retrying", "sending", "verifying"].contains(&held.state.as_str()),
        "{held:#?}"
    );
    // Nothing more reaches the old address once the old lane is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served
        .log_text()
        .contains("the destination's previous lane has finished its attempts")
    {
        assert!(Instant::now() < deadline, "the old lane never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tried = mock.stats().path("/hooks/b-down").requests;

    // Back, at an address that works: the held delivery goes.
    std::fs::write(
        &served.config,
        format!("{a}{}", destination_toml(&mock, "b", "b-up")),
    )
    .unwrap();
    served.hangup();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    assert_eq!(mock.stats().path("/hooks/b-up").receipts, 1);
    assert_eq!(mock.stats().path("/hooks/b-down").requests, tried);
}

#[tokio::test]
async fn a_changed_destination_finishes_attempts_in_flight_under_their_old_settings() {
    // The old address answers after 3 s: inside the old 10 s timeout, past
    // the new 1 s one.
    let mock = start_mock(&[(
        "/hooks/a-old",
        Faults {
            latency_ms: 3_000,
            ..Faults::default()
        },
    )])
    .await;
    let old = format!(
        "[destinations.a]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout_ms = 10000\n",
        mock.url("/hooks/a-old")
    );
    let mut served = serve(&old).await;
    let client = served.client(None);
    let first = client.send(&request("in flight", &["a"])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.stats().path("/hooks/a-old").requests == 0 {
        assert!(Instant::now() < deadline, "the first attempt never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // While that request is open: a new address and a shorter timeout.
    std::fs::write(&served.config, destination_toml(&mock, "a", "a-new")).unwrap();
    let answer = client.reload_config().await.unwrap();
    assert_eq!(answer.changed, ["a"]);
    still_running(&mut served);

    // The attempt in flight finished under its own settings: confirmed on
    // its first attempt, at the old address, not timed out and re-sent.
    let done = wait_final(&client, &first.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    assert_eq!(done.deliveries[0].attempts_made, 1, "{done:#?}");
    assert_eq!(mock.stats().path("/hooks/a-new").requests, 0);
    // New work uses the new settings.
    let second = client.send(&request("after", &["a"])).await.unwrap();
    let done = wait_final(&client, &second.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    assert_eq!(mock.stats().path("/hooks/a-new").receipts, 1);
    assert_eq!(mock.stats().path("/hooks/a-old").requests, 1);
}

/// An Alertmanager v4 notification for the receiver `oncall`.
fn alertmanager_notification(fingerprint: &str) -> String {
    format!(
        r#"{{"version": "4", "groupKey": "{{}}:{{alertname=\"Down\"}}", "truncatedAlerts": 0,
  "status": "firing", "receiver": "oncall", "groupLabels": {{"alertname": "Down"}},
  "commonLabels": {{"alertname": "Down", "severity": "critical"}}, "commonAnnotations": {{}},
  "externalURL": "http://alertmanager.internal:9093",
  "alerts": [{{"status": "firing", "labels": {{"alertname": "Down", "severity": "critical"}},
    "annotations": {{}}, "startsAt": "2026-11-27T23:10:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus.internal:9090/graph", "fingerprint": "{fingerprint}"}}]}}"#
    )
}

async fn ingest(addr: SocketAddr, body: String) -> Vec<String> {
    let http = herald::connector::http_client_builder().build().unwrap();
    let response = http
        .post(format!("http://{addr}/v1/ingest/alertmanager"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let broadcast: herald::api::wire::Broadcast = response.json().await.unwrap();
    broadcast
        .deliveries
        .into_iter()
        .map(|d| d.destination)
        .collect()
}

#[tokio::test]
async fn alertmanager_routes_change_with_a_reload() {
    let mock = start_mock(&[]).await;
    let destinations = format!(
        "{}{}",
        destination_toml(&mock, "a", "a"),
        destination_toml(&mock, "b", "b")
    );
    let served = serve(&format!(
        "{destinations}[alertmanager]\ndestinations = [\"a\"]\n"
    ))
    .await;
    assert_eq!(
        ingest(served.addr, alertmanager_notification("f1")).await,
        ["a"]
    );
    std::fs::write(
        &served.config,
        format!("{destinations}[alertmanager]\ndestinations = [\"b\"]\n"),
    )
    .unwrap();
    served.client(None).reload_config().await.unwrap();
    assert_eq!(
        ingest(served.addr, alertmanager_notification("f2")).await,
        ["b"]
    );
}

#[tokio::test]
async fn an_operator_can_cancel_a_removed_destinations_held_deliveries() {
    let mock = start_mock(&[(
        "/hooks/b-down",
        Faults {
            fail_first: 1_000_000,
            fail_status: 503,
            ..Faults::default()
        },
    )])
    .await;
    let a = destination_toml(&mock, "a", "a");
    let served = serve(&format!("{a}{}", destination_toml(&mock, "b", "b-down"))).await;
    let client = served.client(None);
    let accepted = client.send(&request("held", &["a", "b"])).await.unwrap();
    std::fs::write(&served.config, &a).unwrap();
    assert_eq!(client.reload_config().await.unwrap().removed, ["b"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served
        .log_text()
        .contains("the destination's previous lane has finished its attempts")
    {
        assert!(Instant::now() < deadline, "the old lane never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = client.cancel(&accepted.id, vec!["b".into()]).await.unwrap();
    let b = after
        .broadcast
        .deliveries
        .iter()
        .find(|d| d.destination == "b")
        .unwrap();
    assert_eq!(b.state, "cancelled", "{after:#?}");
    wait_destinations(&client, "b no longer listed", |list| {
        list.iter().all(|d| d.name != "b")
    })
    .await;
}
