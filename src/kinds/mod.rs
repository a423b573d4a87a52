//! One folder per destination kind: everything a kind is lives in its
//! folder (its connector: requests, classification, send, verify; its
//! emulation for `herald mock`: routes and state; the glue that builds its
//! connector from its configured target and its demo destination). The
//! central code (the connector dispatch in `crate::connector`, the mock's
//! router in `crate::mock`, the demo's table in `crate::demo`, the kinds a
//! destination's table may name in `crate::config`) reads the one
//! list in [`with_kinds!`] and names no kind itself.
//!
//! Discord has two modes (a webhook, or a bot posting to a channel); each is
//! an entry of the list, both in the `discord` folder.

pub mod discord;
pub mod email;
pub mod google_chat;
pub mod jira;
pub mod matrix;
pub mod pagerduty;
pub mod slack;
pub mod sms;
pub mod teams;
pub mod telegram;
pub mod webhook;
pub mod zulip;

/// The list of destination kinds: calls `$callback!` with one entry per
/// kind (or mode of a kind), in the order the mock matches their paths
/// (the generic webhook, which takes every other path, last).
///
/// Each entry names, under `crate::kinds`:
/// - the `Target` variant (`crate::config::Target`) it is configured as;
/// - `field`: its section in the mock's statistics (`MockStats`);
/// - `connector`: its connector type, with `from_target`, `send`, `verify`;
/// - `emulation`: its state in the mock, implementing
///   `crate::mock::Emulation`;
/// - `stats`: what its emulation counts;
/// - `demo`: the folder whose `demo::demo_kind()` (`crate::demo::DemoKind`)
///   is its part in `herald demo` and in the tests at the mock, or `none` when the demo does not play this entry on its
///   own (the bot mode of Discord is a variant of `discord`);
/// - `config`: the module whose `config::KIND` reads its keys of a
///   destination's table (`crate::config::KindConfig`), or `none` when
///   another entry's reads them (Discord's one `kind = "discord"` takes
///   both modes).
///
/// Adding a kind means adding its folder and one line here.
macro_rules! with_kinds {
    ($callback:ident) => {
        $callback! {
            Slack { field: slack, connector: slack::connector::SlackConnector, emulation: slack::mock::Slack, stats: slack::mock::SlackStats, demo: slack, config: slack },
            Teams { field: teams, connector: teams::connector::TeamsConnector, emulation: teams::mock::Teams, stats: teams::mock::TeamsStats, demo: teams, config: teams },
            Jira { field: jira, connector: jira::connector::JiraConnector, emulation: jira::mock::Jira, stats: jira::mock::JiraStats, demo: jira, config: jira },
            PagerDuty { field: pagerduty, connector: pagerduty::connector::PagerDutyConnector, emulation: pagerduty::mock::PagerDuty, stats: pagerduty::mock::PagerDutyStats, demo: pagerduty, config: pagerduty },
            Discord { field: discord, connector: discord::connector::DiscordConnector, emulation: discord::mock::Discord, stats: discord::mock::DiscordStats, demo: discord, config: discord },
            DiscordBot { field: discord_bot, connector: discord::bot_connector::DiscordBotConnector, emulation: discord::bot_mock::DiscordBot, stats: discord::bot_mock::DiscordBotStats, demo: none, config: none },
            Matrix { field: matrix, connector: matrix::connector::MatrixConnector, emulation: matrix::mock::Matrix, stats: matrix::mock::MatrixStats, demo: matrix, config: matrix },
            Email { field: email, connector: email::connector::EmailConnector, emulation: email::mock::Email, stats: email::mock::EmailStats, demo: email, config: email },
            Sms { field: sms, connector: sms::connector::SmsConnector, emulation: sms::mock::Twilio, stats: sms::mock::SmsStats, demo: sms, config: sms },
            GoogleChat { field: google_chat, connector: google_chat::connector::GoogleChatConnector, emulation: google_chat::mock::GoogleChat, stats: google_chat::mock::GoogleChatStats, demo: google_chat, config: google_chat },
            Telegram { field: telegram, connector: telegram::connector::TelegramConnector, emulation: telegram::mock::Telegram, stats: telegram::mock::TelegramStats, demo: telegram, config: telegram },
            Zulip { field: zulip, connector: zulip::connector::ZulipConnector, emulation: zulip::mock::Zulip, stats: zulip::mock::ZulipStats, demo: zulip, config: zulip },
            Webhook { field: webhook, connector: webhook::connector::WebhookConnector, emulation: webhook::mock::Webhook, stats: webhook::WebhookStats, demo: webhook, config: webhook },
        }
    };
}
pub(crate) use with_kinds;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, recursively.
    fn sources(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(sources(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    /// The files (or folders) of each kind's folder whose name contains
    /// `part` (`connector.rs`, `bot_connector.rs`), plus every file under
    /// `central`.
    fn files_of(part: &str, central: &str) -> Vec<PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<PathBuf> = sources(&src.join("kinds"))
            .into_iter()
            .filter(|path| {
                let relative = path.strip_prefix(src.join("kinds")).unwrap();
                relative
                    .components()
                    .nth(1)
                    .and_then(|c| c.as_os_str().to_str())
                    .is_some_and(|name| name.contains(part))
            })
            .collect();
        files.extend(sources(&src.join(central)));
        assert!(files.len() > 6, "found the {part} files: {files:?}");
        files
    }

    fn assert_no_use(files: &[PathBuf], forbidden: &[&str]) {
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            for module in forbidden {
                assert!(
                    !text.contains(module),
                    "{} uses {module}: dependencies run one way",
                    file.display()
                );
            }
        }
    }

    #[test]
    fn connectors_know_nothing_of_the_store() {
        let files = files_of("connector", "connector");
        assert_no_use(&files, &["crate::store", "crate::dispatch", "crate::api"]);
    }

    #[test]
    fn the_mock_knows_nothing_of_the_engine() {
        let files = files_of("mock", "mock");
        assert_no_use(
            &files,
            &[
                "crate::store",
                "crate::dispatch",
                "crate::connector",
                "crate::api",
                "crate::server",
            ],
        );
    }
}
