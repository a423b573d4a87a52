//! The verbs that need no server: `token`, `openapi`, `check-config`,
//! `init`, `secret`, `completions`, `man`, `help`, and the two that run
//! their own processes, `bench` and `demo`.

use std::process::ExitCode;

use herald::logging::LogFormat;

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use herald::config::{Config, WebhookSecret, INIT_TEMPLATE};

use super::args::{Cli, Command};
use super::init_logging;

/// Runs the local verbs; `cli::run` routes only these verbs here.
pub(crate) async fn run(
    command: Command,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let init_logging = |default_filter: &str| init_logging(default_filter, log_format);
    match command {
        Command::Token { name, scopes } => {
            for scope in &scopes {
                if herald::config::Scope::parse(scope).is_none() {
                    anyhow::bail!("--scope {scope:?}: use send, read or operate");
                }
            }
            let (token, sha256) = herald::api::auth::new_token();
            println!("token (give this to the client; it is not stored anywhere):\n  {token}\n");
            println!("config lines:\n[[tokens]]\nname = {name:?}\nsha256 = \"{sha256}\"\nscopes = {scopes:?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&herald::api::openapi::document())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            scenarios,
            broadcasts,
            destinations,
            concurrency,
            submitters,
            steady_secs,
            steady_rate,
            soak_secs,
            soak_rate,
            soak_retention_secs,
            backlog_deliveries,
            workdir,
            database,
            nodes,
            json,
        } => {
            init_logging("warn");
            let options = herald::bench::BenchOptions {
                scenarios,
                broadcasts,
                destinations,
                concurrency,
                submitters,
                steady_secs,
                steady_rate,
                soak_secs,
                soak_rate,
                soak_retention_secs,
                backlog_deliveries,
                workdir,
                postgres: database,
                nodes,
            };
            let mut stdout = std::io::stdout();
            herald::bench::run(options, json, &mut stdout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => match Config::load(&file, |k| std::env::var(k).ok()) {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("{}: warning: {warning}", file.display());
                }
                println!("{}: valid: {}", file.display(), config.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("{error}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Init { path, force } => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(!force)
                .create(force)
                .truncate(force)
                .open(&path)
                .map_err(|error| match error.kind() {
                    std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                        "{} exists; keep it, name another file, or pass --force to overwrite it",
                        path.display()
                    ),
                    _ => anyhow::anyhow!("cannot write {}: {error}", path.display()),
                })?;
            file.write_all(INIT_TEMPLATE.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "wrote {}: one destination of each kind, all at `herald mock` (127.0.0.1:9090).",
                path.display()
            );
            println!("next: `herald mock` in one shell, `herald serve` in another, then");
            println!(
                "  herald send --to ops-webhook --to slack --title \"hello from herald\" --wait"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret => {
            println!("{}", WebhookSecret::generate());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "herald", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Help { command } => {
            let mut root = Cli::command();
            root.build();
            let mut current = &mut root;
            for name in &command {
                current = current.find_subcommand_mut(name).ok_or_else(|| {
                    anyhow::anyhow!("no command {name:?}; `herald help` lists them")
                })?;
            }
            current.print_long_help()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { console } => {
            init_logging("error");
            let mut stdout = std::io::stdout();
            let after = match console {
                true => herald::demo::AfterIncident::ServeUntilInterrupted,
                false => herald::demo::AfterIncident::Stop,
            };
            let ok = herald::demo::run(&mut stdout, after).await?;
            stdout.flush()?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        _ => unreachable!("cli::run routes only the local verbs here"),
    }
}
