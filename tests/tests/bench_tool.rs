//! The `bully-bench` load generator against a real cluster: it reports what it measured, its
//! count agrees with the store, and it fails clearly without a cluster; `bully-bench report`
//! in its quick mode writes a report with every section and plot. (No assertion is about
//! speed: the figures come from `scripts/bench.sh report`.)

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
    // Present and finite: `None <= None` would pass a comparison of Options.
    let latency = |p: &str| {
        report["latency_ms"][p]
            .as_f64()
            .filter(|v| v.is_finite() && *v > 0.0)
            .unwrap_or_else(|| panic!("latency {p} missing or not a positive number: {report}"))
    };
    assert!(latency("p50") <= latency("p99"), "{report}");
    assert!(latency("p99") <= latency("max"), "{report}");
    // Commands outside the measured window are applied but not counted: at least `acked`.
    let get = CommandRequest::new(Command::Get {
        key: "bench/n/0".into(),
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

/// The report command end to end in its quick mode (seconds): every section ran, the Markdown
/// has its sections, and the plots are PNG files. etcd and SecantusDB are used when installed
/// (scripts/install-etcd.sh, scripts/install-secantus.sh); the report, and this test's output,
/// say when one was left out.
#[test]
fn report_quick_mode_writes_every_section_and_plot() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = std::process::Command::new(binary("bully-bench"))
        .args(["report", "--quick", "--out"])
        .arg(out.path())
        .env_remove("BULLY_SERVERS")
        .output()
        .expect("run bully-bench report");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let md = std::fs::read_to_string(out.path().join("benchmarks.md")).expect("benchmarks.md");
    for section in [
        "QUICK MODE",
        "cores",
        "load average",
        "## Targets (issue 17)",
        "## Throughput and latency",
        "### incr",
        "## Failover",
        "| bully | SIGKILL |",
        "| bully | SIGTERM |",
        "## Elections and failure detection",
        "## One-shot client and memory",
        "bully-server, idle",
    ] {
        assert!(md.contains(section), "no {section:?} in:\n{md}");
    }
    for skipped in md.lines().filter(|l| l.contains("not installed")) {
        eprintln!("NOTE: {skipped}");
    }
    if !md.contains("not installed (scripts/install-etcd.sh") {
        assert!(md.contains("| etcd | SIGKILL |"), "{md}");
    }
    for plot in bully_tests::bench::markdown::PLOTS {
        let path = out.path().join("benchmarks").join(plot);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
        assert!(
            md.contains(&format!("benchmarks/{plot}")),
            "{plot} not linked"
        );
    }
}
