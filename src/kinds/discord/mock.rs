//! Discord webhooks, at `/discord/api/webhooks/{webhook_id}/{webhook_token}`
//! (the connector's webhook URL is `<mock>/discord/api/webhooks/<id>/<token>`):
//!
//! - `POST` with `?wait=true|false` and `?thread_id=`: execute;
//! - `GET`: the webhook object;
//! - `GET` and `PATCH .../messages/{message_id}` with `?thread_id=`: read and
//!   edit a message the webhook sent.
//!
//! Every webhook plays a webhook of a forum channel: a message needs either
//! `thread_name` (it starts a new thread, a forum post, whose id is the
//! starter message's id, and the message's `channel_id` is that thread) or
//! `?thread_id=` naming a thread this webhook created (else 400
//! `{"code":10003,"message":"Unknown Channel"}`); neither is Discord's 400
//! 220001. As on Discord, a message in a thread is found (GET, PATCH) only
//! with its `?thread_id=`; without it the lookup is in the forum channel
//! itself and answers 404 10008 Unknown Message.
//!
//! The webhook id must be a snowflake (digits). The first token used for an
//! id is its token; another token answers 401 50027 Invalid Webhook Token.
//! Bodies are checked against the limits of the API description (`content`
//! 2,000, `embeds` 10, embed `title` 256, `description` 4,096, `fields` 25
//! with `name` 256 and `value` 1,024, footer 2,048, author 256, 6,000 in
//! all; `username` 80, `thread_name` 100; `allowed_mentions.parse` values):
//! violations answer 400 50035 Invalid Form Body with Discord's nested
//! `errors`; no content and no embeds answer 400 50006.
//!
//! `wait=true` answers 200 with the message object; otherwise 204. Every
//! answer carries `X-RateLimit-Limit` (5), `-Remaining`, `-Reset`,
//! `-Reset-After` and `-Bucket` for a 2-second window per webhook; the
//! mock reports the window honestly but does not enforce it (script 429s
//! with faults). Faults: 429 answers Discord's
//! `{"code":0,"message":"You are being rate limited.","retry_after":<secs>,"global":false}`
//! with `Retry-After` and `X-RateLimit-*` (remaining 0); a failure answers
//! its status with `{"message":"<status>: <reason>","code":0}`.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/discord/api/webhooks/";

/// Discord's epoch (2015-01-01) in ms since the Unix epoch.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;
const CONTENT_CHARS_MAX: usize = 2_000;
const EMBEDS_MAX: usize = 10;
const EMBED_TITLE_CHARS_MAX: usize = 256;
const EMBED_DESCRIPTION_CHARS_MAX: usize = 4_096;
const EMBED_FIELDS_MAX: usize = 25;
const EMBED_FIELD_NAME_CHARS_MAX: usize = 256;
const EMBED_FIELD_VALUE_CHARS_MAX: usize = 1_024;
const EMBED_FOOTER_CHARS_MAX: usize = 2_048;
const EMBED_AUTHOR_CHARS_MAX: usize = 256;
const EMBEDS_TOTAL_CHARS_MAX: usize = 6_000;
const USERNAME_CHARS_MAX: usize = 80;
const THREAD_NAME_CHARS_MAX: usize = 100;
/// The rate-limit window the headers report, per webhook.
const RATE_LIMIT_PER_WINDOW: u32 = 5;
const RATE_LIMIT_WINDOW_MS: i64 = 2_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscordStats {
    /// Per webhook id.
    pub webhooks: BTreeMap<String, DiscordWebhookStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscordWebhookStats {
    /// Messages stored (thread starters included).
    pub messages: u64,
    /// Threads (forum posts) created.
    pub threads: u64,
    /// Per thread id: messages in it (the starter included).
    pub messages_per_thread: BTreeMap<String, u64>,
    /// Per thread name: threads created with it.
    pub thread_names: BTreeMap<String, u64>,
    /// The names above used by more than one thread.
    pub duplicated_thread_names: Vec<String>,
    /// Edits applied (PATCH).
    pub edits: u64,
}

struct Message {
    id: u64,
    /// The thread the message is in.
    channel_id: u64,
    content: String,
    embeds: Vec<Value>,
    username: Option<String>,
    created_ms: i64,
    edited_ms: Option<i64>,
}

struct Thread {
    id: u64,
    name: String,
}

struct Hook {
    token: String,
    /// The forum channel the webhook posts to.
    channel_id: u64,
    threads: Vec<Thread>,
    messages: Vec<Message>,
    edits: u64,
    /// Start of the rate-limit window and requests in it.
    window: (i64, u32),
}

#[derive(Default)]
pub(crate) struct Discord {
    hooks: BTreeMap<String, Hook>,
    last_snowflake: u64,
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    crate::mock::shared::json(status, json!({"code": code, "message": message}))
}

/// Collects Discord's nested `errors` object.
#[derive(Default)]
struct FormErrors(Map<String, Value>);

impl FormErrors {
    fn add(&mut self, path: &[String], code: &str, message: String) {
        let mut node = &mut self.0;
        for key in path {
            node = node
                .entry(key.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("error nodes are objects");
        }
        let list = node.entry("_errors").or_insert_with(|| json!([]));
        list.as_array_mut()
            .expect("_errors is a list")
            .push(json!({"code": code, "message": message}));
    }

    fn too_long(&mut self, path: &[String], max: usize) {
        self.add(
            path,
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {max} or fewer in length."),
        );
    }

    fn check_text(&mut self, value: &Value, path: &[String], max: usize) -> usize {
        match value {
            Value::Null => 0,
            Value::String(text) => {
                let chars = text.chars().count();
                if chars > max {
                    self.too_long(path, max);
                }
                chars
            }
            _ => {
                self.add(
                    path,
                    "STRING_TYPE_CONVERT",
                    "Could not interpret value as string.".into(),
                );
                0
            }
        }
    }
}

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// The JSON object of a create or edit, checked as Discord checks it; the
/// refusal is Discord's own answer.
pub(super) fn checked_body(
    incoming: &Incoming,
) -> Result<serde_json::Map<String, Value>, Box<Response>> {
    let body = match serde_json::from_slice::<Value>(&incoming.body) {
        Ok(Value::Object(body)) => body,
        _ => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                50109,
                "The request body contains invalid JSON.",
            )))
        }
    };
    let errors = validate(&body);
    if !errors.0.is_empty() {
        return Err(Box::new(crate::mock::shared::json(
            StatusCode::BAD_REQUEST,
            json!({"code": 50035, "message": "Invalid Form Body", "errors": errors.0}),
        )));
    }
    Ok(body)
}

/// Checks a message body (execute or edit) and returns its errors.
fn validate(body: &Map<String, Value>) -> FormErrors {
    let mut errors = FormErrors::default();
    let null = Value::Null;
    let field = |name: &str| body.get(name).unwrap_or(&null);
    errors.check_text(field("content"), &path(&["content"]), CONTENT_CHARS_MAX);
    errors.check_text(field("username"), &path(&["username"]), USERNAME_CHARS_MAX);
    errors.check_text(
        field("thread_name"),
        &path(&["thread_name"]),
        THREAD_NAME_CHARS_MAX,
    );
    match field("embeds") {
        Value::Null => {}
        Value::Array(embeds) => {
            if embeds.len() > EMBEDS_MAX {
                errors.too_long(&path(&["embeds"]), EMBEDS_MAX);
            }
            let mut total_chars = 0;
            for (i, embed) in embeds.iter().enumerate() {
                let at = |parts: &[&str]| {
                    let mut p = vec!["embeds".to_owned(), i.to_string()];
                    p.extend(parts.iter().map(|s| (*s).to_owned()));
                    p
                };
                if !embed.is_object() {
                    errors.add(
                        &at(&[]),
                        "MODEL_TYPE_CONVERT",
                        "Only dictionaries may be used in a ModelType".into(),
                    );
                    continue;
                }
                total_chars +=
                    errors.check_text(&embed["title"], &at(&["title"]), EMBED_TITLE_CHARS_MAX);
                total_chars += errors.check_text(
                    &embed["description"],
                    &at(&["description"]),
                    EMBED_DESCRIPTION_CHARS_MAX,
                );
                total_chars += errors.check_text(
                    &embed["footer"]["text"],
                    &at(&["footer", "text"]),
                    EMBED_FOOTER_CHARS_MAX,
                );
                total_chars += errors.check_text(
                    &embed["author"]["name"],
                    &at(&["author", "name"]),
                    EMBED_AUTHOR_CHARS_MAX,
                );
                match &embed["fields"] {
                    Value::Null => {}
                    Value::Array(fields) => {
                        if fields.len() > EMBED_FIELDS_MAX {
                            errors.too_long(&at(&["fields"]), EMBED_FIELDS_MAX);
                        }
                        for (j, f) in fields.iter().enumerate() {
                            let j = j.to_string();
                            for (name, max) in [
                                ("name", EMBED_FIELD_NAME_CHARS_MAX),
                                ("value", EMBED_FIELD_VALUE_CHARS_MAX),
                            ] {
                                let p = at(&["fields", &j, name]);
                                if f[name].is_null() {
                                    errors.add(
                                        &p,
                                        "BASE_TYPE_REQUIRED",
                                        "This field is required".into(),
                                    );
                                } else {
                                    total_chars += errors.check_text(&f[name], &p, max);
                                }
                            }
                        }
                    }
                    _ => errors.add(
                        &at(&["fields"]),
                        "LIST_TYPE_CONVERT",
                        "Only iterables may be used in a ListType".into(),
                    ),
                }
            }
            if total_chars > EMBEDS_TOTAL_CHARS_MAX {
                errors.add(
                    &path(&["embeds"]),
                    "MAX_EMBED_SIZE_EXCEEDED",
                    format!("Embed size exceeds maximum size of {EMBEDS_TOTAL_CHARS_MAX}"),
                );
            }
        }
        _ => errors.add(
            &path(&["embeds"]),
            "LIST_TYPE_CONVERT",
            "Only iterables may be used in a ListType".into(),
        ),
    }
    if let Some(parse) = field("allowed_mentions").get("parse") {
        let valid = parse.as_array().is_some_and(|values| {
            values
                .iter()
                .all(|v| matches!(v.as_str(), Some("roles" | "users" | "everyone")))
        });
        if !valid {
            errors.add(
                &path(&["allowed_mentions", "parse"]),
                "ENUM_TYPE_COERCE",
                "Value must be one of {'roles', 'users', 'everyone'}.".into(),
            );
        }
    }
    errors
}

fn is_empty_message(content: &str, embeds: &[Value]) -> bool {
    content.trim().is_empty() && embeds.is_empty()
}

/// A message's `content` and `embeds`, as a webhook execute and the bot's
/// Create Message read them; Discord refuses a message with neither.
pub(super) fn message_parts(
    body: &serde_json::Map<String, Value>,
) -> Result<(String, Vec<Value>), Box<Response>> {
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let embeds = body
        .get("embeds")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if is_empty_message(&content, &embeds) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            50006,
            "Cannot send an empty message",
        )));
    }
    Ok((content, embeds))
}

pub(super) fn discord_time(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = crate::mock::shared::civil_utc(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}000+00:00")
}

fn bucket(webhook_id: &str) -> String {
    let hash = webhook_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn rate_limit_headers(
    headers: &mut HeaderMap,
    webhook_id: &str,
    remaining: u32,
    reset_at_ms: i64,
    now_ms: i64,
) {
    let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let pairs = [
        ("x-ratelimit-limit", RATE_LIMIT_PER_WINDOW.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", secs(reset_at_ms)),
        ("x-ratelimit-reset-after", secs(reset_at_ms - now_ms)),
        ("x-ratelimit-bucket", bucket(webhook_id)),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_str(&value).expect("ascii"));
    }
}

impl Discord {
    fn snowflake(&mut self, now_ms: i64) -> u64 {
        let candidate = u64::try_from(now_ms - DISCORD_EPOCH_MS).unwrap_or(0) << 22;
        self.last_snowflake = candidate.max(self.last_snowflake + 1);
        self.last_snowflake
    }

    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        let rest = incoming.path.strip_prefix(PREFIX).unwrap_or("");
        let segments: Vec<&str> = rest.split('/').collect();
        let webhook_id = segments.first().copied().unwrap_or("").to_owned();
        let now_ms = incoming.now_ms;
        if let Fault::RateLimit { retry_after_secs } = admission.fault {
            let mut response = crate::mock::shared::json(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "code": 0,
                    "message": "You are being rate limited.",
                    "retry_after": retry_after_secs as f64,
                    "global": false,
                }),
            );
            let headers = response.headers_mut();
            let reset_ms = now_ms + i64::try_from(retry_after_secs * 1000).unwrap_or(i64::MAX / 2);
            rate_limit_headers(headers, &webhook_id, 0, reset_ms, now_ms);
            headers.insert("retry-after", HeaderValue::from(retry_after_secs));
            headers.insert("x-ratelimit-scope", HeaderValue::from_static("user"));
            return response;
        }
        if let Fault::Fail { status } = admission.fault {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let reason = status.canonical_reason().unwrap_or("Error");
            return error(status, 0, &format!("{}: {reason}", status.as_u16()));
        }
        let mut response = self.route(incoming, &segments);
        if let Some(hook) = self.hooks.get_mut(&webhook_id) {
            if now_ms >= hook.window.0 + RATE_LIMIT_WINDOW_MS {
                hook.window = (now_ms, 0);
            }
            hook.window.1 += 1;
            let remaining = RATE_LIMIT_PER_WINDOW.saturating_sub(hook.window.1);
            let reset_at_ms = hook.window.0 + RATE_LIMIT_WINDOW_MS;
            rate_limit_headers(
                response.headers_mut(),
                &webhook_id,
                remaining,
                reset_at_ms,
                now_ms,
            );
        }
        response
    }

    fn route(&mut self, incoming: &Incoming, segments: &[&str]) -> Response {
        let (id, token, rest) = match segments {
            [id, token, rest @ ..] if !token.is_empty() => (*id, *token, rest),
            _ => return error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return crate::mock::shared::json(
                StatusCode::BAD_REQUEST,
                json!({
                    "code": 50035,
                    "message": "Invalid Form Body",
                    "errors": {"webhook_id": {"_errors": [
                        {"code": "NUMBER_TYPE_COERCE", "message": format!("Value \"{id}\" is not snowflake.")}
                    ]}},
                }),
            );
        }
        if !self.hooks.contains_key(id) {
            let channel_id = self.snowflake(incoming.now_ms);
            self.hooks.insert(
                id.to_owned(),
                Hook {
                    token: token.to_owned(),
                    channel_id,
                    threads: Vec::new(),
                    messages: Vec::new(),
                    edits: 0,
                    window: (incoming.now_ms, 0),
                },
            );
        }
        if self.hooks[id].token != token {
            return error(StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token");
        }
        let thread_id = match incoming.query_param("thread_id") {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(thread_id) => Some(thread_id),
                Err(_) => return error(StatusCode::BAD_REQUEST, 10003, "Unknown Channel"),
            },
        };
        match (&incoming.method, rest) {
            (&Method::POST, []) => self.execute(incoming, id, thread_id),
            (&Method::GET, []) => {
                let hook = &self.hooks[id];
                crate::mock::shared::json(
                    StatusCode::OK,
                    json!({
                        "id": id,
                        "type": 1,
                        "name": "herald",
                        "channel_id": hook.channel_id.to_string(),
                        "guild_id": "1",
                        "token": hook.token,
                        "avatar": null,
                        "application_id": null,
                    }),
                )
            }
            (&Method::GET | &Method::PATCH, ["messages", message_id]) => {
                self.message(incoming, id, thread_id, message_id)
            }
            (_, [] | ["messages", _]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, 0, "405: Method Not Allowed")
            }
            _ => error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
        }
    }

    fn execute(&mut self, incoming: &Incoming, id: &str, thread_id: Option<u64>) -> Response {
        let body = match checked_body(incoming) {
            Ok(body) => body,
            Err(refused) => return *refused,
        };
        let (content, embeds) = match message_parts(&body) {
            Ok(parts) => parts,
            Err(refused) => return *refused,
        };
        let thread_name = body
            .get("thread_name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty());
        let message_id = self.snowflake(incoming.now_ms);
        let hook = self.hooks.get_mut(id).expect("created in route");
        let channel_id = match (thread_id, thread_name) {
            (Some(thread_id), _) => {
                if !hook.threads.iter().any(|t| t.id == thread_id) {
                    return error(StatusCode::BAD_REQUEST, 10003, "Unknown Channel");
                }
                thread_id
            }
            (None, Some(name)) => {
                hook.threads.push(Thread {
                    id: message_id,
                    name: name.to_owned(),
                });
                message_id
            }
            (None, None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    220_001,
                    "Webhooks posted to forum channels must have a thread_name or thread_id",
                )
            }
        };
        hook.messages.push(Message {
            id: message_id,
            channel_id,
            content,
            embeds,
            username: body
                .get("username")
                .and_then(Value::as_str)
                .map(str::to_owned),
            created_ms: incoming.now_ms,
            edited_ms: None,
        });
        let wait = incoming
            .query_param("wait")
            .is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
        if wait {
            let message = hook.messages.last().expect("pushed");
            crate::mock::shared::json(StatusCode::OK, render(id, message))
        } else {
            StatusCode::NO_CONTENT.into_response()
        }
    }

    fn message(
        &mut self,
        incoming: &Incoming,
        id: &str,
        thread_id: Option<u64>,
        message_id: &str,
    ) -> Response {
        let hook = self.hooks.get_mut(id).expect("created in route");
        if let Some(thread_id) = thread_id {
            if !hook.threads.iter().any(|t| t.id == thread_id) {
                return error(StatusCode::BAD_REQUEST, 10003, "Unknown Channel");
            }
        }
        let channel_id = thread_id.unwrap_or(hook.channel_id);
        let Some(index) = hook
            .messages
            .iter()
            .position(|m| m.id.to_string() == message_id && m.channel_id == channel_id)
        else {
            return error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
        };
        if incoming.method == Method::PATCH {
            let body = match checked_body(incoming) {
                Ok(body) => body,
                Err(refused) => return *refused,
            };
            let message = &hook.messages[index];
            let content = match body.get("content") {
                Some(Value::String(c)) => c.clone(),
                Some(Value::Null) => String::new(),
                _ => message.content.clone(),
            };
            let embeds = match body.get("embeds") {
                Some(Value::Array(e)) => e.clone(),
                Some(Value::Null) => Vec::new(),
                _ => message.embeds.clone(),
            };
            if is_empty_message(&content, &embeds) {
                return error(
                    StatusCode::BAD_REQUEST,
                    50006,
                    "Cannot send an empty message",
                );
            }
            let message = &mut hook.messages[index];
            message.content = content;
            message.embeds = embeds;
            message.edited_ms = Some(incoming.now_ms);
            hook.edits += 1;
        }
        crate::mock::shared::json(StatusCode::OK, render(id, &hook.messages[index]))
    }

    pub(crate) fn stats(&self) -> DiscordStats {
        let webhooks = self
            .hooks
            .iter()
            .map(|(id, hook)| {
                let mut messages_per_thread = BTreeMap::new();
                for message in &hook.messages {
                    *messages_per_thread
                        .entry(message.channel_id.to_string())
                        .or_insert(0) += 1;
                }
                let mut thread_names = BTreeMap::new();
                for thread in &hook.threads {
                    *thread_names.entry(thread.name.clone()).or_insert(0) += 1;
                }
                let duplicated_thread_names = thread_names
                    .iter()
                    .filter(|(_, n)| **n > 1)
                    .map(|(name, _)| name.clone())
                    .collect();
                let stats = DiscordWebhookStats {
                    messages: hook.messages.len() as u64,
                    threads: hook.threads.len() as u64,
                    messages_per_thread,
                    thread_names,
                    duplicated_thread_names,
                    edits: hook.edits,
                };
                (id.clone(), stats)
            })
            .collect();
        DiscordStats { webhooks }
    }
}

/// Embeds as Discord answers with them: each with its `type` (`rich` for
/// the embeds a webhook sends).
fn rendered_embeds(embeds: &[Value]) -> Vec<Value> {
    let mut embeds = embeds.to_vec();
    for embed in embeds.iter_mut().filter_map(Value::as_object_mut) {
        embed
            .entry("type")
            .or_insert_with(|| Value::String("rich".to_owned()));
    }
    embeds
}

/// The message object, as Discord answers with it.
fn render(webhook_id: &str, message: &Message) -> Value {
    json!({
        "id": message.id.to_string(),
        "type": 0,
        "content": message.content,
        "channel_id": message.channel_id.to_string(),
        "author": {
            "id": webhook_id,
            "username": message.username.as_deref().unwrap_or("herald"),
            "avatar": null,
            "discriminator": "0000",
            "public_flags": 0,
            "flags": 0,
            "bot": true,
            "global_name": null,
            "primary_guild": null,
        },
        "attachments": [],
        "embeds": rendered_embeds(&message.embeds),
        "mentions": [],
        "mention_roles": [],
        "pinned": false,
        "mention_everyone": false,
        "tts": false,
        "timestamp": discord_time(message.created_ms),
        "edited_timestamp": message.edited_ms.map(discord_time),
        "flags": 0,
        "components": [],
        "webhook_id": webhook_id,
    })
}

#[cfg(test)]
mod tests;
