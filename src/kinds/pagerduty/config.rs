//! A PagerDuty destination's keys: the routing key in `secret_env` (or
//! `secret`), and `url` for another Events API base.

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "pagerduty",
    // 120 events a minute per routing key.
    default_rate: Some((2.0, 4)),
    keys: &[],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let key = t.key;
    let routing_key =
        t.secret_text("the integration's routing key")
            .and_then(|(value, span, what)| {
                if value.len() == 32 {
                    Some(Secret::new(value))
                } else {
                    t.add(
                        span.clone(),
                        format!(
                            "{key}.{}: {what} is not a routing key: a PagerDuty routing key is 32 characters",
                            t.field_of(&span)
                        ),
                    );
                    None
                }
            });
    let events_url = t.url_or("https://events.pagerduty.com/");
    Some(Target::PagerDuty {
        events_url: events_url?,
        routing_key: routing_key?,
        rendering: Default::default(),
    })
}
