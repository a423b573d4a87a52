//! `herald demo`: the mock and the server in one process, on free ports,
//! with a temporary database. One incident thread (open, update, resolve)
//! goes to Slack, Teams, Jira, PagerDuty, Discord and a webhook, all played
//! by the mock with faults scripted; the convergence is printed live, then
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

/// The destination kinds `herald mock` plays.
pub const MOCK_KINDS: [&str; 6] = ["slack", "teams", "jira", "pagerduty", "discord", "webhook"];

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
    };
    destination
}

/// Where a destination of `kind` named `name` sends at the mock, for
/// scripting its faults: Slack's `chat.postMessage`, Jira's issue create,
/// the Teams workflow, PagerDuty's enqueue, the Discord webhook, the hook.
pub fn mock_send_path(kind: &str, name: &str) -> String {
    match kind {
        "slack" => "/slack/api/chat.postMessage".to_owned(),
        "teams" => format!("/teams/{name}"),
        "jira" => "/jira/rest/api/3/issue".to_owned(),
        "pagerduty" => "/pagerduty/v2/enqueue".to_owned(),
        "discord" => format!(
            "/discord/api/webhooks/{}/token-{name}",
            mock_discord_webhook_id(name)
        ),
        _ => format!("/hooks/{name}"),
    }
}

/// A destination of `kind` at the mock at `mock_base`, with short timeouts
/// and backoff so runs take seconds. A Slack destination posts to the
/// channel named `name`; a Jira one to project [`mock_jira_project`]; a
/// Discord one is a forum webhook.
pub fn mock_destination(mock_base: &str, kind: &str, name: &str) -> Destination {
    let url = |path: &str| reqwest::Url::parse(&format!("{mock_base}{path}")).expect("valid URL");
    let target = match kind {
        "slack" => Target::Slack {
            api_url: url("/slack/api/"),
            channel: name.to_owned(),
            token: Secret::new("xoxb-herald-mock"),
        },
        "teams" => Target::Teams {
            url: url(&mock_send_path(kind, name)),
        },
        "jira" => Target::Jira {
            site_url: url("/jira/"),
            project: mock_jira_project(name),
            issue_type: "Incident".into(),
            email: "herald@example.com".into(),
            token: Secret::new("jira-mock-token"),
            resolve_transition: "Done".into(),
            search_recheck_ms: 500,
        },
        "pagerduty" => Target::PagerDuty {
            events_url: url("/pagerduty/"),
            routing_key: Secret::new("0123456789abcdef0123456789abcdef"),
        },
        "discord" => Target::Discord {
            url: url(&mock_send_path(kind, name)),
            forum: true,
        },
        _ => Target::Webhook {
            url: url(&mock_send_path(kind, name)),
            secret: None,
        },
    };
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
    vec![
        (
            "slack",
            "slack-incidents",
            "takes the first post, then drops the answer: read back, not re-posted",
            Faults {
                drop_first: 1,
                drop_hang_ms: 10_000,
                ..Faults::default()
            },
        ),
        (
            "teams",
            "teams-ops",
            "rate limited once (429, Retry-After: 2)",
            Faults {
                rate_limit_first: 1,
                retry_after_secs: 2,
                ..Faults::default()
            },
        ),
        (
            "jira",
            "jira-ops",
            "fails the first three creates (503); the update and resolve wait",
            Faults {
                fail_first: 3,
                fail_status: 503,
                ..Faults::default()
            },
        ),
        ("pagerduty", "pagerduty", "healthy", Faults::default()),
        (
            "discord",
            "discord-ops",
            "healthy (forum channel)",
            Faults::default(),
        ),
        (
            "webhook",
            "status-hook",
            "healthy, signed",
            Faults::default(),
        ),
    ]
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
    let mock = crate::mock::start(TcpListener::bind("127.0.0.1:0").await?, faults_file)?;
    let mock_base = format!("http://{}", mock.addr);
    let destinations = demo_destinations()
        .into_iter()
        .map(|(kind, name, _, _)| {
            let mut destination = mock_destination(&mock_base, kind, name);
            if let Target::Webhook { secret: s, .. } = &mut destination.target {
                *s = Some(secret.clone());
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
        "herald demo: mock Slack, Teams, Jira, PagerDuty, Discord and a webhook at {mock_base}, herald at http://{}",
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
            ..SendRequest::default()
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

/// What each demo destination holds at the mock, in words, and whether it
/// is exactly the thread once (open, update, resolve).
fn landed(stats: &MockStats) -> (Vec<(&'static str, String)>, bool) {
    let mut lines = Vec::new();
    let mut ok = true;
    for (kind, name, _, _) in demo_destinations() {
        let (line, good) = match kind {
            "slack" => {
                let c = stats.slack.channels.get(name).cloned().unwrap_or_default();
                (
                    format!(
                        "{} message, {} replies in its thread, {} edit (marked resolved), {} keys duplicated",
                        c.messages, c.replies, c.updates, c.duplicated_keys.len()
                    ),
                    c.messages == 1 && c.replies == 2 && c.updates == 1 && c.duplicated_keys.is_empty(),
                )
            }
            "teams" => {
                let t = stats
                    .teams
                    .paths
                    .get(&mock_send_path(kind, name))
                    .cloned()
                    .unwrap_or_default();
                (format!("{} cards", t.cards), t.cards == 3)
            }
            "jira" => {
                let p = stats
                    .jira
                    .projects
                    .get(&mock_jira_project(name))
                    .cloned()
                    .unwrap_or_default();
                let issue = p.comments.keys().next().cloned().unwrap_or_default();
                let status = p.statuses.get(&issue).cloned().unwrap_or_default();
                let comments = p.comments.get(&issue).copied().unwrap_or(0);
                (
                    format!(
                        "{} issue ({issue}) with {comments} comments, status {status}",
                        p.issues
                    ),
                    p.issues == 1 && comments == 2 && status == "Done",
                )
            }
            "pagerduty" => {
                let incidents = &stats.pagerduty.incidents;
                let actions: Vec<String> = incidents
                    .values()
                    .flat_map(|i| i.actions.iter().cloned())
                    .collect();
                let status = incidents
                    .values()
                    .map(|i| i.status.clone())
                    .collect::<Vec<_>>()
                    .join(",");
                (
                    format!(
                        "{} incident: {} → {status}",
                        incidents.len(),
                        actions.join(", ")
                    ),
                    incidents.len() == 1 && status == "resolved",
                )
            }
            "discord" => {
                let w = stats
                    .discord
                    .webhooks
                    .get(&mock_discord_webhook_id(name))
                    .cloned()
                    .unwrap_or_default();
                (
                    format!(
                        "{} forum post with {} messages, {} edit",
                        w.threads, w.messages, w.edits
                    ),
                    w.threads == 1 && w.messages == 3,
                )
            }
            _ => {
                let p = stats.path(&mock_send_path(kind, name));
                (
                    format!(
                        "{} messages ({} requests, {} bad signatures)",
                        p.distinct, p.requests, p.bad_signature
                    ),
                    p.distinct == 3 && p.bad_signature == 0,
                )
            }
        };
        ok &= good;
        lines.push((name, line));
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
