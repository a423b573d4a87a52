//! The console served by herald at `/`: the page and its assets over plain
//! HTTP with their security headers, `GET /v1/whoami` for each kind of
//! token, and (below) the page driven in a real Chromium by Playwright
//! against `herald serve` and `herald mock` processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::config::{ApiToken, Config, Scope, Secret, Target};
use herald::server::RunningServer;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{
    client, free_addr, spawn_server, start_mock, start_server, temp_dir, wait_final, wait_healthy,
    webhook, HERALD,
};

fn http() -> reqwest::Client {
    herald::connector::http_client_builder().build().unwrap()
}

fn token(name: &str, scopes: &[Scope]) -> ApiToken {
    ApiToken {
        name: name.to_owned(),
        sha256: Sha256::digest(name.as_bytes()).into(),
        scopes: scopes.to_vec(),
    }
}

async fn server_with_tokens(
    database: &std::path::Path,
    tokens: Vec<ApiToken>,
) -> (RunningServer, herald::mock::RunningMock) {
    let mock = start_mock(&[]).await;
    let config = Config {
        database: database.to_path_buf(),
        destinations: vec![webhook(&mock, "a")],
        tokens,
        ..Config::default()
    };
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    (server, mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_a_strict_content_security_policy() {
    let dir = temp_dir();
    let (server, _mock) = server_with_tokens(
        &dir.path().join("herald.db"),
        vec![token("ops", &[Scope::Read])],
    )
    .await;
    // The page needs no token: it asks for one, then sends it to the API.
    let page = http()
        .get(format!("http://{}/", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(page.headers().get("set-cookie").is_none());
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="console/app.js" defer></script>"#));
    for (path, content_type, needle) in [
        ("/console/app.js", "text/javascript", "v1/events"),
        ("/console/app.css", "text/css", ".chip"),
        ("/console/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let response = http()
            .get(format!("http://{}{path}", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        assert!(response.headers().contains_key("content-security-policy"));
        assert!(response.text().await.unwrap().contains(needle), "{path}");
    }
    let missing = http()
        .get(format!("http://{}/console/../Cargo.toml", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing = http()
        .get(format!("http://{}/console/nope.js", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found");
    server.stop().await;
}

async fn whoami(server: &RunningServer, bearer: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("http://{}/v1/whoami", server.addr));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_token_and_its_scopes() {
    let dir = temp_dir();
    let (server, _mock) = server_with_tokens(
        &dir.path().join("herald.db"),
        vec![
            token("oncall", &[Scope::Send, Scope::Read, Scope::Operate]),
            token("viewer", &[Scope::Read]),
            token("nothing", &[]),
        ],
    )
    .await;
    let (status, me) = whoami(&server, Some("oncall")).await;
    assert_eq!(status, 200);
    assert_eq!(me["name"], "oncall");
    assert_eq!(me["scopes"], serde_json::json!(["send", "read", "operate"]));
    assert_eq!(me["tokens_required"], true);
    let (_, me) = whoami(&server, Some("viewer")).await;
    assert_eq!(me["scopes"], serde_json::json!(["read"]));
    let (_, me) = whoami(&server, Some("nothing")).await;
    assert_eq!(
        (me["name"].as_str(), me["scopes"].as_array().unwrap().len()),
        (Some("nothing"), 0)
    );
    let (status, me) = whoami(&server, None).await;
    assert_eq!(status, 200);
    assert_eq!(me["scopes"], serde_json::json!([]));
    let (status, me) = whoami(&server, Some("forged")).await;
    assert_eq!(status, 401);
    assert_eq!(me["error"]["code"], "unauthorized");
    server.stop().await;

    // Without tokens configured, anyone may do anything, and is told so.
    let dir = temp_dir();
    let (server, _mock) = server_with_tokens(&dir.path().join("herald.db"), Vec::new()).await;
    let (status, me) = whoami(&server, None).await;
    assert_eq!(status, 200);
    assert_eq!(me["scopes"], serde_json::json!(["send", "read", "operate"]));
    assert_eq!(me["tokens_required"], false);
    server.stop().await;
}

async fn get_json(url: String) -> (u16, Value) {
    let response = http().get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The names of a JSON object's keys, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

/// What the board reads: `view=summary` gives the same page as the full
/// list (same broadcasts, same cursor) with each delivery's state and no
/// body, details or attempts; a bad `view` is a 400 naming it. A Jira
/// delivery's issue key comes with the link to the issue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_list_gives_each_deliverys_state_and_jira_refs_come_with_their_link() {
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let mut jira = webhook(&mock, "jira");
    jira.target = Target::Jira {
        site_url: mock.url("/jira/").parse().unwrap(),
        project: "OPS".into(),
        issue_type: "Task".into(),
        email: "herald@example.com".into(),
        token: Secret::new("jira-mock-token"),
        resolve_transition: "Done".into(),
        search_recheck_ms: 0,
        rendering: Default::default(),
    };
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![webhook(&mock, "a"), jira],
    )
    .await;
    let base = format!("http://{}", server.addr);
    let mut ids = Vec::new();
    for n in 0..3 {
        let accepted: Value = http()
            .post(format!("{base}/v1/broadcasts"))
            .json(&serde_json::json!({
                "title": format!("INC-{n}: checkout slow"),
                "body": "p99 above 2 s",
                "severity": "P2",
                "thread": format!("INC-{n}"),
                "labels": {"service": "checkout"},
                "destinations": ["a", "jira"],
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = accepted["id"].as_str().unwrap().to_owned();
        wait_final(&client(&server), &id, Duration::from_secs(20)).await;
        ids.push(id);
    }
    let (status, full) = get_json(format!("{base}/v1/broadcasts?limit=2")).await;
    assert_eq!(status, 200, "{full}");
    let (status, summary) = get_json(format!("{base}/v1/broadcasts?limit=2&view=summary")).await;
    assert_eq!(status, 200, "{summary}");
    let ids_of = |page: &Value| -> Vec<String> {
        page["broadcasts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_of(&summary), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(ids_of(&summary), ids_of(&full));
    assert_eq!(summary["next_cursor"], full["next_cursor"]);
    let first = &summary["broadcasts"][0];
    assert_eq!(
        keys(first),
        [
            "created_at",
            "deliveries",
            "id",
            "resolved",
            "severity",
            "status",
            "thread",
            "title"
        ]
    );
    assert_eq!(
        (
            first["title"].as_str(),
            first["thread"].as_str(),
            first["status"].as_str()
        ),
        (
            Some("INC-2: checkout slow"),
            Some("INC-2"),
            Some("converged")
        )
    );
    let delivery = &first["deliveries"][1];
    assert_eq!(
        keys(delivery),
        [
            "attempts_made",
            "attempts_max",
            "destination",
            "last_error",
            "last_http_status",
            "next_attempt_at",
            "next_attempt_in_ms",
            "possible_duplicate",
            "state",
            "summary",
            "updated_at"
        ]
    );
    assert_eq!(
        (delivery["destination"].as_str(), delivery["state"].as_str()),
        (Some("jira"), Some("confirmed"))
    );
    assert_eq!(delivery["attempts_made"], 1);
    assert!(delivery["updated_at"].as_str().unwrap().ends_with('Z'));
    // The next page follows the cursor in the summary view too.
    let cursor = summary["next_cursor"].as_str().unwrap();
    let (_, rest) = get_json(format!("{base}/v1/broadcasts?view=summary&cursor={cursor}")).await;
    assert_eq!(ids_of(&rest), [ids[0].clone()]);

    let (status, error) = get_json(format!("{base}/v1/broadcasts?view=compact")).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["field"], "view");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("summary"),
        "{error}"
    );

    // The Jira delivery's issue, as a link under the site's URL; the
    // webhook's has none.
    let (_, one) = get_json(format!("{base}/v1/broadcasts/{}", ids[0])).await;
    let jira = &one["deliveries"][1];
    let key = jira["remote_ref"].as_str().unwrap();
    assert!(key.starts_with("OPS-"), "{jira}");
    assert_eq!(jira["remote_url"], mock.url(&format!("/jira/browse/{key}")));
    assert_eq!(one["deliveries"][0]["remote_url"], Value::Null);
    let full_jira = &full["broadcasts"][0]["deliveries"][1];
    assert!(full_jira["remote_url"]
        .as_str()
        .unwrap()
        .ends_with("/jira/browse/OPS-3"));
    server.stop().await;
}

/// A child process killed when dropped, so a failing test leaves none.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The browser-driving tools: node, Debian's Chromium and the driver's
/// packages (`npm ci` in tests/console). None, with the reason printed,
/// when one is missing, except on CI (`CI=true`), where that fails the test.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let chromium = PathBuf::from(
        std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()),
    );
    let node = Command::new("node").arg("--version").output();
    let missing = if !matches!(&node, Ok(out) if out.status.success()) {
        Some("node is not installed (apt-get install -y nodejs npm)".to_owned())
    } else if !chromium.exists() {
        Some(format!(
            "{} does not exist (apt-get install -y chromium)",
            chromium.display()
        ))
    } else if !driver.join("node_modules/playwright-core").exists() {
        Some("the driver's packages are not installed (cd tests/console && npm ci)".to_owned())
    } else {
        None
    };
    match missing {
        None => Some((driver, chromium)),
        Some(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the console's browser test needs its tools on CI: {reason}")
        }
        Some(reason) => {
            eprintln!("skipped: {reason}; CI=true makes this a failure");
            None
        }
    }
}

/// Starts `herald mock --listen 127.0.0.1:0` and reads the address it
/// prints once it listens.
fn spawn_mock() -> (KillOnDrop, String) {
    let mut child = Command::new(HERALD)
        .args(["mock", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("herald mock listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from herald mock: {line:?}"))
        .to_owned();
    (KillOnDrop(child), url)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const TOKEN_OPERATOR: &str = "hrld_console-test-operator";
const TOKEN_VIEWER: &str = "hrld_console-test-viewer";
/// The whole browser run may take this long at most.
const BROWSER_RUN_SECS_MAX: u64 = 240;

/// Slack, Teams and Jira at the mock, a status-page webhook (which the run
/// makes fail until it clears the fault) and a pager bridge allowed three
/// attempts (which the run kills, then retries).
fn console_config(mock: &str) -> String {
    format!(
        r#"[destinations.slack]
kind = "slack"
url = "{mock}/slack/api/"
channel = "incidents"
secret = "xoxb-herald-mock"
retry = {{ base_ms = 200, cap_ms = 1000 }}

[destinations.teams]
kind = "teams"
url = "{mock}/teams/ops"
retry = {{ base_ms = 200, cap_ms = 1000 }}

[destinations.jira]
kind = "jira"
url = "{mock}/jira/"
project = "OPS"
email = "herald@example.com"
secret = "jira-mock-token"
retry = {{ base_ms = 200, cap_ms = 1000 }}

[destinations.status-page]
kind = "webhook"
url = "{mock}/hooks/status-page"
retry = {{ attempts_max = 100, base_ms = 300, cap_ms = 1000 }}
breaker = {{ failures = 1000 }}

[destinations.pager-bridge]
kind = "webhook"
url = "{mock}/hooks/pager-bridge"
retry = {{ attempts_max = 3, base_ms = 100, cap_ms = 200 }}

[[tokens]]
name = "operator"
sha256 = "{operator}"
scopes = ["send", "read", "operate"]

[[tokens]]
name = "viewer"
sha256 = "{viewer}"
scopes = ["read"]
"#,
        operator = sha256_hex(TOKEN_OPERATOR),
        viewer = sha256_hex(TOKEN_VIEWER),
    )
}

/// Runs a driver script of tests/console with node until it exits, for at
/// most `BROWSER_RUN_SECS_MAX`; its output is printed, and returned with
/// whether it passed.
fn run_driver(driver: &Path, script: &str, env: &[(&str, String)]) -> (bool, String) {
    let dir = temp_dir();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = KillOnDrop(
        Command::new("node")
            .arg(script)
            .current_dir(driver)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(BROWSER_RUN_SECS_MAX);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    println!("{output}");
    match status {
        Some(status) => (status.success(), output),
        None => (
            false,
            format!("{output}\nstill running after {BROWSER_RUN_SECS_MAX} s"),
        ),
    }
}

#[test]
fn in_chromium_the_board_converges_live_and_actions_follow_the_token_scopes() {
    let Some((driver, chromium)) = browser_tools() else {
        return;
    };
    let dir = temp_dir();
    let (_mock, mock_url) = spawn_mock();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, console_config(&mock_url)).unwrap();
    let addr = free_addr();
    let log = dir.path().join("serve.log");
    let _server = spawn_server(&config, &dir.path().join("herald.db"), addr, &log);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(wait_healthy(addr));
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    let (passed, output) = run_driver(
        &driver,
        "board.js",
        &[
            ("HERALD_URL", format!("http://{addr}")),
            ("MOCK_URL", mock_url.clone()),
            ("TOKEN_OPERATOR", TOKEN_OPERATOR.to_owned()),
            ("TOKEN_VIEWER", TOKEN_VIEWER.to_owned()),
            ("SCREENSHOT_DIR", screenshots.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
        ],
    );
    assert!(
        passed,
        "the browser run failed:\n{output}\nserver log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for step in [
        "status-page went from retrying to confirmed live",
        "took pager-bridge from dead to confirmed",
        "the detail links the Jira issue and shows each destination's request",
        "shows no retry button and the API answers 403",
        "the send form sent INC-43",
        "1,000 broadcasts: board built in",
        "delivery events in",
        "no errors or warnings in the browser console",
    ] {
        assert!(output.contains(step), "no step {step:?} in:\n{output}");
    }
    for shot in [
        "board-incident.png",
        "broadcast-timeline.png",
        "board-390px.png",
    ] {
        let bytes = std::fs::read(screenshots.join(shot)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
}

#[test]
fn demo_with_console_says_where_the_board_is_and_keeps_serving_until_interrupted() {
    let mut demo = KillOnDrop(
        Command::new(HERALD)
            .args(["demo", "--console"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let board = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the demo ended without serving on:\n{}", printed.join("\n")))
            .unwrap();
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("herald keeps serving: the console is at ") {
            break rest.split(';').next().unwrap().to_owned();
        }
    };
    let printed = printed.join("\n");
    assert!(
        printed.contains(&format!("console: {board} ")),
        "the demo names the board before the incident:\n{printed}"
    );
    assert!(
        printed.contains("nothing lost, nothing duplicated"),
        "{printed}"
    );
    let base = board.split("/#").next().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (page, list) = runtime.block_on(async {
        let page = http().get(format!("{base}/")).send().await.unwrap();
        let list: Value = http()
            .get(format!("{base}/v1/broadcasts?thread=INC-42"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (page, list)
    });
    assert_eq!(page.status(), 200);
    assert!(page.headers().contains_key("content-security-policy"));
    let statuses: Vec<&str> = list["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["converged", "converged", "converged"]);
    // Ctrl-C ends it, cleanly.
    let interrupted = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop at Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
