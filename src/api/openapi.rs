//! The OpenAPI 3.1 document of the HTTP API, built here in code next to the
//! routes and wire types. `openapi.json` at the repository root is this
//! document, written by `herald openapi`; a test fails when they differ, and
//! another when a schema's properties differ from its wire type's fields.

use serde_json::{json, Value};

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
            "422" => "Idempotency-Key reused with a different body",
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

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Broadcast id (ULID, any case), or its start when no other id starts so (at least 4 characters); an ambiguous start is a 400 `ambiguous_id` listing the candidates"})
}

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Destination name"})
}

pub fn document() -> Value {
    let read = json!([{"bearer": ["read"]}]);
    let send = json!([{"bearer": ["send"]}]);
    let operate = json!([{"bearer": ["operate"]}]);
    let nullable = |t: &str| json!({"type": [t, "null"]});
    json!({
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
                "SendRequest": {"type": "object", "required": ["title", "destinations"], "additionalProperties": false, "properties": {
                    "title": {"type": "string", "maxLength": 300},
                    "body": {"type": "string", "description": "At most 16 KiB"},
                    "severity": {"type": "string", "description": "P1..P5 (or critical, high, warning, low, info); default P3"},
                    "thread": {"type": "string", "maxLength": 128, "description": "Incident key: broadcasts of one thread land in order"},
                    "resolved": {"type": "boolean", "description": "This broadcast resolves the thread's incident (needs thread)"},
                    "destinations": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 64}
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
                    "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}}
                }},
                "Broadcast": {"type": "object", "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "body": {"type": "string"},
                    "severity": {"type": "string"}, "thread": nullable("string"), "resolved": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string", "enum": ["delivering", "converged", "partial"]},
                    "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}}
                }},
                "BroadcastList": {"type": "object", "properties": {
                    "broadcasts": {"type": "array", "items": {"$ref": "#/components/schemas/Broadcast"}},
                    "next_cursor": nullable("string")
                }},
                "ActionResult": {"type": "object", "description": "The broadcast after the action (the fields of Broadcast), the action, and the destinations whose delivery it changed (empty when nothing applied)", "properties": {
                    "action": {"type": "string", "enum": ["retry", "cancel"]},
                    "changed": {"type": "array", "items": {"type": "string"}},
                    "id": {"type": "string"}, "title": {"type": "string"}, "body": {"type": "string"},
                    "severity": {"type": "string"}, "thread": nullable("string"), "resolved": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "status": {"type": "string", "enum": ["delivering", "converged", "partial"]},
                    "deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}}
                }},
                "ActionRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "destinations": {"type": "array", "items": {"type": "string"}, "description": "Only these; all when empty or absent"}
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
                    "for": {"type": "string", "description": "90s, 15m, 2h, 1d (at most 30d); absent: until resumed"},
                    "reason": {"type": "string", "maxLength": 500, "description": "Why, for the other operators"}
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
                "StatusEvent": {"type": "object", "description": "Server-sent event `status`, last of a broadcast's stream", "properties": {
                    "broadcast_id": {"type": "string"}, "status": {"type": "string"}
                }},
                "AlertmanagerNotification": {"type": "object", "description": "Alertmanager webhook payload, version 4", "required": ["version", "groupKey", "status", "receiver", "alerts"]}
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
                    "security": read,
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["delivering", "converged", "partial", "waiting", "pending", "sending", "retrying", "verifying", "confirmed", "failed", "dead", "cancelled"]}, "description": "A broadcast's status, or a delivery state: the broadcasts with at least one delivery in that state"},
                        {"name": "destination", "in": "query", "schema": {"type": "string"}},
                        {"name": "thread", "in": "query", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "Milliseconds since the epoch, or a span back: 15m, 2h, 7d"},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}
                    ],
                    "responses": with(json!({"200": with(json!({"description": "A page"}), json_body("BroadcastList"))}), error_responses(&["400", "401", "403", "503"]))
                }
            },
            "/v1/broadcasts/{id}": {"get": {
                "summary": "One broadcast: each delivery's state and attempts",
                "security": read, "parameters": [id_param()],
                "responses": with(json!({"200": with(json!({"description": "The broadcast"}), json_body("Broadcast"))}), error_responses(&["400", "401", "403", "404", "503"]))
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
                "responses": with(json!({"200": {"description": "text/event-stream of DeliveryEvent and StatusEvent; when herald stops, a last `shutdown` event ({\"reason\"}) and the stream ends: reconnect, it starts again with a snapshot", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/DeliveryEvent"}}}}}), error_responses(&["400", "401", "403", "404", "503"]))
            }},
            "/v1/events": {"get": {
                "summary": "Server-sent events of every broadcast's state changes",
                "security": read,
                "responses": with(json!({"200": {"description": "text/event-stream of DeliveryEvent; when herald stops, a last `shutdown` event ({\"reason\"}) and the stream ends", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/DeliveryEvent"}}}}}), error_responses(&["401", "403"]))
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
                "responses": with(json!({"202": with(json!({"description": "Accepted"}), json_body("Broadcast"))}), error_responses(&["400", "401", "403", "404", "413", "500", "503"]))
            }},
            "/healthz": {"get": {"summary": "The process answers", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "The database can commit (503 with the reason while it cannot: a full disk, a lost database)", "security": [], "responses": with(json!({"200": {"description": "ready"}}), error_responses(&["503"]))}},
            "/metrics": {"get": {"summary": "Prometheus text format (with server.metrics_require_token, a token with the read scope)", "security": [], "responses": with(json!({"200": {"description": "Metrics", "content": {"text/plain": {}}}}), error_responses(&["401", "403", "503"]))}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::*;

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
            created_at: String::new(),
            status: String::new(),
            deliveries: vec![],
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
        let send = SendRequest {
            title: String::new(),
            body: Some(String::new()),
            severity: Some(String::new()),
            thread: Some(String::new()),
            resolved: true,
            destinations: vec![],
        };
        assert_eq!(properties("SendRequest"), fields(&send));
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
