//! Several `herald serve` processes on one PostgreSQL (a fresh schema per
//! test): a node killed, another frozen past its leases, a 429 honoured by
//! every node, and work spread over the nodes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::client::Client;
use herald::mock::{Faults, RunningMock};

use crate::support::*;

/// Short leases, so a frozen node's work is taken over within the test.
const LEASE_MS: u64 = 2_000;

/// One cluster at a time: each runs three servers on two cores and takes
/// up to 75 of PostgreSQL's connections.
pub(crate) static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Node {
    process: ServerProcess,
    addr: SocketAddr,
    client: Arc<Client>,
}

struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
    logs: Vec<PathBuf>,
}

/// Writes a config of webhook destinations at the mock, each with the
/// given faults, and starts `count` nodes on the schema.
async fn start_cluster(
    pg: &PgSchema,
    mock: &RunningMock,
    destinations: &[&str],
    concurrency: u32,
    count: usize,
) -> Cluster {
    let dir = temp_dir();
    let mut config = String::new();
    for name in destinations {
        config.push_str(&format!(
            "[destinations.{name}]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout_ms = 1000\nconcurrency = {concurrency}\nretry = {{ attempts_max = 20, base_ms = 100, cap_ms = 2000 }}\n\n",
            mock.url(&format!("/hooks/{name}"))
        ));
    }
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut nodes = Vec::new();
    let mut logs = Vec::new();
    for i in 0..count {
        let addr = free_addr();
        let log = dir.path().join(format!("node-{i}.log"));
        let node_id = format!("node-{i}");
        let lease = LEASE_MS.to_string();
        let process = spawn_server_with_env(
            &config_path,
            Path::new(&pg.url),
            addr,
            &log,
            &[
                ("HERALD_NODE_ID", node_id.as_str()),
                ("HERALD_LEASE_MS", lease.as_str()),
            ],
        );
        logs.push(log);
        nodes.push(Node {
            process,
            addr,
            client: Arc::new(Client::new(&format!("http://{addr}")).unwrap()),
        });
    }
    for node in &nodes {
        wait_healthy(node.addr).await;
    }
    Cluster {
        nodes,
        _dir: dir,
        logs,
    }
}

fn signal(node: &Node, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(node.process.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// The sum of a counter family's samples in a node's `/metrics`.
async fn metric_sum(addr: SocketAddr, family: &str) -> u64 {
    metrics_text(addr)
        .await
        .lines()
        .filter(|line| line.starts_with(family) && !line.starts_with('#'))
        .filter(|line| line[family.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sends `count` broadcasts to `destinations`, spread over `clients`
/// round robin, 32 at a time; returns their ids.
async fn send_all(clients: &[Arc<Client>], count: usize, destinations: &[&str]) -> Vec<String> {
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..count {
        let client = clients[i % clients.len()].clone();
        let slots = slots.clone();
        let request = request(&format!("INC-{i}: multinode"), destinations);
        sends.spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            client.send(&request).await.unwrap().id
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(id) = sends.join_next().await {
        ids.push(id.unwrap());
    }
    ids
}

/// Waits (at most `limit`) until no delivery is unfinished; returns the
/// deliveries by state.
async fn wait_all_final(pg: &PgSchema, limit: Duration) -> BTreeMap<String, i64> {
    let client = pg.client().await;
    let deadline = Instant::now() + limit;
    loop {
        let unfinished: i64 = client
            .query_one(
                "SELECT count(*) FROM deliveries
                 WHERE state NOT IN ('confirmed','failed','dead','cancelled')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} deliveries still unfinished after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .query("SELECT state, count(*) FROM deliveries GROUP BY state", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn attempts_by_node(pg: &PgSchema) -> BTreeMap<String, i64> {
    pg.client()
        .await
        .query(
            "SELECT node, count(*) FROM attempts GROUP BY node ORDER BY node",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_kill_and_a_freeze_losing_and_duplicating_nothing() {
    const BROADCASTS: usize = 2_000;
    const DESTINATIONS: [&str; 2] = ["alpha", "bravo"];
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    // Slow answers keep attempts in flight whenever a node is hit.
    let slow = Faults {
        latency_ms: 100,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/alpha", slow.clone()), ("/hooks/bravo", slow)]).await;
    let cluster = start_cluster(&pg, &mock, &DESTINATIONS, 8, 3).await;
    let started = Instant::now();
    let [survivor, frozen, killed] = &cluster.nodes[..] else {
        unreachable!("three nodes")
    };
    // Everything goes in through the survivor while the others are hit;
    // they get their share of the work through claims.
    let sender = tokio::spawn({
        let client = survivor.client.clone();
        async move {
            let ids = send_all(&[client], BROADCASTS, &DESTINATIONS).await;
            (ids, started.elapsed().as_millis())
        }
    });
    // Strike once work is flowing (and far from done).
    let flowing = Instant::now() + Duration::from_secs(60);
    while mock.stats().paths.values().map(|s| s.distinct).sum::<u64>() < 400 {
        assert!(Instant::now() < flowing, "no delivery is flowing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(killed, "KILL");
    let killed_ms = started.elapsed().as_millis();
    let received_at_kill: u64 = mock.stats().paths.values().map(|s| s.distinct).sum();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(frozen, "STOP");
    let frozen_ms = started.elapsed().as_millis();
    // Well past the lease: its work is taken over meanwhile.
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 2 + 1_000)).await;
    signal(frozen, "CONT");
    let resumed_ms = started.elapsed().as_millis();
    let (ids, submitted_ms) = sender.await.unwrap();
    assert_eq!(ids.len(), BROADCASTS);

    let states = wait_all_final(&pg, Duration::from_secs(180)).await;
    let converged_ms = started.elapsed().as_millis();
    assert_eq!(
        states,
        BTreeMap::from([(
            "confirmed".to_owned(),
            (BROADCASTS * DESTINATIONS.len()) as i64
        )]),
        "every delivery confirmed"
    );
    let stats = mock.stats();
    let mut resends = 0;
    for name in DESTINATIONS {
        let s = stats.path(&format!("/hooks/{name}"));
        assert_eq!(
            s.distinct, BROADCASTS as u64,
            "{name}: lost messages ({s:?})"
        );
        resends += s.duplicates;
    }
    // The frozen node finished its old attempts after waking: refused.
    let stale = metric_sum(frozen.addr, "herald_stale_outcomes_total").await;
    let log = std::fs::read_to_string(&cluster.logs[1]).unwrap();
    assert!(
        stale > 0,
        "the frozen node's late outcomes were refused (stale writes: {stale}); its log:\n{}",
        &log[log.len().saturating_sub(4_000)..]
    );
    let per_node = attempts_by_node(&pg).await;
    let interrupted: i64 = pg
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "multinode: {BROADCASTS} broadcasts x {} destinations on 3 nodes; submitted in {submitted_ms} ms; \
         node-2 SIGKILLed at {killed_ms} ms ({received_at_kill} messages had arrived), \
         node-1 SIGSTOPped at {frozen_ms} ms and SIGCONTed at {resumed_ms} ms; all converged at {converged_ms} ms; \
         {interrupted} attempts taken over from expired leases, {stale} late writes of node-1 refused, \
         {resends} re-sends deduplicated by key, 0 lost; attempt rows per node: {per_node:?}",
        DESTINATIONS.len()
    );
    drop(cluster);
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_the_destination_for_every_node() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let retry_after_secs = 2;
    let mock = start_mock(&[(
        "/hooks/limited",
        Faults {
            rate_limit_first: 1,
            retry_after_secs,
            ..Faults::default()
        },
    )])
    .await;
    let cluster = start_cluster(&pg, &mock, &["limited"], 8, 3).await;
    let first = cluster.nodes[0]
        .client
        .send(&request("INC-1: rate limited", &["limited"]))
        .await
        .unwrap()
        .id;
    // Once the 429 is recorded, every node must hold off.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.nodes[0].client.status(&first).await.unwrap();
        if status.deliveries[0].state.starts_with("retrying") {
            break;
        }
        assert!(Instant::now() < deadline, "no 429 recorded: {status:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clients: Vec<Arc<Client>> = cluster.nodes.iter().map(|n| n.client.clone()).collect();
    send_all(&clients, 30, &["limited"]).await;
    wait_all_final(&pg, Duration::from_secs(60)).await;
    let stats = mock.stats().path("/hooks/limited");
    assert_eq!(stats.distinct, 31);
    let limited_at_ms = stats.arrivals_ms[0];
    let too_early: Vec<i64> = stats.arrivals_ms[1..]
        .iter()
        .map(|at| at - limited_at_ms)
        .filter(|after_ms| *after_ms < retry_after_secs as i64 * 1000)
        .collect();
    assert!(
        too_early.is_empty(),
        "requests arrived {too_early:?} ms after the 429 that asked for {retry_after_secs} s"
    );
    drop(cluster);
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_sent_to_one_node_spreads_over_all_three() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let slow = Faults {
        latency_ms: 50,
        ..Faults::default()
    };
    let mock = start_mock(&[("/hooks/spread", slow)]).await;
    let cluster = start_cluster(&pg, &mock, &["spread"], 4, 3).await;
    // Everything through node 0: the others learn of it only through the
    // database's notifications.
    send_all(&[cluster.nodes[0].client.clone()], 300, &["spread"]).await;
    wait_all_final(&pg, Duration::from_secs(60)).await;
    assert_eq!(mock.stats().path("/hooks/spread").distinct, 300);
    let mut shares = Vec::new();
    for node in &cluster.nodes {
        shares.push(metric_sum(node.addr, "herald_attempts_total").await);
    }
    eprintln!("attempts per node (from /metrics): {shares:?}");
    assert!(
        shares.iter().all(|share| *share > 0),
        "every node took a share: {shares:?}"
    );
    drop(cluster);
    mock.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_rate_limit() {
    const RATE_PER_SEC: u32 = 10;
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    // The mock refuses (429) what goes past a little over the destination's
    // rate in any clock second; three nodes each at the full rate would be
    // three times over it.
    let mock = start_mock(&[(
        "/hooks/metered",
        Faults {
            rate_limit_per_sec: Some(RATE_PER_SEC + 5),
            ..Faults::default()
        },
    )])
    .await;
    let dir = temp_dir();
    let config = format!(
        "[destinations.metered]\nkind = \"webhook\"\nurl = \"{}\"\ntimeout_ms = 1000\nconcurrency = 8\n\
         rate_limit_per_sec = {RATE_PER_SEC}\nrate_limit_burst = 1\nretry = {{ attempts_max = 20, base_ms = 100, cap_ms = 2000 }}\n",
        mock.url("/hooks/metered")
    );
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let addr = free_addr();
        let process = spawn_server_with_env(
            &config_path,
            Path::new(&pg.url),
            addr,
            &dir.path().join(format!("node-{i}.log")),
            &[("HERALD_LEASE_MS", "2000")],
        );
        nodes.push((process, addr));
    }
    let mut clients = Vec::new();
    for (_, addr) in &nodes {
        wait_healthy(*addr).await;
        clients.push(Arc::new(Client::new(&format!("http://{addr}")).unwrap()));
    }
    send_all(&clients, 40, &["metered"]).await;
    wait_all_final(&pg, Duration::from_secs(60)).await;
    let stats = mock.stats().path("/hooks/metered");
    assert_eq!(stats.distinct, 40);
    // Requests per clock second, as the mock saw them.
    let mut per_second: BTreeMap<i64, u32> = BTreeMap::new();
    for at in &stats.arrivals_ms {
        *per_second.entry(at.div_euclid(1000)).or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap_or(0);
    eprintln!("requests per second at a destination limited to {RATE_PER_SEC}/s across 3 nodes: {per_second:?}");
    assert_eq!(
        stats.rate_limited, 0,
        "the cluster kept to the rate: {per_second:?}"
    );
    assert!(busiest <= RATE_PER_SEC + 5, "{per_second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rides_out_lost_database_connections() {
    const BROADCASTS: usize = 200;
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let mock = start_mock(&[(
        "/hooks/steady",
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )])
    .await;
    let cluster = start_cluster(&pg, &mock, &["steady"], 4, 1).await;
    let node = &cluster.nodes[0];
    let ids = send_all(std::slice::from_ref(&node.client), BROADCASTS, &["steady"]).await;
    assert_eq!(ids.len(), BROADCASTS);
    // Cut every connection of the node, three times, while it delivers.
    let admin = pg.client().await;
    let mut cut = 0;
    for _ in 0..3 {
        cut += admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'herald node-0'",
                &[],
            )
            .await
            .unwrap()
            .len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(cut > 0, "the node had connections to cut");
    wait_all_final(&pg, Duration::from_secs(90)).await;
    let stats = mock.stats().path("/hooks/steady");
    assert_eq!(stats.distinct, BROADCASTS as u64, "{stats:?}");
    let http = herald::connector::http_client_builder().build().unwrap();
    let ready = http
        .get(format!("http://{}/readyz", node.addr))
        .send()
        .await
        .unwrap()
        .status();
    assert!(ready.is_success(), "ready again: {ready}");
    eprintln!(
        "lost connections: {cut} cut; {BROADCASTS} delivered, {} re-sends deduplicated by key",
        stats.duplicates
    );
}
