//! A Matrix destination's keys: `url` (the homeserver's base, like
//! `https://matrix.example.org`), `room_id` (`!...`) and the access token in
//! `secret_env` (or `secret`).

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "matrix",
    // The client-server description publishes no figure; Synapse's default
    // `rc_message` is 0.2 messages per second with a burst of 10.
    default_rate: Some((0.2, 10)),
    keys: &["room_id"],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

/// Why `id` is not a room id, if it is not: the send path takes an id
/// (`^!` in the description), never an alias (`#...`).
pub fn room_id_problem(id: &str) -> Option<String> {
    if id.starts_with('#') {
        return Some(format!(
            "{id:?} is a room alias; use the room's id (it starts with !, under the room's advanced settings)"
        ));
    }
    if !id.starts_with('!') || id.len() < 2 {
        return Some(format!(
            "{id:?} is not a Matrix room id; a room id starts with ! (for example !abc123:example.org)"
        ));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("{id:?} has spaces or control characters"));
    }
    None
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let room_id = t.required("room_id", &d.room_id).filter(|id| {
        let problem = room_id_problem(id);
        if let Some(problem) = &problem {
            t.add(
                d.room_id.as_ref().map(|v| v.span()),
                format!("{key}.room_id: {problem}"),
            );
        }
        problem.is_none()
    });
    let token = t
        .secret_text("the access token of the Matrix user that posts")
        .and_then(|(value, span, what)| {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace()) {
                t.add(
                    span.clone(),
                    format!(
                        "{key}.{}: {what} is not an access token (empty, or has spaces); copy the user's access token",
                        t.field_of(&span)
                    ),
                );
                None
            } else {
                Some(Secret::new(value))
            }
        });
    let homeserver_url = t.required_url();
    Some(Target::Matrix {
        homeserver_url: homeserver_url?,
        room_id: room_id?,
        token: token?,
    })
}
