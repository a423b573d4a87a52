//! The `[server]` section: where herald listens, and the address a client uses.

use super::*;

#[derive(Deserialize, Default)]
pub(super) struct FileServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) database: Option<PathBuf>,
    /// A file holding the database URL (it may carry a password), read
    /// again at every reload.
    pub(super) database_url_file: Option<Spanned<PathBuf>>,
    pub(super) node_id: Option<String>,
    pub(super) lease_ms: Option<Spanned<u64>>,
    pub(super) request_body_bytes_max: Option<Spanned<u64>>,
    pub(super) request_timeout_ms: Option<Spanned<u64>>,
    pub(super) idempotency_retention_secs: Option<Spanned<u64>>,
    pub(super) broadcast_retention_secs: Option<Spanned<u64>>,
    pub(super) metrics_require_token: Option<bool>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) header_read_timeout_ms: Option<Spanned<u64>>,
    pub(super) idle_timeout_ms: Option<Spanned<u64>>,
    pub(super) connections_max: Option<Spanned<u64>>,
    pub(super) tls_cert_file: Option<Spanned<PathBuf>>,
    pub(super) tls_key_file: Option<Spanned<PathBuf>>,
    pub(super) tls_client_ca_file: Option<Spanned<PathBuf>>,
}

/// `server.database`, or the PostgreSQL URL in `server.database_url_file`
/// (a systemd or Kubernetes credential); None when neither is set or the
/// file is unusable (noted).
pub(super) fn database_setting(server: &FileServer, problems: &Problems<'_>) -> Option<PathBuf> {
    let Some(file) = &server.database_url_file else {
        return server.database.clone();
    };
    if server.database.is_some() {
        problems.add(
            Some(file.span()),
            "server.database_url_file: set server.database or server.database_url_file, not both; remove one".to_owned(),
        );
        return None;
    }
    let key = "server.database_url_file";
    match read_secret_file(key, file.get_ref()) {
        Ok(SecretFile { text, warning }) => {
            problems.warnings.borrow_mut().extend(warning);
            let url = PathBuf::from(text);
            if crate::server::is_postgres_url(&url) {
                Some(url)
            } else {
                // The content may be a credential: never repeated.
                problems.add(
                    Some(file.span()),
                    format!(
                        "{key}: {} does not hold a postgres:// URL; write the URL, like postgres://herald:PASSWORD@db:5432/herald?sslmode=verify-full, into it",
                        file.get_ref().display()
                    ),
                );
                None
            }
        }
        Err(message) => {
            problems.add(Some(file.span()), message);
            None
        }
    }
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

/// The API's scheme a client uses for a config file: `https` when its
/// `[server]` names a TLS certificate, else `http`. Reads only that key.
pub fn client_scheme(path: &Path) -> &'static str {
    let has_tls = std::fs::read_to_string(path).ok().is_some_and(|source| {
        let (document, _) = DeTable::parse_recoverable(&source);
        entry(document.get_ref(), "server")
            .and_then(|server| server.get_ref().as_table())
            .is_some_and(|server| entry(server, "tls_cert_file").is_some())
    });
    if has_tls {
        "https"
    } else {
        "http"
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
