//! Bad input gets a clear error naming the field, and changes nothing.

use herald::api::wire::ErrorBody;
use herald::mock::Faults;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_write_nothing() {
    let dir = temp_dir();
    let database = dir.path().join("herald.db");
    let mock = start_mock(&[("/hooks/a", Faults::default())]).await;
    let server = start_server(&database, vec![webhook(&mock, "a"), webhook(&mock, "b")]).await;
    let url = format!("http://{}/v1/broadcasts", server.addr);
    let http = herald::connector::http_client_builder().build().unwrap();

    let cases: Vec<(&str, String, u16, &str, Option<&str>)> = vec![
        (
            "malformed JSON",
            r#"{"title": "x", "destinations": ["a"]"#.into(),
            400,
            "malformed_json",
            None,
        ),
        (
            "not JSON at all",
            "title=x".into(),
            400,
            "malformed_json",
            None,
        ),
        (
            "unknown destination",
            r#"{"title": "x", "destinations": ["a", "nope"]}"#.into(),
            400,
            "invalid_field",
            Some("destinations[1]"),
        ),
        (
            "no destination",
            r#"{"title": "x", "destinations": []}"#.into(),
            400,
            "invalid_field",
            Some("destinations"),
        ),
        (
            "same destination twice",
            r#"{"title": "x", "destinations": ["a", "a"]}"#.into(),
            400,
            "invalid_field",
            Some("destinations[1]"),
        ),
        (
            "empty title",
            r#"{"title": "   ", "destinations": ["a"]}"#.into(),
            400,
            "invalid_field",
            Some("title"),
        ),
        (
            "a resolve without a thread",
            r#"{"title": "recovered", "resolved": true, "destinations": ["a"]}"#.into(),
            400,
            "invalid_field",
            Some("resolved"),
        ),
        (
            "missing title",
            r#"{"destinations": ["a"]}"#.into(),
            400,
            "invalid_field",
            Some("title"),
        ),
        (
            "wrong type",
            r#"{"title": "x", "destinations": "a"}"#.into(),
            400,
            "invalid_field",
            Some("destinations"),
        ),
        (
            "unknown field",
            r#"{"title": "x", "destinations": ["a"], "colour": "red"}"#.into(),
            400,
            "invalid_field",
            Some("colour"),
        ),
        (
            "bad severity",
            r#"{"title": "x", "severity": "P9", "destinations": ["a"]}"#.into(),
            400,
            "invalid_field",
            Some("severity"),
        ),
        (
            "message body over its limit",
            format!(
                r#"{{"title": "x", "body": "{}", "destinations": ["a"]}}"#,
                "y".repeat(20_000)
            ),
            400,
            "invalid_field",
            Some("body"),
        ),
        (
            "request over the size limit",
            format!(
                r#"{{"title": "x", "body": "{}", "destinations": ["a"]}}"#,
                "y".repeat(100_000)
            ),
            413,
            "body_too_large",
            None,
        ),
    ];
    for (what, body, status, code, field) in cases {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let error: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap())
            .unwrap_or_else(|e| panic!("{what}: the error is not in the one JSON shape: {e}"));
        assert_eq!(error.error.code, code, "{what}: {}", error.error.message);
        assert_eq!(
            error.error.field.as_deref(),
            field,
            "{what}: {}",
            error.error.message
        );
        assert!(!error.error.message.is_empty(), "{what}");
    }

    let response = http
        .get(format!("http://{}/v1/broadcasts/nope", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    server.stop().await;
    assert_eq!(count_rows(&database, "broadcasts"), 0);
    assert_eq!(count_rows(&database, "deliveries"), 0);
    assert!(
        mock.stats().paths.is_empty(),
        "no destination was contacted"
    );
    mock.stop().await;
}
