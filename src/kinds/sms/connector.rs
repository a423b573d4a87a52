//! SMS through Twilio's Messages API (`twilio-api-v2010.openapi.json`):
//! `CreateMessage` (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! a form with `To`, `From`, `Body`, basic auth with the account SID and
//! its auth token) once per recipient. The text is the destination's
//! template's `Body` (the default, `template.json.j2`: the message's short
//! `summary`, or its title when it has none, behind `[P1]` or
//! `[RESOLVED]`), cut at the destination's `text_chars_max`. Each created
//! message's Sid goes into the delivery's `remote_ref`, comma-separated in
//! the order of the recipients, so a retry after a partial failure sends
//! only to the recipients that have not had it.
//!
//! Twilio's Messages have no idempotency key. After an ambiguous send the
//! recipient's messages are listed (`ListMessage` with `To` and
//! `DateSent>` = the day the broadcast was created, newest first, at most
//! [`READ_BACK_PAGES_MAX`] pages of [`READ_BACK_PAGE_SIZE`]) and one with
//! the same `from`, the same body and created no earlier than the
//! broadcast (less [`READ_BACK_CLOCK_SKEW_MS`]) counts as this one: found,
//! its Sid is kept and nothing is re-sent to that recipient. The check is
//! as strong as "no other message with this exact text went from this
//! sender to this number since the broadcast was created": an identical
//! text sent by another broadcast in that window would be taken for it. A
//! recipient whose list cannot be read is re-sent and the delivery flagged
//! `possible_duplicate`.
//!
//! Classification (one function, [`classify_twilio_response`]): 201/200
//! success; 429 or Twilio error 20429 rate limited (Retry-After honoured);
//! 408 and 5xx retryable; 401 (20003) and other 4xx permanent, with
//! Twilio's `code` and `message` in the error.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Secret;
use crate::connector::http::{cut_chars, exchange, form_body, status_class, Reply};
use crate::connector::shared::{parse_retry_after_ms, VerifyReport};
use crate::domain::{ClaimedDelivery, Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

/// Twilio's limit on a message body ("up to 1,600 characters").
pub const TWILIO_BODY_CHARS_MAX: usize = 1_600;
/// The default cut: one SMS segment of GSM-7.
pub const DEFAULT_TEXT_CHARS_MAX: usize = 160;
/// Messages per page of the read-back.
pub const READ_BACK_PAGE_SIZE: usize = 50;
/// Pages of one recipient's messages the read-back reads before it gives up.
pub const READ_BACK_PAGES_MAX: usize = 3;
/// How far before the broadcast's creation a listed message may have been
/// created and still count, for a clock that runs ahead of Twilio's.
pub const READ_BACK_CLOCK_SKEW_MS: i64 = 60_000;
/// Twilio's error code for "Too Many Requests".
const TWILIO_TOO_MANY_REQUESTS: i64 = 20_429;

pub struct SmsConnector {
    client: reqwest::Client,
    /// The API's base, `https://api.twilio.com/`.
    api_url: reqwest::Url,
    account_sid: String,
    auth_token: Secret,
    from: String,
    to: Vec<String>,
    text_chars_max: usize,
    rendering: Rendering,
}

/// SMS's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// SMS's default template, for `herald preview` and the tests.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// The text of a delivery with the default template: `[P1] summary` (or
/// the title without a summary), `[RESOLVED] ...` for a resolve, cut at
/// `chars_max`. See [`render_sms_text`].
pub fn sms_text(delivery: &ClaimedDelivery, chars_max: usize) -> String {
    render_sms_text(&Rendering::default(), delivery, chars_max)
        .expect("the default template renders every valid message")
}

/// The text of a delivery: the destination's template's `Body`, cut at
/// `chars_max` (and at Twilio's 1,600 characters). An empty text is an
/// error: Twilio refuses a message with nothing in it.
pub fn render_sms_text(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    chars_max: usize,
) -> Result<String, TemplateError> {
    let rendered = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let Some(text) = rendered.get("Body").and_then(Value::as_str) else {
        return Err(TemplateError {
            line: None,
            reason: "the output needs \"Body\" as text (the message's text)".into(),
        });
    };
    if text.trim().is_empty() {
        return Err(TemplateError {
            line: None,
            reason: "the output's \"Body\" is empty; Twilio sends no empty message".into(),
        });
    }
    Ok(cut_chars(text, chars_max.min(TWILIO_BODY_CHARS_MAX)))
}

/// The `CreateMessage` form for one recipient.
pub fn twilio_create_form(from: &str, to: &str, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("To", to.to_owned()),
        ("From", from.to_owned()),
        ("Body", body.to_owned()),
    ]
}

/// The `ListMessage` query of the read-back: messages to `to`, sent on or
/// after the day of `since_ms` (UTC), a page of [`READ_BACK_PAGE_SIZE`].
pub fn twilio_list_query(to: &str, since_ms: i64) -> Vec<(&'static str, String)> {
    let day = crate::domain::format_rfc3339_ms(since_ms)[..10].to_owned();
    vec![
        ("To", to.to_owned()),
        ("DateSent>", day),
        ("PageSize", READ_BACK_PAGE_SIZE.to_string()),
    ]
}

/// Twilio's answer in outcome classes: 2xx success (the Sid is the
/// `remote_ref`), 429 or error 20429 rate limited, 408 and 5xx retryable,
/// other 4xx permanent with Twilio's code and message.
pub fn classify_twilio_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let code = json.as_ref().and_then(|j| j["code"].as_i64());
    let message = json
        .as_ref()
        .and_then(|j| j["message"].as_str())
        .unwrap_or("")
        .to_owned();
    let mut class = status_class(status);
    if code == Some(TWILIO_TOO_MANY_REQUESTS) {
        class = OutcomeClass::RateLimited;
    }
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    match class {
        OutcomeClass::Success => {
            outcome.remote_ref = json
                .as_ref()
                .and_then(|j| j["sid"].as_str())
                .map(str::to_owned);
            if outcome.remote_ref.is_none() {
                // Created (the status says so) but the Sid is unreadable.
                outcome.class = OutcomeClass::Ambiguous;
                outcome.error = Some(format!(
                    "HTTP {status} from Twilio without a message Sid in the answer"
                ));
            }
        }
        OutcomeClass::RateLimited | OutcomeClass::Retryable => {
            outcome.retry_after_ms = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms));
            outcome.error = Some(match code {
                Some(code) => format!("HTTP {status}: Twilio error {code}: {message}"),
                None => format!("HTTP {status} from Twilio"),
            });
        }
        _ => {
            let hint = match (status, code) {
                (401, _) | (_, Some(20_003)) => {
                    "; check account_sid and the auth token (secret_env)"
                }
                (404, _) => "; check account_sid",
                (_, Some(21_211)) => "; check the to numbers (E.164, like +14155552671)",
                (_, Some(21_212 | 21_606 | 21_603)) => {
                    "; check from: a number (or sender id) of this account"
                }
                (_, Some(21_610)) => "; the recipient has replied STOP",
                _ => "",
            };
            outcome.error = Some(match code {
                Some(code) => format!("HTTP {status}: Twilio error {code}: {message}{hint}"),
                None => format!("HTTP {status} from Twilio{hint}"),
            });
        }
    }
    outcome
}

/// One message of a `ListMessage` page, as far as the read-back needs it.
#[derive(Deserialize)]
struct ListedMessage {
    sid: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    date_created: Option<String>,
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    messages: Vec<ListedMessage>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// An RFC 2822 date as Twilio writes it (`Thu, 24 Aug 2023 05:01:45
/// +0000`), in ms since the epoch.
pub fn parse_twilio_date_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let gmt = text
        .strip_suffix("+0000")
        .map(|t| format!("{}GMT", t))
        .unwrap_or_else(|| text.to_owned());
    let at = httpdate::parse_http_date(&gmt).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// The URL of a list's `next_page_uri`: an absolute path under the API
/// base (which may itself have a path, as the mock's does).
fn next_page_url(api_url: &reqwest::Url, uri: &str) -> Option<reqwest::Url> {
    api_url.join(uri.trim_start_matches('/')).ok()
}

/// The Sids recorded so far, one per recipient already served.
fn recorded_sids(delivery: &ClaimedDelivery) -> Vec<String> {
    delivery
        .remote_ref
        .as_deref()
        .map(|r| {
            r.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl SmsConnector {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        api_url: reqwest::Url,
        account_sid: String,
        auth_token: Secret,
        from: String,
        to: Vec<String>,
        text_chars_max: usize,
        rendering: Rendering,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<SmsConnector> {
        Ok(SmsConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            api_url,
            account_sid,
            auth_token,
            from,
            to,
            text_chars_max,
            rendering,
        })
    }

    fn messages_url(&self) -> reqwest::Url {
        let mut url = self.api_url.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .extend(["2010-04-01", "Accounts", &self.account_sid, "Messages.json"]);
        url
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
    }

    fn classify(reply: &Reply, now_ms: i64) -> Outcome {
        let mut outcome = classify_twilio_response(
            reply.status,
            reply.header("retry-after"),
            &reply.body,
            now_ms,
        );
        outcome.excerpt = reply.excerpt();
        outcome
    }

    /// Sends to every recipient that has no Sid recorded yet, in order;
    /// stops at the first that does not succeed. The outcome's
    /// `remote_ref` is every Sid so far.
    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        // Rendered before anything is sent: a template that fails sends
        // nothing, and fails this delivery alone.
        let text = match render_sms_text(&self.rendering, delivery, self.text_chars_max) {
            Ok(text) => text,
            Err(error) => return render_failed(&error),
        };
        let mut sids = recorded_sids(delivery);
        let mut last = Outcome::new(OutcomeClass::Success);
        for to in self.to.iter().skip(sids.len()) {
            let request = self
                .request(reqwest::Method::POST, self.messages_url())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&twilio_create_form(&self.from, to, &text)));
            let mut outcome = match exchange(request).await {
                Ok(reply) => Self::classify(&reply, now_ms),
                Err(outcome) => outcome,
            };
            if outcome.class != OutcomeClass::Success {
                if self.to.len() > 1 {
                    outcome.error = outcome.error.map(|e| format!("to {to}: {e}"));
                }
                outcome.remote_ref = (!sids.is_empty()).then(|| sids.join(","));
                return outcome;
            }
            sids.push(outcome.remote_ref.take().unwrap_or_default());
            last = outcome;
        }
        last.remote_ref = Some(sids.join(","));
        last
    }

    /// Looks for the message among the messages to the first recipient
    /// without a recorded Sid (the one whose answer was lost).
    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        let mut sids = recorded_sids(delivery);
        let Some(to) = self.to.get(sids.len()) else {
            // Every recipient has its Sid: the message is there.
            return VerifyReport::found(sids.join(","));
        };
        let text = match render_sms_text(&self.rendering, delivery, self.text_chars_max) {
            Ok(text) => text,
            // Nothing was ever sent with a template that does not render:
            // the send after this fails the delivery with the reason.
            Err(error) => {
                let mut report = VerifyReport::absent(format!("the destination's {error}"));
                report.remote_ref = (!sids.is_empty()).then(|| sids.join(","));
                return report;
            }
        };
        let since_ms = delivery.broadcast_created_at_ms - READ_BACK_CLOCK_SKEW_MS;
        let mut url = self.messages_url();
        url.query_pairs_mut()
            .extend_pairs(twilio_list_query(to, since_ms));
        for _ in 0..READ_BACK_PAGES_MAX {
            let reply = match exchange(self.request(reqwest::Method::GET, url.clone())).await {
                Ok(reply) if reply.status == 200 => reply,
                Ok(reply) => {
                    return Self::unreadable(to, &format!("HTTP {}", reply.status))
                        .with_status(Some(reply.status))
                }
                Err(outcome) => return Self::unreadable(to, &outcome.error.unwrap_or_default()),
            };
            let Some(page) = reply.json::<ListPage>() else {
                return Self::unreadable(to, "the list is not Twilio's JSON")
                    .with_status(Some(200));
            };
            let ours = page.messages.iter().find(|m| {
                m.body.as_deref() == Some(text.as_str())
                    && m.from.as_deref().is_none_or(|f| f == self.from)
                    && m.date_created
                        .as_deref()
                        .and_then(parse_twilio_date_ms)
                        .is_some_and(|at| at >= since_ms)
            });
            if let Some(found) = ours {
                sids.push(found.sid.clone());
                let all = sids.join(",");
                if sids.len() == self.to.len() {
                    return VerifyReport::found(all).with_status(Some(200));
                }
                // Found for this recipient; the ones after it still wait.
                let mut report = VerifyReport::absent(format!(
                    "found the message to {to}; sending to the remaining recipients"
                ))
                .with_status(Some(200));
                report.remote_ref = Some(all);
                return report;
            }
            let next = page.next_page_uri.as_deref().filter(|n| !n.is_empty());
            match next.and_then(|n| next_page_url(&self.api_url, n)) {
                Some(next) => url = next,
                None => {
                    let mut report = VerifyReport::absent(format!(
                        "no such message to {to} since the broadcast; sending again"
                    ))
                    .with_status(Some(200));
                    report.remote_ref = (!sids.is_empty()).then(|| sids.join(","));
                    return report;
                }
            }
        }
        Self::unreadable(
            to,
            &format!(
                "more than {} messages to it since the broadcast's day",
                READ_BACK_PAGES_MAX * READ_BACK_PAGE_SIZE
            ),
        )
    }

    /// The recipient's messages could not be read: re-sent, and Twilio has
    /// no key to fold a re-send, so flagged.
    fn unreadable(to: &str, why: &str) -> VerifyReport {
        VerifyReport::unknown(
            format!("could not list Twilio's messages to {to}: {why}; sending again, which may deliver it twice"),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_answers_map_to_outcome_classes() {
        // The 201 of CreateMessage (the description's `create` example).
        let created = classify_twilio_response(
            201,
            None,
            br#"{"account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","body":"Hello!","sid":"SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","status":"queued"}"#,
            0,
        );
        assert_eq!(created.class, OutcomeClass::Success);
        assert_eq!(
            created.remote_ref.as_deref(),
            Some("SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        // The error shape of the description: code, message, more_info, status.
        let limited = classify_twilio_response(
            429,
            Some("3"),
            br#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#,
            0,
        );
        assert_eq!(
            (limited.class, limited.retry_after_ms),
            (OutcomeClass::RateLimited, Some(3_000))
        );
        let queue_full = classify_twilio_response(
            400,
            None,
            br#"{"code":20429,"message":"Too Many Requests","more_info":"","status":400}"#,
            0,
        );
        assert_eq!(queue_full.class, OutcomeClass::RateLimited);
        let auth = classify_twilio_response(
            401,
            None,
            br#"{"code":20003,"message":"Authenticate","more_info":"https://www.twilio.com/docs/errors/20003","status":401}"#,
            0,
        );
        assert_eq!(auth.class, OutcomeClass::Permanent);
        assert!(auth.error.unwrap().contains("auth token"));
        let bad_to = classify_twilio_response(
            400,
            None,
            br#"{"code":21211,"message":"Invalid 'To' Phone Number: +1555","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
            0,
        );
        assert_eq!(bad_to.class, OutcomeClass::Permanent);
        assert!(bad_to.error.unwrap().contains("21211"));
        let down = classify_twilio_response(
            503,
            None,
            br#"{"code":20503,"message":"Service Unavailable","more_info":"","status":503}"#,
            0,
        );
        assert_eq!(down.class, OutcomeClass::Retryable);
        assert_eq!(
            classify_twilio_response(408, None, b"", 0).class,
            OutcomeClass::Retryable
        );
        let no_sid = classify_twilio_response(201, None, b"{}", 0);
        assert_eq!(no_sid.class, OutcomeClass::Ambiguous);
    }

    #[test]
    fn next_pages_stay_under_the_api_base() {
        let uri = "/2010-04-01/Accounts/AC1/Messages.json?To=%2B1&PageSize=50&Page=1&PageToken=PA1";
        let real = reqwest::Url::parse("https://api.twilio.com/").unwrap();
        assert_eq!(
            next_page_url(&real, uri).unwrap().as_str(),
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?To=%2B1&PageSize=50&Page=1&PageToken=PA1"
        );
        let mock = reqwest::Url::parse("http://127.0.0.1:9090/twilio/").unwrap();
        assert!(next_page_url(&mock, uri)
            .unwrap()
            .as_str()
            .starts_with("http://127.0.0.1:9090/twilio/2010-04-01/"));
    }

    #[test]
    fn twilio_dates_parse() {
        assert_eq!(
            parse_twilio_date_ms("Thu, 24 Aug 2023 05:01:45 +0000"),
            Some(1_692_853_305_000)
        );
        assert_eq!(parse_twilio_date_ms("yesterday"), None);
    }

    #[test]
    fn the_list_query_names_the_day_since() {
        let query = twilio_list_query("+14155552671", 1_692_853_305_000);
        assert_eq!(query[0], ("To", "+14155552671".to_owned()));
        assert_eq!(query[1], ("DateSent>", "2023-08-24".to_owned()));
    }
}
