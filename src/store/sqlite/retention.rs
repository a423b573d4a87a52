//! Retention: deleting finished broadcasts older than the cutoff, in
//! batches along the primary key.

use super::*;

/// Retention's choice: old broadcasts (by id, then by accept time) with no
/// unfinished delivery, oldest first. `?1` the id to start after, `?2` the
/// first id at the cutoff, `?3` the cutoff, `?4` how many.
pub(super) const RETENTION_CANDIDATES_SQL: &str = concat!(
    "SELECT b.id FROM broadcasts b
     WHERE b.id > ?1 AND b.id < ?2 AND b.created_at_ms < ?3
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND ",
    unfinished_sql!("d."),
    ")
     ORDER BY b.id LIMIT ?4"
);

/// One retention batch (see `Store::delete_finished_broadcasts`); the
/// writer runs it alone, with foreign-key checks off, so it deletes
/// children first.
pub(super) fn delete_finished(
    conn: &Connection,
    before_ms: i64,
    after_id: Option<&str>,
    limit: usize,
) -> Result<RetentionBatch, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(RETENTION_CANDIDATES_SQL)?
        .query_map(
            params![
                after_id.unwrap_or(""),
                first_broadcast_id_at(before_ms),
                before_ms,
                limit as i64
            ],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut deliveries_of =
        conn.prepare_cached("SELECT id FROM deliveries WHERE broadcast_id = ?1")?;
    let mut delete_attempts = conn.prepare_cached(concat!(
        "DELETE FROM attempts WHERE ",
        attempts_of_sql!("", "?1")
    ))?;
    let mut delete_deliveries =
        conn.prepare_cached("DELETE FROM deliveries WHERE broadcast_id = ?1")?;
    let mut delete_keys = conn.prepare_cached("DELETE FROM ingest_keys WHERE broadcast_id = ?1")?;
    let mut delete_objective =
        conn.prepare_cached("DELETE FROM objectives WHERE broadcast_id = ?1")?;
    let mut delete_broadcast = conn.prepare_cached("DELETE FROM broadcasts WHERE id = ?1")?;
    let mut deleted = 0;
    for id in &ids {
        let deliveries: Vec<i64> = deliveries_of
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for delivery in deliveries {
            delete_attempts.execute([delivery])?;
        }
        delete_deliveries.execute([id])?;
        delete_keys.execute([id])?;
        delete_objective.execute([id])?;
        deleted += delete_broadcast.execute([id])? as u64;
    }
    Ok(RetentionBatch {
        deleted,
        examined: ids.len(),
        last_id: ids.last().cloned(),
    })
}
