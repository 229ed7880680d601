//! One chaos run: start a cluster, run the workload under the plan's faults, heal, read every
//! key, stop everything, check.
//!
//! # Timeline
//! 1. Start the store (SecantusDB for the MongoDB backend), the proxies and the servers; wait
//!    until they agree on a coordinator.
//! 2. Run the clients for `plan.duration_ms` while the [`Injector`] carries out the faults.
//! 3. Heal every fault, let the clients finish their last command, wait for agreement again.
//! 4. Read every key through the cluster (the final reads, part of the history).
//! 5. Stop every server; read the fence, the counters and every write's record straight from
//!    the store (also after the final reads, so an indeterminate write without a record was
//!    never applied before any observation).
//! 6. Check ([`super::checks`]); write the report if anything failed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bully_client::{Command, CommandRequest, Outcome};
use bully_server::store::Store;
use bully_server::store::embedded::EmbeddedStore;
use bully_server::store::mongo::{MongoOptions, MongoStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checks::{self, CheckStats, Evidence, Violation};
use super::cluster::{ChaosCluster, StoreArgs};
use super::faults::{Event, Injector};
use super::history::{OpRecord, OpResult};
use super::plan::{Plan, StoreChoice};
use super::workload::{self, counter_key, register_key};
use crate::secantus::Secantus;

/// How a run is carried out and reported.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where failing runs write `chaos-<seed>.json` and their logs.
    pub out_dir: PathBuf,
    /// Write the report for passing runs too.
    pub keep: bool,
    /// Linearizability search steps per key.
    pub budget: u64,
}

/// Counts of one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunStats {
    pub ops_ok: usize,
    pub ops_rejected: usize,
    pub ops_indeterminate: usize,
    /// Indeterminate writes the store shows as applied.
    pub indeterminate_applied: usize,
    pub faults: BTreeMap<String, usize>,
    pub faults_skipped: usize,
    /// Planned faults that could not be carried out (each also a violation).
    pub faults_failed: usize,
    /// Partitions carried out.
    #[serde(default)]
    pub partitions: usize,
    pub messages_dropped: u64,
    pub checks: CheckStats,
    pub elapsed_ms: u64,
}

/// Everything about one run; written as JSON when it fails.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub plan: Plan,
    pub stats: RunStats,
    pub violations: Vec<Violation>,
    /// Faults as carried out, with their targets.
    pub events: Vec<Event>,
    pub history: Vec<OpRecord>,
    /// Where the report and the server logs were written, if they were.
    pub report_file: Option<PathBuf>,
    pub logs_dir: Option<PathBuf>,
}

/// Runs `plan`. `Err` is a harness failure (a binary missing, a port taken), not a finding.
pub async fn run(plan: &Plan, options: &RunOptions) -> Result<RunReport, String> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("bully-chaos-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let (secantus, store_args) = match plan.store {
        StoreChoice::Embedded => (None, StoreArgs::Embedded(dir.path().join("bully.db"))),
        StoreChoice::Mongo => {
            let secantus = Secantus::try_start(!plan.lossy_store)
                .await
                .map_err(|e| format!("SecantusDB (scripts/install-secantus.sh): {e}"))?;
            let args = StoreArgs::Mongo {
                uri: secantus.uri(),
                database: format!("chaos_{}", plan.seed),
            };
            (Some(secantus), args)
        }
    };
    let mut cluster = ChaosCluster::start(&plan.ranks, store_args.clone(), dir.path())
        .map_err(|e| e.to_string())?;
    let mut violations = Vec::new();
    if cluster
        .await_agreement(Duration::from_secs(20))
        .await
        .is_none()
    {
        violations.push(Violation {
            check: "liveness".into(),
            message: "the servers did not agree on a coordinator within 20 s of starting".into(),
        });
    }

    // The workload and the faults.
    let epoch = Instant::now();
    let epoch_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = cluster.client_addrs();
    let clients: Vec<_> = (0..plan.clients)
        .map(|id| {
            tokio::spawn(workload::client_loop(
                id,
                plan.seed,
                servers.clone(),
                plan.registers,
                plan.counters,
                stop.clone(),
                epoch,
            ))
        })
        .collect();
    let mut injector = Injector::new(cluster, secantus, epoch);
    injector.run(&plan.faults, plan.duration_ms).await;
    stop.store(true, Ordering::SeqCst);
    let mut history = Vec::new();
    for client in clients {
        history.extend(
            client
                .await
                .map_err(|e| format!("a client task failed: {e}"))?,
        );
    }

    // Final reads through the cluster, once it has settled.
    if injector
        .cluster
        .await_agreement(Duration::from_secs(20))
        .await
        .is_none()
    {
        violations.push(Violation {
            check: "liveness".into(),
            message: "no agreed coordinator within 20 s after every fault was healed".into(),
        });
    }
    let keys: Vec<String> = (0..plan.registers)
        .map(register_key)
        .chain((0..plan.counters).map(counter_key))
        .collect();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let reader = workload::client_for(&servers, &mut rng, Duration::from_secs(20));
    for key in &keys {
        let request = CommandRequest {
            id: format!("s{}-final-{key}", plan.seed),
            command: Command::Get { key: key.clone() },
        };
        let record = workload::execute(&reader, plan.clients, request, epoch).await;
        if record.response().is_none() {
            violations.push(Violation {
                check: "liveness".into(),
                message: format!("the final read of {key} failed: {:?}", record.result),
            });
        }
        history.push(record);
    }

    // Stop everything, then look at the store.
    injector.cluster.check_exits();
    for server in &injector.cluster.servers {
        for status in &server.unexpected_exits {
            violations.push(Violation {
                check: "crash".into(),
                message: format!("s{} exited on its own: {status}", server.index),
            });
        }
    }
    injector.cluster.shutdown();
    let messages_dropped = injector.cluster.links.dropped.load(Ordering::Relaxed);
    let store: Arc<dyn Store> = match &store_args {
        StoreArgs::Embedded(path) => {
            Arc::new(EmbeddedStore::open(path).map_err(|e| format!("open the store: {e}"))?)
        }
        StoreArgs::Mongo { uri, database } => Arc::new(
            MongoStore::connect(uri, database, MongoOptions::default())
                .await
                .map_err(|e| format!("connect to the store: {e}"))?,
        ),
    };
    let fence = store.fence_state().await.ok();
    let counters = store_reads(&*store, fence.as_ref(), plan, &keys, epoch, &mut history).await?;
    let mut records = HashMap::new();
    for op in history.iter().filter(|op| !op.command.is_read()) {
        match store.record(&op.id).await {
            Ok(Some(record)) => {
                records.insert(op.id.clone(), record);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading the record of {}: {e}", op.id)),
        }
    }

    let logs: Vec<PathBuf> = injector
        .cluster
        .servers
        .iter()
        .map(|s| s.log.clone())
        .collect();
    let log_refs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    let (found, check_stats) = checks::run_all(&Evidence {
        history: &history,
        records: &records,
        counters: &counters,
        fence: fence.as_ref(),
        logs: &log_refs,
        budget: options.budget,
        partitions: &injector.partitions,
        outages: &injector.outages,
        epoch_unix_ms,
    });
    violations.extend(found);
    for what in &injector.failed {
        violations.push(Violation {
            check: "fault-injection".into(),
            message: format!("a planned fault was not carried out: {what}"),
        });
    }

    let count = |f: fn(&OpResult) -> bool| history.iter().filter(|op| f(&op.result)).count();
    let stats = RunStats {
        ops_ok: count(|r| matches!(r, OpResult::Ok { .. })),
        ops_rejected: count(|r| matches!(r, OpResult::Rejected { .. })),
        ops_indeterminate: count(|r| matches!(r, OpResult::Indeterminate { .. })),
        indeterminate_applied: history
            .iter()
            .filter(|op| op.is_indeterminate() && records.contains_key(&op.id))
            .count(),
        faults: injector.injected.clone(),
        faults_skipped: injector.skipped,
        faults_failed: injector.failed.len(),
        partitions: injector.partitions.len(),
        messages_dropped,
        checks: check_stats,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    let mut report = RunReport {
        plan: plan.clone(),
        stats,
        violations,
        events: std::mem::take(&mut injector.events),
        history,
        report_file: None,
        logs_dir: None,
    };
    if !report.violations.is_empty() || options.keep {
        let secantus_log = injector.secantus.as_ref().map(Secantus::log);
        save(&mut report, options, dir.path(), secantus_log)?;
    }
    Ok(report)
}

/// Reads every key straight from the store (after every server stopped) under the current
/// term, appending the reads to the history; returns the counter keys' values.
async fn store_reads(
    store: &dyn Store,
    fence: Option<&bully_server::store::FenceState>,
    plan: &Plan,
    keys: &[String],
    epoch: Instant,
    history: &mut Vec<OpRecord>,
) -> Result<BTreeMap<String, Option<Value>>, String> {
    let mut counters = BTreeMap::new();
    let Some(fence) = fence.filter(|f| f.term > 0) else {
        return Err("the store has no term: nobody ever claimed one".into());
    };
    let counter_keys: Vec<String> = (0..plan.counters).map(counter_key).collect();
    for key in keys {
        let id = format!("s{}-store-{key}", plan.seed);
        let command = Command::Get { key: key.clone() };
        let invoke_us = workload::micros(epoch);
        let applied = store
            .apply(fence.term, &id, &command)
            .await
            .map_err(|e| format!("reading {key} from the store: {e}"))?;
        let value = match &applied.outcome {
            Outcome::Value { value } => Some(value.clone()),
            _ => None,
        };
        if counter_keys.contains(key) {
            counters.insert(key.clone(), value);
        }
        history.push(OpRecord {
            client: plan.clients + 1,
            id,
            command,
            invoke_us,
            complete_us: Some(workload::micros(epoch)),
            result: OpResult::Ok {
                response: bully_client::CommandResponse {
                    id: String::new(),
                    seq: applied.seq,
                    term: applied.term,
                    outcome: applied.outcome,
                    duplicate: false,
                },
            },
        });
    }
    Ok(counters)
}

/// Writes `chaos-<seed>.json` and copies the logs next to it.
fn save(
    report: &mut RunReport,
    options: &RunOptions,
    run_dir: &Path,
    secantus_log: Option<String>,
) -> Result<(), String> {
    let seed = report.plan.seed;
    std::fs::create_dir_all(&options.out_dir).map_err(|e| e.to_string())?;
    let logs_dir = options.out_dir.join(format!("chaos-{seed}-logs"));
    std::fs::create_dir_all(&logs_dir).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(run_dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.path().extension().is_some_and(|x| x == "log") {
            let _ = std::fs::copy(entry.path(), logs_dir.join(entry.file_name()));
        }
    }
    if let Some(log) = secantus_log {
        let _ = std::fs::write(logs_dir.join("secantusd.log"), log);
    }
    let file = options.out_dir.join(format!("chaos-{seed}.json"));
    report.report_file = Some(file.clone());
    report.logs_dir = Some(logs_dir);
    let json = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(&file, json).map_err(|e| e.to_string())?;
    Ok(())
}
