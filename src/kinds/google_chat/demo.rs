//! Google Chat in `herald demo`: a space's webhook at the mock, whose
//! first answer is lost; the re-send's request ID gets the first message.

use super::config::GoogleChatMode;
use crate::config::Target;
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

/// The space of a mock Google Chat destination (stable per name).
pub fn mock_space(name: &str) -> String {
    let sum: u64 = name.bytes().map(u64::from).sum();
    format!("AAAA{sum:07}")
}

fn send_path(name: &str) -> String {
    format!("/google-chat/v1/spaces/{}/messages", mock_space(name))
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "google-chat",
        send_path,
        target: |mock_base, name| Target::GoogleChat {
            mode: GoogleChatMode::Webhook {
                url: mock_url(
                    mock_base,
                    &format!("{}?key=mock-key&token=mock-token-{name}", send_path(name)),
                ),
            },
            rendering: Default::default(),
        },
        name: "chat-ops",
        what: "first answer lost (requestId returns the first message)",
        faults: Faults {
            drop_first: 1,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let s = stats
        .google_chat
        .spaces
        .get(&mock_space(name))
        .cloned()
        .unwrap_or_default();
    (
        format!(
            "{} messages in {} thread, {} re-send answered by requestId",
            s.messages, s.threads, s.request_id_replays
        ),
        s.messages == 3 && s.threads == 1 && s.duplicated_texts.is_empty(),
    )
}
