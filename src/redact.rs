//! URLs as they may be printed: in logs, errors and the API. Every place
//! that shows a URL a user gave (the database, a destination) goes through
//! here, so no credential is printed.
//!
//! The parsing is by hand, not `Url::parse`: a URL that does not parse
//! (a typo in the config, a libpq form such as several hosts) is exactly
//! the one an error message echoes, and must be redacted all the same.
//! When in doubt, more is hidden rather than less.

/// What a hidden credential is shown as.
pub const HIDDEN: &str = "***";

/// The URL with the password of its user part (`user:SECRET@host`) and the
/// values of credential-like query parameters (`password`, `sslpassword`,
/// `token`, `sig`, `api_key`, ...) replaced by `***`. Text without `://`
/// (a file path) is returned as it is.
pub fn redact_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &text[rest_start..];
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..rest_start]);
    // Everything before the last '@' is the user part: a password may hold
    // '/', '?' or '#' unencoded, and showing less is the safe mistake.
    let (userinfo, after_user) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
            }
            None => out.push_str(userinfo),
        }
    }
    let (before_fragment, fragment) = match after_user.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (after_user, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// A destination's URL as it may be printed: scheme and host only. Many
/// webhook URLs are themselves the credential (a Slack or Discord webhook's
/// token is in its path, a Teams workflow's signature in its query), so
/// path and query are hidden whole.
pub fn redact_destination_url(text: &str) -> String {
    let redacted = redact_url(text);
    let Some(scheme_end) = redacted.find("://") else {
        return HIDDEN.to_owned();
    };
    let rest = &redacted[scheme_end + 3..];
    let authority_end = rest.rfind('@').map_or(0, |at| at + 1);
    let host_end = rest[authority_end..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |end| authority_end + end);
    let mut out = redacted[..scheme_end + 3 + host_end].to_owned();
    if host_end < rest.len() {
        out.push('/');
        out.push_str(HIDDEN);
    }
    out
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _value)) if is_credential_name(name) => format!("{name}={HIDDEN}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Query parameter names that carry credentials, in any case:
/// `password`, `sslpassword`, `passwd`, `pwd`, `secret`, `token`,
/// `access_token`, `api_key`, `apikey`, `key`, `sig`, `signature`, `auth`.
fn is_credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const PARTS: [&str; 7] = [
        "pass",
        "secret",
        "token",
        "key",
        "sig",
        "auth",
        "credential",
    ];
    name == "pwd" || PARTS.iter().any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_lose_their_passwords() {
        for (given, shown) in [
            ("herald.db", "herald.db"),
            (
                "postgres://u@host/db?password=SECRET",
                "postgres://u@host/db?password=***",
            ),
            (
                "postgres://u:SECRET@host:5432/db",
                "postgres://u:***@host:5432/db",
            ),
            (
                "postgresql://u:S/E?C#R@ET@h/db?sslmode=require&sslpassword=SECRET&PassWord=SECRET",
                "postgresql://u:***@h/db?sslmode=require&sslpassword=***&PassWord=***",
            ),
            (
                "postgres://u@h/db?options=-csearch_path%3Dx&application_name=a",
                "postgres://u@h/db?options=-csearch_path%3Dx&application_name=a",
            ),
            (
                "https://h/p?token=SECRET#frag",
                "https://h/p?token=***#frag",
            ),
        ] {
            assert_eq!(redact_url(given), shown, "{given}");
        }
    }

    #[test]
    fn destination_urls_show_only_their_host() {
        for (given, shown) in [
            (
                "https://discord.com/api/webhooks/1/SECRET",
                "https://discord.com/***",
            ),
            ("https://x.example/hook?sig=SECRET", "https://x.example/***"),
            (
                "https://user:SECRET@x.example:8443/a",
                "https://user:***@x.example:8443/***",
            ),
            ("https://x.example", "https://x.example"),
            ("not a url SECRET", "***"),
        ] {
            assert_eq!(redact_destination_url(given), shown, "{given}");
        }
    }
}
