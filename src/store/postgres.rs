//! The shared store: one PostgreSQL database behind several `herald serve`
//! nodes. Same trait, same guarantees as the SQLite store, plus what
//! several processes need:
//!
//! - **Leases with an owner and an expiry.** A claim takes due rows with
//!   `FOR UPDATE SKIP LOCKED`, so nodes never wait on each other's batches,
//!   and stamps each with this node's id, an expiry and a new `lease_epoch`
//!   (the fencing token). An outcome commits only under the same owner and
//!   epoch, before the expiry; otherwise it is refused (`Stale`).
//! - **Takeover.** A task on every node releases expired leases: a delivery
//!   left `sending` goes to `verifying` (`DeliveryProgress::interrupted`),
//!   exactly as after a crash, and the destination's lanes are woken.
//! - **Wake-ups.** Commits that make work due send `NOTIFY` on the cluster's
//!   channel with the destination as payload; a dedicated connection
//!   LISTENs and turns them into lane wake-ups.
//! - **Shared destination state.** A 429's pause, the circuit breaker and
//!   the token bucket live in `destination_state`, read and written in the
//!   claim's and the outcome's own transactions.
//! - **Group commit.** Outcomes queue for one writer task that records a
//!   whole batch (attempt rows and state changes) in one transaction with
//!   array parameters; a failing batch is replayed one outcome at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls, Row, Statement, Transaction};

use super::*;
use crate::domain::Isolation;
use crate::domain::{delivery_idempotency_key, Severity};

/// Connections open at most per node (the LISTEN connection aside).
const POOL_SIZE_MAX: usize = 24;
/// How long an operation waits for a free connection.
const POOL_WAIT_MS: u64 = 5_000;
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// The server cancels any statement running longer than this.
const STATEMENT_TIMEOUT_MS: u64 = 15_000;
/// A session that sits in a transaction this long (a frozen node) is ended
/// by the server, so its row locks do not hold other nodes up.
const IDLE_IN_TRANSACTION_MS: u64 = 5_000;
/// One store operation, all round trips included, at most.
const OPERATION_TIMEOUT_MS: u64 = 20_000;
/// Outcomes waiting for the writer task; callers wait when it is full.
const WRITE_QUEUE_MAX: usize = 8_192;
/// New broadcasts committed together at most.
const INSERT_BATCH_MAX: usize = 256;
/// Outcome writers and broadcast writers per node, each.
const WRITERS: usize = 3;
/// Outcomes committed together at most.
const WRITE_BATCH_MAX: usize = 1_024;
/// A smaller batch of outcomes waits a moment for more while another writer
/// commits (see `next_batch`).
const WRITE_GATHER_MIN: usize = 48;
/// The same for new broadcasts (each with its deliveries).
const INSERT_GATHER_MIN: usize = 12;
/// How long a small batch waits for more at most.
const BATCH_GATHER_US: u64 = 2_000;
/// Expired leases released per transaction; a pass repeats while full.
const TAKEOVER_BATCH_MAX: i64 = 512;
/// Transactions of one takeover pass at most.
const TAKEOVER_ROUNDS_MAX: usize = 64;
/// After the LISTEN connection drops, wait this long before reconnecting.
const LISTEN_RETRY_MS: u64 = 1_000;
/// Wake-ups buffered for slow subscribers (they then wake everything).
const WAKEUP_QUEUE_MAX: usize = 4_096;
pub use crate::domain::DEFAULT_LEASE_MS;
/// The wake-up payload that means "every destination" (after a reconnect,
/// notifications may have been missed).
pub const WAKE_ALL: &str = "*";
/// A wake-up payload is a destination's name: new work there, maybe a P1.
/// With this suffix, the new work holds no P1, so a lane whose slots are all
/// busy need not try a claim for its P1 slot. (A node of an older version
/// knows no destination by that name and ignores it; it still finds that
/// work at its next poll, its own inserts and its outcomes.)
pub const ROUTINE_WAKE_SUFFIX: &str = "/routine";
/// Serializes migrations of concurrent starts (a fixed advisory lock key).
const MIGRATION_LOCK_KEY: i64 = 0x6865_7261_6c64;

/// Migrations, applied in order; `herald_schema` has one row per migration
/// applied. Never edit one that has shipped; append.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE broadcasts (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    body          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    thread_key    TEXT,
    resolved      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX broadcasts_thread ON broadcasts (thread_key, id) WHERE thread_key IS NOT NULL;

CREATE TABLE deliveries (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    broadcast_id        TEXT NOT NULL REFERENCES broadcasts(id),
    destination         TEXT NOT NULL,
    idempotency_key     TEXT NOT NULL UNIQUE,
    thread_key          TEXT,
    priority            SMALLINT NOT NULL,
    state               TEXT NOT NULL,
    attempts_made       INTEGER NOT NULL,
    attempts_max        INTEGER NOT NULL,
    due_at_ms           BIGINT,
    deadline_at_ms      BIGINT,
    lease_owner         TEXT,
    lease_expires_at_ms BIGINT,
    lease_epoch         BIGINT NOT NULL DEFAULT 0,
    possible_duplicate  BOOLEAN NOT NULL DEFAULT FALSE,
    remote_ref          TEXT,
    last_error          TEXT,
    last_http_status    INTEGER,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    UNIQUE (broadcast_id, destination),
    CHECK ((lease_owner IS NULL) = (lease_expires_at_ms IS NULL))
);
-- Due work per destination, most urgent first, then due time.
CREATE INDEX deliveries_due ON deliveries (destination, priority, due_at_ms)
    WHERE due_at_ms IS NOT NULL AND lease_owner IS NULL;
-- Leases, by expiry, for the takeover.
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at_ms) WHERE lease_owner IS NOT NULL;
-- Per-thread order on each destination.
CREATE INDEX deliveries_thread ON deliveries (destination, thread_key, id) WHERE thread_key IS NOT NULL;
CREATE INDEX deliveries_unfinished ON deliveries (destination)
    WHERE state NOT IN ('confirmed','failed','dead','cancelled');
CREATE INDEX deliveries_broadcast ON deliveries (broadcast_id, id);

CREATE TABLE attempts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id    BIGINT NOT NULL REFERENCES deliveries(id),
    number         INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    outcome        TEXT NOT NULL,
    http_status    INTEGER,
    excerpt        TEXT,
    error          TEXT,
    node           TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE ingest_keys (
    caller        TEXT NOT NULL,
    key           TEXT NOT NULL,
    body_sha256   TEXT NOT NULL,
    broadcast_id  TEXT NOT NULL REFERENCES broadcasts(id),
    response      TEXT,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (caller, key)
);
CREATE INDEX ingest_keys_expiry ON ingest_keys (expires_at_ms);

-- What every node must agree on about a destination.
CREATE TABLE destination_state (
    destination      TEXT PRIMARY KEY,
    paused_until_ms  BIGINT NOT NULL DEFAULT 0,
    circuit          TEXT NOT NULL DEFAULT 'closed',
    -- open: until when; half_open: when the probe's permission lapses.
    circuit_until_ms BIGINT NOT NULL DEFAULT 0,
    failures_in_row  INTEGER NOT NULL DEFAULT 0,
    tokens           DOUBLE PRECISION,
    tokens_at_ms     BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT
);
"#,
    // Less to write per delivery: a state change is never a HOT update (it
    // changes indexed columns), so each one adds an entry to every index.
    // The idempotency key is derived from broadcast id and destination,
    // unique together, and that unique index also serves lookups by
    // broadcast; neither the key's own unique index nor a second index by
    // broadcast is needed.
    r#"
ALTER TABLE deliveries DROP CONSTRAINT deliveries_idempotency_key_key;
DROP INDEX deliveries_broadcast;
"#,
    // The backlog report (`/metrics`, `/v1/destinations`) reads each
    // destination's oldest unfinished accept time from this index instead
    // of joining every unfinished delivery to its broadcast.
    r#"
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries (destination, created_at_ms)
    WHERE state NOT IN ('confirmed','failed','dead','cancelled');
"#,
    // Operators' pauses, shared by every node: a claim and a hand-off at
    // insert check `held_until_ms` beside the 429 pause. i64::MAX: until
    // resumed.
    r#"
ALTER TABLE destination_state
    ADD COLUMN held_until_ms BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN held_reason TEXT,
    ADD COLUMN held_by TEXT,
    ADD COLUMN held_at_ms BIGINT;
"#,
    // Retention deletes a broadcast's ingest keys with it (and the foreign
    // key's check on each deleted broadcast looks them up).
    r#"
CREATE INDEX ingest_keys_broadcast ON ingest_keys (broadcast_id);
"#,
    // A message's labels, links, fields, source and summary (one JSON
    // text, NULL when it has none) and the routes that picked its
    // destinations (a JSON array, NULL when the caller named them): both
    // written once with the broadcast, never changed.
    r#"
ALTER TABLE broadcasts ADD COLUMN details TEXT, ADD COLUMN routes TEXT;
"#,
];

/// The earliest due time among the deliveries of `$destination` (an SQL
/// expression) that are not in flight: the first entry of each severity in
/// the index `deliveries_due`.
macro_rules! earliest_due_sql {
    ($destination:literal) => {
        concat!(
            "(SELECT min((SELECT min(due_at_ms) FROM deliveries
                          WHERE destination = ",
            $destination,
            " AND priority = p AND due_at_ms IS NOT NULL AND lease_owner IS NULL))
              FROM generate_series(1, 5) p)"
        )
    };
}

macro_rules! final_states_sql {
    () => {
        "('confirmed','failed','dead','cancelled')"
    };
}

/// Retention's choice: old broadcasts (by id, then by accept time) with no
/// unfinished delivery, oldest first, skipping those another node's
/// retention holds. `$1` the id to start after, `$2` the first id at the
/// cutoff, `$3` the cutoff, `$4` how many.
const RETENTION_CANDIDATES_SQL: &str = concat!(
    "SELECT b.id FROM broadcasts b
     WHERE b.id > $1 AND b.id < $2 AND b.created_at_ms < $3
       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state NOT IN ",
    final_states_sql!(),
    ")
     ORDER BY b.id LIMIT $4
     FOR UPDATE OF b SKIP LOCKED"
);

/// How a node joins the cluster.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/db`, with `?options=-csearch_path%3D...`
    /// to use a schema other than `public`.
    pub url: String,
    /// This node's name in lease owners and attempt rows; unique per live
    /// process.
    pub node_id: String,
    /// How long a claim's lease lasts.
    pub lease_ms: u64,
    /// Each destination's limits, for the shared pause, breaker and bucket.
    pub destinations: Vec<(String, Isolation)>,
    /// Release other nodes' expired leases in the background (every
    /// quarter lease). Off only in tests that drive the clock by hand.
    pub take_over_expired_leases: bool,
}

#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    node_id: String,
    lease_ms: i64,
    /// Replaced by a reload (`destinations_changed`); never held across an
    /// await.
    isolation: std::sync::RwLock<BTreeMap<String, Isolation>>,
    /// The cluster's NOTIFY channel: one per schema.
    channel: String,
    wakeups: broadcast::Sender<String>,
    writes: mpsc::Sender<WriteOp>,
    inserts: mpsc::Sender<InsertOp>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The last insert's or outcome's commit, for readiness.
    health: CommitHealth,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("tasks poisoned").drain(..) {
            task.abort();
        }
    }
}

struct WriteOp {
    update: DeliveryUpdate,
    reply: oneshot::Sender<Result<UpdateResult, StoreError>>,
}

struct InsertOp {
    new: NewBroadcast,
    reply: oneshot::Sender<Result<Vec<InsertedDelivery>, StoreError>>,
}

/// A bounded pool: at most `POOL_SIZE_MAX` connections, closed ones are
/// dropped and replaced on demand.
struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<(Client, Statements)>>,
    permits: Arc<Semaphore>,
}

/// A connection's prepared statements, by their text: preparing is a round
/// trip of its own, so each statement is prepared once per connection.
type Statements = HashMap<&'static str, Statement>;

struct Conn<'a> {
    client: Option<Client>,
    statements: Statements,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl Conn<'_> {
    async fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        let Conn {
            client, statements, ..
        } = self;
        let tx = client
            .as_mut()
            .expect("present until dropped")
            .transaction()
            .await?;
        Ok(Tx { tx, statements })
    }
}

/// A transaction whose statements are prepared once per connection.
struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a mut Statements,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    async fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    async fn query(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.query(&statement, params).await?)
    }

    async fn query_one(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Row, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.query_one(&statement, params).await?)
    }

    async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.query_opt(&statement, params).await?)
    }

    async fn execute(&mut self, sql: &'static str, params: &Params<'_>) -> Result<u64, StoreError> {
        let statement = self.statement(sql).await?;
        Ok(self.tx.execute(&statement, params).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                let statements = std::mem::take(&mut self.statements);
                self.pool
                    .idle
                    .lock()
                    .expect("pool poisoned")
                    .push((client, statements));
            }
        }
    }
}

/// Whether an error says the database cannot commit at all (unreachable,
/// out of disk or memory, shutting down), rather than that this one
/// operation was refused.
fn cannot_commit(error: &StoreError) -> bool {
    match error {
        StoreError::Postgres(error) => match error.code() {
            // No SQLSTATE: the connection itself failed.
            None => true,
            Some(code) => {
                let class = &code.code()[..2];
                matches!(class, "08" | "53" | "57" | "58" | "XX")
            }
        },
        StoreError::Unavailable(_) | StoreError::WriterStopped => true,
        _ => false,
    }
}

fn unavailable(what: impl Into<String>) -> StoreError {
    StoreError::Unavailable(what.into())
}

impl Pool {
    async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let permit = tokio::time::timeout(
            Duration::from_millis(POOL_WAIT_MS),
            self.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| unavailable("no database connection became free in time"))?
        .map_err(|_| unavailable("the connection pool is closed"))?;
        loop {
            let idle = self.idle.lock().expect("pool poisoned").pop();
            match idle {
                Some((client, _)) if client.is_closed() => continue,
                Some((client, statements)) => {
                    return Ok(Conn {
                        client: Some(client),
                        statements,
                        pool: self,
                        _permit: permit,
                    })
                }
                None => break,
            }
        }
        let client = connect(&self.config).await?;
        Ok(Conn {
            client: Some(client),
            statements: Statements::new(),
            pool: self,
            _permit: permit,
        })
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, connection) = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        config.connect(NoTls),
    )
    .await
    .map_err(|_| unavailable("connecting to PostgreSQL timed out"))??;
    // The connection task ends when the client is dropped or the socket
    // closes.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Parses the URL and adds herald's session settings to its options; the
/// sessions show as `herald <node>` in `pg_stat_activity`.
///
/// `enable_seqscan`, `enable_hashjoin` and `enable_mergejoin` off: every
/// statement herald runs reads a few rows through an index, and nested loops
/// over index scans are its right plan at any table size. PostgreSQL settles
/// on a generic plan for a prepared statement after five executions; on a
/// fresh database the tables are then nearly empty, a sequential scan with a
/// hash join looks cheapest, and that plan stayed cached while the table
/// grew: a 60,000-delivery burst read 72 million rows in 1,562 sequential
/// scans (57% of the machine's CPU in the PostgreSQL backends). Planning
/// every execution with its values (`plan_cache_mode=force_custom_plan`)
/// avoided that, but the planning itself then took a tenth of the burst's
/// throughput; with these settings the cached generic plans are index plans.
/// (A statement with no index to use still gets a sequential scan.)
/// `jit=off`: herald's statements are short; compiling one (when a large
/// batch's estimate crosses `jit_above_cost`) costs more than running it.
fn connection_config(url: &str, node_id: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("the PostgreSQL URL is invalid: {e}")))?;
    let options = format!(
        "{} -c statement_timeout={STATEMENT_TIMEOUT_MS} -c synchronous_commit=on \
         -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} \
         -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off",
        config.get_options().unwrap_or("")
    );
    config
        .options(options.trim())
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name(format!("herald {node_id}"));
    Ok(config)
}

/// Runs migrations on the database at `url`; returns how many were applied.
pub async fn migrate(url: &str) -> Result<usize, StoreError> {
    let mut client = connect(&connection_config(url, "migrate")?).await?;
    migrate_with(&mut client).await
}

async fn migrate_with(client: &mut Client) -> Result<usize, StoreError> {
    let known = MIGRATIONS.len() as i64;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_schema (
             version       INTEGER PRIMARY KEY,
             applied_at_ms BIGINT NOT NULL)",
    )
    .await?;
    let version: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::BIGINT FROM herald_schema",
            &[],
        )
        .await?
        .get(0);
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    let mut applied = 0;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO herald_schema (version, applied_at_ms) VALUES ($1, $2)",
            &[&(index as i32 + 1), &crate::clock::now_ms()],
        )
        .await?;
        tracing::info!(migration = index + 1, "applied schema migration");
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

impl PostgresStore {
    /// One claim in its own transaction: up to `limit` due deliveries of
    /// severity rank `rank_max` or more urgent.
    async fn claim(
        &self,
        destination: &str,
        limit: usize,
        rank_max: u8,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        self.timed(async {
            let mut conn = self.inner.pool.get().await?;
            let mut tx = conn.begin().await?;
            let claim =
                claim_due(&self.inner, &mut tx, destination, limit, rank_max, now_ms).await?;
            tx.commit().await?;
            Ok(claim)
        })
        .await
    }

    /// Connects, runs migrations (refusing a newer schema), and starts the
    /// outcome writer, the lease takeover and the LISTEN task.
    pub async fn open(options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let config = connection_config(&options.url, &options.node_id)?;
        let mut first = connect(&config).await?;
        migrate_with(&mut first).await?;
        let schema: String = first
            .query_one("SELECT current_schema()", &[])
            .await?
            .get(0);
        for (name, _) in &options.destinations {
            first
                .execute(
                    "INSERT INTO destination_state (destination) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[name],
                )
                .await?;
        }
        let (wakeups, _) = broadcast::channel(WAKEUP_QUEUE_MAX);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE_MAX);
        let (inserts, insert_queue) = mpsc::channel(WRITE_QUEUE_MAX);
        let inner = Arc::new(Inner {
            pool: Pool {
                config: config.clone(),
                idle: Mutex::new(vec![(first, Statements::new())]),
                permits: Arc::new(Semaphore::new(POOL_SIZE_MAX)),
            },
            node_id: options.node_id.clone(),
            lease_ms: options.lease_ms as i64,
            isolation: std::sync::RwLock::new(options.destinations.iter().cloned().collect()),
            channel: format!("herald_{schema}"),
            wakeups,
            writes,
            inserts,
            tasks: Mutex::new(Vec::new()),
            health: CommitHealth::default(),
        });
        let weak = Arc::downgrade(&inner);
        // Several writers of each kind, so one batch's round trips and
        // commit do not hold up the next; they coordinate in the database
        // exactly as the writers of several nodes do.
        let queue = Arc::new(Writers {
            queue: tokio::sync::Mutex::new(queue),
            committing: AtomicUsize::new(0),
        });
        let insert_queue = Arc::new(Writers {
            queue: tokio::sync::Mutex::new(insert_queue),
            committing: AtomicUsize::new(0),
        });
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            tasks.push(tokio::spawn(run_writer(weak.clone(), queue.clone())));
            tasks.push(tokio::spawn(run_inserter(
                weak.clone(),
                insert_queue.clone(),
            )));
        }
        let listener = tokio::spawn(run_listener(
            config,
            inner.channel.clone(),
            inner.wakeups.clone(),
        ));
        tasks.push(listener);
        if options.take_over_expired_leases {
            tasks.push(tokio::spawn(run_takeover(weak, inner.lease_ms)));
        }
        inner.tasks.lock().expect("tasks poisoned").extend(tasks);
        Ok(PostgresStore { inner })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Destinations whose work became due on any node (`WAKE_ALL`: all).
    pub fn wakeups(&self) -> broadcast::Receiver<String> {
        self.inner.wakeups.subscribe()
    }

    async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), operation)
            .await
            .map_err(|_| unavailable("the database did not answer in time"))?
    }

    /// Feeds readiness with a commit's result.
    fn note_commit<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.inner.health.succeeded(),
            Err(error) if cannot_commit(error) => self.inner.health.failed(error),
            Err(_) => {}
        }
    }

    /// Releases expired leases (and this node's own, at start): sending
    /// ones go to verifying. Returns what it did.
    async fn take_over(&self, now_ms: i64, own_too: bool) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        for _ in 0..TAKEOVER_ROUNDS_MAX {
            let mut conn = self.inner.pool.get().await?;
            let mut tx = conn.begin().await?;
            let (round, full) = take_over_batch(&self.inner, &mut tx, now_ms, own_too).await?;
            tx.commit().await?;
            recovery.interrupted += round.interrupted;
            recovery.released += round.released;
            if !full {
                break;
            }
        }
        Ok(recovery)
    }
}

/// Receives NOTIFYs on a dedicated connection and republishes them; after a
/// lost connection, reconnects and wakes every destination (notifications
/// may have been missed meanwhile).
async fn run_listener(
    config: tokio_postgres::Config,
    channel: String,
    wakeups: broadcast::Sender<String>,
) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (messages_tx, mut messages) = mpsc::unbounded_channel();
                let pump = tokio::spawn(async move {
                    let mut stream =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    use futures_util::StreamExt;
                    while let Some(message) = stream.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if messages_tx.send(n.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(%error, "the LISTEN connection to PostgreSQL failed");
                                return;
                            }
                        }
                    }
                });
                let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
                match client.batch_execute(&listen).await {
                    Ok(()) => {
                        let _ = wakeups.send(WAKE_ALL.to_owned());
                        while let Some(destination) = messages.recv().await {
                            let _ = wakeups.send(destination);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot LISTEN for wake-ups"),
                }
                pump.abort();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open the LISTEN connection to PostgreSQL; retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(LISTEN_RETRY_MS)).await;
    }
}

/// Releases expired leases every quarter lease, until the store is dropped.
async fn run_takeover(store: std::sync::Weak<Inner>, lease_ms: i64) {
    let every_ms = (lease_ms / 4).clamp(100, 15_000) as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
        let Some(inner) = store.upgrade() else { return };
        let store = PostgresStore { inner };
        match store.take_over(crate::clock::now_ms(), false).await {
            Ok(r) if r.interrupted + r.released > 0 => tracing::warn!(
                interrupted = r.interrupted,
                released = r.released,
                "took over expired leases: deliveries that were in flight on another node are verified before any re-send"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot take over expired leases; trying again"),
        }
    }
}

/// The writers of one kind (outcomes, or new broadcasts): the queue they
/// take batches from, one writer at a time, and how many of them are
/// committing a batch right now.
struct Writers<T> {
    queue: tokio::sync::Mutex<mpsc::Receiver<T>>,
    committing: AtomicUsize,
}

/// A writer's turn at committing; the count goes down when it ends.
struct Committing<'a>(&'a AtomicUsize);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for the next operation, then takes what else is queued, up to
/// `max`. None when the queue is closed.
///
/// A batch smaller than `gather_min` waits up to `BATCH_GATHER_US` for more
/// while another writer is committing. Under load a transaction costs the
/// server far more than a row in it: a burst whose batches were about twice
/// as large (twice the deliveries in flight) cost PostgreSQL about a quarter
/// less CPU per delivery. The wait overlaps that other commit and delays a
/// caller by `BATCH_GATHER_US` at most; with no other writer committing, the
/// batch goes at once, so a quiet node adds no latency.
async fn next_batch<'a, T>(
    writers: &'a Writers<T>,
    batch: &mut Vec<T>,
    max: usize,
    gather_min: usize,
) -> Option<Committing<'a>> {
    let mut queue = writers.queue.lock().await;
    batch.push(queue.recv().await?);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    if batch.len() < gather_min && writers.committing.load(Ordering::SeqCst) > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_micros(BATCH_GATHER_US);
        while batch.len() < gather_min {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(op)) => batch.push(op),
                Ok(None) | Err(_) => break,
            }
        }
    }
    writers.committing.fetch_add(1, Ordering::SeqCst);
    Some(Committing(&writers.committing))
}

/// One outcome writer: drains the queue, commits every queued outcome in one
/// transaction, answers each caller after the commit.
async fn run_writer(store: std::sync::Weak<Inner>, writers: Arc<Writers<WriteOp>>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
    while let Some(_committing) =
        next_batch(&writers, &mut batch, WRITE_BATCH_MAX, WRITE_GATHER_MIN).await
    {
        let Some(inner) = store.upgrade() else { return };
        let updates: Vec<&DeliveryUpdate> = batch.iter().map(|op| &op.update).collect();
        match write_updates(&inner, &updates).await {
            Ok(results) => {
                for (op, result) in batch.drain(..).zip(results) {
                    let _ = op.reply.send(Ok(result));
                }
            }
            Err(error) => {
                if batch.len() > 1 {
                    tracing::warn!(%error, outcomes = batch.len(),
                        "an outcome batch failed; replaying its outcomes one by one");
                }
                for op in batch.drain(..) {
                    let result = write_updates(&inner, &[&op.update])
                        .await
                        .map(|mut results| results.pop().expect("one result per outcome"));
                    let _ = op.reply.send(result);
                }
            }
        }
    }
}

/// One broadcast writer: new broadcasts queued at the moment commit
/// together, so a burst pays one commit per batch, not per broadcast.
async fn run_inserter(store: std::sync::Weak<Inner>, writers: Arc<Writers<InsertOp>>) {
    let mut batch = Vec::with_capacity(INSERT_BATCH_MAX);
    while let Some(_committing) =
        next_batch(&writers, &mut batch, INSERT_BATCH_MAX, INSERT_GATHER_MIN).await
    {
        let Some(inner) = store.upgrade() else { return };
        let news: Vec<&NewBroadcast> = batch.iter().map(|op| &op.new).collect();
        match write_inserts(&inner, &news).await {
            Ok(results) => {
                for (op, result) in batch.drain(..).zip(results) {
                    let _ = op.reply.send(Ok(result));
                }
            }
            Err(_) if batch.len() > 1 => {
                for op in batch.drain(..) {
                    let result = write_inserts(&inner, &[&op.new])
                        .await
                        .map(|mut results| results.pop().expect("one result per broadcast"));
                    let _ = op.reply.send(result);
                }
            }
            Err(error) => {
                for op in batch.drain(..) {
                    let _ = op.reply.send(Err(clone_error(&error)));
                }
            }
        }
    }
}

/// The same refusal for the caller (errors of the driver are not `Clone`).
fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::DuplicateBroadcast(id) => StoreError::DuplicateBroadcast(id.clone()),
        StoreError::IngestKeyTaken(key) => StoreError::IngestKeyTaken(key.clone()),
        StoreError::SchemaTooNew { found, known } => StoreError::SchemaTooNew {
            found: *found,
            known: *known,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

async fn write_inserts(
    inner: &Inner,
    batch: &[&NewBroadcast],
) -> Result<Vec<Vec<InsertedDelivery>>, StoreError> {
    let work = async {
        let mut conn = inner.pool.get().await?;
        let mut tx = conn.begin().await?;
        let results = insert_batch(inner, &mut tx, batch).await?;
        tx.commit().await?;
        Ok(results)
    };
    tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), work)
        .await
        .map_err(|_| unavailable("the database did not answer in time"))?
}

async fn write_updates(
    inner: &Inner,
    updates: &[&DeliveryUpdate],
) -> Result<Vec<UpdateResult>, StoreError> {
    let work = async {
        let mut conn = inner.pool.get().await?;
        let mut tx = conn.begin().await?;
        let results = update_batch(inner, &mut tx, updates).await?;
        tx.commit().await?;
        Ok(results)
    };
    tokio::time::timeout(Duration::from_millis(OPERATION_TIMEOUT_MS), work)
        .await
        .map_err(|_| unavailable("the database did not answer in time"))?
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn progress_from_row(row: &Row, first: usize) -> Result<DeliveryProgress, StoreError> {
    let state: String = row.try_get(first)?;
    let state = DeliveryState::parse(&state)
        .ok_or_else(|| corrupt(format!("unknown delivery state {state:?}")))?;
    Ok(DeliveryProgress {
        state,
        attempts_made: row.try_get::<_, i32>(first + 1)? as u32,
        attempts_max: row.try_get::<_, i32>(first + 2)? as u32,
        due_at_ms: row.try_get(first + 3)?,
        deadline_at_ms: row.try_get(first + 4)?,
        possible_duplicate: row.try_get(first + 5)?,
    })
}

/// Reads title, body, severity and thread from `first` on, and the resolved
/// flag from column `resolved`.
/// What later messages of a thread attach to: the reference of the first
/// delivery of the same thread to the same destination that recorded one.
/// `$1` destination, `$2` thread key, `$3` the asking delivery's id.
const THREAD_REF_SQL: &str = "SELECT remote_ref FROM deliveries
     WHERE destination = $1 AND thread_key = $2 AND id < $3 AND remote_ref IS NOT NULL
     ORDER BY id LIMIT 1";

/// Reads title, body, severity and thread from `first` on, the resolved
/// flag from column `resolved` and the details (JSON) from `details`.
fn message_from_row(
    row: &Row,
    first: usize,
    resolved: usize,
    details: usize,
) -> Result<Message, StoreError> {
    let title: String = row.try_get(first)?;
    let body: String = row.try_get(first + 1)?;
    let severity: String = row.try_get(first + 2)?;
    let thread: Option<String> = row.try_get(first + 3)?;
    let resolved: bool = row.try_get(resolved)?;
    let details: Option<String> = row.try_get(details)?;
    let message = Severity::parse(&severity)
        .and_then(|severity| Message::new(&title, &body, severity, thread.as_deref()))
        .and_then(|message| message.resolving(resolved))
        .map_err(|e| corrupt(format!("stored message is invalid: {e}")))?;
    super::with_stored_details(message, details.as_deref())
}

/// Serializes, per thread, the decisions of thread order: whether a new
/// delivery waits, and which waiting one goes next. Keys are taken in
/// sorted order so two transactions never wait on each other in a cycle.
/// Lock order everywhere: delivery rows, then `destination_state` rows (in
/// name order), then thread locks.
async fn lock_threads(
    tx: &mut Tx<'_>,
    threads: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let threads: Vec<String> = threads
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if threads.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(t, 7)) FROM unnest($1::TEXT[]) t ORDER BY t",
        &[&threads],
    )
    .await?;
    Ok(())
}

async fn notify(
    inner: &Inner,
    tx: &mut Tx<'_>,
    destinations: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let destinations: Vec<String> = destinations
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if destinations.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_notify($1, d) FROM unnest($2::TEXT[]) d",
        &[&inner.channel, &destinations],
    )
    .await?;
    Ok(())
}

/// A destination's shared condition, as stored.
#[derive(Clone, Debug, PartialEq)]
struct SharedGuard {
    paused_until_ms: i64,
    circuit: String,
    circuit_until_ms: i64,
    failures_in_row: i32,
    tokens: Option<f64>,
    tokens_at_ms: i64,
    /// An operator's pause; read only (written by pause and resume).
    held_until_ms: i64,
}

impl SharedGuard {
    fn from_row(row: &Row) -> Result<SharedGuard, StoreError> {
        Ok(SharedGuard {
            paused_until_ms: row.try_get(0)?,
            circuit: row.try_get(1)?,
            circuit_until_ms: row.try_get(2)?,
            failures_in_row: row.try_get(3)?,
            tokens: row.try_get(4)?,
            tokens_at_ms: row.try_get(5)?,
            held_until_ms: row.try_get(6)?,
        })
    }

    /// How many attempts may start now (at most `wanted`), or until when
    /// nothing may. Takes the tokens and the probe permission granted.
    fn admit(
        &mut self,
        isolation: &Isolation,
        wanted: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<usize, i64> {
        if self.paused_until_ms > now_ms {
            return Err(self.paused_until_ms);
        }
        if self.held_until_ms > now_ms {
            return Err(self.held_until_ms);
        }
        let mut allowed = wanted;
        let mut probe = false;
        match self.circuit.as_str() {
            "open" if now_ms < self.circuit_until_ms => return Err(self.circuit_until_ms),
            // A probe is out; its permission lapses with its lease.
            "half_open" if now_ms < self.circuit_until_ms => return Err(self.circuit_until_ms),
            "open" | "half_open" => {
                allowed = 1;
                probe = true;
            }
            _ => {}
        }
        if let Some(rate) = isolation.rate_per_sec {
            let burst = f64::from(isolation.rate_burst);
            let elapsed_ms = (now_ms - self.tokens_at_ms).max(0) as f64;
            let tokens = (self.tokens.unwrap_or(burst) + elapsed_ms * rate / 1000.0).min(burst);
            self.tokens = Some(tokens);
            self.tokens_at_ms = now_ms;
            if tokens < 1.0 {
                let wait_ms = ((1.0 - tokens) * 1000.0 / rate).ceil() as i64;
                return Err(now_ms + wait_ms.max(1));
            }
            allowed = allowed.min(tokens.floor() as usize);
        }
        if probe {
            self.circuit = "half_open".into();
            self.circuit_until_ms = now_ms + lease_ms;
        }
        Ok(allowed)
    }

    /// Charges `used` of the granted attempts; a probe that found nothing
    /// to send gives its permission back.
    fn charge(&mut self, isolation: &Isolation, used: usize) {
        if isolation.rate_per_sec.is_some() {
            self.tokens = Some(self.tokens.unwrap_or(0.0) - used as f64);
        }
        if used == 0 && self.circuit == "half_open" {
            self.circuit_until_ms = 0;
        }
    }

    /// Feeds an outcome to the breaker (and a 429 to the pause).
    fn record(
        &mut self,
        isolation: &Isolation,
        class: Option<OutcomeClass>,
        pause_until_ms: Option<i64>,
        now_ms: i64,
    ) {
        if let Some(until) = pause_until_ms {
            self.paused_until_ms = self.paused_until_ms.max(until);
        }
        match class {
            Some(OutcomeClass::Success) => {
                self.failures_in_row = 0;
                self.circuit = "closed".into();
                self.circuit_until_ms = 0;
            }
            Some(OutcomeClass::Retryable | OutcomeClass::Ambiguous) => {
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let probe_failed = self.circuit == "half_open";
                if probe_failed || self.failures_in_row as u32 >= isolation.breaker_failures {
                    self.circuit = "open".into();
                    self.circuit_until_ms = now_ms + isolation.breaker_cooldown_ms as i64;
                }
            }
            _ => {
                if self.circuit == "half_open" {
                    self.circuit_until_ms = 0;
                }
            }
        }
    }
}

async fn read_guard(
    tx: &mut Tx<'_>,
    destination: &str,
    for_update: bool,
) -> Result<Option<SharedGuard>, StoreError> {
    macro_rules! select_guard {
        () => {
            "SELECT paused_until_ms, circuit, circuit_until_ms, failures_in_row, tokens, tokens_at_ms,
                 held_until_ms
             FROM destination_state WHERE destination = $1"
        };
    }
    let sql = if for_update {
        concat!(select_guard!(), " FOR UPDATE")
    } else {
        select_guard!()
    };
    match tx.query_opt(sql, &[&destination]).await? {
        Some(row) => Ok(Some(SharedGuard::from_row(&row)?)),
        None => Ok(None),
    }
}

/// After only successes: closes the circuit and clears the failure count
/// of those of `destinations` that were unwell, and returns them. It
/// changes nothing, and locks no row, for a healthy destination; the index
/// scan visits the names in order (the guards' lock order).
async fn reset_guards(tx: &mut Tx<'_>, destinations: &[&str]) -> Result<Vec<String>, StoreError> {
    tx.query(
        "UPDATE destination_state SET failures_in_row = 0, circuit = 'closed',
             circuit_until_ms = 0
         WHERE destination = ANY($1) AND (failures_in_row <> 0 OR circuit <> 'closed')
         RETURNING destination",
        &[&destinations],
    )
    .await?
    .iter()
    .map(|row| Ok(row.try_get(0)?))
    .collect()
}

async fn write_guard(
    tx: &mut Tx<'_>,
    destination: &str,
    guard: &SharedGuard,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO destination_state (destination, paused_until_ms, circuit, circuit_until_ms,
             failures_in_row, tokens, tokens_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (destination) DO UPDATE SET paused_until_ms = $2, circuit = $3,
             circuit_until_ms = $4, failures_in_row = $5, tokens = $6, tokens_at_ms = $7",
        &[
            &destination,
            &guard.paused_until_ms,
            &guard.circuit,
            &guard.circuit_until_ms,
            &guard.failures_in_row,
            &guard.tokens,
            &guard.tokens_at_ms,
        ],
    )
    .await?;
    Ok(())
}

/// Writes broadcasts, each with its deliveries (and ingest key), in one
/// transaction: one statement for all broadcasts, one for all deliveries.
/// Any refusal (a duplicate id, a taken key) fails the whole batch; the
/// writer then replays its broadcasts one per transaction.
async fn insert_batch(
    inner: &Inner,
    tx: &mut Tx<'_>,
    batch: &[&NewBroadcast],
) -> Result<Vec<Vec<InsertedDelivery>>, StoreError> {
    // Thread order first: whether a delivery waits is decided under its
    // thread's lock, taken in sorted order for the whole batch.
    lock_threads(
        tx,
        batch
            .iter()
            .filter_map(|new| new.message.thread().map(str::to_owned)),
    )
    .await?;
    let (mut ids, mut titles, mut bodies, mut severities, mut threads, mut created) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut resolved = Vec::with_capacity(batch.len());
    let (mut details, mut routes) = (vec![], vec![]);
    for new in batch {
        details.push(super::details_json(&new.message));
        routes.push(super::routes_json(&new.routes));
        resolved.push(new.message.resolved());
        ids.push(new.id.as_str());
        titles.push(new.message.title());
        bodies.push(new.message.body());
        severities.push(new.message.severity().as_str());
        threads.push(new.message.thread());
        created.push(new.created_at_ms);
    }
    let inserted = tx
        .execute(
            "INSERT INTO broadcasts (id, title, body, severity, thread_key, created_at_ms, resolved,
                 details, routes)
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                                  $6::BIGINT[], $7::BOOL[], $8::TEXT[], $9::TEXT[])
             ON CONFLICT (id) DO NOTHING",
            &[
                &ids, &titles, &bodies, &severities, &threads, &created, &resolved, &details,
                &routes,
            ],
        )
        .await?;
    if inserted as usize != batch.len() {
        // Which one: the one-by-one replay tells its caller precisely.
        let duplicate = if batch.len() == 1 {
            batch[0].id.clone()
        } else {
            "(in a batch)".into()
        };
        return Err(StoreError::DuplicateBroadcast(duplicate));
    }
    for new in batch {
        let Some(ingest) = &new.ingest_key else {
            continue;
        };
        tx.execute(
            "DELETE FROM ingest_keys WHERE caller = $1 AND key = $2 AND expires_at_ms < $3",
            &[&ingest.caller, &ingest.key, &new.created_at_ms],
        )
        .await?;
        let recorded = tx
            .execute(
                "INSERT INTO ingest_keys (caller, key, body_sha256, broadcast_id, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (caller, key) DO NOTHING",
                &[
                    &ingest.caller,
                    &ingest.key,
                    &ingest.body_sha256,
                    &new.id,
                    &ingest.expires_before_ms,
                ],
            )
            .await?;
        if recorded == 0 {
            return Err(StoreError::IngestKeyTaken(ingest.key.clone()));
        }
    }
    // Unfinished deliveries of the batch's threads, on its destinations.
    let mut busy: BTreeSet<(String, String)> = BTreeSet::new();
    let thread_keys: Vec<&str> = threads.iter().flatten().copied().collect();
    if !thread_keys.is_empty() {
        let destinations: Vec<&str> = batch
            .iter()
            .flat_map(|new| new.deliveries.iter().map(|d| d.destination.as_str()))
            .collect();
        for row in tx
            .query(
                concat!(
                    "SELECT DISTINCT thread_key, destination FROM deliveries
                     WHERE thread_key = ANY($1) AND destination = ANY($2) AND state NOT IN ",
                    final_states_sql!()
                ),
                &[&thread_keys, &destinations],
            )
            .await?
        {
            busy.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }
    // A hand-off skips the claim, so it must pass the shared guard too: only
    // to a destination that no node has paused or found unwell, and never
    // to a rate-limited one (its tokens are taken by claims).
    let wanted: Vec<&str> = batch
        .iter()
        .flat_map(|new| new.deliveries.iter())
        .filter(|d| d.lease_now)
        .filter(|d| {
            inner
                .isolation
                .read()
                .expect("isolation poisoned")
                .get(&d.destination)
                .is_some_and(|i| i.rate_per_sec.is_none())
        })
        .map(|d| d.destination.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut may_lease: BTreeSet<String> = BTreeSet::new();
    if !wanted.is_empty() {
        let now_ms = batch.iter().map(|new| new.created_at_ms).max().unwrap_or(0);
        for row in tx
            .query(
                "SELECT destination FROM destination_state
                 WHERE destination = ANY($1) AND paused_until_ms <= $2 AND held_until_ms <= $2
                     AND circuit = 'closed'",
                &[&wanted, &now_ms],
            )
            .await?
        {
            may_lease.insert(row.try_get(0)?);
        }
    }
    let mut columns = DeliveryColumns::default();
    let mut planned = Vec::with_capacity(batch.len());
    // Destinations with new due work, and whether any of it is a P1.
    let mut due_now: BTreeMap<&str, bool> = BTreeMap::new();
    for new in batch {
        let message = &new.message;
        let mut out = Vec::with_capacity(new.deliveries.len());
        for delivery in &new.deliveries {
            let in_thread = message
                .thread()
                .map(|thread| (thread.to_owned(), delivery.destination.clone()));
            // Behind an unfinished one, also one planned earlier in this batch.
            let behind = in_thread.as_ref().is_some_and(|key| busy.contains(key));
            if let Some(key) = in_thread {
                busy.insert(key);
            }
            let mut progress = DeliveryProgress::new(&delivery.policy, behind, new.created_at_ms);
            let lease_now = delivery.lease_now
                && progress.state == DeliveryState::Pending
                && may_lease.contains(&delivery.destination);
            if lease_now {
                progress = progress.leased(new.created_at_ms).map_err(corrupt)?;
            } else if progress.state == DeliveryState::Pending {
                *due_now.entry(&delivery.destination).or_default() |=
                    message.severity() == Severity::P1;
            }
            let key = delivery_idempotency_key(&new.id, &delivery.destination);
            columns.push(
                new,
                &delivery.destination,
                &key,
                &progress,
                lease_now,
                inner.lease_ms,
            );
            let leased = lease_now.then(|| ClaimedDelivery {
                delivery_id: 0,
                broadcast_id: new.id.clone(),
                destination: delivery.destination.clone(),
                idempotency_key: key.clone(),
                progress: progress.clone(),
                message: message.clone(),
                broadcast_created_at_ms: new.created_at_ms,
                last_error: None,
                lease_epoch: 1,
                thread_ref: None,
                remote_ref: None,
            });
            out.push(InsertedDelivery {
                destination: delivery.destination.clone(),
                idempotency_key: key,
                progress,
                leased,
            });
        }
        planned.push(out);
    }
    let c = &columns;
    let rows = tx
        .query(
            "INSERT INTO deliveries (broadcast_id, destination, idempotency_key, thread_key, priority,
                 state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, lease_owner,
                 lease_expires_at_ms, lease_epoch, created_at_ms, updated_at_ms)
             SELECT u.broadcast_id, u.destination, u.key, u.thread_key, u.priority, u.state,
                 u.attempts_made, u.attempts_max, u.due_at_ms, u.deadline_at_ms,
                 CASE WHEN u.lease_expires_at_ms IS NOT NULL THEN $1 END, u.lease_expires_at_ms,
                 CASE WHEN u.lease_expires_at_ms IS NOT NULL THEN 1 ELSE 0 END,
                 u.created_at_ms, u.created_at_ms
             FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::SMALLINT[], $7::TEXT[],
                         $8::INT[], $9::INT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[])
                  WITH ORDINALITY AS u(broadcast_id, destination, key, thread_key, priority, state,
                      attempts_made, attempts_max, due_at_ms, deadline_at_ms, lease_expires_at_ms,
                      created_at_ms, n)
             ORDER BY u.n
             RETURNING id, idempotency_key",
            &[
                &inner.node_id,
                &c.broadcast_id,
                &c.destination,
                &c.key,
                &c.thread_key,
                &c.priority,
                &c.state,
                &c.attempts_made,
                &c.attempts_max,
                &c.due_at_ms,
                &c.deadline_at_ms,
                &c.lease_expires_at_ms,
                &c.created_at_ms,
            ],
        )
        .await?;
    let ids_by_key: HashMap<String, i64> = rows
        .iter()
        .map(|row| Ok((row.try_get(1)?, row.try_get(0)?)))
        .collect::<Result<_, StoreError>>()?;
    for delivery in planned.iter_mut().flatten() {
        if let Some(leased) = delivery.leased.as_mut() {
            leased.delivery_id = *ids_by_key
                .get(&delivery.idempotency_key)
                .ok_or_else(|| corrupt("a leased delivery was not inserted"))?;
            if let Some(thread) = leased.message.thread() {
                leased.thread_ref = tx
                    .query_opt(
                        THREAD_REF_SQL,
                        &[&leased.destination, &thread, &leased.delivery_id],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
            }
        }
    }
    let wakes = due_now.into_iter().map(|(destination, urgent)| {
        if urgent {
            destination.to_owned()
        } else {
            format!("{destination}{ROUTINE_WAKE_SUFFIX}")
        }
    });
    notify(inner, tx, wakes).await?;
    Ok(planned)
}

/// Array columns of new deliveries, for one INSERT.
#[derive(Default)]
struct DeliveryColumns {
    broadcast_id: Vec<String>,
    destination: Vec<String>,
    key: Vec<String>,
    thread_key: Vec<Option<String>>,
    priority: Vec<i16>,
    state: Vec<&'static str>,
    attempts_made: Vec<i32>,
    attempts_max: Vec<i32>,
    due_at_ms: Vec<Option<i64>>,
    deadline_at_ms: Vec<Option<i64>>,
    lease_expires_at_ms: Vec<Option<i64>>,
    created_at_ms: Vec<i64>,
}

impl DeliveryColumns {
    fn push(
        &mut self,
        new: &NewBroadcast,
        destination: &str,
        key: &str,
        p: &DeliveryProgress,
        leased: bool,
        lease_ms: i64,
    ) {
        self.broadcast_id.push(new.id.clone());
        self.destination.push(destination.to_owned());
        self.key.push(key.to_owned());
        self.thread_key
            .push(new.message.thread().map(str::to_owned));
        self.priority.push(new.message.severity().rank() as i16);
        self.state.push(p.state.as_str());
        self.attempts_made.push(p.attempts_made as i32);
        self.attempts_max.push(p.attempts_max as i32);
        self.due_at_ms.push(p.due_at_ms);
        self.deadline_at_ms.push(p.deadline_at_ms);
        self.lease_expires_at_ms
            .push(leased.then_some(new.created_at_ms + lease_ms));
        self.created_at_ms.push(new.created_at_ms);
    }
}

async fn claim_due(
    inner: &Inner,
    tx: &mut Tx<'_>,
    destination: &str,
    limit: usize,
    rank_max: u8,
    now_ms: i64,
) -> Result<Claim, StoreError> {
    let isolation = inner
        .isolation
        .read()
        .expect("isolation poisoned")
        .get(destination)
        .copied()
        .unwrap_or_default();
    // The shared guard first: a paused, open or drained destination claims
    // nothing, on any node. The row lock serializes only claims of this
    // destination, and only while they decide.
    let mut guard = read_guard(tx, destination, true).await?;
    let before = guard.clone();
    let allowed = match guard.as_mut() {
        Some(guard) => match guard.admit(&isolation, limit, now_ms, inner.lease_ms) {
            Ok(allowed) => allowed,
            Err(until_ms) => {
                return Ok(Claim {
                    next_due_at_ms: Some(until_ms),
                    ..Claim::default()
                })
            }
        },
        None => limit,
    };
    let rows = tx
        .query(
            "SELECT d.id, d.broadcast_id, d.idempotency_key,
                    d.state, d.attempts_made, d.attempts_max, d.due_at_ms, d.deadline_at_ms,
                    d.possible_duplicate,
                    b.title, b.body, b.severity, b.thread_key, b.created_at_ms, d.last_error,
                    b.resolved, d.remote_ref,
                    CASE WHEN d.thread_key IS NOT NULL THEN
                        (SELECT r.remote_ref FROM deliveries r
                         WHERE r.destination = d.destination AND r.thread_key = d.thread_key
                           AND r.id < d.id AND r.remote_ref IS NOT NULL
                         ORDER BY r.id LIMIT 1)
                    END,
                    b.details
             FROM deliveries d JOIN broadcasts b ON b.id = d.broadcast_id
             WHERE d.destination = $1 AND d.priority <= $2 AND d.due_at_ms IS NOT NULL
               AND d.lease_owner IS NULL AND d.due_at_ms <= $3
             ORDER BY d.priority, d.due_at_ms
             LIMIT $4
             FOR UPDATE OF d SKIP LOCKED",
            &[&destination, &(rank_max as i16), &now_ms, &(allowed as i64)],
        )
        .await?;
    let mut handed_out = Vec::with_capacity(rows.len());
    let mut expired = Vec::new();
    for row in &rows {
        let mut delivery = ClaimedDelivery {
            delivery_id: row.try_get(0)?,
            broadcast_id: row.try_get(1)?,
            destination: destination.to_owned(),
            idempotency_key: row.try_get(2)?,
            progress: progress_from_row(row, 3)?,
            message: message_from_row(row, 9, 15, 18)?,
            broadcast_created_at_ms: row.try_get(13)?,
            last_error: row.try_get(14)?,
            lease_epoch: 0,
            remote_ref: row.try_get(16)?,
            thread_ref: row.try_get(17)?,
        };
        if delivery.progress.state != DeliveryState::Verifying {
            delivery.progress = delivery.progress.leased(now_ms).map_err(corrupt)?;
        }
        if delivery.progress.state.is_final() {
            expired.push(delivery);
        } else {
            handed_out.push(delivery);
        }
    }
    if !handed_out.is_empty() {
        let ids: Vec<i64> = handed_out.iter().map(|d| d.delivery_id).collect();
        let states: Vec<&str> = handed_out
            .iter()
            .map(|d| d.progress.state.as_str())
            .collect();
        let attempts: Vec<i32> = handed_out
            .iter()
            .map(|d| d.progress.attempts_made as i32)
            .collect();
        let dues: Vec<Option<i64>> = handed_out.iter().map(|d| d.progress.due_at_ms).collect();
        let epochs = tx
            .query(
                "UPDATE deliveries d SET state = u.state, attempts_made = u.attempts_made,
                     due_at_ms = u.due_at_ms, lease_owner = $5, lease_expires_at_ms = $6,
                     lease_epoch = d.lease_epoch + 1, updated_at_ms = $7
                 FROM unnest($1::BIGINT[], $2::TEXT[], $3::INT[], $4::BIGINT[])
                      AS u(id, state, attempts_made, due_at_ms)
                 WHERE d.id = u.id
                 RETURNING d.id, d.lease_epoch",
                &[
                    &ids,
                    &states,
                    &attempts,
                    &dues,
                    &inner.node_id,
                    &(now_ms + inner.lease_ms),
                    &now_ms,
                ],
            )
            .await?;
        for row in epochs {
            let id: i64 = row.try_get(0)?;
            let epoch: i64 = row.try_get(1)?;
            if let Some(d) = handed_out.iter_mut().find(|d| d.delivery_id == id) {
                d.lease_epoch = epoch;
            }
        }
    }
    for delivery in &expired {
        tx.execute(
            "UPDATE deliveries SET state = $2, due_at_ms = NULL, updated_at_ms = $3,
                 last_error = 'the delivery deadline passed before it could be sent'
             WHERE id = $1",
            &[
                &delivery.delivery_id,
                &delivery.progress.state.as_str(),
                &now_ms,
            ],
        )
        .await?;
    }
    if !expired.is_empty() {
        promote_after_final(
            inner,
            tx,
            expired.iter().map(|d| d.delivery_id).collect(),
            now_ms,
        )
        .await?;
    }
    if let (Some(mut guard), Some(before)) = (guard, before) {
        guard.charge(&isolation, handed_out.len());
        if guard != before {
            write_guard(tx, destination, &guard).await?;
        }
    }
    if handed_out.len() >= limit {
        // A full claim: the lane claims again at once, no need to know when.
        return Ok(Claim {
            deliveries: handed_out,
            expired,
            next_due_at_ms: None,
        });
    }
    let next_due_at_ms: Option<i64> = tx
        .query_one(concat!("SELECT ", earliest_due_sql!("$1")), &[&destination])
        .await?
        .try_get(0)?;
    Ok(Claim {
        deliveries: handed_out,
        expired,
        next_due_at_ms,
    })
}

/// The deliveries `finished` just became final: for each thread, the next
/// waiting delivery on that destination goes pending, if nothing else of
/// the thread is under way there. Returns the ids that were finished and
/// promoted something, and wakes their destinations.
async fn promote_after_final(
    inner: &Inner,
    tx: &mut Tx<'_>,
    finished: Vec<i64>,
    now_ms: i64,
) -> Result<BTreeSet<i64>, StoreError> {
    let threads: Vec<(i64, String, String)> = tx
        .query(
            "SELECT id, destination, thread_key FROM deliveries
             WHERE id = ANY($1) AND thread_key IS NOT NULL",
            &[&finished],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, StoreError>>()?;
    if threads.is_empty() {
        return Ok(BTreeSet::new());
    }
    lock_threads(tx, threads.iter().map(|(_, _, t)| t.clone())).await?;
    let mut promoted = BTreeSet::new();
    let mut woken = Vec::new();
    for (id, destination, thread) in threads {
        let next = tx
            .query_opt(
                concat!(
                    "SELECT n.id, n.state, n.attempts_made, n.attempts_max, n.due_at_ms,
                            n.deadline_at_ms, n.possible_duplicate
                     FROM deliveries n
                     WHERE n.destination = $1 AND n.thread_key = $2 AND n.state = 'waiting'
                       AND NOT EXISTS (SELECT 1 FROM deliveries o
                                       WHERE o.destination = $1 AND o.thread_key = $2
                                         AND o.state NOT IN ",
                    final_states_sql!(),
                    " AND o.state <> 'waiting')
                     ORDER BY n.id LIMIT 1"
                ),
                &[&destination, &thread],
            )
            .await?;
        let Some(row) = next else { continue };
        let next_id: i64 = row.try_get(0)?;
        let progress = progress_from_row(&row, 1)?
            .thread_ready(now_ms)
            .map_err(corrupt)?;
        tx.execute(
            "UPDATE deliveries SET state = $2, due_at_ms = $3, updated_at_ms = $4 WHERE id = $1",
            &[
                &next_id,
                &progress.state.as_str(),
                &progress.due_at_ms,
                &now_ms,
            ],
        )
        .await?;
        promoted.insert(id);
        woken.push(destination);
    }
    notify(inner, tx, woken).await?;
    Ok(promoted)
}

async fn update_batch(
    inner: &Inner,
    tx: &mut Tx<'_>,
    updates: &[&DeliveryUpdate],
) -> Result<Vec<UpdateResult>, StoreError> {
    // The attempt log first: every attempt happened, whatever its lease.
    let mut ids = Vec::with_capacity(updates.len());
    let mut numbers = Vec::with_capacity(updates.len());
    let mut kinds = Vec::with_capacity(updates.len());
    let mut started = Vec::with_capacity(updates.len());
    let mut finished = Vec::with_capacity(updates.len());
    let mut outcomes = Vec::with_capacity(updates.len());
    let mut statuses = Vec::with_capacity(updates.len());
    let mut excerpts = Vec::with_capacity(updates.len());
    let mut errors = Vec::with_capacity(updates.len());
    for u in updates {
        let a = &u.attempt;
        ids.push(u.delivery_id);
        numbers.push(a.number as i32);
        kinds.push(a.kind.as_str());
        started.push(a.started_at_ms);
        finished.push(a.finished_at_ms);
        outcomes.push(a.outcome.as_str());
        statuses.push(a.http_status.map(i32::from));
        excerpts.push(a.excerpt.as_deref());
        errors.push(a.error.as_deref());
    }
    tx.execute(
        "INSERT INTO attempts (delivery_id, number, kind, started_at_ms, finished_at_ms, outcome,
                               http_status, excerpt, error, node)
         SELECT u.*, $10 FROM unnest($1::BIGINT[], $2::INT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[],
                                   $6::TEXT[], $7::INT[], $8::TEXT[], $9::TEXT[]) AS u",
        &[
            &ids,
            &numbers,
            &kinds,
            &started,
            &finished,
            &outcomes,
            &statuses,
            &excerpts,
            &errors,
            &inner.node_id,
        ],
    )
    .await?;
    let mut expected = Vec::with_capacity(updates.len());
    let mut epochs = Vec::with_capacity(updates.len());
    let mut states = Vec::with_capacity(updates.len());
    let mut made = Vec::with_capacity(updates.len());
    let mut max = Vec::with_capacity(updates.len());
    let mut dues = Vec::with_capacity(updates.len());
    let mut deadlines = Vec::with_capacity(updates.len());
    let mut duplicates = Vec::with_capacity(updates.len());
    let mut last_errors = Vec::with_capacity(updates.len());
    let mut nows = Vec::with_capacity(updates.len());
    let mut remote_refs = Vec::with_capacity(updates.len());
    for u in updates {
        remote_refs.push(u.remote_ref.as_deref());
        let p = &u.progress;
        expected.push(u.expected_state.as_str());
        epochs.push(u.lease_epoch);
        states.push(p.state.as_str());
        made.push(p.attempts_made as i32);
        max.push(p.attempts_max as i32);
        dues.push(p.due_at_ms);
        deadlines.push(p.deadline_at_ms);
        duplicates.push(p.possible_duplicate);
        last_errors.push(u.last_error.as_deref());
        nows.push(u.now_ms);
    }
    // Fenced: the same owner and epoch, and the lease not yet expired. The
    // owner is compared with IS NOT DISTINCT FROM, which means `=` here ($13
    // is never null) but lets no index on leases serve it: with `=`, the
    // planner's guess for one owner made it scan every leased row through
    // `deliveries_leased` and filter them against the batch, instead of
    // looking the batch up by primary key.
    let applied_rows = tx
        .query(
            "UPDATE deliveries d SET state = u.state, attempts_made = u.made, attempts_max = u.max,
                 due_at_ms = u.due, deadline_at_ms = u.deadline, possible_duplicate = u.dup,
                 lease_owner = NULL, lease_expires_at_ms = NULL, last_error = u.last_error,
                 last_http_status = u.status, updated_at_ms = u.now,
                 remote_ref = coalesce(u.remote_ref, d.remote_ref)
             FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::INT[], $6::INT[],
                         $7::BIGINT[], $8::BIGINT[], $9::BOOL[], $10::TEXT[], $11::INT[], $12::BIGINT[],
                         $14::TEXT[])
                  AS u(id, expected, epoch, state, made, max, due, deadline, dup, last_error, status, now,
                       remote_ref)
             WHERE d.id = u.id AND d.state = u.expected AND d.lease_owner IS NOT DISTINCT FROM $13
               AND d.lease_epoch = u.epoch AND d.lease_expires_at_ms >= u.now
             RETURNING d.id, d.destination",
            &[
                &ids,
                &expected,
                &epochs,
                &states,
                &made,
                &max,
                &dues,
                &deadlines,
                &duplicates,
                &last_errors,
                &statuses,
                &nows,
                &inner.node_id,
                &remote_refs,
            ],
        )
        .await?;
    let mut applied: BTreeMap<i64, String> = BTreeMap::new();
    for row in &applied_rows {
        applied.insert(row.try_get(0)?, row.try_get(1)?);
    }
    // The shared guard of each destination that had outcomes, in name
    // order (a fixed lock order).
    let mut by_destination: BTreeMap<&str, Vec<&DeliveryUpdate>> = BTreeMap::new();
    for u in updates {
        if let Some(destination) = applied.get(&u.delivery_id) {
            by_destination.entry(destination).or_default().push(u);
        }
    }
    let healthy = |outcomes: &[&DeliveryUpdate]| {
        outcomes.iter().all(|u| {
            u.attempt.outcome_class() == Some(OutcomeClass::Success)
                && u.pause_destination_ms.is_none()
        })
    };
    let mut woken = Vec::new();
    if by_destination.is_empty() {
        // Every outcome was refused (a lost lease): no guard to touch.
    } else if by_destination.values().all(|outcomes| healthy(outcomes)) {
        // The common case: one statement for every destination.
        let names: Vec<&str> = by_destination.into_keys().collect();
        woken.extend(reset_guards(tx, &names).await?);
    } else {
        for (destination, outcomes) in by_destination {
            let isolation = inner
                .isolation
                .read()
                .expect("isolation poisoned")
                .get(destination)
                .copied()
                .unwrap_or_default();
            if healthy(&outcomes) {
                woken.extend(reset_guards(tx, &[destination]).await?);
                continue;
            }
            let Some(mut guard) = read_guard(tx, destination, true).await? else {
                continue;
            };
            let before = guard.clone();
            for u in &outcomes {
                let pause_until = u
                    .pause_destination_ms
                    .map(|ms| u.now_ms.saturating_add(ms as i64));
                guard.record(&isolation, u.attempt.outcome_class(), pause_until, u.now_ms);
            }
            if guard != before {
                if guard.circuit == "closed" && before.circuit != "closed" {
                    woken.push(destination.to_owned());
                }
                write_guard(tx, destination, &guard).await?;
            }
        }
    }
    let finals: Vec<i64> = updates
        .iter()
        .filter(|u| {
            u.in_thread && applied.contains_key(&u.delivery_id) && u.progress.state.is_final()
        })
        .map(|u| u.delivery_id)
        .collect();
    let promoted = if finals.is_empty() {
        BTreeSet::new()
    } else {
        promote_after_final(inner, tx, finals, updates[0].now_ms).await?
    };
    notify(inner, tx, woken).await?;
    Ok(updates
        .iter()
        .map(|u| {
            if applied.contains_key(&u.delivery_id) {
                UpdateResult::Applied {
                    promoted_next_in_thread: promoted.contains(&u.delivery_id),
                }
            } else {
                UpdateResult::Stale
            }
        })
        .collect())
}

/// Releases up to `TAKEOVER_BATCH_MAX` leases that expired (or are this
/// node's own, at start). Returns what it did and whether the batch was full.
async fn take_over_batch(
    inner: &Inner,
    tx: &mut Tx<'_>,
    now_ms: i64,
    own_too: bool,
) -> Result<(Recovery, bool), StoreError> {
    let rows = tx
        .query(
            "SELECT id, state, attempts_made, attempts_max, due_at_ms, deadline_at_ms,
                    possible_duplicate, updated_at_ms, lease_owner, destination
             FROM deliveries
             WHERE lease_owner IS NOT NULL AND (lease_expires_at_ms < $1 OR ($2 AND lease_owner = $3))
             ORDER BY lease_expires_at_ms
             LIMIT $4
             FOR UPDATE SKIP LOCKED",
            &[&now_ms, &own_too, &inner.node_id, &TAKEOVER_BATCH_MAX],
        )
        .await?;
    let full = rows.len() as i64 == TAKEOVER_BATCH_MAX;
    let mut recovery = Recovery::default();
    let (mut ids, mut states, mut dues, mut errors) = (vec![], vec![], vec![], vec![]);
    let (mut attempt_ids, mut numbers, mut started, mut notes) = (vec![], vec![], vec![], vec![]);
    let mut woken = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let progress = progress_from_row(row, 1)?;
        let leased_at_ms: i64 = row.try_get(7)?;
        let owner: String = row.try_get(8)?;
        woken.push(row.try_get::<_, String>(9)?);
        ids.push(id);
        if progress.state == DeliveryState::Sending {
            let next = progress.interrupted(now_ms).map_err(corrupt)?;
            states.push(next.state.as_str());
            dues.push(next.due_at_ms);
            errors.push(Some(format!(
                "interrupted: the lease of node {owner} lapsed mid-attempt"
            )));
            attempt_ids.push(id);
            numbers.push(progress.attempts_made as i32);
            started.push(leased_at_ms);
            notes.push(format!(
                "node {owner} stopped answering while this attempt was in flight (its lease expired); \
                 the outcome is unknown, so the destination is checked before any re-send"
            ));
            recovery.interrupted += 1;
        } else {
            states.push(progress.state.as_str());
            dues.push(progress.due_at_ms.or(Some(now_ms)));
            errors.push(None);
            recovery.released += 1;
        }
    }
    if ids.is_empty() {
        return Ok((recovery, false));
    }
    tx.execute(
        "INSERT INTO attempts (delivery_id, number, kind, started_at_ms, finished_at_ms, outcome,
                               error, node)
         SELECT u.id, u.number, 'send', u.started, $4, 'interrupted', u.note, $5
         FROM unnest($1::BIGINT[], $2::INT[], $3::BIGINT[], $6::TEXT[]) AS u(id, number, started, note)",
        &[&attempt_ids, &numbers, &started, &now_ms, &inner.node_id, &notes],
    )
    .await?;
    tx.execute(
        "UPDATE deliveries d SET state = u.state, due_at_ms = u.due, lease_owner = NULL,
             lease_expires_at_ms = NULL, updated_at_ms = $5,
             last_error = coalesce(u.error, d.last_error)
         FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS u(id, state, due, error)
         WHERE d.id = u.id",
        &[&ids, &states, &dues, &errors, &now_ms],
    )
    .await?;
    notify(inner, tx, woken).await?;
    Ok((recovery, full))
}

async fn operate(
    inner: &Inner,
    tx: &mut Tx<'_>,
    broadcast_id: &str,
    action: OperatorAction,
    destinations: &[String],
    policies: &[(String, RetryPolicy)],
    now_ms: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let head = tx
        .query_opt(
            "SELECT thread_key FROM broadcasts WHERE id = $1",
            &[&broadcast_id],
        )
        .await?;
    let Some(head) = head else { return Ok(None) };
    let thread: Option<String> = head.try_get(0)?;
    // Rows first, then the thread: the order outcome batches take them in.
    let rows = tx
        .query(
            "SELECT id, destination, state, attempts_made, attempts_max, due_at_ms, deadline_at_ms,
                    possible_duplicate, lease_owner IS NOT NULL
             FROM deliveries WHERE broadcast_id = $1 ORDER BY id FOR UPDATE",
            &[&broadcast_id],
        )
        .await?;
    if let Some(thread) = &thread {
        lock_threads(tx, [thread.clone()]).await?;
    }
    let mut changed = Vec::new();
    let mut finished = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let destination: String = row.try_get(1)?;
        if !destinations.is_empty() && !destinations.contains(&destination) {
            continue;
        }
        let progress = progress_from_row(row, 2)?;
        let leased: bool = row.try_get(8)?;
        let policy = policies
            .iter()
            .find(|(name, _)| *name == destination)
            .map(|(_, p)| *p)
            .unwrap_or_default();
        let next = match action {
            OperatorAction::Retry => match progress.operator_retry(&policy, now_ms) {
                Ok(mut next) => {
                    if let Some(thread) = &thread {
                        let busy = tx
                            .query_opt(
                                concat!(
                                    "SELECT 1 FROM deliveries WHERE destination = $1 AND thread_key = $2
                                       AND id <> $3 AND state <> 'waiting' AND state NOT IN ",
                                    final_states_sql!(),
                                    " LIMIT 1"
                                ),
                                &[&destination, thread, &id],
                            )
                            .await?
                            .is_some();
                        if busy {
                            next.state = DeliveryState::Waiting;
                            next.due_at_ms = None;
                        }
                    }
                    Ok(next)
                }
                Err(e) => Err(e),
            },
            // An attempt in flight is left to finish (see the SQLite store).
            OperatorAction::Cancel if leased => continue,
            OperatorAction::Cancel => progress.cancelled(),
        };
        let Ok(next) = next else { continue };
        tx.execute(
            "UPDATE deliveries SET state = $2, attempts_max = $3, due_at_ms = $4, deadline_at_ms = $5,
                 updated_at_ms = $6,
                 last_error = CASE WHEN $2 = 'cancelled' THEN 'cancelled by an operator' ELSE last_error END
             WHERE id = $1",
            &[
                &id,
                &next.state.as_str(),
                &(next.attempts_max as i32),
                &next.due_at_ms,
                &next.deadline_at_ms,
                &now_ms,
            ],
        )
        .await?;
        if next.state.is_final() {
            finished.push(id);
        }
        changed.push(destination);
    }
    if !finished.is_empty() {
        promote_after_final(inner, tx, finished, now_ms).await?;
    }
    notify(inner, tx, changed.clone()).await?;
    Ok(Some(changed))
}

async fn list_broadcasts(
    client: &impl GenericClient,
    filter: &BroadcastFilter,
) -> Result<Vec<BroadcastView>, StoreError> {
    use crate::domain::BroadcastStatus;
    let mut sql = String::from("SELECT b.id FROM broadcasts b WHERE TRUE");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(before) = &filter.before_id {
        args.push(Box::new(before.clone()));
        sql.push_str(&format!(" AND b.id < ${}", args.len()));
    }
    if let Some(since) = filter.created_since_ms {
        args.push(Box::new(since));
        sql.push_str(&format!(" AND b.created_at_ms >= ${}", args.len()));
    }
    if let Some(thread) = &filter.thread {
        args.push(Box::new(thread.clone()));
        sql.push_str(&format!(" AND b.thread_key = ${}", args.len()));
    }
    if let Some(destination) = &filter.destination {
        args.push(Box::new(destination.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.destination = ${})",
            args.len()
        ));
    }
    if let Some(state) = filter.delivery_state {
        args.push(Box::new(state.as_str().to_owned()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state = ${})",
            args.len()
        ));
    }
    let unfinished = concat!(
        "EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state NOT IN ",
        final_states_sql!(),
        ")"
    );
    match filter.status {
        None => {}
        Some(BroadcastStatus::Delivering) => sql.push_str(&format!(" AND {unfinished}")),
        Some(BroadcastStatus::Converged) => sql.push_str(
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id AND d.state <> 'confirmed')",
        ),
        Some(BroadcastStatus::Partial) => sql.push_str(&format!(
            " AND NOT {unfinished} AND EXISTS (SELECT 1 FROM deliveries d WHERE d.broadcast_id = b.id
                AND d.state IN ('failed','dead','cancelled'))"
        )),
    }
    args.push(Box::new(filter.limit as i64));
    sql.push_str(&format!(" ORDER BY b.id DESC LIMIT ${}", args.len()));
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let ids: Vec<String> = client
        .query(&sql, &params)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(view) = read_broadcast(client, &id, false).await? {
            views.push(view);
        }
    }
    Ok(views)
}

async fn read_broadcast(
    client: &impl GenericClient,
    id: &str,
    with_attempts: bool,
) -> Result<Option<BroadcastView>, StoreError> {
    let Some(head) = client
        .query_opt(
            "SELECT title, body, severity, thread_key, created_at_ms, resolved, details, routes
             FROM broadcasts WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let message = message_from_row(&head, 0, 5, 6)?;
    let routes = super::routes_from_json(head.try_get::<_, Option<String>>(7)?.as_deref())?;
    let created_at_ms: i64 = head.try_get(4)?;
    let rows = client
        .query(
            "SELECT id, destination, idempotency_key,
                    state, attempts_made, attempts_max, due_at_ms, deadline_at_ms, possible_duplicate,
                    last_error, last_http_status, updated_at_ms, remote_ref
             FROM deliveries WHERE broadcast_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.try_get::<_, i64>(0)?);
        deliveries.push(DeliveryView {
            destination: row.try_get(1)?,
            idempotency_key: row.try_get(2)?,
            progress: progress_from_row(row, 3)?,
            last_error: row.try_get(9)?,
            last_http_status: row
                .try_get::<_, Option<i32>>(10)?
                .map(|s| s.clamp(0, u16::MAX as i32) as u16),
            updated_at_ms: row.try_get(11)?,
            remote_ref: row.try_get(12)?,
            attempts: Vec::new(),
        });
    }
    if with_attempts && !ids.is_empty() {
        let attempts = client
            .query(
                "SELECT delivery_id, number, kind, started_at_ms, finished_at_ms, outcome, http_status,
                        excerpt, error
                 FROM attempts WHERE delivery_id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await?;
        for row in &attempts {
            let delivery_id: i64 = row.try_get(0)?;
            let Some(index) = ids.iter().position(|id| *id == delivery_id) else {
                continue;
            };
            let kind: String = row.try_get(2)?;
            deliveries[index].attempts.push(AttemptRecord {
                number: row.try_get::<_, i32>(1)? as u32,
                kind: if kind == "verify" {
                    AttemptKind::Verify
                } else {
                    AttemptKind::Send
                },
                started_at_ms: row.try_get(3)?,
                finished_at_ms: row.try_get(4)?,
                outcome: row.try_get(5)?,
                http_status: row
                    .try_get::<_, Option<i32>>(6)?
                    .map(|s| s.clamp(0, u16::MAX as i32) as u16),
                excerpt: row.try_get(7)?,
                error: row.try_get(8)?,
            });
        }
    }
    Ok(Some(BroadcastView {
        id: id.to_owned(),
        message,
        created_at_ms,
        routes,
        deliveries,
    }))
}

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

/// A PostgreSQL error as the log and error texts show it: the server's
/// SQLSTATE code and message when the server answered (tokio-postgres's
/// own text is only "db error"), else the client's text and its cause
/// ("error connecting to server: Connection refused"). Neither holds the
/// connection's password: the URL is never part of an error.
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
