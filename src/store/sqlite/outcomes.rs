//! Outcome writers: recording an attempt and moving its delivery to the
//! next state, and releasing the next delivery of a thread when one ends.

use super::*;

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

pub(super) const OUTCOME_SQL: &str = concat!(update_outcome_sql!(), outcome_where_sql!());
pub(super) const FINAL_OUTCOME_SQL: &str = concat!(
    update_outcome_sql!(),
    ", finished_at_ms = ?11",
    outcome_where_sql!()
);

pub(super) fn update_delivery(
    conn: &Connection,
    update: &DeliveryUpdate,
) -> Result<UpdateResult, StoreError> {
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
pub(super) fn promote_next_in_thread(
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
