//! Group commit: the writer tasks that take the new broadcasts and the
//! outcomes queued at the moment, commit them together in one transaction,
//! and replay a refused batch one operation at a time.

use super::*;

/// What one writer commits at once.
#[derive(Default)]
pub(super) struct Batch {
    news: Vec<InsertOp>,
    outcomes: Vec<WriteOp>,
}

impl Batch {
    fn take(
        &mut self,
        news: &mut mpsc::Receiver<InsertOp>,
        outcomes: &mut mpsc::Receiver<WriteOp>,
    ) {
        while self.news.len() < INSERT_BATCH_MAX {
            match news.try_recv() {
                Ok(op) => self.news.push(op),
                Err(_) => break,
            }
        }
        while self.outcomes.len() < WRITE_BATCH_MAX {
            match outcomes.try_recv() {
                Ok(op) => self.outcomes.push(op),
                Err(_) => break,
            }
        }
    }

    /// Whether the batch should wait for more, and how long at most.
    fn gather_us(&self, others_committing: bool) -> Option<u64> {
        if self.news.is_empty() {
            // Outcomes alone: nobody waits on their commit but the attempt
            // on its recording slot (and a thread's next message), so a
            // few wait for company.
            (self.outcomes.len() < WRITE_GATHER_MIN).then_some(if others_committing {
                BATCH_GATHER_US
            } else {
                OUTCOME_QUIET_GATHER_US
            })
        } else {
            // New broadcasts: their callers wait, so only while another
            // writer commits (the wait overlaps that commit).
            (self.news.len() < INSERT_GATHER_MIN && others_committing).then_some(BATCH_GATHER_US)
        }
    }
}

/// Waits for the next operation of either kind, then takes what else is
/// queued. None when the queues are closed.
///
/// Both kinds go in one transaction: at a steady low rate the outcomes
/// ride along with the next accept's commit instead of paying their own
/// (herald's CPU per delivery there fell by about a sixth against separate
/// writers for each kind; the burst was unchanged; see ARCHITECTURE.md,
/// Performance). A small batch waits a moment for more
/// (`Batch::gather_us`); a new broadcast ends an outcome batch's wait. The
/// wait overlaps another writer's commit or, for outcomes alone, costs
/// nobody a caller's time.
pub(super) async fn next_batch<'a>(
    queues: &'a Queues,
    batch: &mut Batch,
) -> Option<Committing<'a>> {
    let mut receivers = queues.receivers.lock().await;
    let (news, outcomes) = &mut *receivers;
    tokio::select! {
        op = news.recv() => batch.news.push(op?),
        op = outcomes.recv() => batch.outcomes.push(op?),
    }
    batch.take(news, outcomes);
    let others_committing = queues.committing.load(Ordering::SeqCst) > 0;
    if let Some(gather_us) = batch.gather_us(others_committing) {
        let deadline = tokio::time::Instant::now() + Duration::from_micros(gather_us);
        let quiet_outcomes = batch.news.is_empty();
        while batch.gather_us(others_committing).is_some() {
            // Outcomes waiting alone go as soon as a new broadcast comes.
            if quiet_outcomes && !batch.news.is_empty() {
                break;
            }
            tokio::select! {
                op = news.recv() => match op { Some(op) => batch.news.push(op), None => break },
                op = outcomes.recv() => match op { Some(op) => batch.outcomes.push(op), None => break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        batch.take(news, outcomes);
    }
    queues.committing.fetch_add(1, Ordering::SeqCst);
    Some(Committing(&queues.committing))
}

/// One writer: commits every queued broadcast and outcome in one
/// transaction, answers each caller after the commit.
pub(super) async fn run_writer(store: std::sync::Weak<Inner>, queues: Arc<Queues>) {
    let mut batch = Batch::default();
    while let Some(_committing) = next_batch(&queues, &mut batch).await {
        let Some(inner) = store.upgrade() else { return };
        commit_batch(&inner, &mut batch).await;
    }
}

async fn commit_batch(inner: &Inner, batch: &mut Batch) {
    // A promotion after a final outcome locks its thread, and so does a new
    // broadcast in a thread. In one transaction the two would take thread
    // locks in two sorted runs, which could deadlock with another writer's
    // (on any node); such a batch commits its two kinds separately.
    let promotes = batch
        .outcomes
        .iter()
        .any(|op| op.update.in_thread && op.update.progress.state.is_final());
    let threads = batch
        .news
        .iter()
        .any(|op| op.new.message.thread().is_some());
    let both_kinds = !batch.news.is_empty() && !batch.outcomes.is_empty();
    let together = both_kinds && !(promotes && threads);
    if together {
        let news: Vec<&NewBroadcast> = batch.news.iter().map(|op| &op.new).collect();
        let updates: Vec<&DeliveryUpdate> = batch.outcomes.iter().map(|op| &op.update).collect();
        if let Ok((inserted, updated)) = write_batch(inner, &news, &updates).await {
            for (op, result) in batch.news.drain(..).zip(inserted) {
                let _ = op.reply.send(Ok(result));
            }
            for (op, result) in batch.outcomes.drain(..).zip(updated) {
                let _ = op.reply.send(Ok(result));
            }
            return;
        }
        // Refused: each kind again on its own, which tells each caller
        // its own answer.
    }
    commit_outcomes(inner, &mut batch.outcomes).await;
    commit_news(inner, &mut batch.news).await;
}

async fn commit_outcomes(inner: &Inner, batch: &mut Vec<WriteOp>) {
    if batch.is_empty() {
        return;
    }
    let updates: Vec<&DeliveryUpdate> = batch.iter().map(|op| &op.update).collect();
    match write_updates(inner, &updates).await {
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
                let result = write_updates(inner, &[&op.update])
                    .await
                    .map(|mut results| results.pop().expect("one result per outcome"));
                let _ = op.reply.send(result);
            }
        }
    }
}

async fn commit_news(inner: &Inner, batch: &mut Vec<InsertOp>) {
    if batch.is_empty() {
        return;
    }
    let news: Vec<&NewBroadcast> = batch.iter().map(|op| &op.new).collect();
    match write_inserts(inner, &news).await {
        Ok(results) => {
            for (op, result) in batch.drain(..).zip(results) {
                let _ = op.reply.send(Ok(result));
            }
        }
        Err(_) if batch.len() > 1 => {
            for op in batch.drain(..) {
                let result = write_inserts(inner, &[&op.new])
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

/// Outcomes first, then the new broadcasts, in one transaction; either may
/// be empty.
async fn write_batch(
    inner: &Inner,
    news: &[&NewBroadcast],
    updates: &[&DeliveryUpdate],
) -> Result<(Vec<Vec<InsertedDelivery>>, Vec<UpdateResult>), StoreError> {
    let work = async {
        let mut conn = inner.pool.get().await?;
        let mut tx = conn.begin().await?;
        let updated = if updates.is_empty() {
            Vec::new()
        } else {
            update_batch(inner, &mut tx, updates).await?
        };
        let inserted = if news.is_empty() {
            Vec::new()
        } else {
            insert_batch(inner, &mut tx, news).await?
        };
        tx.commit().await?;
        Ok((inserted, updated))
    };
    tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), work)
        .await
        .map_err(|_| unavailable("the database did not answer in time"))?
}

async fn write_updates(
    inner: &Inner,
    updates: &[&DeliveryUpdate],
) -> Result<Vec<UpdateResult>, StoreError> {
    Ok(write_batch(inner, &[], updates).await?.1)
}

async fn write_inserts(
    inner: &Inner,
    news: &[&NewBroadcast],
) -> Result<Vec<Vec<InsertedDelivery>>, StoreError> {
    Ok(write_batch(inner, news, &[]).await?.0)
}
