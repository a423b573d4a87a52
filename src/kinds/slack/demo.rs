//! Slack in `herald demo`: a channel at the mock, whose first post's answer
//! is dropped.

use crate::config::{Secret, Target};
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "slack",
        send_path: |_| "/slack/api/chat.postMessage".to_owned(),
        target: |mock_base, name| Target::Slack {
            api_url: mock_url(mock_base, "/slack/api/"),
            channel: name.to_owned(),
            token: Secret::new("xoxb-herald-mock"),
            rendering: Default::default(),
        },
        name: "slack-incidents",
        what: "takes the first post, then drops the answer: read back, not re-posted",
        faults: Faults {
            drop_first: 1,
            drop_hang_ms: 10_000,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let c = stats.slack.channels.get(name).cloned().unwrap_or_default();
    (
        format!(
            "{} message, {} replies in its thread, {} edit (marked resolved), {} keys duplicated",
            c.messages,
            c.replies,
            c.updates,
            c.duplicated_keys.len()
        ),
        c.messages == 1 && c.replies == 2 && c.updates == 1 && c.duplicated_keys.is_empty(),
    )
}
