//! The peer baseline: a 3-member etcd cluster on loopback (Debian's `etcd-server`, 3.4),
//! default timings and durability, driven through its JSON gateway (`/v3/kv/*`, keys and
//! values in base64) by the same generator and mixes as bully.
//!
//! - `put` is `/v3/kv/put`; `get` is `/v3/kv/range`, linearizable (etcd's default, as bully's
//!   reads are).
//! - `incr` is what a read-modify-write costs on etcd: a range, then a transaction that puts
//!   the incremented value if the key's `mod_revision` is unchanged, again on conflict.
//! - Each worker has its own HTTP client and starts on member `worker % 3` (etcd's client
//!   spreads its connections too; followers forward writes to the leader). On an error or a
//!   2 s attempt timeout it moves to the next member, backing off between rounds as bully's
//!   client does, until a 15 s deadline.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::future::join_all;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::failover::Replicated;
use super::load::{Request, Target, Worker};
use crate::cluster::free_port;

/// The etcd binary: `BULLY_ETCD`, else `etcd` on the PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BULLY_ETCD") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// The version `etcd --version` prints first (`3.4.23`).
pub fn version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let first = text.lines().next()?;
            Some(first.trim_start_matches("etcd Version:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown version".into())
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
}

/// A running etcd cluster; every member is killed on drop.
pub struct Etcd {
    binary: PathBuf,
    members: Vec<Member>,
    dir: tempfile::TempDir,
    down: Vec<bool>,
    http: reqwest::Client,
}

impl Etcd {
    /// Starts `n` members and waits until they agree on a leader.
    pub async fn start(binary: PathBuf, n: usize) -> Result<Etcd, String> {
        let dir = tempfile::Builder::new()
            .prefix("bench-etcd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let mut etcd = Etcd {
            binary,
            members,
            dir,
            down: vec![false; n],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .map_err(|e| e.to_string())?,
        };
        for i in 0..n {
            etcd.spawn(i)?;
        }
        etcd.agreed_leader(None, Duration::from_secs(30)).await?;
        Ok(etcd)
    }

    /// The client URLs of the members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .zip(&self.down)
            .filter(|(_, down)| !**down)
            .filter_map(|(m, _)| m.child.as_ref().map(Child::id))
            .collect()
    }

    pub fn target(&self) -> EtcdTarget {
        EtcdTarget {
            endpoints: self.endpoints().into(),
        }
    }

    /// Starts member `i` (again: a restarted member finds its data directory and rejoins).
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .map_err(|e| e.to_string())?;
        let child = std::process::Command::new(&self.binary)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", "bully-bench"])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        self.down[i] = false;
        Ok(())
    }

    /// `(member id, leader id)` from `/v3/maintenance/status`.
    async fn status(&self, i: usize) -> Result<(String, String), String> {
        let url = format!("{}/v3/maintenance/status", self.members[i].client_url);
        let body: Value = self
            .http
            .post(url)
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let id = body["header"]["member_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let leader = body["leader"].as_str().unwrap_or("0").to_string();
        Ok((id, leader))
    }

    async fn agreement(&self) -> Option<usize> {
        let live: Vec<usize> = (0..self.members.len()).filter(|i| !self.down[*i]).collect();
        let views = join_all(live.iter().map(|i| self.status(*i))).await;
        let mut leader = None;
        for view in &views {
            let (_, l) = view.as_ref().ok()?;
            if l == "0" || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        let leader = leader?;
        live.iter()
            .zip(&views)
            .find(|(_, v)| v.as_ref().is_ok_and(|(id, _)| id == leader))
            .map(|(i, _)| *i)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Replicated for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn agreed_leader(
        &self,
        except: Option<usize>,
        within: Duration,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.agreement().await {
                Some(i) if Some(i) != except => return Ok(i),
                _ if Instant::now() > deadline => {
                    return Err(format!(
                        "the live etcd members did not agree on a leader within {within:?}"
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn signal(&mut self, i: usize, signal: Signal) -> Result<(), String> {
        let child = self.members[i]
            .child
            .as_ref()
            .ok_or_else(|| format!("etcd member {i} is not running"))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).map_err(|e| format!("kill {pid}: {e}"))?;
        self.down[i] = true;
        Ok(())
    }

    async fn await_exit(&mut self, i: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let child = self.members[i]
            .child
            .as_mut()
            .ok_or_else(|| format!("etcd member {i} was not started"))?;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err(format!("etcd member {i} did not exit within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn restart(&mut self, i: usize, within: Duration) -> Result<(), String> {
        self.spawn(i)?;
        self.agreed_leader(None, within).await.map(drop)
    }
}

/// Load through the JSON gateway.
pub struct EtcdTarget {
    endpoints: Arc<[String]>,
}

impl Target for EtcdTarget {
    type Worker = EtcdWorker;
    fn worker(&self, index: u32) -> EtcdWorker {
        EtcdWorker {
            http: reqwest::Client::new(),
            endpoints: self.endpoints.clone(),
            current: index as usize % self.endpoints.len(),
        }
    }
}

pub struct EtcdWorker {
    http: reqwest::Client,
    endpoints: Arc<[String]>,
    /// The member that answered last: tried first.
    current: usize,
}

/// As bully's Rust client: a deadline per command, per attempt, and the back-off between
/// rounds over every member.
const TIMEOUT: Duration = Duration::from_secs(15);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

impl EtcdWorker {
    /// POSTs `body` to `path`, moving through the members until one answers 200.
    async fn call(&mut self, path: &str, body: &Value, deadline: Instant) -> Result<Value, String> {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        loop {
            for _ in 0..self.endpoints.len() {
                let now = Instant::now();
                if now >= deadline {
                    return Err(format!(
                        "no etcd member answered within {TIMEOUT:?}: {last_error}"
                    ));
                }
                let url = format!("{}{path}", self.endpoints[self.current]);
                let attempt = self
                    .http
                    .post(url)
                    .timeout(ATTEMPT_TIMEOUT.min(deadline - now))
                    .json(body)
                    .send()
                    .await;
                match attempt {
                    Ok(response) if response.status().is_success() => {
                        return response.json().await.map_err(|e| e.to_string());
                    }
                    Ok(response) => last_error = format!("HTTP {}", response.status()),
                    Err(e) => last_error = e.to_string(),
                }
                self.current = (self.current + 1) % self.endpoints.len();
            }
            let now = Instant::now();
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(now))).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn incr(&mut self, key: &str, deadline: Instant) -> Result<(), String> {
        let key = B64.encode(key);
        loop {
            let range = self
                .call("/v3/kv/range", &json!({ "key": key }), deadline)
                .await?;
            let kv = &range["kvs"][0];
            let revision = kv["mod_revision"].as_str().unwrap_or("0").to_string();
            let n: i64 = kv["value"]
                .as_str()
                .and_then(|v| B64.decode(v).ok())
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let txn = json!({
                "compare": [{
                    "key": key, "result": "EQUAL", "target": "MOD", "mod_revision": revision,
                }],
                "success": [{ "request_put": { "key": key, "value": B64.encode((n + 1).to_string()) } }],
            });
            let reply = self.call("/v3/kv/txn", &txn, deadline).await?;
            if reply["succeeded"].as_bool() == Some(true) {
                return Ok(());
            }
        }
    }
}

impl Worker for EtcdWorker {
    async fn execute(&mut self, request: &Request) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        match request {
            Request::Incr { key } => self.incr(key, deadline).await,
            Request::Put { key, value } => {
                let body = json!({ "key": B64.encode(key), "value": B64.encode(value.as_bytes()) });
                self.call("/v3/kv/put", &body, deadline).await.map(drop)
            }
            Request::Get { key } => {
                let body = json!({ "key": B64.encode(key) });
                self.call("/v3/kv/range", &body, deadline).await.map(drop)
            }
        }
    }
}
