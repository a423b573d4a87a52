//! The real connectors against `herald mock`'s emulations of Slack, Teams,
//! Jira, PagerDuty and Discord: ambiguous outcomes, threads in order, and
//! Slack's 429 pausing only Slack.

use std::time::Duration;

use herald::api::wire::{Broadcast, SendRequest};
use herald::config::{Destination, Target};
use herald::demo::{mock_destination, mock_discord_webhook_id, mock_jira_project, mock_send_path};
use herald::mock::{Faults, RunningMock};

use crate::support::*;

/// (kind, destination name) of every real connector.
const REAL: [(&str, &str); 5] = [
    ("slack", "slack-incidents"),
    ("teams", "teams-ops"),
    ("jira", "jira-ops"),
    ("pagerduty", "pagerduty"),
    ("discord", "discord-ops"),
];

fn names() -> Vec<&'static str> {
    REAL.iter().map(|(_, name)| *name).collect()
}

type Running = (
    RunningMock,
    herald::server::RunningServer,
    tempfile::TempDir,
);

async fn start(faults: &[(String, Faults)]) -> Running {
    start_with(faults, |_| {}).await
}

/// The mock with `faults`, and herald with every real destination (and a
/// webhook) at it, each passed through `adjust` first.
async fn start_with(faults: &[(String, Faults)], adjust: impl Fn(&mut Destination)) -> Running {
    let refs: Vec<(&str, Faults)> = faults
        .iter()
        .map(|(p, f)| (p.as_str(), f.clone()))
        .collect();
    let mock = start_mock(&refs).await;
    let base = format!("http://{}", mock.addr);
    let mut destinations: Vec<_> = REAL
        .iter()
        .map(|(kind, name)| {
            let mut destination = mock_destination(&base, kind, name);
            adjust(&mut destination);
            destination
        })
        .collect();
    destinations.push(mock_destination(&base, "webhook", "status-hook"));
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), destinations).await;
    (mock, server, dir)
}

fn delivery<'a>(broadcast: &'a Broadcast, destination: &str) -> &'a herald::api::wire::Delivery {
    broadcast
        .deliveries
        .iter()
        .find(|d| d.destination == destination)
        .unwrap_or_else(|| panic!("no delivery to {destination}"))
}

fn outcomes(delivery: &herald::api::wire::Delivery) -> Vec<(String, String)> {
    delivery
        .attempts
        .iter()
        .map(|a| (a.kind.clone(), a.outcome.clone()))
        .collect()
}

fn pair(kind: &str, outcome: &str) -> (String, String) {
    (kind.to_owned(), outcome.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_first_attempt_ends_with_one_message_where_the_destination_can_tell() {
    // Every destination takes the first request, then never answers it.
    let mut faults: Vec<(String, Faults)> = REAL
        .iter()
        .map(|(kind, name)| {
            (
                mock_send_path(kind, name),
                Faults {
                    drop_first: 1,
                    drop_hang_ms: 5_000,
                    ..Faults::default()
                },
            )
        })
        .collect();
    // Jira's search does not see the new issue for 3 s: the search right
    // after the 1 s timeout misses it, the one 4 s later finds it.
    faults[2].1.search_lag_ms = 3_000;
    let (mock, server, _dir) = start_with(&faults, |d| {
        if let Target::Jira {
            search_recheck_ms, ..
        } = &mut d.target
        {
            *search_recheck_ms = 4_000;
        }
    })
    .await;
    let client = client(&server);
    let accepted = client
        .send(&request("INC-9: payments API erroring", &names()))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let stats = mock.stats();

    // Slack: found in the channel's history by metadata key, not re-posted.
    let slack = delivery(&done, "slack-incidents");
    assert_eq!(
        outcomes(slack),
        [pair("send", "ambiguous"), pair("verify", "found")]
    );
    assert!(!slack.possible_duplicate);
    assert!(slack.remote_ref.is_some(), "the message's ts is kept");
    let channel = &stats.slack.channels["slack-incidents"];
    assert_eq!((channel.messages, channel.duplicated_keys.len()), (1, 0));
    assert_eq!(stats.path("/slack/api/chat.postMessage").requests, 1);

    // Jira: found by label on the second search, not created twice.
    let jira = delivery(&done, "jira-ops");
    assert_eq!(
        outcomes(jira),
        [pair("send", "ambiguous"), pair("verify", "found")]
    );
    let project = &stats.jira.projects[&mock_jira_project("jira-ops")];
    assert_eq!(project.issues, 1, "{project:#?}");
    assert!(project.duplicated_labels.is_empty());
    assert_eq!(jira.remote_ref.as_deref(), Some("OPS-1"));
    assert_eq!(
        stats.path("/jira/rest/api/3/search/jql").requests,
        2,
        "the first search missed the new issue; the second found it"
    );

    // PagerDuty: sent again under the same dedup_key, folded into one
    // incident by PagerDuty itself.
    let pagerduty = delivery(&done, "pagerduty");
    assert_eq!(
        outcomes(pagerduty),
        [
            pair("send", "ambiguous"),
            pair("verify", "unknown"),
            pair("send", "success")
        ]
    );
    assert!(!pagerduty.possible_duplicate);
    assert_eq!(stats.pagerduty.incidents.len(), 1);
    let incident = stats.pagerduty.incidents.values().next().unwrap();
    assert_eq!((incident.opened, incident.actions.len()), (1, 2));

    // Teams cannot be read back: re-sent, and flagged for operators.
    let teams = delivery(&done, "teams-ops");
    assert!(teams.possible_duplicate, "{teams:#?}");
    assert_eq!(
        stats.teams.paths[&mock_send_path("teams", "teams-ops")].cards,
        2
    );

    // Discord cannot look a message up without its id, which the dropped
    // answer carried: re-sent, and flagged.
    let discord = delivery(&done, "discord-ops");
    assert!(discord.possible_duplicate, "{discord:#?}");
    assert_eq!(
        stats.discord.webhooks[&mock_discord_webhook_id("discord-ops")].messages,
        2
    );
    server.stop().await;
    mock.stop().await;
}

fn thread_request(title: &str, resolved: bool) -> SendRequest {
    SendRequest {
        title: title.to_owned(),
        body: Some(format!("{title}: details")),
        severity: Some("P1".into()),
        thread: Some("INC-7".into()),
        resolved,
        destinations: names().into_iter().map(str::to_owned).collect(),
        ..SendRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_lands_in_order_on_every_destination_while_each_misbehaves() {
    let fail = |n: u32| Faults {
        fail_first: n,
        fail_status: 503,
        ..Faults::default()
    };
    let faults = vec![
        (
            mock_send_path("slack", "slack-incidents"),
            Faults {
                rate_limit_first: 1,
                retry_after_secs: 1,
                ..Faults::default()
            },
        ),
        (mock_send_path("teams", "teams-ops"), fail(1)),
        // Every Jira call fails twice first: creates, comments, transitions.
        ("/jira/rest/api/3/*".to_owned(), fail(2)),
        (mock_send_path("pagerduty", "pagerduty"), fail(1)),
        (mock_send_path("discord", "discord-ops"), fail(1)),
    ];
    let (mock, server, _dir) = start(&faults).await;
    let client = client(&server);
    let mut ids = Vec::new();
    for (title, resolved) in [
        ("INC-7: search is slow", false),
        ("INC-7: index rebuilt", false),
        ("INC-7: search recovered", true),
    ] {
        ids.push(
            client
                .send(&thread_request(title, resolved))
                .await
                .unwrap()
                .id,
        );
    }
    let mut done = Vec::new();
    for id in &ids {
        let broadcast = wait_final(&client, id, Duration::from_secs(60)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }

    // On every destination, each message's first attempt started only after
    // the previous one of the thread was confirmed there.
    for name in names() {
        for (earlier, later) in done.iter().zip(done.iter().skip(1)) {
            let confirmed_at = delivery(earlier, name)
                .attempts
                .last()
                .unwrap()
                .finished_at
                .clone();
            let started_at = delivery(later, name).attempts[0].started_at.clone();
            assert!(
                started_at >= confirmed_at,
                "{name}: {} started at {started_at}, before {} was confirmed at {confirmed_at}",
                later.title,
                earlier.title
            );
        }
    }

    let stats = mock.stats();
    let channel = &stats.slack.channels["slack-incidents"];
    assert_eq!(
        (channel.messages, channel.replies, channel.updates),
        (1, 2, 1),
        "one Slack message, two replies in its thread, marked resolved"
    );
    assert!(channel.duplicated_keys.is_empty());
    let root = delivery(&done[0], "slack-incidents")
        .remote_ref
        .clone()
        .unwrap();
    for later in &done[1..] {
        let reply = delivery(later, "slack-incidents")
            .remote_ref
            .clone()
            .unwrap();
        assert!(
            reply > root,
            "the reply {reply} is after the thread's root {root}"
        );
    }

    let project = &stats.jira.projects[&mock_jira_project("jira-ops")];
    assert_eq!(project.issues, 1, "{project:#?}");
    assert_eq!(project.comments["OPS-1"], 2);
    assert_eq!(project.transitions["OPS-1"], ["31"]);
    assert_eq!(project.statuses["OPS-1"], "Done");

    assert_eq!(stats.pagerduty.incidents.len(), 1);
    let incident = stats.pagerduty.incidents.values().next().unwrap();
    assert_eq!(incident.actions, ["trigger", "trigger", "resolve"]);
    assert_eq!(incident.status, "resolved");

    let webhook = &stats.discord.webhooks[&mock_discord_webhook_id("discord-ops")];
    assert_eq!((webhook.threads, webhook.messages), (1, 3));
    assert_eq!(
        webhook
            .messages_per_thread
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [3]
    );
    assert_eq!(webhook.edits, 1, "the post's first message marked resolved");

    assert_eq!(
        stats.teams.paths[&mock_send_path("teams", "teams-ops")].cards,
        3
    );
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_429_pauses_slack_alone_until_retry_after() {
    let faults = vec![(
        mock_send_path("slack", "slack-incidents"),
        Faults {
            rate_limit_first: 1,
            retry_after_secs: 2,
            ..Faults::default()
        },
    )];
    // One request at a time to Slack, so every request after the first was
    // sent after herald had the 429 in hand.
    let (mock, server, _dir) = start_with(&faults, |d| {
        if d.name == "slack-incidents" {
            d.concurrency = 1;
        }
    })
    .await;
    let client = client(&server);
    let mut ids = Vec::new();
    for i in 0..5 {
        // P3: a P1 could also take the slot kept for P1s.
        let mut message = request(
            &format!("P3 number {i}"),
            &["slack-incidents", "status-hook"],
        );
        message.severity = Some("P3".into());
        let accepted = client.send(&message).await.unwrap();
        ids.push(accepted.id);
    }
    for id in &ids {
        let done = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(done.status, "converged", "{done:#?}");
    }
    let stats = mock.stats();
    let slack = stats.path("/slack/api/chat.postMessage");
    assert_eq!(slack.rate_limited, 1);
    let limited_at = slack.arrivals_ms[0];
    for later in &slack.arrivals_ms[1..] {
        assert!(
            later - limited_at >= 2_000,
            "a Slack request came {} ms after the 429 with Retry-After: 2",
            later - limited_at
        );
    }
    assert_eq!(stats.slack.channels["slack-incidents"].messages, 5);
    // The webhook did not wait for Slack: all five landed before Slack's
    // pause was over.
    let hook = stats.path(&mock_send_path("webhook", "status-hook"));
    assert_eq!(hook.distinct, 5);
    let pause_over = limited_at + 2_000;
    assert!(
        hook.arrivals_ms.iter().all(|at| *at < pause_over),
        "webhook arrivals {:?} vs Slack's pause ending at {pause_over}",
        hook.arrivals_ms
    );
    server.stop().await;
    mock.stop().await;
}
