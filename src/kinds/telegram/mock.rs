//! The Telegram Bot API (`telegram-bot-api.api.json`), at
//! `POST /telegram/bot{token}/{method}` (the connector's API base is
//! `<mock>/telegram/`), JSON bodies:
//!
//! - `sendMessage`: `chat_id` (integer or `@username`) and `text` (1 to
//!   4,096 characters) required; `message_thread_id` posts in that forum
//!   topic; `reply_parameters.message_id` must name a message of the chat
//!   unless `allow_sending_without_reply`;
//! - `editMessageText`: `chat_id`, `message_id` and `text`; an unknown
//!   message answers "message to edit not found", the same text "message
//!   is not modified".
//!
//! The token must look like Telegram's (`<digits>:<letters, digits, - and
//! _>`), else 404 `Not Found`; the first token that posts to a chat owns
//! it, another answers 403 "Forbidden: bot is not a member of the
//! supergroup chat". Answers are `{"ok":true,"result":Message}`; errors
//! `{"ok":false,"error_code","description"}`; a 429 fault answers "Too Many
//! Requests: retry after N" with `parameters.retry_after`. The Bot API
//! cannot read a chat, so the mock has no read route; stats count
//! messages, replies, edits and identical texts per chat.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/telegram/bot";
const TEXT_CHARS_MAX: usize = 4_096;
/// Messages kept per chat (a bound on memory).
const MESSAGES_KEPT_MAX: usize = 10_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TelegramStats {
    /// Per chat id (as sent).
    pub chats: BTreeMap<String, TelegramChatStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TelegramChatStats {
    /// Messages sent.
    pub messages: u64,
    /// Messages that reply to another.
    pub replies: u64,
    /// Edits applied.
    pub edits: u64,
    /// Per forum topic (`message_thread_id`, or `general`): messages.
    pub per_topic: BTreeMap<String, u64>,
    /// Every message's text as sent, in order.
    pub texts: Vec<String>,
    /// Texts sent more than once (a duplicate the chat shows).
    pub duplicated_texts: Vec<String>,
}

struct TgMessage {
    id: i64,
    text: String,
    topic: Option<i64>,
    reply_to: Option<i64>,
    date_secs: i64,
}

struct Chat {
    token: String,
    messages: Vec<TgMessage>,
    /// Texts as first sent, in order (edits do not change them).
    sent: Vec<String>,
    next_id: i64,
    edits: u64,
}

#[derive(Default)]
pub(crate) struct Telegram {
    chats: BTreeMap<String, Chat>,
}

fn failure(status: StatusCode, description: &str) -> Response {
    crate::mock::shared::json(
        status,
        json!({"ok": false, "error_code": status.as_u16(), "description": description}),
    )
}

fn bad_request(description: &str) -> Response {
    failure(
        StatusCode::BAD_REQUEST,
        &format!("Bad Request: {description}"),
    )
}

fn valid_token(token: &str) -> bool {
    token.split_once(':').is_some_and(|(bot, secret)| {
        !bot.is_empty()
            && bot.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The chat id as a key: an integer's digits, or `@username`.
fn chat_key(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => n.as_i64().map(|n| n.to_string()),
        Value::String(s) if s.parse::<i64>().is_ok() => Some(s.clone()),
        Value::String(s) if s.starts_with('@') && s.len() > 1 => Some(s.clone()),
        _ => None,
    }
}

fn render(chat_id: &str, m: &TgMessage) -> Value {
    let chat = match chat_id.parse::<i64>() {
        Ok(id) => {
            json!({"id": id, "type": "supergroup", "title": "herald mock", "is_forum": m.topic.is_some()})
        }
        Err(_) => {
            json!({"id": -1_001_000_000_001_i64, "type": "channel", "title": "herald mock", "username": chat_id.trim_start_matches('@')})
        }
    };
    let mut message = json!({
        "message_id": m.id,
        "from": {"id": 7_000_000_001_i64, "is_bot": true, "first_name": "herald", "username": "herald_mock_bot"},
        "date": m.date_secs,
        "chat": chat,
        "text": m.text,
    });
    if let Some(topic) = m.topic {
        message["message_thread_id"] = json!(topic);
        message["is_topic_message"] = json!(true);
    }
    if let Some(to) = m.reply_to {
        message["reply_to_message"] =
            json!({"message_id": to, "date": m.date_secs, "chat": message["chat"].clone()});
    }
    message
}

impl Telegram {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                return crate::mock::shared::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({
                        "ok": false,
                        "error_code": 429,
                        "description": format!("Too Many Requests: retry after {retry_after_secs}"),
                        "parameters": {"retry_after": retry_after_secs},
                    }),
                );
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                return failure(status, status.canonical_reason().unwrap_or("Error"));
            }
            _ => {}
        }
        let rest = incoming.path.strip_prefix(PREFIX).unwrap_or("");
        let Some((token, method)) = rest.split_once('/') else {
            return failure(StatusCode::NOT_FOUND, "Not Found");
        };
        if !valid_token(token) {
            return failure(StatusCode::NOT_FOUND, "Not Found");
        }
        if incoming.method != Method::POST && incoming.method != Method::GET {
            return failure(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        let body = match serde_json::from_slice::<Value>(&incoming.body) {
            Ok(Value::Object(body)) => body,
            _ => return bad_request("request body must be a JSON object"),
        };
        let Some(chat_id) = body.get("chat_id").and_then(chat_key) else {
            return bad_request("chat_id is empty");
        };
        let chat = self.chats.entry(chat_id.clone()).or_insert_with(|| Chat {
            token: token.to_owned(),
            messages: Vec::new(),
            sent: Vec::new(),
            next_id: 1,
            edits: 0,
        });
        if chat.token != token {
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden: bot is not a member of the supergroup chat",
            );
        }
        let text = match body.get("text") {
            Some(Value::String(text)) if !text.trim().is_empty() => text.clone(),
            Some(Value::String(_)) | None => return bad_request("message text is empty"),
            Some(_) => return bad_request("field \"text\" must be of type String"),
        };
        if text.chars().count() > TEXT_CHARS_MAX {
            return bad_request("message is too long");
        }
        let now_secs = incoming.now_ms / 1000;
        match method {
            "sendMessage" => {
                let topic = match body.get("message_thread_id") {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_i64() {
                        Some(id) if id > 0 => Some(id),
                        _ => return bad_request("message thread not found"),
                    },
                };
                let reply = &body.get("reply_parameters").cloned().unwrap_or(Value::Null);
                let reply_to = match reply {
                    Value::Null => None,
                    Value::Object(_) => {
                        let Some(id) = reply["message_id"].as_i64() else {
                            return bad_request("field \"message_id\" must be of type Integer");
                        };
                        let exists = chat.messages.iter().any(|m| m.id == id);
                        match (exists, reply["allow_sending_without_reply"].as_bool()) {
                            (true, _) => Some(id),
                            (false, Some(true)) => None,
                            (false, _) => return bad_request("message to be replied not found"),
                        }
                    }
                    _ => return bad_request("can't parse reply parameters JSON object"),
                };
                if chat.messages.len() >= MESSAGES_KEPT_MAX {
                    chat.messages.remove(0);
                    chat.sent.remove(0);
                }
                let id = chat.next_id;
                chat.next_id += 1;
                chat.sent.push(text.clone());
                chat.messages.push(TgMessage {
                    id,
                    text,
                    topic,
                    reply_to,
                    date_secs: now_secs,
                });
                let result = render(&chat_id, chat.messages.last().expect("pushed"));
                crate::mock::shared::json(StatusCode::OK, json!({"ok": true, "result": result}))
            }
            "editMessageText" => {
                let Some(id) = body.get("message_id").and_then(Value::as_i64) else {
                    return bad_request("message identifier is not specified");
                };
                let Some(message) = chat.messages.iter_mut().find(|m| m.id == id) else {
                    return bad_request("message to edit not found");
                };
                if message.text == text {
                    return bad_request("message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message");
                }
                message.text = text;
                chat.edits += 1;
                let result = render(&chat_id, message);
                crate::mock::shared::json(StatusCode::OK, json!({"ok": true, "result": result}))
            }
            _ => failure(StatusCode::NOT_FOUND, "Not Found: method not found"),
        }
    }

    pub(crate) fn stats(&self) -> TelegramStats {
        let chats = self
            .chats
            .iter()
            .map(|(id, chat)| {
                let mut stats = TelegramChatStats {
                    messages: chat.messages.len() as u64,
                    replies: chat
                        .messages
                        .iter()
                        .filter(|m| m.reply_to.is_some())
                        .count() as u64,
                    edits: chat.edits,
                    texts: chat.sent.clone(),
                    ..TelegramChatStats::default()
                };
                let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
                for (m, sent) in chat.messages.iter().zip(&chat.sent) {
                    let topic = m.topic.map_or("general".to_owned(), |t| t.to_string());
                    *stats.per_topic.entry(topic).or_insert(0) += 1;
                    *counts.entry(sent).or_insert(0) += 1;
                }
                stats.duplicated_texts = counts
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(t, _)| t.to_owned())
                    .collect();
                (id.clone(), stats)
            })
            .collect();
        TelegramStats { chats }
    }
}
