/// The response excerpt stored with an attempt is cut to this many bytes.
pub const EXCERPT_BYTES_MAX: usize = 512;

/// What one attempt means for the delivery (DESIGN.md, "Outcome classes").
/// Each connector decides the class in one function; nothing else does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    /// The destination has the message.
    Success,
    /// It does not have it, and trying again may help (5xx, refused).
    Retryable,
    /// It asked us to slow down; the whole destination pauses.
    RateLimited,
    /// It may or may not have it (timeout after the request left).
    Ambiguous,
    /// It will never accept it (400, 401, 403, 404, bad config).
    Permanent,
}

impl OutcomeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Success => "success",
            OutcomeClass::Retryable => "retryable",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::Ambiguous => "ambiguous",
            OutcomeClass::Permanent => "permanent",
        }
    }

    pub fn parse(text: &str) -> Option<OutcomeClass> {
        Some(match text {
            "success" => OutcomeClass::Success,
            "retryable" => OutcomeClass::Retryable,
            "rate_limited" => OutcomeClass::RateLimited,
            "ambiguous" => OutcomeClass::Ambiguous,
            "permanent" => OutcomeClass::Permanent,
            _ => return None,
        })
    }
}

/// One attempt's result as a connector classified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub class: OutcomeClass,
    pub http_status: Option<u16>,
    /// The destination's Retry-After, when it sent one.
    pub retry_after_ms: Option<u64>,
    /// What went wrong, in words an operator can act on.
    pub error: Option<String>,
    /// The first `EXCERPT_BYTES_MAX` bytes of the response body.
    pub excerpt: Option<String>,
    /// What the destination created, for later messages of the thread to
    /// attach to: a Slack `ts`, a Jira issue key, a Discord thread id.
    pub remote_ref: Option<String>,
}

impl Outcome {
    pub fn new(class: OutcomeClass) -> Outcome {
        Outcome {
            class,
            http_status: None,
            retry_after_ms: None,
            error: None,
            excerpt: None,
            remote_ref: None,
        }
    }
}
