//! The configuration file (TOML): where herald listens, where it keeps its
//! database, and the destinations with their policies. Defaults first, then
//! the file, then command-line flags. Every error names the file, the line
//! where known, the key, and why.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
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
pub use crate::domain::{Isolation, DEFAULT_BREAKER_COOLDOWN_MS, DEFAULT_BREAKER_FAILURES};
/// No destination gets more attempts in flight than this.
pub const CONCURRENCY_MAX: u32 = 1_024;
/// How long a node's lease on a delivery lasts (PostgreSQL only).
pub use crate::domain::DEFAULT_LEASE_MS;
/// A client must send a request's whole head within this long.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// A connection with no request open for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// The commented first config `herald init` writes: one destination of
/// each kind at `herald mock`'s default address, no secret to set.
pub const INIT_TEMPLATE: &str = include_str!("init.toml");

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
    /// `server.log_format`; `--log-format` and `HERALD_LOG_FORMAT` win.
    pub log_format: Option<crate::logging::LogFormat>,
    /// A client must send a request's whole head within this long.
    pub header_read_timeout_ms: u64,
    /// A connection with no request open for this long is closed.
    pub idle_timeout_ms: u64,
    /// Connections open at once; by default half the open-file limit
    /// (raised to its hard limit at start).
    pub connections_max: Option<usize>,
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
    /// A Discord channel through the bot API (`channel_id` set): Create
    /// Message with a `nonce` and `enforce_nonce`, so a re-send after a
    /// lost answer is not a second message.
    DiscordBot {
        /// The API's base, `https://discord.com/api/v10/`.
        api_url: reqwest::Url,
        channel_id: String,
        token: Secret,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Teams { .. } => "teams",
            Target::Jira { .. } => "jira",
            Target::PagerDuty { .. } => "pagerduty",
            Target::Discord { .. } | Target::DiscordBot { .. } => "discord",
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
    /// Random key bytes in a secret `generate` makes (Standard Webhooks
    /// allows 24 to 64).
    pub const GENERATED_KEY_BYTES: usize = 32;

    /// A new random secret in its text form (`whsec_` + base64), as
    /// `herald secret` prints it.
    pub fn generate() -> String {
        let key: [u8; WebhookSecret::GENERATED_KEY_BYTES] = rand::random();
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

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

/// One problem found in a config file: its line where known, and a message
/// that starts with the key path and says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem of one config file, found in one pass, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.len() > 1 {
            writeln!(f, "{} has {} problems:", self.file, self.problems.len())?;
        }
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.file)?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {}", problem.message)?;
        }
        Ok(())
    }
}

/// Collects the problems of one file as they are found, so one run reports
/// them all.
struct Problems<'s> {
    source: &'s str,
    list: RefCell<Vec<ConfigProblem>>,
    missing_env: RefCell<Vec<String>>,
}

impl<'s> Problems<'s> {
    fn new(source: &'s str) -> Problems<'s> {
        Problems {
            source,
            list: RefCell::new(Vec::new()),
            missing_env: RefCell::new(Vec::new()),
        }
    }

    fn add(&self, span: Span, message: String) {
        let line = span.map(|span| {
            self.source.as_bytes()[..span.start.min(self.source.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        self.list.borrow_mut().push(ConfigProblem { line, message });
    }

    fn is_empty(&self) -> bool {
        self.list.borrow().is_empty()
    }

    /// The value if it lies in `range`, else the problem is noted and the
    /// default stands in, so the rest of the file is still checked.
    fn in_range<T: Copy + PartialOrd + fmt::Display>(
        &self,
        path: &str,
        value: &Option<Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T {
        checked(value, default, range).unwrap_or_else(|(span, range)| {
            self.add(span, format!("{path}: must be {range}"));
            default
        })
    }

    /// Deserializes one section on its own, so a wrong type in one
    /// destination does not hide the problems of the others.
    fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let deserializer = toml::de::ValueDeserializer::from(value.clone());
        match T::deserialize(deserializer) {
            Ok(section) => Some(section),
            Err(error) => {
                // Name the key whose value is wrong, not just the section.
                let key = error
                    .span()
                    .and_then(|span| value.get_ref().as_table().and_then(|t| key_at(t, &span)));
                let path = match key {
                    Some(key) => format!("{path}.{key}"),
                    None => path.to_owned(),
                };
                let message = error
                    .message()
                    .trim()
                    .replace("expected u64", "expected a whole number")
                    .replace("expected u32", "expected a whole number")
                    .replace("expected f64", "expected a number");
                self.add(
                    error.span().or(Some(value.span())),
                    format!("{path}: {message}"),
                );
                None
            }
        }
    }

    fn into_error(self, file: &str) -> ConfigError {
        let missing = self.missing_env.into_inner();
        let mut problems = self.list.into_inner();
        // File order; problems without a line (the whole file) go last.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        if missing.len() > 1 {
            problems.push(ConfigProblem {
                line: None,
                message: format!(
                    "{} environment variables are not set: {}; export each before starting herald",
                    missing.len(),
                    missing.join(", ")
                ),
            });
        }
        ConfigError {
            file: file.to_owned(),
            problems,
        }
    }
}

/// The names of a struct's fields as serde sees them, read from its
/// `Deserialize` impl, so the unknown-key check knows every key a struct
/// takes without a second list to keep in step.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct FieldNames<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// The known word closest to `word` by edit distance, if it is close enough
/// to be a typo (at most a third of its letters, and at least one).
pub fn closest_word<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let allowed = (word.chars().count() / 3).max(1);
    let close = known
        .iter()
        .map(|candidate| (edit_distance(&word, candidate), *candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    // A shortened key (`attempts` for `attempts_max`) is far by distance
    // but plainly meant.
    close.or_else(|| {
        let mut longer = known
            .iter()
            .filter(|candidate| word.len() >= 3 && candidate.starts_with(word.as_str()));
        match (longer.next(), longer.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The dotted key, within `table`, of the value written at `span`.
fn key_at(table: &DeTable<'_>, span: &std::ops::Range<usize>) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        if value.span() == *span {
            return Some(key.get_ref().to_string());
        }
        let nested = value.get_ref().as_table()?;
        key_at(nested, span).map(|inner| format!("{}.{inner}", key.get_ref()))
    })
}

fn entry<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v)
}

/// Notes every key of `table` that is not in `known`, with the likely
/// intended key or the list of valid ones.
fn unknown_keys(path: &str, table: &DeTable<'_>, known: &[&str], problems: &Problems<'_>) {
    for (key, _) in table.iter() {
        if known.contains(&key.get_ref().as_ref()) {
            continue;
        }
        let full = if path.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{path}.{}", key.get_ref())
        };
        let fix = match closest_word(key.get_ref(), known) {
            Some(intended) => format!("did you mean {intended}?"),
            None => format!("the keys here are {}", known.join(", ")),
        };
        problems.add(Some(key.span()), format!("{full}: unknown key; {fix}"));
    }
}

/// The unknown-key pass over the whole document. Returns the destinations
/// written as one table per kind (`[destinations.ops.webhook]`), already
/// explained, so their missing `kind` is not reported again.
fn check_keys(document: &DeTable<'_>, problems: &Problems<'_>) -> Vec<String> {
    let mut per_kind_tables = Vec::new();
    unknown_keys("", document, fields_of::<FileConfig>(), problems);
    let table_of = |key: &str| entry(document, key).and_then(|v| v.get_ref().as_table());
    if let Some(server) = table_of("server") {
        unknown_keys("server", server, fields_of::<FileServer>(), problems);
    }
    if let Some(alertmanager) = table_of("alertmanager") {
        let known = fields_of::<FileAlertmanager>();
        unknown_keys("alertmanager", alertmanager, known, problems);
    }
    if let Some(DeValue::Array(tokens)) = entry(document, "tokens").map(|v| v.get_ref()) {
        for (index, token) in tokens.iter().enumerate() {
            if let Some(token) = token.get_ref().as_table() {
                let path = format!("tokens[{index}]");
                unknown_keys(&path, token, fields_of::<FileToken>(), problems);
            }
        }
    }
    for (name, value) in table_of("destinations").into_iter().flatten() {
        let Some(table) = value.get_ref().as_table() else {
            continue;
        };
        let path = format!("destinations.{}", name.get_ref());
        let mut known = fields_of::<FileDestination>().to_vec();
        for (key, value) in table.iter() {
            let kind = key.get_ref().to_ascii_lowercase();
            if value.get_ref().is_table() && FileKind::parse(&kind).is_some() {
                problems.add(
                    Some(key.span()),
                    format!(
                        "{path}.{}: a destination is one table, not a table per kind; write [destinations.{}] with kind = {kind:?}",
                        key.get_ref(),
                        suggested_destination_name(name.get_ref()),
                    ),
                );
                per_kind_tables.push(name.get_ref().to_string());
                known.push(key.get_ref());
            }
        }
        unknown_keys(&path, table, &known, problems);
        for (nested, fields) in [
            ("retry", fields_of::<FileRetry>()),
            ("breaker", fields_of::<FileBreaker>()),
        ] {
            if let Some(nested_table) = entry(table, nested).and_then(|v| v.get_ref().as_table()) {
                unknown_keys(&format!("{path}.{nested}"), nested_table, fields, problems);
            }
        }
    }
    per_kind_tables
}

/// The API address a client uses for a config file: its `server.listen`
/// (default 127.0.0.1:8080), with an unspecified address (`0.0.0.0`) made
/// loopback. Reads only that key, so a client needs none of the server's
/// secrets.
pub fn client_address(path: &Path) -> Result<SocketAddr, ConfigError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![ConfigProblem {
            line: None,
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let problems = Problems::new(&source);
    let (document, syntax_errors) = DeTable::parse_recoverable(&source);
    for error in &syntax_errors {
        problems.add(error.span(), error.message().trim().to_owned());
    }
    let listen = entry(document.get_ref(), "server")
        .and_then(|server| server.get_ref().as_table())
        .and_then(|server| entry(server, "listen"));
    let mut address: SocketAddr = DEFAULT_LISTEN.parse().expect("default listen address");
    if let Some(listen) = listen {
        match listen.get_ref().as_str().map(parse_listen_address) {
            Some(Ok(parsed)) => address = parsed,
            Some(Err(reason)) => {
                problems.add(Some(listen.span()), format!("server.listen: {reason}"))
            }
            None => problems.add(
                Some(listen.span()),
                "server.listen: expected a string, like \"127.0.0.1:8080\"".to_owned(),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(problems.into_error(&file));
    }
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(address)
}

/// A valid destination name close to `name`: lower case, other characters
/// turned into `-`.
fn suggested_destination_name(name: &str) -> String {
    let lowered: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = lowered.trim_start_matches(['-', '_']);
    if trimmed.is_empty() {
        "name".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` (`localhost:8080`)
/// resolved now, preferring an IPv4 address when the name has several.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let invalid = || {
        format!(
            "{text:?} is not an address to listen on; write IP:PORT or HOST:PORT, like 127.0.0.1:8080 or localhost:8080"
        )
    };
    let has_port = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(invalid());
    }
    let addresses: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|_| invalid())?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(invalid)
}

/// The file's top-level sections. Only their names are used: each section
/// is read on its own (`Problems::read`).
#[derive(Deserialize)]
#[allow(dead_code)]
struct FileConfig {
    server: serde::de::IgnoredAny,
    destinations: serde::de::IgnoredAny,
    tokens: serde::de::IgnoredAny,
    alertmanager: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
struct FileToken {
    name: Spanned<String>,
    sha256: Spanned<String>,
    scopes: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
struct FileAlertmanager {
    destinations: Spanned<Vec<String>>,
    #[serde(default)]
    receivers: BTreeMap<String, Spanned<Vec<String>>>,
    request_body_bytes_max: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
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
    log_format: Option<Spanned<String>>,
    header_read_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    connections_max: Option<Spanned<u64>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Webhook,
    Slack,
    Teams,
    Jira,
    PagerDuty,
    Discord,
}

impl FileKind {
    const ALL: [FileKind; 6] = [
        FileKind::Webhook,
        FileKind::Slack,
        FileKind::Teams,
        FileKind::Jira,
        FileKind::PagerDuty,
        FileKind::Discord,
    ];

    fn parse(text: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

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
struct FileDestination {
    kind: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    /// The URL itself is a credential (Discord, Teams): read it from here.
    url_env: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    /// The credential written in the file itself: for the mock and tests;
    /// real credentials belong in the environment (`secret_env`).
    secret: Option<Spanned<String>>,
    channel: Option<Spanned<String>>,
    project: Option<Spanned<String>>,
    issue_type: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    resolve_transition: Option<Spanned<String>>,
    search_recheck_ms: Option<Spanned<u64>>,
    forum: Option<Spanned<bool>>,
    /// Discord's bot mode: the channel the bot posts to (a snowflake).
    channel_id: Option<Spanned<String>>,
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
struct FileBreaker {
    failures: Option<Spanned<u32>>,
    cooldown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
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
            log_format: None,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            connections_max: None,
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
            problems: vec![ConfigProblem {
                line: None,
                message: match e.kind() {
                    std::io::ErrorKind::NotFound => format!(
                        "cannot read the config file: {e}; `herald init` writes a first one"
                    ),
                    _ => format!("cannot read the config file: {e}"),
                },
            }],
        })?;
        Config::parse(&file, &source, env)
    }

    /// Checks the whole file and reports every problem at once, each with
    /// its line, key path and what to write instead.
    pub fn parse(
        file: &str,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let problems = Problems::new(source);
        let (document, syntax_errors) = DeTable::parse_recoverable(source);
        if !syntax_errors.is_empty() {
            for error in &syntax_errors {
                problems.add(error.span(), error.message().trim().to_owned());
            }
            return Err(problems.into_error(file));
        }
        let document = document.into_inner();
        let per_kind_tables = check_keys(&document, &problems);
        let mut config = Config::default();

        let server: FileServer = entry(&document, "server")
            .and_then(|value| problems.read("server", value))
            .unwrap_or_default();
        if let Some(listen) = &server.listen {
            match parse_listen_address(listen.get_ref()) {
                Ok(address) => config.listen = address,
                Err(reason) => {
                    problems.add(Some(listen.span()), format!("server.listen: {reason}"))
                }
            }
        }
        if let Some(database) = server.database {
            config.database = database;
        }
        config.request_body_bytes_max = problems.in_range(
            "server.request_body_bytes_max",
            &server.request_body_bytes_max,
            DEFAULT_REQUEST_BODY_BYTES_MAX as u64,
            1024..=16 * 1024 * 1024,
        ) as usize;
        config.request_timeout_ms = problems.in_range(
            "server.request_timeout_ms",
            &server.request_timeout_ms,
            DEFAULT_REQUEST_TIMEOUT_MS,
            100..=600_000,
        );
        config.idempotency_retention_ms = problems.in_range(
            "server.idempotency_retention_secs",
            &server.idempotency_retention_secs,
            DEFAULT_IDEMPOTENCY_RETENTION_SECS,
            60..=30 * 86_400,
        ) * 1000;
        config.lease_ms = problems.in_range(
            "server.lease_ms",
            &server.lease_ms,
            DEFAULT_LEASE_MS,
            1_000..=3_600_000,
        );
        config.broadcast_retention_secs = problems.in_range(
            "server.broadcast_retention_secs",
            &server.broadcast_retention_secs,
            DEFAULT_BROADCAST_RETENTION_SECS,
            0..=BROADCAST_RETENTION_SECS_MAX,
        );
        config.header_read_timeout_ms = problems.in_range(
            "server.header_read_timeout_ms",
            &server.header_read_timeout_ms,
            DEFAULT_HEADER_READ_TIMEOUT_MS,
            100..=600_000,
        );
        config.idle_timeout_ms = problems.in_range(
            "server.idle_timeout_ms",
            &server.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
            100..=3_600_000,
        );
        if server.connections_max.is_some() {
            config.connections_max = Some(problems.in_range(
                "server.connections_max",
                &server.connections_max,
                1,
                1..=1_000_000,
            ) as usize);
        }
        config.node_id = server.node_id;
        config.metrics_require_token = server.metrics_require_token.unwrap_or(false);
        if let Some(format) = &server.log_format {
            match crate::logging::LogFormat::parse(format.get_ref()) {
                Some(parsed) => config.log_format = Some(parsed),
                None => problems.add(
                    Some(format.span()),
                    format!(
                        "server.log_format: {:?} is not a log format; use \"text\" or \"json\"",
                        format.get_ref()
                    ),
                ),
            }
        }

        // Every destination named in the file, valid or not, so a route to
        // a destination with a problem is not also called unknown.
        let mut declared = Vec::new();
        let destinations = entry(&document, "destinations");
        match destinations.map(|value| value.get_ref()) {
            Some(DeValue::Table(table)) if !table.is_empty() => {
                for (name, value) in table.iter() {
                    let name_span = Some(name.span());
                    let name = name.get_ref().to_string();
                    declared.push(name.clone());
                    let key = format!("destinations.{name}");
                    if let Err(reason) = validate_destination_name(&name) {
                        problems.add(
                            name_span,
                            format!(
                                "{key}: {reason}; write [destinations.{}]",
                                suggested_destination_name(&name)
                            ),
                        );
                    }
                    let Some(d) = problems.read::<FileDestination>(&key, value) else {
                        continue;
                    };
                    let skip_missing_kind = per_kind_tables.contains(&name);
                    if let Some(destination) =
                        parse_destination(name, &d, &env, &problems, skip_missing_kind)
                    {
                        config.destinations.push(destination);
                    }
                }
            }
            Some(DeValue::Table(_)) | None => problems.add(
                None,
                "destinations: no destination is configured; add a [destinations.NAME] table (`herald init` writes a file with one of each kind)".into(),
            ),
            Some(other) => problems.add(
                destinations.map(|v| v.span()),
                format!(
                    "destinations: expected tables, found a {}; write [destinations.NAME]",
                    other.type_str()
                ),
            ),
        }

        let tokens: Vec<FileToken> = match entry(&document, "tokens") {
            None => Vec::new(),
            Some(value) => match value.get_ref() {
                DeValue::Array(items) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(index, item)| problems.read(&format!("tokens[{index}]"), item))
                    .collect(),
                other => {
                    problems.add(
                        Some(value.span()),
                        format!(
                            "tokens: expected [[tokens]] tables, found a {}",
                            other.type_str()
                        ),
                    );
                    Vec::new()
                }
            },
        };
        for (index, token) in tokens.into_iter().enumerate() {
            if let Some(token) = parse_token(index, token, &config.tokens, &problems) {
                config.tokens.push(token);
            }
        }

        let alertmanager: Option<FileAlertmanager> =
            entry(&document, "alertmanager").and_then(|value| problems.read("alertmanager", value));
        if let Some(am) = alertmanager {
            let known = |names: &Spanned<Vec<String>>, key: &str| -> Vec<String> {
                for name in names.get_ref() {
                    if !declared.contains(name) {
                        let fix = match closest_word(
                            name,
                            &declared.iter().map(String::as_str).collect::<Vec<_>>(),
                        ) {
                            Some(intended) => format!("did you mean {intended}?"),
                            None => format!("the destinations are {}", declared.join(", ")),
                        };
                        problems.add(
                            Some(names.span()),
                            format!("{key}: unknown destination {name:?}; {fix}"),
                        );
                    }
                }
                names.get_ref().clone()
            };
            let mut routes = AlertmanagerRoutes {
                destinations: known(&am.destinations, "alertmanager.destinations"),
                receivers: BTreeMap::new(),
                request_body_bytes_max: problems.in_range(
                    "alertmanager.request_body_bytes_max",
                    &am.request_body_bytes_max,
                    DEFAULT_ALERTMANAGER_BODY_BYTES_MAX as u64,
                    1024..=64 * 1024 * 1024,
                ) as usize,
            };
            for (receiver, names) in &am.receivers {
                let list = known(names, &format!("alertmanager.receivers.{receiver}"));
                routes.receivers.insert(receiver.clone(), list);
            }
            config.alertmanager = Some(routes);
        }

        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.into_error(file))
        }
    }

    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// One line saying what a valid file configures, for `check-config`.
    pub fn summary(&self) -> String {
        let names: Vec<String> = self
            .destinations
            .iter()
            .map(|d| format!("{} ({})", d.name, d.target.kind()))
            .collect();
        format!(
            "{} destination(s): {}; {} token(s){}; listens on {}",
            self.destinations.len(),
            names.join(", "),
            self.tokens.len(),
            if self.alertmanager.is_some() {
                "; Alertmanager ingest on"
            } else {
                ""
            },
            self.listen
        )
    }
}

fn parse_token(
    index: usize,
    token: FileToken,
    earlier: &[ApiToken],
    problems: &Problems<'_>,
) -> Option<ApiToken> {
    let key = format!("tokens[{index}]");
    let name = token.name.get_ref().trim().to_owned();
    let mut valid = true;
    if name.is_empty() || earlier.iter().any(|t| t.name == name) {
        problems.add(
            Some(token.name.span()),
            format!("{key}.name: must be non-empty and unique"),
        );
        valid = false;
    }
    let sha256 = parse_sha256_hex(token.sha256.get_ref());
    match sha256 {
        None => problems.add(
            Some(token.sha256.span()),
            format!("{key}.sha256: must be 64 hex digits, the SHA-256 of the token (see `herald token`)"),
        ),
        Some(sha256) if earlier.iter().any(|t| t.sha256 == sha256) => {
            problems.add(
                Some(token.sha256.span()),
                format!("{key}.sha256: the same token is configured twice"),
            );
            valid = false;
        }
        Some(_) => {}
    }
    let mut scopes = Vec::new();
    for text in token.scopes.get_ref() {
        match Scope::parse(text) {
            Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
            Some(_) => {}
            None => {
                problems.add(
                    Some(token.scopes.span()),
                    format!("{key}.scopes: unknown scope {text:?}; use send, read, operate"),
                );
                valid = false;
            }
        }
    }
    Some(ApiToken {
        name,
        sha256: sha256?,
        scopes,
    })
    .filter(|_| valid)
}

/// One destination's table: its kind, target and policies. Notes every
/// problem; `None` when there was one.
fn parse_destination(
    name: String,
    d: &FileDestination,
    env: &impl Fn(&str) -> Option<String>,
    problems: &Problems<'_>,
    skip_missing_kind: bool,
) -> Option<Destination> {
    let key = format!("destinations.{name}");
    let kinds = FileKind::ALL.map(FileKind::as_str);
    let kind = match &d.kind {
        None => {
            if !skip_missing_kind {
                problems.add(
                    None,
                    format!(
                        "{key}.kind: missing; add kind = \"...\", one of {}",
                        kinds.join(", ")
                    ),
                );
            }
            return None;
        }
        Some(kind) => match FileKind::parse(kind.get_ref()) {
            Some(parsed) => parsed,
            None => {
                let fix = match closest_word(kind.get_ref(), &kinds) {
                    Some(intended) => format!("did you mean {intended}? "),
                    None => String::new(),
                };
                problems.add(
                    Some(kind.span()),
                    format!(
                        "{key}.kind: unknown kind {:?}; {fix}the kinds are {}",
                        kind.get_ref(),
                        kinds.join(", ")
                    ),
                );
                return None;
            }
        },
    };
    let target = parse_target(&key, kind, d, env, problems);
    let timeout_ms = problems.in_range(
        &format!("{key}.timeout_ms"),
        &d.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        100..=300_000,
    );
    let concurrency = problems.in_range(
        &format!("{key}.concurrency"),
        &d.concurrency,
        DEFAULT_CONCURRENCY,
        1..=CONCURRENCY_MAX,
    );
    let defaults = RetryPolicy::default();
    let r = &d.retry;
    let attempts_max = problems.in_range(
        &format!("{key}.retry.attempts_max"),
        &r.attempts_max,
        defaults.attempts_max,
        1..=100,
    );
    let base_ms = problems.in_range(
        &format!("{key}.retry.base_ms"),
        &r.base_ms,
        defaults.base_ms,
        1..=3_600_000,
    );
    let cap_ms = checked(
        &r.cap_ms,
        defaults.cap_ms.max(base_ms),
        base_ms..=86_400_000,
    )
    .unwrap_or_else(|(span, range)| {
        problems.add(
            span,
            format!("{key}.retry.cap_ms: must be {range} (at least base_ms)"),
        );
        defaults.cap_ms
    });
    let deadline_ms = r.deadline_secs.as_ref().map(|_| {
        problems.in_range(
            &format!("{key}.retry.deadline_secs"),
            &r.deadline_secs,
            0,
            1..=30 * 86_400,
        ) * 1000
    });
    let rate_per_sec = match &d.rate_limit_per_sec {
        None => kind.default_rate().map(|(rate, _)| rate),
        Some(rate) if (0.01..=100_000.0).contains(rate.get_ref()) => Some(*rate.get_ref()),
        Some(rate) => {
            problems.add(
                Some(rate.span()),
                format!("{key}.rate_limit_per_sec: must be between 0.01 and 100000"),
            );
            None
        }
    };
    let default_burst = kind.default_rate().map_or(1, |(_, burst)| burst);
    let rate_burst = problems.in_range(
        &format!("{key}.rate_limit_burst"),
        &d.rate_limit_burst,
        default_burst,
        1..=10_000,
    );
    let breaker_failures = problems.in_range(
        &format!("{key}.breaker.failures"),
        &d.breaker.failures,
        DEFAULT_BREAKER_FAILURES,
        1..=10_000,
    );
    let breaker_cooldown_ms = problems.in_range(
        &format!("{key}.breaker.cooldown_ms"),
        &d.breaker.cooldown_ms,
        DEFAULT_BREAKER_COOLDOWN_MS,
        100..=3_600_000,
    );
    Some(Destination {
        name,
        target: target?,
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
    })
}

/// A span in the config file's text.
type Span = Option<std::ops::Range<usize>>;

/// The kind's own settings: which keys it needs, which it refuses. Notes
/// every problem; `None` when there was one.
fn parse_target(
    key: &str,
    kind: FileKind,
    d: &FileDestination,
    env: &impl Fn(&str) -> Option<String>,
    problems: &Problems<'_>,
) -> Option<Target> {
    let kind_name = kind.as_str();
    let kind_span = d.kind.as_ref().map(|k| k.span());
    // Keys that belong to other kinds are refused, so a typo'd table is
    // not silently half-used.
    let only_for = |field: &str, present: Span, kinds: &[FileKind]| {
        if let Some(span) = present {
            if !kinds.contains(&kind) {
                problems.add(
                    Some(span),
                    format!(
                        "{key}.{field}: not a setting of kind {kind_name} (only of {}); remove it",
                        kinds
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    };
    only_for(
        "channel",
        d.channel.as_ref().map(|v| v.span()),
        &[FileKind::Slack],
    );
    for (field, value) in [
        ("project", &d.project),
        ("issue_type", &d.issue_type),
        ("email", &d.email),
        ("resolve_transition", &d.resolve_transition),
    ] {
        only_for(field, value.as_ref().map(|v| v.span()), &[FileKind::Jira]);
    }
    only_for(
        "search_recheck_ms",
        d.search_recheck_ms.as_ref().map(|v| v.span()),
        &[FileKind::Jira],
    );
    only_for(
        "forum",
        d.forum.as_ref().map(|v| v.span()),
        &[FileKind::Discord],
    );
    only_for(
        "channel_id",
        d.channel_id.as_ref().map(|v| v.span()),
        &[FileKind::Discord],
    );
    // Discord takes a credential in its bot mode (`channel_id` set) only.
    let discord_bot = kind == FileKind::Discord && d.channel_id.is_some();
    let secret_kinds: &[FileKind] = if discord_bot {
        &[FileKind::Discord]
    } else {
        &[
            FileKind::Webhook,
            FileKind::Slack,
            FileKind::Jira,
            FileKind::PagerDuty,
        ]
    };
    only_for(
        "secret_env",
        d.secret_env.as_ref().map(|v| v.span()),
        secret_kinds,
    );
    only_for("secret", d.secret.as_ref().map(|v| v.span()), secret_kinds);

    let env_value = |field: &str, var: &Spanned<String>| -> Option<String> {
        let value = env(var.get_ref())
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty());
        if value.is_none() {
            problems
                .missing_env
                .borrow_mut()
                .push(var.get_ref().clone());
            problems.add(
                Some(var.span()),
                format!(
                    "{key}.{field}: environment variable {} is not set; export {}=... before starting herald",
                    var.get_ref(),
                    var.get_ref()
                ),
            );
        }
        value
    };
    let url_given = d.url.is_some() || d.url_env.is_some();
    let url = match (&d.url, &d.url_env) {
        (Some(_), Some(var)) => {
            problems.add(
                Some(var.span()),
                format!("{key}.url_env: set url or url_env, not both; remove one"),
            );
            None
        }
        (Some(url), None) => parse_destination_url(url.get_ref())
            .map_err(|reason| problems.add(Some(url.span()), format!("{key}.url: {reason}")))
            .ok(),
        // The value is a credential: the error never repeats it.
        (None, Some(var)) => env_value("url_env", var).and_then(|value| {
            parse_destination_url(&value)
                .map_err(|_| {
                    problems.add(
                        Some(var.span()),
                        format!(
                            "{key}.url_env: the value of {} is not an http(s) URL with a host; set it to the full URL, like https://host/path",
                            var.get_ref()
                        ),
                    )
                })
                .ok()
        }),
        (None, None) => None,
    };
    let required_url = || {
        if !url_given {
            problems.add(
                kind_span.clone(),
                format!(
                    "{key}.url: kind {kind_name} needs url (or url_env); add url = \"https://...\""
                ),
            );
        }
        url.clone()
    };
    // An optional URL with a default: None only when the given one is bad.
    let url_or = |default: &str| {
        if url_given {
            url.clone()
        } else {
            Some(reqwest::Url::parse(default).expect("built-in URL"))
        }
    };
    let required = |field: &str, value: &Option<Spanned<String>>| match value
        .as_ref()
        .map(|v| (v.get_ref().trim(), v.span()))
    {
        Some((text, _)) if !text.is_empty() => Some(text.to_owned()),
        Some((_, span)) => {
            problems.add(Some(span), format!("{key}.{field}: must not be empty"));
            None
        }
        None => {
            problems.add(
                kind_span.clone(),
                format!("{key}.{field}: kind {kind_name} needs {field}; add {field} = \"...\""),
            );
            None
        }
    };
    // The credential: from the environment (`secret_env`), or written in
    // the file (`secret`, for the mock and tests).
    let secret_text = |what: &str| -> Option<(String, Span, String)> {
        match (&d.secret_env, &d.secret) {
            (Some(var), None) => env_value("secret_env", var).map(|value| {
                (
                    value,
                    Some(var.span()),
                    format!("the value of {}", var.get_ref()),
                )
            }),
            (None, Some(inline)) => Some((
                inline.get_ref().trim().to_owned(),
                Some(inline.span()),
                "the value".to_owned(),
            )),
            (Some(var), Some(_)) => {
                problems.add(
                    Some(var.span()),
                    format!("{key}.secret_env: set secret_env or secret, not both; remove one"),
                );
                None
            }
            (None, None) => {
                problems.add(
                    kind_span.clone(),
                    format!("{key}.secret_env: kind {kind_name} needs secret_env, naming the environment variable that holds {what}"),
                );
                None
            }
        }
    };
    let field_of = |span: &Span| {
        if span.as_ref() == d.secret.as_ref().map(|s| s.span()).as_ref() {
            "secret"
        } else {
            "secret_env"
        }
    };
    match kind {
        FileKind::Webhook => {
            let secret = if d.secret_env.is_none() && d.secret.is_none() {
                Some(None)
            } else {
                secret_text("").and_then(|(value, span, what)| {
                    WebhookSecret::parse(&value)
                        .map_err(|reason| {
                            problems.add(
                                span.clone(),
                                format!(
                                    "{key}.{}: {what} is not a webhook secret: {reason}; a valid one is whsec_ then the base64 of 24 to 64 random bytes: run `herald secret` to make one",
                                    field_of(&span)
                                ),
                            )
                        })
                        .ok()
                        .map(Some)
                })
            };
            let url = required_url();
            Some(Target::Webhook {
                url: url?,
                secret: secret?,
            })
        }
        FileKind::Slack => {
            let token = secret_text("the bot token (xoxb-...)").and_then(|(value, span, what)| {
                if value.starts_with("xox") {
                    Some(Secret::new(value))
                } else {
                    problems.add(
                        span.clone(),
                        format!(
                            "{key}.{}: {what} is not a Slack token; a bot token starts with xoxb-",
                            field_of(&span)
                        ),
                    );
                    None
                }
            });
            let channel = required("channel", &d.channel);
            let mut api_url = url_or("https://slack.com/api/")?;
            if !api_url.path().ends_with('/') {
                api_url.set_path(&format!("{}/", api_url.path()));
            }
            Some(Target::Slack {
                api_url,
                channel: channel?,
                token: token?,
            })
        }
        FileKind::Teams => Some(Target::Teams {
            url: required_url()?,
        }),
        FileKind::Jira => {
            let search_recheck_ms = problems.in_range(
                &format!("{key}.search_recheck_ms"),
                &d.search_recheck_ms,
                2_000,
                0..=60_000,
            );
            let project = required("project", &d.project).filter(|project| {
                let valid = project
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    problems.add(
                        d.project.as_ref().map(|v| v.span()),
                        format!(
                            "{key}.project: {project:?} is not a Jira project key; write it in capitals, like {:?}",
                            project.to_ascii_uppercase()
                        ),
                    );
                }
                valid
            });
            let site_url = required_url();
            let issue_type = match &d.issue_type {
                None => Some("Task".to_owned()),
                Some(_) => required("issue_type", &d.issue_type),
            };
            let email = required("email", &d.email);
            let token = secret_text("the API token").map(|(value, _, _)| Secret::new(value));
            let resolve_transition = match &d.resolve_transition {
                None => Some("Done".to_owned()),
                Some(_) => required("resolve_transition", &d.resolve_transition),
            };
            Some(Target::Jira {
                site_url: site_url?,
                project: project?,
                issue_type: issue_type?,
                email: email?,
                token: token?,
                resolve_transition: resolve_transition?,
                search_recheck_ms,
            })
        }
        FileKind::PagerDuty => {
            let routing_key = secret_text("the integration's routing key").and_then(
                |(value, span, what)| {
                    if value.len() == 32 {
                        Some(Secret::new(value))
                    } else {
                        problems.add(
                            span.clone(),
                            format!(
                                "{key}.{}: {what} is not a routing key: a PagerDuty routing key is 32 characters",
                                field_of(&span)
                            ),
                        );
                        None
                    }
                },
            );
            let events_url = url_or("https://events.pagerduty.com/");
            Some(Target::PagerDuty {
                events_url: events_url?,
                routing_key: routing_key?,
            })
        }
        FileKind::Discord if discord_bot => {
            if let Some(forum) = &d.forum {
                problems.add(
                    Some(forum.span()),
                    format!("{key}.forum: the bot mode (channel_id) posts replies in a channel, not forum posts; remove forum, or remove channel_id for the webhook mode"),
                );
            }
            let channel_id = required("channel_id", &d.channel_id).filter(|id| {
                let valid = id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
                if !valid {
                    problems.add(
                        d.channel_id.as_ref().map(|v| v.span()),
                        format!("{key}.channel_id: {id:?} is not a Discord channel id; copy the channel's id (digits) with Developer Mode on"),
                    );
                }
                valid
            });
            // Accepted with or without the `Bot ` of the header.
            let token = secret_text("the bot token").map(|(value, _, _)| {
                Secret::new(value.strip_prefix("Bot ").unwrap_or(&value).trim())
            });
            let api_url = url_or("https://discord.com/api/v10/");
            Some(Target::DiscordBot {
                api_url: api_url?,
                channel_id: channel_id?,
                token: token?,
            })
        }
        FileKind::Discord => Some(Target::Discord {
            url: required_url()?,
            forum: d.forum.as_ref().is_some_and(|f| *f.get_ref()),
        }),
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
    if !text.contains("://") {
        // Show the host only: a webhook URL's path (and a user part) may be
        // its credential.
        let text = text.trim_start_matches('/');
        let host_end = text.find('/').unwrap_or(text.len());
        let host = &text[text[..host_end].rfind('@').map_or(0, |at| at + 1)..host_end];
        let rest = if host_end < text.len() { "/..." } else { "" };
        return Err(format!(
            "\"{host}{rest}\" has no scheme; write http://{host}{rest} (or https://)"
        ));
    }
    // The URL may be a credential: errors show only its scheme and host.
    let shown = crate::redact::redact_destination_url(text);
    let url =
        reqwest::Url::parse(text).map_err(|e| format!("{shown:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{shown:?} must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown:?} carries credentials in the URL; use secret_env instead so they are never printed"
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
        assert_eq!(err.problems[0].line, Some(4));
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
    fn discord_takes_a_bot_token_with_a_channel_id() {
        let env = |k: &str| (k == "DISCORD_BOT_TOKEN").then(|| "Bot MTk4NjIy.abc".to_owned());
        let config = Config::parse(
            "herald.toml",
            "[destinations.d]\nkind = \"discord\"\nchannel_id = \"1187041234567890000\"\nsecret_env = \"DISCORD_BOT_TOKEN\"\n",
            env,
        )
        .unwrap();
        let d = config.destination("d").unwrap();
        let Target::DiscordBot {
            api_url,
            channel_id,
            token,
        } = &d.target
        else {
            panic!("the bot mode: {d:?}");
        };
        assert_eq!(api_url.as_str(), "https://discord.com/api/v10/");
        assert_eq!(channel_id, "1187041234567890000");
        assert_eq!(
            token.expose(),
            "MTk4NjIy.abc",
            "the header's `Bot ` is dropped"
        );
        assert!(!format!("{d:?}").contains("MTk4NjIy"));
        assert_eq!(d.target.kind(), "discord");

        let err = Config::parse(
            "herald.toml",
            "[destinations.d]\nkind = \"discord\"\nchannel_id = \"#ops\"\nforum = true\n",
            env,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "destinations.d.channel_id: \"#ops\" is not a Discord channel id",
            "destinations.d.forum: the bot mode (channel_id)",
            "destinations.d.secret_env: kind discord needs secret_env",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
        // Without channel_id, a credential is not a webhook's setting.
        let err = Config::parse(
            "herald.toml",
            "[destinations.d]\nkind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/t\"\nsecret = \"x\"\n",
            env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("destinations.d.secret: not a setting of kind discord"),
            "{err}"
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
        assert_eq!(err.problems[0].line, Some(3));
        assert!(
            err.to_string()
                .starts_with("herald.toml:3: destinations.a.url:"),
            "{err}"
        );

        let err =
            parse("[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\nconcurency = 3\n")
                .unwrap_err();
        assert_eq!(err.problems[0].line, Some(4));
        assert!(err.problems[0].message.contains("concurency"), "{err}");

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
        assert_eq!(err.problems[0].line, Some(2));

        let err = parse("").unwrap_err();
        assert!(err.problems[0].message.contains("no destination"), "{err}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once_with_a_fix() {
        let err = Config::parse(
            "herald.toml",
            "[destinations.ops]\nkind = \"webhook\"\nurl = \"127.0.0.1:9090\"\ntimout_ms = 3000\n\n[destinations.Ops.Webhook]\nurl = \"http://x/\"\n\n[destinations.chat]\nkind = \"slak\"\n\n[destinations.pd]\nkind = \"pagerduty\"\nsecret_env = \"PD_KEY\"\n\n[destinations.hook]\nkind = \"webhook\"\nurl = \"http://x/\"\nsecret_env = \"HOOK_SECRET\"\n",
            |k| (k == "HOOK_SECRET").then(|| "whsec_...".to_owned()),
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "herald.toml has 7 problems:",
            "herald.toml:3: destinations.ops.url: \"127.0.0.1:9090\" has no scheme; write http://127.0.0.1:9090",
            "herald.toml:4: destinations.ops.timout_ms: unknown key; did you mean timeout_ms?",
            "herald.toml:6: destinations.Ops.Webhook: a destination is one table, not a table per kind; write [destinations.ops] with kind = \"webhook\"",
            "herald.toml:10: destinations.chat.kind: unknown kind \"slak\"; did you mean slack?",
            "herald.toml:14: destinations.pd.secret_env: environment variable PD_KEY is not set",
            "herald.toml:19: destinations.hook.secret_env: the value of HOOK_SECRET is not a webhook secret",
            "run `herald secret` to make one",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
        assert_eq!(
            err.problems
                .iter()
                .filter_map(|p| p.line)
                .collect::<Vec<_>>(),
            vec![3, 4, 6, 6, 10, 14, 19],
            "in file order: {text}"
        );
    }

    #[test]
    fn a_wrong_type_names_its_key_and_other_sections_are_still_checked() {
        let err = parse(
            "[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\ntimeout_ms = \"10s\"\nretry = { attempts = 3 }\n\n[destinations.b]\nkind = \"webhook\"\nurl = \"x\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "herald.toml:4: destinations.a.timeout_ms: invalid type: string \"10s\", expected a whole number",
            "herald.toml:5: destinations.a.retry.attempts: unknown key; did you mean attempts_max?",
            "herald.toml:9: destinations.b.url: \"x\" has no scheme; write http://x",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
    }

    #[test]
    fn listen_takes_a_host_name() {
        let config = parse(
            "[server]\nlisten = \"localhost:19511\"\n[destinations.a]\nkind = \"webhook\"\nurl = \"http://x/\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 19511);
        assert!(config.listen.ip().is_loopback());
        assert!(parse_listen_address("localhost").is_err());
    }

    #[test]
    fn a_generated_secret_is_valid() {
        let secret = WebhookSecret::generate();
        assert_eq!(
            WebhookSecret::parse(&secret).unwrap().key().len(),
            WebhookSecret::GENERATED_KEY_BYTES
        );
        assert_ne!(secret, WebhookSecret::generate());
    }

    #[test]
    fn the_init_file_is_valid_with_no_environment() {
        let config = Config::parse("herald.toml", INIT_TEMPLATE, |_| None).unwrap();
        let mut kinds: Vec<&str> = config
            .destinations
            .iter()
            .map(|d| d.target.kind())
            .collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            ["discord", "jira", "pagerduty", "slack", "teams", "webhook"]
        );
    }

    /// herald.example.toml says it documents every key: each key a section
    /// takes appears in it, set or commented out.
    #[test]
    fn the_example_file_documents_every_key() {
        let example = include_str!("../herald.example.toml");
        let sections = [
            fields_of::<FileConfig>(),
            fields_of::<FileServer>(),
            fields_of::<FileDestination>(),
            fields_of::<FileRetry>(),
            fields_of::<FileBreaker>(),
            fields_of::<FileToken>(),
            fields_of::<FileAlertmanager>(),
        ];
        let mut missing = Vec::new();
        for key in sections.iter().flat_map(|fields| fields.iter()) {
            let documented = example.contains(&format!("{key} ="))
                || example.contains(&format!(".{key}]"))
                || example.contains(&format!("[{key}]"))
                || example.contains(&format!("[[{key}]]"));
            if !documented {
                missing.push(*key);
            }
        }
        assert!(
            missing.is_empty(),
            "not in herald.example.toml: {missing:?}"
        );
    }
}
