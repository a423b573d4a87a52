//! The generic webhook in `herald demo`: a signed hook at the mock (the
//! demo sets the secret).

use crate::config::Target;
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

fn send_path(name: &str) -> String {
    format!("/hooks/{name}")
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "webhook",
        send_path,
        target: |mock_base, name| Target::Webhook {
            url: mock_url(mock_base, &send_path(name)),
            secret: None,
            rendering: Default::default(),
        },
        name: "status-hook",
        what: "healthy, signed",
        faults: Faults::default(),
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let p = stats.path(&send_path(name));
    (
        format!(
            "{} messages ({} requests, {} bad signatures)",
            p.distinct, p.requests, p.bad_signature
        ),
        p.distinct == 3 && p.bad_signature == 0,
    )
}
