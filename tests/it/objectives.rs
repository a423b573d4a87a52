//! Delivery objectives with real processes: Slack and Teams down past the
//! deadline escalate once (fallback and meta-alert confirmed), an
//! objective met in time does not, a SIGKILL during the wait or after the
//! decision still gives one escalation, a resolve follows the escalation,
//! and several PostgreSQL nodes (one frozen) decide once. Then the store
//! contract on both stores: the decision is committed once under racing
//! deciders, with its child broadcasts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald::api::wire::{Broadcast, SendRequest};
use herald::client::Client;
use herald::domain::{Isolation, Message, Objective, ObjectiveDecision, RetryPolicy, Severity};
use herald::mock::{Faults, RunningMock};
use herald::store::{
    AnyStore, NewBroadcast, NewDelivery, ObjectiveVerdict, PostgresOptions, PostgresStore,
    SqliteStore, Store,
};

use crate::support::*;

/// The objective's window in these tests: long enough for a send to be
/// accepted and read back, short enough to keep the tests quick.
const WITHIN_S: u64 = 2;
/// How long a test waits for a state it expects, at most.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

fn down() -> Faults {
    Faults {
        fail_first: 1_000_000,
        fail_status: 503,
        ..Faults::default()
    }
}

/// Slack and Teams (the chat destinations), an SMS gateway and a pager
/// bridge (webhooks, so the mock counts distinct idempotency keys), and a
/// P1 route with an objective on the chat destinations.
fn config(mock: &RunningMock, extra: &str) -> String {
    let url = |path: &str| mock.url(path);
    format!(
        r#"[destinations.slack]
kind = "slack"
url = "{slack}"
channel = "incidents"
secret = "xoxb-herald-mock"
timeout_ms = 1000
retry = {{ attempts_max = 100, base_ms = 100, cap_ms = 300 }}
breaker = {{ failures = 1000 }}

[destinations.teams]
kind = "teams"
url = "{teams}"
timeout_ms = 1000
retry = {{ attempts_max = 100, base_ms = 100, cap_ms = 300 }}
breaker = {{ failures = 1000 }}

[destinations.sms]
kind = "webhook"
url = "{sms}"
timeout_ms = 3000

[destinations.pager]
kind = "webhook"
url = "{pager}"
timeout_ms = 3000

[destinations.email]
kind = "webhook"
url = "{email}"
timeout_ms = 1000

[[routes]]
name = "p1"
severity = "P1"
destinations = ["slack", "teams"]
confirm = {{ any = 1, of = ["slack", "teams"], within = "{WITHIN_S}s" }}
fallback = ["sms"]
on_escalation = "pager"

[[routes]]
name = "p2"
severity = "P2"
destinations = ["slack"]
confirm = {{ any = 1, of = ["slack"], within = "1h" }}
fallback = ["email"]
{extra}"#,
        slack = url("/slack/api/"),
        teams = url("/teams/ops"),
        sms = url("/hooks/sms"),
        pager = url("/hooks/pager"),
        email = url("/hooks/email"),
    )
}

fn p1(title: &str, thread: &str) -> SendRequest {
    SendRequest {
        title: title.to_owned(),
        severity: Some("P1".into()),
        thread: Some(thread.to_owned()),
        ..SendRequest::default()
    }
}

/// Distinct messages (idempotency keys) a webhook path received.
fn distinct(mock: &RunningMock, path: &str) -> u64 {
    mock.stats().paths.get(path).map_or(0, |p| p.distinct)
}

/// Polls until the broadcast's objective is in `state`.
async fn wait_objective(client: &Client, id: &str, state: &str) -> Broadcast {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let broadcast = client.status(id).await.unwrap();
        let now = broadcast
            .objective
            .as_ref()
            .expect("an objective")
            .state
            .clone();
        if now == state {
            return broadcast;
        }
        assert!(
            Instant::now() < deadline,
            "objective of {id} still {now}, not {state}: {broadcast:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows of `objectives` with this decision, in the SQLite file.
fn decided(database: &Path, decision: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT count(*) FROM objectives WHERE decision = ?1",
        [decision],
        |r| r.get(0),
    )
    .unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    database: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    client: Client,
}

fn setup(mock: &RunningMock) -> Setup {
    let dir = temp_dir();
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config(mock, "")).unwrap();
    let addr = free_addr();
    Setup {
        config: config_path,
        database: dir.path().join("herald.db"),
        log: dir.path().join("herald.log"),
        client: Client::new(&format!("http://{addr}")).unwrap(),
        addr,
        _dir: dir,
    }
}

impl Setup {
    async fn spawn(&self) -> ServerProcess {
        let child = spawn_server(&self.config, &self.database, self.addr, &self.log);
        wait_healthy(self.addr).await;
        child
    }
}

async fn chat_down_mock() -> RunningMock {
    start_mock(&[
        ("/slack/api/*", down()),
        ("/teams/ops", down()),
        ("/hooks/sms", Faults::default()),
        ("/hooks/pager", Faults::default()),
        ("/hooks/email", Faults::default()),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_down_past_the_deadline_escalates_once_and_the_resolve_follows() {
    let mock = chat_down_mock().await;
    let setup = setup(&mock);
    let _server = setup.spawn().await;
    let client = &setup.client;
    let accepted = client
        .send(&p1("INC-7: checkout down", "INC-7"))
        .await
        .unwrap();
    let objective = accepted.objective.as_ref().expect("the route's objective");
    assert_eq!(objective.state, "pending");
    assert!(
        objective.summary.starts_with("pending (0 of 1, "),
        "{}",
        objective.summary
    );
    assert_eq!(objective.of, ["slack", "teams"]);
    // The broadcast's event stream tells of the decision.
    let mut stream = herald::connector::http_client_builder()
        .build()
        .unwrap()
        .get(format!(
            "http://{}/v1/broadcasts/{}/events",
            setup.addr, accepted.id
        ))
        .send()
        .await
        .unwrap();

    let escalated = wait_objective(client, &accepted.id, "escalated").await;
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT_LIMIT;
    while !seen.contains("event: objective") {
        assert!(Instant::now() < deadline, "no objective event: {seen}");
        let chunk = tokio::time::timeout(WAIT_LIMIT, stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let event = seen.split("event: objective").nth(1).unwrap();
    assert!(
        event.contains("\"state\":\"escalated\"") && event.contains("\"escalated_to\":[\"sms\"]"),
        "{event}"
    );
    drop(stream);
    let objective = escalated.objective.unwrap();
    assert_eq!(objective.escalated_to, ["sms"]);
    assert!(objective.met_at.is_none());
    assert!(
        objective.summary.contains("to [sms]"),
        "{}",
        objective.summary
    );
    let fallback = wait_final(
        client,
        objective.fallback_broadcast.as_ref().unwrap(),
        WAIT_LIMIT,
    )
    .await;
    assert_eq!(fallback.status, "converged");
    assert_eq!(fallback.title, "INC-7: checkout down");
    assert_eq!(fallback.thread.as_deref(), Some("INC-7"));
    let meta = wait_final(
        client,
        objective.meta_alert_broadcast.as_ref().unwrap(),
        WAIT_LIMIT,
    )
    .await;
    assert_eq!(meta.status, "converged");
    assert_eq!(meta.deliveries[0].destination, "pager");
    assert!(meta.title.starts_with("Objective missed: INC-7"));
    for name in ["slack", "teams"] {
        assert!(
            // Its state when the deadline passed: retrying, or in the
            // middle of an attempt (`sending`); its last error either way.
            meta.body
                .lines()
                .any(|line| line.starts_with(&format!("- {name}: "))
                    && line.contains("last error: HTTP 503")),
            "the meta-alert names {name}: {}",
            meta.body
        );
    }
    assert!(
        meta.body.contains("503"),
        "and its last error: {}",
        meta.body
    );
    assert_eq!(distinct(&mock, "/hooks/sms"), 1);
    assert_eq!(distinct(&mock, "/hooks/pager"), 1);
    assert_eq!(decided(&setup.database, "escalated"), 1);
    assert_eq!(count_rows(&setup.database, "broadcasts"), 3);
    assert_eq!(
        metric(setup.addr, "herald_objectives_total{outcome=\"escalated\"}").await,
        Some(1.0)
    );

    // Slack comes back: the objective is met after its escalation, and
    // says both.
    mock.set_faults("/slack/api/*", Faults::default());
    let deadline = Instant::now() + WAIT_LIMIT;
    let both = loop {
        let objective = client
            .status(&accepted.id)
            .await
            .unwrap()
            .objective
            .unwrap();
        if objective.met_at.is_some() {
            break objective;
        }
        assert!(
            Instant::now() < deadline,
            "slack never confirmed: {objective:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(both.state, "escalated");
    assert!(both.escalated_at.is_some());
    assert!(both.summary.contains("met later"), "{}", both.summary);

    // The resolve reaches the fallback escalated to, and no other one
    // (not the meta-alert's pager, not the P2 route's email).
    mock.set_faults("/teams/ops", Faults::default());
    let resolve = client
        .send(&SendRequest {
            resolved: true,
            ..p1("INC-7: resolved", "INC-7")
        })
        .await
        .unwrap();
    let destinations: Vec<&str> = resolve
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect();
    assert_eq!(destinations, ["slack", "teams", "sms"]);
    assert!(
        resolve.objective.is_none(),
        "a resolve carries no objective"
    );
    let resolve = wait_final(client, &resolve.id, WAIT_LIMIT).await;
    assert_eq!(resolve.status, "converged");
    assert_eq!(distinct(&mock, "/hooks/sms"), 2);
    assert_eq!(distinct(&mock, "/hooks/pager"), 1);
    assert_eq!(distinct(&mock, "/hooks/email"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objective_met_in_time_does_not_escalate() {
    let mock = start_mock(&[
        ("/teams/ops", down()),
        ("/hooks/sms", Faults::default()),
        ("/hooks/pager", Faults::default()),
    ])
    .await;
    let setup = setup(&mock);
    let _server = setup.spawn().await;
    let accepted = setup
        .client
        .send(&p1("INC-8: latency", "INC-8"))
        .await
        .unwrap();
    let met = wait_objective(&setup.client, &accepted.id, "met").await;
    let objective = met.objective.unwrap();
    assert_eq!(objective.confirmed, ["slack"]);
    assert!(
        objective.summary.starts_with("met at "),
        "{}",
        objective.summary
    );
    // The watcher records the decision once the deadline has passed.
    let deadline = Instant::now() + WAIT_LIMIT;
    while decided(&setup.database, "met") == 0 {
        assert!(
            Instant::now() < deadline,
            "the met objective was never decided"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(decided(&setup.database, "escalated"), 0);
    assert_eq!(count_rows(&setup.database, "broadcasts"), 1);
    assert_eq!(distinct(&mock, "/hooks/sms"), 0);
    assert_eq!(distinct(&mock, "/hooks/pager"), 0);
    let text = metrics_text(setup.addr).await;
    assert!(
        text.contains("herald_objectives_total{outcome=\"met\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("herald_time_to_objective_seconds_count 1"),
        "{text}"
    );
    let after = setup.client.status(&accepted.id).await.unwrap();
    assert_eq!(after.objective.unwrap().state, "met");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_wait_and_after_the_decision_still_escalates_once() {
    let mock = start_mock(&[
        ("/slack/api/*", down()),
        ("/teams/ops", down()),
        // The fallback's first attempt is still in flight when herald is
        // killed right after the decision.
        (
            "/hooks/sms",
            Faults {
                latency_ms: 1_500,
                ..Faults::default()
            },
        ),
        ("/hooks/pager", Faults::default()),
    ])
    .await;
    let setup = setup(&mock);
    let mut server = setup.spawn().await;
    let accepted = setup
        .client
        .send(&p1("INC-9: payments", "INC-9"))
        .await
        .unwrap();
    // Killed during the wait: the deadline is in the database, not in a
    // timer of the dead process.
    server.kill().unwrap();
    server.wait().unwrap();
    let mut server = setup.spawn().await;
    let escalated = wait_objective(&setup.client, &accepted.id, "escalated").await;
    // Killed after the decision, with the fallback's attempt in flight.
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(decided(&setup.database, "escalated"), 1);
    let _server = setup.spawn().await;
    let objective = escalated.objective.unwrap();
    for child in [
        &objective.fallback_broadcast,
        &objective.meta_alert_broadcast,
    ] {
        let child = wait_final(&setup.client, child.as_ref().unwrap(), WAIT_LIMIT).await;
        assert_eq!(child.status, "converged", "{child:#?}");
    }
    let again = setup.client.status(&accepted.id).await.unwrap();
    assert_eq!(
        again.objective.unwrap(),
        objective,
        "decided once, unchanged"
    );
    assert_eq!(decided(&setup.database, "escalated"), 1);
    assert_eq!(count_rows(&setup.database, "broadcasts"), 3);
    assert_eq!(distinct(&mock, "/hooks/sms"), 1, "one fallback message");
    assert_eq!(distinct(&mock, "/hooks/pager"), 1, "one meta-alert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_objective_is_refused_with_its_key_and_changes_nothing() {
    let mock = chat_down_mock().await;
    let dir = temp_dir();
    let path = dir.path().join("herald.toml");
    let bad = config(&mock, "").replace(
        r#"of = ["slack", "teams"], within = "2s""#,
        r#"of = ["slack", "teams"], within = "2 days""#,
    );
    std::fs::write(&path, bad).unwrap();
    let error = herald::config::Config::load(&path, |_| None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("routes[0].confirm.within"), "{error}");
    let outside = config(&mock, "").replace(
        r#"of = ["slack"], within = "1h""#,
        r#"of = ["teams"], within = "1h""#,
    );
    std::fs::write(&path, outside).unwrap();
    let error = herald::config::Config::load(&path, |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("routes[1].confirm.of")
            && error.contains("not one of this route's destinations"),
        "{error}"
    );

    let setup = setup(&mock);
    let _server = setup.spawn().await;
    let request = |objective: serde_json::Value| {
        serde_json::from_value::<SendRequest>(serde_json::json!({
            "title": "t", "severity": "P3", "destinations": ["slack", "teams"],
            "objective": objective,
        }))
        .unwrap()
    };
    for (objective, field) in [
        (
            serde_json::json!({"confirm": {"any": 3, "of": ["slack", "teams"], "within": "60s"}, "fallback": ["sms"]}),
            "objective.confirm.any",
        ),
        (
            serde_json::json!({"confirm": {"any": 1, "of": ["sms"], "within": "60s"}, "fallback": ["pager"]}),
            "objective.confirm.of",
        ),
        (
            serde_json::json!({"confirm": {"any": 1, "of": ["slack"], "within": "60"}, "fallback": ["sms"]}),
            "objective.confirm.within",
        ),
        (
            serde_json::json!({"confirm": {"any": 1, "of": ["slack"], "within": "60s"}}),
            "objective.fallback",
        ),
        (
            serde_json::json!({"confirm": {"any": 1, "of": ["slack"], "within": "60s"}, "on_escalation": "nobody"}),
            "objective.on_escalation",
        ),
    ] {
        let error = setup
            .client
            .send(&request(objective))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(field), "{field}: {error}");
    }
    let resolve_with_objective = serde_json::from_value::<SendRequest>(serde_json::json!({
        "title": "t", "thread": "INC-1", "resolved": true, "destinations": ["slack"],
        "objective": {"confirm": {"any": 1, "of": ["slack"], "within": "60s"}, "fallback": ["sms"]},
    }))
    .unwrap();
    let error = setup
        .client
        .send(&resolve_with_objective)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("objective") && error.contains("resolve"),
        "{error}"
    );
    assert_eq!(count_rows(&setup.database, "broadcasts"), 0);
    let accepted = setup
        .client
        .send(&request(serde_json::json!({"confirm": {"any": 2, "of": ["slack", "teams"], "within": "1h"}, "fallback": ["sms"], "on_escalation": "pager"})))
        .await
        .unwrap();
    let objective = accepted.objective.unwrap();
    assert_eq!((objective.any, objective.within_ms), (2, 3_600_000));
    assert_eq!(objective.state, "pending");
}

/// Three nodes on one PostgreSQL; the node that accepted the broadcast is
/// frozen (SIGSTOP) through the deadline: the others decide, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_postgres_nodes_with_the_accepting_one_frozen_escalate_once() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let _one_cluster = crate::multinode::ONE_CLUSTER_AT_A_TIME.lock().await;
    let mock = chat_down_mock().await;
    let dir = temp_dir();
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config(&mock, "")).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let addr = free_addr();
        let node_id = format!("node-{i}");
        let process = spawn_server_with_env(
            &config_path,
            Path::new(&pg.url),
            addr,
            &dir.path().join(format!("node-{i}.log")),
            &[
                ("HERALD_NODE_ID", node_id.as_str()),
                ("HERALD_LEASE_MS", "6000"),
            ],
        );
        nodes.push((
            process,
            addr,
            Client::new(&format!("http://{addr}")).unwrap(),
        ));
    }
    for (_, addr, _) in &nodes {
        wait_healthy(*addr).await;
    }
    let signal = |process: &ServerProcess, name: &str| {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(process.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    };
    let accepted = nodes[0]
        .2
        .send(&p1("INC-10: frozen", "INC-10"))
        .await
        .unwrap();
    signal(&nodes[0].0, "STOP");
    let escalated = wait_objective(&nodes[1].2, &accepted.id, "escalated").await;
    signal(&nodes[0].0, "CONT");
    wait_healthy(nodes[0].1).await;
    let objective = escalated.objective.unwrap();
    for child in [
        &objective.fallback_broadcast,
        &objective.meta_alert_broadcast,
    ] {
        let child = wait_final(&nodes[2].2, child.as_ref().unwrap(), WAIT_LIMIT).await;
        assert_eq!(child.status, "converged", "{child:#?}");
    }
    let db = pg.client().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM objectives WHERE decision = 'escalated'").await,
        1
    );
    assert_eq!(count("SELECT count(*) FROM broadcasts").await, 3);
    assert_eq!(distinct(&mock, "/hooks/sms"), 1);
    assert_eq!(distinct(&mock, "/hooks/pager"), 1);
    let mut escalations = 0.0;
    for (_, addr, _) in &nodes {
        escalations += metric(*addr, "herald_objectives_total{outcome=\"escalated\"}")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(escalations, 1.0, "one node decided");
    // Every node sees the same decision.
    for (_, _, client) in &nodes {
        let seen = client
            .status(&accepted.id)
            .await
            .unwrap()
            .objective
            .unwrap();
        assert_eq!(seen.escalated_at, objective.escalated_at);
    }
}

// The store contract, on both stores.

fn with_objective(id: &str, created_at_ms: i64) -> NewBroadcast {
    NewBroadcast {
        id: id.to_owned(),
        message: Message::new("db down", "", Severity::P1, Some("INC-1")).unwrap(),
        created_at_ms,
        routes: vec!["p1".into()],
        deliveries: ["a", "b"]
            .iter()
            .map(|d| NewDelivery {
                destination: (*d).to_owned(),
                policy: RetryPolicy::default(),
                lease_now: false,
            })
            .collect(),
        ingest_key: None,
        objective: Some(Objective {
            any: 1,
            of: vec!["a".into(), "b".into()],
            within_ms: 10_000,
            fallback: vec!["c".into()],
            on_escalation: Some("d".into()),
        }),
    }
}

fn verdict(id: &str, child: &str, now_ms: i64) -> ObjectiveVerdict {
    let child_of = |suffix: &str, destination: &str| NewBroadcast {
        id: format!("{child}{suffix}"),
        message: Message::new("db down", "", Severity::P1, Some("INC-1")).unwrap(),
        created_at_ms: now_ms,
        routes: Vec::new(),
        deliveries: vec![NewDelivery {
            destination: destination.to_owned(),
            policy: RetryPolicy::default(),
            lease_now: false,
        }],
        ingest_key: None,
        objective: None,
    };
    ObjectiveVerdict {
        broadcast_id: id.to_owned(),
        decided_at_ms: now_ms,
        decision: ObjectiveDecision::Escalated,
        escalated_to: vec!["c".into()],
        fallback: Some(child_of("F", "c")),
        meta_alert: Some(child_of("M", "d")),
    }
}

/// Deadlines are found through the index, and of two deciders racing on
/// one objective exactly one commits, with its child broadcasts.
async fn decided_once(first: AnyStore, second: AnyStore) {
    first
        .insert_broadcast(with_objective("B1", 1_000))
        .await
        .unwrap();
    let mut plain = with_objective("B2", 1_000);
    plain.objective = None;
    first.insert_broadcast(plain).await.unwrap();
    let ahead = first.objectives_due(5_000, 10).await.unwrap();
    assert!(ahead.due.is_empty());
    assert_eq!(ahead.next_deadline_ms, Some(11_000));
    let due = second.objectives_due(11_000, 10).await.unwrap();
    assert_eq!(due.due, ["B1"]);
    let (one, two) = tokio::join!(
        first.decide_objective(verdict("B1", "X", 11_000)),
        second.decide_objective(verdict("B1", "Y", 11_001)),
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(
        one.is_some() != two.is_some(),
        "exactly one decides: {one:?} {two:?}"
    );
    let winner = if one.is_some() { "X" } else { "Y" };
    let children = one.or(two).unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(children[0].0, format!("{winner}F"));
    assert_eq!(children[0].1[0].idempotency_key, format!("{winner}F-c"));
    assert!(first
        .broadcast(&format!("{winner}F"))
        .await
        .unwrap()
        .is_some());
    let loser = if winner == "X" { "Y" } else { "X" };
    assert!(first
        .broadcast(&format!("{loser}F"))
        .await
        .unwrap()
        .is_none());
    assert!(first
        .broadcast(&format!("{loser}M"))
        .await
        .unwrap()
        .is_none());
    let late = first
        .decide_objective(verdict("B1", "Z", 12_000))
        .await
        .unwrap();
    assert!(late.is_none(), "a decision is never taken twice");
    let after = first.objectives_due(20_000, 10).await.unwrap();
    assert!(after.due.is_empty() && after.next_deadline_ms.is_none());
    let record = first
        .broadcast("B1")
        .await
        .unwrap()
        .unwrap()
        .objective
        .unwrap();
    assert_eq!(record.decision, Some(ObjectiveDecision::Escalated));
    assert_eq!(record.deadline_ms, 11_000);
    assert_eq!(record.escalated_to, ["c"]);
    assert_eq!(record.fallback_broadcast_id, Some(format!("{winner}F")));
    assert_eq!(record.meta_alert_broadcast_id, Some(format!("{winner}M")));
    assert!(first
        .broadcast("B2")
        .await
        .unwrap()
        .unwrap()
        .objective
        .is_none());
    assert_eq!(first.escalated_destinations("INC-1").await.unwrap(), ["c"]);
    assert!(first
        .escalated_destinations("INC-2")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_decides_an_objective_once() {
    let dir = temp_dir();
    let store = SqliteStore::open(dir.path().join("herald.db")).unwrap();
    decided_once(AnyStore::Sqlite(store.clone()), AnyStore::Sqlite(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_decides_an_objective_once_across_nodes() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let open = |node: &str| {
        PostgresStore::open(PostgresOptions {
            url: pg.url.clone(),
            node_id: node.to_owned(),
            lease_ms: 60_000,
            destinations: ["a", "b", "c", "d"]
                .iter()
                .map(|d| ((*d).to_owned(), Isolation::default()))
                .collect(),
            take_over_expired_leases: false,
        })
    };
    let first = open("node-a").await.unwrap();
    let second = open("node-b").await.unwrap();
    decided_once(AnyStore::Postgres(first), AnyStore::Postgres(second)).await;
}

/// A route's objective names groups (expanded), Alertmanager ingest takes
/// the objective of the route its receiver maps to, and `fallback` without
/// `confirm` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_expand_in_objectives_and_alertmanager_takes_the_routes_objective() {
    let mock = chat_down_mock().await;
    let setup = setup(&mock);
    let grouped = config(
        &mock,
        "\n[groups]\nchat = [\"slack\", \"teams\"]\nrelay = [\"sms\", \"email\"]\n\n[alertmanager]\n",
    )
    .replace(
        r#"confirm = { any = 1, of = ["slack", "teams"], within = "2s" }
fallback = ["sms"]"#,
        r#"confirm = { any = 2, of = ["chat"], within = "10m" }
fallback = ["relay"]"#,
    );
    std::fs::write(&setup.config, &grouped).unwrap();
    let config = herald::config::Config::load(&setup.config, |_| None).unwrap();
    let objective = config.routing.routes[0].objective.clone().unwrap();
    assert_eq!(objective.of, ["slack", "teams"]);
    assert_eq!(objective.fallback, ["sms", "email"]);
    assert_eq!((objective.any, objective.within_ms), (2, 600_000));
    let orphan = grouped.replace(
        r#"confirm = { any = 1, of = ["slack"], within = "1h" }
"#,
        "",
    );
    let dir = temp_dir();
    let orphan_path = dir.path().join("orphan.toml");
    std::fs::write(&orphan_path, orphan).unwrap();
    let error = herald::config::Config::load(&orphan_path, |_| None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("routes[1]") && error.contains("need `confirm`"),
        "{error}"
    );

    let _server = setup.spawn().await;
    let notification = serde_json::json!({
        "version": "4", "groupKey": "{}:{alertname=\"CheckoutDown\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "oncall",
        "groupLabels": {"alertname": "CheckoutDown"},
        "commonLabels": {"alertname": "CheckoutDown", "severity": "critical"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093",
        "alerts": [{"status": "firing", "labels": {"alertname": "CheckoutDown", "severity": "critical"},
                    "annotations": {}, "startsAt": "2026-11-27T23:00:00.000Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "0000000000000001"}],
    });
    let response = herald::connector::http_client_builder()
        .build()
        .unwrap()
        .post(format!("http://{}/v1/ingest/alertmanager", setup.addr))
        .json(&notification)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let broadcast: Broadcast = response.json().await.unwrap();
    assert_eq!(broadcast.routes, ["p1"]);
    let objective = broadcast.objective.expect("the route's objective");
    assert_eq!(objective.of, ["slack", "teams"]);
    assert_eq!(objective.fallback, ["sms", "email"]);
    assert_eq!(objective.state, "pending");
}

/// `herald send`'s objective flags: an objective set from the command line
/// escalates like a route's, and flags the server refuses (a window over a
/// day) or that make no objective (a fallback alone) are errors that
/// accept nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_send_sets_an_objective_from_its_flags() {
    let mock = chat_down_mock().await;
    let setup = setup(&mock);
    let _server = setup.spawn().await;
    let server_url = format!("http://{}", setup.addr);
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(HERALD);
        command.args(args).args(["--server", &server_url]);
        async move {
            tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap()
        }
    };
    let output = run(&[
        "send",
        "--to",
        "teams",
        "--title",
        "INC-12: queue stuck",
        "--confirm-of",
        "teams",
        "--confirm-within",
        &format!("{WITHIN_S}s"),
        "--fallback",
        "sms",
        "--on-escalation",
        "pager",
        "--json",
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let accepted: Broadcast = serde_json::from_slice(&output.stdout).unwrap();
    let objective = accepted.objective.as_ref().expect("the flags' objective");
    assert_eq!(
        (objective.any, objective.of.as_slice()),
        (1, &["teams".to_owned()][..])
    );
    let escalated = wait_objective(&setup.client, &accepted.id, "escalated").await;
    assert!(
        escalated.objective.unwrap().summary.contains("sms"),
        "the escalation names its fallback"
    );
    let deadline = Instant::now() + WAIT_LIMIT;
    while distinct(&mock, "/hooks/sms") < 1 || distinct(&mock, "/hooks/pager") < 1 {
        assert!(
            Instant::now() < deadline,
            "fallback and meta-alert never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broadcasts = count_rows(&setup.database, "broadcasts");

    let output = run(&[
        "send",
        "--to",
        "teams",
        "--title",
        "INC-13",
        "--confirm-of",
        "teams",
        "--confirm-within",
        "2 days",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("objective.confirm.within"), "{stderr}");

    let output = run(&[
        "send",
        "--to",
        "teams",
        "--title",
        "INC-14",
        "--fallback",
        "sms",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--confirm-within"), "{stderr}");

    assert_eq!(count_rows(&setup.database, "broadcasts"), broadcasts);
    assert_eq!(distinct(&mock, "/hooks/sms"), 1);
    assert_eq!(distinct(&mock, "/hooks/pager"), 1);
}
