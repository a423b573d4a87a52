//! A Teams destination's keys: the workflow's `url` (or `url_env`, as the
//! URL is its credential).

use crate::config::{FileDestination, KindConfig, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "teams",
    // Workflows throttle bursts; a few a second is safe.
    default_rate: Some((4.0, 4)),
    keys: &[],
    takes_secret: false,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    false
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    Some(Target::Teams {
        url: t.required_url()?,
        rendering: Default::default(),
    })
}
