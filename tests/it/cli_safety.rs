//! The CLI is safe to retry and says what it did: `send` survives a lost
//! answer without a second broadcast, `--wait --timeout` ends, `retry` and
//! `cancel` report what they changed, ids may be shortened, `list` filters
//! by delivery state, `status` and `destinations` show what operators need.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::api::wire::{ActionResult, Broadcast, BroadcastList, DestinationHealth};
use herald::demo::{mock_destination, mock_send_path};
use herald::mock::Faults;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::*;

/// Runs `herald ARGS --server URL` off the async threads.
async fn herald(server_url: &str, args: &[&str]) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--server".to_owned(), server_url.to_owned()]);
    tokio::task::spawn_blocking(move || Command::new(HERALD).args(args).output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// A destination that answers 503 to everything and is tried again only
/// after a minute or so: its delivery stays `retrying` for the test.
fn stuck(mock: &herald::mock::RunningMock, name: &str) -> herald::config::Destination {
    let mut destination = webhook(mock, name);
    destination.policy.attempts_max = 100;
    destination.policy.base_ms = 60_000;
    destination.policy.cap_ms = 60_000;
    destination
}

fn failing_forever() -> Faults {
    Faults {
        fail_first: 1_000_000,
        fail_status: 503,
        ..Faults::default()
    }
}

/// Polls the broadcast until `done` holds (bounded).
async fn wait_until(
    client: &herald::client::Client,
    id: &str,
    done: impl Fn(&Broadcast) -> bool,
) -> Broadcast {
    for _ in 0..600 {
        let broadcast = client.status(id).await.unwrap();
        if done(&broadcast) {
            return broadcast;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broadcast {id} never reached the expected states");
}

fn state_of<'a>(broadcast: &'a Broadcast, destination: &str) -> &'a str {
    &broadcast
        .deliveries
        .iter()
        .find(|d| d.destination == destination)
        .unwrap()
        .state
}

/// A TCP proxy to `target` that cuts its first connection once the server
/// has started to answer (the request was handled: the broadcast is
/// committed), without passing the answer on; later connections pass
/// through. Counts connections.
async fn proxy_losing_the_first_answer(target: SocketAddr) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU32::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                if !first {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
                let (mut in_read, _in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                let forward = tokio::io::copy(&mut in_read, &mut out_write);
                let mut answer = [0u8; 1];
                tokio::select! {
                    _ = forward => {}
                    _ = out_read.read(&mut answer) => {}
                }
                // Both sockets drop here: the client never sees the answer.
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_is_lost_is_tried_again_and_makes_one_broadcast() {
    let dir = temp_dir();
    let mock = start_mock(&[("/hooks/ops", Faults::default())]).await;
    let server = start_server(&dir.path().join("herald.db"), vec![webhook(&mock, "ops")]).await;
    let (proxy, connections) = proxy_losing_the_first_answer(server.addr).await;

    let output = herald(
        &format!("http://{proxy}"),
        &[
            "send",
            "--to",
            "ops",
            "--title",
            "INC-1 checkout down",
            "--json",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(
        text(&output.stderr).contains("same Idempotency-Key"),
        "the retry is reported: {}",
        explain(&output)
    );
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "the send was tried again"
    );
    let answered: Broadcast = serde_json::from_slice(&output.stdout).unwrap();

    let client = client(&server);
    let all: BroadcastList = client
        .list(&herald::client::ListQuery::default())
        .await
        .unwrap();
    let ids: Vec<&str> = all.broadcasts.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(
        ids,
        [answered.id.as_str()],
        "one broadcast, the one answered"
    );
    wait_final(&client, &answered.id, Duration::from_secs(20)).await;
    assert_eq!(mock.stats().path("/hooks/ops").distinct, 1, "one page");

    // A key given by the operator: repeating the send is the first answer.
    let keyed = [
        "send",
        "--to",
        "ops",
        "--title",
        "INC-2 search slow",
        "--idempotency-key",
        "deploy-42-notice",
        "--json",
    ];
    let first = herald(&format!("http://{}", server.addr), &keyed).await;
    let again = herald(&format!("http://{}", server.addr), &keyed).await;
    assert!(
        first.status.success() && again.status.success(),
        "{}",
        explain(&again)
    );
    let first: Broadcast = serde_json::from_slice(&first.stdout).unwrap();
    let again: Broadcast = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(first.id, again.id);

    server.stop().await;
    assert_eq!(count_rows(&dir.path().join("herald.db"), "broadcasts"), 2);
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_with_a_timeout_exits_3_while_a_destination_never_confirms() {
    let dir = temp_dir();
    let mock = start_mock(&[("/hooks/stuck", failing_forever())]).await;
    let server = start_server(&dir.path().join("herald.db"), vec![stuck(&mock, "stuck")]).await;

    let output = herald(
        &format!("http://{}", server.addr),
        &[
            "send",
            "--to",
            "stuck",
            "--title",
            "INC-3",
            "--wait",
            "--timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{}", explain(&output));
    assert!(
        text(&output.stderr).contains("stopped waiting after 1.0s"),
        "{}",
        explain(&output)
    );
    assert!(
        text(&output.stdout).contains(": delivering"),
        "{}",
        explain(&output)
    );

    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_say_what_they_changed_and_a_cancelled_delivery_can_be_retried() {
    let dir = temp_dir();
    let mock = start_mock(&[
        ("/hooks/good", Faults::default()),
        ("/hooks/held", failing_forever()),
    ])
    .await;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![webhook(&mock, "good"), stuck(&mock, "held")],
    )
    .await;
    let url = format!("http://{}", server.addr);
    let client = client(&server);
    let accepted = client
        .send(&request("INC-4 payments", &["good", "held"]))
        .await
        .unwrap();
    let id = accepted.id.as_str();
    wait_until(&client, id, |b| {
        state_of(b, "good") == "confirmed" && state_of(b, "held") == "retrying"
    })
    .await;

    // Nothing is failed, dead or cancelled: retry says so and exits 1.
    let output = herald(&url, &["retry", id]).await;
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("nothing to do") && stderr.contains("held retrying "),
        "{}",
        explain(&output)
    );

    // Cancel by a short, lower-case prefix of the id.
    let prefix = id[..12].to_lowercase();
    let output = herald(&url, &["cancel", &prefix, "--to", "held"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(
        text(&output.stdout).contains(&format!(
            "cancelled 1 of 2 deliveries of broadcast {id}: held"
        )),
        "{}",
        explain(&output)
    );
    let output = herald(&url, &["cancel", id]).await;
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    assert!(
        text(&output.stderr).contains("nothing to do"),
        "{}",
        explain(&output)
    );

    // The operator changes their mind once the destination is back.
    mock.set_faults("/hooks/held", Faults::default());
    let output = herald(&url, &["retry", id, "--json", "--wait", "--timeout", "60s"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    let stdout = text(&output.stdout);
    let changed: ActionResult = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(changed.changed, ["held"]);
    let done = client.status(id).await.unwrap();
    assert_eq!(done.status, "converged", "{done:#?}");
    let held = mock.stats().path("/hooks/held");
    assert_eq!(
        held.distinct, 1,
        "every attempt carried the delivery's one key"
    );

    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_delivery_state_and_ids_may_be_shortened_as_in_git() {
    let dir = temp_dir();
    let mock = start_mock(&[
        ("/hooks/good", Faults::default()),
        (
            "/hooks/gone",
            Faults {
                fail_first: 1_000_000,
                fail_status: 404,
                ..Faults::default()
            },
        ),
    ])
    .await;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![webhook(&mock, "good"), webhook(&mock, "gone")],
    )
    .await;
    let url = format!("http://{}", server.addr);
    let client = client(&server);
    let partial = client
        .send(&request("INC-5 partly", &["good", "gone"]))
        .await
        .unwrap();
    let converged = client
        .send(&request("INC-6 fine", &["good"]))
        .await
        .unwrap();
    wait_final(&client, &partial.id, Duration::from_secs(20)).await;
    wait_final(&client, &converged.id, Duration::from_secs(20)).await;

    let output = herald(&url, &["list", "--status", "failed", "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    let page: BroadcastList = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<&str> = page.broadcasts.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, [partial.id.as_str()]);
    let output = herald(&url, &["list", "--status", "confirmed", "--json"]).await;
    let page: BroadcastList = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page.broadcasts.len(), 2, "{}", explain(&output));
    let output = herald(&url, &["list", "--status", "broken"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", explain(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("field: status") && stderr.contains("cancelled"),
        "{}",
        explain(&output)
    );

    // Both ids start with the same milliseconds: a short prefix is
    // ambiguous and the error lists both; one more distinct character
    // names one.
    let common = partial
        .id
        .chars()
        .zip(converged.id.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(common >= 4, "{} {}", partial.id, converged.id);
    let output = herald(&url, &["status", &partial.id[..common]]).await;
    assert_eq!(output.status.code(), Some(2), "{}", explain(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&partial.id) && stderr.contains(&converged.id),
        "{}",
        explain(&output)
    );
    let output = herald(&url, &["status", &partial.id[..common + 1]]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    assert!(
        text(&output.stdout).contains(&partial.id),
        "{}",
        explain(&output)
    );
    let output = herald(&url, &["status", &partial.id[..3]]).await;
    assert_eq!(output.status.code(), Some(2), "{}", explain(&output));
    assert!(
        text(&output.stderr).contains("at least 4 characters"),
        "{}",
        explain(&output)
    );

    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_remote_ref_and_destinations_forget_failures_after_a_success() {
    let dir = temp_dir();
    // Slack stores the message, then the answer is lost: herald's request
    // times out (ambiguous), the read-back finds the message and confirms.
    let mock = start_mock(&[(
        mock_send_path("slack", "incidents").as_str(),
        Faults {
            drop_first: 1,
            drop_hang_ms: 5_000,
            ..Faults::default()
        },
    )])
    .await;
    let slack = mock_destination(&format!("http://{}", mock.addr), "slack", "incidents");
    let server = start_server(&dir.path().join("herald.db"), vec![slack]).await;
    let url = format!("http://{}", server.addr);
    let client = client(&server);
    let accepted = client
        .send(&request("INC-7 queue backed up", &["incidents"]))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    let delivery = &done.deliveries[0];
    assert_eq!(delivery.state, "confirmed", "{done:#?}");
    let ts = delivery.remote_ref.clone().expect("Slack's ts is recorded");

    let output = herald(&url, &["status", &accepted.id]).await;
    assert!(output.status.success(), "{}", explain(&output));
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("ref {ts}")), "{stdout}");
    for attempt in &delivery.attempts {
        assert!(stdout.contains(&attempt.started_at), "{stdout}");
    }

    let output = herald(&url, &["destinations", "--json"]).await;
    assert!(output.status.success(), "{}", explain(&output));
    let list: Vec<DestinationHealth> = serde_json::from_slice(&output.stdout).unwrap();
    let health = &list[0];
    assert_eq!(
        health.consecutive_failures, 0,
        "the read-back found the message: the destination is well: {health:#?}"
    );
    assert!(health.last_error.is_some(), "{health:#?}");
    assert!(health.last_error_at.is_some(), "{health:#?}");

    server.stop().await;
    mock.stop().await;
}
