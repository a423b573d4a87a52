//! The requests herald's connectors build, checked against the services' own
//! API descriptions in `tests/specs` (verbatim copies of `../shared/specs`): Slack's swagger, Jira's, Discord's
//! and PagerDuty's OpenAPI documents, and the Adaptive Card 1.5 schema.
//!
//! The checks run on the pure request builders the connectors send, for each
//! role a message can have (single, thread opener, update, resolve), with
//! messages at herald's limits and with unicode. A small JSON Schema
//! validator (the draft-4/6 and OpenAPI 3.0 subset these documents use) lives
//! at the bottom of this module, with its own tests, so it cannot silently
//! accept everything.

// The new kinds of issue 21, in `specs/new_kinds_specs.rs`.
pub(crate) mod new_kinds_specs;
// Google Chat's API mode, in `specs/google_chat_specs.rs`.
mod google_chat_specs;

use std::cell::RefCell;
use std::collections::BTreeSet;

use herald::connector::{
    discord_create_message_body, discord_execute_body, discord_nonce, jira_comment_body,
    jira_create_body, matrix_edit_txn_id, matrix_message_content, matrix_resolve_edit_content,
    matrix_send_url, matrix_txn_id, pagerduty_event, post_message_body, resolve_update_body,
    teams_card_message, webhook_payload,
};
use herald::domain::{
    DeliveryProgress, Field, Link, Message, MessageDetails, RetryPolicy, Severity,
};
use herald::kinds::discord::bot_connector::render_create_message_body;
use herald::kinds::discord::connector::render_execute_body;
use herald::kinds::jira::connector::{render_comment_body, render_create_body};
use herald::kinds::pagerduty::connector::render_event;
use herald::kinds::slack::connector::render_post_message;
use herald::kinds::teams::connector::render_card_message;
use herald::kinds::webhook::connector::render_webhook_body;
use herald::store::ClaimedDelivery;
use herald::template::{Mentions, Rendering};
use serde_json::{json, Value};

/// The published API descriptions, copied verbatim into the repository so
/// the tests run wherever it is cloned.
const SPECS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/specs");
/// Where the project keeps the originals, when this checkout sits beside
/// them: the copies must not drift from them.
const ORIGINALS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/specs");

pub(crate) fn load_spec(file: &str) -> Value {
    let path = format!("{SPECS_DIR}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("cannot read the API description {path}: {error}; it belongs to the repository")
    });
    if let Ok(original) = std::fs::read_to_string(format!("{ORIGINALS_DIR}/{file}")) {
        assert!(
            original == text,
            "{path} differs from {ORIGINALS_DIR}/{file}: copy the published description again"
        );
    }
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{path} is not JSON: {error}"))
}

// ---------------------------------------------------------------------------
// The deliveries: every role, herald's limits, unicode.

const BROADCAST_ID: &str = "01JD7Q3ZK8W5V2N4XG6T9RBH1C";
const SLACK_CHANNEL: &str = "C024BE91L";
const SLACK_FIRST_TS: &str = "1764000000.000100";
const JIRA_PROJECT: &str = "OPS";
const JIRA_ISSUE_TYPE: &str = "Incident";
/// An Events API v2 integration key: 32 characters.
const PAGERDUTY_ROUTING_KEY: &str = "737ea619db564d41bd9824063e1f6b08";

fn delivery(message: Message, thread_ref: Option<&str>) -> ClaimedDelivery {
    ClaimedDelivery {
        delivery_id: 1,
        broadcast_id: BROADCAST_ID.into(),
        destination: "ops".into(),
        idempotency_key: format!("{BROADCAST_ID}-ops"),
        progress: DeliveryProgress::new(&RetryPolicy::default(), false, 0),
        message,
        broadcast_created_at_ms: 1_764_000_000_123,
        last_error: None,
        lease_epoch: 1,
        thread_ref: thread_ref.map(str::to_owned),
        remote_ref: None,
    }
}

/// A title of exactly `TITLE_CHARS_MAX` characters, many of them wide.
fn long_title() -> String {
    let mut title: String = "Ω🚨db-1 "
        .chars()
        .cycle()
        .take(herald::domain::TITLE_CHARS_MAX - 1)
        .collect();
    title.push('x');
    title
}

/// A body of (nearly) `BODY_BYTES_MAX` bytes, many lines, multi-byte text.
fn long_body() -> String {
    let line = "🔥 disk /var at 99% on db-1 — ÿ <b>&amp; *bold* _it_\n";
    let mut body = String::new();
    while body.len() + line.len() <= herald::domain::BODY_BYTES_MAX {
        body.push_str(line);
    }
    body
}

fn long_thread() -> String {
    "ü".repeat(herald::domain::THREAD_CHARS_MAX)
}

struct Case {
    name: &'static str,
    delivery: ClaimedDelivery,
}

/// Every delivery the connectors are checked with. `thread_ref` is a value
/// any connector accepts as the thread's first delivery's reference.
fn cases() -> Vec<Case> {
    let thread_ref = Some("herald-thread-INC-42");
    let message = |title: &str, body: &str, severity, thread: Option<&str>, resolved| {
        Message::new(title, body, severity, thread)
            .and_then(|m| m.resolving(resolved))
            .expect("a valid message")
    };
    let body = "The volume /var is at 99%.\n\nCleanup started at 10:02.";
    let unicode_title = "Ünïcødé 🚨 日本語 – ‹db› «primary» שלום";
    let unicode_body = "é\u{301} combining, 👩‍💻 ZWJ, RTL שלום, <tags> & *stars* `code`\n第二行";
    let long_title = long_title();
    let long_body = long_body();
    let long_thread = long_thread();
    vec![
        Case {
            name: "single",
            delivery: delivery(
                message("Disk full on db-1", body, Severity::P2, None, false),
                None,
            ),
        },
        Case {
            name: "single without a body",
            delivery: delivery(
                message("Deploy finished", "", Severity::P5, None, false),
                None,
            ),
        },
        Case {
            name: "opener",
            delivery: delivery(
                message(
                    "Checkout is down",
                    body,
                    Severity::P1,
                    Some("INC-42"),
                    false,
                ),
                None,
            ),
        },
        Case {
            name: "update",
            delivery: delivery(
                message(
                    "Rollback started",
                    body,
                    Severity::P1,
                    Some("INC-42"),
                    false,
                ),
                thread_ref,
            ),
        },
        Case {
            name: "resolve",
            delivery: delivery(
                message("Checkout is back", "", Severity::P1, Some("INC-42"), true),
                thread_ref,
            ),
        },
        Case {
            name: "long opener",
            delivery: delivery(
                message(
                    &long_title,
                    &long_body,
                    Severity::P3,
                    Some(&long_thread),
                    false,
                ),
                None,
            ),
        },
        Case {
            name: "long update",
            delivery: delivery(
                message(
                    &long_title,
                    &long_body,
                    Severity::P3,
                    Some(&long_thread),
                    false,
                ),
                thread_ref,
            ),
        },
        Case {
            name: "long resolve",
            delivery: delivery(
                message(
                    &long_title,
                    &long_body,
                    Severity::P3,
                    Some(&long_thread),
                    true,
                ),
                thread_ref,
            ),
        },
        Case {
            name: "unicode single",
            delivery: delivery(
                message(unicode_title, unicode_body, Severity::P4, None, false),
                None,
            ),
        },
        Case {
            name: "unicode opener",
            delivery: delivery(
                message(
                    unicode_title,
                    unicode_body,
                    Severity::P3,
                    Some("инцидент-7"),
                    false,
                ),
                None,
            ),
        },
        Case {
            name: "unicode resolve",
            delivery: delivery(
                message(
                    unicode_title,
                    unicode_body,
                    Severity::P3,
                    Some("инцидент-7"),
                    true,
                ),
                thread_ref,
            ),
        },
    ]
    .into_iter()
    .chain(rich_cases())
    .collect()
}

/// The mention every rich case's destination has for every severity: a
/// Slack user group and a Discord role (text elsewhere).
const MENTION: &str = "<!subteam^S0123ABCD> <@&1187041234567890123>";

/// How a case is rendered: the rich cases with mentions, the others as a
/// destination without its own template or mentions.
fn rendering(case: &Case) -> Rendering {
    if !case.name.starts_with("rich") {
        return Rendering::default();
    }
    let mentions = ["P1", "P2", "P3", "P4", "P5"].map(|p| (p, MENTION));
    Rendering {
        template: None,
        mentions: Mentions::parse(mentions).unwrap(),
    }
}

/// Messages with every detail (labels, links, fields, source, summary),
/// in every role, and one with every detail at its limit.
fn rich_cases() -> Vec<Case> {
    let thread_ref = Some("herald-thread-INC-42");
    let details = MessageDetails {
        labels: [
            ("service", "checkout"),
            ("environment", "production"),
            ("team", "payments"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
        links: vec![
            Link {
                text: "Runbook".into(),
                url: "https://runbooks.example.com/checkout?step=1&x=\"y\"".into(),
            },
            Link {
                text: "Dashboard ‹live›".into(),
                url: "https://grafana.example.com/d/abc".into(),
            },
        ],
        fields: vec![
            Field {
                name: "service".into(),
                value: "checkout".into(),
            },
            Field {
                name: "environment".into(),
                value: "production".into(),
            },
            Field {
                name: "Customers <affected>".into(),
                value: "all *EU* & \"some\" US".into(),
            },
        ],
        source: Some("alertmanager".into()),
        summary: Some("Checkout 5xx at 12%".into()),
    };
    let at_limits = MessageDetails {
        labels: (0..herald::domain::LABELS_MAX)
            .map(|i| {
                (
                    format!("label_{i}"),
                    "v".repeat(herald::domain::LABEL_VALUE_CHARS_MAX),
                )
            })
            .collect(),
        links: (0..herald::domain::LINKS_MAX)
            .map(|i| Link {
                text: format!("{i:02}").repeat(herald::domain::LINK_TEXT_CHARS_MAX / 2),
                url: format!(
                    "https://example.com/{}",
                    "p".repeat(herald::domain::LINK_URL_CHARS_MAX - 20)
                ),
            })
            .collect(),
        fields: (0..herald::domain::FIELDS_MAX)
            .map(|i| Field {
                name: format!("{i:02}").repeat(herald::domain::FIELD_NAME_CHARS_MAX / 2),
                value: "🔥".repeat(herald::domain::FIELD_VALUE_CHARS_MAX),
            })
            .collect(),
        source: Some("s".repeat(herald::domain::SOURCE_CHARS_MAX)),
        summary: Some("m".repeat(herald::domain::SUMMARY_CHARS_MAX)),
    };
    let message = |severity, thread: Option<&str>, resolved, details: &MessageDetails| {
        Message::new(
            "Checkout \"5xx\" rate above 10% <b>",
            "Errors since 10:02.\nOn-call: see the *runbook* & <dashboard>.",
            severity,
            thread,
        )
        .and_then(|m| m.resolving(resolved))
        .and_then(|m| m.with_details(details.clone()))
        .expect("a valid message")
    };
    let mut long = message(Severity::P1, Some(&long_thread()), false, &at_limits);
    long = Message::new(&long_title(), &long_body(), Severity::P1, long.thread())
        .and_then(|m| m.with_details(at_limits.clone()))
        .expect("a valid message");
    vec![
        Case {
            name: "rich single",
            delivery: delivery(message(Severity::P1, None, false, &details), None),
        },
        Case {
            name: "rich opener",
            delivery: delivery(message(Severity::P2, Some("INC-42"), false, &details), None),
        },
        Case {
            name: "rich update",
            delivery: delivery(
                message(Severity::P3, Some("INC-42"), false, &details),
                thread_ref,
            ),
        },
        Case {
            name: "rich resolve",
            delivery: delivery(
                message(Severity::P4, Some("INC-42"), true, &details),
                thread_ref,
            ),
        },
        Case {
            name: "rich at the limits",
            delivery: delivery(long, None),
        },
    ]
}

/// Validates `instance` against `schema` (inside `document`), failing the
/// test with every error and the request that caused it.
fn assert_valid(document: &Value, schema: &Value, instance: &Value, what: &str) {
    let validator = Validator::new(document);
    let errors = validator.validate(schema, instance);
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n  {}\nrequest: {}",
        errors.join("\n  "),
        excerpt(instance)
    );
    let unsupported = validator.unsupported_keywords();
    assert!(
        unsupported.is_empty(),
        "the schema for {what} uses keywords this validator does not check: {unsupported:?}"
    );
}

/// Asserts the validator rejects `instance`, and that some error names
/// `expected` (a path or a word of the message).
fn assert_rejected(document: &Value, schema: &Value, instance: &Value, expected: &str) {
    let errors = Validator::new(document).validate(schema, instance);
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected an error mentioning {expected:?}, got {errors:#?}\nfor {}",
        excerpt(instance)
    );
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 600 {
        text
    } else {
        text.chars().take(600).collect::<String>() + "…"
    }
}

/// `#/a/b` in `document`.
fn pointer<'a>(document: &'a Value, reference: &str) -> &'a Value {
    let path = reference.strip_prefix('#').expect("a local reference");
    document
        .pointer(path)
        .unwrap_or_else(|| panic!("the spec has no {reference}"))
}

/// An OpenAPI 3 operation's JSON request body schema.
fn request_schema<'a>(document: &'a Value, path: &str, method: &str) -> &'a Value {
    let escaped = path.replace('~', "~0").replace('/', "~1");
    pointer(
        document,
        &format!("#/paths/{escaped}/{method}/requestBody/content/application~1json/schema"),
    )
}

// ---------------------------------------------------------------------------
// Slack (swagger 2.0: arguments are operation parameters, not a schema).

/// Which parameters of a Slack operation a request gave, and which it gave
/// that the operation does not list.
struct SlackCheck {
    errors: Vec<String>,
    unlisted: BTreeSet<String>,
}

fn slack_parameters<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Vec<Value> {
    spec["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("Slack's swagger has no parameters for {method} {path}"))
}

/// The token travels as `Authorization: Bearer`, never in the arguments.
/// Slack's swagger describes it as a `token` parameter (a header of that
/// name for the JSON-capable write methods, an optional query parameter
/// for reads) under an OAuth 2 security scheme. Slack's documentation
/// requires the bearer header for JSON bodies and prefers it everywhere;
/// the difference is listed, precisely, in `spec-deviations.toml`, and this
/// checks that the entry still says what the description says.
fn assert_token_outside_arguments(spec: &Value, path: &str, method: &str) {
    let operation = &spec["paths"][path][method];
    let token = slack_parameters(spec, path, method)
        .iter()
        .find(|p| p["name"] == "token")
        .unwrap_or_else(|| panic!("{path} describes no token"));
    let in_header = token["in"] == "header";
    let optional_query = token["in"] == "query" && token["required"] != json!(true);
    assert!(
        in_header || optional_query,
        "{path}: the spec wants the token as {token}, herald sends it as a bearer header"
    );
    let scheme = operation["security"][0]
        .as_object()
        .and_then(|s| s.keys().next())
        .unwrap_or_else(|| panic!("{path} names no security scheme"));
    assert_eq!(
        spec["securityDefinitions"][scheme]["type"], "oauth2",
        "{path}: a bearer token is an OAuth 2 access token"
    );
    let described = format!(
        "{} {} parameter `token`",
        if token["required"] == json!(true) {
            "a required"
        } else {
            "an optional"
        },
        token["in"].as_str().unwrap_or("?"),
    );
    let name = format!("{} {path}", method.to_uppercase());
    let listed = crate::mock_answers::load_deviations()
        .request
        .into_iter()
        .find(|d| d.api == "slack" && d.operation == name && d.parameter == "token")
        .unwrap_or_else(|| panic!("spec-deviations.toml lists no token deviation for {name}"));
    assert_eq!(
        listed.described, described,
        "spec-deviations.toml: what the description says of {name}'s token"
    );
    assert_eq!(
        listed.herald_sends, "Authorization: Bearer <token>",
        "{name}"
    );
}

/// Checks a JSON-encoded Slack method body against the operation's
/// `formData` parameters.
fn check_slack_body(spec: &Value, path: &str, body: &Value) -> SlackCheck {
    let parameters = slack_parameters(spec, path, "post");
    let arguments = body.as_object().expect("a Slack body is an object");
    let mut errors = Vec::new();
    for parameter in parameters {
        let name = parameter["name"].as_str().unwrap_or_default();
        if name == "token" {
            continue; // sent as Authorization: Bearer, see assert_token_outside_arguments
        }
        if parameter["required"] == json!(true) && !arguments.contains_key(name) {
            errors.push(format!("{path}: required argument `{name}` is missing"));
        }
    }
    let mut unlisted = BTreeSet::new();
    for (name, value) in arguments {
        let Some(parameter) = parameters
            .iter()
            .find(|p| p["name"] == name.as_str() && p["in"] == "formData")
        else {
            unlisted.insert(name.clone());
            continue;
        };
        let declared = parameter["type"].as_str().unwrap_or_default();
        // Slack's swagger types `blocks` and `attachments` as strings because
        // a form-encoded call carries them as JSON text. herald posts JSON
        // (`application/json`, which the operation `consumes`), where Slack
        // takes them as arrays, so an array is what the spec means here.
        let blocks_fit = |value: &Value| {
            value.as_array().is_some_and(|items| {
                items
                    .iter()
                    .all(|item| item["type"].as_str().is_some_and(|t| !t.is_empty()))
            })
        };
        let fits = match (name.as_str(), declared) {
            ("blocks", "string") => blocks_fit(value),
            // An attachment (a colour bar) is an object with blocks of its own.
            ("attachments", "string") => value.as_array().is_some_and(|items| {
                items
                    .iter()
                    .all(|item| item.is_object() && blocks_fit(&item["blocks"]))
            }),
            (_, "string") => value.is_string(),
            (_, "boolean") => value.is_boolean(),
            (_, "integer") => value.is_i64() || value.is_u64(),
            (_, "number") => value.is_number(),
            _ => false,
        };
        if !fits {
            errors.push(format!(
                "{path}: argument `{name}` should be {declared}, herald sends {value}"
            ));
        }
    }
    SlackCheck { errors, unlisted }
}

/// Checks query arguments (all text on the wire) against a GET operation's
/// `query` parameters.
fn check_slack_query(spec: &Value, path: &str, query: &[(&str, &str)]) -> SlackCheck {
    let parameters = slack_parameters(spec, path, "get");
    let mut errors = Vec::new();
    for parameter in parameters {
        let name = parameter["name"].as_str().unwrap_or_default();
        if name != "token"
            && parameter["required"] == json!(true)
            && !query.iter().any(|(n, _)| *n == name)
        {
            errors.push(format!("{path}: required argument `{name}` is missing"));
        }
    }
    let mut unlisted = BTreeSet::new();
    for (name, value) in query {
        let Some(parameter) = parameters
            .iter()
            .find(|p| p["name"] == *name && p["in"] == "query")
        else {
            unlisted.insert(name.to_string());
            continue;
        };
        let declared = parameter["type"].as_str().unwrap_or_default();
        let fits = match declared {
            "string" => true,
            "number" => value.parse::<f64>().is_ok_and(f64::is_finite),
            "integer" => value.parse::<i64>().is_ok(),
            "boolean" => matches!(*value, "true" | "false"),
            _ => false,
        };
        if !fits {
            errors.push(format!(
                "{path}: argument `{name}` should be {declared}, herald sends {value:?}"
            ));
        }
    }
    SlackCheck { errors, unlisted }
}

/// `metadata` (message metadata) is newer than this swagger; herald needs it
/// to find a message again after an ambiguous outcome.
const SLACK_POST_UNLISTED: &[&str] = &["metadata"];
/// `include_all_metadata` is newer than this swagger too; without it the
/// read-back would not see the metadata.
const SLACK_READ_BACK_UNLISTED: &[&str] = &["include_all_metadata"];

fn assert_unlisted(path: &str, check: &SlackCheck, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    if !check.unlisted.is_empty() {
        println!(
            "note: {path} arguments herald sends that Slack's swagger does not list: {:?}",
            check.unlisted
        );
    }
    assert_eq!(
        check.unlisted, expected,
        "{path}: the arguments the swagger does not list changed; check them against \
         Slack's current documentation, then update the expected set"
    );
}

#[test]
fn slack_post_message_and_update_match_the_swagger() {
    let spec = load_spec("slack-web-api.swagger2.json");
    for path in ["/chat.postMessage", "/chat.update"] {
        assert_token_outside_arguments(&spec, path, "post");
        let consumes = &spec["paths"][path]["post"]["consumes"];
        assert!(
            consumes
                .as_array()
                .is_some_and(|c| c.contains(&json!("application/json"))),
            "{path} must accept JSON, which herald sends"
        );
    }
    for case in cases() {
        let d = &case.delivery;
        let thread_ts = d.thread_ref.as_ref().map(|_| SLACK_FIRST_TS);
        let body = render_post_message(&rendering(&case), d, SLACK_CHANNEL, thread_ts).unwrap();
        let check = check_slack_body(&spec, "/chat.postMessage", &body);
        assert!(
            check.errors.is_empty(),
            "{}: {:#?}",
            case.name,
            check.errors
        );
        assert_unlisted("/chat.postMessage", &check, SLACK_POST_UNLISTED);
        assert_eq!(
            body.get("thread_ts").is_some(),
            thread_ts.is_some(),
            "{}",
            case.name
        );

        if d.message.resolved() {
            let body = resolve_update_body(d, SLACK_CHANNEL, SLACK_FIRST_TS);
            let check = check_slack_body(&spec, "/chat.update", &body);
            assert!(
                check.errors.is_empty(),
                "{}: {:#?}",
                case.name,
                check.errors
            );
            assert_unlisted("/chat.update", &check, &[]);
        }
    }

    // Every check can fail.
    let single = &cases()[0].delivery;
    let mut no_channel = post_message_body(single, SLACK_CHANNEL, None);
    no_channel.as_object_mut().unwrap().remove("channel");
    let check = check_slack_body(&spec, "/chat.postMessage", &no_channel);
    assert!(check
        .errors
        .iter()
        .any(|e| e.contains("`channel` is missing")));

    let mut no_ts = resolve_update_body(single, SLACK_CHANNEL, SLACK_FIRST_TS);
    no_ts.as_object_mut().unwrap().remove("ts");
    let check = check_slack_body(&spec, "/chat.update", &no_ts);
    assert!(check.errors.iter().any(|e| e.contains("`ts` is missing")));

    let mut wrong_types = post_message_body(single, SLACK_CHANNEL, None);
    wrong_types["unfurl_links"] = json!("false");
    wrong_types["blocks"] = json!("[]");
    wrong_types["sparkle"] = json!(true);
    let check = check_slack_body(&spec, "/chat.postMessage", &wrong_types);
    assert!(check.errors.iter().any(|e| e.contains("`unfurl_links`")));
    assert!(check.errors.iter().any(|e| e.contains("`blocks`")));
    assert!(check.unlisted.contains("sparkle"));
}

#[test]
fn slack_read_back_queries_match_the_swagger() {
    let spec = load_spec("slack-web-api.swagger2.json");
    // The query `SlackConnector::verify` (src/connector/slack.rs) sends; keep
    // the two in step.
    let history: Vec<(&str, &str)> = vec![
        ("channel", SLACK_CHANNEL),
        ("oldest", "1763999940.000000"),
        ("inclusive", "true"),
        ("limit", "200"),
        ("include_all_metadata", "true"),
        ("cursor", "dXNlcjpVMEc5V0ZYTlo="),
    ];
    let mut replies = history.clone();
    replies.push(("ts", SLACK_FIRST_TS));
    for (path, query) in [
        ("/conversations.history", &history),
        ("/conversations.replies", &replies),
    ] {
        assert_token_outside_arguments(&spec, path, "get");
        let check = check_slack_query(&spec, path, query);
        assert!(check.errors.is_empty(), "{path}: {:#?}", check.errors);
        assert_unlisted(path, &check, SLACK_READ_BACK_UNLISTED);
    }

    let broken = [
        ("channel", SLACK_CHANNEL),
        ("limit", "lots"),
        ("ts", "yesterday"),
    ];
    let check = check_slack_query(&spec, "/conversations.replies", &broken);
    assert!(check.errors.iter().any(|e| e.contains("`limit`")));
    assert!(check.errors.iter().any(|e| e.contains("`ts`")));
}

// ---------------------------------------------------------------------------
// Teams: an Adaptive Card 1.5 in the message envelope.

fn adaptive_card_schema(schema: &Value) -> Value {
    // The document's root schema is the card: anyOf [allOf [$ref AdaptiveCard]].
    json!({"anyOf": schema["anyOf"].clone()})
}

#[test]
fn teams_cards_are_valid_adaptive_cards_1_5() {
    let schema = load_spec("adaptive-card-1.5.schema.json");
    let card_schema = adaptive_card_schema(&schema);
    for case in cases() {
        let message = render_card_message(&rendering(&case), &case.delivery).unwrap();
        assert_eq!(message["type"], "message", "{}", case.name);
        let attachments = message["attachments"].as_array().expect("attachments");
        assert_eq!(attachments.len(), 1, "{}", case.name);
        assert_eq!(
            attachments[0]["contentType"], "application/vnd.microsoft.card.adaptive",
            "{}",
            case.name
        );
        let card = &attachments[0]["content"];
        assert_eq!(card["version"], "1.5", "{}", case.name);
        assert_valid(
            &schema,
            &card_schema,
            card,
            &format!("Teams card ({})", case.name),
        );
    }
}

#[test]
fn adaptive_card_elements_are_checked_against_their_own_definition() {
    let schema = load_spec("adaptive-card-1.5.schema.json");
    let card_schema = adaptive_card_schema(&schema);
    let card = |element: Value| {
        json!({"type": "AdaptiveCard", "version": "1.5", "body": [
            {"type": "TextBlock", "text": "fine"},
            element
        ]})
    };
    let valid = card(json!({"type": "TextBlock", "text": "x", "wrap": true, "color": "Attention"}));
    assert_valid(&schema, &card_schema, &valid, "a valid card");

    // Element types dispatch by `type` (anyOf over the element definitions,
    // each with additionalProperties false): a wrong-typed property of a
    // TextBlock matches no definition, and the error names the element.
    for (element, expected) in [
        (
            json!({"type": "TextBlock", "text": "x", "wrap": "yes"}),
            "/body/1/wrap",
        ),
        (json!({"type": "TextBlock", "text": 5}), "/body/1/text"),
        (
            json!({"type": "TextBlock"}),
            "/body/1: required property `text`",
        ),
        (
            json!({"type": "TextBlock", "text": "x", "colour": "good"}),
            "/body/1/colour",
        ),
        (
            json!({"type": "TextBlock", "text": "x", "color": "purple"}),
            "/body/1/color",
        ),
        (json!({"type": "TextBlok", "text": "x"}), "/body/1"),
        (
            json!({"type": "FactSet", "facts": [{"title": "a"}]}),
            "/body/1/facts/0",
        ),
    ] {
        assert_rejected(&schema, &card_schema, &card(element), expected);
    }

    // And the broken version of a real card from the connector.
    let mut broken = teams_card_message(&cases()[0].delivery)["attachments"][0]["content"].clone();
    // (A number would pass: the schema's enum-like properties accept any
    // value for which its case-insensitive `pattern` branch does not apply.)
    broken["body"][0]["size"] = json!("huge");
    assert_rejected(&schema, &card_schema, &broken, "/body/0/size");
    let mut no_type = teams_card_message(&cases()[0].delivery)["attachments"][0]["content"].clone();
    no_type["type"] = json!("Card");
    assert_rejected(&schema, &card_schema, &no_type, "/type");
}

// ---------------------------------------------------------------------------
// Jira Cloud platform REST v3.

/// Checks an Atlassian Document Format document the way Jira reads it; the
/// OpenAPI document types `description` and comment `body` loosely.
fn adf_errors(document: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if document["type"] != "doc" {
        errors.push("ADF: type must be \"doc\"".to_owned());
    }
    if document["version"] != json!(1) {
        errors.push("ADF: version must be 1".to_owned());
    }
    let Some(content) = document["content"].as_array() else {
        errors.push("ADF: content must be an array".to_owned());
        return errors;
    };
    for (i, node) in content.iter().enumerate() {
        let at = format!("/content/{i}");
        match node["type"].as_str() {
            Some("paragraph") => paragraph_errors(node, &at, &mut errors),
            // A table (the message's fields): rows of a header cell and a
            // cell, each holding paragraphs.
            Some("table") => {
                let Some(rows) = node["content"].as_array().filter(|r| !r.is_empty()) else {
                    errors.push(format!("ADF: {at}/content must hold rows"));
                    continue;
                };
                for (r, row) in rows.iter().enumerate() {
                    let at = format!("{at}/content/{r}");
                    if row["type"] != "tableRow" {
                        errors.push(format!("ADF: {at} is not a tableRow"));
                    }
                    for (c, cell) in row["content"].as_array().into_iter().flatten().enumerate() {
                        let at = format!("{at}/content/{c}");
                        if !matches!(cell["type"].as_str(), Some("tableHeader" | "tableCell")) {
                            errors.push(format!("ADF: {at} is not a table cell"));
                        }
                        for (p, paragraph) in
                            cell["content"].as_array().into_iter().flatten().enumerate()
                        {
                            paragraph_errors(paragraph, &format!("{at}/content/{p}"), &mut errors);
                        }
                    }
                }
            }
            _ => errors.push(format!("ADF: {at} is neither a paragraph nor a table")),
        }
    }
    errors
}

/// A paragraph of non-empty text nodes, whose marks (if any) are links to
/// http(s) URLs.
fn paragraph_errors(paragraph: &Value, at: &str, errors: &mut Vec<String>) {
    if paragraph["type"] != "paragraph" {
        errors.push(format!("ADF: {at} is not a paragraph"));
    }
    let Some(nodes) = paragraph["content"].as_array() else {
        errors.push(format!("ADF: {at}/content must be an array"));
        return;
    };
    for (j, node) in nodes.iter().enumerate() {
        if node["type"] != "text" {
            errors.push(format!("ADF: {at}/content/{j} is not a text node"));
        }
        // Jira refuses empty text nodes.
        if node["text"].as_str().is_none_or(str::is_empty) {
            errors.push(format!("ADF: {at}/content/{j}/text must be non-empty text"));
        }
        for mark in node["marks"].as_array().into_iter().flatten() {
            let href = mark["attrs"]["href"].as_str().unwrap_or_default();
            if mark["type"] != "link"
                || !(href.starts_with("https://") || href.starts_with("http://"))
            {
                errors.push(format!(
                    "ADF: {at}/content/{j} has a mark that is not an http(s) link"
                ));
            }
        }
    }
}

#[test]
fn jira_requests_match_the_openapi_document() {
    let spec = load_spec("jira-platform-v3.openapi.json");
    let create = request_schema(&spec, "/rest/api/3/issue", "post");
    let comment = request_schema(&spec, "/rest/api/3/issue/{issueIdOrKey}/comment", "post");
    let transition = request_schema(
        &spec,
        "/rest/api/3/issue/{issueIdOrKey}/transitions",
        "post",
    );
    assert_eq!(create["$ref"], "#/components/schemas/IssueUpdateDetails");
    assert_eq!(comment["$ref"], "#/components/schemas/Comment");

    for case in cases() {
        let d = &case.delivery;
        // The connector creates an issue for a thread's first message (and a
        // single one) and comments for the rest; check both shapes anyway.
        let body = render_create_body(&rendering(&case), d, JIRA_PROJECT, JIRA_ISSUE_TYPE).unwrap();
        assert_valid(
            &spec,
            create,
            &body,
            &format!("Jira create ({})", case.name),
        );
        let fields = &body["fields"];
        assert_eq!(fields["project"]["key"], JIRA_PROJECT);
        assert_eq!(fields["issuetype"]["name"], JIRA_ISSUE_TYPE);
        let summary = fields["summary"].as_str().expect("a summary");
        // Jira's summary field takes one line of at most 255 characters.
        assert!(
            !summary.trim().is_empty() && summary.chars().count() <= 255,
            "{}",
            case.name
        );
        assert!(!summary.contains('\n'), "{}", case.name);
        for label in fields["labels"].as_array().expect("labels") {
            // Jira labels cannot contain spaces.
            let label = label.as_str().expect("a label is text");
            assert!(
                !label.is_empty() && !label.contains(char::is_whitespace),
                "{label:?}"
            );
        }
        let adf = adf_errors(&fields["description"]);
        assert!(adf.is_empty(), "{}: {adf:#?}", case.name);

        let body = render_comment_body(&rendering(&case), d).unwrap();
        assert_valid(
            &spec,
            comment,
            &body,
            &format!("Jira comment ({})", case.name),
        );
        let adf = adf_errors(&body["body"]);
        assert!(adf.is_empty(), "{}: {adf:#?}", case.name);
    }
    // The body `JiraConnector::transition_inner` (src/connector/jira.rs) posts.
    let transition_body = json!({"transition": {"id": "31"}});
    assert_valid(&spec, transition, &transition_body, "Jira transition");

    // Every check can fail.
    let d = &cases()[2].delivery;
    let mut broken = jira_create_body(d, JIRA_PROJECT, JIRA_ISSUE_TYPE);
    broken["fields"] = json!(["summary"]);
    assert_rejected(&spec, create, &broken, "/fields");
    let mut broken = jira_comment_body(d);
    broken["visibility"] = json!({"type": "team", "value": "ops"});
    assert_rejected(&spec, comment, &broken, "/visibility/type");
    assert_rejected(
        &spec,
        transition,
        &json!({"transition": {"id": 31}}),
        "/transition/id",
    );
    let empty_text = json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": ""}]}
    ]});
    assert!(!adf_errors(&empty_text).is_empty());
    assert!(!adf_errors(&json!({"type": "doc", "content": []})).is_empty());
}

// ---------------------------------------------------------------------------
// PagerDuty Events API v2.

/// The rules PagerDuty states in prose rather than in the schema.
fn pagerduty_rule_errors(event: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    // The integration key is a 32-character GUID without dashes.
    if event["routing_key"]
        .as_str()
        .is_none_or(|k| k.chars().count() != 32)
    {
        errors.push("routing_key must be 32 characters".to_owned());
    }
    let action = event["event_action"].as_str().unwrap_or_default();
    // "Required unless the event_type is trigger"; PagerDuty documents
    // at most 255 characters.
    match event["dedup_key"].as_str() {
        Some(key) if key.chars().count() > 255 => {
            errors.push("dedup_key is longer than 255 characters".to_owned())
        }
        Some("") => errors.push("dedup_key is empty".to_owned()),
        None if action != "trigger" => errors.push(format!("dedup_key is required for {action}")),
        _ => {}
    }
    if action == "trigger" {
        // A trigger needs its payload; PagerDuty cuts a summary at 1024.
        match event["payload"]["summary"].as_str() {
            None => errors.push("a trigger needs payload.summary".to_owned()),
            Some(summary) if summary.chars().count() > 1024 => {
                errors.push("payload.summary is longer than 1024 characters".to_owned())
            }
            Some(_) => {}
        }
    }
    errors
}

#[test]
fn pagerduty_events_match_the_openapi_document() {
    let spec = load_spec("pagerduty-events-v2.openapi.json");
    let enqueue = request_schema(&spec, "/enqueue", "post");
    let mut actions = BTreeSet::new();
    for case in cases() {
        let event = render_event(&rendering(&case), &case.delivery, PAGERDUTY_ROUTING_KEY).unwrap();
        assert_valid(
            &spec,
            enqueue,
            &event,
            &format!("PagerDuty event ({})", case.name),
        );
        let errors = pagerduty_rule_errors(&event);
        assert!(errors.is_empty(), "{}: {errors:#?}", case.name);
        actions.insert(event["event_action"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        actions,
        BTreeSet::from(["resolve".to_owned(), "trigger".to_owned()])
    );

    // Every check can fail.
    let trigger = pagerduty_event(&cases()[0].delivery, PAGERDUTY_ROUTING_KEY);
    let mut broken = trigger.clone();
    broken["payload"].as_object_mut().unwrap().remove("source");
    assert_rejected(&spec, enqueue, &broken, "required property `source`");
    let mut broken = trigger.clone();
    broken["payload"]["severity"] = json!("P1");
    assert_rejected(&spec, enqueue, &broken, "/payload/severity");
    let mut broken = trigger.clone();
    broken.as_object_mut().unwrap().remove("routing_key");
    assert_rejected(&spec, enqueue, &broken, "required property `routing_key`");
    let mut broken = trigger.clone();
    broken.as_object_mut().unwrap().remove("payload");
    assert!(pagerduty_rule_errors(&broken)
        .iter()
        .any(|e| e.contains("payload")));
    broken = trigger.clone();
    broken["routing_key"] = json!("short");
    assert!(pagerduty_rule_errors(&broken)
        .iter()
        .any(|e| e.contains("routing_key")));
    broken = trigger.clone();
    broken["payload"]["summary"] = json!("s".repeat(1025));
    assert!(pagerduty_rule_errors(&broken)
        .iter()
        .any(|e| e.contains("summary")));
    let resolve = pagerduty_event(&cases()[4].delivery, PAGERDUTY_ROUTING_KEY);
    let mut broken = resolve.clone();
    broken.as_object_mut().unwrap().remove("dedup_key");
    assert!(pagerduty_rule_errors(&broken)
        .iter()
        .any(|e| e.contains("dedup_key")));
    broken = resolve;
    broken["dedup_key"] = json!("k".repeat(256));
    assert!(pagerduty_rule_errors(&broken)
        .iter()
        .any(|e| e.contains("255")));
}

// ---------------------------------------------------------------------------
// Discord execute webhook.

#[test]
fn discord_execute_bodies_match_the_openapi_document() {
    let spec = load_spec("discord.openapi.json");
    let operation = request_schema(&spec, "/webhooks/{webhook_id}/{webhook_token}", "post");
    let reference = "#/components/schemas/IncomingWebhookRequestPartial";
    assert!(
        operation["anyOf"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["$ref"] == reference)),
        "execute webhook no longer takes {reference}"
    );
    let schema = pointer(&spec, reference);
    let listed: BTreeSet<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    for case in cases() {
        let d = &case.delivery;
        let rendering = rendering(&case);
        let mut bodies = vec![("", render_execute_body(&rendering, d, false).unwrap())];
        if d.message.thread().is_some() && d.thread_ref.is_none() {
            bodies.push((
                " forum opener",
                render_execute_body(&rendering, d, true).unwrap(),
            ));
        }
        for (variant, body) in bodies {
            let what = format!("Discord execute ({}{variant})", case.name);
            assert_valid(&spec, schema, &body, &what);
            // The schema does not forbid other keys; Discord ignores them,
            // so one would be a silent loss.
            let unlisted: Vec<&String> = body
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !listed.contains(k.as_str()))
                .collect();
            assert!(
                unlisted.is_empty(),
                "{what}: keys Discord does not know: {unlisted:?}"
            );
            assert_eq!(
                body.get("thread_name").is_some(),
                !variant.is_empty(),
                "{what}"
            );
            // Discord's documented limit across an embed's texts (not in
            // the schema).
            for embed in body["embeds"].as_array().unwrap() {
                let total: usize = [
                    &embed["title"],
                    &embed["description"],
                    &embed["footer"]["text"],
                ]
                .iter()
                .filter_map(|v| v.as_str())
                .chain(
                    embed["fields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|f| {
                            [f["name"].as_str(), f["value"].as_str()]
                                .into_iter()
                                .flatten()
                        }),
                )
                .map(|t| t.chars().count())
                .sum();
                assert!(
                    total <= 6000,
                    "{what}: embed texts total {total} characters"
                );
            }
        }
    }

    // Every check can fail, down to the nested embed schemas.
    let body = discord_execute_body(&cases()[2].delivery, true);
    let mut broken = body.clone();
    broken["embeds"][0]["title"] = json!("t".repeat(257));
    assert_rejected(&spec, schema, &broken, "/embeds/0/title");
    let mut broken = body.clone();
    broken["embeds"][0]["fields"] = json!(vec![json!({"name": "n", "value": "v"}); 26]);
    assert_rejected(&spec, schema, &broken, "/embeds/0/fields");
    let mut broken = body.clone();
    broken["embeds"][0]["fields"][0]
        .as_object_mut()
        .unwrap()
        .remove("value");
    assert_rejected(&spec, schema, &broken, "required property `value`");
    let mut broken = body.clone();
    broken["embeds"][0]["color"] = json!(-1);
    assert_rejected(&spec, schema, &broken, "/embeds/0/color");
    let mut broken = body.clone();
    broken["thread_name"] = json!("n".repeat(101));
    assert_rejected(&spec, schema, &broken, "/thread_name");
    let mut broken = body;
    broken["allowed_mentions"]["parse"] = json!(["everyone", "robots"]);
    assert_rejected(&spec, schema, &broken, "/allowed_mentions");
}

// ---------------------------------------------------------------------------
// Discord Create Message (the bot mode).

#[test]
fn discord_create_message_bodies_match_the_openapi_document() {
    let spec = load_spec("discord.openapi.json");
    let operation = request_schema(&spec, "/channels/{channel_id}/messages", "post");
    let reference = "#/components/schemas/MessageCreateRequest";
    assert_eq!(
        operation["$ref"], reference,
        "Create Message changed its body"
    );
    let schema = pointer(&spec, reference);
    let listed: BTreeSet<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    for case in cases() {
        let mut delivery = case.delivery.clone();
        // The bot mode's thread reference is the first message's id.
        if delivery.thread_ref.is_some() {
            delivery.thread_ref = Some("1187041234567890123".to_owned());
        }
        let body = render_create_message_body(&rendering(&case), &delivery).unwrap();
        let what = format!("Discord create message ({})", case.name);
        assert_valid(&spec, schema, &body, &what);
        let unlisted: Vec<&String> = body
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !listed.contains(k.as_str()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "{what}: keys Discord does not know: {unlisted:?}"
        );
        assert_eq!(body["enforce_nonce"], json!(true), "{what}");
        assert_eq!(
            body["nonce"],
            json!(discord_nonce(&delivery.idempotency_key)),
            "{what}"
        );
        assert_eq!(
            body.get("message_reference").is_some(),
            delivery.thread_ref.is_some(),
            "{what}: a thread's later messages reply to its first"
        );
    }

    // The checks can fail: a nonce over 25 characters, a reference that is
    // not a snowflake, an enforce_nonce that is not a boolean.
    let mut delivery = cases()[2].delivery.clone();
    delivery.thread_ref = Some("1187041234567890123".to_owned());
    let body = discord_create_message_body(&delivery);
    let mut broken = body.clone();
    broken["nonce"] = json!("n".repeat(26));
    assert_rejected(&spec, schema, &broken, "/nonce");
    let mut broken = body.clone();
    broken["message_reference"]["message_id"] = json!("herald-thread-INC-42");
    assert_rejected(&spec, schema, &broken, "/message_reference");
    let mut broken = body;
    broken["enforce_nonce"] = json!("yes");
    assert_rejected(&spec, schema, &broken, "/enforce_nonce");
}

/// The JSON schema of an operation's answer with `status` (following a
/// shared response's `$ref`).
fn response_schema<'a>(document: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    let escaped = path.replace('~', "~0").replace('/', "~1");
    let mut response = pointer(
        document,
        &format!("#/paths/{escaped}/{method}/responses/{status}"),
    );
    if let Some(reference) = response["$ref"].as_str() {
        response = pointer(document, reference);
    }
    &response["content"]["application/json"]["schema"]
}

/// The mock's bot route answers as the description says: the created
/// message (a reply, a nonce replay), the list, one message, an edit, its
/// errors and its 429.
#[tokio::test]
async fn the_mock_discord_bot_answers_match_the_openapi_document() {
    let spec = load_spec("discord.openapi.json");
    let messages = "/channels/{channel_id}/messages";
    let message = "/channels/{channel_id}/messages/{message_id}";
    let mock = crate::support::start_mock(&[]).await;
    let http = herald::connector::http_client_builder().build().unwrap();
    let base = format!("http://{}/discord/api/v10/channels/555/messages", mock.addr);
    let call = |method: reqwest::Method, url: String, body: Option<Value>| {
        let mut request = http.request(method, url).header("authorization", "Bot tok");
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap())
        }
    };
    let delivery = &cases()[2].delivery;
    let mut create = discord_create_message_body(delivery);
    create.as_object_mut().unwrap().remove("message_reference");
    let (status, first) = call(reqwest::Method::POST, base.clone(), Some(create.clone())).await;
    assert_eq!(status, 200, "{first}");
    let created = response_schema(&spec, messages, "post", "200");
    assert_valid(&spec, created, &first, "create message answer");
    let (_, replay) = call(reqwest::Method::POST, base.clone(), Some(create.clone())).await;
    assert_eq!(
        replay["id"], first["id"],
        "the nonce folds the second create"
    );
    assert_valid(
        &spec,
        created,
        &replay,
        "create message answer (nonce replay)",
    );
    let mut reply = create.clone();
    reply["nonce"] = json!("another");
    reply["message_reference"] = json!({"message_id": first["id"], "fail_if_not_exists": false});
    let (_, reply) = call(reqwest::Method::POST, base.clone(), Some(reply)).await;
    assert_valid(&spec, created, &reply, "create message answer (reply)");

    let (status, list) = call(reqwest::Method::GET, format!("{base}?limit=100"), None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(2)));
    let listed = response_schema(&spec, messages, "get", "200");
    assert_valid(&spec, listed, &list, "list messages answer");
    let one_url = format!("{base}/{}", first["id"].as_str().unwrap());
    let (_, one) = call(reqwest::Method::GET, one_url.clone(), None).await;
    assert_valid(
        &spec,
        response_schema(&spec, message, "get", "200"),
        &one,
        "get message answer",
    );
    let (_, edited) = call(
        reqwest::Method::PATCH,
        one_url,
        Some(json!({"content": "resolved"})),
    )
    .await;
    assert_valid(
        &spec,
        response_schema(&spec, message, "patch", "200"),
        &edited,
        "edit message answer",
    );

    let (status, missing) = call(reqwest::Method::GET, format!("{base}/42"), None).await;
    assert_eq!(status, 404);
    assert_valid(
        &spec,
        response_schema(&spec, message, "get", "4XX"),
        &missing,
        "unknown message",
    );
    let mut invalid = create.clone();
    invalid["nonce"] = json!("n".repeat(26));
    let (status, refused) = call(reqwest::Method::POST, base.clone(), Some(invalid)).await;
    assert_eq!(status, 400);
    assert_eq!(
        refused["errors"]["nonce"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    // The description's `Error` makes every `code` an integer, the field
    // errors' too; Discord's own documentation of "Invalid Form Body"
    // shows them as strings (`BASE_TYPE_REQUIRED`), as the mock answers.
    // The envelope is checked.
    let mut envelope = refused.clone();
    envelope.as_object_mut().unwrap().remove("errors");
    assert_valid(
        &spec,
        response_schema(&spec, messages, "post", "4XX"),
        &envelope,
        "invalid form body",
    );
    mock.set_faults(
        "/discord/api/v10/channels/555/messages",
        herald::mock::Faults {
            rate_limit_first: 1,
            retry_after_secs: 1,
            ..herald::mock::Faults::default()
        },
    );
    let (status, limited) = call(reqwest::Method::POST, base, Some(create)).await;
    assert_eq!(status, 429);
    assert_valid(
        &spec,
        response_schema(&spec, messages, "post", "429"),
        &limited,
        "rate limited",
    );
    mock.stop().await;
}

// ---------------------------------------------------------------------------
// The generic webhook: herald's own payload, documented by the JSON Schema
// in `schemas/`, which the README points receivers to.

const WEBHOOK_PAYLOAD_SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/schemas/webhook-payload.schema.json"
);

#[test]
fn every_webhook_payload_matches_its_published_schema() {
    let text = std::fs::read_to_string(WEBHOOK_PAYLOAD_SCHEMA)
        .unwrap_or_else(|e| panic!("cannot read {WEBHOOK_PAYLOAD_SCHEMA}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    for case in cases() {
        let body = render_webhook_body(&rendering(&case), &case.delivery).unwrap();
        let payload: Value = serde_json::from_slice(&body).unwrap();
        assert_valid(
            &schema,
            &schema,
            &payload,
            &format!("webhook payload ({})", case.name),
        );
        let message = &case.delivery.message;
        assert_eq!(
            payload["data"]["resolved"],
            json!(message.resolved()),
            "{}",
            case.name
        );
        assert_eq!(
            payload["data"]["thread"],
            json!(message.thread()),
            "{}",
            case.name
        );
        assert_eq!(
            payload["data"]["severity"],
            json!(message.severity().as_str())
        );
    }
    let resolve = cases().into_iter().find(|c| c.name == "resolve").unwrap();
    let payload: Value = serde_json::from_slice(&webhook_payload(&resolve.delivery)).unwrap();
    assert_eq!(
        (&payload["data"]["resolved"], &payload["data"]["thread"]),
        (&json!(true), &json!("INC-42")),
        "a receiver tells a resolve from an update"
    );
    // The schema holds receivers to something: a payload without
    // `resolved` (herald's shape before it was documented) is refused.
    let mut without = payload.clone();
    without["data"].as_object_mut().unwrap().remove("resolved");
    assert_rejected(&schema, &schema, &without, "resolved");
}

// ---------------------------------------------------------------------------
// A small JSON Schema validator: the draft-4/6 and OpenAPI 3.0 subset the
// specs above use. `$ref` only within the same document.

/// Keywords that only annotate; they never reject anything.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "id",
    "$id",
    "title",
    "description",
    "default",
    "example",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "externalDocs",
    "xml",
    // OpenAPI's hint for oneOf; the oneOf itself is checked.
    "discriminator",
    "contentEncoding",
    // Adaptive Card annotations.
    "version",
    "features",
];

/// How deep schemas may nest (through `$ref`s) before the validator stops:
/// a bound on a self-referencing schema.
const DEPTH_MAX: usize = 128;

pub(crate) struct Validator<'a> {
    document: &'a Value,
    unsupported: RefCell<BTreeSet<String>>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(document: &'a Value) -> Validator<'a> {
        Validator {
            document,
            unsupported: RefCell::new(BTreeSet::new()),
        }
    }

    /// Every way `instance` breaks `schema`, each with its JSON path.
    pub(crate) fn validate(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, instance, "", &mut errors, 0);
        errors
    }

    /// Keywords met in the schemas that this validator neither checks nor
    /// knows as annotations.
    pub(crate) fn unsupported_keywords(&self) -> BTreeSet<String> {
        self.unsupported.borrow().clone()
    }

    fn check(
        &self,
        schema: &Value,
        instance: &Value,
        path: &str,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        let at = if path.is_empty() { "/" } else { path };
        if depth > DEPTH_MAX {
            errors.push(format!("{at}: schemas nest deeper than {DEPTH_MAX}"));
            return;
        }
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("{at}: no value is allowed here"));
                return;
            }
            Value::Object(schema) => schema,
            _ => {
                errors.push(format!("{at}: the schema is not an object"));
                return;
            }
        };
        if instance.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        for (keyword, value) in schema {
            match keyword.as_str() {
                "$ref" => {
                    let target = value
                        .as_str()
                        .and_then(|r| r.strip_prefix('#'))
                        .and_then(|p| self.document.pointer(p));
                    match target {
                        Some(target) => self.check(target, instance, path, errors, depth + 1),
                        None => errors.push(format!("{at}: cannot resolve $ref {value}")),
                    }
                }
                "type" => {
                    let types: Vec<&str> = match value {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        _ => vec![],
                    };
                    if !types.iter().any(|t| has_type(instance, t)) {
                        errors.push(format!(
                            "{at}: expected type {}, found {}",
                            types.join(" or "),
                            type_name(instance)
                        ));
                    }
                }
                "enum" => {
                    let options = value.as_array().map(Vec::as_slice).unwrap_or_default();
                    if !options.iter().any(|o| json_equal(o, instance)) {
                        errors.push(format!("{at}: {instance} is not one of {value}"));
                    }
                }
                "const" => {
                    if !json_equal(value, instance) {
                        errors.push(format!("{at}: {instance} is not {value}"));
                    }
                }
                "required" => {
                    if let Some(object) = instance.as_object() {
                        for name in value.as_array().into_iter().flatten() {
                            let name = name.as_str().unwrap_or_default();
                            if !object.contains_key(name) {
                                errors.push(format!("{at}: required property `{name}` is missing"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let (Some(object), Some(properties)) =
                        (instance.as_object(), value.as_object())
                    {
                        for (name, property) in properties {
                            if let Some(v) = object.get(name) {
                                let p = format!("{path}/{}", escape_pointer(name));
                                self.check(property, v, &p, errors, depth + 1);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(object) = instance.as_object() {
                        let properties = schema.get("properties").and_then(Value::as_object);
                        for (name, v) in object {
                            if properties.is_some_and(|p| p.contains_key(name)) {
                                continue;
                            }
                            let p = format!("{path}/{}", escape_pointer(name));
                            if value == &Value::Bool(false) {
                                errors.push(format!("{p}: property `{name}` is not allowed"));
                            } else {
                                self.check(value, v, &p, errors, depth + 1);
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(items) = instance.as_array() {
                        for (i, item) in items.iter().enumerate() {
                            let item_schema = match value {
                                Value::Array(tuple) => match tuple.get(i) {
                                    Some(s) => s,
                                    None => continue,
                                },
                                single => single,
                            };
                            self.check(
                                item_schema,
                                item,
                                &format!("{path}/{i}"),
                                errors,
                                depth + 1,
                            );
                        }
                    }
                }
                "maxItems" | "minItems" => {
                    if let (Some(items), Some(limit)) = (instance.as_array(), value.as_u64()) {
                        let n = items.len() as u64;
                        if keyword == "maxItems" && n > limit {
                            errors.push(format!("{at}: {n} items, at most {limit} allowed"));
                        }
                        if keyword == "minItems" && n < limit {
                            errors.push(format!("{at}: {n} items, at least {limit} needed"));
                        }
                    }
                }
                "uniqueItems" => {
                    if let (Some(items), Value::Bool(true)) = (instance.as_array(), value) {
                        for (i, a) in items.iter().enumerate() {
                            if items[..i].iter().any(|b| json_equal(a, b)) {
                                errors.push(format!("{path}/{i}: repeats an earlier item"));
                            }
                        }
                    }
                }
                "maxProperties" | "minProperties" => {
                    if let (Some(object), Some(limit)) = (instance.as_object(), value.as_u64()) {
                        let n = object.len() as u64;
                        if (keyword == "maxProperties" && n > limit)
                            || (keyword == "minProperties" && n < limit)
                        {
                            errors.push(format!("{at}: {n} properties breaks {keyword} {limit}"));
                        }
                    }
                }
                "maxLength" | "minLength" => {
                    if let (Some(text), Some(limit)) = (instance.as_str(), value.as_u64()) {
                        // JSON Schema counts code points.
                        let n = text.chars().count() as u64;
                        if keyword == "maxLength" && n > limit {
                            errors.push(format!("{at}: {n} characters, at most {limit} allowed"));
                        }
                        if keyword == "minLength" && n < limit {
                            errors.push(format!("{at}: {n} characters, at least {limit} needed"));
                        }
                    }
                }
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                    let Some(n) = instance.as_f64() else { continue };
                    // Draft 4 / OpenAPI 3.0: exclusive* is a flag on
                    // minimum/maximum; draft 6: a bound of its own.
                    let flag = |name: &str| schema.get(name) == Some(&Value::Bool(true));
                    let Some(limit) = value.as_f64() else {
                        continue;
                    };
                    let broken = match keyword.as_str() {
                        "minimum" if flag("exclusiveMinimum") => n <= limit,
                        "minimum" => n < limit,
                        "maximum" if flag("exclusiveMaximum") => n >= limit,
                        "maximum" => n > limit,
                        "exclusiveMinimum" => n <= limit,
                        _ => n >= limit,
                    };
                    if broken {
                        errors.push(format!("{at}: {n} breaks {keyword} {limit}"));
                    }
                }
                "pattern" => {
                    if let (Some(text), Some(pattern)) = (instance.as_str(), value.as_str()) {
                        match Regex::parse(pattern) {
                            Ok(regex) if regex.is_match(text) => {}
                            Ok(_) => {
                                errors.push(format!("{at}: {text:?} does not match {pattern:?}"))
                            }
                            Err(why) => errors
                                .push(format!("{at}: cannot check the pattern {pattern:?}: {why}")),
                        }
                    }
                }
                "format" => {
                    if let (Some(text), Some("date-time")) = (instance.as_str(), value.as_str()) {
                        if !is_rfc3339(text) {
                            errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
                        }
                    }
                }
                "allOf" => {
                    for sub in value.as_array().into_iter().flatten() {
                        self.check(sub, instance, path, errors, depth + 1);
                    }
                }
                "anyOf" | "oneOf" => {
                    let branches = value.as_array().map(Vec::as_slice).unwrap_or_default();
                    let results: Vec<Vec<String>> = branches
                        .iter()
                        .map(|sub| {
                            let mut e = Vec::new();
                            self.check(sub, instance, path, &mut e, depth + 1);
                            e
                        })
                        .collect();
                    let matched = results.iter().filter(|e| e.is_empty()).count();
                    if matched == 0 {
                        // The closest branch explains it best: with element
                        // types dispatched by `type`, it is the element's
                        // own definition.
                        let type_path = format!("{path}/type:");
                        let closest = results
                            .iter()
                            .min_by_key(|e| (e.iter().any(|m| m.starts_with(&type_path)), e.len()))
                            .cloned()
                            .unwrap_or_default();
                        errors.push(format!(
                            "{at}: matches none of the {} alternatives ({keyword}); closest: [{}]",
                            branches.len(),
                            closest.join("; ")
                        ));
                    } else if keyword == "oneOf" && matched > 1 {
                        errors.push(format!("{at}: matches {matched} alternatives of a oneOf"));
                    }
                }
                "not" => {
                    let mut e = Vec::new();
                    self.check(value, instance, path, &mut e, depth + 1);
                    if e.is_empty() {
                        errors.push(format!("{at}: matches a schema it must not"));
                    }
                }
                "nullable" => {}
                other if other.starts_with("x-") || ANNOTATIONS.contains(&other) => {}
                other => {
                    self.unsupported.borrow_mut().insert(other.to_owned());
                }
            }
        }
    }
}

fn has_type(instance: &Value, name: &str) -> bool {
    match name {
        "null" => instance.is_null(),
        "boolean" => instance.is_boolean(),
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "string" => instance.is_string(),
        "number" => instance.is_number(),
        "integer" => {
            instance.is_i64()
                || instance.is_u64()
                || instance.as_f64().is_some_and(|n| n.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_name(instance: &Value) -> &'static str {
    match instance {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Equality as JSON Schema means it: 1 and 1.0 are the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// A backtracking regular expression for `pattern` (ECMA 262 subset):
/// literals, `.`, classes `[...]` with ranges and negation, `\d \w \s` (and
/// their negations), groups `(...)` / `(?:...)`, alternation, `^`/`$`,
/// quantifiers `* + ? {n} {n,} {n,m}`. Anything else is refused, so an
/// unknown construct reports an error rather than passing silently.
#[derive(Debug)]
enum Node {
    Char(char),
    Any,
    Class(Vec<(char, char)>, bool),
    Start,
    End,
    Group(Vec<Vec<Node>>),
    Repeat(Box<Node>, usize, Option<usize>),
}

struct Regex {
    alternatives: Vec<Vec<Node>>,
}

/// A bound on a pattern's steps, so a pathological one cannot hang a test.
const REGEX_STEPS_MAX: usize = 1_000_000;

impl Regex {
    fn parse(pattern: &str) -> Result<Regex, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        let alternatives = parse_alternatives(&chars, &mut i)?;
        if i != chars.len() {
            return Err(format!("unbalanced `)` at {i}"));
        }
        Ok(Regex { alternatives })
    }

    /// JSON Schema patterns are not anchored: a match anywhere counts.
    fn is_match(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let steps = std::cell::Cell::new(0usize);
        (0..=text.len()).any(|start| {
            self.alternatives
                .iter()
                .any(|seq| match_seq(seq, &text, start, &steps, &|_| true))
        })
    }
}

fn parse_alternatives(chars: &[char], i: &mut usize) -> Result<Vec<Vec<Node>>, String> {
    let mut alternatives = vec![Vec::new()];
    while *i < chars.len() {
        let c = chars[*i];
        let atom = match c {
            ')' => break,
            '|' => {
                *i += 1;
                alternatives.push(Vec::new());
                continue;
            }
            '(' => {
                *i += 1;
                if chars.get(*i) == Some(&'?') {
                    if chars.get(*i + 1) == Some(&':') {
                        *i += 2;
                    } else {
                        return Err("lookaround and named groups are not supported".into());
                    }
                }
                let inner = parse_alternatives(chars, i)?;
                if chars.get(*i) != Some(&')') {
                    return Err("unclosed `(`".into());
                }
                *i += 1;
                Node::Group(inner)
            }
            '[' => {
                *i += 1;
                parse_class(chars, i)?
            }
            '^' => {
                *i += 1;
                Node::Start
            }
            '$' => {
                *i += 1;
                Node::End
            }
            '.' => {
                *i += 1;
                Node::Any
            }
            '\\' => {
                *i += 1;
                let escaped = *chars.get(*i).ok_or("a trailing `\\`")?;
                *i += 1;
                escape_node(escaped)?
            }
            '*' | '+' | '?' | '{' => return Err(format!("a quantifier without an atom at {i}")),
            _ => {
                *i += 1;
                Node::Char(c)
            }
        };
        let node = parse_quantifier(chars, i, atom)?;
        alternatives.last_mut().expect("one alternative").push(node);
    }
    Ok(alternatives)
}

fn parse_quantifier(chars: &[char], i: &mut usize, atom: Node) -> Result<Node, String> {
    let (min, max) = match chars.get(*i) {
        Some('*') => (0, None),
        Some('+') => (1, None),
        Some('?') => (0, Some(1)),
        Some('{') => {
            let close = chars[*i..]
                .iter()
                .position(|&c| c == '}')
                .ok_or("unclosed `{`")?;
            let inside: String = chars[*i + 1..*i + close].iter().collect();
            let number = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad bound {{{inside}}}"))
            };
            let bounds = match inside.split_once(',') {
                None => (number(&inside)?, Some(number(&inside)?)),
                Some((low, "")) => (number(low)?, None),
                Some((low, high)) => (number(low)?, Some(number(high)?)),
            };
            *i += close;
            bounds
        }
        _ => return Ok(atom),
    };
    *i += 1;
    if chars.get(*i) == Some(&'?') {
        *i += 1; // lazy: the same set of matches for is_match
    }
    Ok(Node::Repeat(Box::new(atom), min, max))
}

fn escape_ranges(c: char) -> Option<(Vec<(char, char)>, bool)> {
    let digit = vec![('0', '9')];
    let word = vec![('0', '9'), ('A', 'Z'), ('a', 'z'), ('_', '_')];
    let space = vec![
        (' ', ' '),
        ('\t', '\r'),
        ('\u{a0}', '\u{a0}'),
        ('\u{feff}', '\u{feff}'),
    ];
    Some(match c {
        'd' => (digit, false),
        'D' => (digit, true),
        'w' => (word, false),
        'W' => (word, true),
        's' => (space, false),
        'S' => (space, true),
        _ => return None,
    })
}

fn escape_char(c: char) -> Result<char, String> {
    match c {
        'n' => Ok('\n'),
        't' => Ok('\t'),
        'r' => Ok('\r'),
        'f' => Ok('\u{c}'),
        'v' => Ok('\u{b}'),
        c if c.is_ascii_alphanumeric() => Err(format!("the escape \\{c} is not supported")),
        c => Ok(c),
    }
}

fn escape_node(c: char) -> Result<Node, String> {
    match escape_ranges(c) {
        Some((ranges, negated)) => Ok(Node::Class(ranges, negated)),
        None => escape_char(c).map(Node::Char),
    }
}

fn parse_class(chars: &[char], i: &mut usize) -> Result<Node, String> {
    let negated = chars.get(*i) == Some(&'^');
    if negated {
        *i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(*i).ok_or("unclosed `[`")?;
        *i += 1;
        if c == ']' && !first {
            break;
        }
        first = false;
        let low = if c == '\\' {
            let e = *chars.get(*i).ok_or("a trailing `\\`")?;
            *i += 1;
            if let Some((set, set_negated)) = escape_ranges(e) {
                if set_negated {
                    return Err(format!("\\{e} inside a class is not supported"));
                }
                ranges.extend(set);
                continue;
            }
            escape_char(e)?
        } else {
            c
        };
        if chars.get(*i) == Some(&'-') && chars.get(*i + 1).is_some_and(|&n| n != ']') {
            let mut high = chars[*i + 1];
            *i += 2;
            if high == '\\' {
                high = escape_char(*chars.get(*i).ok_or("a trailing `\\`")?)?;
                *i += 1;
            }
            ranges.push((low, high));
        } else {
            ranges.push((low, low));
        }
    }
    Ok(Node::Class(ranges, negated))
}

type Continuation<'k> = &'k dyn Fn(usize) -> bool;

fn match_seq(
    seq: &[Node],
    text: &[char],
    at: usize,
    steps: &std::cell::Cell<usize>,
    then: Continuation,
) -> bool {
    steps.set(steps.get() + 1);
    if steps.get() > REGEX_STEPS_MAX {
        return false;
    }
    match seq.split_first() {
        None => then(at),
        Some((node, rest)) => match_node(node, text, at, steps, &|next| {
            match_seq(rest, text, next, steps, then)
        }),
    }
}

fn match_node(
    node: &Node,
    text: &[char],
    at: usize,
    steps: &std::cell::Cell<usize>,
    then: Continuation,
) -> bool {
    match node {
        Node::Char(c) => text.get(at) == Some(c) && then(at + 1),
        Node::Any => text.get(at).is_some_and(|&c| c != '\n') && then(at + 1),
        Node::Class(ranges, negated) => {
            text.get(at).is_some_and(|&c| {
                ranges.iter().any(|&(low, high)| low <= c && c <= high) != *negated
            }) && then(at + 1)
        }
        Node::Start => at == 0 && then(at),
        Node::End => at == text.len() && then(at),
        Node::Group(alternatives) => alternatives
            .iter()
            .any(|seq| match_seq(seq, text, at, steps, then)),
        Node::Repeat(inner, min, max) => match_repeat(inner, *min, *max, 0, text, at, steps, then),
    }
}

#[allow(clippy::too_many_arguments)]
fn match_repeat(
    inner: &Node,
    min: usize,
    max: Option<usize>,
    count: usize,
    text: &[char],
    at: usize,
    steps: &std::cell::Cell<usize>,
    then: Continuation,
) -> bool {
    steps.set(steps.get() + 1);
    if steps.get() > REGEX_STEPS_MAX {
        return false;
    }
    // Greedy: one more repetition first (only if it consumes something),
    // then stop here.
    let more = max.is_none_or(|m| count < m)
        && match_node(inner, text, at, steps, &|next| {
            (next > at || count < min)
                && match_repeat(inner, min, max, count + 1, text, next, steps, then)
        });
    more || (count >= min && then(at))
}

#[test]
fn validator_rejects_what_it_should() {
    let document = json!({
        "definitions": {
            "Severity": {"enum": ["critical", "error"]},
            "Event": {
                "type": "object",
                "required": ["name", "severity"],
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 5},
                    "severity": {"$ref": "#/definitions/Severity"},
                    "count": {"type": "integer", "minimum": 0, "maximum": 10},
                    "ratio": {"type": "number"},
                    "note": {"type": "string", "nullable": true},
                    "tags": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                    "kind": {"const": "event"},
                    "code": {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"},
                    "extra": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    "exactly_one": {"oneOf": [{"type": "number"}, {"type": "integer"}]},
                    "both": {"allOf": [{"type": "string"}, {"maxLength": 2}]}
                }
            }
        }
    });
    let schema = json!({"$ref": "#/definitions/Event"});
    let validator = Validator::new(&document);
    let valid = json!({
        "name": "disk", "severity": "error", "count": 3, "ratio": 0.5, "note": null,
        "tags": ["a"], "kind": "event", "code": "120", "extra": {"x": true},
        "either": 7, "both": "ok"
    });
    assert_eq!(validator.validate(&schema, &valid), Vec::<String>::new());
    assert!(validator.unsupported_keywords().is_empty());
    assert!(validator
        .validate(
            &schema,
            &json!({"name": "a", "severity": "error", "tags": null})
        )
        .is_empty());

    let rejects = |instance: Value, expected: &str| {
        let errors = validator.validate(&schema, &instance);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{instance} should fail with {expected:?}: {errors:?}"
        );
    };
    rejects(
        json!({"severity": "error"}),
        "/: required property `name` is missing",
    );
    rejects(
        json!({"name": 5, "severity": "error"}),
        "/name: expected type string, found integer",
    );
    rejects(json!({"name": "a", "severity": "fatal"}), "/severity");
    rejects(
        json!({"name": "", "severity": "error"}),
        "/name: 0 characters",
    );
    rejects(
        json!({"name": "ééééé+", "severity": "error"}),
        "/name: 6 characters",
    );
    rejects(
        json!({"name": "a", "severity": "error", "count": 1.5}),
        "/count: expected type integer",
    );
    rejects(
        json!({"name": "a", "severity": "error", "count": 11}),
        "/count: 11 breaks maximum",
    );
    rejects(
        json!({"name": "a", "severity": "error", "count": -1}),
        "/count: -1 breaks minimum",
    );
    rejects(
        json!({"name": "a", "severity": "error", "ratio": "1"}),
        "/ratio: expected type number",
    );
    rejects(
        json!({"name": "a", "severity": "error", "tags": []}),
        "/tags: 0 items",
    );
    rejects(
        json!({"name": "a", "severity": "error", "tags": ["a", "b", "c"]}),
        "/tags: 3 items",
    );
    rejects(
        json!({"name": "a", "severity": "error", "tags": [1]}),
        "/tags/0",
    );
    rejects(
        json!({"name": "a", "severity": "error", "kind": "other"}),
        "/kind",
    );
    rejects(
        json!({"name": "a", "severity": "error", "code": "012"}),
        "/code",
    );
    rejects(
        json!({"name": "a", "severity": "error", "code": "12a"}),
        "/code",
    );
    rejects(
        json!({"name": "a", "severity": "error", "extra": {"x": 1}}),
        "/extra/x",
    );
    rejects(
        json!({"name": "a", "severity": "error", "surprise": 1}),
        "/surprise: property `surprise` is not allowed",
    );
    rejects(
        json!({"name": "a", "severity": "error", "either": true}),
        "/either: matches none",
    );
    rejects(
        json!({"name": "a", "severity": "error", "exactly_one": 2}),
        "/exactly_one: matches 2",
    );
    rejects(
        json!({"name": "a", "severity": "error", "both": "long"}),
        "/both: 4 characters",
    );
    rejects(
        json!({"name": "a", "severity": "error", "note": 3}),
        "/note",
    );
    rejects(json!([]), "expected type object");

    // A keyword it does not know is reported, not ignored.
    let strange = json!({"type": "string", "dependentSchemas": {}});
    let validator = Validator::new(&strange);
    assert!(validator.validate(&strange, &json!("x")).is_empty());
    assert!(validator
        .unsupported_keywords()
        .contains("dependentSchemas"));
}

#[test]
fn regex_subset_matches_like_ecma_262() {
    let cases = [
        ("^(0|[1-9][0-9]*)$", "0", true),
        ("^(0|[1-9][0-9]*)$", "1234", true),
        ("^(0|[1-9][0-9]*)$", "0123", false),
        ("^(0|[1-9][0-9]*)$", "", false),
        // Adaptive Card's case-insensitive enums; `^a|b$` is `(^a)|(b$)`.
        (
            "^([g|G][o|O][o|O][d|D])|([w|W][a|A][r|R][n|N])$",
            "Good",
            true,
        ),
        (
            "^([g|G][o|O][o|O][d|D])|([w|W][a|A][r|R][n|N])$",
            "WARN",
            true,
        ),
        (
            "^([g|G][o|O][o|O][d|D])|([w|W][a|A][r|R][n|N])$",
            "purple",
            false,
        ),
        ("^[a-z]{2,3}\\d?$", "abc1", true),
        ("^[a-z]{2,3}\\d?$", "abcd", false),
        ("^[^ ]+$", "no-spaces", true),
        ("^[^ ]+$", "one space", false),
        ("a.c", "xxabcxx", true),
        ("^(?:ab)+$", "ababab", true),
        ("^(?:ab)+$", "ababa", false),
        ("^(a*)*$", "aaaa", true),
        ("^\\w+@\\w+\\.com$", "me@ex.com", true),
    ];
    for (pattern, text, expected) in cases {
        let regex = Regex::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_eq!(regex.is_match(text), expected, "{pattern} on {text:?}");
    }
    assert!(Regex::parse("(?=x)").is_err());
    assert!(Regex::parse("\\p{L}").is_err());
    assert!(Regex::parse("(ab").is_err());
}

#[test]
fn date_times_are_rfc_3339() {
    assert!(is_rfc3339("2025-11-24T16:00:00.123Z"));
    assert!(is_rfc3339("2015-07-17T08:42:58+00:00"));
    assert!(!is_rfc3339("2015-07-17 08:42:58Z"));
    assert!(!is_rfc3339("2015-07-17T08:42:58.315+0000"));
    assert!(!is_rfc3339("yesterday"));
}

// ---------------------------------------------------------------------------
// Matrix: the client-server description (YAML, files that `$ref` each
// other by relative path), read into one JSON value per file with every
// relative reference inlined, so the validator above needs only local ones.

const MATRIX_DIR: &str = "matrix-client-server";
/// How deep relative `$ref`s may chain while inlining.
const MATRIX_REF_DEPTH_MAX: usize = 16;

/// `file` (under `tests/specs/matrix-client-server/`) as JSON, its relative
/// `$ref`s (`other.yaml` or `other.yaml#/pointer`) replaced by what they
/// name; the copy must not drift from the original beside the checkout.
pub(crate) fn load_matrix_spec(file: &str) -> Value {
    fn inline(value: &mut Value, dir: &std::path::Path, depth: usize) {
        assert!(
            depth < MATRIX_REF_DEPTH_MAX,
            "$refs nest too deep in {}",
            dir.display()
        );
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref").cloned() {
                    if !reference.starts_with('#') {
                        let (file, fragment) =
                            reference.split_once('#').unwrap_or((&reference, ""));
                        let path = dir.join(file);
                        let mut target = read_yaml(&path);
                        if !fragment.is_empty() {
                            target = target
                                .pointer(fragment)
                                .cloned()
                                .unwrap_or_else(|| panic!("{} has no {fragment}", path.display()));
                        }
                        inline(&mut target, path.parent().unwrap(), depth + 1);
                        map.remove("$ref");
                        // Keep the referring schema's other keywords beside it.
                        *value = if map.is_empty() {
                            target
                        } else {
                            json!({"allOf": [target, Value::Object(map.clone())]})
                        };
                        return;
                    }
                }
                for child in map.values_mut() {
                    inline(child, dir, depth);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|child| inline(child, dir, depth)),
            _ => {}
        }
    }
    fn read_yaml(path: &std::path::Path) -> Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|error| {
            panic!(
                "cannot read the API description {}: {error}; it belongs to the repository",
                path.display()
            )
        });
        let relative = path
            .strip_prefix(SPECS_DIR)
            .expect("under tests/specs")
            .to_path_buf();
        if let Ok(original) =
            std::fs::read_to_string(std::path::Path::new(ORIGINALS_DIR).join(&relative))
        {
            assert!(
                original == text,
                "{} differs from the original in {ORIGINALS_DIR}: copy the published description again",
                path.display()
            );
        }
        serde_norway::from_str(&text)
            .unwrap_or_else(|error| panic!("{} is not YAML: {error}", path.display()))
    }
    let path = std::path::Path::new(SPECS_DIR).join(MATRIX_DIR).join(file);
    let mut value = read_yaml(&path);
    inline(&mut value, path.parent().unwrap(), 0);
    value
}

/// The thread's first event, as the later messages of the cases name it.
const MATRIX_ROOT_EVENT: &str = "$YUwRidLecu:example.com";
const MATRIX_ROOM: &str = "!636q39766251:example.com";

/// The path parameters of `url` against the send operation's template,
/// after the servers' `basePath`, decoded.
fn matrix_path_parameters(url: &reqwest::Url) -> Vec<(String, String)> {
    let path = url
        .path()
        .strip_prefix("/_matrix/client/v3/")
        .unwrap_or_else(|| panic!("{url} is not under the basePath /_matrix/client/v3"));
    let decode = |segment: &str| {
        let bytes = segment.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
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
        String::from_utf8(out).unwrap()
    };
    let segments: Vec<String> = path.split('/').map(decode).collect();
    match segments.as_slice() {
        [rooms, room_id, send, event_type, txn_id] if rooms == "rooms" && send == "send" => vec![
            ("roomId".to_owned(), room_id.clone()),
            ("eventType".to_owned(), event_type.clone()),
            ("txnId".to_owned(), txn_id.clone()),
        ],
        _ => panic!("{url} is not /rooms/{{roomId}}/send/{{eventType}}/{{txnId}}"),
    }
}

/// Every request the Matrix connector makes, for every case: the send
/// path's parameters against their schemas, the body against the
/// operation's, the content against `m.text` (and `m.relates_to`,
/// `m.new_content`), within the event size limit.
#[test]
fn matrix_sends_match_the_client_server_description() {
    let send = load_matrix_spec("api/client-server/room_send.yaml");
    let operation = &send["paths"]["/rooms/{roomId}/send/{eventType}/{txnId}"]["put"];
    assert_eq!(
        send["servers"][0]["variables"]["basePath"]["default"],
        "/_matrix/client/v3"
    );
    assert_eq!(
        operation["security"][0]["accessTokenBearer"],
        json!([]),
        "the access token goes as a bearer token"
    );
    let body_schema = &operation["requestBody"]["content"]["application/json"]["schema"];
    let parameter = |name: &str| {
        operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name && p["in"] == "path")
            .unwrap_or_else(|| panic!("the send operation has no path parameter {name}"))["schema"]
            .clone()
    };
    let text = load_matrix_spec("event-schemas/schema/m.room.message$m.text.yaml");
    let content_schema = &text["properties"]["content"];
    let relates_to = load_matrix_spec("api/client-server/definitions/m.relates_to.yaml");
    let homeserver = reqwest::Url::parse("https://matrix.example.com").unwrap();

    let check_send = |delivery: &ClaimedDelivery, txn_id: &str, content: &Value, what: &str| {
        let url = matrix_send_url(&homeserver, MATRIX_ROOM, txn_id);
        for (name, value) in matrix_path_parameters(&url) {
            assert_valid(
                &send,
                &parameter(&name),
                &json!(value),
                &format!("{what}: {name}"),
            );
        }
        assert_eq!(
            matrix_path_parameters(&url)[1].1,
            "m.room.message",
            "{what}"
        );
        assert_valid(&send, body_schema, content, what);
        assert_valid(&text, content_schema, content, what);
        assert_eq!(
            content["format"], "org.matrix.custom.html",
            "{what}: the only format defined"
        );
        if let Some(relation) = content.get("m.relates_to") {
            assert_valid(
                &relates_to,
                &relates_to,
                relation,
                &format!("{what}: m.relates_to"),
            );
        }
        if let Some(new_content) = content.get("m.new_content") {
            assert_valid(
                &text,
                content_schema,
                new_content,
                &format!("{what}: m.new_content"),
            );
        }
        let bytes = serde_json::to_vec(content).unwrap().len();
        assert!(
            bytes <= herald::kinds::matrix::connector::CONTENT_BYTES_MAX,
            "{what}: {bytes} bytes of content is over an event's 65,536 with its envelope"
        );
        assert!(!delivery.idempotency_key.is_empty());
    };

    for case in cases() {
        let mut delivery = case.delivery.clone();
        if delivery.thread_ref.is_some() {
            delivery.thread_ref = Some(MATRIX_ROOT_EVENT.to_owned());
        }
        let root = delivery.thread_ref.as_deref();
        let what = format!("Matrix message ({})", case.name);
        let content = matrix_message_content(&delivery, root);
        check_send(
            &delivery,
            &matrix_txn_id(&delivery.idempotency_key),
            &content,
            &what,
        );
        // The threading module: later messages relate to the thread root
        // with rel_type m.thread (and the reply fallback points at it too).
        match root {
            Some(root) => {
                assert_eq!(content["m.relates_to"]["rel_type"], "m.thread", "{what}");
                assert_eq!(content["m.relates_to"]["event_id"], root, "{what}");
                assert_eq!(content["m.relates_to"]["is_falling_back"], true, "{what}");
                assert_eq!(
                    content["m.relates_to"]["m.in_reply_to"]["event_id"], root,
                    "{what}"
                );
            }
            None => assert!(content.get("m.relates_to").is_none(), "{what}"),
        }
        if delivery.message.resolved() {
            if let Some(root) = root {
                // The event replacements module: m.replace of the root,
                // with m.new_content, under its own txnId.
                let edit = matrix_resolve_edit_content(&delivery, root);
                let what = format!("Matrix resolve edit ({})", case.name);
                let edit_txn = matrix_edit_txn_id(&delivery.idempotency_key);
                assert_ne!(edit_txn, matrix_txn_id(&delivery.idempotency_key), "{what}");
                check_send(&delivery, &edit_txn, &edit, &what);
                assert_eq!(
                    edit["m.relates_to"],
                    json!({"rel_type": "m.replace", "event_id": root}),
                    "{what}"
                );
                assert!(
                    edit["m.new_content"].get("m.relates_to").is_none(),
                    "{what}"
                );
            }
        }
    }

    // The checks can fail: a content without a body, an msgtype that is not
    // m.text, a relation to something that is not an event id, a room id
    // that is an alias.
    let delivery = &cases()[0].delivery;
    let content = matrix_message_content(delivery, None);
    let mut broken = content.clone();
    broken.as_object_mut().unwrap().remove("body");
    assert_rejected(&text, content_schema, &broken, "body");
    let mut broken = content;
    broken["msgtype"] = json!("m.notice");
    assert_rejected(&text, content_schema, &broken, "/msgtype");
    assert_rejected(
        &relates_to,
        &relates_to,
        &json!({"rel_type": "m.thread", "event_id": "herald-thread-INC-42"}),
        "/event_id",
    );
    assert_rejected(
        &send,
        &parameter("roomId"),
        &json!("#ops:example.com"),
        "does not match",
    );
}

/// The mock's Matrix answers as the description says: the event id, the
/// same one for a retransmission, a standard error, a rate limit.
#[tokio::test]
async fn the_mock_matrix_answers_match_the_client_server_description() {
    let send = load_matrix_spec("api/client-server/room_send.yaml");
    let operation = &send["paths"]["/rooms/{roomId}/send/{eventType}/{txnId}"]["put"];
    let sent_schema = &operation["responses"]["200"]["content"]["application/json"]["schema"];
    let error = load_matrix_spec("api/client-server/definitions/errors/error.yaml");
    let rate_limited = load_matrix_spec("api/client-server/definitions/errors/rate_limited.yaml");
    let room = format!("{}!ops:herald.mock", herald::kinds::matrix::mock::ROOMS);
    let mock = crate::support::start_mock(&[(
        format!("{room}/send/*").as_str(),
        herald::mock::Faults {
            rate_limit_first: 1,
            ..herald::mock::Faults::default()
        },
    )])
    .await;
    let http = herald::connector::http_client_builder().build().unwrap();
    let put = |txn: &str, body: Value| {
        let request = http
            .put(format!(
                "http://{}{room}/send/m.room.message/{txn}",
                mock.addr
            ))
            .bearer_auth("tok")
            .json(&body);
        async move {
            let answer = request.send().await.unwrap();
            (
                answer.status().as_u16(),
                answer.json::<Value>().await.unwrap(),
            )
        }
    };
    let delivery = &cases()[0].delivery;
    let content = matrix_message_content(delivery, None);
    let (status, limited) = put("t1", content.clone()).await;
    assert_eq!(status, 429, "{limited}");
    assert_valid(
        &rate_limited,
        &rate_limited,
        &limited,
        "the mock's rate limit",
    );
    assert_eq!(limited["errcode"], "M_LIMIT_EXCEEDED");
    let (status, first) = put("t1", content.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_valid(&send, sent_schema, &first, "the mock's send answer");
    let (_, again) = put("t1", content).await;
    assert_eq!(again, first, "a retransmission answers the first event");
    let (status, refused) = put("t2", json!({"msgtype": "m.text"})).await;
    assert_eq!(status, 400, "{refused}");
    let refused_schema = &operation["responses"]["400"]["content"]["application/json"]["schema"];
    assert_valid(&send, refused_schema, &refused, "the mock's 400");
    assert_valid(&error, &error, &refused, "the mock's 400");
    mock.stop().await;
}
