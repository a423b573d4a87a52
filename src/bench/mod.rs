//! `herald bench`: measures herald the way a user would. A mock destination
//! server runs in its own process, `herald serve` in another with its real
//! SQLite store (fsync on every commit), or several `herald serve` nodes on
//! one PostgreSQL schema, and this process submits the load through the real
//! HTTP API. In the same run, a baseline sends the same
//! number of requests straight to the same mock with the same client library
//! and concurrency and no store, so herald's rate can be read as a fraction
//! of what the machine allows.

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::clock::now_ms;
use crate::connector::http_client_builder;
use crate::mock::Faults;
use processes::spawn_mock;
use report::print_report;
use scenarios::Bench;

mod cpu;
mod database;
mod load;
mod processes;
mod report;
mod scenarios;

pub use report::{NodeAttempts, Percentiles, RunReport, SizeSample};

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
    /// A fixed low rate (`steady_rate`, 200 broadcasts/s by default): what
    /// a delivery costs when herald is not busy, and its latency.
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
    /// Broadcasts per second in `steady`.
    pub steady_rate: f64,
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
    /// `herald serve` processes per run, all on the run's database; more
    /// than one needs `postgres` (a SQLite file belongs to one node).
    pub nodes: NonZeroUsize,
}

pub async fn run(
    options: BenchOptions,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<Vec<RunReport>> {
    if options.nodes.get() > 1 && options.postgres.is_none() {
        bail!(
            "--nodes {} needs --database postgres://...: several nodes share one database, \
             and only PostgreSQL can be shared (a SQLite file belongs to one node)",
            options.nodes
        );
    }
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
            match (&options.postgres, options.nodes.get()) {
                (Some(_), 1) => "PostgreSQL synchronous_commit=on".to_owned(),
                (Some(_), nodes) => format!(
                    "{nodes} nodes on one PostgreSQL, synchronous_commit=on, submissions spread over them in turn"
                ),
                (None, _) => "SQLite synchronous=FULL".to_owned(),
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
            Scenario::Steady | Scenario::Backlog | Scenario::Soak => false,
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
            report.nodes = options.nodes.get();
            if !json {
                print_report(out, &report)?;
            }
            burst = Some(report.clone());
            if *scenario == Scenario::Burst {
                reports.push(report);
                continue;
            }
        }
        let mut report = match scenario {
            Scenario::Burst => continue,
            Scenario::Steady => {
                let rate = options.steady_rate.max(1.0);
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
        report.nodes = options.nodes.get();
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
