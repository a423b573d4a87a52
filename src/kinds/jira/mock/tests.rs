use super::*;
use crate::mock::faults::Faults;
use crate::mock::testing::{Answer, TestMock};

/// `base64("ops@example.com:token")`.
const AUTH: (&str, &str) = ("authorization", "Basic b3BzQGV4YW1wbGUuY29tOnRva2Vu");
const JSON: (&str, &str) = ("content-type", "application/json");

fn doc(text: &str) -> Value {
    json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": text}]}
    ]})
}

fn issue(summary: &str, label: &str) -> Value {
    json!({"fields": {
        "project": {"key": "OPS"},
        "issuetype": {"name": "Incident"},
        "summary": summary,
        "description": doc("body"),
        "labels": [label],
    }})
}

fn send(mock: &TestMock, method: &str, path: &str, body: Value) -> Answer {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    mock.send(
        method,
        &format!("/jira/rest/api/3/{path}"),
        &[AUTH, JSON],
        &body,
    )
}

#[test]
fn creation_is_validated_as_jira_validates() {
    let mock = TestMock::new();
    let unauthenticated = mock.send(
        "POST",
        "/jira/rest/api/3/issue",
        &[JSON],
        &issue("x", "l").to_string(),
    );
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert!(unauthenticated.body["errorMessages"][0].is_string());

    let empty = send(&mock, "POST", "issue", json!({"fields": {}}));
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty.body["errorMessages"], json!([]));
    assert_eq!(
        empty.body["errors"]["summary"],
        "You must specify a summary of the issue."
    );
    assert!(empty.body["errors"]["project"].is_string());
    assert!(empty.body["errors"]["issuetype"].is_string());

    let mut bad = issue(&"x".repeat(256), "has space");
    bad["fields"]["description"] = json!("plain text");
    let bad = send(&mock, "POST", "issue", bad);
    let errors = bad.body["errors"].as_object().unwrap();
    let mut names: Vec<&str> = errors.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["description", "labels", "summary"]);
    let newline = send(&mock, "POST", "issue", issue("a\nb", "l"));
    assert!(newline.body["errors"]["summary"]
        .as_str()
        .unwrap()
        .contains("newline"));
    let mut unknown_project = issue("x", "l");
    unknown_project["fields"]["project"]["key"] = json!("MISSINGPROJ");
    assert_eq!(
        send(&mock, "POST", "issue", unknown_project).status,
        StatusCode::BAD_REQUEST
    );
    assert!(mock.stats().jira.projects.is_empty());
}

#[test]
fn issues_comments_and_transitions_read_back() {
    let mock = TestMock::new();
    let created = send(&mock, "POST", "issue", issue("P1 INC-42", "herald-k1"));
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["key"], "OPS-1");
    assert_eq!(created.body["id"], "10001");
    assert_eq!(
        created.body["self"],
        "http://mock.test/jira/rest/api/3/issue/10001"
    );
    let comment = send(
        &mock,
        "POST",
        "issue/OPS-1/comment",
        json!({"body": doc("update")}),
    );
    assert_eq!(comment.status, StatusCode::CREATED);
    assert_eq!(comment.body["body"], doc("update"));
    assert!(comment.body["created"].as_str().unwrap().ends_with("+0000"));
    let missing = send(
        &mock,
        "POST",
        "issue/OPS-9/comment",
        json!({"body": doc("x")}),
    );
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.body["errorMessages"][0],
        "Issue does not exist or you do not have permission to see it."
    );
    assert_eq!(
        send(
            &mock,
            "POST",
            "issue/OPS-1/comment",
            json!({"body": "text"})
        )
        .status,
        StatusCode::BAD_REQUEST
    );

    let transitions = send(&mock, "GET", "issue/OPS-1/transitions", Value::Null);
    let names: Vec<&str> = transitions.body["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["To Do", "In Progress", "Done"]);
    let done = json!({"transition": {"id": "31"}});
    assert_eq!(
        send(&mock, "POST", "issue/OPS-1/transitions", done).status,
        StatusCode::NO_CONTENT
    );
    let unknown = json!({"transition": {"id": "99"}});
    assert_eq!(
        send(&mock, "POST", "issue/OPS-1/transitions", unknown).status,
        StatusCode::BAD_REQUEST
    );

    let read = send(&mock, "GET", "issue/OPS-1", Value::Null);
    assert_eq!(read.body["fields"]["status"]["name"], "Done");
    assert_eq!(read.body["fields"]["labels"], json!(["herald-k1"]));
    assert_eq!(read.body["fields"]["comment"]["total"], 1);

    let stats = &mock.stats().jira.projects["OPS"];
    assert_eq!(stats.issues, 1);
    assert_eq!(stats.comments["OPS-1"], 1);
    assert_eq!(stats.transitions["OPS-1"], ["31"]);
    assert_eq!(stats.statuses["OPS-1"], "Done");
    assert_eq!(stats.labels["herald-k1"], 1);
}

#[test]
fn search_finds_by_label_after_the_lag() {
    let mut mock = TestMock::new();
    mock.set_faults(
        "/jira/*",
        Faults {
            search_lag_ms: 2_000,
            ..Faults::default()
        },
    );
    send(&mock, "POST", "issue", issue("one", "herald-k1"));
    send(&mock, "POST", "issue", issue("two", "herald-k1"));
    send(&mock, "POST", "issue", issue("three", "other"));
    let by_get = |mock: &TestMock, jql: &str| {
        let answer = send(
            mock,
            "GET",
            &format!("search/jql?jql={jql}&fields=summary,labels"),
            Value::Null,
        );
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.body
    };
    assert_eq!(
        by_get(&mock, "labels%20%3D%20herald-k1")["issues"],
        json!([]),
        "not yet visible"
    );
    mock.now_ms += 2_000;
    let found = by_get(
        &mock,
        "labels%20%3D%20%22herald-k1%22%20AND%20project%20%3D%20OPS",
    );
    let keys: Vec<&str> = found["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["OPS-2", "OPS-1"]);
    assert_eq!(found["isLast"], true);
    assert_eq!(found["issues"][0]["fields"]["summary"], "two");
    assert!(found["issues"][0]["fields"].get("status").is_none());

    let posted = send(
        &mock,
        "POST",
        "search/jql",
        json!({"jql": "project = OPS AND labels in (other, nothing) ORDER BY created DESC", "fields": ["labels"], "maxResults": 10}),
    );
    assert_eq!(posted.body["issues"][0]["key"], "OPS-3");
    let bad = send(&mock, "POST", "search/jql", json!({"jql": "summary ~ x"}));
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body["errorMessages"][0].is_string());
    assert_eq!(
        mock.stats().jira.projects["OPS"].duplicated_labels,
        ["herald-k1"]
    );
}

#[test]
fn faults_answer_in_jiras_shapes() {
    let mock = TestMock::new();
    mock.set_faults(
        "/jira/rest/api/3/issue/*",
        Faults {
            rate_limit_first: 1,
            retry_after_secs: 5,
            fail_first: 1,
            drop_first: 1,
            ..Faults::default()
        },
    );
    assert_eq!(
        send(&mock, "POST", "issue", issue("x", "l")).status,
        StatusCode::CREATED,
        "the exact create path is not under issue/*"
    );
    let comment = || {
        send(
            &mock,
            "POST",
            "issue/OPS-1/comment",
            json!({"body": doc("c")}),
        )
    };
    let limited = comment();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "5");
    assert!(limited.body["errorMessages"][0].is_string());
    let failed = comment();
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.body["errors"], json!({}));
    let dropped = comment();
    assert!(dropped.hang_ms.is_some());
    assert_eq!(mock.stats().jira.projects["OPS"].comments["OPS-1"], 1);
}
