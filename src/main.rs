#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use herald::api::wire::SendRequest;
use herald::client::{render_broadcast, render_table, Client, ClientError, WatchNotice};
use herald::config::{Config, WebhookSecret, DEFAULT_LISTEN, INIT_TEMPLATE};
use herald::logging::LogFormat;
use herald::mock::FaultsFile;

/// mimalloc rather than the C library's allocator: a profile of a burst
/// showed a fifth of the server's CPU in glibc's malloc and free (arena locks
/// taken when one thread frees what another allocated, as the store's writer
/// and the async workers do all the time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// herald: durable fan-out of incident messages to many destinations.
#[derive(Parser)]
#[command(
    name = "herald",
    version,
    disable_help_subcommand = true,
    after_help = "Start here: `herald demo`. For a first real setup: `herald init`, then `herald mock` in one shell and `herald serve` in another."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or `json` (one object per line). For serve it
    /// overrides server.log_format. Levels: RUST_LOG (e.g. `info`,
    /// `herald=debug`); colour only on a terminal, never with NO_COLOR.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    LogFormat::parse(text).ok_or_else(|| format!("{text:?} is not a log format; use text or json"))
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and the delivery workers.
    #[command(
        after_help = "Example:\n  herald serve --config herald.toml --listen localhost:8080"
    )]
    Serve {
        /// The config file (TOML): server settings and destinations.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// SQLite database file, or postgres://user@host/db to share one
        /// PostgreSQL with other nodes (overrides server.database).
        #[arg(long)]
        database: Option<PathBuf>,
        /// Address to listen on, IP:PORT or HOST:PORT (overrides
        /// server.listen).
        #[arg(long, value_parser = parse_listen)]
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
    #[command(
        after_help = "Example:\n  herald migrate --database postgres://herald@db.internal:5432/herald"
    )]
    Migrate {
        /// postgres://user@host:port/db
        #[arg(long)]
        database: String,
    },
    /// Run the mock destinations: Slack, Teams, Jira, PagerDuty and Discord
    /// emulations and a generic webhook receiver, with scriptable faults.
    #[command(
        after_help = "Example:\n  herald mock --listen 127.0.0.1:9090 --faults mock-faults.example.toml"
    )]
    Mock {
        /// Address to listen on, IP:PORT or HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:9090", value_parser = parse_listen)]
        listen: SocketAddr,
        /// A TOML file of [paths."/PATH"] fault tables (a path ending in /*
        /// is a prefix); see mock-faults.example.toml.
        #[arg(long)]
        faults: Option<PathBuf>,
    },
    /// Send a message to destinations.
    #[command(
        after_help = "Example:\n  herald send --to ops-webhook --to slack --severity P1 --thread INC-42 \\\n      --title \"INC-42: checkout database down\" --body \"Orders are failing\" --wait\n  herald send --severity P1 --label team=payments --label environment=production \\\n      --field \"Region=eu-west-1\" --link \"Runbook=https://wiki.example/db\" \\\n      --source deploy-bot --summary \"checkout DB down\" --title \"Checkout database down\""
    )]
    Send {
        /// A destination or group name; repeat for several. None: the
        /// config's [[routes]] pick the destinations.
        #[arg(long = "to")]
        to: Vec<String>,
        /// A label NAME=VALUE (service, environment, team); repeat.
        #[arg(long = "label", value_name = "NAME=VALUE", value_parser = herald::client::parse_label)]
        labels: Vec<(String, String)>,
        /// A link TEXT=URL (http or https: runbook, dashboard); repeat.
        #[arg(long = "link", value_name = "TEXT=URL", value_parser = herald::client::parse_link)]
        links: Vec<herald::domain::Link>,
        /// A field NAME=VALUE shown as a fact, in order; repeat.
        #[arg(long = "field", value_name = "NAME=VALUE", value_parser = herald::client::parse_field)]
        fields: Vec<herald::domain::Field>,
        /// Who sends it (routes can match on it).
        #[arg(long)]
        source: Option<String>,
        /// Short text for SMS and push.
        #[arg(long)]
        summary: Option<String>,
        /// The message's title, one line.
        #[arg(long)]
        title: String,
        /// The message's text.
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
        /// Print the broadcast as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// With --wait: stop waiting after this long (30s, 5m, 1h); the
        /// broadcast goes on being delivered. Exit codes: 0 all confirmed,
        /// 1 some failed or dead, 2 an error, 3 this timeout passed.
        #[arg(long, value_name = "DURATION", requires = "wait", value_parser = herald::client::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// The Idempotency-Key of this send (default: a new random one).
        /// Tries after a lost answer or a 502/503/504/429 reuse it, so they
        /// never make a second broadcast; give the same key to repeat a
        /// send safely from a script.
        #[arg(long, value_name = "KEY", value_parser = herald::client::parse_idempotency_key)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show where a message would go (the routes matched, the
    /// destinations expanded), without storing or sending anything.
    #[command(
        after_help = "Examples:\n  herald preview --severity P1 --label team=payments --label environment=production --title \"Checkout down\"\n  herald preview --file message.json --json"
    )]
    Preview {
        #[command(flatten)]
        message: herald::preview::PreviewArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a broadcast: each destination's state and attempts.
    #[command(after_help = "Example:\n  herald status 01JD7Z3Q4S5T6V7W8X9Y0Z1A2B --json")]
    Status {
        /// The broadcast's id, as `send` and `list` print it.
        id: String,
        /// Print the broadcast as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry a broadcast's failed, dead and cancelled deliveries (same
    /// idempotency key); exit 1 when none matched.
    #[command(after_help = "Example:\n  herald retry 01JD7Z3Q --to jira --wait --timeout 5m")]
    Retry {
        /// The broadcast's id.
        id: String,
        /// Only this destination; repeat for several.
        #[arg(long = "to")]
        to: Vec<String>,
        /// Print the broadcast as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Show each destination's state until the broadcast is final; exit
        /// 1 if any destination ended failed or dead.
        #[arg(long)]
        wait: bool,
        /// With --wait: stop waiting after this long (30s, 5m, 1h); the
        /// deliveries go on. Exit codes: 0 all confirmed, 1 some failed or
        /// dead (or nothing to retry), 2 an error, 3 this timeout passed.
        #[arg(long, value_name = "DURATION", requires = "wait", value_parser = herald::client::parse_duration)]
        timeout: Option<std::time::Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a broadcast's unfinished deliveries; exit 1 when none matched.
    #[command(after_help = "Example:\n  herald cancel 01JD7Z3Q --to teams")]
    Cancel {
        /// The broadcast's id.
        id: String,
        /// Only this destination; repeat for several.
        #[arg(long = "to")]
        to: Vec<String>,
        /// Print the broadcast as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List broadcasts, newest first.
    #[command(after_help = "Example:\n  herald list --status partial --since 2h")]
    List {
        /// A broadcast's status (delivering, converged, partial), or a
        /// delivery state (failed, dead, cancelled, retrying, verifying,
        /// waiting, pending, sending, confirmed): broadcasts with at least
        /// one delivery in it.
        #[arg(long)]
        status: Option<String>,
        /// Only broadcasts to this destination.
        #[arg(long)]
        destination: Option<String>,
        /// Only broadcasts of this thread (incident key).
        #[arg(long)]
        thread: Option<String>,
        /// Milliseconds since the epoch, or a span back: 15m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// The next_cursor of a previous page.
        #[arg(long)]
        cursor: Option<String>,
        /// Broadcasts per page (at most 200).
        #[arg(long)]
        limit: Option<usize>,
        /// Print the page as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Each destination's health: pause, failures, backlog, last error;
    /// `pause` and `resume` one.
    #[command(
        after_help = "Examples:\n  herald destinations --json\n  herald destinations pause slack-incidents --for 2h --reason \"Slack maintenance\"\n  herald destinations resume slack-incidents"
    )]
    Destinations {
        #[command(subcommand)]
        action: Option<DestinationAction>,
        /// Print the list as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make the server read its config file again (as SIGHUP does) and say
    /// what changed; an invalid file changes nothing and is reported.
    #[command(after_help = "Example:\n  herald reload")]
    Reload {
        /// Print the answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new API token: prints the token (give it to the client) and
    /// the config lines (only its SHA-256 goes in the config).
    #[command(
        after_help = "Example:\n  herald token --name oncall --scope send --scope read --scope operate"
    )]
    Token {
        /// The token's name in the config and the logs.
        #[arg(long)]
        name: String,
        /// send, read, operate; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Print the OpenAPI document of the HTTP API.
    #[command(after_help = "Example:\n  herald openapi > openapi.json")]
    Openapi,
    /// Mock plus server plus a scripted P1 with faults, printed live.
    #[command(after_help = "Example:\n  herald demo")]
    Demo,
    /// Measure throughput and latency: mock and server in their own
    /// processes, load through the real API, against a no-store baseline.
    #[command(
        after_help = "Example:\n  herald bench --broadcasts 2000 --scenario burst --scenario steady --json"
    )]
    Bench {
        /// Scenarios to run, in order (burst runs first when others need it).
        #[arg(long = "scenario", value_enum, default_values_t = [herald::bench::Scenario::Burst])]
        scenarios: Vec<herald::bench::Scenario>,
        /// Broadcasts to send in the burst.
        #[arg(long, default_value_t = 25_000)]
        broadcasts: usize,
        /// Mock destinations each broadcast goes to.
        #[arg(long, default_value_t = 4)]
        destinations: usize,
        /// Attempts in flight per destination.
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// Concurrent API clients.
        #[arg(long, default_value_t = 64)]
        submitters: usize,
        /// How long the steady scenario sends, in seconds.
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
        /// Deliveries left pending on slow destinations in the backlog
        /// scenario.
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
        /// Print the report as JSON, for comparing runs.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file fully (environment variables included) and
    /// print every problem; exit 0 with a one-line summary when valid, 1
    /// when not. For CI pipelines.
    #[command(after_help = "Example:\n  herald check-config herald.toml")]
    CheckConfig {
        /// The config file to check.
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Write a commented first config whose destinations (one of each
    /// kind) point at `herald mock`, so `herald serve` starts with no secret
    /// to set.
    #[command(after_help = "Example:\n  herald init && herald check-config")]
    Init {
        /// Where to write it.
        #[arg(default_value = DEFAULT_CONFIG)]
        path: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a new random webhook signing secret (Standard Webhooks,
    /// whsec_ and base64), for a webhook destination's secret_env.
    #[command(after_help = "Example:\n  export STATUS_HOOK_SECRET=\"$(herald secret)\"")]
    Secret,
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  herald completions bash > ~/.local/share/bash-completion/completions/herald"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    #[command(after_help = "Example:\n  herald man > herald.1 && man ./herald.1")]
    Man,
    /// Print the help of herald or of one of its commands.
    #[command(after_help = "Example:\n  herald help send")]
    Help {
        /// The command (and subcommand) to explain.
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DestinationAction {
    /// Stop sending to a destination (a maintenance window there): its
    /// deliveries wait durably, on every node, until the pause ends.
    #[command(
        after_help = "Example:\n  herald destinations pause jira-ops --for 2h --reason \"Jira migration\""
    )]
    Pause {
        /// The destination's name in the config.
        name: String,
        /// How long: 90s, 15m, 2h, 1d (at most 30d); default: until resumed.
        #[arg(long = "for")]
        for_: Option<String>,
        /// Why, shown to the other operators.
        #[arg(long)]
        reason: String,
        /// Print the answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a destination's pause: its waiting deliveries go now.
    #[command(after_help = "Example:\n  herald destinations resume jira-ops")]
    Resume {
        /// The destination's name in the config.
        name: String,
        /// Print the answer as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Where the API is and how to authenticate, for every client command.
/// The environment variables are read here rather than by clap, so that a
/// usage line never shows `--server` or `--token` as given when only the
/// environment set them.
#[derive(clap::Args)]
struct ClientArgs {
    /// The API's URL [env: HERALD_SERVER] [default: http:// and the
    /// server.listen of --config, else http://127.0.0.1:8080]
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The config file `herald serve` uses: its server.listen is the API's
    /// address [default: herald.toml, when present]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bearer token, for servers that require one (`herald token` makes
    /// one) [env: HERALD_TOKEN]
    #[arg(long)]
    token: Option<String>,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let token = self.token.clone().or_else(|| non_empty_env("HERALD_TOKEN"));
        Ok(Client::with_token(&self.server_url()?, token)?)
    }

    /// --server, else HERALD_SERVER, else the config's server.listen, else
    /// the default address.
    fn server_url(&self) -> anyhow::Result<String> {
        if let Some(server) = self
            .server
            .clone()
            .or_else(|| non_empty_env("HERALD_SERVER"))
        {
            return Ok(server);
        }
        let config = match &self.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|path| path.exists()),
        };
        Ok(match config {
            Some(path) => format!("http://{}", herald::config::client_address(&path)?),
            None => default_server(),
        })
    }
}

/// The config file `serve`, `check-config`, `init` and the clients use
/// when none is named.
const DEFAULT_CONFIG: &str = "herald.toml";

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    herald::config::parse_listen_address(text)
}

fn default_server() -> String {
    format!("http://{DEFAULT_LISTEN}")
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {error}"
            );
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            let mut stderr = std::io::stderr();
            let _ = writeln!(stderr, "error: {}", describe(&error));
            if let Some(ClientError::Api { status: 401, .. }) = error.downcast_ref() {
                let _ = writeln!(stderr, "hint: this herald requires a token: set HERALD_TOKEN or pass --token (`herald token` makes one)");
            }
            ExitCode::from(2)
        }
    };
    herald::logging::flush();
    code
}

/// The error and its causes on one line, each said once: a cause whose
/// text its outer error already includes is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    let init_logging = |default_filter: &str| init_logging(default_filter, log_format);
    match cli.command {
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
        Command::CheckConfig { file } => match Config::load(&file, |k| std::env::var(k).ok()) {
            Ok(config) => {
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

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command says what it does and shows an example; every
    /// argument and flag has a help text.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if command.get_about().is_none() {
                missing.push(format!("{path}: about"));
            }
            if command.get_after_help().is_none() {
                missing.push(format!("{path}: example (after_help)"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "herald", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:?}");
    }
}
