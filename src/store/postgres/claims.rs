//! Claims: leasing a destination's due deliveries to this node under a new
//! epoch (`FOR UPDATE SKIP LOCKED`), admitted by the shared guard.

use super::*;

pub(super) async fn claim_due(
    inner: &Inner,
    tx: &mut Tx<'_>,
    destination: &str,
    limit: usize,
    rank_max: u8,
    now_ms: i64,
) -> Result<Claim, StoreError> {
    let isolation = inner
        .isolation
        .read()
        .expect("isolation poisoned")
        .get(destination)
        .copied()
        .unwrap_or_default();
    // The shared guard first: a paused, open or drained destination claims
    // nothing, on any node. The row lock serializes only claims of this
    // destination, and only while they decide.
    let mut guard = read_guard(tx, destination, true).await?;
    let before = guard.clone();
    let allowed = match guard.as_mut() {
        Some(guard) => match guard.admit(&isolation, limit, now_ms, inner.lease_ms) {
            Ok(allowed) => allowed,
            Err(until_ms) => {
                return Ok(Claim {
                    next_due_at_ms: Some(until_ms),
                    ..Claim::default()
                })
            }
        },
        None => limit,
    };
    let rows = tx
        .query(
            "SELECT d.id, d.broadcast_id, d.idempotency_key,
                    d.state, d.attempts_made, d.attempts_max, d.due_at_ms, d.deadline_at_ms,
                    d.possible_duplicate,
                    b.title, b.body, b.severity, b.thread_key, b.created_at_ms, d.last_error,
                    b.resolved, d.remote_ref,
                    CASE WHEN d.thread_key IS NOT NULL THEN
                        (SELECT r.remote_ref FROM deliveries r
                         WHERE r.destination = d.destination AND r.thread_key = d.thread_key
                           AND r.id < d.id AND r.remote_ref IS NOT NULL
                         ORDER BY r.id LIMIT 1)
                    END,
                    b.details
             FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
             WHERE d.destination = $1 AND d.priority <= $2 AND d.due_at_ms IS NOT NULL
               AND d.lease_owner IS NULL AND d.due_at_ms <= $3
             ORDER BY d.priority, d.due_at_ms
             LIMIT $4
             FOR UPDATE OF d SKIP LOCKED",
            &[&destination, &(rank_max as i16), &now_ms, &(allowed as i64)],
        )
        .await?;
    let mut handed_out = Vec::with_capacity(rows.len());
    let mut expired = Vec::new();
    for row in &rows {
        let mut delivery = ClaimedDelivery {
            delivery_id: row.try_get(0)?,
            broadcast_id: row.try_get(1)?,
            destination: destination.to_owned(),
            idempotency_key: row.try_get(2)?,
            progress: progress_from_row(row, 3)?,
            message: message_from_row(row, 9, 15, 18)?,
            broadcast_created_at_ms: row.try_get(13)?,
            last_error: row.try_get(14)?,
            lease_epoch: 0,
            remote_ref: row.try_get(16)?,
            thread_ref: row.try_get(17)?,
        };
        if delivery.progress.state != DeliveryState::Verifying {
            delivery.progress = delivery.progress.leased(now_ms).map_err(corrupt)?;
        }
        if delivery.progress.state.is_final() {
            expired.push(delivery);
        } else {
            handed_out.push(delivery);
        }
    }
    if !handed_out.is_empty() {
        let ids: Vec<i64> = handed_out.iter().map(|d| d.delivery_id).collect();
        let states: Vec<&str> = handed_out
            .iter()
            .map(|d| d.progress.state.as_str())
            .collect();
        let attempts: Vec<i32> = handed_out
            .iter()
            .map(|d| d.progress.attempts_made as i32)
            .collect();
        let dues: Vec<Option<i64>> = handed_out.iter().map(|d| d.progress.due_at_ms).collect();
        let epochs = tx
            .query(
                "UPDATE deliveries d SET state = u.state, attempts_made = u.attempts_made,
                     due_at_ms = u.due_at_ms, lease_owner = $5, lease_expires_at_ms = $6,
                     lease_epoch = d.lease_epoch + 1, updated_at_ms = $7
                 FROM unnest($1::BIGINT[], $2::TEXT[], $3::INT[], $4::BIGINT[])
                      AS u(id, state, attempts_made, due_at_ms)
                 WHERE d.id = u.id
                 RETURNING d.id, d.lease_epoch",
                &[
                    &ids,
                    &states,
                    &attempts,
                    &dues,
                    &inner.node_id,
                    &(now_ms + inner.lease_ms),
                    &now_ms,
                ],
            )
            .await?;
        for row in epochs {
            let id: i64 = row.try_get(0)?;
            let epoch: i64 = row.try_get(1)?;
            if let Some(d) = handed_out.iter_mut().find(|d| d.delivery_id == id) {
                d.lease_epoch = epoch;
            }
        }
    }
    for delivery in &expired {
        tx.execute(
            "UPDATE deliveries SET state = $2, due_at_ms = NULL, updated_at_ms = $3,
                 last_error = 'the delivery deadline passed before it could be sent'
             WHERE id = $1",
            &[
                &delivery.delivery_id,
                &delivery.progress.state.as_str(),
                &now_ms,
            ],
        )
        .await?;
    }
    if !expired.is_empty() {
        promote_after_final(
            inner,
            tx,
            expired.iter().map(|d| d.delivery_id).collect(),
            now_ms,
        )
        .await?;
    }
    if let (Some(mut guard), Some(before)) = (guard, before) {
        guard.charge(&isolation, handed_out.len());
        if guard != before {
            write_guard(tx, destination, &guard).await?;
        }
    }
    if handed_out.len() >= limit {
        // A full claim: the lane claims again at once, no need to know when.
        return Ok(Claim {
            deliveries: handed_out,
            expired,
            next_due_at_ms: None,
        });
    }
    let next_due_at_ms: Option<i64> = tx
        .query_one(concat!("SELECT ", earliest_due_sql!("$1")), &[&destination])
        .await?
        .try_get(0)?;
    Ok(Claim {
        deliveries: handed_out,
        expired,
        next_due_at_ms,
    })
}
