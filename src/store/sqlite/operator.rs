//! Operator actions on a broadcast (retry the failed and dead deliveries,
//! cancel the unfinished ones), applied in the writer's transaction.

use super::*;

pub(super) fn operate(
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
