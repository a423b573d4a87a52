//! Every answer `herald mock` gives herald's real connectors matches the
//! published description of its operation (`tests/specs`): the success,
//! error, 429 and read-back answers of Slack, Jira, PagerDuty, Discord,
//! Twilio (SMS), Zulip and Matrix (OpenAPI), Telegram (the Bot API's
//! structured reference: a method's `returns`, `ResponseParameters`) and
//! Google Chat (the discovery document's `Message`), and Teams workflows'
//! empty 202.
//!
//! herald runs against the mock through a recording proxy, with scripted
//! faults on every destination, so the requests are the connectors' own.
//! Each recorded answer is then checked against the response its operation
//! describes for that status: the status must be described (a `5XX` the
//! services do not describe is allowed), a described body must come as
//! JSON and match its schema (Swagger 2 `schema` for Slack, OpenAPI 3
//! `content` for the others, `$ref`s resolved), and a response described
//! without a body must come without one. The few places where a
//! description is known to be wrong are in `spec-deviations.toml`, each
//! with its reason and its source; an entry nothing uses fails the test.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald::demo::{mock_destination, mock_send_path};
use herald::mock::Faults;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::specs::new_kinds_specs::{discovery_errors, telegram_type_errors};
use crate::specs::{load_matrix_spec, load_spec, Validator};
use crate::support::*;

const DEVIATIONS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/spec-deviations.toml");

/// When set, the run writes every answer that passed (JSON lines of spec
/// file, schema and body) to this file, for `.ci/mock-answers.py` to check
/// again with a third-party validator.
const DUMP_ENV: &str = "HERALD_MOCK_ANSWERS_DUMP";

/// One request herald made and the answer the mock gave it.
#[derive(Clone, Debug)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
    content_type: Option<String>,
    body: Bytes,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

/// Forwards every request to the mock and records the answer.
async fn forward(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = proxy
        .client
        .request(
            method.clone(),
            format!("{}{path_and_query}", proxy.upstream),
        )
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let body = answer.bytes().await.unwrap_or_default();
    proxy.exchanges.lock().unwrap().push(Exchange {
        method: method.to_string(),
        path: uri.path().to_owned(),
        status: status.as_u16(),
        content_type: answer_headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let mut response = (status, body).into_response();
    for (name, value) in &answer_headers {
        if name != "content-length" && name != "transfer-encoding" {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Starts the recording proxy in front of `upstream`; returns its base URL
/// and the exchanges it records.
async fn start_proxy(upstream: String) -> (String, Arc<Mutex<Vec<Exchange>>>) {
    let exchanges = Arc::new(Mutex::new(Vec::new()));
    let proxy = Proxy {
        upstream,
        client: herald::connector::http_client_builder().build().unwrap(),
        exchanges: exchanges.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, exchanges)
}

// ---------------------------------------------------------------------------
// The published descriptions, and which operation answers a mock path.

struct Api {
    name: &'static str,
    /// The mock's prefix for this API; what follows is the spec's path.
    prefix: &'static str,
    spec_file: &'static str,
    /// How the description is read (JSON, or Matrix's YAML files).
    load: fn(&str) -> Value,
}

const APIS: &[Api] = &[
    Api {
        name: "slack",
        prefix: "/slack/api",
        spec_file: "slack-web-api.swagger2.json",
        load: load_spec,
    },
    Api {
        name: "jira",
        prefix: "/jira",
        spec_file: "jira-platform-v3.openapi.json",
        load: load_spec,
    },
    Api {
        name: "pagerduty",
        prefix: "/pagerduty/v2",
        spec_file: "pagerduty-events-v2.openapi.json",
        load: load_spec,
    },
    Api {
        name: "discord",
        prefix: "/discord/api",
        spec_file: "discord.openapi.json",
        load: load_spec,
    },
    Api {
        name: "twilio",
        prefix: "/twilio",
        spec_file: "twilio-api-v2010.openapi.json",
        load: load_spec,
    },
    Api {
        name: "zulip",
        prefix: "/zulip/api/v1",
        spec_file: "zulip.openapi.subset.json",
        load: load_spec,
    },
    Api {
        name: "matrix",
        prefix: "/matrix/_matrix/client/v3",
        spec_file: "api/client-server/room_send.yaml",
        load: load_matrix_spec,
    },
];

/// The Bot API reference and Google Chat's discovery document, read once.
fn telegram_spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| load_spec("telegram-bot-api.api.json"))
}

fn google_chat_spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| load_spec("google-chat-v1.discovery.json"))
}

/// A Telegram answer against the Bot API: every answer is a JSON object
/// with `ok`; a success's `result` is what the method `returns`; a failure
/// has `error_code` (its HTTP status), `description` and maybe
/// `parameters` (`ResponseParameters`), as "Making requests" says.
fn telegram_answer_errors(exchange: &Exchange) -> (String, Vec<String>) {
    let spec = telegram_spec();
    let method = exchange.path.rsplit('/').next().unwrap_or_default();
    let seen = format!("telegram POST /{method} {}", exchange.status);
    let Ok(body) = serde_json::from_slice::<Value>(&exchange.body) else {
        return (seen, vec!["the body is not JSON".to_owned()]);
    };
    let mut errors = Vec::new();
    if exchange
        .content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or("").trim())
        != Some("application/json")
    {
        errors.push(format!(
            "the body should be application/json, the mock sent {:?}",
            exchange.content_type
        ));
    }
    let Some(object) = body.as_object() else {
        return (seen, vec!["the answer is not an object".to_owned()]);
    };
    for name in object.keys() {
        if !["ok", "result", "description", "error_code", "parameters"].contains(&name.as_str()) {
            errors.push(format!("/{name}: not a field of a Bot API answer"));
        }
    }
    match body["ok"].as_bool() {
        Some(true) => {
            if exchange.status != 200 {
                errors.push(format!("ok: true with HTTP {}", exchange.status));
            }
            let returns = spec["methods"][method]["returns"].as_array().cloned();
            match returns {
                None => errors.push(format!("the Bot API has no method {method}")),
                Some(types) => errors.extend(telegram_type_errors(
                    spec,
                    &types,
                    &body["result"],
                    "/result",
                )),
            }
        }
        Some(false) => {
            if body["error_code"].as_u64() != Some(u64::from(exchange.status)) {
                errors.push(format!(
                    "/error_code: {} is not the HTTP status {}",
                    body["error_code"], exchange.status
                ));
            }
            if !body["description"].is_string() {
                errors.push("/description: missing or not a String".to_owned());
            }
            if let Some(parameters) = body.get("parameters") {
                errors.extend(telegram_type_errors(
                    spec,
                    &[json!("ResponseParameters")],
                    parameters,
                    "/parameters",
                ));
            }
        }
        None => errors.push("/ok: missing or not a Boolean".to_owned()),
    }
    (seen, errors)
}

/// A Google Chat answer: a success is a `Message` of the discovery
/// document; an error is Google's error object (`error` with `code` (the
/// HTTP status), `message`, `status`), which discovery documents do not
/// describe (https://cloud.google.com/apis/design/errors#http_mapping).
fn google_chat_answer_errors(exchange: &Exchange) -> (String, Vec<String>) {
    let seen = format!(
        "google-chat POST /spaces/{{space}}/messages {}",
        exchange.status
    );
    let Ok(body) = serde_json::from_slice::<Value>(&exchange.body) else {
        return (seen, vec!["the body is not JSON".to_owned()]);
    };
    let errors = if exchange.status == 200 {
        discovery_errors(google_chat_spec(), &json!({"$ref": "Message"}), &body, "")
    } else {
        let error = &body["error"];
        let mut errors = Vec::new();
        if error["code"].as_u64() != Some(u64::from(exchange.status)) {
            errors.push(format!(
                "/error/code: {} is not the HTTP status",
                error["code"]
            ));
        }
        for field in ["message", "status"] {
            if !error[field].is_string() {
                errors.push(format!("/error/{field}: missing or not a string"));
            }
        }
        errors
    };
    (seen, errors)
}

/// The spec path template `path` matches, preferring the one with the most
/// literal segments (`/messages/@original` over `/messages/{message_id}`).
fn spec_path(spec: &Value, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    spec["paths"]
        .as_object()?
        .keys()
        .filter_map(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                return None;
            }
            let mut literal = 0;
            for (part, segment) in parts.iter().zip(&segments) {
                if part.starts_with('{') && part.ends_with('}') && !segment.is_empty() {
                    continue;
                }
                if part != segment {
                    return None;
                }
                literal += 1;
            }
            Some((literal, template.clone()))
        })
        .max()
        .map(|(_, template)| template)
}

fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let target = reference
                .strip_prefix('#')
                .and_then(|p| spec.pointer(p))
                .unwrap_or_else(|| panic!("cannot resolve {reference}"));
            resolve(spec, target)
        }
        None => value,
    }
}

/// The response an operation describes for `status`: exact, then `4XX`,
/// then `default`.
fn described_response(operation: &Value, status: u16) -> Option<(&Value, String)> {
    let responses = &operation["responses"];
    let range = format!("{}XX", status / 100);
    [status.to_string(), range, "default".to_owned()]
        .into_iter()
        .find_map(|key| responses.get(&key).map(|r| (r, key)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deviations {
    deviation: Vec<Deviation>,
    /// Where herald's requests knowingly differ from a description
    /// (checked by `specs.rs`).
    pub(crate) request: Vec<RequestDeviation>,
}

/// A request herald sends otherwise than the description says, because
/// the service documents the other way.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestDeviation {
    pub(crate) api: String,
    /// `METHOD /spec/path`, as the description names it.
    pub(crate) operation: String,
    /// The parameter the description has.
    pub(crate) parameter: String,
    /// What the description says of it (checked against the description).
    pub(crate) described: String,
    /// What herald sends instead.
    pub(crate) herald_sends: String,
    pub(crate) reason: String,
    pub(crate) source: String,
}

/// A place where a published description is known to be wrong.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deviation {
    /// `slack`, `jira`, `pagerduty`, `discord`, `twilio`, `zulip` or
    /// `matrix`.
    api: String,
    /// `METHOD /spec/path`, as the description names it, or `*` for all.
    operation: String,
    /// The response key in the description (`200`, `4XX`, `default`), or
    /// `*` for all.
    response: String,
    /// The validation errors this excuses contain this text (the JSON path
    /// of the value, then the message).
    error: String,
    reason: String,
    source: String,
}

pub(crate) fn load_deviations() -> Deviations {
    let text = std::fs::read_to_string(DEVIATIONS_FILE).unwrap();
    let deviations: Deviations = toml::from_str(&text)
        .unwrap_or_else(|error| panic!("{DEVIATIONS_FILE} is not valid: {error}"));
    let sourced = deviations
        .deviation
        .iter()
        .map(|d| (&d.reason, &d.source))
        .chain(deviations.request.iter().map(|d| (&d.reason, &d.source)));
    for (reason, source) in sourced {
        assert!(
            !reason.trim().is_empty() && source.starts_with("https://"),
            "{DEVIATIONS_FILE}: every deviation gives its reason and a source URL: {reason:?} {source:?}"
        );
    }
    deviations
}

/// Every way `exchange` breaks its operation's description, minus the
/// deviations (whose indexes it adds to `used`). Adds what was checked
/// (`api METHOD /spec/path status`) to `seen`, and each JSON answer that
/// matched its schema with no deviation to `clean`.
fn answer_errors(
    specs: &[(&Api, Value)],
    deviations: &[Deviation],
    used: &mut BTreeSet<usize>,
    seen: &mut BTreeSet<String>,
    clean: &mut Vec<Value>,
    exchange: &Exchange,
) -> Vec<String> {
    let what = format!(
        "{} {} -> {}",
        exchange.method, exchange.path, exchange.status
    );
    let custom = if exchange.path.starts_with("/telegram/") {
        Some(telegram_answer_errors(exchange))
    } else if exchange.path.starts_with("/google-chat/") {
        Some(google_chat_answer_errors(exchange))
    } else {
        None
    };
    if let Some((checked, errors)) = custom {
        seen.insert(checked);
        return errors.into_iter().map(|e| format!("{what}: {e}")).collect();
    }
    if exchange.path.starts_with("/teams/") {
        seen.insert(format!("teams POST {}", exchange.status));
        // A Teams workflow takes the card and answers 202 with no body.
        let ok = exchange.status != 202 || exchange.body.is_empty();
        return if ok {
            Vec::new()
        } else {
            vec![format!("{what}: a workflow's 202 has no body")]
        };
    }
    let Some((api, spec)) = specs
        .iter()
        .find(|(api, _)| exchange.path.starts_with(&format!("{}/", api.prefix)))
    else {
        return vec![format!("{what}: no published description covers this path")];
    };
    let rest = &exchange.path[api.prefix.len()..];
    let Some(template) = spec_path(spec, rest) else {
        return vec![format!(
            "{what}: {} describes no path {rest}",
            api.spec_file
        )];
    };
    let method = exchange.method.to_lowercase();
    let operation = &spec["paths"][&template][&method];
    if operation.is_null() {
        return vec![format!("{what}: {template} describes no {method}")];
    }
    let operation_name = format!("{} {template}", exchange.method);
    seen.insert(format!("{} {operation_name} {}", api.name, exchange.status));
    let Checked {
        key,
        errors,
        schema_and_body,
    } = description_errors(spec, operation, exchange);
    // The third-party check reads the JSON descriptions (not Matrix's YAML).
    let dumpable = api.spec_file.ends_with(".json");
    if let (true, true, Some((schema, body))) = (dumpable, errors.is_empty(), schema_and_body) {
        clean.push(serde_json::json!({
            "spec": api.spec_file,
            "answer": what,
            "schema": schema,
            "body": body,
        }));
    }
    errors
        .into_iter()
        .filter(|error| {
            let excused = deviations.iter().position(|d| {
                d.api == api.name
                    && (d.operation == "*" || d.operation == operation_name)
                    && (d.response == "*" || d.response == key)
                    && error.contains(&d.error)
            });
            if let Some(index) = excused {
                used.insert(index);
            }
            excused.is_none()
        })
        .map(|error| format!("{what} ({operation_name}, {key}): {error}"))
        .collect()
}

/// What one answer was checked against.
struct Checked {
    /// The response key in the description.
    key: String,
    errors: Vec<String>,
    /// The schema and the JSON body it was checked with, if it had both.
    schema_and_body: Option<(Value, Value)>,
}

/// The response key `exchange` is checked against, and every way it breaks
/// that response.
fn description_errors(spec: &Value, operation: &Value, exchange: &Exchange) -> Checked {
    let swagger = spec.get("swagger").is_some();
    let body: Option<Value> = serde_json::from_slice(&exchange.body).ok();
    // Slack answers a failed call 200 `{"ok": false}`, which its swagger
    // describes as the `default` response
    // (https://docs.slack.dev/apis/web-api/#evaluating-responses).
    let slack_error = swagger && body.as_ref().is_some_and(|b| b["ok"] == false);
    let found = if slack_error {
        operation["responses"]
            .get("default")
            .map(|r| (r, "default".to_owned()))
    } else {
        described_response(operation, exchange.status)
    };
    let Some((response, key)) = found else {
        let status = exchange.status;
        // The services describe no 5xx; a client must still expect one.
        let errors = if status >= 500 {
            Vec::new()
        } else {
            vec![format!("describes no {status} answer")]
        };
        return Checked {
            key: status.to_string(),
            errors,
            schema_and_body: None,
        };
    };
    let response = resolve(spec, response);
    let schema = if swagger {
        response.get("schema")
    } else {
        response["content"]
            .get("application/json")
            .map(|media| &media["schema"])
    };
    let media_type = exchange
        .content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned());
    let mut errors = Vec::new();
    let mut schema_and_body = None;
    // A 204 has no content (RFC 9110, 15.3.5), whatever a description says.
    let schema = schema.filter(|_| exchange.status != 204);
    match schema {
        None => {
            if !exchange.body.is_empty() || media_type.is_some() {
                errors.push(format!(
                    "described without a body, the mock sent {media_type:?} {}",
                    String::from_utf8_lossy(&exchange.body)
                ));
            }
        }
        Some(schema) => {
            if media_type.as_deref() != Some("application/json") {
                errors.push(format!(
                    "the body should be application/json, the mock sent {media_type:?}"
                ));
            }
            match body {
                None => errors.push("the body is not JSON".to_owned()),
                Some(body) => {
                    let validator = Validator::new(spec);
                    errors.extend(validator.validate(schema, &body));
                    let unsupported = validator.unsupported_keywords();
                    if !unsupported.is_empty() {
                        errors.push(format!(
                            "the schema uses keywords the validator does not check: {unsupported:?}"
                        ));
                    }
                    schema_and_body = Some((schema.clone(), body));
                }
            }
        }
    }
    Checked {
        key,
        errors,
        schema_and_body,
    }
}

// ---------------------------------------------------------------------------
// The run.

/// Discord's read-back, as its connector's `verify` sends it (the message
/// by id, in its forum post): for a message it posted, and for one that is
/// not there. herald only reads back when an earlier answer gave it the
/// id, which a lost answer does not, so the run itself never does.
async fn read_discord_back(proxy: &str, exchanges: &Mutex<Vec<Exchange>>) {
    let posted = exchanges
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.method == "POST" && e.path.starts_with("/discord/") && e.status == 200)
        .cloned()
        .expect("Discord took a message");
    let message: Value = serde_json::from_slice(&posted.body).unwrap();
    let (id, post) = (
        message["id"].as_str().unwrap(),
        message["channel_id"].as_str().unwrap(),
    );
    let client = herald::connector::http_client_builder().build().unwrap();
    for (id, status) in [(id, 200), ("1", 404)] {
        let url = format!("{proxy}{}/messages/{id}?thread_id={post}", posted.path);
        let answer = client.get(url).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status);
    }
}

const REAL: [(&str, &str); 10] = [
    ("slack", "slack-incidents"),
    ("teams", "teams-ops"),
    ("jira", "jira-ops"),
    ("pagerduty", "pagerduty"),
    ("discord", "discord-ops"),
    ("matrix", "matrix-ops"),
    ("sms", "sms-oncall"),
    ("google-chat", "chat-ops"),
    ("telegram", "telegram-ops"),
    ("zulip", "zulip-ops"),
];

/// A 429, a 503, then (Slack) an `internal_error` after the post, then an
/// answer lost after the effect: every kind of answer, and a read-back
/// where the destination has one.
fn hard_start(kind: &str) -> Faults {
    Faults {
        rate_limit_first: 1,
        retry_after_secs: 1,
        fail_first: 1,
        fail_status: 503,
        slack_error_first: u32::from(kind == "slack"),
        slack_error: (kind == "slack").then(|| "internal_error".to_owned()),
        drop_first: 1,
        drop_hang_ms: 3_000,
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mock_answer_matches_the_published_description_of_its_operation() {
    let mut faults: Vec<(String, Faults)> = REAL
        .iter()
        .map(|(kind, name)| (mock_send_path(kind, name), hard_start(kind)))
        .collect();
    // Jira's comments and transitions, and Slack's edits: the same, and
    // their read-backs.
    let rest = Faults {
        rate_limit_first: 1,
        fail_first: 1,
        fail_status: 503,
        drop_first: 1,
        drop_hang_ms: 3_000,
        ..Faults::default()
    };
    faults.push(("/jira/rest/api/3/issue/*".to_owned(), rest.clone()));
    faults.push(("/slack/api/chat.update".to_owned(), rest.clone()));
    let refs: Vec<(&str, Faults)> = faults
        .iter()
        .map(|(p, f)| (p.as_str(), f.clone()))
        .collect();
    let mock = start_mock(&refs).await;
    let (proxy, exchanges) = start_proxy(format!("http://{}", mock.addr)).await;
    let destinations = REAL
        .iter()
        .map(|(kind, name)| mock_destination(&proxy, kind, name))
        .collect();
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), destinations).await;
    let client = client(&server);
    let names: Vec<&str> = REAL.iter().map(|(_, name)| *name).collect();

    // An incident: opened, updated, resolved.
    for (title, resolved) in [
        ("INC-7: checkout down", false),
        ("INC-7: rollback started", false),
        ("INC-7: checkout back", true),
    ] {
        let mut send = request(title, &names);
        send.thread = Some("INC-7".to_owned());
        send.resolved = resolved;
        let accepted = client.send(&send).await.unwrap();
        let done = wait_final(&client, &accepted.id, Duration::from_secs(60)).await;
        assert_eq!(done.status, "converged", "{done:#?}");
    }
    // Refusals: each destination answers its own 4xx error once (Slack:
    // 200 with `ok: false`).
    for (kind, name) in REAL {
        let refusal = if kind == "slack" {
            Faults {
                slack_error_first: 1,
                slack_error: Some("channel_not_found".to_owned()),
                ..Faults::default()
            }
        } else {
            Faults {
                fail_first: 1,
                fail_status: 400,
                ..Faults::default()
            }
        };
        mock.set_faults(&mock_send_path(kind, name), refusal);
    }
    let accepted = client
        .send(&request("Deploy failed", &names))
        .await
        .unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, "partial", "{done:#?}");
    // And a message with no fault at all: every plain success.
    let accepted = client.send(&request("All clear", &names)).await.unwrap();
    let done = wait_final(&client, &accepted.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    read_discord_back(&proxy, &exchanges).await;

    let exchanges = exchanges.lock().unwrap().clone();
    let specs: Vec<(&Api, Value)> = APIS
        .iter()
        .map(|api| (api, (api.load)(api.spec_file)))
        .collect();
    let deviations = load_deviations().deviation;
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut clean = Vec::new();
    for exchange in &exchanges {
        errors.extend(answer_errors(
            &specs,
            &deviations,
            &mut used,
            &mut seen,
            &mut clean,
            exchange,
        ));
    }
    // For the third-party cross-check (.ci/mock-answers.py): the answers
    // that passed, with their schemas.
    if let Ok(path) = std::env::var(DUMP_ENV) {
        let lines: Vec<String> = clean.iter().map(Value::to_string).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
    let unique: BTreeSet<&String> = errors.iter().collect();
    assert!(
        unique.is_empty(),
        "{} mock answers break their published descriptions:\n  {}",
        unique.len(),
        unique
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    for (index, deviation) in deviations.iter().enumerate() {
        assert!(
            used.contains(&index),
            "{DEVIATIONS_FILE}: no answer needed {deviation:?}; remove it"
        );
    }
    // The run met every kind of answer it is meant to check.
    for expected in [
        "slack POST /chat.postMessage 200",
        "slack POST /chat.postMessage 429",
        "slack POST /chat.postMessage 503",
        "slack POST /chat.update 200",
        "slack GET /conversations.history 200",
        "slack GET /conversations.replies 200",
        "jira POST /rest/api/3/issue 201",
        "jira POST /rest/api/3/issue 400",
        "jira POST /rest/api/3/issue 429",
        "jira POST /rest/api/3/issue/{issueIdOrKey}/comment 201",
        "jira GET /rest/api/3/issue/{issueIdOrKey}/comment 200",
        "jira POST /rest/api/3/issue/{issueIdOrKey}/transitions 204",
        "jira GET /rest/api/3/search/jql 200",
        "pagerduty POST /enqueue 202",
        "pagerduty POST /enqueue 400",
        "pagerduty POST /enqueue 429",
        "discord POST /webhooks/{webhook_id}/{webhook_token} 200",
        "discord POST /webhooks/{webhook_id}/{webhook_token} 400",
        "discord POST /webhooks/{webhook_id}/{webhook_token} 429",
        "discord PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id} 200",
        "discord GET /webhooks/{webhook_id}/{webhook_token}/messages/{message_id} 200",
        "discord GET /webhooks/{webhook_id}/{webhook_token}/messages/{message_id} 404",
        "teams POST 202",
        "matrix PUT /rooms/{roomId}/send/{eventType}/{txnId} 200",
        "matrix PUT /rooms/{roomId}/send/{eventType}/{txnId} 400",
        "matrix PUT /rooms/{roomId}/send/{eventType}/{txnId} 429",
        "twilio POST /2010-04-01/Accounts/{AccountSid}/Messages.json 201",
        "twilio POST /2010-04-01/Accounts/{AccountSid}/Messages.json 400",
        "twilio POST /2010-04-01/Accounts/{AccountSid}/Messages.json 429",
        "twilio GET /2010-04-01/Accounts/{AccountSid}/Messages.json 200",
        "google-chat POST /spaces/{space}/messages 200",
        "google-chat POST /spaces/{space}/messages 400",
        "google-chat POST /spaces/{space}/messages 429",
        "telegram POST /sendMessage 200",
        "telegram POST /sendMessage 400",
        "telegram POST /sendMessage 429",
        "telegram POST /editMessageText 200",
        "zulip POST /messages 200",
        "zulip POST /messages 400",
        "zulip POST /messages 429",
        "zulip GET /messages 200",
        "zulip PATCH /messages/{message_id} 200",
    ] {
        assert!(seen.contains(expected), "no {expected} in {seen:#?}");
    }
    server.stop().await;
    mock.stop().await;
}

/// The checker fails the answers the mock used to give, and passes the
/// ones the services give, so the run above cannot pass by checking
/// nothing.
#[test]
fn the_answer_checker_rejects_what_it_should() {
    let specs: Vec<(&Api, Value)> = APIS
        .iter()
        .map(|api| (api, (api.load)(api.spec_file)))
        .collect();
    let deviations = load_deviations().deviation;
    let check = |method: &str, path: &str, status: u16, body: &str| {
        let exchange = Exchange {
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            content_type: (!body.is_empty()).then(|| "application/json".to_owned()),
            body: Bytes::from(body.to_owned()),
        };
        let (mut used, mut seen) = (BTreeSet::new(), BTreeSet::new());
        answer_errors(
            &specs,
            &deviations,
            &mut used,
            &mut seen,
            &mut Vec::new(),
            &exchange,
        )
    };
    let has = |errors: &[String], text: &str| {
        assert!(
            errors.iter().any(|e| e.contains(text)),
            "expected an error with {text:?}, got {errors:#?}"
        );
    };
    let hook = "/discord/api/webhooks/1/token";
    let old_429 = r#"{"message":"You are being rate limited.","retry_after":1.0,"global":false}"#;
    has(&check("POST", hook, 429, old_429), "`code` is missing");
    let new_429 =
        r#"{"code":0,"message":"You are being rate limited.","retry_after":1.0,"global":false}"#;
    assert_eq!(check("POST", hook, 429, new_429), Vec::<String>::new());
    has(
        &check("POST", "/pagerduty/v2/enqueue", 429, r#"{"status":"x"}"#),
        "described without a body",
    );
    // A status the operation does not describe; a 5xx is allowed.
    has(
        &check("POST", "/jira/rest/api/3/issue", 418, r#"{}"#),
        "describes no 418 answer",
    );
    assert!(check("POST", "/jira/rest/api/3/issue", 502, "").is_empty());
    // A 204 has no content, whatever the description says.
    assert!(check("POST", "/jira/rest/api/3/issue/OPS-1/transitions", 204, "").is_empty());
    // Slack's 200 `ok: false` is checked as the `default` (error) answer.
    has(
        &check(
            "POST",
            "/slack/api/chat.postMessage",
            200,
            r#"{"ok":false,"error":"made_up"}"#,
        ),
        "\"made_up\" is not one of",
    );
    has(
        &check(
            "GET",
            "/slack/api/conversations.replies",
            200,
            r#"{"ok":true,"messages":[],"has_more":false,"pin_count":0}"#,
        ),
        "`pin_count` is not allowed",
    );
    has(
        &check("GET", "/discord/api/nowhere", 200, "{}"),
        "describes no path",
    );
    has(
        &check("POST", "/teams/ops", 202, r#"{"ok":true}"#),
        "has no body",
    );
    // Telegram: a result that is not the method's Message, an error_code
    // that is not the status, a field no answer has.
    let send = "/telegram/bot1:x/sendMessage";
    has(
        &check("POST", send, 200, r#"{"ok":true,"result":"sent"}"#),
        "is not a Message",
    );
    has(
        &check(
            "POST",
            send,
            429,
            r#"{"ok":false,"error_code":400,"description":"x"}"#,
        ),
        "is not the HTTP status 429",
    );
    has(
        &check("POST", send, 200, r#"{"ok":true,"result":true,"extra":1}"#),
        "/extra",
    );
    assert!(check(
        "POST",
        send,
        429,
        r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 2","parameters":{"retry_after":2}}"#
    )
    .is_empty());
    // Twilio, Zulip and Matrix through their OpenAPI descriptions.
    has(
        &check(
            "POST",
            "/twilio/2010-04-01/Accounts/AC1/Messages.json",
            201,
            r#"{"sid":5}"#,
        ),
        "/sid",
    );
    has(
        &check(
            "PUT",
            "/matrix/_matrix/client/v3/rooms/!a:b/send/m.room.message/t",
            200,
            r#"{"event_id":"e1"}"#,
        ),
        "/event_id",
    );
    // Google Chat: a field Message does not have; an error without its code.
    let chat = "/google-chat/v1/spaces/AAAA1/messages";
    has(
        &check(
            "POST",
            chat,
            200,
            r#"{"name":"spaces/AAAA1/messages/1","txt":"x"}"#,
        ),
        "/txt",
    );
    has(
        &check(
            "POST",
            chat,
            429,
            r#"{"error":{"message":"x","status":"RESOURCE_EXHAUSTED"}}"#,
        ),
        "/error/code",
    );
}
