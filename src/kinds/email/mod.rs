//! Email through an SMTP server: one MIME message (text and HTML) per
//! delivery, its `Message-ID` derived from the idempotency key, a thread's
//! later messages replying to its first (`In-Reply-To`, `References`).
//!
//! - [`connector`]: the message, the SMTP exchange, its classification.
//! - [`config`]: the server, the login and the addresses.
//! - [`mock`]: `herald mock` is an HTTP server and plays no SMTP server;
//!   the tests send to a real one (aiosmtpd), so the email kind has no
//!   part in the demo.

pub mod config;
pub mod connector;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
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

    fn serves(_path: &str) -> bool {
        false
    }

    fn answer(&mut self, _: &Incoming, _: &Admission, _: &mut PathStats) -> Response {
        unreachable!("the email emulation serves no HTTP path")
    }

    fn counted(&self) -> mock::EmailStats {
        mock::EmailStats::default()
    }
}
