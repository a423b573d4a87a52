//! SMS in `herald demo`: a Twilio account at the mock whose first answer
//! is lost; the read-back finds the message by recipient and text.

use crate::config::{Secret, Target};
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

/// The demo's recipient.
pub const DEMO_TO: &str = "+14155550100";

/// The account SID of a mock SMS destination (stable per name).
pub fn mock_account_sid(name: &str) -> String {
    let sum: u64 = name.bytes().map(u64::from).sum();
    format!("AC{sum:032x}")
}

fn send_path(name: &str) -> String {
    format!(
        "/twilio/2010-04-01/Accounts/{}/Messages.json",
        mock_account_sid(name)
    )
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "sms",
        send_path,
        target: |mock_base, name| Target::Sms {
            api_url: mock_url(mock_base, "/twilio/"),
            account_sid: mock_account_sid(name),
            auth_token: Secret::new("herald-mock-auth-token"),
            from: "+14155550199".to_owned(),
            to: vec![DEMO_TO.to_owned()],
            text_chars_max: 160,
            rendering: crate::template::Rendering::default(),
        },
        name: "sms-oncall",
        what: "first answer lost (read back by recipient and text)",
        faults: Faults {
            drop_first: 1,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let a = stats
        .sms
        .accounts
        .get(&mock_account_sid(name))
        .cloned()
        .unwrap_or_default();
    (
        format!(
            "{} texts, {} duplicated",
            a.messages,
            a.duplicated_texts.len()
        ),
        a.messages == 3 && a.duplicated_texts.is_empty(),
    )
}
