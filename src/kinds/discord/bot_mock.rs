//! Discord's bot API for channel messages, at
//! `/discord/api/v10/channels/{channel_id}/messages` (the connector's
//! `url` is `<mock>/discord/api/v10/`), from the Create Message, List
//! Messages, Get Message and Edit Message operations of the description:
//!
//! - `POST .../messages`: create. The body is checked as the webhook
//!   mode's is (400 50035 with Discord's nested `errors`, 50006 for an
//!   empty message), and `nonce` (a string of at most 25 characters or an
//!   integer) and `message_reference` (a message of this channel, unless
//!   `fail_if_not_exists` is false) too. With `enforce_nonce: true`, a
//!   nonce this channel already has from the last [`NONCE_WINDOW_MS`]
//!   answers that first message again and stores nothing. The answer is
//!   the message object, with the `nonce` (Discord echoes it only here).
//! - `GET .../messages?limit=&after=&before=`: newest first, `limit` 1 to
//!   100 (default 50); with `after`, the oldest `limit` messages after it.
//! - `GET` and `PATCH .../messages/{message_id}`: read and edit.
//!
//! Every request needs `Authorization: Bot <token>` (else 401
//! `{"message":"401: Unauthorized","code":0}`); the first token that
//! uses a channel is the bot of that channel, another answers 403 50001
//! Missing Access. A channel id must be a snowflake (digits). Faults: 429
//! answers `{"message":"You are being rate limited.","code":0,"retry_after":<secs>,"global":false}`
//! with `Retry-After`; a failure answers its status with
//! `{"message":"<status>: <reason>","code":0}`; a drop stores the message
//! and then does not answer. Rate-limit headers are not emulated here.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::mock::{checked_body, discord_time, message_parts};
use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/discord/api/v10/channels/";

/// How long a nonce is remembered for `enforce_nonce` (Discord: "the past
/// few minutes").
pub const NONCE_WINDOW_MS: i64 = 5 * 60_000;
const NONCE_CHARS_MAX: usize = 25;
const LIST_LIMIT_DEFAULT: usize = 50;
const LIST_LIMIT_MAX: usize = 100;
/// Discord's epoch (2015-01-01) in ms since the Unix epoch.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;
/// The bot's user id in answers.
const BOT_USER_ID: &str = "1187040000000000001";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscordBotStats {
    /// Per channel id.
    pub channels: BTreeMap<String, DiscordChannelStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscordChannelStats {
    /// Messages stored (replies included).
    pub messages: u64,
    /// Messages that reply to another (`message_reference`).
    pub replies: u64,
    /// Edits applied (PATCH).
    pub edits: u64,
    /// Creates answered with an earlier message because of their nonce.
    pub nonce_replays: u64,
    /// Nonces carried by more than one stored message.
    pub duplicated_nonces: Vec<String>,
}

struct Message {
    id: u64,
    content: String,
    embeds: Vec<Value>,
    nonce: Option<String>,
    reference: Option<u64>,
    created_ms: i64,
    edited_ms: Option<i64>,
}

struct Channel {
    token: String,
    messages: Vec<Message>,
    edits: u64,
    nonce_replays: u64,
}

#[derive(Default)]
pub(crate) struct DiscordBot {
    channels: BTreeMap<String, Channel>,
    last_snowflake: u64,
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    crate::mock::shared::json(status, json!({"code": code, "message": message}))
}

fn form_error(field: &str, code: &str, message: &str) -> Response {
    crate::mock::shared::json(
        StatusCode::BAD_REQUEST,
        json!({
            "code": 50035,
            "message": "Invalid Form Body",
            "errors": {field: {"_errors": [{"code": code, "message": message}]}},
        }),
    )
}

impl DiscordBot {
    fn snowflake(&mut self, now_ms: i64) -> u64 {
        let candidate = u64::try_from(now_ms - DISCORD_EPOCH_MS).unwrap_or(0) << 22;
        self.last_snowflake = candidate.max(self.last_snowflake + 1);
        self.last_snowflake
    }

    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        if let Fault::RateLimit { retry_after_secs } = admission.fault {
            let mut response = crate::mock::shared::json(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "message": "You are being rate limited.",
                    "code": 0,
                    "retry_after": retry_after_secs as f64,
                    "global": false,
                }),
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after_secs));
            return response;
        }
        if let Fault::Fail { status } = admission.fault {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let reason = status.canonical_reason().unwrap_or("Error");
            return error(status, 0, &format!("{}: {reason}", status.as_u16()));
        }
        let token = match incoming
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bot "))
        {
            Some(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => return error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized"),
        };
        let rest = incoming.path.strip_prefix(PREFIX).unwrap_or("");
        let segments: Vec<&str> = rest.split('/').collect();
        let (channel_id, rest) = match segments.as_slice() {
            [channel_id, "messages", rest @ ..] => (*channel_id, rest),
            _ => return error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
        };
        if channel_id.is_empty() || !channel_id.bytes().all(|b| b.is_ascii_digit()) {
            return form_error(
                "channel_id",
                "NUMBER_TYPE_COERCE",
                &format!("Value \"{channel_id}\" is not snowflake."),
            );
        }
        let channel = self
            .channels
            .entry(channel_id.to_owned())
            .or_insert_with(|| Channel {
                token: token.clone(),
                messages: Vec::new(),
                edits: 0,
                nonce_replays: 0,
            });
        if channel.token != token {
            return error(StatusCode::FORBIDDEN, 50001, "Missing Access");
        }
        match (&incoming.method, rest) {
            (&Method::POST, []) => self.create(incoming, channel_id),
            (&Method::GET, []) => self.list(incoming, channel_id),
            (&Method::GET | &Method::PATCH, [message_id]) => {
                self.message(incoming, channel_id, message_id)
            }
            (_, [] | [_]) => error(StatusCode::METHOD_NOT_ALLOWED, 0, "405: Method Not Allowed"),
            _ => error(StatusCode::NOT_FOUND, 0, "404: Not Found"),
        }
    }

    fn create(&mut self, incoming: &Incoming, channel_id: &str) -> Response {
        let body = match checked_body(incoming) {
            Ok(body) => body,
            Err(refused) => return *refused,
        };
        let nonce = match body.get("nonce") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if n.chars().count() <= NONCE_CHARS_MAX => Some(n.clone()),
            Some(Value::String(_)) => {
                return form_error(
                    "nonce",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 25 or fewer in length.",
                )
            }
            Some(Value::Number(n)) if n.is_i64() => Some(n.to_string()),
            Some(_) => {
                return form_error(
                    "nonce",
                    "NONCE_TYPE_INVALID",
                    "Nonce must be an integer or a string.",
                )
            }
        };
        let enforce_nonce = match body.get("enforce_nonce") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return form_error(
                    "enforce_nonce",
                    "BASE_TYPE_BAD_BOOLEAN",
                    "Must be either true or false.",
                )
            }
        };
        let (content, embeds) = match message_parts(&body) {
            Ok(parts) => parts,
            Err(refused) => return *refused,
        };
        let now_ms = incoming.now_ms;
        let channel = self
            .channels
            .get_mut(channel_id)
            .expect("created in handle");
        let reference = match body.get("message_reference") {
            None | Some(Value::Null) => None,
            Some(reference) => {
                let target = reference["message_id"]
                    .as_str()
                    .and_then(|id| id.parse::<u64>().ok());
                let exists = target.is_some_and(|id| channel.messages.iter().any(|m| m.id == id));
                let may_be_missing = reference["fail_if_not_exists"] == json!(false);
                match (target, exists) {
                    (Some(id), true) => Some(id),
                    (Some(_), false) if may_be_missing => None,
                    _ => {
                        return form_error(
                            "message_reference",
                            "REPLIES_UNKNOWN_MESSAGE",
                            "Unknown message",
                        )
                    }
                }
            }
        };
        if let (true, Some(nonce)) = (enforce_nonce, nonce.as_deref()) {
            if let Some(first) = channel.messages.iter().find(|m| {
                m.nonce.as_deref() == Some(nonce) && now_ms - m.created_ms <= NONCE_WINDOW_MS
            }) {
                let answer = render(channel_id, first, true);
                channel.nonce_replays += 1;
                return crate::mock::shared::json(StatusCode::OK, answer);
            }
        }
        let id = self.snowflake(now_ms);
        let channel = self
            .channels
            .get_mut(channel_id)
            .expect("created in handle");
        channel.messages.push(Message {
            id,
            content,
            embeds,
            nonce,
            reference,
            created_ms: now_ms,
            edited_ms: None,
        });
        let message = channel.messages.last().expect("pushed");
        crate::mock::shared::json(StatusCode::OK, render(channel_id, message, true))
    }

    fn list(&self, incoming: &Incoming, channel_id: &str) -> Response {
        // A snowflake parameter, or the name of the one that is not.
        let snowflake = |name: &'static str| -> Result<Option<u64>, &'static str> {
            match incoming.query_param(name) {
                None => Ok(None),
                Some(text) => text.parse::<u64>().map(Some).map_err(|_| name),
            }
        };
        let (after, before) = match (snowflake("after"), snowflake("before")) {
            (Ok(after), Ok(before)) => (after, before),
            (Err(name), _) | (_, Err(name)) => {
                return form_error(name, "NUMBER_TYPE_COERCE", "Value is not snowflake.")
            }
        };
        let limit = match incoming.query_param("limit") {
            None => LIST_LIMIT_DEFAULT,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
                _ => {
                    return form_error(
                        "limit",
                        "NUMBER_TYPE_MAX",
                        "Int should be between 1 and 100.",
                    )
                }
            },
        };
        let channel = &self.channels[channel_id];
        // Stored in id order, oldest first.
        let matching = channel
            .messages
            .iter()
            .filter(|m| after.is_none_or(|a| m.id > a) && before.is_none_or(|b| m.id < b));
        let mut page: Vec<&Message> = if after.is_some() {
            matching.take(limit).collect()
        } else {
            let all: Vec<&Message> = matching.collect();
            all[all.len().saturating_sub(limit)..].to_vec()
        };
        page.reverse();
        let answers: Vec<Value> = page
            .into_iter()
            .map(|m| render(channel_id, m, false))
            .collect();
        crate::mock::shared::json(StatusCode::OK, Value::Array(answers))
    }

    fn message(&mut self, incoming: &Incoming, channel_id: &str, message_id: &str) -> Response {
        let channel = self
            .channels
            .get_mut(channel_id)
            .expect("created in handle");
        let Some(index) = channel
            .messages
            .iter()
            .position(|m| m.id.to_string() == message_id)
        else {
            return error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
        };
        if incoming.method == Method::PATCH {
            let body = match checked_body(incoming) {
                Ok(body) => body,
                Err(refused) => return *refused,
            };
            let message = &mut channel.messages[index];
            match body.get("content") {
                Some(Value::String(c)) => message.content = c.clone(),
                Some(Value::Null) => message.content.clear(),
                _ => {}
            }
            match body.get("embeds") {
                Some(Value::Array(e)) => message.embeds = e.clone(),
                Some(Value::Null) => message.embeds.clear(),
                _ => {}
            }
            message.edited_ms = Some(incoming.now_ms);
            channel.edits += 1;
        }
        crate::mock::shared::json(
            StatusCode::OK,
            render(channel_id, &channel.messages[index], false),
        )
    }

    pub(crate) fn stats(&self) -> DiscordBotStats {
        let channels = self
            .channels
            .iter()
            .map(|(id, channel)| {
                let mut nonces: BTreeMap<&str, u64> = BTreeMap::new();
                for nonce in channel.messages.iter().filter_map(|m| m.nonce.as_deref()) {
                    *nonces.entry(nonce).or_insert(0) += 1;
                }
                let stats = DiscordChannelStats {
                    messages: channel.messages.len() as u64,
                    replies: channel
                        .messages
                        .iter()
                        .filter(|m| m.reference.is_some())
                        .count() as u64,
                    edits: channel.edits,
                    nonce_replays: channel.nonce_replays,
                    duplicated_nonces: nonces
                        .into_iter()
                        .filter(|(_, n)| *n > 1)
                        .map(|(nonce, _)| nonce.to_owned())
                        .collect(),
                };
                (id.clone(), stats)
            })
            .collect();
        DiscordBotStats { channels }
    }
}

/// Embeds as Discord answers them: each with its `type` (`rich` when the
/// request gave none).
fn answered_embeds(embeds: &[Value]) -> Vec<Value> {
    embeds
        .iter()
        .cloned()
        .map(|mut embed| {
            if let Some(object) = embed.as_object_mut() {
                object.entry("type").or_insert_with(|| json!("rich"));
            }
            embed
        })
        .collect()
}

/// The message object as Discord answers with it; the `nonce` only in a
/// create's answer.
fn render(channel_id: &str, message: &Message, with_nonce: bool) -> Value {
    let mut value = json!({
        "id": message.id.to_string(),
        "type": if message.reference.is_some() { 19 } else { 0 },
        "content": message.content,
        "channel_id": channel_id,
        "author": {
            "id": BOT_USER_ID,
            "username": "herald",
            "avatar": null,
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "bot": true,
            "global_name": null,
            "primary_guild": null,
        },
        "attachments": [],
        "embeds": answered_embeds(&message.embeds),
        "mentions": [],
        "mention_roles": [],
        "pinned": false,
        "mention_everyone": false,
        "tts": false,
        "timestamp": discord_time(message.created_ms),
        "edited_timestamp": message.edited_ms.map(discord_time),
        "flags": 0,
        "components": [],
    });
    if let Some(reference) = message.reference {
        value["message_reference"] = json!({
            "type": 0,
            "channel_id": channel_id,
            "message_id": reference.to_string(),
        });
    }
    if with_nonce {
        if let Some(nonce) = &message.nonce {
            value["nonce"] = json!(nonce);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::faults::Faults;
    use crate::mock::testing::{Answer, TestMock};

    const MESSAGES: &str = "/discord/api/v10/channels/555/messages";
    const BOT: (&str, &str) = ("authorization", "Bot tok");
    const JSON: (&str, &str) = ("content-type", "application/json");

    fn create(mock: &TestMock, body: Value) -> Answer {
        mock.send("POST", MESSAGES, &[BOT, JSON], &body.to_string())
    }

    fn channel(mock: &TestMock) -> DiscordChannelStats {
        mock.stats().discord_bot.channels["555"].clone()
    }

    #[test]
    fn an_enforced_nonce_answers_the_first_message_within_the_window() {
        let mut mock = TestMock::new();
        let body = json!({"content": "P1 INC-1", "nonce": "abc", "enforce_nonce": true});
        let first = create(&mock, body.clone());
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.body["nonce"], "abc");
        let again = create(&mock, body.clone());
        assert_eq!(again.body["id"], first.body["id"]);
        assert_eq!(
            (channel(&mock).messages, channel(&mock).nonce_replays),
            (1, 1)
        );

        // Not enforced: the nonce is only carried, and a second message lands.
        let loose = json!({"content": "P1 INC-1", "nonce": "abc"});
        assert_ne!(create(&mock, loose).body["id"], first.body["id"]);
        assert_eq!(channel(&mock).duplicated_nonces, ["abc"]);

        // Past the window, an enforced nonce no longer finds the first.
        mock.now_ms += NONCE_WINDOW_MS + 1;
        let late = create(
            &mock,
            json!({"content": "x", "nonce": "late", "enforce_nonce": true}),
        );
        mock.now_ms += NONCE_WINDOW_MS + 1;
        let later = create(
            &mock,
            json!({"content": "x", "nonce": "late", "enforce_nonce": true}),
        );
        assert_ne!(late.body["id"], later.body["id"]);
    }

    #[test]
    fn requests_are_checked_as_the_bot_api_checks_them() {
        let mock = TestMock::new();
        let anonymous = mock.send("POST", MESSAGES, &[JSON], r#"{"content":"x"}"#);
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        create(&mock, json!({"content": "first"}));
        let other_bot = mock.send(
            "POST",
            MESSAGES,
            &[("authorization", "Bot other"), JSON],
            r#"{"content":"x"}"#,
        );
        assert_eq!(
            (other_bot.status, &other_bot.body["code"]),
            (StatusCode::FORBIDDEN, &json!(50001))
        );
        let long_nonce = create(&mock, json!({"content": "x", "nonce": "n".repeat(26)}));
        assert_eq!(
            long_nonce.body["errors"]["nonce"]["_errors"][0]["code"],
            "BASE_TYPE_MAX_LENGTH"
        );
        let unknown_reply = create(
            &mock,
            json!({"content": "x", "message_reference": {"message_id": "42"}}),
        );
        assert_eq!(unknown_reply.status, StatusCode::BAD_REQUEST);
        let lenient_reply = create(
            &mock,
            json!({"content": "x", "message_reference": {"message_id": "42", "fail_if_not_exists": false}}),
        );
        assert_eq!(lenient_reply.status, StatusCode::OK);
        let empty = create(&mock, json!({"embeds": []}));
        assert_eq!(empty.body["code"], 50006);
        assert_eq!(channel(&mock).messages, 2);
    }

    #[test]
    fn messages_read_back_newest_first_and_after_an_id() {
        let mut mock = TestMock::new();
        let mut ids = Vec::new();
        for n in 0..3 {
            mock.now_ms += 1_000;
            let sent = create(
                &mock,
                json!({"content": format!("m{n}"), "nonce": format!("n{n}")}),
            );
            ids.push(sent.body["id"].as_str().unwrap().to_owned());
        }
        let listed = mock.send("GET", &format!("{MESSAGES}?limit=2"), &[BOT], "");
        let listed_ids: Vec<&str> = listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(listed_ids, [ids[2].as_str(), ids[1].as_str()]);
        assert!(
            listed.body[0].get("nonce").is_none(),
            "Discord echoes the nonce only to the create"
        );
        let after = mock.send(
            "GET",
            &format!("{MESSAGES}?after={}&limit=1", ids[0]),
            &[BOT],
            "",
        );
        assert_eq!(after.body[0]["id"], ids[1].as_str());
        let one = mock.send("GET", &format!("{MESSAGES}/{}", ids[1]), &[BOT], "");
        assert_eq!(one.body["content"], "m1");
        let bad_limit = mock.send("GET", &format!("{MESSAGES}?limit=101"), &[BOT], "");
        assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_drop_stores_the_message_and_faults_answer_in_discords_shapes() {
        let mock = TestMock::new();
        mock.set_faults(
            MESSAGES,
            Faults {
                rate_limit_first: 1,
                retry_after_secs: 2,
                drop_first: 1,
                ..Faults::default()
            },
        );
        let limited = create(
            &mock,
            json!({"content": "x", "nonce": "k", "enforce_nonce": true}),
        );
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.body["retry_after"], 2.0);
        assert_eq!(limited.headers["retry-after"], "2");
        let dropped = create(
            &mock,
            json!({"content": "x", "nonce": "k", "enforce_nonce": true}),
        );
        assert!(dropped.hang_ms.is_some());
        assert_eq!(channel(&mock).messages, 1);
        let resent = create(
            &mock,
            json!({"content": "x", "nonce": "k", "enforce_nonce": true}),
        );
        assert_eq!(resent.status, StatusCode::OK);
        assert_eq!(
            (channel(&mock).messages, channel(&mock).nonce_replays),
            (1, 1)
        );
    }
}
