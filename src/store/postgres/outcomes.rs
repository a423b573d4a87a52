//! Outcome writers: a batch of attempts and state changes, each committed
//! only under the lease it was claimed with, and the shared guard updated.

use super::*;

pub(super) async fn update_batch(
    inner: &Inner,
    tx: &mut Tx<'_>,
    updates: &[&DeliveryUpdate],
) -> Result<Vec<UpdateResult>, StoreError> {
    // The attempt log: every attempt happened, whatever its lease.
    let mut ids = Vec::with_capacity(updates.len());
    let mut numbers = Vec::with_capacity(updates.len());
    let mut kinds = Vec::with_capacity(updates.len());
    let mut started = Vec::with_capacity(updates.len());
    let mut finished = Vec::with_capacity(updates.len());
    let mut outcomes = Vec::with_capacity(updates.len());
    let mut statuses = Vec::with_capacity(updates.len());
    let mut excerpts = Vec::with_capacity(updates.len());
    let mut errors = Vec::with_capacity(updates.len());
    for u in updates {
        let a = &u.attempt;
        ids.push(u.delivery_id);
        numbers.push(a.number as i32);
        kinds.push(a.kind.as_str());
        started.push(a.started_at_ms);
        finished.push(a.finished_at_ms);
        outcomes.push(a.outcome.as_str());
        statuses.push(a.http_status.map(i32::from));
        excerpts.push(a.excerpt.as_deref());
        errors.push(a.error.as_deref());
    }
    let mut expected = Vec::with_capacity(updates.len());
    let mut epochs = Vec::with_capacity(updates.len());
    let mut states = Vec::with_capacity(updates.len());
    let mut made = Vec::with_capacity(updates.len());
    let mut max = Vec::with_capacity(updates.len());
    let mut dues = Vec::with_capacity(updates.len());
    let mut deadlines = Vec::with_capacity(updates.len());
    let mut duplicates = Vec::with_capacity(updates.len());
    let mut last_errors = Vec::with_capacity(updates.len());
    let mut nows = Vec::with_capacity(updates.len());
    let mut remote_refs = Vec::with_capacity(updates.len());
    for u in updates {
        remote_refs.push(u.remote_ref.as_deref());
        let p = &u.progress;
        expected.push(u.expected_state.as_str());
        epochs.push(u.lease_epoch);
        states.push(p.state.as_str());
        made.push(p.attempts_made as i32);
        max.push(p.attempts_max as i32);
        dues.push(p.due_at_ms);
        deadlines.push(p.deadline_at_ms);
        duplicates.push(p.possible_duplicate);
        last_errors.push(u.last_error.as_deref());
        nows.push(u.now_ms);
    }
    // The attempt log and the fenced update go in one exchange
    // (pipelined); the first statement's error wins, as in the accept.
    let insert_attempts = tx
        .statement(
            "INSERT INTO attempts (delivery_id, number, kind, started_at_ms, finished_at_ms, outcome,
                               http_status, excerpt, error, node)
         SELECT u.*, $10 FROM unnest($1::BIGINT[], $2::INT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[],
                                   $6::TEXT[], $7::INT[], $8::TEXT[], $9::TEXT[]) AS u",
        )
        .await?;
    // Fenced: the same owner and epoch, and the lease not yet expired. The
    // owner is compared with IS NOT DISTINCT FROM, which means `=` here ($13
    // is never null) but lets no index on leases serve it: with `=`, the
    // planner's guess for one owner made it scan every leased row through
    // `deliveries_leased` and filter them against the batch, instead of
    // looking the batch up by primary key.
    let update_deliveries = tx
        .statement(
            "UPDATE deliveries d SET state = u.state, attempts_made = u.made, attempts_max = u.max,
                 due_at_ms = u.due, deadline_at_ms = u.deadline, possible_duplicate = u.dup,
                 lease_owner = NULL, lease_expires_at_ms = NULL, last_error = u.last_error,
                 last_http_status = u.status, updated_at_ms = u.now,
                 remote_ref = coalesce(u.remote_ref, d.remote_ref)
             FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::INT[], $6::INT[],
                         $7::BIGINT[], $8::BIGINT[], $9::BOOL[], $10::TEXT[], $11::INT[], $12::BIGINT[],
                         $14::TEXT[])
                  AS u(id, expected, epoch, state, made, max, due, deadline, dup, last_error, status, now,
                       remote_ref)
             WHERE d.id = u.id AND d.state = u.expected AND d.lease_owner IS NOT DISTINCT FROM $13
               AND d.lease_epoch = u.epoch AND d.lease_expires_at_ms >= u.now
             RETURNING d.id, d.destination",
        )
        .await?;
    let attempts_params: &Params<'_> = &[
        &ids,
        &numbers,
        &kinds,
        &started,
        &finished,
        &outcomes,
        &statuses,
        &excerpts,
        &errors,
        &inner.node_id,
    ];
    let update_params: &Params<'_> = &[
        &ids,
        &expected,
        &epochs,
        &states,
        &made,
        &max,
        &dues,
        &deadlines,
        &duplicates,
        &last_errors,
        &statuses,
        &nows,
        &inner.node_id,
        &remote_refs,
    ];
    let (logged, applied_rows) = tokio::join!(
        tx.tx.execute(&insert_attempts, attempts_params),
        tx.tx.query(&update_deliveries, update_params)
    );
    let (_, applied_rows) = (logged?, applied_rows?);
    let mut applied: BTreeMap<i64, String> = BTreeMap::new();
    for row in &applied_rows {
        applied.insert(row.try_get(0)?, row.try_get(1)?);
    }
    // The shared guard of each destination that had outcomes, in name
    // order (a fixed lock order).
    let mut by_destination: BTreeMap<&str, Vec<&DeliveryUpdate>> = BTreeMap::new();
    for u in updates {
        if let Some(destination) = applied.get(&u.delivery_id) {
            by_destination.entry(destination).or_default().push(u);
        }
    }
    let healthy = |outcomes: &[&DeliveryUpdate]| {
        outcomes.iter().all(|u| {
            u.attempt.outcome_class() == Some(OutcomeClass::Success)
                && u.pause_destination_ms.is_none()
        })
    };
    let mut woken = Vec::new();
    if by_destination.is_empty() {
        // Every outcome was refused (a lost lease): no guard to touch.
    } else if by_destination.values().all(|outcomes| healthy(outcomes)) {
        // The common case: one statement for every destination.
        let names: Vec<&str> = by_destination.into_keys().collect();
        woken.extend(reset_guards(tx, &names).await?);
    } else {
        for (destination, outcomes) in by_destination {
            let isolation = inner
                .isolation
                .read()
                .expect("isolation poisoned")
                .get(destination)
                .copied()
                .unwrap_or_default();
            if healthy(&outcomes) {
                woken.extend(reset_guards(tx, &[destination]).await?);
                continue;
            }
            let Some(mut guard) = read_guard(tx, destination, true).await? else {
                continue;
            };
            let before = guard.clone();
            for u in &outcomes {
                let pause_until = u
                    .pause_destination_ms
                    .map(|ms| u.now_ms.saturating_add(ms as i64));
                guard.record(&isolation, u.attempt.outcome_class(), pause_until, u.now_ms);
            }
            if guard != before {
                if guard.circuit == "closed" && before.circuit != "closed" {
                    woken.push(destination.to_owned());
                }
                write_guard(tx, destination, &guard).await?;
            }
        }
    }
    let finals: Vec<i64> = updates
        .iter()
        .filter(|u| {
            u.in_thread && applied.contains_key(&u.delivery_id) && u.progress.state.is_final()
        })
        .map(|u| u.delivery_id)
        .collect();
    let promoted = if finals.is_empty() {
        BTreeSet::new()
    } else {
        promote_after_final(inner, tx, finals, updates[0].now_ms).await?
    };
    notify(inner, tx, woken).await?;
    Ok(updates
        .iter()
        .map(|u| {
            if applied.contains_key(&u.delivery_id) {
                UpdateResult::Applied {
                    promoted_next_in_thread: promoted.contains(&u.delivery_id),
                }
            } else {
                UpdateResult::Stale
            }
        })
        .collect())
}
