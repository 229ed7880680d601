//! A cluster of real `bully-server` processes on loopback, for process-level tests.
//!
//! Servers get explicit ranks (so a test knows who must win), their own ports, and a log file
//! each in the cluster's temporary directory (printed when a test fails, kept with
//! `BULLY_KEEP_LOGS=1`). Clusters run one at a time per test binary: the machines are small
//! and timing-sensitive tests should not starve each other.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bully_client::{Client, ClientOptions, Command as Cmd, CommandRequest, Status};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness;
pub use crate::harness::Report;
pub use crate::harness::invariants::check_exactly_once;

static SERIAL: Mutex<()> = Mutex::new(());

/// Heartbeat settings every test cluster uses.
pub const HEARTBEAT: &str = "100ms";
pub const TIMEOUT: Duration = Duration::from_millis(800);

/// Path of a workspace binary ([`harness::binary`]); panics with what to do if it is missing.
pub fn binary(name: &str) -> PathBuf {
    harness::binary(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    harness::free_port().expect("free port")
}

/// Which store the servers share.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    Embedded,
    Mongo { uri: String, database: String },
}

/// One server process.
pub struct Server {
    pub name: String,
    pub client_addr: String,
    pub peer_addr: String,
    pub rank: u64,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
}

pub struct Cluster {
    pub servers: Vec<Server>,
    pub dir: tempfile::TempDir,
    pub store: StoreSpec,
    peers: Vec<String>,
    extra: Vec<String>,
    /// The bearer token, when the servers were given `--token-file`.
    pub token: Option<String>,
    /// How the harness's clients verify servers started with TLS (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Servers run as deployed (see [`Cluster::start_as_deployed`]), not with test settings.
    as_deployed: bool,
    /// Each server knows only the servers before it (see [`Cluster::start_staggered`]).
    staggered: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts one server per rank; all of them know every peer address.
    pub fn start(ranks: &[u64], store: StoreSpec) -> Cluster {
        Self::start_with(ranks, store, &[])
    }

    /// Like [`Cluster::start`], with extra `serve` flags for every server.
    pub fn start_with(ranks: &[u64], store: StoreSpec, extra: &[&str]) -> Cluster {
        Self::launch(ranks, store, extra, false)
    }

    /// Servers as deployed, for benchmarks: the binary's default timings (no test
    /// `--heartbeat-*` flags) and `RUST_LOG=info` (no debug line per command).
    pub fn start_as_deployed(ranks: &[u64], store: StoreSpec, extra: &[&str]) -> Cluster {
        Self::launch(ranks, store, extra, true)
    }

    /// Servers that find each other only as they start, as behind a DNS that lists a server
    /// only some time after it started (cluster DNS caches): server `i` is given only the
    /// servers started before it (the first one none) and learns of later ones from their
    /// messages. They start `gap` apart, in rank order as given.
    pub fn start_staggered(
        ranks: &[u64],
        store: StoreSpec,
        gap: Duration,
        extra: &[&str],
    ) -> Cluster {
        let mut cluster = Self::create(ranks, store, extra, false);
        cluster.staggered = true;
        for i in 0..ranks.len() {
            if i > 0 {
                std::thread::sleep(gap);
            }
            cluster.spawn(i);
        }
        cluster
    }

    fn launch(ranks: &[u64], store: StoreSpec, extra: &[&str], as_deployed: bool) -> Cluster {
        let mut cluster = Self::create(ranks, store, extra, as_deployed);
        for i in 0..ranks.len() {
            cluster.spawn(i);
        }
        cluster
    }

    fn create(ranks: &[u64], store: StoreSpec, extra: &[&str], as_deployed: bool) -> Cluster {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let mut servers = Vec::new();
        for (i, rank) in ranks.iter().enumerate() {
            servers.push(Server {
                name: format!("s{}", i + 1),
                client_addr: format!("127.0.0.1:{}", free_port()),
                peer_addr: format!("127.0.0.1:{}", free_port()),
                rank: *rank,
                child: None,
                log: dir.path().join(format!("s{}.log", i + 1)),
            });
        }
        let peers = servers.iter().map(|s| s.peer_addr.clone()).collect();
        let token = extra
            .iter()
            .position(|a| *a == "--token-file")
            .and_then(|i| extra.get(i + 1))
            .map(|path| {
                std::fs::read_to_string(path)
                    .expect("token file")
                    .trim()
                    .to_string()
            });
        Cluster {
            servers,
            dir,
            store,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            token,
            tls: None,
            as_deployed,
            staggered: false,
            _serial: serial,
        }
    }

    /// (Re)starts server `i` with its current rank.
    pub fn spawn(&mut self, i: usize) {
        let server = &self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .expect("log file");
        let mut command = Command::new(binary("bully-server"));
        command
            .arg("serve")
            .args(["--listen", &server.client_addr])
            .args(["--peer-listen", &server.peer_addr])
            .args(["--advertise-host", "127.0.0.1"])
            .args(["--rank", &server.rank.to_string()]);
        let peers = if self.staggered {
            &self.peers[..i]
        } else {
            &self.peers[..]
        };
        if !peers.is_empty() {
            command.args(["--peers", &peers.join(",")]);
        }
        if self.as_deployed {
            command.env("RUST_LOG", "info");
        } else {
            command
                .args(["--heartbeat-interval", HEARTBEAT])
                .args(["--heartbeat-timeout", &format!("{}ms", TIMEOUT.as_millis())])
                .env("RUST_LOG", "info,bully_server=debug");
        }
        command
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        match &self.store {
            StoreSpec::Embedded => {
                command
                    .args(["--store", "embedded"])
                    .arg("--embedded-path")
                    .arg(self.dir.path().join("bully.db"));
            }
            StoreSpec::Mongo { uri, database } => {
                command
                    .args(["--store", "mongodb"])
                    .args(["--mongodb-database", database])
                    .env("BULLY_MONGODB_URI", uri);
            }
        }
        let child = command.spawn().expect("spawn bully-server");
        self.servers[i].child = Some(child);
    }

    /// Restarts server `i` (which must have exited) with a new rank.
    pub fn restart(&mut self, i: usize, rank: u64) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.wait();
        }
        self.servers[i].rank = rank;
        self.spawn(i);
    }

    pub fn signal(&self, i: usize, signal: Signal) {
        let pid = self.servers[i].pid().expect("running server");
        kill(pid, signal).expect("kill");
    }

    /// Waits for server `i` to exit; returns its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.servers[i].child.as_mut().expect("child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in {timeout:?}",
                self.servers[i].name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.client_addr.clone()).collect()
    }

    /// A Rust client over every server, with a generous deadline.
    pub fn client(&self) -> Client {
        Client::new(
            self.client_addrs(),
            ClientOptions {
                timeout: Duration::from_secs(20),
                attempt_timeout: Duration::from_secs(2),
                token: self.token.clone(),
                tls: self.tls.clone(),
            },
        )
        .expect("client")
    }

    pub async fn status(&self, i: usize) -> Option<Status> {
        self.client()
            .status(&self.servers[i].client_addr)
            .await
            .ok()
    }

    /// Waits until every running server agrees that server `want` is the coordinator with a
    /// claimed term; returns that term.
    pub async fn await_coordinator(&self, want: usize, timeout: Duration) -> u64 {
        let want_addr = &self.servers[want].client_addr;
        let agreed = harness::poll(timeout, Duration::from_millis(50), || async {
            let mut views = Vec::new();
            for (i, server) in self.servers.iter().enumerate() {
                if server.child.is_some() && !self.exited(i) {
                    views.push((server.name.clone(), self.status(i).await));
                }
            }
            harness::agreement_on(&views, want_addr)
        })
        .await;
        harness::expect_agreed(agreed, &self.servers[want].name, || self.dump_logs())
    }

    fn exited(&self, i: usize) -> bool {
        // Exited, zombie and stopped (SIGSTOP) servers cannot answer: skip them.
        let pid = self.servers[i].pid();
        pid.is_none_or(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty()
                || stat.split_whitespace().nth(2) == Some("Z")
                || stat.split_whitespace().nth(2) == Some("T")
        })
    }

    /// Prints every server's log to stderr (shown by the test runner on failure).
    pub fn dump_logs(&self) {
        for server in &self.servers {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(200).collect();
            eprintln!(
                "===== {} (rank {}) log tail =====",
                server.name, server.rank
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                if let Some(pid) = Some(Pid::from_raw(child.id() as i32)) {
                    let _ = kill(pid, Signal::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("BULLY_KEEP_LOGS").is_some() {
            let path = self.dir.path().to_path_buf();
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
            eprintln!("logs kept in {}", path.display());
        }
    }
}

/// Runs `workers` concurrent clients, each issuing `incr counter` commands one after another
/// until `stop` is set.
pub async fn incr_workload(
    client: Client,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Report {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = Vec::new();
            let mut issued = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let request = CommandRequest {
                    id: format!("w{w}-{n}-{}", uuid::Uuid::new_v4()),
                    command: Cmd::Incr {
                        key: "counter".into(),
                        delta: 1,
                    },
                };
                issued.push(request.id.clone());
                match client.execute(&request).await {
                    Ok(response) => acked.push((request.id.clone(), response)),
                    Err(e) => failed.push((request.id.clone(), e.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failed, issued)
        }));
    }
    let mut report = Report::default();
    for task in tasks {
        let (acked, failed, issued) = task.await.expect("worker");
        report.acked.push(acked);
        report.failed.extend(failed);
        report.issued.extend(issued);
    }
    report
}
