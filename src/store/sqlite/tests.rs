//! Tests of the SQLite store's own schema: migrations and query plans.

use super::*;

#[tokio::test]
async fn a_database_from_an_older_schema_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        // A delivery that already failed once, with its attempt.
        conn.execute_batch(
            "INSERT INTO broadcasts VALUES ('B0', 'old', '', 'P2', NULL, 0);
             INSERT INTO deliveries (id, broadcast_id, destination, idempotency_key, state,
                 attempts_made, attempts_max, due_at_ms, created_at_ms, updated_at_ms, last_error)
             VALUES (7, 'B0', 'a', 'B0-a', 'retrying', 1, 8, 0, 0, 0, 'HTTP 503');
             INSERT INTO broadcasts VALUES ('B9', 'done', '', 'P2', NULL, 0);
             INSERT INTO deliveries (id, broadcast_id, destination, idempotency_key, state,
                 attempts_made, attempts_max, due_at_ms, created_at_ms, updated_at_ms)
             VALUES (9, 'B9', 'a', 'B9-a', 'confirmed', 1, 8, NULL, 0, 0);
             INSERT INTO attempts (delivery_id, number, kind, started_at_ms, finished_at_ms, outcome, http_status)
             VALUES (7, 1, 'send', 0, 0, 'retryable', 503);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let old = store.broadcast("B0").await.unwrap().expect("kept");
    assert_eq!(old.deliveries.len(), 1);
    let delivery = &old.deliveries[0];
    assert_eq!(delivery.idempotency_key, "B0-a");
    assert_eq!(delivery.progress.state, DeliveryState::Retrying);
    assert_eq!(delivery.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(delivery.attempts.len(), 1);
    assert_eq!(delivery.attempts[0].http_status, Some(503));
    let backlog = store.backlog().await.unwrap();
    assert_eq!(
        backlog[0].unfinished, 1,
        "the confirmed delivery is finished"
    );
    let retried = store.claim_due("a", 1, 0).await.unwrap();
    assert_eq!(retried.deliveries[0].delivery_id, 7);
    assert_eq!(retried.deliveries[0].idempotency_key, "B0-a");
    assert_eq!(retried.deliveries[0].message.severity(), Severity::P2);
    let message = Message::new("t", "", Severity::P1, None).unwrap();
    let new = NewBroadcast {
        id: "B1".into(),
        message,
        created_at_ms: 0,
        routes: Vec::new(),
        deliveries: vec![NewDelivery {
            destination: "a".into(),
            policy: RetryPolicy::default(),
            lease_now: false,
        }],
        ingest_key: None,
        objective: None,
    };
    store.insert_broadcast(new).await.unwrap();
    let claim = store.claim_due("a", 1, 0).await.unwrap();
    assert_eq!(claim.deliveries[0].lease_epoch, 1);
}

/// A connection, configured as the store's, to a freshly migrated
/// database that lives as long as the directory returned with it.
fn migrated_db() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path().join("plan.db")).unwrap());
    let conn = Connection::open(dir.path().join("plan.db")).unwrap();
    configure(&conn).unwrap();
    (dir, conn)
}

/// The steps of `sql`'s query plan on a freshly migrated database.
fn query_plan(sql: &str, params: impl rusqlite::Params) -> Vec<String> {
    let (_dir, conn) = migrated_db();
    let plan = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    plan
}

#[test]
fn due_work_is_claimed_through_its_partial_index() {
    let plan = query_plan(CLAIM_SQL, params!["d", 1, 0, 10]);
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX deliveries_due")),
        "{plan:?}"
    );
}

#[test]
fn retention_reads_old_broadcasts_along_the_primary_key() {
    // A range of the primary key (ids sort by time), and one lookup of
    // each candidate's deliveries: never a scan of either table.
    let plan = query_plan(RETENTION_CANDIDATES_SQL, params!["", "01", 1_000, 256]);
    assert!(
        plan.iter().any(|step| step
            .contains("SEARCH b USING INDEX sqlite_autoindex_broadcasts_1 (id>? AND id<?)")),
        "{plan:?}"
    );
    assert!(
        plan.iter().any(|step| step
            .contains("SEARCH d USING INDEX sqlite_autoindex_deliveries_1 (broadcast_id=?)")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.starts_with("SCAN")),
        "{plan:?}"
    );
    let plan = query_plan("DELETE FROM ingest_keys WHERE broadcast_id = ?1", ["x"]);
    assert!(
        plan.iter()
            .any(|step| step.contains("ingest_keys_broadcast")),
        "{plan:?}"
    );
}

#[test]
fn unfinished_work_is_read_through_its_partial_index() {
    for sql in [BACKLOG_SQL, UNFINISHED_COUNT_SQL] {
        let plan = query_plan(sql, []);
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX deliveries_unfinished")),
            "{sql}: {plan:?}"
        );
    }
}

/// Whether executing `sql` writes to the index `index`: the program
/// opens a write cursor on its root page.
fn writes_index(sql: &str, index: &str) -> bool {
    let (_dir, conn) = migrated_db();
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE type = 'index' AND name = ?1",
            [index],
            |r| r.get(0),
        )
        .unwrap();
    let mut program = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
    let unbound = vec![rusqlite::types::Value::Null; program.parameter_count()];
    let steps = program
        .query_map(rusqlite::params_from_iter(unbound), |r| {
            Ok((r.get::<_, String>(1)?, r.get::<_, i64>(3)?))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    steps
        .iter()
        .any(|(op, page)| op == "OpenWrite" && *page == root)
}

#[test]
fn only_the_step_to_a_final_state_writes_the_index_of_unfinished_work() {
    // SQLite rewrites an index entry whenever an UPDATE names a column
    // of its condition; claims and retries must not (migration 8).
    assert!(!writes_index(LEASE_SQL, "deliveries_unfinished"));
    assert!(!writes_index(OUTCOME_SQL, "deliveries_unfinished"));
    assert!(writes_index(FINAL_OUTCOME_SQL, "deliveries_unfinished"));
    // The lease takes the delivery out of the due index.
    assert!(writes_index(LEASE_SQL, "deliveries_due"));
}

#[test]
fn a_database_from_a_newer_herald_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let error = SqliteStore::open(&path).err().unwrap();
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error}"
    );
}
