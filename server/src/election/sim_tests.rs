//! Election scenarios on the simulated network ([`super::sim`]), each over many seeds, and the
//! negative controls that show the checks catch a broken rule.

use bully_client::Role;

use super::sim::{STEP, Sim, addr};
use super::{Config, Message, Node, NodeInfo, Output};
use crate::timings::Timings;

/// A generous bound for one failover: detection plus a few election rounds.
const FAILOVER: u64 = 800 * 4;
const SEEDS: u64 = 20;

/// No two executors ran at once: the check for scenarios without pauses or partitions.
fn no_overlap(sim: &Sim, what: &str) -> Result<(), String> {
    match sim.overlaps.first() {
        None => Ok(()),
        Some(at) => Err(format!(
            "{what}: two servers executed at once at {at} ms ({} instants)",
            sim.overlaps.len()
        )),
    }
}

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
            no_overlap(&sim, &format!("n={n} seed={seed}")).unwrap();
            assert!(
                !sim.commits.is_empty(),
                "n={n} seed={seed}: nothing committed"
            );
        }
    }
}

#[test]
fn reelection_after_the_coordinator_crashes() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5);
        sim.converge(FAILOVER, "start");
        for round in 0..3 {
            let old = sim.coordinator();
            let old_term = sim.store_term;
            sim.crash(&old);
            sim.converge(FAILOVER, &format!("seed={seed} round={round}"));
            let new = sim.coordinator();
            assert_ne!(new, old);
            assert_eq!(new, sim.highest_running());
            assert!(sim.store_term > old_term);
        }
        no_overlap(&sim, &format!("seed={seed}")).unwrap();
    }
}

#[test]
fn a_coordinator_whose_port_refuses_is_replaced_before_the_timeout() {
    let timeout = Config::new(&Timings::defaults(), 0).heartbeat_timeout;
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5);
        sim.converge(FAILOVER, "start");
        let old = sim.coordinator();
        sim.crash(&old);
        let took = sim.converge(FAILOVER, &format!("seed={seed}"));
        assert!(
            took < timeout,
            "seed={seed}: {took} ms, no faster than the {timeout} ms timeout"
        );
        no_overlap(&sim, &format!("seed={seed}")).unwrap();
    }
    // Without the refusal (the host is gone, not just the process), the timeout it is.
    let mut sim = Sim::new(1, 5);
    sim.crash_refuses = false;
    sim.converge(FAILOVER, "start");
    let old = sim.coordinator();
    sim.crash(&old);
    let took = sim.converge(FAILOVER, "no refusal");
    assert!(took >= timeout, "{took} ms");
}

#[test]
fn an_election_after_a_crash_costs_about_three_messages_per_server() {
    for n in [5, 9, 25] {
        for seed in 0..5 {
            let mut sim = Sim::new(seed, n);
            sim.converge(FAILOVER, "start");
            let old = sim.coordinator();
            let before = sim.sent.clone();
            sim.crash(&old);
            sim.converge(FAILOVER, &format!("n={n} seed={seed}"));
            let election: u64 = sim
                .sent
                .iter()
                .filter(|(kind, _)| **kind != "heartbeat")
                .map(|(kind, count)| count - before.get(kind).copied().unwrap_or(0))
                .sum();
            assert!(
                election <= 3 * n as u64,
                "n={n} seed={seed}: {election} election messages: {:?} before {before:?}",
                sim.sent
            );
        }
    }
}

#[test]
fn steady_state_heartbeats_grow_linearly_with_the_cluster() {
    for n in [3, 9, 25] {
        let mut sim = Sim::new(7, n);
        sim.converge(FAILOVER, "start");
        sim.run_for(1_000);
        let before = sim.sent.get("heartbeat").copied().unwrap_or(0);
        let interval = sim.config().heartbeat_interval;
        sim.run_for(interval * 10);
        let per_interval = (sim.sent["heartbeat"] - before) / 10;
        // The coordinator to each follower and each follower to the coordinator.
        let linear = 2 * (n as u64 - 1);
        assert!(
            per_interval <= linear + 2,
            "n={n}: {per_interval} heartbeats per interval (2(N-1) = {linear})"
        );
        // And the followers still know every live peer, through the coordinator's list.
        let follower = sim.follower_of(&sim.coordinator());
        let live = sim.nodes[&follower]
            .node
            .peers(sim.now)
            .filter(|p| p.live)
            .count();
        assert_eq!(live, n - 1, "n={n}");
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
        no_overlap(&sim, &format!("seed={seed}")).unwrap();
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
        let new_term = sim.store_term;
        let new = sim.holders[&new_term].clone();
        assert_ne!(
            new, old,
            "seed={seed}: nobody replaced the isolated coordinator"
        );
        assert!(
            sim.nodes[&new].executing == Some(new_term),
            "seed={seed}: the new coordinator does not serve"
        );
        sim.heal();
        sim.converge(FAILOVER * 2, &format!("seed={seed} heal"));
        // The old coordinator has the highest rank, so it takes over again, under a new term.
        assert_eq!(sim.coordinator(), old);
        assert_eq!(sim.holders[&sim.store_term], old);
        // While isolated it could not commit: every commit of its old term came before the
        // new coordinator's first.
        let first_new = sim
            .commits
            .iter()
            .find(|(_, _, t)| *t == new_term)
            .map(|(at, _, _)| *at)
            .expect("the new coordinator committed");
        assert!(
            sim.commits
                .iter()
                .all(|(at, who, t)| *t >= new_term || *at < first_new || *who != old),
            "seed={seed}: the isolated coordinator committed after being replaced"
        );
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

/// Pauses the coordinator until another one took over, resumes it, and checks that it stops
/// executing within `bound` ms of resuming, by the state machine's own rules: with no
/// workload, nothing tells it but its peers' messages.
fn paused_coordinator_stops(seed: u64, workload: bool, broken: bool) -> Result<(), String> {
    let mut sim = Sim::new(seed, 3);
    sim.workload = workload;
    sim.broken.ignore_newer_terms = broken;
    for node in sim.nodes.values_mut() {
        node.node.broken.ignore_newer_terms = broken;
    }
    sim.converge(FAILOVER, "start");
    let old = sim.coordinator();
    let old_term = sim.store_term;
    sim.pause(&old, true);
    sim.run_for(FAILOVER);
    if sim.store_term <= old_term {
        return Err(format!("seed={seed}: nobody took over"));
    }
    let interim = sim.holders[&sim.store_term].clone();
    assert_ne!(interim, old);
    sim.pause(&old, false);
    // The interim coordinator's next heartbeat carries the newer term.
    let bound = sim.config().heartbeat_interval + sim.max_delay + 2 * STEP;
    let resumed = sim.now;
    while sim.now - resumed <= bound {
        sim.step();
    }
    if sim.nodes[&old].executing == Some(old_term) {
        return Err(format!(
            "seed={seed}: {bound} ms after resuming, the old coordinator still executes under \
             term {old_term}:\n{}",
            sim.describe()
        ));
    }
    if sim
        .commits
        .iter()
        .any(|(at, who, t)| *who == old && *t == old_term && *at > resumed)
    {
        return Err(format!("seed={seed}: the resumed coordinator committed"));
    }
    sim.converge(FAILOVER * 2, &format!("seed={seed}"));
    if sim.coordinator() != old {
        return Err(format!(
            "seed={seed}: the highest rank did not take over again"
        ));
    }
    Ok(())
}

#[test]
fn a_paused_coordinator_steps_down_when_it_resumes() {
    for seed in 0..SEEDS {
        paused_coordinator_stops(seed, false, false).unwrap();
        paused_coordinator_stops(seed, true, false).unwrap();
    }
}

#[test]
fn negative_control_a_coordinator_that_ignores_newer_terms_is_caught() {
    for seed in 0..SEEDS {
        let result = paused_coordinator_stops(seed, false, true);
        assert!(
            result.as_ref().is_err_and(|e| e.contains("still executes")),
            "seed={seed}: the broken rule went unnoticed: {result:?}"
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

/// A server outranking the coordinator joins; the handover must be clean: the old coordinator
/// drains (its executor stops) before the new one serves, hands off explicitly, and is never
/// fenced — a forced takeover (after `handoff_timeout`, or by a rule that does not wait)
/// shows up as an overlap or a fencing.
fn joiner_takes_over_cleanly(seed: u64, broken: bool) -> Result<(), String> {
    let mut sim = Sim::new(seed, 3);
    // The lease would mask the broken rule (the new coordinator's claim waits for the old one
    // to release it): the negative control shows the checks catch it without that guard.
    sim.leases = !broken;
    sim.converge(FAILOVER, "start");
    for node in sim.nodes.values_mut() {
        node.node.broken.handoff_before_drain = broken;
    }
    let old = sim.coordinator();
    let top = sim.nodes.values().map(|n| n.node.me().rank).max().unwrap();
    let joiner = addr(3);
    sim.start_with_rank(&joiner, top.saturating_add(1).max(top));
    let old_term = sim.store_term;
    sim.converge(FAILOVER, &format!("seed={seed}"));
    assert_eq!(sim.coordinator(), joiner);
    assert_ne!(old, joiner);
    no_overlap(&sim, &format!("seed={seed}"))?;
    let (old_node, new_node) = (&sim.nodes[&old], &sim.nodes[&joiner]);
    if old_node.drains != 1 || new_node.handoffs_received == 0 {
        return Err(format!(
            "seed={seed}: no explicit handoff (drains {}, handoffs received {})",
            old_node.drains, new_node.handoffs_received
        ));
    }
    if old_node.fenced > 0 {
        return Err(format!("seed={seed}: the old coordinator was fenced"));
    }
    if sim.store_term != old_term + 1 {
        return Err(format!(
            "seed={seed}: {} terms claimed for one handover",
            sim.store_term - old_term
        ));
    }
    assert_eq!(sim.nodes[&old].node.role(), Role::Follower);
    Ok(())
}

#[test]
fn a_higher_ranked_joiner_takes_over_without_overlap() {
    for seed in 0..SEEDS {
        joiner_takes_over_cleanly(seed, false).unwrap();
    }
}

#[test]
fn negative_control_a_handoff_before_the_drain_is_caught() {
    for seed in 0..SEEDS {
        let result = joiner_takes_over_cleanly(seed, true);
        assert!(
            result.is_err(),
            "seed={seed}: a handoff before the drain went unnoticed"
        );
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
        assert_eq!(sim.nodes[&old].drains, 1, "seed={seed}: no drain");
        assert_eq!(sim.coordinator(), sim.highest_running());
        no_overlap(&sim, &format!("seed={seed}")).unwrap();
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

/// A server cut off from every peer but not from the store: while the coordinator is alive
/// and serving, its lease keeps the cut-off server from taking the term — whether the cut-off
/// one is a follower (it would elect itself) or the coordinator (the others would elect a
/// new one). Nothing else changes: the coordinator's term stays, it keeps committing.
fn cut_from_peers_takes_no_term(seed: u64, cut_coordinator: bool, leases: bool) -> (u64, u64) {
    let mut sim = Sim::new(seed, 3);
    sim.leases = leases;
    sim.converge(FAILOVER, "start");
    let coordinator = sim.coordinator();
    let cut = if cut_coordinator {
        coordinator.clone()
    } else {
        // The highest-ranked follower, which would win an election among the others.
        sim.nodes
            .iter()
            .filter(|(a, _)| **a != coordinator)
            .max_by_key(|(_, n)| n.node.me().rank)
            .map(|(a, _)| a.clone())
            .unwrap()
    };
    let term = sim.store_term;
    sim.isolate_from_peers(&cut);
    let commits_before = sim.commits.len();
    sim.run_for(12_000);
    let extra_terms = sim.store_term - term;
    if leases {
        assert_eq!(
            sim.nodes[&coordinator].executing,
            Some(term),
            "seed={seed}: the coordinator stopped serving"
        );
        assert!(
            sim.commits[commits_before..]
                .iter()
                .all(|(_, who, t)| *who == coordinator && *t == term),
            "seed={seed}: someone else committed"
        );
        assert!(sim.commits.len() > commits_before + 1_000);
        no_overlap(&sim, &format!("seed={seed}")).unwrap();
    }
    sim.heal();
    sim.converge(FAILOVER * 4, &format!("seed={seed} heal"));
    (extra_terms, sim.refused_claims)
}

#[test]
fn a_server_cut_from_its_peers_but_not_the_store_never_takes_the_term() {
    for seed in 0..SEEDS {
        for cut_coordinator in [false, true] {
            let (extra, refused) = cut_from_peers_takes_no_term(seed, cut_coordinator, true);
            assert_eq!(extra, 0, "seed={seed} cut coordinator={cut_coordinator}");
            assert!(refused > 0, "seed={seed}: nobody even tried to claim");
        }
    }
    // Without leases the same partition changes the term: the scenario does provoke it.
    assert!((0..SEEDS).any(|seed| cut_from_peers_takes_no_term(seed, false, false).0 > 0));
}

#[test]
fn a_lone_survivor_becomes_the_coordinator() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 3);
        sim.converge(FAILOVER, "start");
        let survivor = sim.follower_of(&sim.coordinator());
        for a in sim.nodes.keys().cloned().collect::<Vec<_>>() {
            if a != survivor {
                sim.crash(&a);
            }
        }
        sim.converge(FAILOVER, &format!("seed={seed}"));
        assert_eq!(sim.coordinator(), survivor);
        // And with the hosts gone too (no refusal to break the lease), once it ran out.
        let mut sim = Sim::new(seed, 3);
        sim.crash_refuses = false;
        sim.converge(FAILOVER, "start");
        let survivor = sim.follower_of(&sim.coordinator());
        for a in sim.nodes.keys().cloned().collect::<Vec<_>>() {
            if a != survivor {
                sim.crash(&a);
            }
        }
        sim.converge(FAILOVER * 2, &format!("seed={seed} no refusal"));
        assert_eq!(sim.coordinator(), survivor);
    }
}

/// Servers of one cluster start a few hundred ms apart while DNS lists each only seconds after
/// it started (as cluster DNS caches do). Knowing how many servers to expect, they wait to
/// hear from each other and claim exactly one term between them.
fn fresh_start(seed: u64, expected: usize) -> u64 {
    let mut sim = Sim::empty(seed);
    sim.dns_lag = 2_000;
    sim.expected_servers = expected;
    for i in 0..3 {
        sim.start(&addr(i));
        sim.run_for(300);
    }
    sim.converge(10_000, &format!("seed={seed}"));
    sim.run_for(2_000);
    assert_eq!(sim.coordinator(), sim.highest_running());
    if expected > 0 {
        no_overlap(&sim, &format!("seed={seed}")).unwrap();
    }
    sim.store_term
}

#[test]
fn servers_started_together_claim_one_term() {
    for seed in 0..SEEDS {
        assert_eq!(fresh_start(seed, 3), 1, "seed={seed}");
    }
    // Without the expected count, the first server elects itself alone and later ones take
    // over: the scenario does show the race the rule prevents.
    assert!((0..SEEDS).any(|seed| fresh_start(seed, 0) > 1));
}

#[test]
fn a_lone_first_server_is_elected_after_the_grace() {
    for seed in 0..5 {
        let mut sim = Sim::empty(seed);
        sim.expected_servers = 3;
        sim.start(&addr(0));
        let grace = sim.config().startup_grace;
        let took = sim.converge(grace + FAILOVER, &format!("seed={seed}"));
        assert!(took >= grace, "seed={seed}: elected after {took} ms");
        assert_eq!(sim.store_term, 1);
        // The others then join it without a new term, unless they outrank it.
        sim.start_with_rank(&addr(1), 0);
        sim.converge(FAILOVER, &format!("seed={seed} join"));
        assert_eq!(sim.store_term, 1);
    }
}

#[test]
fn a_new_server_waits_for_discovery_before_electing() {
    let me = NodeInfo {
        rank: 1,
        peer_addr: addr(0),
        client_addr: "c".into(),
    };
    let config = Config::new(&Timings::defaults(), 0);
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
        message: Message::Election
    }));
    assert_eq!(found.role(), Role::Candidate);
}

#[test]
fn a_coordinator_claims_once_serves_with_its_term_and_retries_a_failed_claim() {
    let me = NodeInfo {
        rank: 1,
        peer_addr: addr(0),
        client_addr: "c".into(),
    };
    let config = Config::new(&Timings::defaults(), 1);
    let mut node = Node::new(me, config, 0);
    let out = node.tick(0);
    assert_eq!(node.role(), Role::Coordinator);
    let claim = Output::ClaimTerm { break_holder: None };
    assert_eq!(out.iter().filter(|o| **o == claim).count(), 1);
    // No second claim while one is in flight.
    assert!(!node.tick(50).contains(&claim));
    // A failed claim is retried after `claim_retry`, not before.
    assert!(!node.claim_failed(60).contains(&claim));
    assert!(!node.tick(60 + config.claim_retry - 1).contains(&claim));
    assert!(node.tick(60 + config.claim_retry).contains(&claim));
    // With a term, it serves; fenced, it stops.
    let out = node.claimed(7, 300);
    assert!(out.contains(&Output::Serve(7)), "{out:?}");
    assert_eq!(node.executing(), Some(7));
    let out = node.fenced(400);
    assert!(out.contains(&Output::StopServing), "{out:?}");
    assert_eq!(node.executing(), None);
}
