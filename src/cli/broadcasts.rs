//! The client verbs about broadcasts: `send`, `status`, `retry`, `cancel`,
//! `list`, and following a broadcast until it is final (`--wait`).

use std::process::ExitCode;

use herald::logging::LogFormat;

use herald::api::wire::SendRequest;
use herald::client::{render_broadcast, render_table, Client, WatchNotice};

use super::args::Command;
use super::init_logging;

/// Runs the broadcast verbs; `cli::run` routes only these verbs here.
pub(crate) async fn run(
    command: Command,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let init_logging = |default_filter: &str| init_logging(default_filter, log_format);
    match command {
        Command::Send {
            to,
            labels,
            links,
            fields,
            source,
            summary,
            title,
            body,
            severity,
            thread,
            resolved,
            wait,
            json,
            timeout,
            idempotency_key,
            objective,
            client,
        } => {
            init_logging("warn");
            let client = client.client()?;
            let request = SendRequest {
                title,
                body,
                severity,
                thread,
                resolved,
                destinations: to,
                labels: labels.into_iter().collect(),
                links,
                fields,
                source,
                summary,
                objective: objective.request(),
            };
            let key = idempotency_key.unwrap_or_else(herald::client::new_idempotency_key);
            let accepted = client
                .send_with_key(&request, &key, |error, tries, pause| {
                    eprintln!(
                        "herald send: try {tries} of {}: {error}; trying again in {:.1}s with the same Idempotency-Key {key}",
                        herald::client::SEND_TRIES_MAX,
                        pause.as_secs_f64()
                    );
                })
                .await?;
            if !wait {
                print_broadcast(&accepted, json)?;
                return Ok(ExitCode::SUCCESS);
            }
            if !json {
                println!(
                    "broadcast {} accepted for {} destinations",
                    accepted.id,
                    accepted.deliveries.len()
                );
            }
            wait_until_final(&client, &accepted.id, json, timeout).await
        }
        Command::Preview { message, client } => {
            init_logging("warn");
            let request = message.request().map_err(anyhow::Error::msg)?;
            let preview = client.client()?.preview(&request).await?;
            if message.json {
                println!("{}", serde_json::to_string_pretty(&preview)?);
            } else {
                print!("{}", herald::preview::render(&preview));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { id, json, client } => {
            init_logging("warn");
            let broadcast = client.client()?.status(&id).await?;
            print_broadcast(&broadcast, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            id,
            to,
            json,
            wait,
            timeout,
            client,
        } => {
            init_logging("warn");
            let client = client.client()?;
            let result = client.retry(&id, to).await?;
            let code = report_action(&result, json)?;
            if code != ExitCode::SUCCESS || !wait {
                return Ok(code);
            }
            wait_until_final(&client, &result.broadcast.id, json, timeout).await
        }
        Command::Cancel {
            id,
            to,
            json,
            client,
        } => {
            init_logging("warn");
            let result = client.client()?.cancel(&id, to).await?;
            report_action(&result, json)
        }
        Command::List {
            status,
            destination,
            thread,
            since,
            cursor,
            limit,
            json,
            client,
        } => {
            init_logging("warn");
            let query = herald::client::ListQuery {
                status,
                destination,
                thread,
                since,
                cursor,
                limit,
            };
            let page = client.client()?.list(&query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                let rows: Vec<Vec<String>> = page
                    .broadcasts
                    .iter()
                    .map(|b| {
                        let confirmed = b
                            .deliveries
                            .iter()
                            .filter(|d| d.state == "confirmed")
                            .count();
                        vec![
                            b.id.clone(),
                            b.created_at.clone(),
                            b.status.clone(),
                            format!("{confirmed}/{}", b.deliveries.len()),
                            b.severity.clone(),
                            b.thread.clone().unwrap_or_default(),
                            b.title.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render_table(
                        &[
                            "ID",
                            "CREATED",
                            "STATUS",
                            "CONFIRMED",
                            "SEV",
                            "THREAD",
                            "TITLE"
                        ],
                        &rows
                    )
                );
                if let Some(cursor) = page.next_cursor {
                    println!("more: --cursor {cursor}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("cli::run routes only the broadcast verbs here"),
    }
}

/// Exit code of `send --wait` and `retry --wait` when `--timeout` passed
/// first (0: all confirmed; 1: some failed or dead, or nothing to do; 2: an
/// error).
const EXIT_WAIT_TIMED_OUT: u8 = 3;

/// Follows the broadcast live until it is final (or `timeout` passes):
/// exit 0 when no delivery is failed or dead, 1 when one is, 3 on timeout.
async fn wait_until_final(
    client: &Client,
    id: &str,
    json: bool,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    let watch = client.watch_with_notices(
        id,
        |elapsed, delivery| {
            if !json {
                println!(
                    "[{:>6.2}s] {}: {}",
                    elapsed.as_secs_f64(),
                    delivery.destination,
                    delivery.describe()
                );
            }
        },
        |notice| match notice {
            WatchNotice::Lost { reason } => {
                eprintln!("lost the event stream ({reason}); reconnecting")
            }
            WatchNotice::Reconnected => {
                eprintln!("reconnected; carrying on from the broadcast's state")
            }
        },
    );
    let final_state = match timeout {
        None => watch.await?,
        Some(limit) => match tokio::time::timeout(limit, watch).await {
            Ok(result) => result?,
            Err(_) => {
                let now = client.status(id).await?;
                if json {
                    print_broadcast(&now, true)?;
                } else {
                    println!("broadcast {}: {}", now.id, now.status);
                }
                eprintln!(
                    "herald: stopped waiting after {}; broadcast {id} is still {} (its deliveries go on; `herald status {id}` shows them)",
                    humantime_secs(limit),
                    now.status
                );
                return Ok(ExitCode::from(EXIT_WAIT_TIMED_OUT));
            }
        },
    };
    let final_state = wait_for_objective(client, final_state).await?;
    if json {
        print_broadcast(&final_state, true)?;
    } else {
        println!("broadcast {}: {}", final_state.id, final_state.status);
        if let Some(objective) = &final_state.objective {
            print!("{}", herald::client::render_objective(objective));
        }
    }
    let lost = final_state.deliveries.iter().any(|d| d.is_lost_cause());
    Ok(if lost {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// How long past an objective's deadline `--wait` waits for its decision.
const OBJECTIVE_DECISION_GRACE_MS: i64 = 10_000;
/// How often `--wait` looks at a pending objective after the broadcast is
/// final.
const OBJECTIVE_POLL_MS: u64 = 1_000;

/// A broadcast final before its objective's deadline (every destination
/// failed early): waits for the decision, up to the deadline and a grace,
/// so `--wait` shows whether it escalated.
async fn wait_for_objective(
    client: &Client,
    mut broadcast: herald::api::wire::Broadcast,
) -> anyhow::Result<herald::api::wire::Broadcast> {
    let Some(objective) = &broadcast.objective else {
        return Ok(broadcast);
    };
    let polls_max =
        (objective.deadline_in_ms + OBJECTIVE_DECISION_GRACE_MS) as u64 / OBJECTIVE_POLL_MS + 1;
    for _ in 0..polls_max {
        if broadcast
            .objective
            .as_ref()
            .is_none_or(|o| o.state != "pending")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(OBJECTIVE_POLL_MS)).await;
        broadcast = client.status(&broadcast.id).await?;
    }
    Ok(broadcast)
}

fn humantime_secs(duration: std::time::Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Says what a retry or cancel changed; exit 1 (with the reason) when it
/// changed nothing.
fn report_action(result: &herald::api::wire::ActionResult, json: bool) -> anyhow::Result<ExitCode> {
    let broadcast = &result.broadcast;
    let (done, applies_to) = match result.action.as_str() {
        "retry" => ("retried", "failed, dead or cancelled"),
        _ => ("cancelled", "unfinished and not in flight"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else if !result.changed.is_empty() {
        println!(
            "{done} {} of {} deliveries of broadcast {}: {}",
            result.changed.len(),
            broadcast.deliveries.len(),
            broadcast.id,
            result.changed.join(", ")
        );
        print!("{}", render_broadcast(broadcast));
    }
    if !result.changed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let states: Vec<String> = broadcast
        .deliveries
        .iter()
        .map(|d| format!("{} {}", d.destination, d.summary))
        .collect();
    eprintln!(
        "herald {}: nothing to do: no delivery of broadcast {} is {applies_to} ({})",
        result.action,
        broadcast.id,
        states.join(", ")
    );
    Ok(ExitCode::from(1))
}

fn print_broadcast(broadcast: &herald::api::wire::Broadcast, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(broadcast)?);
    } else {
        print!("{}", render_broadcast(broadcast));
    }
    Ok(())
}
