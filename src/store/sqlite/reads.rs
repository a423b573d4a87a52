//! Reads: a broadcast with its deliveries and attempts, the list of
//! broadcasts, the backlog, and the rows they are decoded from.

use super::*;

pub(super) fn progress_from_row(
    row: &Row,
    first: usize,
) -> rusqlite::Result<Result<DeliveryProgress, StoreError>> {
    let state: String = row.get(first)?;
    let Some(state) = DeliveryState::parse(&state) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "unknown delivery state {state:?}"
        ))));
    };
    Ok(Ok(DeliveryProgress {
        state,
        attempts_made: row.get(first + 1)?,
        attempts_max: row.get(first + 2)?,
        due_at_ms: row.get(first + 3)?,
        deadline_at_ms: row.get(first + 4)?,
        possible_duplicate: row.get(first + 5)?,
    }))
}

/// Reads title, body, severity and thread from `first` on, the resolved
/// flag from column `resolved` and the details (JSON) from `details`.
pub(super) fn message_from_row(
    row: &Row,
    first: usize,
    resolved: usize,
    details: usize,
) -> rusqlite::Result<Result<Message, StoreError>> {
    let title: String = row.get(first)?;
    let body: String = row.get(first + 1)?;
    let severity: String = row.get(first + 2)?;
    let thread: Option<String> = row.get(first + 3)?;
    let resolved: bool = row.get(resolved)?;
    let details: Option<String> = row.get(details)?;
    Ok(Severity::parse(&severity)
        .and_then(|severity| Message::new(&title, &body, severity, thread.as_deref()))
        .and_then(|message| message.resolving(resolved))
        .map_err(|e| StoreError::Corrupt(format!("stored message is invalid: {e}")))
        .and_then(|message| crate::store::with_stored_details(message, details.as_deref())))
}

/// How many deliveries are unfinished, through their partial index (the
/// bench polls it while a run drains).
pub(crate) const UNFINISHED_COUNT_SQL: &str = concat!(
    "SELECT count(*) FROM deliveries WHERE ",
    unfinished_sql!("")
);

/// Unfinished deliveries per destination and the oldest one's accept time
/// (a delivery's `created_at_ms` is its broadcast's), for the backlog
/// report: a scan of the covering index `deliveries_unfinished` only.
pub(super) const BACKLOG_SQL: &str = concat!(
    "SELECT destination, count(*), min(created_at_ms) FROM deliveries WHERE ",
    unfinished_sql!(""),
    " GROUP BY destination"
);

pub(super) fn list_broadcasts(
    conn: &Connection,
    filter: &BroadcastFilter,
) -> Result<Vec<BroadcastView>, StoreError> {
    use crate::domain::BroadcastStatus;
    let mut sql = String::from("SELECT b.id FROM broadcasts b WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(before) = &filter.before_id {
        args.push(before.clone().into());
        sql.push_str(&format!(" AND b.id < ?{}", args.len()));
    }
    if let Some(since) = filter.created_since_ms {
        args.push(since.into());
        sql.push_str(&format!(" AND b.created_at_ms >= ?{}", args.len()));
    }
    if let Some(thread) = &filter.thread {
        args.push(thread.clone().into());
        sql.push_str(&format!(" AND b.thread_key = ?{}", args.len()));
    }
    if let Some(destination) = &filter.destination {
        args.push(destination.clone().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.destination = ?{})",
            args.len()
        ));
    }
    if let Some(state) = filter.delivery_state {
        args.push(state.as_str().to_owned().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state = ?{})",
            args.len()
        ));
    }
    let unfinished = concat!(
        "EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND ",
        unfinished_sql!("d."),
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
    args.push((filter.limit as i64).into());
    sql.push_str(&format!(" ORDER BY b.id DESC LIMIT ?{}", args.len()));
    let ids: Vec<String> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args), |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(view) = read_broadcast_with(conn, &id, false)? {
            views.push(view);
        }
    }
    Ok(views)
}

pub(super) fn read_broadcast(
    conn: &Connection,
    id: &str,
) -> Result<Option<BroadcastView>, StoreError> {
    read_broadcast_with(conn, id, true)
}

pub(super) fn read_broadcast_with(
    conn: &Connection,
    id: &str,
    with_attempts: bool,
) -> Result<Option<BroadcastView>, StoreError> {
    let head = conn
        .prepare_cached(
            "SELECT title, body, severity, thread_key, created_at_ms, resolved, details, routes
             FROM broadcasts WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
            Ok((
                message_from_row(row, 0, 5, 6)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<String>>(7)?,
            ))
        })
        .optional()?;
    let Some((message, created_at_ms, routes)) = head else {
        return Ok(None);
    };
    let message = message?;
    let routes = crate::store::routes_from_json(routes.as_deref())?;
    let mut deliveries = Vec::new();
    let mut ids = Vec::new();
    {
        let mut select = conn.prepare_cached(
            "SELECT id, destination,
                    state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, possible_duplicate,
                    last_error, last_http_status, updated_at_ms, remote_ref
             FROM deliveries WHERE broadcast_id = ?1 ORDER BY id",
        )?;
        let mut rows = select.query(params![id])?;
        while let Some(row) = rows.next()? {
            ids.push(row.get::<_, i64>(0)?);
            let destination: String = row.get(1)?;
            deliveries.push(DeliveryView {
                idempotency_key: delivery_idempotency_key(id, &destination),
                destination,
                progress: progress_from_row(row, 2)??,
                last_error: row.get(8)?,
                last_http_status: row.get(9)?,
                updated_at_ms: row.get(10)?,
                remote_ref: row.get(11)?,
                attempts: Vec::new(),
            });
        }
    }
    let mut attempts = conn.prepare_cached(concat!(
        "SELECT number, kind, started_at_ms, finished_at_ms, outcome, http_status, excerpt, error
         FROM attempts WHERE ",
        attempts_of_sql!("", "?1"),
        " ORDER BY id"
    ))?;
    for (delivery, id) in deliveries.iter_mut().zip(ids) {
        if !with_attempts {
            break;
        }
        delivery.attempts = attempts
            .query_map(params![id], |row| {
                let kind: String = row.get(1)?;
                Ok(AttemptRecord {
                    number: row.get(0)?,
                    kind: if kind == "verify" {
                        AttemptKind::Verify
                    } else {
                        AttemptKind::Send
                    },
                    started_at_ms: row.get(2)?,
                    finished_at_ms: row.get(3)?,
                    outcome: row.get(4)?,
                    http_status: row.get(5)?,
                    excerpt: row.get(6)?,
                    error: row.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(Some(BroadcastView {
        id: id.to_owned(),
        message,
        created_at_ms,
        routes,
        deliveries,
        objective: read_objective(conn, id)?,
    }))
}
