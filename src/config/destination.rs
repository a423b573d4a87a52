//! A destination's table: its kind, the kind's target, its policies.

use super::*;
use crate::template::Rendering;

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
        rendering: Rendering,
    },
    /// Slack Web API with a bot token (`chat.postMessage`).
    Slack {
        /// The Web API's base, `https://slack.com/api/`.
        api_url: reqwest::Url,
        channel: String,
        token: Secret,
        rendering: Rendering,
    },
    /// A Microsoft Teams workflow ("Post to a channel when a webhook request
    /// is received"): Adaptive Cards, no read-back.
    Teams {
        url: reqwest::Url,
        rendering: Rendering,
    },
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
        rendering: Rendering,
    },
    /// PagerDuty Events API v2.
    PagerDuty {
        /// The Events API's base, `https://events.pagerduty.com`.
        events_url: reqwest::Url,
        routing_key: Secret,
        rendering: Rendering,
    },
    /// A Discord channel webhook. In a forum channel (`forum = true`) each
    /// thread becomes a post and its updates land in it.
    Discord {
        url: reqwest::Url,
        forum: bool,
        rendering: Rendering,
    },
    /// A Discord channel through the bot API (`channel_id` set): Create
    /// Message with a `nonce` and `enforce_nonce`, so a re-send after a
    /// lost answer is not a second message.
    DiscordBot {
        /// The API's base, `https://discord.com/api/v10/`.
        api_url: reqwest::Url,
        channel_id: String,
        token: Secret,
        rendering: Rendering,
    },
    /// A Matrix room through the client-server API with an access token:
    /// `PUT .../send/m.room.message/{txnId}`, the txnId derived from the
    /// delivery's key, so the homeserver deduplicates a re-send.
    Matrix {
        /// The homeserver's base, `https://matrix.example.org/`.
        homeserver_url: reqwest::Url,
        /// The room's id (`!...`), not an alias.
        room_id: String,
        token: Secret,
        rendering: Rendering,
    },
    /// Email through an SMTP server: one message per delivery to every
    /// recipient, its `Message-ID` derived from the idempotency key.
    Email {
        host: String,
        port: u16,
        security: crate::kinds::email::config::SmtpSecurity,
        /// The login, when the server wants one (AUTH PLAIN or LOGIN).
        username: Option<String>,
        password: Option<Secret>,
        /// `smtp_ca_file`'s certificates (PEM), trusted for this server
        /// besides the system's: a private relay's CA.
        ca_pem: Option<String>,
        /// Addresses as checked at load (`Name <user@example.com>`).
        from: String,
        to: Vec<String>,
        cc: Vec<String>,
        rendering: Rendering,
    },
    /// SMS through Twilio's Messages API: one message per recipient.
    Sms {
        /// The API's base, `https://api.twilio.com/`.
        api_url: reqwest::Url,
        account_sid: String,
        auth_token: Secret,
        from: String,
        to: Vec<String>,
        /// The text is cut to this many characters.
        text_chars_max: usize,
        rendering: Rendering,
    },
    /// A Google Chat space: its incoming webhook (`spaces.messages.create`
    /// with the webhook's `key` and `token` in the URL), or the Chat API
    /// as an app with a service account.
    GoogleChat {
        mode: crate::kinds::google_chat::config::GoogleChatMode,
        rendering: Rendering,
    },
    /// A Telegram chat through the Bot API (`sendMessage`).
    Telegram {
        /// The Bot API's base, `https://api.telegram.org/`.
        api_url: reqwest::Url,
        token: Secret,
        chat_id: String,
        /// A forum supergroup's topic the messages go to.
        message_thread_id: Option<i64>,
        rendering: Rendering,
    },
    /// A Zulip channel (stream), one topic per thread.
    Zulip {
        /// The server's base, `https://example.zulipchat.com/`.
        site_url: reqwest::Url,
        email: String,
        api_key: Secret,
        stream: String,
        rendering: Rendering,
    },
}

impl Target {
    /// Its template and mentions, for a kind that renders through a
    /// template (`None` for one that does not).
    pub fn rendering_mut(&mut self) -> Option<&mut Rendering> {
        match self {
            Target::Webhook { rendering, .. }
            | Target::Slack { rendering, .. }
            | Target::Discord { rendering, .. }
            | Target::DiscordBot { rendering, .. }
            | Target::Teams { rendering, .. }
            | Target::PagerDuty { rendering, .. }
            | Target::GoogleChat { rendering, .. }
            | Target::Jira { rendering, .. }
            | Target::Email { rendering, .. }
            | Target::Matrix { rendering, .. }
            | Target::Sms { rendering, .. }
            | Target::Telegram { rendering, .. }
            | Target::Zulip { rendering, .. } => Some(rendering),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Its template and mentions, where it has them.
    pub fn rendering(&self) -> Option<&Rendering> {
        match self {
            Target::Webhook { rendering, .. }
            | Target::Slack { rendering, .. }
            | Target::Discord { rendering, .. }
            | Target::DiscordBot { rendering, .. }
            | Target::Teams { rendering, .. }
            | Target::PagerDuty { rendering, .. }
            | Target::GoogleChat { rendering, .. }
            | Target::Jira { rendering, .. }
            | Target::Email { rendering, .. }
            | Target::Matrix { rendering, .. }
            | Target::Sms { rendering, .. }
            | Target::Telegram { rendering, .. }
            | Target::Zulip { rendering, .. } => Some(rendering),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Teams { .. } => "teams",
            Target::Jira { .. } => "jira",
            Target::PagerDuty { .. } => "pagerduty",
            Target::Discord { .. } | Target::DiscordBot { .. } => "discord",
            Target::Matrix { .. } => "matrix",
            Target::Email { .. } => "email",
            Target::Sms { .. } => "sms",
            Target::GoogleChat { .. } => "google-chat",
            Target::Telegram { .. } => "telegram",
            Target::Zulip { .. } => "zulip",
        }
    }
}

/// What the config knows of one destination kind, read from the
/// `config` module in its folder (`crate::kinds::<kind>::config::KIND`).
pub struct KindConfig {
    /// The `kind = "..."` that selects it.
    pub name: &'static str,
    /// The destination's own published pace, used when the file sets none:
    /// (requests per second, burst).
    pub default_rate: Option<(f64, u32)>,
    /// The keys of a destination table that only this kind takes.
    pub keys: &'static [&'static str],
    /// Named among the kinds that take a credential (`secret_env`,
    /// `secret`) when another kind's table has one.
    pub takes_secret: bool,
    /// Whether this table may have a credential (a kind may take one in
    /// one mode only).
    pub secret_allowed: fn(&FileDestination) -> bool,
    /// Its target from its table; notes every problem, `None` when there
    /// was one.
    pub parse: fn(&TargetKeys<'_, '_>) -> Option<Target>,
}

/// A kind a destination's table names.
pub(super) type FileKind = &'static KindConfig;

macro_rules! listed_kinds {
    (@push $kinds:ident, none) => {};
    (@push $kinds:ident, $config:ident) => {
        $kinds.push(&crate::kinds::$config::config::KIND);
    };
    ($($variant:ident {
        field: $field:ident,
        connector: $($connector:ident)::+,
        emulation: $($emulation:ident)::+,
        stats: $($stats:ident)::+,
        demo: $demo:ident,
        config: $config:ident $(,)?
    }),* $(,)?) => {
        /// The kinds with a `config` module, in the list's order.
        // Entries with `none` push nothing, so this cannot be a `vec![]`.
        #[allow(clippy::vec_init_then_push)]
        fn listed_kinds() -> Vec<FileKind> {
            let mut kinds: Vec<FileKind> = Vec::new();
            $(listed_kinds!(@push kinds, $config);)*
            kinds
        }
    };
}
crate::kinds::with_kinds!(listed_kinds);

/// The kinds a destination's table may name. The list names the generic
/// webhook last (the mock tries it last); the file's messages name it
/// first.
pub(super) fn file_kinds() -> &'static [FileKind] {
    static KINDS: std::sync::LazyLock<Vec<FileKind>> = std::sync::LazyLock::new(|| {
        let mut kinds = listed_kinds();
        kinds.rotate_right(1);
        kinds
    });
    &KINDS
}

/// The kind named `text`, if there is one.
pub(super) fn file_kind(text: &str) -> Option<FileKind> {
    file_kinds().iter().copied().find(|kind| kind.name == text)
}

#[derive(Deserialize)]
pub struct FileDestination {
    pub kind: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    /// The URL itself is a credential (Discord, Teams): read it from here.
    pub url_env: Option<Spanned<String>>,
    /// The same, from a file (a Kubernetes or systemd credential), read
    /// again at every reload.
    pub url_file: Option<Spanned<PathBuf>>,
    pub secret_env: Option<Spanned<String>>,
    /// The credential in a file of its own, read again at every reload.
    pub secret_file: Option<Spanned<PathBuf>>,
    /// The credential written in the file itself: for the mock and tests;
    /// real credentials belong in the environment (`secret_env`).
    pub secret: Option<Spanned<String>>,
    pub channel: Option<Spanned<String>>,
    pub project: Option<Spanned<String>>,
    pub issue_type: Option<Spanned<String>>,
    pub email: Option<Spanned<String>>,
    pub resolve_transition: Option<Spanned<String>>,
    pub search_recheck_ms: Option<Spanned<u64>>,
    pub forum: Option<Spanned<bool>>,
    /// Discord's bot mode: the channel the bot posts to (a snowflake).
    pub channel_id: Option<Spanned<String>>,
    /// Matrix: the room's id (`!...`).
    pub room_id: Option<Spanned<String>>,
    /// Email: the SMTP server, its port and protection, the login.
    pub smtp_host: Option<Spanned<String>>,
    pub smtp_port: Option<Spanned<u64>>,
    pub smtp_security: Option<Spanned<String>>,
    pub smtp_username: Option<Spanned<String>>,
    pub smtp_ca_file: Option<Spanned<String>>,
    /// Email: the sender and the recipients.
    pub mail_from: Option<Spanned<String>>,
    pub mail_to: Option<Spanned<crate::kinds::email::config::Addresses>>,
    pub mail_cc: Option<Spanned<crate::kinds::email::config::Addresses>>,
    /// SMS (Twilio): the account, the sender, the recipients (one number
    /// or a list) and where the text is cut.
    pub account_sid: Option<Spanned<String>>,
    #[serde(rename = "from")]
    pub from_number: Option<Spanned<String>>,
    pub to: Option<Spanned<OneOrMany>>,
    pub text_chars_max: Option<Spanned<u32>>,
    /// Telegram: the chat, and a forum topic in it.
    pub chat_id: Option<Spanned<String>>,
    pub message_thread_id: Option<Spanned<i64>>,
    /// Zulip: the channel (stream) messages go to.
    pub stream: Option<Spanned<String>>,
    /// Google Chat's API mode: the space, and the service account's JSON
    /// key file.
    pub space: Option<Spanned<String>>,
    pub credentials_file: Option<Spanned<PathBuf>>,
    /// The destination's own template, inline (see `src/template/`).
    pub template: Option<Spanned<String>>,
    /// The destination's own template in a file, relative to the config
    /// file.
    pub template_file: Option<Spanned<String>>,
    /// Who to mention per severity: `{ P1 = "<!subteam^S123>" }`.
    pub mentions: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub concurrency: Option<Spanned<u32>>,
    pub rate_limit_per_sec: Option<Spanned<f64>>,
    pub rate_limit_burst: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) retry: FileRetry,
    #[serde(default)]
    pub(super) breaker: FileBreaker,
}

/// A key that takes one text or a list of them (`to = "+1..."` or
/// `to = ["+1...", "+44..."]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct FileBreaker {
    pub failures: Option<Spanned<u32>>,
    pub cooldown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
pub(super) struct FileRetry {
    pub attempts_max: Option<Spanned<u32>>,
    pub base_ms: Option<Spanned<u64>>,
    pub cap_ms: Option<Spanned<u64>>,
    pub deadline_secs: Option<Spanned<u64>>,
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
    let kinds: Vec<&str> = file_kinds().iter().map(|k| k.name).collect();
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
        Some(kind) => match file_kind(kind.get_ref()) {
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
        None => kind.default_rate.map(|(rate, _)| rate),
        Some(rate) if (0.01..=100_000.0).contains(rate.get_ref()) => Some(*rate.get_ref()),
        Some(rate) => {
            problems.add(
                Some(rate.span()),
                format!("{key}.rate_limit_per_sec: must be between 0.01 and 100000"),
            );
            None
        }
    };
    let default_burst = kind.default_rate.map_or(1, |(_, burst)| burst);
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

/// The span of a kind's own key in a destination's table, when written.
fn span_of(d: &FileDestination, field: &str) -> Span {
    match field {
        "channel" => d.channel.as_ref().map(|v| v.span()),
        "project" => d.project.as_ref().map(|v| v.span()),
        "issue_type" => d.issue_type.as_ref().map(|v| v.span()),
        "email" => d.email.as_ref().map(|v| v.span()),
        "resolve_transition" => d.resolve_transition.as_ref().map(|v| v.span()),
        "search_recheck_ms" => d.search_recheck_ms.as_ref().map(|v| v.span()),
        "forum" => d.forum.as_ref().map(|v| v.span()),
        "channel_id" => d.channel_id.as_ref().map(|v| v.span()),
        "room_id" => d.room_id.as_ref().map(|v| v.span()),
        "smtp_host" => d.smtp_host.as_ref().map(|v| v.span()),
        "smtp_port" => d.smtp_port.as_ref().map(|v| v.span()),
        "smtp_security" => d.smtp_security.as_ref().map(|v| v.span()),
        "smtp_username" => d.smtp_username.as_ref().map(|v| v.span()),
        "smtp_ca_file" => d.smtp_ca_file.as_ref().map(|v| v.span()),
        "mail_from" => d.mail_from.as_ref().map(|v| v.span()),
        "mail_to" => d.mail_to.as_ref().map(|v| v.span()),
        "mail_cc" => d.mail_cc.as_ref().map(|v| v.span()),
        "account_sid" => d.account_sid.as_ref().map(|v| v.span()),
        "from" => d.from_number.as_ref().map(|v| v.span()),
        "to" => d.to.as_ref().map(|v| v.span()),
        "text_chars_max" => d.text_chars_max.as_ref().map(|v| v.span()),
        "chat_id" => d.chat_id.as_ref().map(|v| v.span()),
        "message_thread_id" => d.message_thread_id.as_ref().map(|v| v.span()),
        "stream" => d.stream.as_ref().map(|v| v.span()),
        "space" => d.space.as_ref().map(|v| v.span()),
        "credentials_file" => d.credentials_file.as_ref().map(|v| v.span()),
        _ => unreachable!("{field} is not a key of a destination table"),
    }
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
    let kind_name = kind.name;
    // Keys that belong to other kinds are refused, so a typo'd table is
    // not silently half-used.
    let only_for = |field: &str, present: Span, kinds: &[FileKind]| {
        if let Some(span) = present {
            if !kinds.iter().any(|k| std::ptr::eq(*k, kind)) {
                problems.add(
                    Some(span),
                    format!(
                        "{key}.{field}: not a setting of kind {kind_name} (only of {})",
                        kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
                    ) + "; remove it",
                );
            }
        }
    };
    for owner in file_kinds() {
        for field in owner.keys {
            let owners: Vec<FileKind> = file_kinds()
                .iter()
                .copied()
                .filter(|k| k.keys.contains(field))
                .collect();
            if std::ptr::eq(owners[0], *owner) {
                only_for(field, span_of(d, field), &owners);
            }
        }
    }
    // A kind may take a credential in one mode only (Discord's bot mode).
    let secret_kinds: Vec<FileKind> = if kind.takes_secret || !(kind.secret_allowed)(d) {
        file_kinds()
            .iter()
            .copied()
            .filter(|k| k.takes_secret)
            .collect()
    } else {
        vec![kind]
    };
    only_for(
        "secret_env",
        d.secret_env.as_ref().map(|v| v.span()),
        &secret_kinds,
    );
    only_for("secret", d.secret.as_ref().map(|v| v.span()), &secret_kinds);
    only_for(
        "secret_file",
        d.secret_file.as_ref().map(|v| v.span()),
        &secret_kinds,
    );

    let url_given = d.url.is_some() || d.url_env.is_some() || d.url_file.is_some();
    let mut keys = TargetKeys {
        key,
        kind_name,
        kind_span: d.kind.as_ref().map(|k| k.span()),
        d,
        problems,
        env,
        url_given,
        url: None,
    };
    if let Some(file) = &d.url_file {
        if d.url.is_some() || d.url_env.is_some() {
            problems.add(
                Some(file.span()),
                format!("{key}.url_file: set one of url, url_env or url_file; remove the others"),
            );
            return None;
        }
        // The value is a credential: the error never repeats it.
        keys.url = keys.file_value("url_file", file).and_then(|value| {
            parse_destination_url(&value)
                .map_err(|_| {
                    problems.add(
                        Some(file.span()),
                        format!(
                            "{key}.url_file: {} does not hold an http(s) URL with a host; write the full URL, like https://host/path, into it",
                            file.get_ref().display()
                        ),
                    )
                })
                .ok()
        });
        return (kind.parse)(&keys);
    }
    keys.url = match (&d.url, &d.url_env) {
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
        (None, Some(var)) => keys.env_value("url_env", var).and_then(|value| {
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
    (kind.parse)(&keys)
}

/// What a kind's `parse` reads its target from: the destination's table,
/// its key path, and checks that note each problem with the key and a fix.
pub struct TargetKeys<'a, 's> {
    /// `destinations.<name>`.
    pub key: &'a str,
    pub kind_name: &'static str,
    kind_span: Span,
    pub d: &'a FileDestination,
    problems: &'a Problems<'s>,
    env: &'a dyn Fn(&str) -> Option<String>,
    url_given: bool,
    url: Option<reqwest::Url>,
}

impl TargetKeys<'_, '_> {
    /// Notes a problem at `span`.
    pub fn add(&self, span: Span, message: String) {
        self.problems.add(span, message);
    }

    /// The integer at `field`, or `default`, checked against `range`.
    pub fn in_range<T: Copy + PartialOrd + fmt::Display>(
        &self,
        field: &str,
        value: &Option<Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T {
        self.problems
            .in_range(&format!("{}.{field}", self.key), value, default, range)
    }

    /// A credential read from the file at `path` (`secret_file`,
    /// `url_file`): trimmed, not empty. A file others may read is a
    /// warning; an unreadable or empty one a problem naming the key and
    /// the file.
    pub fn file_value(&self, field: &str, path: &Spanned<PathBuf>) -> Option<String> {
        let key = format!("{}.{field}", self.key);
        match read_secret_file(&key, path.get_ref()) {
            Ok(SecretFile { text, warning }) => {
                self.problems.warnings.borrow_mut().extend(warning);
                Some(text)
            }
            Err(message) => {
                self.problems.add(Some(path.span()), message);
                None
            }
        }
    }

    fn env_value(&self, field: &str, var: &Spanned<String>) -> Option<String> {
        let key = self.key;
        let value = (self.env)(var.get_ref())
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty());
        if value.is_none() {
            self.problems
                .missing_env
                .borrow_mut()
                .push(var.get_ref().clone());
            self.problems.add(
                Some(var.span()),
                format!(
                    "{key}.{field}: environment variable {} is not set; export {}=... before starting herald",
                    var.get_ref(),
                    var.get_ref()
                ),
            );
        }
        value
    }

    /// The `url` (or `url_env`) the kind needs.
    pub fn required_url(&self) -> Option<reqwest::Url> {
        let (key, kind_name) = (self.key, self.kind_name);
        if !self.url_given {
            self.problems.add(
                self.kind_span.clone(),
                format!(
                    "{key}.url: kind {kind_name} needs url (or url_env, or url_file); add url = \"https://...\""
                ),
            );
        }
        self.url.clone()
    }

    /// An optional URL with a default: None only when the given one is bad.
    pub fn url_or(&self, default: &str) -> Option<reqwest::Url> {
        if self.url_given {
            self.url.clone()
        } else {
            Some(reqwest::Url::parse(default).expect("built-in URL"))
        }
    }

    /// A text key the kind needs, not empty.
    pub fn required(&self, field: &str, value: &Option<Spanned<String>>) -> Option<String> {
        let (key, kind_name) = (self.key, self.kind_name);
        match value.as_ref().map(|v| (v.get_ref().trim(), v.span())) {
            Some((text, _)) if !text.is_empty() => Some(text.to_owned()),
            Some((_, span)) => {
                self.problems
                    .add(Some(span), format!("{key}.{field}: must not be empty"));
                None
            }
            None => {
                self.problems.add(
                    self.kind_span.clone(),
                    format!("{key}.{field}: kind {kind_name} needs {field}; add {field} = \"...\""),
                );
                None
            }
        }
    }

    /// The credential: from the environment (`secret_env`), a file of its
    /// own (`secret_file`), or written in the config (`secret`, for the
    /// mock and tests). With it, the span it came from and how to name it
    /// in a message ("the value of VAR").
    pub fn secret_text(&self, what: &str) -> Option<(String, Span, String)> {
        let (key, kind_name, d) = (self.key, self.kind_name, self.d);
        if let Some(file) = &d.secret_file {
            if d.secret_env.is_some() || d.secret.is_some() {
                self.problems.add(
                    Some(file.span()),
                    format!("{key}.secret_file: set one of secret_env, secret_file or secret; remove the others"),
                );
                return None;
            }
            return self.file_value("secret_file", file).map(|value| {
                (
                    value,
                    Some(file.span()),
                    format!("the content of {}", file.get_ref().display()),
                )
            });
        }
        match (&d.secret_env, &d.secret) {
            (Some(var), None) => self.env_value("secret_env", var).map(|value| {
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
                self.problems.add(
                    Some(var.span()),
                    format!("{key}.secret_env: set secret_env or secret, not both; remove one"),
                );
                None
            }
            (None, None) => {
                self.problems.add(
                    self.kind_span.clone(),
                    format!("{key}.secret_env: kind {kind_name} needs secret_env, naming the environment variable that holds {what} (or secret_file, naming a file that holds it)"),
                );
                None
            }
        }
    }

    /// The key a credential's span is at: `secret`, `secret_file` or
    /// `secret_env`.
    pub fn field_of(&self, span: &Span) -> &'static str {
        if span.as_ref() == self.d.secret.as_ref().map(|s| s.span()).as_ref() {
            "secret"
        } else if span.as_ref() == self.d.secret_file.as_ref().map(|s| s.span()).as_ref() {
            "secret_file"
        } else {
            "secret_env"
        }
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
