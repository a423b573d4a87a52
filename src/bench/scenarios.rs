//! The scenarios: a burst, a steady rate, a backlog drained after an outage,
//! and a soak under retention; each starts a fresh herald (one node, or
//! several on one PostgreSQL schema) and returns its report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::cpu::CpuMeter;
use super::database::{
    attempts_by_node, bench_postgres, delivery_times, fresh_postgres_schema, wait_all_final,
    wal_size_mb, BenchDb, DatabaseSize, DeliveryTimes,
};
use super::load::{baseline, submit, Load};
use super::processes::{
    free_addr, process_usage, set_faults, spawn_server, wait_healthy, write_config, Process,
};
use super::report::{confirmed_rate, summarise, NodeAttempts, RunReport};
use super::{BenchOptions, SOAK_SAMPLE_EVERY_SECS};
use crate::clock::now_ms;
use crate::mock::Faults;

pub(super) struct Bench {
    pub(super) options: BenchOptions,
    pub(super) workdir: PathBuf,
    pub(super) http: reqwest::Client,
    pub(super) mock: SocketAddr,
    pub(super) _mock_process: Process,
    pub(super) runs: usize,
    /// The current run's PostgreSQL schema, to drop when the run is done.
    pub(super) schema: Option<String>,
    /// The next run's server deletes finished broadcasts after this long.
    pub(super) retention_secs: Option<u64>,
}

/// One `herald serve` of a run.
pub(super) struct Node {
    process: Process,
    addr: SocketAddr,
    log: PathBuf,
    /// Its `server.node_id` on PostgreSQL, where its sessions'
    /// `application_name` is "herald <id>"; None on SQLite.
    id: Option<String>,
}

/// A run's herald: one node, or several on one PostgreSQL schema.
pub(super) struct Herald {
    nodes: Vec<Node>,
    database: PathBuf,
    run: String,
}

impl Herald {
    /// Where the nodes listen, in node order.
    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.addr).collect()
    }

    fn logs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|node| node.log.clone()).collect()
    }

    /// The highest peak resident memory of the nodes, MB.
    fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let mut peak_mb: f64 = 0.0;
        for node in &self.nodes {
            peak_mb = peak_mb.max(process_usage(node.process.pid())?.0);
        }
        Ok(peak_mb)
    }

    /// Stops every node; returns the run's database, to read.
    fn stop(self) -> PathBuf {
        drop(self.nodes);
        self.database
    }
}

/// What every report takes from a run once its nodes have stopped.
struct RunEnd {
    peak_rss_mb: f64,
    wal_mb: Option<f64>,
    attempts_by_node: Vec<NodeAttempts>,
}

impl RunEnd {
    fn fill(self, report: &mut RunReport) {
        report.peak_rss_mb = self.peak_rss_mb;
        report.wal_mb = self.wal_mb;
        report.attempts_by_node = self.attempts_by_node;
    }
}

impl Bench {
    /// Stops the run's nodes, reads the deliveries accepted since
    /// `since_ms` and the attempts per node, and drops the run's schema.
    async fn end_run(
        &mut self,
        herald: Herald,
        since_ms: i64,
    ) -> anyhow::Result<(Vec<DeliveryTimes>, RunEnd)> {
        let peak_rss_mb = herald.peak_rss_mb()?;
        let wal_mb = wal_size_mb(&herald.database);
        let database = herald.stop();
        let times = delivery_times(&database, since_ms).await?;
        let attempts_by_node = attempts_by_node(&database).await?;
        self.drop_run_schema().await?;
        let end = RunEnd {
            peak_rss_mb,
            wal_mb,
            attempts_by_node,
        };
        Ok((times, end))
    }

    /// Starts a fresh herald for one run: its own database, and for each of
    /// `options.nodes` nodes its own config, node id, port and log. Returns
    /// once every node is healthy.
    pub(super) async fn start_herald(
        &mut self,
        names: &[String],
        concurrency: u32,
    ) -> anyhow::Result<Herald> {
        self.runs += 1;
        let run = format!("run{}", self.runs);
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
        let retention_secs = self.retention_secs.take();
        let count = self.options.nodes.get();
        let mut nodes = Vec::with_capacity(count);
        for n in 1..=count {
            // One node keeps the run's plain file names.
            let stem = if count == 1 {
                run.clone()
            } else {
                format!("{run}-n{n}")
            };
            // On PostgreSQL a node is named after its schema, so its
            // sessions (`application_name` "herald <node>") can be told
            // from others', and its attempts from its peers'.
            let id = self.schema.as_ref().map(|schema| format!("{schema}-n{n}"));
            let config = self.workdir.join(format!("{stem}.toml"));
            write_config(
                &config,
                self.mock,
                &run,
                names,
                concurrency,
                retention_secs,
                id.as_deref(),
            )?;
            let addr = free_addr()?;
            let log = self.workdir.join(format!("{stem}.log"));
            let process = spawn_server(&config, &database, addr, &log)?;
            nodes.push(Node {
                process,
                addr,
                log,
                id,
            });
        }
        for node in &nodes {
            wait_healthy(&self.http, node.addr).await?;
        }
        Ok(Herald {
            nodes,
            database,
            run,
        })
    }

    /// Starts measuring the CPU of every node of `herald` and, on
    /// PostgreSQL, of their sessions' backends.
    pub(super) async fn cpu_meter(&self, herald: &Herald) -> anyhow::Result<CpuMeter> {
        let pids: Vec<u32> = herald.nodes.iter().map(|n| n.process.pid()).collect();
        let postgres = self.options.postgres.as_deref().map(|url| {
            let application_names = herald
                .nodes
                .iter()
                .filter_map(|n| n.id.as_ref())
                .map(|id| format!("herald {id}"))
                .collect();
            (url, application_names)
        });
        CpuMeter::start(&pids, postgres).await
    }

    /// Drops the finished run's PostgreSQL schema, unless kept: a run leaves
    /// up to a million rows behind, and their vacuum would load the next run.
    pub(super) async fn drop_run_schema(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn names(&self, count: usize) -> Vec<String> {
        (0..count).map(|i| format!("d{i}")).collect()
    }

    /// Runs `count` broadcasts to every destination and reports.
    pub(super) async fn load_run(
        &mut self,
        scenario: &str,
        count: usize,
        per_sec: Option<f64>,
        faults: &[(usize, Faults)],
    ) -> anyhow::Result<RunReport> {
        let names = self.names(self.options.destinations);
        let herald = self.start_herald(&names, self.options.concurrency).await?;
        for (index, f) in faults {
            set_faults(
                &self.http,
                self.mock,
                &format!("/{}/{}", herald.run, names[*index]),
                f.clone(),
            )
            .await?;
        }
        let cpu = self.cpu_meter(&herald).await?;
        let started_ms = now_ms();
        let submit_secs = submit(
            &self.http,
            &herald.addrs(),
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
        wait_all_final(&herald.database, count * names.len(), &herald.logs()).await?;
        let cpu = cpu.stop().await?;
        let (times, end) = self.end_run(herald, started_ms).await?;
        let mut report = summarise(scenario, count, names.len(), &times, started_ms);
        end.fill(&mut report);
        report.accepted_per_sec = count as f64 / submit_secs;
        report.set_cpu(&cpu, times.len());
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

    pub(super) async fn baseline(&self, requests: usize) -> anyhow::Result<f64> {
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

    pub(super) async fn backlog(&mut self) -> anyhow::Result<RunReport> {
        // Slow destinations (50 ms each answer, 4 in flight) keep the backlog
        // pending while the P1s are sent to one of them.
        let names = self.names(16);
        let herald = self.start_herald(&names, 4).await?;
        let addrs = herald.addrs();
        for name in &names {
            set_faults(
                &self.http,
                self.mock,
                &format!("/{}/{name}", herald.run),
                Faults {
                    latency_ms: 50,
                    ..Faults::default()
                },
            )
            .await?;
        }
        let broadcasts = self.options.backlog_deliveries.div_ceil(names.len());
        let cpu = self.cpu_meter(&herald).await?;
        let submit_secs = submit(
            &self.http,
            &addrs,
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
        let pending = BenchDb::open(&herald.database).await?.unfinished().await?;
        let p1_since_ms = now_ms();
        const P1_COUNT: usize = 20;
        for i in 0..P1_COUNT {
            // The P1s go to the nodes in turn, like the rest of the load.
            let node = i % addrs.len();
            submit(
                &self.http,
                &addrs[node..=node],
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
        let cpu = cpu.stop().await?;
        let (p1_times, end) = self.end_run(herald, p1_since_ms).await?;
        let mut report = summarise("backlog", P1_COUNT, 1, &p1_times, p1_since_ms);
        end.fill(&mut report);
        report.accepted_per_sec = broadcasts as f64 / submit_secs;
        report.pending_at_p1 = Some(pending);
        report.set_cpu(&cpu, broadcasts * names.len());
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
    pub(super) async fn soak(&mut self) -> anyhow::Result<RunReport> {
        let names = self.names(self.options.destinations);
        self.retention_secs = Some(self.options.soak_retention_secs);
        let herald = self.start_herald(&names, self.options.concurrency).await?;
        let addrs = herald.addrs();
        // Any node reads the stored broadcasts from the shared database.
        let metrics_addr = addrs[0];
        let rate = self.options.soak_rate.max(0.1);
        let count = ((rate * self.options.soak_secs as f64) as usize).max(1);
        let cpu = self.cpu_meter(&herald).await?;
        let started = Instant::now();
        let started_ms = now_ms();
        let size = DatabaseSize::open(&herald.database, self.schema.as_deref()).await?;
        let soak_secs = self.options.soak_secs;
        let http = self.http.clone();
        let sampling = async {
            let mut samples = Vec::new();
            let mut at = 0;
            while at + SOAK_SAMPLE_EVERY_SECS <= soak_secs {
                at += SOAK_SAMPLE_EVERY_SECS;
                tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
                samples.push(size.sample(&http, metrics_addr, at).await?);
            }
            Ok::<_, anyhow::Error>(samples)
        };
        let load = submit(
            &self.http,
            &addrs,
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
            samples.push(size.sample(&self.http, metrics_addr, end_secs).await?);
        }
        let cpu = cpu.stop().await?;
        let (times, end) = self.end_run(herald, started_ms).await?;
        // Retention deleted the older broadcasts: latencies, states and
        // the confirmed rate are those of the ones still stored.
        let stored_since_ms = times
            .iter()
            .map(|t| t.accepted_ms)
            .min()
            .unwrap_or(started_ms);
        let mut report = summarise("soak", count, names.len(), &times, stored_since_ms);
        end.fill(&mut report);
        report.deliveries = count * names.len();
        report.accepted_per_sec = count as f64 / submit_secs;
        report.set_cpu(&cpu, count * names.len());
        report.database_size = samples;
        report.vacuumed_by_bench = matches!(size, DatabaseSize::Postgres { vacuum: true, .. });
        Ok(report)
    }
}
