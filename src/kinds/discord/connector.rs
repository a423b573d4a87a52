//! A Discord channel webhook. Messages are embeds, sent with `?wait=true`
//! so the message (and its id) comes back. In a forum channel
//! (`forum = true`) a thread's first message opens a post (`thread_name`)
//! and its updates land in it (`thread_id`); elsewhere updates are new
//! messages that name the incident. A resolve first edits the thread's
//! first message (idempotent), then posts. 429's `retry_after` (or the
//! `X-RateLimit-Reset-After` header) pauses the destination, and a success
//! that leaves no request in the bucket (`X-RateLimit-Remaining: 0`) pauses
//! it until the bucket resets.
//!
//! A webhook cannot list messages: a message is read back by id where the
//! id is known. After an ambiguous send the id is not known, so the message
//! is sent again and the delivery flagged `possible_duplicate`.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::connector::http::{cut_chars as cut, exchange, status_class, Reply};
use crate::connector::shared::{parse_retry_after_ms, Role, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::{format_rfc3339_ms, Outcome, OutcomeClass, Severity};
use crate::template::{render_failed, Rendering, Template, TemplateError};

const EMBED_TITLE_CHARS_MAX: usize = 256;
const EMBED_DESCRIPTION_CHARS_MAX: usize = 4_096;
const THREAD_NAME_CHARS_MAX: usize = 100;
/// An embed's title, description, fields, footer and author together.
const EMBED_TOTAL_CHARS_MAX: usize = 6_000;

pub struct DiscordConnector {
    client: reqwest::Client,
    url: reqwest::Url,
    forum: bool,
    rendering: Rendering,
}

#[derive(Deserialize)]
struct MessageAnswer {
    id: String,
    #[serde(default)]
    channel_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after: Option<f64>,
}

fn seconds_to_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64)
}

/// Edits a thread's first message before its resolve is posted, in both
/// Discord modes. An edit is idempotent, so a lost answer is retried rather
/// than verified; a first message that is gone does not stop the resolve.
pub(super) async fn edit_first_message(
    request: reqwest::RequestBuilder,
    classify: impl FnOnce(&Reply) -> Outcome,
) -> Result<(), Outcome> {
    match exchange(request).await {
        Ok(reply) if (200..300).contains(&reply.status) || reply.status == 404 => Ok(()),
        Ok(reply) => Err(classify(&reply)),
        Err(mut outcome) => {
            outcome.class = OutcomeClass::Retryable;
            Err(outcome)
        }
    }
}

/// Discord's outcome classes. `remote_ref` is the message id, or the
/// thread id when the message opened a forum post.
pub fn classify_discord_response(
    status: u16,
    headers: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let class = status_class(status);
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    let error: Option<ErrorAnswer> = serde_json::from_slice(body).ok();
    let reset_after_ms = headers("x-ratelimit-reset-after").and_then(|v| seconds_to_ms(&v));
    match class {
        OutcomeClass::Success => {
            if let Ok(message) = serde_json::from_slice::<MessageAnswer>(body) {
                outcome.remote_ref = Some(message.id);
            }
            // The bucket is empty: wait for its reset before the next one.
            if headers("x-ratelimit-remaining").as_deref() == Some("0") {
                outcome.retry_after_ms = reset_after_ms;
            }
        }
        OutcomeClass::RateLimited => {
            outcome.retry_after_ms = error
                .as_ref()
                .and_then(|e| e.retry_after)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1000.0).ceil() as u64)
                .or_else(|| headers("retry-after").and_then(|v| parse_retry_after_ms(&v, now_ms)))
                .or(reset_after_ms);
            outcome.error = Some("HTTP 429: Discord rate limited the webhook".into());
        }
        _ => {
            let detail = error
                .map(|e| {
                    format!(
                        "{} (code {})",
                        e.message.unwrap_or_default(),
                        e.code.unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            outcome.error = Some(match status {
                404 => format!("HTTP 404: the webhook does not exist: {detail}"),
                401 | 403 => {
                    format!("HTTP {status}: the webhook's token is not accepted: {detail}")
                }
                _ => format!("HTTP {status} from Discord: {detail}"),
            });
            if class == OutcomeClass::Retryable {
                outcome.retry_after_ms =
                    headers("retry-after").and_then(|v| parse_retry_after_ms(&v, now_ms));
            }
        }
    }
    outcome
}

pub(super) fn embed(delivery: &ClaimedDelivery, title: String) -> Value {
    let m = &delivery.message;
    let color = match (m.resolved(), m.severity()) {
        (true, _) => 0x2e_cc_71,
        (_, Severity::P1) => 0xe7_4c_3c,
        (_, Severity::P2) => 0xe6_7e_22,
        (_, Severity::P3) => 0xf1_c4_0f,
        _ => 0x95_a5_a6,
    };
    let mut fields =
        vec![json!({"name": "Severity", "value": m.severity().as_str(), "inline": true})];
    if let Some(thread) = m.thread() {
        fields.push(json!({"name": "Incident", "value": cut(thread, 1024), "inline": true}));
    }
    let mut embed = json!({
        "title": cut(&title, EMBED_TITLE_CHARS_MAX),
        "color": color,
        "fields": fields,
        "footer": {"text": format!("herald {}", delivery.idempotency_key)},
        "timestamp": format_rfc3339_ms(delivery.broadcast_created_at_ms),
    });
    if !m.body().trim().is_empty() {
        embed["description"] = json!(cut(m.body(), EMBED_DESCRIPTION_CHARS_MAX));
    }
    embed
}

/// Discord's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Discord's default template (both modes).
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The execute-webhook body for a delivery with the default template and
/// no mention. See [`render_execute_body`].
pub fn discord_execute_body(delivery: &ClaimedDelivery, opens_post: bool) -> Value {
    render_execute_body(&Rendering::default(), delivery, opens_post)
        .expect("the default template renders every valid message")
}

/// The message's content from the destination's template, with what the
/// connector owns set after it: the first embed's footer (the idempotency
/// key, which the bot mode's read-back looks for) and `allowed_mentions`
/// (only the roles and users of the destination's mention may be pinged;
/// text in a message never pings).
pub(super) fn render_message(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<Value, TemplateError> {
    let mut body = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(object) = body.as_object_mut() else {
        return Err(TemplateError {
            line: None,
            reason: "the output must be a JSON object (a Discord message)".into(),
        });
    };
    if let Some(Value::Object(first)) = object
        .get_mut("embeds")
        .and_then(Value::as_array_mut)
        .and_then(|embeds| embeds.first_mut())
    {
        first.insert(
            "footer".into(),
            json!({"text": format!("herald {}", delivery.idempotency_key)}),
        );
    }
    if let Some(Value::Object(first)) = object
        .get_mut("embeds")
        .and_then(Value::as_array_mut)
        .and_then(|embeds| embeds.first_mut())
    {
        fit_embed(first);
    }
    let mention = rendering.mentions.for_delivery(delivery);
    object.insert("allowed_mentions".into(), allowed_mentions(mention));
    for owned in [
        "thread_name",
        "thread_id",
        "nonce",
        "enforce_nonce",
        "message_reference",
    ] {
        object.remove(owned);
    }
    Ok(body)
}

/// The characters of an embed that count towards Discord's limit.
fn embed_chars(embed: &serde_json::Map<String, Value>) -> usize {
    let chars = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, |t| t.chars().count());
    let mut total = chars(embed.get("title"))
        + chars(embed.get("description"))
        + chars(embed.get("footer").and_then(|f| f.get("text")))
        + chars(embed.get("author").and_then(|a| a.get("name")));
    if let Some(Value::Array(fields)) = embed.get("fields") {
        for field in fields {
            total += chars(field.get("name")) + chars(field.get("value"));
        }
    }
    total
}

/// Keeps an embed within Discord's 6,000 characters: the last fields go
/// first (the severity, first, stays), then the description is cut.
fn fit_embed(embed: &mut serde_json::Map<String, Value>) {
    let mut total = embed_chars(embed);
    while total > EMBED_TOTAL_CHARS_MAX {
        let Some(Value::Array(fields)) = embed.get_mut("fields") else {
            break;
        };
        if fields.len() <= 1 {
            break;
        }
        fields.pop();
        total = embed_chars(embed);
    }
    if total > EMBED_TOTAL_CHARS_MAX {
        if let Some(Value::String(description)) = embed.get_mut("description") {
            let over = total - EMBED_TOTAL_CHARS_MAX;
            let keep = description.chars().count().saturating_sub(over);
            *description = cut(description, keep.max(1));
        }
    }
}

/// Who a message may ping: the roles (`<@&id>`) and users (`<@id>`) its
/// mention names, and everyone for `@everyone` or `@here`; nobody else.
fn allowed_mentions(mention: Option<&str>) -> Value {
    let Some(mention) = mention else {
        return json!({"parse": []});
    };
    let mut roles = Vec::new();
    let mut users = Vec::new();
    for part in mention.split('<').skip(1) {
        let Some((inner, _)) = part.split_once('>') else {
            continue;
        };
        if let Some(id) = inner.strip_prefix("@&") {
            roles.push(id.to_owned());
        } else if let Some(id) = inner.strip_prefix('@') {
            users.push(id.trim_start_matches('!').to_owned());
        }
    }
    let is_snowflake = |id: &String| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    roles.retain(is_snowflake);
    users.retain(is_snowflake);
    let everyone = mention.contains("@everyone") || mention.contains("@here");
    let parse: Vec<&str> = if everyone {
        vec!["everyone"]
    } else {
        Vec::new()
    };
    json!({"parse": parse, "roles": roles, "users": users})
}

/// The execute-webhook body for a delivery. `opens_post` adds the forum
/// post's `thread_name`.
pub fn render_execute_body(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    opens_post: bool,
) -> Result<Value, TemplateError> {
    let m = &delivery.message;
    let mut body = render_message(rendering, delivery)?;
    if opens_post {
        let name = match m.thread() {
            Some(thread) => format!("{thread}: {}", m.title()),
            None => m.title().to_owned(),
        };
        body["thread_name"] = json!(cut(&name, THREAD_NAME_CHARS_MAX));
    }
    Ok(body)
}

impl DiscordConnector {
    pub fn new(
        url: reqwest::Url,
        forum: bool,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<DiscordConnector> {
        Ok(DiscordConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            url,
            forum,
            rendering,
        })
    }

    fn message_url(&self, message_id: &str, thread_id: Option<&str>) -> reqwest::Url {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .extend(["messages", message_id]);
        if let Some(thread) = thread_id {
            url.query_pairs_mut().append_pair("thread_id", thread);
        }
        url
    }

    fn classify(reply: &Reply, now_ms: i64) -> Outcome {
        let headers = |name: &str| reply.header(name).map(str::to_owned);
        let mut outcome = classify_discord_response(reply.status, &headers, &reply.body, now_ms);
        outcome.excerpt = reply.excerpt();
        outcome
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let role = Role::of(delivery);
        let root = delivery.thread_ref.as_deref();
        // In a forum the thread's reference is the post's id, which is also
        // the id of its first message.
        let thread_id = if self.forum { root } else { None };
        // A forum webhook must either open a post or name one.
        let opens_post = self.forum && root.is_none();
        // Rendered before anything is sent: a failing template sends
        // nothing, and fails this delivery alone.
        let body = match render_execute_body(&self.rendering, delivery, opens_post) {
            Ok(body) => body,
            Err(error) => return render_failed(&error),
        };
        if let (Role::Resolve, Some(first)) = (role, root) {
            let title = format!(
                "[RESOLVED] {}",
                delivery.message.thread().unwrap_or_default()
            );
            let body =
                json!({"embeds": [embed(delivery, title)], "allowed_mentions": {"parse": []}});
            let request = self
                .client
                .patch(self.message_url(first, thread_id))
                .json(&body);
            if let Err(outcome) =
                edit_first_message(request, |reply| Self::classify(reply, now_ms)).await
            {
                return outcome;
            }
        }
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("wait", "true");
        if let Some(thread) = thread_id {
            url.query_pairs_mut().append_pair("thread_id", thread);
        }
        let request = self.client.post(url).json(&body);
        match exchange(request).await {
            Ok(reply) => {
                let mut outcome = Self::classify(&reply, now_ms);
                if opens_post && outcome.class == OutcomeClass::Success {
                    // The post's id is what the thread's updates attach to.
                    if let Some(message) = reply.json::<MessageAnswer>() {
                        outcome.remote_ref = message.channel_id.or(Some(message.id));
                    }
                }
                outcome
            }
            Err(outcome) => outcome,
        }
    }

    /// Reads the message back by id when an earlier attempt recorded it;
    /// otherwise nothing can be read and the next send may duplicate.
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        let Some(id) = delivery.remote_ref.as_deref() else {
            return VerifyReport::unknown(
                "a Discord webhook cannot look a message up without its id; posting again, which may show it twice",
                true,
            );
        };
        // In a forum a message is found only through its post; a post's
        // first message has the post's id.
        let thread_id = if self.forum {
            delivery.thread_ref.as_deref().or(Some(id))
        } else {
            None
        };
        match exchange(self.client.get(self.message_url(id, thread_id))).await {
            Ok(reply) if reply.status == 200 => {
                VerifyReport::found(id.to_owned()).with_status(Some(200))
            }
            Ok(reply) if reply.status == 404 => {
                VerifyReport::absent("the message is not in the channel; posting again")
                    .with_status(Some(404))
            }
            Ok(reply) => VerifyReport::unknown(
                format!("could not read Discord back: HTTP {}", reply.status),
                true,
            )
            .with_status(Some(reply.status)),
            Err(outcome) => VerifyReport::unknown(
                format!(
                    "could not read Discord back: {}",
                    outcome.error.unwrap_or_default()
                ),
                true,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_headers(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn discord_answers_map_to_outcome_classes() {
        let message = br#"{"id":"1187041234567890123","type":0,"content":"","channel_id":"1187041234567890000","embeds":[],"timestamp":"2026-11-28T02:00:00.000000+00:00","webhook_id":"1187040000000000000"}"#;
        let sent = classify_discord_response(200, &no_headers, message, 0);
        assert_eq!(sent.class, OutcomeClass::Success);
        assert_eq!(sent.remote_ref.as_deref(), Some("1187041234567890123"));
        assert_eq!(sent.retry_after_ms, None);

        let limited = classify_discord_response(
            429,
            &no_headers,
            br#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
            0,
        );
        assert_eq!(limited.class, OutcomeClass::RateLimited);
        assert_eq!(limited.retry_after_ms, Some(1_500));

        let empty_bucket = |name: &str| match name {
            "x-ratelimit-remaining" => Some("0".to_owned()),
            "x-ratelimit-reset-after" => Some("0.75".to_owned()),
            _ => None,
        };
        let paced = classify_discord_response(200, &empty_bucket, message, 0);
        assert_eq!(paced.class, OutcomeClass::Success);
        assert_eq!(paced.retry_after_ms, Some(750));

        let empty = classify_discord_response(
            400,
            &no_headers,
            br#"{"code":50006,"message":"Cannot send an empty message"}"#,
            0,
        );
        assert_eq!(empty.class, OutcomeClass::Permanent);
        assert!(empty.error.unwrap().contains("50006"));
        assert_eq!(
            classify_discord_response(502, &no_headers, b"", 0).class,
            OutcomeClass::Retryable
        );
    }
}
