//! The election on a simulated network: seeded randomness, logical time, and faults
//! (drop, delay, partition, crash, pause, restart), in the manner of raft-rs's test harness.
//!
//! The simulated store hands out terms like the real one, and a serving coordinator whose term
//! is no longer current is told so (as its next commit would be), so fencing is part of the
//! model.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Config, Envelope, Node, NodeInfo, Output};
use bully_client::Role;

const STEP: u64 = 5;
const CLAIM_DELAY: u64 = 10;
const DRAIN_DELAY: u64 = 15;

struct SimNode {
    node: Node,
    crashed: bool,
    paused: bool,
    exited: bool,
    claim_at: Option<u64>,
    drained_at: Option<u64>,
}

impl SimNode {
    fn running(&self) -> bool {
        !self.crashed && !self.paused && !self.exited
    }
}

struct Flight {
    at: u64,
    to: String,
    envelope: Envelope,
}

struct Sim {
    now: u64,
    rng: StdRng,
    config: Config,
    nodes: BTreeMap<String, SimNode>,
    flights: Vec<Flight>,
    /// Directed links that drop everything.
    cut: BTreeSet<(String, String)>,
    /// Servers that cannot reach the store: their claims and commits do not get through.
    store_cut: BTreeSet<String>,
    drop_rate: f64,
    max_delay: u64,
    store_term: u64,
    /// Holder of each term, as the store recorded it.
    holders: BTreeMap<u64, String>,
    /// Instants at which two servers were serving at once.
    overlaps: Vec<u64>,
}

fn addr(i: usize) -> String {
    format!("10.0.0.{i}:7071")
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let mut sim = Sim {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            config: Config::new(100, 800),
            nodes: BTreeMap::new(),
            flights: Vec::new(),
            cut: BTreeSet::new(),
            store_cut: BTreeSet::new(),
            drop_rate: 0.0,
            max_delay: 5,
            store_term: 0,
            holders: BTreeMap::new(),
            overlaps: Vec::new(),
        };
        for i in 0..n {
            sim.start(&addr(i));
        }
        sim
    }

    /// Starts (or restarts) the server at `a` with a fresh random rank.
    fn start(&mut self, a: &str) {
        let rank = self.rng.random::<u64>();
        self.start_with_rank(a, rank);
    }

    fn start_with_rank(&mut self, a: &str, rank: u64) {
        let info = NodeInfo {
            rank,
            peer_addr: a.to_string(),
            client_addr: a.replace(":7071", ":7070"),
        };
        let mut node = Node::new(info, self.config, self.now);
        let all: Vec<String> = (0..16).map(addr).collect();
        node.set_peers(all, self.now);
        self.nodes.insert(
            a.to_string(),
            SimNode {
                node,
                crashed: false,
                paused: false,
                exited: false,
                claim_at: None,
                drained_at: None,
            },
        );
    }

    fn crash(&mut self, a: &str) {
        self.nodes.get_mut(a).unwrap().crashed = true;
    }

    fn pause(&mut self, a: &str, paused: bool) {
        self.nodes.get_mut(a).unwrap().paused = paused;
    }

    /// Cuts `a` off from its peers and from the store.
    fn isolate(&mut self, a: &str) {
        self.isolate_from_peers(a);
        self.store_cut.insert(a.to_string());
    }

    /// Cuts `a` off from its peers only: it can still claim terms.
    fn isolate_from_peers(&mut self, a: &str) {
        let others: Vec<String> = self.nodes.keys().filter(|k| *k != a).cloned().collect();
        for other in others {
            self.cut.insert((a.to_string(), other.clone()));
            self.cut.insert((other, a.to_string()));
        }
    }

    fn partition(&mut self, side: &[String]) {
        let all: Vec<String> = self.nodes.keys().cloned().collect();
        for a in &all {
            for b in &all {
                if side.contains(a) != side.contains(b) {
                    self.cut.insert((a.clone(), b.clone()));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.store_cut.clear();
    }

    fn shutdown(&mut self, a: &str) {
        let now = self.now;
        let outputs = self.nodes.get_mut(a).unwrap().node.shutdown(now);
        self.handle(a, outputs);
    }

    fn handle(&mut self, from: &str, outputs: Vec<Output>) {
        let now = self.now;
        for output in outputs {
            match output {
                Output::Send { to, message } => {
                    if self.cut.contains(&(from.to_string(), to.clone()))
                        || self.rng.random_bool(self.drop_rate)
                    {
                        continue;
                    }
                    let delay = self.rng.random_range(1..=self.max_delay);
                    let envelope = Envelope {
                        from: self.nodes[from].node.me().clone(),
                        message,
                    };
                    self.flights.push(Flight {
                        at: now + delay,
                        to,
                        envelope,
                    });
                }
                Output::Drain => {
                    self.nodes.get_mut(from).unwrap().drained_at = Some(now + DRAIN_DELAY)
                }
                Output::Exit => self.nodes.get_mut(from).unwrap().exited = true,
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        let (due, later): (Vec<Flight>, Vec<Flight>) = std::mem::take(&mut self.flights)
            .into_iter()
            .partition(|f| f.at <= now);
        self.flights = later;
        for flight in due {
            let Some(target) = self.nodes.get_mut(&flight.to) else {
                continue;
            };
            if !target.running() {
                continue;
            }
            let outputs = target.node.step(flight.envelope, now);
            let to = flight.to.clone();
            self.handle(&to, outputs);
        }
        let addrs: Vec<String> = self.nodes.keys().cloned().collect();
        for a in &addrs {
            if !self.nodes[a].running() {
                continue;
            }
            // The executor: claim a term once coordinator, drain when asked, and learn of
            // fencing on the next commit.
            let mut outputs = Vec::new();
            let store_term = self.store_term;
            let reaches_store = !self.store_cut.contains(a);
            let sim_node = self.nodes.get_mut(a).unwrap();
            if !reaches_store {
                // Claims and commits time out; the server learns nothing from the store.
            } else if sim_node.node.role() == Role::Coordinator && sim_node.node.term().is_none() {
                match sim_node.claim_at {
                    None => sim_node.claim_at = Some(now + CLAIM_DELAY),
                    Some(at) if at <= now => {
                        sim_node.claim_at = None;
                        self.store_term += 1;
                        self.holders.insert(self.store_term, a.clone());
                        let term = self.store_term;
                        outputs.extend(self.nodes.get_mut(a).unwrap().node.claimed(term, now));
                    }
                    _ => {}
                }
            } else {
                sim_node.claim_at = None;
                if sim_node.node.is_serving() && sim_node.node.term() < Some(store_term) {
                    sim_node.node.fenced(now);
                }
            }
            let sim_node = self.nodes.get_mut(a).unwrap();
            if sim_node.drained_at.is_some_and(|at| at <= now) {
                sim_node.drained_at = None;
                outputs.extend(sim_node.node.drained(now));
            }
            outputs.extend(self.nodes.get_mut(a).unwrap().node.tick(now));
            self.handle(a, outputs);
        }
        // Serving = coordinator with the store's current term: the only one that can commit.
        let serving = self
            .nodes
            .values()
            .filter(|n| {
                n.running() && n.node.is_serving() && n.node.term() == Some(self.store_term)
            })
            .count();
        if serving > 1 {
            self.overlaps.push(now);
        }
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// The server every running server agrees on, if they agree and it is the highest-ranked
    /// running one and it holds the current term.
    fn agreed(&self) -> Option<String> {
        let running: Vec<(&String, &SimNode)> =
            self.nodes.iter().filter(|(_, n)| n.running()).collect();
        let (best, _) = running.iter().max_by_key(|(_, n)| n.node.me().rank)?;
        let best_node = &self.nodes[*best].node;
        if !best_node.is_serving() || best_node.term() != Some(self.store_term) {
            return None;
        }
        let coordinators = running
            .iter()
            .filter(|(_, n)| n.node.role() == Role::Coordinator);
        if coordinators.count() != 1 {
            return None;
        }
        for (_, n) in &running {
            match n.node.coordinator(self.now) {
                Some((info, Some(term))) if &info.peer_addr == *best && term == self.store_term => {
                }
                _ => return None,
            }
        }
        Some((*best).clone())
    }

    /// Runs until agreement; returns how long it took, or panics after `limit` ms.
    fn converge(&mut self, limit: u64, what: &str) -> u64 {
        let start = self.now;
        while self.now - start <= limit {
            if self.agreed().is_some() {
                return self.now - start;
            }
            self.step();
        }
        let views: Vec<String> = self
            .nodes
            .iter()
            .map(|(a, n)| {
                format!(
                    "{a} rank={} role={} term={:?} running={} coordinator={:?}",
                    n.node.me().rank,
                    n.node.role(),
                    n.node.term(),
                    n.running(),
                    n.node.coordinator(self.now).map(|(i, t)| (i.peer_addr, t)),
                )
            })
            .collect();
        panic!(
            "{what}: no agreement after {limit} ms (store term {}):\n{}",
            self.store_term,
            views.join("\n")
        );
    }

    fn coordinator(&self) -> String {
        self.agreed().expect("agreed coordinator")
    }

    /// Some server other than `coordinator`.
    fn follower_of(&self, coordinator: &str) -> String {
        self.nodes
            .keys()
            .find(|a| *a != coordinator)
            .expect("a second server")
            .clone()
    }

    fn highest_running(&self) -> String {
        self.nodes
            .iter()
            .filter(|(_, n)| n.running())
            .max_by_key(|(_, n)| n.node.me().rank)
            .map(|(a, _)| a.clone())
            .unwrap()
    }
}

/// A generous bound for one failover: detection plus a few election rounds.
const FAILOVER: u64 = 800 * 4;
const SEEDS: u64 = 20;

#[test]
fn a_single_winner_the_highest_rank() {
    for n in [1, 2, 3, 5, 7] {
        for seed in 0..SEEDS {
            let mut sim = Sim::new(seed, n);
            sim.converge(FAILOVER, &format!("n={n} seed={seed}"));
            assert_eq!(sim.coordinator(), sim.highest_running());
            // Stays put: no spurious elections on a healthy network.
            let term = sim.store_term;
            sim.run_for(5_000);
            assert_eq!(
                sim.store_term, term,
                "n={n} seed={seed}: term changed while healthy"
            );
            assert!(sim.overlaps.is_empty());
        }
    }
}

#[test]
fn reelection_after_the_coordinator_crashes() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5);
        sim.converge(FAILOVER, "start");
        let mut crashed = Vec::new();
        for round in 0..3 {
            let old = sim.coordinator();
            let old_term = sim.store_term;
            sim.crash(&old);
            crashed.push(old.clone());
            sim.converge(FAILOVER, &format!("seed={seed} round={round}"));
            let new = sim.coordinator();
            assert_ne!(new, old);
            assert_eq!(new, sim.highest_running());
            assert!(sim.store_term > old_term);
        }
        assert!(sim.overlaps.is_empty(), "seed={seed}: {:?}", sim.overlaps);
    }
}

#[test]
fn a_crashed_follower_changes_nothing() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 3);
        sim.converge(FAILOVER, "start");
        let coordinator = sim.coordinator();
        let term = sim.store_term;
        let follower = sim.follower_of(&coordinator);
        sim.crash(&follower);
        sim.run_for(3_000);
        assert_eq!(sim.coordinator(), coordinator);
        assert_eq!(sim.store_term, term);
    }
}

#[test]
fn an_isolated_coordinator_is_replaced_and_rejoins_after_heal() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5);
        sim.converge(FAILOVER, "start");
        let old = sim.coordinator();
        sim.isolate(&old);
        // The rest elect a new coordinator; the isolated one cannot commit (the store is out of
        // its reach, and by the time it is back its term is stale).
        sim.run_for(FAILOVER);
        let serving: Vec<&String> = sim
            .nodes
            .iter()
            .filter(|(_, n)| n.node.is_serving() && n.node.term() == Some(sim.store_term))
            .map(|(a, _)| a)
            .collect();
        assert_eq!(serving.len(), 1, "seed={seed}");
        assert_ne!(
            serving[0], &old,
            "seed={seed}: the isolated coordinator still serves"
        );
        sim.heal();
        sim.converge(FAILOVER * 2, &format!("seed={seed} heal"));
        // The old coordinator has the highest rank, so it takes over again, under a new term.
        assert_eq!(sim.coordinator(), old);
        assert_eq!(sim.holders[&sim.store_term], old);
    }
}

#[test]
fn partition_then_heal_converges_to_one_coordinator() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 6);
        sim.converge(FAILOVER, "start");
        let side: Vec<String> = (0..3).map(addr).collect();
        sim.partition(&side);
        sim.run_for(FAILOVER);
        sim.heal();
        sim.converge(FAILOVER * 2, &format!("seed={seed}"));
        assert_eq!(sim.coordinator(), sim.highest_running());
    }
}

#[test]
fn a_paused_coordinator_steps_down_when_it_resumes() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 3);
        sim.converge(FAILOVER, "start");
        let old = sim.coordinator();
        let old_term = sim.store_term;
        sim.pause(&old, true);
        sim.run_for(FAILOVER);
        assert!(sim.store_term > old_term, "seed={seed}: nobody took over");
        let interim = sim.holders[&sim.store_term].clone();
        assert_ne!(interim, old);
        sim.pause(&old, false);
        // On resume it sees the newer term and stops serving before anything else happens.
        sim.step();
        sim.step();
        let resumed = &sim.nodes[&old].node;
        assert!(
            !(resumed.is_serving() && resumed.term() == Some(old_term)),
            "seed={seed}"
        );
        sim.converge(FAILOVER * 2, &format!("seed={seed}"));
        assert_eq!(
            sim.coordinator(),
            old,
            "the highest rank takes over again, gracefully"
        );
    }
}

#[test]
fn converges_despite_message_loss_and_delay() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5);
        sim.drop_rate = 0.2;
        sim.max_delay = 60;
        sim.converge(FAILOVER * 3, &format!("seed={seed} start"));
        let old = sim.coordinator();
        sim.crash(&old);
        sim.converge(FAILOVER * 3, &format!("seed={seed} after crash"));
    }
}

#[test]
fn flapping_peers_settle() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5);
        sim.converge(FAILOVER, "start");
        let flapper = addr(4);
        for _ in 0..10 {
            sim.crash(&flapper);
            sim.run_for(150);
            sim.start(&flapper);
            sim.run_for(250);
        }
        sim.converge(FAILOVER * 3, &format!("seed={seed}"));
        assert_eq!(sim.coordinator(), sim.highest_running());
    }
}

#[test]
fn a_higher_ranked_joiner_takes_over_without_overlap() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 3);
        sim.converge(FAILOVER, "start");
        let old = sim.coordinator();
        let top = sim.nodes.values().map(|n| n.node.me().rank).max().unwrap();
        sim.start_with_rank(&addr(3), top.saturating_add(1).max(top));
        sim.converge(FAILOVER, &format!("seed={seed}"));
        assert_eq!(sim.coordinator(), addr(3));
        assert_ne!(old, addr(3));
        // Handoff, not overthrow: never two servers able to commit at once.
        assert!(
            sim.overlaps.is_empty(),
            "seed={seed}: overlap at {:?}",
            sim.overlaps
        );
        // And the old coordinator was never fenced out of the middle of its work: it drained.
        assert_eq!(sim.nodes[&old].node.role(), Role::Follower);
    }
}

#[test]
fn graceful_shutdown_hands_over_to_the_next_highest() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 4);
        sim.converge(FAILOVER, "start");
        let old = sim.coordinator();
        sim.shutdown(&old);
        let mut gap = 0;
        let deadline = sim.now + FAILOVER;
        while sim.now < deadline && sim.agreed().is_none() {
            sim.step();
            gap += STEP;
        }
        assert!(sim.nodes[&old].exited, "seed={seed}: did not exit");
        assert_eq!(sim.coordinator(), sim.highest_running());
        assert!(sim.overlaps.is_empty());
        // The successor is told directly instead of waiting for the failure timeout.
        assert!(gap < 800, "seed={seed}: handover took {gap} ms");
    }
}

#[test]
fn a_follower_shutting_down_leaves_at_once() {
    let mut sim = Sim::new(7, 3);
    sim.converge(FAILOVER, "start");
    let coordinator = sim.coordinator();
    let follower = sim.follower_of(&coordinator);
    let term = sim.store_term;
    sim.shutdown(&follower);
    assert!(sim.nodes[&follower].exited);
    sim.run_for(2_000);
    assert_eq!(sim.coordinator(), coordinator);
    assert_eq!(sim.store_term, term);
}

#[test]
fn a_server_cut_from_peers_but_not_the_store_stops_flapping() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 3);
        sim.converge(FAILOVER, "start");
        let old = sim.coordinator();
        sim.isolate_from_peers(&old);
        // Both sides can claim terms; the store keeps it safe (never two able to commit), and
        // the backoff after each fencing makes the term change hands less and less often.
        let start_term = sim.store_term;
        sim.run_for(20_000);
        let early = sim.store_term - start_term;
        sim.run_for(20_000);
        let late = sim.store_term - start_term - early;
        assert!(sim.overlaps.is_empty(), "seed={seed}");
        assert!(
            late <= early,
            "seed={seed}: {early} term changes, then {late}"
        );
        assert!(
            late <= 6,
            "seed={seed}: still flapping: {late} term changes in 20 s"
        );
        sim.heal();
        sim.converge(FAILOVER * 4, &format!("seed={seed} heal"));
    }
}

#[test]
fn a_new_server_waits_for_discovery_before_electing() {
    let me = NodeInfo {
        rank: 1,
        peer_addr: addr(0),
        client_addr: "c".into(),
    };
    let config = Config::new(100, 800);
    // No peers reported yet: no election (it would win alone), until the timeout.
    let mut waiting = Node::new(me.clone(), config, 0);
    waiting.tick(100);
    assert_eq!(waiting.elections(), 0);
    waiting.tick(800);
    assert_eq!(waiting.elections(), 1);
    // Peers reported: it elects at once, asking them first.
    let mut found = Node::new(me, config, 0);
    found.set_peers([addr(1)], 0);
    let out = found.tick(10);
    assert_eq!(found.elections(), 1);
    assert!(out.contains(&Output::Send {
        to: addr(1),
        message: super::Message::Election
    }));
    assert_eq!(found.role(), Role::Candidate);
}
