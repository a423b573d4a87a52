//! The verbs that run a process until a stop signal: `serve`, `mock`, and
//! `migrate`.

use std::io::Write;
use std::process::ExitCode;

use herald::logging::LogFormat;

use anyhow::Context;

use herald::config::Config;
use herald::mock::FaultsFile;

use super::args::Command;
use super::{init_logging, wait_for_stop_signal};

/// Runs the serving verbs; `cli::run` routes only these verbs here.
pub(crate) async fn run(
    command: Command,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let init_logging = |default_filter: &str| init_logging(default_filter, log_format);
    match command {
        Command::Serve {
            config,
            database,
            listen,
            node_id,
            lease_ms,
        } => {
            let config_path = config;
            let mut config = Config::load(&config_path, |k| std::env::var(k).ok())?;
            // After the config, which may name the format; the flag wins.
            self::init_logging("info", log_format.or(config.log_format));
            // The command line wins over the file, at start and at every reload.
            let overrides = move |config: &mut Config| {
                if let Some(database) = &database {
                    config.database = database.clone();
                }
                if node_id.is_some() {
                    config.node_id = node_id.clone();
                }
                if let Some(lease_ms) = lease_ms {
                    config.lease_ms = lease_ms;
                }
                if let Some(listen) = listen {
                    config.listen = listen;
                }
            };
            overrides(&mut config);
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            // Installed before the server starts: from here on SIGHUP
            // reloads instead of ending the process.
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP")?;
            let server = herald::server::start(config, listener).await?;
            server.enable_reload(herald::api::reload::ConfigSource {
                path: config_path,
                overrides: Box::new(overrides),
            });
            let stop = wait_for_stop_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    stopped = &mut stop => break stopped?,
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        // The outcome is logged and in the gauges.
                        let _ = server.reload().await;
                    }
                }
            }
            tracing::info!("stopping: no new work; attempts in flight finish first");
            server.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { database } => {
            init_logging("info");
            let applied = herald::store::postgres::migrate(&database).await?;
            println!("applied {applied} migration(s); the schema is current");
            Ok(ExitCode::SUCCESS)
        }
        Command::Mock {
            listen,
            smtp_listen,
            faults,
        } => {
            init_logging("info");
            let faults = match faults {
                Some(path) => FaultsFile::load(&path).map_err(anyhow::Error::msg)?,
                None => FaultsFile::default(),
            };
            let (listener, smtp) = mock_listeners(listen, smtp_listen).await?;
            let mock = herald::mock::start_with_smtp(listener, smtp, faults)?;
            // Both lines in one write: a reader that takes the first line
            // and closes the pipe never makes the second one fail.
            let banner = format!(
                "herald mock listening on http://{}\nherald mock listening for SMTP on {} (email destinations: smtp_host = \"{}\", smtp_port = {}, smtp_security = \"none\")\n",
                mock.addr,
                mock.smtp_addr,
                mock.smtp_addr.ip(),
                mock.smtp_addr.port()
            );
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(banner.as_bytes())?;
            stdout.flush()?;
            drop(stdout);
            wait_for_stop_signal().await?;
            mock.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("cli::run routes only the serving verbs here"),
    }
}

/// The mock's HTTP and SMTP listeners: SMTP on `smtp_listen`, else on the
/// port after `listen`'s (two free ports next to each other for port 0).
async fn mock_listeners(
    listen: std::net::SocketAddr,
    smtp_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    if listen.port() == 0 && smtp_listen.is_none() {
        return herald::mock::bind_pair(listen.ip())
            .await
            .with_context(|| format!("cannot listen on two free ports of {}", listen.ip()));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let smtp_addr = smtp_listen.unwrap_or_else(|| {
        let port = herald::mock::smtp_port_next_to(listener.local_addr().map_or(0, |a| a.port()));
        std::net::SocketAddr::new(listen.ip(), port)
    });
    let smtp = tokio::net::TcpListener::bind(smtp_addr)
        .await
        .with_context(|| {
            format!("cannot listen for SMTP on {smtp_addr}; choose its address with --smtp-listen")
        })?;
    Ok((listener, smtp))
}
