//! The rich sample message a template is rendered against when the config
//! loads: every detail set (labels, links, fields, source, summary), in
//! each role a delivery can have, so a template that fails on any of them
//! fails at load, not at 3 a.m.

use std::collections::BTreeMap;

use crate::domain::{
    ClaimedDelivery, DeliveryProgress, Field, Link, Message, MessageDetails, RetryPolicy, Severity,
};

/// The sample's broadcast id (a valid ULID).
const SAMPLE_BROADCAST_ID: &str = "01KBSAMPLE0000000000000000";

/// The sample message: P1, in thread `INC-1`, with every detail.
fn sample_message(resolved: bool) -> Message {
    let details = MessageDetails {
        labels: BTreeMap::from([
            ("environment".to_owned(), "production".to_owned()),
            ("service".to_owned(), "checkout".to_owned()),
            ("team".to_owned(), "payments".to_owned()),
        ]),
        links: vec![
            Link {
                text: "Runbook".into(),
                url: "https://runbooks.example.com/checkout".into(),
            },
            Link {
                text: "Dashboard".into(),
                url: "https://grafana.example.com/d/checkout".into(),
            },
        ],
        fields: vec![
            Field {
                name: "service".into(),
                value: "checkout".into(),
            },
            Field {
                name: "environment".into(),
                value: "production".into(),
            },
        ],
        source: Some("alertmanager \"prod\"".into()),
        summary: Some("Checkout 5xx at 12%".into()),
    };
    Message::new(
        "Checkout \"5xx\" rate above 10%",
        "Errors since 10:02.\nOn-call: check the <runbook> & the dashboard.",
        Severity::P1,
        Some("INC-1"),
    )
    .and_then(|m| m.resolving(resolved))
    .and_then(|m| m.with_details(details))
    .expect("the sample message is valid")
}

/// The sample as a delivery to `destination`; `thread_ref` makes it an
/// update (or, resolved, a resolve that attaches).
pub fn sample_delivery(
    destination: &str,
    resolved: bool,
    thread_ref: Option<&str>,
) -> ClaimedDelivery {
    ClaimedDelivery {
        delivery_id: 1,
        broadcast_id: SAMPLE_BROADCAST_ID.into(),
        destination: destination.into(),
        idempotency_key: format!("{SAMPLE_BROADCAST_ID}-{destination}"),
        progress: DeliveryProgress::new(&RetryPolicy::default(), false, 0),
        message: sample_message(resolved),
        broadcast_created_at_ms: 1_764_000_000_123,
        last_error: None,
        lease_epoch: 1,
        thread_ref: thread_ref.map(str::to_owned),
        remote_ref: None,
    }
}

/// The sample in every role: an opener, an update, a resolve, and the
/// same message outside a thread.
pub fn sample_deliveries() -> Vec<ClaimedDelivery> {
    let mut single = sample_delivery("sample", false, None);
    single.message = Message::new(
        single.message.title(),
        single.message.body(),
        Severity::P1,
        None,
    )
    .and_then(|m| m.with_details(single.message.details().clone()))
    .expect("the sample message is valid");
    vec![
        single,
        sample_delivery("sample", false, None),
        sample_delivery("sample", false, Some("sample-thread-ref")),
        sample_delivery("sample", true, Some("sample-thread-ref")),
    ]
}
