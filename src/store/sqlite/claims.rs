//! Claims: leasing a destination's due deliveries, most urgent severity
//! first, and the earliest due time of what is left.

use super::*;

/// The earliest due time of one destination's deliveries of one severity
/// that are not in flight: the first entry of that severity in the index
/// `deliveries_due`. `?1` destination, `?2` priority.
pub(super) const EARLIEST_DUE_SQL: &str = "SELECT min(due_at_ms) FROM deliveries
     WHERE destination = ?1 AND priority = ?2 AND due_at_ms IS NOT NULL AND leased = 0";

/// The earliest due time among a destination's deliveries not in flight:
/// one index lookup per severity.
pub(super) fn earliest_due(conn: &Connection, destination: &str) -> rusqlite::Result<Option<i64>> {
    let mut earliest = conn.prepare_cached(EARLIEST_DUE_SQL)?;
    let mut first: Option<i64> = None;
    for priority in Severity::RANKS {
        let due: Option<i64> = earliest.query_row(params![destination, priority], |r| r.get(0))?;
        first = match (first, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

/// Due deliveries of one destination and severity, oldest due first.
/// `?1` destination, `?2` priority, `?3` now, `?4` limit.
pub(super) const CLAIM_SQL: &str = "SELECT d.id, d.broadcast_id,
        d.state, d.attempts_made, d.attempts_max, d.due_at_ms, d.deadline_at_ms, d.possible_duplicate,
        b.title, b.body, b.severity, b.thread_key, b.created_at_ms, d.last_error,
        b.resolved, d.remote_ref, d.lease_epoch, b.details
     FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
     WHERE d.destination = ?1 AND d.priority = ?2 AND d.due_at_ms IS NOT NULL AND d.leased = 0
       AND d.due_at_ms <= ?3
     ORDER BY d.due_at_ms
     LIMIT ?4";

/// Leases a claimed delivery: `?1` id, `?2` state, `?3` attempts made,
/// `?4` due time, `?5` now, `?6` the new lease epoch.
pub(super) const LEASE_SQL: &str =
    "UPDATE deliveries SET state = ?2, attempts_made = ?3, due_at_ms = ?4,
         leased = 1, lease_epoch = ?6, updated_at_ms = ?5
     WHERE id = ?1";

pub(super) fn claim_due(
    conn: &Connection,
    destination: &str,
    limit: usize,
    rank_max: u8,
    now_ms: i64,
) -> Result<Claim, StoreError> {
    // One range scan per severity, most urgent first: each reads only due
    // rows, however many are scheduled for later.
    let mut select = conn.prepare_cached(CLAIM_SQL)?;
    let mut claimed = Vec::new();
    for priority in Severity::RANKS.into_iter().filter(|r| *r <= rank_max) {
        if claimed.len() >= limit {
            break;
        }
        let remaining = (limit - claimed.len()) as i64;
        let mut rows = select.query(params![destination, priority, now_ms, remaining])?;
        while let Some(row) = rows.next()? {
            let progress = progress_from_row(row, 2)??;
            let broadcast_id: String = row.get(1)?;
            claimed.push(ClaimedDelivery {
                delivery_id: row.get(0)?,
                idempotency_key: delivery_idempotency_key(&broadcast_id, destination),
                broadcast_id,
                destination: destination.to_owned(),
                progress,
                message: message_from_row(row, 8, 14, 17)??,
                broadcast_created_at_ms: row.get(12)?,
                last_error: row.get(13)?,
                // The current lease; leasing below takes the next.
                lease_epoch: row.get(16)?,
                thread_ref: None,
                remote_ref: row.get(15)?,
            });
        }
    }
    let mut lease = conn.prepare_cached(LEASE_SQL)?;
    let mut expire = conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, due_at_ms = NULL, updated_at_ms = ?3, finished_at_ms = ?3,
             last_error = 'the delivery deadline passed before it could be sent'
         WHERE id = ?1",
    )?;
    let mut find_thread_ref = conn.prepare_cached(THREAD_REF_SQL)?;
    let mut handed_out = Vec::with_capacity(claimed.len());
    let mut expired = Vec::new();
    for mut delivery in claimed {
        if let Some(thread) = delivery.message.thread() {
            delivery.thread_ref = find_thread_ref
                .query_row(
                    params![delivery.destination, thread, delivery.delivery_id],
                    |r| r.get(0),
                )
                .optional()?;
        }
        if delivery.progress.state != DeliveryState::Verifying {
            delivery.progress = delivery
                .progress
                .leased(now_ms)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        let p = &delivery.progress;
        if p.state.is_final() {
            expire.execute(params![delivery.delivery_id, p.state.as_str(), now_ms])?;
            promote_next_in_thread(conn, delivery.delivery_id, now_ms)?;
            expired.push(delivery);
            continue;
        }
        // No RETURNING: SQLite buffers returned rows in a temporary b-tree.
        // This writer is the only one, so the epoch read above is current.
        delivery.lease_epoch += 1;
        lease.execute(params![
            delivery.delivery_id,
            p.state.as_str(),
            p.attempts_made,
            p.due_at_ms,
            now_ms,
            delivery.lease_epoch
        ])?;
        handed_out.push(delivery);
    }
    let claimed = handed_out;
    if claimed.len() >= limit {
        // A full claim: the lane claims again at once, no need to know when.
        return Ok(Claim {
            expired,
            deliveries: claimed,
            next_due_at_ms: None,
        });
    }
    Ok(Claim {
        expired,
        deliveries: claimed,
        next_due_at_ms: earliest_due(conn, destination)?,
    })
}
