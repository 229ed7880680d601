//! What every test harness shares: finding the workspace's binaries, picking free ports,
//! deciding whether servers agree on a coordinator, waiting for a MongoDB-compatible server,
//! a workload's report, and the invariants checked against the store ([`invariants`]).
//!
//! The harnesses themselves differ only in how they run servers and reach them: processes on
//! loopback ([`crate::cluster`]), processes behind fault-injecting proxies
//! ([`crate::chaos::cluster`]), containers ([`crate::docker`]).

use std::path::PathBuf;
use std::time::Duration;

use bully_client::{CommandResponse, Role, Status};

pub mod invariants;

/// Path of a workspace binary (`bully-server`, `bully-client`, `bully-bench`, ...): the one
/// named by `BULLY_<NAME>_BIN` (e.g. `BULLY_SERVER_BIN`), else the one next to the running
/// executable (a test in `target/<profile>/deps`, or a binary in `target/<profile>`).
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let var = format!(
        "BULLY_{}_BIN",
        name.trim_start_matches("bully-")
            .to_uppercase()
            .replace('-', "_")
    );
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    Err(format!(
        "{name} not found near {}: run `cargo build --workspace --bins` first (scripts/test.sh \
         does), or set {var}",
        exe.display()
    ))
}

/// A loopback port nobody listens on right now.
///
/// Ports come from below Linux's ephemeral range (32768-60999), where the kernel also picks the
/// local ports of outgoing connections: a port freed after `bind(0)` can be taken by any
/// client socket before the server binds it (seen as "Address already in use" in a chaos run).
/// Each process walks its own stretch of 16000-32000 (chosen by its pid) and never hands out a
/// port twice; a port is only returned if it can be bound now.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 16_000;
    const SPAN: u32 = 16_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 641) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port below the ephemeral range",
    ))
}

/// The coordinator every asked server agrees on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// Its client address, as the servers advertise it.
    pub client_addr: String,
    pub term: u64,
}

/// Whether the servers agree: every one answered, is ready, names the same coordinator with
/// the same claimed term, and the coordinator (if among them) says it is the coordinator.
/// The error names the first server that does not agree (by its position in `views`).
pub fn agreement(views: &[(String, Option<Status>)]) -> Result<Agreed, String> {
    let mut agreed: Option<Agreed> = None;
    for (name, status) in views {
        let status = status
            .as_ref()
            .ok_or_else(|| format!("{name} does not answer"))?;
        let coordinator = status
            .coordinator
            .as_ref()
            .filter(|_| status.ready)
            .ok_or_else(|| format!("{name} knows no ready coordinator"))?;
        let term = coordinator
            .term
            .ok_or_else(|| format!("{name} sees a coordinator without a term"))?;
        let seen = Agreed {
            client_addr: coordinator.client_addr.clone(),
            term,
        };
        match &agreed {
            Some(first) if *first != seen => {
                return Err(format!("{name} sees {seen:?}, another server {first:?}"));
            }
            _ => agreed = Some(seen),
        }
    }
    let agreed = agreed.ok_or_else(|| "no server was asked".to_string())?;
    for (name, status) in views {
        if let Some(status) = status
            && status.client_addr == agreed.client_addr
            && status.role != Role::Coordinator
        {
            return Err(format!(
                "{name} is named coordinator but is {}",
                status.role
            ));
        }
    }
    Ok(agreed)
}

/// [`agreement`] on the server whose client address is `want`; returns the term.
pub fn agreement_on(views: &[(String, Option<Status>)], want: &str) -> Result<u64, String> {
    let agreed = agreement(views)?;
    if agreed.client_addr == want {
        Ok(agreed.term)
    } else {
        Err(format!("they agree on {agreed:?}, not on {want}"))
    }
}

/// The term of a waited-for agreement on `name`, or a panic that says why not (after
/// `dump_logs`).
pub fn expect_agreed(waited: Result<u64, String>, name: &str, dump_logs: impl FnOnce()) -> u64 {
    waited.unwrap_or_else(|why| {
        dump_logs();
        panic!("{name} did not become the agreed coordinator: {why}")
    })
}

/// Calls `check` every `every` until it returns `Ok`, for at most `timeout`; on timeout, the
/// last error.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not within {timeout:?}: {last}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until the MongoDB-compatible server at `uri` answers `ping`, for at most `timeout`.
/// `uri` is asked for anew each round (a restarted container may publish another port).
pub async fn await_mongo_ping<F, Fut>(timeout: Duration, uri: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let uri = &uri;
    poll(timeout, Duration::from_millis(100), move || async move {
        let uri = uri().await?;
        let client = mongo_client(&uri).await?;
        client
            .database("admin")
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(|e| format!("ping: {e}"))
    })
    .await
}

/// A driver client with short timeouts, for tests' direct inspection and admin commands.
pub async fn mongo_client(uri: &str) -> Result<mongodb::Client, String> {
    let mut options = mongodb::options::ClientOptions::parse(uri)
        .await
        .map_err(|e| format!("parse the MongoDB URI: {e}"))?;
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    mongodb::Client::with_options(options).map_err(|e| format!("create a MongoDB client: {e}"))
}

/// What a workload of `incr counter` clients saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Acknowledged commands: id → response, per worker in completion order.
    pub acked: Vec<Vec<(String, CommandResponse)>>,
    /// Commands that did not execute before the client's deadline: (id, error).
    pub failed: Vec<(String, String)>,
    /// Every id issued.
    pub issued: Vec<String>,
}

impl Report {
    pub fn acked_count(&self) -> usize {
        self.acked.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bully_client::CoordinatorInfo;

    fn status(addr: &str, role: Role, coordinator: Option<(&str, Option<u64>)>) -> Status {
        Status {
            rank: 1,
            role,
            term: None,
            client_addr: addr.into(),
            peer_addr: String::new(),
            coordinator: coordinator.map(|(a, term)| CoordinatorInfo {
                rank: 2,
                client_addr: a.into(),
                peer_addr: String::new(),
                term,
            }),
            ready: coordinator.is_some_and(|(_, t)| t.is_some()),
            last_seq: None,
            peers: Vec::new(),
            version: String::new(),
        }
    }

    #[test]
    fn agreement_needs_every_server_on_one_coordinator_and_term() {
        let c = Some(("a", Some(3)));
        let good = vec![
            ("s1".to_string(), Some(status("a", Role::Coordinator, c))),
            ("s2".to_string(), Some(status("b", Role::Follower, c))),
        ];
        assert_eq!(
            agreement(&good).unwrap(),
            Agreed {
                client_addr: "a".into(),
                term: 3
            }
        );
        let mut silent = good.clone();
        silent[1].1 = None;
        assert!(
            agreement(&silent)
                .unwrap_err()
                .contains("s2 does not answer")
        );
        let mut other_term = good.clone();
        other_term[1].1 = Some(status("b", Role::Follower, Some(("a", Some(4)))));
        assert!(agreement(&other_term).unwrap_err().contains("s2 sees"));
        let mut no_term = good.clone();
        no_term[1].1 = Some(status("b", Role::Follower, Some(("a", None))));
        assert!(agreement(&no_term).is_err());
        let mut not_coordinator = good.clone();
        not_coordinator[0].1 = Some(status("a", Role::HandingOff, c));
        assert!(
            agreement(&not_coordinator)
                .unwrap_err()
                .contains("named coordinator")
        );
        assert!(agreement(&[]).is_err());
    }
}
