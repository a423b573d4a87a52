use super::*;
use crate::mock::faults::Faults;
use crate::mock::testing::{Answer, TestMock};

const AUTH: (&str, &str) = ("authorization", "Bearer xoxb-test");
const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

fn post(mock: &TestMock, method: &str, body: Value) -> Answer {
    mock.send(
        "POST",
        &format!("/slack/api/{method}"),
        &[AUTH, JSON],
        &body.to_string(),
    )
}

fn get(mock: &TestMock, method_and_query: &str) -> Answer {
    mock.send(
        "GET",
        &format!("/slack/api/{method_and_query}"),
        &[AUTH],
        "",
    )
}

fn keyed(text: &str, key: &str) -> Value {
    json!({
        "channel": "#incidents",
        "text": text,
        "metadata": {"event_type": "herald_delivery", "event_payload": {"idempotency_key": key}},
    })
}

#[test]
fn requests_are_checked_as_slack_checks_them() {
    let mock = TestMock::new();
    let error = |answer: Answer| {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body["ok"], false);
        answer.body["error"].as_str().unwrap().to_owned()
    };
    let no_auth = mock.send("POST", "/slack/api/chat.postMessage", &[JSON], "{}");
    assert_eq!(error(no_auth), "not_authed");
    let bad_auth = mock.send(
        "POST",
        "/slack/api/chat.postMessage",
        &[("authorization", "Bearer nope"), JSON],
        r#"{"channel":"a","text":"x"}"#,
    );
    assert_eq!(error(bad_auth), "invalid_auth");
    let cases = [
        (json!({"text": "x"}), "channel_not_found"),
        (
            json!({"channel": "missing-room", "text": "x"}),
            "channel_not_found",
        ),
        (
            json!({"channel": "archived-ops", "text": "x"}),
            "is_archived",
        ),
        (json!({"channel": "ops"}), "no_text"),
        (
            json!({"channel": "ops", "text": "x".repeat(40_001)}),
            "msg_too_long",
        ),
        (
            json!({"channel": "ops", "text": "x", "thread_ts": "1.000001"}),
            "thread_not_found",
        ),
        (
            json!({"channel": "ops", "text": "x", "metadata": {"event_type": "e"}}),
            "invalid_metadata_format",
        ),
        (
            json!({"channel": "ops", "text": "x", "metadata": "{not json"}),
            "invalid_metadata_format",
        ),
    ];
    for (body, code) in cases {
        assert_eq!(
            error(post(&mock, "chat.postMessage", body.clone())),
            code,
            "{body}"
        );
    }
    assert_eq!(error(get(&mock, "chat.delete")), "unknown_method");
    assert_eq!(mock.stats().slack.channels["ops"].messages, 0);
}

#[test]
fn a_form_post_works_like_json() {
    let mock = TestMock::new();
    let answer = mock.send(
            "POST",
            "/slack/api/chat.postMessage",
            &[AUTH, ("content-type", "application/x-www-form-urlencoded")],
            "channel=%23ops&text=hello+there&metadata=%7B%22event_type%22%3A%22e%22%2C%22event_payload%22%3A%7B%22idempotency_key%22%3A%22k%22%7D%7D",
        );
    assert_eq!(answer.body["ok"], true, "{}", answer.text);
    assert_eq!(answer.body["message"]["text"], "hello there");
    assert_eq!(answer.body["channel"], id_for_name("ops"));
    assert_eq!(mock.stats().slack.channels["ops"].metadata_keys["k"], 1);
}

#[test]
fn threads_history_and_replies_read_back() {
    let mut mock = TestMock::new();
    let parent = post(&mock, "chat.postMessage", keyed("P1 open", "k1"));
    assert_eq!(parent.body["ok"], true);
    let parent_ts = parent.body["ts"].as_str().unwrap().to_owned();
    let channel_id = parent.body["channel"].as_str().unwrap().to_owned();
    // Same clock reading: ts still unique and increasing.
    let mut reply = keyed("update", "k2");
    reply["thread_ts"] = json!(parent_ts);
    let reply = post(&mock, "chat.postMessage", reply);
    assert!(reply.body["ts"].as_str().unwrap() > parent_ts.as_str());
    mock.now_ms += 1_000;
    let second = post(&mock, "chat.postMessage", keyed("P2 open", "k3"));
    // A reply is not a thread parent.
    let mut nested = keyed("x", "k4");
    nested["thread_ts"] = reply.body["ts"].clone();
    assert_eq!(
        post(&mock, "chat.postMessage", nested).body["error"],
        "thread_not_found"
    );

    let history = get(
        &mock,
        &format!("conversations.history?channel={channel_id}&include_all_metadata=true"),
    );
    let messages = history.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "replies are not in history");
    assert_eq!(messages[0]["ts"], second.body["ts"], "newest first");
    assert_eq!(messages[1]["reply_count"], 1);
    assert_eq!(messages[1]["thread_ts"], parent_ts.as_str());
    assert_eq!(
        messages[1]["metadata"]["event_payload"]["idempotency_key"],
        "k1"
    );
    let without = get(&mock, "conversations.history?channel=incidents");
    assert!(without.body["messages"][0].get("metadata").is_none());

    let page = get(&mock, "conversations.history?channel=incidents&limit=1");
    assert_eq!(page.body["has_more"], true);
    let cursor = page.body["response_metadata"]["next_cursor"]
        .as_str()
        .unwrap();
    let next = get(
        &mock,
        &format!("conversations.history?channel=incidents&limit=1&cursor={cursor}"),
    );
    assert_eq!(next.body["messages"][0]["ts"], parent_ts.as_str());
    assert_eq!(next.body["has_more"], false);
    let oldest = get(
        &mock,
        &format!("conversations.history?channel=incidents&oldest={parent_ts}"),
    );
    assert_eq!(oldest.body["messages"].as_array().unwrap().len(), 1);
    let inclusive = get(
        &mock,
        &format!("conversations.history?channel=incidents&oldest={parent_ts}&inclusive=true"),
    );
    assert_eq!(inclusive.body["messages"].as_array().unwrap().len(), 2);

    let replies = get(
        &mock,
        &format!("conversations.replies?channel=incidents&ts={parent_ts}"),
    );
    let thread = replies.body["messages"].as_array().unwrap();
    assert_eq!(thread.len(), 2);
    assert_eq!(thread[0]["ts"], parent_ts.as_str());
    assert_eq!(thread[1]["thread_ts"], parent_ts.as_str());
    assert_eq!(
        get(&mock, "conversations.replies?channel=incidents&ts=5.000000").body["error"],
        "thread_not_found"
    );

    let stats = &mock.stats().slack.channels["incidents"];
    assert_eq!((stats.messages, stats.replies), (2, 1));
    assert!(stats.duplicated_keys.is_empty());
}

#[test]
fn updates_are_recorded() {
    let mock = TestMock::new();
    let first = post(
        &mock,
        "chat.postMessage",
        json!({"channel": "ops", "text": "v1"}),
    );
    let ts = first.body["ts"].clone();
    let update = post(
        &mock,
        "chat.update",
        json!({"channel": first.body["channel"], "ts": ts, "text": "v2"}),
    );
    assert_eq!(update.body["ok"], true);
    assert_eq!(update.body["text"], "v2");
    assert_eq!(
        post(
            &mock,
            "chat.update",
            json!({"channel": "ops", "ts": "1.000000", "text": "v"})
        )
        .body["error"],
        "message_not_found"
    );
    let history = get(&mock, "conversations.history?channel=ops");
    assert_eq!(history.body["messages"][0]["text"], "v2");
    assert!(history.body["messages"][0]["edited"].is_object());
    assert_eq!(mock.stats().slack.channels["ops"].updates, 1);
}

#[test]
fn faults_answer_in_slacks_shapes() {
    let mock = TestMock::new();
    mock.set_faults(
        "/slack/api/*",
        Faults {
            rate_limit_first: 1,
            retry_after_secs: 7,
            slack_error: Some("internal_error".into()),
            slack_error_first: 1,
            drop_first: 1,
            ..Faults::default()
        },
    );
    let limited = post(&mock, "chat.postMessage", keyed("a", "k"));
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "7");
    assert_eq!(limited.body, json!({"ok": false, "error": "ratelimited"}));
    let internal = post(&mock, "chat.postMessage", keyed("a", "k"));
    assert_eq!(internal.status, StatusCode::OK);
    assert_eq!(
        internal.body,
        json!({"ok": false, "error": "internal_error"})
    );
    let dropped = post(&mock, "chat.postMessage", keyed("a", "k"));
    assert!(dropped.hang_ms.is_some());
    let stats = &mock.stats().slack.channels["incidents"];
    assert_eq!(
        stats.metadata_keys["k"], 2,
        "internal_error and drop both stored"
    );
    assert_eq!(stats.duplicated_keys, ["k"]);

    mock.set_faults(
        "/slack/api/chat.postMessage",
        Faults {
            slack_error: Some("channel_not_found".into()),
            slack_error_first: 1,
            ..Faults::default()
        },
    );
    let refused = post(&mock, "chat.postMessage", keyed("a", "other"));
    assert_eq!(refused.body["error"], "channel_not_found");
    assert!(!mock.stats().slack.channels["incidents"]
        .metadata_keys
        .contains_key("other"));
    assert_eq!(mock.stats().path("/slack/api/chat.postMessage").requests, 4);
}
