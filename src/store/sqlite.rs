//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a commit is on disk before anyone is told it happened.
//!
//! Writes go through one writer thread that owns the only write connection.
//! It takes every operation queued at the moment, applies them all in one
//! transaction, commits once, and only then answers each caller: group
//! commit. A batch with a failing operation is replayed one operation per
//! transaction, so the failure stays with its caller. Reads use a small pool of read-only connections, which WAL lets
//! run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::domain::{delivery_idempotency_key, Severity};

/// Operations waiting for the writer; callers wait when it is full.
const WRITE_QUEUE_MAX: usize = 8_192;
/// Operations committed together in one transaction at most.
const WRITE_BATCH_MAX: usize = 2_048;
/// Idle read connections kept open.
const READ_POOL_IDLE_MAX: usize = 4;
/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_EVERY_MS: u64 = 500;
/// A WAL this long (in 4 KiB pages) is finished off by the writer itself,
/// between two batches, so that the next transaction starts the log over.
/// Under steady writes a checkpoint beside the writer never catches up with
/// the last commit, and SQLite starts the log over only once every frame is
/// in the database: without this the WAL grew to 340 MB in a burst of
/// 100,000 deliveries (for a 26 MB database), every commit extended the
/// file, and nothing bounded it.
const WAL_RESTART_FRAMES: u64 = 4_096;
/// A WAL file larger than this is cut back to it when the log starts over.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// How long a connection waits on a lock held by another process.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Schema migrations, applied in order at open. `PRAGMA user_version` holds
/// how many have run. Never edit one that has shipped; append.
const MIGRATIONS: &[&str] = &[
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
];

/// What later messages of a thread attach to: the reference of the first
/// delivery of the same thread to the same destination that recorded one.
/// `?1` destination, `?2` thread key, `?3` the asking delivery's id.
const THREAD_REF_SQL: &str = "SELECT remote_ref FROM deliveries
     WHERE destination = ?1 AND thread_key = ?2 AND id < ?3 AND remote_ref IS NOT NULL
     ORDER BY id LIMIT 1";

/// The delivery row under `$table` (an alias and a dot, or nothing) is not
/// final, as SQL: the condition of the partial index
/// `deliveries_unfinished`, written the same way so the planner uses that
/// index. A macro so queries stay `&'static str` (no formatting on the hot
/// path).
macro_rules! unfinished_sql {
    ($table:literal) => {
        concat!($table, "finished_at_ms IS NULL")
    };
}

/// The rowids of the attempts of delivery `$delivery` (an SQL expression):
/// its id shifted left by 20 bits, plus the attempt's sequence from 1 (see
/// migration 8).
macro_rules! attempts_of_sql {
    ($table:literal, $delivery:literal) => {
        concat!(
            $table,
            "id > (",
            $delivery,
            " << 20) AND ",
            $table,
            "id < ((",
            $delivery,
            " + 1) << 20)"
        )
    };
}

/// Records an attempt of delivery `?1` under the next rowid of its range.
macro_rules! insert_attempt_sql {
    ($columns:literal, $values:literal) => {
        concat!(
            "INSERT INTO attempts (id, delivery_id, ",
            $columns,
            ")
             VALUES (coalesce((SELECT max(id) FROM attempts WHERE ",
            attempts_of_sql!("", "?1"),
            "), ?1 << 20) + 1, ?1, ",
            $values,
            ")"
        )
    };
}

/// Accept and first-attempt times of the deliveries of broadcasts created
/// from `?1` on, for the bench's latency figures.
pub(crate) const DELIVERY_TIMES_SQL: &str = concat!(
    "SELECT d.destination, d.state, b.created_at_ms,
            (SELECT min(a.started_at_ms) FROM attempts a WHERE ",
    attempts_of_sql!("a.", "d.id"),
    "), d.updated_at_ms
     FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
     WHERE b.created_at_ms >= ?1"
);

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// An exclusive lock on `<database>.lock`, held while the store is open:
    /// two herald processes on one SQLite file would each recover the
    /// other's in-flight deliveries.
    _lock: std::fs::File,
    writes: mpsc::Sender<WriteOp>,
    idle_readers: Mutex<Vec<Connection>>,
    /// The writer's last commit, for readiness.
    health: Arc<CommitHealth>,
    /// Broadcasts in the file: counted once at open, then kept by the
    /// inserts and deletions committed since (one process per file).
    stored_broadcasts: AtomicU64,
}

/// One write, as the writer thread receives it.
struct WriteOp {
    request: Request,
    reply: oneshot::Sender<Result<Answer, StoreError>>,
}

enum Request {
    Insert(NewBroadcast),
    Claim {
        destination: String,
        limit: usize,
        /// Only severities of this rank or more urgent (1 = P1 only).
        rank_max: u8,
        now_ms: i64,
    },
    Update(DeliveryUpdate),
    Recover(i64),
    Operate {
        broadcast_id: String,
        action: OperatorAction,
        destinations: Vec<String>,
        policies: Vec<(String, RetryPolicy)>,
        now_ms: i64,
    },
    SaveIngestResponse {
        caller: String,
        key: String,
        response: String,
    },
    PurgeIngestKeys(i64),
    Pause(DestinationPause),
    Resume {
        destination: String,
        now_ms: i64,
    },
    /// A commit that writes one page, for readiness while commits fail.
    Probe,
    DeleteFinished {
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    },
}

enum Answer {
    Inserted(Vec<InsertedDelivery>),
    Claimed(Claim),
    Updated(UpdateResult),
    Recovered(Recovery),
    Operated(Option<Vec<String>>),
    Done(u64),
    Retention(RetentionBatch),
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, runs migrations, and
    /// starts the writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Locked(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            StoreError::Locked(format!(
                "another herald process is using {} (it holds {})",
                path.display(),
                lock_path.display()
            ))
        })?;
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let stored: i64 = conn.query_row("SELECT count(*) FROM broadcasts", [], |r| r.get(0))?;
        let (writes, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        // Frames in the WAL when the background checkpoint last looked; the
        // writer finishes the checkpoint once there are `WAL_RESTART_FRAMES`.
        let wal_frames = Arc::new(AtomicU64::new(0));
        let writer_wal_frames = wal_frames.clone();
        let health = Arc::new(CommitHealth::default());
        let writer_health = health.clone();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run_writer(conn, queue, &writer_wal_frames, &writer_health))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        // Checkpoints run beside the writer, not inside its commits: an
        // automatic checkpoint copies the WAL into the database and fsyncs
        // it, which stalled every caller of the batch that triggered it.
        let inner = Arc::new(Inner {
            path: path.clone(),
            _lock: lock,
            writes,
            idle_readers: Mutex::new(Vec::new()),
            health,
            stored_broadcasts: AtomicU64::new(stored.max(0) as u64),
        });
        let checkpointer = Connection::open(&path)?;
        checkpointer.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        let alive = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("herald-sqlite-checkpoint".into())
            .spawn(move || run_checkpointer(checkpointer, alive, &wal_frames))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(SqliteStore { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write(&self, request: Request) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send(WriteOp { request, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let idle = inner
                .idle_readers
                .lock()
                .expect("reader pool poisoned")
                .pop();
            let conn = match idle {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
                    conn
                }
            };
            let result = query(&conn);
            let mut idle = inner.idle_readers.lock().expect("reader pool poisoned");
            if idle.len() < READ_POOL_IDLE_MAX {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("read task failed: {e}")))?
    }
}

/// Copies committed WAL frames into the database every
/// `CHECKPOINT_EVERY_MS`, without blocking the writer (PASSIVE), until the
/// store is dropped, and tells the writer how long the WAL is.
fn run_checkpointer(conn: Connection, alive: std::sync::Weak<Inner>, wal_frames: &AtomicU64) {
    loop {
        std::thread::sleep(std::time::Duration::from_millis(CHECKPOINT_EVERY_MS));
        if alive.upgrade().is_none() {
            return;
        }
        match checkpoint(&conn) {
            Ok(frames) => wal_frames.store(frames, Ordering::Relaxed),
            Err(error) => {
                tracing::warn!(%error, "WAL checkpoint failed; the next one tries again")
            }
        }
    }
}

/// A PASSIVE checkpoint: copies what it can without waiting for anyone.
/// Returns the frames in the WAL.
fn checkpoint(conn: &Connection) -> Result<u64, StoreError> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(frames.max(0) as u64)
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
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

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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

fn run_migrations(conn: &mut Connection, done: usize) -> Result<(), StoreError> {
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

fn run_writer(
    mut conn: Connection,
    mut queue: mpsc::Receiver<WriteOp>,
    wal_frames: &AtomicU64,
    health: &CommitHealth,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < WRITE_BATCH_MAX {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        write_batch(&mut conn, &mut batch, health);
        // The background checkpoint copied most of the WAL; between two
        // transactions nobody else writes, so this copies only what was
        // committed since, and the next BEGIN starts the log over.
        if wal_frames.load(Ordering::Relaxed) >= WAL_RESTART_FRAMES {
            wal_frames.store(0, Ordering::Relaxed);
            if let Err(error) = checkpoint(&conn) {
                tracing::warn!(%error, "WAL checkpoint failed; the next one tries again");
            }
        }
    }
}

/// Commits a batch and answers every caller, only after its commit.
///
/// Fast path: every operation in one transaction, one commit. If any
/// operation fails (a duplicate id, an unreadable row, a full disk), the
/// whole transaction is rolled back and each operation is replayed in a
/// transaction of its own, so one bad operation fails alone and nobody is
/// told "failed" about a write that is on disk, or "done" about one that
/// is not. (Savepoints per operation would do the same at a large cost on
/// the hot path, and SQLite may roll back a whole transaction on I/O
/// errors, which savepoints cannot contain.)
fn write_batch(conn: &mut Connection, batch: &mut Vec<WriteOp>, health: &CommitHealth) {
    let retention: Vec<WriteOp> = batch
        .extract_if(.., |op| {
            matches!(op.request, Request::DeleteFinished { .. })
        })
        .collect();
    for op in retention {
        let result = without_foreign_keys(conn, |conn| {
            apply_all(conn, std::slice::from_ref(&op))
                .map(|mut answers| answers.pop().expect("one answer per operation"))
        });
        let _ = op.reply.send(result);
    }
    if batch.is_empty() {
        return;
    }
    match apply_all(conn, batch) {
        Ok(answers) => {
            health.succeeded();
            for (op, answer) in batch.drain(..).zip(answers) {
                // The caller may have gone away (request cancelled); fine.
                let _ = op.reply.send(Ok(answer));
            }
        }
        Err(error) => {
            if batch.len() > 1 {
                tracing::warn!(%error, operations = batch.len(),
                    "a write batch failed; replaying its operations one by one");
            }
            for op in batch.drain(..) {
                let result = apply_all(conn, std::slice::from_ref(&op))
                    .map(|mut answers| answers.pop().expect("one answer per operation"));
                match &result {
                    Ok(_) => health.succeeded(),
                    Err(error) if cannot_commit(error) => health.failed(error),
                    Err(_) => {}
                }
                let _ = op.reply.send(result);
            }
        }
    }
}

/// Whether an error says the database cannot commit at all (rather than
/// that this one operation was refused).
fn cannot_commit(error: &StoreError) -> bool {
    use rusqlite::ErrorCode::*;
    match error {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
            failure.code,
            DiskFull
                | SystemIoFailure
                | CannotOpen
                | ReadOnly
                | DatabaseCorrupt
                | NotADatabase
                | FileLockingProtocolFailed
                | PermissionDenied
                | OutOfMemory
        ),
        _ => false,
    }
}

/// Runs `write` (its own transactions) with foreign-key checks off.
/// Retention deletes a delivery only after its attempts, in one
/// transaction; with the checks on, SQLite would look for the attempts of
/// each deleted delivery by reading the whole `attempts` table (no index
/// on `delivery_id`: an attempt's rowid encodes it, see migration 8). The
/// pragma cannot change inside a transaction, so retention gets
/// transactions of its own.
fn without_foreign_keys<T>(
    conn: &mut Connection,
    write: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.pragma_update(None, "foreign_keys", false)?;
    let result = write(conn);
    conn.pragma_update(None, "foreign_keys", true)?;
    result
}

/// Applies `ops` in one transaction and commits it; all or nothing.
/// BEGIN and COMMIT are cached statements: parsing them for every batch
/// showed in profiles.
fn apply_all(conn: &mut Connection, ops: &[WriteOp]) -> Result<Vec<Answer>, StoreError> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let applied = apply_each(conn, ops).and_then(|answers| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(answers)
    });
    if applied.is_err() && !conn.is_autocommit() {
        // Still inside the transaction: nothing of it may stay.
        conn.prepare_cached("ROLLBACK")?.execute([])?;
    }
    applied
}

fn apply_each(conn: &Connection, ops: &[WriteOp]) -> Result<Vec<Answer>, StoreError> {
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        answers.push(match &op.request {
            Request::Insert(new) => Answer::Inserted(insert_broadcast(conn, new)?),
            Request::Claim {
                destination,
                limit,
                rank_max,
                now_ms,
            } => Answer::Claimed(claim_due(conn, destination, *limit, *rank_max, *now_ms)?),
            Request::Update(update) => Answer::Updated(update_delivery(conn, update)?),
            Request::Recover(now_ms) => Answer::Recovered(recover(conn, *now_ms)?),
            Request::Operate {
                broadcast_id,
                action,
                destinations,
                policies,
                now_ms,
            } => Answer::Operated(operate(
                conn,
                broadcast_id,
                *action,
                destinations,
                policies,
                *now_ms,
            )?),
            Request::SaveIngestResponse {
                caller,
                key,
                response,
            } => Answer::Done(
                conn.prepare_cached(
                    "UPDATE ingest_keys SET response = ?3 WHERE caller = ?1 AND key = ?2",
                )?
                .execute(params![caller, key, response])? as u64,
            ),
            Request::Probe => {
                // Rewrites the header page with the value it holds.
                let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                conn.execute_batch(&format!("PRAGMA user_version = {version}"))?;
                Answer::Done(0)
            }
            Request::PurgeIngestKeys(now_ms) => Answer::Done(
                conn.prepare_cached("DELETE FROM ingest_keys WHERE expires_at_ms < ?1")?
                    .execute(params![now_ms])? as u64,
            ),
            Request::Pause(pause) => Answer::Done(
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO destination_pauses
                         (destination, until_ms, reason, paused_by, paused_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    pause.destination,
                    pause.until_ms,
                    pause.reason,
                    pause.paused_by,
                    pause.paused_at_ms
                ])? as u64,
            ),
            Request::Resume {
                destination,
                now_ms,
            } => {
                let active = conn
                    .prepare_cached(
                        "DELETE FROM destination_pauses WHERE destination = ?1 AND until_ms > ?2",
                    )?
                    .execute(params![destination, now_ms])?;
                conn.prepare_cached("DELETE FROM destination_pauses WHERE destination = ?1")?
                    .execute(params![destination])?;
                Answer::Done(active as u64)
            }
            Request::DeleteFinished {
                before_ms,
                after_id,
                limit,
            } => Answer::Retention(delete_finished(
                conn,
                *before_ms,
                after_id.as_deref(),
                *limit,
            )?),
        });
    }
    Ok(answers)
}

/// Retention's choice: old broadcasts (by id, then by accept time) with no
/// unfinished delivery, oldest first. `?1` the id to start after, `?2` the
/// first id at the cutoff, `?3` the cutoff, `?4` how many.
const RETENTION_CANDIDATES_SQL: &str = concat!(
    "SELECT b.id FROM broadcasts b
     WHERE b.id > ?1 AND b.id < ?2 AND b.created_at_ms < ?3
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND ",
    unfinished_sql!("d."),
    ")
     ORDER BY b.id LIMIT ?4"
);

/// One retention batch (see `Store::delete_finished_broadcasts`); the
/// writer runs it alone, with foreign-key checks off, so it deletes
/// children first.
fn delete_finished(
    conn: &Connection,
    before_ms: i64,
    after_id: Option<&str>,
    limit: usize,
) -> Result<RetentionBatch, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(RETENTION_CANDIDATES_SQL)?
        .query_map(
            params![
                after_id.unwrap_or(""),
                first_broadcast_id_at(before_ms),
                before_ms,
                limit as i64
            ],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut deliveries_of =
        conn.prepare_cached("SELECT id FROM deliveries WHERE broadcast_id = ?1")?;
    let mut delete_attempts = conn.prepare_cached(concat!(
        "DELETE FROM attempts WHERE ",
        attempts_of_sql!("", "?1")
    ))?;
    let mut delete_deliveries =
        conn.prepare_cached("DELETE FROM deliveries WHERE broadcast_id = ?1")?;
    let mut delete_keys = conn.prepare_cached("DELETE FROM ingest_keys WHERE broadcast_id = ?1")?;
    let mut delete_broadcast = conn.prepare_cached("DELETE FROM broadcasts WHERE id = ?1")?;
    let mut deleted = 0;
    for id in &ids {
        let deliveries: Vec<i64> = deliveries_of
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for delivery in deliveries {
            delete_attempts.execute([delivery])?;
        }
        delete_deliveries.execute([id])?;
        delete_keys.execute([id])?;
        deleted += delete_broadcast.execute([id])? as u64;
    }
    Ok(RetentionBatch {
        deleted,
        examined: ids.len(),
        last_id: ids.last().cloned(),
    })
}

fn insert_broadcast(
    conn: &Connection,
    new: &NewBroadcast,
) -> Result<Vec<InsertedDelivery>, StoreError> {
    let message = &new.message;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO broadcasts (id, title, body, severity, thread_key, created_at_ms, resolved,
                 details, routes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            new.id,
            message.title(),
            message.body(),
            message.severity().as_str(),
            message.thread(),
            new.created_at_ms,
            message.resolved(),
            super::details_json(message),
            super::routes_json(&new.routes),
        ])?;
    if inserted == 0 {
        return Err(StoreError::DuplicateBroadcast(new.id.clone()));
    }
    if let Some(ingest) = &new.ingest_key {
        // An expired record of the same key is forgotten; a live one wins.
        conn.prepare_cached(
            "DELETE FROM ingest_keys WHERE caller = ?1 AND key = ?2 AND expires_at_ms < ?3",
        )?
        .execute(params![ingest.caller, ingest.key, new.created_at_ms])?;
        let recorded = conn
            .prepare_cached(
                "INSERT INTO ingest_keys (caller, key, body_sha256, broadcast_id, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (caller, key) DO NOTHING",
            )?
            .execute(params![
                ingest.caller,
                ingest.key,
                ingest.body_sha256,
                new.id,
                ingest.expires_before_ms
            ])?;
        if recorded == 0 {
            return Err(StoreError::IngestKeyTaken(ingest.key.clone()));
        }
    }
    let mut busy_thread = conn.prepare_cached(concat!(
        "SELECT 1 FROM deliveries WHERE destination = ?1 AND thread_key = ?2 AND ",
        unfinished_sql!(""),
        " LIMIT 1"
    ))?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO deliveries (broadcast_id, destination, thread_key, state,
             attempts_made, attempts_max, due_at_ms, deadline_at_ms, created_at_ms, updated_at_ms,
             priority, leased, lease_epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?11)",
    )?;
    let mut find_thread_ref = conn.prepare_cached(THREAD_REF_SQL)?;
    let mut out = Vec::with_capacity(new.deliveries.len());
    for delivery in &new.deliveries {
        let behind = match message.thread() {
            Some(thread) => busy_thread.exists(params![delivery.destination, thread])?,
            None => false,
        };
        let mut progress = DeliveryProgress::new(&delivery.policy, behind, new.created_at_ms);
        let lease_now = delivery.lease_now && progress.state == DeliveryState::Pending;
        if lease_now {
            progress = progress
                .leased(new.created_at_ms)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        let key = delivery_idempotency_key(&new.id, &delivery.destination);
        insert.execute(params![
            new.id,
            delivery.destination,
            message.thread(),
            progress.state.as_str(),
            progress.attempts_made,
            progress.attempts_max,
            progress.due_at_ms,
            progress.deadline_at_ms,
            new.created_at_ms,
            message.severity().rank(),
            lease_now
        ])?;
        let leased = if lease_now {
            let delivery_id = conn.last_insert_rowid();
            let thread_ref = match message.thread() {
                Some(thread) => find_thread_ref
                    .query_row(params![delivery.destination, thread, delivery_id], |r| {
                        r.get(0)
                    })
                    .optional()?,
                None => None,
            };
            Some(ClaimedDelivery {
                delivery_id,
                broadcast_id: new.id.clone(),
                destination: delivery.destination.clone(),
                idempotency_key: key.clone(),
                progress: progress.clone(),
                message: message.clone(),
                broadcast_created_at_ms: new.created_at_ms,
                last_error: None,
                lease_epoch: 1,
                thread_ref,
                remote_ref: None,
            })
        } else {
            None
        };
        out.push(InsertedDelivery {
            destination: delivery.destination.clone(),
            idempotency_key: key,
            progress,
            leased,
        });
    }
    Ok(out)
}

fn progress_from_row(
    row: &Row,
    first: usize,
) -> rusqlite::Result<Result<DeliveryProgress, StoreError>> {
    let state: String = row.get(first)?;
    let Some(state) = DeliveryState::parse(&state) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "unknown delivery state {state:?}"
        ))));
    };
    Ok(Ok(DeliveryProgress {
        state,
        attempts_made: row.get(first + 1)?,
        attempts_max: row.get(first + 2)?,
        due_at_ms: row.get(first + 3)?,
        deadline_at_ms: row.get(first + 4)?,
        possible_duplicate: row.get(first + 5)?,
    }))
}

/// Reads title, body, severity and thread from `first` on, the resolved
/// flag from column `resolved` and the details (JSON) from `details`.
fn message_from_row(
    row: &Row,
    first: usize,
    resolved: usize,
    details: usize,
) -> rusqlite::Result<Result<Message, StoreError>> {
    let title: String = row.get(first)?;
    let body: String = row.get(first + 1)?;
    let severity: String = row.get(first + 2)?;
    let thread: Option<String> = row.get(first + 3)?;
    let resolved: bool = row.get(resolved)?;
    let details: Option<String> = row.get(details)?;
    Ok(Severity::parse(&severity)
        .and_then(|severity| Message::new(&title, &body, severity, thread.as_deref()))
        .and_then(|message| message.resolving(resolved))
        .map_err(|e| StoreError::Corrupt(format!("stored message is invalid: {e}")))
        .and_then(|message| super::with_stored_details(message, details.as_deref())))
}

/// How many deliveries are unfinished, through their partial index (the
/// bench polls it while a run drains).
pub(crate) const UNFINISHED_COUNT_SQL: &str = concat!(
    "SELECT count(*) FROM deliveries WHERE ",
    unfinished_sql!("")
);

/// Unfinished deliveries per destination and the oldest one's accept time
/// (a delivery's `created_at_ms` is its broadcast's), for the backlog
/// report: a scan of the covering index `deliveries_unfinished` only.
const BACKLOG_SQL: &str = concat!(
    "SELECT destination, count(*), min(created_at_ms) FROM deliveries WHERE ",
    unfinished_sql!(""),
    " GROUP BY destination"
);

/// The earliest due time of one destination's deliveries of one severity
/// that are not in flight: the first entry of that severity in the index
/// `deliveries_due`. `?1` destination, `?2` priority.
const EARLIEST_DUE_SQL: &str = "SELECT min(due_at_ms) FROM deliveries
     WHERE destination = ?1 AND priority = ?2 AND due_at_ms IS NOT NULL AND leased = 0";

/// The earliest due time among a destination's deliveries not in flight:
/// one index lookup per severity.
fn earliest_due(conn: &Connection, destination: &str) -> rusqlite::Result<Option<i64>> {
    let mut earliest = conn.prepare_cached(EARLIEST_DUE_SQL)?;
    let mut first: Option<i64> = None;
    for priority in Severity::RANKS {
        let due: Option<i64> = earliest.query_row(params![destination, priority], |r| r.get(0))?;
        first = match (first, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

/// Due deliveries of one destination and severity, oldest due first.
/// `?1` destination, `?2` priority, `?3` now, `?4` limit.
const CLAIM_SQL: &str = "SELECT d.id, d.broadcast_id,
        d.state, d.attempts_made, d.attempts_max, d.due_at_ms, d.deadline_at_ms, d.possible_duplicate,
        b.title, b.body, b.severity, b.thread_key, b.created_at_ms, d.last_error,
        b.resolved, d.remote_ref, d.lease_epoch, b.details
     FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
     WHERE d.destination = ?1 AND d.priority = ?2 AND d.due_at_ms IS NOT NULL AND d.leased = 0
       AND d.due_at_ms <= ?3
     ORDER BY d.due_at_ms
     LIMIT ?4";

/// Leases a claimed delivery: `?1` id, `?2` state, `?3` attempts made,
/// `?4` due time, `?5` now, `?6` the new lease epoch.
const LEASE_SQL: &str = "UPDATE deliveries SET state = ?2, attempts_made = ?3, due_at_ms = ?4,
         leased = 1, lease_epoch = ?6, updated_at_ms = ?5
     WHERE id = ?1";

fn claim_due(
    conn: &Connection,
    destination: &str,
    limit: usize,
    rank_max: u8,
    now_ms: i64,
) -> Result<Claim, StoreError> {
    // One range scan per severity, most urgent first: each reads only due
    // rows, however many are scheduled for later.
    let mut select = conn.prepare_cached(CLAIM_SQL)?;
    let mut claimed = Vec::new();
    for priority in Severity::RANKS.into_iter().filter(|r| *r <= rank_max) {
        if claimed.len() >= limit {
            break;
        }
        let remaining = (limit - claimed.len()) as i64;
        let mut rows = select.query(params![destination, priority, now_ms, remaining])?;
        while let Some(row) = rows.next()? {
            let progress = progress_from_row(row, 2)??;
            let broadcast_id: String = row.get(1)?;
            claimed.push(ClaimedDelivery {
                delivery_id: row.get(0)?,
                idempotency_key: delivery_idempotency_key(&broadcast_id, destination),
                broadcast_id,
                destination: destination.to_owned(),
                progress,
                message: message_from_row(row, 8, 14, 17)??,
                broadcast_created_at_ms: row.get(12)?,
                last_error: row.get(13)?,
                // The current lease; leasing below takes the next.
                lease_epoch: row.get(16)?,
                thread_ref: None,
                remote_ref: row.get(15)?,
            });
        }
    }
    let mut lease = conn.prepare_cached(LEASE_SQL)?;
    let mut expire = conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, due_at_ms = NULL, updated_at_ms = ?3, finished_at_ms = ?3,
             last_error = 'the delivery deadline passed before it could be sent'
         WHERE id = ?1",
    )?;
    let mut find_thread_ref = conn.prepare_cached(THREAD_REF_SQL)?;
    let mut handed_out = Vec::with_capacity(claimed.len());
    let mut expired = Vec::new();
    for mut delivery in claimed {
        if let Some(thread) = delivery.message.thread() {
            delivery.thread_ref = find_thread_ref
                .query_row(
                    params![delivery.destination, thread, delivery.delivery_id],
                    |r| r.get(0),
                )
                .optional()?;
        }
        if delivery.progress.state != DeliveryState::Verifying {
            delivery.progress = delivery
                .progress
                .leased(now_ms)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        let p = &delivery.progress;
        if p.state.is_final() {
            expire.execute(params![delivery.delivery_id, p.state.as_str(), now_ms])?;
            promote_next_in_thread(conn, delivery.delivery_id, now_ms)?;
            expired.push(delivery);
            continue;
        }
        // No RETURNING: SQLite buffers returned rows in a temporary b-tree.
        // This writer is the only one, so the epoch read above is current.
        delivery.lease_epoch += 1;
        lease.execute(params![
            delivery.delivery_id,
            p.state.as_str(),
            p.attempts_made,
            p.due_at_ms,
            now_ms,
            delivery.lease_epoch
        ])?;
        handed_out.push(delivery);
    }
    let claimed = handed_out;
    if claimed.len() >= limit {
        // A full claim: the lane claims again at once, no need to know when.
        return Ok(Claim {
            expired,
            deliveries: claimed,
            next_due_at_ms: None,
        });
    }
    Ok(Claim {
        expired,
        deliveries: claimed,
        next_due_at_ms: earliest_due(conn, destination)?,
    })
}

/// An outcome's update of its delivery, up to its WHERE clause.
macro_rules! update_outcome_sql {
    () => {
        "UPDATE deliveries SET state = ?3, attempts_made = ?4, attempts_max = ?5, due_at_ms = ?6,
             deadline_at_ms = ?7, possible_duplicate = ?8, leased = 0, last_error = ?9,
             last_http_status = ?10, updated_at_ms = ?11, remote_ref = coalesce(?13, remote_ref)"
    };
}

/// Only under the lease and in the state the attempt was made in.
macro_rules! outcome_where_sql {
    () => {
        " WHERE id = ?1 AND state = ?2 AND leased = 1 AND lease_epoch = ?12"
    };
}

const OUTCOME_SQL: &str = concat!(update_outcome_sql!(), outcome_where_sql!());
const FINAL_OUTCOME_SQL: &str = concat!(
    update_outcome_sql!(),
    ", finished_at_ms = ?11",
    outcome_where_sql!()
);

fn update_delivery(conn: &Connection, update: &DeliveryUpdate) -> Result<UpdateResult, StoreError> {
    let a = &update.attempt;
    conn.prepare_cached(insert_attempt_sql!(
        "number, kind, started_at_ms, finished_at_ms, outcome, http_status, excerpt, error",
        "?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9"
    ))?
    .execute(params![
        update.delivery_id,
        a.number,
        a.kind.as_str(),
        a.started_at_ms,
        a.finished_at_ms,
        a.outcome,
        a.http_status,
        a.excerpt,
        a.error
    ])?;
    let p = &update.progress;
    // Two statements: one that sets `finished_at_ms` for a final outcome,
    // one that does not name it, so that a retry leaves the index of
    // unfinished deliveries alone (see migration 8).
    let sql = if p.state.is_final() {
        FINAL_OUTCOME_SQL
    } else {
        OUTCOME_SQL
    };
    let changed = conn.prepare_cached(sql)?.execute(params![
        update.delivery_id,
        update.expected_state.as_str(),
        p.state.as_str(),
        p.attempts_made,
        p.attempts_max,
        p.due_at_ms,
        p.deadline_at_ms,
        p.possible_duplicate,
        update.last_error,
        a.http_status,
        update.now_ms,
        update.lease_epoch,
        update.remote_ref
    ])?;
    if changed == 0 {
        return Ok(UpdateResult::Stale);
    }
    // Only deliveries of a thread have a next one.
    let promoted_next_in_thread = if p.state.is_final() && update.in_thread {
        promote_next_in_thread(conn, update.delivery_id, update.now_ms)?
    } else {
        false
    };
    Ok(UpdateResult::Applied {
        promoted_next_in_thread,
    })
}

/// When a delivery becomes final, the next waiting delivery of its thread on
/// the same destination (if nothing else of that thread is unfinished there)
/// becomes pending.
fn promote_next_in_thread(
    conn: &Connection,
    finished_id: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let next = conn
        .prepare_cached(concat!(
            "SELECT n.id, n.state, n.attempts_made, n.attempts_max, n.due_at_ms, n.deadline_at_ms, n.possible_duplicate
             FROM deliveries f
             JOIN deliveries n ON n.destination = f.destination AND n.thread_key = f.thread_key
             WHERE f.id = ?1 AND f.thread_key IS NOT NULL AND n.state = 'waiting'
               AND NOT EXISTS (SELECT 1 FROM deliveries o
                               WHERE o.destination = f.destination AND o.thread_key = f.thread_key
                                 AND ", unfinished_sql!("o."), " AND o.state <> 'waiting')
             ORDER BY n.id LIMIT 1"
        ))?
        .query_row(params![finished_id], |row| {
            Ok((row.get::<_, i64>(0)?, progress_from_row(row, 1)?))
        })
        .optional()?;
    let Some((id, progress)) = next else {
        return Ok(false);
    };
    let progress = progress?
        .thread_ready(now_ms)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, due_at_ms = ?3, updated_at_ms = ?4 WHERE id = ?1",
    )?
    .execute(params![
        id,
        progress.state.as_str(),
        progress.due_at_ms,
        now_ms
    ])?;
    Ok(true)
}

fn recover(conn: &Connection, now_ms: i64) -> Result<Recovery, StoreError> {
    let mut select = conn.prepare(
        "SELECT id, state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, possible_duplicate, updated_at_ms
         FROM deliveries WHERE state = 'sending'",
    )?;
    let interrupted: Vec<(i64, Result<DeliveryProgress, StoreError>, i64)> = select
        .query_map([], |row| {
            Ok((row.get(0)?, progress_from_row(row, 1)?, row.get(7)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut recovery = Recovery::default();
    for (id, progress, leased_at_ms) in interrupted {
        let progress = progress?;
        let next = progress
            .interrupted(now_ms)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        conn.execute(
            insert_attempt_sql!(
                "number, kind, started_at_ms, finished_at_ms, outcome, error",
                "?2, 'send', ?3, ?4, 'interrupted', ?5"
            ),
            params![
                id,
                progress.attempts_made,
                leased_at_ms,
                now_ms,
                "herald stopped while this attempt was in flight; the outcome is unknown, so the destination is checked before any re-send"
            ],
        )?;
        conn.execute(
            "UPDATE deliveries SET state = ?2, due_at_ms = ?3, leased = 0, updated_at_ms = ?4,
                 finished_at_ms = ?5, last_error = 'interrupted: herald stopped mid-attempt'
             WHERE id = ?1",
            params![
                id,
                next.state.as_str(),
                next.due_at_ms,
                now_ms,
                next.state.is_final().then_some(now_ms)
            ],
        )?;
        recovery.interrupted += 1;
    }
    recovery.released =
        conn.execute("UPDATE deliveries SET leased = 0 WHERE leased = 1", [])? as u64;
    Ok(recovery)
}

fn operate(
    conn: &Connection,
    broadcast_id: &str,
    action: OperatorAction,
    destinations: &[String],
    policies: &[(String, RetryPolicy)],
    now_ms: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM broadcasts WHERE id = ?1")?
        .exists(params![broadcast_id])?;
    if !exists {
        return Ok(None);
    }
    type Row = (
        i64,
        String,
        Result<DeliveryProgress, StoreError>,
        bool,
        Option<String>,
    );
    let rows: Vec<Row> = conn
        .prepare_cached(
            "SELECT id, destination, state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, possible_duplicate,
                    leased, thread_key
             FROM deliveries WHERE broadcast_id = ?1 ORDER BY id",
        )?
        .query_map(params![broadcast_id], |row| {
            Ok((row.get(0)?, row.get(1)?, progress_from_row(row, 2)?, row.get(8)?, row.get(9)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut busy_thread = conn.prepare_cached(concat!(
        "SELECT 1 FROM deliveries WHERE destination = ?1 AND thread_key = ?2 AND id <> ?3
           AND state <> 'waiting' AND ",
        unfinished_sql!(""),
        " LIMIT 1"
    ))?;
    let mut changed = Vec::new();
    for (id, destination, progress, leased, thread) in rows {
        if !destinations.is_empty() && !destinations.contains(&destination) {
            continue;
        }
        let progress = progress?;
        let policy = policies
            .iter()
            .find(|(name, _)| *name == destination)
            .map(|(_, p)| *p)
            .unwrap_or_default();
        let next = match action {
            OperatorAction::Retry => progress.operator_retry(&policy, now_ms).map(|mut next| {
                // Another delivery of its thread is under way on this
                // destination: queue behind it rather than race it.
                let busy = thread.as_deref().is_some_and(|thread| {
                    busy_thread
                        .exists(params![destination, thread, id])
                        .unwrap_or(true)
                });
                if busy {
                    next.state = DeliveryState::Waiting;
                    next.due_at_ms = None;
                }
                next
            }),
            // An attempt in flight is left to finish: cancelling under it
            // would let the next message of its thread overtake it, and its
            // real outcome would be lost. Cancel again once it has landed.
            OperatorAction::Cancel if leased => continue,
            OperatorAction::Cancel => progress.cancelled(),
        };
        // Not applicable (already final for cancel, not failed/dead for
        // retry): left alone, which makes the action idempotent.
        let Ok(next) = next else { continue };
        conn.prepare_cached(
            "UPDATE deliveries SET state = ?2, attempts_max = ?3, due_at_ms = ?4, deadline_at_ms = ?5,
                 updated_at_ms = ?6, finished_at_ms = ?7,
                 last_error = CASE WHEN ?2 = 'cancelled' THEN 'cancelled by an operator' ELSE last_error END
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            next.state.as_str(),
            next.attempts_max,
            next.due_at_ms,
            next.deadline_at_ms,
            now_ms,
            next.state.is_final().then_some(now_ms)
        ])?;
        if next.state.is_final() {
            promote_next_in_thread(conn, id, now_ms)?;
        }
        changed.push(destination);
    }
    Ok(Some(changed))
}

fn list_broadcasts(
    conn: &Connection,
    filter: &BroadcastFilter,
) -> Result<Vec<BroadcastView>, StoreError> {
    use crate::domain::BroadcastStatus;
    let mut sql = String::from("SELECT b.id FROM broadcasts b WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(before) = &filter.before_id {
        args.push(before.clone().into());
        sql.push_str(&format!(" AND b.id < ?{}", args.len()));
    }
    if let Some(since) = filter.created_since_ms {
        args.push(since.into());
        sql.push_str(&format!(" AND b.created_at_ms >= ?{}", args.len()));
    }
    if let Some(thread) = &filter.thread {
        args.push(thread.clone().into());
        sql.push_str(&format!(" AND b.thread_key = ?{}", args.len()));
    }
    if let Some(destination) = &filter.destination {
        args.push(destination.clone().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.destination = ?{})",
            args.len()
        ));
    }
    if let Some(state) = filter.delivery_state {
        args.push(state.as_str().to_owned().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state = ?{})",
            args.len()
        ));
    }
    let unfinished = concat!(
        "EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND ",
        unfinished_sql!("d."),
        ")"
    );
    match filter.status {
        None => {}
        Some(BroadcastStatus::Delivering) => sql.push_str(&format!(" AND {unfinished}")),
        Some(BroadcastStatus::Converged) => sql.push_str(
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state <> 'confirmed')",
        ),
        Some(BroadcastStatus::Partial) => sql.push_str(&format!(
            " AND NOT {unfinished} AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id
                AND d.state IN ('failed','dead','cancelled'))"
        )),
    }
    args.push((filter.limit as i64).into());
    sql.push_str(&format!(" ORDER BY b.id DESC LIMIT ?{}", args.len()));
    let ids: Vec<String> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args), |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(view) = read_broadcast_with(conn, &id, false)? {
            views.push(view);
        }
    }
    Ok(views)
}

fn read_broadcast(conn: &Connection, id: &str) -> Result<Option<BroadcastView>, StoreError> {
    read_broadcast_with(conn, id, true)
}

fn read_broadcast_with(
    conn: &Connection,
    id: &str,
    with_attempts: bool,
) -> Result<Option<BroadcastView>, StoreError> {
    let head = conn
        .prepare_cached(
            "SELECT title, body, severity, thread_key, created_at_ms, resolved, details, routes
             FROM broadcasts WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((
                message_from_row(row, 0, 5, 6)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<String>>(7)?,
            ))
        })
        .optional()?;
    let Some((message, created_at_ms, routes)) = head else {
        return Ok(None);
    };
    let message = message?;
    let routes = super::routes_from_json(routes.as_deref())?;
    let mut deliveries = Vec::new();
    let mut ids = Vec::new();
    {
        let mut select = conn.prepare_cached(
            "SELECT id, destination,
                    state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, possible_duplicate,
                    last_error, last_http_status, updated_at_ms, remote_ref
             FROM deliveries WHERE broadcast_id = ?1 ORDER BY id",
        )?;
        let mut rows = select.query(params![id])?;
        while let Some(row) = rows.next()? {
            ids.push(row.get::<_, i64>(0)?);
            let destination: String = row.get(1)?;
            deliveries.push(DeliveryView {
                idempotency_key: delivery_idempotency_key(id, &destination),
                destination,
                progress: progress_from_row(row, 2)??,
                last_error: row.get(8)?,
                last_http_status: row.get(9)?,
                updated_at_ms: row.get(10)?,
                remote_ref: row.get(11)?,
                attempts: Vec::new(),
            });
        }
    }
    let mut attempts = conn.prepare_cached(concat!(
        "SELECT number, kind, started_at_ms, finished_at_ms, outcome, http_status, excerpt, error
         FROM attempts WHERE ",
        attempts_of_sql!("", "?1"),
        " ORDER BY id"
    ))?;
    for (delivery, id) in deliveries.iter_mut().zip(ids) {
        if !with_attempts {
            break;
        }
        delivery.attempts = attempts
            .query_map(params![id], |row| {
                let kind: String = row.get(1)?;
                Ok(AttemptRecord {
                    number: row.get(0)?,
                    kind: if kind == "verify" {
                        AttemptKind::Verify
                    } else {
                        AttemptKind::Send
                    },
                    started_at_ms: row.get(2)?,
                    finished_at_ms: row.get(3)?,
                    outcome: row.get(4)?,
                    http_status: row.get(5)?,
                    excerpt: row.get(6)?,
                    error: row.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(Some(BroadcastView {
        id: id.to_owned(),
        message,
        created_at_ms,
        routes,
        deliveries,
    }))
}

/// The writer answered with another kind of answer than was asked for.
fn mismatched() -> StoreError {
    StoreError::Corrupt("the writer answered a different request".into())
}

impl Store for SqliteStore {
    async fn insert_broadcast(
        &self,
        new: NewBroadcast,
    ) -> Result<Vec<InsertedDelivery>, StoreError> {
        match self.write(Request::Insert(new)).await? {
            Answer::Inserted(inserted) => {
                self.inner.stored_broadcasts.fetch_add(1, Ordering::Relaxed);
                Ok(inserted)
            }
            _ => Err(mismatched()),
        }
    }

    async fn claim_due(
        &self,
        destination: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let request = Request::Claim {
            destination: destination.to_owned(),
            limit,
            rank_max: Severity::P5.rank(),
            now_ms,
        };
        match self.write(request).await? {
            Answer::Claimed(claim) => Ok(claim),
            _ => Err(mismatched()),
        }
    }

    async fn claim_due_urgent(&self, destination: &str, now_ms: i64) -> Result<Claim, StoreError> {
        let request = Request::Claim {
            destination: destination.to_owned(),
            limit: 1,
            rank_max: Severity::P1.rank(),
            now_ms,
        };
        match self.write(request).await? {
            Answer::Claimed(claim) => Ok(claim),
            _ => Err(mismatched()),
        }
    }

    async fn update_delivery(&self, update: DeliveryUpdate) -> Result<UpdateResult, StoreError> {
        match self.write(Request::Update(update)).await? {
            Answer::Updated(result) => Ok(result),
            _ => Err(mismatched()),
        }
    }

    async fn recover(&self, now_ms: i64) -> Result<Recovery, StoreError> {
        match self.write(Request::Recover(now_ms)).await? {
            Answer::Recovered(recovery) => Ok(recovery),
            _ => Err(mismatched()),
        }
    }

    async fn broadcast(&self, id: &str) -> Result<Option<BroadcastView>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| read_broadcast(conn, &id)).await
    }

    async fn ingest_record(
        &self,
        caller: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IngestRecord>, StoreError> {
        let (caller, key) = (caller.to_owned(), key.to_owned());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT broadcast_id, body_sha256, response FROM ingest_keys
                     WHERE caller = ?1 AND key = ?2 AND expires_at_ms >= ?3",
                )?
                .query_row(params![caller, key, now_ms], |row| {
                    Ok(IngestRecord {
                        broadcast_id: row.get(0)?,
                        body_sha256: row.get(1)?,
                        response: row.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn save_ingest_response(
        &self,
        caller: &str,
        key: &str,
        response: String,
    ) -> Result<(), StoreError> {
        let request = Request::SaveIngestResponse {
            caller: caller.to_owned(),
            key: key.to_owned(),
            response,
        };
        match self.write(request).await? {
            Answer::Done(_) => Ok(()),
            _ => Err(mismatched()),
        }
    }

    async fn purge_ingest_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        match self.write(Request::PurgeIngestKeys(now_ms)).await? {
            Answer::Done(purged) => Ok(purged),
            _ => Err(mismatched()),
        }
    }

    async fn list_broadcasts(
        &self,
        filter: BroadcastFilter,
    ) -> Result<Vec<BroadcastView>, StoreError> {
        self.read(move |conn| list_broadcasts(conn, &filter)).await
    }

    async fn broadcast_ids_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_owned();
        let (lowest, highest) = crate::domain::broadcast_id_range(&prefix);
        self.read(move |conn| {
            // The range reads the primary key; the prefix test keeps an id of
            // another shape (none is written) out.
            Ok(conn
                .prepare_cached(
                    "SELECT id FROM broadcasts WHERE id >= ?1 AND id <= ?2
                       AND substr(id, 1, length(?3)) = ?3
                     ORDER BY id LIMIT ?4",
                )?
                .query_map(params![lowest, highest, prefix, limit as i64], |row| {
                    row.get(0)
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn operator_action(
        &self,
        broadcast_id: &str,
        action: OperatorAction,
        destinations: Vec<String>,
        policies: Vec<(String, RetryPolicy)>,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let request = Request::Operate {
            broadcast_id: broadcast_id.to_owned(),
            action,
            destinations,
            policies,
            now_ms,
        };
        match self.write(request).await? {
            Answer::Operated(changed) => Ok(changed),
            _ => Err(mismatched()),
        }
    }

    async fn backlog(&self) -> Result<Vec<DestinationBacklog>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(BACKLOG_SQL)?;
            let mut rows: Vec<DestinationBacklog> = select
                .query_map([], |row| {
                    Ok(DestinationBacklog {
                        destination: row.get(0)?,
                        unfinished: row.get(1)?,
                        oldest_unfinished_since_ms: row.get(2)?,
                        oldest_due_at_ms: None,
                    })
                })?
                .collect::<Result<_, _>>()?;
            for row in &mut rows {
                row.oldest_due_at_ms = earliest_due(conn, &row.destination)?;
            }
            Ok(rows)
        })
        .await
    }

    async fn delete_finished_broadcasts(
        &self,
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    ) -> Result<RetentionBatch, StoreError> {
        let request = Request::DeleteFinished {
            before_ms,
            after_id,
            limit,
        };
        match self.write(request).await? {
            Answer::Retention(batch) => {
                self.inner
                    .stored_broadcasts
                    .fetch_sub(batch.deleted, Ordering::Relaxed);
                Ok(batch)
            }
            _ => Err(mismatched()),
        }
    }

    async fn stored_broadcasts(&self) -> Result<u64, StoreError> {
        Ok(self.inner.stored_broadcasts.load(Ordering::Relaxed))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.inner.health.failing().is_some() {
            // The last commit failed: only a commit tells whether one can
            // go through again.
            self.write(Request::Probe).await?;
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn pause_destination(&self, pause: DestinationPause) -> Result<(), StoreError> {
        match self.write(Request::Pause(pause)).await? {
            Answer::Done(_) => Ok(()),
            _ => Err(mismatched()),
        }
    }

    async fn resume_destination(&self, destination: &str, now_ms: i64) -> Result<bool, StoreError> {
        let request = Request::Resume {
            destination: destination.to_owned(),
            now_ms,
        };
        match self.write(request).await? {
            Answer::Done(active) => Ok(active > 0),
            _ => Err(mismatched()),
        }
    }

    async fn destination_pauses(&self, now_ms: i64) -> Result<Vec<DestinationPause>, StoreError> {
        self.read(move |conn| {
            let mut select = conn.prepare_cached(
                "SELECT destination, until_ms, reason, paused_by, paused_at_ms
                 FROM destination_pauses WHERE until_ms > ?1 ORDER BY destination",
            )?;
            let pauses = select
                .query_map(params![now_ms], |row| {
                    Ok(DestinationPause {
                        destination: row.get(0)?,
                        until_ms: row.get(1)?,
                        reason: row.get(2)?,
                        paused_by: row.get(3)?,
                        paused_at_ms: row.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(pauses)
        })
        .await
    }

    async fn destinations_with_work(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare(concat!(
                "SELECT DISTINCT destination FROM deliveries WHERE ",
                unfinished_sql!("")
            ))?;
            let names = select
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(names)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_from_an_older_schema_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            // A delivery that already failed once, with its attempt.
            conn.execute_batch(
                "INSERT INTO broadcasts VALUES ('B0', 'old', '', 'P2', NULL, 0);
                 INSERT INTO deliveries (id, broadcast_id, destination, idempotency_key, state,
                     attempts_made, attempts_max, due_at_ms, created_at_ms, updated_at_ms, last_error)
                 VALUES (7, 'B0', 'a', 'B0-a', 'retrying', 1, 8, 0, 0, 0, 'HTTP 503');
                 INSERT INTO broadcasts VALUES ('B9', 'done', '', 'P2', NULL, 0);
                 INSERT INTO deliveries (id, broadcast_id, destination, idempotency_key, state,
                     attempts_made, attempts_max, due_at_ms, created_at_ms, updated_at_ms)
                 VALUES (9, 'B9', 'a', 'B9-a', 'confirmed', 1, 8, NULL, 0, 0);
                 INSERT INTO attempts (delivery_id, number, kind, started_at_ms, finished_at_ms, outcome, http_status)
                 VALUES (7, 1, 'send', 0, 0, 'retryable', 503);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let old = store.broadcast("B0").await.unwrap().expect("kept");
        assert_eq!(old.deliveries.len(), 1);
        let delivery = &old.deliveries[0];
        assert_eq!(delivery.idempotency_key, "B0-a");
        assert_eq!(delivery.progress.state, DeliveryState::Retrying);
        assert_eq!(delivery.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(delivery.attempts.len(), 1);
        assert_eq!(delivery.attempts[0].http_status, Some(503));
        let backlog = store.backlog().await.unwrap();
        assert_eq!(
            backlog[0].unfinished, 1,
            "the confirmed delivery is finished"
        );
        let retried = store.claim_due("a", 1, 0).await.unwrap();
        assert_eq!(retried.deliveries[0].delivery_id, 7);
        assert_eq!(retried.deliveries[0].idempotency_key, "B0-a");
        assert_eq!(retried.deliveries[0].message.severity(), Severity::P2);
        let message = Message::new("t", "", Severity::P1, None).unwrap();
        let new = NewBroadcast {
            id: "B1".into(),
            message,
            created_at_ms: 0,
            routes: Vec::new(),
            deliveries: vec![NewDelivery {
                destination: "a".into(),
                policy: RetryPolicy::default(),
                lease_now: false,
            }],
            ingest_key: None,
        };
        store.insert_broadcast(new).await.unwrap();
        let claim = store.claim_due("a", 1, 0).await.unwrap();
        assert_eq!(claim.deliveries[0].lease_epoch, 1);
    }

    /// A connection, configured as the store's, to a freshly migrated
    /// database that lives as long as the directory returned with it.
    fn migrated_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path().join("plan.db")).unwrap());
        let conn = Connection::open(dir.path().join("plan.db")).unwrap();
        configure(&conn).unwrap();
        (dir, conn)
    }

    /// The steps of `sql`'s query plan on a freshly migrated database.
    fn query_plan(sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        let (_dir, conn) = migrated_db();
        let plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan
    }

    #[test]
    fn due_work_is_claimed_through_its_partial_index() {
        let plan = query_plan(CLAIM_SQL, params!["d", 1, 0, 10]);
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX deliveries_due")),
            "{plan:?}"
        );
    }

    #[test]
    fn retention_reads_old_broadcasts_along_the_primary_key() {
        // A range of the primary key (ids sort by time), and one lookup of
        // each candidate's deliveries: never a scan of either table.
        let plan = query_plan(RETENTION_CANDIDATES_SQL, params!["", "01", 1_000, 256]);
        assert!(
            plan.iter().any(|step| step
                .contains("SEARCH b USING INDEX sqlite_autoindex_broadcasts_1 (id>? AND id<?)")),
            "{plan:?}"
        );
        assert!(
            plan.iter().any(|step| step
                .contains("SEARCH d USING INDEX sqlite_autoindex_deliveries_1 (broadcast_id=?)")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
        let plan = query_plan("DELETE FROM ingest_keys WHERE broadcast_id = ?1", ["x"]);
        assert!(
            plan.iter()
                .any(|step| step.contains("ingest_keys_broadcast")),
            "{plan:?}"
        );
    }

    #[test]
    fn unfinished_work_is_read_through_its_partial_index() {
        for sql in [BACKLOG_SQL, UNFINISHED_COUNT_SQL] {
            let plan = query_plan(sql, []);
            assert!(
                plan.iter()
                    .any(|step| step.contains("INDEX deliveries_unfinished")),
                "{sql}: {plan:?}"
            );
        }
    }

    /// Whether executing `sql` writes to the index `index`: the program
    /// opens a write cursor on its root page.
    fn writes_index(sql: &str, index: &str) -> bool {
        let (_dir, conn) = migrated_db();
        let root: i64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                [index],
                |r| r.get(0),
            )
            .unwrap();
        let mut program = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let unbound = vec![rusqlite::types::Value::Null; program.parameter_count()];
        let steps = program
            .query_map(rusqlite::params_from_iter(unbound), |r| {
                Ok((r.get::<_, String>(1)?, r.get::<_, i64>(3)?))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        steps
            .iter()
            .any(|(op, page)| op == "OpenWrite" && *page == root)
    }

    #[test]
    fn only_the_step_to_a_final_state_writes_the_index_of_unfinished_work() {
        // SQLite rewrites an index entry whenever an UPDATE names a column
        // of its condition; claims and retries must not (migration 8).
        assert!(!writes_index(LEASE_SQL, "deliveries_unfinished"));
        assert!(!writes_index(OUTCOME_SQL, "deliveries_unfinished"));
        assert!(writes_index(FINAL_OUTCOME_SQL, "deliveries_unfinished"));
        // The lease takes the delivery out of the due index.
        assert!(writes_index(LEASE_SQL, "deliveries_due"));
    }

    #[test]
    fn a_database_from_a_newer_herald_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = SqliteStore::open(&path).err().unwrap();
        assert!(
            matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
            "{error}"
        );
    }
}
