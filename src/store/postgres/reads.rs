//! Reads: a broadcast with its deliveries and attempts, the list of
//! broadcasts, and the rows they are decoded from.

use super::*;

pub(super) fn progress_from_row(row: &Row, first: usize) -> Result<DeliveryProgress, StoreError> {
    let state: String = row.try_get(first)?;
    let state = DeliveryState::parse(&state)
        .ok_or_else(|| corrupt(format!("unknown delivery state {state:?}")))?;
    Ok(DeliveryProgress {
        state,
        attempts_made: row.try_get::<_, i32>(first + 1)? as u32,
        attempts_max: row.try_get::<_, i32>(first + 2)? as u32,
        due_at_ms: row.try_get(first + 3)?,
        deadline_at_ms: row.try_get(first + 4)?,
        possible_duplicate: row.try_get(first + 5)?,
    })
}

/// What later messages of a thread attach to: the reference of the first
/// delivery of the same thread to the same destination that recorded one.
/// `$1` destination, `$2` thread key, `$3` the asking delivery's id.
pub(super) const THREAD_REF_SQL: &str = "SELECT remote_ref FROM deliveries
     WHERE destination = $1 AND thread_key = $2 AND id < $3 AND remote_ref IS NOT NULL
     ORDER BY id LIMIT 1";

/// Reads title, body, severity and thread from `first` on, the resolved
/// flag from column `resolved` and the details (JSON) from `details`.
pub(super) fn message_from_row(
    row: &Row,
    first: usize,
    resolved: usize,
    details: usize,
) -> Result<Message, StoreError> {
    let title: String = row.try_get(first)?;
    let body: String = row.try_get(first + 1)?;
    let severity: String = row.try_get(first + 2)?;
    let thread: Option<String> = row.try_get(first + 3)?;
    let resolved: bool = row.try_get(resolved)?;
    let details: Option<String> = row.try_get(details)?;
    let message = Severity::parse(&severity)
        .and_then(|severity| Message::new(&title, &body, severity, thread.as_deref()))
        .and_then(|message| message.resolving(resolved))
        .map_err(|e| corrupt(format!("stored message is invalid: {e}")))?;
    crate::store::with_stored_details(message, details.as_deref())
}

pub(super) async fn list_broadcasts(
    client: &impl GenericClient,
    filter: &BroadcastFilter,
) -> Result<Vec<BroadcastView>, StoreError> {
    use crate::domain::BroadcastStatus;
    let mut sql = String::from("SELECT b.id FROM broadcasts b WHERE TRUE");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(before) = &filter.before_id {
        args.push(Box::new(before.clone()));
        sql.push_str(&format!(" AND b.id < ${}", args.len()));
    }
    if let Some(since) = filter.created_since_ms {
        args.push(Box::new(since));
        sql.push_str(&format!(" AND b.created_at_ms >= ${}", args.len()));
    }
    if let Some(thread) = &filter.thread {
        args.push(Box::new(thread.clone()));
        sql.push_str(&format!(" AND b.thread_key = ${}", args.len()));
    }
    if let Some(destination) = &filter.destination {
        args.push(Box::new(destination.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.destination = ${})",
            args.len()
        ));
    }
    if let Some(state) = filter.delivery_state {
        args.push(Box::new(state.as_str().to_owned()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state = ${})",
            args.len()
        ));
    }
    let unfinished = concat!(
        "EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state NOT IN ",
        final_states_sql!(),
        ")"
    );
    match filter.status {
        None => {}
        Some(BroadcastStatus::Delivering) => sql.push_str(&format!(" AND {unfinished}")),
        Some(BroadcastStatus::Converged) => sql.push_str(
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state <> 'confirmed')",
        ),
        Some(BroadcastStatus::Partial) => sql.push_str(&format!(
            " AND NOT {unfinished} AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id
                AND d.state IN ('failed','dead','cancelled'))"
        )),
    }
    args.push(Box::new(filter.limit as i64));
    sql.push_str(&format!(" ORDER BY b.id DESC LIMIT ${}", args.len()));
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let ids: Vec<String> = client
        .query(&sql, &params)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    read_broadcasts(client, &ids, false).await
}

pub(super) async fn read_broadcast(
    client: &impl GenericClient,
    id: &str,
    with_attempts: bool,
) -> Result<Option<BroadcastView>, StoreError> {
    let ids = [id.to_owned()];
    Ok(read_broadcasts(client, &ids, with_attempts).await?.pop())
}

/// The broadcasts with these ids, in this order (an id not found is left
/// out), in four queries whatever their number: heads, deliveries,
/// objectives, and attempts when asked for. A page of the list costs as
/// much as one broadcast, which matters when the database is across a
/// network.
pub(super) async fn read_broadcasts(
    client: &impl GenericClient,
    ids: &[String],
    with_attempts: bool,
) -> Result<Vec<BroadcastView>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let heads = client
        .query(
            "SELECT id, title, body, severity, thread_key, created_at_ms, resolved, details, routes
             FROM broadcasts WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut views: HashMap<String, BroadcastView> = HashMap::with_capacity(heads.len());
    for head in &heads {
        let id: String = head.try_get(0)?;
        let view = BroadcastView {
            message: message_from_row(head, 1, 6, 7)?,
            created_at_ms: head.try_get(5)?,
            routes: crate::store::routes_from_json(
                head.try_get::<_, Option<String>>(8)?.as_deref(),
            )?,
            deliveries: Vec::new(),
            objective: None,
            id: id.clone(),
        };
        views.insert(id, view);
    }
    let rows = client
        .query(
            "SELECT broadcast_id, id, destination, idempotency_key,
                    state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, possible_duplicate,
                    last_error, last_http_status, updated_at_ms, remote_ref
             FROM deliveries WHERE broadcast_id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
    // Where each delivery's attempts go: its broadcast and its index there.
    let mut delivery_slots: HashMap<i64, (String, usize)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let broadcast_id: String = row.try_get(0)?;
        let Some(view) = views.get_mut(&broadcast_id) else {
            continue;
        };
        delivery_slots.insert(row.try_get(1)?, (broadcast_id, view.deliveries.len()));
        view.deliveries.push(DeliveryView {
            destination: row.try_get(2)?,
            idempotency_key: row.try_get(3)?,
            progress: progress_from_row(row, 4)?,
            last_error: row.try_get(10)?,
            last_http_status: row
                .try_get::<_, Option<i32>>(11)?
                .map(|s| s.clamp(0, u16::MAX as i32) as u16),
            updated_at_ms: row.try_get(12)?,
            remote_ref: row.try_get(13)?,
            attempts: Vec::new(),
        });
    }
    if with_attempts && !delivery_slots.is_empty() {
        let delivery_ids: Vec<i64> = delivery_slots.keys().copied().collect();
        let attempts = client
            .query(
                "SELECT delivery_id, number, kind, started_at_ms, finished_at_ms, outcome, http_status,
                        excerpt, error
                 FROM attempts WHERE delivery_id = ANY($1) ORDER BY id",
                &[&delivery_ids],
            )
            .await?;
        for row in &attempts {
            let delivery_id: i64 = row.try_get(0)?;
            let Some((broadcast_id, index)) = delivery_slots.get(&delivery_id) else {
                continue;
            };
            let Some(view) = views.get_mut(broadcast_id) else {
                continue;
            };
            let kind: String = row.try_get(2)?;
            view.deliveries[*index].attempts.push(AttemptRecord {
                number: row.try_get::<_, i32>(1)? as u32,
                kind: if kind == "verify" {
                    AttemptKind::Verify
                } else {
                    AttemptKind::Send
                },
                started_at_ms: row.try_get(3)?,
                finished_at_ms: row.try_get(4)?,
                outcome: row.try_get(5)?,
                http_status: row
                    .try_get::<_, Option<i32>>(6)?
                    .map(|s| s.clamp(0, u16::MAX as i32) as u16),
                excerpt: row.try_get(7)?,
                error: row.try_get(8)?,
            });
        }
    }
    for (broadcast_id, objective) in read_objectives(client, ids).await? {
        if let Some(view) = views.get_mut(&broadcast_id) {
            view.objective = Some(objective);
        }
    }
    Ok(ids.iter().filter_map(|id| views.remove(id)).collect())
}
