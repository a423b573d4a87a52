//! The console served by herald at `/`: the page and its assets over plain
//! HTTP with their security headers, and `GET /v1/whoami` for each kind of
//! token.

use herald::config::{ApiToken, Config, Scope};
use herald::server::RunningServer;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{start_mock, temp_dir, webhook};

fn http() -> reqwest::Client {
    herald::connector::http_client_builder().build().unwrap()
}

fn token(name: &str, scopes: &[Scope]) -> ApiToken {
    ApiToken {
        name: name.to_owned(),
        sha256: Sha256::digest(name.as_bytes()).into(),
        scopes: scopes.to_vec(),
    }
}

async fn server_with_tokens(
    database: &std::path::Path,
    tokens: Vec<ApiToken>,
) -> (RunningServer, herald::mock::RunningMock) {
    let mock = start_mock(&[]).await;
    let config = Config {
        database: database.to_path_buf(),
        destinations: vec![webhook(&mock, "a")],
        tokens,
        ..Config::default()
    };
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    (server, mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_a_strict_content_security_policy() {
    let dir = temp_dir();
    let (server, _mock) = server_with_tokens(
        &dir.path().join("herald.db"),
        vec![token("ops", &[Scope::Read])],
    )
    .await;
    // The page needs no token: it asks for one, then sends it to the API.
    let page = http()
        .get(format!("http://{}/", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(page.headers().get("set-cookie").is_none());
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="console/app.js" defer></script>"#));
    for (path, content_type, needle) in [
        ("/console/app.js", "text/javascript", "v1/events"),
        ("/console/app.css", "text/css", ".chip"),
        ("/console/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let response = http()
            .get(format!("http://{}{path}", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}"
        );
        assert!(response.headers().contains_key("content-security-policy"));
        assert!(response.text().await.unwrap().contains(needle), "{path}");
    }
    let missing = http()
        .get(format!("http://{}/console/../Cargo.toml", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing = http()
        .get(format!("http://{}/console/nope.js", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found");
    server.stop().await;
}

async fn whoami(server: &RunningServer, bearer: Option<&str>) -> (u16, Value) {
    let mut request = http().get(format!("http://{}/v1/whoami", server.addr));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_token_and_its_scopes() {
    let dir = temp_dir();
    let (server, _mock) = server_with_tokens(
        &dir.path().join("herald.db"),
        vec![
            token("oncall", &[Scope::Send, Scope::Read, Scope::Operate]),
            token("viewer", &[Scope::Read]),
            token("nothing", &[]),
        ],
    )
    .await;
    let (status, me) = whoami(&server, Some("oncall")).await;
    assert_eq!(status, 200);
    assert_eq!(me["name"], "oncall");
    assert_eq!(me["scopes"], serde_json::json!(["send", "read", "operate"]));
    assert_eq!(me["tokens_required"], true);
    let (_, me) = whoami(&server, Some("viewer")).await;
    assert_eq!(me["scopes"], serde_json::json!(["read"]));
    let (_, me) = whoami(&server, Some("nothing")).await;
    assert_eq!(
        (me["name"].as_str(), me["scopes"].as_array().unwrap().len()),
        (Some("nothing"), 0)
    );
    let (status, me) = whoami(&server, None).await;
    assert_eq!(status, 200);
    assert_eq!(me["scopes"], serde_json::json!([]));
    let (status, me) = whoami(&server, Some("forged")).await;
    assert_eq!(status, 401);
    assert_eq!(me["error"]["code"], "unauthorized");
    server.stop().await;

    // Without tokens configured, anyone may do anything, and is told so.
    let dir = temp_dir();
    let (server, _mock) = server_with_tokens(&dir.path().join("herald.db"), Vec::new()).await;
    let (status, me) = whoami(&server, None).await;
    assert_eq!(status, 200);
    assert_eq!(me["scopes"], serde_json::json!(["send", "read", "operate"]));
    assert_eq!(me["tokens_required"], false);
    server.stop().await;
}
