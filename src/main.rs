#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use herald::api::wire::SendRequest;
use herald::client::{render_broadcast, render_table, Client};
use herald::config::{Config, DEFAULT_LISTEN};
use herald::mock::FaultsFile;

/// mimalloc rather than the C library's allocator: a profile of a burst
/// showed a fifth of the server's CPU in glibc's malloc and free (arena locks
/// taken when one thread frees what another allocated, as the store's writer
/// and the async workers do all the time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// herald: durable fan-out of incident messages to many destinations.
#[derive(Parser)]
#[command(name = "herald", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the delivery workers.
    Serve {
        /// The config file (TOML): server settings and destinations.
        #[arg(long, default_value = "herald.toml")]
        config: PathBuf,
        /// SQLite database file, or postgres://user@host/db to share one
        /// PostgreSQL with other nodes (overrides server.database).
        #[arg(long)]
        database: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// This node's name in a PostgreSQL cluster (overrides
        /// server.node_id; default: random per start).
        #[arg(long, env = "HERALD_NODE_ID")]
        node_id: Option<String>,
        /// How long a claimed delivery stays this node's, on PostgreSQL
        /// (overrides server.lease_ms).
        #[arg(long, env = "HERALD_LEASE_MS")]
        lease_ms: Option<u64>,
    },
    /// Apply the schema migrations to a PostgreSQL database, then exit.
    Migrate {
        /// postgres://user@host:port/db
        #[arg(long)]
        database: String,
    },
    /// Run the mock destinations: Slack, Teams, Jira, PagerDuty and Discord
    /// emulations and a generic webhook receiver, with scriptable faults.
    Mock {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// A TOML file of [paths."/PATH"] fault tables (a path ending in /*
        /// is a prefix); see mock-faults.example.toml.
        #[arg(long)]
        faults: Option<PathBuf>,
    },
    /// Send a message to destinations.
    Send {
        /// A destination name; repeat for several.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        #[arg(long)]
        title: String,
        #[arg(long)]
        body: Option<String>,
        /// P1..P5 (or critical, high, warning, low, info). Default P3.
        #[arg(long)]
        severity: Option<String>,
        /// Incident key; broadcasts of one thread land in order.
        #[arg(long)]
        thread: Option<String>,
        /// This message resolves the thread's incident (needs --thread).
        #[arg(long)]
        resolved: bool,
        /// Show each destination's state until the broadcast is final; exit
        /// 1 if any destination ended failed or dead.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a broadcast: each destination's state and attempts.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry a broadcast's failed and dead deliveries (same idempotency key).
    Retry {
        id: String,
        /// Only this destination; repeat for several.
        #[arg(long = "to")]
        to: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a broadcast's unfinished deliveries.
    Cancel {
        id: String,
        /// Only this destination; repeat for several.
        #[arg(long = "to")]
        to: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List broadcasts, newest first.
    List {
        /// delivering, converged or partial.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        thread: Option<String>,
        /// Milliseconds since the epoch, or a span back: 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// The next_cursor of a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Each destination's health: pause, failures, backlog, last error.
    Destinations {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new API token: prints the token (give it to the client) and
    /// the config lines (only its SHA-256 goes in the config).
    Token {
        #[arg(long)]
        name: String,
        /// send, read, operate; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Mock plus server plus a scripted P1 with faults, printed live.
    Demo,
    /// Measure throughput and latency: mock and server in their own
    /// processes, load through the real API, against a no-store baseline.
    Bench {
        /// Scenarios to run, in order (burst runs first when others need it).
        #[arg(long = "scenario", value_enum, default_values_t = [herald::bench::Scenario::Burst])]
        scenarios: Vec<herald::bench::Scenario>,
        #[arg(long, default_value_t = 25_000)]
        broadcasts: usize,
        #[arg(long, default_value_t = 4)]
        destinations: usize,
        /// Attempts in flight per destination.
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// Concurrent API clients.
        #[arg(long, default_value_t = 64)]
        submitters: usize,
        #[arg(long, default_value_t = 10)]
        steady_secs: u64,
        /// Broadcasts per second in steady (default: half the burst's peak).
        #[arg(long)]
        steady_rate: Option<f64>,
        /// Seconds of load in soak.
        #[arg(long, default_value_t = 60)]
        soak_secs: u64,
        /// Broadcasts per second in soak.
        #[arg(long, default_value_t = 50.0)]
        soak_rate: f64,
        /// How long the soak's server keeps finished broadcasts, seconds.
        #[arg(long, default_value_t = 20)]
        soak_retention_secs: u64,
        #[arg(long, default_value_t = 1_000_000)]
        backlog_deliveries: usize,
        /// Keep databases and logs here instead of a temporary folder.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Run herald on this PostgreSQL (postgres://...; a fresh schema
        /// per run, dropped after it unless --workdir is given) instead of
        /// a SQLite file.
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Where the API is and how to authenticate, for every client command.
#[derive(clap::Args)]
struct ClientArgs {
    #[arg(long, env = "HERALD_SERVER", default_value_t = default_server())]
    server: String,
    /// Bearer token, for servers that require one.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::with_token(&self.server, self.token.clone())?)
    }
}

fn default_server() -> String {
    format!("http://{DEFAULT_LISTEN}")
}

fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            database,
            listen,
            node_id,
            lease_ms,
        } => {
            init_logging("info");
            let mut config = Config::load(&config, |k| std::env::var(k).ok())?;
            if let Some(database) = database {
                config.database = database;
            }
            if node_id.is_some() {
                config.node_id = node_id;
            }
            if let Some(lease_ms) = lease_ms {
                config.lease_ms = lease_ms;
            }
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let server = herald::server::start(config, listener).await?;
            wait_for_stop_signal().await?;
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
        Command::Mock { listen, faults } => {
            init_logging("info");
            let faults = match faults {
                Some(path) => FaultsFile::load(&path).map_err(anyhow::Error::msg)?,
                None => FaultsFile::default(),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let mock = herald::mock::start(listener, faults)?;
            println!("herald mock listening on http://{}", mock.addr);
            wait_for_stop_signal().await?;
            mock.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            to,
            title,
            body,
            severity,
            thread,
            resolved,
            wait,
            json,
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
            };
            let accepted = client.send(&request).await?;
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
            let final_state = client
                .watch(&accepted.id, |elapsed, delivery| {
                    if !json {
                        println!(
                            "[{:>6.2}s] {}: {}",
                            elapsed.as_secs_f64(),
                            delivery.destination,
                            delivery.describe()
                        );
                    }
                })
                .await?;
            if json {
                print_broadcast(&final_state, true)?;
            } else {
                println!("broadcast {}: {}", final_state.id, final_state.status);
            }
            let lost = final_state.deliveries.iter().any(|d| d.is_lost_cause());
            Ok(if lost {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
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
            client,
        } => {
            init_logging("warn");
            let broadcast = client.client()?.retry(&id, to).await?;
            print_broadcast(&broadcast, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel {
            id,
            to,
            json,
            client,
        } => {
            init_logging("warn");
            let broadcast = client.client()?.cancel(&id, to).await?;
            print_broadcast(&broadcast, json)?;
            Ok(ExitCode::SUCCESS)
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
        Command::Destinations { json, client } => {
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
                            format!("{}/{}", d.in_flight, d.concurrency),
                            d.backlog.to_string(),
                            d.oldest_waiting_since.clone().unwrap_or_else(|| "-".into()),
                            d.paused_until.clone().unwrap_or_else(|| "-".into()),
                            d.circuit.clone(),
                            d.consecutive_failures.to_string(),
                            d.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render_table(
                        &[
                            "NAME",
                            "KIND",
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
            };
            let mut stdout = std::io::stdout();
            herald::bench::run(options, json, &mut stdout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            init_logging("error");
            let mut stdout = std::io::stdout();
            let ok = herald::demo::run(&mut stdout).await?;
            stdout.flush()?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn print_broadcast(broadcast: &herald::api::wire::Broadcast, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(broadcast)?);
    } else {
        print!("{}", render_broadcast(broadcast));
    }
    Ok(())
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
