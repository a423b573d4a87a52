//! Google Chat's API mode against `herald mock`: a real service-account
//! key (made by openssl), the JWT bearer grant checked by the mock's token
//! endpoint (signature against the registered public key), the API's
//! create, read-back and edit. A lost answer ends in one message; a thread
//! lands in order under faults with its first message edited; a 429 pauses
//! Google Chat alone; an expiring token is renewed before it expires, a
//! refused one replaced.

use std::path::Path;
use std::time::Duration;

use herald::api::wire::{Broadcast, Delivery, SendRequest};
use herald::config::{Destination, Target};
use herald::demo::mock_destination;
use herald::domain::RetryPolicy;
use herald::kinds::google_chat::auth::ServiceAccount;
use herald::kinds::google_chat::config::GoogleChatMode;
use herald::kinds::google_chat::mock::{GoogleChatSpaceStats, SERVICE_ACCOUNTS_PATH, TOKEN_PATH};
use herald::mock::{Faults, RunningMock};
use serde_json::json;

use crate::support::*;

/// A service account's key made by openssl in `dir`: the JSON key file
/// (its `token_uri` at the mock) and the public key's PEM.
fn make_key_file(dir: &Path, mock: &RunningMock, email: &str) -> (String, String) {
    let stem = email.split('@').next().unwrap();
    let key = format!("{stem}.pem");
    let public = format!("{stem}.pub.pem");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &key,
        ],
    );
    openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
    let file = json!({
        "type": "service_account",
        "project_id": "herald-test",
        "private_key_id": format!("{stem}-key-1"),
        "private_key": std::fs::read_to_string(dir.join(&key)).unwrap(),
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": mock.url(TOKEN_PATH),
    });
    (
        file.to_string(),
        std::fs::read_to_string(dir.join(&public)).unwrap(),
    )
}

/// Tells the mock (Google's side) the account's public key and how long
/// its tokens live.
async fn register(
    mock: &RunningMock,
    email: &str,
    public_pem: &str,
    expires_in_secs: u64,
    valid_secs: u64,
) {
    let answer = herald::connector::http_client_builder()
        .build()
        .unwrap()
        .put(mock.url(&format!("{SERVICE_ACCOUNTS_PATH}{email}")))
        .json(&json!({
            "public_key_pem": public_pem,
            "expires_in_secs": expires_in_secs,
            "valid_secs": valid_secs,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
}

fn space_of(name: &str) -> String {
    format!("SPACE{}", name.replace('-', ""))
}

fn create_path(name: &str) -> String {
    format!("/google-chat/v1/spaces/{}/messages", space_of(name))
}

/// A Google Chat destination in API mode at the mock, its space named
/// after it, with quick retries.
fn app_destination(mock: &RunningMock, name: &str, key_file: &str) -> Destination {
    Destination {
        name: name.to_owned(),
        target: Target::GoogleChat {
            mode: GoogleChatMode::App {
                api_url: mock.url("/google-chat/").parse().unwrap(),
                space: format!("spaces/{}", space_of(name)),
                account: ServiceAccount::from_key_file(key_file).unwrap(),
            },
            rendering: Default::default(),
        },
        timeout_ms: 1_000,
        concurrency: 4,
        policy: RetryPolicy {
            attempts_max: 8,
            base_ms: 200,
            cap_ms: 2_000,
            deadline_ms: None,
        },
        isolation: Default::default(),
    }
}

fn space(mock: &RunningMock, name: &str) -> GoogleChatSpaceStats {
    mock.stats()
        .google_chat
        .spaces
        .get(&space_of(name))
        .cloned()
        .unwrap_or_default()
}

fn attempts(delivery: &Delivery) -> Vec<(&str, &str)> {
    delivery
        .attempts
        .iter()
        .map(|a| (a.kind.as_str(), a.outcome.as_str()))
        .collect()
}

async fn send_and_wait(client: &herald::client::Client, request: &SendRequest) -> Broadcast {
    let accepted = client.send(request).await.unwrap();
    wait_final(client, &accepted.id, Duration::from_secs(30)).await
}

const EMAIL: &str = "herald-alerts@herald-test.iam.gserviceaccount.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_first_answer_is_read_back_and_ends_in_one_message() {
    let name = "chat-app";
    let drop_first = Faults {
        drop_first: 1,
        drop_hang_ms: 5_000,
        ..Faults::default()
    };
    let mock = start_mock(&[(create_path(name).as_str(), drop_first)]).await;
    let dir = temp_dir();
    let (key_file, public_pem) = make_key_file(dir.path(), &mock, EMAIL);
    register(&mock, EMAIL, &public_pem, 3_599, 3_599).await;
    let destination = app_destination(&mock, name, &key_file);
    let server = start_server(&dir.path().join("herald.db"), vec![destination]).await;
    let client = client(&server);
    let done = send_and_wait(&client, &request("INC-61: payments failing", &[name])).await;
    assert_eq!(done.status, "converged", "{done:#?}");
    let d = &done.deliveries[0];
    // The read-back found the message by its client-set ID: not re-sent.
    assert_eq!(
        attempts(d),
        [("send", "ambiguous"), ("verify", "found")],
        "{d:#?}"
    );
    assert!(!d.possible_duplicate);
    assert!(
        d.remote_ref
            .as_deref()
            .is_some_and(|r| r.starts_with(&format!("spaces/{}/messages/", space_of(name)))),
        "{d:#?}"
    );
    let s = space(&mock, name);
    assert_eq!((s.messages, s.reads), (1, 1), "{s:#?}");
    assert!(s.texts[0].contains("INC-61: payments failing"), "{s:#?}");
    let stats = mock.stats().google_chat;
    assert_eq!(stats.signatures_checked, stats.tokens_issued, "{stats:#?}");
    assert!(
        stats.tokens_issued >= 1 && stats.unsigned_assertions == 0,
        "{stats:#?}"
    );
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_lands_in_order_under_faults_and_the_resolve_edits_the_first_message() {
    let name = "chat-thread";
    let lost = Faults {
        drop_first: 1,
        drop_hang_ms: 5_000,
        ..Faults::default()
    };
    // The first read-back fails, and so does the resolve's first edit.
    let failing = Faults {
        fail_first: 2,
        fail_status: 503,
        ..Faults::default()
    };
    let messages = format!("{}/*", create_path(name));
    let mock = start_mock(&[
        (create_path(name).as_str(), lost),
        (messages.as_str(), failing),
    ])
    .await;
    let dir = temp_dir();
    let (key_file, public_pem) = make_key_file(dir.path(), &mock, EMAIL);
    register(&mock, EMAIL, &public_pem, 3_599, 3_599).await;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![app_destination(&mock, name, &key_file)],
    )
    .await;
    let client = client(&server);
    let titles = [
        ("INC-62: search is slow", false),
        ("INC-62: index rebuilt", false),
        ("INC-62: search recovered", true),
    ];
    let mut ids = Vec::new();
    for (title, resolved) in titles {
        let request = SendRequest {
            title: title.to_owned(),
            body: Some(format!("{title}: details")),
            severity: Some("P1".into()),
            thread: Some("INC-62".into()),
            resolved,
            destinations: vec![name.to_owned()],
            ..SendRequest::default()
        };
        ids.push(client.send(&request).await.unwrap().id);
    }
    let mut done = Vec::new();
    for id in &ids {
        let broadcast = wait_final(&client, id, Duration::from_secs(60)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
        done.push(broadcast);
    }
    for (earlier, later) in done.iter().zip(done.iter().skip(1)) {
        let confirmed_at = &earlier.deliveries[0].attempts.last().unwrap().finished_at;
        let started_at = &later.deliveries[0].attempts[0].started_at;
        assert!(started_at >= confirmed_at, "out of order: {done:#?}");
    }
    let s = space(&mock, name);
    assert_eq!(s.threads, 1, "one Chat thread: {s:#?}");
    assert_eq!(
        s.messages_per_thread_key
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [3],
        "{s:#?}"
    );
    assert!(
        s.duplicates_per_thread_key.is_empty() && s.duplicated_texts.is_empty(),
        "{s:#?}"
    );
    for (i, (title, _)) in titles.iter().enumerate() {
        assert!(
            s.texts[i].contains(title.split(": ").nth(1).unwrap()),
            "{i}: {s:#?}"
        );
    }
    // The first message now says the incident is resolved; the others are
    // as sent.
    assert_eq!(s.edits, 1, "{s:#?}");
    assert!(
        s.texts_now[0].contains("RESOLVED") && s.texts_now[0].contains("search recovered"),
        "{s:#?}"
    );
    assert_eq!(s.texts_now[1..], s.texts[1..]);
    // The opener's lost answer: the failed read-back re-sent it, and the
    // request ID got the first message back.
    let opener = &done[0].deliveries[0];
    assert_eq!(
        attempts(opener),
        [
            ("send", "ambiguous"),
            ("verify", "unknown"),
            ("send", "success")
        ],
        "{opener:#?}"
    );
    assert!(!opener.possible_duplicate, "{opener:#?}");
    assert_eq!(s.request_id_replays, 1, "{s:#?}");
    let resolve = &done[2].deliveries[0];
    assert_eq!(
        attempts(resolve),
        [("send", "retryable"), ("send", "success")],
        "{resolve:#?}"
    );
    assert!(resolve.attempts[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("marking the first message resolved"));
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_google_chat_alone() {
    let name = "chat-limited";
    let limited = Faults {
        rate_limit_first: 1,
        retry_after_secs: 2,
        ..Faults::default()
    };
    let mock = start_mock(&[(create_path(name).as_str(), limited)]).await;
    let dir = temp_dir();
    let (key_file, public_pem) = make_key_file(dir.path(), &mock, EMAIL);
    register(&mock, EMAIL, &public_pem, 3_599, 3_599).await;
    let destinations = vec![
        app_destination(&mock, name, &key_file),
        mock_destination(&format!("http://{}", mock.addr), "webhook", "status-hook"),
    ];
    let server = start_server(&dir.path().join("herald.db"), destinations).await;
    let client = client(&server);
    let first = client
        .send(&request("INC-63: disk full", &[name, "status-hook"]))
        .await
        .unwrap()
        .id;
    // The second goes once the first is retrying after its 429.
    let retrying = async {
        loop {
            let broadcast = client.status(&first).await.unwrap();
            if broadcast
                .deliveries
                .iter()
                .any(|d| d.destination == name && d.state == "retrying")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), retrying)
        .await
        .expect("the 429 made the delivery retry");
    let second = client
        .send(&request("INC-64: disk full again", &[name, "status-hook"]))
        .await
        .unwrap()
        .id;
    // The webhook has both at once, while Google Chat waits.
    let hook = async {
        while mock.stats().path("/hooks/status-hook").distinct < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(1_500), hook)
        .await
        .expect("the webhook was not held up by Google Chat's 429");
    for id in [&first, &second] {
        let broadcast = wait_final(&client, id, Duration::from_secs(30)).await;
        assert_eq!(broadcast.status, "converged", "{broadcast:#?}");
    }
    let arrivals = mock.stats().path(&create_path(name)).arrivals_ms;
    assert!(
        arrivals[1..].iter().all(|at| at - arrivals[0] >= 1_900),
        "a create went within the 2 s retryDelay: {arrivals:?}"
    );
    assert_eq!(space(&mock, name).messages, 2);
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_and_a_refused_one_replaced() {
    let mock = start_mock(&[]).await;
    let dir = temp_dir();
    // Tokens said to live 2 s: renewed before they expire, never refused.
    let short = "short-lived@herald-test.iam.gserviceaccount.com";
    let (short_key, short_public) = make_key_file(dir.path(), &mock, short);
    register(&mock, short, &short_public, 2, 2).await;
    // Tokens said to live an hour but honoured 1 s (revoked): refused
    // once, then replaced.
    let revoked = "revoked@herald-test.iam.gserviceaccount.com";
    let (revoked_key, revoked_public) = make_key_file(dir.path(), &mock, revoked);
    register(&mock, revoked, &revoked_public, 3_600, 1).await;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![
            app_destination(&mock, "chat-short", &short_key),
            app_destination(&mock, "chat-revoked", &revoked_key),
        ],
    )
    .await;
    let client = client(&server);
    let targets = ["chat-short", "chat-revoked"];
    let first = send_and_wait(&client, &request("INC-65: before", &targets)).await;
    assert_eq!(first.status, "converged", "{first:#?}");
    let issued_before = mock.stats().google_chat.tokens_issued;
    assert_eq!(issued_before, 2, "one token per account");
    // Past both the short token's renewal point and the revoked one's
    // honoured second.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let second = send_and_wait(&client, &request("INC-66: after", &targets)).await;
    assert_eq!(second.status, "converged", "{second:#?}");
    for d in &second.deliveries {
        assert_eq!(attempts(d), [("send", "success")], "{d:#?}");
    }
    let stats = mock.stats().google_chat;
    assert_eq!(
        stats.tokens_issued, 4,
        "each account asked again: {stats:#?}"
    );
    // Only the revoked token was ever refused, once.
    assert_eq!(stats.bearer_refusals, 1, "{stats:#?}");
    assert_eq!(stats.signatures_checked, 4, "{stats:#?}");
    for name in targets {
        assert_eq!(space(&mock, name).messages, 2, "{name}");
    }
    server.stop().await;
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_signed_by_another_key_is_refused_and_nothing_is_sent() {
    let name = "chat-wrong-key";
    let mock = start_mock(&[]).await;
    let dir = temp_dir();
    let (key_file, _) = make_key_file(dir.path(), &mock, EMAIL);
    // Google holds another key for this account.
    let other = tempfile::tempdir().unwrap();
    let (_, other_public) = make_key_file(other.path(), &mock, EMAIL);
    register(&mock, EMAIL, &other_public, 3_599, 3_599).await;
    let server = start_server(
        &dir.path().join("herald.db"),
        vec![app_destination(&mock, name, &key_file)],
    )
    .await;
    let client = client(&server);
    let done = send_and_wait(&client, &request("INC-67: wrong key", &[name])).await;
    let d = &done.deliveries[0];
    assert_eq!(d.state, "failed", "{d:#?}");
    let error = d.last_error.as_deref().unwrap_or("");
    assert!(
        error.contains("invalid_grant") && error.contains("Invalid JWT Signature"),
        "{error}"
    );
    let stats = mock.stats().google_chat;
    assert_eq!(
        (stats.token_refusals, stats.tokens_issued),
        (1, 0),
        "{stats:#?}"
    );
    assert!(stats.spaces.is_empty(), "{stats:#?}");
    server.stop().await;
    mock.stop().await;
}

#[test]
fn the_api_mode_is_configured_from_a_key_file_and_a_bad_one_is_named() {
    let dir = temp_dir();
    let mock_url = "http://127.0.0.1:9/google-chat/oauth2/token";
    openssl(
        dir.path(),
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "k.pem",
        ],
    );
    let pem = std::fs::read_to_string(dir.path().join("k.pem")).unwrap();
    let good = dir.path().join("good.json");
    let file = json!({"type": "service_account", "client_email": EMAIL, "private_key": pem, "token_uri": mock_url});
    std::fs::write(&good, file.to_string()).unwrap();
    let bad = dir.path().join("bad.json");
    let broken = json!({"type": "service_account", "client_email": EMAIL, "private_key": pem.replace("PRIVATE KEY", "RSA PRIVATE KEY")});
    std::fs::write(&bad, broken.to_string()).unwrap();
    let parse = |table: &str| {
        let source = format!("[destinations.chat]\nkind = \"google-chat\"\n{table}");
        herald::config::Config::parse("herald.toml", &source, |_| None).map_err(|e| e.to_string())
    };
    // The API mode takes a template and mentions, as every kind does.
    let config = parse(&format!(
        "credentials_file = {:?}\nspace = \"AAAA1234\"\nmentions = {{ P1 = \"<users/all>\" }}\n",
        good.display()
    ))
    .unwrap();
    let rendering = config.destinations[0].target.rendering().unwrap();
    assert!(!rendering.mentions.is_empty());
    let Target::GoogleChat {
        mode:
            GoogleChatMode::App {
                api_url,
                space,
                account,
            },
        ..
    } = &config.destinations[0].target
    else {
        panic!("the API mode: {:?}", config.destinations[0].target);
    };
    assert_eq!(
        (
            api_url.as_str(),
            space.as_str(),
            account.client_email.as_str(),
            account.token_uri.as_str()
        ),
        (
            "https://chat.googleapis.com/",
            "spaces/AAAA1234",
            EMAIL,
            mock_url
        )
    );
    assert!(
        !format!("{account:?}").contains("BEGIN"),
        "the key is never shown"
    );
    let err = parse(&format!(
        "credentials_file = {:?}\nspace = \"spaces/AAAA1234\"\n",
        bad.display()
    ))
    .unwrap_err();
    assert!(
        err.contains("destinations.chat.credentials_file")
            && err.contains("private_key: a PEM RSA PRIVATE KEY, not a PRIVATE KEY"),
        "{err}"
    );
    let err = parse(&format!("credentials_file = {:?}\n", good.display())).unwrap_err();
    assert!(
        err.contains("destinations.chat.space: kind google-chat needs space"),
        "{err}"
    );
    let err = parse(&format!(
        "credentials_file = {:?}\nspace = \"spaces/a/b\"\n",
        good.display()
    ))
    .unwrap_err();
    assert!(
        err.contains("destinations.chat.space: \"spaces/a/b\" is not a space's name"),
        "{err}"
    );
    let err = parse(
        "url = \"https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t\"\nspace = \"A\"\n",
    )
    .unwrap_err();
    assert!(
        err.contains("destinations.chat.space: only with credentials_file"),
        "{err}"
    );
    let err = parse("credentials_file = \"/nonexistent/key.json\"\nspace = \"A\"\n").unwrap_err();
    assert!(
        err.contains("destinations.chat.credentials_file: cannot read /nonexistent/key.json"),
        "{err}"
    );
}
