//! Carries out a plan's faults on a live cluster, and undoes them.
//!
//! Targets are resolved when a fault is due (the coordinator *now*), among the servers that can
//! take it; a fault with no possible target is skipped, and a kill or pause that would leave no
//! server running is too. Every fault that takes something away schedules its undoing (restart,
//! SIGCONT, heal); [`Injector::heal_all`] undoes whatever is still pending.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::cluster::{ChaosCluster, Life};
use super::plan::{Direction, Fault, Planned, Target};
use crate::secantus::Secantus;

/// Something to undo at a time (milliseconds since the workload started).
#[derive(Debug)]
enum Undo {
    Restart { server: usize, rank: u64 },
    Resume { server: usize },
    Heal { fault: u64 },
}

/// What happened, for the report.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// A partition as carried out: who was cut off from whom, when, and who was coordinator as it
/// began (milliseconds since the workload started).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PartitionWindow {
    pub id: u64,
    pub isolated: Vec<usize>,
    pub from_ms: u64,
    /// `None`: healed at the end of the run.
    pub to_ms: Option<u64>,
    pub coordinator: Option<usize>,
}

/// A server not running (killed until restarted, paused until resumed).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Outage {
    pub server: usize,
    pub from_ms: u64,
    pub to_ms: Option<u64>,
}

pub struct Injector {
    pub cluster: ChaosCluster,
    pub secantus: Option<Secantus>,
    pub events: Vec<Event>,
    /// Faults carried out, by name.
    pub injected: BTreeMap<String, usize>,
    /// Faults with no possible target (not counted as injected).
    pub skipped: usize,
    /// Planned faults (or their undoing) that could not be carried out: what went wrong. A
    /// run with any of these fails: it did not test what its plan says.
    pub failed: Vec<String>,
    pub partitions: Vec<PartitionWindow>,
    pub outages: Vec<Outage>,
    epoch: Instant,
    pending: Vec<(u64, Undo)>,
    next_id: u64,
}

impl Injector {
    pub fn new(cluster: ChaosCluster, secantus: Option<Secantus>, epoch: Instant) -> Injector {
        Injector {
            cluster,
            secantus,
            events: Vec::new(),
            injected: BTreeMap::new(),
            skipped: 0,
            failed: Vec::new(),
            partitions: Vec::new(),
            outages: Vec::new(),
            epoch,
            pending: Vec::new(),
            next_id: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn log(&mut self, what: String) {
        let at_ms = self.now_ms();
        self.events.push(Event { at_ms, what });
    }

    fn down(&mut self, server: usize) {
        let from_ms = self.now_ms();
        self.outages.push(Outage {
            server,
            from_ms,
            to_ms: None,
        });
    }

    fn up(&mut self, server: usize) {
        let now = self.now_ms();
        for outage in self.outages.iter_mut().filter(|o| o.server == server) {
            outage.to_ms.get_or_insert(now);
        }
    }

    /// Notes a fault that could not be carried out.
    fn fail(&mut self, what: String) {
        self.log(format!("FAILED: {what}"));
        self.failed.push(what);
    }

    async fn sleep_until(&self, at_ms: u64) {
        let target = self.epoch + Duration::from_millis(at_ms);
        tokio::time::sleep_until(target.into()).await;
    }

    /// Runs `faults` (sorted by time) and their undoing until `end_ms`, then heals everything.
    pub async fn run(&mut self, faults: &[Planned], end_ms: u64) {
        let mut next = 0;
        loop {
            let fault_at = faults.get(next).map(|f| f.at_ms);
            let undo_at = self.pending.iter().map(|(at, _)| *at).min();
            let due = match (fault_at, undo_at) {
                (Some(f), Some(u)) => f.min(u),
                (Some(f), None) => f,
                (None, Some(u)) => u,
                (None, None) => break,
            };
            if due >= end_ms {
                break;
            }
            self.sleep_until(due).await;
            if undo_at == Some(due) {
                self.undo_next().await;
            } else {
                self.inject(&faults[next]).await;
                next += 1;
            }
        }
        self.sleep_until(end_ms).await;
        self.heal_all().await;
    }

    /// Undoes every pending fault now, in time order, and makes sure every server runs.
    pub async fn heal_all(&mut self) {
        self.cluster.check_exits();
        while !self.pending.is_empty() {
            self.undo_next().await;
        }
        self.cluster.links.heal_all();
        let now = self.now_ms();
        for window in &mut self.partitions {
            window.to_ms.get_or_insert(now);
        }
        for i in 0..self.cluster.servers.len() {
            match self.cluster.servers[i].life {
                Life::Paused => {
                    self.cluster.resume(i);
                    self.up(i);
                }
                Life::Down => {
                    let _ = self.cluster.reap(i, Duration::from_secs(6)).await;
                    match self.cluster.spawn(i) {
                        Ok(()) => self.up(i),
                        Err(e) => self.fail(format!("restarting s{i} failed: {e}")),
                    }
                }
                Life::Running => {}
            }
        }
        self.log("all faults healed".into());
    }

    async fn undo_next(&mut self) {
        let Some(position) = self
            .pending
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(i, _)| i)
        else {
            return;
        };
        let (_, undo) = self.pending.remove(position);
        match undo {
            Undo::Restart { server, rank } => {
                let _ = self.cluster.reap(server, Duration::from_secs(6)).await;
                self.cluster.servers[server].rank = rank;
                match self.cluster.spawn(server) {
                    Ok(()) => {
                        self.up(server);
                        self.log(format!("restarted s{server} with rank {rank}"))
                    }
                    Err(e) => self.fail(format!("restarting s{server} failed: {e}")),
                }
            }
            Undo::Resume { server } => {
                self.cluster.resume(server);
                self.up(server);
                self.log(format!("resumed s{server}"));
            }
            Undo::Heal { fault } => {
                self.cluster.links.heal(fault);
                let now = self.now_ms();
                if let Some(window) = self.partitions.iter_mut().find(|w| w.id == fault) {
                    window.to_ms = Some(now);
                }
                self.log(format!("healed partition #{fault}"));
            }
        }
    }

    fn running(&self) -> Vec<usize> {
        self.cluster
            .servers
            .iter()
            .filter(|s| s.life == Life::Running)
            .map(|s| s.index)
            .collect()
    }

    /// The server a fault hits, among `candidates` (sorted), or `None` to skip it.
    async fn resolve(&self, target: Target, pick: u64, candidates: &[usize]) -> Option<usize> {
        let coordinator = self.cluster.coordinator().await;
        let pool: Vec<usize> = match target {
            Target::Coordinator => return coordinator.filter(|c| candidates.contains(c)),
            Target::Follower => candidates
                .iter()
                .copied()
                .filter(|i| Some(*i) != coordinator)
                .collect(),
            Target::Any => candidates.to_vec(),
        };
        (!pool.is_empty()).then(|| pool[(pick % pool.len() as u64) as usize])
    }

    fn count(&mut self, fault: &Fault) {
        *self.injected.entry(fault.name()).or_default() += 1;
    }

    fn skip(&mut self, fault: &Fault, why: &str) {
        self.skipped += 1;
        self.log(format!("skipped {}: {why}", fault.name()));
    }

    /// Skips a fault whose target could not be found, noting what each server said.
    async fn skip_no_target(&mut self, fault: &Fault) {
        let views: Vec<String> = self
            .cluster
            .statuses()
            .await
            .into_iter()
            .map(|(i, s)| format!("s{i} {} term {:?}", s.role, s.term))
            .collect();
        self.skip(
            fault,
            &format!("no such server running ({})", views.join(", ")),
        );
    }

    async fn inject(&mut self, planned: &Planned) {
        let fault = &planned.fault;
        // A server that died on its own must not be mistaken for one the harness stopped.
        self.cluster.check_exits();
        let now = self.now_ms();
        let running = self.running();
        match fault {
            Fault::Kill {
                target,
                restart_after_ms,
                new_rank,
            } => {
                if running.len() < 2 {
                    return self.skip(fault, "it would stop the last running server");
                }
                let Some(i) = self.resolve(*target, planned.pick, &running).await else {
                    return self.skip_no_target(fault).await;
                };
                self.cluster.kill(i);
                self.down(i);
                self.pending.push((
                    now + restart_after_ms,
                    Undo::Restart {
                        server: i,
                        rank: *new_rank,
                    },
                ));
                self.log(format!("{}: SIGKILL s{i}", fault.name()));
            }
            Fault::Pause { target, for_ms } => {
                if running.len() < 2 {
                    return self.skip(fault, "it would stop the last running server");
                }
                let Some(i) = self.resolve(*target, planned.pick, &running).await else {
                    return self.skip_no_target(fault).await;
                };
                self.cluster.pause(i);
                self.down(i);
                self.pending
                    .push((now + for_ms, Undo::Resume { server: i }));
                self.log(format!("{}: SIGSTOP s{i} for {for_ms} ms", fault.name()));
            }
            Fault::Partition {
                target,
                size,
                direction,
                mode,
                for_ms,
            } => {
                let all: Vec<usize> = (0..self.cluster.servers.len()).collect();
                let Some(first) = self.resolve(*target, planned.pick, &running).await else {
                    return self.skip_no_target(fault).await;
                };
                let mut isolated = vec![first];
                let mut others: Vec<usize> = all.iter().copied().filter(|i| *i != first).collect();
                let mut pick = planned.pick / 7;
                while isolated.len() < *size && others.len() > 1 {
                    let j = others.remove((pick % others.len() as u64) as usize);
                    isolated.push(j);
                    pick /= 7;
                }
                self.next_id += 1;
                let id = self.next_id;
                for &a in &isolated {
                    for &b in all.iter().filter(|b| !isolated.contains(b)) {
                        if *direction != Direction::Inbound {
                            self.cluster.links.cut(id, a, b, *mode);
                        }
                        if *direction != Direction::Outbound {
                            self.cluster.links.cut(id, b, a, *mode);
                        }
                    }
                }
                self.pending.push((now + for_ms, Undo::Heal { fault: id }));
                let coordinator = self.cluster.coordinator().await;
                self.partitions.push(PartitionWindow {
                    id,
                    isolated: isolated.clone(),
                    from_ms: now,
                    to_ms: None,
                    coordinator,
                });
                self.log(format!(
                    "{}: partition #{id} isolates {isolated:?} ({direction:?}, {mode:?}) for {for_ms} ms",
                    fault.name()
                ));
            }
            Fault::Restart {
                target,
                graceful,
                new_rank,
            } => {
                let Some(i) = self.resolve(*target, planned.pick, &running).await else {
                    return self.skip_no_target(fault).await;
                };
                self.down(i);
                if *graceful {
                    self.cluster.terminate(i);
                    self.log(format!("{}: SIGTERM s{i}", fault.name()));
                    // A drain and handover take well under a second; past 6 s it is killed.
                    let clean = self.cluster.reap(i, Duration::from_secs(6)).await;
                    if !clean {
                        return self.fail(format!(
                            "{}: s{i} did not exit cleanly within 6 s of SIGTERM",
                            fault.name()
                        ));
                    }
                } else {
                    self.cluster.kill(i);
                    self.log(format!("{}: SIGKILL s{i}", fault.name()));
                }
                self.cluster.servers[i].rank = *new_rank;
                if let Err(e) = self.cluster.spawn(i) {
                    return self.fail(format!("{}: restarting s{i} failed: {e}", fault.name()));
                }
                self.up(i);
                self.log(format!("restarted s{i} with rank {new_rank}"));
            }
            Fault::StoreStepDown { secs } => {
                let Some(secantus) = &self.secantus else {
                    return self.skip(fault, "no MongoDB store");
                };
                if let Err(e) = secantus.try_step_down(*secs).await {
                    return self.fail(format!("{}: {e}", fault.name()));
                }
                self.log(format!("{}: {secs} s", fault.name()));
            }
            Fault::StoreRestart => {
                let Some(secantus) = self.secantus.as_mut() else {
                    return self.skip(fault, "no MongoDB store");
                };
                if let Err(e) = secantus.try_restart().await {
                    return self.fail(format!("{}: the store did not restart: {e}", fault.name()));
                }
                self.log(format!("{}: restarted", fault.name()));
            }
        }
        self.count(fault);
    }
}
