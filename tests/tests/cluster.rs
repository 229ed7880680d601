//! Real server processes on loopback: election, failover, handoff, fencing, rejoin.
//!
//! Bounds are generous (the machines are small and shared); no assertion is about speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bully_client::{Command, CommandRequest, Outcome, Role};
use bully_server::store::Store;
use bully_server::store::embedded::EmbeddedStore;
use bully_server::store::mongo::{MongoOptions, MongoStore};
use bully_tests::cluster::{
    Cluster, Report, StoreSpec, TIMEOUT, check_exactly_once, incr_workload,
};
use bully_tests::harness::invariants;
use bully_tests::secantus::Secantus;
use nix::sys::signal::Signal;

/// Detection plus election plus claim, with a wide margin for a loaded machine.
fn failover_bound() -> Duration {
    TIMEOUT * 4 + Duration::from_secs(10)
}

fn embedded_store(cluster: &Cluster) -> EmbeddedStore {
    EmbeddedStore::open(cluster.dir.path().join("bully.db")).expect("open store")
}

/// A cluster on a fresh database of `mongo`, and a store handle for checking it.
async fn mongo_cluster(mongo: &Secantus, database: &str) -> (Cluster, MongoStore) {
    let spec = StoreSpec::Mongo {
        uri: mongo.uri(),
        database: database.to_string(),
    };
    let cluster = Cluster::start(&[100, 300, 200], spec);
    let store = MongoStore::connect(&mongo.uri(), database, MongoOptions::default())
        .await
        .expect("connect");
    (cluster, store)
}

/// Runs a 4-client workload around `fault`.
async fn with_workload<F, Fut>(cluster: &Cluster, fault: F) -> Report
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn(incr_workload(cluster.client(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    fault().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let report = workload.await.expect("workload");
    assert!(
        report.acked_count() > 10,
        "too little progress: {} acked",
        report.acked_count()
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_elect_the_highest_rank() {
    let cluster = Cluster::start(&[300, 100, 200], StoreSpec::Embedded);
    let term = cluster.await_coordinator(0, failover_bound()).await;
    for i in 0..3 {
        let status = cluster.status(i).await.expect("status");
        assert_eq!(status.rank, cluster.servers[i].rank);
        let coordinator = status.coordinator.expect("coordinator");
        assert_eq!(coordinator.client_addr, cluster.servers[0].client_addr);
        assert_eq!(coordinator.rank, 300);
        assert!(status.ready);
        let role = if i == 0 {
            Role::Coordinator
        } else {
            Role::Follower
        };
        assert_eq!(status.role, role);
        assert_eq!(status.peers.iter().filter(|p| p.live).count(), 2);
    }
    // A client that only knows a follower is pointed to the coordinator.
    let follower_only = vec![cluster.servers[1].client_addr.clone()];
    let client = bully_client::Client::new(follower_only, Default::default()).unwrap();
    let put = CommandRequest::new(Command::Put {
        key: "k".into(),
        value: serde_json::json!({"a": 1}),
        lease: None,
    });
    let response = client.execute(&put).await.unwrap();
    assert_eq!((response.outcome, response.term), (Outcome::Ok, term));
}

/// Servers started one after another that do not know each other yet (each knows only the ones
/// started before it, as a lagging cluster DNS lists them) claim exactly one term between them
/// when they know how many servers to expect, and the highest rank wins. Issue 16: on a fresh
/// install each server claimed its own term (terms 1, 2 and 3). The same start without the
/// expected count shows the race the rule prevents: the first server elects itself alone, and
/// each higher-ranked one takes over with a new term.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_that_find_each_other_late_claim_one_term() {
    let gap = Duration::from_millis(300);
    let expecting = ["--expected-servers", "3", "--startup-grace", "5s"];
    let cluster = Cluster::start_staggered(&[100, 200, 300], StoreSpec::Embedded, gap, &expecting);
    let term = cluster.await_coordinator(2, failover_bound()).await;
    assert_eq!(term, 1, "the servers claimed {term} terms");
    assert_eq!(
        embedded_store(&cluster).fence_state().await.unwrap().term,
        1
    );
    drop(cluster);

    let cluster = Cluster::start_staggered(&[100, 200, 300], StoreSpec::Embedded, gap, &[]);
    let term = cluster.await_coordinator(2, failover_bound()).await;
    assert!(term > 1, "without the expected count: {term} term(s)");
}

/// A lone first server (the others not started yet, or gone) is still elected, once the
/// startup grace is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_first_server_is_elected_after_the_startup_grace() {
    let grace = Duration::from_secs(2);
    let extra = ["--expected-servers", "3", "--startup-grace", "2s"];
    let started = std::time::Instant::now();
    let cluster = Cluster::start_staggered(&[300], StoreSpec::Embedded, Duration::ZERO, &extra);
    let term = cluster.await_coordinator(0, failover_bound()).await;
    assert!(
        started.elapsed() >= grace,
        "elected after {:?}",
        started.elapsed()
    );
    assert_eq!(term, 1);
}

/// A long-lived client remembers the coordinator: the follower listed first redirects its
/// first command only; every later one goes straight to the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_remembers_the_coordinator() {
    let cluster = Cluster::start(&[100, 300, 200], StoreSpec::Embedded);
    cluster.await_coordinator(1, failover_bound()).await;
    let client = cluster.client();
    assert_eq!(client.servers()[0], cluster.servers[0].client_addr);
    for _ in 0..20 {
        let incr = CommandRequest::new(Command::Incr {
            key: "n".into(),
            delta: 1,
        });
        client.execute(&incr).await.expect("incr");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", cluster.servers[0].client_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let redirected = metrics
        .lines()
        .find(|l| l.starts_with(r#"bully_commands_total{kind="incr",outcome="rejected"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .map(|n| n.parse::<u64>().expect("a count"));
    assert_eq!(
        redirected,
        Some(1),
        "redirects by the first follower:\n{metrics}"
    );
}

/// SIGKILL the coordinator during a workload: the next highest takes over; commands in flight
/// are retried with the same id and succeed; nothing acknowledged is lost or applied twice.
async fn crash_test(cluster: Cluster, store: &dyn Store) {
    let first = cluster.await_coordinator(1, failover_bound()).await;
    let mut second = 0;
    let report = with_workload(&cluster, || async {
        cluster.signal(1, Signal::SIGKILL);
        second = cluster.await_coordinator(2, failover_bound()).await;
    })
    .await;
    assert!(second > first);
    assert!(
        report.failed.is_empty(),
        "failed commands: {:?}",
        report.failed
    );
    let after = report
        .acked
        .iter()
        .flatten()
        .filter(|(_, r)| r.term == second)
        .count();
    assert!(after > 0, "nothing committed after the failover");
    check_exactly_once(&report, store, &cluster.client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_coordinator_embedded_store() {
    let cluster = Cluster::start(&[100, 300, 200], StoreSpec::Embedded);
    let store = embedded_store(&cluster);
    crash_test(cluster, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_coordinator_mongodb_store() {
    let mongo = Secantus::start().await;
    let (cluster, store) = mongo_cluster(&mongo, "bully_crash").await;
    crash_test(cluster, &store).await;
}

/// SIGTERM (what `kubectl delete pod` sends) to the coordinator during a workload: it drains
/// and hands over, and not one client command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_coordinator_hands_over_without_failures() {
    let mut cluster = Cluster::start(&[100, 300, 200], StoreSpec::Embedded);
    let store = embedded_store(&cluster);
    let first = cluster.await_coordinator(1, failover_bound()).await;
    let mut second = 0;
    let report = with_workload(&cluster, || async {
        cluster.signal(1, Signal::SIGTERM);
        second = cluster.await_coordinator(2, failover_bound()).await;
    })
    .await;
    assert_eq!(
        cluster.wait_exit(1, Duration::from_secs(15)),
        Some(0),
        "clean exit"
    );
    assert!(second > first);
    assert!(
        report.failed.is_empty(),
        "failed commands: {:?}",
        report.failed
    );
    check_exactly_once(&report, &store, &cluster.client()).await;
    let log = std::fs::read_to_string(&cluster.servers[1].log).unwrap();
    assert!(
        log.contains("queue drained"),
        "the coordinator did not drain before leaving"
    );
}

/// SIGSTOP the coordinator past the timeout; the others elect; SIGCONT: the old coordinator
/// commits nothing under its old term once a newer one exists (fencing), steps down, and later
/// takes over again gracefully with a new term because it still has the highest rank (unless
/// no newer term could be claimed at all: see below).
///
/// With MongoDB the new coordinator claims its term while the old one is still paused (the
/// claim aborts the paused server's open transaction; the paused server's lease runs out
/// because it cannot renew it). With the embedded store a server paused inside a transaction
/// keeps SQLite's write lock, so no claim gets through until the old one resumes — and then
/// it renews its lease first, and stays the coordinator: `paused_holds_store` says which
/// behaviour to expect.
async fn sigstop_test(cluster: Cluster, store: &dyn Store, paused_holds_store: bool) {
    const STALE: &str = "sent-to-the-paused-coordinator";
    let old_term = cluster.await_coordinator(1, failover_bound()).await;
    let old_addr = cluster.servers[1].client_addr.clone();
    let mut stale_request = None;
    let mut log_at_resume = 0;
    let report = with_workload(&cluster, || async {
        cluster.signal(1, Signal::SIGSTOP);
        // A request sent straight to the paused coordinator waits in its socket backlog.
        let direct = bully_client::Client::new(
            vec![old_addr.clone()],
            bully_client::ClientOptions {
                timeout: Duration::from_secs(30),
                attempt_timeout: Duration::from_secs(30),
                token: None,
                tls: None,
            },
        )
        .unwrap();
        stale_request = Some(tokio::spawn(async move {
            let put = CommandRequest {
                id: STALE.into(),
                command: Command::Incr {
                    key: "stale".into(),
                    delta: 1,
                },
            };
            direct.execute(&put).await
        }));
        if paused_holds_store {
            tokio::time::sleep(TIMEOUT * 4).await;
        } else {
            let interim = cluster.await_coordinator(2, failover_bound()).await;
            assert!(interim > old_term);
        }
        log_at_resume = std::fs::metadata(&cluster.servers[1].log).unwrap().len() as usize;
        cluster.signal(1, Signal::SIGCONT);
    })
    .await;
    // Eventually the highest rank is back in charge, under a newer term.
    let final_term = cluster.await_coordinator(1, failover_bound()).await;
    assert!(
        report.failed.is_empty(),
        "failed commands: {:?}",
        report.failed
    );
    let mut records = check_exactly_once(&report, store, &cluster.client()).await;
    let log = std::fs::read_to_string(&cluster.servers[1].log).unwrap();
    let after_resume = &log[log_at_resume.min(log.len())..];
    let interim_log = std::fs::read_to_string(&cluster.servers[2].log).unwrap();
    if paused_holds_store && final_term == old_term {
        // The embedded store: paused inside a transaction, it kept SQLite's write lock, so no
        // claim got through while it was paused; resumed, it renewed its lease before the
        // interim's claim could run, which the lease then refused. Still the coordinator, and
        // nobody else committed meanwhile (below).
        assert!(
            interim_log.contains("lease holds"),
            "no newer term, yet no claim was refused by the lease"
        );
        assert_eq!(store.fence_state().await.unwrap().term, old_term);
    } else {
        assert!(
            final_term > old_term + 1,
            "no interim coordinator claimed a term"
        );
        // The resumed coordinator stopped executing under its old term (fenced by the store,
        // or stepping down on hearing the newer term) ...
        assert!(
            after_resume.contains("stopped executing commands")
                || after_resume.contains("term superseded"),
            "the resumed coordinator did not stop executing under term {old_term}"
        );
    }
    // It committed nothing under its old term once a newer term existed: the request it held, if
    // applied at all, sits in the one order consistently with its term, and was acknowledged
    // exactly as stored.
    let stale = stale_request
        .expect("sent")
        .await
        .expect("the stale request's task");
    let stale_record = store.record(STALE).await.expect("the store");
    match (&stale, &stale_record) {
        (Ok(response), Some(record)) => {
            assert_eq!((response.seq, response.term), (record.seq, record.term))
        }
        (Ok(response), None) => panic!("{STALE} acknowledged ({response:?}) but not stored"),
        (Err(_), _) => {}
    }
    if let Some(record) = stale_record {
        if !paused_holds_store {
            // With MongoDB the new term was claimed while it was paused: it cannot have
            // applied the request under its old term.
            assert!(record.term > old_term, "{STALE} applied under {old_term}");
        }
        records.insert(STALE.to_string(), record);
    }
    let found =
        invariants::terms_follow_seqs(records.values().map(|r| (r.seq, r.term, r.id.clone())));
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_coordinator_is_fenced_mongodb_store() {
    let mongo = Secantus::start().await;
    let (cluster, store) = mongo_cluster(&mongo, "bully_pause").await;
    sigstop_test(cluster, &store, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_coordinator_is_fenced_embedded_store() {
    let cluster = Cluster::start(&[100, 300, 200], StoreSpec::Embedded);
    let store = embedded_store(&cluster);
    sigstop_test(cluster, &store, true).await;
}

/// A killed follower restarts and rejoins as a follower; then a killed coordinator restarts
/// with the highest rank and takes over gracefully during a workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_servers_rejoin_and_the_highest_takes_over() {
    let mut cluster = Cluster::start(&[100, 300, 200], StoreSpec::Embedded);
    let store = embedded_store(&cluster);
    cluster.await_coordinator(1, failover_bound()).await;
    cluster.signal(0, Signal::SIGKILL);
    cluster.wait_exit(0, Duration::from_secs(10));
    cluster.restart(0, 50);
    cluster.await_coordinator(1, failover_bound()).await;
    let status = cluster.status(0).await.unwrap();
    assert_eq!((status.role, status.rank), (Role::Follower, 50));

    cluster.signal(1, Signal::SIGKILL);
    cluster.wait_exit(1, Duration::from_secs(10));
    let interim = cluster.await_coordinator(2, failover_bound()).await;
    let mut cluster = cluster;
    let stop = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn(incr_workload(cluster.client(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.restart(1, 1000);
    let last = cluster.await_coordinator(1, failover_bound()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let report = workload.await.unwrap();
    assert!(last > interim);
    assert!(
        report.failed.is_empty(),
        "graceful takeover failed commands: {:?}",
        report.failed
    );
    check_exactly_once(&report, &store, &cluster.client()).await;
    let log = std::fs::read_to_string(&cluster.servers[2].log).unwrap();
    assert!(
        log.contains("queue drained"),
        "the interim coordinator did not hand over gracefully"
    );
}

/// The MongoDB-compatible store steps down (refusing writes for a few seconds) in the middle of
/// a workload: the coordinator retries within its deadline, clients retry with the same ids,
/// and every acknowledged command is present exactly once afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_step_down_during_workload_loses_nothing() {
    let mongo = Secantus::start().await;
    let (cluster, store) = mongo_cluster(&mongo, "bully_stepdown").await;
    cluster.await_coordinator(1, failover_bound()).await;
    let report = with_workload(&cluster, || async {
        // Succeeds only once the node says it is no longer writable.
        mongo.step_down(3).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
    })
    .await;
    // The coordinator felt it: its store operations failed and were retried.
    let log = std::fs::read_to_string(&cluster.servers[1].log).unwrap();
    assert!(
        log.contains("transient MongoDB error, retrying"),
        "the coordinator never saw the step-down"
    );
    assert!(
        report.failed.is_empty(),
        "failed commands: {:?}",
        report.failed
    );
    check_exactly_once(&report, &store, &cluster.client()).await;
}
