//! The writer thread (group commit: one transaction per batch of queued
//! operations, replayed one by one when one fails) and the checkpoints
//! beside it that keep the WAL short.

use super::*;

/// Copies committed WAL frames into the database every
/// `CHECKPOINT_EVERY_MS`, without blocking the writer (PASSIVE), until the
/// store is dropped, and tells the writer how long the WAL is.
pub(super) fn run_checkpointer(
    conn: Connection,
    alive: std::sync::Weak<Inner>,
    wal_frames: &AtomicU64,
) {
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
pub(super) fn checkpoint(conn: &Connection) -> Result<u64, StoreError> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(frames.max(0) as u64)
}

pub(super) fn run_writer(
    mut conn: Connection,
    mut queue: mpsc::Receiver<WriteOp>,
    timer: tokio::runtime::Runtime,
    wal_frames: &AtomicU64,
    health: &CommitHealth,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        take_queued(&mut queue, &mut batch);
        if outcomes_may_wait(&batch) {
            timer.block_on(gather_outcomes(&mut queue, &mut batch));
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

/// Adds what is queued right now to `batch`, up to `WRITE_BATCH_MAX`.
fn take_queued(queue: &mut mpsc::Receiver<WriteOp>, batch: &mut Vec<WriteOp>) {
    while batch.len() < WRITE_BATCH_MAX {
        match queue.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// Whether `batch` may wait for company: a few outcomes and nothing else.
/// Nobody waits on an outcome's commit but its own attempt (which holds
/// its lease until then); a new broadcast's caller, a claim's idle lane or
/// an operator does wait, so any of those commits at once.
fn outcomes_may_wait(batch: &[WriteOp]) -> bool {
    batch.len() < OUTCOME_GATHER_MAX
        && batch
            .iter()
            .all(|op| matches!(op.request, Request::Update(_)))
}

/// Waits up to `OUTCOME_GATHER_MS` for more operations, and commits as
/// soon as one arrives that someone waits on (it takes the outcomes with
/// it), or `OUTCOME_GATHER_MAX` have gathered, or the queue closes.
async fn gather_outcomes(queue: &mut mpsc::Receiver<WriteOp>, batch: &mut Vec<WriteOp>) {
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(OUTCOME_GATHER_MS);
    while outcomes_may_wait(batch) {
        match tokio::time::timeout_at(deadline, queue.recv()).await {
            Ok(Some(op)) => {
                batch.push(op);
                take_queued(queue, batch);
            }
            Ok(None) | Err(_) => return,
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
pub(super) fn write_batch(conn: &mut Connection, batch: &mut Vec<WriteOp>, health: &CommitHealth) {
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
pub(super) fn cannot_commit(error: &StoreError) -> bool {
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
pub(super) fn without_foreign_keys<T>(
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
pub(super) fn apply_all(conn: &mut Connection, ops: &[WriteOp]) -> Result<Vec<Answer>, StoreError> {
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

pub(super) fn apply_each(conn: &Connection, ops: &[WriteOp]) -> Result<Vec<Answer>, StoreError> {
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        answers.push(match &op.request {
            Request::Insert(new) => Answer::Inserted(insert_broadcast(conn, new)?),
            Request::DecideObjective(verdict) => Answer::Decided(decide_objective(conn, verdict)?),
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
