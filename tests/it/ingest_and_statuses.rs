//! Alertmanager ingest takes whole groups (its own body limit), and every
//! status a route answers is one the OpenAPI document declares for it,
//! and every declared status is answered by some request here.

use std::collections::BTreeSet;
use std::path::Path;

use herald::config::{AlertmanagerRoutes, ApiToken, Config, Scope};
use herald::mock::RunningMock;
use herald::server::RunningServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{start_mock, temp_dir, webhook};

fn http() -> reqwest::Client {
    herald::connector::http_client_builder().build().unwrap()
}

/// An Alertmanager notification of `count` alerts, each about 1 KB as
/// real ones are (labels, annotations, a generator URL).
fn group(count: usize, group_key: &str) -> String {
    let alerts: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": {
                    "alertname": "HighLatency", "severity": "warning", "service": "checkout",
                    "instance": format!("checkout-{i}.prod.example.internal:9090"),
                    "pod": format!("checkout-7d9f8b6c5-{i:05}"), "namespace": "shop-production",
                    "cluster": "eu-west-1-prod", "job": "kubernetes-pods", "team": "payments",
                },
                "annotations": {
                    "summary": format!("p99 latency above 2s on checkout-{i}"),
                    "description": "The 99th percentile of request latency has been above 2 seconds for 10 minutes. \
                        Check the database connection pool and recent deploys; see the runbook.",
                    "runbook_url": "https://runbooks.example.internal/checkout/high-latency",
                },
                "startsAt": "2026-11-27T23:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example.internal:9090/graph?g0.expr=histogram_quantile%280.99%2C+sum+by+%28le%29+%28rate%28http_request_duration_seconds_bucket%7Bservice%3D%22checkout%22%7D%5B5m%5D%29%29%29+%3E+2&g0.tab=1",
                "fingerprint": format!("{:016x}", i + 1),
            })
        })
        .collect();
    json!({
        "version": "4", "groupKey": group_key, "truncatedAlerts": 0, "status": "firing",
        "receiver": "oncall", "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency", "severity": "warning"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    })
    .to_string()
}

const TOKEN_ALL: &str = "token-all";
const TOKEN_SEND: &str = "token-send-only";
const TOKEN_READ: &str = "token-read-only";

fn token(name: &str, scopes: &[Scope]) -> ApiToken {
    ApiToken {
        name: name.to_owned(),
        sha256: Sha256::digest(name.as_bytes()).into(),
        scopes: scopes.to_vec(),
    }
}

/// A server on `database` whose destination `a` is a mock webhook; the
/// mock is returned so it lives as long as the server.
async fn server(database: &Path, edit: impl FnOnce(&mut Config)) -> (RunningServer, RunningMock) {
    let mock = start_mock(&[]).await;
    let mut config = Config {
        database: database.to_path_buf(),
        destinations: vec![webhook(&mock, "a")],
        alertmanager: Some(AlertmanagerRoutes {
            destinations: vec!["a".into()],
            ..Default::default()
        }),
        tokens: vec![
            token(TOKEN_ALL, &[Scope::Send, Scope::Read, Scope::Operate]),
            token(TOKEN_SEND, &[Scope::Send]),
            token(TOKEN_READ, &[Scope::Read]),
        ],
        metrics_require_token: true,
        ..Config::default()
    };
    edit(&mut config);
    let server = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    (server, mock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_groups_of_1000_alerts_are_taken_while_other_routes_keep_their_limit() {
    let dir = temp_dir();
    let (server, _mock) = server(&dir.path().join("herald.db"), |_| {}).await;
    let url = format!("http://{}/v1/ingest/alertmanager", server.addr);
    for count in [100, 1_000] {
        let body = group(
            count,
            &format!("{{}}:{{alertname=\"HighLatency\",n=\"{count}\"}}"),
        );
        assert!(
            body.len() > 64 * 1024,
            "{count} alerts are {} bytes",
            body.len()
        );
        let response = http()
            .post(&url)
            .bearer_auth(TOKEN_ALL)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{count} alerts");
        let broadcast: Value = response.json().await.unwrap();
        let title = broadcast["title"].as_str().unwrap();
        assert!(
            title.starts_with(&format!("[FIRING:{count}] HighLatency")),
            "{title}"
        );
        let text = broadcast["body"].as_str().unwrap();
        assert!(text.contains("more alerts not shown"), "{text}");
    }
    // The ingest limit is the ingest route's only.
    let response = http()
        .post(format!("http://{}/v1/broadcasts", server.addr))
        .bearer_auth(TOKEN_ALL)
        .body(format!(
            r#"{{"title":"t","body":"{}","destinations":["a"]}}"#,
            "x".repeat(70_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alertmanager_notification_without_alerts_is_refused_naming_the_field() {
    let dir = temp_dir();
    let (server, _mock) = server(&dir.path().join("herald.db"), |_| {}).await;
    let response = http()
        .post(format!("http://{}/v1/ingest/alertmanager", server.addr))
        .bearer_auth(TOKEN_ALL)
        .body(group(0, "{}:{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["field"], "alerts");
    let list: Value = http()
        .get(format!("http://{}/v1/broadcasts", server.addr))
        .bearer_auth(TOKEN_ALL)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["broadcasts"], json!([]), "nothing was created");
    server.stop().await;
}

/// One request of the table: the route as the document names it, and
/// the status it got.
struct Answered {
    method: &'static str,
    route: &'static str,
    status: u16,
}

/// Sends one request and records the status it got under its route.
#[allow(clippy::too_many_arguments)] // one row of the table, spelled out
async fn ask(
    out: &mut Vec<Answered>,
    server: &RunningServer,
    method: &'static str,
    route: &'static str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
    key: Option<&str>,
) -> u16 {
    let url = format!("http://{}{path}", server.addr);
    let mut request = match method {
        "get" => http().get(url),
        _ => http().post(url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    // The status only: an event stream's body never ends.
    let status = request.send().await.unwrap().status().as_u16();
    out.push(Answered {
        method,
        route,
        status,
    });
    status
}

/// Deletes a broadcast's rows behind herald's back, keeping the ingest
/// key that points at it (a damaged database): a replay of that key
/// cannot be answered.
fn lose_broadcast(database: &Path, id: &str) {
    let conn = rusqlite::Connection::open(database).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE;
         DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE broadcast_id = '{id}');
         DELETE FROM deliveries WHERE broadcast_id = '{id}';
         DELETE FROM broadcasts WHERE id = '{id}';
         UPDATE ingest_keys SET response = NULL WHERE broadcast_id = '{id}';
         COMMIT;"
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_a_route_answers_is_declared_in_the_openapi_document() {
    let dir = temp_dir();
    let main_db = dir.path().join("main.db");
    let (main, _mocks) = server(&main_db, |_| {}).await;
    // A node whose PostgreSQL is lost (its connections cut, new ones
    // refused) answers 503 wherever it needs the database.
    let Some(schema) = crate::support::PgSchema::create().await else {
        return;
    };
    let proxy = DatabaseProxy::start().await;
    let (slow, _mock) = server(Path::new(&proxy.url(&schema.url)), |_| {}).await;
    proxy.cut();
    let (no_alertmanager, _mock_too) =
        server(&dir.path().join("plain.db"), |c| c.alertmanager = None).await;
    // Alertmanager on, but no destinations for its receivers and no routes.
    let (unrouted, _mock_three) = server(&dir.path().join("unrouted.db"), |c| {
        c.alertmanager = Some(AlertmanagerRoutes::default())
    })
    .await;
    let out = &mut Vec::new();
    let send = |title: &str| format!(r#"{{"title":"{title}","destinations":["a"]}}"#);
    let huge = || format!(r#"{{"title":"t","body":"{}"}}"#, "x".repeat(70_000));
    let all = Some(TOKEN_ALL);

    // POST /v1/broadcasts
    let r = "/v1/broadcasts";
    ask(out, &main, "post", r, r, all, Some(send("one")), None).await;
    ask(out, &main, "post", r, r, all, Some("{}".into()), None).await;
    // No destinations named, no route, no default route: 422 no_route.
    let unnamed = Some(r#"{"title":"where to?"}"#.to_owned());
    ask(out, &main, "post", r, r, all, unnamed, None).await;
    ask(out, &main, "post", r, r, None, Some(send("x")), None).await;
    ask(
        out,
        &main,
        "post",
        r,
        r,
        Some(TOKEN_READ),
        Some(send("x")),
        None,
    )
    .await;
    ask(out, &main, "post", r, r, all, Some(huge()), None).await;
    ask(out, &main, "post", r, r, all, Some(send("k1")), Some("k1")).await;
    ask(
        out,
        &main,
        "post",
        r,
        r,
        all,
        Some(send("other")),
        Some("k1"),
    )
    .await;
    ask(out, &slow, "post", r, r, all, Some(send("x")), None).await;
    // 409: two requests with one key while the database is locked, so
    // neither can finish before the other arrives; the lock goes as soon
    // as one of them is answered.
    {
        let locker = rusqlite::Connection::open(&main_db).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let keyed = || {
            http()
                .post(format!("http://{}/v1/broadcasts", main.addr))
                .bearer_auth(TOKEN_ALL)
                .header("Idempotency-Key", "k2")
                .body(send("k2"))
                .send()
        };
        let (mut one, mut two) = (std::pin::pin!(keyed()), std::pin::pin!(keyed()));
        let (early, late) = tokio::select! {
            answer = &mut one => {
                drop(locker);
                (answer, two.await)
            }
            answer = &mut two => {
                drop(locker);
                (answer, one.await)
            }
        };
        for answer in [early, late] {
            out.push(Answered {
                method: "post",
                route: r,
                status: answer.unwrap().status().as_u16(),
            });
        }
    }
    // 500: the broadcast a key points at is gone.
    let created: Value = http()
        .post(format!("http://{}/v1/broadcasts", main.addr))
        .bearer_auth(TOKEN_ALL)
        .header("Idempotency-Key", "k3")
        .body(send("k3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    lose_broadcast(&main_db, created["id"].as_str().unwrap());
    ask(out, &main, "post", r, r, all, Some(send("k3")), Some("k3")).await;

    let first: Value = http()
        .post(format!("http://{}/v1/broadcasts", main.addr))
        .bearer_auth(TOKEN_ALL)
        .body(send("read me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = first["id"].as_str().unwrap().to_owned();

    // GET /v1/broadcasts
    ask(out, &main, "get", r, r, all, None, None).await;
    ask(
        out,
        &main,
        "get",
        r,
        "/v1/broadcasts?limit=0",
        all,
        None,
        None,
    )
    .await;
    ask(out, &main, "get", r, r, None, None, None).await;
    ask(out, &main, "get", r, r, Some(TOKEN_SEND), None, None).await;
    ask(out, &slow, "get", r, r, all, None, None).await;

    // One broadcast, its events, retry and cancel.
    let one = format!("/v1/broadcasts/{id}");
    let bad = "/v1/broadcasts/%FF".to_owned();
    let unknown = "/v1/broadcasts/01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned();
    for (method, route, suffix, scope_less) in [
        ("get", "/v1/broadcasts/{id}", "", TOKEN_SEND),
        ("get", "/v1/broadcasts/{id}/events", "/events", TOKEN_SEND),
        ("get", "/v1/broadcasts/{id}/preview", "/preview", TOKEN_SEND),
        ("post", "/v1/broadcasts/{id}/retry", "/retry", TOKEN_READ),
        ("post", "/v1/broadcasts/{id}/cancel", "/cancel", TOKEN_READ),
    ] {
        let path = |base: &str| format!("{base}{suffix}");
        ask(out, &main, method, route, &path(&one), all, None, None).await;
        ask(out, &main, method, route, &path(&bad), all, None, None).await;
        ask(out, &main, method, route, &path(&one), None, None, None).await;
        ask(
            out,
            &main,
            method,
            route,
            &path(&one),
            Some(scope_less),
            None,
            None,
        )
        .await;
        ask(out, &main, method, route, &path(&unknown), all, None, None).await;
        ask(out, &slow, method, route, &path(&one), all, None, None).await;
        if method == "post" {
            ask(
                out,
                &main,
                method,
                route,
                &path(&one),
                all,
                Some(huge()),
                None,
            )
            .await;
            let zzz = Some(r#"{"destinations":["zzz"]}"#.to_owned());
            ask(out, &main, method, route, &path(&one), all, zzz, None).await;
        }
    }

    // Preview: the send body, nothing stored.
    let r = "/v1/preview";
    ask(out, &main, "post", r, r, all, Some(send("p")), None).await;
    ask(out, &main, "post", r, r, all, Some("{}".into()), None).await;
    ask(out, &main, "post", r, r, None, Some(send("p")), None).await;
    ask(
        out,
        &main,
        "post",
        r,
        r,
        Some(TOKEN_READ),
        Some(send("p")),
        None,
    )
    .await;
    ask(out, &main, "post", r, r, all, Some(huge()), None).await;
    let unnamed = Some(r#"{"title":"where to?"}"#.to_owned());
    ask(out, &main, "post", r, r, all, unnamed, None).await;

    // Event stream of everything, destinations.
    let r = "/v1/events";
    ask(out, &main, "get", r, r, all, None, None).await;
    ask(out, &main, "get", r, r, None, None, None).await;
    ask(out, &main, "get", r, r, Some(TOKEN_SEND), None, None).await;
    let r = "/v1/destinations";
    ask(out, &main, "get", r, r, all, None, None).await;
    ask(out, &main, "get", r, r, None, None, None).await;
    ask(out, &main, "get", r, r, Some(TOKEN_SEND), None, None).await;
    ask(out, &slow, "get", r, r, all, None, None).await;

    // Alertmanager ingest.
    let r = "/v1/ingest/alertmanager";
    let small = || Some(group(1, "{}:{alertname=\"HighLatency\"}"));
    ask(out, &main, "post", r, r, all, small(), None).await;
    ask(out, &main, "post", r, r, all, Some(group(0, "{}:{}")), None).await;
    ask(out, &main, "post", r, r, None, small(), None).await;
    ask(out, &main, "post", r, r, Some(TOKEN_READ), small(), None).await;
    ask(out, &no_alertmanager, "post", r, r, all, small(), None).await;
    ask(out, &unrouted, "post", r, r, all, small(), None).await;
    ask(
        out,
        &main,
        "post",
        r,
        r,
        all,
        Some(group(3_000, "{}:{}")),
        None,
    )
    .await;
    ask(out, &slow, "post", r, r, all, small(), None).await;
    let lost = Some(group(2, "{}:{alertname=\"Lost\"}"));
    let created: Value = http()
        .post(format!("http://{}{r}", main.addr))
        .bearer_auth(TOKEN_ALL)
        .body(lost.clone().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    lose_broadcast(&main_db, created["id"].as_str().unwrap());
    ask(out, &main, "post", r, r, all, lost, None).await;

    // Operators' pauses.
    let r = "/v1/destinations/{name}/pause";
    let pause = |reason: &str| Some(format!(r#"{{"for":"1h","reason":"{reason}"}}"#));
    let (a, nope) = ("/v1/destinations/a/pause", "/v1/destinations/nope/pause");
    ask(out, &main, "post", r, a, all, pause("maintenance"), None).await;
    ask(out, &main, "post", r, a, all, pause(""), None).await;
    ask(out, &main, "post", r, a, None, pause("x"), None).await;
    ask(out, &main, "post", r, a, Some(TOKEN_READ), pause("x"), None).await;
    ask(out, &main, "post", r, nope, all, pause("x"), None).await;
    ask(out, &slow, "post", r, a, all, pause("x"), None).await;
    let r = "/v1/destinations/{name}/resume";
    let (a, nope) = ("/v1/destinations/a/resume", "/v1/destinations/nope/resume");
    ask(out, &main, "post", r, a, all, None, None).await;
    ask(out, &main, "post", r, a, None, None, None).await;
    ask(out, &main, "post", r, a, Some(TOKEN_READ), None, None).await;
    ask(out, &main, "post", r, nope, all, None, None).await;
    ask(out, &slow, "post", r, a, all, None, None).await;

    // Reloads: a server started without a file to read again answers 409;
    // one with a file answers 200, or 422 once the file is invalid.
    let r = "/v1/config/reload";
    ask(out, &main, "post", r, r, all, None, None).await;
    ask(out, &main, "post", r, r, None, None, None).await;
    ask(out, &main, "post", r, r, Some(TOKEN_READ), None, None).await;
    let file = dir.path().join("reloadable.toml");
    let reload_mock = start_mock(&[]).await;
    std::fs::write(
        &file,
        format!(
            "[server]\ndatabase = {:?}\n[destinations.a]\nkind = \"webhook\"\nurl = \"http://{}/hook\"\n",
            dir.path().join("reloadable.db"),
            reload_mock.addr
        ),
    )
    .unwrap();
    let config = Config::load(&file, |_| None).unwrap();
    let reloadable = herald::server::start(
        config,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    reloadable.enable_reload(herald::api::reload::ConfigSource {
        path: file.clone(),
        overrides: Box::new(|_| {}),
    });
    ask(out, &reloadable, "post", r, r, None, None, None).await;
    std::fs::write(&file, "[destinations.a]\nkind = \"nope\"\n").unwrap();
    ask(out, &reloadable, "post", r, r, None, None, None).await;
    reloadable.stop().await;

    // Operations.
    ask(out, &main, "get", "/healthz", "/healthz", None, None, None).await;
    ask(out, &main, "get", "/readyz", "/readyz", None, None, None).await;
    ask(out, &slow, "get", "/readyz", "/readyz", None, None, None).await;
    let r = "/metrics";
    ask(out, &main, "get", r, r, all, None, None).await;
    ask(out, &main, "get", r, r, None, None, None).await;
    ask(out, &main, "get", r, r, Some(TOKEN_SEND), None, None).await;
    ask(out, &slow, "get", r, r, all, None, None).await;
    let r = "/openapi.json";
    ask(out, &main, "get", r, r, None, None, None).await;

    // Who the caller is, and the console it is for.
    let r = "/v1/whoami";
    ask(out, &main, "get", r, r, Some(TOKEN_READ), None, None).await;
    ask(out, &main, "get", r, r, None, None, None).await;
    ask(out, &main, "get", r, r, Some("not-a-token"), None, None).await;
    ask(out, &main, "get", "/", "/", None, None, None).await;
    let r = "/console/{file}";
    ask(out, &main, "get", r, "/console/app.js", None, None, None).await;
    ask(out, &main, "get", r, "/console/nope.js", None, None, None).await;

    let document: Value = http()
        .get(format!("http://{}/openapi.json", main.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut declared = BTreeSet::new();
    for (route, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for status in operation["responses"].as_object().unwrap().keys() {
                declared.insert((
                    method.clone(),
                    route.clone(),
                    status.parse::<u16>().unwrap(),
                ));
            }
        }
    }
    let answered: BTreeSet<(String, String, u16)> = out
        .iter()
        .map(|a| (a.method.to_owned(), a.route.to_owned(), a.status))
        .collect();
    let undeclared: Vec<_> = answered.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "answered but not in /openapi.json: {undeclared:?}"
    );
    let unprovoked: Vec<_> = declared.difference(&answered).collect();
    assert!(
        unprovoked.is_empty(),
        "declared in /openapi.json but no request here gets it: {unprovoked:?}"
    );
    for server in [main, slow, no_alertmanager] {
        server.stop().await;
    }
}

/// A TCP relay to the test PostgreSQL that can be cut: every relayed
/// connection closes and new ones are refused, as when the database host
/// goes away.
struct DatabaseProxy {
    addr: std::net::SocketAddr,
    target: String,
    cut: tokio::sync::watch::Sender<bool>,
}

impl DatabaseProxy {
    async fn start() -> DatabaseProxy {
        let base = crate::support::postgres_base_url();
        let target = base
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("postgres://user@host:port/db")
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        let relay_to = target.clone();
        tokio::spawn(async move {
            let mut stop = watch.clone();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.wait_for(|cut| *cut) => return,
                };
                let Ok((mut client, _)) = accepted else {
                    return;
                };
                let (relay_to, mut stop) = (relay_to.clone(), watch.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&relay_to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        DatabaseProxy { addr, target, cut }
    }

    /// `url` with this relay in place of the database's address.
    fn url(&self, url: &str) -> String {
        url.replacen(&self.target, &self.addr.to_string(), 1)
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}
