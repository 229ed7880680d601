//! The election on a simulated network: seeded randomness, logical time, and faults
//! (drop, delay, partition, crash, pause, restart), in the manner of raft-rs's test harness.
//!
//! The simulation carries out the state machine's outputs and nothing else: it delivers
//! messages, answers [`Output::ClaimTerm`] from a simulated store that hands out terms like the
//! real one, and runs a simulated executor per server that starts on [`Output::Serve`], stops
//! on [`Output::StopServing`] or at the end of a drain, and — while the workload is on —
//! commits a command every step, which the store refuses (and reports as fenced) unless the
//! term is current. No rule of the election lives here.
//!
//! What it records for the scenarios to check:
//! - `overlaps`: instants at which two servers' executors ran at once (a paused process counts:
//!   it still believes it serves). A clean handoff, a crash or a healthy network must never
//!   produce one; a pause or a partition may, which is what fencing is for.
//! - `commits`, and per server the drains it finished, the handoffs it received and the times
//!   it was fenced, to tell a clean handoff from a forced takeover.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Config, Envelope, Message, Node, NodeInfo, Output};
use crate::timings::Timings;
use bully_client::Role;

pub const STEP: u64 = 5;
const CLAIM_DELAY: u64 = 10;
/// A drain answers the commands still queued: long next to a claim, as a real queue can be.
const DRAIN_DELAY: u64 = 40;
/// How often servers repeat their DNS lookup (`--peer-dns-interval` is 2 s; faster here keeps
/// joiner scenarios short).
const DNS_INTERVAL: u64 = 250;

pub struct SimNode {
    pub node: Node,
    pub crashed: bool,
    pub paused: bool,
    pub exited: bool,
    claim_at: Option<u64>,
    /// The holder the claim in flight may break.
    claim_breaks: Option<String>,
    drained_at: Option<u64>,
    /// When its executor last renewed its lease (committing renews it too).
    renewed_at: u64,
    /// When DNS starts to list this server, and when this server next asks DNS.
    listed_at: u64,
    resolve_at: u64,
    /// The simulated executor: the term it runs under.
    pub executing: Option<u64>,
    pub drains: usize,
    pub handoffs_received: usize,
    pub fenced: usize,
}

impl SimNode {
    pub fn running(&self) -> bool {
        !self.crashed && !self.paused && !self.exited
    }

    /// Alive, if perhaps paused: it still believes what it believed.
    fn alive(&self) -> bool {
        !self.crashed && !self.exited
    }
}

struct Flight {
    at: u64,
    to: String,
    envelope: Envelope,
}

/// A refused connection, reported to the sender: the target's process is gone (crashed or
/// exited), though its host is reachable.
struct Refusal {
    at: u64,
    sender: String,
    target: String,
}

pub struct Sim {
    pub now: u64,
    rng: StdRng,
    config: Config,
    pub nodes: BTreeMap<String, SimNode>,
    flights: Vec<Flight>,
    refusals: Vec<Refusal>,
    /// Messages sent, by kind (`heartbeat`, `election`, ...).
    pub sent: BTreeMap<&'static str, u64>,
    /// Directed links that drop everything.
    cut: BTreeSet<(String, String)>,
    /// Servers that cannot reach the store: their claims and commits do not get through.
    store_cut: BTreeSet<String>,
    pub drop_rate: f64,
    pub max_delay: u64,
    /// Every serving executor commits one command per step.
    pub workload: bool,
    /// A crashed server's host refuses connections to its ports (a process died); otherwise
    /// messages to it vanish (a host or pod gone).
    pub crash_refuses: bool,
    pub store_term: u64,
    /// Holder of each term, as the store recorded it.
    pub holders: BTreeMap<u64, String>,
    /// The current holder's lease: renewed at `lease_at`, running `lease_ms` (0: released).
    lease_at: u64,
    lease_ms: u64,
    /// Claims the store refused because a lease held.
    pub refused_claims: u64,
    /// The store keeps leases (off: every claim goes through, as before leases).
    pub leases: bool,
    /// (instant, server, term) of every commit the store accepted.
    pub commits: Vec<(u64, String, u64)>,
    /// Instants at which two servers' executors ran at once.
    pub overlaps: Vec<u64>,
    /// DNS lists a server this long after it starts (cluster DNS caches lag).
    pub dns_lag: u64,
    /// The number of servers each node is told to expect (0: unknown).
    pub expected_servers: usize,
    /// Rules broken on purpose in every node started from now on.
    pub broken: super::node::Broken,
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Heartbeat { .. } => "heartbeat",
        Message::Election => "election",
        Message::Answer => "answer",
        Message::Coordinator { .. } => "coordinator",
        Message::Takeover => "takeover",
        Message::Handoff => "handoff",
        Message::Leaving => "leaving",
    }
}

pub fn addr(i: usize) -> String {
    format!("10.0.0.{i}:7071")
}

impl Sim {
    pub fn new(seed: u64, n: usize) -> Sim {
        let mut sim = Sim::empty(seed);
        for i in 0..n {
            sim.start(&addr(i));
        }
        sim
    }

    /// A simulation with no server started yet.
    pub fn empty(seed: u64) -> Sim {
        Sim {
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            config: Config::new(&Timings::defaults(), 0),
            nodes: BTreeMap::new(),
            flights: Vec::new(),
            refusals: Vec::new(),
            sent: BTreeMap::new(),
            cut: BTreeSet::new(),
            store_cut: BTreeSet::new(),
            drop_rate: 0.0,
            max_delay: 5,
            workload: true,
            crash_refuses: true,
            store_term: 0,
            holders: BTreeMap::new(),
            lease_at: 0,
            lease_ms: 0,
            refused_claims: 0,
            leases: true,
            commits: Vec::new(),
            overlaps: Vec::new(),
            dns_lag: 0,
            expected_servers: 0,
            broken: Default::default(),
        }
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// Starts (or restarts) the server at `a` with a fresh random rank.
    pub fn start(&mut self, a: &str) {
        let rank = self.rng.random::<u64>();
        self.start_with_rank(a, rank);
    }

    pub fn start_with_rank(&mut self, a: &str, rank: u64) {
        let info = NodeInfo {
            rank,
            peer_addr: a.to_string(),
            client_addr: a.replace(":7071", ":7070"),
        };
        let config = Config {
            expected_servers: self.expected_servers,
            ..self.config
        };
        let mut node = Node::new(info, config, self.now);
        node.broken = self.broken;
        // DNS keeps listing a restarted server's address (a pod keeps its name).
        let listed_at = self
            .nodes
            .get(a)
            .map_or(self.now + self.dns_lag, |old| old.listed_at);
        self.nodes.insert(
            a.to_string(),
            SimNode {
                node,
                crashed: false,
                paused: false,
                exited: false,
                claim_at: None,
                claim_breaks: None,
                drained_at: None,
                renewed_at: 0,
                listed_at,
                // The first lookup answers after a moment; later ones every DNS_INTERVAL.
                resolve_at: self.now + STEP,
                executing: None,
                drains: 0,
                handoffs_received: 0,
                fenced: 0,
            },
        );
    }

    pub fn crash(&mut self, a: &str) {
        let n = self.nodes.get_mut(a).unwrap();
        n.crashed = true;
        n.executing = None;
    }

    pub fn pause(&mut self, a: &str, paused: bool) {
        self.nodes.get_mut(a).unwrap().paused = paused;
    }

    /// Cuts `a` off from its peers and from the store.
    pub fn isolate(&mut self, a: &str) {
        self.isolate_from_peers(a);
        self.store_cut.insert(a.to_string());
    }

    /// Cuts `a` off from its peers only: it can still claim terms.
    pub fn isolate_from_peers(&mut self, a: &str) {
        let others: Vec<String> = self.nodes.keys().filter(|k| *k != a).cloned().collect();
        for other in others {
            self.cut.insert((a.to_string(), other.clone()));
            self.cut.insert((other, a.to_string()));
        }
    }

    pub fn partition(&mut self, side: &[String]) {
        let all: Vec<String> = self.nodes.keys().cloned().collect();
        for a in &all {
            for b in &all {
                if side.contains(a) != side.contains(b) {
                    self.cut.insert((a.clone(), b.clone()));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.store_cut.clear();
    }

    pub fn shutdown(&mut self, a: &str) {
        let now = self.now;
        let outputs = self.nodes.get_mut(a).unwrap().node.shutdown(now);
        self.handle(a, outputs);
    }

    /// Carries out a node's outputs.
    fn handle(&mut self, from: &str, outputs: Vec<Output>) {
        let now = self.now;
        for output in outputs {
            let sim_node = self.nodes.get_mut(from).unwrap();
            match output {
                Output::Send { to, message } => {
                    *self.sent.entry(kind(&message)).or_default() += 1;
                    if self.cut.contains(&(from.to_string(), to.clone()))
                        || self.rng.random_bool(self.drop_rate)
                    {
                        continue;
                    }
                    let delay = self.rng.random_range(1..=self.max_delay);
                    let gone = self
                        .nodes
                        .get(&to)
                        .is_some_and(|n| (n.crashed && self.crash_refuses) || n.exited);
                    if gone {
                        self.refusals.push(Refusal {
                            at: now + delay,
                            sender: from.to_string(),
                            target: to,
                        });
                        continue;
                    }
                    let sim_node = self.nodes.get_mut(from).unwrap();
                    let envelope = Envelope {
                        from: sim_node.node.me().clone(),
                        message,
                    };
                    self.flights.push(Flight {
                        at: now + delay,
                        to,
                        envelope,
                    });
                }
                Output::ClaimTerm { break_holder } => {
                    sim_node.claim_at = Some(now + CLAIM_DELAY);
                    sim_node.claim_breaks = break_holder;
                }
                Output::Serve(term) => sim_node.executing = Some(term),
                Output::StopServing => sim_node.executing = None,
                Output::Drain => sim_node.drained_at = Some(now + DRAIN_DELAY),
                Output::Exit => {
                    sim_node.exited = true;
                    sim_node.executing = None;
                }
            }
        }
    }

    pub fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        let (due, later): (Vec<Flight>, Vec<Flight>) = std::mem::take(&mut self.flights)
            .into_iter()
            .partition(|f| f.at <= now);
        self.flights = later;
        let (refused, later): (Vec<Refusal>, Vec<Refusal>) = std::mem::take(&mut self.refusals)
            .into_iter()
            .partition(|r| r.at <= now);
        self.refusals = later;
        for refusal in refused {
            let Some(sender) = self.nodes.get_mut(&refusal.sender) else {
                continue;
            };
            if sender.running() {
                let outputs = sender.node.unreachable(&refusal.target, now);
                self.handle(&refusal.sender, outputs);
            }
        }
        for flight in due {
            let Some(target) = self.nodes.get_mut(&flight.to) else {
                continue;
            };
            if !target.running() {
                continue;
            }
            if flight.envelope.message == Message::Handoff {
                target.handoffs_received += 1;
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
            let mut outputs = Vec::new();
            let reaches_store = !self.store_cut.contains(a);
            // Discovery: DNS lists every server (dead ones too) once its lag is over.
            if self.nodes[a].resolve_at <= now {
                let listed: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.listed_at <= now)
                    .map(|(b, _)| b.clone())
                    .collect();
                let sim_node = self.nodes.get_mut(a).unwrap();
                sim_node.resolve_at = now + DNS_INTERVAL;
                outputs.extend(sim_node.node.set_peers(listed, now));
            }
            let sim_node = self.nodes.get_mut(a).unwrap();
            // The store: a claim in flight completes (unless the store is out of reach, when
            // it never answers, as a claim that times out).
            if let Some(at) = sim_node.claim_at
                && at <= now
                && reaches_store
            {
                sim_node.claim_at = None;
                let breaks = sim_node.claim_breaks.take();
                // The store's lease rule: the current holder's lease stands unless it ran out,
                // was released, is the claimer's own, or the claimer knows the holder dead.
                let holder = self.holders.get(&self.store_term).cloned();
                let remaining = (self.lease_at + self.lease_ms).saturating_sub(now);
                let holder_name = holder
                    .as_ref()
                    .and_then(|h| self.nodes.get(h))
                    .map(|n| n.node.me().holder());
                if self.leases
                    && remaining > 0
                    && holder.as_ref() != Some(a)
                    && breaks.is_none_or(|b| Some(b) != holder_name)
                {
                    self.refused_claims += 1;
                    let sim_node = self.nodes.get_mut(a).unwrap();
                    outputs.extend(sim_node.node.claim_refused(remaining, now));
                } else {
                    self.store_term += 1;
                    self.holders.insert(self.store_term, a.clone());
                    self.lease_at = now;
                    self.lease_ms = self.config.heartbeat_timeout;
                    let term = self.store_term;
                    outputs.extend(self.nodes.get_mut(a).unwrap().node.claimed(term, now));
                }
            }
            // The executor: a drain finishes; a serving executor commits.
            let sim_node = self.nodes.get_mut(a).unwrap();
            if sim_node.drained_at.is_some_and(|at| at <= now) {
                let drained_term = sim_node.executing.take();
                sim_node.drained_at = None;
                sim_node.drains += 1;
                outputs.extend(sim_node.node.drained(now));
                // The executor releases its lease once drained.
                if reaches_store && drained_term == Some(self.store_term) {
                    self.lease_ms = 0;
                }
            }
            // An executor serving the current term renews its lease: by committing, or every
            // quarter of the lease when idle.
            if reaches_store
                && self.nodes[a].executing == Some(self.store_term)
                && (self.workload
                    || now >= self.nodes[a].renewed_at + self.config.heartbeat_timeout / 4)
            {
                self.nodes.get_mut(a).unwrap().renewed_at = now;
                self.lease_at = now;
            }
            if self.workload
                && reaches_store
                && let Some(term) = self.nodes[a].executing
            {
                if term == self.store_term {
                    self.commits.push((now, a.clone(), term));
                } else {
                    let sim_node = self.nodes.get_mut(a).unwrap();
                    sim_node.executing = None;
                    sim_node.fenced += 1;
                    outputs.extend(sim_node.node.fenced(now));
                }
            }
            outputs.extend(self.nodes.get_mut(a).unwrap().node.tick(now));
            self.handle(a, outputs);
        }
        let executing = self
            .nodes
            .values()
            .filter(|n| n.alive() && n.executing.is_some())
            .count();
        if executing > 1 {
            self.overlaps.push(now);
        }
    }

    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// The server every running server agrees on, if they agree and it is the highest-ranked
    /// running one and it holds the current term.
    pub fn agreed(&self) -> Option<String> {
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
    pub fn converge(&mut self, limit: u64, what: &str) -> u64 {
        match self.try_converge(limit) {
            Some(took) => took,
            None => panic!(
                "{what}: no agreement after {limit} ms (store term {}):\n{}",
                self.store_term,
                self.describe()
            ),
        }
    }

    /// Runs until agreement, for at most `limit` ms.
    pub fn try_converge(&mut self, limit: u64) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit {
            if self.agreed().is_some() {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    pub fn describe(&self) -> String {
        let views: Vec<String> = self
            .nodes
            .iter()
            .map(|(a, n)| {
                format!(
                    "{a} rank={} role={} term={:?} executing={:?} running={} coordinator={:?}",
                    n.node.me().rank,
                    n.node.role(),
                    n.node.term(),
                    n.executing,
                    n.running(),
                    n.node.coordinator(self.now).map(|(i, t)| (i.peer_addr, t)),
                )
            })
            .collect();
        views.join("\n")
    }

    pub fn coordinator(&self) -> String {
        self.agreed().expect("agreed coordinator")
    }

    /// Some server other than `coordinator`.
    pub fn follower_of(&self, coordinator: &str) -> String {
        self.nodes
            .keys()
            .find(|a| *a != coordinator)
            .expect("a second server")
            .clone()
    }

    pub fn highest_running(&self) -> String {
        self.nodes
            .iter()
            .filter(|(_, n)| n.running())
            .max_by_key(|(_, n)| n.node.me().rank)
            .map(|(a, _)| a.clone())
            .unwrap()
    }
}
