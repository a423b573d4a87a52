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
use tokio_postgres::{AsyncMessage, Client, GenericClient, Row, Statement, Transaction};

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
/// Writers per node, each committing new broadcasts and outcomes (in a
/// burst on PostgreSQL three beat two and four, see ARCHITECTURE.md).
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
/// How long a small outcome batch waits for more when no other writer is
/// committing (see `writer::next_batch`).
const OUTCOME_QUIET_GATHER_US: u64 = 10_000;
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
// The files below use the SQL macros above, so they are declared after them.
mod claims;
mod guard;
mod impl_store;
mod insert;
mod listen;
mod objectives;
mod operator;
mod outcomes;
mod pool;
mod reads;
mod schema;
mod takeover;
mod threads;
mod tls;
mod writer;

use claims::*;
use guard::*;
use insert::*;
use listen::*;
use objectives::*;
use operator::*;
use outcomes::*;
use pool::*;
use reads::*;
use takeover::*;
use threads::*;
use tls::ConnectionSettings;
use writer::*;

pub use schema::migrate;
use schema::*;

/// How a node joins the cluster.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user@host:port/db`, with `?options=-csearch_path%3D...`
    /// to use a schema other than `public`, and `sslmode` and
    /// `sslrootcert` as libpq reads them (see `tls`).
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
    config: ConnectionSettings,
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

/// A transaction whose statements are prepared once per connection.
struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a mut Statements,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

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
        tracing::debug!(sslmode = config.mode().as_str(), "connected to PostgreSQL");
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
        // Several writers, so one batch's round trips and commit do not
        // hold up the next; they coordinate in the database exactly as the
        // writers of several nodes do.
        let queues = Arc::new(Queues {
            receivers: tokio::sync::Mutex::new((insert_queue, queue)),
            committing: AtomicUsize::new(0),
        });
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            tasks.push(tokio::spawn(run_writer(weak.clone(), queues.clone())));
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

/// The writers' queues (new broadcasts, outcomes), taken from by one
/// writer at a time, and how many writers are committing a batch now.
struct Queues {
    receivers: tokio::sync::Mutex<(mpsc::Receiver<InsertOp>, mpsc::Receiver<WriteOp>)>,
    committing: AtomicUsize,
}

/// A writer's turn at committing; the count goes down when it ends.
struct Committing<'a>(&'a AtomicUsize);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A PostgreSQL error as the log and error texts show it: the server's
/// SQLSTATE code and message when the server answered (tokio-postgres's
/// own text is only "db error"), else the client's text and its cause
/// ("error connecting to server: Connection refused"). Neither holds the
/// connection's password: the URL is never part of an error.
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        // pg_hba.conf has only `hostssl` lines for this client.
        let tls_only = db.code()
            == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption");
        if tls_only {
            return text
                + "; the server accepts only TLS connections: set sslmode=verify-full (with sslrootcert) or sslmode=require in the database URL";
        }
        return text;
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
