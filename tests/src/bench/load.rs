//! The closed-loop load generator: `workers` tasks, each with one command in flight, against any
//! [`Target`] (a bully cluster through its Rust client, an etcd cluster through its JSON
//! gateway), so both systems see the same mixes from the same code.
//!
//! A command counts when its answer arrived inside the window (the warm-up and the tail are
//! applied but not counted). Counting by answer, not by when it was sent, keeps a point whose
//! latency exceeds the window (256 workers on a slow store) from reading as zero. Besides latency, the generator records
//! when each acknowledgement and failure happened, which is what failover stalls are computed
//! from.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A command mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Increment a random counter (a read-modify-write).
    Incr,
    /// Store a string under a random key.
    Put,
    /// Read a random key (linearizable).
    Get,
    /// 50% get, 40% put, 10% incr.
    Mix,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Incr, Op::Put, Op::Get, Op::Mix];

    pub fn name(self) -> &'static str {
        match self {
            Op::Incr => "incr",
            Op::Put => "put",
            Op::Get => "get",
            Op::Mix => "mix",
        }
    }
}

/// One command as the generator issues it; a [`Worker`] translates it for its system.
#[derive(Clone, Debug)]
pub enum Request {
    Incr { key: String },
    Put { key: String, value: Arc<str> },
    Get { key: String },
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Load {
    pub op: Op,
    pub workers: u32,
    /// Distinct keys the commands spread over.
    pub keys: u32,
    /// Size of the string a put stores.
    pub value_bytes: usize,
}

impl Load {
    /// Counters and strings live under different prefixes, so an `incr` never meets a string.
    fn request(&self, value: &Arc<str>) -> Request {
        let op = match self.op {
            Op::Mix => match rand::random_range(0..10) {
                0..5 => Op::Get,
                5..9 => Op::Put,
                _ => Op::Incr,
            },
            other => other,
        };
        let n = rand::random_range(0..self.keys);
        match op {
            Op::Incr => Request::Incr {
                key: format!("bench/n/{n}"),
            },
            Op::Get => Request::Get {
                key: format!("bench/s/{n}"),
            },
            Op::Put | Op::Mix => Request::Put {
                key: format!("bench/s/{n}"),
                value: value.clone(),
            },
        }
    }
}

/// A system under load: hands out one independent client per worker, as separate client
/// processes would have (their own connections, their own idea of the leader).
pub trait Target {
    type Worker: Worker;
    fn worker(&self, index: u32) -> Self::Worker;
}

/// One worker's client. `Err` means the command did not execute before the client's deadline
/// (retries included).
pub trait Worker: Send + 'static {
    fn execute(&mut self, request: &Request) -> impl Future<Output = Result<(), String>> + Send;
}

/// The measured window, and a way to end a run early.
#[derive(Clone)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
    /// Set to stop every worker after its current command.
    pub stop: Arc<AtomicBool>,
    /// Acknowledgements so far (counted or not), for watching a run from outside.
    pub acked: Arc<AtomicU64>,
}

impl Window {
    /// Opens after `warmup`, closes `duration` later.
    pub fn after(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
            stop: Arc::default(),
            acked: Arc::default(),
        }
    }
}

/// What the workers saw inside the window.
#[derive(Debug, Default)]
pub struct Tally {
    pub latencies_us: Vec<u64>,
    /// When each acknowledgement arrived.
    pub acked_at: Vec<Instant>,
    /// When each failure was reported.
    pub failed_at: Vec<Instant>,
    pub first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.acked_at.extend(other.acked_at);
        self.failed_at.extend(other.failed_at);
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// Runs `load` against `target` until the window closes (or `stop` is set).
pub async fn run<T: Target>(target: &T, load: &Load, window: &Window) -> Tally {
    let load = Arc::new(load.clone());
    let tasks: Vec<_> = (0..load.workers)
        .map(|i| {
            let worker = target.worker(i);
            tokio::spawn(work(worker, load.clone(), window.clone()))
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("a load worker panicked"));
    }
    tally.acked_at.sort_unstable();
    tally.failed_at.sort_unstable();
    tally
}

async fn work<W: Worker>(mut worker: W, load: Arc<Load>, window: Window) -> Tally {
    let value: Arc<str> = "x".repeat(load.value_bytes).into();
    let mut tally = Tally::default();
    while Instant::now() < window.end && !window.stop.load(Ordering::Relaxed) {
        let request = load.request(&value);
        let sent = Instant::now();
        let result = worker.execute(&request).await;
        let done = Instant::now();
        if result.is_ok() {
            window.acked.fetch_add(1, Ordering::Relaxed);
        }
        if done < window.start || done > window.end {
            continue;
        }
        match result {
            Ok(()) => {
                let micros = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.push(micros);
                tally.acked_at.push(done);
            }
            Err(e) => {
                tally.failed_at.push(done);
                tally.first_error.get_or_insert(e);
            }
        }
    }
    tally
}

/// Throughput and latency of one run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub acknowledged: usize,
    pub failed: usize,
    /// Acknowledged commands per second of the window.
    pub throughput: f64,
    /// Latency percentiles in milliseconds; `None` when nothing was acknowledged.
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The longest time without any acknowledgement, window edges included.
    pub longest_stall_ms: f64,
    pub first_error: Option<String>,
}

impl Stats {
    pub fn of(tally: &Tally, window: &Window) -> Stats {
        let mut latencies = tally.latencies_us.clone();
        latencies.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let pct = |p| percentile(&latencies, p).map(ms);
        let seconds = (window.end - window.start).as_secs_f64();
        Stats {
            acknowledged: latencies.len(),
            failed: tally.failed_at.len(),
            throughput: latencies.len() as f64 / seconds,
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            p999_ms: pct(99.9),
            max_ms: latencies.last().copied().map(ms),
            longest_stall_ms: longest_gap(&tally.acked_at, window.start, window.end).as_secs_f64()
                * 1000.0,
            first_error: tally.first_error.clone(),
        }
    }
}

/// The nearest-rank percentile of sorted values; `None` for no values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The longest gap between consecutive instants of `sorted` inside `[from, to]`, with `from`
/// and `to` themselves counted as boundaries.
pub fn longest_gap(sorted: &[Instant], from: Instant, to: Instant) -> Duration {
    let inside = sorted.iter().copied().filter(|t| *t >= from && *t <= to);
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in inside.chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_absent_without_values() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile::<u64>(&[], 50.0), None);
    }

    #[test]
    fn the_longest_gap_counts_the_window_edges() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let acks = [at(10), at(20), at(500), at(510)];
        assert_eq!(longest_gap(&acks, t0, at(600)), Duration::from_millis(480));
        // From the window's start to the first acknowledgement inside it.
        assert_eq!(
            longest_gap(&acks, at(15), at(505)),
            Duration::from_millis(480)
        );
        assert_eq!(longest_gap(&[], t0, at(100)), Duration::from_millis(100));
    }
}
