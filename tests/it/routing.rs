//! The message model (labels, links, fields, source, summary), routes and
//! groups, the Alertmanager mapping and `preview`: real `herald serve`
//! processes with config files, real HTTP to the mock.

use herald::api::wire::{Broadcast, SendRequest};
use herald::client::ClientError;
use herald::domain::{Field, Link};

use crate::support::*;

fn destinations(broadcast: &Broadcast) -> Vec<&str> {
    broadcast
        .deliveries
        .iter()
        .map(|d| d.destination.as_str())
        .collect()
}

fn rich_request(destinations: &[&str]) -> SendRequest {
    SendRequest {
        title: "Checkout database down".into(),
        severity: Some("P1".into()),
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
        labels: [
            ("service".to_owned(), "checkout".to_owned()),
            ("environment".to_owned(), "production".to_owned()),
        ]
        .into(),
        links: vec![Link {
            text: " Runbook ".into(),
            url: "https://wiki.example/runbooks/checkout-db?x=1".into(),
        }],
        fields: vec![
            Field {
                name: "Region".into(),
                value: "eu-west-1".into(),
            },
            Field {
                name: "Customers".into(),
                value: "all".into(),
            },
        ],
        source: Some("deploy-bot".into()),
        summary: Some("checkout DB down".into()),
        ..SendRequest::default()
    }
}

#[tokio::test]
async fn a_broadcast_keeps_its_labels_links_fields_source_and_summary() {
    let mock = start_mock(&[]).await;
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), vec![webhook(&mock, "ops")]).await;
    let client = client(&server);
    let accepted = client.send(&rich_request(&["ops"])).await.unwrap();
    let read = client.status(&accepted.id).await.unwrap();
    for broadcast in [&accepted, &read] {
        assert_eq!(broadcast.labels["service"], "checkout");
        assert_eq!(broadcast.labels["environment"], "production");
        assert_eq!(broadcast.links[0].text, "Runbook", "trimmed");
        assert_eq!(
            broadcast.links[0].url,
            "https://wiki.example/runbooks/checkout-db?x=1"
        );
        let names: Vec<&str> = broadcast.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["Region", "Customers"], "fields keep their order");
        assert_eq!(broadcast.source.as_deref(), Some("deploy-bot"));
        assert_eq!(broadcast.summary.as_deref(), Some("checkout DB down"));
        assert!(broadcast.routes.is_empty(), "named destinations: no route");
    }
    // A plain message shows none of them.
    let plain = client.send(&request("plain", &["ops"])).await.unwrap();
    let plain = client.status(&plain.id).await.unwrap();
    assert!(plain.labels.is_empty() && plain.links.is_empty() && plain.fields.is_empty());
    assert_eq!((plain.source, plain.summary), (None, None));
    server.stop().await;
}

#[tokio::test]
async fn details_over_their_limits_are_refused_naming_the_field_and_nothing_is_stored() {
    let mock = start_mock(&[]).await;
    let dir = temp_dir();
    let database = dir.path().join("herald.db");
    let server = start_server(&database, vec![webhook(&mock, "ops")]).await;
    let client = client(&server);
    type Spoil = Box<dyn Fn(&mut SendRequest)>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "labels",
            Box::new(|r| {
                r.labels = (0..=herald::domain::LABELS_MAX)
                    .map(|i| (format!("l{i}"), "v".to_owned()))
                    .collect()
            }),
        ),
        (
            "labels.service",
            Box::new(|r| {
                r.labels.insert(
                    "service".into(),
                    "x".repeat(herald::domain::LABEL_VALUE_CHARS_MAX + 1),
                );
            }),
        ),
        (
            "links[0].url",
            Box::new(|r| r.links[0].url = "javascript:alert(1)".into()),
        ),
        (
            "links[0].url",
            Box::new(|r| r.links[0].url = "ftp://files.example/x".into()),
        ),
        ("links[0].text", Box::new(|r| r.links[0].text = "  ".into())),
        (
            "links",
            Box::new(|r| r.links = vec![r.links[0].clone(); herald::domain::LINKS_MAX + 1]),
        ),
        (
            "fields[1].value",
            Box::new(|r| r.fields[1].value = "v".repeat(herald::domain::FIELD_VALUE_CHARS_MAX + 1)),
        ),
        (
            "source",
            Box::new(|r| r.source = Some("s".repeat(herald::domain::SOURCE_CHARS_MAX + 1))),
        ),
        (
            "summary",
            Box::new(|r| r.summary = Some("two\nlines".into())),
        ),
    ];
    for (field, spoil) in cases {
        let mut request = rich_request(&["ops"]);
        spoil(&mut request);
        match client.send(&request).await {
            Err(ClientError::Api {
                status: 400,
                field: Some(named),
                ..
            }) => assert_eq!(named, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(count_rows(&database, "broadcasts"), 0);
    server.stop().await;
}

/// Three webhook destinations, a group, four routes and (optionally) a
/// default route, as config text.
fn routed_config(mock: &herald::mock::RunningMock, default_route: bool) -> String {
    use crate::reload::destination_toml;
    let mut text = String::new();
    for name in ["slack", "pager", "jira", "catchall"] {
        text.push_str(&destination_toml(mock, name, name));
    }
    text.push_str(
        r#"[alertmanager]
receivers = { team-db = ["oncall"] }

[groups]
oncall = ["slack", "pager"]

[[routes]]
name = "payments-p1"
severity = ["P1", "critical"]
labels = { team = "payments", environment = ["production", "staging"] }
destinations = ["oncall"]
continue = true

[[routes]]
name = "tickets"
labels = { service = { regex = "check(out|in)" } }
destinations = ["jira", "slack"]

[[routes]]
name = "bots"
source = { regex = "bot-.*" }
destinations = ["jira"]
"#,
    );
    if default_route {
        text.push_str("\n[default_route]\ndestinations = [\"catchall\"]\n");
    }
    text
}

fn message(severity: &str, labels: &[(&str, &str)], source: Option<&str>) -> SendRequest {
    SendRequest {
        title: format!("{severity} {labels:?}"),
        severity: Some(severity.into()),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        source: source.map(str::to_owned),
        ..SendRequest::default()
    }
}

#[tokio::test]
async fn routes_match_in_order_fall_through_expand_groups_and_a_reload_leaves_accepted_broadcasts_alone(
) {
    let mock = start_mock(&[]).await;
    let served = crate::reload::serve(&routed_config(&mock, false)).await;
    let client = served.client(None);
    let payments = [
        ("team", "payments"),
        ("environment", "production"),
        ("service", "checkout"),
    ];
    // Preview answers what a send then does, and stores nothing.
    let mut previews = Vec::new();
    for request in [
        message("P1", &payments, None),
        message("P3", &[("service", "checkin")], Some("bot-7")),
        message("P3", &[("service", "checkout-api")], Some("bot-7")),
    ] {
        previews.push((client.preview(&request).await.unwrap(), request));
    }
    assert_eq!(
        client
            .list(&Default::default())
            .await
            .unwrap()
            .broadcasts
            .len(),
        0
    );
    for (preview, request) in previews {
        let sent = client.send(&request).await.unwrap();
        assert_eq!(preview.routes, sent.routes);
        let names: Vec<&str> = preview
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, destinations(&sent));
        assert!(preview.destinations.iter().all(|d| d.kind == "webhook"));
    }
    match client
        .preview(&message("P4", &[("team", "web")], None))
        .await
    {
        Err(ClientError::Api {
            status: 422, code, ..
        }) => assert_eq!(code, "no_route"),
        other => panic!("{other:?}"),
    }
    // Matches payments-p1 (continue) then tickets (stops): the group
    // expands, and slack, named twice, goes once.
    let first = client.send(&message("P1", &payments, None)).await.unwrap();
    assert_eq!(first.routes, ["payments-p1", "tickets"]);
    assert_eq!(destinations(&first), ["slack", "pager", "jira"]);
    // Not P1: payments-p1 does not match; the regex is anchored, so
    // "checkout-api" is not "checkout".
    let p3 = client
        .send(&message("P3", &[("service", "checkin")], Some("bot-7")))
        .await
        .unwrap();
    assert_eq!(p3.routes, ["tickets"]);
    assert_eq!(destinations(&p3), ["jira", "slack"]);
    let bot = client
        .send(&message(
            "P3",
            &[("service", "checkout-api")],
            Some("bot-7"),
        ))
        .await
        .unwrap();
    assert_eq!(bot.routes, ["bots"]);
    // No route and no default route: 422, nothing stored.
    match client.send(&message("P4", &[("team", "web")], None)).await {
        Err(ClientError::Api {
            status: 422,
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "no_route");
            assert!(message.contains("team=web"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Named destinations may name groups, expanded in place.
    let mut named = message("P2", &[], None);
    named.destinations = vec!["jira".into(), "oncall".into()];
    let named = client.send(&named).await.unwrap();
    assert_eq!(destinations(&named), ["jira", "slack", "pager"]);
    assert!(named.routes.is_empty());
    let mut unknown = message("P2", &[], None);
    unknown.destinations = vec!["jira".into(), "nope".into()];
    match client.send(&unknown).await {
        Err(ClientError::Api {
            status: 400, field, ..
        }) => {
            assert_eq!(field.as_deref(), Some("destinations[1]"))
        }
        other => panic!("{other:?}"),
    }

    // A reload that adds a default route and empties the group: the
    // accepted broadcast keeps its routes and destinations.
    let reloaded = routed_config(&mock, true)
        .replace("oncall = [\"slack\", \"pager\"]", "oncall = [\"catchall\"]");
    std::fs::write(&served.config, reloaded).unwrap();
    client.reload_config().await.unwrap();
    let again = client.status(&first.id).await.unwrap();
    assert_eq!(again.routes, ["payments-p1", "tickets"]);
    assert_eq!(destinations(&again), ["slack", "pager", "jira"]);
    let now = client.send(&message("P1", &payments, None)).await.unwrap();
    assert_eq!(destinations(&now), ["catchall", "jira", "slack"]);
    let unmatched = client
        .send(&message("P4", &[("team", "web")], None))
        .await
        .unwrap();
    assert_eq!(unmatched.routes, ["default"]);
    assert_eq!(destinations(&unmatched), ["catchall"]);
    let first = wait_final(&client, &first.id, std::time::Duration::from_secs(20)).await;
    assert_eq!(first.status, "converged");
    assert_eq!(destinations(&first), ["slack", "pager", "jira"]);
}

#[test]
fn route_problems_are_reported_with_the_route_index_and_key() {
    let destinations =
        "[destinations.slack]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/x\"\n\n";
    let text = format!(
        "{destinations}[groups]\noncall = [\"slak\"]\n\n[[routes]]\ndestinations = [\"oncal\"]\n\n[[routes]]\nlabels = {{ service = {{ regex = \"(unclosed\" }} }}\nseverity = \"P9\"\ndestinations = [\"slack\"]\nmatch = 1\n\n[default_route]\ndestinations = []\n"
    );
    let error = herald::config::Config::parse("herald.toml", &text, |_| None)
        .unwrap_err()
        .to_string();
    for expected in [
        "herald.toml:6: groups.oncall: unknown destination \"slak\"",
        "did you mean slack?",
        "herald.toml:9: routes[0].destinations: unknown destination or group \"oncal\"; did you mean oncall?",
        "herald.toml:12: routes[1].labels.service: invalid regex \"(unclosed\"",
        "routes[1].severity: unknown severity \"P9\"",
        "routes[1].match: unknown key",
        "default_route.destinations: name at least one destination or group",
    ] {
        assert!(error.contains(expected), "{expected:?} not in:\n{error}");
    }
}

#[tokio::test]
async fn alertmanager_labels_annotations_and_generator_urls_become_the_message_details() {
    let mock = start_mock(&[]).await;
    let served = crate::reload::serve(&routed_config(&mock, true)).await;
    let notification = |receiver: &str, fingerprint: &str| {
        format!(
            r#"{{"version": "4", "groupKey": "{{}}:{{alertname=\"DiskFull\"}}", "status": "firing",
  "receiver": "{receiver}", "groupLabels": {{"alertname": "DiskFull"}},
  "commonLabels": {{"alertname": "DiskFull", "severity": "critical", "team": "payments", "environment": "production"}},
  "commonAnnotations": {{"summary": "disk 95% full", "description": "The orders database is almost full.",
    "runbook_url": "https://wiki.example/runbooks/disk", "dashboard_url": "https://grafana.example/d/db"}},
  "externalURL": "http://alertmanager.example:9093",
  "alerts": [
    {{"status": "firing", "labels": {{"alertname": "DiskFull", "instance": "db-1"}}, "annotations": {{}},
      "startsAt": "2026-11-27T23:00:00Z", "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk1", "fingerprint": "{fingerprint}1"}},
    {{"status": "firing", "labels": {{"alertname": "DiskFull", "instance": "db-2"}}, "annotations": {{}},
      "startsAt": "2026-11-27T23:00:00Z", "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk2", "fingerprint": "{fingerprint}2"}}
  ]}}"#
        )
    };
    let http = herald::connector::http_client_builder().build().unwrap();
    let ingest = |body: String| {
        let http = http.clone();
        let url = format!("http://{}/v1/ingest/alertmanager", served.addr);
        async move {
            let response = http.post(url).body(body).send().await.unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Broadcast>().await.unwrap()
        }
    };
    // The receiver names a group.
    let broadcast = ingest(notification("team-db", "a")).await;
    let broadcast = served.client(None).status(&broadcast.id).await.unwrap();
    assert_eq!(destinations(&broadcast), ["slack", "pager"]);
    assert_eq!(broadcast.labels["team"], "payments");
    assert_eq!(broadcast.labels["severity"], "critical");
    assert_eq!(broadcast.summary.as_deref(), Some("disk 95% full"));
    assert_eq!(broadcast.source.as_deref(), Some("alertmanager/team-db"));
    assert!(
        broadcast
            .body
            .starts_with("The orders database is almost full.\n"),
        "{}",
        broadcast.body
    );
    let links: Vec<(&str, &str)> = broadcast
        .links
        .iter()
        .map(|l| (l.text.as_str(), l.url.as_str()))
        .collect();
    assert_eq!(
        links,
        [
            ("Runbook", "https://wiki.example/runbooks/disk"),
            ("Dashboard", "https://grafana.example/d/db"),
            (
                "Source: db-1",
                "http://prometheus.example:9090/graph?g0.expr=disk1"
            ),
            (
                "Source: db-2",
                "http://prometheus.example:9090/graph?g0.expr=disk2"
            ),
        ]
    );
    // A receiver not listed, with no default destinations: the routes
    // decide, on the common labels and severity.
    let routed = ingest(notification("someone-else", "b")).await;
    assert_eq!(routed.routes, ["payments-p1"]);
    assert_eq!(destinations(&routed), ["slack", "pager"]);
}
