//! The MongoDB store keeps exactly-once and one order when the primary steps down under load
//! ([`commands_survive_a_step_down_exactly_once`]), when a commit's result is lost
//! ([`ambiguous_commits_apply_once`]), and when a new term is claimed while applies of the old
//! one are in flight ([`a_claim_fences_applies_in_flight`]).
//!
//! Several workers apply `incr` and `put` commands with unique ids under one term while another
//! task steps the server down. A worker whose apply returns `Unavailable` retries the same id,
//! as the real client does, until it is acknowledged.
//!
//! SecantusDB is a single-node replica set: after `replSetStepDown` it refuses every write
//! (including writes inside transactions) with `NotWritablePrimary` for the whole window and
//! serves reads; there is no other member to fail over to. Unlike mongod it does not abort
//! transactions that are open at the step-down, and it accepts `commitTransaction` during the
//! window, so a transaction whose writes all ran before the step-down still commits: the test
//! sees that as ordinary success. With a 1 s operation deadline and a 3 s window, applies during
//! the window fail with `Unavailable` and are retried by the worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bully_client::{Command, Outcome};
use bully_server::store::mongo::{MongoOptions, MongoStore};
use bully_server::store::{Store, StoreError};
use bully_tests::secantus::Secantus;
use mongodb::bson::{Document, doc};
use serde_json::json;
use tokio::time::{Instant, sleep};

const WORKERS: usize = 6;
/// When the step-down starts, and how long it lasts.
const STEP_DOWN_AFTER: Duration = Duration::from_millis(700);
const WINDOW_SECS: u64 = 3;
/// Workers keep issuing new commands this long after the window closed.
const TAIL: Duration = Duration::from_millis(1500);
/// A command still unacknowledged after this long fails the test.
const GIVE_UP: Duration = Duration::from_secs(60);

/// One acknowledged command, as its worker saw it.
#[derive(Debug)]
struct Ack {
    id: String,
    incr: bool,
    seq: u64,
    term: u64,
    outcome: Outcome,
    /// When the first apply of this id was sent, and when the acknowledgement arrived.
    sent: Instant,
    acked: Instant,
}

async fn worker(store: Arc<MongoStore>, term: u64, w: usize, stop: Instant) -> (Vec<Ack>, u32) {
    let mut acks = Vec::new();
    let mut unavailable = 0;
    let mut i = 0;
    while Instant::now() < stop {
        i += 1;
        let id = format!("w{w}-{i}");
        let incr = i % 3 != 0;
        let command = if incr {
            Command::Incr {
                key: "counter".into(),
                delta: 1,
            }
        } else {
            Command::Put {
                key: format!("last-{w}"),
                value: json!(i),
                lease: None,
            }
        };
        let sent = Instant::now();
        let applied = loop {
            match store.apply(term, &id, &command).await {
                Ok(applied) => break applied,
                Err(StoreError::Unavailable(why)) => {
                    unavailable += 1;
                    assert!(sent.elapsed() < GIVE_UP, "{id} never acknowledged: {why}");
                    sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{id}: {e}"),
            }
        };
        assert_eq!(applied.term, term);
        acks.push(Ack {
            id,
            incr,
            seq: applied.seq,
            term: applied.term,
            outcome: applied.outcome,
            sent,
            acked: Instant::now(),
        });
        sleep(Duration::from_millis(10)).await;
    }
    (acks, unavailable)
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_survive_a_step_down_exactly_once() {
    let server = Arc::new(Secantus::start().await);
    // Short enough that applies during the window give up and the worker's retry path runs.
    let options = MongoOptions {
        op_deadline: Duration::from_secs(1),
    };
    let store = Arc::new(
        MongoStore::connect(&server.uri(), "stepdown", options)
            .await
            .expect("connect"),
    );
    let term = store.claim_term("test").await.unwrap();

    let start = Instant::now();
    let window_end = start + STEP_DOWN_AFTER + Duration::from_secs(WINDOW_SECS);
    let stop = window_end + TAIL;
    let stepper = {
        let server = server.clone();
        tokio::spawn(async move {
            sleep(STEP_DOWN_AFTER).await;
            server.step_down(WINDOW_SECS).await;
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(store.clone(), term, w, stop)))
        .collect();
    stepper.await.unwrap();
    let mut acks = Vec::new();
    let mut unavailable = 0;
    for task in workers {
        let (mine, failed) = task.await.unwrap();
        acks.extend(mine);
        unavailable += failed;
    }
    let incrs = acks.iter().filter(|a| a.incr).count();
    eprintln!(
        "{} commands acknowledged ({incrs} incr), {unavailable} applies unavailable",
        acks.len()
    );

    // The step-down was felt, and the workload ran on both sides of it.
    assert!(
        unavailable > 0,
        "no apply failed during the step-down window"
    );
    assert!(acks.iter().any(|a| a.acked < start + STEP_DOWN_AFTER));
    assert!(acks.iter().any(|a| a.sent > window_end));

    // Every acknowledged command has exactly its acknowledged record.
    for ack in &acks {
        let record = store
            .record(&ack.id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no record of acknowledged {}", ack.id));
        assert_eq!(
            (record.seq, record.term, &record.outcome),
            (ack.seq, ack.term, &ack.outcome),
            "{}",
            ack.id
        );
    }
    // ...and nothing else was recorded: one record per id, none for a lost attempt.
    let commands = server
        .client()
        .await
        .database("stepdown")
        .collection::<Document>("commands");
    let stored = commands.count_documents(doc! {}).await.unwrap();
    assert_eq!(stored, acks.len() as u64);

    // Seqs are unique and follow real time: a command acknowledged before another one was
    // first sent has the smaller seq.
    let seqs: HashSet<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs.len(), acks.len(), "duplicate seqs");
    for a in &acks {
        for b in &acks {
            if a.acked < b.sent {
                assert!(
                    a.seq < b.seq,
                    "{} (seq {}) before {} (seq {})",
                    a.id,
                    a.seq,
                    b.id,
                    b.seq
                );
            }
        }
    }
    assert!(store.fence_state().await.unwrap().seq >= *seqs.iter().max().unwrap());

    // No incr was lost or applied twice: in seq order the counter answers 1, 2, 3, ...
    let mut by_seq: Vec<&Ack> = acks.iter().filter(|a| a.incr).collect();
    by_seq.sort_by_key(|a| a.seq);
    for (n, ack) in by_seq.iter().enumerate() {
        let expected = Outcome::Counter {
            value: n as i64 + 1,
        };
        assert_eq!(ack.outcome, expected, "{} (seq {})", ack.id, ack.seq);
    }
    let read = store
        .apply(
            term,
            "final-read",
            &Command::Get {
                key: "counter".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        read.outcome,
        Outcome::Value {
            value: json!(incrs)
        }
    );

    // Each worker's last put is what its key holds.
    let mut last_put: HashMap<String, &Ack> = HashMap::new();
    for ack in acks.iter().filter(|a| !a.incr) {
        let worker = ack.id.split('-').next().unwrap().to_string();
        last_put.insert(worker, ack);
    }
    for (worker, ack) in last_put {
        let i: i64 = ack.id.rsplit('-').next().unwrap().parse().unwrap();
        let key = format!("last-{}", &worker[1..]);
        let got = store
            .apply(term, &format!("read-{worker}"), &Command::Get { key })
            .await
            .unwrap();
        assert_eq!(got.outcome, Outcome::Value { value: json!(i) }, "{worker}");
    }
}

/// A commit whose acknowledgement fails (a `writeConcernError` after the transaction committed,
/// or a dropped connection) is retried without applying the command twice, within one `apply`
/// or across the caller's retry after `Unavailable`.
#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_commits_apply_once() {
    let server = Secantus::start().await;
    // Each dropped connection costs ~0.5 s (the driver waits that long before checking the
    // server again): 3 s fits the drops below and keeps the always-failing case short.
    let options = MongoOptions {
        op_deadline: Duration::from_secs(3),
    };
    let store = MongoStore::connect(&server.uri(), "ambiguous", options)
        .await
        .expect("connect");
    let term = store.claim_term("test").await.unwrap();
    let incr = Command::Incr {
        key: "n".into(),
        delta: 1,
    };
    // The transaction commits, but the reply says replication timed out: the driver labels it
    // UnknownTransactionCommitResult and the store retries the commit.
    let lost_ack = || {
        doc! {
            "failCommands": ["commitTransaction"],
            "writeConcernError": {
                "code": 64, "codeName": "WriteConcernFailed",
                "errmsg": "waiting for replication timed out", "errInfo": { "wtimeout": true },
            },
        }
    };

    server.fail_command(doc! { "times": 3 }, lost_ack()).await;
    let first = store.apply(term, "a1", &incr).await.unwrap();
    assert_eq!(
        (first.outcome, first.duplicate),
        (Outcome::Counter { value: 1 }, false)
    );

    // Every commit reply lost until the deadline: the caller sees Unavailable although the
    // command was applied, and its retry with the same id gets the stored result.
    server.fail_command("alwaysOn", lost_ack()).await;
    let err = store.apply(term, "a2", &incr).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    server.fail_command("off", doc! {}).await;
    let record = store.record("a2").await.unwrap().expect("a2 was committed");
    let retried = store.apply(term, "a2", &incr).await.unwrap();
    assert!(retried.duplicate);
    assert_eq!(
        (retried.seq, &retried.outcome),
        (record.seq, &Outcome::Counter { value: 2 })
    );

    // The connection drops before the commit runs: the driver retries once, then the store.
    let drop = doc! { "failCommands": ["commitTransaction"], "closeConnection": true };
    server.fail_command(doc! { "times": 3 }, drop).await;
    let third = store.apply(term, "a3", &incr).await.unwrap();
    assert_eq!(
        (third.outcome, third.duplicate),
        (Outcome::Counter { value: 3 }, false)
    );

    let read = store
        .apply(term, "read", &Command::Get { key: "n".into() })
        .await
        .unwrap();
    assert_eq!(read.outcome, Outcome::Value { value: json!(3) });
    assert_eq!(store.fence_state().await.unwrap().seq, read.seq);
}

/// A claim racing with applies of the previous term: every apply of the old term either commits
/// before the claim (a smaller seq than every apply of the new term) or is fenced, and none
/// sent after the claim returned commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_fences_applies_in_flight() {
    let server = Secantus::start().await;
    let uri = server.uri();
    let connect = || MongoStore::connect(&uri, "race", MongoOptions::default());
    let (old, new) = (Arc::new(connect().await.unwrap()), connect().await.unwrap());
    let t1 = old.claim_term("old").await.unwrap();
    let incr = Command::Incr {
        key: "n".into(),
        delta: 1,
    };
    let appliers: Vec<_> = (0..4)
        .map(|w| {
            let (old, incr) = (old.clone(), incr.clone());
            tokio::spawn(async move {
                let (mut acks, started) = (Vec::new(), Instant::now());
                for i in 0.. {
                    let sent = Instant::now();
                    assert!(sent - started < GIVE_UP, "the old term was never fenced");
                    match old.apply(t1, &format!("old-{w}-{i}"), &incr).await {
                        Ok(applied) => acks.push((applied.seq, sent)),
                        Err(StoreError::Fenced { mine, current }) => {
                            return (acks, mine, current);
                        }
                        Err(e) => panic!("old-{w}-{i}: {e}"),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    sleep(Duration::from_millis(300)).await;
    let t2 = new.claim_term("new").await.unwrap();
    let claimed = Instant::now();
    let mut new_seqs = Vec::new();
    for i in 0..20 {
        new_seqs.push(new.apply(t2, &format!("new-{i}"), &incr).await.unwrap().seq);
    }
    let mut old_acks = Vec::new();
    for task in appliers {
        let (acks, mine, current) = task.await.unwrap();
        assert_eq!((mine, current), (t1, t2));
        old_acks.extend(acks);
    }
    assert!(
        !old_acks.is_empty(),
        "the old term applied nothing before the claim"
    );
    let first_new = *new_seqs.iter().min().unwrap();
    for (seq, sent) in &old_acks {
        assert!(
            *seq < first_new,
            "old-term seq {seq} after new-term seq {first_new}"
        );
        assert!(
            *sent < claimed,
            "an apply sent after the claim returned committed"
        );
    }
    let total = old_acks.len() + new_seqs.len();
    let read = new
        .apply(t2, "read", &Command::Get { key: "n".into() })
        .await
        .unwrap();
    assert_eq!(
        read.outcome,
        Outcome::Value {
            value: json!(total)
        }
    );
}
