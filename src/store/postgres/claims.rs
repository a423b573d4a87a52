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
            concat!(
                claimed_columns_sql!(),
                "FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
             WHERE d.destination = $1 AND d.priority <= $2 AND d.due_at_ms IS NOT NULL
               AND d.lease_owner IS NULL AND d.due_at_ms <= $3
             ORDER BY d.priority, d.due_at_ms
             LIMIT $4
             FOR UPDATE OF d SKIP LOCKED"
            ),
            &[&destination, &(rank_max as i16), &now_ms, &(allowed as i64)],
        )
        .await?;
    let mut handed_out = Vec::with_capacity(rows.len());
    let mut expired = Vec::new();
    for row in &rows {
        let delivery = claimed_from_row(row, now_ms)?;
        if delivery.progress.state.is_final() {
            expired.push(delivery);
        } else {
            handed_out.push(delivery);
        }
    }
    lease_claimed(inner, tx, &mut handed_out, now_ms).await?;
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

/// A claimed row (`claimed_columns_sql!`), leased at `now_ms` (final when
/// its deadline has passed; `lease_epoch` is set by `lease_claimed`).
pub(super) fn claimed_from_row(row: &Row, now_ms: i64) -> Result<ClaimedDelivery, StoreError> {
    let mut delivery = ClaimedDelivery {
        delivery_id: row.try_get(0)?,
        broadcast_id: row.try_get(1)?,
        destination: row.try_get(19)?,
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
    Ok(delivery)
}

/// Writes the leases of `handed_out` (locked by the caller's `FOR UPDATE`):
/// this node as owner, an expiry, and a new epoch each, read back into
/// `lease_epoch`. One statement for all of them.
pub(super) async fn lease_claimed(
    inner: &Inner,
    tx: &mut Tx<'_>,
    handed_out: &mut [ClaimedDelivery],
    now_ms: i64,
) -> Result<(), StoreError> {
    if handed_out.is_empty() {
        return Ok(());
    }
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
    let by_id: HashMap<i64, i64> = epochs
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, StoreError>>()?;
    for delivery in handed_out.iter_mut() {
        delivery.lease_epoch = *by_id
            .get(&delivery.delivery_id)
            .ok_or_else(|| corrupt("a claimed delivery was not leased"))?;
    }
    Ok(())
}

/// Leases, in an outcome batch's transaction, the next due deliveries of
/// the destinations whose lane slots the batch's outcomes free: `wanted`
/// holds each destination with how many slots. One statement claims for
/// every destination, one more writes the leases: the lane needs no claim
/// transaction of its own while its work keeps coming.
///
/// Only where the shared guard lets the destination send freely: not
/// paused, not held, circuit closed, the rule of a hand-off at insert (the
/// caller leaves rate-limited destinations out: their tokens are taken by
/// the lane's claim). The guard row is read, not locked: with nothing to
/// take from it (no token, no probe) a claim that reads it just before a
/// pause commits is the same as a claim that commits just before it, which
/// the lock allows too. Deliveries past their deadline are left to the
/// lane's claim, which records them dead.
pub(super) async fn claim_next_due(
    inner: &Inner,
    tx: &mut Tx<'_>,
    wanted: &BTreeMap<&str, i64>,
    now_ms: i64,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let destinations: Vec<&str> = wanted.keys().copied().collect();
    let counts: Vec<i64> = wanted.values().copied().collect();
    let rows = tx
        .query(
            concat!(
                claimed_columns_sql!(),
                "FROM unnest($1::TEXT[], $2::BIGINT[]) AS w(destination, n)
                 JOIN destination_state s ON s.destination = w.destination
                     AND s.paused_until_ms <= $3 AND s.held_until_ms <= $3 AND s.circuit = 'closed'
                 CROSS JOIN LATERAL (
                     SELECT * FROM deliveries q
                     WHERE q.destination = w.destination AND q.due_at_ms IS NOT NULL
                       AND q.lease_owner IS NULL AND q.due_at_ms <= $3
                       AND (q.deadline_at_ms IS NULL OR q.deadline_at_ms >= $3)
                     ORDER BY q.priority, q.due_at_ms
                     LIMIT w.n
                     FOR UPDATE SKIP LOCKED) d
                 JOIN broadcasts b ON b.id = d.broadcast_id"
            ),
            &[&destinations, &counts, &now_ms],
        )
        .await?;
    let mut handed_out = Vec::with_capacity(rows.len());
    for row in &rows {
        let delivery = claimed_from_row(row, now_ms)?;
        // Not past its deadline (the statement's condition): a final one
        // would be a changed rule; it stays for the lane's claim.
        if !delivery.progress.state.is_final() {
            handed_out.push(delivery);
        }
    }
    lease_claimed(inner, tx, &mut handed_out, now_ms).await?;
    Ok(handed_out)
}
