//! Delivery objectives on SQLite: the row written with its broadcast, the
//! watcher's due lookup, and the decision, taken in the writer's
//! transaction only while none is recorded (one process per file, one
//! writer: the conditional update is the whole of "decided once").

use super::*;

/// Writes the objective of a new broadcast, in the insert's transaction.
pub(super) fn insert_objective(conn: &Connection, new: &NewBroadcast) -> Result<(), StoreError> {
    let Some(objective) = &new.objective else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO objectives (broadcast_id, spec, deadline_ms, thread_key)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        new.id,
        crate::store::objective_json(objective),
        objective.deadline_ms(new.created_at_ms),
        new.message.thread(),
    ])?;
    Ok(())
}

pub(super) fn read_objective(
    conn: &Connection,
    broadcast_id: &str,
) -> Result<Option<ObjectiveRecord>, StoreError> {
    conn.prepare_cached(
        "SELECT spec, deadline_ms, decision, decided_at_ms, escalated_to, fallback_broadcast_id,
                meta_alert_broadcast_id
         FROM objectives WHERE broadcast_id = ?1",
    )?
    .query_row(params![broadcast_id], |row| {
        Ok(crate::store::ObjectiveColumns {
            spec: row.get(0)?,
            deadline_ms: row.get(1)?,
            decision: row.get(2)?,
            decided_at_ms: row.get(3)?,
            escalated_to: row.get(4)?,
            fallback_broadcast_id: row.get(5)?,
            meta_alert_broadcast_id: row.get(6)?,
        })
    })
    .optional()?
    .map(crate::store::ObjectiveColumns::record)
    .transpose()
}

/// Undecided objectives past their deadline, and the next deadline: both
/// read through `objectives_due` (its condition written literally).
pub(super) fn objectives_due(
    conn: &Connection,
    now_ms: i64,
    limit: usize,
) -> Result<ObjectivesDue, StoreError> {
    let due = conn
        .prepare_cached(
            "SELECT broadcast_id FROM objectives
             WHERE decision IS NULL AND deadline_ms <= ?1 ORDER BY deadline_ms LIMIT ?2",
        )?
        .query_map(params![now_ms, limit as i64], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    let next_deadline_ms = conn
        .prepare_cached(
            "SELECT min(deadline_ms) FROM objectives WHERE decision IS NULL AND deadline_ms > ?1",
        )?
        .query_row(params![now_ms], |row| row.get(0))?;
    Ok(ObjectivesDue {
        due,
        next_deadline_ms,
    })
}

/// In the writer's transaction: the decision if none is recorded, and the
/// child broadcasts with it. Nothing when decided before.
pub(super) fn decide_objective(
    conn: &Connection,
    verdict: &ObjectiveVerdict,
) -> Result<Option<ObjectiveCommitted>, StoreError> {
    let decided = conn
        .prepare_cached(
            "UPDATE objectives SET decision = ?2, decided_at_ms = ?3, escalated_to = ?4,
                 fallback_broadcast_id = ?5, meta_alert_broadcast_id = ?6
             WHERE broadcast_id = ?1 AND decision IS NULL",
        )?
        .execute(params![
            verdict.broadcast_id,
            verdict.decision.as_str(),
            verdict.decided_at_ms,
            crate::store::routes_json(&verdict.escalated_to),
            verdict.fallback.as_ref().map(|b| b.id.as_str()),
            verdict.meta_alert.as_ref().map(|b| b.id.as_str()),
        ])?;
    if decided == 0 {
        return Ok(None);
    }
    let mut inserted = Vec::new();
    for child in [&verdict.fallback, &verdict.meta_alert]
        .into_iter()
        .flatten()
    {
        inserted.push((child.id.clone(), insert_broadcast(conn, child)?));
    }
    Ok(Some(inserted))
}

pub(super) fn escalated_destinations(
    conn: &Connection,
    thread: &str,
) -> Result<Vec<String>, StoreError> {
    let lists = conn
        .prepare_cached(
            "SELECT escalated_to FROM objectives
             WHERE thread_key = ?1 AND decision = 'escalated' ORDER BY broadcast_id",
        )?
        .query_map(params![thread], |row| row.get::<_, Option<String>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<String> = Vec::new();
    for list in lists {
        for name in crate::store::routes_from_json(list.as_deref())? {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}
