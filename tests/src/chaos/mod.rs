//! Chaos runs: real server processes under randomized faults, with concurrent clients whose
//! history is checked for linearizability and exactly-once execution afterwards.
//!
//! Each run is drawn from a seed ([`plan::Plan::from_seed`]): 3 or 5 servers, the embedded or
//! the MongoDB store, ranks, client count and a schedule of faults (SIGKILL, SIGSTOP, peer
//! network partitions through a proxy, graceful and hard restarts with new ranks, store
//! step-down and restart). `docs/chaos.md` describes what is injected and checked, and how to
//! replay a failing run.
//!
//! # Layout
//! - [`linearizability`]: the checker (generic search, key-value model).
//! - [`plan`]: the seeded plan; [`faults`]: carrying it out; [`proxy`]: cuttable peer links.
//! - [`cluster`]: the server processes; [`workload`]: the clients; [`history`]: what they saw.
//!   The MongoDB-compatible store is [`crate::secantus`].
//! - [`checks`]: the invariants; [`run`]: one run end to end; this module: batches.

pub mod checks;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod plan;
pub mod proxy;
pub mod run;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt;

use plan::{Overrides, Plan};
use run::{RunOptions, RunReport};

/// A batch: `runs` runs with seeds `first_seed`, `first_seed + 1`, ...
#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub runs: usize,
    pub first_seed: u64,
    pub overrides: Overrides,
    pub run: RunOptions,
}

/// Totals of a batch.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub runs: usize,
    pub faults: BTreeMap<String, usize>,
    pub faults_skipped: usize,
    pub faults_failed: usize,
    pub messages_dropped: u64,
    pub ops_ok: usize,
    pub ops_rejected: usize,
    pub ops_indeterminate: usize,
    pub indeterminate_applied: usize,
    pub violations: usize,
    pub checked_ops: usize,
    pub claims: usize,
    /// Acknowledged fresh writes traced to the process that claimed their term.
    pub attributed: usize,
    /// Partitions whose isolated side was apart from a live coordinator.
    pub partitions_checked: usize,
    /// Live coordinators deposed across a partition (violations).
    pub depositions: usize,
    /// Seeds of runs with violations, and where their reports are.
    pub failed: Vec<(u64, Option<std::path::PathBuf>)>,
    /// Runs the harness itself could not carry out (seed, reason).
    pub harness_errors: Vec<(u64, String)>,
}

impl Summary {
    pub fn add(&mut self, report: &RunReport) {
        let s = &report.stats;
        self.runs += 1;
        for (name, n) in &s.faults {
            *self.faults.entry(name.clone()).or_default() += n;
        }
        self.faults_skipped += s.faults_skipped;
        self.faults_failed += s.faults_failed;
        self.messages_dropped += s.messages_dropped;
        self.ops_ok += s.ops_ok;
        self.ops_rejected += s.ops_rejected;
        self.ops_indeterminate += s.ops_indeterminate;
        self.indeterminate_applied += s.indeterminate_applied;
        self.checked_ops += s.checks.checked_ops;
        self.claims += s.checks.claims;
        self.attributed += s.checks.attributed;
        self.depositions += s.checks.depositions;
        self.partitions_checked += s.partitions;
        self.violations += report.violations.len();
        if !report.violations.is_empty() {
            self.failed
                .push((report.plan.seed, report.report_file.clone()));
        }
    }

    pub fn faults_injected(&self) -> usize {
        self.faults.values().sum()
    }

    /// No violation and no harness error.
    pub fn passed(&self) -> bool {
        self.violations == 0 && self.harness_errors.is_empty()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "runs: {}", self.runs)?;
        writeln!(
            f,
            "faults injected: {} ({} skipped: no target; {} failed to inject)",
            self.faults_injected(),
            self.faults_skipped,
            self.faults_failed
        )?;
        for (name, n) in &self.faults {
            writeln!(f, "  {name}: {n}")?;
        }
        writeln!(
            f,
            "peer messages dropped by partitions: {}",
            self.messages_dropped
        )?;
        writeln!(
            f,
            "operations: {} ok, {} failed (rejected), {} indeterminate ({} of them applied)",
            self.ops_ok, self.ops_rejected, self.ops_indeterminate, self.indeterminate_applied
        )?;
        writeln!(
            f,
            "checked: {} operations for linearizability, {} claimed terms, {} writes traced to \
             their term's claimer",
            self.checked_ops, self.claims, self.attributed
        )?;
        writeln!(
            f,
            "live coordinators deposed by a partitioned server: {} (over {} partitions)",
            self.depositions, self.partitions_checked
        )?;
        writeln!(f, "violations: {}", self.violations)?;
        for (seed, file) in &self.failed {
            match file {
                Some(file) => writeln!(f, "  seed {seed}: {}", file.display())?,
                None => writeln!(f, "  seed {seed}")?,
            }
        }
        if !self.harness_errors.is_empty() {
            writeln!(f, "harness errors: {}", self.harness_errors.len())?;
            for (seed, error) in &self.harness_errors {
                writeln!(f, "  seed {seed}: {error}")?;
            }
        }
        Ok(())
    }
}

/// One line about a finished run.
pub fn describe_run(report: &RunReport) -> String {
    let s = &report.stats;
    let faults: Vec<String> = s.faults.iter().map(|(k, n)| format!("{k}x{n}")).collect();
    format!(
        "seed {}: {} servers, {:?} store, {} clients: {} ok / {} rejected / {} indeterminate; \
         faults: {}; violations: {} [{:.1} s]",
        report.plan.seed,
        report.plan.servers,
        report.plan.store,
        report.plan.clients,
        s.ops_ok,
        s.ops_rejected,
        s.ops_indeterminate,
        if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(" ")
        },
        report.violations.len(),
        s.elapsed_ms as f64 / 1000.0
    )
}

/// Runs a batch, calling `progress` after each run.
pub async fn run_batch(
    options: &BatchOptions,
    mut progress: impl FnMut(usize, Result<&RunReport, &str>),
) -> Summary {
    let mut summary = Summary::default();
    for n in 0..options.runs {
        let seed = options.first_seed.wrapping_add(n as u64);
        let plan = Plan::from_seed(seed, &options.overrides);
        match run::run(&plan, &options.run).await {
            Ok(report) => {
                summary.add(&report);
                progress(n, Ok(&report));
            }
            Err(error) => {
                progress(n, Err(&error));
                summary.harness_errors.push((seed, error));
            }
        }
    }
    summary
}

/// Loads a report written by a failing run (to replay its plan).
pub fn load_report(path: &std::path::Path) -> Result<RunReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
