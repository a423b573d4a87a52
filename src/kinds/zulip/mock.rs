//! Zulip's REST API (`zulip.openapi.yaml`), at `/zulip/api/v1/` (the
//! connector's site URL is `<mock>/zulip/`):
//!
//! - `POST messages` (send-message): a form with `type` (`stream`,
//!   `channel`, `direct`, `private`), `to`, `topic` (required for channel
//!   messages; longer than 60 characters is cut, as Zulip cuts it),
//!   `content` (1 to 10,000 characters); answers
//!   `{"result":"success","msg":"","id"}`;
//! - `GET messages` (get-messages): `anchor` (`newest`, `oldest` or an
//!   id), `num_before`, `num_after` (required), `include_anchor`, `narrow`
//!   (JSON: `channel`/`stream`, `topic`, `sender`, `search` operators),
//!   `apply_markdown`; answers `messages` (`id`, `content`, `subject`,
//!   `sender_email`, `display_recipient`, `timestamp`, ...) oldest first,
//!   with `found_anchor`, `found_oldest`, `found_newest`;
//! - `PATCH messages/{message_id}` (update-message): `content` edits a
//!   message the caller sent (else "You don't have permission to edit this
//!   message"); an unknown id answers "Invalid message(s)".
//!
//! Requests need basic auth (the bot's email and API key); the first key
//! used for an email is its key, another answers 401 `UNAUTHORIZED`
//! "Invalid API key". Every channel exists. Errors are
//! `{"result":"error","msg","code"}`; a 429 fault answers
//! `RATE_LIMIT_HIT` with `retry-after` (seconds). Stats count, per
//! channel, messages, topics, edits and herald keys (the `` `herald KEY` ``
//! line) seen more than once.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{parse_form, Admission, Fault, Incoming};

pub const PREFIX: &str = "/zulip/api/v1/";
const TOPIC_CHARS_MAX: usize = 60;
const CONTENT_CHARS_MAX: usize = 10_000;
/// Messages a get-messages page may ask for, Zulip's own bound.
const NUM_BEFORE_AFTER_MAX: u64 = 5_000;
/// Messages kept (a bound on memory).
const MESSAGES_KEPT_MAX: usize = 20_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ZulipStats {
    /// Per channel name.
    pub streams: BTreeMap<String, ZulipStreamStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ZulipStreamStats {
    /// Messages sent to the channel.
    pub messages: u64,
    /// Per topic: messages in it.
    pub topics: BTreeMap<String, u64>,
    /// Edits applied.
    pub edits: u64,
    /// Every message's first line as sent, in order.
    pub texts: Vec<String>,
    /// herald keys (`` `herald KEY` `` lines) in more than one message.
    pub duplicated_keys: Vec<String>,
    /// get-messages calls answered.
    pub reads: u64,
}

struct ZMessage {
    id: i64,
    stream: String,
    topic: String,
    content: String,
    first_sent: String,
    sender: String,
    timestamp: i64,
}

#[derive(Default)]
pub(crate) struct Zulip {
    keys: BTreeMap<String, String>,
    messages: Vec<ZMessage>,
    edits: BTreeMap<String, u64>,
    reads: BTreeMap<String, u64>,
    next_id: i64,
}

fn zulip_error(status: StatusCode, code: &str, msg: &str) -> Response {
    crate::mock::shared::json(status, json!({"result": "error", "msg": msg, "code": code}))
}

fn bad_request(msg: &str) -> Response {
    zulip_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", msg)
}

fn basic_auth(incoming: &Incoming) -> Option<(String, String)> {
    let value = incoming.header("authorization")?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The herald key in a message's content, if it has the line.
fn herald_key(content: &str) -> Option<String> {
    let line = content.lines().rev().find(|l| !l.trim().is_empty())?;
    line.trim()
        .strip_prefix("`herald ")?
        .strip_suffix('`')
        .map(str::to_owned)
}

fn render(m: &ZMessage) -> Value {
    json!({
        "id": m.id,
        "avatar_url": null,
        "client": "herald",
        "content": m.content,
        "content_type": "text/x-markdown",
        "display_recipient": m.stream,
        "edit_history": [],
        "flags": ["read"],
        "is_me_message": false,
        "reactions": [],
        "recipient_id": 20,
        "sender_email": m.sender,
        "sender_full_name": "herald",
        "sender_id": 8,
        "sender_realm_str": "zulip",
        "stream_id": 7,
        "subject": m.topic,
        "submessages": [],
        "timestamp": m.timestamp,
        "topic_links": [],
        "type": "stream",
    })
}

impl Zulip {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                return crate::mock::shared::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({
                        "code": "RATE_LIMIT_HIT",
                        "msg": "API usage exceeded rate limit",
                        "result": "error",
                        "retry-after": retry_after_secs,
                    }),
                );
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                return zulip_error(
                    status,
                    "BAD_REQUEST",
                    status.canonical_reason().unwrap_or("Error"),
                );
            }
            _ => {}
        }
        let Some((email, key)) = basic_auth(incoming) else {
            return zulip_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "Missing 'Authorization' header for basic auth",
            );
        };
        let owner = self
            .keys
            .entry(email.clone())
            .or_insert_with(|| key.clone());
        if *owner != key {
            return zulip_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid API key");
        }
        let rest = incoming.path.strip_prefix(PREFIX).unwrap_or("");
        match (
            &incoming.method,
            rest.split('/').collect::<Vec<_>>().as_slice(),
        ) {
            (&Method::POST, ["messages"]) => self.send(incoming, &email),
            (&Method::GET, ["messages"]) => self.read(incoming),
            (&Method::PATCH, ["messages", id]) => self.edit(incoming, &email, id),
            _ => zulip_error(StatusCode::NOT_FOUND, "BAD_REQUEST", "Not Found"),
        }
    }

    fn send(&mut self, incoming: &Incoming, sender: &str) -> Response {
        let form = parse_form(std::str::from_utf8(&incoming.body).unwrap_or(""));
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let Some(kind) = field("type") else {
            return bad_request("Missing 'type' argument");
        };
        if !["stream", "channel", "direct", "private"].contains(&kind.as_str()) {
            return bad_request("Invalid 'type'");
        }
        if kind == "direct" || kind == "private" {
            return bad_request("The mock plays channel messages only");
        }
        let Some(to) = field("to").filter(|t| !t.trim().is_empty()) else {
            return bad_request("Missing 'to' argument");
        };
        let Some(content) = field("content") else {
            return bad_request("Missing 'content' argument");
        };
        if content.trim().is_empty() {
            return bad_request("Message must not be empty");
        }
        if content.chars().count() > CONTENT_CHARS_MAX {
            return bad_request("Message too long");
        }
        let Some(topic) = field("topic").or_else(|| field("subject")) else {
            return bad_request("Missing topic");
        };
        if topic.trim().is_empty() {
            return bad_request("Topics are required in this organization.");
        }
        let topic: String = topic.chars().take(TOPIC_CHARS_MAX).collect();
        if self.messages.len() >= MESSAGES_KEPT_MAX {
            self.messages.remove(0);
        }
        self.next_id += 1;
        let id = self.next_id;
        self.messages.push(ZMessage {
            id,
            stream: to,
            topic,
            first_sent: content.lines().next().unwrap_or("").to_owned(),
            content,
            sender: sender.to_owned(),
            timestamp: incoming.now_ms / 1000,
        });
        crate::mock::shared::json(
            StatusCode::OK,
            json!({"result": "success", "msg": "", "id": id}),
        )
    }

    fn read(&mut self, incoming: &Incoming) -> Response {
        let param = |name: &str| incoming.query_param(name);
        // Which argument is missing or wrong, if one is.
        let number = |name: &str| -> Result<u64, String> {
            let Some(text) = param(name) else {
                return Err(format!("Missing '{name}' argument"));
            };
            match text.parse::<u64>() {
                Ok(n) if n <= NUM_BEFORE_AFTER_MAX => Ok(n),
                _ => Err(format!("Invalid '{name}' argument")),
            }
        };
        let (num_before, num_after) = match (number("num_before"), number("num_after")) {
            (Ok(before), Ok(after)) => (before as usize, after as usize),
            (Err(why), _) | (_, Err(why)) => return bad_request(&why),
        };
        let narrow: Vec<Value> = match param("narrow") {
            None => Vec::new(),
            Some(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(terms)) => terms,
                _ => return bad_request("Invalid narrow"),
            },
        };
        let mut filters = Vec::new();
        for term in &narrow {
            let (Some(operator), Some(operand)) =
                (term["operator"].as_str(), term["operand"].as_str())
            else {
                return bad_request("Invalid narrow operator: missing 'operator' or 'operand'");
            };
            if !["channel", "stream", "topic", "sender", "search"].contains(&operator) {
                return bad_request(&format!(
                    "Invalid narrow operator: unknown operator {operator}"
                ));
            }
            let negated = term["negated"].as_bool().unwrap_or(false);
            filters.push((operator.to_owned(), operand.to_owned(), negated));
        }
        let include_anchor = param("include_anchor").is_none_or(|v| v == "true");
        let matches = |m: &ZMessage| {
            filters.iter().all(|(operator, operand, negated)| {
                let hit = match operator.as_str() {
                    "channel" | "stream" => m.stream == *operand,
                    "topic" => m.topic.eq_ignore_ascii_case(operand),
                    "sender" => m.sender.eq_ignore_ascii_case(operand),
                    _ => m.content.to_lowercase().contains(&operand.to_lowercase()),
                };
                hit != *negated
            })
        };
        let matching: Vec<&ZMessage> = self.messages.iter().filter(|m| matches(m)).collect();
        let anchor_id = match param("anchor").as_deref() {
            None | Some("newest") => i64::MAX,
            Some("oldest") => i64::MIN,
            Some(text) => match text.parse::<i64>() {
                Ok(id) => id,
                Err(_) => return bad_request("Invalid anchor"),
            },
        };
        let before: Vec<&&ZMessage> = matching
            .iter()
            .filter(|m| m.id < anchor_id || (include_anchor && m.id == anchor_id))
            .collect();
        let after: Vec<&&ZMessage> = matching.iter().filter(|m| m.id > anchor_id).collect();
        let found_oldest = before.len() <= num_before;
        let found_newest = after.len() <= num_after;
        let found_anchor = matching.iter().any(|m| m.id == anchor_id);
        let mut page: Vec<Value> = before
            .iter()
            .skip(before.len().saturating_sub(num_before))
            .map(|m| render(m))
            .collect();
        page.extend(after.iter().take(num_after).map(|m| render(m)));
        if let Some(stream) = filters
            .iter()
            .find(|(o, _, _)| o == "channel" || o == "stream")
        {
            *self.reads.entry(stream.1.clone()).or_insert(0) += 1;
        }
        crate::mock::shared::json(
            StatusCode::OK,
            json!({
                "result": "success",
                "msg": "",
                "anchor": if anchor_id == i64::MAX { json!(10_000_000_000_000_000_i64) } else { json!(anchor_id) },
                "found_anchor": found_anchor,
                "found_oldest": found_oldest,
                "found_newest": found_newest,
                "history_limited": false,
                "messages": page,
            }),
        )
    }

    fn edit(&mut self, incoming: &Incoming, sender: &str, id: &str) -> Response {
        let Ok(id) = id.parse::<i64>() else {
            return bad_request("Invalid message(s)");
        };
        let form = parse_form(std::str::from_utf8(&incoming.body).unwrap_or(""));
        let content = form
            .iter()
            .find(|(k, _)| k == "content")
            .map(|(_, v)| v.clone());
        let Some(message) = self.messages.iter_mut().find(|m| m.id == id) else {
            return bad_request("Invalid message(s)");
        };
        if !message.sender.eq_ignore_ascii_case(sender) {
            return bad_request("You don't have permission to edit this message");
        }
        let Some(content) = content else {
            return bad_request("Nothing to change");
        };
        if content.trim().is_empty() || content.chars().count() > CONTENT_CHARS_MAX {
            return bad_request("Message must not be empty");
        }
        if message.content != content {
            message.content = content;
            *self.edits.entry(message.stream.clone()).or_insert(0) += 1;
        }
        crate::mock::shared::json(
            StatusCode::OK,
            json!({"result": "success", "msg": "", "detached_uploads": []}),
        )
    }

    pub(crate) fn stats(&self) -> ZulipStats {
        let mut streams: BTreeMap<String, ZulipStreamStats> = BTreeMap::new();
        let mut keys: BTreeMap<(String, String), u64> = BTreeMap::new();
        for m in &self.messages {
            let s = streams.entry(m.stream.clone()).or_default();
            s.messages += 1;
            *s.topics.entry(m.topic.clone()).or_insert(0) += 1;
            s.texts.push(m.first_sent.clone());
            if let Some(key) = herald_key(&m.content) {
                *keys.entry((m.stream.clone(), key)).or_insert(0) += 1;
            }
        }
        for ((stream, key), n) in keys {
            if n > 1 {
                streams.entry(stream).or_default().duplicated_keys.push(key);
            }
        }
        for (stream, edits) in &self.edits {
            streams.entry(stream.clone()).or_default().edits = *edits;
        }
        for (stream, reads) in &self.reads {
            streams.entry(stream.clone()).or_default().reads = *reads;
        }
        ZulipStats { streams }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_line_is_found_at_the_end() {
        assert_eq!(
            herald_key("**[P1] x**\n\nbody\n\n`herald 01J-ops`").as_deref(),
            Some("01J-ops")
        );
        assert_eq!(herald_key("no key here"), None);
    }
}
