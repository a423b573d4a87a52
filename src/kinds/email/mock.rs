//! The email kind in `herald mock`: an SMTP server (RFC 5321) on its own
//! port next to the mock's HTTP one, holding every message it accepts in
//! a mailbox per recipient.
//!
//! - The session ([`serve`]): the greeting, EHLO (8BITMIME, SIZE,
//!   ENHANCEDSTATUSCODES, AUTH PLAIN LOGIN) or HELO, AUTH PLAIN and LOGIN
//!   (RFC 4954; any login, the first password used for a user owns it),
//!   MAIL FROM (BODY, SIZE), RCPT TO, DATA with its dot-stuffing undone,
//!   RSET, NOOP, VRFY, HELP, QUIT. Commands out of order get 503, bad
//!   arguments 501, unknown ones 500; no STARTTLS (a destination at the
//!   mock sets `smtp_security = "none"`). Lines end in CRLF: a bare LF in
//!   the content refuses the message (554), as a text line over 1000
//!   octets does (RFC 5321 4.5.3.1.6).
//! - The content must have the header fields RFC 5322 3.6 requires (From,
//!   Date), else 554.
//! - Faults, decided at the end of DATA like a request at an HTTP path,
//!   at the path `/smtp/<first recipient>` ([`mailbox_path`];
//!   `/smtp/*` for all): `rate_limit_first` answers 421 and closes (the
//!   server busy), `fail_first` answers `fail_status` (an SMTP code: 451
//!   try again, 554 refused, ...), `drop_first` keeps the message and
//!   closes the connection without the final reply (the ambiguous case),
//!   `latency_ms` delays the final reply.
//! - Its statistics ([`EmailStats`]), per mailbox: the messages held,
//!   the distinct Message-IDs (what a mail client shows), the Message-IDs
//!   held more than once, the conversations (by References and
//!   In-Reply-To) and the messages in order of arrival.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::mock::faults::Faults;
use crate::mock::shared::{Admission, Fault};

/// Where an SMTP mailbox's faults and counters live among the mock's
/// paths: `/smtp/<address>`.
pub const PATH_PREFIX: &str = "/smtp/";
/// The name the server gives itself in its replies.
pub const SERVER_NAME: &str = "herald-mock";
/// A message at most (octets), as EHLO's SIZE says.
pub const MESSAGE_BYTES_MAX: usize = 10 * 1024 * 1024;
/// A command line at most, CRLF included: RFC 5321 4.5.3.1.4 says 512;
/// AUTH's initial responses (RFC 4954 4) need more.
const COMMAND_LINE_BYTES_MAX: usize = 2_048;
/// A line of the content at most, CRLF included (RFC 5321 4.5.3.1.6).
const TEXT_LINE_BYTES_MAX: usize = 1_000;
/// Recipients of one message at most (RFC 5321 4.5.3.1.8's minimum).
const RECIPIENTS_MAX: usize = 100;
/// Sessions at once; one more is told 421 and closed.
const SESSIONS_MAX: usize = 64;
/// Commands in one session at most; then 421.
const COMMANDS_MAX: usize = 10_000;
/// How long the server waits for a command or a line of content
/// (RFC 5321 4.5.3.2.7: at least five minutes).
const IDLE_TIMEOUT_SECS: u64 = 300;
/// Messages listed per mailbox in the statistics (all are counted).
const HELD_LISTED_MAX: usize = 1_000;
/// The negative replies `fail_status` may name at an SMTP path.
pub const FAIL_CODES: [u16; 9] = [421, 450, 451, 452, 550, 551, 552, 553, 554];

/// The path of the mailbox `address` (its faults, its counters).
pub fn mailbox_path(address: &str) -> String {
    format!("{PATH_PREFIX}{}", address.to_ascii_lowercase())
}

/// One message at the end of DATA: its envelope and its content (dots
/// unstuffed, lines ending in CRLF).
#[derive(Clone, Debug)]
pub(crate) struct Mail {
    pub login: Option<String>,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub content: Vec<u8>,
}

/// What the server answers at the end of DATA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 250, with the queue id.
    Accept { queue_id: String },
    /// A negative reply; `close` after it (421).
    Refuse {
        code: u16,
        text: String,
        close: bool,
    },
    /// The message is kept and the connection closed without a reply.
    Drop,
}

/// Where the sessions hand logins and messages: the mock's state.
pub(crate) trait MailSink: Send + Sync + 'static {
    /// True when `user` may log in with `password`.
    fn login(&self, user: &str, password: &str) -> bool;
    /// The verdict on one message and how long to wait before saying it.
    fn deliver(&self, mail: Mail) -> (Verdict, Duration);
}

/// What the mock's SMTP server counted, per mailbox (a recipient's
/// address, in lower case).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EmailStats {
    pub mailboxes: BTreeMap<String, MailboxStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MailboxStats {
    /// Messages held (every copy).
    pub messages: u64,
    /// Distinct Message-IDs held: what a mail client shows, folding
    /// copies with the same one.
    pub message_ids: u64,
    /// Message-IDs held more than once, with their number of copies.
    pub duplicated_ids: BTreeMap<String, u64>,
    /// Conversations: messages grouped by the first of their References
    /// (else In-Reply-To, else their own Message-ID).
    pub conversations: u64,
    /// The first messages held, in order of arrival.
    pub held: Vec<HeldMail>,
}

/// One message as a mailbox holds it (its header fields as sent).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeldMail {
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
    pub subject: Option<String>,
    /// The envelope's sender (MAIL FROM).
    pub mail_from: String,
    /// Who logged in (AUTH), if anyone.
    pub login: Option<String>,
    pub received_ms: i64,
}

#[derive(Default)]
struct Mailbox {
    held: Vec<HeldMail>,
    messages: u64,
    copies: HashMap<String, u64>,
    roots: HashSet<String>,
}

/// The email emulation's state: the mailboxes and the logins.
#[derive(Default)]
pub(crate) struct Email {
    mailboxes: BTreeMap<String, Mailbox>,
    passwords: HashMap<String, String>,
    queued: u64,
}

impl Email {
    /// A login: any user, whose first password owns it.
    pub(crate) fn login(&mut self, user: &str, password: &str) -> bool {
        if user.is_empty() {
            return false;
        }
        let owner = self
            .passwords
            .entry(user.to_owned())
            .or_insert_with(|| password.to_owned());
        owner == password
    }

    /// The verdict on `mail`, with the fault its path drew; a message
    /// accepted or dropped is held in every recipient's mailbox.
    pub(crate) fn receive(&mut self, mail: &Mail, admission: &Admission, now_ms: i64) -> Verdict {
        match &admission.fault {
            Fault::RateLimit { .. } => {
                return Verdict::Refuse {
                    code: 421,
                    text: "4.7.0 Too many messages, slow down; closing the channel".to_owned(),
                    close: true,
                }
            }
            Fault::Fail { status } => {
                return Verdict::Refuse {
                    code: *status,
                    text: reply_text(*status).to_owned(),
                    close: *status == 421,
                }
            }
            Fault::None | Fault::Drop { .. } | Fault::SlackError { .. } | Fault::BadSignature => {}
        }
        let header = Header::parse(&mail.content);
        let missing: Vec<&str> = ["From", "Date"]
            .into_iter()
            .filter(|name| header.field(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Verdict::Refuse {
                code: 554,
                text: format!(
                    "5.6.0 The message has no {} header field (RFC 5322 3.6)",
                    missing.join(" or ")
                ),
                close: false,
            };
        }
        self.hold(mail, &header, now_ms);
        match admission.fault {
            Fault::Drop { .. } => Verdict::Drop,
            _ => {
                self.queued += 1;
                Verdict::Accept {
                    queue_id: format!("{:08X}", self.queued),
                }
            }
        }
    }

    fn hold(&mut self, mail: &Mail, header: &Header, now_ms: i64) {
        let message_id = header.field("Message-ID");
        let in_reply_to = header.field("In-Reply-To");
        let references = header.field("References");
        let root = references
            .as_deref()
            .and_then(|r| r.split_whitespace().next())
            .or(in_reply_to.as_deref())
            .or(message_id.as_deref())
            .map(str::to_owned);
        let held = HeldMail {
            message_id: message_id.clone(),
            in_reply_to: in_reply_to.clone(),
            references: references.clone(),
            subject: header.field("Subject"),
            mail_from: mail.mail_from.clone(),
            login: mail.login.clone(),
            received_ms: now_ms,
        };
        let mut seen = HashSet::new();
        for address in &mail.rcpt_to {
            let address = address.to_ascii_lowercase();
            if !seen.insert(address.clone()) {
                continue;
            }
            let mailbox = self.mailboxes.entry(address).or_default();
            mailbox.messages += 1;
            if let Some(id) = &message_id {
                *mailbox.copies.entry(id.clone()).or_default() += 1;
            }
            if let Some(root) = &root {
                mailbox.roots.insert(root.clone());
            }
            if mailbox.held.len() < HELD_LISTED_MAX {
                mailbox.held.push(held.clone());
            }
        }
    }

    pub(crate) fn stats(&self) -> EmailStats {
        let mailboxes = self
            .mailboxes
            .iter()
            .map(|(address, m)| {
                let stats = MailboxStats {
                    messages: m.messages,
                    message_ids: m.copies.len() as u64,
                    duplicated_ids: m
                        .copies
                        .iter()
                        .filter(|(_, n)| **n > 1)
                        .map(|(id, n)| (id.clone(), *n))
                        .collect(),
                    conversations: m.roots.len() as u64,
                    held: m.held.clone(),
                };
                (address.clone(), stats)
            })
            .collect();
        EmailStats { mailboxes }
    }
}

/// Faults at an SMTP path: `fail_status` must be an SMTP reply.
pub(crate) fn check_faults(faults: &Faults) -> Result<(), String> {
    let failing = faults.fail_first > 0 || faults.failure_rate > 0.0;
    if failing && !FAIL_CODES.contains(&faults.fail_status) {
        return Err(format!(
            "fail_status: {} is not an SMTP reply to the end of DATA; use 451 or 452 (try again later), 421 (busy, closing), 550 or 554 (refused)",
            faults.fail_status
        ));
    }
    Ok(())
}

/// The text after a negative reply's code.
fn reply_text(code: u16) -> &'static str {
    match code {
        421 => "4.7.0 Service not available, closing transmission channel",
        450 => "4.2.0 Mailbox unavailable, try again later",
        451 => "4.3.0 Local error in processing, try again later",
        452 => "4.3.1 Insufficient system storage",
        550 => "5.7.1 Mailbox unavailable",
        551 => "5.1.6 User not local",
        552 => "5.3.4 Message exceeds fixed maximum message size",
        553 => "5.1.3 Mailbox name not allowed",
        _ => "5.6.0 Transaction failed",
    }
}

/// A message's header section, unfolded (RFC 5322 2.2.3).
struct Header {
    fields: Vec<(String, String)>,
}

impl Header {
    fn parse(content: &[u8]) -> Header {
        let text = String::from_utf8_lossy(content);
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.split("\r\n") {
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((name, value)) = line.split_once(':') {
                fields.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Header { fields }
    }

    /// The first field named `name` (any case).
    fn field(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// Accepts SMTP sessions on `listener` until `shutdown` turns true; then
/// every session ends.
pub(crate) async fn serve(
    listener: TcpListener,
    sink: Arc<dyn MailSink>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(SESSIONS_MAX));
    let mut sessions = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        // Finished sessions leave the set as they end.
        while sessions.try_join_next().is_some() {}
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            sessions.spawn(async move {
                let _ = stream
                    .write_all(b"421 4.3.2 Too many connections, try again later\r\n")
                    .await;
            });
            continue;
        };
        let sink = sink.clone();
        sessions.spawn(async move {
            let _ = session(stream, sink.as_ref()).await;
            drop(slot);
        });
    }
    sessions.shutdown().await;
}

/// A line read: its bytes without the line ending.
enum Line {
    Text { bytes: Vec<u8>, crlf: bool },
    TooLong,
    Closed,
}

/// Reads one line of at most `bytes_max` octets (line ending included);
/// a longer one is read to its end and dropped.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    bytes_max: usize,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(Line::Closed);
        }
        let (chunk, ended) = match buffer.iter().position(|b| *b == b'\n') {
            Some(at) => (&buffer[..=at], true),
            None => (buffer, false),
        };
        let taken = chunk.len();
        if line.len() + taken > bytes_max {
            too_long = true;
        } else {
            line.extend_from_slice(chunk);
        }
        reader.consume(taken);
        if ended {
            break;
        }
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    line.pop();
    let crlf = line.last() == Some(&b'\r');
    if crlf {
        line.pop();
    }
    Ok(Line::Text { bytes: line, crlf })
}

/// The transaction in progress (after MAIL).
struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
}

/// One SMTP session, to its QUIT or the connection's end.
async fn session(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    sink: &dyn MailSink,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let idle = Duration::from_secs(IDLE_TIMEOUT_SECS);
    reply(&mut write, &format!("220 {SERVER_NAME} ESMTP herald mock")).await?;
    let mut greeted = false;
    let mut login: Option<String> = None;
    let mut transaction: Option<Transaction> = None;
    for _ in 0..COMMANDS_MAX {
        let line = match tokio::time::timeout(idle, read_line(&mut reader, COMMAND_LINE_BYTES_MAX))
            .await
        {
            Err(_) => {
                reply(&mut write, "421 4.4.2 Idle too long, closing").await?;
                return Ok(());
            }
            Ok(line) => line?,
        };
        let line = match line {
            Line::Closed => return Ok(()),
            Line::TooLong => {
                reply(&mut write, "500 5.5.2 Line too long").await?;
                continue;
            }
            Line::Text { bytes, .. } => String::from_utf8_lossy(&bytes).into_owned(),
        };
        let (verb, argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        let answer: String = match verb.as_str() {
            "EHLO" | "HELO" if argument.is_empty() => {
                format!("501 5.5.4 Syntax: {verb} your-domain")
            }
            "EHLO" => {
                greeted = true;
                transaction = None;
                format!(
                    "250-{SERVER_NAME} greets {argument}\r\n250-8BITMIME\r\n250-SIZE {MESSAGE_BYTES_MAX}\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250 HELP"
                )
            }
            "HELO" => {
                greeted = true;
                transaction = None;
                format!("250 {SERVER_NAME}")
            }
            "AUTH" if !greeted => "503 5.5.1 Send EHLO first".to_owned(),
            "AUTH" if login.is_some() => "503 5.5.1 Already authenticated".to_owned(),
            "AUTH" if transaction.is_some() => {
                "503 5.5.1 AUTH is not allowed during a mail transaction".to_owned()
            }
            "AUTH" => match authenticate(&mut reader, &mut write, argument).await? {
                Auth::Credentials(user, password) if sink.login(&user, &password) => {
                    login = Some(user);
                    "235 2.7.0 Authentication successful".to_owned()
                }
                Auth::Credentials(..) => "535 5.7.8 Authentication credentials invalid".to_owned(),
                Auth::Refused(answer) => answer.to_owned(),
                Auth::Closed => return Ok(()),
            },
            "MAIL" if !greeted => "503 5.5.1 Send EHLO or HELO first".to_owned(),
            "MAIL" if transaction.is_some() => "503 5.5.1 Nested MAIL command".to_owned(),
            "MAIL" => match mail_from(argument) {
                Ok(sender) => {
                    transaction = Some(Transaction {
                        mail_from: sender,
                        rcpt_to: Vec::new(),
                    });
                    "250 2.1.0 Sender OK".to_owned()
                }
                Err(answer) => answer,
            },
            "RCPT" => match transaction.as_mut() {
                None => "503 5.5.1 Need MAIL before RCPT".to_owned(),
                Some(t) if t.rcpt_to.len() >= RECIPIENTS_MAX => {
                    "452 4.5.3 Too many recipients".to_owned()
                }
                Some(t) => match rcpt_to(argument) {
                    Ok(recipient) => {
                        t.rcpt_to.push(recipient);
                        "250 2.1.5 Recipient OK".to_owned()
                    }
                    Err(answer) => answer,
                },
            },
            "DATA" if !argument.is_empty() => "501 5.5.4 DATA takes no argument".to_owned(),
            "DATA" => match transaction.take() {
                None => "503 5.5.1 Need MAIL before DATA".to_owned(),
                Some(t) if t.rcpt_to.is_empty() => {
                    transaction = Some(t);
                    "503 5.5.1 Need RCPT before DATA".to_owned()
                }
                Some(t) => {
                    reply(&mut write, "354 End data with <CR><LF>.<CR><LF>").await?;
                    let content = match read_content(&mut reader, idle).await? {
                        Content::Closed => return Ok(()),
                        Content::Refused(answer) => {
                            reply(&mut write, answer).await?;
                            continue;
                        }
                        Content::Message(content) => content,
                    };
                    let mail = Mail {
                        login: login.clone(),
                        mail_from: t.mail_from,
                        rcpt_to: t.rcpt_to,
                        content,
                    };
                    let (verdict, latency) = sink.deliver(mail);
                    tokio::time::sleep(latency).await;
                    match verdict {
                        Verdict::Accept { queue_id } => {
                            format!("250 2.0.0 OK: queued as {queue_id}")
                        }
                        Verdict::Refuse { code, text, close } => {
                            reply(&mut write, &format!("{code} {text}")).await?;
                            if close {
                                return Ok(());
                            }
                            continue;
                        }
                        Verdict::Drop => return Ok(()),
                    }
                }
            },
            "RSET" if !argument.is_empty() => "501 5.5.4 RSET takes no argument".to_owned(),
            "RSET" => {
                transaction = None;
                "250 2.0.0 OK".to_owned()
            }
            "NOOP" => "250 2.0.0 OK".to_owned(),
            "VRFY" => "252 2.5.0 Cannot VRFY user; send the message".to_owned(),
            "HELP" => "214 2.0.0 EHLO HELO AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT".to_owned(),
            "QUIT" => {
                reply(&mut write, &format!("221 2.0.0 {SERVER_NAME} closing")).await?;
                return Ok(());
            }
            "STARTTLS" => "502 5.5.1 STARTTLS is not offered here".to_owned(),
            _ => "500 5.5.1 Command unrecognized".to_owned(),
        };
        reply(&mut write, &answer).await?;
    }
    reply(&mut write, "421 4.7.0 Too many commands, closing").await
}

async fn reply(write: &mut (impl AsyncWrite + Unpin), text: &str) -> std::io::Result<()> {
    write.write_all(text.as_bytes()).await?;
    write.write_all(b"\r\n").await?;
    write.flush().await
}

/// The path in `FROM:<path> [parameters]` or `TO:<path> ...`: the
/// address between the angle brackets, and the parameters after.
fn path_and_parameters<'a>(argument: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (path, parameters) = rest.split_once('>')?;
    Some((path, parameters.trim()))
}

/// An address `local@domain`, neither side empty, no spaces.
fn is_address(text: &str) -> bool {
    match text.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !text.contains(char::is_whitespace)
                && !text.contains(['<', '>'])
        }
        None => false,
    }
}

/// MAIL's argument: the sender (empty for a bounce) and its parameters
/// (RFC 1652 BODY, RFC 1870 SIZE).
fn mail_from(argument: &str) -> Result<String, String> {
    let Some((sender, parameters)) = path_and_parameters(argument, "FROM:") else {
        return Err("501 5.5.4 Syntax: MAIL FROM:<address>".to_owned());
    };
    if !sender.is_empty() && !is_address(sender) {
        return Err("501 5.1.7 Bad sender address syntax".to_owned());
    }
    for parameter in parameters.split_whitespace() {
        let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        match key.to_ascii_uppercase().as_str() {
            "BODY" if ["7BIT", "8BITMIME"].contains(&value.to_ascii_uppercase().as_str()) => {}
            "SIZE" => match value.parse::<usize>() {
                Ok(size) if size > MESSAGE_BYTES_MAX => {
                    return Err("552 5.3.4 Message size exceeds fixed maximum".to_owned())
                }
                Ok(_) => {}
                Err(_) => return Err("501 5.5.4 Bad SIZE parameter".to_owned()),
            },
            "AUTH" => {}
            _ => return Err(format!("555 5.5.4 MAIL parameter {key} not recognized")),
        }
    }
    Ok(sender.to_owned())
}

/// RCPT's argument: the recipient (no parameters are offered).
fn rcpt_to(argument: &str) -> Result<String, String> {
    let Some((recipient, parameters)) = path_and_parameters(argument, "TO:") else {
        return Err("501 5.5.4 Syntax: RCPT TO:<address>".to_owned());
    };
    if !parameters.is_empty() {
        return Err("555 5.5.4 RCPT parameters not recognized".to_owned());
    }
    // A source route (`@a,@b:user@c`) is obsolete; its last part counts.
    let recipient = recipient.rsplit(':').next().unwrap_or(recipient);
    if !is_address(recipient) {
        return Err("501 5.1.3 Bad recipient address syntax".to_owned());
    }
    Ok(recipient.to_owned())
}

/// What DATA's content turned out to be.
enum Content {
    Message(Vec<u8>),
    Refused(&'static str),
    Closed,
}

/// The content after 354, to its `.` line, dots unstuffed (RFC 5321
/// 4.5.2); read to the end even when it will be refused.
async fn read_content(
    reader: &mut (impl AsyncBufRead + Unpin),
    idle: Duration,
) -> std::io::Result<Content> {
    let mut content = Vec::new();
    let mut refused: Option<&'static str> = None;
    // Bounded: a client sending without end is cut off at twice the size.
    let mut read_bytes = 0usize;
    loop {
        let line = match tokio::time::timeout(idle, read_line(reader, TEXT_LINE_BYTES_MAX)).await {
            Err(_) | Ok(Ok(Line::Closed)) => return Ok(Content::Closed),
            Ok(line) => line?,
        };
        let (bytes, crlf) = match line {
            Line::Closed => return Ok(Content::Closed),
            Line::TooLong => {
                refused.get_or_insert(
                    "554 5.6.0 A line of the message is longer than 1000 octets (RFC 5321 4.5.3.1.6)",
                );
                read_bytes += TEXT_LINE_BYTES_MAX;
                continue;
            }
            Line::Text { bytes, crlf } => (bytes, crlf),
        };
        read_bytes += bytes.len() + 2;
        if read_bytes > 2 * MESSAGE_BYTES_MAX {
            return Ok(Content::Closed);
        }
        if !crlf {
            refused.get_or_insert(
                "554 5.6.0 A bare LF in the message; lines end in CRLF (RFC 5321 2.3.8)",
            );
            continue;
        }
        if bytes == b"." {
            break;
        }
        let unstuffed = bytes.strip_prefix(b".").unwrap_or(&bytes);
        if content.len() + unstuffed.len() + 2 > MESSAGE_BYTES_MAX {
            refused.get_or_insert("552 5.3.4 Message size exceeds fixed maximum");
            continue;
        }
        content.extend_from_slice(unstuffed);
        content.extend_from_slice(b"\r\n");
    }
    Ok(match refused {
        Some(answer) => Content::Refused(answer),
        None => Content::Message(content),
    })
}

/// How an AUTH exchange ended.
enum Auth {
    Credentials(String, String),
    Refused(&'static str),
    Closed,
}

/// AUTH PLAIN (RFC 4616) or LOGIN, with or without an initial response.
async fn authenticate(
    reader: &mut (impl AsyncBufRead + Unpin),
    write: &mut (impl AsyncWrite + Unpin),
    argument: &str,
) -> std::io::Result<Auth> {
    let (mechanism, initial) = match argument.split_once(' ') {
        Some((mechanism, initial)) => (mechanism.to_ascii_uppercase(), Some(initial.trim())),
        None => (argument.to_ascii_uppercase(), None),
    };
    // The client's next line, base64 decoded; `*` cancels.
    async fn response(
        reader: &mut (impl AsyncBufRead + Unpin),
        write: &mut (impl AsyncWrite + Unpin),
        challenge: &str,
        initial: Option<&str>,
    ) -> std::io::Result<Result<Vec<u8>, Auth>> {
        let text = match initial {
            Some(text) => text.to_owned(),
            None => {
                reply(write, challenge).await?;
                match read_line(reader, COMMAND_LINE_BYTES_MAX).await? {
                    Line::Text { bytes, .. } => String::from_utf8_lossy(&bytes).trim().to_owned(),
                    Line::TooLong => return Ok(Err(Auth::Refused("500 5.5.2 Line too long"))),
                    Line::Closed => return Ok(Err(Auth::Closed)),
                }
            }
        };
        if text == "*" {
            return Ok(Err(Auth::Refused("501 5.0.0 Authentication cancelled")));
        }
        if text == "=" {
            return Ok(Ok(Vec::new()));
        }
        Ok(base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| Auth::Refused("501 5.5.2 Cannot decode the response (base64)")))
    }
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    match mechanism.as_str() {
        "PLAIN" => {
            let decoded = match response(reader, write, "334 ", initial).await? {
                Ok(decoded) => decoded,
                Err(auth) => return Ok(auth),
            };
            // authzid NUL authcid NUL passwd
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            match parts.as_slice() {
                [_, user, password] => Ok(Auth::Credentials(
                    text(user.to_vec()),
                    text(password.to_vec()),
                )),
                _ => Ok(Auth::Refused("501 5.5.2 Bad PLAIN response")),
            }
        }
        "LOGIN" => {
            // "Username:" and "Password:" in base64.
            let user = match response(reader, write, "334 VXNlcm5hbWU6", initial).await? {
                Ok(user) => user,
                Err(auth) => return Ok(auth),
            };
            let password = match response(reader, write, "334 UGFzc3dvcmQ6", None).await? {
                Ok(password) => password,
                Err(auth) => return Ok(auth),
            };
            Ok(Auth::Credentials(text(user), text(password)))
        }
        _ => Ok(Auth::Refused(
            "504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN",
        )),
    }
}

#[cfg(test)]
mod tests;
