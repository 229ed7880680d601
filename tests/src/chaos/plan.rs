//! A run's plan, drawn from its seed: cluster shape, ranks, workload size and fault schedule.
//!
//! Everything random about a run that can be decided in advance is decided here, so the same
//! seed (with the same overrides) gives the same plan; a failing run's report holds its plan,
//! and `--replay` runs it again. What cannot be decided in advance (which server is the
//! coordinator at 3.2 s) is resolved at run time and recorded in the report's event log;
//! `pick` makes that choice deterministic given the same candidates.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::proxy::CutMode;

/// Which store the servers share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreChoice {
    /// SQLite file in the run's directory.
    Embedded,
    /// A private SecantusDB server (MongoDB protocol).
    Mongo,
}

/// Which links a partition cuts, seen from the isolated set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Both,
    /// The isolated servers' messages are lost; they still hear the others.
    Outbound,
    /// The isolated servers hear nobody; the others still hear them.
    Inbound,
}

/// Whom a fault hits; resolved at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Coordinator,
    Follower,
    Any,
}

/// One fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL, then start again after `restart_after_ms` with rank `new_rank`.
    Kill {
        target: Target,
        restart_after_ms: u64,
        new_rank: u64,
    },
    /// SIGSTOP, SIGCONT after `for_ms` (beyond the failure timeout, the others elect anew and
    /// the paused server wakes up as a stale coordinator).
    Pause { target: Target, for_ms: u64 },
    /// Cut `size` servers (the coordinator among them when `target` says so) off from the rest.
    Partition {
        target: Target,
        size: usize,
        direction: Direction,
        mode: CutMode,
        for_ms: u64,
    },
    /// Stop a server (SIGTERM: drain and hand over; or SIGKILL) and start it at once with
    /// rank `new_rank`.
    Restart {
        target: Target,
        graceful: bool,
        new_rank: u64,
    },
    /// `replSetStepDown` on the store for `secs` (writes refused meanwhile).
    StoreStepDown { secs: u64 },
    /// Kill the store and start it again on the same data.
    StoreRestart,
}

impl Fault {
    /// A stable name for summaries.
    pub fn name(&self) -> String {
        let target = |t: &Target| match t {
            Target::Coordinator => "coordinator",
            Target::Follower => "follower",
            Target::Any => "any",
        };
        match self {
            Fault::Kill { target: t, .. } => format!("kill-{}", target(t)),
            Fault::Pause { target: t, .. } => format!("pause-{}", target(t)),
            Fault::Partition {
                target: t,
                direction,
                ..
            } => {
                let d = match direction {
                    Direction::Both => "",
                    Direction::Outbound => "-outbound",
                    Direction::Inbound => "-inbound",
                };
                format!("partition-{}{d}", target(t))
            }
            Fault::Restart { graceful, .. } => {
                if *graceful {
                    "restart-graceful".into()
                } else {
                    "restart-kill".into()
                }
            }
            Fault::StoreStepDown { .. } => "store-step-down".into(),
            Fault::StoreRestart => "store-restart".into(),
        }
    }
}

/// A fault at a time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// Milliseconds after the workload starts.
    pub at_ms: u64,
    /// Chooses among the candidate targets at run time (`pick % candidates`).
    pub pick: u64,
    pub fault: Fault,
}

/// Everything decided before a run starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub servers: usize,
    pub store: StoreChoice,
    pub ranks: Vec<u64>,
    pub clients: usize,
    /// Register keys (put/get/cas/delete, some incr) and counter keys (incr/get only).
    pub registers: usize,
    pub counters: usize,
    /// How long the workload runs with faults.
    pub duration_ms: u64,
    pub faults: Vec<Planned>,
    /// A negative control: run SecantusDB without `--sync-on-commit`, so a store restart loses
    /// acknowledged writes and the checks must report it.
    #[serde(default)]
    pub lossy_store: bool,
}

/// What the caller fixes; the seed draws the rest.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub servers: Option<usize>,
    pub store: Option<StoreChoice>,
    pub clients: Option<usize>,
    pub duration_ms: Option<u64>,
    /// May the seed choose the MongoDB store (SecantusDB installed)?
    pub mongo_available: bool,
    /// See [`Plan::lossy_store`].
    pub lossy_store: bool,
}

impl Plan {
    pub fn from_seed(seed: u64, overrides: &Overrides) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let servers = overrides
            .servers
            .unwrap_or(if rng.random_ratio(2, 3) { 3 } else { 5 });
        let mongo = rng.random_ratio(1, 3);
        let store = overrides
            .store
            .unwrap_or(if mongo && overrides.mongo_available {
                StoreChoice::Mongo
            } else {
                StoreChoice::Embedded
            });
        let mut ranks: Vec<u64> = Vec::new();
        while ranks.len() < servers {
            let rank = rng.random_range(1..1_000_000);
            if !ranks.contains(&rank) {
                ranks.push(rank);
            }
        }
        let clients = overrides.clients.unwrap_or(rng.random_range(4..=7));
        let duration_ms = overrides.duration_ms.unwrap_or(8_000);
        let mut faults = Vec::new();
        let mut at = rng.random_range(600..1_200);
        // Leave the last second fault-free: faults still running then are healed at the end.
        while at + 1_000 < duration_ms {
            let fault = draw_fault(&mut rng, servers, store);
            faults.push(Planned {
                at_ms: at,
                pick: rng.random(),
                fault,
            });
            at += rng.random_range(700..2_200);
        }
        Plan {
            seed,
            servers,
            store,
            ranks,
            clients,
            registers: 2,
            counters: 1,
            duration_ms,
            faults,
            lossy_store: overrides.lossy_store,
        }
    }
}

fn draw_fault(rng: &mut StdRng, servers: usize, store: StoreChoice) -> Fault {
    let rank = |rng: &mut StdRng| rng.random_range(1..1_000_000);
    let store_faults = if store == StoreChoice::Mongo { 2 } else { 0 };
    let target = |rng: &mut StdRng| {
        if rng.random_ratio(2, 3) {
            Target::Coordinator
        } else {
            Target::Follower
        }
    };
    match rng.random_range(0..10 + store_faults) {
        0 | 1 => Fault::Kill {
            target: target(rng),
            restart_after_ms: rng.random_range(200..2_500),
            new_rank: rank(rng),
        },
        2 | 3 => Fault::Pause {
            target: target(rng),
            // Some pauses stay under the failure timeout (no election), most go beyond.
            for_ms: rng.random_range(300..2_500),
        },
        4..=6 => {
            let max = if servers >= 5 { 2 } else { 1 };
            Fault::Partition {
                target: target(rng),
                size: rng.random_range(1..=max),
                direction: match rng.random_range(0..4) {
                    0 => Direction::Outbound,
                    1 => Direction::Inbound,
                    _ => Direction::Both,
                },
                mode: if rng.random_bool(0.5) {
                    CutMode::Refuse
                } else {
                    CutMode::Blackhole
                },
                for_ms: rng.random_range(1_000..3_000),
            }
        }
        7 | 8 => Fault::Restart {
            target: Target::Any,
            graceful: rng.random_bool(0.5),
            new_rank: rank(rng),
        },
        9 => Fault::Kill {
            target: Target::Any,
            restart_after_ms: rng.random_range(200..1_500),
            new_rank: rank(rng),
        },
        10 => Fault::StoreStepDown {
            secs: rng.random_range(1..=3),
        },
        _ => Fault::StoreRestart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_plan() {
        let overrides = Overrides {
            mongo_available: true,
            ..Overrides::default()
        };
        for seed in 0..50 {
            let plan = Plan::from_seed(seed, &overrides);
            assert_eq!(plan, Plan::from_seed(seed, &overrides));
            assert_eq!(plan.ranks.len(), plan.servers);
            assert!(!plan.faults.is_empty(), "seed {seed}: no faults");
            assert!(plan.faults.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        }
        let a = Plan::from_seed(1, &overrides);
        let b = Plan::from_seed(2, &overrides);
        assert_ne!(a.faults, b.faults);
    }

    #[test]
    fn overrides_win() {
        let overrides = Overrides {
            servers: Some(5),
            store: Some(StoreChoice::Embedded),
            duration_ms: Some(3_000),
            ..Overrides::default()
        };
        let plan = Plan::from_seed(9, &overrides);
        assert_eq!((plan.servers, plan.store), (5, StoreChoice::Embedded));
        assert!(plan.faults.iter().all(|f| f.at_ms + 1_000 < 3_000));
        assert!(
            plan.faults
                .iter()
                .all(|f| !matches!(f.fault, Fault::StoreStepDown { .. } | Fault::StoreRestart))
        );
    }
}
