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
            // No destination named is a routed broadcast; this server has
            // no routes and no default route.
            "no destination and no route",
            r#"{"title": "x", "destinations": []}"#.into(),
            422,
            "no_route",
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

/// Every JSON body of the API is an object, as the OpenAPI document says:
/// an array, a string, a number, a boolean or null is refused with 400
/// naming the body, and changes nothing. serde would read a struct from
/// an array of its fields, so `POST .../cancel` with `[]` used to cancel
/// every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_that_are_not_objects_are_refused_and_change_nothing() {
    let dir = temp_dir();
    let database = dir.path().join("herald.db");
    // The destination keeps failing, so its delivery stays unfinished: a
    // cancel that went through would show.
    let failing = Faults {
        fail_first: 1_000_000,
        fail_status: 503,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/a", failing)]).await;
    let config = herald::config::Config {
        database: database.clone(),
        destinations: vec![webhook(&mock, "a")],
        alertmanager: Some(herald::config::AlertmanagerRoutes {
            destinations: vec!["a".into()],
            ..Default::default()
        }),
        ..herald::config::Config::default()
    };
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let client = client(&server);
    let id = client.send(&request("disk full", &["a"])).await.unwrap().id;
    let http = herald::connector::http_client_builder().build().unwrap();
    let base = format!("http://{}", server.addr);
    let routes = [
        "/v1/broadcasts".to_owned(),
        format!("/v1/broadcasts/{id}/retry"),
        format!("/v1/broadcasts/{id}/cancel"),
        "/v1/destinations/a/pause".to_owned(),
        "/v1/ingest/alertmanager".to_owned(),
    ];
    let bodies = [
        ("[]", "an array"),
        (r#"["a"]"#, "an array"),
        (
            r#" ["disk full", null, null, null, false, ["a"]]"#,
            "an array",
        ),
        (r#""cancel""#, "a string"),
        ("42", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
    ];
    for route in &routes {
        for (body, kind) in bodies {
            let response = http
                .post(format!("{base}{route}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let error: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap())
                .unwrap_or_else(|e| panic!("{route} {body}: answered {status}, not an error: {e}"));
            assert_eq!(status, 400, "{route} {body}: {}", error.error.message);
            assert_eq!(error.error.code, "body_not_object", "{route} {body}");
            assert_eq!(error.error.field.as_deref(), Some("."), "{route} {body}");
            assert!(
                error.error.message.contains("body must be a JSON object")
                    && error.error.message.ends_with(&format!("not {kind}")),
                "{route} {body}: {}",
                error.error.message
            );
        }
    }

    let after = client.status(&id).await.unwrap();
    assert_eq!(after.deliveries.len(), 1);
    assert_ne!(
        after.deliveries[0].state, "cancelled",
        "nothing was cancelled"
    );
    let destinations = client.destinations().await.unwrap();
    assert_eq!(destinations[0].status, "active", "nothing was paused");
    server.stop().await;
    assert_eq!(
        count_rows(&database, "broadcasts"),
        1,
        "nothing was accepted"
    );
    mock.stop().await;
}
