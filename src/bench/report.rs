//! What a run measured (`RunReport`), how it is summed up from the
//! deliveries' times, and how it is printed.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::cpu::CpuUsed;
use super::database::DeliveryTimes;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

impl Percentiles {
    pub(super) fn of(mut values: Vec<f64>) -> Percentiles {
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
    /// `herald serve` processes that ran, all on one database.
    pub nodes: usize,
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
    /// The highest peak resident memory of the run's nodes.
    pub peak_rss_mb: f64,
    /// The SQLite write-ahead log's size when the run ended (it must stay
    /// bounded under sustained writes).
    pub wal_mb: Option<f64>,
    /// herald's CPU (user and system, every node together) from the start
    /// of the load to the last delivery's final state, per 1,000
    /// deliveries.
    pub cpu_secs_per_1000_deliveries: f64,
    /// PostgreSQL: the CPU of the backends serving every node's sessions
    /// over the same span, per 1,000 deliveries (None on SQLite, or when
    /// the database runs on another host).
    pub postgres_backends_cpu_secs_per_1000_deliveries: Option<f64>,
    /// herald and its PostgreSQL backends together, per 1,000 deliveries.
    pub with_backends_cpu_secs_per_1000_deliveries: Option<f64>,
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
    /// PostgreSQL: the attempts each node made in the run, read from the
    /// `attempts` table before its schema is dropped (deliveries carry no
    /// node; in a soak, those of the broadcasts retention had not yet
    /// deleted); empty on SQLite.
    pub attempts_by_node: Vec<NodeAttempts>,
}

/// What one node did in a run, from its attempt rows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeAttempts {
    /// The node's id (`server.node_id`): the run's schema and `-n1`, `-n2`...
    pub node: String,
    pub attempts: u64,
    /// Attempts that succeeded: the deliveries this node confirmed.
    pub confirmed: u64,
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

impl RunReport {
    /// Sets the CPU figures from what `deliveries` deliveries used.
    pub(super) fn set_cpu(&mut self, used: &CpuUsed, deliveries: usize) {
        let thousands = deliveries.max(1) as f64 / 1000.0;
        self.cpu_secs_per_1000_deliveries = used.herald_secs / thousands;
        self.postgres_backends_cpu_secs_per_1000_deliveries =
            used.backends_secs.map(|secs| secs / thousands);
        self.with_backends_cpu_secs_per_1000_deliveries = used
            .backends_secs
            .map(|secs| (used.herald_secs + secs) / thousands);
    }
}

pub(super) fn confirmed_rate(
    times: &[DeliveryTimes],
    started_ms: i64,
    include: impl Fn(&str) -> bool,
) -> f64 {
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

pub(super) fn summarise(
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

pub(super) fn print_report(out: &mut impl Write, r: &RunReport) -> std::io::Result<()> {
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
    writeln!(
        out,
        "  {:<34} {:.1} MB",
        if r.nodes > 1 {
            "largest node's peak RSS"
        } else {
            "server peak RSS"
        },
        r.peak_rss_mb
    )?;
    writeln!(
        out,
        "  {:<34} {:.2} s",
        if r.nodes > 1 {
            "servers' CPU per 1,000 deliveries"
        } else {
            "server CPU per 1,000 deliveries"
        },
        r.cpu_secs_per_1000_deliveries
    )?;
    if let (Some(backends), Some(both)) = (
        r.postgres_backends_cpu_secs_per_1000_deliveries,
        r.with_backends_cpu_secs_per_1000_deliveries,
    ) {
        let (label, whose) = if r.nodes > 1 {
            ("servers + backends per 1,000", "their")
        } else {
            ("server + backends per 1,000", "its")
        };
        writeln!(
            out,
            "  {label:<34} {both:.2} s  ({whose} PostgreSQL backends {backends:.2} s)"
        )?;
    }
    writeln!(out, "  {:<34} {:?}", "final states", r.final_states)?;
    if r.nodes > 1 {
        writeln!(out, "  {:<34} {}", "nodes on one PostgreSQL", r.nodes)?;
        for node in &r.attempts_by_node {
            writeln!(
                out,
                "  {:<34} {} attempts, {} confirmed",
                format!("node {}", node.node),
                node.attempts,
                node.confirmed
            )?;
        }
    }
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
