//! A destination's table: its kind, the kind's target, its policies.

use super::*;

#[derive(Clone, Debug)]
pub struct Destination {
    pub name: String,
    pub target: Target,
    pub timeout_ms: u64,
    pub concurrency: u32,
    pub policy: RetryPolicy,
    pub isolation: Isolation,
}

/// Where and how to deliver; one variant per destination kind.
#[derive(Clone, Debug)]
pub enum Target {
    Webhook {
        url: reqwest::Url,
        /// Standard Webhooks signing secret; unsigned when absent.
        secret: Option<WebhookSecret>,
    },
    /// Slack Web API with a bot token (`chat.postMessage`).
    Slack {
        /// The Web API's base, `https://slack.com/api/`.
        api_url: reqwest::Url,
        channel: String,
        token: Secret,
    },
    /// A Microsoft Teams workflow ("Post to a channel when a webhook request
    /// is received"): Adaptive Cards, no read-back.
    Teams { url: reqwest::Url },
    /// Jira Cloud REST v3, basic auth with an account's email and API token.
    Jira {
        site_url: reqwest::Url,
        project: String,
        issue_type: String,
        email: String,
        token: Secret,
        /// The transition (name or id) a resolve applies.
        resolve_transition: String,
        /// Jira's search lags its writes: after an ambiguous create, a
        /// search that finds nothing is repeated after this long.
        search_recheck_ms: u64,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        /// The Events API's base, `https://events.pagerduty.com`.
        events_url: reqwest::Url,
        routing_key: Secret,
    },
    /// A Discord channel webhook. In a forum channel (`forum = true`) each
    /// thread becomes a post and its updates land in it.
    Discord { url: reqwest::Url, forum: bool },
    /// A Discord channel through the bot API (`channel_id` set): Create
    /// Message with a `nonce` and `enforce_nonce`, so a re-send after a
    /// lost answer is not a second message.
    DiscordBot {
        /// The API's base, `https://discord.com/api/v10/`.
        api_url: reqwest::Url,
        channel_id: String,
        token: Secret,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Teams { .. } => "teams",
            Target::Jira { .. } => "jira",
            Target::PagerDuty { .. } => "pagerduty",
            Target::Discord { .. } | Target::DiscordBot { .. } => "discord",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Webhook,
    Slack,
    Teams,
    Jira,
    PagerDuty,
    Discord,
}

impl FileKind {
    pub(super) const ALL: [FileKind; 6] = [
        FileKind::Webhook,
        FileKind::Slack,
        FileKind::Teams,
        FileKind::Jira,
        FileKind::PagerDuty,
        FileKind::Discord,
    ];

    pub(super) fn parse(text: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            FileKind::Webhook => "webhook",
            FileKind::Slack => "slack",
            FileKind::Teams => "teams",
            FileKind::Jira => "jira",
            FileKind::PagerDuty => "pagerduty",
            FileKind::Discord => "discord",
        }
    }

    /// The destination's own published pace, used when the file sets none:
    /// (requests per second, burst).
    pub(super) fn default_rate(self) -> Option<(f64, u32)> {
        match self {
            // One message per second per channel.
            FileKind::Slack => Some((1.0, 1)),
            // Workflows throttle bursts; a few a second is safe.
            FileKind::Teams => Some((4.0, 4)),
            FileKind::Jira => Some((10.0, 10)),
            // 120 events a minute per routing key.
            FileKind::PagerDuty => Some((2.0, 4)),
            // 5 requests per 2 seconds per webhook.
            FileKind::Discord => Some((2.5, 5)),
            FileKind::Webhook => None,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct FileDestination {
    pub(super) kind: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    /// The URL itself is a credential (Discord, Teams): read it from here.
    pub(super) url_env: Option<Spanned<String>>,
    pub(super) secret_env: Option<Spanned<String>>,
    /// The credential written in the file itself: for the mock and tests;
    /// real credentials belong in the environment (`secret_env`).
    pub(super) secret: Option<Spanned<String>>,
    pub(super) channel: Option<Spanned<String>>,
    pub(super) project: Option<Spanned<String>>,
    pub(super) issue_type: Option<Spanned<String>>,
    pub(super) email: Option<Spanned<String>>,
    pub(super) resolve_transition: Option<Spanned<String>>,
    pub(super) search_recheck_ms: Option<Spanned<u64>>,
    pub(super) forum: Option<Spanned<bool>>,
    /// Discord's bot mode: the channel the bot posts to (a snowflake).
    pub(super) channel_id: Option<Spanned<String>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) concurrency: Option<Spanned<u32>>,
    pub(super) rate_limit_per_sec: Option<Spanned<f64>>,
    pub(super) rate_limit_burst: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) retry: FileRetry,
    #[serde(default)]
    pub(super) breaker: FileBreaker,
}

#[derive(Deserialize, Default)]
pub(super) struct FileBreaker {
    pub(super) failures: Option<Spanned<u32>>,
    pub(super) cooldown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
pub(super) struct FileRetry {
    pub(super) attempts_max: Option<Spanned<u32>>,
    pub(super) base_ms: Option<Spanned<u64>>,
    pub(super) cap_ms: Option<Spanned<u64>>,
    pub(super) deadline_secs: Option<Spanned<u64>>,
}

/// A valid destination name close to `name`: lower case, other characters
/// turned into `-`.
pub(super) fn suggested_destination_name(name: &str) -> String {
    let lowered: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = lowered.trim_start_matches(['-', '_']);
    if trimmed.is_empty() {
        "name".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// One destination's table: its kind, target and policies. Notes every
/// problem; `None` when there was one.
pub(super) fn parse_destination(
    name: String,
    d: &FileDestination,
    env: &impl Fn(&str) -> Option<String>,
    problems: &Problems<'_>,
    skip_missing_kind: bool,
) -> Option<Destination> {
    let key = format!("destinations.{name}");
    let kinds = FileKind::ALL.map(FileKind::as_str);
    let kind = match &d.kind {
        None => {
            if !skip_missing_kind {
                problems.add(
                    None,
                    format!(
                        "{key}.kind: missing; add kind = \"...\", one of {}",
                        kinds.join(", ")
                    ),
                );
            }
            return None;
        }
        Some(kind) => match FileKind::parse(kind.get_ref()) {
            Some(parsed) => parsed,
            None => {
                let fix = match closest_word(kind.get_ref(), &kinds) {
                    Some(intended) => format!("did you mean {intended}? "),
                    None => String::new(),
                };
                problems.add(
                    Some(kind.span()),
                    format!(
                        "{key}.kind: unknown kind {:?}; {fix}the kinds are {}",
                        kind.get_ref(),
                        kinds.join(", ")
                    ),
                );
                return None;
            }
        },
    };
    let target = parse_target(&key, kind, d, env, problems);
    let timeout_ms = problems.in_range(
        &format!("{key}.timeout_ms"),
        &d.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        100..=300_000,
    );
    let concurrency = problems.in_range(
        &format!("{key}.concurrency"),
        &d.concurrency,
        DEFAULT_CONCURRENCY,
        1..=CONCURRENCY_MAX,
    );
    let defaults = RetryPolicy::default();
    let r = &d.retry;
    let attempts_max = problems.in_range(
        &format!("{key}.retry.attempts_max"),
        &r.attempts_max,
        defaults.attempts_max,
        1..=100,
    );
    let base_ms = problems.in_range(
        &format!("{key}.retry.base_ms"),
        &r.base_ms,
        defaults.base_ms,
        1..=3_600_000,
    );
    let cap_ms = checked(
        &r.cap_ms,
        defaults.cap_ms.max(base_ms),
        base_ms..=86_400_000,
    )
    .unwrap_or_else(|(span, range)| {
        problems.add(
            span,
            format!("{key}.retry.cap_ms: must be {range} (at least base_ms)"),
        );
        defaults.cap_ms
    });
    let deadline_ms = r.deadline_secs.as_ref().map(|_| {
        problems.in_range(
            &format!("{key}.retry.deadline_secs"),
            &r.deadline_secs,
            0,
            1..=30 * 86_400,
        ) * 1000
    });
    let rate_per_sec = match &d.rate_limit_per_sec {
        None => kind.default_rate().map(|(rate, _)| rate),
        Some(rate) if (0.01..=100_000.0).contains(rate.get_ref()) => Some(*rate.get_ref()),
        Some(rate) => {
            problems.add(
                Some(rate.span()),
                format!("{key}.rate_limit_per_sec: must be between 0.01 and 100000"),
            );
            None
        }
    };
    let default_burst = kind.default_rate().map_or(1, |(_, burst)| burst);
    let rate_burst = problems.in_range(
        &format!("{key}.rate_limit_burst"),
        &d.rate_limit_burst,
        default_burst,
        1..=10_000,
    );
    let breaker_failures = problems.in_range(
        &format!("{key}.breaker.failures"),
        &d.breaker.failures,
        DEFAULT_BREAKER_FAILURES,
        1..=10_000,
    );
    let breaker_cooldown_ms = problems.in_range(
        &format!("{key}.breaker.cooldown_ms"),
        &d.breaker.cooldown_ms,
        DEFAULT_BREAKER_COOLDOWN_MS,
        100..=3_600_000,
    );
    Some(Destination {
        name,
        target: target?,
        timeout_ms,
        concurrency,
        policy: RetryPolicy {
            attempts_max,
            base_ms,
            cap_ms,
            deadline_ms,
        },
        isolation: Isolation {
            rate_per_sec,
            rate_burst,
            breaker_failures,
            breaker_cooldown_ms,
        },
    })
}

/// The kind's own settings: which keys it needs, which it refuses. Notes
/// every problem; `None` when there was one.
pub(super) fn parse_target(
    key: &str,
    kind: FileKind,
    d: &FileDestination,
    env: &impl Fn(&str) -> Option<String>,
    problems: &Problems<'_>,
) -> Option<Target> {
    let kind_name = kind.as_str();
    let kind_span = d.kind.as_ref().map(|k| k.span());
    // Keys that belong to other kinds are refused, so a typo'd table is
    // not silently half-used.
    let only_for = |field: &str, present: Span, kinds: &[FileKind]| {
        if let Some(span) = present {
            if !kinds.contains(&kind) {
                problems.add(
                    Some(span),
                    format!(
                        "{key}.{field}: not a setting of kind {kind_name} (only of {}); remove it",
                        kinds
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    };
    only_for(
        "channel",
        d.channel.as_ref().map(|v| v.span()),
        &[FileKind::Slack],
    );
    for (field, value) in [
        ("project", &d.project),
        ("issue_type", &d.issue_type),
        ("email", &d.email),
        ("resolve_transition", &d.resolve_transition),
    ] {
        only_for(field, value.as_ref().map(|v| v.span()), &[FileKind::Jira]);
    }
    only_for(
        "search_recheck_ms",
        d.search_recheck_ms.as_ref().map(|v| v.span()),
        &[FileKind::Jira],
    );
    only_for(
        "forum",
        d.forum.as_ref().map(|v| v.span()),
        &[FileKind::Discord],
    );
    only_for(
        "channel_id",
        d.channel_id.as_ref().map(|v| v.span()),
        &[FileKind::Discord],
    );
    // Discord takes a credential in its bot mode (`channel_id` set) only.
    let discord_bot = kind == FileKind::Discord && d.channel_id.is_some();
    let secret_kinds: &[FileKind] = if discord_bot {
        &[FileKind::Discord]
    } else {
        &[
            FileKind::Webhook,
            FileKind::Slack,
            FileKind::Jira,
            FileKind::PagerDuty,
        ]
    };
    only_for(
        "secret_env",
        d.secret_env.as_ref().map(|v| v.span()),
        secret_kinds,
    );
    only_for("secret", d.secret.as_ref().map(|v| v.span()), secret_kinds);

    let env_value = |field: &str, var: &Spanned<String>| -> Option<String> {
        let value = env(var.get_ref())
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty());
        if value.is_none() {
            problems
                .missing_env
                .borrow_mut()
                .push(var.get_ref().clone());
            problems.add(
                Some(var.span()),
                format!(
                    "{key}.{field}: environment variable {} is not set; export {}=... before starting herald",
                    var.get_ref(),
                    var.get_ref()
                ),
            );
        }
        value
    };
    let url_given = d.url.is_some() || d.url_env.is_some();
    let url = match (&d.url, &d.url_env) {
        (Some(_), Some(var)) => {
            problems.add(
                Some(var.span()),
                format!("{key}.url_env: set url or url_env, not both; remove one"),
            );
            None
        }
        (Some(url), None) => parse_destination_url(url.get_ref())
            .map_err(|reason| problems.add(Some(url.span()), format!("{key}.url: {reason}")))
            .ok(),
        // The value is a credential: the error never repeats it.
        (None, Some(var)) => env_value("url_env", var).and_then(|value| {
            parse_destination_url(&value)
                .map_err(|_| {
                    problems.add(
                        Some(var.span()),
                        format!(
                            "{key}.url_env: the value of {} is not an http(s) URL with a host; set it to the full URL, like https://host/path",
                            var.get_ref()
                        ),
                    )
                })
                .ok()
        }),
        (None, None) => None,
    };
    let required_url = || {
        if !url_given {
            problems.add(
                kind_span.clone(),
                format!(
                    "{key}.url: kind {kind_name} needs url (or url_env); add url = \"https://...\""
                ),
            );
        }
        url.clone()
    };
    // An optional URL with a default: None only when the given one is bad.
    let url_or = |default: &str| {
        if url_given {
            url.clone()
        } else {
            Some(reqwest::Url::parse(default).expect("built-in URL"))
        }
    };
    let required = |field: &str, value: &Option<Spanned<String>>| match value
        .as_ref()
        .map(|v| (v.get_ref().trim(), v.span()))
    {
        Some((text, _)) if !text.is_empty() => Some(text.to_owned()),
        Some((_, span)) => {
            problems.add(Some(span), format!("{key}.{field}: must not be empty"));
            None
        }
        None => {
            problems.add(
                kind_span.clone(),
                format!("{key}.{field}: kind {kind_name} needs {field}; add {field} = \"...\""),
            );
            None
        }
    };
    // The credential: from the environment (`secret_env`), or written in
    // the file (`secret`, for the mock and tests).
    let secret_text = |what: &str| -> Option<(String, Span, String)> {
        match (&d.secret_env, &d.secret) {
            (Some(var), None) => env_value("secret_env", var).map(|value| {
                (
                    value,
                    Some(var.span()),
                    format!("the value of {}", var.get_ref()),
                )
            }),
            (None, Some(inline)) => Some((
                inline.get_ref().trim().to_owned(),
                Some(inline.span()),
                "the value".to_owned(),
            )),
            (Some(var), Some(_)) => {
                problems.add(
                    Some(var.span()),
                    format!("{key}.secret_env: set secret_env or secret, not both; remove one"),
                );
                None
            }
            (None, None) => {
                problems.add(
                    kind_span.clone(),
                    format!("{key}.secret_env: kind {kind_name} needs secret_env, naming the environment variable that holds {what}"),
                );
                None
            }
        }
    };
    let field_of = |span: &Span| {
        if span.as_ref() == d.secret.as_ref().map(|s| s.span()).as_ref() {
            "secret"
        } else {
            "secret_env"
        }
    };
    match kind {
        FileKind::Webhook => {
            let secret = if d.secret_env.is_none() && d.secret.is_none() {
                Some(None)
            } else {
                secret_text("").and_then(|(value, span, what)| {
                    WebhookSecret::parse(&value)
                        .map_err(|reason| {
                            problems.add(
                                span.clone(),
                                format!(
                                    "{key}.{}: {what} is not a webhook secret: {reason}; a valid one is whsec_ then the base64 of 24 to 64 random bytes: run `herald secret` to make one",
                                    field_of(&span)
                                ),
                            )
                        })
                        .ok()
                        .map(Some)
                })
            };
            let url = required_url();
            Some(Target::Webhook {
                url: url?,
                secret: secret?,
            })
        }
        FileKind::Slack => {
            let token = secret_text("the bot token (xoxb-...)").and_then(|(value, span, what)| {
                if value.starts_with("xox") {
                    Some(Secret::new(value))
                } else {
                    problems.add(
                        span.clone(),
                        format!(
                            "{key}.{}: {what} is not a Slack token; a bot token starts with xoxb-",
                            field_of(&span)
                        ),
                    );
                    None
                }
            });
            let channel = required("channel", &d.channel);
            let mut api_url = url_or("https://slack.com/api/")?;
            if !api_url.path().ends_with('/') {
                api_url.set_path(&format!("{}/", api_url.path()));
            }
            Some(Target::Slack {
                api_url,
                channel: channel?,
                token: token?,
            })
        }
        FileKind::Teams => Some(Target::Teams {
            url: required_url()?,
        }),
        FileKind::Jira => {
            let search_recheck_ms = problems.in_range(
                &format!("{key}.search_recheck_ms"),
                &d.search_recheck_ms,
                2_000,
                0..=60_000,
            );
            let project = required("project", &d.project).filter(|project| {
                let valid = project
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    problems.add(
                        d.project.as_ref().map(|v| v.span()),
                        format!(
                            "{key}.project: {project:?} is not a Jira project key; write it in capitals, like {:?}",
                            project.to_ascii_uppercase()
                        ),
                    );
                }
                valid
            });
            let site_url = required_url();
            let issue_type = match &d.issue_type {
                None => Some("Task".to_owned()),
                Some(_) => required("issue_type", &d.issue_type),
            };
            let email = required("email", &d.email);
            let token = secret_text("the API token").map(|(value, _, _)| Secret::new(value));
            let resolve_transition = match &d.resolve_transition {
                None => Some("Done".to_owned()),
                Some(_) => required("resolve_transition", &d.resolve_transition),
            };
            Some(Target::Jira {
                site_url: site_url?,
                project: project?,
                issue_type: issue_type?,
                email: email?,
                token: token?,
                resolve_transition: resolve_transition?,
                search_recheck_ms,
            })
        }
        FileKind::PagerDuty => {
            let routing_key = secret_text("the integration's routing key").and_then(
                |(value, span, what)| {
                    if value.len() == 32 {
                        Some(Secret::new(value))
                    } else {
                        problems.add(
                            span.clone(),
                            format!(
                                "{key}.{}: {what} is not a routing key: a PagerDuty routing key is 32 characters",
                                field_of(&span)
                            ),
                        );
                        None
                    }
                },
            );
            let events_url = url_or("https://events.pagerduty.com/");
            Some(Target::PagerDuty {
                events_url: events_url?,
                routing_key: routing_key?,
            })
        }
        FileKind::Discord if discord_bot => {
            if let Some(forum) = &d.forum {
                problems.add(
                    Some(forum.span()),
                    format!("{key}.forum: the bot mode (channel_id) posts replies in a channel, not forum posts; remove forum, or remove channel_id for the webhook mode"),
                );
            }
            let channel_id = required("channel_id", &d.channel_id).filter(|id| {
                let valid = id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
                if !valid {
                    problems.add(
                        d.channel_id.as_ref().map(|v| v.span()),
                        format!("{key}.channel_id: {id:?} is not a Discord channel id; copy the channel's id (digits) with Developer Mode on"),
                    );
                }
                valid
            });
            // Accepted with or without the `Bot ` of the header.
            let token = secret_text("the bot token").map(|(value, _, _)| {
                Secret::new(value.strip_prefix("Bot ").unwrap_or(&value).trim())
            });
            let api_url = url_or("https://discord.com/api/v10/");
            Some(Target::DiscordBot {
                api_url: api_url?,
                channel_id: channel_id?,
                token: token?,
            })
        }
        FileKind::Discord => Some(Target::Discord {
            url: required_url()?,
            forum: d.forum.as_ref().is_some_and(|f| *f.get_ref()),
        }),
    }
}

pub fn parse_destination_url(text: &str) -> Result<reqwest::Url, String> {
    if !text.contains("://") {
        // Show the host only: a webhook URL's path (and a user part) may be
        // its credential.
        let text = text.trim_start_matches('/');
        let host_end = text.find('/').unwrap_or(text.len());
        let host = &text[text[..host_end].rfind('@').map_or(0, |at| at + 1)..host_end];
        let rest = if host_end < text.len() { "/..." } else { "" };
        return Err(format!(
            "\"{host}{rest}\" has no scheme; write http://{host}{rest} (or https://)"
        ));
    }
    // The URL may be a credential: errors show only its scheme and host.
    let shown = crate::redact::redact_destination_url(text);
    let url =
        reqwest::Url::parse(text).map_err(|e| format!("{shown:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{shown:?} must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown:?} carries credentials in the URL; use secret_env instead so they are never printed"
        ));
    }
    Ok(url)
}
