//! Google Chat's API mode: the Chat API as an app, with a service
//! account's access token ([`super::auth`]), from
//! `google-chat-v1.discovery.json`:
//!
//! - `spaces.messages.create` (`POST v1/{parent=spaces/*}/messages`) with
//!   the same `requestId`, client-set `messageId` and thread as a webhook
//!   ([`super::connector`]);
//! - after an ambiguous outcome, `spaces.messages.get` (`GET
//!   v1/{name=spaces/*/messages/*}`, the client-set ID in place of the
//!   message's: "you can use the value from the `clientAssignedMessageId`
//!   field for `{message}`"): found means confirmed, not sent again;
//!   `NOT_FOUND` means sent again, and the same message ID makes a second
//!   message impossible (`409 ALREADY_EXISTS` counts as delivered). A
//!   read-back that fails is not a reason to flag: the re-send cannot
//!   duplicate either;
//! - the resolve first edits the thread's first message
//!   (`spaces.messages.patch` with `updateMask=text`; the same edit again is
//!   harmless) and then replies in the thread.
//!
//! A 401 is answered by asking for a new token and trying once more; the
//! token is otherwise asked again before it expires.

use serde_json::{json, Value};

use super::auth::{ServiceAccount, TokenCache};
use super::connector::{
    classify_google_chat_response, google_chat_create_query, google_chat_message_id,
};
use crate::config::Secret;
use crate::connector::http::{exchange, Reply};
use crate::connector::shared::{edit_not_done, Role, VerifyReport};
use crate::domain::{ClaimedDelivery, Outcome, OutcomeClass};

/// The `updateMask` of the resolve's edit: the text only (cards stay).
pub const RESOLVE_UPDATE_MASK: &str = "text";

pub struct ChatApp {
    /// The API's base, `https://chat.googleapis.com/`.
    api_url: reqwest::Url,
    /// `spaces/{space}`.
    space: String,
    tokens: TokenCache,
}

/// `{api}v1/{parent}/messages`, the create's URL.
pub fn google_chat_create_url(api_url: &reqwest::Url, space: &str) -> reqwest::Url {
    api_url
        .join(&format!("v1/{space}/messages"))
        .expect("a space's name joins the API's base")
}

/// `{api}v1/{name}`, a message's URL (get, patch).
pub fn google_chat_message_url(api_url: &reqwest::Url, name: &str) -> reqwest::Url {
    api_url
        .join(&format!("v1/{name}"))
        .expect("a message's name joins the API's base")
}

/// The delivery's message by its client-set ID:
/// `spaces/{space}/messages/client-...`.
pub fn google_chat_client_message_name(space: &str, idempotency_key: &str) -> String {
    format!(
        "{space}/messages/{}",
        google_chat_message_id(idempotency_key)
    )
}

/// Whether `name` is a message's resource name
/// (`^spaces/[^/]+/messages/[^/]+$`), as a thread's first message must be
/// for the resolve to edit it.
pub fn is_message_name(name: &str) -> bool {
    matches!(
        name.split('/').collect::<Vec<_>>().as_slice(),
        ["spaces", space, "messages", message] if !space.is_empty() && !message.is_empty()
    )
}

/// The resolve's edit of the thread's first message: its query and body.
pub fn google_chat_resolve_patch(
    delivery: &ClaimedDelivery,
) -> (Vec<(&'static str, String)>, Value) {
    let m = &delivery.message;
    let thread = m.thread().unwrap_or(m.title());
    let text = format!(
        "✅ *RESOLVED* · {thread}: {}\nresolved by herald broadcast {}; the thread holds the history",
        m.title(),
        delivery.broadcast_id
    );
    (
        vec![("updateMask", RESOLVE_UPDATE_MASK.to_owned())],
        json!({ "text": text }),
    )
}

impl ChatApp {
    pub fn new(api_url: reqwest::Url, space: String, account: ServiceAccount) -> ChatApp {
        ChatApp {
            api_url,
            space,
            tokens: TokenCache::new(account),
        }
    }

    /// One API call with the access token; on a 401, once more with a new
    /// token.
    async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &reqwest::Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, Outcome> {
        let mut refused: Option<Secret> = None;
        loop {
            let token = self.tokens.token(client, refused.as_ref()).await?;
            let mut request = client
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose())
                .query(query);
            if let Some(body) = body {
                request = request.json(body);
            }
            let reply = exchange(request).await?;
            if reply.status != 401 || refused.is_some() {
                return Ok(reply);
            }
            // The token was refused before the call did anything: ask for
            // a new one and try once more.
            refused = Some(token);
        }
    }

    fn outcome(reply: &Reply, now_ms: i64) -> Outcome {
        let mut outcome = classify_google_chat_response(
            reply.status,
            reply.header("retry-after"),
            &reply.body,
            now_ms,
        );
        outcome.excerpt = reply.excerpt();
        outcome
    }

    pub async fn send(
        &self,
        client: &reqwest::Client,
        delivery: &ClaimedDelivery,
        body: &Value,
        now_ms: i64,
    ) -> Outcome {
        let mut note = None;
        if let (Role::Resolve, Some(first)) = (Role::of(delivery), delivery.thread_ref.as_deref()) {
            if is_message_name(first) {
                let (query, patch) = google_chat_resolve_patch(delivery);
                let url = google_chat_message_url(&self.api_url, first);
                let edited = match self
                    .call(client, reqwest::Method::PATCH, &url, &query, Some(&patch))
                    .await
                {
                    Ok(reply) => Self::outcome(&reply, now_ms),
                    Err(outcome) => outcome,
                };
                match edited.class {
                    OutcomeClass::Success => {}
                    // The first message is gone or not the app's: the reply
                    // still says the incident is resolved.
                    OutcomeClass::Permanent => note = edited.error,
                    _ => return edit_not_done(edited, "marking the first message resolved"),
                }
            } else {
                note = Some(format!("{first:?} is not a Chat message's name"));
            }
        }
        let url = google_chat_create_url(&self.api_url, &self.space);
        let query = google_chat_create_query(delivery);
        let mut outcome = match self
            .call(client, reqwest::Method::POST, &url, &query, Some(body))
            .await
        {
            Ok(reply) => Self::outcome(&reply, now_ms),
            Err(outcome) => outcome,
        };
        if outcome.class == OutcomeClass::Success && outcome.remote_ref.is_none() {
            // 409 ALREADY_EXISTS: the message is there under its client ID.
            outcome.remote_ref = Some(google_chat_client_message_name(
                &self.space,
                &delivery.idempotency_key,
            ));
        }
        if let (Some(note), None) = (note, &outcome.error) {
            outcome.error = Some(format!("the first message was not marked resolved: {note}"));
        }
        outcome
    }

    /// Reads the delivery's message back by its client-set ID.
    pub async fn verify(
        &self,
        client: &reqwest::Client,
        delivery: &ClaimedDelivery,
    ) -> VerifyReport {
        let name = google_chat_client_message_name(&self.space, &delivery.idempotency_key);
        let url = google_chat_message_url(&self.api_url, &name);
        // A re-send cannot duplicate (the message ID is unique in the
        // space), so a failed read-back flags nothing.
        let reply = match self
            .call(client, reqwest::Method::GET, &url, &[], None)
            .await
        {
            Ok(reply) => reply,
            Err(outcome) => {
                return VerifyReport::unknown(
                    format!(
                    "could not read the message back: {}; sending again with the same messageId",
                    outcome.error.unwrap_or_default()
                ),
                    false,
                )
                .with_status(outcome.http_status)
            }
        };
        let status = Some(reply.status);
        match reply.status {
            200 => {
                let found = reply
                    .json::<Value>()
                    .and_then(|m| m["name"].as_str().map(str::to_owned))
                    .unwrap_or(name);
                VerifyReport::found(found).with_status(status)
            }
            404 => VerifyReport::absent(
                "no message with this delivery's messageId in the space; sending again (the same messageId cannot make a second one)",
            )
            .with_status(status),
            _ => {
                let outcome = Self::outcome(&reply, 0);
                VerifyReport::unknown(
                    format!(
                        "could not read the message back: {}; sending again with the same messageId",
                        outcome.error.unwrap_or_default()
                    ),
                    false,
                )
                .with_status(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_discovery_paths() {
        let api = reqwest::Url::parse("https://chat.googleapis.com/").unwrap();
        assert_eq!(
            google_chat_create_url(&api, "spaces/AAAA").as_str(),
            "https://chat.googleapis.com/v1/spaces/AAAA/messages"
        );
        let name = google_chat_client_message_name("spaces/AAAA", "key");
        assert!(is_message_name(&name), "{name}");
        assert_eq!(
            google_chat_message_url(&api, &name).as_str(),
            format!("https://chat.googleapis.com/v1/{name}")
        );
        assert!(!is_message_name("spaces/AAAA/messages/"));
        assert!(!is_message_name("1712345.000100"));
    }
}
