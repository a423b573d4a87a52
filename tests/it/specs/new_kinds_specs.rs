//! The requests of the kinds of issue 21 against their published
//! descriptions: Twilio's Messages (OpenAPI 3), Google Chat's discovery
//! document, Telegram's structured Bot API reference and Zulip's OpenAPI
//! (YAML, read through a JSON copy of the operations herald uses).

use std::collections::BTreeSet;

use herald::kinds::sms::connector::{
    render_sms_text, twilio_create_form, twilio_list_query, TWILIO_BODY_CHARS_MAX,
};
use serde_json::{json, Map, Value};

use super::{assert_rejected, assert_valid, cases, load_spec, pointer, rendering};

/// The phone numbers the SMS checks use.
const TWILIO_FROM: &str = "+14155550199";
const TWILIO_TO: &str = "+447700900123";
const TWILIO_ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";

fn twilio_operation<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    let escaped = path.replace('~', "~0").replace('/', "~1");
    pointer(spec, &format!("#/paths/{escaped}/{method}"))
}

/// A form (name, value pairs) as the JSON object a schema describes.
fn form_object(pairs: &[(&str, String)]) -> Value {
    let mut object = Map::new();
    for (name, value) in pairs {
        assert!(
            object.insert((*name).to_owned(), json!(value)).is_none(),
            "{name} given twice"
        );
    }
    Value::Object(object)
}

/// E.164, as the description's `phone-number` format means for SMS.
fn is_e164(text: &str) -> bool {
    text.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn twilio_create_message_forms_match_the_openapi_document() {
    let spec = load_spec("twilio-api-v2010.openapi.json");
    let path = "/2010-04-01/Accounts/{AccountSid}/Messages.json";
    let create = twilio_operation(&spec, path, "post");
    assert_eq!(create["operationId"], "CreateMessage");
    assert_eq!(create["security"], json!([{"accountSid_authToken": []}]));
    assert_eq!(
        pointer(&spec, "#/components/securitySchemes/accountSid_authToken"),
        &json!({"scheme": "basic", "type": "http"}),
        "herald authenticates with basic auth (account SID, auth token)"
    );
    let account_sid = &create["parameters"][0];
    assert_eq!(account_sid["name"], "AccountSid");
    assert_valid(
        &spec,
        &account_sid["schema"],
        &json!(TWILIO_ACCOUNT_SID),
        "the account SID in the path",
    );
    assert_rejected(&spec, &account_sid["schema"], &json!("AC123"), "");
    let schema = &create["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
    let listed: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for case in cases() {
        for chars_max in [20, 160, TWILIO_BODY_CHARS_MAX] {
            let text = render_sms_text(&rendering(&case), &case.delivery, chars_max).unwrap();
            let what = format!("Twilio CreateMessage ({}, cut at {chars_max})", case.name);
            assert!(
                text.chars().count() <= chars_max,
                "{what}: the body is longer than the cut"
            );
            // "Can be up to 1,600 characters in length."
            assert!(text.chars().count() <= TWILIO_BODY_CHARS_MAX, "{what}");
            assert!(!text.trim().is_empty(), "{what}: an empty body");
            let form = form_object(&twilio_create_form(TWILIO_FROM, TWILIO_TO, &text));
            assert_valid(&spec, schema, &form, &what);
            for name in form.as_object().unwrap().keys() {
                assert!(
                    listed.contains(name.as_str()),
                    "{what}: {name} is not listed"
                );
            }
            assert!(is_e164(form["To"].as_str().unwrap()), "{what}");
        }
    }
    // The check can fail: no `To` (required), a `Body` that is not text.
    assert_rejected(
        &spec,
        schema,
        &json!({"From": TWILIO_FROM, "Body": "x"}),
        "To",
    );
    assert_rejected(&spec, schema, &json!({"To": TWILIO_TO, "Body": 5}), "/Body");
}

#[test]
fn twilio_read_back_queries_match_the_openapi_document() {
    let spec = load_spec("twilio-api-v2010.openapi.json");
    let path = "/2010-04-01/Accounts/{AccountSid}/Messages.json";
    let list = twilio_operation(&spec, path, "get");
    assert_eq!(list["operationId"], "ListMessage");
    let parameters = list["parameters"].as_array().unwrap();
    let query = twilio_list_query(TWILIO_TO, 1_764_000_000_123);
    for (name, value) in &query {
        let parameter = parameters
            .iter()
            .find(|p| p["name"] == *name && p["in"] == "query")
            .unwrap_or_else(|| panic!("ListMessage has no query parameter {name}"));
        let typed = match parameter["schema"]["type"].as_str() {
            Some("integer") => json!(value.parse::<i64>().expect("an integer")),
            _ => json!(value),
        };
        // `DateSent>` is typed date-time but described as a GMT day,
        // `YYYY-MM-DD`, which is what herald sends; the day is checked
        // against the description's words instead of the format.
        if name.starts_with("DateSent") {
            let description = parameter["description"].as_str().unwrap();
            assert!(description.contains("`YYYY-MM-DD`"), "{description}");
            let day = value.as_bytes();
            assert!(
                day.len() == 10
                    && day.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 {
                        *b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }),
                "{name}={value} is not YYYY-MM-DD"
            );
            assert_eq!(value, "2025-11-24");
            continue;
        }
        assert_valid(
            &spec,
            &parameter["schema"],
            &typed,
            &format!("ListMessage {name}"),
        );
    }
    // Its answer has what the read-back reads: messages with sid, body,
    // from, date_created; next_page_uri.
    let answer = &list["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(answer["properties"]["next_page_uri"].is_object());
    let message = pointer(&spec, "#/components/schemas/api.v2010.account.message");
    for field in ["sid", "body", "from", "to", "date_created"] {
        assert!(message["properties"][field].is_object(), "{field}");
    }
    assert_eq!(
        message["properties"]["date_created"]["format"],
        "date-time-rfc-2822"
    );
}

// ---------------------------------------------------------------------------
// Google Chat: `spaces.messages.create` of the discovery document, as an
// incoming webhook calls it.

/// Checks a JSON value against a discovery-document schema (`type`,
/// `properties`, `$ref` to another schema's id, `items`, `enum`); returns
/// every problem.
pub(crate) fn discovery_errors(
    document: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
) -> Vec<String> {
    if let Some(id) = schema["$ref"].as_str() {
        let target = &document["schemas"][id];
        assert!(
            target.is_object(),
            "the discovery document has no schema {id}"
        );
        return discovery_errors(document, target, value, at);
    }
    let mut errors = Vec::new();
    match (schema["type"].as_str(), value) {
        (Some("object"), Value::Object(object)) => {
            for (name, field) in object {
                let Some(property) = schema["properties"].get(name) else {
                    errors.push(format!("{at}/{name}: not a field of the schema"));
                    continue;
                };
                errors.extend(discovery_errors(
                    document,
                    property,
                    field,
                    &format!("{at}/{name}"),
                ));
            }
        }
        (Some("string"), Value::String(text)) => {
            if let Some(values) = schema["enum"].as_array() {
                if !values.iter().any(|v| v == text) {
                    errors.push(format!("{at}: {text:?} is not one of {values:?}"));
                }
            }
        }
        (Some("array"), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                errors.extend(discovery_errors(
                    document,
                    &schema["items"],
                    item,
                    &format!("{at}/{i}"),
                ));
            }
        }
        (Some("boolean"), Value::Bool(_)) => {}
        (Some("integer" | "number"), Value::Number(_)) => {}
        (expected, _) => errors.push(format!("{at}: expected {expected:?}, got {value}")),
    }
    errors
}

#[test]
fn google_chat_creates_match_the_discovery_document() {
    use herald::kinds::google_chat::connector::{
        google_chat_create_query, google_chat_message, GOOGLE_CHAT_TEXT_CHARS_MAX,
    };
    let spec = load_spec("google-chat-v1.discovery.json");
    let create = &spec["resources"]["spaces"]["resources"]["messages"]["methods"]["create"];
    assert_eq!(create["httpMethod"], "POST");
    assert_eq!(create["path"], "v1/{+parent}/messages");
    assert_eq!(create["request"]["$ref"], "Message");
    let parameters = &create["parameters"];
    for case in cases() {
        let what = format!("Google Chat create ({})", case.name);
        let body = google_chat_message(&case.delivery);
        let errors = discovery_errors(&spec, &create["request"], &body, "");
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{body}");
        let text = body["text"].as_str().unwrap();
        assert!(!text.trim().is_empty(), "{what}: empty text");
        assert!(text.chars().count() <= GOOGLE_CHAT_TEXT_CHARS_MAX, "{what}");
        // "threadKey ... Supports up to 4000 characters."
        if let Some(key) = body["thread"]["threadKey"].as_str() {
            assert!(key.chars().count() <= 4_000, "{what}");
        }
        assert_eq!(
            body["thread"]["threadKey"].is_string(),
            case.delivery.message.thread().is_some(),
            "{what}: a thread's messages name its key"
        );
        let query = google_chat_create_query(&case.delivery);
        for (name, value) in &query {
            let parameter = &parameters[*name];
            assert_eq!(
                parameter["location"], "query",
                "{what}: {name} is not a query parameter"
            );
            let errors = discovery_errors(&spec, parameter, &json!(value), name);
            assert!(errors.is_empty(), "{what}: {errors:#?}");
        }
        let id = &query.iter().find(|(n, _)| *n == "messageId").unwrap().1;
        // "Begins with `client-` ... Contains up to 63 characters and only
        // lowercase letters, numbers, and hyphens."
        let description = parameters["messageId"]["description"].as_str().unwrap();
        assert!(
            description.contains("Begins with `client-`")
                && description.contains("up to 63 characters")
        );
        assert!(id.starts_with("client-") && id.len() <= 63, "{what}: {id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        // The thread's replies need a reply option, or Chat starts a new
        // thread ("Using this option ignores any thread ID or thread_key").
        let option = query.iter().find(|(n, _)| *n == "messageReplyOption");
        assert_eq!(
            option.map(|(_, v)| v.as_str()),
            case.delivery
                .message
                .thread()
                .map(|_| "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"),
            "{what}"
        );
        assert!(query.iter().any(|(n, _)| *n == "requestId"), "{what}");
    }
    // The checks can fail: an unknown field, a thread key that is not text,
    // a reply option the enum lacks.
    let unknown = json!({"txt": "hello"});
    assert!(!discovery_errors(&spec, &create["request"], &unknown, "").is_empty());
    let bad_thread = json!({"text": "x", "thread": {"threadKey": 5}});
    assert!(!discovery_errors(&spec, &create["request"], &bad_thread, "").is_empty());
    let bad_option = json!("REPLY_ALWAYS");
    assert!(
        !discovery_errors(&spec, &parameters["messageReplyOption"], &bad_option, "").is_empty()
    );
}

// ---------------------------------------------------------------------------
// Telegram: the Bot API reference as structured data (methods and types,
// each field with its types and whether it is required).

/// Checks a JSON value against a list of Bot API types (`Integer`,
/// `String`, `Boolean`, `Array of X`, or a type's name).
pub(crate) fn telegram_type_errors(
    spec: &Value,
    types: &[Value],
    value: &Value,
    at: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    for type_name in types.iter().filter_map(Value::as_str) {
        let errors = match (type_name, value) {
            ("Integer", Value::Number(n)) if n.is_i64() => Vec::new(),
            ("Float", Value::Number(_)) => Vec::new(),
            ("String", Value::String(_)) => Vec::new(),
            ("Boolean", Value::Bool(_)) => Vec::new(),
            (name, Value::Array(items)) if name.starts_with("Array of ") => {
                let inner = json!([name.trim_start_matches("Array of ")]);
                items
                    .iter()
                    .enumerate()
                    .flat_map(|(i, item)| {
                        telegram_type_errors(
                            spec,
                            inner.as_array().unwrap(),
                            item,
                            &format!("{at}/{i}"),
                        )
                    })
                    .collect()
            }
            (name, Value::Object(_)) if spec["types"][name].is_object() => {
                telegram_fields_errors(spec, &spec["types"][name]["fields"], value, at)
            }
            (name, _) => vec![format!("{at}: {value} is not a {name}")],
        };
        if errors.is_empty() {
            return Vec::new();
        }
        failures.extend(errors);
    }
    failures
}

/// Checks an object against a method's or type's `fields`: each given
/// field listed and of its types, each required one given.
pub(crate) fn telegram_fields_errors(
    spec: &Value,
    fields: &Value,
    value: &Value,
    at: &str,
) -> Vec<String> {
    let fields = fields.as_array().cloned().unwrap_or_default();
    let mut errors = Vec::new();
    let Some(object) = value.as_object() else {
        return vec![format!("{at}: not an object")];
    };
    for (name, field_value) in object {
        match fields.iter().find(|f| f["name"] == *name) {
            None => errors.push(format!("{at}/{name}: not a field")),
            Some(field) => errors.extend(telegram_type_errors(
                spec,
                field["types"].as_array().unwrap(),
                field_value,
                &format!("{at}/{name}"),
            )),
        }
    }
    for field in fields.iter().filter(|f| f["required"] == true) {
        if !object.contains_key(field["name"].as_str().unwrap()) {
            errors.push(format!("{at}/{}: required", field["name"]));
        }
    }
    errors
}

/// What breaks the Bot API's HTML style ("formatting options", which
/// the structured copy names but does not carry: the tags it supports, and
/// "All <, > and & symbols that are not a part of a tag or an HTML entity
/// must be replaced with the corresponding HTML entities"; the named
/// entities are &lt; &gt; &amp; &quot;): unknown tags, unclosed or
/// crossed tags, a bare & or <.
fn telegram_html_problems(text: &str) -> Vec<String> {
    const TAGS: [&str; 13] = [
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "blockquote",
    ];
    let mut problems = Vec::new();
    let mut open: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['<', '&']) {
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix('&') {
            let entity = tail.split_once(';').map(|(e, _)| e).unwrap_or(tail);
            let known = ["&lt", "&gt", "&amp", "&quot"].contains(&entity)
                || entity
                    .strip_prefix("&#")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !known {
                let at: String = tail.chars().take(12).collect();
                problems.push(format!("a bare & at {at:?}"));
            }
            rest = after;
            continue;
        }
        let Some(end) = tail.find('>') else {
            problems.push("a < that opens no tag".to_owned());
            break;
        };
        let tag = &tail[1..end];
        match tag.strip_prefix('/') {
            Some(name) => {
                if open.pop().as_deref() != Some(name) {
                    problems.push(format!("</{name}> closes no open <{name}>"));
                }
            }
            None => {
                let name = tag.split(' ').next().unwrap_or("");
                if !TAGS.contains(&name) {
                    problems.push(format!("<{tag}> is not a tag Telegram supports"));
                }
                if name == "a" && !(tag.starts_with("a href=\"") && tag.ends_with('"')) {
                    problems.push(format!("<{tag}> is not <a href=\"...\">"));
                }
                if tag[name.len()..]
                    .trim_start_matches(" href=\"")
                    .trim_end_matches('"')
                    .contains(['"', '<'])
                {
                    problems.push(format!("<{tag}>: an unescaped quote in the attribute"));
                }
                open.push(name.to_owned());
            }
        }
        rest = &tail[end + 1..];
    }
    if !open.is_empty() {
        problems.push(format!("unclosed tags {open:?}"));
    }
    problems
}

#[test]
fn telegram_requests_match_the_bot_api_reference() {
    use herald::kinds::telegram::connector::{
        html_text_chars, render_send_message_body, telegram_resolve_edit_body,
        TELEGRAM_TEXT_CHARS_MAX,
    };
    let spec = load_spec("telegram-bot-api.api.json");
    let send = &spec["methods"]["sendMessage"];
    let edit = &spec["methods"]["editMessageText"];
    assert_eq!(send["returns"], json!(["Message"]));
    for case in cases() {
        let mut delivery = case.delivery.clone();
        // The thread's reference is the first message's id.
        if delivery.thread_ref.is_some() {
            delivery.thread_ref = Some("42".to_owned());
        }
        for (chat, topic) in [("-1001234567890", Some(7)), ("@herald_alerts", None)] {
            let what = format!("Telegram sendMessage ({}, {chat})", case.name);
            let body = render_send_message_body(&rendering(&case), &delivery, chat, topic)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let errors = telegram_fields_errors(&spec, &send["fields"], &body, "");
            assert!(errors.is_empty(), "{what}: {errors:#?}\n{body}");
            let text = body["text"].as_str().unwrap();
            // "Text of the message to be sent, 1-4096 characters after
            // entities parsing".
            let shown = match body.get("parse_mode") {
                None => text.chars().count(),
                Some(mode) => {
                    assert_eq!(mode, "HTML", "{what}");
                    let problems = telegram_html_problems(text);
                    assert!(problems.is_empty(), "{what}: {problems:#?}\n{text}");
                    html_text_chars(text)
                }
            };
            assert!(
                (1..=TELEGRAM_TEXT_CHARS_MAX).contains(&shown),
                "{what}: {shown}"
            );
            // A plain message stays plain text; a rich one is HTML.
            assert_eq!(
                body.get("parse_mode").is_some(),
                case.name.starts_with("rich"),
                "{what}"
            );
            assert_eq!(
                body["reply_parameters"]["message_id"].as_i64(),
                delivery.thread_ref.as_ref().map(|_| 42),
                "{what}: a thread's later messages reply to its first"
            );
            assert_eq!(body["message_thread_id"].as_i64(), topic, "{what}");
        }
        if delivery.message.resolved() {
            let body = telegram_resolve_edit_body(&delivery, "-1001234567890", 42);
            let errors = telegram_fields_errors(&spec, &edit["fields"], &body, "");
            assert!(
                errors.is_empty(),
                "Telegram editMessageText ({}): {errors:#?}",
                case.name
            );
            let text = body["text"].as_str().unwrap();
            assert!((1..=TELEGRAM_TEXT_CHARS_MAX).contains(&text.chars().count()));
        }
    }
    // The checks can fail: a field the method lacks, a text that is not
    // text, a reply without its message_id, no chat.
    let fields = &send["fields"];
    assert!(!telegram_fields_errors(
        &spec,
        fields,
        &json!({"chat_id": 1, "text": "x", "thread": 1}),
        ""
    )
    .is_empty());
    assert!(
        !telegram_fields_errors(&spec, fields, &json!({"chat_id": 1, "text": 5}), "").is_empty()
    );
    assert!(!telegram_fields_errors(
        &spec,
        fields,
        &json!({"chat_id": 1, "text": "x", "reply_parameters": {}}),
        ""
    )
    .is_empty());
    assert!(!telegram_fields_errors(&spec, fields, &json!({"text": "x"}), "").is_empty());
    // And the HTML check: a bare &, a bare <, an unknown or unclosed tag.
    for broken in [
        "a & b",
        "1 < 2",
        "<h1>x</h1>",
        "<b>x",
        "<a href=\"x\">y</b>",
    ] {
        assert!(!telegram_html_problems(broken).is_empty(), "{broken}");
    }
    assert!(telegram_html_problems(
        "<b>a &lt;b&gt; &amp; &#38;</b> <a href=\"https://x/?a=1&amp;b\">y</a>"
    )
    .is_empty());
    assert_eq!(
        html_text_chars("<b>a &lt;b&gt;</b> <a href=\"u\">yz</a>"),
        8
    );
}

// ---------------------------------------------------------------------------
// Zulip: send-message, get-messages and update-message of its OpenAPI
// description (YAML; read through `zulip.openapi.subset.json`, those
// operations and what they reference, converted unchanged by
// `scripts/zulip-spec-subset.py`).

#[test]
fn zulip_requests_match_the_openapi_document() {
    use herald::kinds::zulip::connector::{
        render_send_form, zulip_read_back_narrow, zulip_read_back_query, zulip_resolve_edit_form,
        ZULIP_CONTENT_CHARS_MAX, ZULIP_TOPIC_CHARS_MAX,
    };
    let spec = load_spec("zulip.openapi.subset.json");
    assert!(spec["info"]["x-herald-subset"]
        .as_str()
        .unwrap()
        .contains("zulip.openapi.yaml"));
    let form_schema = |path: &str, method: &str| {
        let escaped = path.replace('/', "~1");
        pointer(
            &spec,
            &format!("#/paths/{escaped}/{method}/requestBody/content/application~1x-www-form-urlencoded/schema"),
        )
        .clone()
    };
    let send = form_schema("/messages", "post");
    let edit = form_schema("/messages/{message_id}", "patch");
    for case in cases() {
        let mut delivery = case.delivery.clone();
        if delivery.thread_ref.is_some() {
            delivery.thread_ref = Some("42".to_owned());
        }
        let what = format!("Zulip send-message ({})", case.name);
        let form =
            form_object(&render_send_form(&rendering(&case), &delivery, "incidents").unwrap());
        assert_valid(&spec, &send, &form, &what);
        for name in form.as_object().unwrap().keys() {
            assert!(send["properties"].get(name).is_some(), "{what}: {name}");
        }
        assert!(
            form["topic"].as_str().unwrap().chars().count() <= ZULIP_TOPIC_CHARS_MAX,
            "{what}"
        );
        let content = form["content"].as_str().unwrap();
        assert!(content.chars().count() <= ZULIP_CONTENT_CHARS_MAX, "{what}");
        assert!(
            content.ends_with(&format!("`herald {}`", delivery.idempotency_key)),
            "{what}"
        );
        if let Some(thread) = delivery.message.thread() {
            let topic = form["topic"].as_str().unwrap();
            assert!(
                thread.starts_with(topic.trim_end_matches('…')),
                "{what}: a thread's messages go to its topic, not {topic:?}"
            );
        }
        if delivery.message.resolved() {
            let form = form_object(&zulip_resolve_edit_form(&delivery));
            assert_valid(
                &spec,
                &edit,
                &form,
                &format!("Zulip update-message ({})", case.name),
            );
        }
    }
    // The read-back's query: each a parameter of get-messages, its value of
    // the parameter's schema (`narrow` is JSON in the query).
    let parameters = pointer(&spec, "#/paths/~1messages/get/parameters")
        .as_array()
        .unwrap()
        .clone();
    let narrow = zulip_read_back_narrow("incidents", "INC-42", "herald-bot@example.zulipchat.com");
    for anchor in ["newest", "12345"] {
        for (name, value) in zulip_read_back_query(&narrow, anchor) {
            let parameter = parameters
                .iter()
                .map(|p| match p["$ref"].as_str() {
                    Some(r) => pointer(&spec, r),
                    None => p,
                })
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("get-messages has no parameter {name}"));
            assert_eq!(parameter["in"], "query", "{name}");
            let (schema, typed) = match parameter.get("content") {
                Some(content) => (
                    content["application/json"]["schema"].clone(),
                    serde_json::from_str::<Value>(&value).expect("JSON"),
                ),
                None => {
                    let schema = parameter["schema"].clone();
                    let resolved = match schema["$ref"].as_str() {
                        Some(r) => pointer(&spec, r).clone(),
                        None => schema.clone(),
                    };
                    // A query value is text; typed as its schema says.
                    let typed = match resolved["type"].as_str() {
                        Some("integer") => json!(value.parse::<i64>().unwrap()),
                        Some("boolean") => json!(value.parse::<bool>().unwrap()),
                        _ => json!(value),
                    };
                    (schema, typed)
                }
            };
            assert_valid(
                &spec,
                &schema,
                &typed,
                &format!("get-messages {name}={value}"),
            );
        }
    }
    // The checks can fail: a send without `to`, an unknown type, a narrow
    // term without its operand.
    assert_rejected(
        &spec,
        &send,
        &json!({"type": "stream", "content": "x"}),
        "to",
    );
    assert_rejected(
        &spec,
        &send,
        &json!({"type": "broadcast", "to": "x", "content": "x"}),
        "/type",
    );
}

// ---------------------------------------------------------------------------
// The mock's answers for Twilio and Zulip against the schemas their
// descriptions give those answers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_twilio_and_zulip_answers_match_their_descriptions() {
    use base64::Engine;
    let mock = crate::support::start_mock(&[]).await;
    let http = herald::connector::http_client_builder().build().unwrap();
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };

    let twilio = load_spec("twilio-api-v2010.openapi.json");
    let path = "/2010-04-01/Accounts/{AccountSid}/Messages.json";
    let messages = mock.url(&format!(
        "/twilio/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"
    ));
    let auth = basic(TWILIO_ACCOUNT_SID, "token");
    let created: Value = {
        let answer = http
            .post(&messages)
            .header("authorization", &auth)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("To=%2B447700900123&From=%2B14155550199&Body=%5BP1%5D+disk+full")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    };
    let create_schema = &twilio_operation(&twilio, path, "post")["responses"]["201"]["content"]
        ["application/json"]["schema"];
    assert_valid(
        &twilio,
        create_schema,
        &created,
        "the mock's CreateMessage answer",
    );
    let listed: Value = {
        let answer = http
            .get(format!(
                "{messages}?To=%2B447700900123&DateSent%3E=2000-01-01&PageSize=50"
            ))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    };
    let list_schema = &twilio_operation(&twilio, path, "get")["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert_valid(
        &twilio,
        list_schema,
        &listed,
        "the mock's ListMessage answer",
    );
    assert_eq!(listed["messages"][0]["sid"], created["sid"]);

    let zulip = load_spec("zulip.openapi.subset.json");
    let zulip_auth = basic("bot@example.zulipchat.com", "key");
    let sent: Value = {
        let answer = http
            .post(mock.url("/zulip/api/v1/messages"))
            .header("authorization", &zulip_auth)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("type=stream&to=incidents&topic=INC-1&content=hello")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    };
    let send_schema = pointer(
        &zulip,
        "#/paths/~1messages/post/responses/200/content/application~1json/schema",
    );
    assert_valid(&zulip, send_schema, &sent, "the mock's send-message answer");
    let narrow =
        r#"[{"operator":"channel","operand":"incidents"},{"operator":"topic","operand":"INC-1"}]"#;
    let mut url = reqwest::Url::parse(&mock.url("/zulip/api/v1/messages")).unwrap();
    url.query_pairs_mut()
        .append_pair("anchor", "newest")
        .append_pair("num_before", "100")
        .append_pair("num_after", "0")
        .append_pair("narrow", narrow)
        .append_pair("apply_markdown", "false");
    let read: Value = {
        let answer = http
            .get(url)
            .header("authorization", &zulip_auth)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    };
    let read_schema = pointer(
        &zulip,
        "#/paths/~1messages/get/responses/200/content/application~1json/schema",
    );
    assert_valid(&zulip, read_schema, &read, "the mock's get-messages answer");
    assert_eq!(read["messages"][0]["id"], sent["id"]);
    mock.stop().await;
}

// ---------------------------------------------------------------------------
// Matrix's rich cases through the destination's rendering (mentions on),
// against the same descriptions as `matrix_sends_match_the_client_server_description`.

#[test]
fn matrix_rich_messages_with_mentions_match_the_client_server_description() {
    use herald::kinds::matrix::connector::{render_matrix_message_content, CONTENT_BYTES_MAX};
    let send = super::load_matrix_spec("api/client-server/room_send.yaml");
    let operation = &send["paths"]["/rooms/{roomId}/send/{eventType}/{txnId}"]["put"];
    let body_schema = &operation["requestBody"]["content"]["application/json"]["schema"];
    let text = super::load_matrix_spec("event-schemas/schema/m.room.message$m.text.yaml");
    let content_schema = &text["properties"]["content"];
    let relates_to = super::load_matrix_spec("api/client-server/definitions/m.relates_to.yaml");
    for case in cases().into_iter().filter(|c| c.name.starts_with("rich")) {
        let mut delivery = case.delivery.clone();
        if delivery.thread_ref.is_some() {
            delivery.thread_ref = Some("$YUwRidLecu:example.com".to_owned());
        }
        let what = format!("Matrix message ({})", case.name);
        let content = render_matrix_message_content(
            &rendering(&case),
            &delivery,
            delivery.thread_ref.as_deref(),
        )
        .unwrap();
        assert_valid(&send, body_schema, &content, &what);
        assert_valid(&text, content_schema, &content, &what);
        if let Some(relation) = content.get("m.relates_to") {
            assert_valid(&relates_to, &relates_to, relation, &what);
        }
        assert!(
            serde_json::to_vec(&content).unwrap().len() <= CONTENT_BYTES_MAX,
            "{what}"
        );
        let plain = content["body"].as_str().unwrap();
        let html = content["formatted_body"].as_str().unwrap();
        // The mention on a single message or an opener only, as text.
        let first = matches!(
            case.name,
            "rich single" | "rich opener" | "rich at the limits"
        );
        assert_eq!(plain.contains("<!subteam^S0123ABCD>"), first, "{what}");
        if case.name != "rich at the limits" {
            // (At the limits the formatted view gives way to the plain.)
            assert_eq!(html.contains("&lt;!subteam^S0123ABCD&gt;"), first, "{what}");
            // The details, escaped in the HTML.
            assert!(html.contains("<li><strong>Customers &lt;affected&gt;</strong>: all *EU* &amp; &quot;some&quot; US</li>"), "{what}: {html}");
            assert!(html.contains("<a href=\"https://runbooks.example.com/checkout?step=1&amp;x=&quot;y&quot;\">Runbook</a>"), "{what}: {html}");
            assert!(
                plain.contains("Runbook: https://runbooks.example.com/checkout?step=1&x=\"y\""),
                "{what}"
            );
        }
    }
}
