//! The client verbs about destinations: `destinations` (list, pause,
//! resume) and `reload`.

use std::process::ExitCode;

use herald::logging::LogFormat;

use herald::client::render_table;

use super::args::{Command, DestinationAction};
use super::init_logging;

/// Runs the destination verbs; `cli::run` routes only these verbs here.
pub(crate) async fn run(
    command: Command,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let init_logging = |default_filter: &str| init_logging(default_filter, log_format);
    match command {
        Command::Destinations {
            action: Some(action),
            ..
        } => {
            init_logging("warn");
            let (name, json, view) = match action {
                DestinationAction::Pause {
                    name,
                    for_,
                    reason,
                    json,
                    client,
                } => {
                    let view = client
                        .client()?
                        .pause_destination(&name, for_, reason)
                        .await?;
                    (name, json, view)
                }
                DestinationAction::Resume { name, json, client } => {
                    let view = client.client()?.resume_destination(&name).await?;
                    (name, json, view)
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                match &view.pause {
                    Some(pause) => println!(
                        "{name}: paused {} by {}: {}; backlog {}",
                        pause
                            .until
                            .as_deref()
                            .map(|until| format!("until {until}"))
                            .unwrap_or_else(|| "until resumed".into()),
                        pause.paused_by,
                        pause.reason,
                        view.backlog
                    ),
                    None => println!("{name}: not paused; backlog {}", view.backlog),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ready { client } => {
            init_logging("warn");
            let ready = client.client()?.ready().await?;
            println!("{ready}");
            Ok(if ready == "ready" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Reload { json, client } => {
            init_logging("warn");
            let answer = client.client()?.reload_config().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                let list = |names: &[String]| {
                    if names.is_empty() {
                        "-".to_owned()
                    } else {
                        names.join(", ")
                    }
                };
                println!("configuration reloaded");
                println!("  added:   {}", list(&answer.added));
                println!("  removed: {}", list(&answer.removed));
                println!("  changed: {}", list(&answer.changed));
                println!("  tokens:  {}", answer.tokens);
                for warning in &answer.not_applied {
                    println!("  not applied: {warning}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Destinations {
            action: None,
            json,
            client,
        } => {
            init_logging("warn");
            let list = client.client()?.destinations().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|d| {
                        vec![
                            d.name.clone(),
                            d.kind.clone(),
                            d.status.clone(),
                            format!("{}/{}", d.in_flight, d.concurrency),
                            d.backlog.to_string(),
                            d.oldest_waiting_since.clone().unwrap_or_else(|| "-".into()),
                            match (&d.pause, &d.paused_until) {
                                (Some(pause), _) => format!(
                                    "{} ({}: {})",
                                    pause.until.as_deref().unwrap_or("resume"),
                                    pause.paused_by,
                                    pause.reason
                                ),
                                (None, Some(until)) => until.clone(),
                                (None, None) => "-".into(),
                            },
                            d.circuit.clone(),
                            d.consecutive_failures.to_string(),
                            match (&d.last_error_at, &d.last_error) {
                                (Some(at), Some(error)) => format!("{at} {error}"),
                                (_, error) => error.clone().unwrap_or_default(),
                            },
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render_table(
                        &[
                            "NAME",
                            "KIND",
                            "STATUS",
                            "IN FLIGHT",
                            "BACKLOG",
                            "OLDEST WAITING",
                            "PAUSED UNTIL",
                            "CIRCUIT",
                            "FAILURES",
                            "LAST ERROR"
                        ],
                        &rows
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("cli::run routes only the destination verbs here"),
    }
}
