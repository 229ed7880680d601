//! Group commit: a batch answers exactly as its commands applied one at a time would.

use bully_client::{Command, Entry, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{Backend, POISON, Pair, get, put, read};
use crate::store::{Applied, Op, StoreError};

/// A seeded stream of commands over a few keys under `ns/`, with retries of earlier ids and
/// ids reused for other commands, so that commands in one batch see each other.
fn stream(ns: &str, seed: u64, n: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops: Vec<Op> = Vec::new();
    for i in 0..n {
        let key = format!("{ns}/k{}", rng.random_range(0..5));
        let value = if rng.random_bool(0.7) {
            json!(rng.random_range(-3..10))
        } else {
            json!(format!("v{}", rng.random_range(0..3)))
        };
        let id = format!("{ns}-{i}");
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..25 => Op {
                id,
                command: put(&key, value),
            },
            25..40 => Op {
                id,
                command: get(&key),
            },
            40..48 => Op {
                id,
                command: Command::Delete { key },
            },
            48..62 => Op {
                id,
                command: Command::Cas {
                    key,
                    expected: rng
                        .random_bool(0.7)
                        .then(|| json!(rng.random_range(-3..10))),
                    new: value,
                },
            },
            62..82 => Op {
                id,
                command: Command::Incr {
                    key,
                    delta: rng.random_range(-2..5),
                },
            },
            82..88 => Op {
                id,
                command: Command::List {
                    prefix: Some(format!("{ns}/")),
                    limit: Some(rng.random_range(1..4)),
                    after: rng
                        .random_bool(0.5)
                        .then(|| format!("{ns}/k{}", rng.random_range(0..5))),
                },
            },
            // A retry of an earlier command, with its id.
            88..96 if !ops.is_empty() => ops[rng.random_range(0..ops.len())].clone(),
            // An earlier id for another command.
            _ if !ops.is_empty() => Op {
                id: ops[rng.random_range(0..ops.len())].id.clone(),
                command: put(&key, json!("conflict")),
            },
            _ => Op {
                id,
                command: get(&key),
            },
        };
        ops.push(op);
    }
    ops
}

/// What a result says, with the namespace taken out of keys and sequence numbers made
/// relative to the stream's start.
#[derive(Debug, PartialEq)]
enum Seen {
    Applied {
        seq: u64,
        outcome: Outcome,
        duplicate: bool,
    },
    Conflict,
    Other(String),
}

fn seen(result: Result<Applied, StoreError>, ns: &str, base: u64) -> Seen {
    let strip = |key: String| key.trim_start_matches(ns).to_string();
    match result {
        Ok(applied) => Seen::Applied {
            seq: applied.seq - base,
            outcome: match applied.outcome {
                Outcome::Page { items, next } => Outcome::Page {
                    items: items
                        .into_iter()
                        .map(|e| Entry {
                            key: strip(e.key),
                            value: e.value,
                        })
                        .collect(),
                    next: next.map(strip),
                },
                other => other,
            },
            duplicate: applied.duplicate,
        },
        Err(StoreError::IdConflict { .. }) => Seen::Conflict,
        Err(other) => Seen::Other(other.to_string()),
    }
}

pub(super) async fn a_batch_answers_as_one_command_at_a_time_would((a, _): Pair) {
    let term = a.claim_term("a").await.unwrap();
    for seed in 0..3 {
        let (serial_ns, batch_ns) = (format!("s{seed}"), format!("b{seed}"));
        let serial_ops = stream(&serial_ns, seed, 200);
        let batch_ops = stream(&batch_ns, seed, 200);
        let base = a.fence_state().await.unwrap().seq;
        let mut serial = Vec::new();
        for op in &serial_ops {
            let result = a.apply(term, &op.id, &op.command).await;
            serial.push(seen(result, &serial_ns, base));
        }
        let base = a.fence_state().await.unwrap().seq;
        let mut batched = Vec::new();
        let mut rng = StdRng::seed_from_u64(seed + 100);
        let mut rest = &batch_ops[..];
        while !rest.is_empty() {
            let size = rng.random_range(1..=40).min(rest.len());
            let (batch, tail) = rest.split_at(size);
            let results = a.apply_batch(term, batch).await.expect("a batch");
            assert_eq!(results.len(), batch.len());
            batched.extend(results.into_iter().map(|r| seen(r, &batch_ns, base)));
            rest = tail;
        }
        for (i, (s, b)) in serial.iter().zip(&batched).enumerate() {
            assert_eq!(
                s, b,
                "seed {seed}, command {i} ({:?}): one at a time vs in batches",
                serial_ops[i].command
            );
        }
        assert!(serial.contains(&Seen::Conflict), "the stream reuses an id");
        assert!(
            serial.iter().any(|s| matches!(
                s,
                Seen::Applied {
                    duplicate: true,
                    ..
                }
            )),
            "the stream retries"
        );
    }
}

pub(super) async fn a_fenced_batch_applies_nothing((old, new): Pair) {
    let t_old = old.claim_term("old").await.unwrap();
    old.apply(t_old, "w0", &put("k", json!(0))).await.unwrap();
    let before = old.fence_state().await.unwrap();
    let t_new = new.claim_term("new").await.unwrap();
    let batch = vec![
        Op {
            id: "f1".into(),
            command: put("k", json!(1)),
        },
        Op {
            id: "f2".into(),
            command: Command::Incr {
                key: "n".into(),
                delta: 1,
            },
        },
        Op {
            id: "f3".into(),
            command: get("k"),
        },
    ];
    let err = old.apply_batch(t_old, &batch).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { mine, current } if (mine, current) == (t_old, t_new)),
        "{err:?}"
    );
    // A batch of reads only is fenced too: a deposed coordinator serves no stale read.
    let reads = vec![Op {
        id: "f4".into(),
        command: get("k"),
    }];
    assert!(matches!(
        old.apply_batch(t_old, &reads).await,
        Err(StoreError::Fenced { .. })
    ));
    for id in ["f1", "f2"] {
        assert!(new.record(id).await.unwrap().is_none(), "{id} recorded");
    }
    assert_eq!(new.fence_state().await.unwrap().seq, before.seq);
    assert_eq!(
        read(&*new, t_new, "k").await,
        Outcome::Value { value: json!(0) }
    );
    assert_eq!(read(&*new, t_new, "n").await, Outcome::NotFound);
}

pub(super) async fn a_repeated_id_inside_a_batch_is_a_duplicate((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    let incr = Command::Incr {
        key: "n".into(),
        delta: 5,
    };
    let op = |id: &str, command: &Command| Op {
        id: id.into(),
        command: command.clone(),
    };
    let batch = vec![
        op("x", &incr),
        op("x", &incr),
        op("y", &put("k", json!(1))),
        op("y", &put("k", json!(2))),
        op("z", &get("n")),
    ];
    let results = a.apply_batch(t, &batch).await.unwrap();
    let first = results[0].as_ref().unwrap().clone();
    assert!(!first.duplicate);
    assert_eq!(first.outcome, Outcome::Counter { value: 5 });
    let again = results[1].as_ref().unwrap();
    assert!(again.duplicate);
    assert_eq!((again.seq, &again.outcome), (first.seq, &first.outcome));
    assert!(results[2].as_ref().is_ok_and(|r| !r.duplicate));
    assert!(
        matches!(&results[3], Err(StoreError::IdConflict { id }) if id == "y"),
        "{:?}",
        results[3]
    );
    // The increment counted once; the conflicting put changed nothing.
    assert_eq!(
        results[4].as_ref().unwrap().outcome,
        Outcome::Value { value: json!(5) }
    );
    assert_eq!(read(&*a, t, "k").await, Outcome::Value { value: json!(1) });
    // Two writes applied: the fence moved by two.
    let seq = results[2].as_ref().unwrap().seq;
    assert_eq!(seq, first.seq + 1);
    assert_eq!(a.fence_state().await.unwrap().seq, seq);
}

pub(super) async fn reads_in_a_batch_see_the_writes_before_them((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    for (i, key) in ["p/1", "p/2", "p/3"].iter().enumerate() {
        a.apply(t, &format!("seed{i}"), &put(key, json!(i)))
            .await
            .unwrap();
    }
    let op = |id: &str, command: Command| Op {
        id: id.into(),
        command,
    };
    let list = || Command::List {
        prefix: Some("p/".into()),
        limit: Some(2),
        after: None,
    };
    let batch = vec![
        op("r0", get("p/1")),
        op("w1", Command::Delete { key: "p/1".into() }),
        op("w2", Command::Delete { key: "p/2".into() }),
        op("w3", put("p/0", json!("new"))),
        op("r1", list()),
        op("r2", get("p/1")),
    ];
    let results: Vec<Applied> = a
        .apply_batch(t, &batch)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results[0].outcome, Outcome::Value { value: json!(0) });
    let page = |items: &[(&str, Value)], next: Option<&str>| Outcome::Page {
        items: items
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.clone(),
            })
            .collect(),
        next: next.map(String::from),
    };
    assert_eq!(
        results[4].outcome,
        page(&[("p/0", json!("new")), ("p/3", json!(2))], None)
    );
    assert_eq!(results[5].outcome, Outcome::NotFound);
    // Reads report the seq of the last write before them.
    assert_eq!(results[0].seq + 3, results[3].seq);
    assert_eq!(results[4].seq, results[3].seq);
    assert_eq!(results[5].seq, results[3].seq);
}

pub(super) async fn a_batch_that_fails_midway_applies_nothing(backend: &impl Backend) {
    let (a, _) = backend.fresh().await;
    let t = a.claim_term("a").await.unwrap();
    a.apply(t, "w0", &put("k", json!(0))).await.unwrap();
    let before = a.fence_state().await.unwrap();
    let batch = vec![
        Op {
            id: "m1".into(),
            command: put("k", json!(1)),
        },
        Op {
            id: "m2".into(),
            command: Command::Incr {
                key: "n".into(),
                delta: 1,
            },
        },
        Op {
            id: "m3".into(),
            command: put(POISON, json!(true)),
        },
        Op {
            id: "m4".into(),
            command: put("j", json!(4)),
        },
    ];
    backend.poison(true).await;
    let failed = a.apply_batch(t, &batch).await;
    backend.poison(false).await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    for id in ["m1", "m2", "m3", "m4"] {
        assert!(a.record(id).await.unwrap().is_none(), "{id} recorded");
    }
    assert_eq!(a.fence_state().await.unwrap().seq, before.seq);
    assert_eq!(read(&*a, t, "k").await, Outcome::Value { value: json!(0) });
    assert_eq!(read(&*a, t, "n").await, Outcome::NotFound);
    // Retried with the same ids, it applies once.
    let results = a.apply_batch(t, &batch).await.unwrap();
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|a| !a.duplicate))
    );
    assert_eq!(a.fence_state().await.unwrap().seq, before.seq + 4);
    let retried = a.apply_batch(t, &batch).await.unwrap();
    assert!(
        retried
            .iter()
            .all(|r| r.as_ref().is_ok_and(|a| a.duplicate))
    );
    assert_eq!(read(&*a, t, "n").await, Outcome::Value { value: json!(1) });
}
