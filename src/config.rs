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
#[derive(Clone, Debug, Default)]
pub struct AlertmanagerRoutes {
    /// For receivers not listed in `receivers`.
    pub destinations: Vec<String>,
    pub receivers: BTreeMap<String, Vec<String>>,
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
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
        }
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
    metrics_require_token: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum FileKind {
    Webhook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDestination {
    kind: FileKind,
    url: Spanned<String>,
    secret_env: Option<Spanned<String>>,
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
            validate_destination_name(&name)
                .map_err(|reason| error(Some(d.url.span()), format!("{key}: {reason}")))?;
            let url = parse_destination_url(d.url.get_ref())
                .map_err(|reason| error(Some(d.url.span()), format!("{key}.url: {reason}")))?;
            let secret = match &d.secret_env {
                None => None,
                Some(var) => {
                    let value = env(var.get_ref()).ok_or_else(|| {
                        error(
                            Some(var.span()),
                            format!(
                                "{key}.secret_env: environment variable {} is not set",
                                var.get_ref()
                            ),
                        )
                    })?;
                    Some(WebhookSecret::parse(value.trim()).map_err(|reason| {
                        error(
                            Some(var.span()),
                            format!("{key}.secret_env: the value of {} {reason}", var.get_ref()),
                        )
                    })?)
                }
            };
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
                None => None,
                Some(rate) if (0.01..=100_000.0).contains(rate.get_ref()) => Some(*rate.get_ref()),
                Some(rate) => {
                    return Err(error(
                        Some(rate.span()),
                        format!("{key}.rate_limit_per_sec: must be between 0.01 and 100000"),
                    ))
                }
            };
            let rate_burst =
                checked(&d.rate_limit_burst, 1, 1..=10_000).map_err(|(span, range)| {
                    error(span, format!("{key}.rate_limit_burst: must be {range}"))
                })?;
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
            let target = match d.kind {
                FileKind::Webhook => Target::Webhook { url, secret },
            };
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
    fn the_example_file_is_valid() {
        let config = Config::parse(
            "herald.example.toml",
            include_str!("../herald.example.toml"),
            |_| Some(SECRET.to_owned()),
        )
        .unwrap();
        assert_eq!(config.destinations.len(), 2);
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(config.tokens[0].scopes.len(), 3);
        let routes = config.alertmanager.unwrap();
        assert_eq!(routes.receivers["database-oncall"].len(), 2);
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
