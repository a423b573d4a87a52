//! PagerDuty in `herald demo`: a healthy Events API at the mock.

use crate::config::{Secret, Target};
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "pagerduty",
        send_path: |_| "/pagerduty/v2/enqueue".to_owned(),
        target: |mock_base, _| Target::PagerDuty {
            events_url: mock_url(mock_base, "/pagerduty/"),
            routing_key: Secret::new("0123456789abcdef0123456789abcdef"),
            rendering: Default::default(),
        },
        name: "pagerduty",
        what: "healthy",
        faults: Faults::default(),
        landed,
    }
}

fn landed(stats: &MockStats, _: &str) -> (String, bool) {
    let incidents = &stats.pagerduty.incidents;
    let actions: Vec<String> = incidents
        .values()
        .flat_map(|i| i.actions.iter().cloned())
        .collect();
    let status = incidents
        .values()
        .map(|i| i.status.clone())
        .collect::<Vec<_>>()
        .join(",");
    (
        format!(
            "{} incident: {} → {status}",
            incidents.len(),
            actions.join(", ")
        ),
        incidents.len() == 1 && status == "resolved",
    )
}
