//! Container-level tests: the project image (built from the repository's Dockerfile) as a
//! cluster of server containers on one Docker network, a SecantusDB store container, and
//! one-shot client containers, through `docker kill`, `stop`, `pause`, `network disconnect`
//! and restarts. See docs/containers.md for what each scenario proves.
//!
//! Not run by a plain `cargo test` (`test = false` in Cargo.toml): they need the images.
//! `scripts/docker-test.sh` builds them and runs these tests; `scripts/test.sh` (CI) calls it.
//!
//! Ranks are fixed (`BULLY_RANK`) so each test knows who must win. Bounds are generous; no
//! assertion is about speed.

use std::collections::BTreeMap;
use std::time::Duration;

use bully_client::Role;
use bully_tests::cluster::Report;
use bully_tests::docker::{
    CLIENT_PORT, Cluster, Outcome, TIMEOUT, Workload, check, client_container, docker, docker_ok,
    failover_bound, image,
};

/// Three servers; server 1 (rank 300) wins, then server 2 (rank 200).
const THREE: [u64; 3] = [100, 300, 200];
/// Five servers; server 1 (rank 500) wins, then server 4 (rank 400).
const FIVE: [u64; 5] = [100, 500, 300, 200, 400];

/// Workload around a fault: time for commands to flow before and after it.
const SETTLE: Duration = Duration::from_secs(3);

async fn started(ranks: &[u64], want: usize) -> (Cluster, u64) {
    let cluster = Cluster::start(ranks).await;
    let all: Vec<usize> = (0..ranks.len()).collect();
    let term = cluster
        .await_coordinator(want, &all, failover_bound())
        .await;
    (cluster, term)
}

/// A workload of two one-shot client containers (one `docker run` per command) and two
/// looping client containers (a loop of one-shot `bully-client` processes).
async fn workload(cluster: &Cluster) -> Workload {
    Workload::start(cluster, 2, 2).await
}

fn assert_progress(report: &Report) {
    let per_worker: Vec<usize> = report.acked.iter().map(Vec::len).collect();
    assert!(
        per_worker.iter().all(|n| *n > 0) && report.acked_count() >= 10,
        "too little progress: acked per worker {per_worker:?}"
    );
}

fn assert_no_failures(report: &Report) {
    assert!(
        report.failed.is_empty(),
        "{} failed client commands (of {}): {:?}",
        report.failed.len(),
        report.issued.len(),
        report.failed
    );
}

/// Lets the workload run on for [`SETTLE`] after a fault, stops it, and asserts that every
/// client made progress and not one command failed.
async fn settle_and_stop(load: Workload) -> Report {
    tokio::time::sleep(SETTLE).await;
    let report = load.stop().await;
    assert_progress(&report);
    assert_no_failures(&report);
    report
}

/// A command sent to a deposed coordinator (`stale` is what its client saw, `records` what the
/// store holds) may commit later through a newer coordinator, but never under the `old` term.
fn assert_not_committed_under(
    old: u64,
    stale: &Outcome,
    records: &BTreeMap<u64, (String, u64)>,
    id: &str,
) {
    eprintln!("command {id} sent to the deposed coordinator: {stale:?}");
    if let Outcome::Acked(response) = stale {
        assert!(
            response.term > old,
            "acknowledged under the deposed coordinator's term {old}: {response:?}"
        );
    }
    if let Some((seq, (_, term))) = records.iter().find(|(_, (applied, _))| applied == id) {
        assert!(*term > old, "{id} committed at seq {seq} under term {term}");
    }
}

fn acked_under(report: &Report, term: u64) -> usize {
    report
        .acked
        .iter()
        .flatten()
        .filter(|(_, r)| r.term == term)
        .count()
}

/// Every server hears every other one. A server learns of the others through DNS, which it
/// asks again every 2 s (`--peer-dns-interval`): one that started first may need a round.
async fn assert_all_see_live_peers(cluster: &Cluster) {
    let n = cluster.servers.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for i in 0..n {
        loop {
            let status = cluster.status(i).await.expect("status");
            let live = status.peers.iter().filter(|p| p.live).count();
            if live == n - 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} sees {live} live peers: {:?}",
                cluster.servers[i].name,
                status.peers
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The image itself: the three binaries, a non-root numeric user, `bully-server serve` as the
/// default command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_has_the_three_binaries_and_runs_as_uid_10001() {
    let image = image();
    let config = docker_ok([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        &image,
    ])
    .await;
    assert_eq!(config, r#"10001:10001 ["bully-server"] ["serve"]"#);
    for binary in ["bully-server", "bully-client", "bully-controller"] {
        let out = docker(["run", "--rm", "--entrypoint", binary, &image, "--version"]).await;
        assert!(out.is_ok(), "{binary} --version: {out:?}");
    }
    let id = docker_ok(["run", "--rm", "--entrypoint", "id", &image]).await;
    assert!(id.starts_with("uid=10001"), "{id}");
}

/// `docker kill` (SIGKILL) of the coordinator during a workload: the next rank takes over
/// under a newer term; clients pause, retry with the same ids and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_kill_coordinator_elects_a_new_one() {
    let (cluster, first) = started(&THREE, 1).await;
    // Discovery through the network alias: every server found the other two.
    assert_all_see_live_peers(&cluster).await;
    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    cluster.kill(1).await;
    let second = cluster
        .await_coordinator(2, &[0, 2], failover_bound())
        .await;
    let report = settle_and_stop(load).await;
    assert!(second > first, "term {second} after {first}");
    assert!(
        acked_under(&report, second) > 0,
        "nothing acknowledged after the failover"
    );
    check(&cluster, &report, &[]).await;
}

/// `docker stop` (SIGTERM, what `kubectl delete pod` sends) of the coordinator: it drains its
/// queue, hands over to the next rank and exits 0; not one client command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_stop_coordinator_hands_over_without_failures() {
    let (cluster, first) = started(&THREE, 1).await;
    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    cluster.stop(1, Duration::from_secs(30)).await;
    let second = cluster
        .await_coordinator(2, &[0, 2], failover_bound())
        .await;
    let report = settle_and_stop(load).await;
    assert_eq!(cluster.exit_code(1).await, Some(0), "a clean exit");
    assert!(second > first, "term {second} after {first}");
    let log = cluster.logs(1).await;
    assert!(
        log.contains("queue drained"),
        "the coordinator did not drain before leaving"
    );
    check(&cluster, &report, &[]).await;
}

/// How long the partition scenarios keep a server off the servers' network.
const PARTITION: Duration = Duration::from_secs(10);

/// The term the store holds now.
async fn store_term(cluster: &Cluster) -> u64 {
    use bully_server::store::Store as _;
    cluster
        .store_handle()
        .await
        .fence_state()
        .await
        .expect("fence")
        .term
}

/// `docker network disconnect` of the highest-ranked follower of five from the servers'
/// network (it still reaches the store over the store's network) for 10 s: it stops hearing
/// the coordinator, elects itself and tries to claim a term, and the coordinator's lease on
/// the fence refuses it. The term never changes, the others keep their coordinator, and not
/// one client command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_partition_of_a_follower_takes_no_term() {
    let (cluster, first) = started(&FIVE, 1).await;
    assert_all_see_live_peers(&cluster).await;
    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    cluster.disconnect(4).await;
    tokio::time::sleep(PARTITION / 2).await;
    let rest = [0, 1, 2, 3];
    let during = cluster.await_coordinator(1, &rest, failover_bound()).await;
    assert_eq!(
        during, first,
        "the others changed term during the partition"
    );
    tokio::time::sleep(PARTITION / 2).await;
    assert_eq!(store_term(&cluster).await, first, "a term was claimed");
    let log = cluster.logs(4).await;
    assert!(
        log.contains("lease holds"),
        "the cut-off follower never tried to claim"
    );
    cluster.reconnect(4).await;
    let all = [0, 1, 2, 3, 4];
    let last = cluster.await_coordinator(1, &all, failover_bound()).await;
    assert_eq!(last, first);
    let report = settle_and_stop(load).await;
    assert_eq!(acked_under(&report, first), report.acked_count());
    check(&cluster, &report, &[]).await;
}

/// `docker network disconnect` of the coordinator of five from the servers' network: it is
/// alive and still reaches the store, so it keeps its term — the four others stop hearing it
/// and elect the next rank, whose claim the lease refuses. It still serves a client that
/// reaches it (over the store's network); clients that reach only the others wait, and their
/// commands go through once it is back. No term changes; no client command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_partition_of_the_coordinator_keeps_its_term() {
    let (cluster, first) = started(&FIVE, 1).await;
    assert_all_see_live_peers(&cluster).await;
    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    cluster.disconnect(1).await;
    tokio::time::sleep(PARTITION / 2).await;
    // A client that reaches only the isolated coordinator (over the store's network).
    let served_id = "served-by-the-isolated-coordinator";
    let servers = format!("{}:{CLIENT_PORT}", cluster.servers[1].name);
    let served = client_container(
        &cluster.label_args(),
        &cluster.store_network,
        &servers,
        served_id,
        &["--timeout", "5s"],
        &["incr", "served"],
    )
    .await;
    match &served {
        Outcome::Acked(response) => assert_eq!(response.term, first, "{response:?}"),
        Outcome::Failed(why) => panic!("the isolated coordinator did not serve: {why}"),
    }
    tokio::time::sleep(PARTITION / 2).await;
    assert_eq!(store_term(&cluster).await, first, "a term was claimed");
    assert!(
        cluster.logs(4).await.contains("lease holds"),
        "the next rank never tried to claim"
    );
    cluster.reconnect(1).await;
    let all = [0, 1, 2, 3, 4];
    let last = cluster.await_coordinator(1, &all, failover_bound()).await;
    assert_eq!(last, first);
    let report = settle_and_stop(load).await;
    let records = check(&cluster, &report, &[served_id]).await;
    assert!(
        records
            .values()
            .any(|(id, term)| id == served_id && *term == first)
    );
}

/// `docker pause` (the cgroup freezer) of the coordinator for longer than the heartbeat
/// timeout: the others elect the next rank. A command that reached the frozen server waits in
/// its socket; after `unpause` the server cannot commit anything under its old term (the store
/// fences it if it tries), steps down, and later, being the highest rank, takes over again
/// gracefully under a newer term.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_pause_coordinator_is_fenced_and_steps_down() {
    let (cluster, first) = started(&THREE, 1).await;
    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    cluster.pause(1).await;
    let stale_id = "stale-paused";
    let stale = {
        let labels = cluster.label_args();
        let network = cluster.network.clone();
        let servers = format!("{}:{CLIENT_PORT}", cluster.servers[1].name);
        tokio::spawn(async move {
            client_container(
                &labels,
                &network,
                &servers,
                stale_id,
                &["--timeout", "60s", "--attempt-timeout", "60s"],
                &["incr", "stale"],
            )
            .await
        })
    };
    let interim = cluster
        .await_coordinator(2, &[0, 2], failover_bound())
        .await;
    assert!(interim > first, "term {interim} after {first}");
    // Well past the timeout, and time for the stale request to reach the frozen server.
    tokio::time::sleep(TIMEOUT * 3).await;
    cluster.unpause(1).await;
    let last = cluster
        .await_coordinator(1, &[0, 1, 2], failover_bound())
        .await;
    assert!(last > interim, "term {last} after {interim}");
    let report = settle_and_stop(load).await;
    // Once thawed, the server either finds its term superseded when it applies the command
    // (fenced) or learns of the new coordinator first and points the client there: either
    // way the command may commit, but never under the old term.
    let stale = stale.await.expect("stale client");
    let records = check(&cluster, &report, &[stale_id]).await;
    assert_not_committed_under(first, &stale, &records, stale_id);
    let log = cluster.logs(1).await;
    assert!(
        log.contains("term superseded") || log.contains("from=coordinator"),
        "the unpaused coordinator did not step down"
    );
}

/// A killed follower restarted with `docker start` rejoins as a follower; the killed
/// coordinator restarted rejoins too and, as the highest rank, takes over gracefully (the
/// interim coordinator drains and hands over) while clients keep going without a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_containers_restart_and_rejoin() {
    let (cluster, first) = started(&THREE, 1).await;
    cluster.kill(0).await;
    cluster.start_again(0).await;
    let term = cluster
        .await_coordinator(1, &[0, 1, 2], failover_bound())
        .await;
    assert_eq!(
        term, first,
        "a follower's restart must not change the coordinator"
    );
    assert_eq!(
        cluster.status(0).await.expect("status").role,
        Role::Follower
    );

    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    cluster.kill(1).await;
    let interim = cluster
        .await_coordinator(2, &[0, 2], failover_bound())
        .await;
    tokio::time::sleep(SETTLE).await;
    cluster.start_again(1).await;
    let last = cluster
        .await_coordinator(1, &[0, 1, 2], failover_bound())
        .await;
    let report = settle_and_stop(load).await;
    assert!(
        first < interim && interim < last,
        "terms {first}, {interim}, {last}"
    );
    assert_all_see_live_peers(&cluster).await;
    check(&cluster, &report, &[]).await;
    let log = cluster.logs(2).await;
    assert!(
        log.contains("queue drained"),
        "the interim coordinator did not hand over gracefully"
    );
}

/// The store container restarted (`docker restart`) during a workload: the servers reconnect
/// (the store comes back under its network alias, on the same volume) and go on; nothing
/// acknowledged is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_container_restart_loses_nothing() {
    let (cluster, _) = started(&THREE, 1).await;
    let load = workload(&cluster).await;
    tokio::time::sleep(SETTLE).await;
    docker_ok(["restart", "--time", "10", &cluster.store]).await;
    cluster.await_store().await;
    // The servers recover: a command goes through once the store is back.
    let probe = bully_client::CommandRequest::new(bully_client::Command::Incr {
        key: "probe".into(),
        delta: 1,
    });
    let after = cluster
        .client()
        .await
        .execute(&probe)
        .await
        .expect("a command after the store restart");
    // Commands may fail while the store is down longer than a client's deadline; none should
    // on this machine, and the exactly-once check below holds either way.
    let report = settle_and_stop(load).await;
    let later = report
        .acked
        .iter()
        .flatten()
        .filter(|(_, r)| r.seq > after.seq)
        .count();
    assert!(
        later > 0,
        "no client command acknowledged after the store came back"
    );
    check(&cluster, &report, &[]).await;
    // Every server is back to normal: the highest rank is the agreed coordinator.
    cluster
        .await_coordinator(1, &[0, 1, 2], failover_bound())
        .await;
}
