//! What every connector's HTTP exchange shares: the client's settings, how
//! a transport failure is classified, and how much of an answer is read.

use std::time::{Duration, Instant};

use crate::domain::{Outcome, OutcomeClass, EXCERPT_BYTES_MAX};

/// The longest a connection may take to open, whatever the request timeout.
/// `pairs` as an `application/x-www-form-urlencoded` body (Twilio, Zulip,
/// an OAuth token request), encoded as a URL's query is.
pub fn form_body(pairs: &[(&str, String)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("a valid URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or("").to_owned()
}

pub(crate) const CONNECT_TIMEOUT_MS_MAX: u64 = 5_000;
/// An API answer larger than this is not read to the end (it is not an
/// answer herald asked for).
const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// The HTTP client of one destination: no redirects (the URL must be the
/// final one), a request timeout, a connect timeout strictly shorter than it
/// (a stalled connect is "nothing sent", not "maybe sent"), and a pool the
/// size of the destination's concurrency.
pub(crate) fn client(
    timeout: Duration,
    connections_max: usize,
) -> reqwest::Result<reqwest::Client> {
    super::shared::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout((timeout * 3 / 4).min(Duration::from_millis(CONNECT_TIMEOUT_MS_MAX)))
        .pool_max_idle_per_host(connections_max)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A whole answer of an API: status, the headers that pace us, the body.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn excerpt(&self) -> Option<String> {
        excerpt_of(&self.body)
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends and reads the whole answer. A failure is already an outcome:
/// nothing sent (retryable) or maybe processed (ambiguous).
pub(crate) async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, Outcome> {
    let mut response = request
        .send()
        .await
        .map_err(|e| classify_transport_error(&e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                body.extend_from_slice(&bytes);
                if body.len() > ANSWER_BYTES_MAX {
                    body.truncate(ANSWER_BYTES_MAX);
                    break;
                }
            }
            Ok(None) => break,
            // The status arrived but the body did not: the request was
            // processed, and whether it succeeded is in the lost body.
            Err(error) => {
                let mut outcome = classify_transport_error(&error);
                outcome.class = OutcomeClass::Ambiguous;
                outcome.http_status = Some(status);
                return Err(outcome);
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The plain HTTP reading of a status line (DESIGN.md's table): 2xx
/// success, 429 rate limited, 408 and 5xx retryable, the rest permanent.
/// Connectors start from it and decide the rest themselves.
pub(crate) fn status_class(status: u16) -> OutcomeClass {
    match status {
        200..=299 => OutcomeClass::Success,
        429 => OutcomeClass::RateLimited,
        408 | 500..=599 => OutcomeClass::Retryable,
        _ => OutcomeClass::Permanent,
    }
}

/// `text` cut to `chars_max` characters, ending with `…` when cut.
pub(crate) fn cut_chars(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The first `EXCERPT_BYTES_MAX` bytes, cut at a character boundary.
pub(crate) fn excerpt_of(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let mut text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES_MAX)]).into_owned();
    while text.len() > EXCERPT_BYTES_MAX {
        text.pop();
    }
    Some(text)
}

pub(crate) fn classify_transport_error(error: &reqwest::Error) -> Outcome {
    // A failed connect means the request never left: safe to retry. Anything
    // after that (timeout, reset mid-response) may have been processed.
    let (class, what) = if error.is_connect() {
        (OutcomeClass::Retryable, "could not connect")
    } else if error.is_timeout() {
        (
            OutcomeClass::Ambiguous,
            "timed out after the request was sent",
        )
    } else if error.is_builder() {
        (OutcomeClass::Permanent, "could not build the request")
    } else {
        (
            OutcomeClass::Ambiguous,
            "the connection failed after the request was sent",
        )
    };
    let mut outcome = Outcome::new(class);
    let mut text = error_chain(error);
    // The URL may itself be a credential (many webhook URLs are): it never
    // goes into an attempt's error, the API or the log.
    if let Some(url) = error.url() {
        text = text
            .replace(&format!(" for url ({url})"), "")
            .replace(url.as_str(), "<destination url>");
    }
    outcome.error = Some(format!("{what}: {text}"));
    outcome
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads at most `EXCERPT_BYTES_MAX` bytes of the body, never past
/// `deadline`; the status already decided the outcome.
pub(crate) async fn read_excerpt(
    mut response: reqwest::Response,
    deadline: Instant,
) -> Option<String> {
    let mut excerpt = Vec::new();
    while excerpt.len() < EXCERPT_BYTES_MAX {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => excerpt.extend_from_slice(&bytes),
            _ => break,
        }
    }
    if excerpt.is_empty() {
        return None;
    }
    excerpt.truncate(EXCERPT_BYTES_MAX);
    let mut text = String::from_utf8_lossy(&excerpt).into_owned();
    // Lossy decoding may have split a character at the cut; keep it valid.
    while text.len() > EXCERPT_BYTES_MAX {
        text.pop();
    }
    Some(text)
}
