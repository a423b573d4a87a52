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

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use herald::api::wire::{Broadcast, Delivery, SendRequest};
use herald::config::{Destination, Target};
use herald::domain::RetryPolicy;
use herald::kinds::email::config::SmtpSecurity;

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
