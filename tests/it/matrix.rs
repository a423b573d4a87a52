//! The Matrix kind end to end: against `herald mock`'s emulation (a lost
//! answer, a thread, a 429 pausing Matrix alone), and against a real
//! Synapse homeserver from PyPI, started here on loopback with a throwaway
//! config (SQLite, no federation listener, open registration for the
//! tests' users, message rate limits raised): a thread lands as the
//! description says (`m.thread` relations to the first event, the
//! resolve's `m.replace` edit), a send whose answer a proxy loses ends as
//! exactly one event for its txnId, and Synapse's own `M_LIMIT_EXCEEDED`
//! (one user limited through its admin API) pauses that destination alone.
//! The Synapse tests share one homeserver while they run together.
//!
//! Synapse is the one `.ci/run` installs into a virtual environment
//! ([`SYNAPSE_PYTHON_DEFAULT`], or `HERALD_SYNAPSE_PYTHON`). Without it the
//! Synapse tests are skipped with the reason printed, except under
//! `CI=true`, where they fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use herald::api::wire::{Broadcast, Delivery, SendRequest};
use herald::config::{Destination, Secret, Target};
use herald::demo::{mock_destination, mock_send_path};
use herald::domain::RetryPolicy;
use herald::kinds::matrix::demo::mock_room_id;
use herald::mock::Faults;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::*;

/// The Synapse release `.ci/run` installs.
pub const SYNAPSE_VERSION: &str = "1.163.2";
/// Where `.ci/run` installs it, under `$HOME`.
const SYNAPSE_PYTHON_DEFAULT: &str = ".cache/herald/synapse-1.163.2/bin/python";
/// The throwaway homeserver's registration secret (for its admin).
const SHARED_SECRET: &str = "herald-test-shared-secret";
/// Synapse takes seconds to start (more on a busy machine).
const SYNAPSE_START_MS_MAX: u64 = 90_000;

fn outcomes(delivery: &Delivery) -> Vec<(&str, &str)> {
    delivery
        .attempts
        .iter()
        .map(|a| (a.kind.as_str(), a.outcome.as_str()))
        .collect()
}

fn delivery<'a>(broadcast: &'a Broadcast, destination: &str) -> &'a Delivery {
    broadcast
        .deliveries
        .iter()
        .find(|d| d.destination == destination)
        .unwrap_or_else(|| panic!("no delivery to {destination}"))
}

fn thread_request(title: &str, resolved: bool, destinations: &[&str]) -> SendRequest {
    SendRequest {
        title: title.to_owned(),
        body: Some(format!("{title}: details <b>not bold</b> & more")),
        severity: Some("P1".into()),
        thread: Some("INC-77".into()),
        resolved,
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
        ..SendRequest::default()
    }
}

/// Sends open, update and resolve of one thread; returns them once final.
async fn send_thread(
    server: &herald::server::RunningServer,
    destinations: &[&str],
) -> [Broadcast; 3] {
    let client = client(server);
    let mut ids = Vec::new();
    for (title, resolved) in [
        ("Checkout is down", false),
        ("Failing over to the replica", false),
        ("Checkout recovered", true),
    ] {
        let accepted = client
            .send(&thread_request(title, resolved, destinations))
            .await
            .unwrap();
        ids.push(accepted.id);
    }
    let mut done = Vec::new();
    for id in ids {
        done.push(wait_final(&client, &id, Duration::from_secs(60)).await);
    }
    done.try_into().unwrap()
}

// ---------------------------------------------------------------------------
// Against the mock.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_mock_a_lost_first_answer_still_makes_one_thread_in_order() {
    const NAME: &str = "matrix-ops";
    let mock = start_mock(&[(
        mock_send_path("matrix", NAME).as_str(),
        Faults {
            drop_first: 1,
            drop_hang_ms: 5_000,
            ..Faults::default()
        },
    )])
    .await;
    let base = format!("http://{}", mock.addr);
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![mock_destination(&base, "matrix", NAME)],
    )
    .await;
    let [open, update, resolve] = send_thread(&server, &[NAME]).await;
    for broadcast in [&open, &update, &resolve] {
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
    }
    let opener = delivery(&open, NAME);
    assert_eq!(
        outcomes(opener),
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ]
    );
    assert!(
        !opener.possible_duplicate,
        "the txnId makes the re-send safe"
    );
    let room = &mock.stats().matrix.rooms[&mock_room_id(NAME)];
    assert_eq!(
        (
            room.messages,
            room.thread_events,
            room.edits,
            room.ignored_edits
        ),
        (1, 2, 1, 0),
        "{room:#?}"
    );
    assert_eq!(room.duplicated_bodies, 0, "{room:#?}");
    assert!(room.duplicated_txn_ids.is_empty(), "{room:#?}");
    assert_eq!(room.txn_replays, 1, "the re-send was answered by its txnId");
    // Later messages attach to the event the opener made.
    assert_eq!(
        delivery(&update, NAME)
            .remote_ref
            .as_deref()
            .map(|r| r.starts_with('$')),
        Some(true)
    );
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_mock_a_429_pauses_matrix_alone() {
    const NAME: &str = "matrix-limited";
    let matrix_path = mock_send_path("matrix", NAME);
    let mock = start_mock(&[(
        matrix_path.as_str(),
        Faults {
            rate_limit_first: 1,
            retry_after_secs: 2,
            ..Faults::default()
        },
    )])
    .await;
    let base = format!("http://{}", mock.addr);
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![
            mock_destination(&base, "matrix", NAME),
            webhook(&mock, "status"),
        ],
    )
    .await;
    let client = client(&server);
    let first = client
        .send(&request("Disk full", &[NAME, "status"]))
        .await
        .unwrap();
    let done = wait_final(&client, &first.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let matrix = delivery(&done, NAME);
    assert_eq!(
        outcomes(matrix),
        [("send", "rate_limited"), ("send", "success")]
    );
    let stats = mock.stats();
    let arrivals: Vec<i64> = stats
        .paths
        .iter()
        .filter(|(path, _)| path.starts_with(matrix_path.trim_end_matches('*')))
        .flat_map(|(_, p)| p.arrivals_ms.clone())
        .collect();
    assert_eq!(arrivals.len(), 2, "{:#?}", stats.paths);
    let paused_ms = arrivals[1] - arrivals[0];
    assert!(
        paused_ms >= 1_900,
        "the second send waited out retry_after_ms: {paused_ms} ms"
    );
    let hook = stats.path("/hooks/status");
    assert!(
        hook.arrivals_ms[0] < arrivals[1],
        "the webhook was not held by Matrix's pause"
    );
    server.stop().await;
    mock.stop().await;
}

// ---------------------------------------------------------------------------
// Against Synapse.

/// A Synapse homeserver on loopback, in its own directory, killed when
/// dropped (a failing test too).
struct Synapse {
    child: Child,
    python: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python that has Synapse, if there is one.
fn synapse_python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("HERALD_SYNAPSE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            Path::new(&home).join(SYNAPSE_PYTHON_DEFAULT)
        }
    };
    let found = Command::new(&python)
        .args(["-c", "import synapse; print(synapse.__version__)"])
        .output()
        .map_err(|e| format!("{} cannot run: {e}", python.display()))?;
    let version = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    if version != SYNAPSE_VERSION {
        return Err(format!(
            "{} has Synapse {version:?}, not {SYNAPSE_VERSION}",
            python.display()
        ));
    }
    Ok(python)
}

/// The homeserver's config: loopback, the client API only (no federation
/// listener), SQLite, open registration for the test's user, and message
/// rate limits raised so herald's pace is the test's.
fn homeserver_yaml(dir: &Path, port: u16) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"server_name: "herald.test"
pid_file: "{pid}"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{db}"
media_store_path: "{media}"
signing_key_path: "{key}"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "{shared_secret}"
macaroon_secret_key: "herald-test-macaroon"
form_secret: "herald-test-form"
presence:
  enabled: false
enable_metrics: false
rc_message:
  per_second: 1000
  burst_count: 1000
rc_registration:
  per_second: 1000
  burst_count: 1000
rc_login:
  address: {{per_second: 1000, burst_count: 1000}}
  account: {{per_second: 1000, burst_count: 1000}}
  failed_attempts: {{per_second: 1000, burst_count: 1000}}
"#,
        pid = path("homeserver.pid"),
        db = path("homeserver.db"),
        media = path("media_store"),
        key = path("signing.key"),
        shared_secret = SHARED_SECRET,
    )
}

/// The Synapse the module's tests share while any of them runs: the first
/// starts it, the last one's drop stops it (tests that run apart each start
/// their own).
static SHARED_SYNAPSE: std::sync::LazyLock<tokio::sync::Mutex<std::sync::Weak<Synapse>>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(std::sync::Weak::new()));

async fn shared_synapse() -> Option<Arc<Synapse>> {
    let mut shared = SHARED_SYNAPSE.lock().await;
    if let Some(running) = shared.upgrade() {
        return Some(running);
    }
    let started = Arc::new(Synapse::start().await?);
    *shared = Arc::downgrade(&started);
    Some(started)
}

impl Synapse {
    /// Starts Synapse; `None` (the reason printed) when it is not
    /// installed, except under `CI=true`, where that fails the test.
    async fn start() -> Option<Synapse> {
        let python = match synapse_python() {
            Ok(python) => python,
            Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("Synapse {SYNAPSE_VERSION} is required on CI: {reason}; .ci/run installs it")
            }
            Err(reason) => {
                eprintln!(
                    "skipped: {reason}; .ci/run installs Synapse, and CI=true makes this a failure"
                );
                return None;
            }
        };
        let dir = temp_dir();
        let addr = free_addr();
        let config = dir.path().join("homeserver.yaml");
        std::fs::write(&config, homeserver_yaml(dir.path(), addr.port())).unwrap();
        // A signing key of our own: `ed25519 <key id> <unpadded base64 seed>`.
        let seed: [u8; 32] = rand::random();
        std::fs::write(
            dir.path().join("signing.key"),
            format!(
                "ed25519 a_herald {}\n",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed)
            ),
        )
        .unwrap();
        let log = dir.path().join("synapse.log");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("synapse.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let mut synapse = Synapse {
            child,
            python,
            addr,
            log,
            _dir: dir,
        };
        synapse.wait_ready().await;
        Some(synapse)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn wait_ready(&mut self) {
        let http = herald::connector::http_client_builder().build().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "Synapse exited ({status}) while starting:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(answer) = http.get(self.url("/_matrix/client/versions")).send().await {
                if answer.status().is_success() {
                    eprintln!("Synapse ready after {} ms", started.elapsed().as_millis());
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_millis(SYNAPSE_START_MS_MAX),
                "Synapse did not answer within {SYNAPSE_START_MS_MAX} ms:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers `user` through the client API (the dummy stage of the
    /// user-interactive auth); returns its access token.
    async fn register(&self, user: &str) -> String {
        let http = reqwest::Client::new();
        let url = self.url("/_matrix/client/v3/register");
        let mut body =
            json!({"username": user, "password": "herald-test-password-1", "inhibit_login": false});
        let first = http.post(&url).json(&body).send().await.unwrap();
        let status = first.status();
        let first: Value = first.json().await.unwrap();
        if status.is_success() {
            return first["access_token"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 401, "{first}");
        body["auth"] = json!({"type": "m.login.dummy", "session": first["session"]});
        let second: Value = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        second["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {second}"))
            .to_owned()
    }

    /// Registers an admin with Synapse's own script (the shared secret);
    /// returns its access token.
    async fn register_admin(&self, user: &str) -> String {
        let password = "herald-test-admin-password-1";
        let script = self.python.with_file_name("register_new_matrix_user");
        let made = Command::new(&script)
            .args(["-u", user, "-p", password, "--admin", "-k", SHARED_SECRET])
            .arg(self.url(""))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(made.status.success(), "{made:?}");
        let login: Value = reqwest::Client::new()
            .post(self.url("/_matrix/client/v3/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {login}"))
            .to_owned()
    }

    /// The user id of an access token.
    async fn whoami(&self, token: &str) -> String {
        let me = self
            .call(
                reqwest::Method::GET,
                "/_matrix/client/v3/account/whoami",
                token,
                None,
            )
            .await;
        me["user_id"].as_str().unwrap().to_owned()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let value: Value = answer.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn create_room(&self, token: &str, name: &str) -> String {
        let made = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                token,
                Some(json!({"preset": "private_chat", "name": name})),
            )
            .await;
        made["room_id"].as_str().unwrap().to_owned()
    }

    /// The room's `m.room.message` events, oldest first.
    async fn messages(&self, token: &str, room_id: &str) -> Vec<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=100",
            encode(room_id)
        );
        let page = self.call(reqwest::Method::GET, &path, token, None).await;
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .cloned()
            .collect()
    }

    async fn event(&self, token: &str, room_id: &str, event_id: &str) -> Value {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            encode(room_id),
            encode(event_id)
        );
        self.call(reqwest::Method::GET, &path, token, None).await
    }
}

/// Percent-encodes a path segment's reserved characters.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A TCP proxy to `target` that cuts its first connection once the server
/// has started to answer (the request was handled), without passing the
/// answer on; later connections pass through. Counts connections.
async fn proxy_losing_the_first_answer(target: SocketAddr) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU32::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                if !first {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
                let (mut in_read, _in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                let forward = tokio::io::copy(&mut in_read, &mut out_write);
                let mut answer = [0u8; 1];
                tokio::select! {
                    _ = forward => {}
                    _ = out_read.read(&mut answer) => {}
                }
                // Both sockets drop here: herald never sees the answer.
            });
        }
    });
    (addr, connections)
}

fn matrix_destination(
    name: &str,
    homeserver: SocketAddr,
    room_id: &str,
    token: &str,
) -> Destination {
    Destination {
        name: name.to_owned(),
        target: Target::Matrix {
            homeserver_url: format!("http://{homeserver}/").parse().unwrap(),
            room_id: room_id.to_owned(),
            token: Secret::new(token),
            rendering: Default::default(),
        },
        timeout_ms: 10_000,
        concurrency: 4,
        policy: RetryPolicy {
            attempts_max: 8,
            base_ms: 100,
            cap_ms: 1_000,
            deadline_ms: None,
        },
        isolation: Default::default(),
    }
}

fn relation(event: &Value) -> (&str, &str) {
    let relates = &event["content"]["m.relates_to"];
    (
        relates["rel_type"].as_str().unwrap_or(""),
        relates["event_id"].as_str().unwrap_or(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_synapse_a_thread_lands_in_order_and_a_lost_answer_makes_one_event() {
    let Some(synapse) = shared_synapse().await else {
        return;
    };
    let token = synapse.register("herald-thread").await;
    let room = synapse.create_room(&token, "ops").await;
    let lossy_room = synapse.create_room(&token, "lossy").await;
    let (proxy, connections) = proxy_losing_the_first_answer(synapse.addr).await;
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![
            matrix_destination("matrix-ops", synapse.addr, &room, &token),
            matrix_destination("matrix-lossy", proxy, &lossy_room, &token),
        ],
    )
    .await;

    // A message whose first answer the proxy loses: re-sent with the same
    // txnId, and Synapse answers with the event the first one made.
    let client = client(&server);
    let lost = client
        .send(&request("Payments API erroring", &["matrix-lossy"]))
        .await
        .unwrap();
    let [open, update, resolve] = send_thread(&server, &["matrix-ops"]).await;
    let lost = wait_final(&client, &lost.id, Duration::from_secs(60)).await;
    assert_eq!(lost.status, "converged", "{lost:#?}");
    let lossy = delivery(&lost, "matrix-lossy");
    assert_eq!(
        outcomes(lossy),
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ],
        "{lossy:#?}"
    );
    assert!(!lossy.possible_duplicate);
    assert!(connections.load(Ordering::SeqCst) >= 2);
    let in_lossy_room = synapse.messages(&token, &lossy_room).await;
    assert_eq!(in_lossy_room.len(), 1, "{in_lossy_room:#?}");
    assert_eq!(
        in_lossy_room[0]["unsigned"]["transaction_id"], lossy.idempotency_key,
        "the event carries the delivery's txnId"
    );
    assert_eq!(
        in_lossy_room[0]["event_id"].as_str(),
        lossy.remote_ref.as_deref(),
        "the re-send was answered with the first event"
    );

    // The thread: the opener, then each later message in its thread, the
    // resolve's edit of the opener before the resolve's own message.
    for broadcast in [&open, &update, &resolve] {
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
    }
    let events = synapse.messages(&token, &room).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    let root = events[0]["event_id"].as_str().unwrap();
    assert_eq!(
        delivery(&open, "matrix-ops").remote_ref.as_deref(),
        Some(root)
    );
    assert_eq!(relation(&events[0]), ("", ""));
    let body = |e: &Value| e["content"]["body"].as_str().unwrap_or("").to_owned();
    assert!(
        body(&events[0]).starts_with("[P1] Checkout is down"),
        "{}",
        body(&events[0])
    );
    assert!(
        events[0]["content"]["formatted_body"]
            .as_str()
            .unwrap()
            .contains("&lt;b&gt;not bold&lt;/b&gt; &amp; more"),
        "the body is escaped in the HTML"
    );
    assert_eq!(relation(&events[1]), ("m.thread", root));
    assert!(body(&events[1]).starts_with("[P1] Failing over"));
    assert_eq!(relation(&events[2]), ("m.replace", root));
    assert!(events[2]["content"]["m.new_content"]["body"]
        .as_str()
        .unwrap()
        .starts_with("[RESOLVED] INC-77"));
    assert_eq!(relation(&events[3]), ("m.thread", root));
    assert!(body(&events[3]).starts_with("[RESOLVED] Checkout recovered"));
    let txn_ids: Vec<&str> = events
        .iter()
        .map(|e| e["unsigned"]["transaction_id"].as_str().unwrap_or(""))
        .collect();
    let key = |b: &Broadcast| delivery(b, "matrix-ops").idempotency_key.clone();
    assert_eq!(
        txn_ids,
        [
            key(&open),
            key(&update),
            format!("{}.edit", key(&resolve)),
            key(&resolve)
        ]
    );
    // Synapse took the edit as valid and counts the thread: both are in
    // the opener's aggregations.
    let opener = synapse.event(&token, &room, root).await;
    let relations = &opener["unsigned"]["m.relations"];
    assert_eq!(relations["m.thread"]["count"], 2, "{opener:#}");
    assert_eq!(
        relations["m.replace"]["event_id"], events[2]["event_id"],
        "{opener:#}"
    );
    server.stop().await;
    drop(synapse);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_synapse_its_429_pauses_that_destination_alone() {
    let Some(synapse) = shared_synapse().await else {
        return;
    };
    let admin = synapse.register_admin("admin").await;
    let token = synapse.register("herald-limits").await;
    let limited_token = synapse.register("limited").await;
    let room = synapse.create_room(&token, "ops").await;
    let limited_room = synapse.create_room(&limited_token, "limited").await;
    // The limited user may send one message a second, one at a time
    // (Synapse's own rate limiter, set through its admin API).
    let limited_user = synapse.whoami(&limited_token).await;
    synapse
        .call(
            reqwest::Method::POST,
            &format!(
                "/_synapse/admin/v1/users/{}/override_ratelimit",
                encode(&limited_user)
            ),
            &admin,
            Some(json!({"messages_per_second": 1, "burst_count": 1})),
        )
        .await;
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![
            matrix_destination("matrix-ops", synapse.addr, &room, &token),
            matrix_destination(
                "matrix-limited",
                synapse.addr,
                &limited_room,
                &limited_token,
            ),
        ],
    )
    .await;
    let client = client(&server);
    let mut ids = Vec::new();
    for title in [
        "Disk full on db-1",
        "Disk full on db-2",
        "Disk full on db-3",
    ] {
        let accepted = client
            .send(&request(title, &["matrix-ops", "matrix-limited"]))
            .await
            .unwrap();
        ids.push(accepted.id);
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(wait_final(&client, id, Duration::from_secs(60)).await);
    }
    let limited: Vec<&Delivery> = done.iter().map(|b| delivery(b, "matrix-limited")).collect();
    let rate_limited = limited
        .iter()
        .flat_map(|d| d.attempts.iter())
        .filter(|a| a.outcome == "rate_limited")
        .count();
    assert!(
        rate_limited >= 1,
        "Synapse answered M_LIMIT_EXCEEDED: {limited:#?}"
    );
    assert!(limited
        .iter()
        .flat_map(|d| d.attempts.iter())
        .filter(|a| a.outcome == "rate_limited")
        .all(|a| a
            .error
            .as_deref()
            .is_some_and(|e| e.contains("M_LIMIT_EXCEEDED"))));
    // The limited destination's pause held only it: every message to the
    // other one was in before the limited one's last send started.
    let last_limited_start = limited
        .iter()
        .flat_map(|d| d.attempts.iter())
        .map(|a| a.started_at.clone())
        .max()
        .unwrap();
    let last_ops_finish = done
        .iter()
        .flat_map(|b| delivery(b, "matrix-ops").attempts.iter())
        .map(|a| a.finished_at.clone())
        .max()
        .unwrap();
    assert!(
        last_ops_finish < last_limited_start,
        "matrix-ops finished at {last_ops_finish}, after the limited one's last send at {last_limited_start}"
    );
    for broadcast in &done {
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        let ops = delivery(broadcast, "matrix-ops");
        assert_eq!(
            outcomes(ops),
            [("send", "success")],
            "the other destination was not limited: {ops:#?}"
        );
    }
    // Each message once in each room, whatever the retries.
    assert_eq!(
        synapse.messages(&limited_token, &limited_room).await.len(),
        3
    );
    assert_eq!(synapse.messages(&token, &room).await.len(), 3);
    server.stop().await;
    drop(synapse);
}
