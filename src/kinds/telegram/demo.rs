//! Telegram in `herald demo`: a forum topic of a supergroup at the mock,
//! failing once (503).

use crate::config::{Secret, Target};
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

/// The chat id of a mock Telegram destination (stable per name).
pub fn mock_chat_id(name: &str) -> String {
    let sum: u64 = name.bytes().map(u64::from).sum();
    format!("-100{}", 1_000_000_000 + sum)
}

/// The bot token of a mock Telegram destination.
pub fn mock_bot_token(name: &str) -> String {
    let sum: u64 = name.bytes().map(u64::from).sum();
    format!("{}:herald-mock-token", 7_000_000_000 + sum)
}

fn send_path(name: &str) -> String {
    format!("/telegram/bot{}/sendMessage", mock_bot_token(name))
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "telegram",
        send_path,
        target: |mock_base, name| Target::Telegram {
            api_url: mock_url(mock_base, "/telegram/"),
            token: Secret::new(mock_bot_token(name)),
            chat_id: mock_chat_id(name),
            message_thread_id: Some(7),
            rendering: crate::template::Rendering::default(),
        },
        name: "telegram-ops",
        what: "fails once (503), forum topic 7",
        faults: Faults {
            fail_first: 1,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let c = stats
        .telegram
        .chats
        .get(&mock_chat_id(name))
        .cloned()
        .unwrap_or_default();
    (
        format!(
            "{} messages ({} replies), {} edit",
            c.messages, c.replies, c.edits
        ),
        c.messages == 3 && c.replies == 2 && c.duplicated_texts.is_empty(),
    )
}
