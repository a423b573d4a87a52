//! Accepting a broadcast: its row, its deliveries and its idempotency key,
//! in the writer's transaction.

use super::*;

pub(super) fn insert_broadcast(
    conn: &Connection,
    new: &NewBroadcast,
) -> Result<Vec<InsertedDelivery>, StoreError> {
    let message = &new.message;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO broadcasts (id, title, body, severity, thread_key, created_at_ms, resolved,
                 details, routes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            new.id,
            message.title(),
            message.body(),
            message.severity().as_str(),
            message.thread(),
            new.created_at_ms,
            message.resolved(),
            crate::store::details_json(message),
            crate::store::routes_json(&new.routes),
        ])?;
    if inserted == 0 {
        return Err(StoreError::DuplicateBroadcast(new.id.clone()));
    }
    insert_objective(conn, new)?;
    if let Some(ingest) = &new.ingest_key {
        // An expired record of the same key is forgotten; a live one wins.
        conn.prepare_cached(
            "DELETE FROM ingest_keys WHERE caller = ?1 AND key = ?2 AND expires_at_ms < ?3",
        )?
        .execute(params![ingest.caller, ingest.key, new.created_at_ms])?;
        let recorded = conn
            .prepare_cached(
                "INSERT INTO ingest_keys (caller, key, body_sha256, broadcast_id, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (caller, key) DO NOTHING",
            )?
            .execute(params![
                ingest.caller,
                ingest.key,
                ingest.body_sha256,
                new.id,
                ingest.expires_before_ms
            ])?;
        if recorded == 0 {
            return Err(StoreError::IngestKeyTaken(ingest.key.clone()));
        }
    }
    let mut busy_thread = conn.prepare_cached(concat!(
        "SELECT 1 FROM deliveries WHERE destination = ?1 AND thread_key = ?2 AND ",
        unfinished_sql!(""),
        " LIMIT 1"
    ))?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO deliveries (broadcast_id, destination, thread_key, state,
             attempts_made, attempts_max, due_at_ms, deadline_at_ms, created_at_ms, updated_at_ms,
             priority, leased, lease_epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?11)",
    )?;
    let mut find_thread_ref = conn.prepare_cached(THREAD_REF_SQL)?;
    let mut out = Vec::with_capacity(new.deliveries.len());
    for delivery in &new.deliveries {
        let behind = match message.thread() {
            Some(thread) => busy_thread.exists(params![delivery.destination, thread])?,
            None => false,
        };
        let mut progress = DeliveryProgress::new(&delivery.policy, behind, new.created_at_ms);
        let lease_now = delivery.lease_now && progress.state == DeliveryState::Pending;
        if lease_now {
            progress = progress
                .leased(new.created_at_ms)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        let key = delivery_idempotency_key(&new.id, &delivery.destination);
        insert.execute(params![
            new.id,
            delivery.destination,
            message.thread(),
            progress.state.as_str(),
            progress.attempts_made,
            progress.attempts_max,
            progress.due_at_ms,
            progress.deadline_at_ms,
            new.created_at_ms,
            message.severity().rank(),
            lease_now
        ])?;
        let leased = if lease_now {
            let delivery_id = conn.last_insert_rowid();
            let thread_ref = match message.thread() {
                Some(thread) => find_thread_ref
                    .query_row(params![delivery.destination, thread, delivery_id], |r| {
                        r.get(0)
                    })
                    .optional()?,
                None => None,
            };
            Some(ClaimedDelivery {
                delivery_id,
                broadcast_id: new.id.clone(),
                destination: delivery.destination.clone(),
                idempotency_key: key.clone(),
                progress: progress.clone(),
                message: message.clone(),
                broadcast_created_at_ms: new.created_at_ms,
                last_error: None,
                lease_epoch: 1,
                thread_ref,
                remote_ref: None,
            })
        } else {
            None
        };
        out.push(InsertedDelivery {
            destination: delivery.destination.clone(),
            idempotency_key: key,
            progress,
            leased,
        });
    }
    Ok(out)
}
