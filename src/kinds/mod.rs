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

/// Where a person opens what a delivery created at its destination (its
/// `remote_ref`: the Jira issue, the Matrix event), when the destination's
/// settings say enough to build it. Each kind builds its own in its
/// `config` module and answers `None` for another kind's target; a kind
/// whose links need what herald is not told (Slack's workspace, Discord's
/// server) has none.
pub fn remote_url(target: &crate::config::Target, remote_ref: &str) -> Option<String> {
    jira::config::remote_url(target, remote_ref)
        .or_else(|| matrix::config::remote_url(target, remote_ref))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::Config;

    /// The target of the one destination of `table`.
    fn target(table: &str) -> crate::config::Target {
        let env = |_: &str| Some("a-token".to_owned());
        let config = Config::parse("herald.toml", &format!("[destinations.d]\n{table}"), env)
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        config.destination("d").unwrap().target.clone()
    }

    #[test]
    fn remote_url_opens_the_jira_issue_or_comment_under_the_sites_path() {
        let jira = target(
            "kind = \"jira\"\nurl = \"https://acme.atlassian.net\"\nproject = \"OPS\"\nemail = \"a@b.c\"\nsecret_env = \"T\"\n",
        );
        assert_eq!(
            super::remote_url(&jira, "OPS-42").as_deref(),
            Some("https://acme.atlassian.net/browse/OPS-42")
        );
        assert_eq!(
            super::remote_url(&jira, "OPS-42/comment/10071").as_deref(),
            Some("https://acme.atlassian.net/browse/OPS-42?focusedCommentId=10071")
        );
        // A site under a path (a proxy, the mock) keeps its path.
        let proxied = target(
            "kind = \"jira\"\nurl = \"http://127.0.0.1:9/jira/\"\nproject = \"OPS\"\nemail = \"a@b.c\"\nsecret_env = \"T\"\n",
        );
        assert_eq!(
            super::remote_url(&proxied, "OPS_2-7").as_deref(),
            Some("http://127.0.0.1:9/jira/browse/OPS_2-7")
        );
        // Not an issue key: no link rather than a wrong one.
        for odd in [
            "",
            "OPS",
            "ops-1",
            "OPS-",
            "OPS-1/comment/",
            "OPS-1/comment/x",
            "../OPS-1",
            "OPS-1?x=1",
        ] {
            assert_eq!(super::remote_url(&jira, odd), None, "{odd:?}");
        }
    }

    #[test]
    fn remote_url_is_a_matrix_to_permalink_to_the_event_in_the_room() {
        let matrix = target(
            "kind = \"matrix\"\nurl = \"https://matrix.example.org\"\nroom_id = \"!abc123:example.org\"\nsecret_env = \"T\"\n",
        );
        assert_eq!(
            super::remote_url(&matrix, "$YUwRidLecu:example.com").as_deref(),
            Some("https://matrix.to/#/!abc123:example.org/$YUwRidLecu:example.com")
        );
        // Whatever would end the part or the fragment early is encoded.
        assert_eq!(
            super::remote_url(&matrix, "$a/b?c#d e%").as_deref(),
            Some("https://matrix.to/#/!abc123:example.org/$a%2Fb%3Fc%23d%20e%25")
        );
        assert_eq!(super::remote_url(&matrix, "not-an-event"), None);
        assert_eq!(super::remote_url(&matrix, "$"), None);
    }

    #[test]
    fn kinds_without_a_link_from_their_settings_have_no_remote_url() {
        for table in [
            "kind = \"slack\"\nchannel = \"C1\"\nsecret = \"xoxb-1\"\n",
            "kind = \"webhook\"\nurl = \"https://example.com/hook\"\n",
            "kind = \"pagerduty\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
            "kind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/t\"\n",
        ] {
            let target = target(table);
            for remote_ref in ["OPS-1", "1503435956.000247", "$event:example.org"] {
                assert_eq!(super::remote_url(&target, remote_ref), None, "{table}");
            }
        }
    }

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
