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
    let cases: Vec<(&str, Box<dyn Fn(&mut SendRequest)>)> = vec![
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
