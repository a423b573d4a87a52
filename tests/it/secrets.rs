//! Secrets from files, as Kubernetes and systemd hand them over: every
//! credential a destination takes (`secret_file`, `url_file`), and the
//! database URL (`server.database_url_file`), read at start and again at
//! every reload; a file others may read is a warning naming it, a missing
//! or empty one a problem naming the key and the path.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::config::{Config, Target};
use herald::mock::Faults;
use tokio::net::TcpListener;

use crate::support::*;

/// Writes a credential file with `mode`.
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn no_env(_: &str) -> Option<String> {
    None
}

const SLACK_TOKEN: &str = "xoxb-from-a-file";
const JIRA_TOKEN: &str = "jira-token-from-a-file";
const ROUTING_KEY: &str = "fedcba9876543210fedcba9876543210";
const BOT_TOKEN: &str = "bot-token-from-a-file";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A config whose every credential is in a file of `dir`, each destination
/// at the mock; the files end with a newline, as `echo` writes them.
fn config_with_files(dir: &Path, mock_base: &str) -> String {
    let file = |name: &str, text: &str| {
        secret_file(dir, name, &format!("{text}\n"), 0o600)
            .display()
            .to_string()
    };
    let bot_channel = herald::demo::mock_discord_channel_id("bot");
    format!(
        r#"
[server]
database_url_file = "{database}"

[destinations.slack]
kind = "slack"
url = "{mock_base}/slack/api/"
channel = "incidents"
secret_file = "{slack}"

[destinations.jira]
kind = "jira"
url = "{mock_base}/jira/"
project = "OPS"
email = "herald@example.com"
secret_file = "{jira}"

[destinations.pagerduty]
kind = "pagerduty"
url = "{mock_base}/pagerduty/"
secret_file = "{pagerduty}"

[destinations.bot]
kind = "discord"
url = "{mock_base}/discord/api/v10/"
channel_id = "{bot_channel}"
secret_file = "{bot}"

[destinations.discord]
kind = "discord"
url_file = "{discord}"
forum = true

[destinations.teams]
kind = "teams"
url_file = "{teams}"

[destinations.hook]
kind = "webhook"
url_file = "{hook_url}"
secret_file = "{hook_secret}"
"#,
        database = file(
            "database-url",
            "postgres://herald:s3cret@db.internal:5432/herald?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        ),
        slack = file("slack-token", SLACK_TOKEN),
        jira = file("jira-token", JIRA_TOKEN),
        pagerduty = file("routing-key", ROUTING_KEY),
        bot = file("bot-token", BOT_TOKEN),
        discord = file(
            "discord-url",
            &format!("{mock_base}/discord/api/webhooks/1000000/token-ops")
        ),
        teams = file("teams-url", &format!("{mock_base}/teams/ops")),
        hook_url = file("hook-url", &format!("{mock_base}/hooks/signed")),
        hook_secret = file("hook-secret", WEBHOOK_SECRET),
    )
}

#[tokio::test]
async fn every_credential_and_the_database_url_can_come_from_a_file() {
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let base = mock.url("");
    let base = base.trim_end_matches('/');
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, config_with_files(dir.path(), base)).unwrap();
    let config = Config::load(&path, no_env).unwrap();
    assert_eq!(config.warnings, Vec::<String>::new(), "the files are 0600");
    assert_eq!(
        config.database.to_str().unwrap(),
        "postgres://herald:s3cret@db.internal:5432/herald?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    );
    for destination in &config.destinations {
        match &destination.target {
            Target::Slack { token, .. } => assert_eq!(token.expose(), SLACK_TOKEN),
            Target::Jira { token, .. } => assert_eq!(token.expose(), JIRA_TOKEN),
            Target::PagerDuty { routing_key, .. } => {
                assert_eq!(routing_key.expose(), ROUTING_KEY)
            }
            Target::DiscordBot { token, .. } => assert_eq!(token.expose(), BOT_TOKEN),
            Target::Discord { url, .. } => assert!(url.path().ends_with("/token-ops"), "{url}"),
            Target::Teams { url, .. } => assert!(url.path().ends_with("/teams/ops"), "{url}"),
            Target::Webhook { url, secret, .. } => {
                assert!(url.path().ends_with("/hooks/signed"), "{url}");
                let expected = herald::config::WebhookSecret::parse(WEBHOOK_SECRET).unwrap();
                assert_eq!(secret.as_ref(), Some(&expected));
            }
            other => panic!("no {} destination in this file", other.kind()),
        }
    }
    assert_eq!(config.destinations.len(), 7);
    // No token is printed by the destinations' Debug.
    let debug = format!("{:?}", config.destinations);
    for secret in [SLACK_TOKEN, JIRA_TOKEN, ROUTING_KEY, BOT_TOKEN] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }

    // Served (on SQLite here): each destination converges at the mock,
    // the webhook's signatures checked with the secret from the file.
    mock.set_faults(
        "/hooks/signed",
        Faults {
            secret: Some(WEBHOOK_SECRET.into()),
            ..Faults::default()
        },
    );
    let served = Config {
        database: dir.path().join("herald.db"),
        ..config
    };
    let server = herald::server::start(served, TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    let client = client(&server);
    let names = [
        "slack",
        "jira",
        "pagerduty",
        "bot",
        "discord",
        "teams",
        "hook",
    ];
    let accepted = client
        .send(&request("credentials from files", &names))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let hook = mock.stats().path("/hooks/signed");
    assert_eq!((hook.distinct, hook.bad_signature), (1, 0), "{hook:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_signs_with_the_secret_now_in_the_file() {
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let old_secret = herald::config::WebhookSecret::generate();
    let new_secret = herald::config::WebhookSecret::generate();
    let signing = |secret: &str| Faults {
        secret: Some(secret.to_owned()),
        ..Faults::default()
    };
    mock.set_faults("/hooks/rotated", signing(&old_secret));
    let secret_path = secret_file(dir.path(), "hook-secret", &old_secret, 0o600);
    let config_path = dir.path().join("herald.toml");
    std::fs::write(
        &config_path,
        format!(
            "[destinations.rotated]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{}\"\nretry = {{ attempts_max = 3, base_ms = 50, cap_ms = 100 }}\n",
            mock.url("/hooks/rotated"),
            secret_path.display()
        ),
    )
    .unwrap();
    let mut config = Config::load(&config_path, no_env).unwrap();
    config.database = dir.path().join("herald.db");
    let database = config.database.clone();
    let server = herald::server::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();
    server.enable_reload(herald::api::reload::ConfigSource {
        path: config_path.clone(),
        overrides: Box::new(move |config: &mut Config| config.database = database.clone()),
    });
    let client = client(&server);
    let send = |title: &'static str| {
        let client = &client;
        async move {
            let accepted = client.send(&request(title, &["rotated"])).await.unwrap();
            wait_final(client, &accepted.id, Duration::from_secs(30)).await
        }
    };
    assert_eq!(send("before the rotation").await.status, "converged");

    // The receiver now wants the new secret: herald's old one is refused.
    mock.set_faults("/hooks/rotated", signing(&new_secret));
    let refused = send("rotated at the receiver only").await;
    assert_ne!(refused.status, "converged", "{refused:#?}");
    assert!(mock.stats().path("/hooks/rotated").bad_signature > 0);

    // The file gets the new secret (readable by others: a warning), and a
    // reload takes it.
    std::fs::write(&secret_path, format!("{new_secret}\n")).unwrap();
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let answer = server.reload().await.unwrap();
    assert_eq!(answer.changed, vec!["rotated".to_owned()]);
    let before = mock.stats().path("/hooks/rotated").bad_signature;
    assert_eq!(send("after the reload").await.status, "converged");
    assert_eq!(mock.stats().path("/hooks/rotated").bad_signature, before);

    // What the reload read is what check-config reports.
    let reloaded = Config::load(&config_path, no_env).unwrap();
    assert_eq!(reloaded.warnings.len(), 1, "{:?}", reloaded.warnings);
    assert!(
        reloaded.warnings[0].starts_with(&format!(
            "destinations.rotated.secret_file: {} is readable by others than its owner (mode 0644)",
            secret_path.display()
        )),
        "{:?}",
        reloaded.warnings
    );
    assert!(!reloaded.warnings[0].contains(&new_secret));

    // An emptied file fails the reload, naming the key and the path; the
    // running secret stays.
    std::fs::write(&secret_path, "\n").unwrap();
    let error = server.reload().await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "destinations.rotated.secret_file: {} is empty",
            secret_path.display()
        )),
        "{error}"
    );
    assert_eq!(send("after a failed reload").await.status, "converged");
    server.stop().await;
}

#[test]
fn a_missing_or_empty_credential_file_is_a_problem_naming_the_key_and_the_path() {
    let dir = temp_dir();
    let missing = dir.path().join("missing");
    let empty = secret_file(dir.path(), "empty", " \n", 0o600);
    let not_a_url = secret_file(dir.path(), "not-a-url", "hunter2\n", 0o600);
    let source = format!(
        "[server]\ndatabase_url_file = \"{}\"\n\n[destinations.slack]\nkind = \"slack\"\nchannel = \"c\"\nsecret_file = \"{}\"\n\n[destinations.teams]\nkind = \"teams\"\nurl_file = \"{}\"\n",
        not_a_url.display(),
        missing.display(),
        empty.display()
    );
    let error = Config::parse("herald.toml", &source, no_env)
        .unwrap_err()
        .to_string();
    for expected in [
        format!(
            "herald.toml:2: server.database_url_file: {} does not hold a postgres:// URL",
            not_a_url.display()
        ),
        format!(
            "herald.toml:7: destinations.slack.secret_file: cannot read {}",
            missing.display()
        ),
        format!(
            "herald.toml:11: destinations.teams.url_file: {} is empty",
            empty.display()
        ),
    ] {
        assert!(error.contains(&expected), "{expected}\nin: {error}");
    }
    assert!(!error.contains("hunter2"), "{error}");

    // Two sources of one credential are refused.
    let both = format!(
        "[destinations.slack]\nkind = \"slack\"\nchannel = \"c\"\nsecret = \"xoxb-1\"\nsecret_file = \"{}\"\n",
        empty.display()
    );
    let error = Config::parse("herald.toml", &both, no_env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "destinations.slack.secret_file: set one of secret_env, secret_file or secret"
        ),
        "{error}"
    );
}

#[test]
fn check_config_warns_of_a_credential_file_others_can_read() {
    let dir = temp_dir();
    let token = secret_file(dir.path(), "slack-token", "xoxb-1\n", 0o640);
    // The API's TLS key too.
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .expect("the openssl command line is needed (apt-get install openssl)");
    assert!(made.status.success(), "{made:?}");
    let key = dir.path().join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n[destinations.slack]\nkind = \"slack\"\nchannel = \"c\"\nsecret_file = \"{}\"\n",
            dir.path().join("cert.pem").display(),
            key.display(),
            token.display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(HERALD)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: destinations.slack.secret_file: {} is readable by others than its owner (mode 0640)",
            token.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "warning: server.tls_key_file: {} is readable by others than its owner (mode 0644)",
            key.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("xoxb-1"), "{stderr}");
}
