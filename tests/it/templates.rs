//! Templates per destination: the default templates' output, overrides
//! inline and from a file, errors at load with their location, a render
//! that fails one delivery and not its lane, mentions on a thread's first
//! message only, and previews equal to what the destination receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use herald::api::wire::{Preview, SendRequest};
use herald::config::Config;
use herald::domain::{Field, Link};
use serde_json::{json, Value};

use crate::support::*;

/// What a recording receiver got: (path, body) in arrival order.
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A receiver on loopback that records every request's path and exact
/// body, answering as the destination would on success (Matrix's
/// `event_id`, Telegram's `result` message, Zulip's `id`, Twilio's `sid`;
/// Slack's `ok` with a `ts` elsewhere).
async fn start_receiver() -> (String, Received) {
    async fn record(State(received): State<Received>, uri: Uri, body: Bytes) -> axum::Json<Value> {
        let mut list = received.lock().unwrap();
        let path = uri.path().to_owned();
        list.push((path.clone(), body));
        let n = list.len();
        axum::Json(if path.contains("/_matrix/") {
            json!({"event_id": format!("$event{n}:example.org")})
        } else if path.ends_with("/sendMessage") {
            json!({"ok": true, "result": {"message_id": n, "date": 1_764_000_000, "chat": {"id": -100, "type": "supergroup"}}})
        } else if path.ends_with("/api/v1/messages") {
            json!({"result": "success", "msg": "", "id": n})
        } else if path.ends_with("/Messages.json") {
            json!({"sid": format!("SM{n:032}"), "status": "queued"})
        } else {
            json!({"ok": true, "channel": "C1", "ts": format!("1764000000.{n:06}")})
        })
    }
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .fallback(record)
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

fn config(text: &str) -> Config {
    Config::parse("herald.toml", text, |_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(text: &str) -> String {
    Config::parse("herald.toml", text, |_| None)
        .expect_err("the config is refused")
        .to_string()
}

fn rich(title: &str, destinations: &[&str]) -> SendRequest {
    SendRequest {
        title: title.into(),
        body: Some("Errors since 10:02 \"quoted\"\nsecond line <b>".into()),
        severity: Some("P1".into()),
        destinations: destinations.iter().map(|d| (*d).to_owned()).collect(),
        labels: [("service".to_owned(), "checkout".to_owned())].into(),
        links: vec![Link {
            text: "Runbook".into(),
            url: "https://runbooks.example/checkout".into(),
        }],
        fields: vec![Field {
            name: "environment".into(),
            value: "production".into(),
        }],
        source: Some("tests".into()),
        ..SendRequest::default()
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    let answer = reqwest::get(url).await.unwrap();
    assert_eq!(answer.status(), 200, "{url}");
    answer.json().await.unwrap()
}

#[tokio::test]
async fn the_preview_of_a_broadcast_is_what_each_destination_received_byte_for_byte() {
    let (base, received) = start_receiver().await;
    let config = config(&format!(
        r#"
[destinations.chat]
kind = "slack"
url = "{base}/slack/api/"
channel = "C1"
secret = "xoxb-test"
mentions = {{ P1 = "<!subteam^S123>" }}

[destinations.hook]
kind = "webhook"
url = "{base}/hook"

[destinations.forum]
kind = "discord"
url = "{base}/discord/webhooks/1/abc"
forum = true
mentions = {{ P1 = "<@&123456789012345678> on call" }}

[destinations.custom]
kind = "webhook"
url = "{base}/custom"
template = """
{{"incident": {{{{ title|tojson }}}}, "sev": {{{{ severity|tojson }}}},
 "links": [{{% for l in links %}}{{{{ l.url|tojson }}}}{{{{ "," if not loop.last else "" }}}}{{% endfor %}}]}}
"""
"#
    ));
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), config.destinations).await;
    let client = client(&server);
    let sent = client
        .send(&rich(
            "Checkout \"5xx\" \\ above 10%",
            &["chat", "hook", "forum", "custom"],
        ))
        .await
        .unwrap();
    let done = wait_final(&client, &sent.id, Duration::from_secs(20)).await;
    assert!(
        done.deliveries.iter().all(|d| d.state == "confirmed"),
        "{done:#?}"
    );
    let preview: Preview = get_json(&format!(
        "http://{}/v1/broadcasts/{}/preview",
        server.addr, sent.id
    ))
    .await;
    let got_all = received.lock().unwrap().clone();
    for (name, path) in [
        ("chat", "/slack/api/chat.postMessage"),
        ("hook", "/hook"),
        ("forum", "/discord/webhooks/1/abc"),
        ("custom", "/custom"),
    ] {
        let shown = preview
            .destinations
            .iter()
            .find(|d| d.name == name)
            .unwrap();
        assert_eq!(shown.requests.len(), 1, "{shown:?}");
        let got: Vec<&Bytes> = got_all
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(got.len(), 1, "{path}");
        assert_eq!(
            shown.requests[0].body.as_bytes(),
            got[0].as_ref(),
            "{name}: the preview is not the body sent"
        );
    }
    // The bodies show the rich message: the custom shape, Slack's mention,
    // link button and fields, the webhook's details.
    let body = |name: &str| -> Value {
        let shown = preview
            .destinations
            .iter()
            .find(|d| d.name == name)
            .unwrap();
        serde_json::from_str(&shown.requests[0].body).unwrap()
    };
    assert_eq!(
        body("custom"),
        json!({"incident": "Checkout \"5xx\" \\ above 10%", "sev": "P1", "links": ["https://runbooks.example/checkout"]})
    );
    let slack = body("chat").to_string();
    for part in [
        "<!subteam^S123>",
        "https://runbooks.example/checkout",
        "*environment*\\nproduction",
    ] {
        assert!(slack.contains(part), "{part} not in {slack}");
    }
    assert_eq!(
        body("chat")["metadata"]["event_payload"]["idempotency_key"],
        done.deliveries
            .iter()
            .find(|d| d.destination == "chat")
            .unwrap()
            .idempotency_key
    );
    assert_eq!(body("forum")["content"], "<@&123456789012345678> on call");
    assert_eq!(
        body("forum")["allowed_mentions"],
        json!({"parse": [], "roles": ["123456789012345678"], "users": []}),
        "only the mentioned role may be pinged"
    );
    assert_eq!(
        body("forum")["embeds"][0]["url"],
        "https://runbooks.example/checkout"
    );
    assert_eq!(body("hook")["data"]["links"][0]["text"], "Runbook");
    assert_eq!(body("hook")["data"]["labels"]["service"], "checkout");

    // POST /v1/preview renders a message not sent, and sends nothing.
    let dry = client
        .preview(&rich("Dry run", &["chat", "custom"]))
        .await
        .unwrap();
    let custom = dry
        .destinations
        .iter()
        .find(|d| d.name == "custom")
        .unwrap();
    assert!(custom.requests[0].body.contains("Dry run"), "{custom:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        got_all.len(),
        "a preview sent nothing"
    );
    server.stop().await;
}

#[test]
fn a_template_that_does_not_work_is_refused_at_load_with_file_key_and_line() {
    // Line 5 of the file is the template's line 1; its line 3 is wrong.
    let text = r#"
[destinations.chat]
kind = "webhook"
url = "http://127.0.0.1:9/x"
template = """
{"a": {{ title|tojson }},
 "b": {{ severity|tojson }},
 "c": {{ title|nosuchfilter }}}
"""
"#;
    let error = config_error(text);
    assert!(
        error.starts_with("herald.toml:8: destinations.chat.template: template line 3: "),
        "{error}"
    );
    assert!(error.contains("nosuchfilter"), "{error}");

    // A misspelt name, output that is not JSON: both named.
    for (template, reason) in [
        (r#"{"a": {{ titel|tojson }}}"#, "undefined"),
        (r#"{"a": {{ title }}}"#, "not JSON"),
    ] {
        let text = format!(
            "[destinations.chat]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\ntemplate = '{template}'\n"
        );
        let error = config_error(&text);
        assert!(
            error.starts_with("herald.toml:4: destinations.chat.template: "),
            "{error}"
        );
        assert!(error.contains(reason), "{error}");
    }

    // A template file: its path and line, relative to the config file.
    let dir = temp_dir();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(
        dir.path().join("templates/hook.j2"),
        "{\n\"a\": {{ title|tojson }\n}",
    )
    .unwrap();
    let config_path = dir.path().join("herald.toml");
    std::fs::write(
        &config_path,
        "[destinations.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\ntemplate_file = \"templates/hook.j2\"\n",
    )
    .unwrap();
    let error = Config::load(&config_path, |_| None)
        .unwrap_err()
        .to_string();
    let file = dir.path().join("templates/hook.j2");
    assert!(
        error.contains(&format!(
            "herald.toml:4: destinations.hook.template_file: {}:2: ",
            file.display()
        )),
        "{error}"
    );
    std::fs::write(
        dir.path().join("templates/hook.j2"),
        "{\"a\": {{ title|tojson }}}",
    )
    .unwrap();
    let loaded = Config::load(&config_path, |_| None).unwrap();
    assert_eq!(loaded.destinations.len(), 1);

    // A missing file, both keys, bad mentions.
    for (keys, expected) in [
        (
            "template_file = \"nope.j2\"",
            "destinations.hook.template_file: cannot read",
        ),
        (
            "template = '{}'\ntemplate_file = \"templates/hook.j2\"",
            "destinations.hook.template_file: set template or template_file, not both",
        ),
        (
            "mentions = { P9 = \"@here\" }",
            "destinations.hook.mentions.P9: not a severity",
        ),
        (
            "mentions = { P1 = \"\" }",
            "destinations.hook.mentions.P1: must be 1 to",
        ),
    ] {
        std::fs::write(
            &config_path,
            format!(
                "[destinations.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n{keys}\n"
            ),
        )
        .unwrap();
        let error = Config::load(&config_path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
}

#[tokio::test]
async fn a_render_that_fails_at_delivery_fails_that_delivery_alone_and_the_lane_goes_on() {
    let (base, received) = start_receiver().await;
    // The sample message has no "boom" in its title: the template loads.
    let config = config(&format!(
        r#"
[destinations.picky]
kind = "webhook"
url = "{base}/picky"
template = """
{{% if "boom" in title %}}{{{{ no_such_name }}}}{{% endif %}}{{"t": {{{{ title|tojson }}}}}}
"""

[destinations.plain]
kind = "webhook"
url = "{base}/plain"
"#
    ));
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), config.destinations).await;
    let client = client(&server);
    let boom = client
        .send(&request("boom goes the template", &["picky", "plain"]))
        .await
        .unwrap();
    let boom = wait_final(&client, &boom.id, Duration::from_secs(20)).await;
    let picky = boom
        .deliveries
        .iter()
        .find(|d| d.destination == "picky")
        .unwrap();
    assert_eq!(picky.state, "failed", "{picky:#?}");
    assert_eq!(picky.attempts.len(), 1, "not retried: {picky:#?}");
    let error = picky.attempts[0].error.as_deref().unwrap();
    assert!(
        error.contains("template line 1") && error.contains("undefined"),
        "{error}"
    );
    let plain = boom
        .deliveries
        .iter()
        .find(|d| d.destination == "plain")
        .unwrap();
    assert_eq!(plain.state, "confirmed");

    // The lane goes on: the next message to the same destination lands.
    let next = client
        .send(&request("all quiet", &["picky"]))
        .await
        .unwrap();
    let next = wait_final(&client, &next.id, Duration::from_secs(20)).await;
    assert_eq!(next.deliveries[0].state, "confirmed", "{next:#?}");
    let paths: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(
        paths.iter().filter(|p| *p == "/picky").count(),
        1,
        "{paths:?}"
    );

    // The preview says so too, without sending.
    let preview = client
        .preview(&request("boom again", &["picky"]))
        .await
        .unwrap();
    let error = preview.destinations[0].error.as_deref().unwrap();
    assert!(error.contains("template line 1"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn mentions_go_on_the_first_message_of_a_thread_only() {
    let (base, received) = start_receiver().await;
    let config = config(&format!(
        r#"
[destinations.chat]
kind = "slack"
url = "{base}/slack/api/"
channel = "C1"
secret = "xoxb-test"
mentions = {{ P1 = "<!subteam^S123>", P2 = "<!here>" }}

[destinations.hook]
kind = "webhook"
url = "{base}/hook"
mentions = {{ P1 = "@oncall" }}
"#
    ));
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), config.destinations).await;
    let client = client(&server);
    let mut message = request("Checkout down", &["chat", "hook"]);
    message.thread = Some("INC-7".into());
    for step in ["opener", "update", "resolve"] {
        message.title = format!("Checkout {step}");
        message.resolved = step == "resolve";
        let sent = client.send(&message).await.unwrap();
        let done = wait_final(&client, &sent.id, Duration::from_secs(20)).await;
        assert!(
            done.deliveries.iter().all(|d| d.state == "confirmed"),
            "{done:#?}"
        );
    }
    // A P3 outside a thread: no mention is set for P3.
    let mut p3 = request("Low disk", &["chat"]);
    p3.severity = Some("P3".into());
    let sent = client.send(&p3).await.unwrap();
    wait_final(&client, &sent.id, Duration::from_secs(20)).await;

    let received = received.lock().unwrap().clone();
    let posts: Vec<String> = received
        .iter()
        .filter(|(p, _)| p.ends_with("chat.postMessage"))
        .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(posts.len(), 4, "{posts:#?}");
    assert!(posts[0].contains("<!subteam^S123>"), "opener: {}", posts[0]);
    for post in &posts[1..] {
        assert!(
            !post.contains("<!subteam^S123>") && !post.contains("<!here>"),
            "{post}"
        );
    }
    let hooks: Vec<Value> = received
        .iter()
        .filter(|(p, _)| p == "/hook")
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(hooks.len(), 3);
    assert_eq!(hooks[0]["data"]["mention"], "@oncall");
    assert!(hooks[1]["data"].get("mention").is_none() && hooks[2]["data"].get("mention").is_none());
    server.stop().await;
}

#[test]
fn every_default_template_renders_the_rich_sample_in_every_role() {
    use herald::kinds::{discord, jira, pagerduty, slack, teams, webhook};
    use herald::template::{context, sample_deliveries, Mentions};
    let defaults = [
        ("slack", slack::connector::default_template()),
        ("teams", teams::connector::default_template()),
        ("jira", jira::connector::default_template()),
        ("pagerduty", pagerduty::connector::default_template()),
        ("discord", discord::connector::default_template()),
        ("webhook", webhook::connector::default_template()),
    ];
    let mentions = Mentions::parse([("P1", "<@&1187041234567890123> \"on call\"")]).unwrap();
    for (kind, template) in defaults {
        for delivery in sample_deliveries() {
            let mention = mentions.for_delivery(&delivery);
            let rendered = template
                .render_json(&context(&delivery, mention))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert!(rendered.is_object(), "{kind}");
            let text = rendered.to_string();
            // Every default shows the runbook link and the fields.
            assert!(
                text.contains("https://runbooks.example.com/checkout"),
                "{kind}: {text}"
            );
            assert!(text.contains("production"), "{kind}: {text}");
            assert_eq!(
                text.contains("on call"),
                mention.is_some(),
                "{kind}: the mention on the first message only: {text}"
            );
        }
    }
}

/// Matrix, SMS, Telegram and Zulip take templates and mentions: their
/// previews are what they received, byte for byte; the defaults show the
/// rich message (mention, fields, links) each in its service's markup; an
/// override changes what is sent, never the protocol fields; a template
/// that fails at delivery fails that delivery alone.
#[tokio::test]
async fn the_new_kinds_render_templates_and_their_previews_are_what_they_received() {
    let (base, received) = start_receiver().await;
    let config = config(&format!(
        r#"
[destinations.room]
kind = "matrix"
url = "{base}/"
room_id = "!ops:example.org"
secret = "syt_token"
mentions = {{ P1 = "@room" }}

[destinations.pager]
kind = "sms"
url = "{base}/"
account_sid = "AC0123456789abcdef0123456789abcdef"
secret = "twilio-token"
from = "+14155550199"
to = ["+447700900123", "+447700900124"]
text_chars_max = 40
mentions = {{ P1 = "@oncall" }}

[destinations.tg]
kind = "telegram"
url = "{base}/"
chat_id = "-1001234567890"
message_thread_id = 7
secret = "123456:ABC-def"
mentions = {{ P1 = "@oncall_team" }}

[destinations.tg-custom]
kind = "telegram"
url = "{base}/custom/"
chat_id = "@herald_alerts"
secret = "123456:ABC-def"
template = """
{{"text": {{{{ ("<b>" ~ title|html ~ "</b> " ~ severity)|tojson }}}}, "parse_mode": "HTML", "chat_id": 1, "reply_parameters": {{"message_id": 5}}}}
"""

[destinations.zulip]
kind = "zulip"
url = "{base}/"
email = "herald-bot@example.zulipchat.com"
secret = "zulip-key"
stream = "incidents"
mentions = {{ P1 = "@*oncall*" }}

[destinations.zulip-picky]
kind = "zulip"
url = "{base}/picky/"
email = "herald-bot@example.zulipchat.com"
secret = "zulip-key"
stream = "incidents"
template = """
{{% if "boom" in title %}}{{{{ no_such_name }}}}{{% endif %}}{{"content": {{{{ title|tojson }}}}}}
"""
"#
    ));
    let dir = temp_dir();
    let server = start_server(&dir.path().join("herald.db"), config.destinations).await;
    let client = client(&server);
    let names = ["room", "pager", "tg", "tg-custom", "zulip"];
    let mut message = rich("Checkout <5xx> & \"errors\"", &names);
    message.summary = Some("Checkout 5xx at 12%".into());
    let sent = client.send(&message).await.unwrap();
    let done = wait_final(&client, &sent.id, Duration::from_secs(20)).await;
    assert!(
        done.deliveries.iter().all(|d| d.state == "confirmed"),
        "{done:#?}"
    );
    let preview: Preview = get_json(&format!(
        "http://{}/v1/broadcasts/{}/preview",
        server.addr, sent.id
    ))
    .await;
    let got_all = received.lock().unwrap().clone();
    let key = |name: &str| {
        done.deliveries
            .iter()
            .find(|d| d.destination == name)
            .unwrap()
            .idempotency_key
            .clone()
    };
    for (name, path) in [
        (
            "room",
            format!(
                "/_matrix/client/v3/rooms/!ops:example.org/send/m.room.message/{}",
                key("room")
            ),
        ),
        (
            "pager",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json".to_owned(),
        ),
        ("tg", "/bot123456:ABC-def/sendMessage".to_owned()),
        (
            "tg-custom",
            "/custom/bot123456:ABC-def/sendMessage".to_owned(),
        ),
        ("zulip", "/api/v1/messages".to_owned()),
    ] {
        let shown = preview
            .destinations
            .iter()
            .find(|d| d.name == name)
            .unwrap();
        let got: Vec<&Bytes> = got_all
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, b)| b)
            .collect();
        assert!(!got.is_empty(), "{name}: nothing at {path}: {got_all:?}");
        assert_eq!(shown.requests.len(), got.len(), "{name}: {shown:?}");
        for (request, body) in shown.requests.iter().zip(got) {
            assert_eq!(
                request.body.as_bytes(),
                body.as_ref(),
                "{name}: the preview is not the body sent"
            );
        }
    }
    let body = |name: &str| shown_body(&preview, name);

    // Matrix: the mention and the details in the plain and HTML text.
    let room: Value = serde_json::from_str(&body("room")).unwrap();
    assert_eq!(room["msgtype"], "m.text");
    let plain = room["body"].as_str().unwrap();
    assert!(plain.starts_with("@room\n[P1] Checkout <5xx>"), "{plain}");
    assert!(
        plain.contains("environment: production")
            && plain.contains("Runbook: https://runbooks.example/checkout"),
        "{plain}"
    );
    let html = room["formatted_body"].as_str().unwrap();
    assert!(
        html.contains("<h4>[P1] Checkout &lt;5xx&gt; &amp; &quot;errors&quot;</h4>"),
        "{html}"
    );
    assert!(
        html.contains("<a href=\"https://runbooks.example/checkout\">Runbook</a>"),
        "{html}"
    );
    assert!(
        html.contains("<li><strong>environment</strong>: production</li>"),
        "{html}"
    );

    // SMS: the summary, cut at 40, to each recipient; no mention.
    let pager = body("pager");
    let form = form_pairs(&pager);
    let text = &form.iter().find(|(k, _)| k == "Body").unwrap().1;
    assert_eq!(text, "[P1] Checkout 5xx at 12%");
    assert_eq!(
        preview
            .destinations
            .iter()
            .find(|d| d.name == "pager")
            .unwrap()
            .requests
            .len(),
        2
    );

    // Telegram: HTML with every <, > and & of the message escaped, the
    // fields bold, the links named, the topic and no link previews.
    let tg: Value = serde_json::from_str(&body("tg")).unwrap();
    assert_eq!(tg["parse_mode"], "HTML");
    let text = tg["text"].as_str().unwrap();
    assert!(
        text.starts_with("@oncall_team\n<b>[P1] Checkout &lt;5xx&gt; &amp; &quot;errors&quot;</b>"),
        "{text}"
    );
    assert!(text.contains("<b>environment</b>: production"), "{text}");
    assert!(
        text.contains("<a href=\"https://runbooks.example/checkout\">Runbook</a>"),
        "{text}"
    );
    assert!(text.contains("second line &lt;b&gt;"), "{text}");
    assert_eq!(
        (tg["chat_id"].clone(), tg["message_thread_id"].clone()),
        (json!(-1001234567890_i64), json!(7))
    );
    assert_eq!(tg["link_preview_options"], json!({"is_disabled": true}));
    // The override's text is sent; its chat and reply are not: herald's are.
    let custom: Value = serde_json::from_str(&body("tg-custom")).unwrap();
    assert_eq!(
        custom,
        json!({"text": "<b>Checkout &lt;5xx&gt; &amp; &quot;errors&quot;</b> P1", "parse_mode": "HTML", "chat_id": "@herald_alerts", "link_preview_options": {"is_disabled": true}})
    );

    // Zulip: Markdown with the mention, the fields, the links, and the
    // key's line last (the read-back's needle), the topic the title.
    let zulip = body("zulip");
    let form = form_pairs(&zulip);
    let content = &form.iter().find(|(k, _)| k == "content").unwrap().1;
    assert!(
        content.starts_with("@*oncall*\n**[P1] Checkout <5xx>"),
        "{content}"
    );
    assert!(
        content.contains("- **environment**: production"),
        "{content}"
    );
    assert!(
        content.contains("[Runbook](https://runbooks.example/checkout)"),
        "{content}"
    );
    assert!(
        content.ends_with(&format!("`herald {}`", key("zulip"))),
        "{content}"
    );

    // A template that fails at delivery fails that delivery alone, once;
    // the next message to it lands.
    let boom = client
        .send(&request("boom goes the template", &["zulip-picky", "tg"]))
        .await
        .unwrap();
    let boom = wait_final(&client, &boom.id, Duration::from_secs(20)).await;
    let picky = boom
        .deliveries
        .iter()
        .find(|d| d.destination == "zulip-picky")
        .unwrap();
    assert_eq!(
        (picky.state.as_str(), picky.attempts.len()),
        ("failed", 1),
        "{picky:#?}"
    );
    let error = picky.attempts[0].error.as_deref().unwrap();
    assert!(
        error.contains("template line 1") && error.contains("nothing was sent"),
        "{error}"
    );
    let tg = boom
        .deliveries
        .iter()
        .find(|d| d.destination == "tg")
        .unwrap();
    assert_eq!(tg.state, "confirmed");
    let next = client
        .send(&request("all quiet", &["zulip-picky"]))
        .await
        .unwrap();
    let next = wait_final(&client, &next.id, Duration::from_secs(20)).await;
    assert_eq!(next.deliveries[0].state, "confirmed", "{next:#?}");
    let picky_posts = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/picky/api/v1/messages")
        .count();
    assert_eq!(picky_posts, 1);
    server.stop().await;
}

/// A form body's pairs, decoded.
fn form_pairs(body: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://form.invalid/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// The first request body `preview` shows for `name`.
fn shown_body(preview: &Preview, name: &str) -> String {
    preview
        .destinations
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no {name} in {preview:?}"))
        .requests[0]
        .body
        .clone()
}

#[test]
fn the_new_kinds_refuse_a_broken_template_at_load_with_its_line() {
    for (kind, keys) in [
        ("matrix", "url = \"http://127.0.0.1:9/\"\nroom_id = \"!a:b\"\nsecret = \"t\""),
        ("sms", "url = \"http://127.0.0.1:9/\"\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\nsecret = \"t\"\nfrom = \"+14155550199\"\nto = [\"+447700900123\"]"),
        ("telegram", "url = \"http://127.0.0.1:9/\"\nchat_id = \"-1\"\nsecret = \"1:a\""),
        ("zulip", "url = \"http://127.0.0.1:9/\"\nemail = \"b@example.com\"\nsecret = \"t\"\nstream = \"s\""),
    ] {
        let table = format!("[destinations.d]\nkind = \"{kind}\"\n{keys}\n");
        let accepted = config(&format!("{table}mentions = {{ P1 = \"@here\" }}\ntemplate = '{{\"text\": {{{{ title|tojson }}}}}}'\n"));
        assert_eq!(accepted.destinations.len(), 1, "{kind}");
        let error = config_error(&format!("{table}template = \"\"\"\n{{\n\"a\": {{{{ titel|tojson }}}}}}\n\"\"\"\n"));
        let line = table.lines().count() + 3;
        assert!(
            error.starts_with(&format!("herald.toml:{line}: destinations.d.template: template line 2: ")),
            "{kind}: {error}"
        );
        assert!(error.contains("undefined"), "{kind}: {error}");
    }
}

#[test]
fn the_new_kinds_defaults_show_the_rich_sample_in_every_role() {
    use herald::kinds::{matrix, sms, telegram, zulip};
    use herald::template::{context, sample_deliveries, Mentions};
    let mentions = Mentions::parse([("P1", "@oncall \"team\"")]).unwrap();
    for (kind, template) in [
        ("matrix", matrix::connector::default_template()),
        ("telegram", telegram::connector::default_template()),
        ("zulip", zulip::connector::default_template()),
        ("sms", sms::connector::default_template()),
    ] {
        for delivery in sample_deliveries() {
            let mention = mentions.for_delivery(&delivery);
            let rendered = template
                .render_json(&context(&delivery, mention))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            let text = rendered.to_string();
            if kind == "sms" {
                // A text message: the summary, no mention, no links.
                let tag = if delivery.message.resolved() {
                    "RESOLVED"
                } else {
                    "P1"
                };
                let incident = if delivery.message.thread().is_some() {
                    " INC-1:"
                } else {
                    ""
                };
                assert_eq!(
                    rendered["Body"],
                    format!("[{tag}]{incident} Checkout 5xx at 12%"),
                    "{text}"
                );
                continue;
            }
            assert!(
                text.contains("https://runbooks.example.com/checkout"),
                "{kind}: {text}"
            );
            assert!(text.contains("production"), "{kind}: {text}");
            assert_eq!(
                text.contains("@oncall"),
                mention.is_some(),
                "{kind}: the mention on the first message only: {text}"
            );
        }
    }
}
