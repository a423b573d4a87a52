//! Accepting broadcasts: a batch of broadcasts, their deliveries and
//! ingest keys written with array parameters in one transaction.

use super::*;

/// Writes broadcasts, each with its deliveries (and ingest key), in one
/// transaction: one statement for all broadcasts, one for all deliveries.
/// Any refusal (a duplicate id, a taken key) fails the whole batch; the
/// writer then replays its broadcasts one per transaction.
pub(super) async fn insert_batch(
    inner: &Inner,
    tx: &mut Tx<'_>,
    batch: &[&NewBroadcast],
) -> Result<Vec<Vec<InsertedDelivery>>, StoreError> {
    // Thread order first: whether a delivery waits is decided under its
    // thread's lock, taken in sorted order for the whole batch.
    lock_threads(
        tx,
        batch
            .iter()
            .filter_map(|new| new.message.thread().map(str::to_owned)),
    )
    .await?;
    let (mut ids, mut titles, mut bodies, mut severities, mut threads, mut created) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut resolved = Vec::with_capacity(batch.len());
    let (mut details, mut routes) = (vec![], vec![]);
    for new in batch {
        details.push(crate::store::details_json(&new.message));
        routes.push(crate::store::routes_json(&new.routes));
        resolved.push(new.message.resolved());
        ids.push(new.id.as_str());
        titles.push(new.message.title());
        bodies.push(new.message.body());
        severities.push(new.message.severity().as_str());
        threads.push(new.message.thread());
        created.push(new.created_at_ms);
    }
    // A hand-off skips the claim, so it must pass the shared guard too: only
    // to a destination that no node has paused or found unwell, and never
    // to a rate-limited one (its tokens are taken by claims).
    let wanted: Vec<&str> = {
        let isolation = inner.isolation.read().expect("isolation poisoned");
        batch
            .iter()
            .flat_map(|new| new.deliveries.iter())
            .filter(|d| d.lease_now)
            .filter(|d| {
                isolation
                    .get(&d.destination)
                    .is_some_and(|i| i.rate_per_sec.is_none())
            })
            .map(|d| d.destination.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let now_ms = batch.iter().map(|new| new.created_at_ms).max().unwrap_or(0);
    // The broadcasts and the guard read go in one exchange (pipelined: the
    // second statement is sent before the first one's answer arrives).
    // Reading the guard before the broadcasts are written changes nothing:
    // it takes no lock, and it is read before the commit either way.
    let insert_broadcasts = tx
        .statement(
            "INSERT INTO broadcasts (id, title, body, severity, thread_key, created_at_ms, resolved,
                 details, routes)
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                                  $6::BIGINT[], $7::BOOL[], $8::TEXT[], $9::TEXT[])
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    let read_guards = tx
        .statement(
            "SELECT destination FROM destination_state
             WHERE destination = ANY($1) AND paused_until_ms <= $2 AND held_until_ms <= $2
                 AND circuit = 'closed'",
        )
        .await?;
    let broadcasts_params: [&(dyn ToSql + Sync); 9] = [
        &ids,
        &titles,
        &bodies,
        &severities,
        &threads,
        &created,
        &resolved,
        &details,
        &routes,
    ];
    let guards = async {
        if wanted.is_empty() {
            Ok(Vec::new())
        } else {
            tx.tx.query(&read_guards, &[&wanted, &now_ms]).await
        }
    };
    // Both answers are awaited and the first statement's error wins: when
    // it fails, PostgreSQL refuses the second with 25P02 (transaction
    // aborted), which says nothing of the cause (`try_join!` could return
    // either, as it polls in turn).
    let (inserted, guard_rows) = tokio::join!(
        tx.tx.execute(&insert_broadcasts, &broadcasts_params),
        guards
    );
    let (inserted, guard_rows) = (inserted?, guard_rows?);
    let mut may_lease: BTreeSet<String> = BTreeSet::new();
    for row in guard_rows {
        may_lease.insert(row.try_get(0)?);
    }
    if inserted as usize != batch.len() {
        // Which one: the one-by-one replay tells its caller precisely.
        let duplicate = if batch.len() == 1 {
            batch[0].id.clone()
        } else {
            "(in a batch)".into()
        };
        return Err(StoreError::DuplicateBroadcast(duplicate));
    }
    insert_objectives(tx, batch).await?;
    for new in batch {
        let Some(ingest) = &new.ingest_key else {
            continue;
        };
        tx.execute(
            "DELETE FROM ingest_keys WHERE caller = $1 AND key = $2 AND expires_at_ms < $3",
            &[&ingest.caller, &ingest.key, &new.created_at_ms],
        )
        .await?;
        let recorded = tx
            .execute(
                "INSERT INTO ingest_keys (caller, key, body_sha256, broadcast_id, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (caller, key) DO NOTHING",
                &[
                    &ingest.caller,
                    &ingest.key,
                    &ingest.body_sha256,
                    &new.id,
                    &ingest.expires_before_ms,
                ],
            )
            .await?;
        if recorded == 0 {
            return Err(StoreError::IngestKeyTaken(ingest.key.clone()));
        }
    }
    // Unfinished deliveries of the batch's threads, on its destinations.
    let mut busy: BTreeSet<(String, String)> = BTreeSet::new();
    let thread_keys: Vec<&str> = threads.iter().flatten().copied().collect();
    if !thread_keys.is_empty() {
        let destinations: Vec<&str> = batch
            .iter()
            .flat_map(|new| new.deliveries.iter().map(|d| d.destination.as_str()))
            .collect();
        for row in tx
            .query(
                concat!(
                    "SELECT DISTINCT thread_key, destination FROM deliveries
                     WHERE thread_key = ANY($1) AND destination = ANY($2) AND state NOT IN ",
                    final_states_sql!()
                ),
                &[&thread_keys, &destinations],
            )
            .await?
        {
            busy.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }
    let mut columns = DeliveryColumns::default();
    let mut planned = Vec::with_capacity(batch.len());
    // Destinations with new due work, and whether any of it is a P1.
    let mut due_now: BTreeMap<&str, bool> = BTreeMap::new();
    for new in batch {
        let message = &new.message;
        let mut out = Vec::with_capacity(new.deliveries.len());
        for delivery in &new.deliveries {
            let in_thread = message
                .thread()
                .map(|thread| (thread.to_owned(), delivery.destination.clone()));
            // Behind an unfinished one, also one planned earlier in this batch.
            let behind = in_thread.as_ref().is_some_and(|key| busy.contains(key));
            if let Some(key) = in_thread {
                busy.insert(key);
            }
            let mut progress = DeliveryProgress::new(&delivery.policy, behind, new.created_at_ms);
            let lease_now = delivery.lease_now
                && progress.state == DeliveryState::Pending
                && may_lease.contains(&delivery.destination);
            if lease_now {
                progress = progress.leased(new.created_at_ms).map_err(corrupt)?;
            } else if progress.state == DeliveryState::Pending {
                *due_now.entry(&delivery.destination).or_default() |=
                    message.severity() == Severity::P1;
            }
            let key = delivery_idempotency_key(&new.id, &delivery.destination);
            columns.push(
                new,
                &delivery.destination,
                &key,
                &progress,
                lease_now,
                inner.lease_ms,
            );
            let leased = lease_now.then(|| ClaimedDelivery {
                delivery_id: 0,
                broadcast_id: new.id.clone(),
                destination: delivery.destination.clone(),
                idempotency_key: key.clone(),
                progress: progress.clone(),
                message: message.clone(),
                broadcast_created_at_ms: new.created_at_ms,
                last_error: None,
                lease_epoch: 1,
                thread_ref: None,
                remote_ref: None,
            });
            out.push(InsertedDelivery {
                destination: delivery.destination.clone(),
                idempotency_key: key,
                progress,
                leased,
            });
        }
        planned.push(out);
    }
    // New work wakes the lanes of every node at commit; the deliveries
    // and the notification go in one exchange (pipelined).
    let wakes: Vec<String> = due_now
        .into_iter()
        .map(|(destination, urgent)| {
            if urgent {
                destination.to_owned()
            } else {
                format!("{destination}{ROUTINE_WAKE_SUFFIX}")
            }
        })
        .collect();
    let insert_deliveries = tx
        .statement(
            "INSERT INTO deliveries (broadcast_id, destination, idempotency_key, thread_key, priority,
                 state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, lease_owner,
                 lease_expires_at_ms, lease_epoch, created_at_ms, updated_at_ms)
             SELECT u.broadcast_id, u.destination, u.key, u.thread_key, u.priority, u.state,
                 u.attempts_made, u.attempts_max, u.due_at_ms, u.deadline_at_ms,
                 CASE WHEN u.lease_expires_at_ms IS NOT NULL THEN $1 END, u.lease_expires_at_ms,
                 CASE WHEN u.lease_expires_at_ms IS NOT NULL THEN 1 ELSE 0 END,
                 u.created_at_ms, u.created_at_ms
             FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::SMALLINT[], $7::TEXT[],
                         $8::INT[], $9::INT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[])
                  WITH ORDINALITY AS u(broadcast_id, destination, key, thread_key, priority, state,
                      attempts_made, attempts_max, due_at_ms, deadline_at_ms, lease_expires_at_ms,
                      created_at_ms, n)
             ORDER BY u.n
             RETURNING id, idempotency_key",
        )
        .await?;
    let notify_lanes = tx
        .statement("SELECT pg_notify($1, d) FROM unnest($2::TEXT[]) d")
        .await?;
    let c = &columns;
    let deliveries_params: [&(dyn ToSql + Sync); 13] = [
        &inner.node_id,
        &c.broadcast_id,
        &c.destination,
        &c.key,
        &c.thread_key,
        &c.priority,
        &c.state,
        &c.attempts_made,
        &c.attempts_max,
        &c.due_at_ms,
        &c.deadline_at_ms,
        &c.lease_expires_at_ms,
        &c.created_at_ms,
    ];
    let notified = async {
        if wakes.is_empty() {
            Ok(0)
        } else {
            tx.tx
                .execute(&notify_lanes, &[&inner.channel, &wakes])
                .await
        }
    };
    // The first statement's error wins, as above.
    let (rows, notified) = tokio::join!(
        tx.tx.query(&insert_deliveries, &deliveries_params),
        notified
    );
    let (rows, _) = (rows?, notified?);
    let ids_by_key: HashMap<String, i64> = rows
        .iter()
        .map(|row| Ok((row.try_get(1)?, row.try_get(0)?)))
        .collect::<Result<_, StoreError>>()?;
    for delivery in planned.iter_mut().flatten() {
        if let Some(leased) = delivery.leased.as_mut() {
            leased.delivery_id = *ids_by_key
                .get(&delivery.idempotency_key)
                .ok_or_else(|| corrupt("a leased delivery was not inserted"))?;
            if let Some(thread) = leased.message.thread() {
                leased.thread_ref = tx
                    .query_opt(
                        THREAD_REF_SQL,
                        &[&leased.destination, &thread, &leased.delivery_id],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
            }
        }
    }
    Ok(planned)
}

/// Array columns of new deliveries, for one INSERT.
#[derive(Default)]
pub(super) struct DeliveryColumns {
    broadcast_id: Vec<String>,
    destination: Vec<String>,
    key: Vec<String>,
    thread_key: Vec<Option<String>>,
    priority: Vec<i16>,
    state: Vec<&'static str>,
    attempts_made: Vec<i32>,
    attempts_max: Vec<i32>,
    due_at_ms: Vec<Option<i64>>,
    deadline_at_ms: Vec<Option<i64>>,
    lease_expires_at_ms: Vec<Option<i64>>,
    created_at_ms: Vec<i64>,
}

impl DeliveryColumns {
    pub(super) fn push(
        &mut self,
        new: &NewBroadcast,
        destination: &str,
        key: &str,
        p: &DeliveryProgress,
        leased: bool,
        lease_ms: i64,
    ) {
        self.broadcast_id.push(new.id.clone());
        self.destination.push(destination.to_owned());
        self.key.push(key.to_owned());
        self.thread_key
            .push(new.message.thread().map(str::to_owned));
        self.priority.push(new.message.severity().rank() as i16);
        self.state.push(p.state.as_str());
        self.attempts_made.push(p.attempts_made as i32);
        self.attempts_max.push(p.attempts_max as i32);
        self.due_at_ms.push(p.due_at_ms);
        self.deadline_at_ms.push(p.deadline_at_ms);
        self.lease_expires_at_ms
            .push(leased.then_some(new.created_at_ms + lease_ms));
        self.created_at_ms.push(new.created_at_ms);
    }
}
