//! Email through an SMTP server: one MIME message (text and HTML) per
//! delivery, its `Message-ID` derived from the idempotency key, a thread's
//! later messages replying to its first (`In-Reply-To`, `References`).
//!
//! - [`connector`]: the message, the SMTP exchange, its classification.
//! - [`config`]: the server, the login and the addresses.
//! - [`mock`]: the SMTP server `herald mock` runs next to its HTTP port,
//!   a mailbox per recipient; the tests also send to a real one (aiosmtpd).
//! - [`demo`]: a mailbox in `herald demo`.
//! - `template.json.j2`: the default content (subject, text, HTML).

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::faults::Faults;
use crate::mock::shared::{Admission, Emulation, Incoming, PathStats};

impl connector::EmailConnector {
    /// The connector of an email target; `None` for another kind's. Its
    /// building never fails: TLS settings that cannot be made fail each
    /// send permanently, with the reason.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        _connections_max: usize,
    ) -> Option<reqwest::Result<connector::EmailConnector>> {
        let Target::Email {
            host,
            port,
            security,
            username,
            password,
            ca_pem,
            from,
            to,
            cc,
            rendering,
        } = target
        else {
            return None;
        };
        let login = match (username, password) {
            (Some(username), Some(password)) => Some((username.as_str(), password.expose())),
            _ => None,
        };
        Some(Ok(connector::EmailConnector::new(
            connector::EmailSettings {
                host,
                port: *port,
                security: *security,
                login,
                ca_pem: ca_pem.as_deref(),
                from,
                to,
                cc,
                rendering,
            },
            timeout,
        )))
    }
}

impl Emulation for mock::Email {
    type Stats = mock::EmailStats;

    /// The mailboxes' paths, for their faults and counters; over HTTP they
    /// answer nothing but where to send mail (see `crate::mock`).
    fn serves(path: &str) -> bool {
        path.starts_with(mock::PATH_PREFIX) || path == mock::PATH_PREFIX.trim_end_matches('/')
    }

    fn check_faults(faults: &Faults) -> Result<(), String> {
        mock::check_faults(faults)
    }

    fn answer(&mut self, _: &Incoming, _: &Admission, _: &mut PathStats) -> Response {
        crate::mock::shared::json(
            axum::http::StatusCode::NOT_FOUND,
            serde_json::json!({"error": "an SMTP mailbox: send mail to the mock's SMTP port"}),
        )
    }

    fn counted(&self) -> mock::EmailStats {
        self.stats()
    }
}
