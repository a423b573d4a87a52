//! The SMTP session over an in-memory stream, with a sink that records.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use super::*;

#[derive(Default)]
struct Recorder {
    mails: Mutex<Vec<Mail>>,
    verdicts: Mutex<Vec<Verdict>>,
    email: Mutex<Email>,
}

impl MailSink for Recorder {
    fn login(&self, user: &str, password: &str) -> bool {
        self.email.lock().unwrap().login(user, password)
    }

    fn deliver(&self, mail: Mail) -> (Verdict, Duration) {
        self.mails.lock().unwrap().push(mail);
        let verdict = self.verdicts.lock().unwrap().pop();
        let verdict = verdict.unwrap_or(Verdict::Accept {
            queue_id: "Q1".into(),
        });
        (verdict, Duration::ZERO)
    }
}

/// A client's end of a session: writes lines, reads replies.
struct Client {
    reader: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    writer: tokio::io::WriteHalf<DuplexStream>,
}

impl Client {
    fn start(sink: Arc<Recorder>) -> Client {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = session(theirs, sink.as_ref()).await;
        });
        let (read, write) = tokio::io::split(ours);
        Client {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    /// The next reply, every line of it ("" when the server closed).
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    /// Sends one command line and returns the reply.
    async fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }
}

const MESSAGE: &str = "From: a@example.com\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <k1@example.com>\r\nSubject: hi\r\n\r\n..a line starting with a dot\r\n.\r\n";

#[tokio::test]
async fn a_session_takes_a_message_and_undoes_the_dot_stuffing() {
    let sink = Arc::new(Recorder::default());
    let mut c = Client::start(sink.clone());
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.command("EHLO client.example.com").await;
    for extension in [
        "250-8BITMIME",
        "250-SIZE 10485760",
        "250-AUTH PLAIN LOGIN",
        "250 HELP",
    ] {
        assert!(ehlo.contains(extension), "{ehlo}");
    }
    // AUTH PLAIN with an initial response: \0user\0password.
    let plain = base64::engine::general_purpose::STANDARD.encode("\0herald\0s3cret");
    assert!(c
        .command(&format!("AUTH PLAIN {plain}"))
        .await
        .starts_with("235 "));
    assert!(c
        .command("MAIL FROM:<a@example.com> BODY=8BITMIME")
        .await
        .starts_with("250 "));
    assert!(c
        .command("RCPT TO:<one@example.com>")
        .await
        .starts_with("250 "));
    assert!(c
        .command("RCPT TO:<Two@example.org>")
        .await
        .starts_with("250 "));
    assert!(c.command("DATA").await.starts_with("354 "));
    c.send(MESSAGE).await;
    assert_eq!(c.reply().await, "250 2.0.0 OK: queued as Q1\r\n");
    assert!(c.command("QUIT").await.starts_with("221 "));

    let mails = sink.mails.lock().unwrap();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.login.as_deref(), Some("herald"));
    assert_eq!(mail.mail_from, "a@example.com");
    assert_eq!(mail.rcpt_to, ["one@example.com", "Two@example.org"]);
    let content = String::from_utf8(mail.content.clone()).unwrap();
    assert!(
        content.ends_with("\r\n\r\n.a line starting with a dot\r\n"),
        "{content:?}"
    );
}

#[tokio::test]
async fn commands_out_of_order_or_malformed_are_refused_with_their_codes() {
    let sink = Arc::new(Recorder::default());
    let mut c = Client::start(sink.clone());
    c.reply().await;
    assert!(
        c.command("MAIL FROM:<a@example.com>")
            .await
            .starts_with("503 "),
        "EHLO first"
    );
    assert!(c.command("HELO client").await.starts_with("250 "));
    assert!(
        c.command("RCPT TO:<b@example.com>")
            .await
            .starts_with("503 "),
        "MAIL first"
    );
    assert!(c.command("DATA").await.starts_with("503 "));
    assert!(c
        .command("MAIL FROM:a@example.com")
        .await
        .starts_with("501 "));
    assert!(c
        .command("MAIL FROM:<a@example.com> SIZE=99999999999")
        .await
        .starts_with("552 "));
    assert!(c
        .command("MAIL FROM:<a@example.com> XFOO=1")
        .await
        .starts_with("555 "));
    assert!(c
        .command("MAIL FROM:<a@example.com>")
        .await
        .starts_with("250 "));
    assert!(
        c.command("MAIL FROM:<a@example.com>")
            .await
            .starts_with("503 "),
        "nested"
    );
    assert!(
        c.command("DATA").await.starts_with("503 "),
        "no recipient yet"
    );
    assert!(c
        .command("RCPT TO:<not an address>")
        .await
        .starts_with("501 "));
    assert!(c.command("RSET").await.starts_with("250 "));
    assert!(
        c.command("RCPT TO:<b@example.com>")
            .await
            .starts_with("503 "),
        "RSET ended it"
    );
    assert!(c.command("NOOP").await.starts_with("250 "));
    assert!(c.command("STARTTLS").await.starts_with("502 "));
    assert!(c.command("FROB").await.starts_with("500 "));
    let long = format!("NOOP {}", "x".repeat(COMMAND_LINE_BYTES_MAX));
    assert!(c.command(&long).await.starts_with("500 5.5.2"));
    assert!(sink.mails.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_bare_lf_or_a_missing_date_refuses_the_message() {
    let sink = Arc::new(Recorder::default());
    let mut c = Client::start(sink.clone());
    c.reply().await;
    c.command("EHLO c").await;
    c.command("MAIL FROM:<a@example.com>").await;
    c.command("RCPT TO:<b@example.com>").await;
    c.command("DATA").await;
    c.send("From: a@example.com\nDate: x\r\n\r\nbody\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("554 5.6.0 A bare LF"));
    assert!(sink.mails.lock().unwrap().is_empty(), "never handed on");

    // The content is checked by the emulation: no Date.
    let mut email = Email::default();
    let mail = Mail {
        login: None,
        mail_from: "a@example.com".into(),
        rcpt_to: vec!["b@example.com".into()],
        content: b"From: a@example.com\r\n\r\nbody\r\n".to_vec(),
    };
    let admission = Admission {
        fault: Fault::None,
        faults: Faults::default(),
    };
    let verdict = email.receive(&mail, &admission, 0);
    assert!(
        matches!(&verdict, Verdict::Refuse { code: 554, text, .. } if text.contains("no Date")),
        "{verdict:?}"
    );
    assert!(email.stats().mailboxes.is_empty());
}

#[tokio::test]
async fn auth_login_and_a_second_password_for_the_same_user() {
    let sink = Arc::new(Recorder::default());
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    for (password, expected) in [("first", "235 "), ("other", "535 ")] {
        let mut c = Client::start(sink.clone());
        c.reply().await;
        c.command("EHLO c").await;
        assert_eq!(c.command("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
        assert_eq!(c.command(&b64("herald")).await, "334 UGFzc3dvcmQ6\r\n");
        assert!(
            c.command(&b64(password)).await.starts_with(expected),
            "{password}"
        );
    }
    let mut c = Client::start(sink);
    c.reply().await;
    c.command("EHLO c").await;
    assert!(c.command("AUTH CRAM-MD5").await.starts_with("504 "));
    assert_eq!(c.command("AUTH PLAIN").await, "334 \r\n");
    assert!(c.command("*").await.starts_with("501 "), "cancelled");
}

#[tokio::test]
async fn a_421_closes_and_a_drop_closes_without_a_reply() {
    let sink = Arc::new(Recorder::default());
    for (verdict, expected) in [
        (
            Verdict::Refuse {
                code: 421,
                text: "4.7.0 busy".into(),
                close: true,
            },
            "421 4.7.0 busy\r\n",
        ),
        (Verdict::Drop, ""),
    ] {
        sink.verdicts.lock().unwrap().push(verdict);
        let mut c = Client::start(sink.clone());
        c.reply().await;
        c.command("EHLO c").await;
        c.command("MAIL FROM:<a@example.com>").await;
        c.command("RCPT TO:<b@example.com>").await;
        c.command("DATA").await;
        c.send(MESSAGE).await;
        assert_eq!(c.reply().await, expected);
        assert_eq!(c.reply().await, "", "the server closed the connection");
    }
}

#[test]
fn mailboxes_count_copies_by_message_id_and_conversations_by_references() {
    let mut email = Email::default();
    let admission = |fault| Admission {
        fault,
        faults: Faults::default(),
    };
    let mail = |id: &str, reply_to: Option<&str>| {
        let mut content = format!("From: a@example.com\r\nDate: x\r\nMessage-ID: <{id}>\r\n");
        if let Some(first) = reply_to {
            content.push_str(&format!(
                "In-Reply-To: <{first}>\r\nReferences:\r\n <{first}>\r\n"
            ));
        }
        content.push_str("\r\nbody\r\n");
        Mail {
            login: None,
            mail_from: "a@example.com".into(),
            rcpt_to: vec!["Oncall@example.com".into(), "lead@example.com".into()],
            content: content.into_bytes(),
        }
    };
    assert_eq!(
        email.receive(
            &mail("k1@x", None),
            &admission(Fault::Drop { hang_ms: 0 }),
            1
        ),
        Verdict::Drop
    );
    for (id, first) in [
        ("k1@x", None),
        ("k2@x", Some("k1@x")),
        ("k3@x", Some("k1@x")),
    ] {
        let verdict = email.receive(&mail(id, first), &admission(Fault::None), 2);
        assert!(matches!(verdict, Verdict::Accept { .. }), "{verdict:?}");
    }
    let refused = email.receive(
        &mail("k4@x", None),
        &admission(Fault::Fail { status: 451 }),
        3,
    );
    assert!(matches!(
        refused,
        Verdict::Refuse {
            code: 451,
            close: false,
            ..
        }
    ));
    let stats = email.stats();
    let oncall = &stats.mailboxes["oncall@example.com"];
    assert_eq!(
        (oncall.messages, oncall.message_ids, oncall.conversations),
        (4, 3, 1)
    );
    assert_eq!(
        oncall.duplicated_ids,
        BTreeMap::from([("<k1@x>".to_owned(), 2)])
    );
    assert_eq!(oncall.held[2].references.as_deref(), Some("<k1@x>"));
    assert_eq!(stats.mailboxes["lead@example.com"].messages, 4);
}

#[test]
fn an_smtp_path_takes_only_smtp_codes_as_fail_status() {
    let mut faults = Faults {
        fail_first: 1,
        fail_status: 503,
        ..Faults::default()
    };
    let error = check_faults(&faults).unwrap_err();
    assert!(
        error.starts_with("fail_status: 503 is not an SMTP reply"),
        "{error}"
    );
    faults.fail_status = 451;
    check_faults(&faults).unwrap();
    faults.fail_first = 0;
    faults.fail_status = 503;
    check_faults(&faults).unwrap();
}
