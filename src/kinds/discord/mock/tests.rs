use super::*;
use crate::mock::faults::Faults;
use crate::mock::testing::{Answer, TestMock};

const HOOK: &str = "/discord/api/webhooks/123456/tok";
const JSON: (&str, &str) = ("content-type", "application/json");

fn execute(mock: &TestMock, query: &str, body: Value) -> Answer {
    mock.send(
        "POST",
        &format!("{HOOK}{query}"),
        &[JSON],
        &body.to_string(),
    )
}

#[test]
fn bodies_are_checked_as_discord_checks_them() {
    let mock = TestMock::new();
    let empty = execute(&mock, "", json!({"thread_name": "INC-1"}));
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        empty.body,
        json!({"code": 50006, "message": "Cannot send an empty message"})
    );

    let too_long = execute(
        &mock,
        "",
        json!({
            "content": "x".repeat(2001),
            "thread_name": "INC-1",
            "embeds": [{"title": "t".repeat(257), "fields": [{"name": "n"}]}],
        }),
    );
    assert_eq!(too_long.body["code"], 50035);
    assert_eq!(too_long.body["message"], "Invalid Form Body");
    let errors = &too_long.body["errors"];
    assert_eq!(
        errors["content"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    assert_eq!(
        errors["embeds"]["0"]["title"]["_errors"][0]["code"],
        "BASE_TYPE_MAX_LENGTH"
    );
    assert_eq!(
        errors["embeds"]["0"]["fields"]["0"]["value"]["_errors"][0]["code"],
        "BASE_TYPE_REQUIRED"
    );
    let eleven = vec![json!({"title": "t"}); 11];
    let many = execute(&mock, "", json!({"embeds": eleven, "thread_name": "x"}));
    assert!(many.body["errors"]["embeds"]["_errors"].is_array());

    let no_thread = execute(&mock, "", json!({"content": "hi"}));
    assert_eq!(no_thread.body["code"], 220_001);
    let unknown_thread = execute(&mock, "?thread_id=42", json!({"content": "hi"}));
    assert_eq!(unknown_thread.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown_thread.body,
        json!({"code": 10003, "message": "Unknown Channel"})
    );

    execute(&mock, "", json!({"content": "hi", "thread_name": "INC-1"}));
    let other_token = mock.send(
        "POST",
        "/discord/api/webhooks/123456/other",
        &[JSON],
        r#"{"content":"x","thread_name":"y"}"#,
    );
    assert_eq!(other_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(other_token.body["code"], 50027);
    assert_eq!(mock.stats().discord.webhooks["123456"].messages, 1);
}

#[test]
fn forum_threads_messages_and_edits_read_back() {
    let mut mock = TestMock::new();
    let starter = execute(
        &mock,
        "?wait=true",
        json!({"content": "P1 INC-42 open", "thread_name": "INC-42", "username": "herald"}),
    );
    assert_eq!(starter.status, StatusCode::OK);
    let thread_id = starter.body["id"].as_str().unwrap().to_owned();
    assert_eq!(starter.body["channel_id"], thread_id.as_str());
    assert_eq!(starter.body["type"], 0);
    assert_eq!(starter.body["webhook_id"], "123456");
    assert!(starter.body["timestamp"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));
    assert_eq!(starter.headers["x-ratelimit-limit"], "5");
    assert_eq!(starter.headers["x-ratelimit-remaining"], "4");
    assert!(starter.headers.contains_key("x-ratelimit-bucket"));

    let reply = execute(
        &mock,
        &format!("?thread_id={thread_id}"),
        json!({"embeds": [{"title": "update", "description": "mitigated"}]}),
    );
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    mock.now_ms += 1;
    let second = execute(
        &mock,
        &format!("?wait=1&thread_id={thread_id}"),
        json!({"content": "resolved"}),
    );
    let second_id = second.body["id"].as_str().unwrap().to_owned();
    assert!(second_id.parse::<u64>().unwrap() > thread_id.parse::<u64>().unwrap());
    assert_eq!(second.body["channel_id"], thread_id.as_str());

    let read = mock.send(
        "GET",
        &format!("{HOOK}/messages/{second_id}?thread_id={thread_id}"),
        &[],
        "",
    );
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["content"], "resolved");
    let outside_thread = mock.send("GET", &format!("{HOOK}/messages/{second_id}"), &[], "");
    assert_eq!(outside_thread.status, StatusCode::NOT_FOUND);
    assert_eq!(
        outside_thread.body,
        json!({"code": 10008, "message": "Unknown Message"})
    );

    let edited = mock.send(
        "PATCH",
        &format!("{HOOK}/messages/{thread_id}?thread_id={thread_id}"),
        &[JSON],
        r#"{"content":"P1 INC-42 resolved"}"#,
    );
    assert_eq!(edited.status, StatusCode::OK);
    assert!(edited.body["edited_timestamp"].is_string());
    let stats = &mock.stats().discord.webhooks["123456"];
    assert_eq!((stats.messages, stats.threads, stats.edits), (3, 1, 1));
    assert_eq!(stats.messages_per_thread[&thread_id], 3);
    assert_eq!(stats.thread_names["INC-42"], 1);
}

#[test]
fn faults_answer_in_discords_shapes() {
    let mock = TestMock::new();
    mock.set_faults(
        "/discord/api/webhooks/*",
        Faults {
            rate_limit_first: 1,
            retry_after_secs: 3,
            fail_first: 1,
            fail_status: 502,
            drop_first: 1,
            ..Faults::default()
        },
    );
    let body = json!({"content": "x", "thread_name": "INC-1"});
    let limited = execute(&mock, "?wait=true", body.clone());
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.body,
        json!({"code": 0, "message": "You are being rate limited.", "retry_after": 3.0, "global": false})
    );
    assert_eq!(limited.headers["retry-after"], "3");
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert_eq!(limited.headers["x-ratelimit-reset-after"], "3.000");
    let failed = execute(&mock, "?wait=true", body.clone());
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.body["code"], 0);
    let dropped = execute(&mock, "?wait=true", body);
    assert!(dropped.hang_ms.is_some());
    assert_eq!(mock.stats().discord.webhooks["123456"].threads, 1);
}
