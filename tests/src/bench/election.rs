//! Elections at N servers: the steady-state cost of failure detection (peer messages per
//! second, the servers' CPU), then repeated SIGKILLs of the coordinator, each timed from the
//! signal until every survivor names the same new ready coordinator, with the election
//! messages the survivors sent meanwhile (from `bully_peer_messages_sent_total`).

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::bully::{Bully, Counts, sum_counts};
use super::failover::Replicated;
use super::host;
use crate::cluster::StoreSpec;

/// How long a cluster of N may take to agree at start (25 processes on 2 cores take a while).
const START: Duration = Duration::from_secs(60);

/// Figures at one cluster size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Election {
    pub servers: usize,
    /// Per repetition: from SIGKILL to agreement, in ms.
    pub converge_ms: Vec<f64>,
    /// Per repetition: messages other than heartbeats, from the SIGKILL until shortly after
    /// agreement ([`AFTER`] later, so late announcements count).
    pub election_messages: Vec<u64>,
    /// Per repetition: every peer message in the same span, heartbeats included.
    pub all_messages: Vec<u64>,
    /// Steady state (no load, no failure): peer messages per second, all servers.
    pub steady_messages_per_s: f64,
    /// Steady state: CPU of all servers together, in % of one core.
    pub steady_cpu_percent: f64,
}

/// Messages sent this long after agreement still belong to the election.
pub const AFTER: Duration = Duration::from_millis(300);

/// Measures a cluster of `n` servers on the embedded store for `steady` and `reps` elections.
pub async fn measure(
    n: usize,
    steady: Duration,
    reps: usize,
    progress: &dyn Fn(String),
) -> Result<Election, String> {
    let mut bully = Bully::start(n, StoreSpec::Embedded, &[]);
    bully.agreed_leader(None, START).await?;
    // Let discovery and the first heartbeats settle before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let pids = bully.pids();
    let cpu = |pids: &[u32]| {
        pids.iter()
            .filter_map(|p| host::cpu_seconds(*p))
            .sum::<f64>()
    };
    let total = |m: &Counts| m.values().sum::<u64>();
    let all = |m: &BTreeMap<usize, Counts>| total(&sum_counts(m, None));
    let (m0, c0, t0) = (
        all(&bully.peer_messages().await?),
        cpu(&pids),
        Instant::now(),
    );
    tokio::time::sleep(steady).await;
    let (m1, c1, t1) = (
        all(&bully.peer_messages().await?),
        cpu(&pids),
        Instant::now(),
    );
    let seconds = (t1 - t0).as_secs_f64();
    let steady_messages_per_s = m1.saturating_sub(m0) as f64 / seconds;
    let steady_cpu_percent = (c1 - c0) / seconds * 100.0;
    progress(format!(
        "N = {n}: steady state {steady_messages_per_s:.0} peer messages/s, \
         servers' CPU {steady_cpu_percent:.1}% of a core"
    ));

    let mut election = Election {
        servers: n,
        converge_ms: Vec::new(),
        election_messages: Vec::new(),
        all_messages: Vec::new(),
        steady_messages_per_s,
        steady_cpu_percent,
    };
    for rep in 1..=reps {
        let victim = bully.agreed_leader(None, START).await?;
        // The victim's counters die with it; count the survivors' only.
        let survivors_before = sum_counts(&bully.peer_messages().await?, Some(victim));
        let killed = Instant::now();
        bully.signal(victim, Signal::SIGKILL)?;
        let leader = bully.agreed_leader(Some(victim), START).await?;
        let converged = killed.elapsed();
        tokio::time::sleep(AFTER).await;
        let after = sum_counts(&bully.peer_messages().await?, None);
        let sent = subtract(&after, &survivors_before);
        let heartbeats = sent.get("heartbeat").copied().unwrap_or(0);
        election.converge_ms.push(converged.as_secs_f64() * 1000.0);
        election.election_messages.push(total(&sent) - heartbeats);
        election.all_messages.push(total(&sent));
        progress(format!(
            "N = {n} election {rep}/{reps}: {victim} -> {leader} in {:.0} ms, {} election \
             messages ({} with heartbeats)",
            converged.as_secs_f64() * 1000.0,
            total(&sent) - heartbeats,
            total(&sent)
        ));
        bully.await_exit(victim, START).await?;
        bully.restart(victim, START).await?;
    }
    Ok(election)
}

/// `a - b` per kind (counters only grow; a kind missing in `b` counts from 0).
fn subtract(a: &Counts, b: &Counts) -> Counts {
    a.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
        .collect()
}
