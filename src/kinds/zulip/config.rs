//! A Zulip destination's keys: the server's `url`, the bot's `email`, its
//! API key in `secret_env` (or `secret`), and the `stream` (channel).

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "zulip",
    // Zulip's default API rate limit is 200 requests a minute per user;
    // a message a second leaves room for the read-backs.
    default_rate: Some((1.0, 2)),
    keys: &["email", "stream"],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let email = t.required("email", &d.email).filter(|email| {
        let valid = email.contains('@') && !email.contains(char::is_whitespace);
        if !valid {
            t.add(
                d.email.as_ref().map(|v| v.span()),
                format!("{key}.email: {email:?} is not an email address; write the bot's email (Personal settings, Bots)"),
            );
        }
        valid
    });
    let stream = t.required("stream", &d.stream).filter(|stream| {
        let valid = stream.chars().count() <= 60;
        if !valid {
            t.add(
                d.stream.as_ref().map(|v| v.span()),
                format!("{key}.stream: a channel name has at most 60 characters"),
            );
        }
        valid
    });
    let api_key = t
        .secret_text("the bot's API key")
        .map(|(value, _, _)| Secret::new(value));
    let mut site_url = t.required_url()?;
    if !site_url.path().ends_with('/') {
        site_url.set_path(&format!("{}/", site_url.path()));
    }
    Some(Target::Zulip {
        site_url,
        email: email?,
        api_key: api_key?,
        stream: stream?,
        rendering: crate::template::Rendering::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Target};

    fn parse(table: &str) -> Result<Config, String> {
        let source = format!("[destinations.z]\nkind = \"zulip\"\n{table}");
        Config::parse("herald.toml", &source, |var| {
            (var == "ZULIP_API_KEY").then(|| "abcdef123".to_owned())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_stream_and_names_bad_keys() {
        let config = parse(
            "url = \"https://example.zulipchat.com\"\nemail = \"herald-bot@example.zulipchat.com\"\nsecret_env = \"ZULIP_API_KEY\"\nstream = \"incidents\"\n",
        )
        .unwrap();
        let Target::Zulip {
            site_url, stream, ..
        } = &config.destinations[0].target
        else {
            panic!("a zulip target");
        };
        assert_eq!(
            (site_url.as_str(), stream.as_str()),
            ("https://example.zulipchat.com/", "incidents")
        );
        let err = parse("url = \"https://example.zulipchat.com\"\nemail = \"herald bot\"\nsecret = \"k\"\nstream = \"\"\nchat_id = \"1\"\n").unwrap_err();
        for expected in [
            "destinations.z.email: \"herald bot\" is not an email address",
            "destinations.z.stream: must not be empty",
            "destinations.z.chat_id: not a setting of kind zulip",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        let err = parse("").unwrap_err();
        for expected in [
            "destinations.z.url: kind zulip needs url",
            "destinations.z.email: kind zulip needs email",
            "destinations.z.stream: kind zulip needs stream",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
    }
}
