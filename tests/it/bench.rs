//! `herald bench` as a user runs it: a small burst and steady rate on two
//! nodes sharing one PostgreSQL schema, and the refusals of `--nodes`.

use std::process::{Command, Output};

use crate::multinode::ONE_CLUSTER_AT_A_TIME;
use crate::support::*;

/// Broadcasts of the two-node burst: enough for both nodes to work, few
/// enough for a debug build on two shared cores.
const BROADCASTS: u64 = 300;
/// Mock destinations per broadcast, the bench's default.
const DESTINATIONS: u64 = 4;
/// The steady scenario at 100 broadcasts a second for 1 s.
const STEADY_BROADCASTS: u64 = 100;

/// `herald bench ARGS`, run to its end off the async workers.
async fn herald_bench(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(HERALD)
            .arg("bench")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_on_two_nodes_delivers_everything_through_both_and_drops_its_schemas() {
    let Some(client) = test_postgres().await else {
        return;
    };
    // Two servers and their 50 sessions: not alongside another cluster.
    let _one_cluster = ONE_CLUSTER_AT_A_TIME.lock().await;
    let args = [
        "--nodes",
        "2",
        "--broadcasts",
        &BROADCASTS.to_string(),
        "--scenario",
        "burst",
        "--scenario",
        "steady",
        "--steady-rate",
        "100",
        "--steady-secs",
        "1",
        "--database",
        &postgres_base_url(),
        "--json",
    ];
    let output = herald_bench(args.iter().map(|a| a.to_string()).collect()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let reports = reports.as_array().expect("a list of reports");
    let scenarios: Vec<&str> = reports
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["burst", "steady"]);

    for (report, broadcasts) in reports.iter().zip([BROADCASTS, STEADY_BROADCASTS]) {
        let scenario = &report["scenario"];
        assert_eq!(report["nodes"], 2, "{scenario}");
        let deliveries = broadcasts * DESTINATIONS;
        assert_eq!(report["deliveries"], deliveries, "{scenario}");
        assert_eq!(
            report["final_states"],
            serde_json::json!({ "confirmed": deliveries }),
            "{scenario}: every delivery confirmed"
        );
        assert!(
            report["cpu_secs_per_1000_deliveries"].as_f64().unwrap() > 0.0,
            "{scenario}: the nodes' CPU is measured"
        );

        let by_node = report["attempts_by_node"].as_array().unwrap();
        let nodes: Vec<&str> = by_node
            .iter()
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        assert_eq!(
            nodes.len(),
            2,
            "{scenario}: attempts by both nodes: {by_node:?}"
        );
        let schema = nodes[0].strip_suffix("-n1").unwrap_or_else(|| {
            panic!("{scenario}: node ids are the schema and -n1, -n2: {nodes:?}")
        });
        assert_eq!(nodes[1], format!("{schema}-n2"), "{scenario}");
        for node in by_node {
            assert!(
                node["confirmed"].as_u64().unwrap() > 0,
                "{scenario}: each node confirmed deliveries: {by_node:?}"
            );
        }
        let confirmed: u64 = by_node
            .iter()
            .map(|n| n["confirmed"].as_u64().unwrap())
            .sum();
        assert_eq!(
            confirmed, deliveries,
            "{scenario}: each delivery confirmed once, by one node"
        );

        let left = client
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(left, 0, "{scenario}: the run's schema {schema} was dropped");
    }
}

#[test]
fn several_nodes_without_postgres_and_zero_nodes_are_refused_naming_the_flag() {
    let output = Command::new(HERALD)
        .args(["bench", "--nodes", "2", "--broadcasts", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--nodes 2") && stderr.contains("--database postgres://"),
        "{stderr}"
    );

    let output = Command::new(HERALD)
        .args(["bench", "--nodes", "0", "--broadcasts", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--nodes"), "{stderr}");
}
