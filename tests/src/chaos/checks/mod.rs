//! The invariants a chaos run must keep, checked after the run from the history, the store and
//! the servers' logs.
//!
//! - **linearizability**: the history (final reads included) is linearizable per key
//!   ([`super::linearizability`]). Implies that every acknowledged write is reflected.
//! - **exactly-once**: every acknowledged write has its record in the store with the same seq,
//!   term and outcome; each counter key's final value is the sum of the deltas of the
//!   increments that have a record (nothing lost, nothing applied twice).
//! - **order**: the sequence numbers of acknowledged writes are unique (a read reports the seq
//!   of the last write it reflects and is placed right after it); terms never decrease as
//!   sequence numbers increase; the order respects real time (a command that completed before
//!   another was invoked comes earlier), which includes each client's program order; and
//!   replaying the commands in that order reproduces every observed result.
//! - **terms**: from the logs, each term is claimed by one server process; a server executes
//!   only under a term it claimed; it never answers with a newer term than its own; each
//!   acknowledged fresh (non-duplicate) command was applied by the process that claimed its
//!   term. So at most one coordinator commits in any term.
//! - **crashes**: no server exits or panics unless the harness made it.
//! - **partitions**: no server claims a term across a partition from a coordinator that is
//!   alive (the lease on the fence forbids it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use bully_client::{Command, Outcome};
use bully_server::store::{FenceState, Record};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::faults::{Outage, PartitionWindow};
use super::history::{OpRecord, OpResult, Resolved, resolve};
use super::linearizability::kv::{KeyResult, check_kv, replay_in_order};
use crate::harness::invariants;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub check: String,
    pub message: String,
}

fn violation(check: &str, message: String) -> Violation {
    Violation {
        check: check.into(),
        message,
    }
}

/// Facts gathered for the checks, besides the history.
pub struct Evidence<'a> {
    pub history: &'a [OpRecord],
    /// Store records of every write id that has one (looked up after all servers stopped).
    pub records: &'a HashMap<String, Record>,
    /// Each counter key's value in the store after all servers stopped.
    pub counters: &'a BTreeMap<String, Option<Value>>,
    pub fence: Option<&'a FenceState>,
    /// One log file per server.
    pub logs: &'a [&'a Path],
    pub budget: u64,
    /// The partitions and outages the faults made, in milliseconds since `epoch_unix_ms`.
    pub partitions: &'a [PartitionWindow],
    pub outages: &'a [Outage],
    pub epoch_unix_ms: u64,
}

/// What the checks counted, for the summary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckStats {
    pub checked_ops: usize,
    pub claims: usize,
    pub attributed: usize,
    pub unattributed: usize,
    /// Terms claimed across a partition from a live coordinator (each also a violation).
    pub depositions: usize,
}

pub fn run_all(evidence: &Evidence<'_>) -> (Vec<Violation>, CheckStats) {
    let mut violations = Vec::new();
    let mut stats = CheckStats::default();
    for op in evidence.history {
        if let OpResult::Rejected { code, error } = &op.result {
            violations.push(violation(
                "rejected",
                format!("valid command {} was rejected ({code}): {error}", op.id),
            ));
        }
    }
    let resolved = resolve(evidence.history, evidence.records);
    stats.checked_ops = resolved.len();
    linearizability(evidence, &resolved, &mut violations);
    exactly_once(evidence, &mut violations);
    order(evidence.history, &resolved, &mut violations);
    terms(evidence, &mut violations, &mut stats);
    depositions(evidence, &mut violations, &mut stats);
    (violations, stats)
}

/// A live coordinator deposed by a partitioned server: a term claimed by a server on the
/// other side of a partition from the coordinator of the moment it began, while that
/// coordinator was running (neither killed nor paused). The lease on the fence forbids it.
fn depositions(evidence: &Evidence<'_>, out: &mut Vec<Violation>, stats: &mut CheckStats) {
    for (server, path) in evidence.logs.iter().enumerate() {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue; // reported by the term checks
        };
        for line in text.lines() {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if value.get("message").and_then(Value::as_str) != Some("claimed term") {
                continue;
            }
            let Some(at) = value
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            else {
                continue;
            };
            let Some(at) = (at.as_millis() as u64).checked_sub(evidence.epoch_unix_ms) else {
                continue;
            };
            let term = value.get("term").and_then(Value::as_u64).unwrap_or(0);
            let running = |s: usize| {
                !evidence
                    .outages
                    .iter()
                    .any(|o| o.server == s && o.from_ms <= at && o.to_ms.is_none_or(|to| at <= to))
            };
            for window in evidence.partitions {
                let active = window.from_ms <= at && window.to_ms.is_none_or(|to| at <= to);
                let Some(coordinator) = window.coordinator else {
                    continue;
                };
                let apart =
                    window.isolated.contains(&server) != window.isolated.contains(&coordinator);
                if active && apart && coordinator != server && running(coordinator) {
                    stats.depositions += 1;
                    out.push(violation(
                        "partition-deposed",
                        format!(
                            "s{server} claimed term {term} at {at} ms across partition #{} from \
                             the live coordinator s{coordinator}",
                            window.id
                        ),
                    ));
                }
            }
        }
    }
}

fn describe(history: &[OpRecord], index: usize) -> String {
    let op = &history[index];
    let result = match &op.result {
        OpResult::Ok { response } => serde_json::to_string(response).unwrap_or_default(),
        other => serde_json::to_string(other).unwrap_or_default(),
    };
    format!(
        "#{index} client {} id {} {} [{}us..{}] -> {result}",
        op.client,
        op.id,
        serde_json::to_string(&op.command).unwrap_or_default(),
        op.invoke_us,
        op.complete_us
            .map_or("never".to_string(), |t| format!("{t}us"))
    )
}

fn linearizability(evidence: &Evidence<'_>, resolved: &[Resolved], out: &mut Vec<Violation>) {
    let ops: Vec<_> = resolved.iter().map(|r| r.op.clone()).collect();
    for verdict in check_kv(&ops, evidence.budget) {
        match verdict.result {
            KeyResult::Linearizable => {}
            KeyResult::Inconclusive { steps } => out.push(violation(
                "linearizability-inconclusive",
                format!(
                    "key {}: no verdict within {steps} search steps ({} ops)",
                    verdict.key, verdict.ops
                ),
            )),
            KeyResult::NotLinearizable {
                longest_prefix,
                value_after_prefix,
                stuck_at,
            } => {
                let tail: Vec<String> = longest_prefix
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .map(|&i| describe(evidence.history, resolved[i].index))
                    .collect();
                let stuck = stuck_at.map_or("the end of the history".to_string(), |i| {
                    describe(evidence.history, resolved[i].index)
                });
                out.push(violation(
                    "linearizability",
                    format!(
                        "key {} ({} ops) is not linearizable: the longest linearizable prefix \
                         has {} ops and leaves the value {}; no order explains {stuck}; last \
                         ops of that prefix: {tail:#?}",
                        verdict.key,
                        verdict.ops,
                        longest_prefix.len(),
                        value_after_prefix.map_or("<absent>".to_string(), |v| v.to_string()),
                    ),
                ));
            }
        }
    }
}

fn exactly_once(evidence: &Evidence<'_>, out: &mut Vec<Violation>) {
    let acks = evidence
        .history
        .iter()
        .filter(|op| !op.command.is_read())
        .filter_map(|op| op.response().map(|r| (op.id.as_str(), r)));
    for message in invariants::acks_match_records(acks, evidence.records) {
        out.push(violation("exactly-once", message));
    }
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    for op in evidence.history {
        if let Command::Incr { key, delta } = &op.command
            && evidence.counters.contains_key(key)
            && let Some(Record {
                outcome: Outcome::Counter { .. },
                ..
            }) = evidence.records.get(&op.id)
        {
            *sums.entry(key.as_str()).or_default() += delta;
        }
    }
    for (key, value) in evidence.counters {
        let applied = sums.get(key.as_str()).copied().unwrap_or(0);
        if let Some(message) = invariants::counter_matches(key, value.as_ref(), applied) {
            out.push(violation("exactly-once", message));
        }
    }
}

fn order(history: &[OpRecord], resolved: &[Resolved], out: &mut Vec<Violation>) {
    // A write's position in the one order is its seq; a read's is just after the write whose
    // seq it reports (reads take no number of their own, and tie with each other).
    let position = |r: &Resolved| r.seq.map(|seq| (seq, r.op.input.is_read()));
    let mut by_seq: Vec<&Resolved> = resolved.iter().filter(|r| r.seq.is_some()).collect();
    by_seq.sort_by_key(|r| position(r));
    let labelled = || {
        by_seq
            .iter()
            .filter(|r| !r.op.input.is_read())
            .filter_map(|r| r.seq.map(|seq| (seq, r.term, describe(history, r.index))))
    };
    for message in invariants::seqs_unique(labelled().map(|(seq, _, label)| (seq, label))) {
        out.push(violation("order", message));
    }
    let writes = labelled().filter_map(|(seq, term, label)| Some((seq, term?, label)));
    for message in invariants::terms_follow_seqs(writes) {
        out.push(violation("order", message));
    }
    // A read under term t reporting seq s saw term t current after write s: t is at least
    // the term of write s and at most the term of the next write.
    let write_terms: BTreeMap<u64, u64> = by_seq
        .iter()
        .filter(|r| !r.op.input.is_read())
        .filter_map(|r| Some((r.seq?, r.term?)))
        .collect();
    for r in by_seq.iter().filter(|r| r.op.input.is_read()) {
        let (Some(seq), Some(term)) = (r.seq, r.term) else {
            continue;
        };
        let before = write_terms.range(..=seq).next_back().map(|(_, t)| *t);
        let after = write_terms.range(seq + 1..).next().map(|(_, t)| *t);
        if before.is_some_and(|b| term < b) || after.is_some_and(|a| term > a) {
            out.push(violation(
                "order",
                format!(
                    "{} read under term {term} at seq {seq}, between writes of terms {before:?} \
                     and {after:?}",
                    describe(history, r.index)
                ),
            ));
        }
    }
    // Real time: nothing placed strictly later in the order may have completed before this one
    // was invoked.
    let mut earliest_later: Option<(u64, usize)> = None;
    let mut group: Vec<&Resolved> = Vec::new();
    for r in by_seq.iter().rev() {
        if group.first().is_some_and(|g| position(g) != position(r)) {
            for g in group.drain(..) {
                if let Some(ret) = g.op.ret
                    && earliest_later.is_none_or(|(t, _)| ret < t)
                {
                    earliest_later = Some((ret, g.index));
                }
            }
        }
        if let Some((ret, later)) = earliest_later
            && ret < r.op.call
        {
            out.push(violation(
                "order",
                format!(
                    "seq order contradicts real time: {} completed before {} was invoked, but \
                     comes later in the order",
                    describe(history, later),
                    describe(history, r.index)
                ),
            ));
            break;
        }
        group.push(r);
    }
    let ops: Vec<_> = by_seq.iter().map(|r| &r.op).collect();
    if let Err((position, value)) = replay_in_order(&ops) {
        out.push(violation(
            "order",
            format!(
                "replaying commands in seq order, {} does not match the value {} its key held",
                describe(history, by_seq[position].index),
                value.map_or("<absent>".to_string(), |v| v.to_string())
            ),
        ));
    }
}

/// At most this many violations of one kind are listed one by one.
const MAX_REPORTED: usize = 10;

/// The log lines the term checks use.
#[derive(Debug)]
enum Line {
    Starting,
    Claimed(u64),
    Executing(u64),
    Stopped,
    Applied { id: String, seq: u64, term: u64 },
    Panic(String),
}

fn parse_line(text: &str) -> Option<Line> {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return text
            .contains("panicked")
            .then(|| Line::Panic(text.to_string()));
    };
    let message = value.get("message")?.as_str()?;
    let number = |field: &str| value.get(field).and_then(Value::as_u64);
    Some(match message {
        "server starting" => Line::Starting,
        "claimed term" => Line::Claimed(number("term")?),
        "executing commands" => Line::Executing(number("term")?),
        "stopped executing commands" | "queue drained" | "term superseded: stepping down" => {
            Line::Stopped
        }
        "applied" => Line::Applied {
            id: value.get("id")?.as_str()?.to_string(),
            seq: number("seq")?,
            term: number("term")?,
        },
        _ => return None,
    })
}

fn terms(evidence: &Evidence<'_>, out: &mut Vec<Violation>, stats: &mut CheckStats) {
    // (server, incarnation) of each claim, and of each applied (id, seq, term).
    let mut claims: BTreeMap<u64, Vec<(usize, usize)>> = BTreeMap::new();
    let mut applied: HashMap<(String, u64, u64), Vec<(usize, usize)>> = HashMap::new();
    for (server, path) in evidence.logs.iter().enumerate() {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                out.push(violation(
                    "terms",
                    format!(
                        "s{server}'s log {} cannot be read ({e}): the term checks cannot run",
                        path.display()
                    ),
                ));
                continue;
            }
        };
        if !text
            .lines()
            .any(|l| matches!(parse_line(l), Some(Line::Starting)))
        {
            out.push(violation(
                "terms",
                format!(
                    "s{server}'s log {} has no \"server starting\" line (not JSON at debug \
                     level?): the term checks cannot run",
                    path.display()
                ),
            ));
            continue;
        }
        let mut incarnation = 0;
        let mut claimed_here: HashSet<u64> = HashSet::new();
        let mut executing: Option<u64> = None;
        for line in text.lines().filter_map(parse_line) {
            match line {
                Line::Starting => {
                    incarnation += 1;
                    claimed_here.clear();
                    executing = None;
                }
                Line::Claimed(term) => {
                    claims.entry(term).or_default().push((server, incarnation));
                    claimed_here.insert(term);
                }
                Line::Executing(term) => {
                    if !claimed_here.contains(&term) {
                        out.push(violation(
                            "terms",
                            format!("s{server} executed commands under term {term}, which it did not claim"),
                        ));
                    }
                    executing = Some(term);
                }
                Line::Stopped => executing = None,
                Line::Applied { id, seq, term } => {
                    match executing {
                        Some(mine) if term <= mine => {}
                        _ => out.push(violation(
                            "terms",
                            format!(
                                "s{server} answered {id} with seq {seq} term {term} while \
                                 executing under {executing:?}"
                            ),
                        )),
                    }
                    applied
                        .entry((id, seq, term))
                        .or_default()
                        .push((server, incarnation));
                }
                Line::Panic(text) => {
                    out.push(violation("crash", format!("s{server} panicked: {text}")))
                }
            }
        }
    }
    stats.claims = claims.len();
    if claims.is_empty() {
        out.push(violation(
            "terms",
            "no server's log shows a claimed term: the term checks found nothing to check".into(),
        ));
    }
    for (term, holders) in &claims {
        if holders.len() > 1 {
            out.push(violation(
                "terms",
                format!("term {term} was claimed by several server processes: {holders:?}"),
            ));
        }
    }
    if let (Some(fence), Some(max)) = (evidence.fence, claims.keys().next_back())
        && fence.term < *max
    {
        out.push(violation(
            "terms",
            format!(
                "the store's term {} is below the claimed term {max}",
                fence.term
            ),
        ));
    }
    for op in evidence.history {
        let Some(response) = op.response() else {
            continue;
        };
        if response.duplicate || op.command.is_read() {
            continue;
        }
        let key = (op.id.clone(), response.seq, response.term);
        let Some(appliers) = applied.get(&key) else {
            // Every server logs "applied" before it answers, so an acknowledged fresh write
            // without that line means the logs do not show what happened.
            stats.unattributed += 1;
            if stats.unattributed <= MAX_REPORTED {
                out.push(violation(
                    "terms",
                    format!(
                        "{} was acknowledged (seq {}, term {}) but no server's log shows it \
                         applied",
                        op.id, response.seq, response.term
                    ),
                ));
            }
            continue;
        };
        let claimer = claims.get(&response.term).and_then(|h| h.first());
        if appliers.iter().any(|a| Some(a) == claimer) {
            stats.attributed += 1;
        } else {
            out.push(violation(
                "terms",
                format!(
                    "{} was applied in term {} by {appliers:?}, but that term was claimed by \
                     {claimer:?}",
                    op.id, response.term
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
