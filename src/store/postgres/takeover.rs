//! Takeover: every node releases expired leases (a delivery left `sending`
//! goes to `verifying`, as after a crash) and wakes their destinations.

use super::*;

/// Releases expired leases every quarter lease, until the store is dropped.
pub(super) async fn run_takeover(store: std::sync::Weak<Inner>, lease_ms: i64) {
    let every_ms = (lease_ms / 4).clamp(100, 15_000) as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
        let Some(inner) = store.upgrade() else { return };
        let store = PostgresStore { inner };
        match store.take_over(crate::clock::now_ms(), false).await {
            Ok(r) if r.interrupted + r.released > 0 => tracing::warn!(
                interrupted = r.interrupted,
                released = r.released,
                "took over expired leases: deliveries that were in flight on another node are verified before any re-send"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot take over expired leases; trying again"),
        }
    }
}

/// Releases up to `TAKEOVER_BATCH_MAX` leases that expired (or are this
/// node's own, at start). Returns what it did and whether the batch was full.
pub(super) async fn take_over_batch(
    inner: &Inner,
    tx: &mut Tx<'_>,
    now_ms: i64,
    own_too: bool,
) -> Result<(Recovery, bool), StoreError> {
    let rows = tx
        .query(
            "SELECT id, state, attempts_made, attempts_max, due_at_ms, deadline_at_ms,
                    possible_duplicate, updated_at_ms, lease_owner, destination
             FROM deliveries
             WHERE lease_owner IS NOT NULL AND (lease_expires_at_ms < $1 OR ($2 AND lease_owner = $3))
             ORDER BY lease_expires_at_ms
             LIMIT $4
             FOR UPDATE SKIP LOCKED",
            &[&now_ms, &own_too, &inner.node_id, &TAKEOVER_BATCH_MAX],
        )
        .await?;
    let full = rows.len() as i64 == TAKEOVER_BATCH_MAX;
    let mut recovery = Recovery::default();
    let (mut ids, mut states, mut dues, mut errors) = (vec![], vec![], vec![], vec![]);
    let (mut attempt_ids, mut numbers, mut started, mut notes) = (vec![], vec![], vec![], vec![]);
    let mut woken = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let progress = progress_from_row(row, 1)?;
        let leased_at_ms: i64 = row.try_get(7)?;
        let owner: String = row.try_get(8)?;
        woken.push(row.try_get::<_, String>(9)?);
        ids.push(id);
        if progress.state == DeliveryState::Sending {
            let next = progress.interrupted(now_ms).map_err(corrupt)?;
            states.push(next.state.as_str());
            dues.push(next.due_at_ms);
            errors.push(Some(format!(
                "interrupted: the lease of node {owner} lapsed mid-attempt"
            )));
            attempt_ids.push(id);
            numbers.push(progress.attempts_made as i32);
            started.push(leased_at_ms);
            notes.push(format!(
                "node {owner} stopped answering while this attempt was in flight (its lease expired); \
                 the outcome is unknown, so the destination is checked before any re-send"
            ));
            recovery.interrupted += 1;
        } else {
            states.push(progress.state.as_str());
            dues.push(progress.due_at_ms.or(Some(now_ms)));
            errors.push(None);
            recovery.released += 1;
        }
    }
    if ids.is_empty() {
        return Ok((recovery, false));
    }
    tx.execute(
        "INSERT INTO attempts (delivery_id, number, kind, started_at_ms, finished_at_ms, outcome,
                               error, node)
         SELECT u.id, u.number, 'send', u.started, $4, 'interrupted', u.note, $5
         FROM unnest($1::BIGINT[], $2::INT[], $3::BIGINT[], $6::TEXT[]) AS u(id, number, started, note)",
        &[&attempt_ids, &numbers, &started, &now_ms, &inner.node_id, &notes],
    )
    .await?;
    tx.execute(
        "UPDATE deliveries d SET state = u.state, due_at_ms = u.due, lease_owner = NULL,
             lease_expires_at_ms = NULL, updated_at_ms = $5,
             last_error = coalesce(u.error, d.last_error)
         FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS u(id, state, due, error)
         WHERE d.id = u.id",
        &[&ids, &states, &dues, &errors, &now_ms],
    )
    .await?;
    notify(inner, tx, woken).await?;
    Ok((recovery, full))
}
