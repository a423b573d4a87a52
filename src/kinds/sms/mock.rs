//! Twilio's Messages API (`twilio-api-v2010.openapi.json`), at
//! `/twilio/2010-04-01/Accounts/{AccountSid}/Messages.json` (the
//! connector's API base is `<mock>/twilio/`):
//!
//! - `POST` (`CreateMessage`): a form with `To` (required), `From` (or
//!   `MessagingServiceSid`), `Body` (or `MediaUrl`/`ContentSid`); answers
//!   201 with the message resource (`sid` `SM` + 32 hex digits, `status`
//!   `queued`, dates in RFC 2822, `date_sent` set at creation);
//! - `GET` (`ListMessage`): filters `To`, `From`, `DateSent`, `DateSent<`,
//!   `DateSent>` (GMT days, `YYYY-MM-DD`), pages by `PageSize` (default 50,
//!   at most 1,000) and `Page`, newest first, with `next_page_uri`;
//! - `GET .../Messages/{Sid}.json` (`FetchMessage`).
//!
//! Requests need HTTP basic auth whose user is the path's `AccountSid`
//! (`AC` + 32 hex digits); the first password used for an account is its
//! auth token, another answers 401 with Twilio's error 20003. Refusals use
//! the description's error shape `{"code","message","more_info","status"}`:
//! 21604 no `To`, 21211 a `To` that is not E.164, 21603 no `From`, 21602 no
//! `Body`, 21617 a body over 1,600 characters.
//!
//! Faults: 429 answers Twilio's error 20429 with `Retry-After`; a failure
//! answers its status in the same shape. Stats count, per account and
//! recipient, messages and identical texts (Twilio cannot tell a re-send:
//! the same text twice to one number is a duplicate the recipient sees).

use std::collections::BTreeMap;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{civil_utc, parse_form, Admission, Fault, Incoming};

pub const PREFIX: &str = "/twilio/";
const API_PREFIX: &str = "/twilio/2010-04-01/Accounts/";
const BODY_CHARS_MAX: usize = 1_600;
const PAGE_SIZE_DEFAULT: usize = 50;
const PAGE_SIZE_MAX: usize = 1_000;
/// Messages kept per account (oldest dropped first), a bound on memory.
const MESSAGES_KEPT_MAX: usize = 10_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SmsStats {
    /// Per account SID.
    pub accounts: BTreeMap<String, SmsAccountStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SmsAccountStats {
    /// Messages created.
    pub messages: u64,
    /// Per recipient: messages created for it.
    pub per_recipient: BTreeMap<String, u64>,
    /// Per `to: body`: messages with that text to that number.
    pub texts: BTreeMap<String, u64>,
    /// The `to: body` above created more than once (a duplicate the
    /// recipient's phone shows).
    pub duplicated_texts: Vec<String>,
    /// `ListMessage` calls answered.
    pub lists: u64,
    /// Every message as `to: body`, in the order they were created.
    pub sent: Vec<String>,
}

struct Sms {
    sid: String,
    to: String,
    from: String,
    body: String,
    created_ms: i64,
}

struct Account {
    token: String,
    messages: Vec<Sms>,
    lists: u64,
}

#[derive(Default)]
pub(crate) struct Twilio {
    accounts: BTreeMap<String, Account>,
    serial: u64,
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    crate::mock::shared::json(
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        }),
    )
}

/// `Thu, 24 Aug 2023 05:01:45 +0000`.
fn rfc2822(ms: i64) -> String {
    let (y, mo, d, h, mi, s, _) = civil_utc(ms);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = DAYS[ms.div_euclid(86_400_000).rem_euclid(7) as usize];
    format!(
        "{weekday}, {d:02} {} {y:04} {h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

fn day_of(ms: i64) -> String {
    let (y, mo, d, ..) = civil_utc(ms);
    format!("{y:04}-{mo:02}-{d:02}")
}

fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

fn is_account_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The basic-auth user and password of a request.
fn basic_auth(incoming: &Incoming) -> Option<(String, String)> {
    let value = incoming.header("authorization")?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn render(account_sid: &str, m: &Sms) -> Value {
    let date = rfc2822(m.created_ms);
    json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": m.body,
        "date_created": date,
        "date_sent": date,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": m.from,
        "messaging_service_sid": null,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": m.sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}/Media.json", m.sid)
        },
        "to": m.to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}.json", m.sid),
    })
}

impl Twilio {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                let mut response =
                    twilio_error(StatusCode::TOO_MANY_REQUESTS, 20_429, "Too Many Requests");
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(retry_after_secs));
                return response;
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let code = 20_000 + u32::from(status.as_u16());
                return twilio_error(status, code, status.canonical_reason().unwrap_or("Error"));
            }
            _ => {}
        }
        let rest = incoming.path.strip_prefix(API_PREFIX).unwrap_or("");
        let segments: Vec<&str> = rest.split('/').collect();
        let (account_sid, route) = match segments.as_slice() {
            [sid, "Messages.json"] => (*sid, None),
            [sid, "Messages", one] if one.ends_with(".json") => {
                (*sid, Some(one.trim_end_matches(".json")))
            }
            _ => {
                return twilio_error(
                    StatusCode::NOT_FOUND,
                    20_404,
                    "The requested resource was not found",
                )
            }
        };
        if !is_account_sid(account_sid) {
            return twilio_error(
                StatusCode::NOT_FOUND,
                20_404,
                "The requested resource was not found",
            );
        }
        let Some((user, password)) = basic_auth(incoming) else {
            return twilio_error(StatusCode::UNAUTHORIZED, 20_003, "Authenticate");
        };
        let account = self
            .accounts
            .entry(account_sid.to_owned())
            .or_insert_with(|| Account {
                token: password.clone(),
                messages: Vec::new(),
                lists: 0,
            });
        if user != account_sid || account.token != password {
            return twilio_error(StatusCode::UNAUTHORIZED, 20_003, "Authenticate");
        }
        match (&incoming.method, route) {
            (&Method::POST, None) => self.create(incoming, account_sid),
            (&Method::GET, None) => self.list(incoming, account_sid),
            (&Method::GET, Some(sid)) => {
                let account = &self.accounts[account_sid];
                match account.messages.iter().find(|m| m.sid == sid) {
                    Some(m) => crate::mock::shared::json(StatusCode::OK, render(account_sid, m)),
                    None => twilio_error(
                        StatusCode::NOT_FOUND,
                        20_404,
                        "The requested resource was not found",
                    ),
                }
            }
            _ => twilio_error(StatusCode::METHOD_NOT_ALLOWED, 20_004, "Method not allowed"),
        }
    }

    fn create(&mut self, incoming: &Incoming, account_sid: &str) -> Response {
        let form = parse_form(std::str::from_utf8(&incoming.body).unwrap_or(""));
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let Some(to) = field("To") else {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21_604,
                "A 'To' phone number is required.",
            );
        };
        if !is_e164(&to) {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21_211,
                &format!("Invalid 'To' Phone Number: {to}"),
            );
        }
        let Some(from) = field("From").or_else(|| field("MessagingServiceSid")) else {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21_603,
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
            );
        };
        let Some(body) = field("Body").or_else(|| {
            (field("MediaUrl").is_some() || field("ContentSid").is_some()).then(String::new)
        }) else {
            return twilio_error(StatusCode::BAD_REQUEST, 21_602, "Message body is required.");
        };
        if body.chars().count() > BODY_CHARS_MAX {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21_617,
                "The concatenated message body exceeds the 1600 character limit.",
            );
        }
        self.serial += 1;
        let sid = format!("SM{:032x}", self.serial);
        let account = self.accounts.get_mut(account_sid).expect("made in handle");
        if account.messages.len() >= MESSAGES_KEPT_MAX {
            account.messages.remove(0);
        }
        account.messages.push(Sms {
            sid,
            to,
            from,
            body,
            created_ms: incoming.now_ms,
        });
        let m = account.messages.last().expect("pushed");
        crate::mock::shared::json(StatusCode::CREATED, render(account_sid, m))
    }

    fn list(&mut self, incoming: &Incoming, account_sid: &str) -> Response {
        let query = incoming.query_pairs();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let page_size = match param("PageSize").map(|v| v.parse::<usize>()) {
            None => PAGE_SIZE_DEFAULT,
            Some(Ok(n)) if (1..=PAGE_SIZE_MAX).contains(&n) => n,
            Some(_) => {
                return twilio_error(
                    StatusCode::BAD_REQUEST,
                    20_001,
                    "Invalid PageSize: must be between 1 and 1000",
                )
            }
        };
        let page = match param("Page").map(|v| v.parse::<usize>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return twilio_error(StatusCode::BAD_REQUEST, 20_001, "Invalid Page"),
        };
        let days: Vec<(&str, String)> = [("DateSent", "="), ("DateSent<", "<"), ("DateSent>", ">")]
            .into_iter()
            .filter_map(|(name, op)| param(name).map(|v| (op, v)))
            .collect();
        for (_, day) in &days {
            let valid = day.len() == 10
                && day.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                });
            if !valid {
                return twilio_error(
                    StatusCode::BAD_REQUEST,
                    20_001,
                    &format!("Invalid DateSent: {day:?} is not YYYY-MM-DD"),
                );
            }
        }
        let (to, from) = (param("To"), param("From"));
        let account = self.accounts.get_mut(account_sid).expect("made in handle");
        account.lists += 1;
        let matching: Vec<&Sms> = account
            .messages
            .iter()
            .rev()
            .filter(|m| to.as_ref().is_none_or(|t| *t == m.to))
            .filter(|m| from.as_ref().is_none_or(|f| *f == m.from))
            .filter(|m| {
                let day = day_of(m.created_ms);
                days.iter().all(|(op, d)| match *op {
                    "=" => day == *d,
                    "<" => day <= *d,
                    _ => day >= *d,
                })
            })
            .collect();
        let start = page * page_size;
        let messages: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(page_size)
            .map(|m| render(account_sid, m))
            .collect();
        let base = format!("/2010-04-01/Accounts/{account_sid}/Messages.json");
        let mut filters = String::new();
        for (name, value) in &query {
            if name != "Page" && name != "PageSize" && name != "PageToken" {
                filters.push_str(&format!("{}={}&", encode(name), encode(value)));
            }
        }
        let uri = |n: usize| format!("{base}?{filters}PageSize={page_size}&Page={n}");
        let more = start + page_size < matching.len();
        crate::mock::shared::json(
            StatusCode::OK,
            json!({
                "end": start + messages.len().saturating_sub(1),
                "first_page_uri": uri(0),
                "next_page_uri": if more { Value::String(format!("{}&PageToken=PA{}", uri(page + 1), page + 1)) } else { Value::Null },
                "page": page,
                "page_size": page_size,
                "previous_page_uri": if page > 0 { Value::String(uri(page - 1)) } else { Value::Null },
                "messages": messages,
                "start": start,
                "uri": uri(page),
            }),
        )
    }

    pub(crate) fn stats(&self) -> SmsStats {
        let accounts = self
            .accounts
            .iter()
            .map(|(sid, account)| {
                let mut stats = SmsAccountStats {
                    messages: account.messages.len() as u64,
                    lists: account.lists,
                    ..SmsAccountStats::default()
                };
                for m in &account.messages {
                    stats.sent.push(format!("{}: {}", m.to, m.body));
                    *stats.per_recipient.entry(m.to.clone()).or_insert(0) += 1;
                    *stats
                        .texts
                        .entry(format!("{}: {}", m.to, m.body))
                        .or_insert(0) += 1;
                }
                stats.duplicated_texts = stats
                    .texts
                    .iter()
                    .filter(|(_, n)| **n > 1)
                    .map(|(t, _)| t.clone())
                    .collect();
                (sid.clone(), stats)
            })
            .collect();
        SmsStats { accounts }
    }
}

/// Percent-encodes a query component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc_2822_in_gmt() {
        assert_eq!(
            rfc2822(1_692_853_305_000),
            "Thu, 24 Aug 2023 05:01:45 +0000"
        );
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn numbers_are_checked_as_e164() {
        assert!(is_e164("+14155552671"));
        assert!(!is_e164("4155552671"));
        assert!(!is_e164("+1415555267a"));
    }
}
