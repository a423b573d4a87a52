//! The CPU a run cost: herald's processes (every node of the run), and on
//! PostgreSQL the server backends of their sessions (found in
//! `pg_stat_activity` by each node's `application_name`), each read from
//! `/proc/<pid>/stat` before the load and after the last delivery is final.

use std::collections::HashMap;

use anyhow::Context;

use super::database::bench_postgres;
use super::processes::cpu_secs;

/// CPU seconds read at the start of a run, to subtract at its end.
pub(super) struct CpuMeter {
    /// Each node's process id and its CPU seconds at the start.
    servers_before_secs: Vec<(u32, f64)>,
    backends: Option<Backends>,
}

/// herald's sessions on the bench's PostgreSQL.
struct Backends {
    client: tokio_postgres::Client,
    /// One per node: "herald <node id>".
    application_names: Vec<String>,
    /// CPU seconds by backend pid at the start.
    before_secs: HashMap<u32, f64>,
}

/// What a run used between `CpuMeter::start` and `CpuMeter::stop`.
#[derive(Clone, Debug, Default)]
pub(super) struct CpuUsed {
    pub(super) herald_secs: f64,
    /// herald's PostgreSQL backends together; None on SQLite, or when the
    /// database's processes are not on this machine.
    pub(super) backends_secs: Option<f64>,
}

impl CpuMeter {
    /// `server_pids`: the run's `herald serve` processes; `postgres`: the
    /// bench's database URL and the `application_name` each node's
    /// sessions use in this run.
    pub(super) async fn start(
        server_pids: &[u32],
        postgres: Option<(&str, Vec<String>)>,
    ) -> anyhow::Result<CpuMeter> {
        let backends = match postgres {
            Some((url, application_names)) => {
                let client = bench_postgres(url).await?;
                let before_secs = backend_cpu_secs(&client, &application_names).await?;
                Some(Backends {
                    client,
                    application_names,
                    before_secs,
                })
            }
            None => None,
        };
        let servers_before_secs = server_pids
            .iter()
            .map(|&pid| Ok((pid, herald_cpu_secs(pid)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(CpuMeter {
            servers_before_secs,
            backends,
        })
    }

    /// Reads again, while the server still runs. A backend that opened
    /// during the run counts from zero (its start is part of the run's
    /// cost); one that closed during it is not counted (its CPU is gone
    /// with it; herald's pool keeps its connections).
    pub(super) async fn stop(self) -> anyhow::Result<CpuUsed> {
        let mut herald_secs = 0.0;
        for (pid, before_secs) in &self.servers_before_secs {
            herald_secs += herald_cpu_secs(*pid)? - before_secs;
        }
        let backends_secs = match &self.backends {
            Some(backends) => {
                let after = backend_cpu_secs(&backends.client, &backends.application_names).await?;
                if after.is_empty() {
                    None
                } else {
                    Some(
                        after
                            .iter()
                            .map(|(pid, secs)| {
                                secs - backends.before_secs.get(pid).copied().unwrap_or(0.0)
                            })
                            .sum(),
                    )
                }
            }
            None => None,
        };
        Ok(CpuUsed {
            herald_secs,
            backends_secs,
        })
    }
}

fn herald_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    cpu_secs(pid).with_context(|| format!("cannot read the CPU time of herald (pid {pid})"))
}

/// CPU seconds of each backend serving one of `application_names`, by
/// pid. Empty when none of them is a `postgres` process on this machine (a
/// database on another host).
async fn backend_cpu_secs(
    client: &tokio_postgres::Client,
    application_names: &[String],
) -> anyhow::Result<HashMap<u32, f64>> {
    let rows = client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1)",
            &[&application_names],
        )
        .await
        .context("cannot list herald's sessions in pg_stat_activity")?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let pid = u32::try_from(row.get::<_, i32>(0)).ok()?;
            is_postgres_process(pid).then_some(())?;
            Some((pid, cpu_secs(pid)?))
        })
        .collect())
}

/// Whether `pid` is a PostgreSQL server process here (and not another
/// process that happens to have a remote backend's pid).
fn is_postgres_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_time_grows_as_it_works() {
        let pid = std::process::id();
        let before = cpu_secs(pid).expect("this process's stat is readable");
        // Spin until the kernel's clock (10 ms ticks) has counted some CPU.
        let started = std::time::Instant::now();
        let mut spins = 0u64;
        while cpu_secs(pid).expect("readable") < before + 0.02
            && started.elapsed() < std::time::Duration::from_secs(10)
        {
            spins = spins.wrapping_add(1);
            std::hint::black_box(spins);
        }
        assert!(cpu_secs(pid).expect("readable") >= before + 0.02);
        assert!(cpu_secs(u32::MAX).is_none(), "no such process");
    }
}
