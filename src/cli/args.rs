//! `herald`'s command line: the verbs, their flags and help texts (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use herald::client::Client;
use herald::config::DEFAULT_LISTEN;
use herald::logging::LogFormat;

/// herald: durable fan-out of incident messages to many destinations.
#[derive(Parser)]
#[command(
    name = "herald",
    version,
    disable_help_subcommand = true,
    after_help = "Start here: `herald demo`. For a first real setup: `herald init`, then `herald mock` in one shell and `herald serve` in another."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log lines as `text` or `json` (one object per line). For serve it
    /// overrides server.log_format. Levels: RUST_LOG (e.g. `info`,
    /// `herald=debug`); colour only on a terminal, never with NO_COLOR.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", value_parser = parse_log_format)]
    pub(crate) log_format: Option<LogFormat>,
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    LogFormat::parse(text).ok_or_else(|| format!("{text:?} is not a log format; use text or json"))
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Run the mock destinations: emulations of every HTTP kind (Slack,
    /// Teams, Jira, PagerDuty, Discord, Matrix, Twilio, Google Chat,
    /// Telegram, Zulip), a generic webhook receiver and an SMTP server for
    /// email (on the port after --listen's), with scriptable faults.
    #[command(
        after_help = "Example:\n  herald mock --listen 127.0.0.1:9090 --faults mock-faults.example.toml"
    )]
    Mock {
        /// Address to listen on, IP:PORT or HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:9090", value_parser = parse_listen)]
        listen: SocketAddr,
        /// Address of the SMTP server, IP:PORT or HOST:PORT. Default: the
        /// port after --listen's (127.0.0.1:9091), or two free ports next
        /// to each other when --listen's port is 0.
        #[arg(long, value_parser = parse_listen)]
        smtp_listen: Option<SocketAddr>,
        /// A TOML file of [paths."/PATH"] fault tables (a path ending in /*
        /// is a prefix); see mock-faults.example.toml.
        #[arg(long)]
        faults: Option<PathBuf>,
    },
    /// Send a message to destinations.
    #[command(
        after_help = "Example:\n  herald send --to ops-webhook --to slack --severity P1 --thread INC-42 \\\n      --title \"INC-42: checkout database down\" --body \"Orders are failing\" --wait\n  herald send --severity P1 --label team=payments --label environment=production \\\n      --field \"Region=eu-west-1\" --link \"Runbook=https://wiki.example/db\" \\\n      --source deploy-bot --summary \"checkout DB down\" --title \"Checkout database down\"\n  herald send --to chat --severity P1 --title \"Checkout down\" \\\n      --confirm-of chat --confirm-within 5m --fallback pagerduty --on-escalation pagerduty"
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
        objective: ObjectiveArgs,
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
    /// Ask the server whether it is ready (`GET /readyz`: its database can
    /// commit); exit 0 when it is, 1 when not. For container health checks
    /// and scripts.
    #[command(
        after_help = "Example:\n  herald ready --server https://herald.internal:8443 --cacert ca.pem"
    )]
    Ready {
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
    #[command(after_help = "Example:\n  herald demo --console")]
    Demo {
        /// Keep serving after the incident, so the console can be opened.
        #[arg(long)]
        console: bool,
    },
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
        /// Broadcasts per second in steady: a low, fixed rate, to measure
        /// what a delivery costs when herald is not busy.
        #[arg(long, default_value_t = 200.0)]
        steady_rate: f64,
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
        /// `herald serve` nodes per run, all on the run's schema, each
        /// with its own node id and port; the submitters spread the
        /// broadcasts over them in turn. More than one needs --database
        /// postgres://... (a SQLite file belongs to one node).
        #[arg(long, default_value = "1", value_parser = parse_nodes)]
        nodes: std::num::NonZeroUsize,
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
pub(crate) enum DestinationAction {
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

/// `herald send`'s delivery objective: the flags spell a route's
/// `confirm = { any, of, within }`, `fallback` and `on_escalation`; the
/// server checks them and names the field of any it refuses.
#[derive(clap::Args)]
pub(crate) struct ObjectiveArgs {
    /// Escalate unless the --confirm-of destinations confirm within this
    /// long (30s, 5m; from 1 s to 24 h).
    #[arg(long, value_name = "DURATION", requires = "confirm_of")]
    pub(crate) confirm_within: Option<String>,
    /// A destination or group the objective counts; repeat.
    #[arg(long = "confirm-of", value_name = "NAME", requires = "confirm_within")]
    pub(crate) confirm_of: Vec<String>,
    /// How many of them must confirm (default 1).
    #[arg(long, value_name = "N", requires = "confirm_within")]
    pub(crate) confirm_any: Option<u32>,
    /// Where the message goes when the deadline passes; repeat.
    #[arg(long = "fallback", value_name = "NAME", requires = "confirm_within")]
    pub(crate) fallback: Vec<String>,
    /// Where the meta-alert ("not confirmed by ... within ...") goes.
    #[arg(long, value_name = "NAME", requires = "confirm_within")]
    pub(crate) on_escalation: Option<String>,
}

impl ObjectiveArgs {
    /// The request's `objective`; None when no objective flag was given.
    pub(crate) fn request(self) -> Option<herald::api::wire::ObjectiveRequest> {
        let within = self.confirm_within?;
        Some(herald::api::wire::ObjectiveRequest {
            confirm: herald::api::wire::ConfirmRequest {
                any: self.confirm_any.unwrap_or(1),
                of: self.confirm_of,
                within,
            },
            fallback: self.fallback,
            on_escalation: self.on_escalation,
        })
    }
}

/// Where the API is and how to authenticate, for every client command.
/// The environment variables are read here rather than by clap, so that a
/// usage line never shows `--server` or `--token` as given when only the
/// environment set them.
#[derive(clap::Args)]
pub(crate) struct ClientArgs {
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
    /// A PEM file of CA certificates to trust for an https:// server,
    /// besides the system's [env: HERALD_CACERT]
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
}

impl ClientArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let token = self.token.clone().or_else(|| non_empty_env("HERALD_TOKEN"));
        let cacert = self
            .cacert
            .clone()
            .or_else(|| non_empty_env("HERALD_CACERT").map(PathBuf::from));
        Ok(Client::with_trust(
            &self.server_url()?,
            token,
            cacert.as_deref(),
        )?)
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
            Some(path) => format!(
                "{}://{}",
                herald::config::client_scheme(&path),
                herald::config::client_address(&path)?
            ),
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

fn parse_nodes(text: &str) -> Result<std::num::NonZeroUsize, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a number of nodes; a run needs at least 1 herald serve")
    })
}

fn default_server() -> String {
    format!("http://{DEFAULT_LISTEN}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
