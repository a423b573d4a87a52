//! Google Chat at `/google-chat/`: a space's incoming webhook, the Chat
//! API as an app (`spaces.messages.create`, `get`, `patch` of
//! `google-chat-v1.discovery.json`), and the OAuth token endpoint that
//! turns a service account's JWT into an access token.
//!
//! - `POST /google-chat/v1/spaces/{space}/messages?key=...&token=...`: a
//!   webhook's create. `key` and `token` are required; the first token used
//!   for a space is its webhook's, another answers 401 `UNAUTHENTICATED`.
//! - `POST /google-chat/v1/spaces/{space}/messages` with
//!   `Authorization: Bearer`: the app's create; `GET` and `PATCH
//!   .../messages/{message}` read and edit a message by its name or its
//!   client-set ID. Without a token this endpoint issued and still
//!   honours, 401 `UNAUTHENTICATED`. The app may edit only its own
//!   messages (403 `PERMISSION_DENIED`); `updateMask` is required and
//!   takes the description's paths (`text`, `attachment`, `cards`,
//!   `cards_v2`, `accessory_widgets`, `quoted_message_metadata`, `*`).
//! - `POST /google-chat/oauth2/token`: the JWT bearer grant (RFC 7523).
//!   `grant_type` must be `urn:ietf:params:oauth:grant-type:jwt-bearer`;
//!   the assertion's header `alg` must be `RS256`; its claims need `iss`,
//!   `scope` with `https://www.googleapis.com/auth/chat.bot`, `aud` this
//!   endpoint's URL, `iat` not in the future (a minute of skew) and `exp`
//!   after now and at most an hour after `iat`. The RS256 signature is
//!   checked against the public key registered for the `iss`; only while
//!   no key at all is registered is an assertion taken unchecked (counted
//!   as `unsigned_assertions`). Errors are OAuth's
//!   `{"error","error_description"}` (`invalid_grant`,
//!   `unsupported_grant_type`, `invalid_scope`).
//! - `PUT /google-chat/_mock/service-accounts/{client_email}` with
//!   `{"public_key_pem": "-----BEGIN PUBLIC KEY-----...", "expires_in_secs":
//!   3599, "valid_secs": 3599}` registers a service account (what Google
//!   holds of it): its public key, the `expires_in` its tokens are issued
//!   with and how long the mock honours them (shorter plays a revoked
//!   token).
//!
//! A create's body is a `Message`: fields the discovery document does not
//! list answer 400 `INVALID_ARGUMENT` ("Invalid JSON payload received.
//! Unknown name ..."); no `text` and no cards answer 400; a text over 4,096
//! characters answers 400. `messageId` must begin with `client-`, have at
//! most 63 characters of lowercase letters, digits and hyphens (else 400),
//! and is unique in the space: another create with it answers 409
//! `ALREADY_EXISTS`. `requestId`: "Specifying an existing request ID
//! returns the message created with that ID instead of creating a new
//! message" (counted as a replay). `messageReplyOption`: unspecified starts
//! a new thread whatever the `thread.threadKey`;
//! `REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` replies in the thread of that key
//! (or starts it); `REPLY_MESSAGE_OR_FAIL` also starts a new thread for a
//! new key, as the description says.
//!
//! Answers are the `Message` (`name` system-assigned, `sender`,
//! `createTime`, `lastUpdateTime` once edited, `text`, `thread` with `name`
//! and `threadKey`, `space`, `clientAssignedMessageId`). Errors use
//! Google's `{"error":{"code","message","status"}}`; a 429 fault answers
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail.

use std::collections::{BTreeMap, HashMap};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::pem::{pem_der, rsa_public_key_of_spki};
use crate::mock::shared::{civil_utc, parse_form, Admission, Fault, Incoming};

/// Everything under it is Google Chat's.
pub const ROOT: &str = "/google-chat/";
pub const PREFIX: &str = "/google-chat/v1/spaces/";
/// The token endpoint (a key file's `token_uri` at the mock).
pub const TOKEN_PATH: &str = "/google-chat/oauth2/token";
/// Where a test registers a service account's public key.
pub const SERVICE_ACCOUNTS_PATH: &str = "/google-chat/_mock/service-accounts/";
const TEXT_CHARS_MAX: usize = 4_096;
const MESSAGE_ID_CHARS_MAX: usize = 63;
const THREAD_KEY_CHARS_MAX: usize = 4_000;
/// Messages kept per space (a bound on memory).
const MESSAGES_KEPT_MAX: usize = 10_000;
/// Access tokens kept (a bound on memory); the oldest go first.
const TOKENS_KEPT_MAX: usize = 10_000;
/// Service accounts registered at most.
const ACCOUNTS_MAX: usize = 1_000;
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CHAT_BOT_SCOPE: &str = "https://www.googleapis.com/auth/chat.bot";
/// An assertion lives an hour at most; its `iat` may be this far ahead.
const ASSERTION_LIFETIME_SECS_MAX: i64 = 3_600;
const CLOCK_SKEW_SECS: i64 = 60;
/// A token's `expires_in` when the account does not say.
const TOKEN_EXPIRES_IN_SECS: u64 = 3_599;
/// `updateMask` paths a patch takes.
const UPDATE_MASK_PATHS: [&str; 7] = [
    "text",
    "attachment",
    "cards",
    "cards_v2",
    "accessory_widgets",
    "quoted_message_metadata",
    "*",
];
/// The fields of a `Message` in the discovery document.
const MESSAGE_FIELDS: [&str; 26] = [
    "accessoryWidgets",
    "actionResponse",
    "annotations",
    "argumentText",
    "attachedGifs",
    "attachment",
    "cards",
    "cardsV2",
    "clientAssignedMessageId",
    "createTime",
    "deleteTime",
    "deletionMetadata",
    "emojiReactionSummaries",
    "fallbackText",
    "formattedText",
    "lastUpdateTime",
    "matchedUrl",
    "name",
    "privateMessageViewer",
    "quotedMessageMetadata",
    "sender",
    "slashCommand",
    "space",
    "text",
    "thread",
    "threadReply",
];
const REPLY_OPTIONS: [&str; 3] = [
    "MESSAGE_REPLY_OPTION_UNSPECIFIED",
    "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
    "REPLY_MESSAGE_OR_FAIL",
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoogleChatStats {
    /// Per space.
    pub spaces: BTreeMap<String, GoogleChatSpaceStats>,
    /// Access tokens issued by the token endpoint.
    pub tokens_issued: u64,
    /// Token requests refused (bad grant, assertion or signature).
    pub token_refusals: u64,
    /// Assertions whose RS256 signature was checked and held.
    pub signatures_checked: u64,
    /// Assertions taken unchecked (no public key registered at all).
    pub unsigned_assertions: u64,
    /// API calls refused for their bearer token (missing, unknown,
    /// expired).
    pub bearer_refusals: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GoogleChatSpaceStats {
    /// Messages created.
    pub messages: u64,
    /// Threads started.
    pub threads: u64,
    /// Per thread key: messages in that thread.
    pub messages_per_thread_key: BTreeMap<String, u64>,
    /// Per thread key: messages whose text was already in that thread.
    pub duplicates_per_thread_key: BTreeMap<String, u64>,
    /// Creates answered with the message of an earlier request ID.
    pub request_id_replays: u64,
    /// Creates refused because their message ID was taken.
    pub message_id_conflicts: u64,
    /// Messages read back (`get`) and edits applied (`patch`).
    pub reads: u64,
    pub edits: u64,
    /// Every message's text as created, in order of creation.
    pub texts: Vec<String>,
    /// Every message's text now (after edits), in the same order.
    pub texts_now: Vec<String>,
    /// Texts created more than once.
    pub duplicated_texts: Vec<String>,
}

/// Who created a message.
#[derive(Clone, PartialEq)]
enum Sender {
    Webhook,
    App(String),
}

struct ChatMessage {
    name: String,
    client_id: Option<String>,
    request_id: Option<String>,
    sender: Sender,
    created_text: String,
    text: String,
    thread_name: String,
    thread_key: Option<String>,
    created_ms: i64,
    updated_ms: Option<i64>,
}

#[derive(Default)]
struct Space {
    /// The webhook's token, set by its first create.
    webhook_token: Option<String>,
    messages: Vec<ChatMessage>,
    threads: u64,
    replays: u64,
    conflicts: u64,
    reads: u64,
    edits: u64,
}

/// A service account as Google holds it.
struct Account {
    /// Its `RSAPublicKey` (PKCS#1 DER).
    public_key: Vec<u8>,
    expires_in_secs: u64,
    valid_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRegistration {
    public_key_pem: String,
    #[serde(default)]
    expires_in_secs: Option<u64>,
    #[serde(default)]
    valid_secs: Option<u64>,
}

struct IssuedToken {
    client_email: String,
    valid_until_ms: i64,
}

#[derive(Default)]
pub(crate) struct GoogleChat {
    spaces: BTreeMap<String, Space>,
    serial: u64,
    accounts: BTreeMap<String, Account>,
    tokens: HashMap<String, IssuedToken>,
    /// Tokens in order of issue, to forget the oldest.
    token_order: std::collections::VecDeque<String>,
    tokens_issued: u64,
    token_refusals: u64,
    signatures_checked: u64,
    unsigned_assertions: u64,
    bearer_refusals: u64,
}

fn google_error(status: StatusCode, google_status: &str, message: &str) -> Response {
    crate::mock::shared::json(
        status,
        json!({"error": {"code": status.as_u16(), "message": message, "status": google_status}}),
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    crate::mock::shared::json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn not_found() -> Response {
    google_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Requested entity was not found.",
    )
}

fn invalid(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

fn rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = civil_utc(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}000Z")
}

fn render(space: &str, m: &ChatMessage) -> Value {
    let mut thread = json!({"name": m.thread_name});
    if let Some(key) = &m.thread_key {
        thread["threadKey"] = json!(key);
    }
    let sender = match &m.sender {
        Sender::Webhook => {
            json!({"name": "users/herald-webhook", "displayName": "herald", "type": "BOT"})
        }
        Sender::App(_) => json!({"name": "users/app", "type": "BOT"}),
    };
    let mut message = json!({
        "name": m.name,
        "sender": sender,
        "createTime": rfc3339(m.created_ms),
        "text": m.text,
        "formattedText": m.text,
        "thread": thread,
        "space": {"name": format!("spaces/{space}"), "type": "ROOM", "spaceType": "SPACE"},
        "argumentText": m.text,
    });
    if let Some(id) = &m.client_id {
        message["clientAssignedMessageId"] = json!(id);
    }
    if let Some(updated_ms) = m.updated_ms {
        message["lastUpdateTime"] = json!(rfc3339(updated_ms));
    }
    message
}

fn valid_message_id(id: &str) -> bool {
    id.starts_with("client-")
        && id.len() <= MESSAGE_ID_CHARS_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A fault in Google's shape (OAuth's on the token endpoint).
fn fault_answer(fault: &Fault, oauth: bool) -> Option<Response> {
    match fault {
        Fault::RateLimit { retry_after_secs } if oauth => Some(oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            &format!("Rate limit exceeded; retry in {retry_after_secs}s."),
        )),
        Fault::RateLimit { retry_after_secs } => Some(crate::mock::shared::json(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {
                "code": 429,
                "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{retry_after_secs}s"),
                }],
            }}),
        )),
        Fault::Fail { status } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            if oauth {
                return Some(oauth_error(
                    status,
                    "internal_failure",
                    status.canonical_reason().unwrap_or("Error"),
                ));
            }
            let google_status = match status.as_u16() {
                500 => "INTERNAL",
                503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                _ => "UNKNOWN",
            };
            Some(google_error(
                status,
                google_status,
                status.canonical_reason().unwrap_or("Error"),
            ))
        }
        _ => None,
    }
}

/// The JSON of one base64url part of a JWT.
fn jwt_part(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

impl GoogleChat {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        let oauth = incoming.path == TOKEN_PATH;
        if let Some(answer) = fault_answer(&admission.fault, oauth) {
            return answer;
        }
        if oauth {
            return self.token(incoming);
        }
        if let Some(email) = incoming.path.strip_prefix(SERVICE_ACCOUNTS_PATH) {
            return self.register(incoming, email);
        }
        let Some(rest) = incoming.path.strip_prefix(PREFIX) else {
            return not_found();
        };
        let (space, message) = match rest.split('/').collect::<Vec<_>>().as_slice() {
            [space, "messages"] if !space.is_empty() => ((*space).to_owned(), None),
            [space, "messages", message] if !space.is_empty() && !message.is_empty() => {
                ((*space).to_owned(), Some((*message).to_owned()))
            }
            _ => return not_found(),
        };
        let webhook =
            incoming.query_param("key").is_some() || incoming.query_param("token").is_some();
        if webhook {
            return self.webhook(incoming, &space, message.is_some());
        }
        let Some(app) = self.bearer(incoming) else {
            self.bearer_refusals += 1;
            return google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            );
        };
        match (message, &incoming.method) {
            (None, &Method::POST) => self.create(incoming, &space, Sender::App(app)),
            (Some(message), &Method::GET) => self.get(&space, &message),
            (Some(message), &Method::PATCH) => self.patch(incoming, &space, &message, &app),
            _ => google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNIMPLEMENTED",
                "The method is not allowed on this resource.",
            ),
        }
    }

    fn webhook(&mut self, incoming: &Incoming, space: &str, names_message: bool) -> Response {
        if names_message || incoming.method != Method::POST {
            return google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNIMPLEMENTED",
                "A webhook may only create messages.",
            );
        }
        let (Some(_key), Some(token)) =
            (incoming.query_param("key"), incoming.query_param("token"))
        else {
            return google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential.",
            );
        };
        let entry = self.spaces.entry(space.to_owned()).or_default();
        let owner = entry.webhook_token.get_or_insert_with(|| token.clone());
        if *owner != token {
            return google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Invalid webhook token.",
            );
        }
        self.create(incoming, space, Sender::Webhook)
    }

    /// The service account a request's bearer token was issued to, if
    /// the token is one this endpoint issued and still honours.
    fn bearer(&self, incoming: &Incoming) -> Option<String> {
        let token = incoming
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)?;
        self.tokens
            .get(token)
            .filter(|t| incoming.now_ms < t.valid_until_ms)
            .map(|t| t.client_email.clone())
    }

    fn register(&mut self, incoming: &Incoming, email: &str) -> Response {
        if incoming.method != Method::PUT {
            return google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNIMPLEMENTED",
                "Register a service account with PUT.",
            );
        }
        let parsed = serde_json::from_slice::<AccountRegistration>(&incoming.body)
            .map_err(|e| format!("not a registration: {e}"))
            .and_then(|r| {
                let spki = pem_der(&r.public_key_pem, "PUBLIC KEY")?;
                let key = rsa_public_key_of_spki(&spki)
                    .ok_or("public_key_pem: not an RSA public key (SubjectPublicKeyInfo)")?;
                Ok((key.to_vec(), r))
            });
        let (public_key, registration) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => return invalid(&reason),
        };
        if !email.contains('@')
            || (self.accounts.len() >= ACCOUNTS_MAX && !self.accounts.contains_key(email))
        {
            return invalid(
                "the path must end in a service account's email, and at most 1000 are kept",
            );
        }
        let expires_in_secs = registration
            .expires_in_secs
            .unwrap_or(TOKEN_EXPIRES_IN_SECS);
        self.accounts.insert(
            email.to_owned(),
            Account {
                public_key,
                expires_in_secs,
                valid_secs: registration.valid_secs.unwrap_or(expires_in_secs),
            },
        );
        crate::mock::shared::json(StatusCode::OK, json!({"client_email": email}))
    }

    /// The JWT bearer grant.
    fn token(&mut self, incoming: &Incoming) -> Response {
        match self.grant(incoming) {
            Ok(answer) => answer,
            Err((error, description)) => {
                self.token_refusals += 1;
                oauth_error(StatusCode::BAD_REQUEST, error, &description)
            }
        }
    }

    fn grant(&mut self, incoming: &Incoming) -> Result<Response, (&'static str, String)> {
        let bad = |description: &str| ("invalid_grant", description.to_owned());
        if incoming.method != Method::POST {
            return Err(("invalid_request", "The token endpoint takes POST.".into()));
        }
        let form = parse_form(&String::from_utf8_lossy(&incoming.body));
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if field("grant_type") != Some(GRANT_TYPE) {
            return Err((
                "unsupported_grant_type",
                format!("Invalid grant_type: {}", field("grant_type").unwrap_or("")),
            ));
        }
        let assertion =
            field("assertion").ok_or_else(|| bad("Missing required parameter: assertion"))?;
        let parts: Vec<&str> = assertion.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err(bad("Invalid JWT: not three parts"));
        };
        let header_json =
            jwt_part(header).ok_or_else(|| bad("Invalid JWT: the header is not JSON"))?;
        if header_json["alg"] != "RS256" {
            return Err(bad("Invalid JWT: the algorithm must be RS256"));
        }
        let claims_json =
            jwt_part(claims).ok_or_else(|| bad("Invalid JWT: the claims are not JSON"))?;
        let iss = claims_json["iss"]
            .as_str()
            .ok_or_else(|| bad("Invalid JWT: no iss"))?
            .to_owned();
        let scopes = claims_json["scope"].as_str().unwrap_or("");
        if !scopes.split(' ').any(|s| s == CHAT_BOT_SCOPE) {
            return Err((
                "invalid_scope",
                format!("Invalid OAuth scope or ID token audience provided: {scopes:?}"),
            ));
        }
        let aud = format!("{}{TOKEN_PATH}", incoming.base_url());
        if claims_json["aud"] != aud.as_str() {
            return Err(bad(&format!("Invalid JWT: the audience must be {aud}")));
        }
        let now_secs = incoming.now_ms.div_euclid(1000);
        let (Some(iat), Some(exp)) = (claims_json["iat"].as_i64(), claims_json["exp"].as_i64())
        else {
            return Err(bad("Invalid JWT: iat and exp must be numbers"));
        };
        if iat > now_secs + CLOCK_SKEW_SECS
            || exp <= now_secs
            || exp - iat > ASSERTION_LIFETIME_SECS_MAX
        {
            return Err(bad("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| bad("Invalid JWT Signature."))?;
        let (expires_in_secs, valid_secs) = match self.accounts.get(&iss) {
            Some(account) => {
                let signed = format!("{header}.{claims}");
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &account.public_key)
                    .verify(signed.as_bytes(), &signature)
                    .map_err(|_| bad("Invalid JWT Signature."))?;
                self.signatures_checked += 1;
                (account.expires_in_secs, account.valid_secs)
            }
            None if self.accounts.is_empty() => {
                self.unsigned_assertions += 1;
                (TOKEN_EXPIRES_IN_SECS, TOKEN_EXPIRES_IN_SECS)
            }
            None => return Err(("invalid_grant", "Invalid grant: account not found".into())),
        };
        self.serial += 1;
        let token = format!("ya29.mock-{:011}", self.serial);
        if self.token_order.len() >= TOKENS_KEPT_MAX {
            if let Some(oldest) = self.token_order.pop_front() {
                self.tokens.remove(&oldest);
            }
        }
        self.token_order.push_back(token.clone());
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                client_email: iss,
                valid_until_ms: incoming.now_ms + (valid_secs as i64).saturating_mul(1000),
            },
        );
        self.tokens_issued += 1;
        Ok(crate::mock::shared::json(
            StatusCode::OK,
            json!({"access_token": token, "expires_in": expires_in_secs, "token_type": "Bearer"}),
        ))
    }

    /// A `Message` body and its text (at most 4,096 characters, or
    /// none), its unknown fields refused; the error is the 400's message.
    fn message_body(
        incoming: &Incoming,
    ) -> Result<(serde_json::Map<String, Value>, String), String> {
        let body = match serde_json::from_slice::<Value>(&incoming.body) {
            Ok(Value::Object(body)) => body,
            _ => return Err("Invalid JSON payload received. Expected an object.".into()),
        };
        if let Some(unknown) = body.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ));
        }
        let text = match body.get("text") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(_) => return Err("Invalid value at 'message.text' (TYPE_STRING)".into()),
        };
        if text.chars().count() > TEXT_CHARS_MAX {
            return Err(format!("Message text exceeds {TEXT_CHARS_MAX} characters."));
        }
        Ok((body, text))
    }

    fn create(&mut self, incoming: &Incoming, space: &str, sender: Sender) -> Response {
        let (body, text) = match Self::message_body(incoming) {
            Ok(parsed) => parsed,
            Err(reason) => return invalid(&reason),
        };
        let has_cards = body.get("cardsV2").is_some_and(|c| !c.is_null())
            || body.get("cards").is_some_and(|c| !c.is_null());
        if text.trim().is_empty() && !has_cards {
            return invalid("Message cannot be empty. Discarding empty create message request.");
        }
        let thread_key = match body.get("thread").map(|t| &t["threadKey"]) {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) if key.chars().count() <= THREAD_KEY_CHARS_MAX => {
                Some(key.clone())
            }
            Some(_) => return invalid("Invalid thread key: a string of up to 4000 characters."),
        };
        let reply_option = incoming
            .query_param("messageReplyOption")
            .unwrap_or_else(|| REPLY_OPTIONS[0].to_owned());
        if !REPLY_OPTIONS.contains(&reply_option.as_str()) {
            return invalid(&format!(
                "Invalid value at 'message_reply_option' (type.googleapis.com/google.chat.v1.CreateMessageRequest.MessageReplyOption), \"{reply_option}\""
            ));
        }
        let client_id = incoming.query_param("messageId");
        if let Some(id) = &client_id {
            if !valid_message_id(id) {
                return invalid("Invalid message ID: it must begin with client-, and have at most 63 lowercase letters, numbers and hyphens.");
            }
        }
        let request_id = incoming.query_param("requestId").filter(|r| !r.is_empty());
        let chat = self.spaces.entry(space.to_owned()).or_default();
        if let Some(request_id) = &request_id {
            if let Some(first) = chat
                .messages
                .iter()
                .find(|m| m.request_id.as_ref() == Some(request_id))
            {
                let answer = render(space, first);
                chat.replays += 1;
                return crate::mock::shared::json(StatusCode::OK, answer);
            }
        }
        if let Some(id) = &client_id {
            if chat
                .messages
                .iter()
                .any(|m| m.client_id.as_ref() == Some(id))
            {
                chat.conflicts += 1;
                return google_error(
                    StatusCode::CONFLICT,
                    "ALREADY_EXISTS",
                    &format!("Message with ID {id} already exists."),
                );
            }
        }
        let threaded = reply_option != REPLY_OPTIONS[0];
        let existing_thread = thread_key.as_ref().filter(|_| threaded).and_then(|key| {
            chat.messages
                .iter()
                .find(|m| m.thread_key.as_ref() == Some(key))
                .map(|m| m.thread_name.clone())
        });
        self.serial += 1;
        let serial = self.serial;
        let thread_name = match existing_thread {
            Some(name) => name,
            None => {
                chat.threads += 1;
                format!("spaces/{space}/threads/T{serial:011}")
            }
        };
        if chat.messages.len() >= MESSAGES_KEPT_MAX {
            chat.messages.remove(0);
        }
        chat.messages.push(ChatMessage {
            name: format!("spaces/{space}/messages/M{serial:011}.M{serial:011}"),
            client_id,
            request_id,
            sender,
            created_text: text.clone(),
            text,
            thread_name,
            thread_key: thread_key.filter(|_| threaded),
            created_ms: incoming.now_ms,
            updated_ms: None,
        });
        let answer = render(space, chat.messages.last().expect("pushed"));
        crate::mock::shared::json(StatusCode::OK, answer)
    }

    /// The message `{message}` names in `space`: its system-assigned ID or
    /// its client-set one.
    fn find<'a>(chat: &'a mut Space, space: &str, message: &str) -> Option<&'a mut ChatMessage> {
        let name = format!("spaces/{space}/messages/{message}");
        chat.messages
            .iter_mut()
            .find(|m| m.name == name || m.client_id.as_deref() == Some(message))
    }

    fn get(&mut self, space: &str, message: &str) -> Response {
        let Some(chat) = self.spaces.get_mut(space) else {
            return not_found();
        };
        chat.reads += 1;
        match Self::find(chat, space, message) {
            Some(found) => crate::mock::shared::json(StatusCode::OK, render(space, found)),
            None => not_found(),
        }
    }

    fn patch(&mut self, incoming: &Incoming, space: &str, message: &str, app: &str) -> Response {
        let Some(mask) = incoming.query_param("updateMask").filter(|m| !m.is_empty()) else {
            return invalid("Request must contain a non-empty updateMask.");
        };
        let paths: Vec<&str> = mask.split(',').map(str::trim).collect();
        if let Some(unknown) = paths.iter().find(|p| !UPDATE_MASK_PATHS.contains(p)) {
            return invalid(&format!("Invalid field mask path: {unknown}"));
        }
        let (_, text) = match Self::message_body(incoming) {
            Ok(parsed) => parsed,
            Err(reason) => return invalid(&reason),
        };
        let Some(chat) = self.spaces.get_mut(space) else {
            return not_found();
        };
        let Some(found) = Self::find(chat, space, message) else {
            return not_found();
        };
        if found.sender != Sender::App(app.to_owned()) {
            return google_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "The caller does not have permission: an app can only update its own messages.",
            );
        }
        if paths.iter().any(|p| *p == "text" || *p == "*") {
            found.text = text;
        }
        found.updated_ms = Some(incoming.now_ms);
        let answer = render(space, found);
        chat.edits += 1;
        crate::mock::shared::json(StatusCode::OK, answer)
    }

    pub(crate) fn stats(&self) -> GoogleChatStats {
        let spaces = self
            .spaces
            .iter()
            .map(|(name, space)| {
                let mut stats = GoogleChatSpaceStats {
                    messages: space.messages.len() as u64,
                    threads: space.threads,
                    request_id_replays: space.replays,
                    message_id_conflicts: space.conflicts,
                    reads: space.reads,
                    edits: space.edits,
                    ..GoogleChatSpaceStats::default()
                };
                let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
                let mut per_thread: BTreeMap<(&str, &str), u64> = BTreeMap::new();
                for m in &space.messages {
                    stats.texts.push(m.created_text.clone());
                    stats.texts_now.push(m.text.clone());
                    *counts.entry(&m.created_text).or_insert(0) += 1;
                    if let Some(key) = &m.thread_key {
                        *stats
                            .messages_per_thread_key
                            .entry(key.clone())
                            .or_insert(0) += 1;
                        let seen = per_thread.entry((key, &m.created_text)).or_insert(0);
                        *seen += 1;
                        if *seen > 1 {
                            *stats
                                .duplicates_per_thread_key
                                .entry(key.clone())
                                .or_insert(0) += 1;
                        }
                    }
                }
                stats.duplicated_texts = counts
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(t, _)| t.to_owned())
                    .collect();
                (name.clone(), stats)
            })
            .collect();
        GoogleChatStats {
            spaces,
            tokens_issued: self.tokens_issued,
            token_refusals: self.token_refusals,
            signatures_checked: self.signatures_checked,
            unsigned_assertions: self.unsigned_assertions,
            bearer_refusals: self.bearer_refusals,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::{json, Value};

    use super::{GRANT_TYPE, TOKEN_PATH};
    use crate::mock::testing::{Answer, TestMock};

    const CREATE: &str = "/google-chat/v1/spaces/AAAA/messages";
    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

    /// An unsigned assertion (no key is registered, so the mock takes it
    /// unchecked) with `claims` changed by `edit`.
    fn assertion(mock: &TestMock, alg: &str, edit: impl Fn(&mut Value)) -> String {
        let now = mock.now_ms / 1000;
        let mut claims = json!({
            "iss": "app@p.iam.gserviceaccount.com",
            "scope": "https://www.googleapis.com/auth/chat.bot",
            "aud": format!("http://mock.test{TOKEN_PATH}"),
            "iat": now,
            "exp": now + 3_600,
        });
        edit(&mut claims);
        let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            part(json!({"alg": alg, "typ": "JWT"})),
            part(claims)
        )
    }

    fn grant(mock: &TestMock, grant_type: &str, assertion: &str) -> Answer {
        let body = format!(
            "grant_type={}&assertion={assertion}",
            grant_type.replace(':', "%3A")
        );
        mock.send("POST", TOKEN_PATH, &[FORM], &body)
    }

    #[test]
    fn the_token_endpoint_checks_the_grant_and_the_jwt() {
        let mock = TestMock::new();
        let refused = |answer: Answer, error: &str, words: &str| {
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
            assert_eq!(answer.body["error"], error, "{}", answer.text);
            let description = answer.body["error_description"].as_str().unwrap();
            assert!(description.contains(words), "{description}");
        };
        let good = assertion(&mock, "RS256", |_| {});
        refused(
            grant(&mock, "client_credentials", &good),
            "unsupported_grant_type",
            "grant_type",
        );
        refused(
            grant(&mock, GRANT_TYPE, "a.b"),
            "invalid_grant",
            "three parts",
        );
        let hs = assertion(&mock, "HS256", |_| {});
        refused(grant(&mock, GRANT_TYPE, &hs), "invalid_grant", "RS256");
        let scope = assertion(&mock, "RS256", |c| {
            c["scope"] = json!("https://www.googleapis.com/auth/chat.messages")
        });
        refused(
            grant(&mock, GRANT_TYPE, &scope),
            "invalid_scope",
            "chat.messages",
        );
        let aud = assertion(&mock, "RS256", |c| {
            c["aud"] = json!("https://oauth2.googleapis.com/token")
        });
        refused(grant(&mock, GRANT_TYPE, &aud), "invalid_grant", "audience");
        let expired = assertion(&mock, "RS256", |c| {
            c["exp"] = json!(c["iat"].as_i64().unwrap() - 1)
        });
        refused(
            grant(&mock, GRANT_TYPE, &expired),
            "invalid_grant",
            "short-lived",
        );
        let long = assertion(&mock, "RS256", |c| {
            c["exp"] = json!(c["iat"].as_i64().unwrap() + 7_200)
        });
        refused(
            grant(&mock, GRANT_TYPE, &long),
            "invalid_grant",
            "short-lived",
        );
        assert_eq!(mock.stats().google_chat.tokens_issued, 0);

        let issued = grant(&mock, GRANT_TYPE, &good);
        assert_eq!(issued.status, StatusCode::OK, "{}", issued.text);
        assert_eq!(issued.body["token_type"], "Bearer");
        let stats = mock.stats().google_chat;
        assert_eq!(
            (
                stats.tokens_issued,
                stats.unsigned_assertions,
                stats.token_refusals
            ),
            (1, 1, 7)
        );
    }

    #[test]
    fn the_api_wants_a_token_and_lets_the_app_edit_its_own_messages_only() {
        let mock = TestMock::new();
        let anonymous = mock.send("POST", CREATE, &[], r#"{"text":"x"}"#);
        assert_eq!(
            (anonymous.status, &anonymous.body["error"]["status"]),
            (StatusCode::UNAUTHORIZED, &json!("UNAUTHENTICATED"))
        );
        let token = grant(&mock, GRANT_TYPE, &assertion(&mock, "RS256", |_| {})).body
            ["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let bearer = format!("Bearer {token}");
        let auth = [("authorization", bearer.as_str())];
        let created = mock.send(
            "POST",
            &format!("{CREATE}?messageId=client-a1"),
            &auth,
            r#"{"text":"first"}"#,
        );
        assert_eq!(created.status, StatusCode::OK, "{}", created.text);
        let read = mock.send("GET", &format!("{CREATE}/client-a1"), &auth, "");
        assert_eq!(read.body["name"], created.body["name"]);
        let missing = mock.send("GET", &format!("{CREATE}/client-b2"), &auth, "");
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let no_mask = mock.send(
            "PATCH",
            &format!("{CREATE}/client-a1"),
            &auth,
            r#"{"text":"y"}"#,
        );
        assert_eq!(no_mask.status, StatusCode::BAD_REQUEST, "{}", no_mask.text);
        let bad_mask = mock.send(
            "PATCH",
            &format!("{CREATE}/client-a1?updateMask=sender"),
            &auth,
            r#"{"text":"y"}"#,
        );
        assert_eq!(
            bad_mask.status,
            StatusCode::BAD_REQUEST,
            "{}",
            bad_mask.text
        );
        let edited = mock.send(
            "PATCH",
            &format!("{CREATE}/client-a1?updateMask=text"),
            &auth,
            r#"{"text":"edited"}"#,
        );
        assert_eq!(
            (edited.status, &edited.body["text"]),
            (StatusCode::OK, &json!("edited")),
            "{}",
            edited.text
        );
        assert!(edited.body["lastUpdateTime"].is_string());
        // A webhook's message in the same space is not the app's.
        let hooked = mock.send(
            "POST",
            &format!("{CREATE}?key=k&token=t&messageId=client-c3"),
            &[],
            r#"{"text":"hook"}"#,
        );
        assert_eq!(hooked.status, StatusCode::OK);
        let foreign = mock.send(
            "PATCH",
            &format!("{CREATE}/client-c3?updateMask=text"),
            &auth,
            r#"{"text":"z"}"#,
        );
        assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text);
        let s = &mock.stats().google_chat.spaces["AAAA"];
        assert_eq!((s.messages, s.edits, s.reads), (2, 1, 2));
        assert_eq!(s.texts, ["first", "hook"]);
        assert_eq!(s.texts_now, ["edited", "hook"]);
        assert_eq!(mock.stats().google_chat.bearer_refusals, 1);
    }
}
