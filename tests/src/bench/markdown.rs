//! Writes one run's [`Results`] as `benchmarks.md`, its plots under `benchmarks/`, and the
//! raw figures as `benchmarks/results.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::load::{Op, Stats};
use super::plot::{self, Line, Panel, Scale, thousands};
use super::report::{Results, System};
use super::targets::verdicts;

/// The plots, by file name under `benchmarks/`.
pub const PLOTS: [&str; 4] = [
    "throughput.png",
    "latency.png",
    "failover.png",
    "elections.png",
];

/// Writes the report into `dir`; returns the Markdown file's path.
pub fn write(r: &Results, dir: &Path) -> Result<PathBuf, String> {
    let plots = dir.join("benchmarks");
    std::fs::create_dir_all(&plots).map_err(|e| format!("create {}: {e}", plots.display()))?;
    let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    std::fs::write(plots.join("results.json"), json).map_err(|e| e.to_string())?;
    let mut plot_errors = Vec::new();
    for (name, panels, columns) in [
        (
            PLOTS[0],
            op_panels(r, "throughput", "cmd/s", |s| Some(s.throughput)),
            2,
        ),
        (PLOTS[1], op_panels(r, "latency p99", "ms", |s| s.p99_ms), 2),
        (PLOTS[2], vec![failover_panel(r)], 1),
        (PLOTS[3], election_panels(r), 2),
    ] {
        if let Err(e) = plot::draw(&plots.join(name), &panels, columns) {
            plot_errors.push(format!("{name}: {e}"));
        }
    }
    let path = dir.join("benchmarks.md");
    std::fs::write(&path, markdown(r, &plot_errors))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    if plot_errors.is_empty() {
        Ok(path)
    } else {
        Err(format!("plots not drawn: {}", plot_errors.join("; ")))
    }
}

/// The lines printed at the end of a run: bully/etcd ratios and the targets missed.
pub fn summary(r: &Results) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(etcd) = r.series(System::Etcd) {
        for system in [System::Embedded, System::EmbeddedSerial, System::Mongo] {
            let Some(bully) = r.series(system) else {
                continue;
            };
            for &op in &r.plan.ops {
                let ratios: Vec<String> = r
                    .plan
                    .workers
                    .iter()
                    .filter_map(|&w| {
                        let x = bully.get(op, w)?.throughput / etcd.get(op, w)?.throughput;
                        Some(format!("{w}: {x:.2}x"))
                    })
                    .collect();
                if !ratios.is_empty() {
                    let (label, op) = (system.label(), op.name());
                    lines.push(format!("{label} / etcd, {op}: {}", ratios.join("  ")));
                }
            }
        }
    }
    for v in verdicts(r) {
        lines.push(format!(
            "{}: {} (target {}): {}",
            v.figure, v.measured, v.target, v.verdict
        ));
    }
    lines
}

fn op_panels(r: &Results, what: &str, unit: &str, value: fn(&Stats) -> Option<f64>) -> Vec<Panel> {
    r.plan
        .ops
        .iter()
        .map(|&op| Panel {
            title: format!("{}: {what}", op_title(op)),
            x_label: "concurrent workers (closed loop)".into(),
            y_label: format!("{what} ({unit}, log scale)"),
            x_scale: Scale::Log2,
            y_scale: Scale::Log10,
            lines: r
                .series
                .iter()
                .map(|s| Line {
                    label: s.system.label().into(),
                    points: s
                        .points
                        .iter()
                        .filter(|(o, _, _)| *o == op)
                        .filter_map(|(_, w, st)| Some((f64::from(*w), value(st)?)))
                        .collect(),
                })
                .filter(|l| !l.points.is_empty())
                .collect(),
        })
        .collect()
}

fn op_title(op: Op) -> &'static str {
    match op {
        Op::Incr => "incr",
        Op::Put => "put 1 KiB",
        Op::Get => "get",
        Op::Mix => "mix (50% get, 40% put, 10% incr)",
    }
}

fn failover_panel(r: &Results) -> Panel {
    Panel {
        title: "failover: stall per run, sorted".into(),
        x_label: "runs at or below (%)".into(),
        y_label: "longest time without an acknowledgement (ms)".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Linear,
        lines: r
            .failovers
            .iter()
            .map(|f| {
                let mut stalls: Vec<f64> = f.stalls.iter().map(|s| s.stall_ms).collect();
                stalls.sort_by(f64::total_cmp);
                let n = stalls.len() as f64;
                Line {
                    label: format!("{} SIG{}, {} workers", f.system, f.signal, f.workers),
                    points: stalls
                        .iter()
                        .enumerate()
                        .map(|(i, s)| ((i + 1) as f64 / n * 100.0, *s))
                        .collect(),
                }
            })
            .collect(),
    }
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    super::load::percentile(&v, 50.0)
}

fn election_panels(r: &Results) -> Vec<Panel> {
    let line = |label: &str, f: &dyn Fn(&super::election::Election) -> Option<f64>| Line {
        label: label.into(),
        points: r
            .elections
            .iter()
            .filter_map(|e| Some((e.servers as f64, f(e)?)))
            .collect(),
    };
    let panel = |title: &str, y_label: &str, lines| Panel {
        title: title.into(),
        x_label: "servers (N)".into(),
        y_label: y_label.into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Linear,
        lines,
    };
    let interval = r.heartbeat_interval_ms / 1000.0;
    vec![
        panel(
            "SIGKILL of the coordinator -> all survivors agree",
            "time (ms)",
            vec![
                line("median", &|e| median(&e.converge_ms)),
                line("worst", &|e| e.converge_ms.iter().copied().reduce(f64::max)),
                line("target 1,000 ms", &|_| Some(1000.0)),
            ],
        ),
        panel(
            "messages per election",
            "messages (survivors, heartbeats excluded)",
            vec![
                line("median", &|e| {
                    median(&e.election_messages).map(|m| m as f64)
                }),
                line("target 3N", &|e| Some(3.0 * e.servers as f64)),
            ],
        ),
        panel(
            "steady state: peer messages",
            "messages per heartbeat interval",
            vec![
                line("all servers", &|e| Some(e.steady_messages_per_s * interval)),
                line("target O(N): 2N", &|e| Some(2.0 * e.servers as f64)),
            ],
        ),
        panel(
            "steady state: servers' CPU",
            "CPU (% of one core, all servers)",
            vec![line("all servers", &|e| Some(e.steady_cpu_percent))],
        ),
    ]
}

fn cell(s: Option<&Stats>) -> String {
    let Some(s) = s else { return "-".into() };
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let failed = if s.failed > 0 {
        format!(", **{} failed**", s.failed)
    } else {
        String::new()
    };
    format!(
        "{} ({} / {}){failed}",
        thousands(s.throughput),
        ms(s.p50_ms),
        ms(s.p99_ms)
    )
}

fn markdown(r: &Results, plot_errors: &[String]) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo run --release -p bully-tests --bin bully-bench -- report` \
         (`scripts/bench.sh report`); every figure below comes from one run, bully and etcd \
         side by side on the same machine. Absolute figures move with the machine's load: \
         compare within one run.\n"
    );
    if r.plan.quick {
        let _ = writeln!(
            md,
            "**QUICK MODE: a smoke run with tiny windows; the figures mean nothing.**\n"
        );
    }
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| date (UTC) | {} |", m.date);
    let _ = writeln!(
        md,
        "| machine | {} cores, {}, Linux {} |",
        m.cores, m.cpu_model, m.kernel
    );
    let _ = writeln!(
        md,
        "| load average (1/5/15 min) | {} at the start, {} at the end |",
        r.load_start, r.load_end
    );
    let _ = writeln!(
        md,
        "| commit | {} |",
        m.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(md, "| run time | {:.0} s |", r.elapsed_s);
    let _ = writeln!(
        md,
        "| each throughput point | {} workers x {:?} measured after {:?} warm-up, {} keys, 1 KiB values |",
        r.plan
            .workers
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        r.plan.duration,
        r.plan.warmup,
        r.plan.keys
    );
    let _ = writeln!(
        md,
        "| stores' and etcd's files | a temporary directory on {} (fsync as configured: SQLite WAL, SecantusDB `--sync-on-commit`, etcd's default WAL fsync) |",
        r.tmp_filesystem
    );
    let _ = writeln!(
        md,
        "| etcd | {} |",
        r.etcd_version
            .as_ref()
            .map_or("not run".into(), |v| format!(
                "{v}, 3 members, default flags"
            ))
    );
    let _ = writeln!(
        md,
        "| strictly serial path | {} |\n",
        if r.serial_flag {
            format!("`{}`", super::bully::SERIAL_FLAG.join(" "))
        } else {
            "n/a: the server has no such flag yet (today's code is the serial path)".into()
        }
    );
    if !r.failures.is_empty() {
        let _ = writeln!(md, "## FAILED sections\n");
        for (section, error) in &r.failures {
            let _ = writeln!(md, "- **{section}**: {error}");
        }
        md.push('\n');
    }
    if !r.skipped.is_empty() || !plot_errors.is_empty() {
        let _ = writeln!(md, "Not measured in this run:\n");
        for s in r.skipped.iter().chain(plot_errors) {
            let _ = writeln!(md, "- {s}");
        }
        md.push('\n');
    }

    let _ = writeln!(
        md,
        "## Targets (issue 17)\n\n| figure | measured | target | verdict |\n|---|---|---|---|"
    );
    for v in verdicts(r) {
        let verdict = if v.missed() {
            format!("**{}**", v.verdict)
        } else {
            v.verdict
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {verdict} |",
            v.figure, v.measured, v.target
        );
    }

    let _ = writeln!(
        md,
        "\n## Throughput and latency\n\nClosed loop: each worker has one command in flight, \
         through its own client (bully: the Rust client; etcd: its JSON gateway, each worker \
         starting on a different member). The generator runs on the same 2 cores as the \
         servers. Cells: cmd/s (latency p50 / p99 in ms). etcd's `incr` is a range plus a \
         compare-and-put transaction on the key's revision, retried on conflict; its `get` is \
         linearizable, as bully's.\n\n![throughput](benchmarks/{})\n\n![latency](benchmarks/{})\n",
        PLOTS[0], PLOTS[1]
    );
    for &op in &r.plan.ops {
        let _ = write!(md, "### {}\n\n| workers |", op_title(op));
        for s in &r.series {
            let _ = write!(md, " {} |", s.system.label());
        }
        let etcd = r.series(System::Etcd);
        let bully = r.series(System::Embedded);
        if etcd.is_some() {
            md.push_str(" bully (embedded) / etcd |");
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(r.series.len() + usize::from(etcd.is_some())));
        md.push('\n');
        for &w in &r.plan.workers {
            let _ = write!(md, "| {w} |");
            for s in &r.series {
                let _ = write!(md, " {} |", cell(s.get(op, w)));
            }
            if let Some(etcd) = etcd {
                let ratio = bully
                    .and_then(|b| Some(b.get(op, w)?.throughput / etcd.get(op, w)?.throughput));
                let _ = write!(
                    md,
                    " {} |",
                    ratio.map_or("-".into(), |x| format!("{x:.2}x"))
                );
            }
            md.push('\n');
        }
        md.push('\n');
    }

    let _ = writeln!(
        md,
        "## Failover\n\nThe leader (bully's coordinator, etcd's Raft leader) is signalled while \
         the workers run `put` (1 KiB); the stall is the longest time without \
         any acknowledgement from the signal until the victim is restarted (after a new leader \
         is agreed and acknowledgements flow again). The victim comes back with the lowest \
         rank, so it rejoins as a follower. Failed: commands that missed the clients' 15 s \
         deadline.\n\n![failover](benchmarks/{})\n\n| system | signal | runs | stall p50 | p90 | p99 | max | failed | agreed on a new leader, p50 | longest stall between runs |\n|---|---|---|---|---|---|---|---|---|---|",
        PLOTS[2]
    );
    for f in &r.failovers {
        let p = |q| {
            f.stall_percentile(q)
                .map_or("-".into(), |v| format!("{v:.0} ms"))
        };
        let mut agreed: Vec<f64> = f.stalls.iter().map(|s| s.agreed_ms).collect();
        agreed.sort_by(f64::total_cmp);
        let _ = writeln!(
            md,
            "| {} | SIG{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.system,
            f.signal,
            f.stalls.len(),
            p(50.0),
            p(90.0),
            p(99.0),
            p(100.0),
            f.failed(),
            median(&agreed).map_or("-".into(), |v| format!("{v:.0} ms")),
            if f.stalls.len() > 1 {
                format!("{:.0} ms", f.longest_stall_between_ms)
            } else {
                "-".into()
            }
        );
    }

    let interval = r.heartbeat_interval_ms;
    let _ = writeln!(
        md,
        "\n## Elections and failure detection\n\nN servers on the embedded store, no load. \
         Steady state: peer messages and the servers' CPU (utime + stime from /proc) over {:?}. \
         Then the coordinator is SIGKILLed {} time(s) per N; the time runs until every survivor \
         names the same new ready coordinator, and the messages are those the survivors sent \
         from the kill until {} ms after that (heartbeats excluded; with them in brackets). \
         Heartbeat interval {interval:.0} ms (the server's default).\n\n![elections](benchmarks/{})\n\n| N | kill -> agreed, median | worst | election messages, median | worst | 3N | steady messages/s | per interval | CPU, all servers (% of a core) |\n|---|---|---|---|---|---|---|---|---|",
        r.plan.steady,
        r.plan.election_reps,
        super::election::AFTER.as_millis(),
        PLOTS[3]
    );
    for e in &r.elections {
        let worst_all = e.all_messages.iter().max().copied().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {:.0} ms | {:.0} ms | {} | {} ({}) | {} | {} | {} | {:.1}% |",
            e.servers,
            median(&e.converge_ms).unwrap_or(f64::NAN),
            e.converge_ms.iter().copied().fold(f64::NAN, f64::max),
            median(&e.election_messages).unwrap_or(0),
            e.election_messages.iter().max().copied().unwrap_or(0),
            worst_all,
            3 * e.servers,
            thousands(e.steady_messages_per_s.round()),
            thousands((e.steady_messages_per_s * interval / 1000.0).round()),
            e.steady_cpu_percent
        );
    }

    let _ = writeln!(md, "\n## One-shot client and memory\n");
    if let Some(o) = &r.oneshot {
        let _ = writeln!(
            md,
            "Wall time of one whole process, {} runs each, interleaved:\n\n| process | p50 | p90 |\n|---|---|---|\n| `/bin/true` | {:.1} ms | {:.1} ms |\n| `bully-client get`, the coordinator listed first | {:.1} ms | {:.1} ms |\n| `bully-client get`, a follower listed first | {:.1} ms | {:.1} ms |\n",
            o.runs,
            o.bare[0],
            o.bare[1],
            o.coordinator_first[0],
            o.coordinator_first[1],
            o.follower_first[0],
            o.follower_first[1]
        );
    }
    let _ = writeln!(md, "| process | resident memory |\n|---|---|");
    if let Some(mem) = &r.memory {
        let _ = writeln!(
            md,
            "| bully-server, idle (largest of 3) | {:.1} MiB |\n| bully-server, under the throughput grid (largest sample; VmHWM) | {:.1} MiB; {:.1} MiB |",
            mem.idle_mib, mem.load_mib, mem.peak_mib
        );
    }
    let _ = writeln!(
        md,
        "| bully-controller | not measured here: it needs a Kubernetes API server; measured in the Kubernetes e2e |"
    );
    md
}
