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

/// A matrix.to permalink to the event a Matrix delivery sent
/// (`remote_ref`, `$...`) in the destination's room; `None` for another
/// kind's target or a reference that is not an event id. Each part is
/// percent-encoded (RFC 3986 `pchar`), as matrix.to links require.
pub fn remote_url(target: &Target, remote_ref: &str) -> Option<String> {
    let Target::Matrix { room_id, .. } = target else {
        return None;
    };
    if !remote_ref.starts_with('$') || remote_ref.len() < 2 {
        return None;
    }
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
                | b'+' | b',' | b';' | b'=' | b':' | b'@' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    Some(format!(
        "https://matrix.to/#/{}/{}",
        encode(room_id),
        encode(remote_ref)
    ))
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
    let homeserver_url = t.required_url().filter(|url| {
        let api_path = url.path().contains("/_matrix");
        if api_path {
            t.add(
                d.url.as_ref().map(|v| v.span()),
                format!("{key}.url: give the homeserver's base (like https://matrix.example.org), without /_matrix/...; herald adds the API's path"),
            );
        }
        !api_path
    });
    Some(Target::Matrix {
        homeserver_url: homeserver_url?,
        room_id: room_id?,
        token: token?,
        rendering: crate::template::Rendering::default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Target};

    fn parse(table: &str) -> Result<Config, String> {
        let env = |k: &str| (k == "MATRIX_ACCESS_TOKEN").then(|| "syt_aGVyYWxk_abc".to_owned());
        Config::parse(
            "herald.toml",
            &format!("[destinations.m]\nkind = \"matrix\"\n{table}"),
            env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_matrix_destination_takes_a_homeserver_a_room_id_and_a_token() {
        let config = parse(
            "url = \"https://matrix.example.org\"\nroom_id = \"!abc123:example.org\"\nsecret_env = \"MATRIX_ACCESS_TOKEN\"\n",
        )
        .unwrap();
        let d = config.destination("m").unwrap();
        let Target::Matrix {
            homeserver_url,
            room_id,
            token,
            ..
        } = &d.target
        else {
            panic!("a Matrix target: {d:?}");
        };
        assert_eq!(homeserver_url.as_str(), "https://matrix.example.org/");
        assert_eq!(room_id, "!abc123:example.org");
        assert_eq!(token.expose(), "syt_aGVyYWxk_abc");
        assert!(
            !format!("{d:?}").contains("syt_"),
            "the token is never printed"
        );
        assert_eq!(d.target.kind(), "matrix");
        assert_eq!(d.isolation.rate_per_sec, Some(0.2));
    }

    #[test]
    fn bad_matrix_keys_are_named_with_a_fix() {
        let err = parse(
            "url = \"https://matrix.example.org/_matrix/client/v3\"\nroom_id = \"#ops:example.org\"\n",
        )
        .unwrap_err();
        for expected in [
            "destinations.m.url: give the homeserver's base",
            "destinations.m.room_id: \"#ops:example.org\" is a room alias",
            "destinations.m.secret_env: kind matrix needs secret_env",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let err = parse("secret = \"tok\"\nroom_id = \"ops\"\n").unwrap_err();
        for expected in [
            "destinations.m.url: kind matrix needs url",
            "destinations.m.room_id: \"ops\" is not a Matrix room id",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let err = parse(
            "url = \"https://matrix.example.org\"\nroom_id = \"!a:b\"\nsecret = \"tok\"\nchannel = \"x\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("destinations.m.channel: not a setting of kind matrix"),
            "{err}"
        );
    }
}
