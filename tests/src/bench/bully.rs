//! bully under the benchmark: a [`Target`] over the Rust client, and [`Bully`], a
//! [`Cluster`] of servers as deployed (default timings) with what the report reads from it:
//! the agreed coordinator, the peer-message counters, and each server's process.

use std::collections::BTreeMap;
use std::time::Duration;

use bully_client::{Client, ClientOptions, Command, CommandRequest};
use futures::future::join_all;
use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::failover::Replicated;
use super::load::{Request, Target, Worker};
use crate::cluster::{Cluster, StoreSpec, binary};

/// The server flag (and value) for the strictly serial path: one command per store
/// transaction. Wired here only; [`serial_flag_supported`] checks the binary has it.
pub const SERIAL_FLAG: [&str; 2] = ["--max-batch", "1"];

/// `bully-server serve --help`, read once.
fn serve_help() -> &'static str {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HELP.get_or_init(|| {
        std::process::Command::new(binary("bully-server"))
            .args(["serve", "--help"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    })
}

/// Whether `bully-server serve` knows [`SERIAL_FLAG`].
pub fn serial_flag_supported() -> bool {
    serve_help()
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|word| word == SERIAL_FLAG[0])
}

/// The server's default `--heartbeat-interval`, from its help (100 ms if it cannot be read).
pub fn default_heartbeat_interval() -> Duration {
    let help = serve_help();
    help.find("--heartbeat-interval")
        .and_then(|at| help[at..].split_once("[default: "))
        .and_then(|(_, rest)| rest.split_once(']'))
        .and_then(|(value, _)| humantime::parse_duration(value).ok())
        .unwrap_or(Duration::from_millis(100))
}

/// The Rust client's defaults: a 15 s deadline per command, 2 s per attempt.
fn client_options() -> ClientOptions {
    ClientOptions::default()
}

/// Load through the Rust client: one [`Client`] per worker.
pub struct BullyTarget {
    pub servers: Vec<String>,
    pub options: ClientOptions,
}

pub struct BullyWorker(Client);

impl Target for BullyTarget {
    type Worker = BullyWorker;
    fn worker(&self, _index: u32) -> BullyWorker {
        BullyWorker(
            Client::new(self.servers.clone(), self.options.clone())
                .expect("server addresses were checked when the target was built"),
        )
    }
}

impl Worker for BullyWorker {
    async fn execute(&mut self, request: &Request) -> Result<(), String> {
        let command = match request {
            Request::Incr { key } => Command::Incr {
                key: key.clone(),
                delta: 1,
            },
            Request::Put { key, value } => Command::Put {
                key: key.clone(),
                value: value.as_ref().into(),
                lease: None,
            },
            Request::Get { key } => Command::Get { key: key.clone() },
        };
        self.0
            .execute(&CommandRequest::new(command))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A cluster of servers as deployed, and who is down.
pub struct Bully {
    pub cluster: Cluster,
    /// Servers the benchmark stopped and has not restarted.
    down: Vec<bool>,
    /// The rank of the next restarted server: below every other, so it rejoins as a follower
    /// and causes no takeover (which would be a second stall in the same measurement).
    next_rank: u64,
    client: Client,
    http: reqwest::Client,
}

impl Bully {
    /// `n` servers ranked from the first (highest: the coordinator) down.
    pub fn start(n: usize, store: StoreSpec, extra: &[&str]) -> Bully {
        let top = 1_000_000;
        let ranks: Vec<u64> = (0..n as u64).map(|i| top - i).collect();
        let cluster = Cluster::start_as_deployed(&ranks, store, extra);
        let client = Client::new(
            cluster.client_addrs(),
            ClientOptions {
                attempt_timeout: Duration::from_secs(1),
                ..client_options()
            },
        )
        .expect("loopback addresses");
        Bully {
            cluster,
            down: vec![false; n],
            next_rank: top - n as u64,
            client,
            http: reqwest::Client::new(),
        }
    }

    pub fn target(&self) -> BullyTarget {
        BullyTarget {
            servers: self.cluster.client_addrs(),
            options: client_options(),
        }
    }

    /// Process ids of the running servers.
    pub fn pids(&self) -> Vec<u32> {
        self.live()
            .filter_map(|i| self.cluster.servers[i].child.as_ref().map(|c| c.id()))
            .collect()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.down.len()).filter(|i| !self.down[*i])
    }

    /// The server every live server names as its ready coordinator with a claimed term, if
    /// they agree right now.
    async fn agreement(&self) -> Option<usize> {
        let live: Vec<usize> = self.live().collect();
        let views = join_all(
            live.iter()
                .map(|i| self.client.status(&self.cluster.servers[*i].client_addr)),
        )
        .await;
        let mut agreed: Option<&str> = None;
        for view in &views {
            let coordinator = view
                .as_ref()
                .ok()
                .filter(|s| s.ready)
                .and_then(|s| s.coordinator.as_ref())
                .filter(|c| c.term.is_some())?;
            match agreed {
                Some(addr) if addr != coordinator.client_addr => return None,
                _ => agreed = Some(&coordinator.client_addr),
            }
        }
        let addr = agreed?;
        live.into_iter()
            .find(|i| self.cluster.servers[*i].client_addr == addr)
    }

    /// Each live server's `bully_peer_messages_sent_total`, by kind, read at about the same
    /// moment.
    pub async fn peer_messages(&self) -> Result<BTreeMap<usize, Counts>, String> {
        let live: Vec<usize> = self.live().collect();
        let bodies = join_all(live.iter().map(|i| async move {
            let url = format!("http://{}/metrics", self.cluster.servers[*i].client_addr);
            let response = self.http.get(&url).send().await;
            let text = match response {
                Ok(response) => response.text().await,
                Err(e) => Err(e),
            };
            text.map_err(|e| format!("{url}: {e}"))
        }))
        .await;
        live.into_iter()
            .zip(bodies)
            .map(|(i, body)| Ok((i, parse_peer_messages(&body?))))
            .collect()
    }
}

/// Messages by kind.
pub type Counts = BTreeMap<String, u64>;

/// The sum of the servers' counts, by kind, leaving out `except`.
pub fn sum_counts(by_server: &BTreeMap<usize, Counts>, except: Option<usize>) -> Counts {
    let mut sums = Counts::new();
    for (_, counts) in by_server.iter().filter(|(i, _)| Some(**i) != except) {
        for (kind, n) in counts {
            *sums.entry(kind.clone()).or_insert(0) += n;
        }
    }
    sums
}

/// `(kind, count)` of each `bully_peer_messages_sent_total{kind="..."} N` line.
fn parse_peer_messages(metrics: &str) -> Counts {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("bully_peer_messages_sent_total{kind=\"")?;
            let (kind, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((kind.to_string(), value as u64))
        })
        .collect()
}

impl Replicated for Bully {
    fn name(&self) -> &'static str {
        "bully"
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
                        "the live servers did not agree on a ready coordinator{} within {within:?}",
                        except.map_or(String::new(), |i| format!(
                            " other than {}",
                            self.cluster.servers[i].name
                        ))
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn signal(&mut self, i: usize, signal: Signal) -> Result<(), String> {
        let pid = self.cluster.servers[i]
            .pid()
            .ok_or_else(|| format!("{} is not running", self.cluster.servers[i].name))?;
        nix::sys::signal::kill(pid, signal).map_err(|e| format!("kill {pid}: {e}"))?;
        self.down[i] = true;
        Ok(())
    }

    async fn await_exit(&mut self, i: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let server = &mut self.cluster.servers[i];
        let child = server
            .child
            .as_mut()
            .ok_or_else(|| format!("{} was not started", server.name))?;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err(format!("{} did not exit within {within:?}", server.name));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn restart(&mut self, i: usize, within: Duration) -> Result<(), String> {
        self.cluster.restart(i, self.next_rank);
        self.next_rank -= 1;
        self.down[i] = false;
        let leader = self.agreed_leader(None, within).await?;
        if leader == i {
            return Err(format!(
                "the restarted {} took over, though it has the lowest rank",
                self.cluster.servers[i].name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peer_message_counters() {
        let text = "# HELP bully_peer_messages_sent Peer messages sent\n\
                    bully_peer_messages_sent_total{kind=\"heartbeat\"} 120\n\
                    bully_peer_messages_sent_total{kind=\"election\"} 3\n\
                    bully_elections_total 1\n";
        let counts = parse_peer_messages(text);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!((counts["heartbeat"], counts["election"]), (120, 3));
    }
}
