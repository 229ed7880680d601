//! A server cut off from every peer, but not from the store, for 12 s under a workload: it
//! claims no term (the coordinator's lease on the fence holds), the coordinator's term stays,
//! no command fails, and the workload's longest stall during the partition is no worse than
//! before it (generous bounds: the figures are printed, the claim is that nothing failed over).
//! On both stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bully_client::{Client, ClientOptions, CommandRequest, CommandResponse};
use bully_server::store::Store;
use bully_server::store::embedded::EmbeddedStore;
use bully_server::store::mongo::{MongoOptions, MongoStore};
use bully_tests::chaos::cluster::{ChaosCluster, StoreArgs};
use bully_tests::chaos::proxy::CutMode;
use bully_tests::secantus::Secantus;

/// One cluster at a time: the machines have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PARTITION: Duration = Duration::from_secs(12);

/// Acknowledgement times of a closed-loop `incr` workload of `workers` clients.
async fn workload(servers: Vec<String>, workers: usize, stop: Arc<AtomicBool>) -> Vec<Instant> {
    let client = Client::new(
        servers,
        ClientOptions {
            timeout: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(2),
            token: None,
            tls: None,
        },
    )
    .unwrap();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let request = CommandRequest {
                        id: format!("p{w}-{n}"),
                        command: bully_client::Command::Incr {
                            key: "n".into(),
                            delta: 1,
                        },
                    };
                    let response: CommandResponse =
                        client.execute(&request).await.expect("a command failed");
                    assert!(!response.duplicate);
                    acks.push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                acks
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("worker"));
    }
    all.sort();
    all
}

/// The longest time without an acknowledgement within `[from, to]`.
fn longest_stall(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    let inside: Vec<Instant> = acks
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let mut points = vec![from];
    points.extend(inside);
    points.push(to);
    points
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

async fn partition_test(store_args: StoreArgs, store: Arc<dyn Store>, dir: &std::path::Path) {
    // s1 (rank 300) is the coordinator; s2 (rank 200) would win an election without it.
    let mut cluster = ChaosCluster::start(&[100, 300, 200], store_args, dir).expect("cluster");
    let (coordinator, term) = cluster
        .await_agreement(Duration::from_secs(20))
        .await
        .expect("agreement");
    assert_eq!(coordinator, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(workload(cluster.client_addrs(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Instant::now();
    tokio::time::sleep(PARTITION / 2).await;
    // Cut s2 off from both peers, both ways; it still reaches the store, and clients reach it.
    let cut_at = Instant::now();
    for other in [0, 1] {
        cluster.links.cut(1, 2, other, CutMode::Blackhole);
        cluster.links.cut(1, other, 2, CutMode::Blackhole);
    }
    tokio::time::sleep(PARTITION).await;
    let healed_at = Instant::now();
    cluster.links.heal(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let acks = load.await.expect("workload");
    let quiet = longest_stall(&acks, before, cut_at);
    let cut = longest_stall(&acks, cut_at, healed_at);
    eprintln!(
        "{} commands acknowledged; longest stall before the partition {quiet:?}, during it {cut:?}",
        acks.len()
    );
    // No term changed hands: the coordinator kept its term, and the cut-off server tried to
    // claim and was refused by the lease.
    let fence = store.fence_state().await.expect("fence");
    assert_eq!(fence.term, term, "a term was claimed during the partition");
    let (after, after_term) = cluster
        .await_agreement(Duration::from_secs(20))
        .await
        .expect("agreement after healing");
    assert_eq!((after, after_term), (1, term));
    let log = std::fs::read_to_string(&cluster.servers[2].log).unwrap();
    assert!(
        log.contains("lease holds"),
        "the cut-off server never tried to claim"
    );
    // The workload did not notice beyond its ordinary jitter (a failover takes a heartbeat
    // timeout of 800 ms at least).
    assert!(
        cut <= quiet * 3 + Duration::from_millis(400),
        "the partition stalled the workload {cut:?} (before it: {quiet:?})"
    );
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_cut_from_its_peers_takes_no_term_embedded_store() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bully.db");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
    partition_test(StoreArgs::Embedded(path), store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_cut_from_its_peers_takes_no_term_mongodb_store() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mongo = Secantus::start().await;
    let args = StoreArgs::Mongo {
        uri: mongo.uri(),
        database: "partition".into(),
    };
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect(&mongo.uri(), "partition", MongoOptions::default())
            .await
            .unwrap(),
    );
    partition_test(args, store, dir.path()).await;
}
