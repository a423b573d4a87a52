//! Zulip (`zulip.openapi.yaml`): a channel (stream), one topic per herald
//! thread (a message outside a thread gets its title as topic). Messages
//! are sent with `POST /api/v1/messages` (a form: `type=stream`, `to`,
//! `topic`, `content`), basic auth with the bot's email and API key; the
//! content is the destination's template's (the default,
//! `template.json.j2`: Markdown with the headline, body, fields, links),
//! and ends with the delivery's idempotency key (`` `herald KEY` ``),
//! and the message id is the delivery's `remote_ref`.
//!
//! Zulip has no idempotency key for a send. After an ambiguous outcome the
//! topic is read back: `GET /api/v1/messages` with a narrow on the
//! channel, the topic and the bot as sender, newest first, raw Markdown
//! (`apply_markdown=false`), pages of [`READ_BACK_PAGE_MESSAGES`], at most
//! [`READ_BACK_PAGES_MAX`]; a message whose content carries the key is
//! this one (confirmed, not sent again). Not there: sent again, not
//! flagged. The topic cannot be read (or is longer than it reads): sent
//! again and flagged `possible_duplicate`.
//!
//! The resolve first edits the topic's first message
//! (`PATCH /api/v1/messages/{id}` with `content`; idempotent; an edit Zulip
//! refuses, say past the organisation's edit time limit, does not hold the
//! resolve back), then posts in the topic.
//!
//! Classification ([`classify_zulip_response`]): `result: success`
//! success; 429 (`RATE_LIMIT_HIT`) rate limited with the body's
//! `retry-after` (or the header); 5xx retryable; 401 and other 4xx
//! (`BAD_REQUEST`, `STREAM_DOES_NOT_EXIST`, ...) permanent with Zulip's
//! `msg`.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Secret;
use crate::connector::http::{cut_chars, exchange, form_body, status_class, Reply};
use crate::connector::shared::{parse_retry_after_ms, Role, VerifyReport};
use crate::domain::{ClaimedDelivery, Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

/// Zulip's default `max_topic_length`.
pub const ZULIP_TOPIC_CHARS_MAX: usize = 60;
/// Zulip's default `max_message_length` (characters).
pub const ZULIP_CONTENT_CHARS_MAX: usize = 10_000;
/// Messages per page of the read-back.
pub const READ_BACK_PAGE_MESSAGES: usize = 100;
/// Pages the read-back reads before it gives up.
pub const READ_BACK_PAGES_MAX: usize = 5;

pub struct ZulipConnector {
    client: reqwest::Client,
    /// The server's base, `https://example.zulipchat.com/`.
    site_url: reqwest::Url,
    email: String,
    api_key: Secret,
    stream: String,
    rendering: Rendering,
}

/// The topic of a delivery: its thread, or its title outside a thread.
pub fn zulip_topic(delivery: &ClaimedDelivery) -> String {
    let m = &delivery.message;
    cut_chars(m.thread().unwrap_or(m.title()), ZULIP_TOPIC_CHARS_MAX)
}

/// The line that carries the delivery's key, the read-back's needle.
pub fn zulip_key_marker(idempotency_key: &str) -> String {
    format!("`herald {idempotency_key}`")
}

/// Zulip's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Zulip's default template, for `herald preview` and the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The Markdown content of a delivery with the default template and no
/// mentions. See [`render_zulip_content`].
pub fn zulip_content(delivery: &ClaimedDelivery) -> String {
    render_zulip_content(&Rendering::default(), delivery)
        .expect("the default template renders every valid message")
}

/// The Markdown content of a delivery: the destination's template's
/// `content`, cut so that, with the key's line after it (set here, so a
/// template cannot drop the read-back's needle), it stays within Zulip's
/// 10,000 characters.
pub fn render_zulip_content(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<String, TemplateError> {
    let rendered = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(text) = rendered.get("content").and_then(Value::as_str) else {
        return Err(TemplateError {
            line: None,
            reason: "the output needs \"content\" as text (the message's Markdown)".into(),
        });
    };
    let marker = zulip_key_marker(&delivery.idempotency_key);
    let room = ZULIP_CONTENT_CHARS_MAX - marker.chars().count() - 2;
    Ok(format!("{}\n\n{marker}", cut_chars(text, room)))
}

/// The send-message form of a delivery with the default template.
pub fn zulip_send_form(delivery: &ClaimedDelivery, stream: &str) -> Vec<(&'static str, String)> {
    render_send_form(&Rendering::default(), delivery, stream)
        .expect("the default template renders every valid message")
}

/// The send-message form of a delivery: the template's content, and the
/// channel and topic herald owns.
pub fn render_send_form(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    stream: &str,
) -> Result<Vec<(&'static str, String)>, TemplateError> {
    Ok(vec![
        ("type", "stream".to_owned()),
        ("to", stream.to_owned()),
        ("topic", zulip_topic(delivery)),
        ("content", render_zulip_content(rendering, delivery)?),
    ])
}

/// The update-message form that marks the topic's first message resolved.
pub fn zulip_resolve_edit_form(delivery: &ClaimedDelivery) -> Vec<(&'static str, String)> {
    let thread = delivery.message.thread().unwrap_or_default();
    vec![(
        "content",
        cut_chars(
            &format!(
                "**[RESOLVED] {thread}**: {}\n\n(resolved by a later message in this topic)",
                delivery.message.title()
            ),
            ZULIP_CONTENT_CHARS_MAX,
        ),
    )]
}

/// The narrow of the read-back: the bot's messages in the topic.
pub fn zulip_read_back_narrow(stream: &str, topic: &str, sender: &str) -> Value {
    json!([
        {"operator": "channel", "operand": stream},
        {"operator": "topic", "operand": topic},
        {"operator": "sender", "operand": sender},
    ])
}

/// The get-messages query of one read-back page, before `anchor`
/// (`newest` for the first).
pub fn zulip_read_back_query(narrow: &Value, anchor: &str) -> Vec<(&'static str, String)> {
    vec![
        ("anchor", anchor.to_owned()),
        ("include_anchor", (anchor == "newest").to_string()),
        ("num_before", READ_BACK_PAGE_MESSAGES.to_string()),
        ("num_after", "0".to_owned()),
        ("narrow", narrow.to_string()),
        ("apply_markdown", "false".to_owned()),
    ]
}

/// Zulip's answer in outcome classes.
pub fn classify_zulip_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let result = json.as_ref().and_then(|j| j["result"].as_str());
    let code = json
        .as_ref()
        .and_then(|j| j["code"].as_str())
        .unwrap_or("")
        .to_owned();
    let msg = json
        .as_ref()
        .and_then(|j| j["msg"].as_str())
        .unwrap_or("")
        .to_owned();
    let mut class = status_class(status);
    if class == OutcomeClass::Success && result != Some("success") {
        class = OutcomeClass::Ambiguous;
    }
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    match class {
        OutcomeClass::Success => {
            outcome.remote_ref = json
                .as_ref()
                .and_then(|j| j["id"].as_i64())
                .map(|id| id.to_string());
        }
        OutcomeClass::Ambiguous => {
            outcome.error = Some(format!(
                "HTTP {status} from Zulip without result: success; it may have sent the message"
            ));
        }
        OutcomeClass::RateLimited | OutcomeClass::Retryable => {
            outcome.retry_after_ms = json
                .as_ref()
                .and_then(|j| j["retry-after"].as_f64())
                .filter(|secs| *secs >= 0.0)
                .map(|secs| (secs * 1000.0).ceil() as u64)
                .or_else(|| retry_after.and_then(|v| parse_retry_after_ms(v, now_ms)));
            outcome.error = Some(format!("HTTP {status} from Zulip {code}: {msg}"));
        }
        OutcomeClass::Permanent => {
            let hint = match (status, code.as_str()) {
                (401, _) | (_, "UNAUTHORIZED") => "; check email and the API key (secret_env)",
                (_, "STREAM_DOES_NOT_EXIST") => "; check stream: the channel's name",
                _ => "",
            };
            outcome.error = Some(format!("HTTP {status} from Zulip {code}: {msg}{hint}"));
        }
    }
    outcome
}

#[derive(Deserialize)]
struct FoundMessage {
    id: i64,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct MessagesPage {
    #[serde(default)]
    messages: Vec<FoundMessage>,
    #[serde(default)]
    found_oldest: bool,
}

impl ZulipConnector {
    pub fn new(
        site_url: reqwest::Url,
        email: String,
        api_key: Secret,
        stream: String,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<ZulipConnector> {
        Ok(ZulipConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            site_url,
            email,
            api_key,
            stream,
            rendering,
        })
    }

    fn url(&self, message_id: Option<&str>) -> reqwest::Url {
        let mut url = self.site_url.clone();
        {
            let mut path = url.path_segments_mut().expect("an http URL has a path");
            path.pop_if_empty().extend(["api", "v1", "messages"]);
            if let Some(id) = message_id {
                path.push(id);
            }
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .basic_auth(&self.email, Some(self.api_key.expose()))
    }

    fn form(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        pairs: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        self.request(method, url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(pairs))
    }

    fn classify(reply: &Reply, now_ms: i64) -> Outcome {
        let mut outcome = classify_zulip_response(
            reply.status,
            reply.header("retry-after"),
            &reply.body,
            now_ms,
        );
        outcome.excerpt = reply.excerpt();
        outcome
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        // Rendered before anything is sent (the edit included): a template
        // that fails sends nothing, and fails this delivery alone.
        let form = match render_send_form(&self.rendering, delivery, &self.stream) {
            Ok(form) => form,
            Err(error) => return render_failed(&error),
        };
        if let (Role::Resolve, Some(first)) = (Role::of(delivery), delivery.thread_ref.as_deref()) {
            let request = self.form(
                reqwest::Method::PATCH,
                self.url(Some(first)),
                &zulip_resolve_edit_form(delivery),
            );
            let edited = match exchange(request).await {
                Ok(reply) => Self::classify(&reply, now_ms),
                Err(outcome) => outcome,
            };
            match edited.class {
                // Done, or refused for good (too old to edit, deleted):
                // the resolve still goes to the topic.
                OutcomeClass::Success => {}
                OutcomeClass::Permanent if edited.http_status != Some(401) => {}
                // An edit is safe to repeat.
                OutcomeClass::Ambiguous => {
                    return Outcome {
                        class: OutcomeClass::Retryable,
                        ..edited
                    }
                }
                _ => return edited,
            }
        }
        let request = self.form(reqwest::Method::POST, self.url(None), &form);
        match exchange(request).await {
            Ok(reply) => Self::classify(&reply, now_ms),
            Err(outcome) => outcome,
        }
    }

    /// Searches the topic for the delivery's key.
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        let narrow = zulip_read_back_narrow(&self.stream, &zulip_topic(delivery), &self.email);
        let marker = zulip_key_marker(&delivery.idempotency_key);
        let mut anchor = "newest".to_owned();
        for _ in 0..READ_BACK_PAGES_MAX {
            let mut url = self.url(None);
            url.query_pairs_mut()
                .extend_pairs(zulip_read_back_query(&narrow, &anchor));
            let reply = match exchange(self.request(reqwest::Method::GET, url)).await {
                Ok(reply) if reply.status == 200 => reply,
                Ok(reply) => {
                    return Self::unreadable(&format!("HTTP {}", reply.status))
                        .with_status(Some(reply.status))
                }
                Err(outcome) => return Self::unreadable(&outcome.error.unwrap_or_default()),
            };
            let Some(page) = reply.json::<MessagesPage>() else {
                return Self::unreadable("the answer is not Zulip's JSON").with_status(Some(200));
            };
            if let Some(found) = page.messages.iter().find(|m| m.content.contains(&marker)) {
                return VerifyReport::found(found.id.to_string()).with_status(Some(200));
            }
            let oldest = page.messages.iter().map(|m| m.id).min();
            match oldest {
                Some(oldest) if !page.found_oldest => anchor = oldest.to_string(),
                _ => {
                    return VerifyReport::absent(
                        "the message is not in the topic; sending it again",
                    )
                    .with_status(Some(200))
                }
            }
        }
        Self::unreadable(&format!(
            "more than {} of herald's messages in the topic",
            READ_BACK_PAGES_MAX * READ_BACK_PAGE_MESSAGES
        ))
    }

    fn unreadable(why: &str) -> VerifyReport {
        VerifyReport::unknown(
            format!("could not read the Zulip topic back: {why}; sending again, which may show the message twice"),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zulip_answers_map_to_outcome_classes() {
        let sent = classify_zulip_response(
            200,
            None,
            br#"{"msg":"","id":42,"automatic_new_visibility_policy":2,"result":"success"}"#,
            0,
        );
        assert_eq!(sent.class, OutcomeClass::Success);
        assert_eq!(sent.remote_ref.as_deref(), Some("42"));
        // The description's RateLimitedError example.
        let limited = classify_zulip_response(
            429,
            Some("29"),
            br#"{"code":"RATE_LIMIT_HIT","msg":"API usage exceeded rate limit","result":"error","retry-after":28.706807374954224}"#,
            0,
        );
        assert_eq!(
            (limited.class, limited.retry_after_ms),
            (OutcomeClass::RateLimited, Some(28_707))
        );
        let no_stream = classify_zulip_response(
            400,
            None,
            br#"{"code":"STREAM_DOES_NOT_EXIST","msg":"Channel 'nonexistent' does not exist","result":"error","stream":"nonexistent"}"#,
            0,
        );
        assert_eq!(no_stream.class, OutcomeClass::Permanent);
        assert!(no_stream.error.unwrap().contains("check stream"));
        let auth = classify_zulip_response(
            401,
            None,
            br#"{"code":"UNAUTHORIZED","msg":"Invalid API key","result":"error"}"#,
            0,
        );
        assert!(auth.error.unwrap().contains("API key"));
        let down = classify_zulip_response(502, None, b"<html>Bad Gateway</html>", 0);
        assert_eq!(down.class, OutcomeClass::Retryable);
        let odd = classify_zulip_response(200, None, b"{}", 0);
        assert_eq!(odd.class, OutcomeClass::Ambiguous);
    }
}
