//! Email in `herald demo`: a mailbox at the mock's SMTP server (the port
//! after its HTTP one), busy (421) at the opener once: the destination
//! pauses, then the thread lands as one conversation.

use crate::config::Target;
use crate::demo::DemoKind;
use crate::kinds::email::config::SmtpSecurity;
use crate::mock::{smtp_port_next_to, Faults, MockStats};

/// The address a mock email destination named `name` sends to: its
/// mailbox at the mock.
pub fn mock_mailbox(name: &str) -> String {
    format!("{name}@example.com")
}

/// The sender of a mock email destination (the right-hand side of its
/// Message-IDs).
pub const MOCK_FROM: &str = "herald <herald@alerts.example.com>";

fn send_path(name: &str) -> String {
    super::mock::mailbox_path(&mock_mailbox(name))
}

/// An email destination at the mock at `mock_base` (`http://HOST:PORT`):
/// its SMTP server at HOST, the port after PORT, without TLS.
fn target(mock_base: &str, name: &str) -> Target {
    let url = reqwest::Url::parse(mock_base).expect("the mock's base is a URL");
    Target::Email {
        host: url.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: smtp_port_next_to(url.port_or_known_default().unwrap_or(80)),
        security: SmtpSecurity::None,
        username: None,
        password: None,
        ca_pem: None,
        from: MOCK_FROM.to_owned(),
        to: vec![mock_mailbox(name)],
        cc: Vec::new(),
        rendering: Default::default(),
    }
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "email",
        send_path,
        target,
        name: "email-oncall",
        what: "answers the opener 421 (busy): paused, then sent; one conversation",
        faults: Faults {
            rate_limit_first: 1,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let m = stats
        .email
        .mailboxes
        .get(&mock_mailbox(name))
        .cloned()
        .unwrap_or_default();
    let ids = if m.duplicated_ids.is_empty() && m.message_ids == m.messages {
        "one Message-ID each".to_owned()
    } else {
        format!(
            "{} Message-IDs ({} held more than once, folded by a mail client)",
            m.message_ids,
            m.duplicated_ids.len()
        )
    };
    (
        format!(
            "{} messages in {} conversation, {ids}",
            m.messages, m.conversations
        ),
        m.messages == 3 && m.message_ids == 3 && m.conversations == 1,
    )
}
