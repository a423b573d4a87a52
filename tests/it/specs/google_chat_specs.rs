//! Google Chat's API mode against the discovery document: every request
//! the app makes (create, the read-back's get, the resolve's patch, and
//! the scope its token asks for), by path, method, parameters and body.

use herald::kinds::google_chat::app::{
    google_chat_client_message_name, google_chat_create_url, google_chat_message_url,
    google_chat_resolve_patch, RESOLVE_UPDATE_MASK,
};
use herald::kinds::google_chat::auth::CHAT_BOT_SCOPE;
use herald::kinds::google_chat::connector::{google_chat_create_query, google_chat_message};
use serde_json::{json, Value};

use super::new_kinds_specs::discovery_errors;
use super::{cases, load_spec};

const API: &str = "https://chat.googleapis.com/";
const SPACE: &str = "spaces/AAAAb3xZ1kE";

fn method<'a>(spec: &'a Value, name: &str) -> &'a Value {
    &spec["resources"]["spaces"]["resources"]["messages"]["methods"][name]
}

/// The path of `url` below the API's base matches the method's `path`
/// (`v1/{+param}...`) with the parameter's `pattern`; returns the value.
fn path_parameter(spec: &Value, method: &Value, url: &reqwest::Url) -> String {
    let base = format!(
        "{}{}",
        spec["rootUrl"].as_str().unwrap(),
        spec["servicePath"].as_str().unwrap()
    );
    let relative = url
        .as_str()
        .strip_prefix(&base)
        .unwrap_or_else(|| panic!("{url} is not under {base}"));
    let template = method["path"].as_str().unwrap();
    let (before, rest) = template.split_once("{+").unwrap();
    let (parameter, after) = rest.split_once('}').unwrap();
    let value = relative
        .strip_prefix(before)
        .and_then(|v| v.strip_suffix(after))
        .unwrap_or_else(|| panic!("{relative} does not follow {template}"));
    let described = &method["parameters"][parameter];
    assert_eq!(described["location"], "path");
    let pattern = described["pattern"].as_str().unwrap();
    let matcher = regex_lite(pattern);
    assert!(
        matcher(value),
        "{parameter}={value} does not match {pattern}"
    );
    value.to_owned()
}

/// The two patterns the methods use, `^spaces/[^/]+$` and
/// `^spaces/[^/]+/messages/[^/]+$`, as a checker (any other fails the test).
fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
    const ANY_SEGMENT: &str = "[^/]+";
    let segments: Vec<String> = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .unwrap_or_else(|| panic!("an anchored pattern: {pattern}"))
        .replace(ANY_SEGMENT, "*")
        .split('/')
        .map(|s| {
            if s == "*" {
                ANY_SEGMENT.to_owned()
            } else {
                s.to_owned()
            }
        })
        .collect();
    assert!(
        segments
            .iter()
            .all(|s| s == "[^/]+" || s.bytes().all(|b| b.is_ascii_alphabetic())),
        "a pattern of literal segments and [^/]+: {pattern}"
    );
    move |value: &str| {
        let parts: Vec<&str> = value.split('/').collect();
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(part, segment)| {
                if segment == ANY_SEGMENT {
                    !part.is_empty()
                } else {
                    part == segment
                }
            })
    }
}

fn check_query(spec: &Value, method: &Value, query: &[(&str, String)], what: &str) {
    for (name, value) in query {
        let parameter = &method["parameters"][*name];
        assert_eq!(
            parameter["location"], "query",
            "{what}: {name} is not a query parameter"
        );
        let typed = match parameter["type"].as_str() {
            Some("boolean") => json!(value == "true"),
            _ => json!(value),
        };
        let errors = discovery_errors(spec, parameter, &typed, name);
        assert!(errors.is_empty(), "{what}: {errors:#?}");
    }
}

#[test]
fn the_app_calls_match_the_discovery_document() {
    let spec = load_spec("google-chat-v1.discovery.json");
    let api = reqwest::Url::parse(API).unwrap();
    let create = method(&spec, "create");
    let get = method(&spec, "get");
    let patch = method(&spec, "patch");
    assert_eq!(
        (
            create["httpMethod"].as_str(),
            get["httpMethod"].as_str(),
            patch["httpMethod"].as_str()
        ),
        (Some("POST"), Some("GET"), Some("PATCH"))
    );
    // The app's token has the scope each method takes with app
    // authentication.
    for m in [create, get, patch] {
        assert!(
            m["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == CHAT_BOT_SCOPE),
            "{}",
            m["id"]
        );
    }
    assert!(spec["auth"]["oauth2"]["scopes"][CHAT_BOT_SCOPE].is_object());

    let parent = path_parameter(&spec, create, &google_chat_create_url(&api, SPACE));
    assert_eq!(parent, SPACE);
    for case in cases() {
        let what = format!("Google Chat app ({})", case.name);
        let d = &case.delivery;
        // The create: the same body and query as the webhook's, at the
        // space's path.
        let body = google_chat_message(d);
        let errors = discovery_errors(&spec, &create["request"], &body, "");
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{body}");
        check_query(&spec, create, &google_chat_create_query(d), &what);
        // The read-back: the message by its client-set ID ("you can use
        // the value from the clientAssignedMessageId field for {message}").
        let name = google_chat_client_message_name(SPACE, &d.idempotency_key);
        let url = google_chat_message_url(&api, &name);
        assert_eq!(path_parameter(&spec, get, &url), name, "{what}");
        let description = get["parameters"]["name"]["description"].as_str().unwrap();
        assert!(
            description.contains("clientAssignedMessageId"),
            "{description}"
        );
        // The resolve's edit of the first message.
        let first = format!(
            "{SPACE}/messages/{}",
            "client-0123456789abcdef0123456789abcdef"
        );
        let url = google_chat_message_url(&api, &first);
        assert_eq!(path_parameter(&spec, patch, &url), first, "{what}");
        let (query, body) = google_chat_resolve_patch(d);
        check_query(&spec, patch, &query, &what);
        let errors = discovery_errors(&spec, &patch["request"], &body, "");
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{body}");
        assert!(
            body["text"].as_str().unwrap().chars().count() <= 4_096,
            "{what}"
        );
    }
    // updateMask names a path the description lists as updatable.
    let (query, _) = google_chat_resolve_patch(&cases()[0].delivery);
    assert_eq!(query, [("updateMask", RESOLVE_UPDATE_MASK.to_owned())]);
    let listed = patch["parameters"]["updateMask"]["description"]
        .as_str()
        .unwrap();
    assert!(
        listed.contains(&format!("- `{RESOLVE_UPDATE_MASK}`")),
        "{listed}"
    );
    // The checks can fail: a path outside the pattern, a body field the
    // Message lacks.
    let wrong =
        reqwest::Url::parse("https://chat.googleapis.com/v1/spaces/AAAA/threads/T").unwrap();
    let caught = std::panic::catch_unwind(|| path_parameter(&spec, get, &wrong));
    assert!(caught.is_err(), "a thread's URL passed as a message's");
    assert!(!discovery_errors(&spec, &patch["request"], &json!({"txt": "x"}), "").is_empty());
}

#[test]
fn the_default_template_card_matches_the_message_schema() {
    use herald::template::sample_deliveries;
    let spec = load_spec("google-chat-v1.discovery.json");
    let create = method(&spec, "create");
    for delivery in sample_deliveries() {
        let body = google_chat_message(&delivery);
        let errors = discovery_errors(&spec, &create["request"], &body, "");
        assert!(errors.is_empty(), "{errors:#?}\n{body}");
        // The sample has fields and links: they are in the card.
        let card = &body["cardsV2"][0]["card"];
        let text = card.to_string();
        assert!(
            text.contains("https://runbooks.example.com/checkout"),
            "{text}"
        );
        assert!(
            card["sections"].as_array().is_some_and(|s| !s.is_empty()),
            "{text}"
        );
    }
}
