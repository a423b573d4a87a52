//! Thread order: one delivery of a thread under way per destination, the
//! per-thread locks that serialize that decision, and releasing the next
//! waiting delivery when one ends.

use super::*;

/// Serializes, per thread, the decisions of thread order: whether a new
/// delivery waits, and which waiting one goes next. Keys are taken in
/// sorted order so two transactions never wait on each other in a cycle.
/// Lock order everywhere: delivery rows, then `destination_state` rows (in
/// name order), then thread locks.
pub(super) async fn lock_threads(
    tx: &mut Tx<'_>,
    threads: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let threads: Vec<String> = threads
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if threads.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(t, 7)) FROM unnest($1::TEXT[]) t ORDER BY t",
        &[&threads],
    )
    .await?;
    Ok(())
}

/// The deliveries `finished` just became final: for each thread, the next
/// waiting delivery on that destination goes pending, if nothing else of
/// the thread is under way there. Returns the ids that were finished and
/// promoted something, and wakes their destinations.
pub(super) async fn promote_after_final(
    inner: &Inner,
    tx: &mut Tx<'_>,
    finished: Vec<i64>,
    now_ms: i64,
) -> Result<BTreeSet<i64>, StoreError> {
    let threads: Vec<(i64, String, String)> = tx
        .query(
            "SELECT id, destination, thread_key FROM deliveries
             WHERE id = ANY($1) AND thread_key IS NOT NULL",
            &[&finished],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, StoreError>>()?;
    if threads.is_empty() {
        return Ok(BTreeSet::new());
    }
    lock_threads(tx, threads.iter().map(|(_, _, t)| t.clone())).await?;
    let mut promoted = BTreeSet::new();
    let mut woken = Vec::new();
    for (id, destination, thread) in threads {
        let next = tx
            .query_opt(
                concat!(
                    "SELECT n.id, n.state, n.attempts_made, n.attempts_max, n.due_at_ms,
                            n.deadline_at_ms, n.possible_duplicate
                     FROM deliveries n
                     WHERE n.destination = $1 AND n.thread_key = $2 AND n.state = 'waiting'
                       AND NOT EXISTS (SELECT 1 FROM deliveries o
                                       WHERE o.destination = $1 AND o.thread_key = $2
                                         AND o.state NOT IN ",
                    final_states_sql!(),
                    " AND o.state <> 'waiting')
                     ORDER BY n.id LIMIT 1"
                ),
                &[&destination, &thread],
            )
            .await?;
        let Some(row) = next else { continue };
        let next_id: i64 = row.try_get(0)?;
        let progress = progress_from_row(&row, 1)?
            .thread_ready(now_ms)
            .map_err(corrupt)?;
        tx.execute(
            "UPDATE deliveries SET state = $2, due_at_ms = $3, updated_at_ms = $4 WHERE id = $1",
            &[
                &next_id,
                &progress.state.as_str(),
                &progress.due_at_ms,
                &now_ms,
            ],
        )
        .await?;
        promoted.insert(id);
        woken.push(destination);
    }
    notify(inner, tx, woken).await?;
    Ok(promoted)
}
