//! A Discord destination's keys, for both modes: a webhook (`url` or
//! `url_env`, `forum`), or the bot (`channel_id` with the bot token in
//! `secret_env` or `secret`, and `url` for another API base).

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "discord",
    // 5 requests per 2 seconds per webhook.
    default_rate: Some((2.5, 5)),
    keys: &["forum", "channel_id"],
    takes_secret: false,
    secret_allowed,
    parse,
};

/// Discord takes a credential in its bot mode (`channel_id` set) only.
fn secret_allowed(d: &FileDestination) -> bool {
    d.channel_id.is_some()
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    if d.channel_id.is_none() {
        return Some(Target::Discord {
            url: t.required_url()?,
            forum: d.forum.as_ref().is_some_and(|f| *f.get_ref()),
            rendering: Default::default(),
        });
    }
    if let Some(forum) = &d.forum {
        t.add(
            Some(forum.span()),
            format!("{key}.forum: the bot mode (channel_id) posts replies in a channel, not forum posts; remove forum, or remove channel_id for the webhook mode"),
        );
    }
    let channel_id = t.required("channel_id", &d.channel_id).filter(|id| {
        let valid = id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
        if !valid {
            t.add(
                d.channel_id.as_ref().map(|v| v.span()),
                format!("{key}.channel_id: {id:?} is not a Discord channel id; copy the channel's id (digits) with Developer Mode on"),
            );
        }
        valid
    });
    // Accepted with or without the `Bot ` of the header.
    let token = t
        .secret_text("the bot token")
        .map(|(value, _, _)| Secret::new(value.strip_prefix("Bot ").unwrap_or(&value).trim()));
    let api_url = t.url_or("https://discord.com/api/v10/");
    Some(Target::DiscordBot {
        api_url: api_url?,
        channel_id: channel_id?,
        token: token?,
        rendering: Default::default(),
    })
}
