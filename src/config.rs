//! The configuration file (TOML): where herald listens, where it keeps its
//! database, and the destinations with their policies. Defaults first, then
//! the file, then command-line flags. Every error names the file, the line
//! where known, the key, and why.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use toml::Spanned;

use crate::domain::{validate_destination_name, RetryPolicy};

/// Default address of `herald serve`, and so of the CLI clients.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default database file, in the working directory.
pub const DEFAULT_DATABASE: &str = "herald.db";
/// Largest request body the API reads.
pub const DEFAULT_REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Default time one attempt may take, connect to last byte.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default number of attempts in flight to one destination.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// A request answered after this long gets 503 instead.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Ingest idempotency keys are remembered this long (24 h).
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 86_400;
/// Finished broadcasts older than this are deleted (30 days); 0 keeps them.
pub const DEFAULT_BROADCAST_RETENTION_SECS: u64 = 30 * 86_400;
/// Largest Alertmanager notification the ingest route reads: a group of
/// 1,000 alerts is about 1 MB.
pub const DEFAULT_ALERTMANAGER_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// The longest retention the config takes (10 years).
pub const BROADCAST_RETENTION_SECS_MAX: u64 = 3_650 * 86_400;
/// Failed attempts in a row that open a destination's circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 10;
/// How long an open breaker waits before it lets one probe through.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 30_000;
/// No destination gets more attempts in flight than this.
pub const CONCURRENCY_MAX: u32 = 1_024;
/// How long a node's lease on a delivery lasts (PostgreSQL only).
pub const DEFAULT_LEASE_MS: u64 = crate::store::postgres::DEFAULT_LEASE_MS;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// A SQLite file, or a `postgres://` URL for several nodes.
    pub database: PathBuf,
    /// This node's name in a PostgreSQL cluster; random per start if unset.
    pub node_id: Option<String>,
    /// How long a claimed delivery stays this node's (PostgreSQL only); at
    /// least twice the longest destination timeout.
    pub lease_ms: u64,
    pub request_body_bytes_max: usize,
    /// A request taking longer than this is answered 503.
    pub request_timeout_ms: u64,
    /// How long an ingest `Idempotency-Key` is remembered.
    pub idempotency_retention_ms: u64,
    /// Finished broadcasts (every delivery final) older than this are
    /// deleted with their deliveries and attempts; 0 keeps them forever.
    pub broadcast_retention_secs: u64,
    /// Whether `/metrics` needs a token with the `read` scope.
    pub metrics_require_token: bool,
    pub destinations: Vec<Destination>,
    /// API bearer tokens. None configured: the API is open (with a warning).
    pub tokens: Vec<ApiToken>,
    /// Where Alertmanager notifications go; ingest is refused without it.
    pub alertmanager: Option<AlertmanagerRoutes>,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create broadcasts (and ingest alerts).
    Send,
    /// Read broadcasts, events, destinations, metrics.
    Read,
    /// Retry and cancel.
    Operate,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "send" => Some(Scope::Send),
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            _ => None,
        }
    }
}

/// A bearer token as configured: only the SHA-256 of its secret is kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Alertmanager receivers to herald destinations.
#[derive(Clone, Debug)]
pub struct AlertmanagerRoutes {
    /// For receivers not listed in `receivers`.
    pub destinations: Vec<String>,
    pub receivers: BTreeMap<String, Vec<String>>,
    /// The ingest route's own body limit (other routes keep
    /// `request_body_bytes_max`).
    pub request_body_bytes_max: usize,
}

impl Default for AlertmanagerRoutes {
    fn default() -> AlertmanagerRoutes {
        AlertmanagerRoutes {
            destinations: Vec::new(),
            receivers: BTreeMap::new(),
            request_body_bytes_max: DEFAULT_ALERTMANAGER_BODY_BYTES_MAX,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Destination {
    pub name: String,
    pub target: Target,
    pub timeout_ms: u64,
    pub concurrency: u32,
    pub policy: RetryPolicy,
    pub isolation: Isolation,
}

/// How herald protects a destination (and itself) from overload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Isolation {
    /// Requests per second at most (token bucket); unlimited when absent.
    pub rate_per_sec: Option<f64>,
    /// Requests the bucket allows at once after a quiet spell.
    pub rate_burst: u32,
    /// Failed attempts in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    pub breaker_cooldown_ms: u64,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            rate_per_sec: None,
            rate_burst: 1,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown_ms: DEFAULT_BREAKER_COOLDOWN_MS,
        }
    }
}

/// Where and how to deliver; one variant per destination kind.
#[derive(Clone, Debug)]
pub enum Target {
    Webhook {
        url: reqwest::Url,
        /// Standard Webhooks signing secret; unsigned when absent.
        secret: Option<WebhookSecret>,
    },
    /// Slack Web API with a bot token (`chat.postMessage`).
    Slack {
        /// The Web API's base, `https://slack.com/api/`.
        api_url: reqwest::Url,
        channel: String,
        token: Secret,
    },
    /// A Microsoft Teams workflow ("Post to a channel when a webhook request
    /// is received"): Adaptive Cards, no read-back.
    Teams { url: reqwest::Url },
    /// Jira Cloud REST v3, basic auth with an account's email and API token.
    Jira {
        site_url: reqwest::Url,
        project: String,
        issue_type: String,
        email: String,
        token: Secret,
        /// The transition (name or id) a resolve applies.
        resolve_transition: String,
        /// Jira's search lags its writes: after an ambiguous create, a
        /// search that finds nothing is repeated after this long.
        search_recheck_ms: u64,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        /// The Events API's base, `https://events.pagerduty.com`.
        events_url: reqwest::Url,
        routing_key: Secret,
    },
    /// A Discord channel webhook. In a forum channel (`forum = true`) each
    /// thread becomes a post and its updates land in it.
    Discord { url: reqwest::Url, forum: bool },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Teams { .. } => "teams",
            Target::Jira { .. } => "jira",
            Target::PagerDuty { .. } => "pagerduty",
            Target::Discord { .. } => "discord",
        }
    }
}

/// A credential: a bot token, an API token, a routing key. Its `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A Standard Webhooks symmetric secret (`whsec_` + base64 of 24..=64
/// bytes). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (Standard Webhooks secret format)")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not valid base64")?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; Standard Webhooks secrets are 24 to 64 bytes",
                key.len()
            ));
        }
        Ok(WebhookSecret(key))
    }

    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    destinations: BTreeMap<String, FileDestination>,
    #[serde(default)]
    tokens: Vec<FileToken>,
    alertmanager: Option<FileAlertmanager>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: Spanned<String>,
    sha256: Spanned<String>,
    scopes: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAlertmanager {
    destinations: Spanned<Vec<String>>,
    #[serde(default)]
    receivers: BTreeMap<String, Spanned<Vec<String>>>,
    request_body_bytes_max: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileServer {
    listen: Option<Spanned<String>>,
    database: Option<PathBuf>,
    node_id: Option<String>,
    lease_ms: Option<Spanned<u64>>,
    request_body_bytes_max: Option<Spanned<u64>>,
    request_timeout_ms: Option<Spanned<u64>>,
    idempotency_retention_secs: Option<Spanned<u64>>,
    broadcast_retention_secs: Option<Spanned<u64>>,
    metrics_require_token: Option<bool>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileKind {
    Webhook,
    Slack,
    Teams,
    Jira,
    PagerDuty,
    Discord,
}

impl FileKind {
    fn as_str(self) -> &'static str {
        match self {
            FileKind::Webhook => "webhook",
            FileKind::Slack => "slack",
            FileKind::Teams => "teams",
            FileKind::Jira => "jira",
            FileKind::PagerDuty => "pagerduty",
            FileKind::Discord => "discord",
        }
    }

    /// The destination's own published pace, used when the file sets none:
    /// (requests per second, burst).
    fn default_rate(self) -> Option<(f64, u32)> {
        match self {
            // One message per second per channel.
            FileKind::Slack => Some((1.0, 1)),
            // Workflows throttle bursts; a few a second is safe.
            FileKind::Teams => Some((4.0, 4)),
            FileKind::Jira => Some((10.0, 10)),
            // 120 events a minute per routing key.
            FileKind::PagerDuty => Some((2.0, 4)),
            // 5 requests per 2 seconds per webhook.
            FileKind::Discord => Some((2.5, 5)),
            FileKind::Webhook => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDestination {
    kind: Spanned<FileKind>,
    url: Option<Spanned<String>>,
    /// The URL itself is a credential (Discord, Teams): read it from here.
    url_env: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    channel: Option<Spanned<String>>,
    project: Option<Spanned<String>>,
    issue_type: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    resolve_transition: Option<Spanned<String>>,
    search_recheck_ms: Option<Spanned<u64>>,
    forum: Option<Spanned<bool>>,
    timeout_ms: Option<Spanned<u64>>,
    concurrency: Option<Spanned<u32>>,
    rate_limit_per_sec: Option<Spanned<f64>>,
    rate_limit_burst: Option<Spanned<u32>>,
    #[serde(default)]
    retry: FileRetry,
    #[serde(default)]
    breaker: FileBreaker,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileBreaker {
    failures: Option<Spanned<u32>>,
    cooldown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRetry {
    attempts_max: Option<Spanned<u32>>,
    base_ms: Option<Spanned<u64>>,
    cap_ms: Option<Spanned<u64>>,
    deadline_secs: Option<Spanned<u64>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            database: PathBuf::from(DEFAULT_DATABASE),
            node_id: None,
            lease_ms: DEFAULT_LEASE_MS,
            request_body_bytes_max: DEFAULT_REQUEST_BODY_BYTES_MAX,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            idempotency_retention_ms: DEFAULT_IDEMPOTENCY_RETENTION_SECS * 1000,
            broadcast_retention_secs: DEFAULT_BROADCAST_RETENTION_SECS,
            metrics_require_token: false,
            destinations: Vec::new(),
            tokens: Vec::new(),
            alertmanager: None,
        }
    }
}

impl Config {
    /// Reads and checks a config file. `env` looks up environment variables
    /// (secrets); pass `|k| std::env::var(k).ok()` outside tests.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&file, &source, env)
    }

    pub fn parse(
        file: &str,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| {
            source.as_bytes()[..offset.min(source.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        };
        let error = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            file: file.to_owned(),
            line: span.map(|s| line_of(s.start)),
            message,
        };
        let parsed: FileConfig =
            toml::from_str(source).map_err(|e| error(e.span(), e.message().trim().to_owned()))?;
        let mut config = Config::default();
        if let Some(listen) = parsed.server.listen {
            config.listen = listen.get_ref().parse().map_err(|_| {
                error(
                    Some(listen.span()),
                    format!(
                        "server.listen: {:?} is not an address like 127.0.0.1:8080",
                        listen.get_ref()
                    ),
                )
            })?;
        }
        if let Some(database) = parsed.server.database {
            config.database = database;
        }
        if let Some(limit) = parsed.server.request_body_bytes_max {
            if !(1024..=16 * 1024 * 1024).contains(limit.get_ref()) {
                return Err(error(
                    Some(limit.span()),
                    "server.request_body_bytes_max: must be between 1024 and 16777216".into(),
                ));
            }
            config.request_body_bytes_max = *limit.get_ref() as usize;
        }
        if parsed.destinations.is_empty() {
            return Err(error(
                None,
                "destinations: no destination is configured; add a [destinations.NAME] table"
                    .into(),
            ));
        }
        for (name, d) in parsed.destinations {
            let key = format!("destinations.{name}");
            let kind = *d.kind.get_ref();
            validate_destination_name(&name)
                .map_err(|reason| error(Some(d.kind.span()), format!("{key}: {reason}")))?;
            let target = parse_target(&key, &d, &env, &error)?;
            let timeout_ms = checked(&d.timeout_ms, DEFAULT_TIMEOUT_MS, 100..=300_000).map_err(
                |(span, range)| error(span, format!("{key}.timeout_ms: must be {range}")),
            )?;
            let concurrency = checked(&d.concurrency, DEFAULT_CONCURRENCY, 1..=CONCURRENCY_MAX)
                .map_err(|(span, range)| {
                    error(span, format!("{key}.concurrency: must be {range}"))
                })?;
            let defaults = RetryPolicy::default();
            let r = &d.retry;
            let attempts_max = checked(&r.attempts_max, defaults.attempts_max, 1..=100).map_err(
                |(span, range)| error(span, format!("{key}.retry.attempts_max: must be {range}")),
            )?;
            let base_ms =
                checked(&r.base_ms, defaults.base_ms, 1..=3_600_000).map_err(|(span, range)| {
                    error(span, format!("{key}.retry.base_ms: must be {range}"))
                })?;
            let cap_ms = checked(&r.cap_ms, defaults.cap_ms, base_ms..=86_400_000).map_err(
                |(span, range)| {
                    error(
                        span,
                        format!("{key}.retry.cap_ms: must be {range} (at least base_ms)"),
                    )
                },
            )?;
            let deadline_ms = match &r.deadline_secs {
                None => None,
                Some(_) => Some(
                    checked(&r.deadline_secs, 0, 1..=30 * 86_400).map_err(|(span, range)| {
                        error(span, format!("{key}.retry.deadline_secs: must be {range}"))
                    })? * 1000,
                ),
            };
            let rate_per_sec = match &d.rate_limit_per_sec {
                None => kind.default_rate().map(|(rate, _)| rate),
                Some(rate) if (0.01..=100_000.0).contains(rate.get_ref()) => Some(*rate.get_ref()),
                Some(rate) => {
                    return Err(error(
                        Some(rate.span()),
                        format!("{key}.rate_limit_per_sec: must be between 0.01 and 100000"),
                    ))
                }
            };
            let default_burst = kind.default_rate().map_or(1, |(_, burst)| burst);
            let rate_burst = checked(&d.rate_limit_burst, default_burst, 1..=10_000).map_err(
                |(span, range)| error(span, format!("{key}.rate_limit_burst: must be {range}")),
            )?;
            let breaker_failures =
                checked(&d.breaker.failures, DEFAULT_BREAKER_FAILURES, 1..=10_000).map_err(
                    |(span, range)| error(span, format!("{key}.breaker.failures: must be {range}")),
                )?;
            let breaker_cooldown_ms = checked(
                &d.breaker.cooldown_ms,
                DEFAULT_BREAKER_COOLDOWN_MS,
                100..=3_600_000,
            )
            .map_err(|(span, range)| {
                error(span, format!("{key}.breaker.cooldown_ms: must be {range}"))
            })?;
            config.destinations.push(Destination {
                name,
                target,
                timeout_ms,
                concurrency,
                policy: RetryPolicy {
                    attempts_max,
                    base_ms,
                    cap_ms,
                    deadline_ms,
                },
                isolation: Isolation {
                    rate_per_sec,
                    rate_burst,
                    breaker_failures,
                    breaker_cooldown_ms,
                },
            });
        }
        if let Some(timeout) = parsed.server.request_timeout_ms {
            config.request_timeout_ms =
                checked(&Some(timeout), 0, 100..=600_000).map_err(|(span, range)| {
                    error(span, format!("server.request_timeout_ms: must be {range}"))
                })?;
        }
        if let Some(retention) = parsed.server.idempotency_retention_secs {
            config.idempotency_retention_ms =
                checked(&Some(retention), 0, 60..=30 * 86_400).map_err(|(span, range)| {
                    error(
                        span,
                        format!("server.idempotency_retention_secs: must be {range}"),
                    )
                })? * 1000;
        }
        if let Some(retention) = parsed.server.broadcast_retention_secs {
            config.broadcast_retention_secs =
                checked(&Some(retention), 0, 0..=BROADCAST_RETENTION_SECS_MAX).map_err(
                    |(span, range)| {
                        error(
                            span,
                            format!("server.broadcast_retention_secs: must be {range} (0 keeps finished broadcasts forever)"),
                        )
                    },
                )?;
        }
        if let Some(lease) = parsed.server.lease_ms {
            config.lease_ms =
                checked(&Some(lease), 0, 1_000..=3_600_000).map_err(|(span, range)| {
                    error(span, format!("server.lease_ms: must be {range}"))
                })?;
        }
        config.node_id = parsed.server.node_id;
        config.metrics_require_token = parsed.server.metrics_require_token.unwrap_or(false);
        for (index, token) in parsed.tokens.into_iter().enumerate() {
            let key = format!("tokens[{index}]");
            let name = token.name.get_ref().trim().to_owned();
            if name.is_empty() || config.tokens.iter().any(|t| t.name == name) {
                return Err(error(
                    Some(token.name.span()),
                    format!("{key}.name: must be non-empty and unique"),
                ));
            }
            let sha256 = parse_sha256_hex(token.sha256.get_ref()).ok_or_else(|| {
                error(
                    Some(token.sha256.span()),
                    format!("{key}.sha256: must be 64 hex digits, the SHA-256 of the token (see `herald token`)"),
                )
            })?;
            if config.tokens.iter().any(|t| t.sha256 == sha256) {
                return Err(error(
                    Some(token.sha256.span()),
                    format!("{key}.sha256: the same token is configured twice"),
                ));
            }
            let mut scopes = Vec::new();
            for text in token.scopes.get_ref() {
                let scope = Scope::parse(text).ok_or_else(|| {
                    error(
                        Some(token.scopes.span()),
                        format!("{key}.scopes: unknown scope {text:?}; use send, read, operate"),
                    )
                })?;
                if !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
            config.tokens.push(ApiToken {
                name,
                sha256,
                scopes,
            });
        }
        if let Some(am) = parsed.alertmanager {
            let known =
                |names: &Spanned<Vec<String>>, key: &str| -> Result<Vec<String>, ConfigError> {
                    for name in names.get_ref() {
                        if config.destination(name).is_none() {
                            return Err(error(
                                Some(names.span()),
                                format!("{key}: unknown destination {name:?}"),
                            ));
                        }
                    }
                    Ok(names.get_ref().clone())
                };
            let mut routes = AlertmanagerRoutes {
                destinations: known(&am.destinations, "alertmanager.destinations")?,
                receivers: BTreeMap::new(),
                request_body_bytes_max: checked(
                    &am.request_body_bytes_max,
                    DEFAULT_ALERTMANAGER_BODY_BYTES_MAX as u64,
                    1024..=64 * 1024 * 1024,
                )
                .map_err(|(span, range)| {
                    error(
                        span,
                        format!("alertmanager.request_body_bytes_max: must be {range}"),
                    )
                })? as usize,
            };
            for (receiver, names) in &am.receivers {
                let list = known(names, &format!("alertmanager.receivers.{receiver}"))?;
                routes.receivers.insert(receiver.clone(), list);
            }
            config.alertmanager = Some(routes);
        }
        Ok(config)
    }

    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

/// Returns the value (or the default) if it lies in `range`; otherwise the
/// value's span and the range in words.
type Span = Option<std::ops::Range<usize>>;

/// The kind's own settings: which keys it needs, which it refuses.
fn parse_target(
    key: &str,
    d: &FileDestination,
    env: &impl Fn(&str) -> Option<String>,
    error: &impl Fn(Span, String) -> ConfigError,
) -> Result<Target, ConfigError> {
    let kind = *d.kind.get_ref();
    let kind_name = kind.as_str();
    let kind_span = Some(d.kind.span());
    // Keys that belong to other kinds are refused, so a typo'd table is
    // not silently half-used.
    let only_for = |field: &str, present: Option<Span>, kinds: &[FileKind]| match present {
        Some(span) if !kinds.contains(&kind) => Err(error(
            span,
            format!(
                "{key}.{field}: not a setting of kind {kind_name} (only of {})",
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        _ => Ok(()),
    };
    only_for(
        "channel",
        d.channel.as_ref().map(|v| Some(v.span())),
        &[FileKind::Slack],
    )?;
    for (field, value) in [
        ("project", &d.project),
        ("issue_type", &d.issue_type),
        ("email", &d.email),
        ("resolve_transition", &d.resolve_transition),
    ] {
        only_for(
            field,
            value.as_ref().map(|v| Some(v.span())),
            &[FileKind::Jira],
        )?;
    }
    only_for(
        "search_recheck_ms",
        d.search_recheck_ms.as_ref().map(|v| Some(v.span())),
        &[FileKind::Jira],
    )?;
    only_for(
        "forum",
        d.forum.as_ref().map(|v| Some(v.span())),
        &[FileKind::Discord],
    )?;
    only_for(
        "secret_env",
        d.secret_env.as_ref().map(|v| Some(v.span())),
        &[
            FileKind::Webhook,
            FileKind::Slack,
            FileKind::Jira,
            FileKind::PagerDuty,
        ],
    )?;

    let env_value = |field: &str, var: &Spanned<String>| {
        env(var.get_ref())
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                error(
                    Some(var.span()),
                    format!(
                        "{key}.{field}: environment variable {} is not set",
                        var.get_ref()
                    ),
                )
            })
    };
    let url = match (&d.url, &d.url_env) {
        (Some(_), Some(var)) => {
            return Err(error(
                Some(var.span()),
                format!("{key}.url_env: set url or url_env, not both"),
            ))
        }
        (Some(url), None) => Some(
            parse_destination_url(url.get_ref())
                .map_err(|reason| error(Some(url.span()), format!("{key}.url: {reason}")))?,
        ),
        // The value is a credential: the error never repeats it.
        (None, Some(var)) => Some(parse_destination_url(&env_value("url_env", var)?).map_err(
            |_| {
                error(
                    Some(var.span()),
                    format!(
                        "{key}.url_env: the value of {} is not an http(s) URL with a host",
                        var.get_ref()
                    ),
                )
            },
        )?),
        (None, None) => None,
    };
    let default_url = |text: &str| reqwest::Url::parse(text).expect("built-in URL");
    let required_url = |url: Option<reqwest::Url>| {
        url.ok_or_else(|| {
            error(
                kind_span.clone(),
                format!("{key}.url: kind {kind_name} needs url (or url_env)"),
            )
        })
    };
    let required = |field: &str, value: &Option<Spanned<String>>| match value
        .as_ref()
        .map(|v| (v.get_ref().trim(), v.span()))
    {
        Some((text, _)) if !text.is_empty() => Ok(text.to_owned()),
        Some((_, span)) => Err(error(
            Some(span),
            format!("{key}.{field}: must not be empty"),
        )),
        None => Err(error(
            kind_span.clone(),
            format!("{key}.{field}: kind {kind_name} needs {field}"),
        )),
    };
    let secret = |what: &str| {
        match &d.secret_env {
        Some(var) => env_value("secret_env", var).map(Secret::new),
        None => Err(error(
            kind_span.clone(),
            format!("{key}.secret_env: kind {kind_name} needs secret_env, naming the environment variable that holds {what}"),
        )),
    }
    };
    Ok(match kind {
        FileKind::Webhook => {
            let secret = match &d.secret_env {
                None => None,
                Some(var) => Some(
                    WebhookSecret::parse(&env_value("secret_env", var)?).map_err(|reason| {
                        error(
                            Some(var.span()),
                            format!("{key}.secret_env: the value of {} {reason}", var.get_ref()),
                        )
                    })?,
                ),
            };
            Target::Webhook {
                url: required_url(url)?,
                secret,
            }
        }
        FileKind::Slack => {
            let token = secret("the bot token (xoxb-...)")?;
            if !token.expose().starts_with("xox") {
                let span = d.secret_env.as_ref().map(|v| v.span());
                return Err(error(
                    span,
                    format!("{key}.secret_env: the value is not a Slack token (xoxb-...)"),
                ));
            }
            let mut api_url = url.unwrap_or_else(|| default_url("https://slack.com/api/"));
            if !api_url.path().ends_with('/') {
                api_url.set_path(&format!("{}/", api_url.path()));
            }
            Target::Slack {
                api_url,
                channel: required("channel", &d.channel)?,
                token,
            }
        }
        FileKind::Teams => Target::Teams {
            url: required_url(url)?,
        },
        FileKind::Jira => {
            let search_recheck_ms =
                checked(&d.search_recheck_ms, 2_000, 0..=60_000).map_err(|(span, range)| {
                    error(span, format!("{key}.search_recheck_ms: must be {range}"))
                })?;
            let project = required("project", &d.project)?;
            if !project
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                let span = d.project.as_ref().map(|v| v.span());
                return Err(error(
                    span,
                    format!("{key}.project: {project:?} is not a Jira project key (like OPS)"),
                ));
            }
            Target::Jira {
                site_url: required_url(url)?,
                project,
                issue_type: match &d.issue_type {
                    None => "Task".to_owned(),
                    Some(_) => required("issue_type", &d.issue_type)?,
                },
                email: required("email", &d.email)?,
                token: secret("the API token")?,
                resolve_transition: match &d.resolve_transition {
                    None => "Done".to_owned(),
                    Some(_) => required("resolve_transition", &d.resolve_transition)?,
                },
                search_recheck_ms,
            }
        }
        FileKind::PagerDuty => {
            let routing_key = secret("the integration's routing key")?;
            if routing_key.expose().len() != 32 {
                let span = d.secret_env.as_ref().map(|v| v.span());
                return Err(error(
                    span,
                    format!("{key}.secret_env: a PagerDuty routing key is 32 characters"),
                ));
            }
            Target::PagerDuty {
                events_url: url.unwrap_or_else(|| default_url("https://events.pagerduty.com/")),
                routing_key,
            }
        }
        FileKind::Discord => Target::Discord {
            url: required_url(url)?,
            forum: d.forum.as_ref().is_some_and(|f| *f.get_ref()),
        },
    })
}

fn checked<T: Copy + PartialOrd + fmt::Display>(
    value: &Option<Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, (Option<std::ops::Range<usize>>, String)> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err((
            Some(v.span()),
            format!(
                "between {} and {} (got {})",
                range.start(),
                range.end(),
                v.get_ref()
            ),
        )),
    }
}

fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn parse_destination_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?} carries credentials in the URL; use secret_env instead so they are never printed"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(source: &str) -> Result<Config, ConfigError> {
        Config::parse("herald.toml", source, |k| {
            (k == "HOOK_SECRET").then(|| SECRET.to_owned())
        })
    }

    #[test]
    fn reads_a_full_file() {
        let config = parse(
            r#"
[server]
listen = "127.0.0.1:9999"
database = "/tmp/x.db"

[destinations.status-page]
kind = "webhook"
url = "https://status.example.com/hooks/herald"
secret_env = "HOOK_SECRET"
timeout_ms = 2000
concurrency = 4
retry = { attempts_max = 5, base_ms = 500, cap_ms = 60000, deadline_secs = 600 }
"#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9999);
        let d = config.destination("status-page").unwrap();
        assert_eq!(d.timeout_ms, 2000);
        assert_eq!(d.policy.deadline_ms, Some(600_000));
        assert!(format!("{d:?}").contains("<redacted>"));
        assert!(!format!("{d:?}").contains("MfKQ9r8"));
    }

    #[test]
    fn reads_every_destination_kind() {
        let env = |k: &str| match k {
            "SLACK_TOKEN" => Some("xoxb-1-2-abc".to_owned()),
            "JIRA_TOKEN" => Some("jira-api-token".to_owned()),
            "PD_KEY" => Some("0123456789abcdef0123456789abcdef".to_owned()),
            "DISCORD_URL" => Some("https://discord.com/api/webhooks/1/tok".to_owned()),
            _ => None,
        };
        let source = r#"
[destinations.slack]
kind = "slack"
channel = "C0123"
secret_env = "SLACK_TOKEN"

[destinations.teams]
kind = "teams"
url = "https://example.logic.azure.com/workflows/abc"

[destinations.jira]
kind = "jira"
url = "https://example.atlassian.net"
project = "OPS"
email = "herald@example.com"
secret_env = "JIRA_TOKEN"

[destinations.pagerduty]
kind = "pagerduty"
secret_env = "PD_KEY"

[destinations.discord]
kind = "discord"
url_env = "DISCORD_URL"
forum = true
"#;
        let config = Config::parse("herald.toml", source, env).unwrap();
        let slack = config.destination("slack").unwrap();
        assert_eq!(slack.target.kind(), "slack");
        assert_eq!(slack.isolation.rate_per_sec, Some(1.0), "Slack's pace");
        assert!(!format!("{slack:?}").contains("xoxb-1-2-abc"));
        let Target::Jira {
            issue_type,
            resolve_transition,
            ..
        } = &config.destination("jira").unwrap().target
        else {
            panic!("jira");
        };
        assert_eq!(
            (issue_type.as_str(), resolve_transition.as_str()),
            ("Task", "Done")
        );
        let Target::PagerDuty { events_url, .. } = &config.destination("pagerduty").unwrap().target
        else {
            panic!("pagerduty");
        };
        assert_eq!(events_url.as_str(), "https://events.pagerduty.com/");
        assert!(matches!(
            config.destination("discord").unwrap().target,
            Target::Discord { forum: true, .. }
        ));

        let err = Config::parse(
            "herald.toml",
            "[destinations.s]\nkind = \"slack\"\nsecret_env = \"SLACK_TOKEN\"\n",
            env,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("destinations.s.channel: kind slack needs channel"),
            "{err}"
        );
        let err = Config::parse(
            "herald.toml",
            "[destinations.w]\nkind = \"webhook\"\nurl = \"http://x/\"\nchannel = \"C1\"\n",
            env,
        )
        .unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(
            err.to_string()
                .contains("destinations.w.channel: not a setting of kind webhook"),
            "{err}"
        );
        let err = Config::parse(
            "herald.toml",
            "[destinations.p]\nkind = \"pagerduty\"\nsecret_env = \"SLACK_TOKEN\"\n",
            env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("32 characters"), "{err}");
        assert!(
            !err.to_string().contains("xoxb"),
            "never prints the secret: {err}"
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let config = Config::parse(
            "herald.example.toml",
            include_str!("../herald.example.toml"),
            |var| {
                Some(match var {
                    "SLACK_BOT_TOKEN" => "xoxb-example".to_owned(),
                    "PAGERDUTY_ROUTING_KEY" => "0123456789abcdef0123456789abcdef".to_owned(),
                    "TEAMS_WORKFLOW_URL" => {
                        "https://example.logic.azure.com/workflows/1".to_owned()
                    }
                    "DISCORD_WEBHOOK_URL" => "https://discord.com/api/webhooks/1/t".to_owned(),
                    _ => SECRET.to_owned(),
                })
            },
        )
        .unwrap();
        assert_eq!(config.destinations.len(), 7);
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(config.tokens[0].scopes.len(), 3);
        assert_eq!(config.broadcast_retention_secs, 30 * 86_400);
        let routes = config.alertmanager.unwrap();
        assert_eq!(routes.receivers["database-oncall"].len(), 2);
        assert_eq!(routes.request_body_bytes_max, 2 * 1024 * 1024);
    }

    #[test]
    fn retention_and_the_ingest_limit_are_checked() {
        let a = "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\n";
        let off = parse(&format!("[server]\nbroadcast_retention_secs = 0\n{a}")).unwrap();
        assert_eq!(
            off.broadcast_retention_secs, 0,
            "0 keeps broadcasts forever"
        );
        let err = parse(&format!(
            "[server]\nbroadcast_retention_secs = 999999999999\n{a}"
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("server.broadcast_retention_secs: must be between 0 and"),
            "{err}"
        );
        let err = parse(&format!(
            "{a}[alertmanager]\ndestinations = [\"a\"]\nrequest_body_bytes_max = 10\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("alertmanager.request_body_bytes_max: must be between 1024 and"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_line_key_and_reason() {
        let err = parse("[destinations.a]\nkind = \"webhook\"\nurl = \"not a url\"\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(
            err.to_string()
                .starts_with("herald.toml:3: destinations.a.url:"),
            "{err}"
        );

        let err =
            parse("[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nconcurency = 3\n")
                .unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("concurency"), "{err}");

        let err = parse(
            "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nsecret_env = \"MISSING\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("destinations.a.secret_env: environment variable MISSING is not set"),
            "{err}"
        );

        let err = parse("[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nretry = { attempts_max = 0 }\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("destinations.a.retry.attempts_max: must be between 1 and 100"),
            "{err}"
        );

        let err = parse("[destinations.a]\nkind = \"carrier-pigeon\"\nurl = \"http://x/\"\n")
            .unwrap_err();
        assert_eq!(err.line, Some(2));

        let err = parse("").unwrap_err();
        assert!(err.message.contains("no destination"), "{err}");
    }
}
