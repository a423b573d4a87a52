//! `herald bench`: measures herald the way a user would. A mock destination
//! server runs in its own process, `herald serve` in another with its real
//! SQLite store (fsync on every commit), and this process submits the load
//! through the real HTTP API. In the same run, a baseline sends the same
//! number of requests straight to the same mock with the same client library
//! and concurrency and no store, so herald's rate can be read as a fraction
//! of what the machine allows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::clock::now_ms;
use crate::connector::http_client_builder;
use crate::mock::{Faults, PathFaults};

/// The longest any phase may take before the bench gives up.
const PHASE_TIMEOUT_SECS: u64 = 900;
/// The rate-limited destination of `faulty` takes this many requests a
/// second and answers 429 with Retry-After beyond that.
const RATE_LIMITED_PER_SEC: u32 = 1_000;
/// A run with no delivery finishing for this long has stalled.
const STALL_SECS: u64 = 30;
/// How often completion is checked, at most.
const POLL_MS: u64 = 100;
/// Between two completion checks the bench waits at least this many times
/// as long as the last check took. Counting a large backlog is not free: on
/// PostgreSQL a count of 60,000 unfinished deliveries took 30 to 40 ms, and
/// polled every 100 ms it took about a third of a core from the server
/// being measured. Delivery times come from the database, so checking less
/// often changes no figure, only how soon the bench notices the end.
const POLL_COST_RATIO: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N broadcasts x M destinations as fast as possible.
    Burst,
    /// A fixed rate at 50% of the burst's peak, for latency.
    Steady,
    /// One destination fails half the time, one is rate limited.
    Faulty,
    /// A P1 sent while a large backlog is pending.
    Backlog,
    /// A fixed rate for `soak_secs` with a short retention: the database's
    /// size over time (it must level off).
    Soak,
}

/// How often the soak measures the database.
const SOAK_SAMPLE_EVERY_SECS: u64 = 5;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub scenarios: Vec<Scenario>,
    pub broadcasts: usize,
    pub destinations: usize,
    /// Attempts in flight per destination.
    pub concurrency: u32,
    /// Concurrent API clients submitting broadcasts.
    pub submitters: usize,
    /// Seconds of load in `steady`.
    pub steady_secs: u64,
    /// Broadcasts per second in `steady`; half the burst's peak when absent.
    pub steady_rate: Option<f64>,
    /// Deliveries pending in `backlog`.
    pub backlog_deliveries: usize,
    /// Seconds of load in `soak`.
    pub soak_secs: u64,
    /// Broadcasts per second in `soak`.
    pub soak_rate: f64,
    /// The server's `broadcast_retention_secs` in `soak`.
    pub soak_retention_secs: u64,
    /// Where the database and logs go; a temporary folder when absent.
    pub workdir: Option<PathBuf>,
    /// Run herald on this PostgreSQL (a fresh schema per run, dropped after
    /// it unless `workdir` is given, like the SQLite files) instead of a
    /// SQLite file.
    pub postgres: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
            samples: values.len(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub broadcasts: usize,
    pub destinations: usize,
    pub deliveries: usize,
    /// Broadcasts answered 202 per second while submitting.
    pub accepted_per_sec: f64,
    /// Deliveries confirmed per second, first submit to last confirmation.
    pub confirmed_per_sec: f64,
    /// The no-store baseline's requests per second, measured in this run:
    /// the mean of `baseline_runs_per_sec`.
    pub baseline_per_sec: Option<f64>,
    /// The baseline measured just before and just after herald's run (the
    /// shared machine's speed drifts; one measurement alone moved the
    /// fraction by a third from one run to the next).
    pub baseline_runs_per_sec: Vec<f64>,
    pub fraction_of_baseline: Option<f64>,
    /// Accept to first attempt, milliseconds.
    pub first_attempt_ms: Percentiles,
    /// Accept to confirmed, milliseconds.
    pub confirmed_ms: Percentiles,
    pub peak_rss_mb: f64,
    /// The SQLite write-ahead log's size when the run ended (it must stay
    /// bounded under sustained writes).
    pub wal_mb: Option<f64>,
    pub cpu_secs_per_1000_deliveries: f64,
    pub final_states: BTreeMap<String, u64>,
    /// Confirmed per second on the destinations without faults (faulty).
    pub healthy_confirmed_per_sec: Option<f64>,
    /// `healthy_confirmed_per_sec` over the same destinations' rate in burst.
    pub healthy_vs_burst: Option<f64>,
    /// Deliveries pending when the P1s were sent (backlog).
    pub pending_at_p1: Option<u64>,
    /// The database's size every few seconds of a soak, and at its end.
    pub database_size: Vec<SizeSample>,
    /// PostgreSQL ran without autovacuum, so the bench vacuumed the run's
    /// tables (plain VACUUM) before each size sample.
    pub vacuumed_by_bench: bool,
}

/// The database's size at one moment of a soak.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SizeSample {
    /// Seconds since the load started.
    pub at_secs: u64,
    /// SQLite: the file and its WAL; PostgreSQL: `pg_total_relation_size`
    /// of the run schema's tables (with indexes and TOAST).
    pub database_mb: f64,
    /// `herald_broadcasts_stored` then.
    pub broadcasts_stored: u64,
}

struct Process {
    child: Child,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn herald_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the herald executable")
}

fn spawn_mock(log: &Path) -> anyhow::Result<(Process, SocketAddr)> {
    let mut child = Command::new(herald_exe()?)
        .args(["mock", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("cannot start herald mock")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let process = Process { child };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("herald mock printed {line:?}, not its address"))?;
    Ok((process, addr))
}

fn spawn_server(
    config: &Path,
    database: &Path,
    listen: SocketAddr,
    log: &Path,
) -> anyhow::Result<Process> {
    let child = Command::new(herald_exe()?)
        .args(["serve", "--listen", &listen.to_string(), "--config"])
        .arg(config)
        .arg("--database")
        .arg(database)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        )
        .spawn()
        .context("cannot start herald serve")?;
    Ok(Process { child })
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_healthy(http: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = http.get(format!("http://{addr}/healthz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("herald did not become healthy at {addr}")
}

/// Peak resident memory (MB) and CPU seconds used so far by a process.
fn process_usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat; 11 and 12 after ")".
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    const TICKS_PER_SEC: f64 = 100.0; // USER_HZ on Linux
    Ok((peak_kb / 1024.0, ticks / TICKS_PER_SEC))
}

async fn set_faults(
    http: &reqwest::Client,
    mock: SocketAddr,
    path: &str,
    faults: Faults,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&PathFaults {
        path: path.to_owned(),
        faults,
    })?;
    let response = http
        .put(format!("http://{mock}/_mock/faults"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "the mock refused faults for {path}: HTTP {}",
            response.status()
        );
    }
    Ok(())
}

fn payload(i: usize, destinations: &[String], severity: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "title": format!("INC-{i}: bench load"),
        "body": "Synthetic load from herald bench. Checkout latency above threshold on 3 of 8 nodes.",
        "severity": severity,
        "destinations": destinations,
    }))
    .expect("payload serialises")
}

/// One batch of broadcasts to submit through the API.
struct Load<'a> {
    count: usize,
    /// Titles are numbered from here.
    first_index: usize,
    destinations: &'a [String],
    severity: &'a str,
    /// API calls in flight.
    submitters: usize,
    /// Space submissions evenly at this rate; as fast as possible if absent.
    per_sec: Option<f64>,
}

/// Submits a load and returns the seconds it took.
async fn submit(http: &reqwest::Client, server: SocketAddr, load: Load<'_>) -> anyhow::Result<f64> {
    let Load {
        count,
        first_index,
        destinations,
        severity,
        submitters,
        per_sec,
    } = load;
    let url = Arc::new(format!("http://{server}/v1/broadcasts"));
    let slots = Arc::new(tokio::sync::Semaphore::new(submitters.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        if let Some(rate) = per_sec {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let http = http.clone();
        let url = url.clone();
        let body = payload(first_index + i, destinations, severity);
        tasks.spawn(async move {
            let _permit = permit;
            let response = http
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let _ = response.bytes().await?;
            anyhow::ensure!(
                status.as_u16() == 202,
                "herald answered HTTP {status} to a valid broadcast"
            );
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The no-store baseline: `requests` POSTs straight to the mock, spread over
/// `destinations` paths, `in_flight` at once.
async fn baseline(
    http: &reqwest::Client,
    mock: SocketAddr,
    requests: usize,
    destinations: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let body = bytes_payload();
    for i in 0..requests {
        let permit = slots.clone().acquire_owned().await?;
        let http = http.clone();
        let url = format!("http://{mock}/baseline/d{}", i % destinations);
        let body = body.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("baseline-{i}"))
                .body(body)
                .send()
                .await?;
            let ok = response.status().is_success();
            let _ = response.bytes().await?;
            anyhow::ensure!(ok, "the mock refused a baseline request");
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(requests as f64 / started.elapsed().as_secs_f64())
}

fn bytes_payload() -> axum::body::Bytes {
    // The same shape and size as herald's webhook payload.
    axum::body::Bytes::from_static(
        br#"{"type":"incident.message","timestamp":"2026-11-27T23:31:02.120Z","data":{"broadcast_id":"01M8FP314VJG503MQ8TWFEJMFD","destination":"d0","title":"INC-1: bench load","body":"Synthetic load from herald bench. Checkout latency above threshold on 3 of 8 nodes.","severity":"P3","thread":null,"resolved":false}}"#,
    )
}

/// A read connection to a run's database: its SQLite file, or its
/// PostgreSQL schema (the URL carries the search path).
enum BenchDb {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl BenchDb {
    async fn open(database: &Path) -> anyhow::Result<BenchDb> {
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
    async fn unfinished(&self) -> anyhow::Result<u64> {
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
    async fn total(&self) -> anyhow::Result<u64> {
        self.count("SELECT count(*) FROM deliveries").await
    }

    async fn count(&self, sql: &str) -> anyhow::Result<u64> {
        match self {
            BenchDb::Sqlite(conn) => Ok(conn.query_row(sql, [], |r| r.get(0))?),
            BenchDb::Postgres(client) => {
                Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0) as u64)
            }
        }
    }
}

async fn bench_postgres(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| "cannot connect to the bench's PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

/// Makes a fresh schema for one run on the bench's PostgreSQL; returns the
/// URL that uses it and the schema's name.
async fn fresh_postgres_schema(url: &str, run: &str) -> anyhow::Result<(PathBuf, String)> {
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
fn wal_size_mb(database: &Path) -> Option<f64> {
    if crate::server::is_postgres_url(database) {
        return None;
    }
    let wal = PathBuf::from(format!("{}-wal", database.display()));
    let bytes = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    Some(bytes as f64 / (1024.0 * 1024.0))
}

fn open_db(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

async fn wait_all_final(database: &Path, expected: usize, log: &Path) -> anyhow::Result<()> {
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
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = log_text
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n");
            bail!("{left} deliveries unfinished and no progress for {STALL_SECS} s; the server log ends with:\n{tail}");
        }
        tokio::time::sleep(pause).await;
    }
}

struct DeliveryTimes {
    destination: String,
    state: String,
    accepted_ms: i64,
    first_attempt_ms: Option<i64>,
    finished_ms: i64,
}

async fn delivery_times(database: &Path, since_ms: i64) -> anyhow::Result<Vec<DeliveryTimes>> {
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

fn write_config(
    path: &Path,
    mock: SocketAddr,
    prefix: &str,
    names: &[String],
    concurrency: u32,
    retention_secs: Option<u64>,
) -> anyhow::Result<()> {
    let mut text = String::new();
    if let Some(secs) = retention_secs {
        text.push_str(&format!("[server]\nbroadcast_retention_secs = {secs}\n\n"));
    }
    // The breaker's cool-down matches the retry cap: at 50% failures ten in
    // a row happen about once per thousand attempts, and a default 30 s
    // cool-down would idle the faulty destination longer than the bench's
    // stall detection waits.
    for name in names {
        text.push_str(&format!(
            "[destinations.{name}]\nkind = \"webhook\"\nurl = \"http://{mock}/{prefix}/{name}\"\ntimeout_ms = 10000\nconcurrency = {concurrency}\nretry = {{ attempts_max = 8, base_ms = 200, cap_ms = 2000 }}\nbreaker = {{ cooldown_ms = 2000 }}\n\n"
        ));
    }
    std::fs::write(path, text)?;
    Ok(())
}

struct Bench {
    options: BenchOptions,
    workdir: PathBuf,
    http: reqwest::Client,
    mock: SocketAddr,
    _mock_process: Process,
    runs: usize,
    /// The current run's PostgreSQL schema, to drop when the run is done.
    schema: Option<String>,
    /// The next run's server deletes finished broadcasts after this long.
    retention_secs: Option<u64>,
}

impl Bench {
    /// Starts a fresh herald for one run: its own database, config and port.
    async fn start_herald(
        &mut self,
        names: &[String],
        concurrency: u32,
    ) -> anyhow::Result<(Process, SocketAddr, PathBuf, String)> {
        self.runs += 1;
        let run = format!("run{}", self.runs);
        let config = self.workdir.join(format!("{run}.toml"));
        let database = match &self.options.postgres {
            Some(url) => {
                let (database, schema) = fresh_postgres_schema(url, &run).await?;
                self.schema = Some(schema);
                database
            }
            None => self.workdir.join(format!("{run}.db")),
        };
        // Each run starts from an empty database, even in a kept workdir.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(self.workdir.join(format!("{run}.db{suffix}")));
        }
        write_config(
            &config,
            self.mock,
            &run,
            names,
            concurrency,
            self.retention_secs.take(),
        )?;
        let addr = free_addr()?;
        let server = spawn_server(
            &config,
            &database,
            addr,
            &self.workdir.join(format!("{run}.log")),
        )?;
        wait_healthy(&self.http, addr).await?;
        Ok((server, addr, database, run))
    }

    /// Drops the finished run's PostgreSQL schema, unless kept: a run leaves
    /// up to a million rows behind, and their vacuum would load the next run.
    async fn drop_run_schema(&mut self) -> anyhow::Result<()> {
        let (Some(url), Some(schema)) = (&self.options.postgres, self.schema.take()) else {
            return Ok(());
        };
        // A given workdir keeps each run's database, a schema as a file.
        if self.options.workdir.is_some() {
            return Ok(());
        }
        bench_postgres(url)
            .await?
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .with_context(|| format!("cannot drop the bench's schema {schema}"))?;
        Ok(())
    }

    fn names(&self, count: usize) -> Vec<String> {
        (0..count).map(|i| format!("d{i}")).collect()
    }

    /// Runs `count` broadcasts to every destination and reports.
    async fn load_run(
        &mut self,
        scenario: &str,
        count: usize,
        per_sec: Option<f64>,
        faults: &[(usize, Faults)],
    ) -> anyhow::Result<RunReport> {
        let names = self.names(self.options.destinations);
        let (server, addr, database, run) =
            self.start_herald(&names, self.options.concurrency).await?;
        for (index, f) in faults {
            set_faults(
                &self.http,
                self.mock,
                &format!("/{run}/{}", names[*index]),
                f.clone(),
            )
            .await?;
        }
        let started_ms = now_ms();
        let submit_secs = submit(
            &self.http,
            addr,
            Load {
                count,
                first_index: 0,
                destinations: &names,
                severity: "P3",
                submitters: self.options.submitters,
                per_sec,
            },
        )
        .await?;
        wait_all_final(
            &database,
            count * names.len(),
            &self.workdir.join(format!("{run}.log")),
        )
        .await?;
        let (peak_rss_mb, cpu_secs) = process_usage(server.pid())?;
        let wal_mb = wal_size_mb(&database);
        drop(server);
        let times = delivery_times(&database, started_ms).await?;
        self.drop_run_schema().await?;
        let mut report = summarise(scenario, count, names.len(), &times, started_ms);
        report.accepted_per_sec = count as f64 / submit_secs;
        report.peak_rss_mb = peak_rss_mb;
        report.wal_mb = wal_mb;
        report.cpu_secs_per_1000_deliveries = cpu_secs / (times.len().max(1) as f64 / 1000.0);
        let healthy: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| !faults.iter().any(|(f, _)| f == i))
            .map(|(_, n)| n.as_str())
            .collect();
        report.healthy_confirmed_per_sec =
            Some(confirmed_rate(&times, started_ms, |d| healthy.contains(&d)));
        Ok(report)
    }

    async fn baseline(&self, requests: usize) -> anyhow::Result<f64> {
        let in_flight = self.options.destinations * self.options.concurrency as usize;
        baseline(
            &self.http,
            self.mock,
            requests,
            self.options.destinations,
            in_flight,
        )
        .await
    }

    async fn backlog(&mut self) -> anyhow::Result<RunReport> {
        // Slow destinations (50 ms each answer, 4 in flight) keep the backlog
        // pending while the P1s are sent to one of them.
        let names = self.names(16);
        let (server, addr, database, run) = self.start_herald(&names, 4).await?;
        for name in &names {
            set_faults(
                &self.http,
                self.mock,
                &format!("/{run}/{name}"),
                Faults {
                    latency_ms: 50,
                    ..Faults::default()
                },
            )
            .await?;
        }
        let broadcasts = self.options.backlog_deliveries.div_ceil(names.len());
        let submit_secs = submit(
            &self.http,
            addr,
            Load {
                count: broadcasts,
                first_index: 0,
                destinations: &names,
                severity: "P4",
                submitters: self.options.submitters,
                per_sec: None,
            },
        )
        .await?;
        let pending = BenchDb::open(&database).await?.unfinished().await?;
        let p1_since_ms = now_ms();
        const P1_COUNT: usize = 20;
        for i in 0..P1_COUNT {
            submit(
                &self.http,
                addr,
                Load {
                    count: 1,
                    first_index: broadcasts + i,
                    destinations: &names[..1],
                    severity: "P1",
                    submitters: 1,
                    per_sec: None,
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (peak_rss_mb, cpu_secs) = process_usage(server.pid())?;
        let wal_mb = wal_size_mb(&database);
        drop(server);
        let p1_times = delivery_times(&database, p1_since_ms).await?;
        self.drop_run_schema().await?;
        let mut report = summarise("backlog", P1_COUNT, 1, &p1_times, p1_since_ms);
        report.accepted_per_sec = broadcasts as f64 / submit_secs;
        report.pending_at_p1 = Some(pending);
        report.peak_rss_mb = peak_rss_mb;
        report.wal_mb = wal_mb;
        report.cpu_secs_per_1000_deliveries =
            cpu_secs / ((broadcasts * names.len()) as f64 / 1000.0);
        report.deliveries = broadcasts * names.len();
        Ok(report)
    }
}

impl Bench {
    /// A fixed rate for `soak_secs` against a server that keeps finished
    /// broadcasts `soak_retention_secs`, measuring the database every
    /// `SOAK_SAMPLE_EVERY_SECS`: once retention deletes as much as the load
    /// adds, the size must level off (SQLite reuses freed pages; PostgreSQL
    /// reuses what autovacuum reclaims).
    async fn soak(&mut self) -> anyhow::Result<RunReport> {
        let names = self.names(self.options.destinations);
        self.retention_secs = Some(self.options.soak_retention_secs);
        let (server, addr, database, _run) =
            self.start_herald(&names, self.options.concurrency).await?;
        let rate = self.options.soak_rate.max(0.1);
        let count = ((rate * self.options.soak_secs as f64) as usize).max(1);
        let started = Instant::now();
        let started_ms = now_ms();
        let size = DatabaseSize::open(&database, self.schema.as_deref()).await?;
        let soak_secs = self.options.soak_secs;
        let http = self.http.clone();
        let sampling = async {
            let mut samples = Vec::new();
            let mut at = 0;
            while at + SOAK_SAMPLE_EVERY_SECS <= soak_secs {
                at += SOAK_SAMPLE_EVERY_SECS;
                tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
                samples.push(size.sample(&http, addr, at).await?);
            }
            Ok::<_, anyhow::Error>(samples)
        };
        let load = submit(
            &self.http,
            addr,
            Load {
                count,
                first_index: 0,
                destinations: &names,
                severity: "P3",
                submitters: self.options.submitters,
                per_sec: Some(rate),
            },
        );
        let (submitted, samples) = tokio::join!(load, sampling);
        let submit_secs = submitted?;
        let mut samples = samples?;
        let end_secs = started.elapsed().as_secs();
        if samples.last().is_none_or(|s| s.at_secs < end_secs) {
            samples.push(size.sample(&self.http, addr, end_secs).await?);
        }
        let (peak_rss_mb, cpu_secs) = process_usage(server.pid())?;
        let wal_mb = wal_size_mb(&database);
        drop(server);
        let times = delivery_times(&database, started_ms).await?;
        self.drop_run_schema().await?;
        // Retention deleted the older broadcasts: latencies, states and
        // the confirmed rate are those of the ones still stored.
        let stored_since_ms = times
            .iter()
            .map(|t| t.accepted_ms)
            .min()
            .unwrap_or(started_ms);
        let mut report = summarise("soak", count, names.len(), &times, stored_since_ms);
        report.deliveries = count * names.len();
        report.accepted_per_sec = count as f64 / submit_secs;
        report.peak_rss_mb = peak_rss_mb;
        report.wal_mb = wal_mb;
        report.cpu_secs_per_1000_deliveries = cpu_secs / ((count * names.len()) as f64 / 1000.0);
        report.database_size = samples;
        report.vacuumed_by_bench = matches!(size, DatabaseSize::Postgres { vacuum: true, .. });
        Ok(report)
    }
}

/// Measures a run's database: SQLite's files, or the run schema's tables.
enum DatabaseSize {
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
const TABLES: [&str; 5] = [
    "broadcasts",
    "deliveries",
    "attempts",
    "ingest_keys",
    "destination_state",
];

impl DatabaseSize {
    async fn open(database: &Path, schema: Option<&str>) -> anyhow::Result<DatabaseSize> {
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

    async fn sample(
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

fn confirmed_rate(times: &[DeliveryTimes], started_ms: i64, include: impl Fn(&str) -> bool) -> f64 {
    let confirmed: Vec<&DeliveryTimes> = times
        .iter()
        .filter(|t| t.state == "confirmed" && include(&t.destination))
        .collect();
    let last_ms = confirmed
        .iter()
        .map(|t| t.finished_ms)
        .max()
        .unwrap_or(started_ms);
    confirmed.len() as f64 / ((last_ms - started_ms).max(1) as f64 / 1000.0)
}

fn summarise(
    scenario: &str,
    broadcasts: usize,
    destinations: usize,
    times: &[DeliveryTimes],
    started_ms: i64,
) -> RunReport {
    let mut final_states = BTreeMap::new();
    for t in times {
        *final_states.entry(t.state.clone()).or_insert(0) += 1;
    }
    RunReport {
        scenario: scenario.to_owned(),
        broadcasts,
        destinations,
        deliveries: times.len(),
        confirmed_per_sec: confirmed_rate(times, started_ms, |_| true),
        first_attempt_ms: Percentiles::of(
            times
                .iter()
                .filter_map(|t| t.first_attempt_ms.map(|f| (f - t.accepted_ms) as f64))
                .collect(),
        ),
        confirmed_ms: Percentiles::of(
            times
                .iter()
                .filter(|t| t.state == "confirmed")
                .map(|t| (t.finished_ms - t.accepted_ms) as f64)
                .collect(),
        ),
        final_states,
        ..RunReport::default()
    }
}

pub async fn run(
    options: BenchOptions,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<Vec<RunReport>> {
    let (workdir, temp) = match &options.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (dir.clone(), None)
        }
        None => {
            let dir = std::env::temp_dir().join(format!(
                "herald-bench-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&dir)?;
            (dir.clone(), Some(RemoveOnDrop(Some(dir))))
        }
    };
    let (mock_process, mock) = spawn_mock(&workdir.join("mock.log"))?;
    let http = http_client_builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut bench = Bench {
        options: options.clone(),
        workdir,
        http,
        mock,
        _mock_process: mock_process,
        runs: 0,
        schema: None,
        retention_secs: None,
    };
    if !json {
        writeln!(
            out,
            "herald bench: {} broadcasts x {} destinations, {} in flight per destination, {} submitters; {}",
            options.broadcasts,
            options.destinations,
            options.concurrency,
            options.submitters,
            if options.postgres.is_some() {
                "PostgreSQL synchronous_commit=on"
            } else {
                "SQLite synchronous=FULL"
            }
        )?;
    }
    match run_scenarios(&mut bench, &options, json, out).await {
        Ok(reports) => Ok(reports),
        // What explains a failure is in the server's log and database:
        // both stay, and the error says where.
        Err(error) => {
            let logs = temp.map_or(bench.workdir.clone(), RemoveOnDrop::keep);
            let schema = bench
                .schema
                .take()
                .map(|s| format!(", its database in the PostgreSQL schema {s}"))
                .unwrap_or_default();
            Err(error.context(format!(
                "the bench failed; its logs are kept in {}{schema}",
                logs.display()
            )))
        }
    }
}

async fn run_scenarios(
    bench: &mut Bench,
    options: &BenchOptions,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<Vec<RunReport>> {
    let mut reports: Vec<RunReport> = Vec::new();
    let mut burst: Option<RunReport> = None;
    for scenario in &options.scenarios {
        let needs_burst = match scenario {
            Scenario::Burst | Scenario::Faulty => true,
            Scenario::Steady => options.steady_rate.is_none(),
            Scenario::Backlog | Scenario::Soak => false,
        };
        if needs_burst && burst.is_none() {
            let deliveries = options.broadcasts * options.destinations;
            let before = bench.baseline(deliveries).await?;
            let mut report = bench
                .load_run("burst", options.broadcasts, None, &[])
                .await?;
            let after = bench.baseline(deliveries).await?;
            let baseline_rate = (before + after) / 2.0;
            report.baseline_runs_per_sec = vec![before, after];
            report.baseline_per_sec = Some(baseline_rate);
            report.fraction_of_baseline = Some(report.confirmed_per_sec / baseline_rate);
            if !json {
                print_report(out, &report)?;
            }
            burst = Some(report.clone());
            if *scenario == Scenario::Burst {
                reports.push(report);
                continue;
            }
        }
        let report = match scenario {
            Scenario::Burst => continue,
            Scenario::Steady => {
                let peak = burst
                    .as_ref()
                    .map(|b| {
                        b.accepted_per_sec
                            .min(b.confirmed_per_sec / options.destinations as f64)
                    })
                    .unwrap_or(100.0);
                let rate = options.steady_rate.unwrap_or(peak * 0.5).max(1.0);
                let count = (rate * options.steady_secs as f64) as usize;
                let mut report = bench
                    .load_run("steady", count.max(1), Some(rate), &[])
                    .await?;
                report.accepted_per_sec = rate;
                report
            }
            Scenario::Faulty => {
                if options.destinations < 4 {
                    bail!("the faulty scenario needs at least 4 destinations");
                }
                let faults = [
                    (
                        0,
                        Faults {
                            failure_rate: 0.5,
                            ..Faults::default()
                        },
                    ),
                    (
                        1,
                        Faults {
                            rate_limit_per_sec: Some(RATE_LIMITED_PER_SEC),
                            ..Faults::default()
                        },
                    ),
                ];
                let mut report = bench
                    .load_run("faulty", options.broadcasts, None, &faults)
                    .await?;
                if let (Some(b), Some(h)) = (&burst, report.healthy_confirmed_per_sec) {
                    let burst_per_destination = b.confirmed_per_sec / options.destinations as f64;
                    let healthy_destinations = (options.destinations - 2) as f64;
                    report.healthy_vs_burst =
                        Some(h / (burst_per_destination * healthy_destinations));
                }
                report
            }
            Scenario::Backlog => bench.backlog().await?,
            Scenario::Soak => bench.soak().await?,
        };
        if !json {
            print_report(out, &report)?;
        }
        reports.push(report);
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(reports)
}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// Keeps the folder after all; returns its path.
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("a folder to remove")
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn print_report(out: &mut impl Write, r: &RunReport) -> std::io::Result<()> {
    let ms = |p: &Percentiles| {
        format!(
            "p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}",
            p.p50, p.p95, p.p99, p.max
        )
    };
    writeln!(out, "\n== {} ==", r.scenario)?;
    if r.pending_at_p1.is_some() {
        writeln!(
            out,
            "  {:<34} {} deliveries on 16 destinations, then {} P1s",
            "backlog", r.deliveries, r.broadcasts
        )?;
    } else {
        writeln!(
            out,
            "  {:<34} {} x {} = {}",
            "broadcasts x destinations", r.broadcasts, r.destinations, r.deliveries
        )?;
    }
    writeln!(
        out,
        "  {:<34} {:.0} /s",
        "accepted broadcasts (API)", r.accepted_per_sec
    )?;
    if r.pending_at_p1.is_none() {
        writeln!(
            out,
            "  {:<34} {:.0} /s",
            "confirmed deliveries (end to end)", r.confirmed_per_sec
        )?;
    }
    if let (Some(b), Some(f)) = (r.baseline_per_sec, r.fraction_of_baseline) {
        writeln!(
            out,
            "  {:<34} {:.0} /s  (herald = {:.0}% of it; {} before, {} after)",
            "baseline, no store",
            b,
            f * 100.0,
            r.baseline_runs_per_sec.first().map_or(0.0, |v| v.round()),
            r.baseline_runs_per_sec.last().map_or(0.0, |v| v.round()),
        )?;
    }
    if let Some(h) = r
        .healthy_confirmed_per_sec
        .filter(|_| r.scenario == "faulty")
    {
        writeln!(
            out,
            "  {:<34} {:.0} /s{}",
            "healthy destinations confirmed",
            h,
            r.healthy_vs_burst
                .map(|v| format!("  ({:.0}% of their burst rate)", v * 100.0))
                .unwrap_or_default()
        )?;
    }
    if let Some(p) = r.pending_at_p1 {
        writeln!(out, "  {:<34} {}", "deliveries pending at the P1s", p)?;
    }
    if let Some(mb) = r.wal_mb {
        writeln!(out, "  {:<34} {:.1} MB", "SQLite WAL at the end", mb)?;
    }
    writeln!(
        out,
        "  {:<34} {}",
        "accept -> first attempt (ms)",
        ms(&r.first_attempt_ms)
    )?;
    writeln!(
        out,
        "  {:<34} {}",
        "accept -> confirmed (ms)",
        ms(&r.confirmed_ms)
    )?;
    writeln!(out, "  {:<34} {:.1} MB", "server peak RSS", r.peak_rss_mb)?;
    writeln!(
        out,
        "  {:<34} {:.2} s",
        "server CPU per 1,000 deliveries", r.cpu_secs_per_1000_deliveries
    )?;
    writeln!(out, "  {:<34} {:?}", "final states", r.final_states)?;
    if !r.database_size.is_empty() {
        writeln!(
            out,
            "  (latencies, rates and states: the broadcasts retention had not yet deleted)"
        )?;
    }
    if r.vacuumed_by_bench {
        writeln!(
            out,
            "  (autovacuum is off on this PostgreSQL: the bench ran VACUUM on the run's tables before each sample)"
        )?;
    }
    for sample in &r.database_size {
        writeln!(
            out,
            "  {:<34} {:.1} MB, {} broadcasts stored",
            format!("database size at {} s", sample.at_secs),
            sample.database_mb,
            sample.broadcasts_stored
        )?;
    }
    Ok(())
}
