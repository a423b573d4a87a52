//! Discord in `herald demo`: a forum channel's webhook at the mock.

use crate::config::Target;
use crate::demo::{mock_discord_webhook_id, mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

fn send_path(name: &str) -> String {
    format!(
        "/discord/api/webhooks/{}/token-{name}",
        mock_discord_webhook_id(name)
    )
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "discord",
        send_path,
        target: |mock_base, name| Target::Discord {
            url: mock_url(mock_base, &send_path(name)),
            forum: true,
            rendering: Default::default(),
        },
        name: "discord-ops",
        what: "healthy (forum channel)",
        faults: Faults::default(),
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let w = stats
        .discord
        .webhooks
        .get(&mock_discord_webhook_id(name))
        .cloned()
        .unwrap_or_default();
    (
        format!(
            "{} forum post with {} messages, {} edit",
            w.threads, w.messages, w.edits
        ),
        w.threads == 1 && w.messages == 3,
    )
}
