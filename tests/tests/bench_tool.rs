//! The `bully-bench` load generator against a real cluster: it reports what it measured, its
//! count agrees with the store, and it fails clearly without a cluster. (No assertion is about
//! speed: the figures come from `scripts/bench.sh`.)

use std::process::Output;
use std::time::Duration;

use bully_client::{Command, CommandRequest, Outcome};
use bully_tests::cluster::{Cluster, StoreSpec, binary, free_port};
use serde_json::Value;

fn bench(servers: &str, args: &[&str]) -> Output {
    std::process::Command::new(binary("bully-bench"))
        .args(["--servers", servers])
        .args(args)
        .env_remove("BULLY_SERVERS")
        .env_remove("BULLY_TOKEN")
        .output()
        .expect("run bully-bench")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_acknowledged_commands_that_the_store_holds() {
    let cluster = Cluster::start(&[20, 10], StoreSpec::Embedded);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let servers = cluster.client_addrs().join(",");
    // One key, so the counter holds every applied incr.
    let out = bench(
        &servers,
        &[
            "--clients",
            "3",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--keys",
            "1",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let acked = report["acknowledged"].as_u64().expect("acknowledged");
    assert!(acked > 0, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["clients"], 3);
    let latency = &report["latency_ms"];
    assert!(
        latency["p50"].as_f64() <= latency["p99"].as_f64(),
        "{report}"
    );
    assert!(
        latency["p99"].as_f64() <= latency["max"].as_f64(),
        "{report}"
    );
    // Commands outside the measured window are applied but not counted: at least `acked`.
    let get = CommandRequest::new(Command::Get {
        key: "bench/0".into(),
    });
    let response = cluster.client().execute(&get).await.expect("get");
    let Outcome::Value { value: n } = response.outcome else {
        panic!("no counter: {:?}", response.outcome);
    };
    assert!(n.as_u64().expect("an integer") >= acked, "{n} < {acked}");
}

#[test]
fn bench_without_a_cluster_exits_2_and_says_why() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = bench(&nobody, &["--wait-ready", "1s", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no ready coordinator"), "{stderr}");
    let out = bench(&nobody, &["--clients", "0"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects --clients 0");
}
