//! `bully-bench report`: every measurement of the benchmark report in one run, bully and etcd
//! side by side on the same machine, then `docs/benchmarks.md` with its plots.
//!
//! # Layout
//! Sections run one after another (one cluster at a time: the machine is small); a section that
//! fails is reported as failed, the others still run, and the command exits non-zero.
//! 1. bully, embedded store: idle memory, throughput grid (memory sampled), one-shot client,
//!    failover under SIGKILL and SIGTERM;
//! 2. the same grid on the strictly serial path ([`SERIAL_FLAG`]), where the server has it;
//! 3. etcd: the grid and failover under SIGKILL of its leader;
//! 4. bully on SecantusDB: the grid, default and serial;
//! 5. elections at several cluster sizes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::bully::{self, Bully, SERIAL_FLAG};
use super::election::{self, Election};
use super::etcd::{self, Etcd};
use super::failover::{self, Failovers, Replicated};
use super::host::{self, Machine};
use super::load::{self, Load, Op, Stats, Target, Window};
use super::oneshot::{self, OneShot};
use crate::cluster::StoreSpec;
use crate::secantus::{self, Secantus};

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Seconds, not minutes: few points and short windows (the smoke test). The figures mean
    /// nothing; the report says so.
    #[arg(long)]
    pub quick: bool,
    /// Directory for benchmarks.md and its plots (default: the workspace's docs/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Measured time of each throughput point (default 3s; quick 300ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Failover repetitions per signal for bully (default 20; quick 2).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Leave out etcd.
    #[arg(long)]
    pub no_etcd: bool,
    /// Leave out the SecantusDB store.
    #[arg(long)]
    pub no_mongo: bool,
}

/// What one run measures, from the arguments.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub ops: Vec<Op>,
    pub workers: Vec<u32>,
    pub warmup: Duration,
    pub duration: Duration,
    pub keys: u32,
    pub value_bytes: usize,
    pub failover_workers: u32,
    pub failover_reps: usize,
    pub etcd_failover_reps: usize,
    pub election_sizes: Vec<usize>,
    pub election_reps: usize,
    pub steady: Duration,
    pub oneshot_runs: usize,
}

impl Plan {
    pub fn from(args: &ReportArgs) -> Plan {
        let (quick, full) = (args.quick, !args.quick);
        fn pick<T>(quick: bool, q: T, f: T) -> T {
            if quick { q } else { f }
        }
        let reps = args.reps.unwrap_or(pick(quick, 2, 20));
        Plan {
            quick,
            ops: if full {
                Op::ALL.to_vec()
            } else {
                vec![Op::Incr, Op::Get]
            },
            workers: pick(quick, vec![1, 8], vec![1, 8, 64, 256]),
            warmup: pick(
                quick,
                Duration::from_millis(100),
                Duration::from_millis(500),
            ),
            duration: args.duration.unwrap_or(pick(
                quick,
                Duration::from_millis(300),
                Duration::from_secs(3),
            )),
            keys: 1000,
            value_bytes: 1024,
            failover_workers: 8,
            failover_reps: reps,
            etcd_failover_reps: pick(quick, 1, 10).min(reps),
            election_sizes: pick(quick, vec![3], vec![3, 5, 9, 25]),
            election_reps: pick(quick, 1, 3),
            steady: pick(quick, Duration::from_millis(500), Duration::from_secs(3)),
            oneshot_runs: pick(quick, 5, 100),
        }
    }

    fn load(&self, op: Op, workers: u32) -> Load {
        Load {
            op,
            workers,
            keys: self.keys,
            value_bytes: self.value_bytes,
        }
    }
}

/// A system and configuration whose throughput the report shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum System {
    Embedded,
    EmbeddedSerial,
    Mongo,
    MongoSerial,
    Etcd,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Embedded => "bully, embedded",
            System::EmbeddedSerial => "bully, embedded, serial",
            System::Mongo => "bully, SecantusDB",
            System::MongoSerial => "bully, SecantusDB, serial",
            System::Etcd => "etcd",
        }
    }
}

/// The throughput grid of one system.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Series {
    pub system: System,
    pub points: Vec<(Op, u32, Stats)>,
}

impl Series {
    pub fn get(&self, op: Op, workers: u32) -> Option<&Stats> {
        self.points
            .iter()
            .find(|(o, w, _)| *o == op && *w == workers)
            .map(|(_, _, s)| s)
    }
}

/// Resident memory of the servers, in MiB (the largest server).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Memory {
    pub idle_mib: f64,
    /// Sampled every 200 ms during the throughput grid.
    pub load_mib: f64,
    /// `VmHWM` after the grid.
    pub peak_mib: f64,
}

/// Everything one run measured.
#[derive(Debug, serde::Serialize)]
pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub load_start: String,
    pub load_end: String,
    pub elapsed_s: f64,
    /// The filesystem the stores and etcd's WAL were on (their fsyncs cost what it costs).
    pub tmp_filesystem: String,
    pub serial_flag: bool,
    pub heartbeat_interval_ms: f64,
    pub etcd_version: Option<String>,
    pub series: Vec<Series>,
    pub failovers: Vec<Failovers>,
    pub elections: Vec<Election>,
    pub oneshot: Option<OneShot>,
    pub memory: Option<Memory>,
    /// Sections left out, and why.
    pub skipped: Vec<String>,
    /// Sections that failed: (section, error).
    pub failures: Vec<(String, String)>,
}

impl Results {
    pub fn series(&self, system: System) -> Option<&Series> {
        self.series.iter().find(|s| s.system == system)
    }
}

/// Prints progress lines with the time since the start.
pub struct Progress(Instant);

impl Progress {
    pub fn say(&self, message: impl AsRef<str>) {
        eprintln!(
            "[{:>6.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            message.as_ref()
        );
    }
}

/// Runs every section and writes the report; `Err` if a section failed (the report is
/// written all the same).
pub async fn run(args: ReportArgs) -> Result<PathBuf, String> {
    let plan = Plan::from(&args);
    let progress = Progress(Instant::now());
    let say = |m: String| progress.say(m);
    let machine = Machine::describe();
    progress.say(format!(
        "bully-bench report: {} cores ({}), load average {}{}",
        machine.cores,
        machine.cpu_model,
        host::loadavg(),
        if plan.quick { ", QUICK mode" } else { "" }
    ));
    let mut results = Results {
        load_start: host::loadavg(),
        load_end: String::new(),
        elapsed_s: 0.0,
        tmp_filesystem: host::output(
            "stat",
            &["-f", "-c", "%T", &std::env::temp_dir().to_string_lossy()],
        )
        .unwrap_or_else(|| "unknown".into()),
        serial_flag: bully::serial_flag_supported(),
        heartbeat_interval_ms: bully::default_heartbeat_interval().as_secs_f64() * 1000.0,
        etcd_version: None,
        machine,
        plan: plan.clone(),
        series: Vec::new(),
        failovers: Vec::new(),
        elections: Vec::new(),
        oneshot: None,
        memory: None,
        skipped: Vec::new(),
        failures: Vec::new(),
    };
    if !results.serial_flag {
        results.skipped.push(format!(
            "the strictly serial path: bully-server has no `{}` flag yet (the current code is \
             the serial path)",
            SERIAL_FLAG.join(" ")
        ));
    }

    let outcome = embedded(&plan, &mut results, &say).await;
    record(&mut results, "bully, embedded store", outcome, &say);
    if results.serial_flag {
        let system = System::EmbeddedSerial;
        let outcome = grid_only(&plan, StoreSpec::Embedded, &SERIAL_FLAG, system, &say).await;
        let outcome = outcome.map(|s| results.series.push(s));
        record(&mut results, system.label(), outcome, &say);
    }
    if args.no_etcd {
        results.skipped.push("etcd: --no-etcd".into());
    } else {
        match etcd_binary(plan.quick, &say) {
            Some(binary) => {
                results.etcd_version = Some(etcd::version(&binary));
                let outcome = etcd_section(&plan, binary, &mut results, &say).await;
                record(&mut results, "etcd", outcome, &say);
            }
            None => results.skipped.push(
                "etcd: not installed (scripts/install-etcd.sh installs Debian's etcd-server); \
                 no peer baseline in this run"
                    .into(),
            ),
        }
    }
    if args.no_mongo {
        results.skipped.push("SecantusDB store: --no-mongo".into());
    } else if secantus_available(plan.quick, &say) {
        let outcome = mongo(&plan, &mut results, &say).await;
        record(&mut results, "bully, SecantusDB store", outcome, &say);
    } else {
        results.skipped.push(
            "SecantusDB store: not installed (scripts/install-secantus.sh installs it)".into(),
        );
    }
    for &n in &plan.election_sizes {
        say(format!("elections at N = {n}"));
        let outcome = election::measure(n, plan.steady, plan.election_reps, &say).await;
        let outcome = outcome.map(|e| results.elections.push(e));
        record(
            &mut results,
            &format!("elections at N = {n}"),
            outcome,
            &say,
        );
    }

    results.series.sort_by_key(|s| s.system);
    results.load_end = host::loadavg();
    results.elapsed_s = progress.0.elapsed().as_secs_f64();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| host::workspace().join("docs"));
    let path = super::markdown::write(&results, &out)?;
    say(format!(
        "wrote {} ({:.0} s in all)",
        path.display(),
        results.elapsed_s
    ));
    for line in super::markdown::summary(&results) {
        say(line);
    }
    if results.failures.is_empty() {
        Ok(path)
    } else {
        let failed: Vec<&str> = results.failures.iter().map(|(s, _)| s.as_str()).collect();
        Err(format!("failed sections: {}", failed.join("; ")))
    }
}

fn record(results: &mut Results, section: &str, outcome: Result<(), String>, say: &dyn Fn(String)) {
    if let Err(e) = outcome {
        say(format!("FAILED: {section}: {e}"));
        results.failures.push((section.into(), e));
    }
}

/// The throughput grid: every op at every worker count.
async fn grid<T: Target>(target: &T, plan: &Plan, system: System, say: &dyn Fn(String)) -> Series {
    let mut points = Vec::new();
    for &op in &plan.ops {
        for &workers in &plan.workers {
            let window = Window::after(plan.warmup, plan.duration);
            let tally = load::run(target, &plan.load(op, workers), &window).await;
            let stats = Stats::of(&tally, &window);
            say(format!(
                "{}: {:>4} x{workers:<3} {:>8.0} cmd/s  p50 {} p99 {} ms  {} failed",
                system.label(),
                op.name(),
                stats.throughput,
                ms(stats.p50_ms),
                ms(stats.p99_ms),
                stats.failed
            ));
            points.push((op, workers, stats));
        }
    }
    Series { system, points }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// Samples the largest `VmRSS` of `pids` every 200 ms until the returned flag is set.
fn sample_memory(pids: Vec<u32>) -> (Arc<AtomicBool>, Arc<Mutex<f64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(Mutex::new(0.0_f64));
    let (s, m) = (stop.clone(), max.clone());
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            let rss = pids
                .iter()
                .filter_map(|p| host::memory_mib(*p, "VmRSS"))
                .fold(0.0, f64::max);
            {
                let mut max = m.lock().unwrap_or_else(|p| p.into_inner());
                *max = max.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (stop, max)
}

fn largest(pids: &[u32], field: &str) -> f64 {
    pids.iter()
        .filter_map(|p| host::memory_mib(*p, field))
        .fold(0.0, f64::max)
}

/// Section 1: the embedded store with the defaults.
async fn embedded(plan: &Plan, results: &mut Results, say: &dyn Fn(String)) -> Result<(), String> {
    say("bully, embedded store: 3 servers".into());
    let mut bully = Bully::start(3, StoreSpec::Embedded, &[]);
    bully.agreed_leader(None, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = bully.pids();
    let mut memory = Memory {
        idle_mib: largest(&pids, "VmRSS"),
        ..Memory::default()
    };
    let (stop, max) = sample_memory(pids.clone());
    let series = grid(&bully.target(), plan, System::Embedded, say).await;
    stop.store(true, Ordering::Relaxed);
    memory.load_mib = *max.lock().unwrap_or_else(|p| p.into_inner());
    memory.peak_mib = largest(&pids, "VmHWM");
    say(format!(
        "server memory: idle {:.1} MiB, under load {:.1} MiB (peak {:.1})",
        memory.idle_mib, memory.load_mib, memory.peak_mib
    ));
    results.memory = Some(memory);
    results.series.push(series);

    let leader = bully.agreed_leader(None, Duration::from_secs(30)).await?;
    results.oneshot = Some(oneshot::measure(&bully, leader, plan.oneshot_runs)?);
    let target = bully.target();
    for signal in [Signal::SIGKILL, Signal::SIGTERM] {
        let load = plan.load(Op::Put, plan.failover_workers);
        let f =
            failover::measure(&mut bully, &target, &load, signal, plan.failover_reps, say).await?;
        say(failover_line(&f));
        results.failovers.push(f);
    }
    Ok(())
}

fn failover_line(f: &Failovers) -> String {
    format!(
        "{} {}: stall p50 {} p99 {} max {} ms over {} runs, {} failed",
        f.system,
        f.signal,
        ms(f.stall_percentile(50.0)),
        ms(f.stall_percentile(99.0)),
        ms(f.stall_percentile(100.0)),
        f.stalls.len(),
        f.failed()
    )
}

/// A 3-server cluster on `store` with `extra` flags, the grid only.
async fn grid_only(
    plan: &Plan,
    store: StoreSpec,
    extra: &[&str],
    system: System,
    say: &dyn Fn(String),
) -> Result<Series, String> {
    say(format!("{}: 3 servers", system.label()));
    let bully = Bully::start(3, store, extra);
    bully.agreed_leader(None, Duration::from_secs(30)).await?;
    Ok(grid(&bully.target(), plan, system, say).await)
}

async fn etcd_section(
    plan: &Plan,
    binary: PathBuf,
    results: &mut Results,
    say: &dyn Fn(String),
) -> Result<(), String> {
    say(format!("etcd: 3 members ({})", etcd::version(&binary)));
    let mut etcd = Etcd::start(binary, 3).await?;
    let target = etcd.target();
    results
        .series
        .push(grid(&target, plan, System::Etcd, say).await);
    let load = plan.load(Op::Put, plan.failover_workers);
    let f = failover::measure(
        &mut etcd,
        &target,
        &load,
        Signal::SIGKILL,
        plan.etcd_failover_reps,
        say,
    )
    .await?;
    say(failover_line(&f));
    results.failovers.push(f);
    Ok(())
}

async fn mongo(plan: &Plan, results: &mut Results, say: &dyn Fn(String)) -> Result<(), String> {
    let server = Secantus::try_start(true).await?;
    let mut runs = vec![(System::Mongo, &[][..])];
    if results.serial_flag {
        runs.push((System::MongoSerial, &SERIAL_FLAG[..]));
    }
    // The grid is long on this store (~300 cmd/s): the quick mode runs one point.
    let mut plan = plan.clone();
    if plan.quick {
        plan.ops = vec![Op::Incr];
        plan.workers = vec![8];
    }
    for (system, extra) in runs {
        let store = StoreSpec::Mongo {
            uri: server.uri(),
            database: format!("bench_{system:?}").to_lowercase(),
        };
        let series = grid_only(&plan, store, extra, system, say).await?;
        results.series.push(series);
    }
    Ok(())
}

/// The etcd binary, installing Debian's package first (not in quick mode) if it is missing.
fn etcd_binary(quick: bool, say: &dyn Fn(String)) -> Option<PathBuf> {
    if etcd::binary().is_none() && !quick {
        install("install-etcd.sh", say);
    }
    etcd::binary()
}

fn secantus_available(quick: bool, say: &dyn Fn(String)) -> bool {
    if !secantus::available() && !quick {
        install("install-secantus.sh", say);
    }
    secantus::available()
}

fn install(script: &str, say: &dyn Fn(String)) {
    let path = host::workspace().join("scripts").join(script);
    say(format!("running {}", path.display()));
    let status = std::process::Command::new("bash").arg(&path).status();
    if !status.is_ok_and(|s| s.success()) {
        say(format!("{script} failed: that section is skipped"));
    }
}
