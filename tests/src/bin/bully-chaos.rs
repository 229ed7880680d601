//! `bully-chaos`: batches of chaos runs against real server processes (see `docs/chaos.md`).
//!
//! ```text
//! cargo build --workspace --bins
//! cargo run -p bully-tests --bin bully-chaos -- --runs 20 --seed 1
//! cargo run -p bully-tests --bin bully-chaos -- --replay target/chaos/chaos-7.json
//! ```
//! Exit codes: 0 no violation, 1 violations found, 2 the harness could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bully_tests::chaos::plan::{Overrides, StoreChoice};
use bully_tests::chaos::run::{self, RunOptions};
use bully_tests::chaos::{self, BatchOptions, Summary, describe_run};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreArg {
    Embedded,
    Mongo,
}

#[derive(Parser, Debug)]
#[command(
    name = "bully-chaos",
    about = "Chaos runs: real servers, randomized faults, linearizability and exactly-once checks"
)]
struct Args {
    /// Number of runs; run k uses seed SEED + k.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// First seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Servers per cluster (default: the seed chooses 3 or 5).
    #[arg(long)]
    servers: Option<usize>,
    /// Store (default: the seed chooses; mongo only when SecantusDB is installed).
    #[arg(long, value_enum)]
    store: Option<StoreArg>,
    /// Concurrent clients (default: the seed chooses 4 to 7).
    #[arg(long)]
    clients: Option<usize>,
    /// How long each run's workload runs under faults.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where failing runs write their report and logs.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write reports for passing runs too.
    #[arg(long)]
    keep: bool,
    /// Linearizability search steps per key before giving up.
    #[arg(long, default_value_t = bully_tests::chaos::linearizability::DEFAULT_BUDGET)]
    budget: u64,
    /// Negative control: run SecantusDB without --sync-on-commit, so store restarts lose
    /// acknowledged writes; the checks must then report violations.
    #[arg(long)]
    lossy_store: bool,
    /// Run the plan stored in a report file again (other plan flags are ignored).
    #[arg(long)]
    replay: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/chaos"));
    let options = RunOptions {
        out_dir: out,
        keep: args.keep,
        budget: args.budget,
    };
    let summary = match &args.replay {
        Some(file) => replay(file, &options).await,
        None => batch(&args, options).await,
    };
    println!("\n{summary}");
    if !summary.harness_errors.is_empty() {
        ExitCode::from(2)
    } else if summary.violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn replay(file: &std::path::Path, options: &RunOptions) -> Summary {
    let mut summary = Summary::default();
    let plan = match chaos::load_report(file) {
        Ok(report) => report.plan,
        Err(e) => {
            summary.harness_errors.push((0, e));
            return summary;
        }
    };
    println!(
        "replaying the plan of seed {} from {}",
        plan.seed,
        file.display()
    );
    match run::run(&plan, options).await {
        Ok(report) => {
            print_run(&report);
            summary.add(&report);
        }
        Err(e) => summary.harness_errors.push((plan.seed, e)),
    }
    summary
}

async fn batch(args: &Args, options: RunOptions) -> Summary {
    let first_seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let mongo_available = bully_tests::secantus::available();
    if matches!(args.store, Some(StoreArg::Mongo)) && !mongo_available {
        eprintln!("warning: SecantusDB is not installed (bash scripts/install-secantus.sh)");
    }
    let overrides = Overrides {
        servers: args.servers,
        store: args.store.map(|s| match s {
            StoreArg::Embedded => StoreChoice::Embedded,
            StoreArg::Mongo => StoreChoice::Mongo,
        }),
        clients: args.clients,
        duration_ms: Some(args.duration.as_millis() as u64),
        mongo_available,
        lossy_store: args.lossy_store,
    };
    println!(
        "{} runs from seed {first_seed} (reproduce one run with --seed N --runs 1 and the same \
         flags, or --replay on its report)",
        args.runs
    );
    let batch = BatchOptions {
        runs: args.runs,
        first_seed,
        overrides,
        run: options,
    };
    chaos::run_batch(&batch, |n, result| match result {
        Ok(report) => {
            print!("[{}/{}] ", n + 1, args.runs);
            print_run(report);
        }
        Err(e) => println!("[{}/{}] harness error: {e}", n + 1, args.runs),
    })
    .await
}

fn print_run(report: &run::RunReport) {
    println!("{}", describe_run(report));
    for v in &report.violations {
        println!("  VIOLATION [{}] {}", v.check, v.message);
    }
    if let Some(file) = &report.report_file {
        println!("  report: {}", file.display());
    }
}
