//! The processes a bench run starts (the mock and `herald serve`, each with
//! its config and log), their health and their CPU and memory use.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::mock::{Faults, PathFaults};

pub(super) struct Process {
    pub(super) child: Child,
}

impl Process {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn herald_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the herald executable")
}

pub(super) fn spawn_mock(log: &Path) -> anyhow::Result<(Process, SocketAddr)> {
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

pub(super) fn spawn_server(
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

pub(super) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(super) async fn wait_healthy(http: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<()> {
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
pub(super) fn process_usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc status")?;
    let cpu_secs = cpu_secs(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok((peak_kb / 1024.0, cpu_secs))
}

/// CPU seconds (user and system, all threads) a process has used so far;
/// None when it is gone or its stat cannot be read.
pub(super) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 11 and 12 after ")".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    const TICKS_PER_SEC: f64 = 100.0; // USER_HZ on Linux
    Some((utime + stime) / TICKS_PER_SEC)
}

pub(super) async fn set_faults(
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

pub(super) fn write_config(
    path: &Path,
    mock: SocketAddr,
    prefix: &str,
    names: &[String],
    concurrency: u32,
    retention_secs: Option<u64>,
    node_id: Option<&str>,
) -> anyhow::Result<()> {
    let mut text = String::from("[server]\n");
    if let Some(secs) = retention_secs {
        text.push_str(&format!("broadcast_retention_secs = {secs}\n"));
    }
    if let Some(node_id) = node_id {
        text.push_str(&format!("node_id = \"{node_id}\"\n"));
    }
    text.push('\n');
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
