//! Group commit: the writer tasks that take queued outcomes and new
//! broadcasts in batches, commit each batch in one transaction, and replay
//! a refused batch one operation at a time.

use super::*;

/// Waits for the next operation, then takes what else is queued, up to
/// `max`. None when the queue is closed.
///
/// A batch smaller than `gather_min` waits up to `BATCH_GATHER_US` for more
/// while another writer is committing. Under load a transaction costs the
/// server far more than a row in it: a burst whose batches were about twice
/// as large (twice the deliveries in flight) cost PostgreSQL about a quarter
/// less CPU per delivery. The wait overlaps that other commit and delays a
/// caller by `BATCH_GATHER_US` at most. With no other writer committing,
/// a small batch waits `quiet_gather_us` (0: it goes at once). Outcomes
/// wait (nobody waits on an outcome's commit but the lane's next message
/// of a thread): at a steady low rate each outcome was otherwise its own
/// durable commit, the largest cost per delivery there. New broadcasts do
/// not: their callers wait for the commit.
pub(super) async fn next_batch<'a, T>(
    writers: &'a Writers<T>,
    batch: &mut Vec<T>,
    max: usize,
    gather_min: usize,
    quiet_gather_us: u64,
) -> Option<Committing<'a>> {
    let mut queue = writers.queue.lock().await;
    batch.push(queue.recv().await?);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    let gather_us = if writers.committing.load(Ordering::SeqCst) > 0 {
        BATCH_GATHER_US
    } else {
        quiet_gather_us
    };
    if batch.len() < gather_min && gather_us > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_micros(gather_us);
        while batch.len() < gather_min {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(op)) => batch.push(op),
                Ok(None) | Err(_) => break,
            }
        }
    }
    writers.committing.fetch_add(1, Ordering::SeqCst);
    Some(Committing(&writers.committing))
}

/// One outcome writer: drains the queue, commits every queued outcome in one
/// transaction, answers each caller after the commit.
pub(super) async fn run_writer(store: std::sync::Weak<Inner>, writers: Arc<Writers<WriteOp>>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
    while let Some(_committing) = next_batch(
        &writers,
        &mut batch,
        WRITE_BATCH_MAX,
        WRITE_GATHER_MIN,
        OUTCOME_QUIET_GATHER_US,
    )
    .await
    {
        let Some(inner) = store.upgrade() else { return };
        let updates: Vec<&DeliveryUpdate> = batch.iter().map(|op| &op.update).collect();
        match write_updates(&inner, &updates).await {
            Ok(results) => {
                for (op, result) in batch.drain(..).zip(results) {
                    let _ = op.reply.send(Ok(result));
                }
            }
            Err(error) => {
                if batch.len() > 1 {
                    tracing::warn!(%error, outcomes = batch.len(),
                        "an outcome batch failed; replaying its outcomes one by one");
                }
                for op in batch.drain(..) {
                    let result = write_updates(&inner, &[&op.update])
                        .await
                        .map(|mut results| results.pop().expect("one result per outcome"));
                    let _ = op.reply.send(result);
                }
            }
        }
    }
}

/// One broadcast writer: new broadcasts queued at the moment commit
/// together, so a burst pays one commit per batch, not per broadcast.
pub(super) async fn run_inserter(store: std::sync::Weak<Inner>, writers: Arc<Writers<InsertOp>>) {
    let mut batch = Vec::with_capacity(INSERT_BATCH_MAX);
    while let Some(_committing) =
        next_batch(&writers, &mut batch, INSERT_BATCH_MAX, INSERT_GATHER_MIN, 0).await
    {
        let Some(inner) = store.upgrade() else { return };
        let news: Vec<&NewBroadcast> = batch.iter().map(|op| &op.new).collect();
        match write_inserts(&inner, &news).await {
            Ok(results) => {
                for (op, result) in batch.drain(..).zip(results) {
                    let _ = op.reply.send(Ok(result));
                }
            }
            Err(_) if batch.len() > 1 => {
                for op in batch.drain(..) {
                    let result = write_inserts(&inner, &[&op.new])
                        .await
                        .map(|mut results| results.pop().expect("one result per broadcast"));
                    let _ = op.reply.send(result);
                }
            }
            Err(error) => {
                for op in batch.drain(..) {
                    let _ = op.reply.send(Err(clone_error(&error)));
                }
            }
        }
    }
}

/// The same refusal for the caller (errors of the driver are not `Clone`).
pub(super) fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::DuplicateBroadcast(id) => StoreError::DuplicateBroadcast(id.clone()),
        StoreError::IngestKeyTaken(key) => StoreError::IngestKeyTaken(key.clone()),
        StoreError::SchemaTooNew { found, known } => StoreError::SchemaTooNew {
            found: *found,
            known: *known,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub(super) async fn write_inserts(
    inner: &Inner,
    batch: &[&NewBroadcast],
) -> Result<Vec<Vec<InsertedDelivery>>, StoreError> {
    let work = async {
        let mut conn = inner.pool.get().await?;
        let mut tx = conn.begin().await?;
        let results = insert_batch(inner, &mut tx, batch).await?;
        tx.commit().await?;
        Ok(results)
    };
    tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), work)
        .await
        .map_err(|_| unavailable("the database did not answer in time"))?
}

pub(super) async fn write_updates(
    inner: &Inner,
    updates: &[&DeliveryUpdate],
) -> Result<Vec<UpdateResult>, StoreError> {
    let work = async {
        let mut conn = inner.pool.get().await?;
        let mut tx = conn.begin().await?;
        let results = update_batch(inner, &mut tx, updates).await?;
        tx.commit().await?;
        Ok(results)
    };
    tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), work)
        .await
        .map_err(|_| unavailable("the database did not answer in time"))?
}
