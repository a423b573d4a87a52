//! The rules of DESIGN.md as plain Rust: no IO, no clock, no randomness of
//! its own. `now_ms` (milliseconds since the Unix epoch) and the random source
//! are always passed in, so every rule here is testable with property tests.

mod backoff;
mod delivery;
mod details;
mod in_flight;
mod isolation;
mod message;
mod objective;
mod outcome;
mod time;

pub use backoff::{retry_delay_ms, RetryPolicy};
pub use delivery::{
    derive_status, BroadcastStatus, DeliveryProgress, DeliveryState, Event, Transition,
    TransitionError, Verification,
};
pub use details::{
    check_url, Field, Link, MessageDetails, FIELDS_MAX, FIELD_NAME_CHARS_MAX,
    FIELD_VALUE_CHARS_MAX, LABELS_MAX, LABEL_NAME_CHARS_MAX, LABEL_VALUE_CHARS_MAX, LINKS_MAX,
    LINK_TEXT_CHARS_MAX, LINK_URL_CHARS_MAX, SOURCE_CHARS_MAX, SUMMARY_CHARS_MAX,
};
pub use in_flight::ClaimedDelivery;
pub use isolation::{
    Isolation, DEFAULT_BREAKER_COOLDOWN_MS, DEFAULT_BREAKER_FAILURES, DEFAULT_LEASE_MS,
};
pub use message::{
    broadcast_id_range, BroadcastIdQuery, BROADCAST_ID_CHARS, BROADCAST_ID_PREFIX_CHARS_MIN,
};
pub use message::{
    delivery_idempotency_key, new_broadcast_id, validate_destination_name, InvalidInput, Message,
    Severity, BODY_BYTES_MAX, DESTINATIONS_PER_BROADCAST_MAX, NUL_REFUSED, THREAD_CHARS_MAX,
    TITLE_CHARS_MAX,
};
pub use objective::{
    format_duration_ms, met_at_ms, meta_alert_message, objective_status, parse_duration_ms,
    Objective, ObjectiveDecision, ObjectiveInput, ObjectiveRecord, ObjectiveStatus,
    META_ALERT_SOURCE, OBJECTIVE_WITHIN_MS_MAX, OBJECTIVE_WITHIN_MS_MIN,
};
pub use outcome::{Outcome, OutcomeClass, EXCERPT_BYTES_MAX};
pub(crate) use time::civil_from_days;
pub use time::format_rfc3339_ms;
