//! Durable state: broadcasts (intent), deliveries (state) and attempts (log).
//! Only this module speaks SQL. The [`Store`] trait is what the dispatcher
//! and the API use, so a PostgreSQL store can stand beside SQLite.

mod any;
pub mod postgres;
mod sqlite;

use std::future::Future;

use crate::domain::{
    DeliveryProgress, DeliveryState, Message, Objective, ObjectiveDecision, ObjectiveRecord,
    OutcomeClass, RetryPolicy,
};

pub use any::AnyStore;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;
pub(crate) use sqlite::{DELIVERY_TIMES_SQL, UNFINISHED_COUNT_SQL};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Not a `#[source]`: the message already holds the server's words,
    /// which the chain would print again.
    #[error("PostgreSQL error: {}", postgres::describe_error(.0))]
    Postgres(tokio_postgres::Error),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A bad PostgreSQL URL or TLS setting (`sslmode`, `sslrootcert`).
    #[error("the PostgreSQL URL is invalid: {0}")]
    InvalidUrl(String),
    #[error("the database holds a value herald cannot read: {0}")]
    Corrupt(String),
    #[error(
        "database schema version {found} is newer than this herald knows ({known}); upgrade herald"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error("{0}")]
    Locked(String),
    #[error("idempotency key {0:?} is already recorded")]
    IngestKeyTaken(String),
    #[error("broadcast id {0} already exists")]
    DuplicateBroadcast(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres(error)
    }
}

/// Whether the store's last commit went through, for `/readyz`: a signal
/// that costs nothing while commits succeed. While one fails (a full disk,
/// a lost database), the readiness check probes with a small commit of its
/// own, so it turns ready again without waiting for traffic.
#[derive(Debug, Default)]
pub struct CommitHealth {
    failing_now: std::sync::atomic::AtomicBool,
    reason: std::sync::Mutex<Option<String>>,
}

impl CommitHealth {
    pub fn succeeded(&self) {
        use std::sync::atomic::Ordering;
        if self.failing_now.swap(false, Ordering::AcqRel) {
            *self.reason.lock().expect("commit health poisoned") = None;
            tracing::info!("the database commits again");
        }
    }

    pub fn failed(&self, error: &StoreError) {
        use std::sync::atomic::Ordering;
        *self.reason.lock().expect("commit health poisoned") = Some(error.to_string());
        if !self.failing_now.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, "the database cannot commit: not ready until it can");
        }
    }

    /// Why the last commit failed; None while commits succeed.
    pub fn failing(&self) -> Option<String> {
        use std::sync::atomic::Ordering;
        if !self.failing_now.load(Ordering::Acquire) {
            return None;
        }
        self.reason.lock().expect("commit health poisoned").clone()
    }
}

/// A broadcast to be written once, with one delivery per destination.
#[derive(Clone, Debug)]
pub struct NewBroadcast {
    pub id: String,
    pub message: Message,
    pub created_at_ms: i64,
    /// The routes that picked the destinations (in match order); empty
    /// when the caller named the destinations.
    pub routes: Vec<String>,
    pub deliveries: Vec<NewDelivery>,
    /// The caller's `Idempotency-Key`, recorded in the same transaction.
    pub ingest_key: Option<IngestKey>,
    /// A delivery objective: its deadline is stored in the same transaction
    /// (`created_at_ms + within_ms`), an indexed timer for the watcher.
    pub objective: Option<Objective>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestKey {
    /// The token's name: keys are scoped per caller.
    pub caller: String,
    pub key: String,
    /// SHA-256 of the request body, to tell a replay from a different request.
    pub body_sha256: String,
    /// Keys older than this instant are forgotten.
    pub expires_before_ms: i64,
}

/// A key seen before: which broadcast it created, and the answer then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestRecord {
    pub broadcast_id: String,
    pub body_sha256: String,
    pub response: Option<String>,
}

/// `GET /v1/broadcasts` filters; derived status is computed in the query.
#[derive(Clone, Debug, Default)]
pub struct BroadcastFilter {
    pub status: Option<crate::domain::BroadcastStatus>,
    /// Broadcasts with at least one delivery in this state.
    pub delivery_state: Option<DeliveryState>,
    pub destination: Option<String>,
    pub thread: Option<String>,
    pub created_since_ms: Option<i64>,
    /// Only broadcasts older than this id (the cursor), newest first.
    pub before_id: Option<String>,
    pub limit: usize,
}

/// An operator's action on some or all deliveries of a broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Failed and dead deliveries go back to pending, same key.
    Retry,
    /// Unfinished deliveries are cancelled.
    Cancel,
}

/// What one retention batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionBatch {
    /// Broadcasts deleted, with their deliveries, attempts and ingest keys.
    pub deleted: u64,
    /// Old broadcasts looked at (finished when chosen); fewer than the
    /// limit means the pass has reached the cutoff.
    pub examined: usize,
    /// The last id examined: the next batch of the pass starts after it.
    pub last_id: Option<String>,
}

/// The smallest broadcast id (a ULID, see `new_broadcast_id`) made at
/// `ms`: every broadcast created before `ms` has a smaller id, so a
/// retention pass reads the primary key up to it and no further.
pub fn first_broadcast_id_at(ms: i64) -> String {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value: u128 = (ms.max(0) as u128 & 0xFFFF_FFFF_FFFF) << 80;
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 0x1F) as usize] as char)
        .collect()
}

/// One destination's backlog, as the store sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationBacklog {
    pub destination: String,
    /// Unfinished deliveries.
    pub unfinished: u64,
    /// When the oldest unfinished delivery's broadcast was accepted.
    pub oldest_unfinished_since_ms: Option<i64>,
    /// The earliest due time among deliveries not in flight.
    pub oldest_due_at_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub destination: String,
    pub policy: RetryPolicy,
    /// A worker slot is already reserved: lease the delivery in the same
    /// transaction (state `sending`), so its first attempt needs no claim.
    /// Ignored when the delivery must wait behind its thread.
    pub lease_now: bool,
}

/// What was written for each destination of a new broadcast.
#[derive(Clone, Debug)]
pub struct InsertedDelivery {
    pub destination: String,
    pub idempotency_key: String,
    pub progress: DeliveryProgress,
    /// Leased at insert (`lease_now`): hand it straight to a worker.
    pub leased: Option<ClaimedDelivery>,
}

/// The delivery in flight is a domain type: connectors take it without
/// knowing the store.
pub use crate::domain::ClaimedDelivery;

#[derive(Clone, Debug, Default)]
pub struct Claim {
    pub deliveries: Vec<ClaimedDelivery>,
    /// Due deliveries found past their deadline: now dead, not handed out.
    pub expired: Vec<ClaimedDelivery>,
    /// When the earliest delivery of this destination left unclaimed is due.
    /// `None` after a full claim (as many as asked for): there may be more
    /// due now, and the caller claims again at once.
    pub next_due_at_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptKind {
    /// The message was sent.
    Send,
    /// The destination was read back after an ambiguous outcome.
    Verify,
}

impl AttemptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Send => "send",
            AttemptKind::Verify => "verify",
        }
    }
}

/// One row of the attempt log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The delivery's `attempts_made` when this ran (sends count, reads not).
    pub number: u32,
    pub kind: AttemptKind,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// `success`, `retryable`, ... for sends; `found`, `absent`, `unknown`
    /// for verifications; `interrupted` when herald stopped mid-attempt.
    pub outcome: String,
    pub http_status: Option<u16>,
    pub excerpt: Option<String>,
    pub error: Option<String>,
}

impl AttemptRecord {
    pub fn outcome_class(&self) -> Option<OutcomeClass> {
        OutcomeClass::parse(&self.outcome)
    }
}

/// A worker's result: the next progress, committed only if the delivery is
/// still in `expected_state` under the same lease (an operator cancel, or a
/// newer lease after a restart, wins).
#[derive(Clone, Debug)]
pub struct DeliveryUpdate {
    pub delivery_id: i64,
    pub lease_epoch: i64,
    pub expected_state: DeliveryState,
    pub progress: DeliveryProgress,
    pub last_error: Option<String>,
    pub attempt: AttemptRecord,
    pub now_ms: i64,
    /// What the attempt created at the destination; kept when `None`.
    pub remote_ref: Option<String>,
    /// A 429 asked to pause the whole destination this long (a shared store
    /// makes every node honour it).
    pub pause_destination_ms: Option<u64>,
    /// The delivery's message belongs to a thread. Only then can its final
    /// outcome make the thread's next message pending; without a thread the
    /// stores skip that lookup.
    pub in_thread: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateResult {
    Applied {
        /// A waiting delivery of the same thread became pending.
        promoted_next_in_thread: bool,
    },
    /// The delivery had moved on (cancelled, or leased again); only the
    /// attempt was logged.
    Stale,
}

#[derive(Clone, Debug)]
pub struct BroadcastView {
    pub id: String,
    pub message: Message,
    pub created_at_ms: i64,
    /// As recorded at insert (`NewBroadcast::routes`).
    pub routes: Vec<String>,
    pub deliveries: Vec<DeliveryView>,
    /// The objective, its deadline and its decision, if it has one.
    pub objective: Option<ObjectiveRecord>,
}

#[derive(Clone, Debug)]
pub struct DeliveryView {
    pub destination: String,
    pub idempotency_key: String,
    pub progress: DeliveryProgress,
    pub last_error: Option<String>,
    pub last_http_status: Option<u16>,
    pub updated_at_ms: i64,
    /// What the delivery created at the destination (Slack `ts`, Jira key).
    pub remote_ref: Option<String>,
    pub attempts: Vec<AttemptRecord>,
}

/// Objectives whose deadline has passed with no decision yet, and when
/// the next undecided one falls due.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectivesDue {
    /// Broadcast ids, earliest deadline first.
    pub due: Vec<String>,
    /// The earliest deadline still ahead (after `now_ms`), if any.
    pub next_deadline_ms: Option<i64>,
}

/// The decision on one objective whose deadline passed, committed at most
/// once: only if no decision is recorded yet, and (when escalated) in the
/// same transaction as its child broadcasts.
#[derive(Clone, Debug)]
pub struct ObjectiveVerdict {
    pub broadcast_id: String,
    pub decided_at_ms: i64,
    pub decision: ObjectiveDecision,
    /// The fallback destinations the message goes to (escalated only).
    pub escalated_to: Vec<String>,
    /// The message to `escalated_to`: ordinary deliveries of a child
    /// broadcast, with their own idempotency keys.
    pub fallback: Option<NewBroadcast>,
    /// The meta-alert to `on_escalation`, a child broadcast too.
    pub meta_alert: Option<NewBroadcast>,
}

/// What the verdict's commit inserted: each child broadcast's id and
/// deliveries. `None` from `decide_objective`: the objective was already
/// decided (by another process, node or task), nothing was written.
pub type ObjectiveCommitted = Vec<(String, Vec<InsertedDelivery>)>;

/// What a restart found and resumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Deliveries that were `sending` and now go through `verifying`.
    pub interrupted: u64,
    /// Leases released (verifications that were in progress).
    pub released: u64,
}

/// What herald keeps durably, and the contract both stores keep (SQLite in
/// `sqlite/`, PostgreSQL in `postgres/`; `tests/it/store.rs` runs one
/// suite on each):
///
/// - A write returns only once its transaction is committed and durable;
///   a failed write changed nothing.
/// - A claimed delivery is leased to its claimer: no other claim returns it
///   until its outcome is recorded or recovery (on PostgreSQL also the
///   takeover of an expired lease) releases it. An outcome for a delivery
///   that has moved on since its claim changes only the attempt log
///   (`UpdateResult::Stale`).
/// - The store applies transitions the domain decided
///   (`DeliveryProgress`); it decides none of its own, and it knows nothing
///   of the dispatcher or the configuration file.
/// - Each method below says what it commits and what it returns.
pub trait Store: Send + Sync + 'static {
    /// Commits the broadcast and all its deliveries in one transaction;
    /// returns only after the commit is durable.
    fn insert_broadcast(
        &self,
        new: NewBroadcast,
    ) -> impl Future<Output = Result<Vec<InsertedDelivery>, StoreError>> + Send;

    /// Leases up to `limit` due deliveries of one destination: pending and
    /// retrying ones become `sending` (durably, before any request leaves),
    /// verifying ones stay `verifying` under the lease.
    fn claim_due(
        &self,
        destination: &str,
        limit: usize,
        now_ms: i64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Leases at most one due P1 delivery of one destination, for the slot
    /// reserved for P1s when every other slot is busy.
    fn claim_due_urgent(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records an attempt and the delivery's next state.
    fn update_delivery(
        &self,
        update: DeliveryUpdate,
    ) -> impl Future<Output = Result<UpdateResult, StoreError>> + Send;

    /// Run once at start, before any claim: every delivery left `sending` by
    /// a previous process goes to `verifying`; every lease is released.
    fn recover(&self, now_ms: i64) -> impl Future<Output = Result<Recovery, StoreError>> + Send;

    fn broadcast(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<BroadcastView>, StoreError>> + Send;

    /// Destinations that have deliveries due at some time, for waking their
    /// workers at start.
    fn destinations_with_work(
        &self,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A live ingest key of this caller, if any.
    fn ingest_record(
        &self,
        caller: &str,
        key: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<IngestRecord>, StoreError>> + Send;

    /// Keeps the first answer of a keyed request, for replays.
    fn save_ingest_response(
        &self,
        caller: &str,
        key: &str,
        response: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets ingest keys that expired before `now_ms`.
    fn purge_ingest_keys(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    fn list_broadcasts(
        &self,
        filter: BroadcastFilter,
    ) -> impl Future<Output = Result<Vec<BroadcastView>, StoreError>> + Send;

    /// Up to `limit` ids that start with `prefix` (upper case, as ids are
    /// written), in id order: an operator may type only the start of an id.
    fn broadcast_ids_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Applies an operator action to the named destinations' deliveries (all
    /// when `destinations` is empty). `None` when the broadcast does not
    /// exist. Deliveries the action does not apply to are left as they are,
    /// so the action is idempotent.
    fn operator_action(
        &self,
        broadcast_id: &str,
        action: OperatorAction,
        destinations: Vec<String>,
        policies: Vec<(String, RetryPolicy)>,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<Vec<String>>, StoreError>> + Send;

    fn backlog(&self) -> impl Future<Output = Result<Vec<DestinationBacklog>, StoreError>> + Send;

    /// Retention: deletes at most `limit` broadcasts created before
    /// `before_ms` whose every delivery is final, with their deliveries,
    /// attempts and ingest keys, in one short transaction. Looks at ids
    /// after `after_id` only, oldest first. A broadcast with an unfinished
    /// delivery is never deleted, however old.
    fn delete_finished_broadcasts(
        &self,
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<RetentionBatch, StoreError>> + Send;

    /// Broadcasts in the database, from counts the store keeps (no scan).
    fn stored_broadcasts(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Whether the store can commit, for readiness: a cheap round trip
    /// while commits succeed, a small commit while they fail.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records an operator's pause of a destination (replacing any), for
    /// every node and across restarts.
    fn pause_destination(
        &self,
        pause: DestinationPause,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends a destination's pause; false when none was in force at `now_ms`.
    fn resume_destination(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The operators' pauses in force at `now_ms`.
    fn destination_pauses(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<DestinationPause>, StoreError>> + Send;

    /// Up to `limit` objectives past their deadline at `now_ms` and not yet
    /// decided, and the next deadline: one lookup of an index that holds
    /// undecided objectives only.
    fn objectives_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<ObjectivesDue, StoreError>> + Send;

    /// Records the verdict and inserts its child broadcasts in one
    /// transaction, only if the objective has no decision yet (PostgreSQL:
    /// a conditional update under the row's lock; SQLite: the writer's
    /// transaction). `None`: decided before, nothing written.
    fn decide_objective(
        &self,
        verdict: ObjectiveVerdict,
    ) -> impl Future<Output = Result<Option<ObjectiveCommitted>, StoreError>> + Send;

    /// The fallback destinations escalated to by broadcasts of `thread`, each
    /// once, so the thread's resolve reaches them too.
    fn escalated_destinations(
        &self,
        thread: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A reload changed the configured destinations (the PostgreSQL store
    /// keeps their limits for the shared guard).
    fn destinations_changed(&self, _destinations: Vec<(String, crate::domain::Isolation)>) {}
}

/// An operator's pause of a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationPause {
    pub destination: String,
    /// `PAUSED_UNTIL_RESUMED_MS` when open-ended.
    pub until_ms: i64,
    pub reason: String,
    pub paused_by: String,
    pub paused_at_ms: i64,
}

/// The `until_ms` of a pause that lasts until an operator resumes it.
pub const PAUSED_UNTIL_RESUMED_MS: i64 = i64::MAX;

/// A message's details as the stores keep them: JSON, `None` when empty.
fn details_json(message: &Message) -> Option<String> {
    let details = message.details();
    (!details.is_empty()).then(|| serde_json::to_string(details).expect("details serialise"))
}

/// The stored details (JSON) added to a message read back; checked again,
/// as the message's other texts are.
fn with_stored_details(message: Message, details: Option<&str>) -> Result<Message, StoreError> {
    let Some(json) = details else {
        return Ok(message);
    };
    serde_json::from_str::<crate::domain::MessageDetails>(json)
        .map_err(|e| e.to_string())
        .and_then(|details| message.with_details(details).map_err(|e| e.to_string()))
        .map_err(|e| StoreError::Corrupt(format!("stored message details are invalid: {e}")))
}

/// Matched routes as the stores keep them: a JSON array, `None` when empty.
fn routes_json(routes: &[String]) -> Option<String> {
    (!routes.is_empty()).then(|| serde_json::to_string(routes).expect("names serialise"))
}

fn routes_from_json(routes: Option<&str>) -> Result<Vec<String>, StoreError> {
    routes
        .map(serde_json::from_str)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| StoreError::Corrupt(format!("stored routes are invalid: {e}")))
}

/// An objective as the stores keep it (JSON), for the insert.
fn objective_json(objective: &Objective) -> String {
    serde_json::to_string(objective).expect("objective serialises")
}

/// The columns of a stored objective, decoded and checked.
struct ObjectiveColumns {
    spec: String,
    deadline_ms: i64,
    decision: Option<String>,
    decided_at_ms: Option<i64>,
    escalated_to: Option<String>,
    fallback_broadcast_id: Option<String>,
    meta_alert_broadcast_id: Option<String>,
}

impl ObjectiveColumns {
    fn record(self) -> Result<ObjectiveRecord, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored objective: {what}"));
        let objective: Objective =
            serde_json::from_str(&self.spec).map_err(|e| corrupt(&e.to_string()))?;
        let decision = self
            .decision
            .map(|d| ObjectiveDecision::parse(&d).ok_or_else(|| corrupt("unknown decision")))
            .transpose()?;
        Ok(ObjectiveRecord {
            objective,
            deadline_ms: self.deadline_ms,
            decision,
            decided_at_ms: self.decided_at_ms,
            escalated_to: routes_from_json(self.escalated_to.as_deref())?,
            fallback_broadcast_id: self.fallback_broadcast_id,
            meta_alert_broadcast_id: self.meta_alert_broadcast_id,
        })
    }
}
