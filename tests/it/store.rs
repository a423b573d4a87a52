//! The SQLite store on a real file: recovery after a crash, thread order,
//! and many concurrent writers committed together.

use herald::domain::{DeliveryState, Message, RetryPolicy, Severity};
use herald::store::{
    AttemptKind, AttemptRecord, DeliveryUpdate, NewBroadcast, NewDelivery, OperatorAction,
    SqliteStore, Store, UpdateResult,
};

use crate::support::temp_dir;

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
        deliveries: destinations
            .iter()
            .map(|d| NewDelivery {
                destination: (*d).to_owned(),
                policy: RetryPolicy::default(),
                lease_now: false,
            })
            .collect(),
        ingest_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_sending_at_a_crash_is_verified_not_resent_blindly() {
    let dir = temp_dir();
    let path = dir.path().join("herald.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .insert_broadcast(new_broadcast("B1", None, &["a", "b"], 1_000))
            .await
            .unwrap();
        let claim = store.claim_due("a", 10, 2_000).await.unwrap();
        assert_eq!(claim.deliveries.len(), 1);
        assert_eq!(claim.deliveries[0].progress.state, DeliveryState::Sending);
        // The process dies here: the store is dropped with the lease held.
    }
    let store = SqliteStore::open(&path).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_update_waits_for_the_message_it_updates() {
    let dir = temp_dir();
    let store = SqliteStore::open(dir.path().join("herald.db")).unwrap();
    store
        .insert_broadcast(new_broadcast("B1", Some("INC-7"), &["a"], 1_000))
        .await
        .unwrap();
    let inserted = store
        .insert_broadcast(new_broadcast("B2", Some("INC-7"), &["a"], 1_001))
        .await
        .unwrap();
    assert_eq!(inserted[0].progress.state, DeliveryState::Waiting);

    let claim = store.claim_due("a", 10, 5_000).await.unwrap();
    assert_eq!(
        claim.deliveries.len(),
        1,
        "only the first of the thread is due"
    );
    let first = &claim.deliveries[0];
    assert_eq!(first.broadcast_id, "B1");

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
            remote_ref: None,
        })
        .await
        .unwrap();
    assert_eq!(
        result,
        UpdateResult::Applied {
            promoted_next_in_thread: true
        }
    );
    let claim = store.claim_due("a", 10, 5_020).await.unwrap();
    assert_eq!(claim.deliveries.len(), 1);
    assert_eq!(claim.deliveries[0].broadcast_id, "B2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_are_all_committed() {
    let dir = temp_dir();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path).unwrap();
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
    assert_eq!(crate::support::count_rows(&path, "broadcasts"), 300);
    assert_eq!(crate::support::count_rows(&path, "deliveries"), 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_from_an_older_lease_is_refused() {
    let dir = temp_dir();
    let path = dir.path().join("herald.db");
    let stale = {
        let store = SqliteStore::open(&path).unwrap();
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
    let store = SqliteStore::open(&path).unwrap();
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
async fn a_second_process_cannot_open_the_same_database() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_fails_alone_in_its_batch() {
    let dir = temp_dir();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path).unwrap();
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
    assert_eq!(crate::support::count_rows(&path, "broadcasts"), 100);
    assert_eq!(crate::support::count_rows(&path, "deliveries"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p1_is_claimed_before_an_older_backlog() {
    let dir = temp_dir();
    let store = SqliteStore::open(dir.path().join("herald.db")).unwrap();
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
    assert_eq!(claim.next_due_at_ms, Some(2), "B2 is the earliest left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_an_attempt_in_flight_to_finish_and_keeps_thread_order() {
    let dir = temp_dir();
    let store = SqliteStore::open(dir.path().join("herald.db")).unwrap();
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
