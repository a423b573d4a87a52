//! Slack Web API with a bot token: `chat.postMessage` with Block Kit and a
//! fallback text. The delivery's idempotency key travels in the message's
//! `metadata`; after an ambiguous outcome `conversations.history` (or
//! `conversations.replies` for a thread reply) with `include_all_metadata`
//! finds the message if it landed. A thread's updates reply in the first
//! message's thread; its resolve first edits the first message
//! (`chat.update`, idempotent) and then replies.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Secret;
use crate::connector::http::{cut_chars as cut, exchange, Reply};
use crate::connector::shared::{edit_not_done, parse_retry_after_ms, Role, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::{Outcome, OutcomeClass};
use crate::template::{escape_mrkdwn, render_failed, Rendering, Template, TemplateError};

/// `metadata.event_type` of every message herald posts.
pub const EVENT_TYPE: &str = "herald_delivery";
/// Block Kit limits: a header's text, a section's text.
const HEADER_CHARS_MAX: usize = 150;
const SECTION_CHARS_MAX: usize = 3_000;
/// A read-back looks this far before the broadcast was accepted (clocks).
const VERIFY_WINDOW_BEFORE_MS: i64 = 60_000;
/// Pages of history a read-back reads at most.
const VERIFY_PAGES_MAX: usize = 10;

pub struct SlackConnector {
    client: reqwest::Client,
    api_url: reqwest::Url,
    channel: String,
    token: Secret,
    rendering: Rendering,
}

#[derive(Deserialize)]
struct SlackAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

/// Slack's outcome classes. HTTP 200 carries `ok:false` with an error code;
/// the code decides.
pub fn classify_slack_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let mut outcome = match status {
        200 => match serde_json::from_slice::<SlackAnswer>(body) {
            Ok(answer) if answer.ok => {
                let mut outcome = Outcome::new(OutcomeClass::Success);
                outcome.remote_ref = answer.ts;
                outcome
            }
            Ok(answer) => {
                let code = answer.error.unwrap_or_else(|| "unknown_error".into());
                let class = slack_error_class(&code);
                let mut outcome = Outcome::new(class);
                outcome.error = Some(match class {
                    OutcomeClass::Ambiguous => {
                        format!("Slack error {code}: the message may have been posted")
                    }
                    _ => format!("Slack error {code}"),
                });
                outcome
            }
            // A 200 whose body is lost or garbled may well be a post.
            Err(_) => {
                let mut outcome = Outcome::new(OutcomeClass::Ambiguous);
                outcome.error = Some("Slack answered 200 with an unreadable body".into());
                outcome
            }
        },
        429 => {
            let mut outcome = Outcome::new(OutcomeClass::RateLimited);
            outcome.error = Some("HTTP 429: Slack rate limited the channel".into());
            outcome
        }
        500..=599 => {
            let mut outcome = Outcome::new(OutcomeClass::Retryable);
            outcome.error = Some(format!("HTTP {status} from Slack"));
            outcome
        }
        _ => {
            let mut outcome = Outcome::new(OutcomeClass::Permanent);
            outcome.error = Some(format!(
                "HTTP {status} from Slack: check the destination's url"
            ));
            outcome
        }
    };
    outcome.http_status = Some(status);
    if matches!(
        outcome.class,
        OutcomeClass::RateLimited | OutcomeClass::Retryable
    ) {
        outcome.retry_after_ms = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms));
    }
    outcome
}

/// What an `ok:false` error code means for the delivery.
fn slack_error_class(code: &str) -> OutcomeClass {
    match code {
        "ratelimited" | "rate_limited" => OutcomeClass::RateLimited,
        // Slack may have posted before failing.
        "internal_error" | "fatal_error" | "request_timeout" => OutcomeClass::Ambiguous,
        "service_unavailable" | "team_added_to_org" => OutcomeClass::Retryable,
        // Everything else is about the request, the channel or the token:
        // channel_not_found, invalid_auth, not_authed, not_in_channel,
        // is_archived, msg_too_long, no_text, missing_scope, token_revoked,
        // account_inactive, invalid_blocks, thread_not_found, ...
        _ => OutcomeClass::Permanent,
    }
}

/// Slack's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Slack's default template, for `herald preview` and the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The `chat.postMessage` arguments for a delivery with the default
/// template and no mentions. See [`render_post_message`].
pub fn post_message_body(
    delivery: &ClaimedDelivery,
    channel: &str,
    thread_ts: Option<&str>,
) -> Value {
    render_post_message(&Rendering::default(), delivery, channel, thread_ts)
        .expect("the default template renders every valid message")
}

/// The `chat.postMessage` arguments for a delivery: the destination's
/// template renders the content (Block Kit, fallback text); the protocol
/// fields are set here, after it, so a template cannot change them: the
/// channel, the idempotency key in `metadata`, `thread_ts` for a reply.
pub fn render_post_message(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    channel: &str,
    thread_ts: Option<&str>,
) -> Result<Value, TemplateError> {
    let m = &delivery.message;
    let mut body = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(object) = body.as_object_mut() else {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (chat.postMessage's arguments)".into(),
        });
    };
    object.insert("channel".into(), json!(channel));
    object.entry("unfurl_links").or_insert(json!(false));
    object.entry("unfurl_media").or_insert(json!(false));
    object.insert(
        "metadata".into(),
        json!({
            "event_type": EVENT_TYPE,
            "event_payload": {
                "idempotency_key": delivery.idempotency_key,
                "broadcast_id": delivery.broadcast_id,
                "severity": m.severity().as_str(),
                "thread": m.thread(),
            }
        }),
    );
    match thread_ts {
        Some(ts) => object.insert("thread_ts".into(), json!(ts)),
        None => object.remove("thread_ts"),
    };
    // A reply shown in the channel too would be a second post to find.
    object.remove("reply_broadcast");
    Ok(body)
}

/// The `chat.update` arguments that mark a thread's first message resolved.
pub fn resolve_update_body(delivery: &ClaimedDelivery, channel: &str, ts: &str) -> Value {
    let m = &delivery.message;
    let headline = format!(
        "✅ RESOLVED · {}",
        m.thread()
            .map_or_else(|| m.title().to_owned(), str::to_owned)
    );
    json!({
        "channel": channel,
        "ts": ts,
        "text": format!("{headline}: {}", m.title()),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(&headline, HEADER_CHARS_MAX), "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(&escape_mrkdwn(m.title()), SECTION_CHARS_MAX)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("resolved by herald broadcast `{}`; the thread holds the history", delivery.broadcast_id)}]}
        ]
    })
}

impl SlackConnector {
    pub fn new(
        api_url: reqwest::Url,
        channel: String,
        token: Secret,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<SlackConnector> {
        Ok(SlackConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            api_url,
            channel,
            token,
            rendering,
        })
    }

    fn method(&self, name: &str) -> reqwest::Url {
        self.api_url
            .join(name)
            .expect("a method name joins the base URL")
    }

    async fn call(&self, method: &str, body: &Value) -> Result<Reply, Outcome> {
        let request = self
            .client
            .post(self.method(method))
            .bearer_auth(self.token.expose())
            .header("content-type", "application/json; charset=utf-8")
            .body(serde_json::to_vec(body).expect("JSON serialises"));
        exchange(request).await
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let role = Role::of(delivery);
        let root = delivery.thread_ref.as_deref();
        // Rendered before anything is sent: a template that fails sends
        // nothing, and fails this delivery alone.
        let body = match render_post_message(&self.rendering, delivery, &self.channel, root) {
            Ok(body) => body,
            Err(error) => return render_failed(&error),
        };
        let mut note = None;
        if let (Role::Resolve, Some(ts)) = (role, root) {
            // Edit the first message before replying: the edit is
            // idempotent, so a retry after a failed reply repeats it safely.
            let body = resolve_update_body(delivery, &self.channel, ts);
            let reply = match self.call("chat.update", &body).await {
                Ok(reply) => reply,
                Err(outcome) => {
                    return edit_not_done(outcome, "marking the first message resolved")
                }
            };
            let outcome = classify_slack_response(
                reply.status,
                reply.header("retry-after"),
                &reply.body,
                now_ms,
            );
            match outcome.class {
                OutcomeClass::Success => {}
                // The first message is gone or not ours to edit: the reply
                // still says the incident is resolved.
                OutcomeClass::Permanent => note = outcome.error,
                _ => return edit_not_done(outcome, "marking the first message resolved"),
            }
        }
        let mut outcome = match self.call("chat.postMessage", &body).await {
            Ok(reply) => {
                let mut outcome = classify_slack_response(
                    reply.status,
                    reply.header("retry-after"),
                    &reply.body,
                    now_ms,
                );
                outcome.excerpt = reply.excerpt();
                outcome
            }
            Err(outcome) => outcome,
        };
        if let (Some(note), None) = (note, &outcome.error) {
            outcome.error = Some(format!("the first message was not marked resolved: {note}"));
        }
        outcome
    }

    /// Reads the channel (or the thread) back, looking for the delivery's
    /// key in message metadata.
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        let oldest_ms = delivery.broadcast_created_at_ms - VERIFY_WINDOW_BEFORE_MS;
        let oldest = format!("{}.000000", oldest_ms.div_euclid(1000));
        let (method, parent) = match delivery.thread_ref.as_deref() {
            Some(ts) => ("conversations.replies", Some(ts)),
            None => ("conversations.history", None),
        };
        let mut cursor = String::new();
        let mut last_status = None;
        for _ in 0..VERIFY_PAGES_MAX {
            let mut query = vec![
                ("channel", self.channel.as_str()),
                ("oldest", oldest.as_str()),
                ("inclusive", "true"),
                ("limit", "200"),
                ("include_all_metadata", "true"),
            ];
            if let Some(ts) = parent {
                query.push(("ts", ts));
            }
            if !cursor.is_empty() {
                query.push(("cursor", cursor.as_str()));
            }
            let request = self
                .client
                .get(self.method(method))
                .bearer_auth(self.token.expose())
                .query(&query);
            let reply = match exchange(request).await {
                Ok(reply) => reply,
                Err(outcome) => {
                    return unknown(
                        last_status,
                        format!(
                            "could not read Slack back: {}",
                            outcome.error.unwrap_or_default()
                        ),
                    )
                }
            };
            last_status = Some(reply.status);
            let page: History = match reply.json() {
                Some(page) if reply.status == 200 => page,
                _ => {
                    return unknown(
                        last_status,
                        format!("could not read Slack back: HTTP {}", reply.status),
                    )
                }
            };
            if !page.ok {
                return unknown(
                    last_status,
                    format!(
                        "could not read Slack back: Slack error {}",
                        page.error.unwrap_or_default()
                    ),
                );
            }
            if let Some(found) = page.messages.iter().find(|m| {
                m.metadata
                    .as_ref()
                    .and_then(|md| md.event_payload.get("idempotency_key"))
                    .and_then(Value::as_str)
                    == Some(delivery.idempotency_key.as_str())
            }) {
                return VerifyReport::found(found.ts.clone()).with_status(last_status);
            }
            cursor = page
                .response_metadata
                .map(|m| m.next_cursor)
                .unwrap_or_default();
            if !page.has_more || cursor.is_empty() {
                return VerifyReport::absent(format!(
                    "no message with this delivery's key in the channel's {}; posting again",
                    if parent.is_some() {
                        "thread"
                    } else {
                        "history"
                    }
                ))
                .with_status(last_status);
            }
        }
        unknown(
            last_status,
            format!("the key was not in the first {VERIFY_PAGES_MAX} pages of the channel"),
        )
    }
}

/// The read-back failed: a re-send may post the message twice.
fn unknown(http_status: Option<u16>, error: String) -> VerifyReport {
    VerifyReport::unknown(error, true).with_status(http_status)
}

#[derive(Deserialize)]
struct History {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    messages: Vec<HistoryMessage>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    response_metadata: Option<ResponseMetadata>,
}

#[derive(Deserialize)]
struct HistoryMessage {
    ts: String,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    event_payload: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct ResponseMetadata {
    #[serde(default)]
    next_cursor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_answers_map_to_outcome_classes() {
        let ok = br#"{"ok":true,"channel":"C024BE91L","ts":"1503435956.000247","message":{"text":"Here's a message for you","type":"message","ts":"1503435956.000247"}}"#;
        let outcome = classify_slack_response(200, None, ok, 0);
        assert_eq!(outcome.class, OutcomeClass::Success);
        assert_eq!(outcome.remote_ref.as_deref(), Some("1503435956.000247"));

        for (code, class) in [
            ("ratelimited", OutcomeClass::RateLimited),
            ("internal_error", OutcomeClass::Ambiguous),
            ("fatal_error", OutcomeClass::Ambiguous),
            ("channel_not_found", OutcomeClass::Permanent),
            ("invalid_auth", OutcomeClass::Permanent),
            ("not_in_channel", OutcomeClass::Permanent),
            ("is_archived", OutcomeClass::Permanent),
            ("msg_too_long", OutcomeClass::Permanent),
        ] {
            let body = format!(r#"{{"ok":false,"error":"{code}"}}"#);
            let outcome = classify_slack_response(200, None, body.as_bytes(), 0);
            assert_eq!(outcome.class, class, "{code}");
            assert!(outcome.error.unwrap().contains(code));
        }

        let limited =
            classify_slack_response(429, Some("30"), br#"{"ok":false,"error":"ratelimited"}"#, 0);
        assert_eq!(limited.class, OutcomeClass::RateLimited);
        assert_eq!(limited.retry_after_ms, Some(30_000));
        assert_eq!(
            classify_slack_response(200, None, b"<html>", 0).class,
            OutcomeClass::Ambiguous
        );
        assert_eq!(
            classify_slack_response(503, None, b"", 0).class,
            OutcomeClass::Retryable
        );
        assert_eq!(
            classify_slack_response(404, None, b"", 0).class,
            OutcomeClass::Permanent
        );
    }
}
