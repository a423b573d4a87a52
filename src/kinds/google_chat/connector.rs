//! Google Chat: `spaces.messages.create` of `google-chat-v1.discovery.json`,
//! through a space's incoming webhook (`POST v1/spaces/{space}/messages?key=
//! ...&token=...`, the URL the space gives) or through the Chat API as an
//! app ([`super::app`]: a service account's token, read-back and edits).
//! Each delivery sends a `requestId` and a client-set `messageId`
//! (`client-` and 32 hex digits of the SHA-256 of its idempotency key) on
//! every attempt. The description: "Specifying an existing request ID
//! returns the message created with that ID instead of creating a new
//! message", and a custom ID "is unique within a space". So a re-send
//! after a lost answer gets the first message back, and should the request
//! ID be forgotten, the message ID cannot be used twice (`409
//! ALREADY_EXISTS`, which here means "already there": success). A webhook
//! cannot read back; the re-send is not flagged.
//!
//! The content comes from the destination's template (`template.json.j2`
//! by default: the text, and a card with the fields and links); the
//! connector sets the thread. A thread's messages share `thread.threadKey`
//! (derived from the thread key) with
//! `messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`, so the first
//! starts the Chat thread and the others reply in it. A webhook may only
//! create messages, so its resolve is a reply in the thread that says
//! `RESOLVED`; the API mode also edits the first message.
//!
//! Classification ([`classify_google_chat_response`]): 2xx success (the
//! message `name` is the `remote_ref`); 409 `ALREADY_EXISTS` success; 429
//! `RESOURCE_EXHAUSTED` rate limited, its `google.rpc.RetryInfo`
//! `retryDelay` (or Retry-After) honoured; 408, 5xx retryable; other 4xx
//! permanent with Google's `status` and `message`.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::app::ChatApp;
use super::config::GoogleChatMode;
use crate::connector::http::{cut_chars, exchange, status_class};
use crate::connector::shared::{parse_retry_after_ms, VerifyReport};
use crate::domain::{ClaimedDelivery, Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

/// Chat's limit on a message's text (4,096 characters).
pub const GOOGLE_CHAT_TEXT_CHARS_MAX: usize = 4_096;
/// A client-set message ID: `client-` and up to 56 more characters.
pub const GOOGLE_CHAT_MESSAGE_ID_CHARS_MAX: usize = 63;

pub struct GoogleChatConnector {
    client: reqwest::Client,
    rendering: Rendering,
    way: Way,
}

/// How the connector reaches the space.
enum Way {
    /// The webhook's URL, with its `key` and `token`.
    Webhook(reqwest::Url),
    App(Box<ChatApp>),
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The delivery's client-set message ID: `client-` and 32 hex digits.
pub fn google_chat_message_id(idempotency_key: &str) -> String {
    format!("client-{}", &hex_sha256(idempotency_key)[..32])
}

/// The delivery's request ID (the same on every attempt).
pub fn google_chat_request_id(idempotency_key: &str) -> String {
    format!("herald-{}", &hex_sha256(idempotency_key)[..32])
}

/// The Chat thread key of a herald thread.
pub fn google_chat_thread_key(thread: &str) -> String {
    format!("herald-{}", &hex_sha256(thread)[..32])
}

/// The query the create adds to the webhook's URL.
pub fn google_chat_create_query(delivery: &ClaimedDelivery) -> Vec<(&'static str, String)> {
    let mut query = vec![
        (
            "requestId",
            google_chat_request_id(&delivery.idempotency_key),
        ),
        (
            "messageId",
            google_chat_message_id(&delivery.idempotency_key),
        ),
    ];
    if delivery.message.thread().is_some() {
        query.push((
            "messageReplyOption",
            "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD".to_owned(),
        ));
    }
    query
}

/// Google Chat's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Google Chat's default template, for `herald preview` and the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The Message body with the default template and no mentions. See
/// [`render_google_chat_message`].
pub fn google_chat_message(delivery: &ClaimedDelivery) -> Value {
    render_google_chat_message(&Rendering::default(), delivery)
        .expect("the default template renders every valid message")
}

/// The Message body: the destination's template renders the content
/// (text, cards); the fields the connector owns are set here, after it, so
/// a template cannot change them: the thread (its key, or none outside a
/// thread), and no `name` or `clientAssignedMessageId` (the message ID is
/// a query parameter). A text past Chat's limit is cut.
pub fn render_google_chat_message(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<Value, TemplateError> {
    let mut body = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(object) = body.as_object_mut() else {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (a Chat Message)".into(),
        });
    };
    for owned in ["name", "clientAssignedMessageId", "thread", "threadReply"] {
        object.remove(owned);
    }
    if let Some(Value::String(text)) = object.get_mut("text") {
        *text = cut_chars(text, GOOGLE_CHAT_TEXT_CHARS_MAX);
    }
    if let Some(thread) = delivery.message.thread() {
        object.insert(
            "thread".into(),
            json!({"threadKey": google_chat_thread_key(thread)}),
        );
    }
    Ok(body)
}

/// The seconds of a `google.rpc.RetryInfo` `retryDelay` (`"2s"`, `"1.5s"`).
fn retry_delay_ms(error: &Value) -> Option<u64> {
    error["details"].as_array()?.iter().find_map(|detail| {
        let delay = detail["retryDelay"].as_str()?.strip_suffix('s')?;
        let secs: f64 = delay.parse().ok()?;
        (secs >= 0.0).then(|| (secs * 1000.0).round() as u64)
    })
}

/// Chat's answer in outcome classes.
pub fn classify_google_chat_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().map(|j| &j["error"]);
    let google_status = error
        .and_then(|e| e["status"].as_str())
        .unwrap_or("")
        .to_owned();
    let message = error
        .and_then(|e| e["message"].as_str())
        .unwrap_or("")
        .to_owned();
    let mut class = status_class(status);
    if status == 409 && google_status == "ALREADY_EXISTS" {
        // The client-set message ID is this delivery's: it is there.
        class = OutcomeClass::Success;
    }
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    match class {
        OutcomeClass::Success => {
            outcome.remote_ref = json
                .as_ref()
                .and_then(|j| j["name"].as_str())
                .map(str::to_owned);
        }
        OutcomeClass::RateLimited | OutcomeClass::Retryable => {
            outcome.retry_after_ms = error
                .and_then(retry_delay_ms)
                .or_else(|| retry_after.and_then(|v| parse_retry_after_ms(v, now_ms)));
            outcome.error = Some(format!(
                "HTTP {status} from Google Chat {google_status}: {message}"
            ));
        }
        _ => {
            let hint = match status {
                400 => "; Chat refused the message",
                401 | 403 => {
                    "; the webhook's key or token, or the app's access, is not accepted (was the webhook deleted, or the app removed from the space?)"
                }
                404 => "; the space does not exist, or the webhook is gone",
                _ => "",
            };
            outcome.error = Some(format!(
                "HTTP {status} from Google Chat {google_status}: {message}{hint}"
            ));
        }
    }
    outcome
}

impl GoogleChatConnector {
    pub fn new(
        mode: &GoogleChatMode,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<GoogleChatConnector> {
        let way = match mode {
            GoogleChatMode::Webhook { url } => Way::Webhook(url.clone()),
            GoogleChatMode::App {
                api_url,
                space,
                account,
            } => Way::App(Box::new(ChatApp::new(
                api_url.clone(),
                space.clone(),
                account.clone(),
            ))),
        };
        Ok(GoogleChatConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            rendering,
            way,
        })
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        // Rendered before anything is sent: a template that fails sends
        // nothing, and fails this delivery alone.
        let body = match render_google_chat_message(&self.rendering, delivery) {
            Ok(body) => body,
            Err(error) => return render_failed(&error),
        };
        let url = match &self.way {
            Way::App(app) => return app.send(&self.client, delivery, &body, now_ms).await,
            Way::Webhook(url) => url,
        };
        let mut url = url.clone();
        url.query_pairs_mut()
            .extend_pairs(google_chat_create_query(delivery));
        let request = self.client.post(url).json(&body);
        match exchange(request).await {
            Ok(reply) => {
                let mut outcome = classify_google_chat_response(
                    reply.status,
                    reply.header("retry-after"),
                    &reply.body,
                    now_ms,
                );
                outcome.excerpt = reply.excerpt();
                outcome
            }
            Err(outcome) => outcome,
        }
    }

    /// The API mode reads the message back by its client-set ID. A webhook
    /// cannot read messages; the re-send carries the same request and
    /// message IDs, which Chat answers with the message it already made, so
    /// it is not flagged.
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        match &self.way {
            Way::App(app) => app.verify(&self.client, delivery).await,
            Way::Webhook(_) => VerifyReport::unknown(
                "a Chat webhook cannot read messages back; sending again with the same requestId and messageId, which Chat answers with the message it already created",
                false,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_answers_map_to_outcome_classes() {
        let created = classify_google_chat_response(
            200,
            None,
            br#"{"name":"spaces/AAAA/messages/BBBB.BBBB","text":"hi","clientAssignedMessageId":"client-1"}"#,
            0,
        );
        assert_eq!(created.class, OutcomeClass::Success);
        assert_eq!(
            created.remote_ref.as_deref(),
            Some("spaces/AAAA/messages/BBBB.BBBB")
        );
        let exists = classify_google_chat_response(
            409,
            None,
            br#"{"error":{"code":409,"message":"Message with ID client-1 already exists.","status":"ALREADY_EXISTS"}}"#,
            0,
        );
        assert_eq!(exists.class, OutcomeClass::Success);
        let limited = classify_google_chat_response(
            429,
            None,
            br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"2s"}]}}"#,
            0,
        );
        assert_eq!(
            (limited.class, limited.retry_after_ms),
            (OutcomeClass::RateLimited, Some(2_000))
        );
        let bad = classify_google_chat_response(
            400,
            None,
            br#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"txt\"","status":"INVALID_ARGUMENT"}}"#,
            0,
        );
        assert_eq!(bad.class, OutcomeClass::Permanent);
        assert!(bad.error.unwrap().contains("INVALID_ARGUMENT"));
        let gone = classify_google_chat_response(
            404,
            None,
            br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#,
            0,
        );
        assert_eq!(gone.class, OutcomeClass::Permanent);
        let down = classify_google_chat_response(
            503,
            None,
            br#"{"error":{"code":503,"message":"The service is currently unavailable.","status":"UNAVAILABLE"}}"#,
            0,
        );
        assert_eq!(down.class, OutcomeClass::Retryable);
    }

    #[test]
    fn a_plain_message_is_the_text_alone_and_the_thread_is_the_connectors() {
        use crate::domain::{Message, Severity};
        use crate::template::{sample_delivery, Mentions};
        let mut single = sample_delivery("chat", false, None);
        single.message = Message::new("Disk full", "at 99%", Severity::P2, None).unwrap();
        assert_eq!(
            google_chat_message(&single),
            json!({"text": "*[P2] Disk full*\n\nat 99%"})
        );
        let mut update = sample_delivery("chat", false, Some("spaces/A/messages/B"));
        update.message = Message::new("Index rebuilt", "", Severity::P1, Some("INC-7")).unwrap();
        assert_eq!(
            google_chat_message(&update),
            json!({
                "text": "*[P1] Index rebuilt*\nINC-7 · update",
                "thread": {"threadKey": google_chat_thread_key("INC-7")},
            })
        );
        // A template's own thread is replaced; a mention leads the text
        // of a first message; a text past Chat's limit is cut.
        let template = Template::compile(
            r#"{"text": {{ (((mention ~ " ") if mention is not none else "") ~ ("x" * 5000))|tojson }}, "thread": {"threadKey": "mine"}}"#,
        )
        .unwrap();
        let rendering = Rendering {
            template: Some(template),
            mentions: Mentions::parse([("P2", "<users/all>")]).unwrap(),
        };
        let body = render_google_chat_message(&rendering, &single).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with("<users/all> xxx"), "{text}");
        assert_eq!(text.chars().count(), GOOGLE_CHAT_TEXT_CHARS_MAX);
        assert!(body.get("thread").is_none(), "{body}");
    }

    #[test]
    fn ids_are_what_chat_takes() {
        let id = google_chat_message_id("01JD7Q3ZK8W5V2N4XG6T9RBH1C-chat-ops");
        assert!(id.starts_with("client-"));
        assert!(id.len() <= GOOGLE_CHAT_MESSAGE_ID_CHARS_MAX);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert_ne!(
            id,
            google_chat_message_id("01JD7Q3ZK8W5V2N4XG6T9RBH1C-chat-sre")
        );
    }
}
