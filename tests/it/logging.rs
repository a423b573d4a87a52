//! What herald prints, and what happens when it cannot print: real
//! `herald serve` processes with stderr closed, stalled, in a file; JSON
//! lines; repeated warnings; credentials in URLs; bad input refused alike
//! on SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::config::{AlertmanagerRoutes, Config};
use herald::mock::{Faults, RunningMock};

use crate::support::*;

/// A child process killed when dropped, so a failing test leaves none.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config with one webhook destination `hook` at the mock.
fn write_config(dir: &Path, mock: &RunningMock, extra: &str) -> std::path::PathBuf {
    let config = format!(
        "{extra}\n[destinations.hook]\nkind = \"webhook\"\nurl = \"{}\"\nconcurrency = 8\nretry = {{ attempts_max = 3, base_ms = 10, cap_ms = 50 }}\n",
        mock.url("/hooks/hook")
    );
    let path = dir.join("herald.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn serve(
    config: &Path,
    database: &str,
    addr: SocketAddr,
    stderr: Stdio,
    args: &[&str],
    env: &[(&str, &str)],
) -> Running {
    Running(
        Command::new(HERALD)
            .args(["serve", "--listen", &addr.to_string(), "--config"])
            .arg(config)
            .args(["--database", database])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("HERALD_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// SIGTERM, then the exit status (within a generous bound).
async fn terminate(child: &mut Running) -> std::process::ExitStatus {
    assert!(Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "herald did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client whose requests give up, so a server that hangs fails the test
/// instead of hanging it.
fn http() -> reqwest::Client {
    herald::connector::http_client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post_broadcast(addr: SocketAddr, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = http()
        .post(format!("http://{addr}/v1/broadcasts"))
        .json(&body)
        .send()
        .await
        .expect("herald answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn broadcast_to_hook(title: &str) -> serde_json::Value {
    serde_json::json!({"title": title, "severity": "P2", "destinations": ["hook"]})
}

/// How stderr fails under a test.
enum BrokenStderr {
    /// A pipe whose only read end is closed: every write fails (EPIPE).
    ClosedPipe,
    /// `/dev/full`: every write fails (ENOSPC), as on a full disk.
    FullDisk,
}

async fn a_broken_stderr_fails_no_request_and_sigterm_still_exits_0(broken: BrokenStderr) {
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let config = write_config(dir.path(), &mock, "");
    let addr = free_addr();
    let database = dir.path().join("herald.db");
    let stderr = match broken {
        BrokenStderr::ClosedPipe => Stdio::piped(),
        BrokenStderr::FullDisk => Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        ),
    };
    let mut child = serve(
        &config,
        database.to_str().unwrap(),
        addr,
        stderr,
        &[],
        &[("RUST_LOG", "debug")],
    );
    drop(child.0.stderr.take());
    wait_healthy(addr).await;

    let (status, answer) = post_broadcast(addr, broadcast_to_hook("INC-1 disk full")).await;
    assert_eq!(
        status, 202,
        "accepted although the log cannot be written: {answer}"
    );
    let id = answer["id"].as_str().unwrap().to_owned();
    let client = herald::client::Client::new(&format!("http://{addr}")).unwrap();
    let done = wait_final(&client, &id, Duration::from_secs(60)).await;
    assert_eq!(done.deliveries[0].state, "confirmed");
    assert_eq!(mock.stats().path("/hooks/hook").distinct, 1);
    let dropped = metric(addr, "herald_log_lines_dropped_total").await;
    assert!(
        dropped.is_some_and(|d| d > 0.0),
        "the lines that could not be written are counted: {dropped:?}"
    );
    let exit = terminate(&mut child).await;
    assert_eq!(
        exit.code(),
        Some(0),
        "SIGTERM with a broken stderr: {exit:?}"
    );
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stderr_fails_no_request_and_sigterm_still_exits_0() {
    a_broken_stderr_fails_no_request_and_sigterm_still_exits_0(BrokenStderr::ClosedPipe).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_under_stderr_fails_no_request_and_sigterm_still_exits_0() {
    a_broken_stderr_fails_no_request_and_sigterm_still_exits_0(BrokenStderr::FullDisk).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_nobody_reads_blocks_no_request() {
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let config = write_config(dir.path(), &mock, "");
    let addr = free_addr();
    let database = dir.path().join("herald.db");
    let mut child = serve(
        &config,
        database.to_str().unwrap(),
        addr,
        Stdio::piped(),
        &[],
        &[("RUST_LOG", "debug")],
    );
    // Held open and never read: the pipe fills (64 KiB) and stays full.
    let _stalled = child.0.stderr.take();
    wait_healthy(addr).await;

    // Far more than a pipe holds: a few hundred bytes of log each.
    let mut sends = tokio::task::JoinSet::new();
    for batch in 0..8 {
        sends.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let title = format!("INC-{batch}-{i} {}", "x".repeat(200));
                let (status, answer) = post_broadcast(addr, broadcast_to_hook(&title)).await;
                assert_eq!(status, 202, "{answer}");
                ids.push(answer["id"].as_str().unwrap().to_owned());
            }
            ids
        });
    }
    let mut accepted = 0;
    while let Some(ids) = sends.join_next().await {
        accepted += ids.unwrap().len();
    }
    assert_eq!(accepted, 400);
    let dropped = metric(addr, "herald_log_lines_dropped_total").await;
    assert!(
        dropped.is_some(),
        "/metrics answers and counts dropped lines"
    );
    let exit = terminate(&mut child).await;
    assert_eq!(
        exit.code(),
        Some(0),
        "SIGTERM with a stalled stderr: {exit:?}"
    );
    mock.stop().await;
}

/// Runs one broadcast to `hook` through a server whose stderr is a file,
/// stops it, and returns the broadcast's id and the log.
async fn one_broadcast_logged(
    extra_config: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (String, String) {
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let config = write_config(dir.path(), &mock, extra_config);
    let addr = free_addr();
    let database = dir.path().join("herald.db");
    let log = dir.path().join("herald.log");
    let mut child = serve(
        &config,
        database.to_str().unwrap(),
        addr,
        Stdio::from(std::fs::File::create(&log).unwrap()),
        args,
        env,
    );
    wait_healthy(addr).await;
    let (status, answer) = post_broadcast(addr, broadcast_to_hook("INC-7 checkout down")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let client = herald::client::Client::new(&format!("http://{addr}")).unwrap();
    wait_final(&client, &id, Duration::from_secs(60)).await;
    assert!(terminate(&mut child).await.success());
    mock.stop().await;
    (id, std::fs::read_to_string(&log).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_parse_and_carry_the_broadcast_and_destination() {
    let (id, log) = one_broadcast_logged("[server]\nlog_format = \"json\"\n", &[], &[]).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "{key} in {line}");
        }
    }
    let about = |message: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == message && l["broadcast"] == id.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(about("broadcast accepted").len(), 1, "{log}");
    let changes = about("delivery state changed");
    assert_eq!(changes.len(), 1, "one state change, one line: {log}");
    assert_eq!(changes[0]["destination"], "hook");
    assert_eq!(changes[0]["state"], "confirmed");
    assert_eq!(changes[0]["level"], "INFO");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_file_have_no_colour_and_attempts_stay_at_debug() {
    let (id, log) = one_broadcast_logged("", &[], &[("HERALD_LOG_FORMAT", "text")]).await;
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a file: {log}");
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("delivery state changed") && l.contains(&id))
        .collect();
    assert_eq!(changes.len(), 1, "{log}");
    assert!(changes[0].contains(" INFO ") && changes[0].contains("destination=hook"));
    assert!(
        !log.contains("attempt finished"),
        "attempts log at debug: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_identical_warnings_is_logged_a_few_times_with_its_count() {
    let dir = temp_dir();
    // Every request answers 429 with Retry-After: 0, so every attempt
    // logs "destination rate limited" and is retried at once.
    let refuse = Faults {
        rate_limit_first: 1_000_000,
        retry_after_secs: 0,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/hook", refuse)]).await;
    let config = write_config(dir.path(), &mock, "");
    let addr = free_addr();
    let database = dir.path().join("herald.db");
    let log = dir.path().join("herald.log");
    let started = Instant::now();
    let mut child = serve(
        &config,
        database.to_str().unwrap(),
        addr,
        Stdio::from(std::fs::File::create(&log).unwrap()),
        &["--log-format", "json"],
        &[],
    );
    wait_healthy(addr).await;
    let client = herald::client::Client::new(&format!("http://{addr}")).unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        let (status, answer) = post_broadcast(addr, broadcast_to_hook(&format!("INC-{i}"))).await;
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let done = wait_final(&client, id, Duration::from_secs(120)).await;
        assert_eq!(done.deliveries[0].state, "dead");
    }
    assert!(terminate(&mut child).await.success());
    let elapsed_secs = started.elapsed().as_secs();
    let refused = mock.stats().path("/hooks/hook").requests;
    assert_eq!(refused, 300, "three attempts each");

    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("destination rate limited"))
        })
        .collect();
    // Every refusal is accounted for: logged, or counted in a summary.
    let summed: u64 = warnings
        .iter()
        .map(|w| w["repeated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(summed, refused, "{warnings:#?}");
    // At most 5 lines and a summary per 10 s window.
    let windows = elapsed_secs / 10 + 2;
    assert!(
        (warnings.len() as u64) <= 6 * windows,
        "{} lines for {refused} identical warnings in {elapsed_secs} s",
        warnings.len()
    );
    assert!(
        warnings.iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .contains(" times in the last ")),
        "a summary says how many: {warnings:#?}"
    );
    mock.stop().await;
}

/// Everything a command printed, stdout and stderr.
fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_is_printed_when_the_database_cannot_be_reached() {
    let dir = temp_dir();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        "[destinations.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
    )
    .unwrap();
    // Nothing listens on port 1: the connection is refused.
    for database in [
        "postgres://herald@127.0.0.1:1/herald?password=SECRETquery",
        "postgres://herald:SECRETuser@127.0.0.1:1/herald",
        "postgresql://herald@127.0.0.1:1/herald?sslmode=disable&sslpassword=SECRETssl",
    ] {
        let serve = Command::new(HERALD)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .args(["--database", database])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let migrate = Command::new(HERALD)
            .args(["migrate", "--database", database])
            .output()
            .unwrap();
        for (what, output) in [("serve", serve), ("migrate", migrate)] {
            let text = printed(&output);
            assert!(!output.status.success(), "{what} {database}: {text}");
            assert!(
                text.contains("127.0.0.1:1") || text.contains("connect"),
                "{text}"
            );
            assert!(
                !text.contains("SECRET"),
                "{what} printed a credential: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_is_printed_by_a_client_that_cannot_reach_its_server() {
    for server in [
        "http://ops:SECRETuser@127.0.0.1:1",
        "http://127.0.0.1:1/?token=SECRETquery",
    ] {
        let output = Command::new(HERALD)
            .args(["status", "01JAAAAAAAAAAAAAAAAAAAAAAA", "--server", server])
            .output()
            .unwrap();
        let text = printed(&output);
        assert!(!output.status.success(), "{text}");
        assert!(text.contains("cannot reach herald"), "{text}");
        assert!(
            !text.contains("SECRET"),
            "a credential in the error: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_is_printed_by_a_server_on_postgresql() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let config = write_config(dir.path(), &mock, "");
    // The test server trusts every connection: the passwords are ignored,
    // and the server starts, logging where its database is.
    let with_user_password =
        pg.url
            .replacen("postgres://postgres@", "postgres://postgres:SECRETuser@", 1);
    for database in [
        format!("{}&password=SECRETquery", pg.url),
        with_user_password,
    ] {
        assert!(database.contains("SECRET"));
        let addr = free_addr();
        let log = dir.path().join("herald.log");
        let mut child = serve(
            &config,
            &database,
            addr,
            Stdio::from(std::fs::File::create(&log).unwrap()),
            &[],
            &[("RUST_LOG", "debug")],
        );
        wait_healthy(addr).await;
        let (status, answer) = post_broadcast(addr, broadcast_to_hook("INC-9")).await;
        assert_eq!(status, 202, "{answer}");
        assert!(terminate(&mut child).await.success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("herald serving"), "{text}");
        assert!(!text.contains("SECRET"), "a credential in the log: {text}");
    }
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_is_printed_from_a_bad_destination_url() {
    let dir = temp_dir();
    let database = dir.path().join("herald.db");
    for url in [
        "https://ops:SECRETuser@hooks.example.com/herald",
        "ftp://hooks.example.com/herald/SECRETpath",
        "https://hooks.example.com:99999/SECRETpath?token=SECRETquery",
    ] {
        let config = dir.path().join("herald.toml");
        std::fs::write(
            &config,
            format!("[destinations.hook]\nkind = \"webhook\"\nurl = \"{url}\"\n"),
        )
        .unwrap();
        let output = Command::new(HERALD)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--database")
            .arg(&database)
            .output()
            .unwrap();
        let text = printed(&output);
        assert!(!output.status.success(), "{url}: {text}");
        assert!(text.contains("destinations.hook.url"), "{text}");
        assert!(
            !text.contains("SECRET"),
            "a credential in the error: {text}"
        );
    }
}

/// The same refusals, on SQLite and on PostgreSQL.
async fn nul_is_refused_naming_the_field(database: std::path::PathBuf) {
    let mock = start_mock(&[]).await;
    let config = Config {
        database,
        destinations: vec![webhook(&mock, "hook")],
        alertmanager: Some(AlertmanagerRoutes {
            destinations: vec!["hook".into()],
            ..Default::default()
        }),
        ..Config::default()
    };
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let addr = server.addr;
    for (body, field) in [
        (
            serde_json::json!({"title": "INC-1", "body": "a\u{0}b", "destinations": ["hook"]}),
            "body",
        ),
        (
            serde_json::json!({"title": "INC\u{0}1", "destinations": ["hook"]}),
            "title",
        ),
        (
            serde_json::json!({"title": "INC-1", "thread": "INC\u{0}1", "destinations": ["hook"]}),
            "thread",
        ),
    ] {
        let (status, answer) = post_broadcast(addr, body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("U+0000"),
            "{answer}"
        );
    }
    let alert = serde_json::json!({
        "version": "4", "groupKey": "{}:{alertname=\"Disk\"}", "status": "firing",
        "receiver": "ops", "groupLabels": {}, "commonLabels": {"alertname": "Disk"},
        "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{"status": "firing", "labels": {"alertname": "Disk", "instance": "db\u{0}1"},
                    "annotations": {}, "startsAt": "2026-12-01T00:00:00Z", "endsAt": "",
                    "generatorURL": "", "fingerprint": "f1"}]
    });
    let response = http()
        .post(format!("http://{addr}/v1/ingest/alertmanager"))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["error"]["field"], "alerts[0].labels.instance",
        "{answer}"
    );
    let response = http()
        .get(format!("http://{addr}/v1/broadcasts?thread=INC%001"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "thread", "{answer}");
    // Nothing was accepted.
    let list = herald::client::Client::new(&format!("http://{addr}"))
        .unwrap()
        .list(&Default::default())
        .await
        .unwrap();
    assert!(list.broadcasts.is_empty(), "{list:?}");
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_is_refused_naming_the_field_on_sqlite() {
    let dir = temp_dir();
    nul_is_refused_naming_the_field(dir.path().join("herald.db")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_is_refused_naming_the_field_on_postgresql() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    nul_is_refused_naming_the_field(pg.url.clone().into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_error_reaches_the_log_with_its_code_and_message() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = temp_dir();
    let mock = start_mock(&[]).await;
    let config = write_config(dir.path(), &mock, "");
    let addr = free_addr();
    let log = dir.path().join("herald.log");
    let mut child = serve(
        &config,
        &pg.url,
        addr,
        Stdio::from(std::fs::File::create(&log).unwrap()),
        &[],
        &[],
    );
    wait_healthy(addr).await;
    // A constraint no row meets, added under the running server: every
    // insert of a broadcast fails.
    pg.client()
        .await
        .batch_execute(
            "ALTER TABLE broadcasts ADD CONSTRAINT no_more_broadcasts CHECK (false) NOT VALID",
        )
        .await
        .unwrap();
    let (status, answer) = post_broadcast(addr, broadcast_to_hook("INC-3")).await;
    assert_eq!(status, 503, "{answer}");
    assert!(terminate(&mut child).await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("store error while answering a request"))
        .unwrap_or_else(|| panic!("the failure is logged: {text}"));
    // SQLSTATE 23514 (check_violation), with PostgreSQL's own words.
    assert!(
        line.contains("23514") && line.contains("no_more_broadcasts"),
        "{line}"
    );
    mock.stop().await;
}
