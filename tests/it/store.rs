//! The store suite, run against both stores: SQLite on a real file and
//! PostgreSQL on a fresh schema. Recovery after a crash, thread order,
//! fencing, priorities, operator actions, many concurrent writers; then
//! what only one of them has (SQLite's file lock, PostgreSQL's leases
//! across nodes and shared destination state).

use herald::domain::{DeliveryState, Isolation, Message, RetryPolicy, Severity};
use herald::store::{
    AnyStore, AttemptKind, AttemptRecord, DeliveryUpdate, NewBroadcast, NewDelivery,
    OperatorAction, PostgresOptions, PostgresStore, SqliteStore, Store, UpdateResult,
};

use crate::support::{temp_dir, PgSchema};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One database for one test, and how to open (and reopen) stores on it.
struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pg: Option<PgSchema>,
}

/// Leases in the suite outlast every timestamp it uses.
const SUITE_LEASE_MS: u64 = 60_000;

impl Harness {
    /// None when the backend is unavailable here (PostgreSQL outside CI).
    async fn new(backend: Backend) -> Option<Harness> {
        let dir = temp_dir();
        let path = dir.path().join("herald.db");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgSchema::create().await?),
        };
        Some(Harness {
            _dir: dir,
            path,
            pg,
        })
    }

    /// A store as a restarted process opens it (same node id).
    async fn open(&self) -> AnyStore {
        self.open_as("node-a", SUITE_LEASE_MS).await
    }

    async fn open_as(&self, node_id: &str, lease_ms: u64) -> AnyStore {
        match &self.pg {
            None => AnyStore::Sqlite(SqliteStore::open(&self.path).unwrap()),
            Some(pg) => AnyStore::Postgres(
                PostgresStore::open(PostgresOptions {
                    url: pg.url.clone(),
                    node_id: node_id.to_owned(),
                    lease_ms,
                    destinations: vec![("a".into(), Isolation::default())],
                    take_over_expired_leases: false,
                })
                .await
                .unwrap(),
            ),
        }
    }

    async fn count_rows(&self, table: &str) -> i64 {
        match &self.pg {
            None => crate::support::count_rows(&self.path, table),
            Some(pg) => pg
                .client()
                .await
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0),
        }
    }
}

/// Each listed test, once per backend: `store::sqlite::NAME` and
/// `store::postgres::NAME`.
macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(harness) = super::Harness::new(super::Backend::Sqlite).await {
                        super::$name(harness).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(harness) = super::Harness::new(super::Backend::Postgres).await {
                        super::$name(harness).await;
                    }
                }
            )*
        }
    };
}

store_suite!(
    a_delivery_sending_at_a_crash_is_verified_not_resent_blindly,
    a_thread_update_waits_for_the_message_it_updates,
    concurrent_inserts_are_all_committed,
    an_outcome_from_an_older_lease_is_refused,
    a_failing_write_fails_alone_in_its_batch,
    a_refused_broadcast_fails_alone_beside_outcomes_in_flight,
    a_p1_is_claimed_before_an_older_backlog,
    cancel_leaves_an_attempt_in_flight_to_finish_and_keeps_thread_order,
    concurrent_messages_of_one_thread_go_one_at_a_time,
    each_delivery_keeps_its_own_attempts_and_only_unfinished_ones_count_as_backlog,
    the_backlog_names_each_destinations_oldest_waiting_and_earliest_due,
    broadcasts_are_found_by_delivery_state_and_by_the_start_of_their_id,
    retention_deletes_old_finished_broadcasts_with_their_rows_and_keeps_the_rest,
    a_broadcasts_details_and_routes_are_stored_and_claimed_with_it,
);

fn new_broadcast(
    id: &str,
    thread: Option<&str>,
    destinations: &[&str],
    now_ms: i64,
) -> NewBroadcast {
    NewBroadcast {
        id: id.to_owned(),
        message: Message::new("disk full", "", Severity::P2, thread).unwrap(),
        created_at_ms: now_ms,
        routes: Vec::new(),
        deliveries: destinations
            .iter()
            .map(|d| NewDelivery {
                destination: (*d).to_owned(),
                policy: RetryPolicy::default(),
                lease_now: false,
            })
            .collect(),
        ingest_key: None,
        objective: None,
    }
}

async fn a_delivery_sending_at_a_crash_is_verified_not_resent_blindly(harness: Harness) {
    {
        let store = harness.open().await;
        store
            .insert_broadcast(new_broadcast("B1", None, &["a", "b"], 1_000))
            .await
            .unwrap();
        let claim = store.claim_due("a", 10, 2_000).await.unwrap();
        assert_eq!(claim.deliveries.len(), 1);
        assert_eq!(claim.deliveries[0].progress.state, DeliveryState::Sending);
        // The process dies here: the store is dropped with the lease held.
    }
    let store = harness.open().await;
    let recovery = store.recover(3_000).await.unwrap();
    assert_eq!(recovery.interrupted, 1);
    let view = store.broadcast("B1").await.unwrap().unwrap();
    let a = &view.deliveries[0];
    assert_eq!(a.progress.state, DeliveryState::Verifying);
    assert_eq!(a.progress.attempts_made, 1);
    assert_eq!(a.idempotency_key, "B1-a");
    assert_eq!(a.attempts.len(), 1);
    assert_eq!(a.attempts[0].outcome, "interrupted");
    assert_eq!(
        view.deliveries[1].progress.state,
        DeliveryState::Pending,
        "b was never leased"
    );

    // The verifying delivery is due again, under the same key.
    let claim = store.claim_due("a", 10, 3_000).await.unwrap();
    assert_eq!(claim.deliveries.len(), 1);
    assert_eq!(claim.deliveries[0].progress.state, DeliveryState::Verifying);
    assert_eq!(claim.deliveries[0].idempotency_key, "B1-a");
}

async fn a_thread_update_waits_for_the_message_it_updates(harness: Harness) {
    let store = harness.open().await;
    store
        .insert_broadcast(new_broadcast("B1", Some("INC-7"), &["a"], 1_000))
        .await
        .unwrap();
    let mut resolve = new_broadcast("B2", Some("INC-7"), &["a"], 1_001);
    resolve.message = resolve.message.resolving(true).unwrap();
    let inserted = store.insert_broadcast(resolve).await.unwrap();
    assert_eq!(inserted[0].progress.state, DeliveryState::Waiting);

    let claim = store.claim_due("a", 10, 5_000).await.unwrap();
    assert_eq!(
        claim.deliveries.len(),
        1,
        "only the first of the thread is due"
    );
    let first = &claim.deliveries[0];
    assert_eq!(first.broadcast_id, "B1");
    assert_eq!(
        first.thread_ref, None,
        "the thread's first message opens it"
    );

    let mut confirmed = first.progress.clone();
    confirmed.state = DeliveryState::Confirmed;
    let result = store
        .update_delivery(DeliveryUpdate {
            delivery_id: first.delivery_id,
            lease_epoch: first.lease_epoch,
            expected_state: DeliveryState::Sending,
            progress: confirmed,
            last_error: None,
            attempt: AttemptRecord {
                number: 1,
                kind: AttemptKind::Send,
                started_at_ms: 5_000,
                finished_at_ms: 5_010,
                outcome: "success".into(),
                http_status: Some(200),
                excerpt: None,
                error: None,
            },
            now_ms: 5_010,
            remote_ref: Some("1700000000.000100".into()),
            pause_destination_ms: None,
            in_thread: first.message.thread().is_some(),
        })
        .await
        .unwrap();
    assert_eq!(
        result,
        UpdateResult::Applied {
            promoted_next_in_thread: true
        }
    );
    let view = store.broadcast("B1").await.unwrap().unwrap();
    assert_eq!(
        view.deliveries[0].remote_ref.as_deref(),
        Some("1700000000.000100")
    );
    let claim = store.claim_due("a", 10, 5_020).await.unwrap();
    assert_eq!(claim.deliveries.len(), 1);
    let update = &claim.deliveries[0];
    assert_eq!(update.broadcast_id, "B2");
    assert!(update.message.resolved(), "the resolve flag is kept");
    assert_eq!(
        update.thread_ref.as_deref(),
        Some("1700000000.000100"),
        "the update attaches to what the first message created"
    );
}

async fn concurrent_inserts_are_all_committed(harness: Harness) {
    let store = harness.open().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .insert_broadcast(new_broadcast(&format!("B{i}"), None, &["a", "b", "c"], i))
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let duplicate = store
        .insert_broadcast(new_broadcast("B7", None, &["a"], 0))
        .await;
    assert!(duplicate.is_err(), "an existing id is refused");
    drop(store);
    assert_eq!(harness.count_rows("broadcasts").await, 300);
    assert_eq!(harness.count_rows("deliveries").await, 900);
}

async fn an_outcome_from_an_older_lease_is_refused(harness: Harness) {
    let stale = {
        let store = harness.open().await;
        store
            .insert_broadcast(new_broadcast("B1", None, &["a"], 1_000))
            .await
            .unwrap();
        store
            .claim_due("a", 1, 2_000)
            .await
            .unwrap()
            .deliveries
            .remove(0)
    };
    // A restart: the interrupted delivery is verified and leased again.
    let store = harness.open().await;
    store.recover(3_000).await.unwrap();
    let fresh = store
        .claim_due("a", 1, 3_000)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    assert!(fresh.lease_epoch > stale.lease_epoch);

    let mut confirmed = stale.progress.clone();
    confirmed.state = DeliveryState::Confirmed;
    let late = DeliveryUpdate {
        delivery_id: stale.delivery_id,
        lease_epoch: stale.lease_epoch,
        expected_state: DeliveryState::Verifying,
        progress: confirmed,
        last_error: None,
        attempt: AttemptRecord {
            number: 1,
            kind: AttemptKind::Verify,
            started_at_ms: 3_000,
            finished_at_ms: 3_001,
            outcome: "found".into(),
            http_status: None,
            excerpt: None,
            error: None,
        },
        now_ms: 3_001,
        remote_ref: None,
        pause_destination_ms: None,
        in_thread: false,
    };
    assert_eq!(
        store.update_delivery(late.clone()).await.unwrap(),
        UpdateResult::Stale
    );
    let view = store.broadcast("B1").await.unwrap().unwrap();
    assert_eq!(
        view.deliveries[0].progress.state,
        DeliveryState::Verifying,
        "the new lease is untouched"
    );
    let current = DeliveryUpdate {
        lease_epoch: fresh.lease_epoch,
        ..late
    };
    assert!(matches!(
        store.update_delivery(current).await.unwrap(),
        UpdateResult::Applied { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_second_process_cannot_open_the_same_database() {
    let dir = temp_dir();
    let path = dir.path().join("herald.db");
    let _first = SqliteStore::open(&path).unwrap();
    let second = SqliteStore::open(&path);
    let message = second
        .err()
        .expect("the second open is refused")
        .to_string();
    assert!(message.contains("another herald process"), "{message}");
}

async fn a_failing_write_fails_alone_in_its_batch(harness: Harness) {
    let store = harness.open().await;
    // 200 concurrent inserts over 100 ids: each id succeeds exactly once,
    // and every refusal is about a duplicate, whatever batch it shared.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .insert_broadcast(new_broadcast(&format!("B{}", i % 100), None, &["a"], i))
                .await
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(_) => accepted += 1,
            Err(herald::store::StoreError::DuplicateBroadcast(_)) => refused += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!((accepted, refused), (100, 100));
    drop(store);
    assert_eq!(harness.count_rows("broadcasts").await, 100);
    assert_eq!(harness.count_rows("deliveries").await, 100);
}

/// New broadcasts and outcomes share the writers' batches (on PostgreSQL
/// one transaction holds both): a refused broadcast in such a batch fails
/// alone, and every outcome beside it is still applied, once.
async fn a_refused_broadcast_fails_alone_beside_outcomes_in_flight(harness: Harness) {
    let store = harness.open().await;
    for i in 0..50 {
        store
            .insert_broadcast(new_broadcast(&format!("A{i}"), None, &["a"], i))
            .await
            .unwrap();
    }
    let claim = store.claim_due("a", 100, 1_000).await.unwrap();
    assert_eq!(claim.deliveries.len(), 50);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, delivery) in claim.deliveries.iter().enumerate() {
        // Outcomes and new broadcasts (every other one a duplicate id)
        // queued together.
        let update = outcome(delivery, DeliveryState::Confirmed, "success", 2_000);
        let store_for_outcome = store.clone();
        tasks.spawn(async move {
            let applied = store_for_outcome.update_delivery(update).await;
            (None, Some(applied))
        });
        for id in [format!("B{i}"), format!("B{}", i / 2 * 2)] {
            let store = store.clone();
            tasks.spawn(async move {
                let inserted = store
                    .insert_broadcast(new_broadcast(&id, None, &["a"], 3_000))
                    .await;
                (Some(inserted), None)
            });
        }
    }
    let (mut accepted, mut refused, mut applied) = (0, 0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (Some(Ok(_)), None) => accepted += 1,
            (Some(Err(herald::store::StoreError::DuplicateBroadcast(_))), None) => refused += 1,
            (None, Some(Ok(herald::store::UpdateResult::Applied { .. }))) => applied += 1,
            (inserted, updated) => panic!("unexpected answer {inserted:?} {updated:?}"),
        }
    }
    assert_eq!((accepted, refused, applied), (50, 50, 50));
    drop(store);
    assert_eq!(harness.count_rows("broadcasts").await, 100);
    assert_eq!(harness.count_rows("deliveries").await, 100);
    assert_eq!(harness.count_rows("attempts").await, 50);
}

async fn a_p1_is_claimed_before_an_older_backlog(harness: Harness) {
    let store = harness.open().await;
    for i in 0..50 {
        let mut backlog = new_broadcast(&format!("B{i}"), None, &["a"], i);
        backlog.message = Message::new("backlog", "", Severity::P4, None).unwrap();
        store.insert_broadcast(backlog).await.unwrap();
    }
    let mut urgent = new_broadcast("P1", None, &["a"], 1_000);
    urgent.message = Message::new("checkout down", "", Severity::P1, None).unwrap();
    store.insert_broadcast(urgent).await.unwrap();

    let urgent = store.claim_due_urgent("a", 2_000).await.unwrap();
    assert_eq!(urgent.deliveries.len(), 1);
    assert_eq!(urgent.deliveries[0].broadcast_id, "P1");
    assert!(
        store
            .claim_due_urgent("a", 2_000)
            .await
            .unwrap()
            .deliveries
            .is_empty(),
        "only P1s"
    );
    let mut urgent = new_broadcast("P1b", None, &["a"], 1_001);
    urgent.message = Message::new("checkout still down", "", Severity::P1, None).unwrap();
    store.insert_broadcast(urgent).await.unwrap();

    let claim = store.claim_due("a", 3, 2_000).await.unwrap();
    let ids: Vec<&str> = claim
        .deliveries
        .iter()
        .map(|d| d.broadcast_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["P1b", "B0", "B1"],
        "most urgent first, then oldest due"
    );
    assert_eq!(
        claim.next_due_at_ms, None,
        "a full claim: claim again at once"
    );
    let claim = store.claim_due("a", 100, 10).await.unwrap();
    assert_eq!(claim.deliveries.len(), 9, "B2..B10 are due at 10");
    assert_eq!(claim.next_due_at_ms, Some(11), "B11 is the earliest left");
}

async fn cancel_leaves_an_attempt_in_flight_to_finish_and_keeps_thread_order(harness: Harness) {
    let store = harness.open().await;
    store
        .insert_broadcast(new_broadcast("FIRING", Some("INC-9"), &["a"], 1_000))
        .await
        .unwrap();
    store
        .insert_broadcast(new_broadcast("RESOLVED", Some("INC-9"), &["a"], 1_001))
        .await
        .unwrap();
    let in_flight = store
        .claim_due("a", 10, 2_000)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    assert_eq!(in_flight.broadcast_id, "FIRING");

    let changed = store
        .operator_action("FIRING", OperatorAction::Cancel, vec![], vec![], 2_100)
        .await
        .unwrap();
    assert_eq!(
        changed,
        Some(vec![]),
        "the delivery in flight is not cancelled under its attempt"
    );
    assert!(
        store
            .claim_due("a", 10, 2_200)
            .await
            .unwrap()
            .deliveries
            .is_empty(),
        "RESOLVED still waits"
    );

    let changed = store
        .operator_action("RESOLVED", OperatorAction::Cancel, vec![], vec![], 2_300)
        .await
        .unwrap();
    assert_eq!(
        changed,
        Some(vec!["a".to_owned()]),
        "a waiting delivery can be cancelled"
    );
    let again = store
        .operator_action("RESOLVED", OperatorAction::Cancel, vec![], vec![], 2_400)
        .await
        .unwrap();
    assert_eq!(again, Some(vec![]), "cancelling twice changes nothing");
    assert_eq!(
        store
            .operator_action("NOPE", OperatorAction::Retry, vec![], vec![], 0)
            .await
            .unwrap(),
        None
    );
}

async fn broadcasts_are_found_by_delivery_state_and_by_the_start_of_their_id(harness: Harness) {
    use herald::store::BroadcastFilter;
    let store = harness.open().await;
    let ids = [
        "01JD7Q3ZK8W5V2N4XG6T9RBH1A",
        "01JD7Q3ZK8W5V2N4XG6T9RBH1B",
        "01JD7Q4000000000000000000C",
    ];
    for (i, id) in ids.iter().enumerate() {
        store
            .insert_broadcast(new_broadcast(id, None, &["a"], 1_000 + i as i64))
            .await
            .unwrap();
    }
    let changed = store
        .operator_action(ids[0], OperatorAction::Cancel, vec![], vec![], 2_000)
        .await
        .unwrap();
    assert_eq!(changed, Some(vec!["a".to_owned()]));
    let having = |state| {
        let store = store.clone();
        async move {
            let filter = BroadcastFilter {
                delivery_state: Some(state),
                limit: 50,
                ..BroadcastFilter::default()
            };
            let views = store.list_broadcasts(filter).await.unwrap();
            views.into_iter().map(|v| v.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(having(DeliveryState::Cancelled).await, [ids[0]]);
    assert_eq!(having(DeliveryState::Pending).await, [ids[2], ids[1]]);
    assert!(having(DeliveryState::Failed).await.is_empty());

    let starting = |prefix: &'static str, limit| {
        let store = store.clone();
        async move {
            store
                .broadcast_ids_starting_with(prefix, limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(starting("01JD7Q3Z", 11).await, [ids[0], ids[1]]);
    assert_eq!(starting("01JD7Q3Z", 1).await, [ids[0]]);
    assert_eq!(starting("01JD7Q4", 11).await, [ids[2]]);
    assert_eq!(starting(ids[1], 11).await, [ids[1]]);
    assert!(starting("01JD7Q5", 11).await.is_empty());

    // The operator changes their mind: the cancelled delivery goes again.
    let changed = store
        .operator_action(ids[0], OperatorAction::Retry, vec![], vec![], 3_000)
        .await
        .unwrap();
    assert_eq!(changed, Some(vec!["a".to_owned()]));
    assert_eq!(
        having(DeliveryState::Pending).await,
        ids.iter().rev().copied().collect::<Vec<_>>()
    );

    // A page of the list (read in a few queries for the whole page) holds
    // each broadcast as reading it alone does, without its attempts.
    let page = store
        .list_broadcasts(BroadcastFilter {
            limit: 50,
            ..BroadcastFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), ids.len());
    for listed in page {
        let mut alone = store.broadcast(&listed.id).await.unwrap().unwrap();
        for delivery in &mut alone.deliveries {
            delivery.attempts.clear();
        }
        assert_eq!(format!("{listed:?}"), format!("{alone:?}"));
    }
}

async fn each_delivery_keeps_its_own_attempts_and_only_unfinished_ones_count_as_backlog(
    harness: Harness,
) {
    let store = harness.open().await;
    let unfinished = |store: &AnyStore| {
        let store = store.clone();
        async move {
            store
                .backlog()
                .await
                .unwrap()
                .iter()
                .map(|b| b.unfinished)
                .sum::<u64>()
        }
    };
    for id in ["B1", "B2", "B3"] {
        store
            .insert_broadcast(new_broadcast(id, None, &["a"], 1_000))
            .await
            .unwrap();
    }
    assert_eq!(unfinished(&store).await, 3);
    // B1 fails once and is retried; B2 lands at once; their attempts
    // interleave in time.
    let first = store.claim_due("a", 2, 2_000).await.unwrap().deliveries;
    let (b1, b2) = (&first[0], &first[1]);
    assert_eq!(
        (b1.broadcast_id.as_str(), b2.broadcast_id.as_str()),
        ("B1", "B2")
    );
    for update in [
        outcome(b1, DeliveryState::Retrying, "retryable", 2_010),
        outcome(b2, DeliveryState::Confirmed, "success", 2_020),
    ] {
        assert!(matches!(
            store.update_delivery(update).await.unwrap(),
            UpdateResult::Applied { .. }
        ));
    }
    assert_eq!(unfinished(&store).await, 2, "B1 retrying and B3 pending");
    store
        .operator_action("B3", OperatorAction::Cancel, vec![], vec![], 2_500)
        .await
        .unwrap();
    assert_eq!(unfinished(&store).await, 1, "only B1 is left");
    let retried = store.claim_due("a", 2, 3_100).await.unwrap().deliveries;
    assert_eq!(retried.len(), 1, "B1 again, nothing cancelled");
    store
        .update_delivery(outcome(
            &retried[0],
            DeliveryState::Confirmed,
            "success",
            3_110,
        ))
        .await
        .unwrap();
    assert_eq!(unfinished(&store).await, 0);
    assert!(store.destinations_with_work().await.unwrap().is_empty());

    // Reopened: each delivery's log is its own, in order.
    drop(store);
    let store = harness.open().await;
    let log = |id: &'static str| {
        let store = store.clone();
        async move {
            let view = store.broadcast(id).await.unwrap().unwrap();
            view.deliveries[0]
                .attempts
                .iter()
                .map(|a| (a.started_at_ms, a.outcome.clone()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        log("B1").await,
        [
            (2_009, "retryable".to_owned()),
            (3_109, "success".to_owned())
        ]
    );
    assert_eq!(log("B2").await, [(2_019, "success".to_owned())]);
    assert!(log("B3").await.is_empty());
}

async fn the_backlog_names_each_destinations_oldest_waiting_and_earliest_due(harness: Harness) {
    let store = harness.open().await;
    let backlog = |store: &AnyStore| {
        let store = store.clone();
        async move {
            let mut rows = store.backlog().await.unwrap();
            rows.sort_by(|x, y| x.destination.cmp(&y.destination));
            rows.iter()
                .map(|b| {
                    (
                        b.destination.clone(),
                        b.unfinished,
                        b.oldest_unfinished_since_ms,
                        b.oldest_due_at_ms,
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let a =
        |unfinished, since: i64, due: Option<i64>| ("a".to_owned(), unfinished, Some(since), due);
    let b = ("b".to_owned(), 1, Some(1_000), Some(1_000));
    store
        .insert_broadcast(new_broadcast("B1", None, &["a", "b"], 1_000))
        .await
        .unwrap();
    for (id, at) in [("B2", 2_000), ("B3", 3_000)] {
        store
            .insert_broadcast(new_broadcast(id, None, &["a"], at))
            .await
            .unwrap();
    }
    assert_eq!(backlog(&store).await, [a(3, 1_000, Some(1_000)), b.clone()]);
    // B1 in flight on `a`: still waiting, no longer due.
    let claimed = store.claim_due("a", 1, 5_000).await.unwrap().deliveries;
    assert_eq!(claimed[0].broadcast_id, "B1");
    assert_eq!(backlog(&store).await, [a(3, 1_000, Some(2_000)), b.clone()]);
    // B1 confirmed on `a`; `b` still waits for it.
    store
        .update_delivery(outcome(
            &claimed[0],
            DeliveryState::Confirmed,
            "success",
            5_010,
        ))
        .await
        .unwrap();
    assert_eq!(backlog(&store).await, [a(2, 2_000, Some(2_000)), b.clone()]);
    // B2 fails once and waits for its retry: due later than B3.
    let claimed = store.claim_due("a", 1, 6_000).await.unwrap().deliveries;
    assert_eq!(claimed[0].broadcast_id, "B2");
    store
        .update_delivery(outcome(
            &claimed[0],
            DeliveryState::Retrying,
            "retryable",
            6_010,
        ))
        .await
        .unwrap();
    assert_eq!(backlog(&store).await, [a(2, 2_000, Some(3_000)), b]);
}

fn outcome(
    delivery: &herald::store::ClaimedDelivery,
    state: DeliveryState,
    outcome: &str,
    now_ms: i64,
) -> DeliveryUpdate {
    let mut progress = delivery.progress.clone();
    progress.state = state;
    progress.due_at_ms = (state == DeliveryState::Retrying).then_some(now_ms + 1_000);
    DeliveryUpdate {
        delivery_id: delivery.delivery_id,
        lease_epoch: delivery.lease_epoch,
        expected_state: delivery.progress.state,
        progress,
        last_error: None,
        attempt: AttemptRecord {
            number: delivery.progress.attempts_made,
            kind: AttemptKind::Send,
            started_at_ms: now_ms - 1,
            finished_at_ms: now_ms,
            outcome: outcome.into(),
            http_status: None,
            excerpt: None,
            error: None,
        },
        now_ms,
        remote_ref: None,
        pause_destination_ms: None,
        in_thread: delivery.message.thread().is_some(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_takes_over_only_expired_leases_and_the_late_write_is_refused() {
    let Some(harness) = Harness::new(Backend::Postgres).await else {
        return;
    };
    let lease_ms = 10_000;
    let node_a = harness.open_as("node-a", lease_ms).await;
    let node_b = harness.open_as("node-b", lease_ms).await;
    node_a
        .insert_broadcast(new_broadcast("B1", None, &["a"], 1_000))
        .await
        .unwrap();
    let held = node_a.claim_due("a", 10, 1_000).await.unwrap().deliveries;
    assert_eq!(held.len(), 1);
    assert!(
        node_b
            .claim_due("a", 10, 1_500)
            .await
            .unwrap()
            .deliveries
            .is_empty(),
        "a leased delivery is nobody else's"
    );

    // Node b starts while a's lease is live: it must not steal it.
    let recovery = node_b.recover(2_000).await.unwrap();
    assert_eq!((recovery.interrupted, recovery.released), (0, 0));

    // Past the expiry, b takes it over through verifying.
    let recovery = node_b.recover(1_000 + lease_ms as i64 + 1).await.unwrap();
    assert_eq!(recovery.interrupted, 1);
    let taken = node_b.claim_due("a", 10, 12_000).await.unwrap().deliveries;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].progress.state, DeliveryState::Verifying);
    assert!(taken[0].lease_epoch > held[0].lease_epoch);

    // Node a wakes up and reports its old attempt: refused.
    let late = outcome(&held[0], DeliveryState::Confirmed, "success", 12_500);
    assert_eq!(
        node_a.update_delivery(late).await.unwrap(),
        UpdateResult::Stale
    );
    let view = node_b.broadcast("B1").await.unwrap().unwrap();
    assert_eq!(view.deliveries[0].progress.state, DeliveryState::Verifying);
    let mut found = outcome(&taken[0], DeliveryState::Confirmed, "found", 12_600);
    found.attempt.kind = AttemptKind::Verify;
    assert!(matches!(
        node_b.update_delivery(found).await.unwrap(),
        UpdateResult::Applied { .. }
    ));
    let view = node_a.broadcast("B1").await.unwrap().unwrap();
    assert_eq!(view.deliveries[0].progress.state, DeliveryState::Confirmed);
    let outcomes: Vec<&str> = view.deliveries[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["interrupted", "success", "found"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_outcome_after_the_lease_expired_is_refused_even_before_a_takeover() {
    let Some(harness) = Harness::new(Backend::Postgres).await else {
        return;
    };
    let node = harness.open_as("node-a", 5_000).await;
    node.insert_broadcast(new_broadcast("B1", None, &["a"], 1_000))
        .await
        .unwrap();
    let held = node.claim_due("a", 1, 1_000).await.unwrap().deliveries;
    let late = outcome(&held[0], DeliveryState::Confirmed, "success", 6_001);
    assert_eq!(
        node.update_delivery(late).await.unwrap(),
        UpdateResult::Stale
    );
    let in_time = outcome(&held[0], DeliveryState::Confirmed, "success", 6_000);
    assert!(matches!(
        node.update_delivery(in_time).await.unwrap(),
        UpdateResult::Applied { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_429_on_one_node_pauses_the_destination_on_every_node() {
    let Some(harness) = Harness::new(Backend::Postgres).await else {
        return;
    };
    let node_a = harness.open_as("node-a", SUITE_LEASE_MS).await;
    let node_b = harness.open_as("node-b", SUITE_LEASE_MS).await;
    for id in ["B1", "B2"] {
        node_a
            .insert_broadcast(new_broadcast(id, None, &["a"], 1_000))
            .await
            .unwrap();
    }
    let first = node_a.claim_due("a", 1, 1_000).await.unwrap().deliveries;
    let mut limited = outcome(&first[0], DeliveryState::Retrying, "rate_limited", 1_100);
    limited.pause_destination_ms = Some(3_000);
    node_a.update_delivery(limited).await.unwrap();

    let claim = node_b.claim_due("a", 10, 2_000).await.unwrap();
    assert!(claim.deliveries.is_empty(), "paused for every node");
    assert_eq!(claim.next_due_at_ms, Some(4_100), "until the pause ends");
    let claim = node_b.claim_due("a", 10, 4_100).await.unwrap();
    assert_eq!(
        claim.deliveries.len(),
        2,
        "both once the pause is over (B1's retry is due then too)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_is_explicit_idempotent_and_a_newer_schema_is_refused() {
    let Some(harness) = Harness::new(Backend::Postgres).await else {
        return;
    };
    let pg = harness.pg.as_ref().unwrap();
    let applied = herald::store::postgres::migrate(&pg.url).await.unwrap();
    assert!(applied >= 1);
    assert_eq!(herald::store::postgres::migrate(&pg.url).await.unwrap(), 0);
    pg.client()
        .await
        .execute(
            "INSERT INTO herald_schema (version, applied_at_ms) VALUES (999, 0)",
            &[],
        )
        .await
        .unwrap();
    let error = PostgresStore::open(PostgresOptions {
        url: pg.url.clone(),
        node_id: "node-a".into(),
        lease_ms: SUITE_LEASE_MS,
        destinations: vec![],
        take_over_expired_leases: false,
    })
    .await
    .err()
    .expect("a newer schema is refused");
    assert!(
        matches!(
            error,
            herald::store::StoreError::SchemaTooNew { found: 999, .. }
        ),
        "{error}"
    );
}

async fn concurrent_messages_of_one_thread_go_one_at_a_time(harness: Harness) {
    let store = harness.open().await;
    // Committed together or not, only the first of a thread is due.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .insert_broadcast(new_broadcast(
                    &format!("B{i:02}"),
                    Some("INC-5"),
                    &["a"],
                    1_000,
                ))
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let mut confirmed_in_order = Vec::new();
    for round in 0..40 {
        let now_ms = 2_000 + round * 10;
        let claim = store.claim_due("a", 10, now_ms).await.unwrap();
        assert_eq!(claim.deliveries.len(), 1, "one at a time (round {round})");
        let delivery = &claim.deliveries[0];
        let done = outcome(delivery, DeliveryState::Confirmed, "success", now_ms + 1);
        store.update_delivery(done).await.unwrap();
        confirmed_in_order.push(delivery.broadcast_id.clone());
    }
    assert!(store
        .claim_due("a", 10, 9_000)
        .await
        .unwrap()
        .deliveries
        .is_empty());
    assert_eq!(confirmed_in_order.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_circuit_breaker_is_shared_by_every_node() {
    let Some(harness) = Harness::new(Backend::Postgres).await else {
        return;
    };
    let pg = harness.pg.as_ref().unwrap();
    let open = |node: &str| {
        PostgresStore::open(PostgresOptions {
            url: pg.url.clone(),
            node_id: node.to_owned(),
            lease_ms: SUITE_LEASE_MS,
            destinations: vec![(
                "a".into(),
                Isolation {
                    breaker_failures: 2,
                    breaker_cooldown_ms: 1_000,
                    ..Isolation::default()
                },
            )],
            take_over_expired_leases: false,
        })
    };
    let node_a = open("node-a").await.unwrap();
    let node_b = open("node-b").await.unwrap();
    for i in 0..4 {
        node_a
            .insert_broadcast(new_broadcast(&format!("B{i}"), None, &["a"], 1_000))
            .await
            .unwrap();
    }
    // Two failures in a row on node a open the circuit.
    let failing = node_a.claim_due("a", 2, 1_000).await.unwrap().deliveries;
    assert_eq!(failing.len(), 2);
    for delivery in &failing {
        let failed = outcome(delivery, DeliveryState::Retrying, "retryable", 1_100);
        node_a.update_delivery(failed).await.unwrap();
    }
    let claim = node_b.claim_due("a", 10, 1_200).await.unwrap();
    assert!(claim.deliveries.is_empty(), "open for node b too");
    assert_eq!(
        claim.next_due_at_ms,
        Some(2_100),
        "until the cool-down ends"
    );

    // After the cool-down, one probe for the whole cluster.
    let probe = node_b.claim_due("a", 10, 2_100).await.unwrap().deliveries;
    assert_eq!(probe.len(), 1, "one probe");
    assert!(
        node_a
            .claim_due("a", 10, 2_150)
            .await
            .unwrap()
            .deliveries
            .is_empty(),
        "no second probe while the first is out"
    );
    let success = outcome(&probe[0], DeliveryState::Confirmed, "success", 2_200);
    node_b.update_delivery(success).await.unwrap();
    let claim = node_a.claim_due("a", 10, 3_200).await.unwrap();
    assert_eq!(claim.deliveries.len(), 3, "closed again: the rest go");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_node_hears_whether_new_due_work_holds_a_p1() {
    let Some(harness) = Harness::new(Backend::Postgres).await else {
        return;
    };
    let node_a = harness.open_as("node-a", SUITE_LEASE_MS).await;
    let AnyStore::Postgres(node_b) = harness.open_as("node-b", SUITE_LEASE_MS).await else {
        unreachable!("a PostgreSQL harness opens PostgreSQL stores");
    };
    let mut heard = node_b.wakeups();
    // The next wake-up naming a destination ("*" only says: look everywhere).
    async fn next(
        heard: &mut tokio::sync::broadcast::Receiver<String>,
        wait_ms: u64,
    ) -> Option<String> {
        let wait = std::time::Duration::from_millis(wait_ms);
        loop {
            match tokio::time::timeout(wait, heard.recv()).await {
                Ok(Ok(payload)) if payload == herald::store::postgres::WAKE_ALL => continue,
                Ok(Ok(payload)) => return Some(payload),
                Ok(Err(error)) => panic!("{error}"),
                Err(_) => return None,
            }
        }
    }
    // Node B's LISTEN comes up in the background: routine work until it hears.
    let mut routine = None;
    for i in 0..50 {
        node_a
            .insert_broadcast(new_broadcast(&format!("B{i}"), None, &["a"], 1_000 + i))
            .await
            .unwrap();
        routine = next(&mut heard, 200).await;
        if routine.is_some() {
            break;
        }
    }
    assert_eq!(
        routine.as_deref(),
        Some("a/routine"),
        "a P2 alone is routine work"
    );

    let mut urgent = new_broadcast("P1", None, &["a"], 2_000);
    urgent.message = Message::new("checkout down", "", Severity::P1, None).unwrap();
    node_a.insert_broadcast(urgent).await.unwrap();
    // Skipping any late wake-up of the routine work above.
    let mut heard_next = next(&mut heard, 10_000).await;
    while heard_next.as_deref() == Some("a/routine") {
        heard_next = next(&mut heard, 10_000).await;
    }
    assert_eq!(
        heard_next.as_deref(),
        Some("a"),
        "a P1 wakes the slot kept for P1s"
    );
}

/// Retention, batch by batch: an old finished broadcast goes with its
/// deliveries, attempts and ingest key; an old unfinished one stays (and
/// the pass steps past it); recent ones stay.
async fn retention_deletes_old_finished_broadcasts_with_their_rows_and_keeps_the_rest(
    harness: Harness,
) {
    let store = harness.open().await;
    let mut rng = rand::rng();
    let old_done = herald::domain::new_broadcast_id(1_000, &mut rng);
    let old_open = herald::domain::new_broadcast_id(1_500, &mut rng);
    let old_done_too = herald::domain::new_broadcast_id(1_800, &mut rng);
    let recent_done = herald::domain::new_broadcast_id(50_000, &mut rng);
    let mut keyed = new_broadcast(&old_done, None, &["a"], 1_000);
    keyed.ingest_key = Some(herald::store::IngestKey {
        caller: "alertmanager".into(),
        key: "k1".into(),
        body_sha256: "0".repeat(64),
        expires_before_ms: i64::MAX,
    });
    store.insert_broadcast(keyed).await.unwrap();
    for (id, at) in [(&old_open, 1_500), (&old_done_too, 1_800)] {
        store
            .insert_broadcast(new_broadcast(id, None, &["a"], at))
            .await
            .unwrap();
    }
    // Every old one is attempted: two confirmed, one left retrying.
    let claim = store.claim_due("a", 10, 2_000).await.unwrap();
    assert_eq!(claim.deliveries.len(), 3);
    for delivery in &claim.deliveries {
        let update = if delivery.broadcast_id == old_open {
            outcome(delivery, DeliveryState::Retrying, "retryable", 2_100)
        } else {
            outcome(delivery, DeliveryState::Confirmed, "success", 2_100)
        };
        store.update_delivery(update).await.unwrap();
    }
    store
        .insert_broadcast(new_broadcast(&recent_done, None, &["a"], 50_000))
        .await
        .unwrap();
    let claim = store.claim_due("a", 10, 50_000).await.unwrap();
    for delivery in &claim.deliveries {
        let update = if delivery.broadcast_id == old_open {
            outcome(delivery, DeliveryState::Retrying, "retryable", 50_100)
        } else {
            outcome(delivery, DeliveryState::Confirmed, "success", 50_100)
        };
        store.update_delivery(update).await.unwrap();
    }
    if harness.pg.is_none() {
        assert_eq!(store.stored_broadcasts().await.unwrap(), 4);
    }
    assert_eq!(harness.count_rows("attempts").await, 5);

    // Retention at 10 s, one broadcast per batch.
    let first = store
        .delete_finished_broadcasts(10_000, None, 1)
        .await
        .unwrap();
    assert_eq!((first.deleted, first.examined), (1, 1));
    assert_eq!(first.last_id.as_deref(), Some(old_done.as_str()));
    assert!(store.broadcast(&old_done).await.unwrap().is_none());
    assert!(store
        .ingest_record("alertmanager", "k1", 0)
        .await
        .unwrap()
        .is_none());
    let second = store
        .delete_finished_broadcasts(10_000, first.last_id, 1)
        .await
        .unwrap();
    assert_eq!(second.deleted, 1, "the unfinished one is stepped over");
    assert_eq!(second.last_id.as_deref(), Some(old_done_too.as_str()));
    let last = store
        .delete_finished_broadcasts(10_000, second.last_id, 1)
        .await
        .unwrap();
    assert_eq!((last.deleted, last.examined), (0, 0), "the pass is over");

    // However old, the unfinished one stays, and so does the recent one.
    let again = store
        .delete_finished_broadcasts(1_000_000, None, 256)
        .await
        .unwrap();
    assert_eq!(
        again.deleted, 1,
        "only the recent finished one is past 1,000 s"
    );
    let open = store.broadcast(&old_open).await.unwrap().unwrap();
    assert_eq!(open.deliveries[0].progress.state, DeliveryState::Retrying);
    assert_eq!(open.deliveries[0].attempts.len(), 2);
    assert_eq!(harness.count_rows("broadcasts").await, 1);
    assert_eq!(harness.count_rows("deliveries").await, 1);
    assert_eq!(harness.count_rows("attempts").await, 2);
    assert_eq!(harness.count_rows("ingest_keys").await, 0);
    if harness.pg.is_none() {
        assert_eq!(store.stored_broadcasts().await.unwrap(), 1);
    }
}

/// The store takes plain values (destinations with their isolation, the
/// lease length, the clock's reading) and imports nothing of the
/// dispatcher or the configuration file, so that neither can pull the store
/// into an import cycle.
#[test]
fn the_store_imports_nothing_of_the_dispatcher_or_the_config() {
    fn rust_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() >= 20,
        "expected the store's files under {}, found {files:?}",
        root.display()
    );
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.contains("crate::dispatch") || line.contains("crate::config") {
                offenders.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the store imports the dispatcher or the config:\n{}",
        offenders.join("\n")
    );
}

async fn a_broadcasts_details_and_routes_are_stored_and_claimed_with_it(harness: Harness) {
    let store = harness.open().await;
    let details = herald::domain::MessageDetails {
        labels: [("team".to_owned(), "payments".to_owned())].into(),
        links: vec![herald::domain::Link {
            text: "Runbook".into(),
            url: "https://wiki.example/run".into(),
        }],
        fields: vec![herald::domain::Field {
            name: "Region".into(),
            value: "eu-west-1".into(),
        }],
        source: Some("deploy-bot".into()),
        summary: Some("short".into()),
    };
    let mut new = new_broadcast("B1", None, &["a"], 1_000);
    new.message = new.message.with_details(details.clone()).unwrap();
    new.routes = vec!["payments".into(), "default".into()];
    store.insert_broadcast(new).await.unwrap();
    store
        .insert_broadcast(new_broadcast("B2", None, &["a"], 1_000))
        .await
        .unwrap();
    let view = store.broadcast("B1").await.unwrap().unwrap();
    assert_eq!(view.message.details(), &details);
    assert_eq!(view.routes, ["payments", "default"]);
    let plain = store.broadcast("B2").await.unwrap().unwrap();
    assert!(plain.message.details().is_empty() && plain.routes.is_empty());
    let claim = store.claim_due("a", 10, 2_000).await.unwrap();
    assert_eq!(claim.deliveries.len(), 2);
    let claimed = |id: &str| {
        claim
            .deliveries
            .iter()
            .find(|d| d.broadcast_id == id)
            .unwrap()
            .message
            .details()
            .clone()
    };
    assert_eq!(
        claimed("B1"),
        details,
        "a claimed delivery carries the details"
    );
    assert!(claimed("B2").is_empty());
}
