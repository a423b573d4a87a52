//! Templates per destination (MiniJinja): a kind's template renders the
//! *content* of its native request as JSON text (Slack's blocks and text,
//! the webhook's body, ...); the kind's connector parses it and adds the
//! protocol fields it owns (channel, idempotency metadata, thread
//! references, nonces), so a template can never break idempotency or
//! threading.
//!
//! - A template is compiled once: a kind's default when first used, an
//!   override when the config loads ([`Template::compile`]), never per
//!   delivery.
//! - [`context`] is what a template sees: the message (title, body,
//!   severity, thread, resolved, labels, links, fields, source, summary)
//!   plus `broadcast_id`, `destination`, `role` (single, opener, update,
//!   resolve), `mention`, `headline` and `timestamp`.
//! - Strings go into the JSON through `tojson`, so a title with quotes or
//!   newlines cannot break the output; `cut(n)` shortens to `n` characters
//!   with an ellipsis, `mrkdwn` escapes Slack's `& < >`, `html` escapes
//!   `& < > "` for HTML text and attributes (Matrix's `formatted_body`,
//!   Telegram's HTML parse mode).
//! - [`Rendering`] is a destination's choice: its override (or the kind's
//!   default) and its mentions by severity.

mod sample;

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::connector::shared::{headline, Role};
use crate::domain::{
    format_rfc3339_ms, ClaimedDelivery, Field, Link, Outcome, OutcomeClass, Severity,
};

pub use sample::{sample_deliveries, sample_delivery};

/// A template's source at most (bytes): a template is configuration, not
/// data.
pub const TEMPLATE_BYTES_MAX: usize = 64 * 1024;
/// A mention's text at most (characters).
pub const MENTION_CHARS_MAX: usize = 200;
/// Rendered output at most (bytes); a larger one fails its delivery.
pub const OUTPUT_BYTES_MAX: usize = 1024 * 1024;
/// The name every compiled template has in its environment.
const NAME: &str = "template";

/// Why a template did not compile or render: the reason and the
/// template's line where MiniJinja knows it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct TemplateError {
    pub line: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "template line {line}: {}", self.reason),
            None => write!(f, "template: {}", self.reason),
        }
    }
}

impl TemplateError {
    fn of(error: &minijinja::Error) -> TemplateError {
        let mut reason = match error.detail() {
            Some(detail) => format!("{}: {detail}", error.kind()),
            None => error.kind().to_string(),
        };
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            reason.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        TemplateError {
            line: error.line(),
            reason,
        }
    }
}

/// A compiled template; clones share it.
#[derive(Clone)]
pub struct Template {
    env: Arc<Environment<'static>>,
    /// A digest of the source: a config reload tells a changed template
    /// from the same one by the destination's `Debug` text.
    source_digest: u64,
    source_bytes: usize,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Template({} bytes, #{:016x})",
            self.source_bytes, self.source_digest
        )
    }
}

impl Template {
    /// Compiles `source` with herald's filters, strict about undefined
    /// names (a typo is an error, not an empty string).
    pub fn compile(source: &str) -> Result<Template, TemplateError> {
        if source.len() > TEMPLATE_BYTES_MAX {
            return Err(TemplateError {
                line: None,
                reason: format!("longer than {TEMPLATE_BYTES_MAX} bytes"),
            });
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter("tojson", strict_tojson);
        env.add_filter("cut", cut);
        env.add_filter("mrkdwn", escape_mrkdwn);
        env.add_filter("html", escape_html);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| TemplateError::of(&e))?;
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(source, &mut hasher);
        Ok(Template {
            env: Arc::new(env),
            source_digest: std::hash::Hasher::finish(&hasher),
            source_bytes: source.len(),
        })
    }

    /// A kind's built-in template. Panics if it does not compile: a unit
    /// test compiles every one.
    pub fn builtin(source: &'static str) -> Template {
        Template::compile(source).expect("a built-in template compiles")
    }

    /// Renders `context` and parses the output as JSON.
    pub fn render_json(&self, context: &Context<'_>) -> Result<serde_json::Value, TemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .expect("the template was added at compile");
        let text = template
            .render(minijinja::Value::from(minijinja::value::Serde(context)))
            .map_err(|e| TemplateError::of(&e))?;
        if text.len() > OUTPUT_BYTES_MAX {
            return Err(TemplateError {
                line: None,
                reason: format!("the output is longer than {OUTPUT_BYTES_MAX} bytes"),
            });
        }
        serde_json::from_str(&text).map_err(|e| TemplateError {
            line: None,
            reason: format!(
                "the output is not JSON: {e} (output line {}, column {}); put strings through |tojson",
                e.line(),
                e.column()
            ),
        })
    }
}

/// `value|tojson`, refusing an undefined value (a misspelt name) instead
/// of writing it as `null`.
fn strict_tojson(
    value: &minijinja::Value,
    indent: Option<minijinja::Value>,
    args: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::UndefinedError,
            "tojson of an undefined name (misspelt?)",
        ));
    }
    minijinja::filters::tojson(value, indent, args)
}

/// `text|cut(n)`: at most `n` characters, the last one an ellipsis when cut.
fn cut(text: &str, chars_max: usize) -> String {
    crate::connector::http::cut_chars(text, chars_max)
}

/// `text|mrkdwn`: Slack's control characters escaped.
pub fn escape_mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text|html`: `& < > "` as HTML entities, the only ones Telegram's HTML
/// parse mode names besides numeric ones, and enough for Matrix's
/// `org.matrix.custom.html` text and attribute values.
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Who a destination mentions, per severity: shown only on the first
/// message of a thread (or a message outside a thread), never on its
/// updates and resolve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mentions {
    by_severity: BTreeMap<Severity, String>,
}

impl Mentions {
    /// From `severity = "text"` pairs; the first bad one is the error
    /// (`P1`: its problem).
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Mentions, (String, String)> {
        let mut by_severity = BTreeMap::new();
        for (severity, text) in pairs {
            let parsed = Severity::parse(severity).map_err(|_| {
                (
                    severity.to_owned(),
                    "not a severity; use P1 to P5".to_owned(),
                )
            })?;
            let text = text.trim();
            if text.is_empty() || text.chars().count() > MENTION_CHARS_MAX {
                return Err((
                    severity.to_owned(),
                    format!("must be 1 to {MENTION_CHARS_MAX} characters"),
                ));
            }
            by_severity.insert(parsed, text.to_owned());
        }
        Ok(Mentions { by_severity })
    }

    pub fn is_empty(&self) -> bool {
        self.by_severity.is_empty()
    }

    /// The mention a delivery carries: its severity's, on a single message
    /// or a thread's opener only.
    pub fn for_delivery(&self, delivery: &ClaimedDelivery) -> Option<&str> {
        match Role::of(delivery) {
            Role::Single | Role::Opener => self
                .by_severity
                .get(&delivery.message.severity())
                .map(String::as_str),
            Role::Update | Role::Resolve => None,
        }
    }
}

/// A destination's rendering: its own template (`None`: its kind's
/// default) and its mentions.
#[derive(Clone, Debug, Default)]
pub struct Rendering {
    pub template: Option<Template>,
    pub mentions: Mentions,
}

impl Rendering {
    /// Renders `delivery` with this destination's template, or `default`.
    pub fn render(
        &self,
        default: &Template,
        delivery: &ClaimedDelivery,
    ) -> Result<serde_json::Value, TemplateError> {
        let template = self.template.as_ref().unwrap_or(default);
        template.render_json(&context(delivery, self.mentions.for_delivery(delivery)))
    }
}

/// What a template sees (see the module doc).
#[derive(Serialize)]
pub struct Context<'a> {
    pub title: &'a str,
    pub body: &'a str,
    pub severity: &'static str,
    pub thread: Option<&'a str>,
    pub resolved: bool,
    pub labels: &'a BTreeMap<String, String>,
    pub links: &'a [Link],
    pub fields: &'a [Field],
    pub source: Option<&'a str>,
    pub summary: Option<&'a str>,
    pub broadcast_id: &'a str,
    pub destination: &'a str,
    /// `single`, `opener`, `update` or `resolve`.
    pub role: &'static str,
    /// Who to mention (this destination's, for this severity), on a
    /// single message or an opener only.
    pub mention: Option<&'a str>,
    /// `[P1] title`, or `[RESOLVED] title`.
    pub headline: String,
    /// When the broadcast was accepted (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
}

/// The context of `delivery` for a template.
pub fn context<'a>(delivery: &'a ClaimedDelivery, mention: Option<&'a str>) -> Context<'a> {
    let m = &delivery.message;
    let details = m.details();
    Context {
        title: m.title(),
        body: m.body(),
        severity: m.severity().as_str(),
        thread: m.thread(),
        resolved: m.resolved(),
        labels: &details.labels,
        links: &details.links,
        fields: &details.fields,
        source: details.source.as_deref(),
        summary: details.summary.as_deref(),
        broadcast_id: &delivery.broadcast_id,
        destination: &delivery.destination,
        role: match Role::of(delivery) {
            Role::Single => "single",
            Role::Opener => "opener",
            Role::Update => "update",
            Role::Resolve => "resolve",
        },
        mention,
        headline: headline(delivery),
        timestamp: format_rfc3339_ms(delivery.broadcast_created_at_ms),
    }
}

/// The outcome of a delivery its destination's template did not render:
/// sending it again cannot help, so it fails now, with the reason, and the
/// lane goes on with the next one.
pub fn render_failed(error: &TemplateError) -> Outcome {
    let mut outcome = Outcome::new(OutcomeClass::Permanent);
    outcome.error = Some(format!("the destination's {error}; nothing was sent"));
    outcome
}

/// Checks a template the way the config load does: it compiles, and
/// renders JSON for a rich sample message in every role.
pub fn check(source: &str, mentions: &Mentions) -> Result<Template, TemplateError> {
    let template = Template::compile(source)?;
    let rendering = Rendering {
        template: Some(template.clone()),
        mentions: mentions.clone(),
    };
    for delivery in sample_deliveries() {
        if !rendering.render(&template, &delivery)?.is_object() {
            return Err(TemplateError {
                line: None,
                reason: "the output must be a JSON object".into(),
            });
        }
    }
    Ok(template)
}

#[cfg(test)]
mod tests;
