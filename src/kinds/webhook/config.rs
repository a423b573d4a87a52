//! A webhook destination's keys: `url` (or `url_env`), and an optional
//! Standard Webhooks `secret_env` (or `secret_file`, or `secret`) to sign with.

use crate::config::{FileDestination, KindConfig, Target, TargetKeys, WebhookSecret};

pub const KIND: KindConfig = KindConfig {
    name: "webhook",
    default_rate: None,
    keys: &[],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let secret = if d.secret_env.is_none() && d.secret.is_none() && d.secret_file.is_none() {
        Some(None)
    } else {
        t.secret_text("").and_then(|(value, span, what)| {
            WebhookSecret::parse(&value)
                .map_err(|reason| {
                    t.add(
                        span.clone(),
                        format!(
                            "{key}.{}: {what} is not a webhook secret: {reason}; a valid one is whsec_ then the base64 of 24 to 64 random bytes: run `herald secret` to make one",
                            t.field_of(&span)
                        ),
                    )
                })
                .ok()
                .map(Some)
        })
    };
    let url = t.required_url();
    Some(Target::Webhook {
        url: url?,
        secret: secret?,
        rendering: Default::default(),
    })
}
