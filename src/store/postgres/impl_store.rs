//! The [`Store`] trait for [`PostgresStore`], and retention's choice of
//! broadcasts to delete.

use super::*;

/// Retention's choice: old broadcasts (by id, then by accept time) with no
/// unfinished delivery, oldest first, skipping those another node's
/// retention holds. `$1` the id to start after, `$2` the first id at the
/// cutoff, `$3` the cutoff, `$4` how many.
pub(super) const RETENTION_CANDIDATES_SQL: &str = concat!(
    "SELECT b.id FROM broadcasts b
     WHERE b.id > $1 AND b.id < $2 AND b.created_at_ms < $3
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state NOT IN ",
    final_states_sql!(),
    ")
     ORDER BY b.id LIMIT $4
     FOR UPDATE OF b SKIP LOCKED"
);

impl Store for PostgresStore {
    async fn insert_broadcast(
        &self,
        new: NewBroadcast,
    ) -> Result<Vec<InsertedDelivery>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .inserts
            .send(InsertOp { new, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        let inserted = answer.await.map_err(|_| StoreError::WriterStopped)?;
        self.note_commit(&inserted);
        inserted
    }

    async fn claim_due(
        &self,
        destination: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        self.claim(destination, limit, Severity::P5.rank(), now_ms)
            .await
    }

    async fn claim_due_urgent(&self, destination: &str, now_ms: i64) -> Result<Claim, StoreError> {
        self.claim(destination, 1, Severity::P1.rank(), now_ms)
            .await
    }

    async fn update_delivery(&self, update: DeliveryUpdate) -> Result<UpdateResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send(WriteOp { update, reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        let updated = answer.await.map_err(|_| StoreError::WriterStopped)?;
        self.note_commit(&updated);
        updated
    }

    /// Only this node's old leases and expired ones: the live leases of
    /// other nodes are theirs.
    async fn recover(&self, now_ms: i64) -> Result<Recovery, StoreError> {
        self.take_over(now_ms, true).await
    }

    async fn objectives_due(&self, now_ms: i64, limit: usize) -> Result<ObjectivesDue, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            objectives_due(&*conn, now_ms, limit).await
        })
        .await
    }

    async fn decide_objective(
        &self,
        verdict: ObjectiveVerdict,
    ) -> Result<Option<ObjectiveCommitted>, StoreError> {
        let decided = self
            .timed(async {
                let mut conn = self.inner.pool.get().await?;
                let mut tx = conn.begin().await?;
                let decided = decide_objective(&self.inner, &mut tx, &verdict).await?;
                // Decided before: the transaction wrote nothing; rolled back
                // when dropped.
                if decided.is_some() {
                    tx.commit().await?;
                }
                Ok(decided)
            })
            .await;
        self.note_commit(&decided);
        decided
    }

    async fn escalated_destinations(&self, thread: &str) -> Result<Vec<String>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            escalated_destinations(&*conn, thread).await
        })
        .await
    }

    async fn broadcast(&self, id: &str) -> Result<Option<BroadcastView>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            read_broadcast(&*conn, id, true).await
        })
        .await
    }

    async fn destinations_with_work(&self) -> Result<Vec<String>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            let rows = conn
                .query(
                    concat!(
                        "SELECT DISTINCT destination FROM deliveries WHERE state NOT IN ",
                        final_states_sql!()
                    ),
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn ingest_record(
        &self,
        caller: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IngestRecord>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            let row = conn
                .query_opt(
                    "SELECT broadcast_id, body_sha256, response FROM ingest_keys
                     WHERE caller = $1 AND key = $2 AND expires_at_ms >= $3",
                    &[&caller, &key, &now_ms],
                )
                .await?;
            row.map(|row| {
                Ok(IngestRecord {
                    broadcast_id: row.try_get(0)?,
                    body_sha256: row.try_get(1)?,
                    response: row.try_get(2)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn save_ingest_response(
        &self,
        caller: &str,
        key: &str,
        response: String,
    ) -> Result<(), StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            conn.execute(
                "UPDATE ingest_keys SET response = $3 WHERE caller = $1 AND key = $2",
                &[&caller, &key, &response],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn purge_ingest_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            Ok(conn
                .execute(
                    "DELETE FROM ingest_keys WHERE expires_at_ms < $1",
                    &[&now_ms],
                )
                .await?)
        })
        .await
    }

    async fn list_broadcasts(
        &self,
        filter: BroadcastFilter,
    ) -> Result<Vec<BroadcastView>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            list_broadcasts(&*conn, &filter).await
        })
        .await
    }

    async fn broadcast_ids_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (lowest, highest) = crate::domain::broadcast_id_range(prefix);
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            // The range reads the primary key (ids are one length of digits
            // and capitals, so any collation orders them alike); starts_with
            // keeps an id of another shape (none is written) out.
            let rows = conn
                .query(
                    "SELECT id FROM broadcasts WHERE id >= $1 AND id <= $2
                       AND starts_with(id, $3)
                     ORDER BY id LIMIT $4",
                    &[&lowest, &highest, &prefix, &(limit as i64)],
                )
                .await?;
            rows.iter()
                .map(|row| row.try_get::<_, String>(0).map_err(StoreError::from))
                .collect()
        })
        .await
    }

    async fn operator_action(
        &self,
        broadcast_id: &str,
        action: OperatorAction,
        destinations: Vec<String>,
        policies: Vec<(String, RetryPolicy)>,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.timed(async {
            let mut conn = self.inner.pool.get().await?;
            let mut tx = conn.begin().await?;
            let changed = operate(
                &self.inner,
                &mut tx,
                broadcast_id,
                action,
                &destinations,
                &policies,
                now_ms,
            )
            .await?;
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }

    async fn backlog(&self) -> Result<Vec<DestinationBacklog>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            let rows = conn
                .query(
                    // A delivery's `created_at_ms` is its broadcast's.
                    concat!(
                        "SELECT u.destination, u.unfinished, u.oldest, ",
                        earliest_due_sql!("u.destination"),
                        " FROM (SELECT destination, count(*) AS unfinished,
                                       min(created_at_ms) AS oldest
                                FROM deliveries WHERE state NOT IN ",
                        final_states_sql!(),
                        " GROUP BY destination) u"
                    ),
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(DestinationBacklog {
                        destination: row.try_get(0)?,
                        unfinished: row.try_get::<_, i64>(1)? as u64,
                        oldest_unfinished_since_ms: row.try_get(2)?,
                        oldest_due_at_ms: row.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_finished_broadcasts(
        &self,
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    ) -> Result<RetentionBatch, StoreError> {
        self.timed(async {
            let mut conn = self.inner.pool.get().await?;
            let mut tx = conn.begin().await?;
            let after_id = after_id.unwrap_or_default();
            let first_id = first_broadcast_id_at(before_ms);
            let ids: Vec<String> = tx
                .query(
                    RETENTION_CANDIDATES_SQL,
                    &[&after_id, &first_id, &before_ms, &(limit as i64)],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            // The choice read a snapshot; an operator retry may have
            // reopened a delivery since. Locking the deliveries reads their
            // committed state, and a retry now waits for this commit (and
            // then finds nothing to retry).
            let rows = tx
                .query(
                    concat!(
                        "SELECT id, broadcast_id, state NOT IN ",
                        final_states_sql!(),
                        " FROM deliveries WHERE broadcast_id = ANY($1) FOR UPDATE"
                    ),
                    &[&ids],
                )
                .await?;
            let mut reopened = std::collections::HashSet::new();
            for row in &rows {
                if row.try_get::<_, bool>(2)? {
                    reopened.insert(row.try_get::<_, String>(1)?);
                }
            }
            let doomed: Vec<&String> = ids.iter().filter(|id| !reopened.contains(*id)).collect();
            let mut deliveries: Vec<i64> = Vec::with_capacity(rows.len());
            for row in &rows {
                if !reopened.contains(&row.try_get::<_, String>(1)?) {
                    deliveries.push(row.try_get(0)?);
                }
            }
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id = ANY($1)",
                &[&deliveries],
            )
            .await?;
            tx.execute("DELETE FROM deliveries WHERE id = ANY($1)", &[&deliveries])
                .await?;
            tx.execute(
                "DELETE FROM ingest_keys WHERE broadcast_id = ANY($1)",
                &[&doomed],
            )
            .await?;
            tx.execute(
                "DELETE FROM objectives WHERE broadcast_id = ANY($1)",
                &[&doomed],
            )
            .await?;
            let deleted = tx
                .execute("DELETE FROM broadcasts WHERE id = ANY($1)", &[&doomed])
                .await?;
            tx.commit().await?;
            Ok(RetentionBatch {
                deleted,
                examined: ids.len(),
                last_id: ids.last().cloned(),
            })
        })
        .await
    }

    /// PostgreSQL's own count of live rows (kept by every insert and
    /// delete, cluster-wide; statistics lag by up to a second).
    async fn stored_broadcasts(&self) -> Result<u64, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            let row = conn
                .query_one(
                    "SELECT coalesce((SELECT n_live_tup FROM pg_stat_user_tables
                                      WHERE relid = 'broadcasts'::regclass), 0)",
                    &[],
                )
                .await?;
            Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let failing = self.inner.health.failing().is_some();
        let probed = self
            .timed(async {
                let mut conn = self.inner.pool.get().await?;
                if !failing {
                    conn.query_one("SELECT 1", &[]).await?;
                    return Ok(());
                }
                // The last commit failed: only a commit (here a
                // transaction id and its commit record) tells whether one
                // goes through again.
                let tx = conn.begin().await?;
                tx.tx
                    .query_one("SELECT pg_current_xact_id()::text", &[])
                    .await?;
                tx.tx.commit().await?;
                Ok(())
            })
            .await;
        if failing {
            self.note_commit(&probed);
        }
        probed
    }

    async fn pause_destination(&self, pause: DestinationPause) -> Result<(), StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            conn.execute(
                "INSERT INTO destination_state
                     (destination, held_until_ms, held_reason, held_by, held_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (destination) DO UPDATE SET held_until_ms = $2, held_reason = $3,
                     held_by = $4, held_at_ms = $5",
                &[
                    &pause.destination,
                    &pause.until_ms,
                    &pause.reason,
                    &pause.paused_by,
                    &pause.paused_at_ms,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn resume_destination(&self, destination: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            let was: Option<i64> = conn
                .query_opt(
                    "UPDATE destination_state d SET held_until_ms = 0, held_reason = NULL,
                         held_by = NULL, held_at_ms = NULL
                     FROM (SELECT held_until_ms FROM destination_state
                           WHERE destination = $1 FOR UPDATE) before
                     WHERE d.destination = $1
                     RETURNING before.held_until_ms",
                    &[&destination],
                )
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
            // Every node's lane looks again now rather than at its next poll.
            conn.execute(
                "SELECT pg_notify($1, $2)",
                &[&self.inner.channel, &destination],
            )
            .await?;
            Ok(was.is_some_and(|until| until > now_ms))
        })
        .await
    }

    async fn destination_pauses(&self, now_ms: i64) -> Result<Vec<DestinationPause>, StoreError> {
        self.timed(async {
            let conn = self.inner.pool.get().await?;
            conn.query(
                "SELECT destination, held_until_ms, held_reason, held_by, held_at_ms
                 FROM destination_state WHERE held_until_ms > $1 ORDER BY destination",
                &[&now_ms],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(DestinationPause {
                    destination: row.try_get(0)?,
                    until_ms: row.try_get(1)?,
                    reason: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                    paused_by: row.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
                    paused_at_ms: row.try_get::<_, Option<i64>>(4)?.unwrap_or_default(),
                })
            })
            .collect()
        })
        .await
    }

    fn destinations_changed(&self, destinations: Vec<(String, Isolation)>) {
        *self.inner.isolation.write().expect("isolation poisoned") =
            destinations.into_iter().collect();
    }
}
