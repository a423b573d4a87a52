//! The OpenAPI 3.1 document of the HTTP API, built here in code next to the
//! routes and wire types. `openapi.json` at the repository root is this
//! document, written by `herald openapi`; a test fails when they differ, and
//! another when a schema's properties differ from its wire type's fields.

use serde_json::{json, Value};

use super::pause::PAUSE_REASON_CHARS_MAX;
use crate::domain::{
    BODY_BYTES_MAX, BROADCAST_ID_CHARS, BROADCAST_ID_PREFIX_CHARS_MIN,
    DESTINATIONS_PER_BROADCAST_MAX, FIELDS_MAX, FIELD_NAME_CHARS_MAX, FIELD_VALUE_CHARS_MAX,
    LABELS_MAX, LABEL_NAME_CHARS_MAX, LABEL_VALUE_CHARS_MAX, LINKS_MAX, LINK_TEXT_CHARS_MAX,
    LINK_URL_CHARS_MAX, SOURCE_CHARS_MAX, SUMMARY_CHARS_MAX, THREAD_CHARS_MAX, TITLE_CHARS_MAX,
};

/// What Rust's `str::trim` strips (Unicode White_Space), as a regex class
/// body: the server trims titles, threads, reasons, ids and spans first.
const TRIMMED: &str =
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Control characters (`char::is_control`, category Cc) as a class body.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// A text the server trims, then requires to be 1 to `chars_max`
/// characters without any of `refused` (a class body); with `may_be_blank`
/// a text of only whitespace is taken too (it means "none").
fn trimmed_text_pattern(chars_max: usize, refused: &str, may_be_blank: bool) -> String {
    let core = format!(
        "[^{TRIMMED}{refused}]([^{refused}]{{0,{}}}[^{TRIMMED}{refused}])?",
        chars_max - 2
    );
    let core = if may_be_blank {
        format!("({core})?")
    } else {
        core
    };
    format!("^[{TRIMMED}]*{core}[{TRIMMED}]*$")
}

/// Any text without U+0000, which no PostgreSQL text column can hold:
/// the server refuses it in every string of every body and query.
fn text() -> Value {
    json!({"type": "string", "pattern": "^[^\\u0000]*$"})
}

/// A string map (labels, annotations) without U+0000 in keys or values.
fn text_map() -> Value {
    json!({"type": "object", "propertyNames": text(), "additionalProperties": text()})
}

/// A link's URL as `domain::check_url` takes it: http or https in any
/// case, a host without whitespace, control characters or `/?#@\`, then
/// optionally a path, query or fragment without whitespace or control
/// characters.
fn link_url_pattern() -> String {
    let plain = format!("{CONTROL}{TRIMMED}");
    format!("^[Hh][Tt][Tt][Pp][Ss]?://[^{plain}/?#@\\\\]+([/?#][^{plain}]*)?$")
}

/// The request's labels, links, fields, source and summary (see
/// `domain/details.rs` for the limits).
fn details_properties() -> Value {
    json!({
        "labels": {"type": "object", "maxProperties": LABELS_MAX,
            "propertyNames": {"type": "string", "pattern": format!("^[A-Za-z_][A-Za-z0-9_.-]{{0,{}}}$", LABEL_NAME_CHARS_MAX - 1)},
            "additionalProperties": {"type": "string", "maxLength": LABEL_VALUE_CHARS_MAX, "pattern": format!("^[^{CONTROL}]*$")},
            "examples": [{"service": "checkout", "environment": "production"}],
            "description": format!("String map matched by routes: at most {LABELS_MAX}; names of A-Z a-z 0-9 _ . - starting with a letter or _ (1 to {LABEL_NAME_CHARS_MAX}); values up to {LABEL_VALUE_CHARS_MAX} characters without control characters. A bad one is a 400 naming `labels` or `labels.NAME`")},
        "links": {"type": "array", "maxItems": LINKS_MAX, "items": {"$ref": "#/components/schemas/Link"},
            "description": format!("Runbook, dashboard, incident page: at most {LINKS_MAX}; a bad one is a 400 naming `links[i].text` or `links[i].url`")},
        "fields": {"type": "array", "maxItems": FIELDS_MAX, "items": {"$ref": "#/components/schemas/Field"},
            "description": format!("Ordered name/value facts: at most {FIELDS_MAX}; a bad one is a 400 naming `fields[i].name` or `fields[i].value`")},
        "source": {"type": "string", "pattern": trimmed_text_pattern(SOURCE_CHARS_MAX, CONTROL, true), "description": format!("Who sends it (routes match on it). Trimmed, then at most {SOURCE_CHARS_MAX} characters without control characters; blank means none")},
        "summary": {"type": "string", "pattern": trimmed_text_pattern(SUMMARY_CHARS_MAX, CONTROL, true), "description": format!("Short text for SMS and push. Trimmed, then at most {SUMMARY_CHARS_MAX} characters without control characters; blank means none")}
    })
}

/// `Link` and `Field`, as requests give them (and broadcasts show them,
/// trimmed).
fn details_schemas() -> Value {
    json!({
        "Link": {"type": "object", "required": ["text", "url"], "additionalProperties": false, "properties": {
            "text": {"type": "string", "minLength": 1, "pattern": trimmed_text_pattern(LINK_TEXT_CHARS_MAX, CONTROL, false), "description": format!("Trimmed, then 1 to {LINK_TEXT_CHARS_MAX} characters without control characters")},
            "url": {"type": "string", "maxLength": LINK_URL_CHARS_MAX, "pattern": link_url_pattern(), "examples": ["https://runbooks.example/checkout-db"], "description": format!("http:// or https:// only, at most {LINK_URL_CHARS_MAX} characters, no whitespace (encode it), no credentials (user@host)")}
        }},
        "Field": {"type": "object", "required": ["name", "value"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "minLength": 1, "pattern": trimmed_text_pattern(FIELD_NAME_CHARS_MAX, CONTROL, false), "description": format!("Trimmed, then 1 to {FIELD_NAME_CHARS_MAX} characters without control characters")},
            "value": {"type": "string", "minLength": 1, "pattern": trimmed_text_pattern(FIELD_VALUE_CHARS_MAX, CONTROL, false), "description": format!("Trimmed, then 1 to {FIELD_VALUE_CHARS_MAX} characters without control characters")}
        }}
    })
}

/// What a broadcast shows of its message details and routing.
fn broadcast_details_properties() -> Value {
    json!({
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "links": {"type": "array", "items": {"$ref": "#/components/schemas/Link"}},
        "fields": {"type": "array", "items": {"$ref": "#/components/schemas/Field"}},
        "source": {"type": ["string", "null"]},
        "summary": {"type": ["string", "null"]},
        "routes": {"type": "array", "items": {"type": "string"}, "description": "The routes that picked the destinations, in match order (`default`: the default route); empty when the request named them. Recorded at accept: a reload never changes them"}
    })
}

/// `P1`..`P5` and the words the server takes for them, in any ASCII case,
/// surrounding whitespace trimmed (see `Severity::parse`).
pub const SEVERITY_WORDS: [&str; 12] = [
    "p1", "critical", "p2", "high", "error", "p3", "medium", "warning", "p4", "low", "p5", "info",
];

fn severity_pattern() -> String {
    let any_case = |word: &str| -> String {
        word.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c, c.to_ascii_uppercase())
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let words: Vec<String> = SEVERITY_WORDS.iter().map(|w| any_case(w)).collect();
    format!("^[{TRIMMED}]*({})[{TRIMMED}]*$", words.join("|"))
}

/// 1 to `max` in decimal, leading zeros allowed: `0*` then either fewer
/// digits than `max` has, or as many and not above it, digit by digit.
fn one_to_pattern(max: u64) -> String {
    let digits: Vec<u32> = max
        .to_string()
        .chars()
        .map(|c| c.to_digit(10).unwrap())
        .collect();
    let length = digits.len();
    let mut alternatives = Vec::new();
    if length >= 2 {
        alternatives.push(format!("[1-9][0-9]{{0,{}}}", length - 2));
    }
    for (at, digit) in digits.iter().enumerate() {
        let lowest = if at == 0 { 1 } else { 0 };
        if *digit > lowest {
            let prefix: String = digits[..at].iter().map(|d| d.to_string()).collect();
            alternatives.push(format!(
                "{prefix}[{lowest}-{}][0-9]{{{}}}",
                digit - 1,
                length - at - 1
            ));
        }
    }
    alternatives.push(max.to_string());
    format!("0*({})", alternatives.join("|"))
}

/// A pause's `for`: `90s`, `15m`, `2h`, `1d`, more than zero and at most
/// `PAUSE_FOR_MS_MAX` (see `pause::parse_span_ms`).
fn pause_for_pattern() -> String {
    let max = super::pause::PAUSE_FOR_MS_MAX as u64;
    let spans: Vec<String> = [
        ("s", 1_000u64),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ]
    .iter()
    .map(|(unit, unit_ms)| format!("{}{unit}", one_to_pattern(max / unit_ms)))
    .collect();
    format!("^[{TRIMMED}]*({})[{TRIMMED}]*$", spans.join("|"))
}

/// An objective's `within`: `60s`, `10m`, `1h`, from 1 s to
/// `OBJECTIVE_WITHIN_MS_MAX` (see `domain::parse_duration_ms`).
fn objective_within_pattern() -> String {
    let max = crate::domain::OBJECTIVE_WITHIN_MS_MAX as u64;
    let spans: Vec<String> = [("s", 1_000u64), ("m", 60_000), ("h", 3_600_000)]
        .iter()
        .map(|(unit, unit_ms)| format!("{}{unit}", one_to_pattern(max / unit_ms)))
        .collect();
    format!("^({})$", spans.join("|"))
}

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let description = match *code {
            "400" => "Bad input: the error names the field and the reason",
            "401" => "Missing or unknown bearer token",
            "403" => "The token lacks the route's scope",
            "404" => "Not found",
            "409" => "A request with the same Idempotency-Key is in flight",
            "413" => "Body over the size limit",
            "422" => "`idempotency_key_reused`: Idempotency-Key reused with a different body; `no_route`: no destinations named, no route matched and no default route",
            "500" => "The database is damaged: the broadcast a key points at is missing",
            _ => "The database could not complete the request, or it timed out",
        };
        out.insert(
            (*code).to_owned(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn json_body(schema: &str) -> Value {
    json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// Crockford base32 in either case: the letters of a ULID.
const ULID_LETTERS: &str = "0-9A-HJKMNP-TV-Za-hjkmnp-tv-z";

fn id_param() -> Value {
    let pattern = format!(
        "^[{TRIMMED}]*[{ULID_LETTERS}]{{{BROADCAST_ID_PREFIX_CHARS_MIN},{BROADCAST_ID_CHARS}}}[{TRIMMED}]*$"
    );
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": pattern}, "description": "Broadcast id (ULID, any case), or its start when no other id starts so (at least 4 characters); an ambiguous start is a 400 `ambiguous_id` listing the candidates, a start of 1 to 3 characters a 400, an id of other letters a 404"})
}

/// A destination name as the config allows it (`validate_destination_name`).
fn destination_name() -> Value {
    json!({"type": "string", "pattern": DESTINATION_NAME_PATTERN})
}
const DESTINATION_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true, "schema": destination_name(), "description": "Destination name; one not configured is a 404"})
}

/// The Alertmanager payload's schemas: every field's type, and no U+0000
/// anywhere (in the fields herald reads or in any other).
fn alertmanager_schemas() -> Value {
    json!({
        "JsonWithoutNul": {"description": "Any JSON value with no U+0000 in any string or key", "anyOf": [
            {"type": ["number", "boolean", "null"]}, text(),
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonWithoutNul"}},
            {"type": "object", "propertyNames": text(), "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}}
        ]},
        "AlertmanagerNotification": {"type": "object", "description": "Alertmanager webhook payload, version 4. Other fields are ignored (none may hold U+0000). The receiver picks the destinations and groups ([alertmanager] receivers), else the default ones, else the config's [[routes]] (source `alertmanager/RECEIVER`; no match and no default route: 422 `no_route`). commonLabels become the labels, commonAnnotations summary the summary and description the head of the body, runbook_url and dashboard_url links, and each alert's generatorURL a link", "required": ["version", "groupKey", "status", "receiver", "alerts"], "propertyNames": text(), "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}, "properties": {
            "version": {"type": "string", "enum": ["4"]},
            "groupKey": with(text(), json!({"description": "The thread (a long or blank one becomes a hash of it)"})),
            "status": {"type": "string", "enum": ["firing", "resolved"], "description": "resolved: the broadcast resolves the group's thread"},
            "receiver": text(),
            "groupLabels": text_map(), "commonLabels": text_map(), "commonAnnotations": text_map(),
            "externalURL": text(),
            "alerts": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/AlertmanagerAlert"}},
            "truncatedAlerts": {"type": "integer", "minimum": 0, "maximum": u64::MAX, "description": "Written without a fraction or exponent: 61, not 61.0"}
        }},
        "AlertmanagerAlert": {"type": "object", "required": ["status"], "propertyNames": text(), "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}, "properties": {
            "status": text(), "labels": text_map(), "annotations": text_map(),
            "startsAt": text(), "endsAt": text(), "fingerprint": text(), "generatorURL": text()
        }}
    })
}

pub fn document() -> Value {
    let read = json!([{"bearer": ["read"]}]);
    let send = json!([{"bearer": ["send"]}]);
    let operate = json!([{"bearer": ["operate"]}]);
    let nullable = |t: &str| json!({"type": [t, "null"]});
    let since_pattern = {
        let zero_or = |max: u64| format!("(0+|{})", one_to_pattern(max));
        let max = i64::MAX as u64;
        let spans: Vec<String> = [
            ("s", 1_000u64),
            ("m", 60_000),
            ("h", 3_600_000),
            ("d", 86_400_000),
        ]
        .iter()
        .map(|(unit, unit_ms)| format!("(\\+?{}|-0+){unit}", zero_or(max / unit_ms)))
        .collect();
        format!(
            "^(\\+?{}|-{}|{})$",
            zero_or(max),
            zero_or(max + 1),
            spans.join("|")
        )
    };
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "herald",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable fan-out of incident messages. Every error has the shape {\"error\": {\"code\", \"message\", \"field\"}}."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Tokens from the config, with scopes send, read, operate."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message", "field"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": nullable("string")}}}},
                "SendRequest": {"type": "object", "required": ["title"], "additionalProperties": false,
                    "if": {"required": ["resolved"], "properties": {"resolved": {"const": true}}},
                    "then": {"required": ["thread"], "not": {"required": ["objective"]}, "properties": {"thread": {"pattern": trimmed_text_pattern(THREAD_CHARS_MAX, CONTROL, false)}}},
                    "properties": {
                    "title": {"type": "string", "minLength": 1, "pattern": trimmed_text_pattern(TITLE_CHARS_MAX, CONTROL, false), "description": format!("One line: surrounding whitespace is trimmed, then 1 to {TITLE_CHARS_MAX} characters without control characters")},
                    "body": with(text(), json!({"maxLength": BODY_BYTES_MAX, "description": format!("At most {BODY_BYTES_MAX} bytes of UTF-8 (JSON Schema counts characters: a body within maxLength can still be over in bytes); newlines and tabs are kept")})),
                    "severity": {"type": "string", "pattern": severity_pattern(), "examples": ["P1", "P2", "P3", "P4", "P5"], "description": "P1..P5, or a word for one: critical (P1), high or error (P2), medium or warning (P3), low (P4), info (P5); any ASCII case, surrounding whitespace trimmed; default P3"},
                    "thread": {"type": "string", "pattern": trimmed_text_pattern(THREAD_CHARS_MAX, CONTROL, true), "description": format!("Incident key: broadcasts of one thread land in order. Trimmed, then at most {THREAD_CHARS_MAX} characters without control characters; blank means no thread")},
                    "resolved": {"type": "boolean", "description": "This broadcast resolves the thread's incident: true needs a thread that is not blank (else 400 naming `resolved`)"},
                    "destinations": {"type": "array", "items": destination_name(), "maxItems": DESTINATIONS_PER_BROADCAST_MAX, "uniqueItems": true, "examples": [["ops-webhook"]], "description": format!("Each one a configured destination (GET /v1/destinations) or a [groups] name (expanded; a destination named twice through groups goes once); an unknown one is a 400 naming `destinations[i]`; more than {DESTINATIONS_PER_BROADCAST_MAX} after expansion, a 400. Absent or empty: the config's [[routes]] pick the destinations (the broadcast's `routes` says which matched); no match and no [default_route]: a 422 `no_route`")},
                    "objective": {"$ref": "#/components/schemas/ObjectiveRequest"}
                }},
                "ObjectiveRequest": {"type": "object", "required": ["confirm"], "additionalProperties": false, "description": "A delivery objective (a route's `confirm`, `fallback` and `on_escalation`): when `within` passes after acceptance without `any` of `of` confirmed, herald escalates once: the message goes to `fallback`, a meta-alert naming the destinations that failed (and their last errors) to `on_escalation`. Needs `fallback` or `on_escalation` (else a 400 naming `objective.fallback`); a fallback may not be one of `of`. Absent: the first matched route's objective, if any. Not with `resolved: true` (a 400 naming `objective`): a resolve carries none", "properties": {
                    "confirm": {"type": "object", "required": ["any", "of", "within"], "additionalProperties": false, "properties": {
                        "any": {"type": "integer", "minimum": 1, "maximum": DESTINATIONS_PER_BROADCAST_MAX, "description": "How many of `of` must confirm: at most as many as `of` names after expansion (else a 400 naming `objective.confirm.any`)"},
                        "of": {"type": "array", "minItems": 1, "items": destination_name(), "examples": [["ops-webhook"]], "description": "Destinations and groups (expanded) among the broadcast's own destinations; another is a 400 naming `objective.confirm.of`"},
                        "within": {"type": "string", "pattern": objective_within_pattern(), "examples": ["60s", "10m"], "description": "From acceptance to the deadline: a whole number of s, m or h, from 1s to 24h"}
                    }},
                    "fallback": {"type": "array", "items": destination_name(), "examples": [["pagerduty"]], "description": "Configured destinations and groups (expanded) that get the message at escalation, none of them in `of`"},
                    "on_escalation": with(destination_name(), json!({"examples": ["slack"], "description": "The configured destination that gets the meta-alert"}))
                }},
                "ObjectiveView": {"type": "object", "properties": {
                    "state": {"type": "string", "enum": ["pending", "met", "escalated"], "description": "An objective met after its escalation stays `escalated`, with `met_at` set: both facts"},
                    "summary": {"type": "string", "description": "For people: \"pending (1 of 3, 42 s left)\", \"met at ...\", \"escalated at ... to [sms]\""},
                    "any": {"type": "integer"}, "of": {"type": "array", "items": {"type": "string"}},
                    "within_ms": {"type": "integer"}, "deadline": {"type": "string", "format": "date-time"},
                    "deadline_in_ms": {"type": "integer"},
                    "confirmed": {"type": "array", "items": {"type": "string"}},
                    "met_at": {"type": ["string", "null"], "format": "date-time"},
                    "escalated_at": {"type": ["string", "null"], "format": "date-time"},
                    "escalated_to": {"type": "array", "items": {"type": "string"}},
                    "fallback": {"type": "array", "items": {"type": "string"}},
                    "on_escalation": nullable("string"),
                    "fallback_broadcast": {"type": ["string", "null"], "description": "The child broadcast that carried the message to `escalated_to`"},
                    "meta_alert_broadcast": {"type": ["string", "null"], "description": "The child broadcast that carried the meta-alert"}
                }},
                "Attempt": {"type": "object", "properties": {
                    "number": {"type": "integer"}, "kind": {"type": "string", "enum": ["send", "verify"]},
                    "outcome": {"type": "string"}, "http_status": nullable("integer"),
                    "started_at": {"type": "string", "format": "date-time"}, "finished_at": {"type": "string", "format": "date-time"},
                    "latency_ms": {"type": "integer"}, "error": nullable("string"), "excerpt": nullable("string")
                }},
                "Delivery": {"type": "object", "properties": {
                    "destination": {"type": "string"},
                    "state": {"type": "string", "enum": ["waiting", "pending", "sending", "retrying", "verifying", "confirmed", "failed", "dead", "cancelled"]},
                    "summary": {"type": "string", "description": "For people: \"retrying 2/8\""},
                    "attempts_made": {"type": "integer"}, "attempts_max": {"type": "integer"},
                    "idempotency_key": {"type": "string"}, "possible_duplicate": {"type": "boolean"},
                    "next_attempt_at": nullable("string"), "next_attempt_in_ms": nullable("integer"),
                    "last_error": nullable("string"), "last_http_status": nullable("integer"),
                    "remote_ref": {"type": ["string", "null"], "description": "What the delivery created at the destination (Slack ts, Jira issue key, Discord thread id)"},
                    "remote_url": {"type": ["string", "null"], "description": "Where a person opens remote_ref, when herald can build it from the destination's settings: a Jira issue (`{url}/browse/OPS-7`, a comment focused), a Matrix event (`https://matrix.to/#/{room}/{event}`); null for the kinds whose links need what herald is not told"},
                    "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}, "description": "Empty in the pages of GET /v1/broadcasts"}
                }},
                "Broadcast": {"type": "object", "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "body": {"type": "string"},
                    "severity": {"type": "string"}, "thread": nullable("string"), "resolved": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string", "enum": ["delivering", "converged", "partial"]},
                    "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
                    "objective": {"oneOf": [{"$ref": "#/components/schemas/ObjectiveView"}, {"type": "null"}]}
                }},
                "BroadcastList": {"type": "object", "properties": {
                    "broadcasts": {"type": "array", "items": {"$ref": "#/components/schemas/Broadcast"}},
                    "next_cursor": nullable("string")
                }},
                "DeliverySummary": {"type": "object", "description": "A delivery's current state, without its attempts", "properties": {
                    "destination": {"type": "string"},
                    "state": {"type": "string", "enum": ["waiting", "pending", "sending", "retrying", "verifying", "confirmed", "failed", "dead", "cancelled"]},
                    "summary": {"type": "string", "description": "For people: \"retrying 2/8\""},
                    "attempts_made": {"type": "integer"}, "attempts_max": {"type": "integer"},
                    "possible_duplicate": {"type": "boolean"},
                    "next_attempt_at": nullable("string"), "next_attempt_in_ms": nullable("integer"),
                    "last_error": nullable("string"), "last_http_status": nullable("integer"),
                    "updated_at": {"type": "string", "format": "date-time", "description": "When the delivery last changed state (a final one: when it became final)"}
                }},
                "BroadcastSummary": {"type": "object", "description": "A broadcast as a list of many shows it: no body, details, objective nor attempts", "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"},
                    "severity": {"type": "string"}, "thread": nullable("string"), "resolved": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string", "enum": ["delivering", "converged", "partial"]},
                    "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/DeliverySummary"}}
                }},
                "BroadcastSummaryList": {"type": "object", "description": "A page of GET /v1/broadcasts?view=summary", "properties": {
                    "broadcasts": {"type": "array", "items": {"$ref": "#/components/schemas/BroadcastSummary"}},
                    "next_cursor": nullable("string")
                }},
                "ActionResult": {"type": "object", "description": "The broadcast after the action (the fields of Broadcast), the action, and the destinations whose delivery it changed (empty when nothing applied)", "properties": {
                    "action": {"type": "string", "enum": ["retry", "cancel"]},
                    "changed": {"type": "array", "items": {"type": "string"}},
                    "id": {"type": "string"}, "title": {"type": "string"}, "body": {"type": "string"},
                    "severity": {"type": "string"}, "thread": nullable("string"), "resolved": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string", "enum": ["delivering", "converged", "partial"]},
                    "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
                    "objective": {"oneOf": [{"$ref": "#/components/schemas/ObjectiveView"}, {"type": "null"}]}
                }},
                "ActionRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "destinations": {"type": "array", "items": destination_name(), "examples": [["ops-webhook"]], "description": "Only these; all when empty or absent. Each must be a destination of the broadcast, else 400 naming `destinations[i]`"}
                }},
                "DestinationHealth": {"type": "object", "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string"}, "concurrency": {"type": "integer"},
                    "in_flight": {"type": "integer"}, "paused_until": nullable("string"),
                    "consecutive_failures": {"type": "integer"}, "backlog": {"type": "integer"},
                    "circuit": {"type": "string", "enum": ["closed", "open", "half_open"]},
                    "rate_limit_per_sec": nullable("number"),
                    "oldest_waiting_since": nullable("string"), "last_error": nullable("string"),
                    "last_error_at": {"type": ["string", "null"], "format": "date-time", "description": "When the last error happened"},
                    "status": {"type": "string", "enum": ["active", "paused", "removed"], "description": "removed: no longer configured; its unfinished deliveries (backlog) are held until it is configured again or they are cancelled"},
                    "pause": {"oneOf": [{"$ref": "#/components/schemas/PauseView"}, {"type": "null"}]}
                }},
                "PauseView": {"type": "object", "description": "An operator's pause", "properties": {
                    "until": {"type": ["string", "null"], "description": "When it ends by itself; null: until resumed"},
                    "reason": {"type": "string"}, "paused_by": {"type": "string", "description": "The token's name"},
                    "paused_at": {"type": "string", "format": "date-time"}
                }},
                "PauseRequest": {"type": "object", "required": ["reason"], "additionalProperties": false, "properties": {
                    "for": {"type": "string", "pattern": pause_for_pattern(), "description": "90s, 15m, 2h, 1d: more than zero, at most 30d; absent: until resumed"},
                    "reason": {"type": "string", "minLength": 1, "pattern": trimmed_text_pattern(PAUSE_REASON_CHARS_MAX, "\\u0000", false), "description": format!("Why, for the other operators: trimmed, then 1 to {PAUSE_REASON_CHARS_MAX} characters")}
                }},
                "ReloadAnswer": {"type": "object", "properties": {
                    "added": {"type": "array", "items": {"type": "string"}},
                    "removed": {"type": "array", "items": {"type": "string"}},
                    "changed": {"type": "array", "items": {"type": "string"}, "description": "New attempts use the new settings; attempts in flight finish under theirs"},
                    "tokens": {"type": "integer"},
                    "not_applied": {"type": "array", "items": {"type": "string"}, "description": "Settings that changed but take a restart"}
                }},
                "DeliveryEvent": {"type": "object", "description": "Server-sent event `delivery`", "properties": {
                    "broadcast_id": {"type": "string"}, "destination": {"type": "string"}, "state": {"type": "string"},
                    "summary": {"type": "string"}, "attempts_made": {"type": "integer"}, "attempts_max": {"type": "integer"},
                    "next_attempt_in_ms": nullable("integer"), "last_error": nullable("string"),
                    "last_http_status": nullable("integer"), "possible_duplicate": {"type": "boolean"},
                    "at": {"type": "string", "format": "date-time"}
                }},
                "Preview": {"type": "object", "properties": {
                    "routes": {"type": "array", "items": {"type": "string"}, "description": "The routes that matched, in order; empty when destinations were named"},
                    "destinations": {"type": "array", "items": {"$ref": "#/components/schemas/PreviewDestination"}, "description": "Groups expanded, in the order a send would use"}
                }},
                "StatusEvent": {"type": "object", "description": "Server-sent event `status`, last of a broadcast's stream", "properties": {
                    "broadcast_id": {"type": "string"}, "status": {"type": "string"}
                }},
                "WhoAmI": {"type": "object", "required": ["name", "scopes", "tokens_required"], "description": "The caller and what it may do", "properties": {
                    "name": {"type": "string", "description": "The token's name; `anonymous` without a token"},
                    "scopes": {"type": "array", "items": {"type": "string", "enum": ["send", "read", "operate"]}, "description": "Every scope without tokens configured; none without a token when they are"},
                    "tokens_required": {"type": "boolean"}
                }}
            }
        },
        "paths": {
            "/v1/broadcasts": {
                "post": {
                    "summary": "Send a message to destinations",
                    "security": send,
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255}, "description": "Same key and body within the retention window: the first answer again"}],
                    "requestBody": with(json!({"required": true}), json_body("SendRequest")),
                    "responses": with(json!({"202": with(json!({"description": "Accepted: the broadcast and its deliveries are committed"}), json_body("Broadcast"))}), error_responses(&["400", "401", "403", "409", "413", "422", "500", "503"]))
                },
                "get": {
                    "summary": "List broadcasts, newest first",
                    "description": "A query parameter not listed here is a 400 naming it",
                    "security": read,
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["delivering", "converged", "partial", "waiting", "pending", "sending", "retrying", "verifying", "confirmed", "failed", "dead", "cancelled"]}, "description": "A broadcast's status, or a delivery state: the broadcasts with at least one delivery in that state"},
                        {"name": "destination", "in": "query", "schema": text()},
                        {"name": "thread", "in": "query", "schema": text()},
                        {"name": "since", "in": "query", "schema": {"type": "string", "pattern": since_pattern}, "description": "Milliseconds since the epoch (a 64-bit integer), or a span back from now: 90s, 15m, 2h, 7d"},
                        {"name": "cursor", "in": "query", "schema": text(), "description": "next_cursor of the page before"},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                        {"name": "view", "in": "query", "schema": {"type": "string", "enum": ["full", "summary"], "default": "full"}, "description": "full: each broadcast as GET /v1/broadcasts/{id} shows it, without attempts (BroadcastList); summary: each broadcast's title, status and deliveries' states only (BroadcastSummaryList), for a board of many. Another value is a 400 naming `view`"}
                    ],
                    "responses": with(json!({"200": {"description": "A page: BroadcastList, or BroadcastSummaryList with view=summary", "content": {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/BroadcastList"}, {"$ref": "#/components/schemas/BroadcastSummaryList"}]}}}}}), error_responses(&["400", "401", "403", "503"]))
                }
            },
            "/v1/broadcasts/{id}": {"get": {
                "summary": "One broadcast: each delivery's state and attempts",
                "security": read, "parameters": [id_param()],
                "responses": with(json!({"200": with(json!({"description": "The broadcast"}), json_body("Broadcast"))}), error_responses(&["400", "401", "403", "404", "503"]))
            }},
            "/v1/broadcasts/{id}/preview": {"get": {
                "summary": "An accepted broadcast's deliveries rendered as a first attempt sends them, byte for byte; nothing is sent",
                "security": read, "parameters": [id_param()],
                "responses": with(json!({"200": with(json!({"description": "The routes, destinations and requests"}), json_body("Preview"))}), error_responses(&["400", "401", "403", "404", "503"]))
            }},
            "/v1/broadcasts/{id}/retry": {"post": {
                "summary": "Retry failed, dead and cancelled deliveries (same idempotency key); idempotent",
                "security": operate, "parameters": [id_param()],
                "requestBody": with(json!({"required": false}), json_body("ActionRequest")),
                "responses": with(json!({"200": with(json!({"description": "The broadcast after the action, and what changed"}), json_body("ActionResult"))}), error_responses(&["400", "401", "403", "404", "413", "503"]))
            }},
            "/v1/broadcasts/{id}/cancel": {"post": {
                "summary": "Cancel unfinished deliveries (an attempt in flight is left to land); idempotent",
                "security": operate, "parameters": [id_param()],
                "requestBody": with(json!({"required": false}), json_body("ActionRequest")),
                "responses": with(json!({"200": with(json!({"description": "The broadcast after the action, and what changed"}), json_body("ActionResult"))}), error_responses(&["400", "401", "403", "404", "413", "503"]))
            }},
            "/v1/broadcasts/{id}/events": {"get": {
                "summary": "Server-sent events: a snapshot, each state change, then `status` when final",
                "security": read, "parameters": [id_param()],
                "responses": with(json!({"200": {"description": "text/event-stream of DeliveryEvent and StatusEvent, and an `objective` event ({broadcast_id, state: met or escalated, escalated_to, fallback_broadcast, meta_alert_broadcast, at}) when this server decides the broadcast's objective while the stream is open; when herald stops, a last `shutdown` event ({\"reason\"}) and the stream ends: reconnect, it starts again with a snapshot", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/DeliveryEvent"}}}}}), error_responses(&["400", "401", "403", "404", "503"]))
            }},
            "/v1/events": {"get": {
                "summary": "Server-sent events of every broadcast's state changes",
                "security": read,
                "responses": with(json!({"200": {"description": "text/event-stream of DeliveryEvent, and an `objective` event for each objective this server decides; when herald stops, a last `shutdown` event ({\"reason\"}) and the stream ends", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/DeliveryEvent"}}}}}), error_responses(&["401", "403"]))
            }},
            "/v1/destinations": {"get": {
                "summary": "Each destination's health",
                "security": read,
                "responses": with(json!({"200": {"description": "Destinations", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/DestinationHealth"}}}}}}), error_responses(&["401", "403", "503"]))
            }},
            "/v1/destinations/{name}/pause": {"post": {
                "summary": "Pause a destination on every node: nothing is sent, its deliveries wait durably",
                "security": operate, "parameters": [name_param()],
                "requestBody": with(json!({"required": true}), json_body("PauseRequest")),
                "responses": with(json!({"200": with(json!({"description": "The destination, paused"}), json_body("DestinationHealth"))}), error_responses(&["400", "401", "403", "404", "503"]))
            }},
            "/v1/destinations/{name}/resume": {"post": {
                "summary": "End a destination's pause: its waiting deliveries go now",
                "security": operate, "parameters": [name_param()],
                "responses": with(json!({"200": with(json!({"description": "The destination"}), json_body("DestinationHealth"))}), error_responses(&["401", "403", "404", "503"]))
            }},
            "/v1/config/reload": {"post": {
                "summary": "Read the config file again (as SIGHUP does); an invalid file changes nothing",
                "security": operate,
                "responses": with(
                    json!({"200": with(json!({"description": "Applied: what changed"}), json_body("ReloadAnswer"))}),
                    with(error_responses(&["401", "403"]), json!({
                        "409": with(json!({"description": "The server was started without a config file"}), json_body("Error")),
                        "422": with(json!({"description": "The file is invalid (the error names file, line and problem); the running configuration stays"}), json_body("Error"))
                    }))
                )
            }},
            "/v1/ingest/alertmanager": {"post": {
                "summary": "Alertmanager webhook: each notification becomes a broadcast on its group's thread; bodies up to alertmanager.request_body_bytes_max (default 2 MiB, a 1,000-alert group)",
                "security": send,
                "requestBody": with(json!({"required": true}), json_body("AlertmanagerNotification")),
                "responses": with(json!({"202": with(json!({"description": "Accepted"}), json_body("Broadcast"))}), error_responses(&["400", "401", "403", "404", "413", "422", "500", "503"]))
            }},
            "/v1/preview": {"post": {
                "summary": "Where a message would go and what would be sent: the routes it matches, the destinations it expands to (decided as a send decides) and each one's rendered requests; nothing is stored or sent",
                "security": send,
                "requestBody": with(json!({"required": true}), json_body("SendRequest")),
                "responses": with(json!({"200": with(json!({"description": "The routes and destinations"}), json_body("Preview"))}), error_responses(&["400", "401", "403", "413", "422"]))
            }},
            "/healthz": {"get": {"summary": "The process answers", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "The database can commit (503 with the reason while it cannot: a full disk, a lost database)", "security": [], "responses": with(json!({"200": {"description": "ready"}}), error_responses(&["503"]))}},
            "/metrics": {"get": {"summary": "Prometheus text format (with server.metrics_require_token, a token with the read scope)", "security": [], "responses": with(json!({"200": {"description": "Metrics", "content": {"text/plain": {}}}}), error_responses(&["401", "403", "503"]))}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/v1/whoami": {"get": {
                "summary": "The caller's token name and scopes, so a client offers only what it may do; no scope needed",
                "security": [{}, {"bearer": []}],
                "responses": with(json!({"200": with(json!({"description": "The caller"}), json_body("WhoAmI"))}), error_responses(&["401"]))
            }},
            "/": {"get": {"summary": "The console: a web page (assets under /console/), a client of this API", "security": [], "responses": {"200": {"description": "The page", "content": {"text/html": {}}}}}},
            "/console/{file}": {"get": {
                "summary": "The console's script, style sheet and icon, built into herald",
                "security": [],
                "parameters": [{"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with(json!({"200": {"description": "The file"}}), error_responses(&["404"]))
            }}
        }
    });
    if let (Some(schemas), Value::Object(more)) = (
        document["components"]["schemas"].as_object_mut(),
        alertmanager_schemas(),
    ) {
        schemas.extend(more);
    }
    document["components"]["schemas"]["PreviewDestination"] = preview_destination_schema();
    if let (Some(schemas), Value::Object(more)) = (
        document["components"]["schemas"].as_object_mut(),
        details_schemas(),
    ) {
        schemas.extend(more);
    }
    for (schema, extra) in [
        ("SendRequest", details_properties()),
        ("Broadcast", broadcast_details_properties()),
        ("ActionResult", broadcast_details_properties()),
    ] {
        if let (Some(properties), Value::Object(more)) = (
            document["components"]["schemas"][schema]["properties"].as_object_mut(),
            extra,
        ) {
            properties.extend(more);
        }
    }
    document
}

/// One destination of a preview, with its rendered requests.
fn preview_destination_schema() -> Value {
    json!({"type": "object", "required": ["name", "kind", "requests"], "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "requests": {"type": "array", "description": "The requests a first attempt sends, bodies exactly as sent", "items": {"type": "object", "required": ["call", "body"], "properties": {
            "call": {"type": "string", "description": "The API call or path (never a credential URL)"},
            "body": {"type": "string", "description": "The request body as sent: JSON text, or a form (application/x-www-form-urlencoded) for SMS and Zulip"}
        }}},
        "error": {"type": "string", "description": "The destination's template failed on this message: a delivery would fail with this"}
    }})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::*;
    use crate::domain::{Field, Link};

    fn properties(schema: &str) -> Vec<String> {
        let doc = document();
        let mut names: Vec<String> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema} has no properties"))
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn fields(value: impl serde::Serialize) -> Vec<String> {
        let mut names: Vec<String> = serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    #[test]
    fn numbers_up_to_a_bound_are_spelled_digit_by_digit() {
        assert_eq!(one_to_pattern(9), "0*([1-8][0-9]{0}|9)");
        assert_eq!(one_to_pattern(30), "0*([1-9][0-9]{0,0}|[1-2][0-9]{1}|30)");
        assert_eq!(
            one_to_pattern(2_592_000),
            "0*([1-9][0-9]{0,5}|[1-1][0-9]{6}|2[0-4][0-9]{5}|25[0-8][0-9]{4}|259[0-1][0-9]{3}|2592000)"
        );
        // 30 days, the longest pause, in each unit.
        for bound in ["2592000)s", "43200)m", "720)h", "30)d"] {
            assert!(pause_for_pattern().contains(bound), "{bound}");
        }
    }

    #[test]
    fn every_severity_word_of_the_document_is_one_the_server_takes() {
        use crate::domain::Severity;
        for word in SEVERITY_WORDS {
            assert!(Severity::parse(word).is_ok(), "{word}");
            assert!(
                Severity::parse(&word.to_ascii_uppercase()).is_ok(),
                "{word}"
            );
        }
        for rank in Severity::RANKS {
            assert!(SEVERITY_WORDS.contains(&format!("p{rank}").as_str()));
        }
        assert!(Severity::parse("p6").is_err() && !severity_pattern().contains("[pP]6"));
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let committed: Value = serde_json::from_str(include_str!("../../openapi.json"))
            .expect("openapi.json is valid JSON");
        assert!(
            committed == document(),
            "openapi.json is stale: run `cargo run -- openapi > openapi.json`"
        );
    }

    #[test]
    fn schemas_match_the_wire_types() {
        let attempt = Attempt {
            number: 1,
            kind: "send".into(),
            outcome: "success".into(),
            http_status: None,
            started_at: String::new(),
            finished_at: String::new(),
            latency_ms: 0,
            error: None,
            excerpt: None,
        };
        let event = DeliveryEvent {
            broadcast_id: String::new(),
            destination: String::new(),
            state: String::new(),
            summary: String::new(),
            attempts_made: 0,
            attempts_max: 0,
            next_attempt_in_ms: None,
            last_error: None,
            last_http_status: None,
            possible_duplicate: false,
            at: String::new(),
        };
        let delivery = event.as_delivery();
        let broadcast = Broadcast {
            id: String::new(),
            title: String::new(),
            body: String::new(),
            severity: String::new(),
            thread: None,
            resolved: false,
            labels: Default::default(),
            links: vec![],
            fields: vec![],
            source: None,
            summary: None,
            routes: vec![],
            created_at: String::new(),
            status: String::new(),
            deliveries: vec![],
            objective: None,
        };
        let health = DestinationHealth {
            name: String::new(),
            kind: String::new(),
            concurrency: 0,
            in_flight: 0,
            paused_until: None,
            consecutive_failures: 0,
            circuit: String::new(),
            rate_limit_per_sec: None,
            backlog: 0,
            oldest_waiting_since: None,
            last_error: None,
            last_error_at: None,
            status: String::new(),
            pause: None,
        };
        assert_eq!(properties("Attempt"), fields(&attempt));
        assert_eq!(properties("Delivery"), fields(&delivery));
        assert_eq!(properties("Broadcast"), fields(&broadcast));
        assert_eq!(properties("DestinationHealth"), fields(&health));
        let action = ActionResult {
            action: String::new(),
            changed: vec![],
            broadcast: broadcast.clone(),
        };
        assert_eq!(properties("ActionResult"), fields(&action));
        assert_eq!(properties("DeliveryEvent"), fields(&event));
        assert_eq!(
            properties("BroadcastList"),
            fields(BroadcastList {
                broadcasts: vec![],
                next_cursor: None
            })
        );
        assert_eq!(
            properties("BroadcastSummaryList"),
            fields(BroadcastSummaryList {
                broadcasts: vec![],
                next_cursor: None
            })
        );
        let summary = BroadcastSummary {
            id: String::new(),
            title: String::new(),
            severity: String::new(),
            thread: None,
            resolved: false,
            created_at: String::new(),
            status: String::new(),
            deliveries: vec![],
        };
        assert_eq!(properties("BroadcastSummary"), fields(&summary));
        let delivery_summary = DeliverySummary {
            destination: String::new(),
            state: String::new(),
            summary: String::new(),
            attempts_made: 0,
            attempts_max: 0,
            possible_duplicate: false,
            next_attempt_at: None,
            next_attempt_in_ms: None,
            last_error: None,
            last_http_status: None,
            updated_at: String::new(),
        };
        assert_eq!(properties("DeliverySummary"), fields(&delivery_summary));
        let send = SendRequest {
            title: String::new(),
            body: Some(String::new()),
            severity: Some(String::new()),
            thread: Some(String::new()),
            resolved: true,
            destinations: vec!["x".into()],
            labels: [("k".into(), "v".into())].into(),
            links: vec![Link {
                text: "t".into(),
                url: "https://x".into(),
            }],
            fields: vec![Field {
                name: "n".into(),
                value: "v".into(),
            }],
            source: Some(String::new()),
            summary: Some(String::new()),
            objective: Some(ObjectiveRequest {
                confirm: ConfirmRequest {
                    any: 1,
                    of: vec!["x".into()],
                    within: "1s".into(),
                },
                fallback: vec!["y".into()],
                on_escalation: Some("z".into()),
            }),
        };
        assert_eq!(properties("SendRequest"), fields(&send));
        assert_eq!(
            properties("ObjectiveRequest"),
            fields(send.objective.as_ref().unwrap())
        );
        assert_eq!(
            properties("ObjectiveView"),
            fields(ObjectiveView::default())
        );
        assert_eq!(
            properties("PauseView"),
            fields(PauseView {
                until: None,
                reason: String::new(),
                paused_by: String::new(),
                paused_at: String::new()
            })
        );
        assert_eq!(
            properties("PauseRequest"),
            fields(PauseRequest {
                for_: None,
                reason: String::new()
            })
        );
        assert_eq!(properties("ReloadAnswer"), fields(ReloadAnswer::default()));
    }
}
