//! `bully-bench`: closed-loop load against a running cluster, or the whole benchmark report.
//!
//! ```text
//! cargo run --release -p bully-tests --bin bully-bench -- --servers 127.0.0.1:7070,127.0.0.1:7072 \
//!     --clients 16 --duration 10s --op incr
//! cargo run --release -p bully-tests --bin bully-bench -- report     # docs/benchmarks.md
//! ```
//! Each of `--clients` workers issues one command at a time through the real Rust client (fresh
//! id, retries with the same id), for `--warmup` unmeasured and then `--duration` measured.
//! Figures: acknowledged and failed commands, commands per second, latency percentiles, and the
//! longest stall (the longest time in which no worker got an acknowledgement: a failover shows
//! up here). `report` starts its own clusters (bully on both stores, etcd) and is described in
//! `bully_tests::bench::report`.
//!
//! Exit codes: 0 every command acknowledged (report: every section ran), 1 some failed,
//! 2 bad arguments or no cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bully_client::{Client, ClientOptions};
use bully_tests::bench::bully::BullyTarget;
use bully_tests::bench::load::{self, Load, Op, Stats, Window};
use bully_tests::bench::report::{self, ReportArgs};
use clap::{Parser, Subcommand};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "bully-bench",
    about = "Closed-loop load against a bully cluster: throughput and latency",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Client addresses of the servers (host:port, comma-separated).
    #[arg(long, env = "BULLY_SERVERS", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Concurrent workers, each with one command in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time first (connections, caches).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, value_enum, default_value_t = Op::Incr)]
    op: Op,
    /// Distinct keys the commands spread over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    keys: u32,
    /// Size of the string a `put` stores.
    #[arg(long, default_value_t = 16)]
    value_bytes: usize,
    /// Deadline of one command, retries included.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// A file holding the bearer token (else BULLY_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// How long to wait for a ready coordinator before starting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait_ready: Duration,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run every benchmark (bully on both stores, etcd, failover, elections) and write
    /// docs/benchmarks.md with plots; about 8 minutes on 2 cores.
    Report(ReportArgs),
}

/// Waits until some server reports a ready coordinator.
async fn await_ready(client: &Client, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        for server in client.servers() {
            match client.status(server).await {
                Ok(status) if status.ready => return Ok(()),
                Ok(status) => last = format!("{server}: not ready ({:?})", status.role),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

fn token(args: &Args) -> Result<Option<String>, String> {
    match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| format!("cannot read --token-file {}: {e}", path.display())),
        None => Ok(std::env::var("BULLY_TOKEN").ok().filter(|t| !t.is_empty())),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Report(report)) = args.command {
        return match report::run(report).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match token(&args) {
        Ok(token) => ClientOptions {
            timeout: args.timeout,
            attempt_timeout: Duration::from_secs(2),
            token,
            tls: None,
        },
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let probe = match Client::new(args.servers.clone(), options.clone()) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = await_ready(&probe, args.wait_ready).await {
        eprintln!(
            "error: no ready coordinator within {:?}: {e}",
            args.wait_ready
        );
        return ExitCode::from(2);
    }

    let target = BullyTarget {
        servers: args.servers.clone(),
        options,
    };
    let load = Load {
        op: args.op,
        workers: args.clients,
        keys: args.keys,
        value_bytes: args.value_bytes,
    };
    let window = Window::after(args.warmup, args.duration);
    let tally = load::run(&target, &load, &window).await;
    let s = Stats::of(&tally, &window);
    let op = args.op.name();
    let ms = |v: Option<f64>| v.unwrap_or(f64::NAN);
    if args.json {
        let report = serde_json::json!({
            "op": op, "clients": args.clients, "seconds": args.duration.as_secs_f64(),
            "acknowledged": s.acknowledged, "failed": s.failed, "throughput": s.throughput,
            "latency_ms": {"p50": s.p50_ms, "p90": s.p90_ms, "p99": s.p99_ms,
                           "p99.9": s.p999_ms, "max": s.max_ms},
            "longest_stall_ms": s.longest_stall_ms,
            "first_error": s.first_error,
        });
        println!("{report}");
    } else {
        println!(
            "{op:>4} clients {:>4}: {:>8.0} cmd/s  {} ok {} failed  latency ms p50 {:.2} \
             p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}  longest stall {:.0} ms",
            args.clients,
            s.throughput,
            s.acknowledged,
            s.failed,
            ms(s.p50_ms),
            ms(s.p90_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            ms(s.max_ms),
            s.longest_stall_ms
        );
        if let Some(e) = &s.first_error {
            println!("  first error: {e}");
        }
    }
    if s.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
