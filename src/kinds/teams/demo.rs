//! Teams in `herald demo`: a workflow at the mock, rate limited once.

use crate::config::Target;
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

fn send_path(name: &str) -> String {
    format!("/teams/{name}")
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "teams",
        send_path,
        target: |mock_base, name| Target::Teams {
            url: mock_url(mock_base, &send_path(name)),
            rendering: Default::default(),
        },
        name: "teams-ops",
        what: "rate limited once (429, Retry-After: 2)",
        faults: Faults {
            rate_limit_first: 1,
            retry_after_secs: 2,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let t = stats
        .teams
        .paths
        .get(&send_path(name))
        .cloned()
        .unwrap_or_default();
    (format!("{} cards", t.cards), t.cards == 3)
}
