//! The schema: the migrations, applied in order at open, and the
//! connection's settings (WAL, `synchronous=FULL`, foreign keys).

use super::*;

/// Schema migrations, applied in order at open. `PRAGMA user_version` holds
/// how many have run. Never edit one that has shipped; append.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE broadcasts (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    body          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    thread_key    TEXT,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE deliveries (
    id                 INTEGER PRIMARY KEY,
    broadcast_id       TEXT NOT NULL REFERENCES broadcasts(id),
    destination        TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL UNIQUE,
    thread_key         TEXT,
    state              TEXT NOT NULL,
    attempts_made      INTEGER NOT NULL,
    attempts_max       INTEGER NOT NULL,
    due_at_ms          INTEGER,
    deadline_at_ms     INTEGER,
    leased             INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    remote_ref         TEXT,
    last_error         TEXT,
    last_http_status   INTEGER,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    UNIQUE (broadcast_id, destination)
) STRICT;

-- Due work, per destination, in due order. due_at_ms is set exactly when the
-- state is pending, retrying or verifying.
CREATE INDEX deliveries_due ON deliveries (destination, due_at_ms)
    WHERE due_at_ms IS NOT NULL AND leased = 0;
-- Per-thread order on each destination.
CREATE INDEX deliveries_thread ON deliveries (destination, thread_key, id)
    WHERE thread_key IS NOT NULL;
CREATE INDEX deliveries_sending ON deliveries (state) WHERE state = 'sending' OR leased = 1;

CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY,
    delivery_id    INTEGER NOT NULL REFERENCES deliveries(id),
    number         INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    http_status    INTEGER,
    excerpt        TEXT,
    error          TEXT
) STRICT;
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
"#,
    // Fencing token: grows with every lease; an outcome is written only
    // under the lease it was attempted under.
    r#"
ALTER TABLE deliveries ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
"#,
    // Due work is claimed by severity first (P1 = 1), then due time, so a P1
    // is not queued behind a backlog of lesser messages.
    r#"
ALTER TABLE deliveries ADD COLUMN priority INTEGER NOT NULL DEFAULT 3;
UPDATE deliveries SET priority = (
    SELECT CAST(substr(b.severity, 2) AS INTEGER) FROM broadcasts b WHERE b.id = deliveries.broadcast_id);
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (destination, priority, due_at_ms)
    WHERE due_at_ms IS NOT NULL AND leased = 0;
"#,
    // Ingest idempotency keys, scoped per caller; listing by thread.
    r#"
CREATE TABLE ingest_keys (
    caller          TEXT NOT NULL,
    key             TEXT NOT NULL,
    body_sha256     TEXT NOT NULL,
    broadcast_id    TEXT NOT NULL REFERENCES broadcasts(id),
    response        TEXT,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (caller, key)
) STRICT;
CREATE INDEX ingest_keys_expiry ON ingest_keys (expires_at_ms);
CREATE INDEX broadcasts_thread ON broadcasts (thread_key, id) WHERE thread_key IS NOT NULL;
CREATE INDEX deliveries_unfinished ON deliveries (destination)
    WHERE state NOT IN ('confirmed','failed','dead','cancelled');
"#,
    // A broadcast can resolve its thread's incident.
    r#"
ALTER TABLE broadcasts ADD COLUMN resolved INTEGER NOT NULL DEFAULT 0;
"#,
    // Less to write per delivery (profiles of a burst put the store writer
    // at a third of the server's CPU). The idempotency key is derived from
    // the broadcast id and the destination, which are stored and unique
    // together, so neither its column nor its unique index is kept. The
    // index of sending and leased rows served only the recovery at start,
    // which now reads the table once instead of updating that index twice
    // for every delivery. SQLite cannot drop a UNIQUE column in place: the
    // table is rebuilt (foreign keys are off while migrations run).
    r#"
CREATE TABLE deliveries_rebuilt (
    id                 INTEGER PRIMARY KEY,
    broadcast_id       TEXT NOT NULL REFERENCES broadcasts(id),
    destination        TEXT NOT NULL,
    thread_key         TEXT,
    state              TEXT NOT NULL,
    priority           INTEGER NOT NULL,
    attempts_made      INTEGER NOT NULL,
    attempts_max       INTEGER NOT NULL,
    due_at_ms          INTEGER,
    deadline_at_ms     INTEGER,
    leased             INTEGER NOT NULL DEFAULT 0,
    lease_epoch        INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    remote_ref         TEXT,
    last_error         TEXT,
    last_http_status   INTEGER,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    UNIQUE (broadcast_id, destination)
) STRICT;
INSERT INTO deliveries_rebuilt (id, broadcast_id, destination, thread_key, state, priority,
    attempts_made, attempts_max, due_at_ms, deadline_at_ms, leased, lease_epoch,
    possible_duplicate, remote_ref, last_error, last_http_status, created_at_ms, updated_at_ms)
SELECT id, broadcast_id, destination, thread_key, state, priority,
    attempts_made, attempts_max, due_at_ms, deadline_at_ms, leased, lease_epoch,
    possible_duplicate, remote_ref, last_error, last_http_status, created_at_ms, updated_at_ms
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_rebuilt RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (destination, priority, due_at_ms)
    WHERE due_at_ms IS NOT NULL AND leased = 0;
CREATE INDEX deliveries_thread ON deliveries (destination, thread_key, id)
    WHERE thread_key IS NOT NULL;
CREATE INDEX deliveries_unfinished ON deliveries (destination)
    WHERE state NOT IN ('confirmed','failed','dead','cancelled');
"#,
    // The index of unfinished deliveries tests its condition on every
    // insert and update of a delivery. SQLite evaluates `NOT IN` a list of
    // more than two values through a temporary b-tree that it builds and
    // frees on each statement: a tenth of the store writer's time in a
    // burst. The same condition as comparisons costs next to nothing.
    r#"
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries (destination)
    WHERE state <> 'confirmed' AND state <> 'failed' AND state <> 'dead' AND state <> 'cancelled';
"#,
    // Fewer b-tree writes per delivery (the store writer is the largest
    // share of herald's CPU in a burst that is not also the baseline's).
    //
    // - SQLite rewrites an index entry whenever an UPDATE sets a column its
    //   partial-index condition reads, even when the entry stays the same:
    //   with the condition on `state`, every claim (pending -> sending) and
    //   every retry deleted and re-inserted the delivery's entry in
    //   `deliveries_unfinished`. The condition now reads `finished_at_ms`,
    //   which only the step to a final state sets. A CHECK keeps it true to
    //   the state, so a write that forgot it fails instead of miscounting.
    // - An attempt's rowid is its delivery's id shifted left by 20 bits plus
    //   its sequence within the delivery: one delivery's attempts are a
    //   rowid range, and the index `attempts_delivery` (one more b-tree
    //   insert per attempt) goes.
    r#"
CREATE TABLE deliveries_rebuilt (
    id                 INTEGER PRIMARY KEY,
    broadcast_id       TEXT NOT NULL REFERENCES broadcasts(id),
    destination        TEXT NOT NULL,
    thread_key         TEXT,
    state              TEXT NOT NULL,
    priority           INTEGER NOT NULL,
    attempts_made      INTEGER NOT NULL,
    attempts_max       INTEGER NOT NULL,
    due_at_ms          INTEGER,
    deadline_at_ms     INTEGER,
    leased             INTEGER NOT NULL DEFAULT 0,
    lease_epoch        INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    remote_ref         TEXT,
    last_error         TEXT,
    last_http_status   INTEGER,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    finished_at_ms     INTEGER,
    UNIQUE (broadcast_id, destination),
    CHECK ((finished_at_ms IS NULL) = (state <> 'confirmed' AND state <> 'failed'
                                       AND state <> 'dead' AND state <> 'cancelled'))
) STRICT;
INSERT INTO deliveries_rebuilt (id, broadcast_id, destination, thread_key, state, priority,
    attempts_made, attempts_max, due_at_ms, deadline_at_ms, leased, lease_epoch,
    possible_duplicate, remote_ref, last_error, last_http_status, created_at_ms, updated_at_ms,
    finished_at_ms)
SELECT id, broadcast_id, destination, thread_key, state, priority,
    attempts_made, attempts_max, due_at_ms, deadline_at_ms, leased, lease_epoch,
    possible_duplicate, remote_ref, last_error, last_http_status, created_at_ms, updated_at_ms,
    CASE WHEN state <> 'confirmed' AND state <> 'failed' AND state <> 'dead' AND state <> 'cancelled'
         THEN NULL ELSE updated_at_ms END
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_rebuilt RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (destination, priority, due_at_ms)
    WHERE due_at_ms IS NOT NULL AND leased = 0;
CREATE INDEX deliveries_thread ON deliveries (destination, thread_key, id)
    WHERE thread_key IS NOT NULL;
CREATE INDEX deliveries_unfinished ON deliveries (destination) WHERE finished_at_ms IS NULL;

CREATE TABLE attempts_rebuilt (
    id             INTEGER PRIMARY KEY,
    delivery_id    INTEGER NOT NULL REFERENCES deliveries(id),
    number         INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    http_status    INTEGER,
    excerpt        TEXT,
    error          TEXT,
    CHECK (id >> 20 = delivery_id)
) STRICT;
INSERT INTO attempts_rebuilt (id, delivery_id, number, kind, started_at_ms, finished_at_ms,
    outcome, http_status, excerpt, error)
SELECT (delivery_id << 20) + row_number() OVER (PARTITION BY delivery_id ORDER BY id),
    delivery_id, number, kind, started_at_ms, finished_at_ms, outcome, http_status, excerpt, error
FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_rebuilt RENAME TO attempts;
"#,
    // The backlog report (`/metrics`, `/v1/destinations`) reads the oldest
    // accept time of each destination's unfinished work from this index
    // alone, so its cost follows the backlog, not the history: before, it
    // scanned every delivery ever made and joined each to its broadcast.
    // `created_at_ms` is never updated, so no write path changes.
    r#"
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries (destination, created_at_ms)
    WHERE finished_at_ms IS NULL;
"#,
    // Operators' pauses of destinations, so a pause survives a restart.
    // `until_ms` is i64::MAX for a pause that lasts until resumed.
    r#"
CREATE TABLE destination_pauses (
    destination  TEXT PRIMARY KEY,
    until_ms     INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    paused_by    TEXT NOT NULL,
    paused_at_ms INTEGER NOT NULL
);
"#,
    // Retention deletes a broadcast's ingest keys with it; without this
    // index each deletion would read the whole table.
    r#"
CREATE INDEX ingest_keys_broadcast ON ingest_keys (broadcast_id);
"#,
    // A message's labels, links, fields, source and summary (one JSON
    // text, NULL when it has none) and the routes that picked its
    // destinations (a JSON array, NULL when the caller named them): both
    // written once with the broadcast, never changed.
    r#"
ALTER TABLE broadcasts ADD COLUMN details TEXT;
ALTER TABLE broadcasts ADD COLUMN routes TEXT;
"#,
    // Delivery objectives: one row per broadcast that has one (none for
    // the others, so a broadcast without an objective writes nothing
    // here). `deadline_ms` is the timer the watcher sleeps on; the partial
    // index holds undecided objectives only, so quiet hours read an empty
    // index. `decision` is written once (`WHERE decision IS NULL`), in the
    // transaction that inserts the escalation's child broadcasts.
    r#"
CREATE TABLE objectives (
    broadcast_id            TEXT PRIMARY KEY,
    spec                    TEXT NOT NULL,
    deadline_ms             INTEGER NOT NULL,
    thread_key              TEXT,
    decision                TEXT,
    decided_at_ms           INTEGER,
    escalated_to            TEXT,
    fallback_broadcast_id   TEXT,
    meta_alert_broadcast_id TEXT,
    CHECK ((decision IS NULL) = (decided_at_ms IS NULL))
) STRICT, WITHOUT ROWID;
CREATE INDEX objectives_due ON objectives (deadline_ms) WHERE decision IS NULL;
CREATE INDEX objectives_escalated ON objectives (thread_key) WHERE decision = 'escalated';
"#,
];

pub(super) fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "cannot switch the database to WAL mode (it stays {mode})"
        )));
    }
    // FULL: every commit is fsynced before it is acknowledged.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 0;",
    )?;
    conn.pragma_update_and_check(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES, |r| {
        r.get::<_, i64>(0)
    })?;
    // Plans must not depend on bound values: otherwise a statement whose
    // parameter meets a partial index's condition is re-prepared whenever
    // the value changes (4.5% of herald's CPU in a burst profile). Every
    // query names its partial index's condition literally instead.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    if version == known {
        return Ok(());
    }
    // SQLite's procedure for changing a table's definition: foreign keys
    // off (it cannot change inside a transaction) while a table is rebuilt,
    // and every reference checked before the migration commits.
    conn.pragma_update(None, "foreign_keys", false)?;
    let migrated = run_migrations(conn, version as usize);
    conn.pragma_update(None, "foreign_keys", true)?;
    migrated
}

pub(super) fn run_migrations(conn: &mut Connection, done: usize) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(StoreError::Corrupt(format!(
                "schema migration {} left rows of {table} referring to nothing; nothing was changed",
                index + 1
            )));
        }
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
        tracing::info!(migration = index + 1, "applied schema migration");
    }
    Ok(())
}
