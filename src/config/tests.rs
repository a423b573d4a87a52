use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn parse(source: &str) -> Result<Config, ConfigError> {
    Config::parse("herald.toml", source, |k| {
        (k == "HOOK_SECRET").then(|| SECRET.to_owned())
    })
}

#[test]
fn reads_a_full_file() {
    let config = parse(
        r#"
[server]
listen = "127.0.0.1:9999"
database = "/tmp/x.db"

[destinations.status-page]
kind = "webhook"
url = "https://status.example.com/hooks/herald"
secret_env = "HOOK_SECRET"
timeout_ms = 2000
concurrency = 4
retry = { attempts_max = 5, base_ms = 500, cap_ms = 60000, deadline_secs = 600 }
"#,
    )
    .unwrap();
    assert_eq!(config.listen.port(), 9999);
    let d = config.destination("status-page").unwrap();
    assert_eq!(d.timeout_ms, 2000);
    assert_eq!(d.policy.deadline_ms, Some(600_000));
    assert!(format!("{d:?}").contains("<redacted>"));
    assert!(!format!("{d:?}").contains("MfKQ9r8"));
}

#[test]
fn reads_every_destination_kind() {
    let env = |k: &str| match k {
        "SLACK_TOKEN" => Some("xoxb-1-2-abc".to_owned()),
        "JIRA_TOKEN" => Some("jira-api-token".to_owned()),
        "PD_KEY" => Some("0123456789abcdef0123456789abcdef".to_owned()),
        "DISCORD_URL" => Some("https://discord.com/api/webhooks/1/tok".to_owned()),
        _ => None,
    };
    let source = r#"
[destinations.slack]
kind = "slack"
channel = "C0123"
secret_env = "SLACK_TOKEN"

[destinations.teams]
kind = "teams"
url = "https://example.logic.azure.com/workflows/abc"

[destinations.jira]
kind = "jira"
url = "https://example.atlassian.net"
project = "OPS"
email = "herald@example.com"
secret_env = "JIRA_TOKEN"

[destinations.pagerduty]
kind = "pagerduty"
secret_env = "PD_KEY"

[destinations.discord]
kind = "discord"
url_env = "DISCORD_URL"
forum = true
"#;
    let config = Config::parse("herald.toml", source, env).unwrap();
    let slack = config.destination("slack").unwrap();
    assert_eq!(slack.target.kind(), "slack");
    assert_eq!(slack.isolation.rate_per_sec, Some(1.0), "Slack's pace");
    assert!(!format!("{slack:?}").contains("xoxb-1-2-abc"));
    let Target::Jira {
        issue_type,
        resolve_transition,
        ..
    } = &config.destination("jira").unwrap().target
    else {
        panic!("jira");
    };
    assert_eq!(
        (issue_type.as_str(), resolve_transition.as_str()),
        ("Task", "Done")
    );
    let Target::PagerDuty { events_url, .. } = &config.destination("pagerduty").unwrap().target
    else {
        panic!("pagerduty");
    };
    assert_eq!(events_url.as_str(), "https://events.pagerduty.com/");
    assert!(matches!(
        config.destination("discord").unwrap().target,
        Target::Discord { forum: true, .. }
    ));

    let err = Config::parse(
        "herald.toml",
        "[destinations.s]\nkind = \"slack\"\nsecret_env = \"SLACK_TOKEN\"\n",
        env,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("destinations.s.channel: kind slack needs channel"),
        "{err}"
    );
    let err = Config::parse(
        "herald.toml",
        "[destinations.w]\nkind = \"webhook\"\nurl = \"http://x/\"\nchannel = \"C1\"\n",
        env,
    )
    .unwrap_err();
    assert_eq!(err.problems[0].line, Some(4));
    assert!(
        err.to_string()
            .contains("destinations.w.channel: not a setting of kind webhook"),
        "{err}"
    );
    let err = Config::parse(
        "herald.toml",
        "[destinations.p]\nkind = \"pagerduty\"\nsecret_env = \"SLACK_TOKEN\"\n",
        env,
    )
    .unwrap_err();
    assert!(err.to_string().contains("32 characters"), "{err}");
    assert!(
        !err.to_string().contains("xoxb"),
        "never prints the secret: {err}"
    );
}

#[test]
fn discord_takes_a_bot_token_with_a_channel_id() {
    let env = |k: &str| (k == "DISCORD_BOT_TOKEN").then(|| "Bot MTk4NjIy.abc".to_owned());
    let config = Config::parse(
        "herald.toml",
        "[destinations.d]\nkind = \"discord\"\nchannel_id = \"1187041234567890000\"\nsecret_env = \"DISCORD_BOT_TOKEN\"\n",
        env,
    )
    .unwrap();
    let d = config.destination("d").unwrap();
    let Target::DiscordBot {
        api_url,
        channel_id,
        token,
        ..
    } = &d.target
    else {
        panic!("the bot mode: {d:?}");
    };
    assert_eq!(api_url.as_str(), "https://discord.com/api/v10/");
    assert_eq!(channel_id, "1187041234567890000");
    assert_eq!(
        token.expose(),
        "MTk4NjIy.abc",
        "the header's `Bot ` is dropped"
    );
    assert!(!format!("{d:?}").contains("MTk4NjIy"));
    assert_eq!(d.target.kind(), "discord");

    let err = Config::parse(
        "herald.toml",
        "[destinations.d]\nkind = \"discord\"\nchannel_id = \"#ops\"\nforum = true\n",
        env,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "destinations.d.channel_id: \"#ops\" is not a Discord channel id",
        "destinations.d.forum: the bot mode (channel_id)",
        "destinations.d.secret_env: kind discord needs secret_env",
    ] {
        assert!(err.contains(expected), "{expected}: {err}");
    }
    // Without channel_id, a credential is not a webhook's setting.
    let err = Config::parse(
        "herald.toml",
        "[destinations.d]\nkind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/t\"\nsecret = \"x\"\n",
        env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("destinations.d.secret: not a setting of kind discord"),
        "{err}"
    );
}

#[test]
fn the_example_file_is_valid() {
    let config = Config::parse(
        "herald.example.toml",
        include_str!("../../herald.example.toml"),
        |var| {
            Some(match var {
                "SLACK_BOT_TOKEN" => "xoxb-example".to_owned(),
                "PAGERDUTY_ROUTING_KEY" => "0123456789abcdef0123456789abcdef".to_owned(),
                "TEAMS_WORKFLOW_URL" => "https://example.logic.azure.com/workflows/1".to_owned(),
                "DISCORD_WEBHOOK_URL" => "https://discord.com/api/webhooks/1/t".to_owned(),
                _ => SECRET.to_owned(),
            })
        },
    )
    .unwrap();
    assert_eq!(config.destinations.len(), 7);
    assert_eq!(config.tokens.len(), 1);
    assert_eq!(config.tokens[0].scopes.len(), 3);
    assert_eq!(config.broadcast_retention_secs, 30 * 86_400);
    let routes = config.alertmanager.unwrap();
    assert_eq!(routes.receivers["database-oncall"].len(), 2);
    assert_eq!(routes.request_body_bytes_max, 2 * 1024 * 1024);
}

#[test]
fn retention_and_the_ingest_limit_are_checked() {
    let a = "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\n";
    let off = parse(&format!("[server]\nbroadcast_retention_secs = 0\n{a}")).unwrap();
    assert_eq!(
        off.broadcast_retention_secs, 0,
        "0 keeps broadcasts forever"
    );
    let err = parse(&format!(
        "[server]\nbroadcast_retention_secs = 999999999999\n{a}"
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("server.broadcast_retention_secs: must be between 0 and"),
        "{err}"
    );
    let err = parse(&format!(
        "{a}[alertmanager]\ndestinations = [\"a\"]\nrequest_body_bytes_max = 10\n"
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("alertmanager.request_body_bytes_max: must be between 1024 and"),
        "{err}"
    );
}

#[test]
fn errors_name_file_line_key_and_reason() {
    let err = parse("[destinations.a]\nkind = \"webhook\"\nurl = \"not a url\"\n").unwrap_err();
    assert_eq!(err.problems[0].line, Some(3));
    assert!(
        err.to_string()
            .starts_with("herald.toml:3: destinations.a.url:"),
        "{err}"
    );

    let err = parse("[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nconcurency = 3\n")
        .unwrap_err();
    assert_eq!(err.problems[0].line, Some(4));
    assert!(err.problems[0].message.contains("concurency"), "{err}");

    let err = parse(
        "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nsecret_env = \"MISSING\"\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("destinations.a.secret_env: environment variable MISSING is not set"),
        "{err}"
    );

    let err = parse(
        "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nretry = { attempts_max = 0 }\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("destinations.a.retry.attempts_max: must be between 1 and 100"),
        "{err}"
    );

    let err =
        parse("[destinations.a]\nkind = \"carrier-pigeon\"\nurl = \"http://x/\"\n").unwrap_err();
    assert_eq!(err.problems[0].line, Some(2));

    let err = parse("").unwrap_err();
    assert!(err.problems[0].message.contains("no destination"), "{err}");
}

#[test]
fn every_problem_of_a_file_is_reported_at_once_with_a_fix() {
    let err = Config::parse(
        "herald.toml",
        "[destinations.ops]\nkind = \"webhook\"\nurl = \"127.0.0.1:9090\"\ntimout_ms = 3000\n\n[destinations.Ops.Webhook]\nurl = \"http://x/\"\n\n[destinations.chat]\nkind = \"slak\"\n\n[destinations.pd]\nkind = \"pagerduty\"\nsecret_env = \"PD_KEY\"\n\n[destinations.hook]\nkind = \"webhook\"\nurl = \"http://x/\"\nsecret_env = \"HOOK_SECRET\"\n",
        |k| (k == "HOOK_SECRET").then(|| "whsec_...".to_owned()),
    )
    .unwrap_err();
    let text = err.to_string();
    for expected in [
        "herald.toml has 7 problems:",
        "herald.toml:3: destinations.ops.url: \"127.0.0.1:9090\" has no scheme; write http://127.0.0.1:9090",
        "herald.toml:4: destinations.ops.timout_ms: unknown key; did you mean timeout_ms?",
        "herald.toml:6: destinations.Ops.Webhook: a destination is one table, not a table per kind; write [destinations.ops] with kind = \"webhook\"",
        "herald.toml:10: destinations.chat.kind: unknown kind \"slak\"; did you mean slack?",
        "herald.toml:14: destinations.pd.secret_env: environment variable PD_KEY is not set",
        "herald.toml:19: destinations.hook.secret_env: the value of HOOK_SECRET is not a webhook secret",
        "run `herald secret` to make one",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert_eq!(
        err.problems
            .iter()
            .filter_map(|p| p.line)
            .collect::<Vec<_>>(),
        vec![3, 4, 6, 6, 10, 14, 19],
        "in file order: {text}"
    );
}

#[test]
fn a_wrong_type_names_its_key_and_other_sections_are_still_checked() {
    let err = parse(
        "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\ntimeout_ms = \"10s\"\nretry = { attempts = 3 }\n\n[destinations.b]\nkind = \"webhook\"\nurl = \"x\"\n",
    )
    .unwrap_err();
    let text = err.to_string();
    for expected in [
        "herald.toml:4: destinations.a.timeout_ms: invalid type: string \"10s\", expected a whole number",
        "herald.toml:5: destinations.a.retry.attempts: unknown key; did you mean attempts_max?",
        "herald.toml:9: destinations.b.url: \"x\" has no scheme; write http://x",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
}

#[test]
fn listen_takes_a_host_name() {
    let config = parse(
        "[server]\nlisten = \"localhost:19511\"\n[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\n",
    )
    .unwrap();
    assert_eq!(config.listen.port(), 19511);
    assert!(config.listen.ip().is_loopback());
    assert!(parse_listen_address("localhost").is_err());
}

#[test]
fn a_generated_secret_is_valid() {
    let secret = WebhookSecret::generate();
    assert_eq!(
        WebhookSecret::parse(&secret).unwrap().key().len(),
        WebhookSecret::GENERATED_KEY_BYTES
    );
    assert_ne!(secret, WebhookSecret::generate());
}

#[test]
fn the_init_file_is_valid_with_no_environment() {
    let config = Config::parse("herald.toml", INIT_TEMPLATE, |_| None).unwrap();
    let mut kinds: Vec<&str> = config
        .destinations
        .iter()
        .map(|d| d.target.kind())
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "discord",
            "email",
            "google-chat",
            "jira",
            "matrix",
            "pagerduty",
            "slack",
            "sms",
            "teams",
            "telegram",
            "webhook",
            "zulip"
        ]
    );
}

/// herald.example.toml says it documents every key: each key a section
/// takes appears in it, set or commented out.
#[test]
fn the_example_file_documents_every_key() {
    let example = include_str!("../../herald.example.toml");
    let sections = [
        fields_of::<FileConfig>(),
        fields_of::<FileServer>(),
        fields_of::<FileDestination>(),
        fields_of::<FileRetry>(),
        fields_of::<FileBreaker>(),
        fields_of::<FileToken>(),
        fields_of::<FileAlertmanager>(),
    ];
    let mut missing = Vec::new();
    for key in sections.iter().flat_map(|fields| fields.iter()) {
        let documented = example.contains(&format!("{key} ="))
            || example.contains(&format!(".{key}]"))
            || example.contains(&format!("[{key}]"))
            || example.contains(&format!("[[{key}]]"));
        if !documented {
            missing.push(*key);
        }
    }
    assert!(
        missing.is_empty(),
        "not in herald.example.toml: {missing:?}"
    );
}
