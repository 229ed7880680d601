//! Known-good and known-bad histories, and a large random one for speed.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::kv::{KeyResult, KvInput, KvOp, KvOutput, check_kv, is_linearizable, replay_in_order};
use super::{DEFAULT_BUDGET, Model, Operation, Verdict, check};

/// A completed operation on key "k".
fn op(client: usize, call: u64, ret: u64, input: KvInput, output: KvOutput) -> KvOp {
    KvOp {
        client,
        key: "k".into(),
        input,
        call,
        ret: Some(ret),
        output: Some(output),
    }
}

/// An operation that never completed, with an unknown result.
fn pending(client: usize, call: u64, input: KvInput) -> KvOp {
    KvOp {
        client,
        key: "k".into(),
        input,
        call,
        ret: None,
        output: None,
    }
}

fn put(v: Value) -> KvInput {
    KvInput::Put { value: v }
}
fn val(v: Value) -> KvOutput {
    KvOutput::Value { value: v }
}
fn incr() -> KvInput {
    KvInput::Incr { delta: 1 }
}
fn counter(n: i64) -> KvOutput {
    KvOutput::Counter { value: n }
}
fn cas(expected: Option<Value>, new: Value) -> KvInput {
    KvInput::Cas { expected, new }
}

#[test]
fn sequential_history_is_linearizable() {
    let h = [
        op(0, 0, 1, KvInput::Get, KvOutput::NotFound),
        op(0, 2, 3, put(json!("a")), KvOutput::Ok),
        op(1, 4, 5, KvInput::Get, val(json!("a"))),
        op(1, 6, 7, cas(Some(json!("a")), json!("b")), KvOutput::Ok),
        op(
            0,
            8,
            9,
            cas(Some(json!("a")), json!("c")),
            KvOutput::CasMismatch {
                current: Some(json!("b")),
            },
        ),
        op(0, 10, 11, KvInput::Delete, KvOutput::Ok),
        op(1, 12, 13, KvInput::Delete, KvOutput::NotFound),
        op(1, 14, 15, cas(None, json!(5)), KvOutput::Ok),
        op(0, 16, 17, incr(), counter(6)),
        op(0, 18, 19, KvInput::Get, val(json!(6))),
    ];
    assert!(is_linearizable(&h));
    let order: Vec<&KvOp> = h.iter().collect();
    assert_eq!(replay_in_order(&order), Ok(()));
}

#[test]
fn stale_read_after_a_completed_write_is_caught() {
    let h = [
        op(0, 0, 10, put(json!(1)), KvOutput::Ok),
        op(0, 20, 30, put(json!(2)), KvOutput::Ok),
        op(1, 40, 50, KvInput::Get, val(json!(1))),
    ];
    let verdicts = check_kv(&h, DEFAULT_BUDGET);
    match &verdicts[0].result {
        KeyResult::NotLinearizable {
            longest_prefix,
            value_after_prefix,
            stuck_at,
        } => {
            assert_eq!(longest_prefix, &vec![0, 1]);
            assert_eq!(value_after_prefix, &Some(json!(2)));
            assert_eq!(*stuck_at, Some(2));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    // The write overlaps both reads: it may land before or after the first one.
    for seen in [json!(1), json!(2)] {
        let h = [
            op(0, 0, 10, put(json!(1)), KvOutput::Ok),
            op(0, 20, 50, put(json!(2)), KvOutput::Ok),
            op(1, 30, 40, KvInput::Get, val(seen)),
        ];
        assert!(is_linearizable(&h));
    }
    // Reads that return 2 then 1 cannot both fit: once 2 is visible, 1 is gone.
    let h = [
        op(0, 0, 10, put(json!(1)), KvOutput::Ok),
        op(0, 20, 100, put(json!(2)), KvOutput::Ok),
        op(1, 30, 40, KvInput::Get, val(json!(2))),
        op(2, 50, 60, KvInput::Get, val(json!(1))),
    ];
    assert!(!is_linearizable(&h));
}

#[test]
fn a_write_must_take_effect_between_its_invocation_and_completion() {
    // w1 is long; w2 completes first; a read sees 1 (w1 after w2), a later read sees 2: no.
    let h = [
        op(0, 0, 100, put(json!(1)), KvOutput::Ok),
        op(1, 10, 20, put(json!(2)), KvOutput::Ok),
        op(2, 30, 40, KvInput::Get, val(json!(1))),
        op(2, 50, 60, KvInput::Get, val(json!(2))),
    ];
    assert!(!is_linearizable(&h));
    // A read may not see a write invoked after it completed.
    let h = [
        op(0, 0, 10, KvInput::Get, val(json!(1))),
        op(1, 20, 30, put(json!(1)), KvOutput::Ok),
    ];
    assert!(!is_linearizable(&h));
}

#[test]
fn lost_updates_and_duplicate_counters_are_caught() {
    // Two sequential increments both returning 1: one was lost.
    let h = [
        op(0, 0, 10, incr(), counter(1)),
        op(1, 20, 30, incr(), counter(1)),
    ];
    assert!(!is_linearizable(&h));
    // Two concurrent increments returning the same value.
    let h = [
        op(0, 0, 30, incr(), counter(1)),
        op(1, 10, 40, incr(), counter(1)),
    ];
    assert!(!is_linearizable(&h));
    // Concurrent increments returning 1 and 2, in either assignment.
    let h = [
        op(0, 0, 30, incr(), counter(2)),
        op(1, 10, 40, incr(), counter(1)),
    ];
    assert!(is_linearizable(&h));
    // An increment applied twice: the counter shows 2 after one acknowledged increment.
    let h = [
        op(0, 0, 10, incr(), counter(1)),
        op(1, 20, 30, KvInput::Get, val(json!(2))),
    ];
    assert!(!is_linearizable(&h));
    // A lost cas: two successful cas from the same expected value.
    let h = [
        op(0, 0, 10, put(json!("a")), KvOutput::Ok),
        op(0, 20, 50, cas(Some(json!("a")), json!("b")), KvOutput::Ok),
        op(1, 25, 55, cas(Some(json!("a")), json!("c")), KvOutput::Ok),
    ];
    assert!(!is_linearizable(&h));
}

#[test]
fn indeterminate_writes_may_take_effect_later_or_never() {
    // The write timed out; a later read sees it: it took effect after all.
    let h = [
        pending(0, 0, put(json!(1))),
        op(1, 50, 60, KvInput::Get, KvOutput::NotFound),
        op(1, 100, 110, KvInput::Get, val(json!(1))),
    ];
    assert!(is_linearizable(&h));
    // Or it never took effect.
    let h = [
        pending(0, 0, put(json!(1))),
        op(1, 100, 110, KvInput::Get, KvOutput::NotFound),
    ];
    assert!(is_linearizable(&h));
    // But not before it was invoked.
    let h = [
        op(1, 0, 10, KvInput::Get, val(json!(1))),
        pending(0, 20, put(json!(1))),
    ];
    assert!(!is_linearizable(&h));
    // And it takes effect once: visible, then gone without a delete, is a violation.
    let h = [
        pending(0, 0, put(json!(1))),
        op(1, 50, 60, KvInput::Get, val(json!(1))),
        op(1, 70, 80, KvInput::Get, KvOutput::NotFound),
    ];
    assert!(!is_linearizable(&h));
}

#[test]
fn indeterminate_increments_are_counted_at_most_once_each() {
    // Three increments timed out, a fourth completed with 2, a final read sees 3.
    let mut h = vec![
        pending(0, 0, incr()),
        pending(1, 5, incr()),
        pending(2, 8, incr()),
        op(3, 10, 20, incr(), counter(2)),
        op(3, 100, 110, KvInput::Get, val(json!(3))),
    ];
    assert!(is_linearizable(&h));
    // Five would need more increments than were issued.
    h[4] = op(3, 100, 110, KvInput::Get, val(json!(5)));
    assert!(!is_linearizable(&h));
}

#[test]
fn a_known_output_without_completion_must_still_be_placed() {
    // The store says the timed-out increment returned 2: it must land after the first one.
    let h = [
        op(0, 0, 10, incr(), counter(1)),
        KvOp {
            output: Some(counter(2)),
            ..pending(1, 5, incr())
        },
        op(0, 20, 30, KvInput::Get, val(json!(1))),
    ];
    assert!(is_linearizable(&h));
    // ... and it must land somewhere: an output nobody can produce is a violation.
    let h = [
        op(0, 0, 10, incr(), counter(1)),
        KvOp {
            output: Some(counter(7)),
            ..pending(1, 5, incr())
        },
    ];
    assert!(!is_linearizable(&h));
}

#[test]
fn command_level_failures_are_modelled() {
    let h = [
        op(0, 0, 1, put(json!("text")), KvOutput::Ok),
        op(0, 2, 3, incr(), KvOutput::TypeMismatch),
        op(0, 4, 5, KvInput::Get, val(json!("text"))),
        op(0, 6, 7, put(json!(i64::MAX)), KvOutput::Ok),
        op(0, 8, 9, incr(), KvOutput::TypeMismatch),
    ];
    assert!(is_linearizable(&h));
    // A type mismatch on an integer is wrong.
    let h = [
        op(0, 0, 1, put(json!(3)), KvOutput::Ok),
        op(0, 2, 3, incr(), KvOutput::TypeMismatch),
    ];
    assert!(!is_linearizable(&h));
    // A cas mismatch must report the value that was there.
    let h = [
        op(0, 0, 1, put(json!("a")), KvOutput::Ok),
        op(
            0,
            2,
            3,
            cas(Some(json!("x")), json!("y")),
            KvOutput::CasMismatch {
                current: Some(json!("z")),
            },
        ),
    ];
    assert!(!is_linearizable(&h));
    // `expected: None` means "missing".
    let h = [
        op(0, 0, 1, cas(None, json!("a")), KvOutput::Ok),
        op(
            0,
            2,
            3,
            cas(None, json!("b")),
            KvOutput::CasMismatch {
                current: Some(json!("a")),
            },
        ),
    ];
    assert!(is_linearizable(&h));
    // Deleting a missing key is not_found, not ok.
    let h = [op(0, 0, 1, KvInput::Delete, KvOutput::Ok)];
    assert!(!is_linearizable(&h));
    // Values compare as JSON: object key order does not matter.
    let h = [
        op(0, 0, 1, put(json!({"a": 1, "b": 2})), KvOutput::Ok),
        op(
            0,
            2,
            3,
            KvInput::Get,
            val(serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap()),
        ),
    ];
    assert!(is_linearizable(&h));
}

#[test]
fn keys_are_checked_independently() {
    let mut h = vec![
        op(0, 0, 10, put(json!(1)), KvOutput::Ok),
        op(1, 20, 30, KvInput::Get, val(json!(1))),
    ];
    h.push(KvOp {
        key: "other".into(),
        ..op(0, 40, 50, KvInput::Get, val(json!(1)))
    });
    let verdicts = check_kv(&h, DEFAULT_BUDGET);
    assert_eq!(verdicts.len(), 2);
    let k = verdicts.iter().find(|v| v.key == "k").unwrap();
    let other = verdicts.iter().find(|v| v.key == "other").unwrap();
    assert_eq!(k.result, KeyResult::Linearizable);
    assert!(matches!(
        other.result,
        KeyResult::NotLinearizable {
            stuck_at: Some(2),
            ..
        }
    ));
}

#[test]
fn the_budget_makes_a_search_inconclusive() {
    struct Anything;
    impl Model for Anything {
        type State = u8;
        type Input = u8;
        type Output = u8;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, _: &u8, input: &u8, _: Option<&u8>) -> Option<u8> {
            Some(*input)
        }
    }
    let ops: Vec<Operation<u8, u8>> = (0..20)
        .map(|i| Operation {
            client: i,
            input: i as u8,
            call: 0,
            ret: Some(100),
            output: None,
        })
        .collect();
    assert!(check(&Anything, &ops, 1_000_000).is_linearizable());
    assert!(matches!(
        check(&Anything, &ops, 5),
        Verdict::Inconclusive { .. }
    ));
}

/// Simulates clients against one sequential register per key, with overlapping intervals,
/// timeouts and a few thousand operations: the history is linearizable by construction.
fn random_history(seed: u64, clients: usize, ops_per_client: usize) -> Vec<KvOp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = ["a", "b", "c"];
    let mut values: Vec<Option<Value>> = vec![None; keys.len()];
    let mut free_at = vec![0u64; clients];
    let mut remaining = vec![ops_per_client; clients];
    let mut history = Vec::new();
    let mut now = 0u64;
    let mut n = 0;
    while remaining.iter().any(|r| *r > 0) {
        now += rng.random_range(1..5);
        let client = rng.random_range(0..clients);
        if remaining[client] == 0 || free_at[client] > now {
            continue;
        }
        remaining[client] -= 1;
        let k = rng.random_range(0..keys.len());
        let current = values[k].clone();
        n += 1;
        let (input, output, after) = match rng.random_range(0..5) {
            0 => {
                let v = json!(format!("v{n}"));
                (put(v.clone()), KvOutput::Ok, Some(v))
            }
            1 => (
                KvInput::Get,
                current.clone().map_or(KvOutput::NotFound, val),
                current.clone(),
            ),
            2 => match &current {
                Some(_) => (KvInput::Delete, KvOutput::Ok, None),
                None => (KvInput::Delete, KvOutput::NotFound, None),
            },
            3 => {
                let base = match &current {
                    None => Some(0),
                    Some(v) => v.as_i64(),
                };
                match base {
                    Some(b) => (incr(), counter(b + 1), Some(json!(b + 1))),
                    None => (incr(), KvOutput::TypeMismatch, current.clone()),
                }
            }
            _ => {
                let expected = if rng.random_bool(0.5) {
                    current.clone()
                } else {
                    Some(json!("nope"))
                };
                let new = json!(format!("c{n}"));
                if expected == current {
                    (cas(expected, new.clone()), KvOutput::Ok, Some(new))
                } else {
                    (
                        cas(expected, new),
                        KvOutput::CasMismatch {
                            current: current.clone(),
                        },
                        current.clone(),
                    )
                }
            }
        };
        values[k] = after;
        // The effect happens "now"; the client saw it within a window around now.
        let call = now - rng.random_range(0..now.min(30) + 1);
        let timed_out = rng.random_ratio(1, 100);
        let ret = now + rng.random_range(0..30);
        free_at[client] = ret + 1;
        let is_read = matches!(input, KvInput::Get);
        history.push(KvOp {
            client,
            key: keys[k].into(),
            input,
            call,
            ret: (!timed_out).then_some(ret),
            output: (!timed_out).then_some(output),
        });
        if timed_out && is_read {
            history.pop();
        }
    }
    history
}

#[test]
fn thousands_of_operations_check_quickly() {
    let h = random_history(7, 8, 500);
    assert!(h.len() > 3500);
    let started = Instant::now();
    let verdicts = check_kv(&h, DEFAULT_BUDGET);
    assert!(
        verdicts.iter().all(|v| v.result == KeyResult::Linearizable),
        "{verdicts:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_single_corrupted_read_in_a_long_history_is_found() {
    let mut h = random_history(11, 6, 200);
    // Make a late read of some key return a value nobody wrote.
    let i = h
        .iter()
        .rposition(|op| matches!(op.input, KvInput::Get) && op.ret.is_some())
        .unwrap();
    h[i].output = Some(val(json!("never written")));
    let verdicts = check_kv(&h, DEFAULT_BUDGET);
    let bad: Vec<_> = verdicts
        .iter()
        .filter(|v| !matches!(v.result, KeyResult::Linearizable))
        .collect();
    assert_eq!(bad.len(), 1, "{verdicts:?}");
    assert!(matches!(bad[0].result, KeyResult::NotLinearizable { .. }));
}
