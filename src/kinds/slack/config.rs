//! A Slack destination's keys: `channel`, the bot token in `secret_env`
//! (or `secret`), and `url` for another Web API base.

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "slack",
    // One message per second per channel.
    default_rate: Some((1.0, 1)),
    keys: &["channel"],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let token = t
        .secret_text("the bot token (xoxb-...)")
        .and_then(|(value, span, what)| {
            if value.starts_with("xox") {
                Some(Secret::new(value))
            } else {
                t.add(
                    span.clone(),
                    format!(
                        "{key}.{}: {what} is not a Slack token; a bot token starts with xoxb-",
                        t.field_of(&span)
                    ),
                );
                None
            }
        });
    let channel = t.required("channel", &d.channel);
    let mut api_url = t.url_or("https://slack.com/api/")?;
    if !api_url.path().ends_with('/') {
        api_url.set_path(&format!("{}/", api_url.path()));
    }
    Some(Target::Slack {
        api_url,
        channel: channel?,
        token: token?,
        rendering: Default::default(),
    })
}
