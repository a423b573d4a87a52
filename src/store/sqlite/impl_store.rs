//! The [`Store`] trait for [`SqliteStore`]: writes go to the writer
//! thread, reads to the pool of read-only connections.

use super::*;

impl Store for SqliteStore {
    async fn insert_broadcast(
        &self,
        new: NewBroadcast,
    ) -> Result<Vec<InsertedDelivery>, StoreError> {
        match self.write(Request::Insert(new)).await? {
            Answer::Inserted(inserted) => {
                self.inner.stored_broadcasts.fetch_add(1, Ordering::Relaxed);
                Ok(inserted)
            }
            _ => Err(mismatched()),
        }
    }

    async fn claim_due(
        &self,
        destination: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let request = Request::Claim {
            destination: destination.to_owned(),
            limit,
            rank_max: Severity::P5.rank(),
            now_ms,
        };
        match self.write(request).await? {
            Answer::Claimed(claim) => Ok(claim),
            _ => Err(mismatched()),
        }
    }

    async fn claim_due_urgent(&self, destination: &str, now_ms: i64) -> Result<Claim, StoreError> {
        let request = Request::Claim {
            destination: destination.to_owned(),
            limit: 1,
            rank_max: Severity::P1.rank(),
            now_ms,
        };
        match self.write(request).await? {
            Answer::Claimed(claim) => Ok(claim),
            _ => Err(mismatched()),
        }
    }

    async fn update_delivery(&self, update: DeliveryUpdate) -> Result<UpdateResult, StoreError> {
        match self.write(Request::Update(update)).await? {
            Answer::Updated(result) => Ok(result),
            _ => Err(mismatched()),
        }
    }

    async fn recover(&self, now_ms: i64) -> Result<Recovery, StoreError> {
        match self.write(Request::Recover(now_ms)).await? {
            Answer::Recovered(recovery) => Ok(recovery),
            _ => Err(mismatched()),
        }
    }

    async fn objectives_due(&self, now_ms: i64, limit: usize) -> Result<ObjectivesDue, StoreError> {
        self.read(move |conn| objectives_due(conn, now_ms, limit))
            .await
    }

    async fn decide_objective(
        &self,
        verdict: ObjectiveVerdict,
    ) -> Result<Option<ObjectiveCommitted>, StoreError> {
        match self
            .write(Request::DecideObjective(Box::new(verdict)))
            .await?
        {
            Answer::Decided(decided) => {
                if let Some(children) = &decided {
                    self.inner
                        .stored_broadcasts
                        .fetch_add(children.len() as u64, Ordering::Relaxed);
                }
                Ok(decided)
            }
            _ => Err(mismatched()),
        }
    }

    async fn escalated_destinations(&self, thread: &str) -> Result<Vec<String>, StoreError> {
        let thread = thread.to_owned();
        self.read(move |conn| escalated_destinations(conn, &thread))
            .await
    }

    async fn broadcast(&self, id: &str) -> Result<Option<BroadcastView>, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| read_broadcast(conn, &id)).await
    }

    async fn ingest_record(
        &self,
        caller: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IngestRecord>, StoreError> {
        let (caller, key) = (caller.to_owned(), key.to_owned());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT broadcast_id, body_sha256, response FROM ingest_keys
                     WHERE caller = ?1 AND key = ?2 AND expires_at_ms >= ?3",
                )?
                .query_row(params![caller, key, now_ms], |row| {
                    Ok(IngestRecord {
                        broadcast_id: row.get(0)?,
                        body_sha256: row.get(1)?,
                        response: row.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn save_ingest_response(
        &self,
        caller: &str,
        key: &str,
        response: String,
    ) -> Result<(), StoreError> {
        let request = Request::SaveIngestResponse {
            caller: caller.to_owned(),
            key: key.to_owned(),
            response,
        };
        match self.write(request).await? {
            Answer::Done(_) => Ok(()),
            _ => Err(mismatched()),
        }
    }

    async fn purge_ingest_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        match self.write(Request::PurgeIngestKeys(now_ms)).await? {
            Answer::Done(purged) => Ok(purged),
            _ => Err(mismatched()),
        }
    }

    async fn list_broadcasts(
        &self,
        filter: BroadcastFilter,
    ) -> Result<Vec<BroadcastView>, StoreError> {
        self.read(move |conn| list_broadcasts(conn, &filter)).await
    }

    async fn broadcast_ids_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_owned();
        let (lowest, highest) = crate::domain::broadcast_id_range(&prefix);
        self.read(move |conn| {
            // The range reads the primary key; the prefix test keeps an id of
            // another shape (none is written) out.
            Ok(conn
                .prepare_cached(
                    "SELECT id FROM broadcasts WHERE id >= ?1 AND id <= ?2
                       AND substr(id, 1, length(?3)) = ?3
                     ORDER BY id LIMIT ?4",
                )?
                .query_map(params![lowest, highest, prefix, limit as i64], |row| {
                    row.get(0)
                })?
                .collect::<Result<_, _>>()?)
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
        let request = Request::Operate {
            broadcast_id: broadcast_id.to_owned(),
            action,
            destinations,
            policies,
            now_ms,
        };
        match self.write(request).await? {
            Answer::Operated(changed) => Ok(changed),
            _ => Err(mismatched()),
        }
    }

    async fn backlog(&self) -> Result<Vec<DestinationBacklog>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(BACKLOG_SQL)?;
            let mut rows: Vec<DestinationBacklog> = select
                .query_map([], |row| {
                    Ok(DestinationBacklog {
                        destination: row.get(0)?,
                        unfinished: row.get(1)?,
                        oldest_unfinished_since_ms: row.get(2)?,
                        oldest_due_at_ms: None,
                    })
                })?
                .collect::<Result<_, _>>()?;
            for row in &mut rows {
                row.oldest_due_at_ms = earliest_due(conn, &row.destination)?;
            }
            Ok(rows)
        })
        .await
    }

    async fn delete_finished_broadcasts(
        &self,
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    ) -> Result<RetentionBatch, StoreError> {
        let request = Request::DeleteFinished {
            before_ms,
            after_id,
            limit,
        };
        match self.write(request).await? {
            Answer::Retention(batch) => {
                self.inner
                    .stored_broadcasts
                    .fetch_sub(batch.deleted, Ordering::Relaxed);
                Ok(batch)
            }
            _ => Err(mismatched()),
        }
    }

    async fn stored_broadcasts(&self) -> Result<u64, StoreError> {
        Ok(self.inner.stored_broadcasts.load(Ordering::Relaxed))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.inner.health.failing().is_some() {
            // The last commit failed: only a commit tells whether one can
            // go through again.
            self.write(Request::Probe).await?;
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn pause_destination(&self, pause: DestinationPause) -> Result<(), StoreError> {
        match self.write(Request::Pause(pause)).await? {
            Answer::Done(_) => Ok(()),
            _ => Err(mismatched()),
        }
    }

    async fn resume_destination(&self, destination: &str, now_ms: i64) -> Result<bool, StoreError> {
        let request = Request::Resume {
            destination: destination.to_owned(),
            now_ms,
        };
        match self.write(request).await? {
            Answer::Done(active) => Ok(active > 0),
            _ => Err(mismatched()),
        }
    }

    async fn destination_pauses(&self, now_ms: i64) -> Result<Vec<DestinationPause>, StoreError> {
        self.read(move |conn| {
            let mut select = conn.prepare_cached(
                "SELECT destination, until_ms, reason, paused_by, paused_at_ms
                 FROM destination_pauses WHERE until_ms > ?1 ORDER BY destination",
            )?;
            let pauses = select
                .query_map(params![now_ms], |row| {
                    Ok(DestinationPause {
                        destination: row.get(0)?,
                        until_ms: row.get(1)?,
                        reason: row.get(2)?,
                        paused_by: row.get(3)?,
                        paused_at_ms: row.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(pauses)
        })
        .await
    }

    async fn destinations_with_work(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare(concat!(
                "SELECT DISTINCT destination FROM deliveries WHERE ",
                unfinished_sql!("")
            ))?;
            let names = select
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(names)
        })
        .await
    }
}
