//! The delivery in flight: what a worker holds while its lease lasts, and
//! what a connector turns into a request. The store builds it from its rows;
//! the connectors take it without knowing the store.

use crate::domain::{DeliveryProgress, Message};

/// A delivery handed to a worker. Its lease is held until the worker's
/// `DeliveryUpdate` (in the store) is committed (or the process restarts).
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub delivery_id: i64,
    pub broadcast_id: String,
    pub destination: String,
    pub idempotency_key: String,
    /// `Sending` (an attempt is due) or `Verifying` (a read-back is due).
    pub progress: DeliveryProgress,
    pub message: Message,
    pub broadcast_created_at_ms: i64,
    /// Why the previous attempt did not confirm, if it did not.
    pub last_error: Option<String>,
    /// The fencing token of this lease; the outcome must carry it back.
    pub lease_epoch: i64,
    /// What the first delivery of this thread to this destination created
    /// there (Slack `ts`, Jira issue key, Discord thread id, PagerDuty
    /// dedup key): later messages of the thread attach to it. `None` for
    /// the thread's first message, or when that one never landed.
    pub thread_ref: Option<String>,
    /// What an earlier attempt of this delivery recorded it created.
    pub remote_ref: Option<String>,
}
