//! One container test's cluster: its networks, volume, store and servers, their faults, and
//! the final check against the store.

use std::collections::BTreeMap;
use std::time::Duration;

use bully_client::{Client, ClientOptions, Status};
use bully_server::store::Store as _;
use bully_server::store::mongo::{MongoOptions, MongoStore};

use super::{
    ALIAS, CLIENT_PORT, DATABASE, HEARTBEAT, LABEL, PEER_PORT, SERIAL, SESSION_LABEL, STORE_START,
    TIMEOUT, docker, docker_logs_blocking, docker_ok, image, logs, remove_labeled, store_image,
};
use crate::harness::invariants::{self, check_exactly_once};
use crate::harness::{self, Report};

/// One server container.
#[derive(Clone, Debug)]
pub struct Server {
    /// Container name; also its DNS name on the networks.
    pub name: String,
    pub rank: u64,
    /// Its fixed address on the cluster's network, which it advertises (`BULLY_ADVERTISE_HOST`,
    /// as the Helm chart sets it to the pod IP).
    pub ip: String,
}

/// One test's containers, network and volume; all removed on drop.
pub struct Cluster {
    /// The unique prefix of every name, and the value of [`LABEL`].
    pub run: String,
    /// The user-defined network of the servers and their clients.
    pub network: String,
    /// The network of the servers and the store: a server cut off from `network` still reaches
    /// the store, so only fencing keeps it from committing.
    pub store_network: String,
    pub volume: String,
    /// The store container (network alias `store`).
    pub store: String,
    pub servers: Vec<Server>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Creates the network, the store (on a fresh volume) and one server per rank, and waits
    /// until the store answers. Does not wait for an election: see
    /// [`await_coordinator`](Self::await_coordinator).
    pub async fn start(ranks: &[u64]) -> Cluster {
        let serial = SERIAL.lock().await;
        for image in [image(), store_image()] {
            if docker(["image", "inspect", "--format", "{{.Id}}", &image])
                .await
                .is_err()
            {
                panic!(
                    "image {image} is missing: run scripts/docker-test.sh (or docker-images.sh)"
                );
            }
        }
        let run = format!(
            "bully-ct-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let mut cluster = Cluster {
            network: format!("{run}-net"),
            store_network: format!("{run}-store-net"),
            volume: format!("{run}-data"),
            store: format!("{run}-store"),
            servers: ranks
                .iter()
                .enumerate()
                .map(|(i, rank)| Server {
                    name: format!("{run}-s{}", i + 1),
                    rank: *rank,
                    ip: String::new(),
                })
                .collect(),
            run,
            _serial: serial,
        };
        let subnet = create_network(&cluster.label_args(), &cluster.network).await;
        for (i, server) in cluster.servers.iter_mut().enumerate() {
            server.ip = fixed_address(&subnet, i);
        }
        create_network(&cluster.label_args(), &cluster.store_network).await;
        docker_ok(cluster.labeled(&["volume", "create"], &[&cluster.volume])).await;
        let data = format!("{}:/data", cluster.volume);
        let store = cluster.labeled(
            &["run", "--detach", "--name", &cluster.store],
            &[
                "--network",
                &cluster.store_network,
                "--network-alias",
                "store",
                "--volume",
                &data,
                // Published on loopback only, for the host's final check.
                "--publish",
                "127.0.0.1::27017",
                &store_image(),
            ],
        );
        docker_ok(store).await;
        cluster.await_store().await;
        for i in 0..cluster.servers.len() {
            cluster.run_server(i).await;
        }
        cluster
    }

    /// `io.bully.test=<run>`.
    pub fn label(&self) -> String {
        format!("{LABEL}={}", self.run)
    }

    /// `--label` arguments for an object of this cluster: [`LABEL`] and [`SESSION_LABEL`].
    pub fn label_args(&self) -> Vec<String> {
        let session = std::env::var("BULLY_TEST_SESSION").unwrap_or_else(|_| "none".into());
        vec![
            "--label".into(),
            self.label(),
            "--label".into(),
            format!("{SESSION_LABEL}={session}"),
        ]
    }

    /// A docker command line: `command`, this cluster's labels, then `rest`.
    pub fn labeled(&self, command: &[&str], rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend(self.label_args());
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    /// The server list clients are given: every server's container name (stable across
    /// restarts, unlike its address).
    pub fn server_list(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("{}:{CLIENT_PORT}", s.name))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts server `i` as a StatefulSet pod would run it: the image's default command
    /// (`bully-server serve`), configured through `BULLY_*` variables, on the cluster's network
    /// under the alias and on the store's network.
    async fn run_server(&self, i: usize) {
        let server = &self.servers[i];
        let advertise = format!("BULLY_ADVERTISE_HOST={}", server.ip);
        let peer_dns = format!("BULLY_PEER_DNS={ALIAS}:{PEER_PORT}");
        let rank = format!("BULLY_RANK={}", server.rank);
        let heartbeat = format!("BULLY_HEARTBEAT_INTERVAL={}ms", HEARTBEAT.as_millis());
        let timeout = format!("BULLY_HEARTBEAT_TIMEOUT={}ms", TIMEOUT.as_millis());
        let database = format!("BULLY_MONGODB_DATABASE={DATABASE}");
        let image = image();
        let args = self.labeled(
            &["create", "--name", &server.name],
            &[
                "--network",
                &self.network,
                "--ip",
                &server.ip,
                "--network-alias",
                ALIAS,
                "--env",
                &advertise,
                "--env",
                &peer_dns,
                "--env",
                "BULLY_STORE=mongodb",
                "--env",
                "BULLY_MONGODB_URI=mongodb://store:27017/?directConnection=true",
                "--env",
                &database,
                "--env",
                &rank,
                "--env",
                &heartbeat,
                "--env",
                &timeout,
                "--env",
                "RUST_LOG=info,bully_server=debug,bully_server::executor=info",
                &image,
            ],
        );
        docker_ok(args).await;
        docker_ok(["network", "connect", &self.store_network, &server.name]).await;
        docker_ok(["start", &server.name]).await;
    }

    /// Waits until the store answers `ping` through its published port.
    pub async fn await_store(&self) {
        if let Err(e) = harness::await_mongo_ping(STORE_START, || self.store_uri()).await {
            self.dump_logs();
            panic!("the store did not answer ping: {e}");
        }
    }

    /// The store's URI from the host: its published loopback port (which a restart may change).
    pub async fn store_uri(&self) -> Result<String, String> {
        let port = docker(["port", &self.store, "27017/tcp"]).await?;
        let addr = port
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .ok_or_else(|| format!("no loopback port published: {port:?}"))?;
        Ok(format!("mongodb://{addr}/?directConnection=true"))
    }

    /// The store as the servers see it, for the final check.
    pub async fn store_handle(&self) -> MongoStore {
        let uri = self.store_uri().await.expect("store port");
        MongoStore::connect(&uri, DATABASE, MongoOptions::default())
            .await
            .expect("connect to the store container")
    }

    /// Server `i`'s client address (`ip:7070`) on `network`, if it is attached and running.
    pub async fn addr_on(&self, i: usize, network: &str) -> Option<String> {
        let format = format!(
            "{{{{if .State.Running}}}}{{{{with index .NetworkSettings.Networks \"{network}\"}}}}\
             {{{{.IPAddress}}}}{{{{end}}}}{{{{end}}}}"
        );
        let ip = docker(["inspect", "--format", &format, &self.servers[i].name])
            .await
            .ok()?;
        (!ip.is_empty()).then(|| format!("{ip}:{CLIENT_PORT}"))
    }

    /// Server `i`'s client address on the cluster's network.
    pub async fn addr(&self, i: usize) -> Option<String> {
        self.addr_on(i, &self.network).await
    }

    /// A host-side client over every server that is running and on the network.
    pub async fn client(&self) -> Client {
        let mut addrs = Vec::new();
        for i in 0..self.servers.len() {
            addrs.extend(self.addr(i).await);
        }
        Client::new(
            addrs,
            ClientOptions {
                timeout: Duration::from_secs(30),
                attempt_timeout: Duration::from_secs(2),
                token: None,
                tls: None,
            },
        )
        .expect("client")
    }

    /// Server `i`'s `/v1/status`, if it answers within a second.
    pub async fn status(&self, i: usize) -> Option<Status> {
        let addr = self.addr(i).await?;
        let client = Client::new(
            vec![addr.clone()],
            ClientOptions {
                timeout: Duration::from_secs(1),
                attempt_timeout: Duration::from_secs(1),
                token: None,
                tls: None,
            },
        )
        .ok()?;
        client.status(&addr).await.ok()
    }

    /// Waits until every server in `among` reports server `want` as the ready coordinator with
    /// a claimed term, and `want` itself is coordinator; returns the term.
    pub async fn await_coordinator(&self, want: usize, among: &[usize], timeout: Duration) -> u64 {
        let agreed = harness::poll(timeout, Duration::from_millis(100), || {
            self.agreed(want, among)
        })
        .await;
        harness::expect_agreed(agreed, &self.servers[want].name, || self.dump_logs())
    }

    async fn agreed(&self, want: usize, among: &[usize]) -> Result<u64, String> {
        let want_addr = self
            .addr(want)
            .await
            .ok_or_else(|| format!("{} is not on the network", self.servers[want].name))?;
        let mut views = Vec::new();
        for &i in among {
            views.push((self.servers[i].name.clone(), self.status(i).await));
        }
        harness::agreement_on(&views, &want_addr)
    }

    /// `docker kill` (SIGKILL); returns once the container has exited.
    pub async fn kill(&self, i: usize) {
        docker_ok(["kill", &self.servers[i].name]).await;
        docker_ok(["wait", &self.servers[i].name]).await;
    }

    /// `docker stop` (SIGTERM, then SIGKILL after `grace`), as `kubectl delete pod` does.
    pub async fn stop(&self, i: usize, grace: Duration) {
        let grace = grace.as_secs().to_string();
        docker_ok(["stop", "--time", &grace, &self.servers[i].name]).await;
    }

    /// `docker start` of a stopped or killed server: the same container, flags and rank.
    pub async fn start_again(&self, i: usize) {
        docker_ok(["start", &self.servers[i].name]).await;
    }

    pub async fn pause(&self, i: usize) {
        docker_ok(["pause", &self.servers[i].name]).await;
    }

    pub async fn unpause(&self, i: usize) {
        docker_ok(["unpause", &self.servers[i].name]).await;
    }

    /// Takes server `i` off the cluster's network: no peer or client reaches it any more,
    /// while it still reaches the store over the store's network.
    pub async fn disconnect(&self, i: usize) {
        let name = &self.servers[i].name;
        docker_ok(["network", "disconnect", &self.network, name]).await;
    }

    /// Puts server `i` back on the cluster's network under the alias, at its fixed address (it
    /// advertises that address; Docker would otherwise hand out a new one).
    pub async fn reconnect(&self, i: usize) {
        let server = &self.servers[i];
        docker_ok([
            "network",
            "connect",
            "--alias",
            ALIAS,
            "--ip",
            &server.ip,
            &self.network,
            &server.name,
        ])
        .await;
    }

    /// Exit code of a container that has exited.
    pub async fn exit_code(&self, i: usize) -> Option<i64> {
        let out = docker([
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}}",
            &self.servers[i].name,
        ])
        .await
        .ok()?;
        match out.split_once(' ') {
            Some(("false", code)) => code.parse().ok(),
            _ => None,
        }
    }

    /// Server `i`'s log (stdout and stderr).
    pub async fn logs(&self, i: usize) -> String {
        logs(&self.servers[i].name).await
    }

    /// Prints the tail of every container's log to stderr.
    pub fn dump_logs(&self) {
        let names = self
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .chain([self.store.as_str()]);
        for name in names {
            let log = docker_logs_blocking(name, 150);
            eprintln!("===== {name} log tail =====\n{log}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::env::var_os("BULLY_KEEP_CONTAINERS").is_some() {
            eprintln!(
                "kept containers, networks and volumes labeled {}; remove them with \
                 scripts/docker-clean.sh",
                self.label()
            );
            return;
        }
        remove_labeled(&self.label());
    }
}

/// Creates a labeled bridge network with an explicit subnet — the one Docker picks for it —
/// so that containers may be given fixed addresses (Docker allows `--ip` only on networks
/// created with `--subnet`). Returns the subnet.
async fn create_network(labels: &[String], name: &str) -> String {
    let mut last = String::new();
    for _ in 0..5 {
        let mut create: Vec<String> = vec!["network".into(), "create".into()];
        create.extend(labels.iter().cloned());
        create.push(name.into());
        docker_ok(create.clone()).await;
        let format = "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}";
        let ipam = docker_ok(["network", "inspect", "--format", format, name]).await;
        docker_ok(["network", "rm", name]).await;
        let mut parts = ipam.split_whitespace();
        let (Some(subnet), gateway) = (parts.next(), parts.next()) else {
            panic!("network {name} has no IPv4 subnet: {ipam:?}");
        };
        create.insert(2, format!("--subnet={subnet}"));
        if let Some(gateway) = gateway {
            create.insert(3, format!("--gateway={gateway}"));
        }
        // Another network may take the subnet in between: then try again.
        match docker(create).await {
            Ok(_) => return subnet.to_string(),
            Err(e) => last = e,
        }
    }
    panic!("cannot create network {name}: {last}");
}

/// Server `i`'s fixed address in an IPv4 subnet, near its top (`172.18.0.0/16`, 0 →
/// `172.18.255.223`): Docker hands out the client containers' addresses from the bottom, so
/// none of them takes a server's address while that server is off the network.
fn fixed_address(subnet: &str, i: usize) -> String {
    let (base, bits) = subnet.split_once('/').expect("a CIDR subnet");
    let base: std::net::Ipv4Addr = base.parse().expect("an IPv4 subnet");
    let bits: u32 = bits.parse().expect("a prefix length");
    assert!(bits <= 24 && i < 16, "subnet {subnet} is too small");
    let broadcast = u32::from(base) | (u32::MAX >> bits);
    std::net::Ipv4Addr::from(broadcast - 32 + i as u32).to_string()
}

/// The final check of every scenario: [`check_exactly_once`] (each acknowledged command
/// recorded once with the seq, term and outcome it was acknowledged with, the counter equal to
/// the number of applied commands, seqs unique and increasing per client), and over every
/// applied command, acknowledged or not (plus `more_ids`), terms never going back as seqs go
/// up: no coordinator committed anything after a newer term was claimed. Returns those
/// records by seq.
pub async fn check(
    cluster: &Cluster,
    report: &Report,
    more_ids: &[&str],
) -> BTreeMap<u64, (String, u64)> {
    let store = cluster.store_handle().await;
    let mut records = check_exactly_once(report, &store, &cluster.client().await).await;
    for id in more_ids {
        if let Some(record) = store.record(id).await.expect("read the store") {
            records.insert(id.to_string(), record);
        }
    }
    let mut found = invariants::seqs_unique(records.values().map(|r| (r.seq, r.id.clone())));
    found.extend(invariants::terms_follow_seqs(
        records.values().map(|r| (r.seq, r.term, r.id.clone())),
    ));
    assert!(found.is_empty(), "{}", found.join("\n"));
    let by_seq: BTreeMap<u64, (String, u64)> = records
        .values()
        .map(|r| (r.seq, (r.id.clone(), r.term)))
        .collect();
    let mut terms: Vec<u64> = by_seq.values().map(|(_, term)| *term).collect();
    terms.dedup();
    eprintln!(
        "[{}] {} commands issued, {} acknowledged, {} failed, {} applied; terms {terms:?}",
        cluster.run,
        report.issued.len(),
        report.acked_count(),
        report.failed.len(),
        by_seq.len()
    );
    by_seq
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_addresses_sit_near_the_top_of_the_subnet() {
        assert_eq!(fixed_address("172.18.0.0/16", 0), "172.18.255.223");
        assert_eq!(fixed_address("192.168.64.0/20", 4), "192.168.79.227");
        assert_eq!(fixed_address("10.1.2.0/24", 1), "10.1.2.224");
    }
}
