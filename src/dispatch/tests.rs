use super::*;
use crate::store::SqliteStore;
use crate::store::{DeliveryUpdate, UpdateResult};
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

fn dispatcher(dir: &std::path::Path, concurrency: u32) -> Dispatcher<SqliteStore> {
    let store = SqliteStore::open(dir.join("herald.db")).unwrap();
    let mut destination = crate::demo::mock_destination("http://127.0.0.1:9", "webhook", "d");
    destination.concurrency = concurrency;
    Dispatcher::new(Arc::new(store), &[destination], EventBus::default(), None).unwrap()
}

/// A new delivery is leased at insert only with a slot; when the
/// destination is busy only a P1 may take the one slot kept for P1s,
/// and only while no other P1 holds it.
#[test]
fn when_every_slot_is_busy_only_a_p1_gets_the_reserved_slot_at_accept() {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = dispatcher(dir.path(), 1);
    let regular: Vec<_> = (0..LEASED_PER_REQUEST_SLOT_MAX)
        .map(|_| dispatcher.reserve_slot("d", Severity::P3))
        .collect();
    assert!(
        regular.iter().all(Option::is_some),
        "free slots go to any severity, {LEASED_PER_REQUEST_SLOT_MAX} per request slot"
    );
    for severity in [Severity::P2, Severity::P3, Severity::P5] {
        assert!(
            dispatcher.reserve_slot("d", severity).is_none(),
            "{severity:?}"
        );
    }
    let urgent = dispatcher.reserve_slot("d", Severity::P1);
    assert!(urgent.is_some(), "a P1 takes the reserved slot");
    assert!(
        dispatcher.reserve_slot("d", Severity::P1).is_none(),
        "the reserved slot is one"
    );
    drop(urgent);
    assert!(dispatcher.reserve_slot("d", Severity::P1).is_some());
    drop(regular);
    // A paused destination leases nothing at insert, not even a P1.
    let lane = dispatcher.lane("d").unwrap();
    lane.pause_until(now_ms() + 60_000);
    assert!(dispatcher.reserve_slot("d", Severity::P1).is_none());
    assert!(dispatcher.reserve_slot("d", Severity::P3).is_none());
}

/// A SQLite store whose outcome writes wait until the test opens the
/// gate, as if every commit were slow; everything else goes straight
/// through.
struct HeldOutcomes {
    inner: SqliteStore,
    gate: Semaphore,
    waiting: AtomicUsize,
}

impl Store for HeldOutcomes {
    async fn insert_broadcast(
        &self,
        new: crate::store::NewBroadcast,
    ) -> Result<Vec<crate::store::InsertedDelivery>, crate::store::StoreError> {
        self.inner.insert_broadcast(new).await
    }
    async fn claim_due(
        &self,
        destination: &str,
        limit: usize,
        now_ms: i64,
    ) -> Result<crate::store::Claim, crate::store::StoreError> {
        self.inner.claim_due(destination, limit, now_ms).await
    }
    async fn claim_due_urgent(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> Result<crate::store::Claim, crate::store::StoreError> {
        self.inner.claim_due_urgent(destination, now_ms).await
    }
    async fn update_delivery(
        &self,
        update: DeliveryUpdate,
    ) -> Result<UpdateResult, crate::store::StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let permit = self.gate.acquire().await.expect("gate open");
        permit.forget();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.inner.update_delivery(update).await
    }
    async fn recover(
        &self,
        now_ms: i64,
    ) -> Result<crate::store::Recovery, crate::store::StoreError> {
        self.inner.recover(now_ms).await
    }
    async fn objectives_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<crate::store::ObjectivesDue, crate::store::StoreError> {
        self.inner.objectives_due(now_ms, limit).await
    }

    async fn decide_objective(
        &self,
        verdict: crate::store::ObjectiveVerdict,
    ) -> Result<Option<crate::store::ObjectiveCommitted>, crate::store::StoreError> {
        self.inner.decide_objective(verdict).await
    }

    async fn escalated_destinations(
        &self,
        thread: &str,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        self.inner.escalated_destinations(thread).await
    }

    async fn broadcast(
        &self,
        id: &str,
    ) -> Result<Option<crate::store::BroadcastView>, crate::store::StoreError> {
        self.inner.broadcast(id).await
    }
    async fn destinations_with_work(&self) -> Result<Vec<String>, crate::store::StoreError> {
        self.inner.destinations_with_work().await
    }
    async fn ingest_record(
        &self,
        caller: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<crate::store::IngestRecord>, crate::store::StoreError> {
        self.inner.ingest_record(caller, key, now_ms).await
    }
    async fn save_ingest_response(
        &self,
        caller: &str,
        key: &str,
        response: String,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.save_ingest_response(caller, key, response).await
    }
    async fn purge_ingest_keys(&self, now_ms: i64) -> Result<u64, crate::store::StoreError> {
        self.inner.purge_ingest_keys(now_ms).await
    }
    async fn list_broadcasts(
        &self,
        filter: crate::store::BroadcastFilter,
    ) -> Result<Vec<crate::store::BroadcastView>, crate::store::StoreError> {
        self.inner.list_broadcasts(filter).await
    }
    async fn broadcast_ids_starting_with(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        self.inner.broadcast_ids_starting_with(prefix, limit).await
    }
    async fn operator_action(
        &self,
        broadcast_id: &str,
        action: crate::store::OperatorAction,
        destinations: Vec<String>,
        policies: Vec<(String, crate::domain::RetryPolicy)>,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, crate::store::StoreError> {
        self.inner
            .operator_action(broadcast_id, action, destinations, policies, now_ms)
            .await
    }
    async fn backlog(
        &self,
    ) -> Result<Vec<crate::store::DestinationBacklog>, crate::store::StoreError> {
        self.inner.backlog().await
    }
    async fn delete_finished_broadcasts(
        &self,
        before_ms: i64,
        after_id: Option<String>,
        limit: usize,
    ) -> Result<crate::store::RetentionBatch, crate::store::StoreError> {
        self.inner
            .delete_finished_broadcasts(before_ms, after_id, limit)
            .await
    }
    async fn stored_broadcasts(&self) -> Result<u64, crate::store::StoreError> {
        self.inner.stored_broadcasts().await
    }
    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        self.inner.ping().await
    }
    async fn pause_destination(
        &self,
        pause: crate::store::DestinationPause,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.pause_destination(pause).await
    }
    async fn resume_destination(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> Result<bool, crate::store::StoreError> {
        self.inner.resume_destination(destination, now_ms).await
    }
    async fn destination_pauses(
        &self,
        now_ms: i64,
    ) -> Result<Vec<crate::store::DestinationPause>, crate::store::StoreError> {
        self.inner.destination_pauses(now_ms).await
    }
}

/// Serves `app` on a free loopback port: the tests' destination.
async fn serve_receiver(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// The state of the one delivery of each broadcast, in order.
async fn states(store: &impl Store, ids: &[String]) -> Vec<DeliveryState> {
    let mut states = Vec::new();
    for id in ids {
        let view = store.broadcast(id).await.unwrap().unwrap();
        states.push(view.deliveries[0].progress.state);
    }
    states
}

/// Polls `condition` until it holds, for at most ten seconds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The destination's answer frees its request slot for the next leased
/// delivery, and its lane slot for the next lease, while the outcome is
/// still being committed; the delivery stays leased meanwhile, and what
/// the lane holds leased (sent or not) is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slot_serves_the_next_delivery_while_the_outcome_is_committed() {
    // A receiver that answers 200 at once and counts what it got.
    let received = Arc::new(AtomicUsize::new(0));
    let counting = received.clone();
    let app = axum::Router::new().fallback(move || {
        counting.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    });
    let address = serve_receiver(app).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(HeldOutcomes {
        inner: SqliteStore::open(dir.path().join("herald.db")).unwrap(),
        gate: Semaphore::new(0),
        waiting: AtomicUsize::new(0),
    });
    let mut destination =
        crate::demo::mock_destination(&format!("http://{address}"), "webhook", "d");
    destination.concurrency = 1;
    // On SQLite a lane holds LEASED_PER_REQUEST_SLOT_MAX leased deliveries
    // per request slot, and as many waiting for their commit.
    let k = LEASED_PER_REQUEST_SLOT_MAX;
    let mut ids = Vec::new();
    for n in 0..2 * k + 1 {
        let created_at_ms = now_ms();
        let id = crate::domain::new_broadcast_id(created_at_ms, &mut rand::rng());
        let message =
            crate::domain::Message::new(&format!("INC-{n}"), "", Severity::P3, None).unwrap();
        store
            .insert_broadcast(crate::store::NewBroadcast {
                id: id.clone(),
                message,
                created_at_ms,
                routes: Vec::new(),
                deliveries: vec![crate::store::NewDelivery {
                    destination: "d".into(),
                    policy: destination.policy,
                    lease_now: false,
                }],
                ingest_key: None,
                objective: None,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    let dispatcher = Arc::new(
        Dispatcher::new(store.clone(), &[destination], EventBus::default(), None).unwrap(),
    );
    let lane = dispatcher.lane("d").unwrap();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(dispatcher.clone().run(stopped));
    dispatcher.wake("d");

    // One request slot, k lane slots, k recording slots, 2k + 1
    // deliveries, no outcome committed. The first k were sent one after
    // the other and wait for their commit on the recording slots, which
    // gave their lane slots back; the next k were leased on those and
    // sent, and, with no recording slot free, keep their lane slots while
    // they wait for one. The last is not leased: the lane has no slot.
    eventually("2k requests sent while no outcome is committed", || {
        received.load(Ordering::SeqCst) == 2 * k
            && store.waiting.load(Ordering::SeqCst) == k
            && lane.slots.available_permits() == 0
            && lane.recording.available_permits() == 0
            && lane.requests.available_permits() == 1
    })
    .await;
    let mut expected = vec![DeliveryState::Sending; 2 * k + 1];
    expected[2 * k] = DeliveryState::Pending;
    assert_eq!(
        states(store.as_ref(), &ids).await,
        expected,
        "nothing is confirmed before its outcome is committed"
    );

    store.gate.add_permits(2 * k + 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while states(store.as_ref(), &ids).await != vec![DeliveryState::Confirmed; 2 * k + 1] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never all confirmed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(received.load(Ordering::SeqCst), 2 * k + 1, "each sent once");
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// A P1 does not queue behind routine deliveries leased ahead of it:
/// with the one request slot taken and more routine work waiting for
/// it, the P1's request goes out on the slot kept for P1s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p1_does_not_wait_behind_leased_routine_deliveries() {
    // A receiver that notes each request's severity and answers only
    // when the test lets it.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let answer = Arc::new(Semaphore::new(0));
    let (noting, answering) = (seen.clone(), answer.clone());
    let app = axum::Router::new().fallback(move |body: String| {
        let (seen, answer) = (noting.clone(), answering.clone());
        async move {
            let payload: serde_json::Value = serde_json::from_str(&body).unwrap();
            let severity = payload["data"]["severity"].as_str().unwrap().to_owned();
            seen.lock().unwrap().push(severity);
            answer.acquire().await.unwrap().forget();
            "ok"
        }
    });
    let address = serve_receiver(app).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("herald.db")).unwrap());
    let mut destination =
        crate::demo::mock_destination(&format!("http://{address}"), "webhook", "d");
    destination.concurrency = 1;
    let policy = destination.policy;
    let dispatcher = Arc::new(
        Dispatcher::new(store.clone(), &[destination], EventBus::default(), None).unwrap(),
    );
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(dispatcher.clone().run(stopped));
    // Accepts one broadcast to "d" the way the API does: leased at
    // insert when a slot is free, else left for a claim.
    let accept = |severity: Severity| {
        let (store, dispatcher) = (store.clone(), dispatcher.clone());
        async move {
            let slot = dispatcher.reserve_slot("d", severity);
            let created_at_ms = now_ms();
            let mut inserted = store
                .insert_broadcast(crate::store::NewBroadcast {
                    id: crate::domain::new_broadcast_id(created_at_ms, &mut rand::rng()),
                    message: crate::domain::Message::new("INC-1", "", severity, None).unwrap(),
                    created_at_ms,
                    routes: Vec::new(),
                    deliveries: vec![crate::store::NewDelivery {
                        destination: "d".into(),
                        policy,
                        lease_now: slot.is_some(),
                    }],
                    ingest_key: None,
                    objective: None,
                })
                .await
                .unwrap();
            match (inserted[0].leased.take(), slot) {
                (Some(leased), Some(slot)) => dispatcher.hand_off(leased, slot),
                _ => dispatcher.wake("d"),
            }
        }
    };
    for _ in 0..3 {
        accept(Severity::P3).await;
    }
    let seen_now = || seen.lock().unwrap().clone();
    eventually("the first routine request is at the destination", || {
        seen_now() == ["P3"]
    })
    .await;
    accept(Severity::P1).await;
    eventually("the P1 is sent while the routine request is open", || {
        seen_now() == ["P3", "P1"]
    })
    .await;
    answer.add_permits(16);
    eventually("every request sent", || seen_now().len() == 4).await;
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// Where an expired lease may be taken over, a leased delivery's request
/// must leave within its lease: the lane leases ahead only as many per
/// request slot as timeouts fit in the lease, one spare, and never fewer
/// than two.
#[test]
fn a_lane_leases_ahead_only_what_its_lease_can_wait_for() {
    // PostgreSQL: the hold is half the lease.
    assert_eq!(
        leased_per_request_slot(Some(30_000), 10_000),
        4,
        "60 s lease, 10 s timeout"
    );
    assert_eq!(
        leased_per_request_slot(Some(20_000), 10_000),
        3,
        "40 s lease"
    );
    assert_eq!(
        leased_per_request_slot(Some(10_000), 10_000),
        2,
        "the least lease"
    );
    assert_eq!(
        leased_per_request_slot(Some(300_000), 1_000),
        4,
        "at most 4"
    );
    // SQLite: one node's leases.
    assert_eq!(
        leased_per_request_slot(None, 10_000),
        LEASED_PER_REQUEST_SLOT_MAX
    );
}
