//! The schema: the migrations and running them once per database, under an
//! advisory lock so that nodes starting together do not race.

use super::*;

/// Migrations, applied in order; `herald_schema` has one row per migration
/// applied. Never edit one that has shipped; append.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE broadcasts (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    body          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    thread_key    TEXT,
    resolved      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX broadcasts_thread ON broadcasts (thread_key, id) WHERE thread_key IS NOT NULL;

CREATE TABLE deliveries (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    broadcast_id        TEXT NOT NULL REFERENCES broadcasts(id),
    destination         TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL UNIQUE,
    thread_key          TEXT,
    priority            SMALLINT NOT NULL,
    state               TEXT NOT NULL,
    attempts_made       INTEGER NOT NULL,
    attempts_max        INTEGER NOT NULL,
    due_at_ms           BIGINT,
    deadline_at_ms      BIGINT,
    lease_owner         TEXT,
    lease_expires_at_ms BIGINT,
    lease_epoch         BIGINT NOT NULL DEFAULT 0,
    possible_duplicate  BOOLEAN NOT NULL DEFAULT FALSE,
    remote_ref          TEXT,
    last_error          TEXT,
    last_http_status    INTEGER,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    UNIQUE (broadcast_id, destination),
    CHECK ((lease_owner IS NULL) = (lease_expires_at_ms IS NULL))
);
-- Due work per destination, most urgent first, then due time.
CREATE INDEX deliveries_due ON deliveries (destination, priority, due_at_ms)
    WHERE due_at_ms IS NOT NULL AND lease_owner IS NULL;
-- Leases, by expiry, for the takeover.
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at_ms) WHERE lease_owner IS NOT NULL;
-- Per-thread order on each destination.
CREATE INDEX deliveries_thread ON deliveries (destination, thread_key, id) WHERE thread_key IS NOT NULL;
CREATE INDEX deliveries_unfinished ON deliveries (destination)
    WHERE state NOT IN ('confirmed','failed','dead','cancelled');
CREATE INDEX deliveries_broadcast ON deliveries (broadcast_id, id);

CREATE TABLE attempts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id    BIGINT NOT NULL REFERENCES deliveries(id),
    number         INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    outcome        TEXT NOT NULL,
    http_status    INTEGER,
    excerpt        TEXT,
    error          TEXT,
    node           TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE ingest_keys (
    caller        TEXT NOT NULL,
    key           TEXT NOT NULL,
    body_sha256   TEXT NOT NULL,
    broadcast_id  TEXT NOT NULL REFERENCES broadcasts(id),
    response      TEXT,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX ingest_keys_expiry ON ingest_keys (expires_at_ms);

-- What every node must agree on about a destination.
CREATE TABLE destination_state (
    destination      TEXT PRIMARY KEY,
    paused_until_ms  BIGINT NOT NULL DEFAULT 0,
    circuit          TEXT NOT NULL DEFAULT 'closed',
    -- open: until when; half_open: when the probe's permission lapses.
    circuit_until_ms BIGINT NOT NULL DEFAULT 0,
    failures_in_row  INTEGER NOT NULL DEFAULT 0,
    tokens           DOUBLE PRECISION,
    tokens_at_ms     BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT
);
"#,
    // Less to write per delivery: a state change is never a HOT update (it
    // changes indexed columns), so each one adds an entry to every index.
    // The idempotency key is derived from broadcast id and destination,
    // unique together, and that unique index also serves lookups by
    // broadcast; neither the key's own unique index nor a second index by
    // broadcast is needed.
    r#"
ALTER TABLE deliveries DROP CONSTRAINT deliveries_idempotency_key_key;
DROP INDEX deliveries_broadcast;
"#,
    // The backlog report (`/metrics`, `/v1/destinations`) reads each
    // destination's oldest unfinished accept time from this index instead
    // of joining every unfinished delivery to its broadcast.
    r#"
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries (destination, created_at_ms)
    WHERE state NOT IN ('confirmed','failed','dead','cancelled');
"#,
    // Operators' pauses, shared by every node: a claim and a hand-off at
    // insert check `held_until_ms` beside the 429 pause. i64::MAX: until
    // resumed.
    r#"
ALTER TABLE destination_state
    ADD COLUMN held_until_ms BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN held_reason TEXT,
    ADD COLUMN held_by TEXT,
    ADD COLUMN held_at_ms BIGINT;
"#,
    // Retention deletes a broadcast's ingest keys with it (and the foreign
    // key's check on each deleted broadcast looks them up).
    r#"
CREATE INDEX ingest_keys_broadcast ON ingest_keys (broadcast_id);
"#,
    // A message's labels, links, fields, source and summary (one JSON
    // text, NULL when it has none) and the routes that picked its
    // destinations (a JSON array, NULL when the caller named them): both
    // written once with the broadcast, never changed.
    r#"
ALTER TABLE broadcasts ADD COLUMN details TEXT, ADD COLUMN routes TEXT;
"#,
    // Delivery objectives: one row per broadcast that has one. The partial
    // index holds undecided objectives only (the watcher's timer); the
    // decision is written once, by a conditional update under the row's
    // lock, in the transaction that inserts the escalation's broadcasts.
    r#"
CREATE TABLE objectives (
    broadcast_id            TEXT PRIMARY KEY,
    spec                    TEXT NOT NULL,
    deadline_ms             BIGINT NOT NULL,
    thread_key              TEXT,
    decision                TEXT,
    decided_at_ms           BIGINT,
    escalated_to            TEXT,
    fallback_broadcast_id   TEXT,
    meta_alert_broadcast_id TEXT,
    CHECK ((decision IS NULL) = (decided_at_ms IS NULL))
);
CREATE INDEX objectives_due ON objectives (deadline_ms) WHERE decision IS NULL;
CREATE INDEX objectives_escalated ON objectives (thread_key) WHERE decision = 'escalated';
"#,
    // No foreign keys on the two rows written per delivery. Each inserted
    // delivery checked its broadcast, and each attempt its delivery, by a
    // lookup that also locked the parent row (`FOR KEY SHARE`: a WAL record
    // and a dirtied page each): about a tenth of PostgreSQL's CPU per
    // delivery in a burst. herald writes a delivery in its broadcast's
    // transaction and an attempt only under its delivery's lease, and
    // retention deletes attempts, then deliveries, then broadcasts (the
    // store suite, tests/it/store.rs, counts the rows it leaves).
    r#"
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_broadcast_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_delivery_id_fkey;
"#,
];

/// Runs migrations on the database at `url`; returns how many were applied.
pub async fn migrate(url: &str) -> Result<usize, StoreError> {
    let mut client = connect(&connection_config(url, "migrate")?).await?;
    migrate_with(&mut client).await
}

pub(super) async fn migrate_with(client: &mut Client) -> Result<usize, StoreError> {
    let known = MIGRATIONS.len() as i64;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_schema (
             version       INTEGER PRIMARY KEY,
             applied_at_ms BIGINT NOT NULL)",
    )
    .await?;
    let version: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::BIGINT FROM herald_schema",
            &[],
        )
        .await?
        .get(0);
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    let mut applied = 0;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO herald_schema (version, applied_at_ms) VALUES ($1, $2)",
            &[&(index as i32 + 1), &crate::clock::now_ms()],
        )
        .await?;
        tracing::info!(migration = index + 1, "applied schema migration");
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}
