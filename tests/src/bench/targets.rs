//! The targets of issue 17, checked against one run's figures: each says met, MISSED and by
//! how much, or n/a and why.

use super::load::Op;
use super::plot::thousands;
use super::report::{Results, System};

/// One row of the targets table.
pub struct Verdict {
    pub figure: String,
    pub measured: String,
    pub target: String,
    pub verdict: String,
}

impl Verdict {
    pub fn missed(&self) -> bool {
        self.verdict.starts_with("MISSED")
    }
}

/// Throughput `measured` against a floor of `target`.
fn at_least(measured: f64, target: f64, unit: &str) -> String {
    if measured >= target {
        "met".into()
    } else if unit == "x" {
        format!(
            "MISSED: {measured:.1}x, not {target:.0}x ({:.0}% of the target)",
            measured / target * 100.0
        )
    } else {
        format!(
            "MISSED by {} {unit} ({:.0}% of the target; {:.1}x short)",
            thousands(target - measured),
            measured / target * 100.0,
            target / measured.max(f64::MIN_POSITIVE)
        )
    }
}

/// A time or size `measured` against a ceiling of `target`.
fn at_most(measured: f64, target: f64, unit: &str) -> String {
    if measured <= target {
        "met".into()
    } else {
        format!(
            "MISSED by {} {unit} ({:.1}x the target)",
            thousands(measured - target),
            measured / target
        )
    }
}

fn na(why: &str) -> String {
    format!("n/a: {why}")
}

/// The worker count the throughput targets are stated at.
const AT: u32 = 64;

pub fn verdicts(r: &Results) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut row = |figure: String, measured: String, target: &str, verdict: String| {
        out.push(Verdict {
            figure,
            measured,
            target: target.into(),
            verdict,
        })
    };
    let tput = |system, op, workers| {
        r.series(system)
            .and_then(|s| s.get(op, workers))
            .map(|s| s.throughput)
    };
    let no_serial = if r.serial_flag {
        "the serial run is missing (see failures)"
    } else {
        "the server has no serial-path flag yet"
    };

    for op in [Op::Put, Op::Incr, Op::Get] {
        let Some(t) = tput(System::Embedded, op, AT) else {
            continue;
        };
        row(
            format!("{}, {AT} workers (embedded)", op.name()),
            format!("{} cmd/s", thousands(t)),
            ">= 20,000 cmd/s",
            at_least(t, 20_000.0, "cmd/s"),
        );
        if op == Op::Get {
            continue;
        }
        let serial = tput(System::EmbeddedSerial, op, AT);
        row(
            format!(
                "{}, {AT} workers: batching vs the strictly serial path",
                op.name()
            ),
            serial.map_or("-".into(), |s| format!("{:.1}x", t / s)),
            ">= 10x",
            serial.map_or(na(no_serial), |s| at_least(t / s, 10.0, "x")),
        );
        let ratios: Vec<(u32, f64)> = r
            .plan
            .workers
            .iter()
            .filter_map(|&w| {
                Some((
                    w,
                    tput(System::Embedded, op, w)? / tput(System::Etcd, op, w)?,
                ))
            })
            .collect();
        let behind: Vec<String> = ratios
            .iter()
            .filter(|(_, x)| *x < 1.0)
            .map(|(w, x)| format!("{w} workers ({x:.2}x)"))
            .collect();
        row(
            format!("{}: bully / etcd at every worker count", op.name()),
            ratios
                .iter()
                .map(|(w, x)| format!("{w}: {x:.2}x"))
                .collect::<Vec<_>>()
                .join(", "),
            ">= 1x",
            if ratios.is_empty() {
                na("no etcd run")
            } else if behind.is_empty() {
                "met".into()
            } else {
                format!("MISSED at {}", behind.join(", "))
            },
        );
    }

    let failover = |system: &str, signal: &str| {
        r.failovers
            .iter()
            .find(|f| f.system == system && f.signal == signal)
    };
    if let Some(f) = failover("bully", "KILL") {
        let (p50, p99) = (
            f.stall_percentile(50.0).unwrap_or(f64::NAN),
            f.stall_percentile(99.0).unwrap_or(f64::NAN),
        );
        row(
            format!(
                "SIGKILL of the coordinator, {} workers: stall p50 ({} runs)",
                f.workers,
                f.stalls.len()
            ),
            format!("{p50:.0} ms"),
            "<= 500 ms",
            at_most(p50, 500.0, "ms"),
        );
        row(
            "SIGKILL: stall p99".into(),
            format!("{p99:.0} ms, {} failed", f.failed()),
            "<= 1,000 ms",
            at_most(p99, 1000.0, "ms"),
        );
        if let Some(e) = failover("etcd", "KILL") {
            let (ep50, emax) = (
                e.stall_percentile(50.0).unwrap_or(f64::NAN),
                e.stall_percentile(100.0).unwrap_or(f64::NAN),
            );
            let max = f.stall_percentile(100.0).unwrap_or(f64::NAN);
            row(
                "SIGKILL stall: bully vs etcd's leader (p50 / max)".into(),
                format!("bully {p50:.0} / {max:.0} ms, etcd {ep50:.0} / {emax:.0} ms"),
                "bully <= etcd",
                if p50 <= ep50 && max <= emax {
                    "met".into()
                } else {
                    format!(
                        "MISSED: p50 {:.2}x, max {:.2}x etcd's",
                        p50 / ep50,
                        max / emax
                    )
                },
            );
        }
    }
    if let Some(f) = failover("bully", "TERM") {
        let max = f.stall_percentile(100.0).unwrap_or(f64::NAN);
        let failed = f.failed();
        row(
            format!(
                "SIGTERM of the coordinator: longest stall of {} runs, failed",
                f.stalls.len()
            ),
            format!("{max:.0} ms, {failed} failed"),
            "<= 100 ms, 0 failed",
            match (at_most(max, 100.0, "ms"), failed) {
                (v, 0) => v,
                (v, n) => format!("MISSED: {n} failed; stall {v}"),
            },
        );
    }

    for e in &r.elections {
        let n = e.servers as f64;
        let worst = e.converge_ms.iter().copied().fold(f64::NAN, f64::max);
        let messages = e.election_messages.iter().copied().max().unwrap_or(0) as f64;
        if e.servers == 25 {
            row(
                "25 servers: SIGKILL -> every survivor agrees (worst run)".into(),
                format!("{worst:.0} ms"),
                "<= 1,000 ms",
                at_most(worst, 1000.0, "ms"),
            );
        }
        row(
            format!("N = {}: election messages (worst run)", e.servers),
            thousands(messages),
            &format!("<= 3N = {}", 3 * e.servers),
            at_most(messages, 3.0 * n, "messages"),
        );
        let per_interval = e.steady_messages_per_s * r.heartbeat_interval_ms / 1000.0;
        row(
            format!(
                "N = {}: steady peer messages per heartbeat interval",
                e.servers
            ),
            format!(
                "{} ({}/s)",
                thousands(per_interval.round()),
                thousands(e.steady_messages_per_s.round())
            ),
            &format!("O(N): <= 2N = {}", 2 * e.servers),
            at_most(per_interval, 2.0 * n, "messages"),
        );
    }

    if let Some(o) = &r.oneshot {
        for (how, v) in [
            ("coordinator first", o.coordinator_first),
            ("a follower first", o.follower_first),
        ] {
            row(
                format!("one-shot `bully-client get`, {how}: p50 above `/bin/true`"),
                format!(
                    "{:.1} ms ({:.1} vs {:.1})",
                    v[0] - o.bare[0],
                    v[0],
                    o.bare[0]
                ),
                "<= 2 ms",
                at_most(v[0] - o.bare[0], 2.0, "ms"),
            );
        }
    }
    if let Some(m) = &r.memory {
        row(
            "server RSS idle".into(),
            format!("{:.1} MiB", m.idle_mib),
            "<= 25 MiB",
            at_most(m.idle_mib, 25.0, "MiB"),
        );
        row(
            "server RSS under load".into(),
            format!("{:.1} MiB (peak {:.1})", m.load_mib, m.peak_mib),
            "<= 64 MiB",
            at_most(m.load_mib.max(m.peak_mib), 64.0, "MiB"),
        );
    }
    if let Some(t) = tput(System::Mongo, Op::Put, AT) {
        let serial = tput(System::MongoSerial, Op::Put, AT);
        row(
            format!("SecantusDB store, put, {AT} workers: vs its serial path"),
            format!(
                "{} cmd/s{}",
                thousands(t),
                serial.map_or(String::new(), |s| format!(", {:.1}x", t / s))
            ),
            ">= 5x",
            serial.map_or(na(no_serial), |s| at_least(t / s, 5.0, "x")),
        );
    }
    out
}
