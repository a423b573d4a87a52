//! Recovery at open: each delivery a stopped process left mid-attempt gets
//! an `interrupted` attempt and its next state (checked at the destination
//! before any re-send), and every lease is released.

use super::*;

pub(super) fn recover(conn: &Connection, now_ms: i64) -> Result<Recovery, StoreError> {
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
