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
/// A batch of outcomes alone (no new broadcast, claim or operator's
/// write in it) waits this long at most for more before its commit. At a
/// low rate each commit costs far more than an outcome in it (an fsync,
/// the pages it touched written again to the WAL, the writer's wake-ups):
/// outcomes then mostly ride along with the next broadcast's commit. An
/// outcome's commit is later by this much at most; its attempt's request
/// has already gone and nobody else waits on it.
const OUTCOME_GATHER_MS: u64 = 10;
/// A batch of this many outcomes commits without waiting: the writer is
/// busy enough that they share commits anyway.
const OUTCOME_GATHER_MAX: usize = 32;
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

// The files below use the SQL macros above, so they are declared after them.
mod claims;
mod impl_store;
mod insert;
mod objectives;
mod operator;
mod outcomes;
mod reads;
mod recovery;
mod retention;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use claims::*;
use insert::*;
use objectives::*;
use operator::*;
use outcomes::*;
pub(crate) use reads::UNFINISHED_COUNT_SQL;
use reads::*;
use recovery::*;
use retention::*;
use schema::*;
use writer::*;

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
    DecideObjective(Box<ObjectiveVerdict>),
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
    Decided(Option<ObjectiveCommitted>),
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
        // The writer's own clock, for outcomes that wait for company.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer's timer: {e}")))?;
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run_writer(conn, queue, timer, &writer_wal_frames, &writer_health))
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

/// The writer answered with another kind of answer than was asked for.
fn mismatched() -> StoreError {
    StoreError::Corrupt("the writer answered a different request".into())
}
