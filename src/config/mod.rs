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

mod routes;

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
pub const INIT_TEMPLATE: &str = include_str!("../init.toml");

mod alertmanager;
mod destination;
mod problems;
mod secret;
mod server;
mod templates;
#[cfg(test)]
mod tests;
mod tokens;

pub use alertmanager::*;
pub use destination::*;
pub use problems::*;
pub use secret::*;
pub use server::*;
pub use tokens::*;

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
    /// TLS on the API (`server.tls_cert_file`, `tls_key_file`,
    /// `tls_client_ca_file`); None: plain HTTP.
    pub tls: Option<crate::tls::TlsSettings>,
    pub destinations: Vec<Destination>,
    /// API bearer tokens. None configured: the API is open (with a warning).
    pub tokens: Vec<ApiToken>,
    /// Where Alertmanager notifications go; ingest is refused without it.
    pub alertmanager: Option<AlertmanagerRoutes>,
    /// `[groups]`, `[[routes]]`, `[default_route]`.
    pub routing: crate::routing::Routing,
    /// What the file is valid with but should not be: credential files
    /// that others than their owner may read. Logged at start and reload,
    /// printed by `check-config`.
    pub warnings: Vec<String>,
}

/// `[server]`'s TLS files, read now so that a bad certificate or key is
/// a config problem (at start, in `check-config` and at a reload).
fn tls_settings(server: &FileServer, problems: &Problems<'_>) -> Option<crate::tls::TlsSettings> {
    let key_span = server.tls_key_file.as_ref().map(|k| k.span());
    let (cert_file, key_file) = match (&server.tls_cert_file, &server.tls_key_file) {
        (None, None) => {
            if let Some(ca) = &server.tls_client_ca_file {
                problems.add(
                    Some(ca.span()),
                    "server.tls_client_ca_file: client certificates need TLS; set server.tls_cert_file and server.tls_key_file too".to_owned(),
                );
            }
            return None;
        }
        (Some(cert), None) => {
            problems.add(
                Some(cert.span()),
                "server.tls_key_file: missing; TLS needs the certificate's private key too"
                    .to_owned(),
            );
            return None;
        }
        (None, Some(key)) => {
            problems.add(
                Some(key.span()),
                "server.tls_cert_file: missing; TLS needs the certificate for server.tls_key_file too".to_owned(),
            );
            return None;
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let loaded = crate::tls::TlsSettings::load(
        cert_file.get_ref().clone(),
        key_file.get_ref().clone(),
        server
            .tls_client_ca_file
            .as_ref()
            .map(|ca| ca.get_ref().clone()),
    );
    match loaded {
        Ok(settings) => {
            let key_file = settings.key_file.as_path();
            let warning = file_permission_warning("server.tls_key_file", key_file);
            problems.warnings.borrow_mut().extend(warning);
            Some(settings)
        }
        Err(error) => {
            let span = match &error {
                crate::tls::TlsError::Read { key, .. }
                | crate::tls::TlsError::NoCertificate { key, .. } => match *key {
                    "tls_key_file" => key_span,
                    "tls_client_ca_file" => server.tls_client_ca_file.as_ref().map(|c| c.span()),
                    _ => Some(cert_file.span()),
                },
                crate::tls::TlsError::NoKey { .. } | crate::tls::TlsError::Mismatch { .. } => {
                    key_span
                }
                crate::tls::TlsError::ClientCa { .. } => {
                    server.tls_client_ca_file.as_ref().map(|c| c.span())
                }
            };
            problems.add(span, error.to_string());
            None
        }
    }
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
    groups: serde::de::IgnoredAny,
    routes: serde::de::IgnoredAny,
    default_route: serde::de::IgnoredAny,
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
            tls: None,
            destinations: Vec::new(),
            tokens: Vec::new(),
            alertmanager: None,
            routing: Default::default(),
            warnings: Vec::new(),
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
        config.tls = tls_settings(&server, &problems);
        if let Some(database) = database_setting(&server, &problems) {
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
                    let rendering = templates::parse_rendering(&key, &d, file, &problems);
                    if let Some(mut destination) =
                        parse_destination(name, &d, &env, &problems, skip_missing_kind)
                    {
                        if let Some(Some(rendering)) = rendering {
                            templates::apply_rendering(
                                &key,
                                &d,
                                &mut destination.target,
                                rendering,
                                &problems,
                            );
                        }
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

        config.routing = routes::parse(&document, &declared, &problems);
        // Alertmanager receivers may name groups as well as destinations.
        let declared: Vec<String> = declared
            .into_iter()
            .chain(config.routing.groups.keys().cloned())
            .collect();
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
                destinations: am
                    .destinations
                    .as_ref()
                    .map(|names| known(names, "alertmanager.destinations"))
                    .unwrap_or_default(),
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
            config.warnings = problems.warnings.take();
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
