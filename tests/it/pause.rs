//! Operators pause and resume a destination: real `herald serve`
//! processes, the CLI verbs and the API, on SQLite and on PostgreSQL.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use herald::api::wire::Broadcast;
use herald::client::{Client, ClientError};

use crate::reload::{destination_toml, serve, wait_destinations};
use crate::support::*;

/// Runs a `herald` client verb against `addr`; returns (success, stdout, stderr).
fn cli(addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(HERALD)
        .args(args)
        .args(["--server", &format!("http://{addr}")])
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Polls until `destination`'s delivery of the broadcast is in `state`.
async fn wait_delivery(client: &Client, id: &str, destination: &str, state: &str) -> Broadcast {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let broadcast = client.status(id).await.unwrap();
        let delivery = broadcast
            .deliveries
            .iter()
            .find(|d| d.destination == destination)
            .unwrap();
        if delivery.state == state {
            return broadcast;
        }
        assert!(
            Instant::now() < deadline,
            "{destination} never {state}: {broadcast:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of(broadcast: &Broadcast, destination: &str) -> String {
    broadcast
        .deliveries
        .iter()
        .find(|d| d.destination == destination)
        .unwrap()
        .state
        .clone()
}

#[tokio::test]
async fn a_paused_destination_holds_new_work_and_resume_delivers_it() {
    let mock = start_mock(&[]).await;
    let served = serve(&format!(
        "{}{}",
        destination_toml(&mock, "a", "a"),
        destination_toml(&mock, "b", "b")
    ))
    .await;
    let client = served.client(None);
    let (ok, stdout, stderr) = cli(
        served.addr,
        &[
            "destinations",
            "pause",
            "a",
            "--for",
            "2h",
            "--reason",
            "Slack maintenance",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("paused until"), "{stdout}");

    let accepted = client
        .send(&request("during the pause", &["a", "b"]))
        .await
        .unwrap();
    // b is unaffected; a waits, and nothing reached it.
    let now = wait_delivery(&client, &accepted.id, "b", "confirmed").await;
    assert_eq!(state_of(&now, "a"), "pending", "{now:#?}");
    assert_eq!(mock.stats().path("/hooks/a").requests, 0);

    let list = client.destinations().await.unwrap();
    let a = list.iter().find(|d| d.name == "a").unwrap();
    assert_eq!(a.status, "paused");
    let pause = a.pause.as_ref().unwrap();
    assert_eq!(pause.reason, "Slack maintenance");
    assert_eq!(pause.paused_by, "anonymous");
    assert!(pause.until.is_some());
    assert_eq!(a.backlog, 1);
    let (_, table, _) = cli(served.addr, &["destinations"]);
    assert!(table.contains("Slack maintenance"), "{table}");
    assert_eq!(
        metric(
            served.addr,
            "herald_destination_paused_by_operator{destination=\"a\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            served.addr,
            "herald_destination_paused_by_operator{destination=\"b\"}"
        )
        .await,
        Some(0.0)
    );

    let (ok, stdout, stderr) = cli(served.addr, &["destinations", "resume", "a"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("not paused"), "{stdout}");
    let done = wait_final(&client, &accepted.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    assert_eq!(mock.stats().path("/hooks/a").receipts, 1);
    assert_eq!(
        metric(
            served.addr,
            "herald_destination_paused_by_operator{destination=\"a\"}"
        )
        .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_pause_for_a_span_ends_by_itself() {
    let mock = start_mock(&[]).await;
    let served = serve(&destination_toml(&mock, "a", "a")).await;
    let client = served.client(None);
    let (ok, _, stderr) = cli(
        served.addr,
        &[
            "destinations",
            "pause",
            "a",
            "--for",
            "2s",
            "--reason",
            "short window",
        ],
    );
    assert!(ok, "{stderr}");
    let accepted = client
        .send(&request("after the window", &["a"]))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    wait_destinations(&client, "shown as active again", |list| {
        list.iter()
            .all(|d| d.status == "active" && d.pause.is_none())
    })
    .await;
}

#[tokio::test]
async fn a_pause_survives_a_restart() {
    let mock = start_mock(&[]).await;
    let mut served = serve(&format!(
        "{}{}",
        destination_toml(&mock, "a", "a"),
        destination_toml(&mock, "b", "b")
    ))
    .await;
    let (ok, _, stderr) = cli(
        served.addr,
        &["destinations", "pause", "a", "--reason", "Jira migration"],
    );
    assert!(ok, "{stderr}");
    served.restart().await;
    let client = served.client(None);
    let a = client
        .destinations()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == "a")
        .unwrap();
    assert_eq!(a.status, "paused", "{a:#?}");
    assert!(a.pause.as_ref().unwrap().until.is_none(), "until resumed");

    let accepted = client
        .send(&request("after the restart", &["a", "b"]))
        .await
        .unwrap();
    let now = wait_delivery(&client, &accepted.id, "b", "confirmed").await;
    assert_eq!(state_of(&now, "a"), "pending", "{now:#?}");
    assert_eq!(mock.stats().path("/hooks/a").requests, 0);
    client.resume_destination("a").await.unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
}

#[tokio::test]
async fn bad_pause_requests_name_the_field_and_change_nothing() {
    let mock = start_mock(&[]).await;
    let served = serve(&destination_toml(&mock, "a", "a")).await;
    let client = served.client(None);
    let refused = |result: Result<_, ClientError>| match result {
        Err(ClientError::Api { status, field, .. }) => (status, field.unwrap_or_default()),
        other => panic!("expected a refusal: {other:?}"),
    };
    assert_eq!(
        refused(client.pause_destination("nope", None, "why".into()).await),
        (404, "name".to_owned())
    );
    assert_eq!(
        refused(
            client
                .pause_destination("a", Some("2 hours".into()), "why".into())
                .await
        ),
        (400, "for".to_owned())
    );
    assert_eq!(
        refused(
            client
                .pause_destination("a", Some("90d".into()), "why".into())
                .await
        ),
        (400, "for".to_owned())
    );
    assert_eq!(
        refused(client.pause_destination("a", None, "  ".into()).await),
        (400, "reason".to_owned())
    );
    assert_eq!(
        refused(client.resume_destination("nope").await),
        (404, "name".to_owned())
    );
    let (ok, _, stderr) = cli(
        served.addr,
        &[
            "destinations",
            "pause",
            "a",
            "--for",
            "soon",
            "--reason",
            "x",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("for"), "{stderr}");
    let list = client.destinations().await.unwrap();
    assert!(list.iter().all(|d| d.status == "active"), "{list:#?}");
}

#[tokio::test]
async fn on_postgresql_a_pause_made_through_one_node_holds_on_another() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let mock = start_mock(&[]).await;
    let dir = temp_dir();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            destination_toml(&mock, "a", "a"),
            destination_toml(&mock, "b", "b")
        ),
    )
    .unwrap();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _node_a = spawn_server(
        &config,
        Path::new(&pg.url),
        addr_a,
        &dir.path().join("a.log"),
    );
    let _node_b = spawn_server(
        &config,
        Path::new(&pg.url),
        addr_b,
        &dir.path().join("b.log"),
    );
    wait_healthy(addr_a).await;
    wait_healthy(addr_b).await;
    let (node_a, node_b) = (
        Client::new(&format!("http://{addr_a}")).unwrap(),
        Client::new(&format!("http://{addr_b}")).unwrap(),
    );
    node_a
        .pause_destination("a", None, "maintenance window".into())
        .await
        .unwrap();

    let accepted = node_b
        .send(&request("through node b", &["a", "b"]))
        .await
        .unwrap();
    let now = wait_delivery(&node_b, &accepted.id, "b", "confirmed").await;
    assert_eq!(state_of(&now, "a"), "pending", "{now:#?}");
    assert_eq!(mock.stats().path("/hooks/a").requests, 0);
    let seen_by_b = node_b
        .destinations()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == "a")
        .unwrap();
    assert_eq!(seen_by_b.status, "paused", "{seen_by_b:#?}");

    node_b.resume_destination("a").await.unwrap();
    let done = wait_final(&node_b, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    assert_eq!(mock.stats().path("/hooks/a").receipts, 1);
}
