use std::sync::Arc;

use rand::Rng;

use super::details::MessageDetails;

/// What a message without details shows: no labels, links or fields.
static NO_DETAILS: MessageDetails = MessageDetails {
    labels: std::collections::BTreeMap::new(),
    links: Vec::new(),
    fields: Vec::new(),
    source: None,
    summary: None,
};

/// A title longer than this many characters is refused.
pub const TITLE_CHARS_MAX: usize = 300;
/// A body longer than this many bytes is refused.
pub const BODY_BYTES_MAX: usize = 16 * 1024;
/// A thread key longer than this many characters is refused.
pub const THREAD_CHARS_MAX: usize = 128;
/// One broadcast targets at most this many destinations.
pub const DESTINATIONS_PER_BROADCAST_MAX: usize = 64;
/// Destination names are at most this long.
const DESTINATION_NAME_CHARS_MAX: usize = 63;

/// Why a text holding U+0000 is refused: PostgreSQL cannot store it, and
/// both stores must take the same input.
pub const NUL_REFUSED: &str = "must not contain the character U+0000 (NUL)";

/// Input a user can get wrong: names the field and says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> InvalidInput {
        InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How urgent the incident is. P1 is the most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    P1,
    P2,
    P3,
    P4,
    P5,
}

impl Severity {
    /// Every rank, most urgent first.
    pub const RANKS: [u8; 5] = [1, 2, 3, 4, 5];

    /// 1 for P1 (most urgent) to 5 for P5.
    pub fn rank(self) -> u8 {
        match self {
            Severity::P1 => 1,
            Severity::P2 => 2,
            Severity::P3 => 3,
            Severity::P4 => 4,
            Severity::P5 => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::P1 => "P1",
            Severity::P2 => "P2",
            Severity::P3 => "P3",
            Severity::P4 => "P4",
            Severity::P5 => "P5",
        }
    }

    /// Accepts `P1`..`P5` in any case and the common words for them.
    pub fn parse(text: &str) -> Result<Severity, InvalidInput> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "p1" | "critical" => Severity::P1,
            "p2" | "high" | "error" => Severity::P2,
            "p3" | "medium" | "warning" => Severity::P3,
            "p4" | "low" => Severity::P4,
            "p5" | "info" => Severity::P5,
            _ => {
                return Err(InvalidInput::new(
                    "severity",
                    format!(
                    "unknown severity {text:?}: use P1..P5 (or critical, high, warning, low, info)"
                ),
                ))
            }
        })
    }
}

/// What the user asked to tell the destinations. Only constructed through
/// [`Message::new`], so a `Message` is always within the limits.
///
/// The texts are shared, not copied, between clones: every delivery handed
/// to a worker carries the message of its broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    title: Arc<str>,
    body: Arc<str>,
    severity: Severity,
    thread: Option<Arc<str>>,
    /// This broadcast resolves the incident its thread opened.
    resolved: bool,
    /// Labels, links, fields, source, summary; `None` when all are empty
    /// (no allocation for the plain messages most deliveries carry).
    details: Option<Arc<MessageDetails>>,
}

impl Message {
    pub fn new(
        title: &str,
        body: &str,
        severity: Severity,
        thread: Option<&str>,
    ) -> Result<Message, InvalidInput> {
        let title = title.trim();
        if title.is_empty() {
            return Err(InvalidInput::new("title", "must not be empty"));
        }
        if title.chars().count() > TITLE_CHARS_MAX {
            return Err(InvalidInput::new(
                "title",
                format!("longer than {TITLE_CHARS_MAX} characters"),
            ));
        }
        if title.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                "title",
                "must be one line without control characters",
            ));
        }
        if body.len() > BODY_BYTES_MAX {
            return Err(InvalidInput::new(
                "body",
                format!(
                    "{} bytes is over the limit of {BODY_BYTES_MAX} bytes",
                    body.len()
                ),
            ));
        }
        // Title and thread refuse every control character; the body keeps
        // newlines and tabs, but no text column of PostgreSQL can hold NUL.
        if body.contains('\0') {
            return Err(InvalidInput::new("body", NUL_REFUSED));
        }
        let thread = match thread.map(str::trim) {
            None | Some("") => None,
            Some(thread) if thread.chars().count() > THREAD_CHARS_MAX => {
                return Err(InvalidInput::new(
                    "thread",
                    format!("longer than {THREAD_CHARS_MAX} characters"),
                ))
            }
            Some(thread) if thread.chars().any(char::is_control) => {
                return Err(InvalidInput::new(
                    "thread",
                    "must not contain control characters",
                ))
            }
            Some(thread) => Some(Arc::from(thread)),
        };
        Ok(Message {
            title: Arc::from(title),
            body: Arc::from(body),
            severity,
            thread,
            resolved: false,
            details: None,
        })
    }

    /// Marks the message as the resolve of its thread's incident. Only a
    /// threaded message can resolve: the thread names what is resolved.
    pub fn resolving(mut self, resolved: bool) -> Result<Message, InvalidInput> {
        if resolved && self.thread.is_none() {
            return Err(InvalidInput::new(
                "resolved",
                "needs a thread: a resolve closes the incident its thread opened",
            ));
        }
        self.resolved = resolved;
        Ok(self)
    }

    /// Adds labels, links, fields, source and summary, checked against
    /// their limits (see `details.rs`).
    pub fn with_details(mut self, details: MessageDetails) -> Result<Message, InvalidInput> {
        let details = details.validated()?;
        self.details = (!details.is_empty()).then(|| Arc::new(details));
        Ok(self)
    }

    pub fn details(&self) -> &MessageDetails {
        self.details.as_deref().unwrap_or(&NO_DETAILS)
    }

    pub fn title(&self) -> &str {
        &self.title
    }
    pub fn body(&self) -> &str {
        &self.body
    }
    pub fn severity(&self) -> Severity {
        self.severity
    }
    pub fn thread(&self) -> Option<&str> {
        self.thread.as_deref()
    }
    pub fn resolved(&self) -> bool {
        self.resolved
    }
}

/// Destination names appear in URLs, idempotency keys and logs, so they are
/// kept to lowercase letters, digits, `-` and `_`.
pub fn validate_destination_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid_chars || !starts_well || name.len() > DESTINATION_NAME_CHARS_MAX {
        return Err(format!(
            "destination name {name:?} must be 1 to {DESTINATION_NAME_CHARS_MAX} characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32.
/// Ids sort by creation time, which keeps the broadcasts table append-only.
pub fn new_broadcast_id(now_ms: i64, rng: &mut impl Rng) -> String {
    let value: u128 = ((now_ms.max(0) as u128 & 0xFFFF_FFFF_FFFF) << 80)
        | (rng.random::<u128>() & ((1u128 << 80) - 1));
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 0x1F) as usize] as char)
        .collect()
}

/// A broadcast id's length: a ULID.
pub const BROADCAST_ID_CHARS: usize = 26;
/// The fewest characters of a broadcast id an operator may type to name it
/// by its start, as with git's commit ids: fewer would match most of a day.
pub const BROADCAST_ID_PREFIX_CHARS_MIN: usize = 4;

/// What an id typed by an operator names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BroadcastIdQuery {
    /// A whole id (upper case, as ids are written).
    Whole(String),
    /// The start of an id, at least `BROADCAST_ID_PREFIX_CHARS_MIN` long.
    Prefix(String),
    /// The start of an id, too short to name one.
    TooShort,
    /// No broadcast id looks like this: it matches nothing.
    Impossible,
}

impl BroadcastIdQuery {
    /// ULIDs are case-insensitive: `01jd7q` names `01JD7Q...`.
    pub fn parse(text: &str) -> BroadcastIdQuery {
        let upper = text.trim().to_ascii_uppercase();
        let valid = !upper.is_empty()
            && upper.len() <= BROADCAST_ID_CHARS
            && upper.bytes().all(|b| CROCKFORD.contains(&b));
        if !valid {
            BroadcastIdQuery::Impossible
        } else if upper.len() == BROADCAST_ID_CHARS {
            BroadcastIdQuery::Whole(upper)
        } else if upper.len() < BROADCAST_ID_PREFIX_CHARS_MIN {
            BroadcastIdQuery::TooShort
        } else {
            BroadcastIdQuery::Prefix(upper)
        }
    }
}

/// The first and the last id that start with `prefix` (both inclusive):
/// ids have one length and one alphabet, so this range holds exactly the
/// ids with that start, in any collation that orders digits before
/// letters, and an index on the id answers it.
pub fn broadcast_id_range(prefix: &str) -> (String, String) {
    let fill = BROADCAST_ID_CHARS.saturating_sub(prefix.len());
    (
        format!("{prefix}{}", "0".repeat(fill)),
        format!("{prefix}{}", "Z".repeat(fill)),
    )
}

/// The one idempotency key of a delivery, derived before its first attempt
/// and never changed. Contains no `.` (Standard Webhooks signs `id.ts.body`).
pub fn delivery_idempotency_key(broadcast_id: &str, destination: &str) -> String {
    format!("{broadcast_id}-{destination}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn broadcast_ids_sort_by_time() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = new_broadcast_id(1_700_000_000_000, &mut rng);
        let b = new_broadcast_id(1_700_000_000_001, &mut rng);
        assert_eq!(a.len(), 26);
        assert!(a < b);
    }

    #[test]
    fn ids_typed_by_operators() {
        use BroadcastIdQuery as Q;
        let mut rng = StdRng::seed_from_u64(2);
        let id = new_broadcast_id(1_700_000_000_000, &mut rng);
        assert_eq!(Q::parse(&id), Q::Whole(id.clone()));
        assert_eq!(Q::parse(&id.to_lowercase()), Q::Whole(id.clone()));
        assert_eq!(Q::parse(&id[..4]), Q::Prefix(id[..4].to_owned()));
        assert_eq!(Q::parse(&id[..3]), Q::TooShort);
        for impossible in ["", "nope", "01JD-", &format!("{id}0")] {
            assert_eq!(Q::parse(impossible), Q::Impossible, "{impossible}");
        }
        let (low, high) = broadcast_id_range(&id[..6]);
        assert!(low <= id && id <= high, "{low} {id} {high}");
        assert_eq!((low.len(), high.len()), (26, 26));
        let other = new_broadcast_id(1_800_000_000_000, &mut rng);
        assert!(!(low <= other && other <= high));
    }

    #[test]
    fn rejects_bad_messages_with_the_field_named() {
        let err = Message::new("  ", "", Severity::P1, None).unwrap_err();
        assert_eq!(err.field, "title");
        let err =
            Message::new("t", &"x".repeat(BODY_BYTES_MAX + 1), Severity::P1, None).unwrap_err();
        assert_eq!(err.field, "body");
        let err = Message::new("t", "", Severity::P1, Some(&"k".repeat(200))).unwrap_err();
        assert_eq!(err.field, "thread");
        assert_eq!(Severity::parse("bogus").unwrap_err().field, "severity");
        assert_eq!(Severity::parse("critical").unwrap(), Severity::P1);
        let unthreaded = Message::new("t", "", Severity::P1, None).unwrap();
        assert_eq!(unthreaded.resolving(true).unwrap_err().field, "resolved");
        for (title, body, thread, field) in [
            ("a\0b", "", None, "title"),
            ("t", "a\0b", None, "body"),
            ("t", "", Some("INC\0-1"), "thread"),
        ] {
            let err = Message::new(title, body, Severity::P1, thread).unwrap_err();
            assert_eq!(err.field, field);
        }
        let threaded = Message::new("t", "", Severity::P1, Some("INC-1")).unwrap();
        assert!(threaded.resolving(true).unwrap().resolved());
    }

    #[test]
    fn destination_names() {
        assert!(validate_destination_name("slack-ops_1").is_ok());
        assert!(validate_destination_name("").is_err());
        assert!(validate_destination_name("Slack").is_err());
        assert!(validate_destination_name("-x").is_err());
        assert!(validate_destination_name("a.b").is_err());
    }
}
