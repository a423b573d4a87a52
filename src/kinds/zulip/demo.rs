//! Zulip in `herald demo`: a channel at the mock whose first answer is
//! lost; the read-back finds the message in its topic by its key.

use crate::config::{Secret, Target};
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

/// The channel of a mock Zulip destination: its name.
pub fn mock_stream(name: &str) -> String {
    name.to_owned()
}

fn send_path(_: &str) -> String {
    "/zulip/api/v1/messages".to_owned()
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "zulip",
        send_path,
        target: |mock_base, name| Target::Zulip {
            site_url: mock_url(mock_base, "/zulip/"),
            email: format!("{name}-bot@herald.zulipchat.com"),
            api_key: Secret::new("herald-mock-api-key"),
            stream: mock_stream(name),
            rendering: crate::template::Rendering::default(),
        },
        name: "zulip-ops",
        what: "first answer lost (read back from the topic by key)",
        faults: Faults {
            drop_first: 1,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let s = stats
        .zulip
        .streams
        .get(&mock_stream(name))
        .cloned()
        .unwrap_or_default();
    (
        format!(
            "{} messages in {} topic, {} edit",
            s.messages,
            s.topics.len(),
            s.edits
        ),
        s.messages == 3 && s.topics.len() == 1 && s.duplicated_keys.is_empty(),
    )
}
