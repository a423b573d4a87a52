//! Slack Web API, at `/slack/api/<method>` (the base URL a connector uses is
//! `<mock>/slack/api/`). Methods: `chat.postMessage`, `chat.update`,
//! `conversations.history`, `conversations.replies` and `auth.test`; any
//! other answers 404 `unknown_method`.
//!
//! As Slack does, every answer to a request that reached a method is HTTP 200
//! with `{"ok": true, ...}` or `{"ok": false, "error": "<code>"}`.
//! Parameters come from the query string and from the body, JSON
//! (`application/json`) or form-urlencoded (where `blocks` and `metadata`
//! are JSON text). Auth is `Authorization: Bearer xox...` (or a `token`
//! parameter): none is `not_authed`, one not starting with `xox` is
//! `invalid_auth`.
//!
//! Channels: every channel exists, named by its name (`#` optional) or by
//! the id the mock answered with, except names starting with `missing`
//! (`channel_not_found`) and names starting with `archived` (posting and
//! updating answer `is_archived`; reading works). A name's id is derived
//! from it (`C` and 10 hex digits); an id-like string the mock never
//! answered with (`C`, `G` or `D` then 8+ capitals or digits) is a channel
//! of its own.
//!
//! Message `ts` is the real clock in microseconds, unique and increasing per
//! channel. `thread_ts` must be the `ts` of a top-level message of the
//! channel (`thread_not_found`). History lists top-level messages only,
//! newest first; replies lists the parent then its replies, oldest first.
//! `metadata` (`{"event_type": str, "event_payload": object}`) is returned
//! only with `include_all_metadata=true`.
//!
//! Faults: 429 answers `Retry-After` and `{"ok":false,"error":"ratelimited"}`;
//! a failure answers its status with `service_unavailable` (503) or
//! `fatal_error`; `slack_error` answers HTTP 200 with that code, after
//! storing the message for `internal_error` and `fatal_error` (Slack may
//! have posted it) and without storing for any other code; a request the
//! method itself refuses (say `channel_not_found`) gets that error instead.
//! A drop stores the message, then never answers.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/slack/api/";

/// Slack's limit on `text`, in characters.
const TEXT_CHARS_MAX: usize = 40_000;
/// Page size limits of the read methods.
const HISTORY_LIMIT_DEFAULT: usize = 100;
const REPLIES_LIMIT_DEFAULT: usize = 1_000;
const PAGE_LIMIT_MAX: usize = 1_000;
/// The identity the mock's bot posts as.
const BOT_USER_ID: &str = "U0HERALDMOCK";
const BOT_ID: &str = "B0HERALDMOCK";

type SlackResult = Result<Value, &'static str>;

/// Effects per channel, keyed by the channel's name (without `#`; an id when
/// the channel was only ever named by id).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SlackStats {
    pub channels: BTreeMap<String, SlackChannelStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SlackChannelStats {
    /// The id the mock answers with for this channel.
    pub id: String,
    /// Top-level messages stored.
    pub messages: u64,
    /// Thread replies stored.
    pub replies: u64,
    /// `chat.update` edits applied.
    pub updates: u64,
    /// Per `metadata.event_payload.idempotency_key`: how many stored
    /// messages (top-level and replies) carry it.
    pub metadata_keys: BTreeMap<String, u64>,
    /// The keys above carried by more than one message.
    pub duplicated_keys: Vec<String>,
}

#[derive(Clone, Debug)]
struct Message {
    ts_us: i64,
    text: String,
    blocks: Option<Value>,
    /// The parent's ts, for a reply.
    parent_us: Option<i64>,
    metadata: Option<Value>,
    edited_us: Option<i64>,
}

#[derive(Debug, Default)]
struct Channel {
    id: String,
    /// Every message, top-level and replies, in ts order.
    messages: Vec<Message>,
    updates: u64,
    last_ts_us: i64,
}

#[derive(Default)]
pub(crate) struct Slack {
    channels: BTreeMap<String, Channel>,
    names_by_id: HashMap<String, String>,
}

fn format_ts(ts_us: i64) -> String {
    format!("{}.{:06}", ts_us / 1_000_000, ts_us % 1_000_000)
}

/// `"1503435956.000247"` (or a number, or whole seconds) in microseconds.
fn parse_ts(text: &str) -> Option<i64> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok().filter(|s| *s >= 0)?;
    let frac_us: i64 = format!("{frac:0<6}").parse().ok()?;
    secs.checked_mul(1_000_000)?.checked_add(frac_us)
}

fn looks_like_id(text: &str) -> bool {
    text.len() >= 9
        && matches!(text.as_bytes()[0], b'C' | b'G' | b'D')
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A stable id for a channel name: `C` and 10 hex digits of its FNV-1a hash.
fn id_for_name(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("C{:010X}", hash & 0xFF_FFFF_FFFF)
}

fn idempotency_key(metadata: &Option<Value>) -> Option<&str> {
    metadata.as_ref()?["event_payload"]["idempotency_key"].as_str()
}

/// Request parameters: the query string, then the body's (which win).
struct Params(Map<String, Value>);

impl Params {
    fn read(incoming: &Incoming) -> Result<Params, &'static str> {
        let mut map: Map<String, Value> = incoming
            .query_pairs()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        if !incoming.body.is_empty() {
            let content_type = incoming.header("content-type").unwrap_or("");
            if content_type.starts_with("application/json") {
                let value: Value =
                    serde_json::from_slice(&incoming.body).map_err(|_| "invalid_json")?;
                let Value::Object(body) = value else {
                    return Err("json_not_object");
                };
                map.extend(body);
            } else if content_type.starts_with("application/x-www-form-urlencoded")
                || content_type.is_empty()
            {
                let text = std::str::from_utf8(&incoming.body).map_err(|_| "invalid_charset")?;
                map.extend(
                    crate::mock::shared::parse_form(text)
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v))),
                );
            } else {
                return Err("invalid_post_type");
            }
        }
        Ok(Params(map))
    }

    /// A non-empty string (numbers and booleans as their text).
    fn string(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn flag(&self, name: &str) -> bool {
        match self.0.get(name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true" || s == "1",
            Some(Value::Number(n)) => n.as_i64() == Some(1),
            _ => false,
        }
    }

    /// A JSON-valued parameter, given as JSON or as JSON text (forms).
    fn json(&self, name: &str) -> Option<Result<Value, ()>> {
        match self.0.get(name)? {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(serde_json::from_str(s).map_err(|_| ())),
            other => Some(Ok(other.clone())),
        }
    }

    fn limit(&self, default: usize) -> usize {
        self.string("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(default)
            .min(PAGE_LIMIT_MAX)
    }
}

/// The content of a post or an update: text, blocks and metadata.
struct Content {
    text: Option<String>,
    blocks: Option<Value>,
    metadata: Option<Value>,
}

fn read_content(params: &Params) -> Result<Content, &'static str> {
    let blocks = match params.json("blocks") {
        None => None,
        Some(Ok(Value::Array(blocks))) if blocks.is_empty() => None,
        Some(Ok(Value::Array(blocks))) => {
            if !blocks.iter().all(|b| b["type"].is_string()) {
                return Err("invalid_blocks");
            }
            Some(Value::Array(blocks))
        }
        Some(_) => return Err("invalid_blocks_format"),
    };
    let text = params.string("text");
    if text.is_none() && blocks.is_none() {
        return Err("no_text");
    }
    if text
        .as_ref()
        .is_some_and(|t| t.chars().count() > TEXT_CHARS_MAX)
    {
        return Err("msg_too_long");
    }
    let metadata = match params.json("metadata") {
        None => None,
        Some(Ok(metadata))
            if metadata["event_type"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
                && metadata["event_payload"].is_object() =>
        {
            Some(json!({
                "event_type": metadata["event_type"],
                "event_payload": metadata["event_payload"],
            }))
        }
        Some(_) => return Err("invalid_metadata_format"),
    };
    Ok(Content {
        text,
        blocks,
        metadata,
    })
}

fn ok(mut body: Value) -> Value {
    body["ok"] = Value::Bool(true);
    body
}

fn answer(result: SlackResult) -> Response {
    match result {
        Ok(body) => crate::mock::shared::json(StatusCode::OK, body),
        Err(code) => error(code),
    }
}

fn error(code: &str) -> Response {
    crate::mock::shared::json(StatusCode::OK, json!({"ok": false, "error": code}))
}

impl Slack {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match &admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                let mut response = crate::mock::shared::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"ok": false, "error": "ratelimited"}),
                );
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(*retry_after_secs));
                return response;
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
                let code = if status == StatusCode::SERVICE_UNAVAILABLE {
                    "service_unavailable"
                } else {
                    "fatal_error"
                };
                return crate::mock::shared::json(status, json!({"ok": false, "error": code}));
            }
            Fault::SlackError { code }
                if !matches!(code.as_str(), "internal_error" | "fatal_error") =>
            {
                return error(code);
            }
            _ => {}
        }
        let result = self.call(incoming);
        match (&admission.fault, result) {
            (Fault::SlackError { code }, Ok(_)) => error(code),
            (_, result) => answer(result),
        }
    }

    fn call(&mut self, incoming: &Incoming) -> SlackResult {
        let method = incoming.path.strip_prefix(PREFIX).unwrap_or("");
        let known = [
            "chat.postMessage",
            "chat.update",
            "conversations.history",
            "conversations.replies",
            "auth.test",
        ];
        if !known.contains(&method) {
            return Err("unknown_method");
        }
        let params = Params::read(incoming)?;
        let bearer = incoming
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_owned);
        match bearer.or_else(|| params.string("token")) {
            None => return Err("not_authed"),
            Some(token) if !token.starts_with("xox") => return Err("invalid_auth"),
            Some(_) => {}
        }
        let now_us = incoming.now_ms * 1_000;
        match method {
            "chat.postMessage" => self.post_message(&params, now_us),
            "chat.update" => self.update(&params, now_us),
            "conversations.history" => self.history(&params),
            "conversations.replies" => self.replies(&params),
            _ => Ok(ok(json!({
                "url": "https://herald-mock.slack.com/",
                "team": "herald mock",
                "user": "herald",
                "team_id": "T0HERALDMOCK",
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
            }))),
        }
    }

    /// The channel's key (its name), creating it on first use.
    fn resolve(&mut self, raw: Option<String>) -> Result<String, &'static str> {
        let raw = raw.ok_or("channel_not_found")?;
        let name = raw.strip_prefix('#').unwrap_or(&raw);
        if name.is_empty() || name.starts_with("missing") {
            return Err("channel_not_found");
        }
        if let Some(known) = self.names_by_id.get(name) {
            return Ok(known.clone());
        }
        let id = if looks_like_id(name) {
            name.to_owned()
        } else {
            id_for_name(name)
        };
        self.names_by_id.insert(id.clone(), name.to_owned());
        self.channels.entry(name.to_owned()).or_insert(Channel {
            id,
            ..Channel::default()
        });
        Ok(name.to_owned())
    }

    fn post_message(&mut self, params: &Params, now_us: i64) -> SlackResult {
        let name = self.resolve(params.string("channel"))?;
        if name.starts_with("archived") {
            return Err("is_archived");
        }
        let content = read_content(params)?;
        let channel = self.channels.get_mut(&name).expect("resolved");
        let parent_us = match params.string("thread_ts") {
            None => None,
            Some(thread_ts) => {
                let parent = parse_ts(&thread_ts).filter(|ts| {
                    channel
                        .messages
                        .iter()
                        .any(|m| m.ts_us == *ts && m.parent_us.is_none())
                });
                Some(parent.ok_or("thread_not_found")?)
            }
        };
        let ts_us = now_us.max(channel.last_ts_us + 1);
        channel.last_ts_us = ts_us;
        channel.messages.push(Message {
            ts_us,
            text: content.text.unwrap_or_default(),
            blocks: content.blocks,
            parent_us,
            metadata: content.metadata,
            edited_us: None,
        });
        // The description of chat.postMessage's `message` has no `metadata`.
        let message = channel.render(channel.messages.last().expect("pushed"), false);
        Ok(ok(json!({
            "channel": channel.id,
            "ts": format_ts(ts_us),
            "message": message,
        })))
    }

    fn update(&mut self, params: &Params, now_us: i64) -> SlackResult {
        let name = self.resolve(params.string("channel"))?;
        if name.starts_with("archived") {
            return Err("is_archived");
        }
        let ts_us = params
            .string("ts")
            .and_then(|ts| parse_ts(&ts))
            .ok_or("message_not_found")?;
        let channel = self.channels.get_mut(&name).expect("resolved");
        let index = channel
            .messages
            .iter()
            .position(|m| m.ts_us == ts_us)
            .ok_or("message_not_found")?;
        let content = read_content(params)?;
        let message = &mut channel.messages[index];
        message.text = content.text.unwrap_or_default();
        message.blocks = content.blocks;
        if content.metadata.is_some() {
            message.metadata = content.metadata;
        }
        message.edited_us = Some(now_us);
        channel.updates += 1;
        let message = &channel.messages[index];
        Ok(ok(json!({
            "channel": channel.id,
            "ts": format_ts(ts_us),
            "text": message.text,
            "message": channel.render(message, true),
        })))
    }

    fn history(&mut self, params: &Params) -> SlackResult {
        let name = self.resolve(params.string("channel"))?;
        let window = Window::read(params)?;
        let channel = &self.channels[&name];
        let include_metadata = params.flag("include_all_metadata");
        let mut top_level: Vec<&Message> = channel
            .messages
            .iter()
            .filter(|m| m.parent_us.is_none() && window.contains(m.ts_us))
            .collect();
        top_level.reverse();
        let start = match params.string("cursor") {
            None => 0,
            Some(cursor) => {
                let cursor_us = decode_cursor(&cursor)?;
                top_level.partition_point(|m| m.ts_us > cursor_us)
            }
        };
        let mut answer = page(
            channel,
            &top_level[start..],
            params.limit(HISTORY_LIMIT_DEFAULT),
            include_metadata,
        );
        // Required by Slack's description of conversations.history (not of
        // conversations.replies); a channel with no pins or channel actions
        // answers `0`, `0` and `null`.
        answer["pin_count"] = json!(0);
        answer["channel_actions_count"] = json!(0);
        answer["channel_actions_ts"] = Value::Null;
        Ok(answer)
    }

    fn replies(&mut self, params: &Params) -> SlackResult {
        let name = self.resolve(params.string("channel"))?;
        let window = Window::read(params)?;
        let channel = &self.channels[&name];
        let parent_us = params
            .string("ts")
            .and_then(|ts| parse_ts(&ts))
            .ok_or("thread_not_found")?;
        let parent = channel
            .messages
            .iter()
            .find(|m| m.ts_us == parent_us && m.parent_us.is_none())
            .ok_or("thread_not_found")?;
        let thread: Vec<&Message> = std::iter::once(parent)
            .chain(
                channel
                    .messages
                    .iter()
                    .filter(|m| m.parent_us == Some(parent_us) && window.contains(m.ts_us)),
            )
            .collect();
        let start = match params.string("cursor") {
            None => 0,
            Some(cursor) => {
                let cursor_us = decode_cursor(&cursor)?;
                thread.partition_point(|m| m.ts_us < cursor_us)
            }
        };
        Ok(page(
            channel,
            &thread[start..],
            params.limit(REPLIES_LIMIT_DEFAULT),
            params.flag("include_all_metadata"),
        ))
    }

    pub(crate) fn stats(&self) -> SlackStats {
        let channels = self
            .channels
            .iter()
            .map(|(name, channel)| {
                let mut metadata_keys = BTreeMap::new();
                for message in &channel.messages {
                    if let Some(key) = idempotency_key(&message.metadata) {
                        *metadata_keys.entry(key.to_owned()).or_insert(0) += 1;
                    }
                }
                let duplicated_keys = metadata_keys
                    .iter()
                    .filter(|(_, count)| **count > 1)
                    .map(|(key, _)| key.clone())
                    .collect();
                let replies = channel
                    .messages
                    .iter()
                    .filter(|m| m.parent_us.is_some())
                    .count() as u64;
                let stats = SlackChannelStats {
                    id: channel.id.clone(),
                    messages: channel.messages.len() as u64 - replies,
                    replies,
                    updates: channel.updates,
                    metadata_keys,
                    duplicated_keys,
                };
                (name.clone(), stats)
            })
            .collect();
        SlackStats { channels }
    }
}

/// `oldest`, `latest` and `inclusive`.
struct Window {
    oldest_us: i64,
    latest_us: i64,
    inclusive: bool,
}

impl Window {
    fn read(params: &Params) -> Result<Window, &'static str> {
        let bound = |name: &str, error: &'static str, default: i64| match params.string(name) {
            None => Ok(default),
            Some(text) => parse_ts(&text).ok_or(error),
        };
        Ok(Window {
            oldest_us: bound("oldest", "invalid_ts_oldest", 0)?,
            latest_us: bound("latest", "invalid_ts_latest", i64::MAX)?,
            inclusive: params.flag("inclusive"),
        })
    }

    fn contains(&self, ts_us: i64) -> bool {
        if self.inclusive {
            self.oldest_us <= ts_us && ts_us <= self.latest_us
        } else {
            self.oldest_us < ts_us && ts_us < self.latest_us
        }
    }
}

fn encode_cursor(ts_us: i64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("next_ts:{ts_us}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, &'static str> {
    base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("next_ts:")?.parse().ok())
        .ok_or("invalid_cursor")
}

fn page(channel: &Channel, messages: &[&Message], limit: usize, include_metadata: bool) -> Value {
    let has_more = messages.len() > limit;
    let next_cursor = if has_more {
        encode_cursor(messages[limit].ts_us)
    } else {
        String::new()
    };
    let rendered: Vec<Value> = messages
        .iter()
        .take(limit)
        .map(|m| channel.render(m, include_metadata))
        .collect();
    ok(json!({
        "messages": rendered,
        "has_more": has_more,
        "response_metadata": {"next_cursor": next_cursor},
    }))
}

impl Channel {
    fn render(&self, message: &Message, include_metadata: bool) -> Value {
        let mut out = json!({
            "type": "message",
            "subtype": "bot_message",
            "ts": format_ts(message.ts_us),
            "text": message.text,
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
        });
        if let Some(blocks) = &message.blocks {
            out["blocks"] = blocks.clone();
        }
        match message.parent_us {
            Some(parent_us) => {
                out["thread_ts"] = json!(format_ts(parent_us));
                out["parent_user_id"] = json!(BOT_USER_ID);
            }
            None => {
                let replies: Vec<&Message> = self
                    .messages
                    .iter()
                    .filter(|m| m.parent_us == Some(message.ts_us))
                    .collect();
                if let Some(last) = replies.last() {
                    out["thread_ts"] = json!(format_ts(message.ts_us));
                    out["reply_count"] = json!(replies.len());
                    out["latest_reply"] = json!(format_ts(last.ts_us));
                }
            }
        }
        if let Some(edited_us) = message.edited_us {
            out["edited"] = json!({"user": BOT_USER_ID, "ts": format_ts(edited_us)});
        }
        if include_metadata {
            if let Some(metadata) = &message.metadata {
                out["metadata"] = metadata.clone();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
