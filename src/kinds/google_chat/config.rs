//! A Google Chat destination's keys, in one of two modes:
//!
//! - an incoming webhook: the space's webhook `url` (or `url_env`, or
//!   `url_file`: the URL carries the webhook's key and token);
//! - the Chat API as an app: `credentials_file` (a service account's JSON
//!   key file), `space` (`spaces/AAAA...` or its id) and `url`, the API's
//!   base (`https://chat.googleapis.com/` by default).
//!
//! `credentials_file` chooses the API mode.

use std::path::PathBuf;

use toml::Spanned;

use super::auth::ServiceAccount;
use crate::config::{FileDestination, KindConfig, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "google-chat",
    // Chat's published limit for an incoming webhook, and the API's
    // per-space write quota: one message per second per space.
    default_rate: Some((1.0, 1)),
    keys: &["space", "credentials_file"],
    takes_secret: false,
    secret_allowed,
    parse,
};

/// The Chat API's base when `url` is not set.
pub const DEFAULT_API_URL: &str = "https://chat.googleapis.com/";

/// How a Google Chat destination reaches its space.
#[derive(Clone, Debug)]
pub enum GoogleChatMode {
    /// The space's incoming webhook (create only).
    Webhook { url: reqwest::Url },
    /// The Chat API as an app (create, get, patch), with a service
    /// account's token.
    App {
        /// The API's base, `https://chat.googleapis.com/`.
        api_url: reqwest::Url,
        /// `spaces/{space}`.
        space: String,
        account: ServiceAccount,
    },
}

impl GoogleChatMode {
    /// What a reload compares beside `Debug`: the service account's key.
    pub fn secret_bytes(&self) -> Vec<&[u8]> {
        match self {
            GoogleChatMode::Webhook { .. } => Vec::new(),
            GoogleChatMode::App { account, .. } => vec![account.key_digest()],
        }
    }
}

fn secret_allowed(_: &FileDestination) -> bool {
    false
}

/// `spaces/AAAA` from `spaces/AAAA` or `AAAA`; `None` when it is not a
/// space's name.
pub fn space_name(text: &str) -> Option<String> {
    let id = text.strip_prefix("spaces/").unwrap_or(text);
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| format!("spaces/{id}"))
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    match &t.d.credentials_file {
        Some(file) => parse_app(t, file),
        None => parse_webhook(t),
    }
}

fn parse_app(t: &TargetKeys<'_, '_>, file: &Spanned<PathBuf>) -> Option<Target> {
    let key = t.key;
    let account = t.file_value("credentials_file", file).and_then(|text| {
        ServiceAccount::from_key_file(&text)
            .map_err(|e| {
                t.add(
                    Some(file.span()),
                    format!("{key}.credentials_file: {}: {e}", file.get_ref().display()),
                )
            })
            .ok()
    });
    let space = t.required("space", &t.d.space).and_then(|text| {
        space_name(&text).or_else(|| {
            t.add(
                t.d.space.as_ref().map(|s| s.span()),
                format!("{key}.space: {text:?} is not a space's name; write spaces/AAAA... (the space's id, from its URL)"),
            );
            None
        })
    });
    let mut api_url = t.url_or(DEFAULT_API_URL)?;
    if !api_url.path().ends_with('/') {
        api_url.set_path(&format!("{}/", api_url.path()));
    }
    Some(Target::GoogleChat {
        mode: GoogleChatMode::App {
            api_url,
            space: space?,
            account: account?,
        },
        rendering: Default::default(),
    })
}

fn parse_webhook(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let key = t.key;
    if let Some(space) = &t.d.space {
        t.add(
            Some(space.span()),
            format!("{key}.space: only with credentials_file (the API mode); a webhook's URL names its space, remove space"),
        );
        return None;
    }
    let url = t.required_url()?;
    let shape_ok = url
        .path()
        .strip_suffix("/messages")
        .and_then(|p| p.rsplit_once("/spaces/"))
        .is_some_and(|(_, space)| !space.is_empty() && !space.contains('/'));
    let has = |name: &str| url.query_pairs().any(|(k, v)| k == name && !v.is_empty());
    if !shape_ok || !has("key") || !has("token") {
        let field = if t.d.url_env.is_some() {
            "url_env"
        } else {
            "url"
        };
        let span = t.d.url_env.as_ref().or(t.d.url.as_ref()).map(|v| v.span());
        t.add(
            span,
            format!("{key}.{field}: not a Google Chat webhook URL; copy the space's webhook URL (https://chat.googleapis.com/v1/spaces/SPACE/messages?key=...&token=...)"),
        );
        return None;
    }
    Some(Target::GoogleChat {
        mode: GoogleChatMode::Webhook { url },
        rendering: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Target};

    fn parse(table: &str) -> Result<Config, String> {
        let source = format!("[destinations.chat]\nkind = \"google-chat\"\n{table}");
        Config::parse("herald.toml", &source, |var| {
            (var == "CHAT_URL").then(|| {
                "https://chat.googleapis.com/v1/spaces/AAAA1234/messages?key=k&token=t".to_owned()
            })
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn takes_a_webhook_url_and_names_a_wrong_one() {
        let config = parse("url_env = \"CHAT_URL\"\n").unwrap();
        assert!(matches!(
            config.destinations[0].target,
            Target::GoogleChat { .. }
        ));
        let err = parse("url = \"https://chat.googleapis.com/v1/spaces/AAAA1234/messages\"\n")
            .unwrap_err();
        assert!(
            err.contains("destinations.chat.url: not a Google Chat webhook URL"),
            "{err}"
        );
        let err = parse("").unwrap_err();
        assert!(
            err.contains("destinations.chat.url: kind google-chat needs url"),
            "{err}"
        );
        let err = parse("url_env = \"CHAT_URL\"\nsecret = \"x\"\n").unwrap_err();
        assert!(
            err.contains("destinations.chat.secret: not a setting of kind google-chat"),
            "{err}"
        );
    }
}
