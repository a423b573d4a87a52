//! Delivery objectives on PostgreSQL: the row written with its broadcast,
//! the watcher's due lookup, and the decision. Several nodes may see the
//! same deadline pass; the decision is a conditional update (`decision IS
//! NULL`) that takes the row's lock, in the transaction that inserts the
//! escalation's child broadcasts. A second node's update waits for the
//! first's commit, then finds a decision and writes nothing; a node frozen
//! mid-transaction loses its transaction (and the lock) to
//! `idle_in_transaction_session_timeout`, so the others decide.

use super::*;

/// Writes the objectives of a batch of new broadcasts, in its transaction.
pub(super) async fn insert_objectives(
    tx: &mut Tx<'_>,
    batch: &[&NewBroadcast],
) -> Result<(), StoreError> {
    for new in batch {
        let Some(objective) = &new.objective else {
            continue;
        };
        tx.execute(
            "INSERT INTO objectives (broadcast_id, spec, deadline_ms, thread_key)
             VALUES ($1, $2, $3, $4)",
            &[
                &new.id,
                &crate::store::objective_json(objective),
                &objective.deadline_ms(new.created_at_ms),
                &new.message.thread(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// The objectives of these broadcasts, by broadcast id (one query).
pub(super) async fn read_objectives(
    client: &impl GenericClient,
    broadcast_ids: &[String],
) -> Result<Vec<(String, ObjectiveRecord)>, StoreError> {
    let rows = client
        .query(
            "SELECT broadcast_id, spec, deadline_ms, decision, decided_at_ms, escalated_to,
                    fallback_broadcast_id, meta_alert_broadcast_id
             FROM objectives WHERE broadcast_id = ANY($1)",
            &[&broadcast_ids],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let record = crate::store::ObjectiveColumns {
                spec: row.try_get(1)?,
                deadline_ms: row.try_get(2)?,
                decision: row.try_get(3)?,
                decided_at_ms: row.try_get(4)?,
                escalated_to: row.try_get(5)?,
                fallback_broadcast_id: row.try_get(6)?,
                meta_alert_broadcast_id: row.try_get(7)?,
            }
            .record()?;
            Ok((row.try_get(0)?, record))
        })
        .collect()
}

pub(super) async fn objectives_due(
    client: &impl GenericClient,
    now_ms: i64,
    limit: usize,
) -> Result<ObjectivesDue, StoreError> {
    let due = client
        .query(
            "SELECT broadcast_id FROM objectives
             WHERE decision IS NULL AND deadline_ms <= $1 ORDER BY deadline_ms LIMIT $2",
            &[&now_ms, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<Vec<String>, _>>()?;
    let next_deadline_ms: Option<i64> = client
        .query_one(
            "SELECT min(deadline_ms) FROM objectives WHERE decision IS NULL AND deadline_ms > $1",
            &[&now_ms],
        )
        .await?
        .try_get(0)?;
    Ok(ObjectivesDue {
        due,
        next_deadline_ms,
    })
}

/// The decision and the child broadcasts in one transaction, only if no
/// decision is recorded; `None` (and a rollback) otherwise.
pub(super) async fn decide_objective(
    inner: &Inner,
    tx: &mut Tx<'_>,
    verdict: &ObjectiveVerdict,
) -> Result<Option<ObjectiveCommitted>, StoreError> {
    let escalated_to = crate::store::routes_json(&verdict.escalated_to);
    let decided = tx
        .execute(
            "UPDATE objectives SET decision = $2, decided_at_ms = $3, escalated_to = $4,
                 fallback_broadcast_id = $5, meta_alert_broadcast_id = $6
             WHERE broadcast_id = $1 AND decision IS NULL",
            &[
                &verdict.broadcast_id,
                &verdict.decision.as_str(),
                &verdict.decided_at_ms,
                &escalated_to,
                &verdict.fallback.as_ref().map(|b| b.id.as_str()),
                &verdict.meta_alert.as_ref().map(|b| b.id.as_str()),
            ],
        )
        .await?;
    if decided == 0 {
        return Ok(None);
    }
    let children: Vec<&NewBroadcast> = [&verdict.fallback, &verdict.meta_alert]
        .into_iter()
        .flatten()
        .collect();
    if children.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let inserted = insert_batch(inner, tx, &children).await?;
    Ok(Some(
        children
            .iter()
            .map(|child| child.id.clone())
            .zip(inserted)
            .collect(),
    ))
}

pub(super) async fn escalated_destinations(
    client: &impl GenericClient,
    thread: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT escalated_to FROM objectives
             WHERE thread_key = $1 AND decision = 'escalated' ORDER BY broadcast_id",
            &[&thread],
        )
        .await?;
    let mut out: Vec<String> = Vec::new();
    for row in rows {
        let list: Option<String> = row.try_get(0)?;
        for name in crate::store::routes_from_json(list.as_deref())? {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}
