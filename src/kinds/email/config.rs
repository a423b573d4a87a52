//! An email destination's keys: the SMTP server (`smtp_host`, `smtp_port`,
//! `smtp_security`, `smtp_ca_file` for a private CA), the optional login (`smtp_username` with the password
//! in `secret_env`, or `secret`), and the message's addresses (`mail_from`,
//! `mail_to`, `mail_cc`).

use std::str::FromStr;

use lettre::message::Mailbox;

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "email",
    // Mail submission services limit senders per minute (Microsoft 365:
    // 30 messages a minute per mailbox); one every two seconds, five at
    // once, stays under the common ones.
    default_rate: Some((0.5, 5)),
    keys: &[
        "smtp_host",
        "smtp_port",
        "smtp_security",
        "smtp_username",
        "smtp_ca_file",
        "mail_from",
        "mail_to",
        "mail_cc",
    ],
    takes_secret: true,
    secret_allowed,
    parse,
};

/// Recipients (`mail_to` and `mail_cc` together) one destination may have.
pub const RECIPIENTS_MAX: usize = 50;

/// `mail_to`, `mail_cc`: one address, or a list of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addresses(pub Vec<String>);

impl<'de> serde::Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Addresses, D::Error> {
        struct OneOrList;
        impl<'de> serde::de::Visitor<'de> for OneOrList {
            type Value = Addresses;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address or a list of addresses")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Addresses, E> {
                Ok(Addresses(vec![text.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Addresses, A::Error> {
                let mut list = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    list.push(text);
                }
                Ok(Addresses(list))
            }
        }
        deserializer.deserialize_any(OneOrList)
    }
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must be offered
    /// (submission, port 587).
    StartTls,
    /// TLS from the first byte (submissions, port 465).
    Tls,
    /// No TLS at all: only for a relay on the same host or a test server;
    /// refused with a password unless the host is a loopback address.
    None,
}

impl SmtpSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpSecurity::StartTls => "starttls",
            SmtpSecurity::Tls => "tls",
            SmtpSecurity::None => "none",
        }
    }

    /// The port a server with this security listens on by default.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        }
    }
}

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

/// A loopback host, where a clear-text password never leaves the machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let mut ok = true;
    for (field, span) in [
        ("url", d.url.as_ref().map(|v| v.span())),
        ("url_env", d.url_env.as_ref().map(|v| v.span())),
    ] {
        if let Some(span) = span {
            t.add(
                Some(span),
                format!("{key}.{field}: not a setting of kind email (it speaks SMTP); set smtp_host instead"),
            );
            ok = false;
        }
    }
    let host = t
        .required("smtp_host", &d.smtp_host)
        .filter(|host| {
            let valid = rustls::pki_types::ServerName::try_from(host.as_str()).is_ok();
            if !valid {
                t.add(
                    d.smtp_host.as_ref().map(|v| v.span()),
                    format!("{key}.smtp_host: {host:?} is not a host name or IP address; write the server's name, like smtp.example.com"),
                );
            }
            valid
        });
    let security = match &d.smtp_security {
        None => Some(SmtpSecurity::StartTls),
        Some(text) => match text.get_ref().as_str() {
            "starttls" => Some(SmtpSecurity::StartTls),
            "tls" => Some(SmtpSecurity::Tls),
            "none" => Some(SmtpSecurity::None),
            other => {
                t.add(
                    Some(text.span()),
                    format!("{key}.smtp_security: {other:?} is not one of starttls (port 587), tls (port 465), none"),
                );
                None
            }
        },
    };
    let port = match &d.smtp_port {
        None => security.map(SmtpSecurity::default_port),
        Some(_) => u16::try_from(t.in_range("smtp_port", &d.smtp_port, 0, 1..=65_535)).ok(),
    };
    let login = match (
        &d.smtp_username,
        d.secret_env.is_some() || d.secret.is_some(),
    ) {
        (None, false) => Some(None),
        (None, true) => {
            t.add(
                d.secret_env
                    .as_ref()
                    .or(d.secret.as_ref())
                    .map(|v| v.span()),
                format!("{key}.smtp_username: a password is set but no user name; add smtp_username = \"...\""),
            );
            None
        }
        (Some(_), _) => {
            let username = t.required("smtp_username", &d.smtp_username);
            let password = t
                .secret_text("the SMTP password")
                .map(|(value, _, _)| Secret::new(value));
            match (username, password) {
                (Some(username), Some(password)) => Some(Some((username, password))),
                _ => None,
            }
        }
    };
    if let (Some(host), Some(SmtpSecurity::None), Some(Some(_))) = (&host, security, &login) {
        if !is_loopback(host) {
            t.add(
                d.smtp_security.as_ref().map(|v| v.span()),
                format!("{key}.smtp_security: \"none\" would send the SMTP password in clear text to {host}; use starttls or tls (none takes a password only on a loopback host)"),
            );
            ok = false;
        }
    }
    let ca_pem = match &d.smtp_ca_file {
        None => Some(None),
        Some(path) => ca_certificates(path.get_ref())
            .map(Some)
            .map_err(|reason| t.add(Some(path.span()), format!("{key}.smtp_ca_file: {reason}")))
            .ok(),
    };
    if let (Some(Some(_)), Some(SmtpSecurity::None)) = (&ca_pem, security) {
        t.add(
            d.smtp_ca_file.as_ref().map(|v| v.span()),
            format!("{key}.smtp_ca_file: smtp_security = \"none\" uses no TLS; remove it or use starttls or tls"),
        );
        ok = false;
    }
    let from = mailbox(
        t,
        "mail_from",
        d.mail_from
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span())),
    );
    let to = mailboxes(t, "mail_to", &d.mail_to, true);
    let cc = mailboxes(t, "mail_cc", &d.mail_cc, false);
    if let (Some(to), Some(cc)) = (&to, &cc) {
        if to.len() + cc.len() > RECIPIENTS_MAX {
            t.add(
                d.mail_to.as_ref().map(|v| v.span()),
                format!("{key}.mail_to: {} recipients with mail_cc; at most {RECIPIENTS_MAX}: send to a list address instead", to.len() + cc.len()),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let (username, password) = match login? {
        Some((username, password)) => (Some(username), Some(password)),
        None => (None, None),
    };
    Some(Target::Email {
        host: host?,
        port: port?,
        security: security?,
        username,
        password,
        ca_pem: ca_pem?,
        from: from?,
        to: to?,
        cc: cc?,
        rendering: Default::default(),
    })
}

/// The PEM text of `path`, holding at least one certificate.
fn ca_certificates(path: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path} is not PEM certificates: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "{path} holds no certificate; give the CA's certificate in PEM (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(text)
}

/// One address (`Name <user@example.com>` or `user@example.com`).
fn mailbox(
    t: &TargetKeys<'_, '_>,
    field: &str,
    value: Option<(&str, std::ops::Range<usize>)>,
) -> Option<String> {
    let key = t.key;
    let Some((text, span)) = value else {
        t.add(
            t.d.kind.as_ref().map(|k| k.span()),
            format!(
                "{key}.{field}: kind email needs {field}; add {field} = \"alerts@example.com\""
            ),
        );
        return None;
    };
    match Mailbox::from_str(text.trim()) {
        Ok(mailbox) => Some(mailbox.to_string()),
        Err(e) => {
            t.add(
                Some(span),
                format!("{key}.{field}: {text:?} is not an email address ({e}); write it like alerts@example.com or \"Alerts <alerts@example.com>\""),
            );
            None
        }
    }
}

/// A list of addresses; `required` lists must not be empty.
fn mailboxes(
    t: &TargetKeys<'_, '_>,
    field: &str,
    value: &Option<toml::Spanned<Addresses>>,
    required: bool,
) -> Option<Vec<String>> {
    let key = t.key;
    let Some(list) = value else {
        if required {
            t.add(
                t.d.kind.as_ref().map(|k| k.span()),
                format!("{key}.{field}: kind email needs {field}; add {field} = [\"oncall@example.com\"]"),
            );
            return None;
        }
        return Some(Vec::new());
    };
    if required && list.get_ref().0.is_empty() {
        t.add(
            Some(list.span()),
            format!("{key}.{field}: must name at least one address"),
        );
        return None;
    }
    let mut all = Some(Vec::new());
    for text in &list.get_ref().0 {
        match mailbox(t, field, Some((text, list.span()))) {
            Some(address) => {
                if let Some(all) = &mut all {
                    all.push(address);
                }
            }
            None => all = None,
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse(table: &str) -> Result<Config, ConfigError> {
        let source = format!("[destinations.mail]\nkind = \"email\"\n{table}");
        Config::parse("herald.toml", &source, |k| {
            (k == "SMTP_PASSWORD").then(|| "PASSWORD-NEVER-SHOWN".to_owned())
        })
    }

    fn error(table: &str) -> String {
        parse(table).unwrap_err().to_string()
    }

    #[test]
    fn reads_the_server_the_login_and_the_addresses() {
        let config = parse(
            r#"
smtp_host = "smtp.example.com"
smtp_username = "herald"
secret_env = "SMTP_PASSWORD"
mail_from = "Herald <herald@example.com>"
mail_to = ["oncall@example.com", "Second <second@example.org>"]
mail_cc = "lead@example.net"
"#,
        )
        .unwrap();
        let d = config.destination("mail").unwrap();
        let Target::Email {
            host,
            port,
            security,
            username,
            password,
            from,
            to,
            cc,
            ..
        } = &d.target
        else {
            panic!("{:?}", d.target);
        };
        assert_eq!(
            (host.as_str(), *port, *security),
            ("smtp.example.com", 587, SmtpSecurity::StartTls)
        );
        assert_eq!(username.as_deref(), Some("herald"));
        assert_eq!(password.as_ref().unwrap().expose(), "PASSWORD-NEVER-SHOWN");
        assert_eq!(from, "Herald <herald@example.com>");
        assert_eq!(to.len() + cc.len(), 3);
        assert_eq!(d.target.kind(), "email");
        assert!(!format!("{d:?}").contains("PASSWORD-NEVER-SHOWN"), "{d:?}");
        // The published pace of mail submission when the file sets none.
        assert_eq!(d.isolation.rate_per_sec, Some(0.5));

        let tls = parse(
            "smtp_host = \"smtp.example.com\"\nsmtp_security = \"tls\"\nmail_from = \"a@example.com\"\nmail_to = [\"b@example.com\"]\n",
        )
        .unwrap();
        let Target::Email { port, password, .. } = &tls.destination("mail").unwrap().target else {
            panic!()
        };
        assert_eq!((*port, password.is_none()), (465, true));
    }

    #[test]
    fn bad_tables_are_refused_naming_the_key_and_the_fix() {
        let base = "mail_from = \"a@example.com\"\nmail_to = [\"b@example.com\"]\n";
        let cases = [
            (base.to_owned(), "destinations.mail.smtp_host: kind email needs smtp_host"),
            (
                "smtp_host = \"smtp.example.com\"\nmail_to = [\"b@example.com\"]\n".to_owned(),
                "destinations.mail.mail_from: kind email needs mail_from",
            ),
            (
                "smtp_host = \"smtp.example.com\"\nmail_from = \"a@example.com\"\nmail_to = []\n".to_owned(),
                "destinations.mail.mail_to: must name at least one address",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\n{base}mail_cc = [\"not an address\"]\n"),
                "destinations.mail.mail_cc: \"not an address\" is not an email address",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsmtp_security = \"ssl\"\n{base}"),
                "destinations.mail.smtp_security: \"ssl\" is not one of starttls",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsmtp_port = 70000\n{base}"),
                "destinations.mail.smtp_port: must be",
            ),
            (
                format!("smtp_host = \"smtp example\"\n{base}"),
                "destinations.mail.smtp_host: \"smtp example\" is not a host name",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsecret_env = \"SMTP_PASSWORD\"\n{base}"),
                "destinations.mail.smtp_username: a password is set but no user name",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsmtp_username = \"u\"\n{base}"),
                "destinations.mail.secret_env: kind email needs secret_env",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsmtp_security = \"none\"\nsmtp_username = \"u\"\nsecret_env = \"SMTP_PASSWORD\"\n{base}"),
                "destinations.mail.smtp_security: \"none\" would send the SMTP password in clear text",
            ),
            (
                format!("url = \"https://smtp.example.com\"\nsmtp_host = \"smtp.example.com\"\n{base}"),
                "destinations.mail.url: not a setting of kind email",
            ),
            (
                "smtp_host = \"h\"\nmail_from = \"a@example.com\"\nmail_to = 7\n".to_owned(),
                "destinations.mail.mail_to: invalid type: integer `7`, expected an address or a list of addresses",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsmtp_ca_file = \"/nonexistent/ca.pem\"\n{base}"),
                "destinations.mail.smtp_ca_file: cannot read /nonexistent/ca.pem",
            ),
            (
                format!("smtp_host = \"smtp.example.com\"\nsmtp_ca_file = \"Cargo.toml\"\n{base}"),
                "destinations.mail.smtp_ca_file: Cargo.toml holds no certificate",
            ),
        ];
        for (table, expected) in cases {
            let message = error(&table);
            assert!(message.contains(expected), "{expected}\n in: {message}");
            assert!(!message.contains("PASSWORD-NEVER-SHOWN"), "{message}");
        }
        // A clear-text login is fine on loopback (a local relay, tests).
        parse(&format!("smtp_host = \"127.0.0.1\"\nsmtp_security = \"none\"\nsmtp_username = \"u\"\nsecret_env = \"SMTP_PASSWORD\"\n{base}")).unwrap();
        // Another kind's table may not take email's keys.
        let other = Config::parse(
            "herald.toml",
            "[destinations.hook]\nkind = \"webhook\"\nurl = \"https://example.com/h\"\nmail_to = [\"a@example.com\"]\n",
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            other.contains(
                "destinations.hook.mail_to: not a setting of kind webhook (only of email)"
            ),
            "{other}"
        );
    }

    #[test]
    fn takes_a_template_and_mentions() {
        let config = parse(
            r#"
smtp_host = "smtp.example.com"
mail_from = "herald@example.com"
mail_to = "oncall@example.com"
template = '{"subject": {{ title|tojson }}, "text": {{ body|tojson }}}'
mentions = { P1 = "@oncall" }
"#,
        )
        .unwrap();
        let mut target = config.destination("mail").unwrap().target.clone();
        let rendering = target.rendering_mut().expect("email renders a template");
        assert!(rendering.template.is_some());
        assert!(!rendering.mentions.is_empty());

        let broken = error(
            "smtp_host = \"h\"\nmail_from = \"a@example.com\"\nmail_to = \"b@example.com\"\ntemplate = '{{ nope|tojson }}'\n",
        );
        assert!(
            broken.contains("destinations.mail.template: template line 1"),
            "{broken}"
        );
    }
}
