//! The email kind against a real SMTP server this project did not write:
//! aiosmtpd from PyPI, started by `tests/smtp_sink.py`, which writes every
//! message it keeps to a folder (the mailbox) and refuses or drops messages
//! on a script. A thread lands as one conversation (Message-ID from the
//! key, In-Reply-To and References of the first), with a text and an HTML
//! part, to every recipient, after AUTH; a 4xx is retried, a 421 pauses
//! the destination, a 5xx fails; a
//! connection lost after the message was sent is sent again with the same
//! Message-ID and flagged `possible_duplicate`, and the mailbox folds by
//! Message-ID into one message; STARTTLS and implicit TLS reach a relay
//! whose CA is given in `smtp_ca_file` (made with `openssl`), and not one
//! whose CA is not. Without python3 and aiosmtpd these tests
//! skip, except on CI (`CI=true`), where that fails them (`.ci/run`
//! installs aiosmtpd first).
//!
//! The SMTP server of `herald mock`, run as a process, is tested here too:
//! a thread lands in order as one conversation under a refusal, a
//! connection dropped after DATA leaves two copies under one Message-ID,
//! and a 421 pauses email while another destination goes on; the demo's
//! mailbox, busy once, ends with the thread once.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use herald::api::wire::{Broadcast, Delivery, SendRequest};
use herald::config::{Destination, Target};
use herald::domain::RetryPolicy;
use herald::kinds::email::config::SmtpSecurity;
use herald::mock::{Faults, MockStats, PathFaults};

use crate::support::*;

const NAME: &str = "email-oncall";
const SINK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_sink.py");

/// aiosmtpd behind `tests/smtp_sink.py`, stopped (stdin closed, then
/// killed) when dropped.
struct SmtpSink {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    mailbox: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message the sink kept: its envelope and its content.
struct Received {
    rcpt_tos: Vec<String>,
    login: Option<String>,
    content: String,
}

impl Received {
    /// The value of the top-level header `name` (unfolded), if present.
    fn header(&self, name: &str) -> Option<String> {
        let head = self.content.split("\r\n\r\n").next().unwrap_or("");
        let mut found: Option<String> = None;
        let mut in_it = false;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if in_it {
                    let value = found.as_mut().unwrap();
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            in_it = false;
            if let Some((key, value)) = line.split_once(':') {
                if key.eq_ignore_ascii_case(name) && found.is_none() {
                    found = Some(value.trim().to_owned());
                    in_it = true;
                }
            }
        }
        found
    }
}

impl SmtpSink {
    /// Starts the sink with its script (see `tests/smtp_sink.py`); `None`
    /// when python3 or aiosmtpd is missing and this is not CI.
    fn start(script: &[&str], auth: Option<&str>) -> Option<SmtpSink> {
        SmtpSink::start_with(script, auth, &[])
    }

    /// As `start`, with more of the sink's arguments (`--tls`, ...).
    fn start_with(script: &[&str], auth: Option<&str>, more: &[&str]) -> Option<SmtpSink> {
        let dir = temp_dir();
        let mailbox = dir.path().join("mailbox");
        let mut command = Command::new("python3");
        command
            .arg(SINK)
            .arg("--dir")
            .arg(&mailbox)
            .arg("--script")
            .arg(script.join(","));
        if let Some(auth) = auth {
            command.arg("--auth").arg(auth);
        }
        command.args(more);
        let started = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match started {
            Ok(child) => child,
            Err(e) => return skip_or_fail(&format!("python3 cannot be started: {e}")),
        };
        let stdin = child.stdin.take();
        let mut first_line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line);
        let port = first_line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse::<u16>().ok());
        let Some(port) = port.filter(|_| read.is_ok()) else {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            let _ = child.wait();
            return skip_or_fail(&format!(
                "the SMTP sink (aiosmtpd) did not start: {first_line:?} {stderr}; install it with python3 -m pip install aiosmtpd"
            ));
        };
        Some(SmtpSink {
            child,
            stdin,
            port,
            mailbox,
            _dir: dir,
        })
    }

    /// The messages kept so far, in order of arrival.
    fn messages(&self) -> Vec<Received> {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.mailbox) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
            .iter()
            .map(|eml| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(eml.with_extension("json")).unwrap())
                        .unwrap();
                Received {
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_owned())
                        .collect(),
                    login: meta["login"].as_str().map(str::to_owned),
                    content: String::from_utf8(std::fs::read(eml).unwrap()).unwrap(),
                }
            })
            .collect()
    }
}

fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the email tests need a real SMTP server on CI: {reason}");
    }
    eprintln!("skipped: {reason}; CI=true makes this a failure");
    None
}

/// An email destination at the sink, plain SMTP on loopback, quick retries.
fn destination(port: u16, login: Option<(&str, &str)>, cc: &[&str]) -> Destination {
    Destination {
        name: NAME.to_owned(),
        target: Target::Email {
            host: "127.0.0.1".to_owned(),
            port,
            security: SmtpSecurity::None,
            username: login.map(|(user, _)| user.to_owned()),
            password: login.map(|(_, password)| herald::config::Secret::new(password)),
            ca_pem: None,
            from: "Herald <herald@alerts.example.com>".to_owned(),
            to: vec![
                "oncall@example.com".to_owned(),
                "Second Line <second@example.org>".to_owned(),
            ],
            cc: cc.iter().map(|c| (*c).to_owned()).collect(),
            rendering: Default::default(),
        },
        timeout_ms: 2_000,
        concurrency: 4,
        policy: RetryPolicy {
            attempts_max: 5,
            base_ms: 100,
            cap_ms: 500,
            deadline_ms: None,
        },
        isolation: Default::default(),
    }
}

fn attempts(delivery: &Delivery) -> Vec<(&str, &str)> {
    delivery
        .attempts
        .iter()
        .map(|a| (a.kind.as_str(), a.outcome.as_str()))
        .collect()
}

fn message_id(broadcast: &Broadcast) -> String {
    format!(
        "<{}@alerts.example.com>",
        broadcast.deliveries[0].idempotency_key
    )
}

fn thread_request(title: &str, resolved: bool) -> SendRequest {
    SendRequest {
        title: title.to_owned(),
        body: Some(format!("{title}: details")),
        severity: Some("P2".into()),
        thread: Some("INC-9".into()),
        resolved,
        destinations: vec![NAME.to_owned()],
        ..SendRequest::default()
    }
}

async fn send_and_wait(client: &herald::client::Client, request: &SendRequest) -> Broadcast {
    let accepted = client.send(request).await.unwrap();
    wait_final(client, &accepted.id, Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_lands_as_one_conversation_at_every_recipient() {
    let Some(sink) = SmtpSink::start(&[], Some("herald:s3cret")) else {
        return;
    };
    let dir = temp_dir();
    let destination = destination(sink.port, Some(("herald", "s3cret")), &["lead@example.net"]);
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let mut done = Vec::new();
    for (title, resolved) in [
        ("Checkout is failing", false),
        ("Payments rolled back", false),
        ("Checkout recovered", true),
    ] {
        let broadcast = send_and_wait(&client, &thread_request(title, resolved)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }

    let messages = sink.messages();
    assert_eq!(messages.len(), 3, "one message per broadcast");
    let first_id = message_id(&done[0]);
    for (i, (message, broadcast)) in messages.iter().zip(&done).enumerate() {
        assert_eq!(message.login.as_deref(), Some("herald"), "AUTH before MAIL");
        assert_eq!(
            message.rcpt_tos,
            [
                "oncall@example.com",
                "second@example.org",
                "lead@example.net"
            ],
            "every recipient, to and cc"
        );
        assert_eq!(message.header("Message-ID"), Some(message_id(broadcast)));
        let delivery = &broadcast.deliveries[0];
        assert_eq!(
            delivery.remote_ref.as_deref(),
            Some(message_id(broadcast).trim_matches(['<', '>']))
        );
        assert!(!delivery.possible_duplicate, "{delivery:#?}");
        let (in_reply_to, references) =
            (message.header("In-Reply-To"), message.header("References"));
        if i == 0 {
            assert_eq!((in_reply_to, references), (None, None));
        } else {
            assert_eq!(in_reply_to.as_deref(), Some(first_id.as_str()));
            assert_eq!(references.as_deref(), Some(first_id.as_str()));
        }
        let from = message.header("From").unwrap();
        assert!(from.contains("<herald@alerts.example.com>"), "{from}");
        let to = message.header("To").unwrap();
        assert!(
            to.contains("oncall@example.com") && to.contains("<second@example.org>"),
            "{to}"
        );
        assert_eq!(message.header("Cc").as_deref(), Some("lead@example.net"));
        let content_type = message.header("Content-Type").unwrap();
        assert!(
            content_type.starts_with("multipart/alternative"),
            "{content_type}"
        );
        assert!(message.content.contains("Content-Type: text/plain"));
        assert!(message.content.contains("Content-Type: text/html"));
        assert_eq!(
            message.header("Auto-Submitted").as_deref(),
            Some("auto-generated")
        );
    }
    let subjects: Vec<String> = messages
        .iter()
        .map(|m| m.header("Subject").unwrap())
        .collect();
    assert_eq!(
        subjects,
        [
            "[P2] INC-9: Checkout is failing",
            "[P2] INC-9 update: Payments rolled back",
            "[RESOLVED] INC-9: Checkout recovered",
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_refusal_is_retried_a_busy_server_pauses_and_a_permanent_refusal_fails() {
    let script = ["tempfail", "accept", "busy", "accept", "reject"];
    let Some(sink) = SmtpSink::start(&script, None) else {
        return;
    };
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![destination(sink.port, None, &[])],
    )
    .await;
    let client = client(&server);

    let retried = send_and_wait(&client, &request("Disk filling up", &[NAME])).await;
    let delivery = &retried.deliveries[0];
    assert_eq!(retried.status, "converged", "{retried:#?}");
    assert_eq!(
        attempts(delivery),
        [("send", "retryable"), ("send", "success")]
    );
    let error = delivery.attempts[0].error.as_deref().unwrap();
    assert!(error.contains("SMTP 451"), "{error}");
    assert_eq!(sink.messages().len(), 1);

    // 421: the server closes the channel; the destination pauses as for a
    // 429, then the message goes.
    let paused = send_and_wait(&client, &request("Disk still filling", &[NAME])).await;
    let delivery = &paused.deliveries[0];
    assert_eq!(paused.status, "converged", "{paused:#?}");
    assert_eq!(
        attempts(delivery),
        [("send", "rate_limited"), ("send", "success")]
    );
    assert_eq!(sink.messages().len(), 2);

    let refused = send_and_wait(&client, &request("Disk full", &[NAME])).await;
    let delivery = &refused.deliveries[0];
    assert_eq!(delivery.state, "failed", "{refused:#?}");
    assert_eq!(attempts(delivery), [("send", "permanent")]);
    let error = delivery.last_error.as_deref().unwrap();
    assert!(error.contains("SMTP 554"), "{error}");
    assert_eq!(sink.messages().len(), 2, "the refused message was not kept");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_the_message_was_sent_folds_by_message_id() {
    let Some(sink) = SmtpSink::start(&["drop"], None) else {
        return;
    };
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![destination(sink.port, None, &[])],
    )
    .await;
    let client = client(&server);

    let done = send_and_wait(&client, &request("Queue backlog growing", &[NAME])).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let delivery = &done.deliveries[0];
    assert_eq!(
        attempts(delivery),
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ],
        "{delivery:#?}"
    );
    assert!(delivery.possible_duplicate, "{delivery:#?}");

    // The mailbox holds the message twice, under one Message-ID: a mail
    // client shows one.
    let messages = sink.messages();
    assert_eq!(messages.len(), 2);
    let ids: BTreeSet<Option<String>> = messages.iter().map(|m| m.header("Message-ID")).collect();
    assert_eq!(ids, BTreeSet::from([Some(message_id(&done))]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_fails_a_destination_that_requires_it() {
    let Some(sink) = SmtpSink::start(&[], None) else {
        return;
    };
    let dir = temp_dir();
    let mut destination = destination(sink.port, None, &[]);
    if let Target::Email { security, .. } = &mut destination.target {
        *security = SmtpSecurity::StartTls;
    }
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let done = send_and_wait(&client, &request("Certificate expiring", &[NAME])).await;
    let delivery = &done.deliveries[0];
    assert_eq!(delivery.state, "failed", "{done:#?}");
    let error = delivery.last_error.as_deref().unwrap();
    assert!(error.contains("does not offer STARTTLS"), "{error}");
    assert!(sink.messages().is_empty(), "nothing sent in clear text");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_and_nothing_is_ambiguous() {
    // A port nobody listens on: every connect is refused.
    let dir = temp_dir();
    let mut destination = destination(free_addr().port(), None, &[]);
    destination.policy.attempts_max = 2;
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let done = send_and_wait(&client, &request("Nobody home", &[NAME])).await;
    let delivery = &done.deliveries[0];
    assert_eq!(delivery.state, "dead", "{done:#?}");
    assert_eq!(
        attempts(delivery),
        [("send", "retryable"), ("send", "retryable")]
    );
    assert!(!delivery.possible_duplicate);
    server.stop().await;
}

/// A private CA and a server certificate it signed for 127.0.0.1, in
/// `dir`: `relay-ca.pem`, `server.pem`, `server.key`.
fn private_ca(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    make_ca(dir, "relay");
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let mut request = vec!["req"];
    request.extend(ec);
    request.extend([
        "-subj",
        "/CN=relay",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(dir, &request);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "relay-ca.pem",
            "-CAkey",
            "relay-ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls_to_a_relay_with_a_private_ca() {
    let pki = temp_dir();
    private_ca(pki.path());
    let cert = pki.path().join("server.pem").display().to_string();
    let key = pki.path().join("server.key").display().to_string();
    let ca_pem = std::fs::read_to_string(pki.path().join("relay-ca.pem")).unwrap();
    for (mode, security) in [
        ("starttls", SmtpSecurity::StartTls),
        ("implicit", SmtpSecurity::Tls),
    ] {
        let more = ["--tls", mode, "--cert", &cert, "--key", &key];
        // The sink refuses MAIL before STARTTLS (530), so a message that
        // lands went over TLS; a login too.
        let Some(sink) = SmtpSink::start_with(&[], Some("herald:s3cret"), &more) else {
            return;
        };
        let dir = temp_dir();
        let mut trusted = destination(sink.port, Some(("herald", "s3cret")), &[]);
        if let Target::Email {
            security: s,
            ca_pem: ca,
            ..
        } = &mut trusted.target
        {
            *s = security;
            *ca = Some(ca_pem.clone());
        }
        let mut untrusted = destination(sink.port, Some(("herald", "s3cret")), &[]);
        untrusted.name = "email-untrusted".to_owned();
        untrusted.policy.attempts_max = 1;
        if let Target::Email { security: s, .. } = &mut untrusted.target {
            *s = security;
        }
        let server = start_server(&dir.path().join("herald.db"), vec![trusted, untrusted]).await;
        let client = client(&server);

        let done = send_and_wait(&client, &request("Relay over TLS", &[NAME])).await;
        assert_eq!(done.status, "converged", "{mode}: {done:#?}");
        let messages = sink.messages();
        assert_eq!(messages.len(), 1, "{mode}");
        assert_eq!(messages[0].login.as_deref(), Some("herald"));

        // Without the CA the server's certificate is not trusted: nothing
        // is sent.
        let refused =
            send_and_wait(&client, &request("Untrusted relay", &["email-untrusted"])).await;
        let delivery = &refused.deliveries[0];
        assert_eq!(delivery.state, "dead", "{mode}: {refused:#?}");
        let error = delivery.last_error.as_deref().unwrap();
        assert!(error.contains("SMTP while connecting"), "{mode}: {error}");
        assert_eq!(sink.messages().len(), 1, "{mode}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_lands_in_order_while_the_server_drops_and_refuses() {
    // The opener's final reply is lost (kept, then the connection closed),
    // the update is refused for now once, the resolve meets a busy server.
    let script = ["drop", "accept", "tempfail", "accept", "busy", "accept"];
    let Some(sink) = SmtpSink::start(&script, None) else {
        return;
    };
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![destination(sink.port, None, &[])],
    )
    .await;
    let client = client(&server);
    // Accepted together: herald holds each until the previous one of the
    // thread is confirmed here.
    let mut ids = Vec::new();
    for (title, resolved) in [
        ("Search is slow", false),
        ("Index rebuilt", false),
        ("Search recovered", true),
    ] {
        ids.push(
            client
                .send(&thread_request(title, resolved))
                .await
                .unwrap()
                .id,
        );
    }
    let mut done = Vec::new();
    for id in &ids {
        let broadcast = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }
    let outcomes: Vec<Vec<(&str, &str)>> =
        done.iter().map(|b| attempts(&b.deliveries[0])).collect();
    assert_eq!(
        outcomes,
        [
            vec![
                ("send", "ambiguous"),
                ("verify", "unknown"),
                ("send", "success")
            ],
            vec![("send", "retryable"), ("send", "success")],
            vec![("send", "rate_limited"), ("send", "success")],
        ]
    );
    assert!(done[0].deliveries[0].possible_duplicate);

    // The mailbox, in order of arrival: the opener twice under one
    // Message-ID, then the update and the resolve, each replying to it.
    let messages = sink.messages();
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    let first = message_id(&done[0]);
    assert_eq!(
        ids,
        [
            first.clone(),
            first.clone(),
            message_id(&done[1]),
            message_id(&done[2])
        ]
    );
    for later in &messages[2..] {
        assert_eq!(later.header("In-Reply-To").as_deref(), Some(first.as_str()));
        assert_eq!(later.header("References").as_deref(), Some(first.as_str()));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_fails_the_delivery_and_never_shows_the_password() {
    let Some(sink) = SmtpSink::start(&[], Some("herald:s3cret")) else {
        return;
    };
    let dir = temp_dir();
    let destination = destination(sink.port, Some(("herald", "WRONG-PASSWORD")), &[]);
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);

    let done = send_and_wait(&client, &request("Login refused", &[NAME])).await;
    let delivery = &done.deliveries[0];
    assert_eq!(delivery.state, "failed", "{done:#?}");
    assert_eq!(attempts(delivery), [("send", "permanent")]);
    let error = delivery.last_error.as_deref().unwrap();
    assert!(error.starts_with("SMTP 535 while connecting"), "{error}");
    let shown = serde_json::to_string(&done).unwrap();
    assert!(!shown.contains("WRONG-PASSWORD"), "{shown}");
    assert!(sink.messages().is_empty());
    server.stop().await;
}

/// `herald mock` as a process: its HTTP base and its SMTP port, read from
/// the two lines it prints at start; killed when dropped.
struct MockProcess {
    child: Child,
    url: String,
    smtp_port: u16,
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MockProcess {
    fn start() -> MockProcess {
        let mut child = Command::new(HERALD)
            .args(["mock", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut http, mut smtp) = (String::new(), String::new());
        out.read_line(&mut http).unwrap();
        out.read_line(&mut smtp).unwrap();
        let url = http
            .trim()
            .strip_prefix("herald mock listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from herald mock: {http:?}"))
            .to_owned();
        let smtp_addr: std::net::SocketAddr = smtp
            .strip_prefix("herald mock listening for SMTP on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected second line from herald mock: {smtp:?}"));
        assert!(
            smtp.contains(&format!("smtp_port = {}", smtp_addr.port())),
            "{smtp}"
        );
        MockProcess {
            child,
            url,
            smtp_port: smtp_addr.port(),
        }
    }

    async fn set_faults(&self, path: &str, faults: Faults) -> reqwest::Response {
        http()
            .put(format!("{}/_mock/faults", self.url))
            .json(&PathFaults {
                path: path.to_owned(),
                faults,
            })
            .send()
            .await
            .unwrap()
    }

    async fn stats(&self) -> MockStats {
        http()
            .get(format!("{}/_mock/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn http() -> reqwest::Client {
    herald::connector::http_client_builder().build().unwrap()
}

/// The mock's mailbox of the destinations' first recipient.
const MAILBOX: &str = "oncall@example.com";

fn mailbox_path() -> String {
    herald::kinds::email::mock::mailbox_path(MAILBOX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_smtp_server_holds_a_thread_in_order_as_one_conversation() {
    let mock = MockProcess::start();
    // The opener is refused for now once (451), then every message goes.
    let answer = mock
        .set_faults(
            &mailbox_path(),
            Faults {
                fail_first: 1,
                fail_status: 451,
                ..Faults::default()
            },
        )
        .await;
    assert_eq!(answer.status(), 204);
    let dir = temp_dir();
    let destination = destination(
        mock.smtp_port,
        Some(("herald", "s3cret")),
        &["lead@example.net"],
    );
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);
    // Accepted together: herald holds each until the previous one of the
    // thread is confirmed.
    let mut ids = Vec::new();
    for (title, resolved) in [
        ("Checkout is failing", false),
        ("Payments rolled back", false),
        ("Checkout recovered", true),
    ] {
        ids.push(
            client
                .send(&thread_request(title, resolved))
                .await
                .unwrap()
                .id,
        );
    }
    let mut done = Vec::new();
    for id in &ids {
        let broadcast = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }
    assert_eq!(
        attempts(&done[0].deliveries[0]),
        [("send", "retryable"), ("send", "success")]
    );

    let stats = mock.stats().await;
    let first = message_id(&done[0]);
    for address in [MAILBOX, "second@example.org", "lead@example.net"] {
        let mailbox = &stats.email.mailboxes[address];
        assert_eq!(
            (mailbox.messages, mailbox.message_ids, mailbox.conversations),
            (3, 3, 1),
            "{address}: {mailbox:#?}"
        );
        let held: Vec<(Option<&str>, Option<&str>, Option<&str>)> = mailbox
            .held
            .iter()
            .map(|m| {
                (
                    m.message_id.as_deref(),
                    m.subject.as_deref(),
                    m.in_reply_to.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            held,
            [
                (
                    Some(first.as_str()),
                    Some("[P2] INC-9: Checkout is failing"),
                    None
                ),
                (
                    Some(message_id(&done[1]).as_str()),
                    Some("[P2] INC-9 update: Payments rolled back"),
                    Some(first.as_str())
                ),
                (
                    Some(message_id(&done[2]).as_str()),
                    Some("[RESOLVED] INC-9: Checkout recovered"),
                    Some(first.as_str())
                ),
            ],
            "{address}"
        );
        assert!(mailbox
            .held
            .iter()
            .all(|m| m.login.as_deref() == Some("herald")));
    }
    let path = stats.path(&mailbox_path());
    assert_eq!((path.requests, path.failed), (4, 1), "{path:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_after_data_at_the_mock_leaves_two_copies_under_one_message_id() {
    let mock = MockProcess::start();
    let drop_first = Faults {
        drop_first: 1,
        ..Faults::default()
    };
    assert_eq!(
        mock.set_faults(&mailbox_path(), drop_first).await.status(),
        204
    );
    let dir = temp_dir();
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![destination(mock.smtp_port, None, &[])],
    )
    .await;
    let client = client(&server);

    let done = send_and_wait(&client, &request("Queue backlog growing", &[NAME])).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let delivery = &done.deliveries[0];
    assert_eq!(
        attempts(delivery),
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ],
        "{delivery:#?}"
    );
    assert!(delivery.possible_duplicate, "{delivery:#?}");
    let error = delivery.attempts[0].error.as_deref().unwrap();
    assert!(error.contains("the server may have queued it"), "{error}");

    // Two copies, one Message-ID: a mail client shows one message.
    let stats = mock.stats().await;
    let mailbox = &stats.email.mailboxes[MAILBOX];
    assert_eq!(
        (mailbox.messages, mailbox.message_ids),
        (2, 1),
        "{mailbox:#?}"
    );
    assert_eq!(
        mailbox.duplicated_ids,
        [(message_id(&done), 2)].into_iter().collect()
    );
    assert_eq!(stats.path(&mailbox_path()).dropped, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_at_the_mock_pauses_email_alone() {
    let mock = MockProcess::start();
    // An HTTP status that is no SMTP reply is refused, naming the field.
    let refused = mock
        .set_faults(
            &mailbox_path(),
            Faults {
                fail_first: 1,
                fail_status: 503,
                ..Faults::default()
            },
        )
        .await;
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("fail_status: 503 is not an SMTP reply"),
        "{body}"
    );
    let busy = Faults {
        rate_limit_first: 1,
        ..Faults::default()
    };
    assert_eq!(mock.set_faults(&mailbox_path(), busy).await.status(), 204);

    let dir = temp_dir();
    let mut email = destination(mock.smtp_port, None, &[]);
    // The pause after a 421 (no Retry-After in SMTP) is the backoff's.
    email.policy.base_ms = 1_500;
    email.policy.cap_ms = 1_500;
    let hook = Destination {
        target: Target::Webhook {
            url: format!("{}/hooks/status-hook", mock.url).parse().unwrap(),
            secret: None,
            rendering: Default::default(),
        },
        name: "status-hook".to_owned(),
        ..destination(mock.smtp_port, None, &[])
    };
    let server = start_server(&dir.path().join("herald.db"), vec![email, hook]).await;
    let client = client(&server);
    let both = [NAME, "status-hook"];

    let first = client
        .send(&request("Disk filling up", &both))
        .await
        .unwrap();
    // The second goes once herald has the 421 (the first is retrying).
    // The attempt is looked for, not the `retrying` state: the pause is
    // the backoff's, with full jitter, so that state may last only a few
    // milliseconds and a poll can miss it.
    let retrying = async {
        loop {
            let broadcast = client.status(&first.id).await.unwrap();
            if broadcast.deliveries.iter().any(|d| {
                d.destination == NAME
                    && attempts(d)
                        .iter()
                        .any(|(_, outcome)| *outcome == "rate_limited")
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), retrying)
        .await
        .expect("the 421 made the first message retry");
    let second = client
        .send(&request("Disk still filling", &both))
        .await
        .unwrap();

    // The webhook takes both at once while email waits.
    let started = Instant::now();
    while mock.stats().await.path("/hooks/status-hook").distinct < 2 {
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "the webhook was held up by email's 421"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut done = Vec::new();
    for id in [&first.id, &second.id] {
        let broadcast = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }
    let email_attempts = |b: &Broadcast| -> Vec<(String, String)> {
        let d = b.deliveries.iter().find(|d| d.destination == NAME).unwrap();
        attempts(d)
            .into_iter()
            .map(|(k, o)| (k.to_owned(), o.to_owned()))
            .collect()
    };
    let pair = |k: &str, o: &str| (k.to_owned(), o.to_owned());
    assert_eq!(
        email_attempts(&done[0]),
        [pair("send", "rate_limited"), pair("send", "success")]
    );
    // The second was held by the pause, not refused: one attempt.
    assert_eq!(email_attempts(&done[1]), [pair("send", "success")]);
    // At the mailbox: the 421, then both once the pause ended, which is
    // when the first's retry was due: the second did not go before it.
    let arrivals = mock.stats().await.path(&mailbox_path()).arrivals_ms;
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    let retried_at = arrivals[1..].iter().min().unwrap();
    let latest = arrivals[1..].iter().max().unwrap();
    assert!(
        latest - retried_at <= 300,
        "the second went during the pause: {arrivals:?}"
    );
    assert_eq!(
        mock.stats().await.email.mailboxes[MAILBOX].messages,
        2,
        "the busy answer kept nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_mailbox_holds_the_thread_once_after_a_busy_answer() {
    // The demo's email destination and faults, at a mock in this process.
    let kind = herald::kinds::email::demo::demo_kind();
    assert_eq!(kind.name, NAME);
    let path = herald::demo::mock_send_path("email", kind.name);
    let mock = start_mock(&[(path.as_str(), kind.faults.clone())]).await;
    let destination =
        herald::demo::mock_destination(&format!("http://{}", mock.addr), "email", kind.name);
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);
    for (title, resolved) in [
        ("Checkout is failing", false),
        ("Payments rolled back", false),
        ("Checkout recovered", true),
    ] {
        let broadcast = send_and_wait(&client, &thread_request(title, resolved)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
    }
    let (line, as_expected) = (kind.landed)(&mock.stats(), kind.name);
    assert_eq!(line, "3 messages in 1 conversation, one Message-ID each");
    assert!(as_expected);
    assert_eq!(
        mock.stats().path(&path).rate_limited,
        1,
        "the 421 was played"
    );
    server.stop().await;
    mock.stop().await;
}
