//! A Google Chat destination's keys: the space's incoming-webhook `url`
//! (or `url_env`: the URL carries the webhook's key and token).

use crate::config::{FileDestination, KindConfig, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "google-chat",
    // Chat's published limit for an incoming webhook: one message per
    // second per space.
    default_rate: Some((1.0, 1)),
    keys: &[],
    takes_secret: false,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    false
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let url = t.required_url()?;
    let key = t.key;
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
    Some(Target::GoogleChat { url })
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
