use super::shared::{civil_utc, parse_form};
use super::testing::TestMock;
use super::*;

#[test]
fn the_example_faults_file_is_valid() {
    let file: FaultsFile = toml::from_str(include_str!("../../mock-faults.example.toml")).unwrap();
    file.validate().unwrap();
    assert_eq!(file.paths["/hooks/flaky"].fail_first, 3);
    assert_eq!(file.paths["/hooks/flaky"].fail_status, 503);
    assert_eq!(file.paths["/hooks/ops"].retry_after_secs, 2);
    // Every kind the mock plays has an example.
    for prefix in [
        "/slack/",
        "/jira/",
        "/pagerduty/",
        "/discord/",
        "/teams/",
        "/matrix/",
        "/twilio/",
        "/google-chat/",
        "/telegram/",
        "/zulip/",
        "/hooks/",
    ] {
        assert!(
            file.paths.keys().any(|p| p.starts_with(prefix)),
            "no example for {prefix}"
        );
    }
}

#[test]
fn nonsense_faults_are_refused() {
    assert!(Faults {
        fail_status: 200,
        ..Faults::default()
    }
    .validate()
    .is_err());
    assert!(Faults {
        failure_rate: 1.5,
        ..Faults::default()
    }
    .validate()
    .is_err());
    assert!(Faults {
        slack_error_first: 1,
        ..Faults::default()
    }
    .validate()
    .is_err());
    let slack_error = Faults {
        slack_error: Some("internal_error".into()),
        slack_error_first: 1,
        ..Faults::default()
    };
    assert!(slack_error.validate_for("/slack/api/*").is_ok());
    assert!(slack_error.validate_for("/hooks/a").is_err());
    assert!(serde_json::from_str::<PathFaults>(r#"{"path": "/a", "fail_frist": 3}"#).is_err());
    assert!(validate_path("/_mock/stats").is_err());
    assert!(validate_path("/jira/*/comment").is_err());
    assert!(validate_path("/jira*").is_err());
    assert!(validate_path("/jira/*").is_ok());
}

#[test]
fn an_exact_path_wins_then_the_longest_prefix() {
    let mock = TestMock::new();
    let fail = |status| Faults {
        fail_first: 100,
        fail_status: status,
        ..Faults::default()
    };
    mock.set_faults("/hooks/*", fail(500));
    mock.set_faults("/hooks/ops/*", fail(502));
    mock.set_faults("/hooks/ops/exact", fail(503));
    let status = |path: &str| mock.send("POST", path, &[], "{}").status.as_u16();
    assert_eq!(status("/hooks/ops/exact"), 503);
    assert_eq!(status("/hooks/ops/other"), 502);
    assert_eq!(status("/hooks/else"), 500);
    assert_eq!(status("/hooksx"), 200);
}

#[test]
fn prefix_phases_count_every_path_under_the_prefix() {
    let mock = TestMock::new();
    mock.set_faults(
        "/hooks/*",
        Faults {
            fail_first: 2,
            ..Faults::default()
        },
    );
    let statuses: Vec<u16> = ["/hooks/a", "/hooks/b", "/hooks/a"]
        .iter()
        .map(|p| mock.send("POST", p, &[], "{}").status.as_u16())
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
    let stats = mock.stats();
    assert_eq!(stats.path("/hooks/a").requests, 2);
    assert_eq!(stats.path("/hooks/a").failed, 1);
    assert_eq!(stats.path("/hooks/b").failed, 1);
}

#[test]
fn faults_apply_in_phases_and_receipts_deduplicate_by_key() {
    let mock = TestMock::new();
    mock.set_faults(
        "/h",
        Faults {
            rate_limit_first: 1,
            fail_first: 1,
            drop_first: 1,
            ..Faults::default()
        },
    );
    let key = [("idempotency-key", "k1")];
    let kinds: Vec<String> = (0..5)
        .map(|_| {
            let answer = mock.send("POST", "/h", &key, "{}");
            match (answer.status.as_u16(), answer.hang_ms) {
                (200, Some(_)) => "drop".to_owned(),
                (200, None) if answer.body["duplicate"] == true => "dup".to_owned(),
                (200, None) => "new".to_owned(),
                (status, _) => status.to_string(),
            }
        })
        .collect();
    assert_eq!(kinds, ["429", "503", "drop", "dup", "dup"]);
    // Faults set later count from that moment.
    mock.set_faults(
        "/h",
        Faults {
            fail_first: 1,
            ..Faults::default()
        },
    );
    assert_eq!(mock.send("POST", "/h", &key, "{}").status.as_u16(), 503);
    assert_eq!(mock.send("POST", "/h", &key, "{}").body["duplicate"], true);
    let stats = mock.stats().path("/h");
    assert_eq!(
        (
            stats.requests,
            stats.receipts,
            stats.distinct,
            stats.duplicates
        ),
        (7, 4, 1, 3)
    );
}

#[test]
fn forms_and_dates_decode() {
    assert_eq!(
        parse_form("a=1&b=x%20y+z&c"),
        [("a", "1"), ("b", "x y z"), ("c", "")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(parse_form("t=100%"), [("t".to_owned(), "100%".to_owned())]);
    assert_eq!(civil_utc(0), (1970, 1, 1, 0, 0, 0, 0));
    assert_eq!(civil_utc(1_709_210_096_789), (2024, 2, 29, 12, 34, 56, 789));
}

#[tokio::test]
async fn a_drop_stores_the_message_then_leaves_the_request_unanswered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut file = FaultsFile::default();
    file.paths.insert(
        "/slack/api/*".to_owned(),
        Faults {
            drop_first: 1,
            drop_hang_ms: 60_000,
            ..Faults::default()
        },
    );
    let mock = start(listener, file).unwrap();
    // Plain HTTP to the mock: the mock's tests do not take herald's client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let post = || {
        client
            .post(mock.url("/slack/api/chat.postMessage"))
            .bearer_auth("xoxb-test")
            .header("content-type", "application/json")
            .body(r##"{"channel": "#ops", "text": "P1"}"##)
            .send()
    };
    let dropped = post().await;
    assert!(dropped.unwrap_err().is_timeout());
    let answered = post().await.unwrap().bytes().await.unwrap();
    let answered: serde_json::Value = serde_json::from_slice(&answered).unwrap();
    assert_eq!(answered["ok"], true);

    let stats = client
        .get(mock.url("/_mock/stats"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let stats: MockStats = serde_json::from_slice(&stats).unwrap();
    assert_eq!(stats.slack.channels["ops"].messages, 2);
    let path = stats.path("/slack/api/chat.postMessage");
    assert_eq!((path.requests, path.dropped), (2, 1));
    let refused = client
        .put(mock.url("/_mock/faults"))
        .body(r#"{"path": "/hooks/a", "faults": {"slack_error": "internal_error"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    mock.stop().await;
}
