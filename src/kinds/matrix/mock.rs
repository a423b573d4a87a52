//! A Matrix homeserver's client-server API, at `/matrix/` (the connector's
//! `url` is `<mock>/matrix/`), from the description's `sendMessage`,
//! `getOneRoomEvent` and `getRoomEvents` operations and its prose on
//! transaction ids, threads and edits:
//!
//! - `PUT /matrix/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`:
//!   the body is the event's content, a JSON object (else 400 `M_NOT_JSON`
//!   or `M_BAD_JSON`); an `m.room.message` needs string `msgtype` and
//!   `body`, and `format` (only `org.matrix.custom.html`) goes with
//!   `formatted_body`. A content over [`CONTENT_BYTES_MAX`] is 413
//!   `M_TOO_LARGE`. The same access token, path and txnId again answers the
//!   first event's id and stores nothing (a "retransmission"), for
//!   [`TXN_REMEMBERED_MS`] (24 hours, as Synapse keeps them). An
//!   `m.relates_to` needs `rel_type` and an `event_id` of this room (400
//!   `M_UNKNOWN` for an unknown one); an `m.thread` may not start from an
//!   event that itself has a relation (400 `M_UNKNOWN`, as the description
//!   says); an `m.replace` that breaks the description's rules (another
//!   sender, an edit of an edit, no `m.new_content`) is stored but ignored,
//!   as the description says clients must, and counted apart.
//! - `GET .../rooms/{roomId}/event/{eventId}`: one event (404
//!   `M_NOT_FOUND`).
//! - `GET .../rooms/{roomId}/messages?dir=b|f&limit=`: the room's events,
//!   newest first for `b`; `unsigned.transaction_id` only for the token
//!   that sent the event, as the description says.
//!
//! Every request needs `Authorization: Bearer <token>` (else 401
//! `M_MISSING_TOKEN`); the first token that uses a room is its member,
//! another gets 403 `M_FORBIDDEN`. A room id starts with `!` (400
//! `M_INVALID_PARAM`). Faults: a rate limit answers 429
//! `{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":<ms>}`
//! with `Retry-After`; a failure answers its status with
//! `{"errcode":"M_UNKNOWN","error":"..."}`; a drop stores the event (and
//! its txnId) and then does not answer.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

/// Everything the emulation serves.
pub const PREFIX: &str = "/matrix/";
/// The rooms' routes.
pub const ROOMS: &str = "/matrix/_matrix/client/v3/rooms/";
/// The mock's server name, in event ids and user ids.
pub const SERVER_NAME: &str = "herald.mock";
/// A content larger than this is refused (Matrix caps an event at 65,536
/// bytes; the envelope takes the rest).
pub const CONTENT_BYTES_MAX: usize = 65_000;
/// How long a txnId is remembered, as Synapse does (the description names
/// no window): a retransmission later than this makes a new event.
pub const TXN_REMEMBERED_MS: i64 = 24 * 3_600_000;
const MESSAGES_LIMIT_DEFAULT: usize = 10;
const MESSAGES_LIMIT_MAX: usize = 1_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MatrixStats {
    /// Per room id.
    pub rooms: BTreeMap<String, MatrixRoomStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MatrixRoomStats {
    /// Events stored, edits and thread messages included.
    pub events: u64,
    /// Events without a relation: what a room shows as messages.
    pub messages: u64,
    /// Events in a thread (`m.thread`).
    pub thread_events: u64,
    /// Valid edits (`m.replace`).
    pub edits: u64,
    /// Edits a client must ignore (another sender, an edit of an edit, no
    /// `m.new_content`).
    pub ignored_edits: u64,
    /// Sends answered with an earlier event because of their txnId.
    pub txn_replays: u64,
    /// txnIds (of one access token) that made more than one event: sends
    /// repeated after the homeserver forgot them ([`TXN_REMEMBERED_MS`]).
    pub duplicated_txn_ids: Vec<String>,
    /// Message bodies (`body`, or `m.new_content.body` for an edit) stored
    /// more than once by sends with different txnIds: what a reader would
    /// see twice.
    pub duplicated_bodies: u64,
}

struct Event {
    event_id: String,
    event_type: String,
    token: String,
    txn_id: String,
    content: Value,
    origin_server_ts: i64,
}

impl Event {
    fn relation(&self) -> Option<(&str, &str)> {
        let relates = self.content.get("m.relates_to")?;
        Some((relates["rel_type"].as_str()?, relates["event_id"].as_str()?))
    }
}

struct Room {
    member_token: String,
    events: Vec<Event>,
    /// (token, event type, txnId) to the event it made and when.
    txns: HashMap<(String, String, String), (String, i64)>,
    txn_replays: u64,
}

#[derive(Default)]
pub(crate) struct Matrix {
    rooms: BTreeMap<String, Room>,
    events_made: u64,
}

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    crate::mock::shared::json(status, json!({"errcode": errcode, "error": message}))
}

/// The user a token stands for: one user per token.
fn sender_of(token: &str) -> String {
    let sum: u64 = token.bytes().map(u64::from).sum();
    format!("@herald-{sum}:{SERVER_NAME}")
}

/// Decodes `%XX` in a path segment.
fn decode_segment(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Matrix {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        if let Fault::RateLimit { retry_after_secs } = admission.fault {
            let mut response = crate::mock::shared::json(
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "errcode": "M_LIMIT_EXCEEDED",
                    "error": "Too many requests",
                    "retry_after_ms": retry_after_secs * 1000,
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
            return error(status, "M_UNKNOWN", reason);
        }
        let Some(rest) = incoming.path.strip_prefix(ROOMS) else {
            return error(
                StatusCode::NOT_FOUND,
                "M_UNRECOGNIZED",
                "Unrecognized request",
            );
        };
        let token = match incoming
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            Some(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "M_MISSING_TOKEN",
                    "Missing access token.",
                )
            }
        };
        let segments: Vec<String> = rest.split('/').map(decode_segment).collect();
        let Some(room_id) = segments.first().cloned() else {
            return error(
                StatusCode::NOT_FOUND,
                "M_UNRECOGNIZED",
                "Unrecognized request",
            );
        };
        if !room_id.starts_with('!') {
            return error(
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
                &format!("{room_id:?} is not a room id"),
            );
        }
        let room = self.rooms.entry(room_id.clone()).or_insert_with(|| Room {
            member_token: token.clone(),
            events: Vec::new(),
            txns: HashMap::new(),
            txn_replays: 0,
        });
        if room.member_token != token {
            return error(
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                &format!("User {} not in room {room_id}", sender_of(&token)),
            );
        }
        let parts: Vec<&str> = segments[1..].iter().map(String::as_str).collect();
        match (&incoming.method, parts.as_slice()) {
            (&Method::PUT, ["send", event_type, txn_id]) if !txn_id.is_empty() => {
                self.send(incoming, &room_id, &token, event_type, txn_id)
            }
            (&Method::GET, ["event", event_id]) => {
                let room = &self.rooms[&room_id];
                match room.events.iter().find(|e| e.event_id == *event_id) {
                    Some(event) => {
                        crate::mock::shared::json(StatusCode::OK, render(&room_id, event, &token))
                    }
                    None => error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Event not found."),
                }
            }
            (&Method::GET, ["messages"]) => self.messages(incoming, &room_id, &token),
            (_, ["send", _, _] | ["event", _] | ["messages"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "M_UNRECOGNIZED",
                "Unrecognized request",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "M_UNRECOGNIZED",
                "Unrecognized request",
            ),
        }
    }

    fn send(
        &mut self,
        incoming: &Incoming,
        room_id: &str,
        token: &str,
        event_type: &str,
        txn_id: &str,
    ) -> Response {
        let room = self.rooms.get_mut(room_id).expect("made in handle");
        let key = (token.to_owned(), event_type.to_owned(), txn_id.to_owned());
        // A retransmission: the first answer again, whatever the body.
        if let Some((event_id, _)) = room
            .txns
            .get(&key)
            .filter(|(_, at_ms)| incoming.now_ms - at_ms <= TXN_REMEMBERED_MS)
        {
            let answer = json!({"event_id": event_id});
            room.txn_replays += 1;
            return crate::mock::shared::json(StatusCode::OK, answer);
        }
        if incoming.body.len() > CONTENT_BYTES_MAX {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "event too large",
            );
        }
        let content: Value = match serde_json::from_slice(&incoming.body) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "M_BAD_JSON",
                    "Content must be a JSON object.",
                )
            }
            Err(_) => return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Content not JSON."),
        };
        if event_type == "m.room.message" {
            if let Err(problem) = message_problem(&content) {
                return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", &problem);
            }
        }
        if let Some(relates) = content.get("m.relates_to") {
            let (Some(rel_type), Some(target)) =
                (relates["rel_type"].as_str(), relates["event_id"].as_str())
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "M_BAD_JSON",
                    "m.relates_to needs rel_type and event_id",
                );
            };
            let Some(parent) = room.events.iter().find(|e| e.event_id == target) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Can't send relation to unknown event",
                );
            };
            if rel_type == "m.thread" && parent.relation().is_some() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Cannot start threads from an event with a relation",
                );
            }
        }
        self.events_made += 1;
        let event_id = format!("$herald{:08}:{SERVER_NAME}", self.events_made);
        let room = self.rooms.get_mut(room_id).expect("made in handle");
        room.events.push(Event {
            event_id: event_id.clone(),
            event_type: event_type.to_owned(),
            token: token.to_owned(),
            txn_id: txn_id.to_owned(),
            content,
            origin_server_ts: incoming.now_ms,
        });
        room.txns.insert(key, (event_id.clone(), incoming.now_ms));
        crate::mock::shared::json(StatusCode::OK, json!({"event_id": event_id}))
    }

    fn messages(&self, incoming: &Incoming, room_id: &str, token: &str) -> Response {
        let forwards = match incoming.query_param("dir").as_deref() {
            Some("f") => true,
            Some("b") | None => false,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "M_INVALID_PARAM",
                    "dir must be one of b, f",
                )
            }
        };
        let limit = match incoming.query_param("limit") {
            None => MESSAGES_LIMIT_DEFAULT,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) => limit.clamp(1, MESSAGES_LIMIT_MAX),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "M_INVALID_PARAM",
                        "limit must be an integer",
                    )
                }
            },
        };
        let room = &self.rooms[room_id];
        let mut events: Vec<&Event> = room.events.iter().collect();
        if !forwards {
            events.reverse();
        }
        let chunk: Vec<Value> = events
            .into_iter()
            .take(limit)
            .map(|e| render(room_id, e, token))
            .collect();
        crate::mock::shared::json(StatusCode::OK, json!({"chunk": chunk, "start": "t0"}))
    }

    pub(crate) fn stats(&self) -> MatrixStats {
        let rooms = self
            .rooms
            .iter()
            .map(|(id, room)| {
                let mut stats = MatrixRoomStats {
                    events: room.events.len() as u64,
                    txn_replays: room.txn_replays,
                    ..MatrixRoomStats::default()
                };
                let mut bodies: BTreeMap<&str, u64> = BTreeMap::new();
                let mut txns: BTreeMap<(&str, &str), u64> = BTreeMap::new();
                for event in &room.events {
                    *txns.entry((&event.token, &event.txn_id)).or_insert(0) += 1;
                    match event.relation() {
                        None => stats.messages += 1,
                        Some(("m.thread", _)) => stats.thread_events += 1,
                        Some(("m.replace", target)) => {
                            if edit_is_valid(room, event, target) {
                                stats.edits += 1;
                            } else {
                                stats.ignored_edits += 1;
                            }
                        }
                        Some(_) => {}
                    }
                    let body = event.content.get("m.new_content").unwrap_or(&event.content)["body"]
                        .as_str();
                    if let Some(body) = body {
                        *bodies.entry(body).or_insert(0) += 1;
                    }
                }
                stats.duplicated_bodies = bodies.values().filter(|n| **n > 1).count() as u64;
                stats.duplicated_txn_ids = txns
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|((_, txn_id), _)| txn_id.to_owned())
                    .collect();
                (id.clone(), stats)
            })
            .collect();
        MatrixStats { rooms }
    }
}

/// Why an `m.room.message` content is refused, if it is.
fn message_problem(content: &Value) -> Result<(), String> {
    if !content["msgtype"].is_string() {
        return Err("'msgtype' must be a string".into());
    }
    if !content["body"].is_string() {
        return Err("'body' must be a string".into());
    }
    match (content.get("format"), content.get("formatted_body")) {
        (None, None) => Ok(()),
        (Some(Value::String(format)), Some(Value::String(_)))
            if format == "org.matrix.custom.html" =>
        {
            Ok(())
        }
        (Some(Value::String(format)), Some(Value::String(_))) => Err(format!(
            "'format' {format:?} is not supported; only org.matrix.custom.html is"
        )),
        _ => Err("'format' and 'formatted_body' go together, as strings".into()),
    }
}

/// The description's rules for a replacement: same sender and type, the
/// original not itself an edit, and an `m.new_content`.
fn edit_is_valid(room: &Room, edit: &Event, target: &str) -> bool {
    let Some(original) = room.events.iter().find(|e| e.event_id == target) else {
        return false;
    };
    original.token == edit.token
        && original.event_type == edit.event_type
        && original
            .relation()
            .is_none_or(|(rel, _)| rel != "m.replace")
        && edit
            .content
            .get("m.new_content")
            .is_some_and(Value::is_object)
}

/// A client event as the homeserver serves it; `unsigned.transaction_id`
/// only to the token that sent it.
fn render(room_id: &str, event: &Event, reader_token: &str) -> Value {
    let mut unsigned = json!({"age": 0});
    if event.token == reader_token {
        unsigned["transaction_id"] = json!(event.txn_id);
    }
    json!({
        "event_id": event.event_id,
        "type": event.event_type,
        "room_id": room_id,
        "sender": sender_of(&event.token),
        "origin_server_ts": event.origin_server_ts,
        "content": event.content,
        "unsigned": unsigned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::faults::Faults;
    use crate::mock::testing::{Answer, TestMock};

    const ROOM: &str = "/matrix/_matrix/client/v3/rooms/!ops:herald.mock";
    const AUTH: (&str, &str) = ("authorization", "Bearer tok");
    const JSON: (&str, &str) = ("content-type", "application/json");

    fn put(mock: &TestMock, txn: &str, content: Value) -> Answer {
        mock.send(
            "PUT",
            &format!("{ROOM}/send/m.room.message/{txn}"),
            &[AUTH, JSON],
            &content.to_string(),
        )
    }

    fn room(mock: &TestMock) -> MatrixRoomStats {
        mock.stats().matrix.rooms["!ops:herald.mock"].clone()
    }

    fn text(body: &str) -> Value {
        json!({"msgtype": "m.text", "body": body})
    }

    #[test]
    fn a_repeated_txn_id_answers_the_first_event_and_stores_nothing() {
        let mock = TestMock::new();
        let first = put(&mock, "t1", text("P1 down"));
        assert_eq!(first.status, StatusCode::OK);
        let again = put(&mock, "t1", text("P1 down"));
        assert_eq!(again.body["event_id"], first.body["event_id"]);
        assert_eq!((room(&mock).events, room(&mock).txn_replays), (1, 1));
        // Another txnId is another event, even with the same body.
        let other = put(&mock, "t2", text("P1 down"));
        assert_ne!(other.body["event_id"], first.body["event_id"]);
        assert_eq!(room(&mock).duplicated_bodies, 1);
        assert!(room(&mock).duplicated_txn_ids.is_empty());
    }

    #[test]
    fn a_txn_id_is_forgotten_after_a_day_as_synapse_does() {
        let mut mock = TestMock::new();
        let first = put(&mock, "t1", text("P1 down"));
        mock.now_ms += TXN_REMEMBERED_MS;
        assert_eq!(put(&mock, "t1", text("P1 down")).body, first.body);
        mock.now_ms += 1;
        let late = put(&mock, "t1", text("P1 down"));
        assert_ne!(late.body["event_id"], first.body["event_id"]);
        assert_eq!(room(&mock).duplicated_txn_ids, ["t1"]);
    }

    #[test]
    fn threads_and_edits_follow_the_descriptions_rules() {
        let mock = TestMock::new();
        let root = put(&mock, "r", text("open")).body["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let in_thread = put(
            &mock,
            "u",
            json!({"msgtype": "m.text", "body": "update", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        );
        assert_eq!(in_thread.status, StatusCode::OK);
        let child = in_thread.body["event_id"].as_str().unwrap().to_owned();
        let nested = put(
            &mock,
            "n",
            json!({"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": child}}),
        );
        assert_eq!(
            (nested.status, &nested.body["errcode"]),
            (StatusCode::BAD_REQUEST, &json!("M_UNKNOWN"))
        );
        let unknown = put(
            &mock,
            "x",
            json!({"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": "$nope"}}),
        );
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        let edit = put(
            &mock,
            "e",
            json!({"msgtype": "m.text", "body": "* resolved", "m.new_content": {"msgtype": "m.text", "body": "resolved"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
        );
        assert_eq!(edit.status, StatusCode::OK);
        let no_new_content = put(
            &mock,
            "e2",
            json!({"msgtype": "m.text", "body": "* x", "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
        );
        assert_eq!(no_new_content.status, StatusCode::OK, "stored, but ignored");
        let stats = room(&mock);
        assert_eq!(
            (
                stats.messages,
                stats.thread_events,
                stats.edits,
                stats.ignored_edits
            ),
            (1, 1, 1, 1)
        );
        let read = mock.send("GET", &format!("{ROOM}/event/{root}"), &[AUTH], "");
        assert_eq!(read.body["content"]["body"], "open");
        let listed = mock.send(
            "GET",
            &format!("{ROOM}/messages?dir=b&limit=2"),
            &[AUTH],
            "",
        );
        assert_eq!(listed.body["chunk"][0]["unsigned"]["transaction_id"], "e2");
    }

    #[test]
    fn requests_are_checked_as_the_description_says() {
        let mock = TestMock::new();
        let anonymous = mock.send(
            "PUT",
            &format!("{ROOM}/send/m.room.message/a"),
            &[JSON],
            "{}",
        );
        assert_eq!(
            (anonymous.status, &anonymous.body["errcode"]),
            (StatusCode::UNAUTHORIZED, &json!("M_MISSING_TOKEN"))
        );
        put(&mock, "a", text("first"));
        let stranger = mock.send(
            "PUT",
            &format!("{ROOM}/send/m.room.message/a"),
            &[("authorization", "Bearer other"), JSON],
            &text("x").to_string(),
        );
        assert_eq!(stranger.body["errcode"], "M_FORBIDDEN");
        let not_json = mock.send(
            "PUT",
            &format!("{ROOM}/send/m.room.message/b"),
            &[AUTH],
            "{",
        );
        assert_eq!(not_json.body["errcode"], "M_NOT_JSON");
        let no_body = put(&mock, "c", json!({"msgtype": "m.text"}));
        assert_eq!(no_body.body["errcode"], "M_BAD_JSON");
        let half_format = put(
            &mock,
            "d",
            json!({"msgtype": "m.text", "body": "x", "format": "org.matrix.custom.html"}),
        );
        assert_eq!(half_format.body["errcode"], "M_BAD_JSON");
        let alias = mock.send(
            "PUT",
            "/matrix/_matrix/client/v3/rooms/%23ops:herald.mock/send/m.room.message/e",
            &[AUTH, JSON],
            &text("x").to_string(),
        );
        assert_eq!(alias.body["errcode"], "M_INVALID_PARAM");
        let large = put(&mock, "f", text(&"x".repeat(CONTENT_BYTES_MAX)));
        assert_eq!(large.body["errcode"], "M_TOO_LARGE");
        assert_eq!(room(&mock).events, 1);
    }

    #[test]
    fn a_drop_stores_the_event_and_faults_answer_in_matrix_shapes() {
        let mock = TestMock::new();
        mock.set_faults(
            &format!("{ROOM}/send/*"),
            Faults {
                rate_limit_first: 1,
                retry_after_secs: 2,
                drop_first: 1,
                ..Faults::default()
            },
        );
        let limited = put(&mock, "k", text("x"));
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            (&limited.body["errcode"], &limited.body["retry_after_ms"]),
            (&json!("M_LIMIT_EXCEEDED"), &json!(2000))
        );
        assert_eq!(limited.headers["retry-after"], "2");
        let dropped = put(&mock, "k", text("x"));
        assert!(dropped.hang_ms.is_some());
        let resent = put(&mock, "k", text("x"));
        assert_eq!(resent.status, StatusCode::OK);
        assert_eq!((room(&mock).events, room(&mock).txn_replays), (1, 1));
    }
}
