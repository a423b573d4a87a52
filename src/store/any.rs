//! One store type for the server: SQLite (one process) or PostgreSQL
//! (several nodes), chosen at start from the database setting.

use super::*;

#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Delegates one `Store` method to whichever store this is.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call.await,
            AnyStore::Postgres($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn insert_broadcast(
        &self,
        new: NewBroadcast,
    ) -> Result<Vec<InsertedDelivery>, StoreError> {
        delegate!(self, s => s.insert_broadcast(new))
    }

    async fn claim_due(
        &self,
        destination: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        delegate!(self, s => s.claim_due(destination, limit, now_ms))
    }

    async fn claim_due_urgent(&self, destination: &str, now_ms: i64) -> Result<Claim, StoreError> {
        delegate!(self, s => s.claim_due_urgent(destination, now_ms))
    }

    async fn update_delivery(&self, update: DeliveryUpdate) -> Result<UpdateResult, StoreError> {
        delegate!(self, s => s.update_delivery(update))
    }

    async fn recover(&self, now_ms: i64) -> Result<Recovery, StoreError> {
        delegate!(self, s => s.recover(now_ms))
    }

    async fn objectives_due(&self, now_ms: i64, limit: usize) -> Result<ObjectivesDue, StoreError> {
        delegate!(self, s => s.objectives_due(now_ms, limit))
    }

    async fn decide_objective(
        &self,
        verdict: ObjectiveVerdict,
    ) -> Result<Option<ObjectiveCommitted>, StoreError> {
        delegate!(self, s => s.decide_objective(verdict))
    }

    async fn escalated_destinations(&self, thread: &str) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.escalated_destinations(thread))
    }

    async fn broadcast(&self, id: &str) -> Result<Option<BroadcastView>, StoreError> {
        delegate!(self, s => s.broadcast(id))
    }

    async fn destinations_with_work(&self) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.destinations_with_work())
    }

    async fn ingest_record(
        &self,
        caller: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<IngestRecord>, StoreError> {
        delegate!(self, s => s.ingest_record(caller, key, now_ms))
    }

    async fn save_ingest_response(
        &self,
        caller: &str,
        key: &str,
        response: String,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.save_ingest_response(caller, key, response))
    }

    async fn purge_ingest_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        delegate!(self, s => s.purge_ingest_keys(now_ms))
    }

    async fn list_broadcasts(
        &self,
        filter: BroadcastFilter,
    ) -> Result<Vec<BroadcastView>, StoreError> {
        delegate!(self, s => s.list_broadcasts(filter))
    }

    async fn broadcast_ids_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.broadcast_ids_starting_with(prefix, limit))
    }

    async fn operator_action(
        &self,
        broadcast_id: &str,
        action: OperatorAction,
        destinations: Vec<String>,
        policies: Vec<(String, RetryPolicy)>,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        delegate!(self, s => s.operator_action(broadcast_id, action, destinations, policies, now_ms))
    }

    async fn backlog(&self) -> Result<Vec<DestinationBacklog>, StoreError> {
        delegate!(self, s => s.backlog())
    }

    async fn delete_finished_broadcasts(
        &self,
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    ) -> Result<RetentionBatch, StoreError> {
        delegate!(self, s => s.delete_finished_broadcasts(before_ms, after_id, limit))
    }

    async fn stored_broadcasts(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.stored_broadcasts())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.ping())
    }

    async fn pause_destination(&self, pause: DestinationPause) -> Result<(), StoreError> {
        delegate!(self, s => s.pause_destination(pause))
    }

    async fn resume_destination(&self, destination: &str, now_ms: i64) -> Result<bool, StoreError> {
        delegate!(self, s => s.resume_destination(destination, now_ms))
    }

    async fn destination_pauses(&self, now_ms: i64) -> Result<Vec<DestinationPause>, StoreError> {
        delegate!(self, s => s.destination_pauses(now_ms))
    }

    fn destinations_changed(&self, destinations: Vec<(String, crate::domain::Isolation)>) {
        if let AnyStore::Postgres(s) = self {
            s.destinations_changed(destinations)
        }
    }
}
