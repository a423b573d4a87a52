//! The `herald` binary's verbs: `args.rs` is the command line, and one
//! file per group of verbs runs them. `anyhow` only here.

use std::process::ExitCode;

use anyhow::Context;

use herald::logging::LogFormat;

pub(crate) mod args;
mod broadcasts;
mod destinations;
mod local;
mod serve;

use args::{Cli, Command};

/// Logs go through a queue to a writer thread: a closed, full or stalled
/// stderr drops lines (counted in /metrics), never fails or blocks a caller.
fn init_logging(default_filter: &str, format: Option<LogFormat>) {
    let no_color = std::env::var("NO_COLOR").ok();
    herald::logging::init(
        default_filter,
        format.unwrap_or_default(),
        herald::logging::colour_wanted(no_color.as_deref()),
    );
}

/// Runs the verb the command line names.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    match cli.command {
        command @ (Command::Serve { .. } | Command::Migrate { .. } | Command::Mock { .. }) => {
            serve::run(command, log_format).await
        }
        command @ (Command::Send { .. }
        | Command::Preview { .. }
        | Command::Status { .. }
        | Command::Retry { .. }
        | Command::Cancel { .. }
        | Command::List { .. }) => broadcasts::run(command, log_format).await,
        command @ (Command::Destinations { .. }
        | Command::Reload { .. }
        | Command::Ready { .. }) => destinations::run(command, log_format).await,
        command => local::run(command, log_format).await,
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
