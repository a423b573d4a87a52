//! A Discord channel through the bot API (`Authorization: Bot <token>`),
//! the mode chosen by a destination's `channel_id`. Messages are embeds
//! posted with Create Message (`POST /channels/{channel_id}/messages`)
//! carrying a `nonce` derived from the delivery's idempotency key and
//! `enforce_nonce: true`: Discord answers a second create with the same
//! nonce, within its window of a few minutes, with the message the first
//! one created instead of a new one. A thread's later messages are replies
//! to its first (`message_reference`, not failing if it was deleted); a
//! resolve first edits the first message (idempotent), then replies.
//! Classification is the webhook mode's (`classify_discord_response`).
//!
//! After an ambiguous send the channel is read back: the messages posted
//! since the broadcast was created (`after`, a snowflake a minute before
//! it, in pages of 100, at most [`READ_BACK_PAGES_MAX`] pages) are searched
//! for the nonce, or for the footer that names the idempotency key (Discord
//! echoes the nonce only in the create answer, so the footer is what a
//! read finds). Found: confirmed, no re-send. Not there: re-sent with the
//! same nonce, so a message that lands late is still not doubled within
//! Discord's window. Only when the read-back itself fails (or the channel
//! had more messages since than it reads) is the delivery flagged
//! `possible_duplicate`: past the nonce's window a re-send could show
//! twice.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::connector::{classify_discord_response, edit_first_message, embed, render_message};
use crate::config::Secret;
use crate::connector::http::{exchange, Reply};
use crate::connector::shared::{Role, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::Outcome;
use crate::template::{render_failed, Rendering, TemplateError};

/// Discord's `nonce` is at most 25 characters.
pub const DISCORD_NONCE_CHARS_MAX: usize = 25;
/// Messages per page of the read-back (Discord's maximum `limit`).
const READ_BACK_PAGE_MESSAGES_MAX: usize = 100;
/// Pages the read-back reads before it gives up.
pub const READ_BACK_PAGES_MAX: usize = 5;
/// How far before the broadcast's creation the read-back starts, for a
/// clock that runs ahead of Discord's.
const READ_BACK_CLOCK_SKEW_MS: i64 = 60_000;
/// Discord's epoch (2015-01-01) in ms since the Unix epoch.
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;

pub struct DiscordBotConnector {
    client: reqwest::Client,
    /// The API's base, `https://discord.com/api/v10/`.
    api_url: reqwest::Url,
    channel_id: String,
    token: Secret,
    rendering: Rendering,
}

#[derive(Deserialize)]
struct ListedMessage {
    id: String,
    #[serde(default)]
    nonce: Option<Value>,
    #[serde(default)]
    embeds: Vec<Value>,
}

/// The delivery's nonce: the first 25 hex digits of the SHA-256 of its
/// idempotency key (100 bits), the same on every attempt.
pub fn discord_nonce(idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..DISCORD_NONCE_CHARS_MAX].to_owned()
}

/// The Create Message body for a delivery: the webhook mode's embed, the
/// nonce with `enforce_nonce`, and a reply to the thread's first message
/// for an update or a resolve.
pub fn discord_create_message_body(delivery: &ClaimedDelivery) -> Value {
    render_create_message_body(&Rendering::default(), delivery)
        .expect("the default template renders every valid message")
}

/// The Create Message body from the destination's template, with the
/// nonce and the reply reference set after it.
pub fn render_create_message_body(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<Value, TemplateError> {
    let mut body = render_message(rendering, delivery)?;
    body["nonce"] = json!(discord_nonce(&delivery.idempotency_key));
    body["enforce_nonce"] = json!(true);
    if let Some(first) = delivery.thread_ref.as_deref() {
        body["message_reference"] = json!({"message_id": first, "fail_if_not_exists": false});
    }
    Ok(body)
}

/// The snowflake of a moment: messages after it have greater ids.
fn snowflake_at(ms: i64) -> u64 {
    u64::try_from(ms - DISCORD_EPOCH_MS).unwrap_or(0) << 22
}

impl DiscordBotConnector {
    pub fn new(
        api_url: reqwest::Url,
        channel_id: String,
        token: Secret,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<DiscordBotConnector> {
        Ok(DiscordBotConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            api_url,
            channel_id,
            token,
            rendering,
        })
    }

    fn url(&self, message_id: Option<&str>) -> reqwest::Url {
        let mut url = self.api_url.clone();
        {
            let mut path = url.path_segments_mut().expect("an http URL has a path");
            path.pop_if_empty()
                .extend(["channels", &self.channel_id, "messages"]);
            if let Some(id) = message_id {
                path.push(id);
            }
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.client.request(method, url).header(
            reqwest::header::AUTHORIZATION,
            format!("Bot {}", self.token.expose()),
        )
    }

    fn classify(reply: &Reply, now_ms: i64) -> Outcome {
        let headers = |name: &str| reply.header(name).map(str::to_owned);
        let mut outcome = classify_discord_response(reply.status, &headers, &reply.body, now_ms);
        outcome.excerpt = reply.excerpt();
        match reply.status {
            401 => outcome.error = Some("HTTP 401: Discord does not accept the bot token".into()),
            403 => {
                outcome.error =
                    Some("HTTP 403: the bot may not post in the channel (Missing Access or Missing Permissions)".into())
            }
            404 => outcome.error = Some("HTTP 404: the channel does not exist".into()),
            429 => outcome.error = Some("HTTP 429: Discord rate limited the bot".into()),
            _ => {}
        }
        outcome
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        // Rendered before anything is sent: a failing template sends
        // nothing, and fails this delivery alone.
        let body = match render_create_message_body(&self.rendering, delivery) {
            Ok(body) => body,
            Err(error) => return render_failed(&error),
        };
        if let (Role::Resolve, Some(first)) = (Role::of(delivery), delivery.thread_ref.as_deref()) {
            let title = format!(
                "[RESOLVED] {}",
                delivery.message.thread().unwrap_or_default()
            );
            let body =
                json!({"embeds": [embed(delivery, title)], "allowed_mentions": {"parse": []}});
            let request = self
                .request(reqwest::Method::PATCH, self.url(Some(first)))
                .json(&body);
            if let Err(outcome) =
                edit_first_message(request, |reply| Self::classify(reply, now_ms)).await
            {
                return outcome;
            }
        }
        let request = self
            .request(reqwest::Method::POST, self.url(None))
            .json(&body);
        match exchange(request).await {
            Ok(reply) => Self::classify(&reply, now_ms),
            Err(outcome) => outcome,
        }
    }

    /// Reads the message back by id when an earlier attempt recorded it,
    /// else looks for its nonce (or footer) among the channel's messages
    /// since the broadcast was created.
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        if let Some(id) = delivery.remote_ref.as_deref() {
            let request = self.request(reqwest::Method::GET, self.url(Some(id)));
            return match exchange(request).await {
                Ok(reply) if reply.status == 200 => {
                    VerifyReport::found(id.to_owned()).with_status(Some(200))
                }
                Ok(reply) if reply.status == 404 => VerifyReport::absent(
                    "the message is not in the channel; posting again with the same nonce",
                )
                .with_status(Some(404)),
                Ok(reply) => Self::unreadable(&format!("HTTP {}", reply.status))
                    .with_status(Some(reply.status)),
                Err(outcome) => Self::unreadable(&outcome.error.unwrap_or_default()),
            };
        }
        let nonce = discord_nonce(&delivery.idempotency_key);
        let footer = format!("herald {}", delivery.idempotency_key);
        let mut after = snowflake_at(delivery.broadcast_created_at_ms - READ_BACK_CLOCK_SKEW_MS);
        for _ in 0..READ_BACK_PAGES_MAX {
            let mut url = self.url(None);
            url.query_pairs_mut()
                .append_pair("after", &after.to_string())
                .append_pair("limit", &READ_BACK_PAGE_MESSAGES_MAX.to_string());
            let reply = match exchange(self.request(reqwest::Method::GET, url)).await {
                Ok(reply) if reply.status == 200 => reply,
                Ok(reply) => {
                    return Self::unreadable(&format!("HTTP {}", reply.status))
                        .with_status(Some(reply.status))
                }
                Err(outcome) => return Self::unreadable(&outcome.error.unwrap_or_default()),
            };
            let Some(page) = reply.json::<Vec<ListedMessage>>() else {
                return Self::unreadable("the message list is not Discord's JSON")
                    .with_status(Some(200));
            };
            let ours = |m: &ListedMessage| {
                m.nonce.as_ref().and_then(Value::as_str) == Some(nonce.as_str())
                    || m.embeds
                        .iter()
                        .any(|e| e["footer"]["text"].as_str() == Some(footer.as_str()))
            };
            if let Some(found) = page.iter().find(|m| ours(m)) {
                return VerifyReport::found(found.id.clone()).with_status(Some(200));
            }
            if page.len() < READ_BACK_PAGE_MESSAGES_MAX {
                return VerifyReport::absent(
                    "the message is not in the channel; posting again with the same nonce",
                )
                .with_status(Some(200));
            }
            // A full page: the next one starts after its newest message.
            after = page
                .iter()
                .filter_map(|m| m.id.parse::<u64>().ok())
                .max()
                .unwrap_or(after)
                .max(after + 1);
        }
        Self::unreadable(&format!(
            "more than {} messages in the channel since the broadcast",
            READ_BACK_PAGES_MAX * READ_BACK_PAGE_MESSAGES_MAX
        ))
    }

    /// The channel could not be read: re-sent with the same nonce, which
    /// Discord folds only within its window, so flagged.
    fn unreadable(why: &str) -> VerifyReport {
        VerifyReport::unknown(
            format!("could not read Discord back: {why}; posting again with the same nonce, which may show it twice if Discord's nonce window has passed"),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OutcomeClass;

    #[test]
    fn the_nonce_is_25_characters_and_the_same_for_a_key() {
        let key = "01JDQ7ZC0000000000000000AB-discord-ops";
        let nonce = discord_nonce(key);
        assert_eq!(nonce.chars().count(), DISCORD_NONCE_CHARS_MAX);
        assert_eq!(nonce, discord_nonce(key));
        assert_ne!(
            nonce,
            discord_nonce("01JDQ7ZC0000000000000000AB-discord-sre")
        );
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: reqwest::header::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn bot_answers_map_to_outcome_classes() {
        let limited = DiscordBotConnector::classify(
            &reply(
                429,
                r#"{"message":"You are being rate limited.","code":0,"retry_after":2.5,"global":false}"#,
            ),
            0,
        );
        assert_eq!(
            (limited.class, limited.retry_after_ms),
            (OutcomeClass::RateLimited, Some(2_500))
        );
        for (status, says) in [
            (401, "bot token"),
            (403, "Missing Access"),
            (404, "channel"),
        ] {
            let refused = DiscordBotConnector::classify(
                &reply(status, r#"{"message":"Missing Access","code":50001}"#),
                0,
            );
            assert_eq!(refused.class, OutcomeClass::Permanent, "{status}");
            assert!(refused.error.unwrap().contains(says), "{status}");
        }
        let down = DiscordBotConnector::classify(&reply(503, ""), 0);
        assert_eq!(down.class, OutcomeClass::Retryable);
        let sent = DiscordBotConnector::classify(
            &reply(200, r#"{"id":"1187041234567890123","channel_id":"555"}"#),
            0,
        );
        assert_eq!(sent.class, OutcomeClass::Success);
        assert_eq!(sent.remote_ref.as_deref(), Some("1187041234567890123"));
    }

    #[test]
    fn snowflakes_order_by_time() {
        assert_eq!(snowflake_at(DISCORD_EPOCH_MS), 0);
        assert!(snowflake_at(DISCORD_EPOCH_MS + 2) > snowflake_at(DISCORD_EPOCH_MS + 1));
        assert_eq!(snowflake_at(0), 0);
    }
}
