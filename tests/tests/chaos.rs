//! A short chaos batch: real servers under randomized faults, with linearizability,
//! exactly-once, ordering and term checks (see `docs/chaos.md`; `scripts/chaos.sh` runs long
//! batches). The seeds are fixed, so the plans (and the faults they schedule) are the same on
//! every run; the interleavings are not.
//!
//! Needs `cargo build --workspace --bins`; uses the MongoDB store for some seeds when
//! SecantusDB is installed (`scripts/install-secantus.sh`), the embedded store otherwise.

use std::time::Duration;

use bully_client::{Command, CommandRequest, Outcome};
use bully_tests::chaos::plan::{Fault, Overrides, Plan, Planned, StoreChoice};
use bully_tests::chaos::run::{self, RunOptions};
use bully_tests::chaos::{BatchOptions, describe_run, linearizability, run_batch};
use bully_tests::cluster::{Cluster, StoreSpec};
use bully_tests::secantus;

/// About 8 s per run on two cores (6 s of faults, start, settle, checks): ~3 minutes.
const RUNS: usize = 20;
const FIRST_SEED: u64 = 1;

/// One cluster at a time: the machines have two cores, and runs are timing-sensitive.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_batch_finds_no_violation() {
    let _serial = SERIAL.lock().await;
    let out_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    let options = BatchOptions {
        runs: RUNS,
        first_seed: FIRST_SEED,
        overrides: Overrides {
            duration_ms: Some(Duration::from_secs(6).as_millis() as u64),
            mongo_available: secantus::available(),
            ..Overrides::default()
        },
        // Every run starts its servers together on a fresh store (the start-up race below is
        // part of what it exercises).
        run: RunOptions {
            out_dir,
            keep: false,
            budget: linearizability::DEFAULT_BUDGET,
        },
    };
    let summary = run_batch(&options, |n, result| match result {
        Ok(report) => {
            eprintln!("[{}/{RUNS}] {}", n + 1, describe_run(report));
            for v in &report.violations {
                eprintln!("  VIOLATION [{}] {}", v.check, v.message);
            }
            if let Some(file) = &report.report_file {
                eprintln!("  report: {}", file.display());
            }
        }
        Err(e) => eprintln!("[{}/{RUNS}] harness error: {e}", n + 1),
    })
    .await;
    eprintln!("\n{summary}");
    // Every run's checks ran (a run whose logs show no claim, or an acknowledged write no log
    // shows applied, or a fault that could not be injected, is a violation of that run).
    assert!(summary.passed(), "chaos batch failed:\n{summary}");
    assert_eq!(summary.runs, RUNS);
    assert_eq!(summary.faults_failed, 0);
    // The batch must have exercised something: faults of several kinds, partitions that
    // dropped messages, commands that completed, and term checks that found claims.
    assert!(
        summary.faults_injected() >= RUNS * 2,
        "too few faults injected:\n{summary}"
    );
    for kind in ["kill", "pause", "partition", "restart"] {
        assert!(
            summary.faults.keys().any(|name| name.starts_with(kind)),
            "no {kind} fault was injected:\n{summary}"
        );
    }
    assert!(summary.messages_dropped > 0, "partitions dropped nothing");
    // No live coordinator was deposed across a partition (each would be a violation above),
    // and there were partitions to check that over.
    assert_eq!(summary.depositions, 0);
    assert!(summary.partitions_checked > 0, "no partition to check");
    assert!(
        summary.ops_ok > RUNS * 100,
        "too little progress:\n{summary}"
    );
    assert!(summary.claims >= RUNS, "the term checks found no claims");
    assert!(
        summary.attributed > 0,
        "no write was traced to its term's claimer:\n{summary}"
    );
}

/// The negative control: a store that loses acknowledged writes when it restarts (SecantusDB
/// without `--sync-on-commit`) must be caught, by the exactly-once check itself (an
/// acknowledged write without its record). Store restarts during a workload lose the last
/// writes nearly always; three per attempt, up to three attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_loses_acknowledged_writes_is_caught() {
    let _serial = SERIAL.lock().await;
    assert!(
        secantus::available(),
        "{} is missing: run scripts/install-secantus.sh",
        secantus::binary().display()
    );
    let options = RunOptions {
        out_dir: std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-lossy"),
        keep: false,
        budget: linearizability::DEFAULT_BUDGET,
    };
    let mut attempts = Vec::new();
    for attempt in 0..3u64 {
        let plan = Plan {
            seed: 9_000 + attempt,
            servers: 3,
            store: StoreChoice::Mongo,
            ranks: vec![30, 20, 10],
            clients: 5,
            registers: 2,
            counters: 1,
            duration_ms: 5_000,
            faults: [1_200, 2_500, 3_800]
                .into_iter()
                .map(|at_ms| Planned {
                    at_ms,
                    pick: 0,
                    fault: Fault::StoreRestart,
                })
                .collect(),
            lossy_store: true,
        };
        let report = run::run(&plan, &options).await.expect("harness");
        eprintln!("{}", describe_run(&report));
        let checks: std::collections::BTreeSet<&str> =
            report.violations.iter().map(|v| v.check.as_str()).collect();
        if checks.contains("exactly-once") {
            return;
        }
        attempts.push(checks.into_iter().map(String::from).collect::<Vec<_>>());
    }
    panic!("lost writes went unnoticed in every attempt: {attempts:?}");
}

/// Found by the chaos runs (docs/chaos.md, "Findings"): servers that open a fresh embedded
/// store at the same moment could fail to start with "database is locked" (`PRAGMA
/// journal_mode = WAL` returns SQLITE_BUSY without waiting for the busy timeout). Six servers
/// of one cluster start at once on a fresh store, ten times: every one must start, the cluster
/// must agree on the highest rank, and a command must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_on_a_fresh_embedded_store_all_serve() {
    let _serial = SERIAL.lock().await;
    let ranks = [10, 60, 20, 50, 30, 40];
    for round in 0..10 {
        let mut cluster = Cluster::start(&ranks, StoreSpec::Embedded);
        cluster.await_coordinator(1, Duration::from_secs(30)).await;
        let put = CommandRequest::new(Command::Put {
            key: format!("round-{round}"),
            value: serde_json::json!(round),
            lease: None,
        });
        let response = cluster.client().execute(&put).await.expect("a command");
        assert_eq!(response.outcome, Outcome::Ok);
        for i in 0..ranks.len() {
            let exited = cluster.servers[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "round {round}: s{i} exited: {exited:?}");
        }
    }
}
