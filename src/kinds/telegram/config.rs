//! A Telegram destination's keys: `chat_id`, the bot token in
//! `secret_env` (or `secret`), `message_thread_id` for a forum topic, and
//! `url` for another Bot API base.

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "telegram",
    // Telegram's published limits: about one message a second in a chat,
    // and no more than 20 a minute in a group.
    default_rate: Some((0.33, 1)),
    keys: &["chat_id", "message_thread_id"],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let chat_id = t.required("chat_id", &d.chat_id).filter(|id| {
        let valid = id.parse::<i64>().is_ok()
            || (id.len() > 1
                && id.starts_with('@')
                && id[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !valid {
            t.add(
                d.chat_id.as_ref().map(|v| v.span()),
                format!("{key}.chat_id: {id:?} is not a Telegram chat; write its id (like \"-1001234567890\") or a channel's @username"),
            );
        }
        valid
    });
    let message_thread_id = match &d.message_thread_id {
        None => Some(None),
        Some(topic) if *topic.get_ref() > 0 => Some(Some(*topic.get_ref())),
        Some(topic) => {
            t.add(
                Some(topic.span()),
                format!("{key}.message_thread_id: must be a forum topic's id (a positive integer)"),
            );
            None
        }
    };
    let token = t
        .secret_text("the bot token from @BotFather")
        .and_then(|(value, span, what)| {
            let valid = value.split_once(':').is_some_and(|(bot, rest)| {
                !bot.is_empty() && bot.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty()
            });
            if valid {
                Some(Secret::new(value))
            } else {
                t.add(
                    span.clone(),
                    format!(
                        "{key}.{}: {what} is not a Telegram bot token (digits, a colon, then the secret part)",
                        t.field_of(&span)
                    ),
                );
                None
            }
        });
    let mut api_url = t.url_or("https://api.telegram.org/")?;
    if !api_url.path().ends_with('/') {
        api_url.set_path(&format!("{}/", api_url.path()));
    }
    Some(Target::Telegram {
        api_url,
        token: token?,
        chat_id: chat_id?,
        message_thread_id: message_thread_id?,
        rendering: crate::template::Rendering::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Target};

    fn parse(table: &str) -> Result<Config, String> {
        let source = format!("[destinations.tg]\nkind = \"telegram\"\n{table}");
        Config::parse("herald.toml", &source, |var| {
            (var == "TELEGRAM_BOT_TOKEN").then(|| "123456:ABC-def_ghi".to_owned())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_a_chat_and_a_topic_and_names_bad_keys() {
        let config = parse(
            "chat_id = \"-1001234567890\"\nmessage_thread_id = 42\nsecret_env = \"TELEGRAM_BOT_TOKEN\"\n",
        )
        .unwrap();
        let Target::Telegram {
            chat_id,
            message_thread_id,
            api_url,
            ..
        } = &config.destinations[0].target
        else {
            panic!("a telegram target");
        };
        assert_eq!(
            (chat_id.as_str(), *message_thread_id, api_url.as_str()),
            ("-1001234567890", Some(42), "https://api.telegram.org/")
        );
        let err = parse("chat_id = \"ops room\"\nmessage_thread_id = 0\nsecret = \"nope\"\n")
            .unwrap_err();
        for expected in [
            "destinations.tg.chat_id: \"ops room\" is not a Telegram chat",
            "destinations.tg.message_thread_id: must be a forum topic's id",
            "destinations.tg.secret: the value is not a Telegram bot token",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        let err = parse("").unwrap_err();
        assert!(
            err.contains("destinations.tg.chat_id: kind telegram needs chat_id"),
            "{err}"
        );
        assert!(
            err.contains("destinations.tg.secret_env: kind telegram needs secret_env"),
            "{err}"
        );
    }
}
