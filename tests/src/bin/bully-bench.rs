//! `bully-bench`: closed-loop load against a running cluster; prints throughput and latency.
//!
//! ```text
//! cargo run --release -p bully-tests --bin bully-bench -- --servers 127.0.0.1:7070,127.0.0.1:7072 \
//!     --clients 16 --duration 10s --op incr
//! ```
//! Each of `--clients` workers issues one command at a time through the real Rust client (fresh
//! id, retries with the same id), for `--warmup` unmeasured and then `--duration` measured.
//! Figures: acknowledged and failed commands, commands per second, latency percentiles, and the
//! longest stall (the longest time in which no worker got an acknowledgement: a failover shows
//! up here). `scripts/bench.sh` starts a cluster and runs a standard set.
//!
//! Exit codes: 0 every command acknowledged, 1 some failed, 2 bad arguments or no cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bully_client::{Client, ClientOptions, Command, CommandRequest};
use clap::{Parser, ValueEnum};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Op {
    /// `incr` of a random key.
    Incr,
    /// `put` of a random key with a `--value-bytes` string.
    Put,
    /// `get` of a random key.
    Get,
    /// 50% get, 40% put, 10% incr.
    Mix,
}

#[derive(Parser, Debug)]
#[command(
    name = "bully-bench",
    about = "Closed-loop load against a bully cluster: throughput and latency"
)]
struct Args {
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

/// What one worker saw in the measured window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    /// Instants of acknowledgements, for the longest stall.
    acked_at: Vec<Instant>,
    failed: u64,
    first_error: Option<String>,
}

fn command(op: Op, key: String, value: &str) -> Command {
    let op = match op {
        Op::Mix => match rand::random_range(0..10) {
            0..5 => Op::Get,
            5..9 => Op::Put,
            _ => Op::Incr,
        },
        other => other,
    };
    match op {
        Op::Incr => Command::Incr { key, delta: 1 },
        Op::Put | Op::Mix => Command::Put {
            key,
            value: value.into(),
        },
        Op::Get => Command::Get { key },
    }
}

async fn worker(client: Client, args: Arc<Args>, start: Instant, end: Instant) -> Tally {
    let value = "x".repeat(args.value_bytes);
    let mut tally = Tally::default();
    while Instant::now() < end {
        let key = format!("bench/{}", rand::random_range(0..args.keys));
        let request = CommandRequest::new(command(args.op, key, &value));
        let sent = Instant::now();
        let result = client.execute(&request).await;
        let done = Instant::now();
        if sent < start || done > end {
            continue;
        }
        match result {
            Ok(_) => {
                tally
                    .latencies_us
                    .push(u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX));
                tally.acked_at.push(done);
            }
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    tally
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let token = match &args.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("error: cannot read --token-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => std::env::var("BULLY_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let options = ClientOptions {
        timeout: args.timeout,
        attempt_timeout: Duration::from_secs(2),
        token,
        tls: None,
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

    let args = Arc::new(args);
    let start = Instant::now() + args.warmup;
    let end = start + args.duration;
    // One client (one connection pool, one remembered coordinator) per worker, as independent
    // client processes would have.
    let workers: Vec<_> = (0..args.clients)
        .map(|_| {
            let client = Client::new(args.servers.clone(), options.clone()).expect("checked above");
            tokio::spawn(worker(client, args.clone(), start, end))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut acked_at = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for handle in workers {
        let tally = handle.await.expect("a worker panicked");
        latencies.extend(tally.latencies_us);
        acked_at.extend(tally.acked_at);
        failed += tally.failed;
        first_error = first_error.or(tally.first_error);
    }
    latencies.sort_unstable();
    acked_at.push(start);
    acked_at.push(end);
    acked_at.sort_unstable();
    let stall = acked_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let acked = latencies.len();
    let seconds = args.duration.as_secs_f64();
    let throughput = acked as f64 / seconds;
    let [p50, p90, p99, p999] = [50.0, 90.0, 99.0, 99.9].map(|p| percentile(&latencies, p));
    let max = latencies.last().copied().unwrap_or(0) as f64 / 1000.0;
    let op = format!("{:?}", args.op).to_lowercase();
    if args.json {
        let report = serde_json::json!({
            "op": op, "clients": args.clients, "seconds": seconds,
            "acknowledged": acked, "failed": failed, "throughput": throughput,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p99.9": p999, "max": max},
            "longest_stall_ms": stall.as_secs_f64() * 1000.0,
            "first_error": first_error,
        });
        println!("{report}");
    } else {
        println!(
            "{op:>4} clients {:>4}: {throughput:>8.0} cmd/s  {acked} ok {failed} failed  \
             latency ms p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} p99.9 {p999:.2} max {max:.2}  \
             longest stall {:.0} ms",
            args.clients,
            stall.as_secs_f64() * 1000.0
        );
        if let Some(e) = &first_error {
            println!("  first error: {e}");
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
