//! Email through an SMTP server (RFC 5321), as one MIME message (RFC 5322,
//! RFC 2046): plain text with an HTML alternative, to every configured
//! recipient.
//!
//! - `Message-ID` is `<idempotency key@sender's domain>`: the same on every
//!   attempt, so a re-send after a lost final reply carries the first one's
//!   id and mail clients fold the two.
//! - A thread's first message here records its Message-ID as the
//!   delivery's `remote_ref`; the thread's later messages are leased with it
//!   as `thread_ref` and carry it in `In-Reply-To` and `References`, so
//!   they land in one conversation. When the first never landed, the next
//!   one goes out without them (it starts the conversation).
//! - Classification by the stage the exchange reached: a 4xx reply is
//!   retryable and a 5xx permanent wherever it comes, and a 421 (the server
//!   closing the channel: busy, or limiting the sender) pauses the
//!   destination as a 429 does. Without a reply, a connection that fails or
//!   times out before the message's content was sent leaves nothing at the
//!   server (retryable); one lost while the content was sent or before the
//!   reply to its end (`.`) is ambiguous, since the server may have queued
//!   it (RFC 5321 6.1: a lost final reply may mean a duplicate).
//!   A server that does not offer STARTTLS when `starttls` is set, or
//!   neither AUTH PLAIN nor LOGIN for a login, fails the delivery: that is
//!   the configuration's to fix, not the message's to retry.
//! - SMTP has no read-back: after an ambiguous outcome the message is sent
//!   again, with the same Message-ID, and the delivery is flagged
//!   `possible_duplicate`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::Address;
use sha2::{Digest, Sha256};

use crate::connector::shared::VerifyReport;
use crate::domain::ClaimedDelivery;
use crate::domain::{Outcome, OutcomeClass, EXCERPT_BYTES_MAX};
use crate::kinds::email::config::SmtpSecurity;
use crate::template::{Rendering, Template, TemplateError};

/// How long a polite `QUIT` after an accepted message may take; the
/// message is already the server's, so it never changes the outcome.
const QUIT_TIMEOUT_MS: u64 = 1_000;

/// Where an SMTP exchange got to before it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpStage {
    /// Connecting, the greeting, EHLO, STARTTLS, AUTH: no message yet.
    Connect,
    /// MAIL, RCPT and DATA: the server has not seen the content.
    Envelope,
    /// The content and its end (`.`) are being sent or answered: the
    /// server may have queued the message.
    Content,
    /// The server accepted the message (a 250 after `.`).
    Accepted,
}

/// Why an exchange failed, as plain values (so the classification is a
/// pure function).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpFailure {
    pub stage: SmtpStage,
    /// The server's reply code, when it answered with a negative one.
    pub code: Option<u16>,
    /// The server's text or the client's error.
    pub text: String,
    /// The attempt's timeout ran out (no reply in time).
    pub timed_out: bool,
    /// A problem of the configuration rather than of this attempt (the
    /// server offers no STARTTLS, no AUTH mechanism in common).
    pub misconfigured: bool,
}

/// The stage an exchange in flight has reached, readable after its
/// timeout dropped it.
struct StageReached(AtomicU8);

impl StageReached {
    const STAGES: [SmtpStage; 4] = [
        SmtpStage::Connect,
        SmtpStage::Envelope,
        SmtpStage::Content,
        SmtpStage::Accepted,
    ];

    fn new() -> StageReached {
        StageReached(AtomicU8::new(0))
    }

    fn set(&self, stage: SmtpStage) {
        let index = StageReached::STAGES.iter().position(|s| *s == stage);
        self.0.store(index.unwrap_or(0) as u8, Ordering::Relaxed);
    }

    fn get(&self) -> SmtpStage {
        StageReached::STAGES[usize::from(self.0.load(Ordering::Relaxed))]
    }
}

impl SmtpStage {
    fn describe(self) -> &'static str {
        match self {
            SmtpStage::Connect => "while connecting",
            SmtpStage::Envelope => "before the message was sent",
            SmtpStage::Content => "after the message was sent",
            SmtpStage::Accepted => "after the message was accepted",
        }
    }
}

/// The email outcome classes: 4xx retryable (421, the server closing the
/// channel, pauses the destination like a 429), 5xx permanent; a failure
/// without a reply retryable before the content, ambiguous from then on.
pub fn classify_email_failure(failure: &SmtpFailure) -> Outcome {
    let SmtpFailure {
        stage,
        code,
        text,
        timed_out,
        misconfigured,
    } = failure;
    let (class, error) = match code {
        // "Service not available, closing transmission channel": the
        // server is busy or limiting this sender; every other message
        // would meet the same, so the destination pauses.
        Some(421) => (
            OutcomeClass::RateLimited,
            format!(
                "SMTP 421 {}: {text}; the server is busy or limiting, pausing this destination",
                stage.describe()
            ),
        ),
        Some(code @ 400..=499) => (
            OutcomeClass::Retryable,
            format!("SMTP {code} {}: {text}", stage.describe()),
        ),
        Some(code) => (
            OutcomeClass::Permanent,
            format!("SMTP {code} {}: {text}", stage.describe()),
        ),
        None if *stage == SmtpStage::Accepted => (OutcomeClass::Success, String::new()),
        None if *misconfigured => (
            OutcomeClass::Permanent,
            format!("SMTP server {}: {text}", stage.describe()),
        ),
        None if *stage == SmtpStage::Content => (
            OutcomeClass::Ambiguous,
            if *timed_out {
                "no SMTP reply in time after the message was sent; the server may have queued it"
                    .to_owned()
            } else {
                format!(
                    "SMTP connection lost after the message was sent ({text}); the server may have queued it"
                )
            },
        ),
        None if *timed_out => (
            OutcomeClass::Retryable,
            format!("SMTP server did not answer in time {}", stage.describe()),
        ),
        None => (
            OutcomeClass::Retryable,
            format!("SMTP {}: {text}", stage.describe()),
        ),
    };
    let mut outcome = Outcome::new(class);
    if class != OutcomeClass::Success {
        outcome.error = Some(error);
    }
    outcome
}

/// `<key@domain>`: the delivery's Message-ID, the same on every attempt.
pub fn email_message_id(idempotency_key: &str, domain: &str) -> String {
    format!("<{idempotency_key}@{domain}>")
}

/// The MIME boundary, derived from the key (not random), so every attempt
/// sends the same bytes; a hash, so no text of the message contains it.
fn email_boundary(idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("=_herald_{hex}")
}

/// Email's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Email's default template, for the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// What a template gives an email: the subject, the plain text and the
/// HTML alternative (`None`: plain text only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// The content of `delivery`'s email, rendered by the destination's
/// template (or the default): `{"subject", "text", "html"}`.
pub fn render_email_content(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<EmailContent, TemplateError> {
    let value = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let refuse = |reason: &str| TemplateError {
        line: None,
        reason: format!(
            "{reason}; the output is {{\"subject\": ..., \"text\": ..., \"html\": ...}}"
        ),
    };
    let Some(object) = value.as_object() else {
        return Err(refuse("the output must be a JSON object"));
    };
    let text_of = |field: &str| match object.get(field) {
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(_) => Err(refuse(&format!("\"{field}\" must be a string"))),
    };
    let subject = text_of("subject")?.unwrap_or_default();
    if subject.trim().is_empty() {
        return Err(refuse("\"subject\" must be a non-empty string"));
    }
    if subject.contains(['\r', '\n']) {
        return Err(refuse("\"subject\" must be one line"));
    }
    let Some(text) = text_of("text")? else {
        return Err(refuse("\"text\" (the plain-text part) is required"));
    };
    Ok(EmailContent {
        subject,
        text,
        html: text_of("html")?,
    })
}

/// The whole message, as it goes after DATA; its Message-ID's right-hand
/// side is the sender's domain.
pub fn email_message(
    delivery: &ClaimedDelivery,
    content: &EmailContent,
    from: &Mailbox,
    to: &[Mailbox],
    cc: &[Mailbox],
) -> Result<lettre::Message, String> {
    let domain = from.email.domain();
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .subject(content.subject.clone())
        .message_id(Some(email_message_id(&delivery.idempotency_key, domain)))
        // The accept time: every attempt of the message is the same text.
        .date(
            SystemTime::UNIX_EPOCH
                + Duration::from_millis(delivery.broadcast_created_at_ms.max(0) as u64),
        )
        // RFC 3834: automatic mail; auto-responders do not answer it.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ));
    for mailbox in to {
        builder = builder.to(mailbox.clone());
    }
    for mailbox in cc {
        builder = builder.cc(mailbox.clone());
    }
    if let (Some(_), Some(first)) = (delivery.message.thread(), &delivery.thread_ref) {
        let first = format!("<{first}>");
        builder = builder.in_reply_to(first.clone()).references(first);
    }
    let built = match &content.html {
        Some(html) => builder.multipart(
            MultiPart::alternative()
                .boundary(email_boundary(&delivery.idempotency_key))
                .singlepart(SinglePart::plain(content.text.clone()))
                .singlepart(SinglePart::html(html.clone())),
        ),
        None => builder.singlepart(SinglePart::plain(content.text.clone())),
    };
    built.map_err(|e| format!("the message could not be built: {e}"))
}

/// The message of `delivery` as it goes after DATA, for `herald preview`:
/// the same function a send calls, with the addresses as configured.
pub fn preview_message(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    from: &str,
    to: &[String],
    cc: &[String],
) -> Result<String, String> {
    let content =
        render_email_content(rendering, delivery).map_err(|e| format!("the destination's {e}"))?;
    let list = |addresses: &[String]| -> Vec<Mailbox> {
        addresses.iter().map(|a| parse_mailbox(a)).collect()
    };
    let message = email_message(
        delivery,
        &content,
        &parse_mailbox(from),
        &list(to),
        &list(cc),
    )?;
    Ok(String::from_utf8_lossy(&message.formatted()).into_owned())
}

/// The configured server and addresses; one connection per attempt.
pub struct EmailConnector {
    host: String,
    port: u16,
    security: SmtpSecurity,
    /// For STARTTLS or implicit TLS; `Err` when they could not be built
    /// (every send then fails permanently with the reason).
    tls: Result<Option<TlsParameters>, String>,
    credentials: Option<Credentials>,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    hello: ClientId,
    timeout: Duration,
    rendering: Rendering,
}

/// The settings an [`EmailConnector`] is built from.
pub struct EmailSettings<'a> {
    pub host: &'a str,
    pub port: u16,
    pub security: SmtpSecurity,
    pub login: Option<(&'a str, &'a str)>,
    /// Certificates (PEM) trusted besides the system's.
    pub ca_pem: Option<&'a str>,
    pub from: &'a str,
    pub to: &'a [String],
    pub cc: &'a [String],
    /// The destination's template and mentions.
    pub rendering: &'a Rendering,
}

/// The TLS settings for `host`: the platform's verifier, with `ca_pem`'s
/// certificates as extra roots.
fn tls_parameters(
    host: &str,
    ca_pem: Option<&str>,
) -> Result<TlsParameters, lettre::transport::smtp::Error> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(pem) = ca_pem {
        builder = builder.add_root_certificate(Certificate::from_pem(pem.as_bytes())?);
    }
    builder.build()
}

fn parse_mailbox(text: &str) -> Mailbox {
    // The config checked every address at load.
    Mailbox::from_str(text).unwrap_or_else(|_| {
        Mailbox::new(
            None,
            Address::from_str("invalid@invalid").expect("a valid address"),
        )
    })
}

impl EmailConnector {
    pub fn new(settings: EmailSettings<'_>, timeout: Duration) -> EmailConnector {
        let tls = match settings.security {
            SmtpSecurity::None => Ok(None),
            SmtpSecurity::StartTls | SmtpSecurity::Tls => {
                // The provider herald uses everywhere (ring).
                let _ = rustls::crypto::ring::default_provider().install_default();
                tls_parameters(settings.host, settings.ca_pem)
                    .map(Some)
                    .map_err(|e| format!("TLS settings for {}: {e}", settings.host))
            }
        };
        let from = parse_mailbox(settings.from);
        let hello = ClientId::Domain(from.email.domain().to_owned());
        EmailConnector {
            host: settings.host.to_owned(),
            port: settings.port,
            security: settings.security,
            tls,
            credentials: settings
                .login
                .map(|(user, password)| Credentials::new(user.to_owned(), password.to_owned())),
            from,
            to: settings.to.iter().map(|t| parse_mailbox(t)).collect(),
            cc: settings.cc.iter().map(|t| parse_mailbox(t)).collect(),
            hello,
            timeout,
            rendering: settings.rendering.clone(),
        }
    }

    /// The message of `delivery` as this destination sends it (its
    /// template, its addresses): the same bytes on every attempt.
    pub fn message(&self, delivery: &ClaimedDelivery) -> Result<lettre::Message, String> {
        let content = render_email_content(&self.rendering, delivery)
            .map_err(|e| format!("the destination's {e}; nothing was sent"))?;
        email_message(delivery, &content, &self.from, &self.to, &self.cc)
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, _now_ms: i64) -> Outcome {
        let message = match self.message(delivery) {
            Ok(message) => message,
            Err(error) => {
                let mut outcome = Outcome::new(OutcomeClass::Permanent);
                outcome.error = Some(error);
                return outcome;
            }
        };
        let stage = StageReached::new();
        let exchange = self.exchange(&message, &stage);
        let result = tokio::time::timeout(self.timeout, exchange).await;
        let (failure, reply) = match result {
            Ok(Ok(reply)) => (None, Some(reply)),
            Ok(Err(failure)) => (Some(failure), None),
            // A timeout after the server accepted (in QUIT) is a success.
            Err(_) if stage.get() == SmtpStage::Accepted => (None, None),
            Err(_) => (
                Some(SmtpFailure {
                    stage: stage.get(),
                    code: None,
                    text: format!("no answer within {} ms", self.timeout.as_millis()),
                    timed_out: true,
                    misconfigured: false,
                }),
                None,
            ),
        };
        match failure {
            Some(failure) => {
                let mut outcome = classify_email_failure(&failure);
                outcome.excerpt = excerpt(&failure.text);
                outcome
            }
            None => {
                let mut outcome = Outcome::new(OutcomeClass::Success);
                let domain = self.from.email.domain();
                let id = email_message_id(&delivery.idempotency_key, domain);
                outcome.remote_ref = Some(id.trim_matches(['<', '>']).to_owned());
                outcome.excerpt = reply.as_deref().and_then(excerpt);
                outcome
            }
        }
    }

    /// One SMTP session: connect (TLS), EHLO, STARTTLS, AUTH, MAIL, RCPT
    /// for each recipient, DATA, the content; `stage` says how far it got.
    /// Returns the server's reply to the content.
    async fn exchange(
        &self,
        message: &lettre::Message,
        stage: &StageReached,
    ) -> Result<String, SmtpFailure> {
        let fail = |error: lettre::transport::smtp::Error| smtp_failure(stage.get(), &error);
        let misconfigured = |text: String| SmtpFailure {
            stage: stage.get(),
            code: None,
            text,
            timed_out: false,
            misconfigured: true,
        };
        let tls = self.tls.clone().map_err(misconfigured)?;
        let wrapper = match self.security {
            SmtpSecurity::Tls => tls.clone(),
            SmtpSecurity::StartTls | SmtpSecurity::None => None,
        };
        let mut connection = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )
        .await
        .map_err(fail)?;
        if self.security == SmtpSecurity::StartTls {
            let Some(tls) = tls else {
                return Err(misconfigured("no TLS settings".to_owned()));
            };
            if !connection.can_starttls() {
                connection.abort().await;
                return Err(misconfigured(
                    "the server does not offer STARTTLS; set smtp_security = \"tls\" for port 465"
                        .to_owned(),
                ));
            }
            connection.starttls(tls, &self.hello).await.map_err(fail)?;
        }
        if let Some(credentials) = &self.credentials {
            if !connection
                .server_info()
                .supports_auth_mechanism(Mechanism::Plain)
                && !connection
                    .server_info()
                    .supports_auth_mechanism(Mechanism::Login)
            {
                connection.abort().await;
                return Err(misconfigured(
                    "the server offers neither AUTH PLAIN nor LOGIN".to_owned(),
                ));
            }
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(fail)?;
        }
        stage.set(SmtpStage::Envelope);
        let content = message.formatted();
        let envelope = message.envelope();
        let mut options = Vec::new();
        if !content.is_ascii() {
            if !connection
                .server_info()
                .supports_feature(Extension::EightBitMime)
            {
                connection.abort().await;
                return Err(misconfigured(
                    "the message is 8-bit and the server does not offer 8BITMIME".to_owned(),
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        connection
            .command(Mail::new(envelope.from().cloned(), options))
            .await
            .map_err(fail)?;
        for recipient in envelope.to() {
            connection
                .command(Rcpt::new(recipient.clone(), Vec::new()))
                .await
                .map_err(|error| {
                    let mut failure = fail(error);
                    failure.text = format!("recipient {recipient}: {}", failure.text);
                    failure
                })?;
        }
        connection.command(Data).await.map_err(fail)?;
        stage.set(SmtpStage::Content);
        let reply = connection.message(&content).await.map_err(fail)?;
        stage.set(SmtpStage::Accepted);
        let reply = format!(
            "{} {}",
            reply.code(),
            reply.message().collect::<Vec<_>>().join(" ")
        );
        let _ =
            tokio::time::timeout(Duration::from_millis(QUIT_TIMEOUT_MS), connection.quit()).await;
        Ok(reply)
    }

    /// SMTP has no read-back: the next send may deliver the message twice
    /// (with the same Message-ID, which mail clients fold).
    pub async fn verify(&self, _delivery: &ClaimedDelivery) -> VerifyReport {
        VerifyReport::unknown(
            "an SMTP server cannot be asked whether it queued a message; sending again with the same Message-ID, which mail clients fold",
            true,
        )
    }
}

/// A lettre error at `stage` as plain values.
fn smtp_failure(stage: SmtpStage, error: &lettre::transport::smtp::Error) -> SmtpFailure {
    let code = error.status().map(|code| {
        let text = code.to_string();
        text.parse::<u16>().unwrap_or(0)
    });
    // lettre's text for a negative reply is "permanent error (550): ...";
    // the code is shown once, by the classification.
    let text = match (code, std::error::Error::source(error)) {
        (Some(_), Some(source)) => source.to_string(),
        _ => error.to_string(),
    };
    SmtpFailure {
        stage,
        code,
        text,
        timed_out: error.is_timeout(),
        misconfigured: error.is_client(),
    }
}

fn excerpt(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut end = text.len().min(EXCERPT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryProgress, Message, RetryPolicy, Severity};
    use crate::domain::{Field, Link, MessageDetails};

    /// The content as the code built it before the default template, to
    /// hold the template to it.
    mod before_the_template {
        use std::fmt::Write as _;

        use crate::connector::shared::Role;
        use crate::domain::ClaimedDelivery;

        /// The subject line: severity, thread and title (`[RESOLVED]` for a
        /// resolve).
        pub(super) fn email_subject(delivery: &ClaimedDelivery) -> String {
            let m = &delivery.message;
            match (Role::of(delivery), m.thread()) {
                (Role::Resolve, Some(thread)) => format!("[RESOLVED] {thread}: {}", m.title()),
                (Role::Resolve, None) => format!("[RESOLVED] {}", m.title()),
                (Role::Update, Some(thread)) => {
                    format!("[{}] {thread} update: {}", m.severity().as_str(), m.title())
                }
                (_, Some(thread)) => format!("[{}] {thread}: {}", m.severity().as_str(), m.title()),
                (_, None) => format!("[{}] {}", m.severity().as_str(), m.title()),
            }
        }

        /// The facts shown under the body, in order: (name, value).
        fn facts(delivery: &ClaimedDelivery) -> Vec<(String, String)> {
            let m = &delivery.message;
            let details = m.details();
            let status = match Role::of(delivery) {
                Role::Single | Role::Opener => "open",
                Role::Update => "update",
                Role::Resolve => "resolved",
            };
            let mut facts = vec![
                ("Severity".to_owned(), m.severity().as_str().to_owned()),
                ("Status".to_owned(), status.to_owned()),
            ];
            if let Some(thread) = m.thread() {
                facts.push(("Incident".to_owned(), thread.to_owned()));
            }
            if let Some(source) = &details.source {
                facts.push(("Source".to_owned(), source.clone()));
            }
            for field in &details.fields {
                facts.push((field.name.clone(), field.value.clone()));
            }
            if !details.labels.is_empty() {
                let labels: Vec<String> = details
                    .labels
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect();
                facts.push(("Labels".to_owned(), labels.join(", ")));
            }
            facts.push(("Broadcast".to_owned(), delivery.broadcast_id.clone()));
            facts
        }

        /// The plain-text part: subject, summary, body, facts, links.
        pub(super) fn email_text_body(delivery: &ClaimedDelivery) -> String {
            let m = &delivery.message;
            let mut text = email_subject(delivery);
            text.push_str("\n\n");
            if let Some(summary) = &m.details().summary {
                text.push_str(summary);
                text.push_str("\n\n");
            }
            if !m.body().trim().is_empty() {
                text.push_str(m.body().trim_end());
                text.push_str("\n\n");
            }
            for (name, value) in facts(delivery) {
                let _ = writeln!(text, "{name}: {value}");
            }
            if !m.details().links.is_empty() {
                text.push_str("\nLinks:\n");
                for link in &m.details().links {
                    let _ = writeln!(text, "- {}: {}", link.text, link.url);
                }
            }
            text
        }

        /// Text as HTML: `&`, `<`, `>`, `"` and `'` escaped.
        fn html_escape(text: &str) -> String {
            let mut escaped = String::with_capacity(text.len());
            for c in text.chars() {
                match c {
                    '&' => escaped.push_str("&amp;"),
                    '<' => escaped.push_str("&lt;"),
                    '>' => escaped.push_str("&gt;"),
                    '"' => escaped.push_str("&quot;"),
                    '\'' => escaped.push_str("&#39;"),
                    c => escaped.push(c),
                }
            }
            escaped
        }

        /// The HTML alternative: the same content as the text part, every value
        /// escaped (links are http(s) URLs, checked when the message came in).
        pub(super) fn email_html_body(delivery: &ClaimedDelivery) -> String {
            let m = &delivery.message;
            let color = match (Role::of(delivery), m.severity().as_str()) {
                (Role::Resolve, _) => "#2e7d32",
                (_, "P1" | "P2") => "#c62828",
                (_, "P3") => "#ef6c00",
                _ => "#455a64",
            };
            let mut html = String::from("<!DOCTYPE html>\n<html><body>\n");
            let _ = writeln!(
                html,
                "<h2 style=\"color:{color}\">{}</h2>",
                html_escape(&email_subject(delivery))
            );
            if let Some(summary) = &m.details().summary {
                let _ = writeln!(html, "<p><strong>{}</strong></p>", html_escape(summary));
            }
            if !m.body().trim().is_empty() {
                let _ = writeln!(
                    html,
                    "<pre style=\"white-space:pre-wrap;font-family:inherit\">{}</pre>",
                    html_escape(m.body().trim_end())
                );
            }
            html.push_str("<table>\n");
            for (name, value) in facts(delivery) {
                let _ = writeln!(
                    html,
                    "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                    html_escape(&name),
                    html_escape(&value)
                );
            }
            html.push_str("</table>\n");
            if !m.details().links.is_empty() {
                html.push_str("<ul>\n");
                for link in &m.details().links {
                    let _ = writeln!(
                        html,
                        "<li><a href=\"{}\">{}</a></li>",
                        html_escape(&link.url),
                        html_escape(&link.text)
                    );
                }
                html.push_str("</ul>\n");
            }
            html.push_str("</body></html>\n");
            html
        }
    }

    fn delivery(message: Message, thread_ref: Option<&str>) -> ClaimedDelivery {
        ClaimedDelivery {
            delivery_id: 1,
            broadcast_id: "01JBROADCAST".into(),
            destination: "email-oncall".into(),
            idempotency_key: "01JBROADCAST-email-oncall".into(),
            progress: DeliveryProgress::new(&RetryPolicy::default(), false, 0),
            message,
            broadcast_created_at_ms: 1_700_000_000_000,
            last_error: None,
            lease_epoch: 1,
            thread_ref: thread_ref.map(str::to_owned),
            remote_ref: None,
        }
    }

    fn mailbox(text: &str) -> Mailbox {
        Mailbox::from_str(text).unwrap()
    }

    fn formatted(delivery: &ClaimedDelivery) -> String {
        let content = render_email_content(&Rendering::default(), delivery).unwrap();
        let message = email_message(
            delivery,
            &content,
            &mailbox("Herald <herald@alerts.example.com>"),
            &[mailbox("oncall@example.com")],
            &[],
        )
        .unwrap();
        String::from_utf8(message.formatted()).unwrap()
    }

    fn failure(stage: SmtpStage, code: Option<u16>, timed_out: bool) -> SmtpFailure {
        SmtpFailure {
            stage,
            code,
            text: "text".into(),
            timed_out,
            misconfigured: false,
        }
    }

    #[test]
    fn replies_and_lost_connections_map_to_outcome_classes() {
        use OutcomeClass::*;
        use SmtpStage::*;
        let class =
            |stage, code, timed_out| classify_email_failure(&failure(stage, code, timed_out)).class;
        // 4xx retryable, 5xx permanent, wherever they come.
        for stage in [Connect, Envelope, Content] {
            assert_eq!(class(stage, Some(421), false), RateLimited);
            assert_eq!(class(stage, Some(450), false), Retryable);
            assert_eq!(class(stage, Some(451), false), Retryable);
            assert_eq!(class(stage, Some(550), false), Permanent);
            assert_eq!(class(stage, Some(554), false), Permanent);
        }
        // Without a reply: nothing at the server before the content,
        // maybe queued after it.
        assert_eq!(class(Connect, None, false), Retryable);
        assert_eq!(class(Envelope, None, true), Retryable);
        assert_eq!(class(Content, None, false), Ambiguous);
        assert_eq!(class(Content, None, true), Ambiguous);
        assert_eq!(class(Accepted, None, true), Success);
        let mut no_starttls = failure(Connect, None, false);
        no_starttls.misconfigured = true;
        assert_eq!(classify_email_failure(&no_starttls).class, Permanent);
        let error = classify_email_failure(&failure(Content, Some(552), false))
            .error
            .unwrap();
        assert_eq!(error, "SMTP 552 after the message was sent: text");
    }

    #[test]
    fn the_message_id_is_the_key_on_every_attempt_and_updates_reply_to_the_first() {
        let opener = Message::new("Checkout failing", "", Severity::P1, Some("INC-1")).unwrap();
        let first = formatted(&delivery(opener.clone(), None));
        assert!(
            first.contains("Message-ID: <01JBROADCAST-email-oncall@alerts.example.com>\r\n"),
            "{first}"
        );
        assert!(!first.contains("In-Reply-To"), "{first}");
        assert_eq!(
            first,
            formatted(&delivery(opener, None)),
            "every attempt is the same text"
        );

        let update = Message::new("Rolled back", "", Severity::P1, Some("INC-1")).unwrap();
        let later = formatted(&delivery(
            update,
            Some("01JFIRST-email-oncall@alerts.example.com"),
        ));
        assert!(later.contains("In-Reply-To: <01JFIRST-email-oncall@alerts.example.com>\r\n"));
        assert!(later.contains("References: <01JFIRST-email-oncall@alerts.example.com>\r\n"));
        assert!(
            later.contains("Subject: [P1] INC-1 update: Rolled back\r\n"),
            "{later}"
        );
        assert!(later.contains("Content-Type: multipart/alternative"));
        assert!(later.contains("Auto-Submitted: auto-generated\r\n"));
    }

    #[test]
    fn both_parts_show_the_details_and_the_html_is_escaped() {
        let details = MessageDetails {
            labels: [("service".to_owned(), "checkout".to_owned())].into(),
            links: vec![Link {
                text: "Runbook".into(),
                url: "https://runbooks.example.com/checkout?a=1&b=2".into(),
            }],
            fields: vec![Field {
                name: "Region".into(),
                value: "eu-west-1".into(),
            }],
            source: Some("alertmanager/ops".into()),
            summary: Some("Checkout 5xx above 5%".into()),
        };
        let message = Message::new(
            "<b>Checkout</b> & co",
            "Errors since 10:02.",
            Severity::P2,
            None,
        )
        .unwrap()
        .with_details(details)
        .unwrap();
        let d = delivery(message, None);
        let content = render_email_content(&Rendering::default(), &d).unwrap();
        let text = content.text;
        for part in [
            "[P2] <b>Checkout</b> & co",
            "Checkout 5xx above 5%",
            "Errors since 10:02.",
            "Severity: P2",
            "Source: alertmanager/ops",
            "Region: eu-west-1",
            "Labels: service=checkout",
            "- Runbook: https://runbooks.example.com/checkout?a=1&b=2",
            "Broadcast: 01JBROADCAST",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        let html = content.html.unwrap();
        assert!(
            html.contains("[P2] &lt;b&gt;Checkout&lt;/b&gt; &amp; co"),
            "{html}"
        );
        assert!(!html.contains("<b>Checkout"), "{html}");
        assert!(html.contains("href=\"https://runbooks.example.com/checkout?a=1&amp;b=2\""));
        assert!(html.contains("<th align=\"left\">Region</th><td>eu-west-1</td>"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_names_no_password() {
        // Nothing listens on port 1: the connect fails before anything.
        let connector = EmailConnector::new(
            EmailSettings {
                host: "127.0.0.1",
                port: 1,
                security: SmtpSecurity::None,
                login: Some(("herald", "PASSWORD-NEVER-SHOWN")),
                ca_pem: None,
                from: "herald@example.com",
                to: &["oncall@example.com".to_owned()],
                cc: &[],
                rendering: &Rendering::default(),
            },
            Duration::from_millis(500),
        );
        let message = Message::new("t", "", Severity::P1, None).unwrap();
        let outcome = connector.send(&delivery(message, None), 0).await;
        assert_eq!(outcome.class, OutcomeClass::Retryable, "{outcome:?}");
        let error = outcome.error.unwrap();
        assert!(error.starts_with("SMTP while connecting"), "{error}");
        assert!(!error.contains("PASSWORD"), "{error}");
    }

    /// Messages a default must render as the code did before: the
    /// template's samples in every role, and the edges (no body, a body
    /// that starts indented and ends in blank lines, HTML's special
    /// characters, a resolve).
    fn plain_messages() -> Vec<ClaimedDelivery> {
        let mut all = crate::template::sample_deliveries();
        let plain = |title: &str, body: &str, severity, thread, resolved| {
            let mut message = Message::new(title, body, severity, thread).unwrap();
            if resolved {
                message = message.resolving(true).unwrap();
            }
            message
        };
        for (message, thread_ref) in [
            (plain("Disk full", "", Severity::P3, None, false), None),
            (
                plain(
                    "Quotes \"a\" & 'b' <c>",
                    "  indented first line\n\tand a tab & <tag>\n\n\n",
                    Severity::P1,
                    Some("INC-7"),
                    false,
                ),
                None,
            ),
            (
                plain("Back", "Fixed.", Severity::P4, Some("INC-7"), false),
                Some("01JFIRST-email-oncall@alerts.example.com"),
            ),
            (
                plain("Recovered", "Done. ", Severity::P2, Some("INC-8"), true),
                Some("01JFIRST-email-oncall@alerts.example.com"),
            ),
            (plain("Low", "x", Severity::P5, None, false), None),
        ] {
            all.push(delivery(message, thread_ref));
        }
        all
    }

    #[test]
    fn the_default_template_gives_what_the_code_gave_before_it() {
        for d in plain_messages() {
            let content = render_email_content(&Rendering::default(), &d).unwrap();
            assert_eq!(content.subject, before_the_template::email_subject(&d));
            assert_eq!(content.text, before_the_template::email_text_body(&d));
            assert_eq!(
                content.html.as_deref(),
                Some(before_the_template::email_html_body(&d).as_str())
            );
        }
    }

    #[test]
    fn a_mention_shows_on_the_opener_only() {
        let rendering = Rendering {
            template: None,
            mentions: crate::template::Mentions::parse([("P1", "@oncall <ops>")]).unwrap(),
        };
        let opener =
            Message::new("Checkout failing", "Down.", Severity::P1, Some("INC-1")).unwrap();
        let content = render_email_content(&rendering, &delivery(opener.clone(), None)).unwrap();
        assert!(
            content
                .text
                .starts_with("[P1] INC-1: Checkout failing\n\n@oncall <ops>\n\nDown.\n"),
            "{}",
            content.text
        );
        assert!(content
            .html
            .unwrap()
            .contains("<p><strong>@oncall &lt;ops&gt;</strong></p>"));
        let update = render_email_content(&rendering, &delivery(opener, Some("FIRST@x"))).unwrap();
        assert!(!update.text.contains("@oncall"), "{}", update.text);
    }

    #[test]
    fn a_template_sets_the_content_and_never_the_headers_the_thread_needs() {
        let template = crate::template::Template::compile(
            r#"{"subject": {{ ("Alert: " ~ title)|tojson }}, "text": {{ body|tojson }}, "html": null, "Message-ID": "<forged@example.com>"}"#,
        )
        .unwrap();
        let rendering = Rendering {
            template: Some(template),
            mentions: Default::default(),
        };
        let update = Message::new("Rolled back", "All good.", Severity::P2, Some("INC-1")).unwrap();
        let d = delivery(update, Some("01JFIRST-email-oncall@alerts.example.com"));
        let content = render_email_content(&rendering, &d).unwrap();
        assert_eq!(
            content,
            EmailContent {
                subject: "Alert: Rolled back".into(),
                text: "All good.".into(),
                html: None,
            }
        );
        let text = String::from_utf8(
            email_message(
                &d,
                &content,
                &mailbox("herald@alerts.example.com"),
                &[mailbox("oncall@example.com")],
                &[],
            )
            .unwrap()
            .formatted(),
        )
        .unwrap();
        assert!(text.contains("Subject: Alert: Rolled back\r\n"), "{text}");
        assert!(text.contains("Message-ID: <01JBROADCAST-email-oncall@alerts.example.com>\r\n"));
        assert!(text.contains("In-Reply-To: <01JFIRST-email-oncall@alerts.example.com>\r\n"));
        assert!(!text.contains("forged"), "{text}");
        assert!(text.contains("Content-Type: text/plain"), "{text}");
        assert!(!text.contains("multipart"), "no HTML: one part\n{text}");
    }

    #[test]
    fn a_template_output_without_a_subject_or_text_fails_naming_the_field() {
        for (source, expected) in [
            (r#"{"text": "t"}"#, "\"subject\" must be a non-empty string"),
            (
                r#"{"subject": "s\nBcc: x@example.com", "text": "t"}"#,
                "\"subject\" must be one line",
            ),
            (
                r#"{"subject": "s"}"#,
                "\"text\" (the plain-text part) is required",
            ),
            (
                r#"{"subject": "s", "text": 7}"#,
                "\"text\" must be a string",
            ),
            (r#"["s"]"#, "the output must be a JSON object"),
        ] {
            let rendering = Rendering {
                template: Some(crate::template::Template::compile(source).unwrap()),
                mentions: Default::default(),
            };
            let message = Message::new("t", "", Severity::P1, None).unwrap();
            let error = render_email_content(&rendering, &delivery(message, None))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{source}: {error}");
        }
    }
}
