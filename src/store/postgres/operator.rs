//! Operator actions on a broadcast (retry the failed and dead deliveries,
//! cancel the unfinished ones).

use super::*;

pub(super) async fn operate(
    inner: &Inner,
    tx: &mut Tx<'_>,
    broadcast_id: &str,
    action: OperatorAction,
    destinations: &[String],
    policies: &[(String, RetryPolicy)],
    now_ms: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let head = tx
        .query_opt(
            "SELECT thread_key FROM broadcasts WHERE id = $1",
            &[&broadcast_id],
        )
        .await?;
    let Some(head) = head else { return Ok(None) };
    let thread: Option<String> = head.try_get(0)?;
    // Rows first, then the thread: the order outcome batches take them in.
    let rows = tx
        .query(
            "SELECT id, destination, state, attempts_made, attempts_max, due_at_ms, deadline_at_ms,
                    possible_duplicate, lease_owner IS NOT NULL
             FROM deliveries WHERE broadcast_id = $1 ORDER BY id FOR UPDATE",
            &[&broadcast_id],
        )
        .await?;
    if let Some(thread) = &thread {
        lock_threads(tx, [thread.clone()]).await?;
    }
    let mut changed = Vec::new();
    let mut finished = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let destination: String = row.try_get(1)?;
        if !destinations.is_empty() && !destinations.contains(&destination) {
            continue;
        }
        let progress = progress_from_row(row, 2)?;
        let leased: bool = row.try_get(8)?;
        let policy = policies
            .iter()
            .find(|(name, _)| *name == destination)
            .map(|(_, p)| *p)
            .unwrap_or_default();
        let next = match action {
            OperatorAction::Retry => match progress.operator_retry(&policy, now_ms) {
                Ok(mut next) => {
                    if let Some(thread) = &thread {
                        let busy = tx
                            .query_opt(
                                concat!(
                                    "SELECT 1 FROM deliveries WHERE destination = $1 AND thread_key = $2
                                       AND id <> $3 AND state <> 'waiting' AND state NOT IN ",
                                    final_states_sql!(),
                                    " LIMIT 1"
                                ),
                                &[&destination, thread, &id],
                            )
                            .await?
                            .is_some();
                        if busy {
                            next.state = DeliveryState::Waiting;
                            next.due_at_ms = None;
                        }
                    }
                    Ok(next)
                }
                Err(e) => Err(e),
            },
            // An attempt in flight is left to finish (see the SQLite store).
            OperatorAction::Cancel if leased => continue,
            OperatorAction::Cancel => progress.cancelled(),
        };
        let Ok(next) = next else { continue };
        tx.execute(
            "UPDATE deliveries SET state = $2, attempts_max = $3, due_at_ms = $4, deadline_at_ms = $5,
                 updated_at_ms = $6,
                 last_error = CASE WHEN $2 = 'cancelled' THEN 'cancelled by an operator' ELSE last_error END
             WHERE id = $1",
            &[
                &id,
                &next.state.as_str(),
                &(next.attempts_max as i32),
                &next.due_at_ms,
                &next.deadline_at_ms,
                &now_ms,
            ],
        )
        .await?;
        if next.state.is_final() {
            finished.push(id);
        }
        changed.push(destination);
    }
    if !finished.is_empty() {
        promote_after_final(inner, tx, finished, now_ms).await?;
    }
    notify(inner, tx, changed.clone()).await?;
    Ok(Some(changed))
}
