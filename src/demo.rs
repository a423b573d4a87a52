//! `herald demo`: the mock and the server in one process, on free ports,
//! with a temporary database. One incident thread (open, update, resolve)
//! goes to a destination of every kind the mock plays (`mock_kinds`), all
//! played by the mock with faults scripted; the convergence is printed live, then
//! what each destination holds.

use std::io::Write;

use base64::Engine;
use rand::Rng;
use tokio::net::TcpListener;

use crate::api::wire::SendRequest;
use crate::client::Client;
use crate::config::{Config, Destination, Secret, Target, WebhookSecret};
use crate::domain::RetryPolicy;
use crate::mock::{Faults, FaultsFile, MockStats};

/// One destination kind's part in the demo and in tests at the mock, from
/// the `demo` module in its folder (`crate::kinds::<kind>::demo`).
pub struct DemoKind {
    /// Its `kind = "..."`.
    pub kind: &'static str,
    /// Where a destination of this kind named `name` sends at the mock.
    pub send_path: fn(&str) -> String,
    /// Its target at the mock at `mock_base`, for a destination named `name`.
    pub target: fn(&str, &str) -> Target,
    /// The demo's destination of this kind: its name, what goes wrong, and
    /// the faults at its send path.
    pub name: &'static str,
    pub what: &'static str,
    pub faults: Faults,
    /// What the destination named `name` holds at the mock, in words, and
    /// whether it is exactly the thread once (open, update, resolve).
    pub landed: fn(&MockStats, &str) -> (String, bool),
}

macro_rules! demo_kinds {
    (@push $kinds:ident, none) => {};
    (@push $kinds:ident, $demo:ident) => {
        $kinds.push(crate::kinds::$demo::demo::demo_kind());
    };
    ($($variant:ident {
        field: $field:ident,
        connector: $($connector:ident)::+,
        emulation: $($emulation:ident)::+,
        stats: $($stats:ident)::+,
        demo: $demo:ident,
        config: $config:ident $(,)?
    }),* $(,)?) => {
        /// The kinds the demo plays, in the list's order (the generic
        /// webhook last).
        // Entries with `none` push nothing, so this cannot be a `vec![]`.
        #[allow(clippy::vec_init_then_push)]
        pub fn demo_kinds() -> Vec<DemoKind> {
            let mut kinds = Vec::new();
            $(demo_kinds!(@push kinds, $demo);)*
            kinds
        }
    };
}
crate::kinds::with_kinds!(demo_kinds);

/// The destination kinds `herald mock` plays.
pub fn mock_kinds() -> Vec<&'static str> {
    demo_kinds().iter().map(|k| k.kind).collect()
}

/// The demo's part of `kind`; the generic webhook's (last in the list) for
/// a kind it does not know.
fn demo_kind(kind: &str) -> DemoKind {
    let mut kinds = demo_kinds();
    match kinds.iter().position(|k| k.kind == kind) {
        Some(i) => kinds.swap_remove(i),
        None => kinds.pop().expect("the list has kinds"),
    }
}

/// `path` at the mock at `mock_base`.
pub fn mock_url(mock_base: &str, path: &str) -> reqwest::Url {
    reqwest::Url::parse(&format!("{mock_base}{path}")).expect("valid URL")
}

/// The Jira project of a mock Jira destination: the last word of its name
/// in capitals (`jira-ops` files into `OPS`).
pub fn mock_jira_project(name: &str) -> String {
    let word = name.rsplit(['-', '_']).next().unwrap_or(name);
    word.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// The Discord webhook id of a mock Discord destination (digits, stable).
pub fn mock_discord_webhook_id(name: &str) -> String {
    let sum: u64 = name.bytes().map(u64::from).sum();
    (1_000_000 + sum).to_string()
}

/// The channel id of a mock Discord destination in the bot mode (digits,
/// stable).
pub fn mock_discord_channel_id(name: &str) -> String {
    let sum: u64 = name.bytes().map(u64::from).sum();
    (2_000_000 + sum).to_string()
}

/// Where a Discord destination in the bot mode posts at the mock (and reads
/// the channel back), for scripting its faults.
pub fn mock_discord_bot_send_path(name: &str) -> String {
    format!(
        "/discord/api/v10/channels/{}/messages",
        mock_discord_channel_id(name)
    )
}

/// A Discord destination in the bot mode at the mock: the channel
/// [`mock_discord_channel_id`] with a bot token, otherwise as
/// [`mock_destination`].
pub fn mock_discord_bot_destination(mock_base: &str, name: &str) -> Destination {
    let mut destination = mock_destination(mock_base, "discord", name);
    destination.target = Target::DiscordBot {
        api_url: reqwest::Url::parse(&format!("{mock_base}/discord/api/v10/")).expect("valid URL"),
        channel_id: mock_discord_channel_id(name),
        token: Secret::new("herald-mock-bot-token"),
        rendering: Default::default(),
    };
    destination
}

/// Where a destination of `kind` named `name` sends at the mock, for
/// scripting its faults: Slack's `chat.postMessage`, Jira's issue create,
/// the Teams workflow, PagerDuty's enqueue, the Discord webhook, the hook.
pub fn mock_send_path(kind: &str, name: &str) -> String {
    (demo_kind(kind).send_path)(name)
}

/// A destination of `kind` at the mock at `mock_base`, with short timeouts
/// and backoff so runs take seconds. A Slack destination posts to the
/// channel named `name`; a Jira one to project [`mock_jira_project`]; a
/// Discord one is a forum webhook; an email one sends to the mailbox
/// `NAME@example.com` at the SMTP server on the port after `mock_base`'s
/// (as [`crate::mock::bind_pair`] and `herald mock` place it).
pub fn mock_destination(mock_base: &str, kind: &str, name: &str) -> Destination {
    let target = (demo_kind(kind).target)(mock_base, name);
    Destination {
        name: name.to_owned(),
        target,
        timeout_ms: 1_000,
        concurrency: 4,
        policy: RetryPolicy {
            attempts_max: 8,
            base_ms: 250,
            cap_ms: 5_000,
            deadline_ms: None,
        },
        isolation: Default::default(),
    }
}

/// The demo's destinations: (kind, name, what goes wrong, faults at its
/// send path).
pub fn demo_destinations() -> Vec<(&'static str, &'static str, &'static str, Faults)> {
    demo_kinds()
        .into_iter()
        .map(|k| (k.kind, k.name, k.what, k.faults))
        .collect()
}

/// A fresh random Standard Webhooks secret, as text (`whsec_...`).
pub fn random_secret_text() -> String {
    let key: [u8; 32] = rand::rng().random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// What the demo does once the incident has converged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterIncident {
    /// Stop herald and the mock, and exit.
    Stop,
    /// Keep herald (and its console) serving until Ctrl-C or SIGTERM, so a
    /// person can look at the incident in the browser.
    ServeUntilInterrupted,
}

/// Runs the demo, printing to `out`. Returns whether every destination
/// ended confirmed with exactly one message and no duplicated message.
pub async fn run(out: &mut impl Write, after: AfterIncident) -> anyhow::Result<bool> {
    let workdir = std::env::temp_dir().join(format!(
        "herald-demo-{}-{}",
        std::process::id(),
        crate::clock::now_ms()
    ));
    std::fs::create_dir_all(&workdir)?;
    let result = run_in(&workdir, out, after).await;
    let _ = std::fs::remove_dir_all(&workdir);
    result
}

async fn run_in(
    workdir: &std::path::Path,
    out: &mut impl Write,
    after: AfterIncident,
) -> anyhow::Result<bool> {
    let secret_text = random_secret_text();
    let secret = WebhookSecret::parse(&secret_text).expect("generated secret is valid");
    let mut faults_file = FaultsFile::default();
    for (kind, name, _, faults) in demo_destinations() {
        let faults = match kind {
            "webhook" => Faults {
                secret: Some(secret_text.clone()),
                ..faults
            },
            _ => faults,
        };
        faults_file.paths.insert(mock_send_path(kind, name), faults);
    }
    // The SMTP server on the port after the HTTP one: where the email
    // destination (`mock_destination`) looks for it.
    let (http, smtp) = crate::mock::bind_pair(std::net::Ipv4Addr::LOCALHOST.into()).await?;
    let mock = crate::mock::start_with_smtp(http, smtp, faults_file)?;
    let mock_base = format!("http://{}", mock.addr);
    let destinations = demo_destinations()
        .into_iter()
        .map(|(kind, name, _, _)| {
            let mut destination = mock_destination(&mock_base, kind, name);
            if let Target::Webhook { secret: s, .. } = &mut destination.target {
                *s = Some(secret.clone());
            }
            if let (Some(rendering), Some(mention)) =
                (destination.target.rendering_mut(), demo_mention(kind))
            {
                rendering.mentions = crate::template::Mentions::parse([("P1", mention)])
                    .expect("the demo's mentions are valid");
            }
            destination
        })
        .collect();
    let config = Config {
        database: workdir.join("herald.db"),
        destinations,
        ..Config::default()
    };
    let server = crate::server::start(config, TcpListener::bind("127.0.0.1:0").await?).await?;
    writeln!(
        out,
        "herald demo: mock {} at {mock_base} (SMTP at {}), herald at http://{}",
        mock_kinds().join(", "),
        mock.smtp_addr,
        server.addr
    )?;
    writeln!(
        out,
        "database: {} (temporary)",
        workdir.join("herald.db").display()
    )?;
    writeln!(
        out,
        "console: http://{}/#board?thread=INC-42 (the incident board, live, in a browser)",
        server.addr
    )?;
    for (kind, name, what, _) in demo_destinations() {
        writeln!(out, "  {name:<16} {kind:<10} {what}")?;
    }
    let client = Client::new(&format!("http://{}", server.addr))?;
    let names: Vec<String> = demo_destinations()
        .iter()
        .map(|(_, name, _, _)| (*name).to_owned())
        .collect();
    let thread = [
        (
            "open",
            "INC-42: checkout database down",
            "Primary checkout database is not accepting connections. Orders are failing.",
            false,
        ),
        (
            "update",
            "INC-42: failing over to the replica",
            "Replica promoted; checkout is recovering.",
            false,
        ),
        (
            "resolve",
            "INC-42: checkout database recovered",
            "Orders are flowing again. Post-incident review tomorrow.",
            true,
        ),
    ];
    let mut accepted = Vec::new();
    for (label, title, body, resolved) in thread {
        let request = SendRequest {
            title: title.into(),
            body: Some(body.into()),
            severity: Some("P1".into()),
            thread: Some("INC-42".into()),
            resolved,
            destinations: names.clone(),
            ..demo_details()
        };
        let broadcast = client.send(&request).await?;
        writeln!(
            out,
            "{label:<7} accepted as broadcast {} ({} destinations)",
            broadcast.id,
            broadcast.deliveries.len()
        )?;
        accepted.push((label, broadcast.id));
    }
    writeln!(out)?;
    // The three are followed at once: each destination takes them in order.
    let out = std::cell::RefCell::new(out);
    let watches = accepted.iter().map(|(label, id)| {
        let out = &out;
        let client = &client;
        async move {
            client
                .watch(id, |elapsed, delivery| {
                    let _ = writeln!(
                        out.borrow_mut(),
                        "[{:>6.2}s] {label:<7} {:<16} {}",
                        elapsed.as_secs_f64(),
                        format!("{}:", delivery.destination),
                        delivery.describe()
                    );
                })
                .await
        }
    });
    let finals = futures_util::future::join_all(watches).await;
    let out = out.into_inner();
    let mut converged = true;
    writeln!(out)?;
    for ((label, _), result) in accepted.iter().zip(finals) {
        let broadcast = result?;
        writeln!(
            out,
            "{label:<7} broadcast {}: {}",
            broadcast.id, broadcast.status
        )?;
        converged &= broadcast.status == "converged";
    }
    let shown = shown_on_the_opener(&server.addr.to_string(), &accepted[0].1).await?;
    let (landed, as_expected) = landed(&mock.stats());
    writeln!(out, "\n{:<16} what the destination has now", "destination")?;
    for (name, line) in landed {
        writeln!(out, "{name:<16} {line}")?;
    }
    writeln!(
        out,
        "\n{}",
        if converged && as_expected {
            "every destination has the thread once, in order: nothing lost, nothing duplicated"
        } else {
            "NOT converged as expected: see above"
        }
    )?;
    writeln!(
        out,
        "the opener showed the runbook link, the service and environment fields and the P1 mention on {} (herald preview shows any message so)",
        shown.join(", ")
    )?;
    let as_expected = as_expected
        && crate::demo_escalation::second_act(workdir, &mut *out, mock_destination, mock_send_path)
            .await?;
    if after == AfterIncident::ServeUntilInterrupted {
        writeln!(
            out,
            "\nherald keeps serving: the console is at http://{}/#board?thread=INC-42; Ctrl-C stops it",
            server.addr
        )?;
        out.flush()?;
        interrupted().await?;
    }
    server.stop().await;
    mock.stop().await;
    Ok(converged && as_expected)
}

/// Who the demo's destination of `kind` mentions for a P1, where its kind
/// can show a mention (Jira has none).
fn demo_mention(kind: &str) -> Option<&'static str> {
    match kind {
        "slack" => Some("<!subteam^S0ONCALL1>"),
        "discord" => Some("<@&1187041234567890123>"),
        _ => Some("@checkout-oncall"),
    }
}

/// The incident's details: its runbook link, and the service and
/// environment as fields and labels.
fn demo_details() -> SendRequest {
    SendRequest {
        labels: [("service", "checkout"), ("environment", "production")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        links: vec![crate::domain::Link {
            text: "Runbook".into(),
            url: DEMO_RUNBOOK_URL.into(),
        }],
        fields: vec![
            crate::domain::Field {
                name: "service".into(),
                value: "checkout".into(),
            },
            crate::domain::Field {
                name: "environment".into(),
                value: "production".into(),
            },
        ],
        source: Some("herald demo".into()),
        ..SendRequest::default()
    }
}

const DEMO_RUNBOOK_URL: &str = "https://runbooks.example.com/checkout-database";

/// The destinations whose opener, as sent (`GET /v1/broadcasts/{id}/preview`
/// renders it with the code that sent it), holds the runbook link, the
/// service and environment and the P1 mention.
async fn shown_on_the_opener(addr: &str, id: &str) -> anyhow::Result<Vec<String>> {
    let preview: crate::api::wire::Preview =
        reqwest::get(format!("http://{addr}/v1/broadcasts/{id}/preview"))
            .await?
            .error_for_status()?
            .json()
            .await?;
    let mut shown = Vec::new();
    for destination in preview.destinations {
        // A form body (Zulip, Twilio) is read decoded.
        let body: String = destination
            .requests
            .iter()
            .map(
                |r| match reqwest::Url::parse(&format!("http://form.invalid/?{}", r.body)) {
                    Ok(form) if !r.body.starts_with('{') => {
                        form.query_pairs().map(|(_, v)| v.into_owned()).collect()
                    }
                    _ => r.body.clone(),
                },
            )
            .collect();
        let mention = demo_mention(&destination.kind);
        if body.contains(DEMO_RUNBOOK_URL)
            && body.contains("production")
            && body.contains("checkout")
            && mention.is_some_and(|m| body.contains(m))
        {
            shown.push(destination.name);
        }
    }
    Ok(shown)
}

/// What each demo destination holds at the mock, in words, and whether it
/// is exactly the thread once (open, update, resolve).
fn landed(stats: &MockStats) -> (Vec<(&'static str, String)>, bool) {
    let mut lines = Vec::new();
    let mut ok = true;
    for kind in demo_kinds() {
        let (line, good) = (kind.landed)(stats, kind.name);
        ok &= good;
        lines.push((kind.name, line));
    }
    (lines, ok)
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM: how a person ends a demo that
/// keeps its console open.
pub async fn interrupted() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
