//! Every check fed a known-bad input reports it; the unaltered input passes.

use super::*;
use crate::chaos::faults::{Outage, PartitionWindow};
use bully_client::CommandResponse;
use serde_json::json;

struct Case {
    history: Vec<OpRecord>,
    records: HashMap<String, Record>,
    counters: BTreeMap<String, Option<Value>>,
    logs: Vec<Vec<Value>>,
    partitions: Vec<PartitionWindow>,
    outages: Vec<Outage>,
}

fn ack(
    client: usize,
    id: &str,
    command: Command,
    span: (u64, u64),
    seq: u64,
    outcome: Outcome,
) -> OpRecord {
    OpRecord {
        client,
        id: id.into(),
        command,
        invoke_us: span.0,
        complete_us: Some(span.1),
        result: OpResult::Ok {
            response: CommandResponse {
                id: id.into(),
                seq,
                term: 1,
                outcome,
                duplicate: false,
            },
        },
    }
}

fn line(message: &str, fields: Value) -> Value {
    let mut v = fields;
    v["message"] = json!(message);
    v
}

fn applied(id: &str, seq: u64, term: u64) -> Value {
    line("applied", json!({"id": id, "seq": seq, "term": term}))
}

/// Two clients: a put and a get of `k`, two increments of `n`; one server claimed term 1
/// and applied the writes.
fn good() -> Case {
    let put = |v: &str| Command::Put {
        key: "k".into(),
        value: json!(v),
        lease: None,
    };
    let incr = Command::Incr {
        key: "n".into(),
        delta: 1,
    };
    let history = vec![
        ack(0, "p1", put("a"), (0, 10), 1, Outcome::Ok),
        ack(
            1,
            "i1",
            incr.clone(),
            (20, 30),
            2,
            Outcome::Counter { value: 1 },
        ),
        ack(
            0,
            "g1",
            Command::Get { key: "k".into() },
            (40, 50),
            3,
            Outcome::Value { value: json!("a") },
        ),
        ack(1, "i2", incr, (60, 70), 4, Outcome::Counter { value: 2 }),
    ];
    let mut records = HashMap::new();
    for op in history.iter().filter(|op| !op.command.is_read()) {
        let r = op.response().unwrap();
        records.insert(
            op.id.clone(),
            Record {
                id: op.id.clone(),
                seq: r.seq,
                term: r.term,
                outcome: r.outcome.clone(),
            },
        );
    }
    let counters = [("n".to_string(), Some(json!(2)))].into();
    let logs = vec![
        vec![
            line("server starting", json!({})),
            line("claimed term", json!({"term": 1})),
            line("executing commands", json!({"term": 1})),
            applied("p1", 1, 1),
            applied("i1", 2, 1),
            applied("i2", 4, 1),
        ],
        vec![line("server starting", json!({}))],
    ];
    Case {
        history,
        records,
        counters,
        logs,
        partitions: Vec::new(),
        outages: Vec::new(),
    }
}

/// The workload's start in these cases: 2026-12-02T00:00:00Z.
const EPOCH_UNIX_MS: u64 = 1_796_169_600_000;

/// The checks that report something for `case`.
fn failing(case: &Case) -> Vec<Violation> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = case
        .logs
        .iter()
        .enumerate()
        .map(|(i, lines)| {
            let path = dir.path().join(format!("s{i}.log"));
            let text: Vec<String> = lines.iter().map(Value::to_string).collect();
            std::fs::write(&path, text.join("\n")).unwrap();
            path
        })
        .collect();
    let logs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let fence = FenceState {
        term: 1,
        holder: "s0".into(),
        seq: 4,
    };
    let (violations, _) = run_all(&Evidence {
        history: &case.history,
        records: &case.records,
        counters: &case.counters,
        fence: Some(&fence),
        logs: &logs,
        budget: super::super::linearizability::DEFAULT_BUDGET,
        partitions: &case.partitions,
        outages: &case.outages,
        epoch_unix_ms: EPOCH_UNIX_MS,
    });
    violations
}

fn checks(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.check.as_str()).collect()
}

#[test]
fn the_unaltered_history_passes() {
    assert_eq!(failing(&good()), []);
}

#[test]
fn a_doubly_applied_id_is_caught_by_exactly_once() {
    // The store's counter shows one increment more than the records account for: an id
    // whose effect was applied twice.
    let mut case = good();
    case.counters.insert("n".into(), Some(json!(3)));
    let found = failing(&case);
    assert!(checks(&found).contains(&"exactly-once"), "{found:?}");
    // And an acknowledged write the store has no record of.
    let mut case = good();
    case.records.remove("i1");
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "exactly-once" && v.message.contains("no record")),
        "{found:?}"
    );
}

#[test]
fn a_seq_out_of_commit_order_is_caught_by_order() {
    // The put completed before the first increment was invoked, yet got the higher seq.
    let mut case = good();
    for (id, seq) in [("p1", 2), ("i1", 1)] {
        let op = case.history.iter_mut().find(|op| op.id == id).unwrap();
        if let OpResult::Ok { response } = &mut op.result {
            response.seq = seq;
        }
        case.records.get_mut(id).unwrap().seq = seq;
    }
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "order" && v.message.contains("real time")),
        "{found:?}"
    );
    // A read that reports a write's seq but completed before that write was invoked.
    let mut case = good();
    case.history[2].invoke_us = 11;
    case.history[2].complete_us = Some(15);
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "order" && v.message.contains("real time")),
        "{found:?}"
    );
    // A read under a term newer than the write after it.
    let mut case = good();
    if let OpResult::Ok { response } = &mut case.history[2].result {
        response.term = 2;
    }
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "order" && v.message.contains("read under term 2")),
        "{found:?}"
    );
    // Two reads reporting one seq tie: no order between them is implied.
    let mut case = good();
    let mut second_read = case.history[2].clone();
    second_read.id = "g2".into();
    second_read.client = 1;
    second_read.invoke_us = 52;
    second_read.complete_us = Some(55);
    case.history.insert(3, second_read);
    assert_eq!(failing(&case), []);
    // A seq given to two commands.
    let mut case = good();
    if let OpResult::Ok { response } = &mut case.history[3].result {
        response.seq = 2;
    }
    case.records.get_mut("i2").unwrap().seq = 2;
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "order" && v.message.contains("given to both")),
        "{found:?}"
    );
}

#[test]
fn an_out_of_order_replay_is_caught() {
    // Two puts and a get, all concurrent (so real time allows any order, and the get of
    // "a" linearizes between them), but their seqs say the get came after the second put.
    let mut case = good();
    let put_b = ack(
        1,
        "p2",
        Command::Put {
            key: "k".into(),
            value: json!("b"),
            lease: None,
        },
        (41, 49),
        2,
        Outcome::Ok,
    );
    case.history[2].invoke_us = 5;
    case.history.push(put_b);
    for op in &mut case.history {
        if let OpResult::Ok { response } = &mut op.result {
            response.seq = match op.id.as_str() {
                "p1" => 1,
                "p2" => 2,
                "g1" => 3,
                "i1" => 4,
                _ => 5,
            };
        }
    }
    case.records.clear();
    for op in case.history.iter().filter(|op| !op.command.is_read()) {
        let r = op.response().unwrap();
        case.records.insert(
            op.id.clone(),
            Record {
                id: op.id.clone(),
                seq: r.seq,
                term: 1,
                outcome: r.outcome.clone(),
            },
        );
    }
    case.logs[0] = vec![
        line("server starting", json!({})),
        line("claimed term", json!({"term": 1})),
        line("executing commands", json!({"term": 1})),
        applied("p1", 1, 1),
        applied("p2", 2, 1),
        applied("i1", 4, 1),
        applied("i2", 5, 1),
    ];
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "order" && v.message.contains("replaying")),
        "{found:?}"
    );
    // The checker of the replay alone, on the ops in seq order.
    let ops: Vec<_> = super::super::history::resolve(&case.history, &case.records)
        .into_iter()
        .filter(|r| r.op.key == "k")
        .collect();
    let mut by_seq: Vec<_> = ops.iter().collect();
    by_seq.sort_by_key(|r| r.seq);
    let in_order: Vec<_> = by_seq.iter().map(|r| &r.op).collect();
    assert!(replay_in_order(&in_order).is_err());
}

#[test]
fn two_servers_committing_in_one_term_are_caught_by_terms() {
    // s1 claims term 1 too and applies a write in it.
    let mut case = good();
    case.logs[1] = vec![
        line("server starting", json!({})),
        line("claimed term", json!({"term": 1})),
        line("executing commands", json!({"term": 1})),
        applied("i2", 4, 1),
    ];
    case.logs[0].pop();
    let found = failing(&case);
    let terms: Vec<&Violation> = found.iter().filter(|v| v.check == "terms").collect();
    assert!(
        terms
            .iter()
            .any(|v| v.message.contains("several server processes")),
        "{found:?}"
    );
    // A server that executes under a term it never claimed.
    let mut case = good();
    case.logs[1] = vec![
        line("server starting", json!({})),
        line("executing commands", json!({"term": 1})),
    ];
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "terms" && v.message.contains("did not claim")),
        "{found:?}"
    );
}

#[test]
fn missing_logs_and_unlogged_writes_fail_the_term_checks() {
    // An acknowledged write that no log shows applied.
    let mut case = good();
    case.logs[0].retain(|l| l["id"] != "i1");
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "terms" && v.message.contains("no server's log shows it")),
        "{found:?}"
    );
    // A log without a start line (wrong format or level): the checks cannot run.
    let mut case = good();
    case.logs[1] = vec![json!({"msg": "plain text"})];
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.check == "terms" && v.message.contains("cannot run")),
        "{found:?}"
    );
    // No claim anywhere.
    let mut case = good();
    case.logs = vec![vec![line("server starting", json!({}))]];
    let found = failing(&case);
    assert!(
        found
            .iter()
            .any(|v| v.message.contains("no server's log shows a claimed term")),
        "{found:?}"
    );
}

#[test]
fn a_claim_across_a_partition_from_a_live_coordinator_is_caught() {
    // s1 is cut off from s0, the coordinator, from 1 s to 3 s, and claims term 2 at 2 s.
    let claim_at_2s = line(
        "claimed term",
        json!({"term": 2, "timestamp": "2026-12-02T00:00:02.000Z"}),
    );
    let mut case = good();
    case.logs[1].push(claim_at_2s.clone());
    case.partitions = vec![PartitionWindow {
        id: 1,
        isolated: vec![1],
        from_ms: 1_000,
        to_ms: Some(3_000),
        coordinator: Some(0),
    }];
    let found = failing(&case);
    assert!(
        found.iter().any(|v| v.check == "partition-deposed"),
        "{found:?}"
    );
    // Not if the coordinator was down (paused or killed) at the time.
    case.outages = vec![Outage {
        server: 0,
        from_ms: 1_500,
        to_ms: None,
    }];
    assert!(
        !failing(&case)
            .iter()
            .any(|v| v.check == "partition-deposed"),
        "a claim while the coordinator was down counted"
    );
    // Nor after the partition healed.
    case.outages.clear();
    case.partitions[0].to_ms = Some(1_800);
    assert!(
        !failing(&case)
            .iter()
            .any(|v| v.check == "partition-deposed")
    );
}
