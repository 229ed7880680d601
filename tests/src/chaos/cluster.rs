//! The servers of one chaos run: real `bully-server serve` processes behind peer proxies.
//!
//! Server *i* serves clients on `127.0.0.1:C`, listens for peers on `127.0.0.2:P` and
//! advertises `127.0.0.1` as its host, so its peer identity is `127.0.0.1:P`, where its proxy
//! listens (see [`super::proxy`]). Logs are JSON (one file per server, appended across
//! restarts) so the checks can read claimed terms and applied commands from them.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bully_client::{Client, ClientOptions, Role, Status};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::proxy::{self, Links};
use crate::harness;

/// Heartbeat settings of every chaos cluster (the server defaults).
pub const HEARTBEAT: &str = "100ms";
pub const HEARTBEAT_TIMEOUT: &str = "800ms";
/// Short enough that a store outage ends in an answer before the client's deadline.
pub const STORE_TIMEOUT: &str = "3s";

/// A server's process state as the harness drives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Running,
    Paused,
    /// Killed or stopped by the harness.
    Down,
}

pub struct Server {
    pub index: usize,
    pub rank: u64,
    pub client_addr: String,
    /// The advertised peer address (the proxy).
    pub peer_addr: String,
    /// Where the process listens for peers.
    pub real_peer: SocketAddr,
    pub child: Option<Child>,
    pub life: Life,
    pub log: PathBuf,
    /// Exits the harness did not cause (status text).
    pub unexpected_exits: Vec<String>,
}

/// How the servers reach their store.
#[derive(Clone, Debug)]
pub enum StoreArgs {
    Embedded(PathBuf),
    Mongo { uri: String, database: String },
}

pub struct ChaosCluster {
    pub servers: Vec<Server>,
    pub links: Arc<Links>,
    store: StoreArgs,
    binary: PathBuf,
    proxies: Vec<tokio::task::JoinHandle<()>>,
    status_client: Client,
}

/// A port free on both 127.0.0.1 (kept bound: the proxy's listener) and 127.0.0.2.
fn proxy_listener() -> std::io::Result<(TcpListener, SocketAddr)> {
    for _ in 0..50 {
        let port = crate::harness::free_port()?;
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let real: SocketAddr = ([127, 0, 0, 2], port).into();
        if TcpListener::bind(real).is_ok() {
            return Ok((listener, real));
        }
    }
    Err(std::io::Error::other(
        "no port free on both 127.0.0.1 and 127.0.0.2",
    ))
}

impl ChaosCluster {
    /// Starts proxies and one server per rank.
    pub fn start(ranks: &[u64], store: StoreArgs, dir: &Path) -> std::io::Result<ChaosCluster> {
        let binary = harness::binary("bully-server").map_err(std::io::Error::other)?;
        let links = Arc::new(Links::default());
        let mut listeners = Vec::new();
        let mut servers = Vec::new();
        for (index, rank) in ranks.iter().enumerate() {
            let (listener, real_peer) = proxy_listener()?;
            let peer_addr = listener.local_addr()?.to_string();
            listeners.push(listener);
            servers.push(Server {
                index,
                rank: *rank,
                client_addr: format!("127.0.0.1:{}", harness::free_port()?),
                peer_addr,
                real_peer,
                child: None,
                life: Life::Down,
                log: dir.join(format!("s{index}.log")),
                unexpected_exits: Vec::new(),
            });
        }
        let senders: Arc<HashMap<String, usize>> = Arc::new(
            servers
                .iter()
                .map(|s| (s.peer_addr.clone(), s.index))
                .collect(),
        );
        let mut proxies = Vec::new();
        for (server, listener) in servers.iter().zip(listeners) {
            proxies.push(proxy::spawn(
                listener,
                server.index,
                server.real_peer,
                senders.clone(),
                links.clone(),
            )?);
        }
        let status_client = Client::new(
            servers.iter().map(|s| s.client_addr.clone()).collect(),
            ClientOptions {
                timeout: Duration::from_millis(500),
                attempt_timeout: Duration::from_millis(400),
                token: None,
                tls: None,
            },
        )
        .map_err(std::io::Error::other)?;
        let mut cluster = ChaosCluster {
            servers,
            links,
            store,
            binary,
            proxies,
            status_client,
        };
        for i in 0..ranks.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.client_addr.clone()).collect()
    }

    /// Starts server `i` with its current rank.
    pub fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let peers: Vec<String> = self.servers.iter().map(|s| s.peer_addr.clone()).collect();
        let server = &self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)?;
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .args(["--listen", &server.client_addr])
            .args(["--peer-listen", &server.real_peer.to_string()])
            .args(["--advertise-host", "127.0.0.1"])
            .args(["--peers", &peers.join(",")])
            .args(["--rank", &server.rank.to_string()])
            .args(["--heartbeat-interval", HEARTBEAT])
            .args(["--heartbeat-timeout", HEARTBEAT_TIMEOUT])
            .args(["--store-timeout", STORE_TIMEOUT])
            .args(["--shutdown-timeout", "5s"])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,bully_server=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match &self.store {
            StoreArgs::Embedded(path) => {
                command
                    .args(["--store", "embedded"])
                    .arg("--embedded-path")
                    .arg(path);
            }
            StoreArgs::Mongo { uri, database } => {
                command
                    .args(["--store", "mongodb"])
                    .args(["--mongodb-database", database])
                    .env("BULLY_MONGODB_URI", uri);
            }
        }
        let child = command.spawn()?;
        let server = &mut self.servers[i];
        server.child = Some(child);
        server.life = Life::Running;
        Ok(())
    }

    fn pid(&self, i: usize) -> Option<Pid> {
        self.servers[i]
            .child
            .as_ref()
            .map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Sends `signal` to server `i` (if it has a process).
    pub fn signal(&self, i: usize, signal: Signal) {
        if let Some(pid) = self.pid(i) {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILLs server `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        let server = &mut self.servers[i];
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        server.life = Life::Down;
    }

    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.servers[i].life = Life::Paused;
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        if self.servers[i].life == Life::Paused {
            self.servers[i].life = Life::Running;
        }
    }

    /// SIGTERMs server `i`; it drains, hands over and exits on its own ([`Self::reap`]).
    pub fn terminate(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.signal(i, Signal::SIGTERM);
        self.servers[i].life = Life::Down;
    }

    /// Waits up to `timeout` for a terminated server to exit, then kills it. True if it exited
    /// by itself with status 0.
    pub async fn reap(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(child) = self.servers[i].child.as_mut() else {
                return true;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.servers[i].child = None;
                return status.success();
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill(i);
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Records servers that exited although the harness did not stop them.
    pub fn check_exits(&mut self) {
        for server in &mut self.servers {
            if server.life == Life::Down {
                continue;
            }
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                server.unexpected_exits.push(status.to_string());
                server.child = None;
                server.life = Life::Down;
            }
        }
    }

    /// `/v1/status` of every server that can answer (running, not paused), concurrently.
    pub async fn statuses(&self) -> Vec<(usize, Status)> {
        let asks = self
            .servers
            .iter()
            .filter(|s| s.life == Life::Running)
            .map(|s| {
                let client = self.status_client.clone();
                let addr = s.client_addr.clone();
                let index = s.index;
                async move { client.status(&addr).await.ok().map(|st| (index, st)) }
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The running server that claims the coordinator role with the highest term.
    pub async fn coordinator(&self) -> Option<usize> {
        self.statuses()
            .await
            .into_iter()
            .filter(|(_, s)| s.role == Role::Coordinator && s.term.is_some())
            .max_by_key(|(_, s)| s.term)
            .map(|(i, _)| i)
    }

    /// Waits until every running server is ready and names the same coordinator with a term.
    ///
    /// Servers that died on their own are noted ([`Self::check_exits`]) and not waited for.
    pub async fn await_agreement(&mut self, timeout: Duration) -> Option<(usize, u64)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_exits();
            let mut views: Vec<(String, Option<Status>)> = self
                .servers
                .iter()
                .filter(|s| s.life == Life::Running)
                .map(|s| (format!("s{}", s.index), None))
                .collect();
            for (i, status) in self.statuses().await {
                if let Some(view) = views.iter_mut().find(|(name, _)| *name == format!("s{i}")) {
                    view.1 = Some(status);
                }
            }
            if let Ok(agreed) = harness::agreement(&views)
                && let Some(index) = self
                    .servers
                    .iter()
                    .position(|s| s.client_addr == agreed.client_addr)
            {
                return Some((index, agreed.term));
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills every server and stops the proxies.
    pub fn shutdown(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        for proxy in self.proxies.drain(..) {
            proxy.abort();
        }
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
