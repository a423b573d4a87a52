//! The first hour with herald, as a new user types it: `init`, `mock`,
//! `serve`, `send --wait`, `check-config`, `secret`, help, completions and
//! the man page; config errors all at once, each with a fix.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::support::*;

fn herald(dir: &Path, args: &[&str]) -> Output {
    Command::new(HERALD)
        .args(args)
        .current_dir(dir)
        .env_remove("HERALD_SERVER")
        .env_remove("HERALD_TOKEN")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A child process, killed when dropped, so a failing test leaves none.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `herald mock` process and its base URL.
struct MockProcess {
    _child: KillOnDrop,
    url: String,
    /// The port of the mock's SMTP server.
    smtp_port: u16,
}

/// `herald mock` on a free port; its first line names the HTTP address, the
/// second the SMTP server's.
fn spawn_mock() -> MockProcess {
    let mut child = Command::new(HERALD)
        .args(["mock", "--listen", "localhost:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = || lines.next().expect("herald mock's banner").unwrap();
    let first = line();
    let url = first
        .trim()
        .strip_prefix("herald mock listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from herald mock: {first:?}"))
        .to_owned();
    let second = line();
    let smtp_port = second
        .strip_prefix("herald mock listening for SMTP on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("unexpected second line from herald mock: {second:?}"))
        .port();
    MockProcess {
        _child: KillOnDrop(child),
        url,
        smtp_port,
    }
}

#[test]
fn check_config_reports_every_problem_at_once_and_exits_non_zero() {
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("herald.toml"),
        r#"[destinations.ops]
kind = "webhook"
url = "127.0.0.1:9090"
timout_ms = 3000

[destinations.chat]
kind = "slak"

[destinations.pd]
kind = "pagerduty"
secret_env = "HERALD_TEST_UNSET_PD_KEY"

[destinations.teams]
kind = "teams"
url_env = "HERALD_TEST_UNSET_TEAMS_URL"
"#,
    )
    .unwrap();
    let output = herald(dir.path(), &["check-config", "herald.toml"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    for expected in [
        "herald.toml has 6 problems:",
        "herald.toml:3: destinations.ops.url: \"127.0.0.1:9090\" has no scheme; write http://127.0.0.1:9090",
        "herald.toml:4: destinations.ops.timout_ms: unknown key; did you mean timeout_ms?",
        "herald.toml:7: destinations.chat.kind: unknown kind \"slak\"; did you mean slack? the kinds are webhook, slack, teams, jira, pagerduty, discord, matrix, email, sms, google-chat, telegram, zulip",
        "herald.toml:11: destinations.pd.secret_env: environment variable HERALD_TEST_UNSET_PD_KEY is not set",
        "herald.toml:15: destinations.teams.url_env: environment variable HERALD_TEST_UNSET_TEAMS_URL is not set",
        "2 environment variables are not set",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }

    // serve says the same, all at once, and writes nothing.
    let output = herald(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("HERALD_TEST_UNSET_PD_KEY")
            && stderr.contains("HERALD_TEST_UNSET_TEAMS_URL"),
        "{stderr}"
    );
    assert!(!dir.path().join("herald.db").exists());

    // A webhook signed with what `herald secret` printed is valid.
    let secret = text(&herald(dir.path(), &["secret"]).stdout)
        .trim()
        .to_owned();
    std::fs::write(
        dir.path().join("signed.toml"),
        "[destinations.status]\nkind = \"webhook\"\nurl = \"http://localhost:9/hook\"\nsecret_env = \"HERALD_TEST_HOOK_SECRET\"\n",
    )
    .unwrap();
    let output = Command::new(HERALD)
        .args(["check-config", "signed.toml"])
        .current_dir(dir.path())
        .env("HERALD_TEST_HOOK_SECRET", &secret)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{secret}: {output:?}");
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("signed.toml: valid: 1 destination(s): status (webhook)"),
        "{stdout}"
    );

    // The example secret of old READMEs says what a valid one is.
    let output = Command::new(HERALD)
        .args(["check-config", "signed.toml"])
        .current_dir(dir.path())
        .env("HERALD_TEST_HOOK_SECRET", "whsec_...")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("run `herald secret` to make one"),
        "{output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_mock_serve_send_converges_with_no_secret_to_set() {
    let dir = temp_dir();
    let output = herald(dir.path(), &["init"]);
    assert!(output.status.success(), "{output:?}");
    let written = std::fs::read_to_string(dir.path().join("herald.toml")).unwrap();
    assert!(written.contains("127.0.0.1:9090"), "{written}");

    // init never overwrites by accident.
    let output = herald(dir.path(), &["init"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("--force"), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("herald.toml")).unwrap(),
        written
    );

    // The mock's default address, and the API's, moved to free ports so
    // tests can run side by side; everything else is as init wrote it.
    let mock = spawn_mock();
    let api = free_addr();
    let config = written
        .replace("http://127.0.0.1:9090", &mock.url)
        .replace(
            "smtp_port = 9091",
            &format!("smtp_port = {}", mock.smtp_port),
        )
        .replace("127.0.0.1:8080", &format!("localhost:{}", api.port()));
    std::fs::write(dir.path().join("herald.toml"), &config).unwrap();

    // `herald serve` with no flag: herald.toml and herald.db in the
    // working directory.
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let _server = KillOnDrop(
        Command::new(HERALD)
            .arg("serve")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_healthy(api).await;

    // The client finds the server through herald.toml, with no --server.
    let output = herald(
        dir.path(),
        &[
            "send",
            "--to",
            "ops-webhook",
            "--to",
            "slack",
            "--to",
            "teams",
            "--to",
            "jira",
            "--to",
            "pagerduty",
            "--to",
            "discord",
            "--to",
            "matrix",
            "--to",
            "sms",
            "--to",
            "google-chat",
            "--to",
            "telegram",
            "--to",
            "zulip",
            "--to",
            "email",
            "--thread",
            "INC-1",
            "--title",
            "hello from herald",
            "--wait",
        ],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains(": converged"), "{stdout}");

    // From elsewhere, --config names the file.
    let elsewhere = temp_dir();
    let config_path = dir.path().join("herald.toml");
    let output = herald(
        elsewhere.path(),
        &[
            "destinations",
            "--config",
            config_path.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(text(&output.stdout).contains("ops-webhook"));

    // A second server on the same database is refused, and says so once.
    let output = herald(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches("another herald process").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_names_herald_token_and_the_flag() {
    let dir = temp_dir();
    let api = free_addr();
    std::fs::write(
        dir.path().join("herald.toml"),
        format!(
            "[server]\nlisten = \"{api}\"\n[destinations.ops]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n[[tokens]]\nname = \"oncall\"\nsha256 = \"{}\"\nscopes = [\"send\", \"read\"]\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let _server = spawn_server(
        &dir.path().join("herald.toml"),
        &dir.path().join("herald.db"),
        api,
        &dir.path().join("serve.log"),
    );
    wait_healthy(api).await;
    let output = herald(dir.path(), &["destinations"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("HERALD_TOKEN") && stderr.contains("--token"),
        "{stderr}"
    );
}

#[test]
fn help_completions_and_man_page() {
    let dir = temp_dir();
    for args in [
        &["help", "--help"][..],
        &["help", "send"],
        &["send", "--help"],
    ] {
        let output = herald(dir.path(), args);
        assert!(output.status.success(), "{args:?}: {output:?}");
    }
    let send_help = text(&herald(dir.path(), &["send", "--help"]).stdout);
    for expected in [
        "--title <TITLE>  ",
        "--body <BODY>  ",
        "Example:",
        "HERALD_SERVER",
    ] {
        assert!(
            send_help.contains(expected),
            "{expected:?} in:\n{send_help}"
        );
    }

    // Settings from the environment are not shown as typed flags.
    let output = Command::new(HERALD)
        .args(["send", "--to", "ops"])
        .env("HERALD_SERVER", "http://127.0.0.1:9")
        .env("HERALD_TOKEN", "hrld_secret")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    let usage = stderr
        .lines()
        .find(|line| line.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line in {stderr}"));
    assert!(
        !usage.contains("--server") && !usage.contains("--token"),
        "{usage}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let output = herald(dir.path(), &["completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = text(&output.stdout);
        assert!(
            script.contains("check-config") && script.contains("title"),
            "{shell}: {script}"
        );
    }
    let output = herald(dir.path(), &["man"]);
    assert!(output.status.success());
    let page = text(&output.stdout);
    assert!(
        page.contains(".TH herald 1") && page.contains("check\\-config"),
        "{page}"
    );
}
