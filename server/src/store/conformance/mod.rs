//! The conformance suite every [`Store`] backend must pass.
//!
//! A backend's test calls [`run_all`] with its [`Backend`]: a way to open a fresh, empty store
//! twice (two independent handles on the same data, as two server processes would have), and
//! a way to make it fail a batch midway. Each case gets its own fresh store.
//!
//! # Layout
//! - this module: single commands — fencing, exactly-once, order, semantics, paging;
//! - `lease`: a claim waits for the holder's lease unless released, run out, its own, or
//!   broken by a claimer that knows the holder dead;
//! - `batch`: group commit — a batch answers as one-at-a-time execution would (the same
//!   command stream through both paths, compared result by result), a fenced batch applies
//!   nothing, a repeated id inside a batch, a batch that fails midway;
//! - `ttl`: leases on keys — grant, keepalive, revoke deleting the attached keys, detaching,
//!   the server's own keys hidden from `list`.

use std::sync::Arc;

use bully_client::{Command, Entry, Outcome};
use serde_json::json;

use super::{Store, StoreError};

mod batch;
mod lease;
mod ttl;

/// Two independent handles on one fresh, empty store.
pub type Pair = (Arc<dyn Store>, Arc<dyn Store>);

/// The key whose write [`Backend::poison`] makes fail.
pub const POISON: &str = "poison";

/// What the suite needs of a backend.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Two independent handles on one fresh, empty store.
    async fn fresh(&self) -> Pair;

    /// From now on (`on`), or no longer, the most recent fresh store fails a batch that writes
    /// the key [`POISON`], after part of its work, with an error that is not retried. (A
    /// backend that cannot single out the key may fail any batch that writes.)
    async fn poison(&self, on: bool);
}

/// Runs every case; panics (with the case's name) on the first violation.
pub async fn run_all(backend: &impl Backend) {
    macro_rules! case {
        ($($name:ident)::+) => {
            eprintln!("conformance: {}", stringify!($($name)::+));
            $($name)::+(backend.fresh().await).await;
        };
    }
    case!(terms_increase_by_one);
    case!(apply_requires_the_current_term);
    case!(a_deposed_handle_is_fenced);
    case!(sequence_numbers_increase_across_terms);
    case!(writes_are_applied_exactly_once);
    case!(reusing_an_id_for_another_command_conflicts);
    case!(reads_are_fenced_but_not_recorded);
    case!(command_semantics);
    case!(list_pages_in_key_order);
    case!(records_expire);
    case!(concurrent_claims_get_distinct_terms);
    case!(values_round_trip_exactly);
    case!(batch::a_batch_answers_as_one_command_at_a_time_would);
    case!(batch::a_fenced_batch_applies_nothing);
    case!(batch::a_repeated_id_inside_a_batch_is_a_duplicate);
    case!(batch::reads_in_a_batch_see_the_writes_before_them);
    case!(lease::a_running_lease_refuses_other_claimers);
    case!(lease::a_released_lease_lets_the_next_claim_through);
    case!(lease::a_lease_runs_out_unless_renewed);
    case!(ttl::revoking_a_lease_deletes_its_keys);
    case!(ttl::a_key_put_again_or_deleted_leaves_its_lease);
    case!(ttl::a_batch_sees_its_own_lease_changes);
    eprintln!("conformance: batch::a_batch_that_fails_midway_applies_nothing");
    batch::a_batch_that_fails_midway_applies_nothing(backend).await;
}

pub(super) fn put(key: &str, value: serde_json::Value) -> Command {
    Command::Put {
        key: key.into(),
        value,
        lease: None,
    }
}

pub(super) fn get(key: &str) -> Command {
    Command::Get { key: key.into() }
}

pub(super) async fn read(store: &dyn Store, term: u64, key: &str) -> Outcome {
    store
        .apply(term, &bully_client::new_command_id(), &get(key))
        .await
        .expect("get")
        .outcome
}

async fn terms_increase_by_one((a, b): Pair) {
    assert_eq!(a.fence_state().await.unwrap().term, 0);
    let t1 = a.claim_term("a").await.unwrap();
    let t2 = b.claim_term("b").await.unwrap();
    assert_eq!(t1, 1);
    assert_eq!(t2, 2);
    let fence = a.fence_state().await.unwrap();
    assert_eq!((fence.term, fence.holder.as_str()), (2, "b"));
}

async fn apply_requires_the_current_term((a, _): Pair) {
    // Before any claim the term is 0, and nobody holds it.
    let err = a.apply(0, "x0", &put("k", json!(0))).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Fenced {
                mine: 0,
                current: 0
            }
        ),
        "{err:?}"
    );
    let err = a.apply(1, "x1", &put("k", json!(1))).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Fenced {
                mine: 1,
                current: 0
            }
        ),
        "{err:?}"
    );
    let term = a.claim_term("a").await.unwrap();
    let applied = a.apply(term, "x1", &put("k", json!(1))).await.unwrap();
    assert_eq!(
        (applied.term, applied.outcome, applied.duplicate),
        (term, Outcome::Ok, false)
    );
    let err = a
        .apply(term + 1, "x2", &put("k", json!(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
}

async fn a_deposed_handle_is_fenced((old, new): Pair) {
    let t_old = old.claim_term("old").await.unwrap();
    old.apply(t_old, "w1", &put("k", json!("old")))
        .await
        .unwrap();
    let t_new = new.claim_term("new").await.unwrap();
    let err = old
        .apply(t_old, "w2", &put("k", json!("stale")))
        .await
        .unwrap_err();
    match err {
        StoreError::Fenced { mine, current } => assert_eq!((mine, current), (t_old, t_new)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    // Reads are fenced too: a deposed coordinator must not serve possibly stale data.
    let err = old.apply(t_old, "r1", &get("k")).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    assert_eq!(
        read(&*new, t_new, "k").await,
        Outcome::Value {
            value: json!("old")
        }
    );
    assert!(old.record("w2").await.unwrap().is_none());
}

async fn sequence_numbers_increase_across_terms((a, b): Pair) {
    let mut last = 0;
    for round in 0..3 {
        let (store, holder) = if round % 2 == 0 { (&a, "a") } else { (&b, "b") };
        let term = store.claim_term(holder).await.unwrap();
        for i in 0..4 {
            let command = if i % 2 == 0 {
                put("k", json!(i))
            } else {
                get("k")
            };
            let applied = store
                .apply(term, &format!("s{round}-{i}"), &command)
                .await
                .unwrap();
            if command.is_read() {
                // A read takes no number: it reports the last write's, which it reflects.
                assert_eq!(applied.seq, last, "a read's seq");
            } else {
                assert!(applied.seq > last, "seq {} after {last}", applied.seq);
            }
            last = applied.seq;
        }
    }
    assert_eq!(a.fence_state().await.unwrap().seq, last);
}

async fn writes_are_applied_exactly_once((a, b): Pair) {
    let term = a.claim_term("a").await.unwrap();
    let first = a
        .apply(
            term,
            "inc-1",
            &Command::Incr {
                key: "n".into(),
                delta: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(first.outcome, Outcome::Counter { value: 5 });
    let again = a
        .apply(
            term,
            "inc-1",
            &Command::Incr {
                key: "n".into(),
                delta: 5,
            },
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, again.term, &again.outcome),
        (first.seq, first.term, &first.outcome)
    );
    // After a failover the new coordinator returns the same stored result.
    let t2 = b.claim_term("b").await.unwrap();
    let retried = b
        .apply(
            t2,
            "inc-1",
            &Command::Incr {
                key: "n".into(),
                delta: 5,
            },
        )
        .await
        .unwrap();
    assert!(retried.duplicate);
    assert_eq!((retried.seq, retried.term), (first.seq, term));
    assert_eq!(read(&*b, t2, "n").await, Outcome::Value { value: json!(5) });
    let record = b.record("inc-1").await.unwrap().expect("record");
    assert_eq!((record.seq, record.term), (first.seq, term));
    // Command-level failures are recorded too: a retried cas answers the same.
    let cas = Command::Cas {
        key: "n".into(),
        expected: Some(json!(0)),
        new: json!(1),
    };
    let miss = b.apply(t2, "cas-1", &cas).await.unwrap();
    assert_eq!(
        miss.outcome,
        Outcome::CasMismatch {
            current: Some(json!(5))
        }
    );
    b.apply(t2, "set-0", &put("n", json!(0))).await.unwrap();
    let again = b.apply(t2, "cas-1", &cas).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.outcome, miss.outcome);
}

async fn reusing_an_id_for_another_command_conflicts((a, _): Pair) {
    let term = a.claim_term("a").await.unwrap();
    a.apply(term, "same", &put("k", json!(1))).await.unwrap();
    let err = a
        .apply(term, "same", &put("k", json!(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdConflict { .. }), "{err:?}");
    assert_eq!(
        read(&*a, term, "k").await,
        Outcome::Value { value: json!(1) }
    );
}

async fn reads_are_fenced_but_not_recorded((a, _): Pair) {
    let term = a.claim_term("a").await.unwrap();
    let r = a.apply(term, "read-1", &get("k")).await.unwrap();
    assert_eq!(r.outcome, Outcome::NotFound);
    assert!(a.record("read-1").await.unwrap().is_none());
    a.apply(term, "w", &put("k", json!(1))).await.unwrap();
    let r2 = a.apply(term, "read-1", &get("k")).await.unwrap();
    assert_eq!(r2.outcome, Outcome::Value { value: json!(1) });
    assert!(!r2.duplicate);
}

async fn command_semantics((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    let mut n = 0;
    let mut run = |command: Command| {
        n += 1;
        let id = format!("sem-{n}");
        let a = a.clone();
        async move { a.apply(t, &id, &command).await.unwrap().outcome }
    };
    assert_eq!(run(put("k", json!({"a": [1, 2]}))).await, Outcome::Ok);
    assert_eq!(
        run(get("k")).await,
        Outcome::Value {
            value: json!({"a": [1, 2]})
        }
    );
    assert_eq!(run(Command::Delete { key: "k".into() }).await, Outcome::Ok);
    assert_eq!(
        run(Command::Delete { key: "k".into() }).await,
        Outcome::NotFound
    );
    assert_eq!(run(get("k")).await, Outcome::NotFound);
    let cas = |expected, new| Command::Cas {
        key: "c".into(),
        expected,
        new,
    };
    assert_eq!(run(cas(None, json!(1))).await, Outcome::Ok);
    assert_eq!(
        run(cas(None, json!(2))).await,
        Outcome::CasMismatch {
            current: Some(json!(1))
        }
    );
    assert_eq!(run(cas(Some(json!(1)), json!(3))).await, Outcome::Ok);
    assert_eq!(run(get("c")).await, Outcome::Value { value: json!(3) });
    let incr = |delta| Command::Incr {
        key: "n".into(),
        delta,
    };
    assert_eq!(run(incr(2)).await, Outcome::Counter { value: 2 });
    assert_eq!(run(incr(-5)).await, Outcome::Counter { value: -3 });
    assert_eq!(
        run(Command::Incr {
            key: "c".into(),
            delta: 10
        })
        .await,
        Outcome::Counter { value: 13 }
    );
    // Overflow is a command-level failure that leaves the value alone.
    assert!(matches!(
        run(Command::Incr {
            key: "c".into(),
            delta: i64::MAX
        })
        .await,
        Outcome::TypeMismatch { .. }
    ));
    assert_eq!(run(get("c")).await, Outcome::Value { value: json!(13) });
    assert_eq!(run(put("s", json!("text"))).await, Outcome::Ok);
    assert!(matches!(
        run(Command::Incr {
            key: "s".into(),
            delta: 1
        })
        .await,
        Outcome::TypeMismatch { .. }
    ));
    assert_eq!(
        run(get("s")).await,
        Outcome::Value {
            value: json!("text")
        }
    );
}

async fn list_pages_in_key_order((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    for (i, key) in ["b/2", "a/1", "b/1", "b/10", "c", "b/3"].iter().enumerate() {
        a.apply(t, &format!("l{i}"), &put(key, json!(i)))
            .await
            .unwrap();
    }
    let list = |prefix: Option<&str>, limit: Option<u32>, after: Option<&str>| Command::List {
        prefix: prefix.map(String::from),
        limit,
        after: after.map(String::from),
    };
    let keys = |outcome: Outcome| match outcome {
        Outcome::Page { items, next } => (
            items.into_iter().map(|e: Entry| e.key).collect::<Vec<_>>(),
            next,
        ),
        other => panic!("expected a page, got {other:?}"),
    };
    let all = a
        .apply(t, "q1", &list(None, None, None))
        .await
        .unwrap()
        .outcome;
    assert_eq!(
        keys(all),
        (
            vec!["a/1", "b/1", "b/10", "b/2", "b/3", "c"]
                .into_iter()
                .map(String::from)
                .collect(),
            None
        )
    );
    let first = a
        .apply(t, "q2", &list(Some("b/"), Some(2), None))
        .await
        .unwrap()
        .outcome;
    assert_eq!(
        keys(first),
        (
            vec!["b/1".to_string(), "b/10".to_string()],
            Some("b/10".to_string())
        )
    );
    let second = a
        .apply(t, "q3", &list(Some("b/"), Some(2), Some("b/10")))
        .await
        .unwrap()
        .outcome;
    assert_eq!(
        keys(second),
        (vec!["b/2".to_string(), "b/3".to_string()], None)
    );
    let none = a
        .apply(t, "q4", &list(Some("z"), None, None))
        .await
        .unwrap()
        .outcome;
    assert_eq!(keys(none), (vec![], None));
    match a
        .apply(t, "q5", &list(Some("c"), None, None))
        .await
        .unwrap()
        .outcome
    {
        Outcome::Page { items, .. } => assert_eq!(
            items,
            vec![Entry {
                key: "c".into(),
                value: json!(4)
            }]
        ),
        other => panic!("{other:?}"),
    }
}

async fn records_expire((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    a.apply(t, "old", &put("k", json!(1))).await.unwrap();
    assert_eq!(a.expire(0).await.unwrap(), 0);
    let removed = a.expire(super::now_ms() + 60_000).await.unwrap();
    assert_eq!(removed, 1);
    assert!(a.record("old").await.unwrap().is_none());
    // The data itself stays.
    assert_eq!(read(&*a, t, "k").await, Outcome::Value { value: json!(1) });
}

async fn concurrent_claims_get_distinct_terms((a, b): Pair) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.claim_term(&format!("h{i}")).await
        }));
    }
    let mut terms = Vec::new();
    for task in tasks {
        terms.push(task.await.unwrap().unwrap());
    }
    terms.sort();
    assert_eq!(terms, (1..=8).collect::<Vec<u64>>());
    // And concurrent applies under one term from two handles keep distinct, increasing seqs.
    let t = a.claim_term("a").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .apply(
                    t,
                    &format!("c{i}"),
                    &Command::Incr {
                        key: "n".into(),
                        delta: 1,
                    },
                )
                .await
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap().seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 10);
    assert_eq!(read(&*a, t, "n").await, Outcome::Value { value: json!(10) });
}

async fn values_round_trip_exactly((a, _): Pair) {
    let t = a.claim_term("a").await.unwrap();
    let values = [
        json!(1.5),
        json!(u64::MAX),
        json!(-0.0),
        json!({"$set": {"a.b": 1}, "nested": [null, true, "ü"]}),
        json!("x".repeat(100_000)),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("v{i}");
        a.apply(t, &format!("rt{i}"), &put(&key, value.clone()))
            .await
            .unwrap();
        assert_eq!(
            read(&*a, t, &key).await,
            Outcome::Value {
                value: value.clone()
            }
        );
    }
}
