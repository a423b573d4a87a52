//! A Matrix room through the client-server API, as the user whose access
//! token the destination holds. Every message is `PUT
//! /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}` with the
//! txnId derived from the delivery's idempotency key: the description says
//! the homeserver uses it "to ensure idempotency of requests" per access
//! token, and answers a retransmission with "the `event_id` of the original
//! request". So after an ambiguous outcome herald sends again with the same
//! txnId, and the room holds one event whatever happened to the first
//! answer.
//!
//! The content comes from the destination's template (the default,
//! `template.json.j2`, is `m.text` with a plain `body` and an HTML
//! `formatted_body` (`org.matrix.custom.html`): the mention, headline,
//! severity, body, fields and links); the connector then sets the relation
//! and keeps the content under an event's size. A thread's later messages relate to its first event
//! (`m.relates_to` with `rel_type: m.thread`, plus the reply fallback for
//! clients without threads); a resolve first edits the first event
//! (`m.replace` with `m.new_content`, its own txnId, so a retry repeats the
//! same edit) and then posts its message in the thread.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Secret;
use crate::connector::http::{cut_chars as cut, exchange, Reply};
use crate::connector::shared::{edit_not_done, headline, parse_retry_after_ms, Role, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::{Outcome, OutcomeClass};
use crate::template::{escape_html, render_failed, Rendering, Template, TemplateError};

/// The only `format` the description defines for `formatted_body`.
pub const HTML_FORMAT: &str = "org.matrix.custom.html";
/// The event type herald sends.
pub const EVENT_TYPE: &str = "m.room.message";
/// Appended to the delivery's txnId for a resolve's edit of the first
/// event: a second request, with its own (equally stable) txnId.
const EDIT_TXN_SUFFIX: &str = ".edit";
/// How long a homeserver is trusted to remember a txnId. The description
/// names no window; Synapse keeps them for 24 hours. A re-send of an older
/// delivery may make a second event, so it is flagged.
pub const TXN_ID_REMEMBERED_MS: i64 = 23 * 3_600_000;
/// A message's content stays under this many bytes of JSON: Matrix caps a
/// whole event at 65,536 bytes (Synapse answers 413 `M_TOO_LARGE` past
/// it), and the envelope takes the rest.
pub const CONTENT_BYTES_MAX: usize = 60_000;
/// Cuts of the plain text tried, in turn, while the content is too large.
const FIT_CUTS_MAX: usize = 8;

pub struct MatrixConnector {
    client: reqwest::Client,
    /// The homeserver's base, `https://matrix.example.org/`.
    homeserver_url: reqwest::Url,
    room_id: String,
    token: Secret,
    rendering: Rendering,
}

/// A Matrix error body: `errcode`, `error`, and for a rate limit
/// `retry_after_ms`.
#[derive(Deserialize)]
struct MatrixError {
    errcode: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Sent {
    event_id: String,
}

/// The txnId of a delivery's message: its idempotency key, the same on
/// every attempt (keys are `<broadcast id>-<destination>`, unique).
pub fn matrix_txn_id(idempotency_key: &str) -> String {
    idempotency_key.to_owned()
}

/// The txnId of a resolve's edit of the thread's first event.
pub fn matrix_edit_txn_id(idempotency_key: &str) -> String {
    format!("{idempotency_key}{EDIT_TXN_SUFFIX}")
}

/// Matrix's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Matrix's default template, for `herald preview` and the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The `m.room.message` content of a delivery with the default template
/// and no mentions. See [`render_matrix_message_content`].
pub fn matrix_message_content(delivery: &ClaimedDelivery, thread_root: Option<&str>) -> Value {
    render_matrix_message_content(&Rendering::default(), delivery, thread_root)
        .expect("the default template renders every valid message")
}

/// The `m.room.message` content of a delivery: the destination's template
/// renders it (the default: `m.text` with its HTML rendering); then, so a
/// template cannot change them, a thread's later message gets its
/// `m.thread` relation to the first event `thread_root` (with the reply
/// fallback for clients that do not show threads), no other relation, and
/// content too large for an event gives way: the formatted view first
/// (headline only), then the plain text is cut, keeping its start.
pub fn render_matrix_message_content(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    thread_root: Option<&str>,
) -> Result<Value, TemplateError> {
    let mut content = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(object) = content.as_object_mut() else {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (the event's content)".into(),
        });
    };
    for (key, what) in [
        ("msgtype", "the message type, like m.text"),
        ("body", "the plain text"),
    ] {
        if !object.get(key).is_some_and(Value::is_string) {
            return Err(TemplateError {
                line: None,
                reason: format!("the output needs \"{key}\" as text ({what})"),
            });
        }
    }
    object.remove("m.relates_to");
    object.remove("m.new_content");
    fit(&mut content, delivery);
    if let Some(root) = thread_root {
        content["m.relates_to"] = json!({
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": true,
            "m.in_reply_to": {"event_id": root},
        });
    }
    Ok(content)
}

/// Keeps `content` within [`CONTENT_BYTES_MAX`]: the formatted view gives
/// way first (headline only), then the plain text is cut, keeping its
/// start.
fn fit(content: &mut Value, delivery: &ClaimedDelivery) {
    let size = |content: &Value| serde_json::to_vec(content).map_or(0, |v| v.len());
    let short_html = format!(
        "<h4>{}</h4><p>(too long to format: the plain text has the message)</p>",
        escape_html(&headline(delivery))
    );
    for _ in 0..FIT_CUTS_MAX {
        if size(content) <= CONTENT_BYTES_MAX {
            return;
        }
        let formatted = content.get("formatted_body").and_then(Value::as_str);
        if formatted.is_some_and(|html| html != short_html) {
            content["formatted_body"] = json!(short_html);
        } else {
            let plain = content["body"].as_str().unwrap_or_default();
            let chars = plain.chars().count();
            content["body"] = json!(cut(plain, chars / 2));
        }
    }
}

/// The content of a resolve's edit of the thread's first event `root`:
/// `m.replace` with the resolved text as `m.new_content`, and the same text
/// starred as the fallback for clients without edits.
pub fn matrix_resolve_edit_content(delivery: &ClaimedDelivery, root: &str) -> Value {
    let m = &delivery.message;
    let thread = m.thread().unwrap_or_default();
    let plain = format!(
        "[RESOLVED] {thread}: {}\nresolved by herald broadcast {}; the thread holds the history",
        m.title(),
        delivery.broadcast_id
    );
    let html = format!(
        "<h4>[RESOLVED] {}: {}</h4><p><sub>resolved by herald broadcast <code>{}</code>; the thread holds the history</sub></p>",
        escape_html(thread),
        escape_html(m.title()),
        escape_html(&delivery.broadcast_id)
    );
    json!({
        "msgtype": "m.text",
        "body": format!("* {plain}"),
        "format": HTML_FORMAT,
        "formatted_body": format!("* {html}"),
        "m.new_content": {
            "msgtype": "m.text",
            "body": plain,
            "format": HTML_FORMAT,
            "formatted_body": html,
        },
        "m.relates_to": {"rel_type": "m.replace", "event_id": root},
    })
}

/// Matrix's outcome classes. A 200 carries the `event_id`; errors carry an
/// `errcode`, which decides before the status does.
pub fn classify_matrix_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let error = serde_json::from_slice::<MatrixError>(body).ok();
    let mut outcome = match (status, &error) {
        (200..=299, _) => match serde_json::from_slice::<Sent>(body) {
            Ok(sent) => {
                let mut outcome = Outcome::new(OutcomeClass::Success);
                outcome.remote_ref = Some(sent.event_id);
                outcome
            }
            // A success whose answer is garbled may well be an event.
            Err(_) => {
                let mut outcome = Outcome::new(OutcomeClass::Ambiguous);
                outcome.error = Some(format!(
                    "HTTP {status} from the homeserver without an event_id: the event may have been sent"
                ));
                outcome
            }
        },
        (_, Some(e)) if e.errcode == "M_LIMIT_EXCEEDED" || status == 429 => {
            let mut outcome = Outcome::new(OutcomeClass::RateLimited);
            outcome.retry_after_ms = e.retry_after_ms;
            outcome.error = Some(format!(
                "HTTP {status} {}: the homeserver rate limited the user",
                e.errcode
            ));
            outcome
        }
        (_, Some(e)) => {
            let class = matrix_error_class(status, &e.errcode);
            let mut outcome = Outcome::new(class);
            let said = e.error.as_deref().unwrap_or_default();
            outcome.error = Some(format!(
                "HTTP {status} {}: {}{}",
                e.errcode,
                matrix_error_hint(&e.errcode),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(" (the homeserver said: {said})")
                }
            ));
            outcome
        }
        (429, None) => {
            let mut outcome = Outcome::new(OutcomeClass::RateLimited);
            outcome.error = Some("HTTP 429: the homeserver rate limited the user".into());
            outcome
        }
        (408 | 500..=599, None) => {
            let mut outcome = Outcome::new(OutcomeClass::Retryable);
            outcome.error = Some(format!("HTTP {status} from the homeserver"));
            outcome
        }
        (_, None) => {
            let mut outcome = Outcome::new(OutcomeClass::Permanent);
            outcome.error = Some(format!(
                "HTTP {status} from the homeserver: check the destination's url (the homeserver's base, without /_matrix)"
            ));
            outcome
        }
    };
    outcome.http_status = Some(status);
    if matches!(
        outcome.class,
        OutcomeClass::RateLimited | OutcomeClass::Retryable
    ) {
        // The header, when sent, is the homeserver's own word; the body's
        // `retry_after_ms` otherwise.
        if let Some(header) = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms)) {
            outcome.retry_after_ms = Some(header);
        }
    }
    outcome
}

/// What an error code means for the delivery, with its status.
fn matrix_error_class(status: u16, errcode: &str) -> OutcomeClass {
    match errcode {
        // The homeserver (or a proxy before it) failed: a re-send carries
        // the same txnId, so trying again is safe.
        _ if (500..=599).contains(&status) || status == 408 => OutcomeClass::Retryable,
        // Everything else is about the token, the room or the request:
        // M_FORBIDDEN, M_UNKNOWN_TOKEN, M_MISSING_TOKEN, M_NOT_FOUND,
        // M_BAD_JSON, M_NOT_JSON, M_TOO_LARGE, M_UNKNOWN (a 400),
        // M_INVALID_PARAM, M_DUPLICATE_ANNOTATION, ...
        _ => OutcomeClass::Permanent,
    }
}

/// What an operator does about an error code.
fn matrix_error_hint(errcode: &str) -> &'static str {
    match errcode {
        "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" => {
            "the access token is not valid (expired, logged out or mistyped); set a fresh one in the destination's secret"
        }
        "M_FORBIDDEN" => {
            "the user may not post in the room; invite and join it, or raise its power level"
        }
        "M_NOT_FOUND" => "the homeserver does not know the room; check room_id",
        "M_TOO_LARGE" => "the message is larger than the homeserver takes",
        "M_BAD_JSON" | "M_NOT_JSON" => "the homeserver refused the event's content",
        _ => "the homeserver refused the event",
    }
}

impl MatrixConnector {
    pub fn new(
        homeserver_url: reqwest::Url,
        room_id: String,
        token: Secret,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<MatrixConnector> {
        Ok(MatrixConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            homeserver_url,
            room_id,
            token,
            rendering,
        })
    }

    /// `.../_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}`.
    pub fn send_url(&self, txn_id: &str) -> reqwest::Url {
        matrix_send_url(&self.homeserver_url, &self.room_id, txn_id)
    }

    async fn put(&self, txn_id: &str, content: &Value, now_ms: i64) -> Outcome {
        let request = self
            .client
            .put(self.send_url(txn_id))
            .bearer_auth(self.token.expose())
            .json(content);
        match exchange(request).await {
            Ok(reply) => Self::classify(&reply, now_ms),
            Err(outcome) => outcome,
        }
    }

    fn classify(reply: &Reply, now_ms: i64) -> Outcome {
        let mut outcome = classify_matrix_response(
            reply.status,
            reply.header("retry-after"),
            &reply.body,
            now_ms,
        );
        outcome.excerpt = reply.excerpt();
        outcome
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let root = delivery.thread_ref.as_deref();
        // Rendered before anything is sent (the edit included): a template
        // that fails sends nothing, and fails this delivery alone.
        let content = match render_matrix_message_content(&self.rendering, delivery, root) {
            Ok(content) => content,
            Err(error) => return render_failed(&error),
        };
        let mut note = None;
        if let (Role::Resolve, Some(root)) = (Role::of(delivery), root) {
            // The edit first: it has its own stable txnId, so a retry after
            // a failed reply makes no second edit.
            let content = matrix_resolve_edit_content(delivery, root);
            let edited = self
                .put(
                    &matrix_edit_txn_id(&delivery.idempotency_key),
                    &content,
                    now_ms,
                )
                .await;
            match edited.class {
                OutcomeClass::Success => {}
                // The first event cannot be edited (redacted, another
                // sender's): the reply still says the incident is resolved.
                OutcomeClass::Permanent => note = edited.error,
                // Nothing of the resolve's own message was sent yet, and the
                // edit is deduplicated by its txnId: simply try again (a
                // rate limit still pauses the destination).
                _ => return edit_not_done(edited, "editing the first event resolved"),
            }
        }
        let mut outcome = self
            .put(&matrix_txn_id(&delivery.idempotency_key), &content, now_ms)
            .await;
        if let (Some(note), None) = (note, &outcome.error) {
            outcome.error = Some(format!("the first event was not edited resolved: {note}"));
        }
        outcome
    }

    /// There is nothing to read: a re-send with the same txnId is answered
    /// with the event the first one made, if it made one. Only past the
    /// time a homeserver keeps txnIds could a re-send make a second event.
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        let age_ms = crate::clock::now_ms() - delivery.broadcast_created_at_ms;
        if age_ms > TXN_ID_REMEMBERED_MS {
            return VerifyReport::unknown(
                format!(
                    "the broadcast is {} hours old; the homeserver may have forgotten the txnId, so sending it again may make a second event",
                    age_ms / 3_600_000
                ),
                true,
            );
        }
        VerifyReport::unknown(
            "sending again with the same txnId: the homeserver answers a repeat with the event the first one made",
            false,
        )
    }
}

/// `{homeserver}/_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}`,
/// each part a path segment (percent-encoded where it must be).
pub fn matrix_send_url(homeserver_url: &reqwest::Url, room_id: &str, txn_id: &str) -> reqwest::Url {
    let mut url = homeserver_url.clone();
    url.path_segments_mut()
        .expect("an http URL has a path")
        .pop_if_empty()
        .extend([
            "_matrix", "client", "v3", "rooms", room_id, "send", EVENT_TYPE, txn_id,
        ]);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_answers_map_to_outcome_classes() {
        let sent =
            classify_matrix_response(200, None, br#"{"event_id":"$YUwRidLecu:example.com"}"#, 0);
        assert_eq!(sent.class, OutcomeClass::Success);
        assert_eq!(sent.remote_ref.as_deref(), Some("$YUwRidLecu:example.com"));

        let limited = classify_matrix_response(
            429,
            None,
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":2000}"#,
            0,
        );
        assert_eq!(
            (limited.class, limited.retry_after_ms),
            (OutcomeClass::RateLimited, Some(2_000))
        );
        let header_wins = classify_matrix_response(
            429,
            Some("3"),
            br#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":2000}"#,
            0,
        );
        assert_eq!(header_wins.retry_after_ms, Some(3_000));

        for (status, errcode, class, says) in [
            (
                401,
                "M_UNKNOWN_TOKEN",
                OutcomeClass::Permanent,
                "access token",
            ),
            (
                401,
                "M_MISSING_TOKEN",
                OutcomeClass::Permanent,
                "access token",
            ),
            (403, "M_FORBIDDEN", OutcomeClass::Permanent, "may not post"),
            (404, "M_NOT_FOUND", OutcomeClass::Permanent, "room_id"),
            (400, "M_BAD_JSON", OutcomeClass::Permanent, "content"),
            (413, "M_TOO_LARGE", OutcomeClass::Permanent, "larger"),
            (400, "M_UNKNOWN", OutcomeClass::Permanent, "refused"),
            (500, "M_UNKNOWN", OutcomeClass::Retryable, "refused"),
            (502, "M_UNKNOWN", OutcomeClass::Retryable, "refused"),
        ] {
            let body = format!(r#"{{"errcode":"{errcode}","error":"no"}}"#);
            let outcome = classify_matrix_response(status, None, body.as_bytes(), 0);
            assert_eq!(outcome.class, class, "{status} {errcode}");
            let error = outcome.error.unwrap();
            assert!(error.contains(errcode) && error.contains(says), "{error}");
        }
        assert_eq!(
            classify_matrix_response(503, Some("5"), b"<html>", 0).retry_after_ms,
            Some(5_000)
        );
        assert_eq!(
            classify_matrix_response(200, None, b"", 0).class,
            OutcomeClass::Ambiguous
        );
        assert_eq!(
            classify_matrix_response(404, None, b"not here", 0).class,
            OutcomeClass::Permanent
        );
    }

    #[tokio::test]
    async fn a_re_send_is_flagged_only_once_the_homeserver_may_have_forgotten_the_txn_id() {
        use crate::domain::{DeliveryProgress, Message, RetryPolicy, Severity};
        let connector = MatrixConnector::new(
            reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
            "!ops:example.org".into(),
            Secret::new("tok"),
            Rendering::default(),
            Duration::from_secs(1),
            1,
        )
        .unwrap();
        let now_ms = crate::clock::now_ms();
        let delivery = |created_at_ms: i64| ClaimedDelivery {
            delivery_id: 1,
            broadcast_id: "01JD7Q3ZK8W5V2N4XG6T9RBH1C".into(),
            destination: "ops".into(),
            idempotency_key: "01JD7Q3ZK8W5V2N4XG6T9RBH1C-ops".into(),
            progress: DeliveryProgress::new(&RetryPolicy::default(), false, 0),
            message: Message::new("Disk full", "", Severity::P2, None).unwrap(),
            broadcast_created_at_ms: created_at_ms,
            last_error: None,
            lease_epoch: 1,
            thread_ref: None,
            remote_ref: None,
        };
        let fresh = connector.verify(&delivery(now_ms - 60_000)).await;
        assert!(!fresh.resend_may_duplicate, "{fresh:?}");
        assert!(fresh.error.unwrap().contains("same txnId"));
        let old = connector
            .verify(&delivery(now_ms - TXN_ID_REMEMBERED_MS - 60_000))
            .await;
        assert!(old.resend_may_duplicate, "{old:?}");
    }

    #[test]
    fn the_send_url_keeps_the_homeservers_path_and_encodes_the_parts() {
        let base = reqwest::Url::parse("https://example.org/matrix/").unwrap();
        let url = matrix_send_url(&base, "!room:example.org", "01JD-ops");
        assert_eq!(
            url.as_str(),
            "https://example.org/matrix/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/01JD-ops"
        );
        let bare = reqwest::Url::parse("https://example.org").unwrap();
        let url = matrix_send_url(&bare, "!a/b", "t");
        assert_eq!(
            url.as_str(),
            "https://example.org/_matrix/client/v3/rooms/!a%2Fb/send/m.room.message/t"
        );
    }
}
