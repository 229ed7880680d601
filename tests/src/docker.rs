//! Container-level tests: `bully-server` containers of the project image, a SecantusDB store
//! container, and `bully-client` containers as clients, on user-defined Docker networks.
//!
//! The shape is a Kubernetes deployment's: every server joins the cluster's network under the
//! alias [`ALIAS`], so Docker's DNS returns all of them as a headless Service would, and the
//! servers find each other with `--peer-dns bully:7071`; each advertises its own fixed address
//! (`BULLY_ADVERTISE_HOST`, as the chart passes the pod IP); clients are given the server list
//! (the containers' names) like Job pods. The store sits on a second network that only the
//! servers share with it, reached by the name `store`: taking a server off the cluster's
//! network then cuts it from its peers and clients but not from the store, the partition in
//! which only fencing keeps an old coordinator from committing.
//!
//! # Layout
//! - [`Cluster`]: one test's networks, volume, store and servers. Every object carries the
//!   label `io.bully.test=<run>` and is removed when the cluster is dropped, also when the test
//!   panics (set `BULLY_KEEP_CONTAINERS=1` to keep them; `scripts/docker-clean.sh` removes
//!   leftovers by label).
//! - [`Workload`]: concurrent clients issuing `incr counter`: one-shot containers (one
//!   `docker run --rm` per command) and looping containers (a shell loop of one-shot
//!   `bully-client` processes, for a denser load).
//! - [`check`]: the final exactly-once check against the store, read from the host.
//!
//! The host talks only to containers the test created: the servers at their addresses on the
//! test's own bridge networks, the store through a port published on 127.0.0.1.
//!
//! Images: `BULLY_IMAGE` (default `bully:<version>`) and `BULLY_STORE_IMAGE`, built by
//! `scripts/docker-images.sh`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bully_client::{Client, ClientOptions, CommandResponse, Status};
use bully_server::store::Store;
use bully_server::store::mongo::{MongoOptions, MongoStore};
use mongodb::bson::doc;

use crate::cluster::{Report, check_exactly_once};

/// The label on every container, network and volume a test creates; its value is the run.
pub const LABEL: &str = "io.bully.test";
/// A second label, whose value is `BULLY_TEST_SESSION` (set by `scripts/docker-test.sh`, so it
/// can remove what its own run left, and only that).
pub const SESSION_LABEL: &str = "io.bully.test.session";
/// The network alias every server joins under (the headless Service's name).
pub const ALIAS: &str = "bully";
pub const CLIENT_PORT: u16 = 7070;
pub const PEER_PORT: u16 = 7071;
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// A little above the 800 ms default: containers on a loaded 2-core machine stall more than
/// processes do, and a spurious election would muddy what a test observes.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The database the servers use.
pub const DATABASE: &str = "bully";
/// How long the store may take to start (a Python server in a container).
const STORE_START: Duration = Duration::from_secs(60);

/// One cluster at a time per test binary: the machines are small, and timing-sensitive tests
/// should not starve each other. (An async mutex: the guard lives across awaits.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The project image: `bully:<version>` unless `BULLY_IMAGE` names another.
pub fn image() -> String {
    std::env::var("BULLY_IMAGE").unwrap_or_else(|_| format!("bully:{}", env!("CARGO_PKG_VERSION")))
}

/// The store image (SecantusDB).
pub fn store_image() -> String {
    std::env::var("BULLY_STORE_IMAGE").unwrap_or_else(|_| "bully-secantus:0.7.0b3".into())
}

/// Detection, election and term claim, with a wide margin for a loaded machine.
pub fn failover_bound() -> Duration {
    TIMEOUT * 4 + Duration::from_secs(20)
}

/// Runs `docker ARGS` to completion; Ok(stdout) on success, Err(stderr) otherwise.
pub async fn docker<I, S>(args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// [`docker`], panicking with the command and its error on failure.
pub async fn docker_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<std::ffi::OsStr>,
{
    docker(args.clone()).await.unwrap_or_else(|e| {
        let line: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        panic!("docker {} failed: {e}", line.join(" "))
    })
}

/// The blocking form, for `Drop`.
fn docker_blocking(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

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
        let started = Instant::now();
        loop {
            if let Ok(uri) = self.store_uri().await {
                let client = mongo_client(&uri).await;
                let ping = client
                    .database("admin")
                    .run_command(doc! { "ping": 1 })
                    .await;
                if ping.is_ok() {
                    return;
                }
            }
            if started.elapsed() > STORE_START {
                self.dump_logs();
                panic!("the store did not answer ping within {STORE_START:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
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
            },
        )
        .ok()?;
        client.status(&addr).await.ok()
    }

    /// Waits until every server in `among` reports server `want` as the ready coordinator with
    /// a claimed term, and `want` itself is coordinator; returns the term.
    pub async fn await_coordinator(&self, want: usize, among: &[usize], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.agreed(want, among).await {
                Ok(term) => return term,
                Err(why) => why,
            };
            if Instant::now() > deadline {
                self.dump_logs();
                panic!(
                    "{} did not become the agreed coordinator within {timeout:?}: {last}",
                    self.servers[want].name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn agreed(&self, want: usize, among: &[usize]) -> Result<u64, String> {
        let want_addr = self
            .addr(want)
            .await
            .ok_or_else(|| format!("{} is not on the network", self.servers[want].name))?;
        let mut term = None;
        for &i in among {
            let name = &self.servers[i].name;
            let status = self
                .status(i)
                .await
                .ok_or_else(|| format!("{name} does not answer"))?;
            let coordinator = status
                .coordinator
                .filter(|_| status.ready)
                .ok_or_else(|| format!("{name} knows no ready coordinator"))?;
            if coordinator.client_addr != want_addr || coordinator.term.is_none() {
                return Err(format!("{name} sees {coordinator:?}"));
            }
            if i == want && status.role != bully_client::Role::Coordinator {
                return Err(format!("{name} is {}", status.role.as_str()));
            }
            term = coordinator.term;
        }
        term.ok_or_else(|| "no server asked".into())
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

/// Removes every container, network and volume carrying `label` (`key=value` or `key`).
/// Repeats a few times: a client container that a stopping workload started a moment ago may
/// appear after the first listing and keep the network busy.
pub fn remove_labeled(label: &str) {
    let filter = format!("label={label}");
    let list = |args: &[&str]| -> Vec<String> {
        docker_blocking(args)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    for attempt in 0..5 {
        let last = attempt == 4;
        let mut left = false;
        for id in list(&["ps", "--all", "--quiet", "--filter", &filter]) {
            // A paused container cannot be killed in every Docker version: thaw it first.
            let _ = docker_blocking(&["unpause", &id]);
            if let Err(e) = docker_blocking(&["rm", "--force", "--volumes", &id]) {
                left = true;
                if last {
                    eprintln!("cannot remove container {id}: {e}");
                }
            }
        }
        for id in list(&["network", "ls", "--quiet", "--filter", &filter]) {
            if let Err(e) = docker_blocking(&["network", "rm", &id]) {
                left = true;
                if last {
                    eprintln!("cannot remove network {id}: {e}");
                }
            }
        }
        for name in list(&["volume", "ls", "--quiet", "--filter", &filter]) {
            if let Err(e) = docker_blocking(&["volume", "rm", "--force", &name]) {
                left = true;
                if last {
                    eprintln!("cannot remove volume {name}: {e}");
                }
            }
        }
        if !left {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

async fn logs(name: &str) -> String {
    let output = tokio::process::Command::new("docker")
        .args(["logs", name])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("docker logs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

fn docker_logs_blocking(name: &str, tail: usize) -> String {
    let tail = tail.to_string();
    match std::process::Command::new("docker")
        .args(["logs", "--tail", &tail, name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text
        }
        Err(e) => format!("(docker logs failed: {e})"),
    }
}

async fn mongo_client(uri: &str) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(uri)
        .await
        .expect("parse the store URI");
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    mongodb::Client::with_options(options).expect("MongoDB client")
}

/// How one client command ended, as a one-shot `bully-client --output json` reports it.
#[derive(Debug)]
pub enum Outcome {
    Acked(CommandResponse),
    /// Exit code and stderr.
    Failed(String),
}

/// Runs one command in a one-shot client container on `network` (`docker run --rm`, as a Job
/// pod would): `bully-client --servers SERVERS --output json --id ID EXTRA... COMMAND...`.
/// `labels` (see [`Cluster::label_args`]) mark the container as the test's, for the cleanup.
pub async fn client_container(
    labels: &[String],
    network: &str,
    servers: &str,
    id: &str,
    extra: &[&str],
    command: &[&str],
) -> Outcome {
    let output = tokio::process::Command::new("docker")
        .args(["run", "--rm"])
        .args(labels)
        .args(["--network", network])
        .args(["--entrypoint", "bully-client"])
        .arg(image())
        .args(["--servers", servers, "--output", "json", "--id", id])
        .args(extra)
        .args(command)
        .stdin(Stdio::null())
        // A test that fails drops its workload: stop the docker CLI with it (a container it
        // started already is removed with the cluster).
        .kill_on_drop(true)
        .output()
        .await
        .expect("run docker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => match serde_json::from_str(stdout.trim()) {
            Ok(response) => Outcome::Acked(response),
            Err(e) => Outcome::Failed(format!("unreadable output {stdout:?}: {e}")),
        },
        code => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Outcome::Failed(format!("exit {code:?}: {}", stderr.trim()))
        }
    }
}

/// The shell loop a looping client container runs: one thin `bully-client` process per
/// command, each id announced before it is sent (so an unacknowledged one is still counted as
/// issued), until /tmp/stop appears.
const LOOP_SCRIPT: &str = r#"
i=0
while [ ! -e /tmp/stop ]; do
    i=$((i + 1))
    id="$PREFIX-$i"
    echo "issued $id"
    out=$(bully-client --servers "$SERVERS" --output json --id "$id" incr counter 2>/tmp/err)
    rc=$?
    echo "done $id $rc $out"
    if [ "$rc" -ne 0 ]; then echo "stderr $id $(tr '\n' ' ' </tmp/err)"; fi
done
echo finished
"#;

/// Concurrent `incr counter` clients, started by [`Workload::start`] and stopped by
/// [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    one_shot: Vec<tokio::task::JoinHandle<WorkerLog>>,
    looping: Vec<String>,
}

#[derive(Default)]
struct WorkerLog {
    acked: Vec<(String, CommandResponse)>,
    failed: Vec<(String, String)>,
    issued: Vec<String>,
}

impl Workload {
    /// Starts `one_shot` workers that each run one client container per command, and
    /// `looping` client containers that each run a loop of one-shot client processes. Every
    /// worker issues its commands one after another.
    pub async fn start(cluster: &Cluster, one_shot: usize, looping: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let servers = cluster.server_list();
        let mut workload = Workload {
            stop: stop.clone(),
            one_shot: Vec::new(),
            looping: Vec::new(),
        };
        for w in 0..looping {
            let name = format!("{}-loop{w}", cluster.run);
            let prefix = format!("PREFIX={name}");
            let servers = format!("SERVERS={servers}");
            let image = image();
            let args = cluster.labeled(
                &["run", "--detach", "--name", &name],
                &[
                    "--network",
                    &cluster.network,
                    "--env",
                    &prefix,
                    "--env",
                    &servers,
                    "--entrypoint",
                    "sh",
                    &image,
                    "-c",
                    LOOP_SCRIPT,
                ],
            );
            docker_ok(args).await;
            workload.looping.push(name);
        }
        for w in 0..one_shot {
            // The tasks outlive this borrow: give them what they need by value.
            let shared = OneShotWorker {
                labels: cluster.label_args(),
                network: cluster.network.clone(),
                servers: servers.clone(),
                prefix: format!("{}-once{w}", cluster.run),
            };
            let stop = stop.clone();
            workload.one_shot.push(tokio::spawn(shared.run(stop)));
        }
        workload
    }

    /// Stops every worker after its current command and collects what they saw.
    pub async fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for name in &self.looping {
            docker_ok(["exec", name, "touch", "/tmp/stop"]).await;
        }
        let mut report = Report::default();
        for task in std::mem::take(&mut self.one_shot) {
            let log = task.await.expect("one-shot worker");
            report.acked.push(log.acked);
            report.failed.extend(log.failed);
            report.issued.extend(log.issued);
        }
        for name in &self.looping {
            // The last command may take up to the client's deadline (15 s).
            let waited =
                tokio::time::timeout(Duration::from_secs(60), docker(["wait", name.as_str()]))
                    .await;
            assert!(
                matches!(waited, Ok(Ok(_))),
                "{name} did not finish: {waited:?}"
            );
            let log = parse_loop_log(&logs(name).await);
            report.acked.push(log.acked);
            report.failed.extend(log.failed);
            report.issued.extend(log.issued);
            let _ = docker(["rm", "--force", name.as_str()]).await;
        }
        report
    }
}

impl Drop for Workload {
    /// A test that panics drops its workload unfinished: stop the workers (the cluster's drop
    /// then removes their containers).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.one_shot {
            task.abort();
        }
    }
}

struct OneShotWorker {
    labels: Vec<String>,
    network: String,
    servers: String,
    prefix: String,
}

impl OneShotWorker {
    async fn run(self, stop: Arc<AtomicBool>) -> WorkerLog {
        let mut log = WorkerLog::default();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let id = format!("{}-{n}", self.prefix);
            log.issued.push(id.clone());
            let command = ["incr", "counter"];
            match client_container(
                &self.labels,
                &self.network,
                &self.servers,
                &id,
                &[],
                &command,
            )
            .await
            {
                Outcome::Acked(response) => log.acked.push((id, response)),
                Outcome::Failed(why) => log.failed.push((id, why)),
            }
        }
        log
    }
}

fn parse_loop_log(text: &str) -> WorkerLog {
    let mut log = WorkerLog::default();
    let mut stderr = BTreeMap::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("issued ") {
            log.issued.push(id.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("stderr ") {
            if let Some((id, message)) = rest.split_once(' ') {
                stderr.insert(id.to_string(), message.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("done ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(id), Some(rc)) = (parts.next(), parts.next()) else {
                continue;
            };
            let json = parts.next().unwrap_or_default();
            if rc == "0" {
                match serde_json::from_str(json.trim()) {
                    Ok(response) => log.acked.push((id.to_string(), response)),
                    Err(e) => log.failed.push((id.to_string(), format!("{json:?}: {e}"))),
                }
            } else {
                log.failed.push((id.to_string(), format!("exit {rc}")));
            }
        }
    }
    for (id, message) in &mut log.failed {
        if let Some(text) = stderr.get(id) {
            message.push_str(": ");
            message.push_str(text);
        }
    }
    log
}

/// Applied records of `ids` (those the store has), by sequence number.
pub async fn applied(store: &dyn Store, ids: &[String]) -> BTreeMap<u64, (String, u64)> {
    let mut by_seq = BTreeMap::new();
    for id in ids {
        if let Some(record) = store.record(id).await.expect("read the store") {
            assert_eq!(&record.id, id);
            if let Some((other, _)) = by_seq.insert(record.seq, (id.clone(), record.term)) {
                panic!("seq {} recorded for both {other} and {id}", record.seq);
            }
        }
    }
    by_seq
}

/// The final check of every scenario: [`check_exactly_once`] (each acknowledged command
/// recorded once with the seq and term it was acknowledged with, the counter equal to the
/// number of applied commands, seqs unique and increasing per client), and over every applied
/// command, acknowledged or not (plus `more_ids`), terms never going back as seqs go up: no
/// coordinator committed anything after a newer term was claimed. Returns those records.
pub async fn check(
    cluster: &Cluster,
    report: &Report,
    more_ids: &[&str],
) -> BTreeMap<u64, (String, u64)> {
    let store = cluster.store_handle().await;
    check_exactly_once(report, &store, &cluster.client().await).await;
    let mut ids = report.issued.clone();
    ids.extend(more_ids.iter().map(|s| s.to_string()));
    let records = applied(&store, &ids).await;
    let mut terms: Vec<u64> = records.values().map(|(_, term)| *term).collect();
    terms.dedup();
    eprintln!(
        "[{}] {} commands issued, {} acknowledged, {} failed, {} applied; terms {terms:?}",
        cluster.run,
        report.issued.len(),
        report.acked_count(),
        report.failed.len(),
        records.len()
    );
    let mut last = (0, 0);
    for (seq, (id, term)) in &records {
        assert!(
            *term >= last.1,
            "{id} committed at seq {seq} under term {term}, after seq {} under term {}",
            last.0,
            last.1
        );
        last = (*seq, *term);
    }
    records
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

    #[test]
    fn a_loop_log_gives_issued_acknowledged_and_failed_commands() {
        let text = r#"issued w-1
done w-1 0 {"id":"w-1","seq":7,"term":2,"outcome":{"status":"counter","value":1}}
issued w-2
done w-2 3 
stderr w-2 error: no server executed the command within 15s; last errors:   s1:7070: timed out 
issued w-3
finished
"#;
        let log = parse_loop_log(text);
        assert_eq!(log.issued, ["w-1", "w-2", "w-3"]);
        assert_eq!(log.acked.len(), 1);
        assert_eq!((log.acked[0].1.seq, log.acked[0].1.term), (7, 2));
        assert_eq!(log.failed.len(), 1);
        assert!(
            log.failed[0].1.starts_with("exit 3: error: no server"),
            "{:?}",
            log.failed
        );
    }
}
