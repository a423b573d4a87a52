//! What the bench reads from a run's database (SQLite or a PostgreSQL
//! schema): when every delivery is final, each delivery's times, and the
//! database's size.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::{NodeAttempts, SizeSample};
use super::{PHASE_TIMEOUT_SECS, POLL_COST_RATIO, POLL_MS, STALL_SECS};

/// A read connection to a run's database: its SQLite file, or its
/// PostgreSQL schema (the URL carries the search path).
pub(super) enum BenchDb {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl BenchDb {
    pub(super) async fn open(database: &Path) -> anyhow::Result<BenchDb> {
        if !crate::server::is_postgres_url(database) {
            return Ok(BenchDb::Sqlite(open_db(database)?));
        }
        let url = database.display().to_string();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        // The polls count unfinished deliveries through their partial index;
        // on a table too young for statistics the planner would read all of
        // it, taking CPU from the server being measured.
        client
            .batch_execute("SET enable_seqscan = off; SET jit = off")
            .await?;
        Ok(BenchDb::Postgres(client))
    }

    /// Deliveries not yet final. Polled while a run drains, so it reads only
    /// the store's index of unfinished deliveries: a count over the whole
    /// table every poll took a noticeable share of the machine from the
    /// server being measured.
    pub(super) async fn unfinished(&self) -> anyhow::Result<u64> {
        // Each store's index condition, written as that index is.
        let sql = match self {
            BenchDb::Sqlite(_) => crate::store::UNFINISHED_COUNT_SQL,
            BenchDb::Postgres(_) => {
                "SELECT count(*) FROM deliveries
                   WHERE state NOT IN ('confirmed','failed','dead','cancelled')"
            }
        };
        self.count(sql).await
    }

    /// Deliveries in all.
    pub(super) async fn total(&self) -> anyhow::Result<u64> {
        self.count("SELECT count(*) FROM deliveries").await
    }

    pub(super) async fn count(&self, sql: &str) -> anyhow::Result<u64> {
        match self {
            BenchDb::Sqlite(conn) => Ok(conn.query_row(sql, [], |r| r.get(0))?),
            BenchDb::Postgres(client) => {
                Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0) as u64)
            }
        }
    }
}

pub(super) async fn bench_postgres(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| "cannot connect to the bench's PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

/// Makes a fresh schema for one run on the bench's PostgreSQL; returns the
/// URL that uses it and the schema's name.
pub(super) async fn fresh_postgres_schema(
    url: &str,
    run: &str,
) -> anyhow::Result<(PathBuf, String)> {
    let schema = format!("herald_bench_{run}_{:08x}", rand::random::<u32>());
    bench_postgres(url)
        .await?
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let run_url = format!("{url}{separator}options=-csearch_path%3D{schema}");
    Ok((PathBuf::from(run_url), schema))
}

/// The size of a SQLite database's WAL file; None on PostgreSQL.
pub(super) fn wal_size_mb(database: &Path) -> Option<f64> {
    if crate::server::is_postgres_url(database) {
        return None;
    }
    let wal = PathBuf::from(format!("{}-wal", database.display()));
    let bytes = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    Some(bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn open_db(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Waits until `expected` deliveries are stored and every one is final;
/// `logs`: the servers' logs, whose ends explain a stall.
pub(super) async fn wait_all_final(
    database: &Path,
    expected: usize,
    logs: &[PathBuf],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(PHASE_TIMEOUT_SECS);
    let db = BenchDb::open(database).await?;
    let mut last_progress = (u64::MAX, Instant::now());
    loop {
        let polled = Instant::now();
        let left = db.unfinished().await?;
        if left == 0 && db.total().await? as usize >= expected {
            return Ok(());
        }
        let pause = (polled.elapsed() * POLL_COST_RATIO).max(Duration::from_millis(POLL_MS));
        if left != last_progress.0 {
            last_progress = (left, Instant::now());
        }
        if Instant::now() > deadline || last_progress.1.elapsed() > Duration::from_secs(STALL_SECS)
        {
            let tails: String = logs
                .iter()
                .map(|log| {
                    let log_text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = log_text.lines().rev().take(5).collect();
                    format!("\n{} ends with:\n{}", log.display(), tail.join("\n"))
                })
                .collect();
            bail!("{left} deliveries unfinished and no progress for {STALL_SECS} s{tails}");
        }
        tokio::time::sleep(pause).await;
    }
}

pub(super) struct DeliveryTimes {
    pub(super) destination: String,
    pub(super) state: String,
    pub(super) accepted_ms: i64,
    pub(super) first_attempt_ms: Option<i64>,
    pub(super) finished_ms: i64,
}

pub(super) async fn delivery_times(
    database: &Path,
    since_ms: i64,
) -> anyhow::Result<Vec<DeliveryTimes>> {
    // PostgreSQL reads a delivery's attempts through attempts_delivery; the
    // SQLite store has the same query by rowid range (its migration 8).
    const POSTGRES_SQL: &str = "SELECT d.destination, d.state, b.created_at_ms,
                (SELECT min(a.started_at_ms) FROM attempts a WHERE a.delivery_id = d.id),
                d.updated_at_ms
         FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
         WHERE b.created_at_ms >= $1";
    let conn = match BenchDb::open(database).await? {
        BenchDb::Sqlite(conn) => conn,
        BenchDb::Postgres(client) => {
            let rows = client.query(POSTGRES_SQL, &[&since_ms]).await?;
            return Ok(rows
                .iter()
                .map(|r| DeliveryTimes {
                    destination: r.get(0),
                    state: r.get(1),
                    accepted_ms: r.get(2),
                    first_attempt_ms: r.get(3),
                    finished_ms: r.get(4),
                })
                .collect());
        }
    };
    let mut select = conn.prepare(crate::store::DELIVERY_TIMES_SQL)?;
    let rows = select
        .query_map([since_ms], |r| {
            Ok(DeliveryTimes {
                destination: r.get(0)?,
                state: r.get(1)?,
                accepted_ms: r.get(2)?,
                first_attempt_ms: r.get(3)?,
                finished_ms: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The attempts each node made, from the run schema's `attempts` rows (the
/// only rows that name a node); empty on SQLite, where one node runs.
pub(super) async fn attempts_by_node(database: &Path) -> anyhow::Result<Vec<NodeAttempts>> {
    if !crate::server::is_postgres_url(database) {
        return Ok(Vec::new());
    }
    // Not `BenchDb`, which turns sequential scans off for its polls: this
    // one count reads the whole table once, after the load.
    let client = bench_postgres(&database.display().to_string()).await?;
    let rows = client
        .query(
            "SELECT coalesce(node, ''), count(*), count(*) FILTER (WHERE outcome = 'success')
             FROM attempts GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .context("cannot count the attempts per node")?;
    Ok(rows
        .iter()
        .map(|row| NodeAttempts {
            node: row.get(0),
            attempts: row.get::<_, i64>(1) as u64,
            confirmed: row.get::<_, i64>(2) as u64,
        })
        .collect())
}

/// Measures a run's database: SQLite's files, or the run schema's tables.
pub(super) enum DatabaseSize {
    Sqlite(PathBuf),
    Postgres {
        client: tokio_postgres::Client,
        schema: String,
        /// The server runs without autovacuum: the bench vacuums the run's
        /// tables before each sample, as autovacuum would, and says so.
        vacuum: bool,
    },
}

/// herald's tables, for the soak's stand-in for autovacuum.
pub(super) const TABLES: [&str; 5] = [
    "broadcasts",
    "deliveries",
    "attempts",
    "ingest_keys",
    "destination_state",
];

impl DatabaseSize {
    pub(super) async fn open(
        database: &Path,
        schema: Option<&str>,
    ) -> anyhow::Result<DatabaseSize> {
        match schema {
            Some(schema) if crate::server::is_postgres_url(database) => {
                let client = bench_postgres(&database.display().to_string()).await?;
                let autovacuum: String = client.query_one("SHOW autovacuum", &[]).await?.get(0);
                Ok(DatabaseSize::Postgres {
                    client,
                    schema: schema.to_owned(),
                    vacuum: autovacuum != "on",
                })
            }
            _ => Ok(DatabaseSize::Sqlite(database.to_path_buf())),
        }
    }

    pub(super) async fn sample(
        &self,
        http: &reqwest::Client,
        server: SocketAddr,
        at_secs: u64,
    ) -> anyhow::Result<SizeSample> {
        let bytes = match self {
            DatabaseSize::Sqlite(path) => ["", "-wal"]
                .iter()
                .map(|suffix| {
                    std::fs::metadata(format!("{}{suffix}", path.display()))
                        .map(|m| m.len())
                        .unwrap_or(0)
                })
                .sum::<u64>(),
            DatabaseSize::Postgres {
                client,
                schema,
                vacuum,
            } => {
                if *vacuum {
                    for table in TABLES {
                        client
                            .batch_execute(&format!("VACUUM {schema}.{table}"))
                            .await?;
                    }
                }
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND c.relkind = 'r'",
                        &[&schema],
                    )
                    .await?;
                row.get::<_, i64>(0).max(0) as u64
            }
        };
        let metrics = http
            .get(format!("http://{server}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let broadcasts_stored = metrics
            .lines()
            .find_map(|l| l.strip_prefix("herald_broadcasts_stored "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        Ok(SizeSample {
            at_secs,
            database_mb: bytes as f64 / (1024.0 * 1024.0),
            broadcasts_stored,
        })
    }
}
