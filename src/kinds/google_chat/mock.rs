//! A Google Chat space's incoming webhook, at
//! `POST /google-chat/v1/spaces/{space}/messages?key=...&token=...`
//! (`spaces.messages.create` of `google-chat-v1.discovery.json`; the
//! connector's URL is the whole webhook URL).
//!
//! - `key` and `token` are required; the first token used for a space is
//!   its webhook's, another answers 401 `UNAUTHENTICATED`.
//! - The body is a `Message`: fields the discovery document does not list
//!   answer 400 `INVALID_ARGUMENT` ("Invalid JSON payload received. Unknown
//!   name ..."); no `text` and no cards answer 400; a text over 4,096
//!   characters answers 400.
//! - `messageId` must begin with `client-`, have at most 63 characters of
//!   lowercase letters, digits and hyphens (else 400), and is unique in the
//!   space: another create with it answers 409 `ALREADY_EXISTS`.
//! - `requestId`: "Specifying an existing request ID returns the message
//!   created with that ID instead of creating a new message" (counted as a
//!   replay).
//! - `messageReplyOption`: unspecified starts a new thread whatever the
//!   `thread.threadKey`; `REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` replies in
//!   the thread of that key (or starts it); `REPLY_MESSAGE_OR_FAIL` also
//!   starts a new thread for a new key, as the description says.
//!
//! Answers are the created `Message` (`name`, `sender`, `createTime`,
//! `text`, `thread` with `name` and `threadKey`, `space`,
//! `clientAssignedMessageId`). Errors use Google's
//! `{"error":{"code","message","status"}}`; a 429 fault answers
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{civil_utc, Admission, Fault, Incoming};

pub const PREFIX: &str = "/google-chat/v1/spaces/";
const TEXT_CHARS_MAX: usize = 4_096;
const MESSAGE_ID_CHARS_MAX: usize = 63;
const THREAD_KEY_CHARS_MAX: usize = 4_000;
/// Messages kept per space (a bound on memory).
const MESSAGES_KEPT_MAX: usize = 10_000;
/// The fields of a `Message` in the discovery document.
const MESSAGE_FIELDS: [&str; 26] = [
    "accessoryWidgets",
    "actionResponse",
    "annotations",
    "argumentText",
    "attachedGifs",
    "attachment",
    "cards",
    "cardsV2",
    "clientAssignedMessageId",
    "createTime",
    "deleteTime",
    "deletionMetadata",
    "emojiReactionSummaries",
    "fallbackText",
    "formattedText",
    "lastUpdateTime",
    "matchedUrl",
    "name",
    "privateMessageViewer",
    "quotedMessageMetadata",
    "sender",
    "slashCommand",
    "space",
    "text",
    "thread",
    "threadReply",
];
const REPLY_OPTIONS: [&str; 3] = [
    "MESSAGE_REPLY_OPTION_UNSPECIFIED",
    "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
    "REPLY_MESSAGE_OR_FAIL",
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoogleChatStats {
    /// Per space.
    pub spaces: BTreeMap<String, GoogleChatSpaceStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoogleChatSpaceStats {
    /// Messages created.
    pub messages: u64,
    /// Threads started.
    pub threads: u64,
    /// Per thread key: messages in that thread.
    pub messages_per_thread_key: BTreeMap<String, u64>,
    /// Creates answered with the message of an earlier request ID.
    pub request_id_replays: u64,
    /// Creates refused because their message ID was taken.
    pub message_id_conflicts: u64,
    /// Every message's text, in order of creation.
    pub texts: Vec<String>,
    /// Texts created more than once.
    pub duplicated_texts: Vec<String>,
}

struct ChatMessage {
    name: String,
    client_id: Option<String>,
    request_id: Option<String>,
    text: String,
    thread_name: String,
    thread_key: Option<String>,
    created_ms: i64,
}

struct Space {
    token: String,
    messages: Vec<ChatMessage>,
    threads: u64,
    replays: u64,
    conflicts: u64,
}

#[derive(Default)]
pub(crate) struct GoogleChat {
    spaces: BTreeMap<String, Space>,
    serial: u64,
}

fn google_error(status: StatusCode, google_status: &str, message: &str) -> Response {
    crate::mock::shared::json(
        status,
        json!({"error": {"code": status.as_u16(), "message": message, "status": google_status}}),
    )
}

fn rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = civil_utc(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}000Z")
}

fn render(space: &str, m: &ChatMessage) -> Value {
    let mut thread = json!({"name": m.thread_name});
    if let Some(key) = &m.thread_key {
        thread["threadKey"] = json!(key);
    }
    let mut message = json!({
        "name": m.name,
        "sender": {"name": "users/herald-webhook", "displayName": "herald", "type": "BOT"},
        "createTime": rfc3339(m.created_ms),
        "text": m.text,
        "formattedText": m.text,
        "thread": thread,
        "space": {"name": format!("spaces/{space}"), "type": "ROOM", "spaceType": "SPACE"},
        "argumentText": m.text,
    });
    if let Some(id) = &m.client_id {
        message["clientAssignedMessageId"] = json!(id);
    }
    message
}

fn valid_message_id(id: &str) -> bool {
    id.starts_with("client-")
        && id.len() <= MESSAGE_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl GoogleChat {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                return crate::mock::shared::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": {
                        "code": 429,
                        "message": "Resource has been exhausted (e.g. check quota).",
                        "status": "RESOURCE_EXHAUSTED",
                        "details": [{
                            "@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": format!("{retry_after_secs}s"),
                        }],
                    }}),
                );
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let google_status = match status.as_u16() {
                    500 => "INTERNAL",
                    503 => "UNAVAILABLE",
                    504 => "DEADLINE_EXCEEDED",
                    400 => "INVALID_ARGUMENT",
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    _ => "UNKNOWN",
                };
                return google_error(
                    status,
                    google_status,
                    status.canonical_reason().unwrap_or("Error"),
                );
            }
            _ => {}
        }
        let rest = incoming.path.strip_prefix(PREFIX).unwrap_or("");
        let space = match rest.split('/').collect::<Vec<_>>().as_slice() {
            [space, "messages"] if !space.is_empty() => (*space).to_owned(),
            _ => {
                return google_error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "Requested entity was not found.",
                )
            }
        };
        if incoming.method != Method::POST {
            return google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNIMPLEMENTED",
                "A webhook may only create messages.",
            );
        }
        let (Some(_key), Some(token)) =
            (incoming.query_param("key"), incoming.query_param("token"))
        else {
            return google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential.",
            );
        };
        let entry = self.spaces.entry(space.clone()).or_insert_with(|| Space {
            token: token.clone(),
            messages: Vec::new(),
            threads: 0,
            replays: 0,
            conflicts: 0,
        });
        if entry.token != token {
            return google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Invalid webhook token.",
            );
        }
        self.create(incoming, &space)
    }

    fn create(&mut self, incoming: &Incoming, space: &str) -> Response {
        let invalid =
            |message: &str| google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
        let body = match serde_json::from_slice::<Value>(&incoming.body) {
            Ok(Value::Object(body)) => body,
            _ => return invalid("Invalid JSON payload received. Expected an object."),
        };
        if let Some(unknown) = body.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
            return invalid(&format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ));
        }
        let text = match body.get("text") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(_) => return invalid("Invalid value at 'message.text' (TYPE_STRING)"),
        };
        let has_cards = body.get("cardsV2").is_some_and(|c| !c.is_null())
            || body.get("cards").is_some_and(|c| !c.is_null());
        if text.trim().is_empty() && !has_cards {
            return invalid("Message cannot be empty. Discarding empty create message request.");
        }
        if text.chars().count() > TEXT_CHARS_MAX {
            return invalid(&format!(
                "Message text exceeds {TEXT_CHARS_MAX} characters."
            ));
        }
        let thread_key = match body.get("thread").map(|t| &t["threadKey"]) {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) if key.chars().count() <= THREAD_KEY_CHARS_MAX => {
                Some(key.clone())
            }
            Some(_) => return invalid("Invalid thread key: a string of up to 4000 characters."),
        };
        let reply_option = incoming
            .query_param("messageReplyOption")
            .unwrap_or_else(|| REPLY_OPTIONS[0].to_owned());
        if !REPLY_OPTIONS.contains(&reply_option.as_str()) {
            return invalid(&format!(
                "Invalid value at 'message_reply_option' (type.googleapis.com/google.chat.v1.CreateMessageRequest.MessageReplyOption), \"{reply_option}\""
            ));
        }
        let client_id = incoming.query_param("messageId");
        if let Some(id) = &client_id {
            if !valid_message_id(id) {
                return invalid("Invalid message ID: it must begin with client-, and have at most 63 lowercase letters, numbers and hyphens.");
            }
        }
        let request_id = incoming.query_param("requestId").filter(|r| !r.is_empty());
        let chat = self.spaces.get_mut(space).expect("made in handle");
        if let Some(request_id) = &request_id {
            if let Some(first) = chat
                .messages
                .iter()
                .find(|m| m.request_id.as_ref() == Some(request_id))
            {
                let answer = render(space, first);
                chat.replays += 1;
                return crate::mock::shared::json(StatusCode::OK, answer);
            }
        }
        if let Some(id) = &client_id {
            if chat
                .messages
                .iter()
                .any(|m| m.client_id.as_ref() == Some(id))
            {
                chat.conflicts += 1;
                return google_error(
                    StatusCode::CONFLICT,
                    "ALREADY_EXISTS",
                    &format!("Message with ID {id} already exists."),
                );
            }
        }
        let threaded = reply_option != REPLY_OPTIONS[0];
        let existing_thread = thread_key.as_ref().filter(|_| threaded).and_then(|key| {
            chat.messages
                .iter()
                .find(|m| m.thread_key.as_ref() == Some(key))
                .map(|m| m.thread_name.clone())
        });
        self.serial += 1;
        let serial = self.serial;
        let thread_name = match existing_thread {
            Some(name) => name,
            None => {
                chat.threads += 1;
                format!("spaces/{space}/threads/T{serial:011}")
            }
        };
        let message_name = match &client_id {
            Some(id) => format!("spaces/{space}/messages/{id}"),
            None => format!("spaces/{space}/messages/M{serial:011}.M{serial:011}"),
        };
        if chat.messages.len() >= MESSAGES_KEPT_MAX {
            chat.messages.remove(0);
        }
        chat.messages.push(ChatMessage {
            name: message_name,
            client_id,
            request_id,
            text,
            thread_name,
            thread_key: thread_key.filter(|_| threaded),
            created_ms: incoming.now_ms,
        });
        let answer = render(space, chat.messages.last().expect("pushed"));
        crate::mock::shared::json(StatusCode::OK, answer)
    }

    pub(crate) fn stats(&self) -> GoogleChatStats {
        let spaces = self
            .spaces
            .iter()
            .map(|(name, space)| {
                let mut stats = GoogleChatSpaceStats {
                    messages: space.messages.len() as u64,
                    threads: space.threads,
                    request_id_replays: space.replays,
                    message_id_conflicts: space.conflicts,
                    ..GoogleChatSpaceStats::default()
                };
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for m in &space.messages {
                    stats.texts.push(m.text.clone());
                    *counts.entry(m.text.clone()).or_insert(0) += 1;
                    if let Some(key) = &m.thread_key {
                        *stats
                            .messages_per_thread_key
                            .entry(key.clone())
                            .or_insert(0) += 1;
                    }
                }
                stats.duplicated_texts = counts
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(t, _)| t)
                    .collect();
                (name.clone(), stats)
            })
            .collect();
        GoogleChatStats { spaces }
    }
}
