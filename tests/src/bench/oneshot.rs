//! The one-shot client: wall time of a whole `bully-client get` process (start, connect,
//! maybe a redirect, answer, exit) next to a bare process start (`/bin/true`), the runs of the
//! three interleaved so they share the machine's noise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::bully::Bully;
use super::load::percentile;
use crate::cluster::binary;

/// Wall times in ms: p50 and p90 of each variant.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OneShot {
    pub runs: usize,
    pub bare: [f64; 2],
    /// `--servers` lists the coordinator first.
    pub coordinator_first: [f64; 2],
    /// `--servers` lists a follower first (it answers with a redirect).
    pub follower_first: [f64; 2],
}

pub fn measure(bully: &Bully, leader: usize, runs: usize) -> Result<OneShot, String> {
    let addrs = bully.cluster.client_addrs();
    let follower = (0..addrs.len())
        .find(|i| *i != leader)
        .ok_or("no follower to list first")?;
    let listed = |first: usize| {
        let mut list = vec![addrs[first].clone()];
        list.extend(
            addrs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, a)| a.clone()),
        );
        list.join(",")
    };
    let client = binary("bully-client");
    let get = |servers: String| {
        let mut command = Command::new(&client);
        command
            .args(["--servers", &servers, "get", "bench/s/0"])
            .env_remove("BULLY_SERVERS")
            .env_remove("BULLY_TOKEN_FILE");
        command
    };
    let (mut bare, mut coordinator_first, mut follower_first) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        bare.push(wall(Command::new("/bin/true"))?);
        coordinator_first.push(wall(get(listed(leader)))?);
        follower_first.push(wall(get(listed(follower)))?);
    }
    let p50_p90 = |mut v: Vec<Duration>| {
        v.sort_unstable();
        [50.0, 90.0].map(|p| percentile(&v, p).unwrap_or_default().as_secs_f64() * 1000.0)
    };
    Ok(OneShot {
        runs,
        bare: p50_p90(bare),
        coordinator_first: p50_p90(coordinator_first),
        follower_first: p50_p90(follower_first),
    })
}

/// Runs `command` to its end; exit 0 (found) and 1 (not found) are both answers.
fn wall(mut command: Command) -> Result<Duration, String> {
    let started = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let took = started.elapsed();
    match status.code() {
        Some(0 | 1) => Ok(took),
        _ => Err(format!("{command:?} failed: {status}")),
    }
}
