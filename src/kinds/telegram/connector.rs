//! Telegram through the Bot API (`telegram-bot-api.api.json`):
//! `sendMessage` (`POST {api}/bot{token}/sendMessage`, JSON) to the
//! configured chat, into its forum topic (`message_thread_id`) when one is
//! configured. The text comes from the destination's template (the
//! default, `template.json.j2`: plain text for a plain message, HTML for
//! one with a mention, fields, links or a source). A thread's later
//! messages reply to its first
//! (`reply_parameters` with `allow_sending_without_reply`, so a deleted
//! first message does not block them); a resolve first edits the first
//! message (`editMessageText`, idempotent: "message is not modified" is
//! fine), then replies. The `message_id` is the delivery's `remote_ref`.
//!
//! The Bot API has no idempotency key and no way to read a chat's history,
//! so after an ambiguous send the message is sent again and the delivery
//! flagged `possible_duplicate`.
//!
//! Classification ([`classify_telegram_response`]): `ok: true` success;
//! `error_code` 429 rate limited with `parameters.retry_after` seconds;
//! 5xx retryable; 400 (chat not found, text too long, a group migrated to a
//! supergroup), 401, 403 (the bot was blocked or removed) and 404 (a wrong
//! token) permanent, with Telegram's `description`.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Secret;
use crate::connector::http::{cut_chars, exchange, status_class, Reply};
use crate::connector::shared::{Role, VerifyReport};
use crate::domain::{ClaimedDelivery, Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

/// "Text of the message to be sent, 1-4096 characters after entities
/// parsing."
pub const TELEGRAM_TEXT_CHARS_MAX: usize = 4_096;

pub struct TelegramConnector {
    client: reqwest::Client,
    /// The Bot API's base, `https://api.telegram.org/`.
    api_url: reqwest::Url,
    token: Secret,
    chat_id: String,
    message_thread_id: Option<i64>,
    rendering: Rendering,
}

/// A chat id as Telegram takes it: an integer, or `@username` text.
fn chat_id_value(chat_id: &str) -> Value {
    match chat_id.parse::<i64>() {
        Ok(id) => json!(id),
        Err(_) => json!(chat_id),
    }
}

/// Telegram's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Telegram's default template, for `herald preview` and the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The `sendMessage` body of a delivery with the default template and no
/// mentions. See [`render_send_message_body`].
pub fn telegram_send_message_body(
    delivery: &ClaimedDelivery,
    chat_id: &str,
    message_thread_id: Option<i64>,
) -> Value {
    render_send_message_body(&Rendering::default(), delivery, chat_id, message_thread_id)
        .expect("the default template renders every valid message")
}

/// The `sendMessage` body of a delivery: the destination's template
/// renders the text (and its `parse_mode`, `entities`, ...); then, so a
/// template cannot change them, the chat, the forum topic and the reply to
/// the thread's first message are set here, and link previews are off
/// unless the template says otherwise. A plain text (no `parse_mode`, no
/// `entities`) is cut at Telegram's 4096 characters; an HTML one cannot
/// be cut safely, so one longer than that after entities parsing is an
/// error.
pub fn render_send_message_body(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    chat_id: &str,
    message_thread_id: Option<i64>,
) -> Result<Value, TemplateError> {
    let mut body = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(object) = body.as_object_mut() else {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (sendMessage's parameters)".into(),
        });
    };
    let Some(text) = object.get("text").and_then(Value::as_str) else {
        return Err(TemplateError {
            line: None,
            reason: "the output needs \"text\" as text (the message's text)".into(),
        });
    };
    if text.trim().is_empty() {
        return Err(TemplateError {
            line: None,
            reason: "the output's \"text\" is empty; Telegram takes 1-4096 characters".into(),
        });
    }
    let parse_mode = object.get("parse_mode").and_then(Value::as_str);
    let text = match parse_mode {
        None if object.get("entities").is_none() => cut_chars(text, TELEGRAM_TEXT_CHARS_MAX),
        Some(mode) if mode.eq_ignore_ascii_case("html") => {
            let shown = html_text_chars(text);
            if shown > TELEGRAM_TEXT_CHARS_MAX {
                return Err(TemplateError {
                    line: None,
                    reason: format!(
                        "the output's \"text\" is {shown} characters after entities parsing; Telegram takes 1-{TELEGRAM_TEXT_CHARS_MAX}: cut its parts"
                    ),
                });
            }
            text.to_owned()
        }
        _ => text.to_owned(),
    };
    object.insert("text".into(), json!(text));
    object.insert("chat_id".into(), chat_id_value(chat_id));
    object
        .entry("link_preview_options")
        .or_insert(json!({"is_disabled": true}));
    match message_thread_id {
        Some(topic) => object.insert("message_thread_id".into(), json!(topic)),
        None => object.remove("message_thread_id"),
    };
    match delivery
        .thread_ref
        .as_deref()
        .and_then(|r| r.parse::<i64>().ok())
    {
        Some(first) => object.insert(
            "reply_parameters".into(),
            json!({"message_id": first, "allow_sending_without_reply": true}),
        ),
        None => object.remove("reply_parameters"),
    };
    // Another chat or a business connection would be a message elsewhere.
    object.remove("business_connection_id");
    object.remove("direct_messages_topic_id");
    Ok(body)
}

/// The characters an HTML text shows once Telegram has parsed it: tags
/// dropped, each entity (`&lt;`, `&#60;`, ...) one character.
pub fn html_text_chars(text: &str) -> usize {
    let mut shown = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '<' => {
                for c in chars.by_ref() {
                    if c == '>' {
                        break;
                    }
                }
            }
            '&' => {
                let mut rest = chars.clone();
                let mut entity_len = 0;
                let mut closed = false;
                for c in rest.by_ref() {
                    entity_len += 1;
                    if c == ';' {
                        closed = true;
                        break;
                    }
                    if !(c.is_ascii_alphanumeric() || c == '#') || entity_len > 10 {
                        break;
                    }
                }
                if closed {
                    for _ in 0..entity_len {
                        chars.next();
                    }
                }
                shown += 1;
            }
            _ => shown += 1,
        }
    }
    shown
}

/// The `editMessageText` body that marks the thread's first message
/// resolved.
pub fn telegram_resolve_edit_body(delivery: &ClaimedDelivery, chat_id: &str, first: i64) -> Value {
    let thread = delivery.message.thread().unwrap_or_default();
    json!({
        "chat_id": chat_id_value(chat_id),
        "message_id": first,
        "text": cut_chars(
            &format!("[RESOLVED] {thread}\n{}", delivery.message.title()),
            TELEGRAM_TEXT_CHARS_MAX
        ),
        "link_preview_options": {"is_disabled": true},
    })
}

/// Telegram's answer in outcome classes.
pub fn classify_telegram_response(status: u16, body: &[u8]) -> Outcome {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let ok = json.as_ref().and_then(|j| j["ok"].as_bool());
    let code = json
        .as_ref()
        .and_then(|j| j["error_code"].as_u64())
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(status);
    let description = json
        .as_ref()
        .and_then(|j| j["description"].as_str())
        .unwrap_or("")
        .to_owned();
    let class = match (ok, status_class(status)) {
        (Some(true), OutcomeClass::Success) => OutcomeClass::Success,
        // A 2xx whose body does not say ok: the answer is unreadable.
        (_, OutcomeClass::Success) => OutcomeClass::Ambiguous,
        _ => status_class(code),
    };
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    match class {
        OutcomeClass::Success => {
            outcome.remote_ref = json
                .as_ref()
                .and_then(|j| j["result"]["message_id"].as_i64())
                .map(|id| id.to_string());
        }
        OutcomeClass::Ambiguous => {
            outcome.error = Some(format!(
                "HTTP {status} from Telegram without ok: true; it may have sent the message"
            ));
        }
        OutcomeClass::RateLimited => {
            outcome.retry_after_ms = json
                .as_ref()
                .and_then(|j| j["parameters"]["retry_after"].as_u64())
                .map(|secs| secs.saturating_mul(1000));
            outcome.error = Some(format!("Telegram error {code}: {description}"));
        }
        OutcomeClass::Retryable => {
            outcome.error = Some(format!("Telegram error {code}: {description}"));
        }
        OutcomeClass::Permanent => {
            let migrated = json
                .as_ref()
                .and_then(|j| j["parameters"]["migrate_to_chat_id"].as_i64());
            let hint = match (code, migrated) {
                (_, Some(to)) => {
                    format!("; the group is now the supergroup {to}: set chat_id = \"{to}\"")
                }
                (401 | 404, _) => "; check the bot token (secret_env)".to_owned(),
                (403, _) => {
                    "; the bot may not post in the chat (blocked, or not a member)".to_owned()
                }
                _ => String::new(),
            };
            outcome.error = Some(format!("Telegram error {code}: {description}{hint}"));
        }
    }
    outcome
}

impl TelegramConnector {
    pub fn new(
        api_url: reqwest::Url,
        token: Secret,
        chat_id: String,
        message_thread_id: Option<i64>,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<TelegramConnector> {
        Ok(TelegramConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            api_url,
            token,
            chat_id,
            message_thread_id,
            rendering,
        })
    }

    fn method_url(&self, method: &str) -> reqwest::Url {
        let mut url = self.api_url.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .push(&format!("bot{}", self.token.expose()))
            .push(method);
        url
    }

    fn classify(reply: &Reply) -> Outcome {
        let mut outcome = classify_telegram_response(reply.status, &reply.body);
        outcome.excerpt = reply.excerpt();
        outcome
    }

    /// Edits the thread's first message; `Err` with the outcome when the
    /// edit must be tried again (rate limit, server error, no answer).
    async fn edit_first(&self, delivery: &ClaimedDelivery, first: i64) -> Result<(), Outcome> {
        let request = self
            .client
            .post(self.method_url("editMessageText"))
            .json(&telegram_resolve_edit_body(delivery, &self.chat_id, first));
        let outcome = match exchange(request).await {
            Ok(reply) => Self::classify(&reply),
            Err(outcome) => outcome,
        };
        match outcome.class {
            // Done, already done ("message is not modified"), or the first
            // message is gone or too old to edit: the reply still goes.
            OutcomeClass::Success | OutcomeClass::Permanent
                if outcome.http_status != Some(401) && outcome.http_status != Some(404) =>
            {
                Ok(())
            }
            // An ambiguous edit is safe to repeat.
            OutcomeClass::Ambiguous => Err(Outcome {
                class: OutcomeClass::Retryable,
                ..outcome
            }),
            _ => Err(outcome),
        }
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, _now_ms: i64) -> Outcome {
        // Rendered before anything is sent (the edit included): a template
        // that fails sends nothing, and fails this delivery alone.
        let body = match render_send_message_body(
            &self.rendering,
            delivery,
            &self.chat_id,
            self.message_thread_id,
        ) {
            Ok(body) => body,
            Err(error) => return render_failed(&error),
        };
        let first = delivery
            .thread_ref
            .as_deref()
            .and_then(|r| r.parse::<i64>().ok());
        if let (Role::Resolve, Some(first)) = (Role::of(delivery), first) {
            if let Err(outcome) = self.edit_first(delivery, first).await {
                return outcome;
            }
        }
        let request = self.client.post(self.method_url("sendMessage")).json(&body);
        match exchange(request).await {
            Ok(reply) => Self::classify(&reply),
            Err(outcome) => outcome,
        }
    }

    /// The Bot API cannot read a chat back: the re-send may show twice.
    pub async fn verify(&self, _delivery: &ClaimedDelivery) -> VerifyReport {
        VerifyReport::unknown(
            "the Telegram Bot API has no idempotency key and cannot read a chat back; sending again, which may show the message twice",
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_is_checked_against_what_telegram_takes() {
        let delivery = crate::template::sample_delivery("tg", false, None);
        let with = |source: &str| Rendering {
            template: Some(Template::compile(source).unwrap()),
            mentions: Default::default(),
        };
        let error = |source: &str| {
            render_send_message_body(&with(source), &delivery, "-1", None)
                .unwrap_err()
                .reason
        };
        assert!(error(r#"{"txt": "x"}"#).contains("\"text\""));
        assert!(error(r#"{"text": " "}"#).contains("empty"));
        // HTML over 4096 characters once parsed cannot be cut: refused.
        let long = r#"{"text": {{ ("<b>" ~ "x" * 4097 ~ "</b>")|tojson }}, "parse_mode": "HTML"}"#;
        assert!(error(long).contains("4097 characters after entities parsing"));
        let fits =
            r#"{"text": {{ ("<b>" ~ "&amp;" * 4096 ~ "</b>")|tojson }}, "parse_mode": "HTML"}"#;
        assert!(render_send_message_body(&with(fits), &delivery, "-1", None).is_ok());
        // Plain text is cut at 4096.
        let plain = r#"{"text": {{ ("x" * 5000)|tojson }}}"#;
        let body = render_send_message_body(&with(plain), &delivery, "-1", None).unwrap();
        assert_eq!(body["text"].as_str().unwrap().chars().count(), 4096);
    }

    #[test]
    fn telegram_answers_map_to_outcome_classes() {
        let sent = classify_telegram_response(
            200,
            br#"{"ok":true,"result":{"message_id":42,"date":1764000000,"chat":{"id":-1001234567890,"type":"supergroup"},"text":"hi"}}"#,
        );
        assert_eq!(sent.class, OutcomeClass::Success);
        assert_eq!(sent.remote_ref.as_deref(), Some("42"));
        let limited = classify_telegram_response(
            429,
            br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
        );
        assert_eq!(
            (limited.class, limited.retry_after_ms),
            (OutcomeClass::RateLimited, Some(7_000))
        );
        let no_chat = classify_telegram_response(
            400,
            br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        );
        assert_eq!(no_chat.class, OutcomeClass::Permanent);
        assert!(no_chat.error.unwrap().contains("chat not found"));
        let migrated = classify_telegram_response(
            400,
            br#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1009876543210}}"#,
        );
        assert!(migrated
            .error
            .unwrap()
            .contains("chat_id = \"-1009876543210\""));
        let blocked = classify_telegram_response(
            403,
            br#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
        );
        assert_eq!(blocked.class, OutcomeClass::Permanent);
        let bad_token = classify_telegram_response(
            404,
            br#"{"ok":false,"error_code":404,"description":"Not Found"}"#,
        );
        assert!(bad_token.error.unwrap().contains("bot token"));
        let down = classify_telegram_response(
            502,
            br#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#,
        );
        assert_eq!(down.class, OutcomeClass::Retryable);
        let unreadable = classify_telegram_response(200, b"<html>");
        assert_eq!(unreadable.class, OutcomeClass::Ambiguous);
    }
}
