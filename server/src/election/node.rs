//! One server's election state: the rules of [`super`] as a state machine.

use std::collections::BTreeMap;

use bully_client::Role;

use super::{Config, Envelope, Member, Message, NodeInfo, Output};

#[derive(Clone, Debug, Default)]
struct Peer {
    info: Option<NodeInfo>,
    /// Last time a message came from it.
    last_heard: Option<u64>,
    /// Last time the coordinator heard from it, as the coordinator's heartbeat says.
    vouched: Option<u64>,
    /// Last time its port refused a connection: dead for certain, until heard again.
    refused: Option<u64>,
    /// Role and term as it last said itself (trusted only while heard directly).
    role: Option<Role>,
    term: Option<u64>,
    /// Found by discovery (as opposed to only heard from).
    discovered: bool,
}

/// How far a candidate's election has gone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// It asked the highest-ranked live peer that outranks it (and any of unknown rank).
    Highest { asked: String },
    /// It asked every peer that may outrank it.
    All,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Just started: elects once it has heard from the expected servers (or the grace ends).
    Starting,
    Follower,
    Candidate {
        deadline: u64,
        stage: Stage,
    },
    AwaitingCoordinator {
        deadline: u64,
    },
    TakingOver {
        from: String,
        deadline: u64,
    },
    Coordinator,
    HandingOff {
        to: Option<String>,
        exit: bool,
    },
    Leaving,
}

/// Rules a test can break on purpose, to show that the simulation's checks catch the bug.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Broken {
    /// Answer TAKEOVER with HANDOFF at once, while the queue is still being drained.
    pub handoff_before_drain: bool,
    /// Keep serving when a peer claims a newer term.
    pub ignore_newer_terms: bool,
}

/// One server's election state.
#[derive(Clone, Debug)]
pub struct Node {
    me: NodeInfo,
    config: Config,
    peers: BTreeMap<String, Peer>,
    state: State,
    /// The term this server holds, once claimed in the store (coordinators only).
    term: Option<u64>,
    /// A claim is in flight ([`Output::ClaimTerm`] sent, no answer yet).
    claiming: bool,
    /// After a failed claim, no new one before this instant.
    claim_retry_at: u64,
    /// The coordinator this server last followed (peer address).
    followed: Option<String>,
    /// The term the executor was last told to serve under ([`Output::Serve`]), until
    /// [`Output::StopServing`] (or a finished drain).
    executing: Option<u64>,
    /// [`Output::Exit`] is due once the executor has been stopped.
    exit_due: bool,
    /// Last time this server had a live coordinator (itself included).
    last_coordinator_seen: u64,
    last_heartbeat_sent: Option<u64>,
    /// How many times this server started an election.
    elections: u64,
    /// When this server started, and whether discovery has reported peers since.
    started_at: u64,
    peers_known: bool,
    /// Consecutive times this server was fenced without following a coordinator in between.
    fenced_streak: u32,
    /// No election before this instant (backoff after being fenced).
    quiet_until: u64,
    #[cfg(test)]
    pub(crate) broken: Broken,
}

impl Node {
    /// A server that has just started.
    pub fn new(me: NodeInfo, config: Config, now: u64) -> Node {
        Node {
            me,
            config,
            peers: BTreeMap::new(),
            state: State::Starting,
            term: None,
            claiming: false,
            claim_retry_at: 0,
            followed: None,
            executing: None,
            exit_due: false,
            last_coordinator_seen: now,
            last_heartbeat_sent: None,
            elections: 0,
            started_at: now,
            peers_known: false,
            fenced_streak: 0,
            quiet_until: 0,
            #[cfg(test)]
            broken: Broken::default(),
        }
    }

    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    pub fn role(&self) -> Role {
        match self.state {
            State::Follower => Role::Follower,
            State::Starting | State::Candidate { .. } => Role::Candidate,
            State::AwaitingCoordinator { .. } => Role::AwaitingCoordinator,
            State::TakingOver { .. } => Role::TakingOver,
            State::Coordinator => Role::Coordinator,
            State::HandingOff { .. } => Role::HandingOff,
            State::Leaving => Role::Leaving,
        }
    }

    /// The claimed term while coordinator.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// True while this server accepts client commands: coordinator with a claimed term.
    pub fn is_serving(&self) -> bool {
        self.state == State::Coordinator && self.term.is_some()
    }

    /// The term the executor runs under: while serving, and while draining before a handoff.
    pub fn executing(&self) -> Option<u64> {
        self.executing
    }

    pub fn elections(&self) -> u64 {
        self.elections
    }

    /// The coordinator this server knows (itself included) and its term if known.
    pub fn coordinator(&self, now: u64) -> Option<(NodeInfo, Option<u64>)> {
        match self.state {
            State::Coordinator | State::HandingOff { .. } => Some((self.me.clone(), self.term)),
            State::Leaving => None,
            _ => self
                .best_claimant(now)
                .map(|(_, p)| (p.info.clone().unwrap_or_else(|| self.me.clone()), p.term)),
        }
    }

    /// Ready: a live coordinator is known and holds a term.
    pub fn is_ready(&self, now: u64) -> bool {
        matches!(self.coordinator(now), Some((_, Some(_))))
    }

    /// Peers as this server sees them: (address, info, role, last heard, live).
    pub fn peers(&self, now: u64) -> impl Iterator<Item = PeerView<'_>> {
        self.peers.iter().map(move |(addr, p)| PeerView {
            addr,
            info: p.info.as_ref(),
            role: p.role,
            last_heard_ago: p.last_heard.map(|t| now.saturating_sub(t)),
            live: self.is_live(p, now),
        })
    }

    /// Heard from within the timeout, directly or through the coordinator, and not refused
    /// since.
    fn is_live(&self, peer: &Peer, now: u64) -> bool {
        let heard = peer.last_heard.max(peer.vouched);
        self.fresh(heard, peer.refused, now)
    }

    /// Heard from directly within the timeout and not refused since: what it says of its own
    /// role and term is current.
    fn heard_directly(&self, peer: &Peer, now: u64) -> bool {
        self.fresh(peer.last_heard, peer.refused, now)
    }

    fn fresh(&self, heard: Option<u64>, refused: Option<u64>, now: u64) -> bool {
        heard.is_some_and(|t| {
            now.saturating_sub(t) <= self.config.heartbeat_timeout && refused.is_none_or(|r| t > r)
        })
    }

    /// Heard once, but neither lately nor since a refusal: presumed dead.
    fn presumed_dead(&self, peer: &Peer, now: u64) -> bool {
        (peer.last_heard.is_some() || peer.vouched.is_some() || peer.refused.is_some())
            && !self.is_live(peer, now)
    }

    /// The best peer claiming the coordinator role, heard from directly: highest term, then
    /// rank.
    fn best_claimant(&self, now: u64) -> Option<(&String, &Peer)> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                self.heard_directly(p, now)
                    && matches!(p.role, Some(Role::Coordinator | Role::HandingOff))
                    && p.info.is_some()
            })
            .max_by_key(|(_, p)| {
                let info = p.info.as_ref();
                (
                    p.term.unwrap_or(0),
                    info.map(|i| i.rank),
                    info.map(|i| i.peer_addr.clone()),
                )
            })
    }

    /// Replaces the discovered peer set (own address excluded by the caller or here).
    pub fn set_peers(&mut self, addrs: impl IntoIterator<Item = String>, now: u64) -> Vec<Output> {
        self.peers_known = true;
        for peer in self.peers.values_mut() {
            peer.discovered = false;
        }
        for addr in addrs {
            if addr != self.me.peer_addr {
                self.peers.entry(addr).or_default().discovered = true;
            }
        }
        // Forget peers that discovery no longer lists and that went quiet long ago.
        let forget_after = self.config.heartbeat_timeout * 10;
        self.peers.retain(|_, p| {
            p.discovered
                || p.last_heard
                    .max(p.vouched)
                    .is_some_and(|t| now.saturating_sub(t) <= forget_after)
        });
        let mut out = Vec::new();
        self.settle(now, &mut out);
        out
    }

    /// Advances time: heartbeats, timeouts, claim retries.
    pub fn tick(&mut self, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.state == State::Leaving {
            return out;
        }
        if self.coordinator(now).is_some() {
            self.last_coordinator_seen = now;
        }
        match self.state.clone() {
            State::Starting if self.may_elect_at_start(now) => self.start_election(now, &mut out),
            State::Candidate { deadline, stage } if now >= deadline => match stage {
                Stage::Highest { .. } => self.ask_everyone(now, &mut out),
                Stage::All => self.on_election_won(now, &mut out),
            },
            State::AwaitingCoordinator { deadline } => {
                if self.best_claimant(now).is_some() {
                    self.state = State::Follower;
                } else if now >= deadline {
                    self.start_election(now, &mut out);
                }
            }
            State::TakingOver { from, deadline } => {
                let alive = self
                    .peers
                    .get(&from)
                    .is_some_and(|p| self.heard_directly(p, now));
                if now >= deadline || !alive {
                    // The old coordinator neither handed over nor stayed alive: take over anyway.
                    self.become_coordinator();
                } else if self.heartbeat_due(now) {
                    // Messages get lost: repeat the request until the handoff comes.
                    out.push(Output::Send {
                        to: from,
                        message: Message::Takeover,
                    });
                }
            }
            State::Follower => self.follow(now, &mut out),
            _ => {}
        }
        if self.heartbeat_due(now) {
            self.last_heartbeat_sent = Some(now);
            self.heartbeat(now, &mut out);
        }
        self.settle(now, &mut out);
        out
    }

    /// A follower heartbeats only its coordinator; the coordinator heartbeats everyone with
    /// the list of peers it hears; anyone else heartbeats everyone.
    fn heartbeat(&self, now: u64, out: &mut Vec<Output>) {
        let role = self.role();
        if self.state == State::Follower
            && let Some((addr, _)) = self.best_claimant(now)
        {
            out.push(Output::Send {
                to: addr.clone(),
                message: Message::Heartbeat {
                    role,
                    term: None,
                    members: Vec::new(),
                },
            });
            return;
        }
        let members = if matches!(self.state, State::Coordinator | State::HandingOff { .. }) {
            self.peers
                .values()
                .filter(|p| self.heard_directly(p, now))
                .filter_map(|p| {
                    Some(Member {
                        info: p.info.clone()?,
                        heard_ms_ago: now.saturating_sub(p.last_heard?),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let heartbeat = Message::Heartbeat {
            role,
            term: self.term,
            members,
        };
        self.broadcast(heartbeat, now, out);
    }

    /// A new server elects once the servers it expects have been heard from (or one of them
    /// is a coordinator with a term), or once `startup_grace` is over. Without an expected
    /// count it waits only for discovery's first answer (DNS is asynchronous: electing before
    /// it would make a lone winner out of a server that merely has not found its peers yet),
    /// for at most a failure timeout.
    fn may_elect_at_start(&self, now: u64) -> bool {
        let waited = now.saturating_sub(self.started_at);
        let expected = self.config.expected_servers;
        if expected == 0 {
            return self.peers_known || waited >= self.config.heartbeat_timeout;
        }
        let heard = self.peers.values().filter(|p| self.is_live(p, now)).count();
        heard + 1 >= expected
            || self
                .best_claimant(now)
                .is_some_and(|(_, p)| p.term.is_some())
            || waited >= self.config.startup_grace.max(self.config.heartbeat_timeout)
    }

    fn heartbeat_due(&self, now: u64) -> bool {
        self.last_heartbeat_sent
            .is_none_or(|t| now.saturating_sub(t) >= self.config.heartbeat_interval)
    }

    /// Follower duties: notice a dead coordinator, or one this server outranks.
    fn follow(&mut self, now: u64, out: &mut Vec<Output>) {
        if let Some(addr) = self.best_claimant(now).map(|(addr, _)| addr.clone()) {
            self.fenced_streak = 0;
            self.followed = Some(addr);
        }
        match self.best_claimant(now) {
            None => {
                if now.saturating_sub(self.last_coordinator_seen) > self.config.heartbeat_timeout
                    && now >= self.quiet_until
                {
                    self.start_election(now, out);
                }
            }
            Some((addr, peer)) => {
                if peer
                    .info
                    .as_ref()
                    .is_some_and(|info| self.me.outranks(info))
                    && peer.role == Some(Role::Coordinator)
                {
                    let from = addr.clone();
                    self.request_takeover(from, now, out);
                }
            }
        }
    }

    /// Asks the live, lower-ranked coordinator at `from` to drain and hand over.
    fn request_takeover(&mut self, from: String, now: u64, out: &mut Vec<Output>) {
        self.state = State::TakingOver {
            from: from.clone(),
            deadline: now + self.config.handoff_timeout,
        };
        out.push(Output::Send {
            to: from,
            message: Message::Takeover,
        });
    }

    /// Peers that may outrank this server and are not presumed dead (never heard of counts as
    /// maybe alive), and not leaving.
    fn election_targets(&self, now: u64) -> Vec<(&String, &Peer)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.info.as_ref().is_none_or(|info| info.outranks(&self.me)))
            .filter(|(_, p)| p.role != Some(Role::Leaving) && !self.presumed_dead(p, now))
            .collect()
    }

    fn start_election(&mut self, now: u64, out: &mut Vec<Output>) {
        self.elections += 1;
        let targets = self.election_targets(now);
        // The highest-ranked live one first: after a crash every survivor asks the same
        // server, which wins at once (it has no one to ask). Peers of unknown rank may be
        // higher still.
        let highest = targets
            .iter()
            .filter_map(|(addr, p)| {
                p.info
                    .as_ref()
                    .map(|i| (i.rank, i.peer_addr.clone(), *addr))
            })
            .max()
            .map(|(_, _, addr)| addr.clone());
        let mut first: Vec<String> = targets
            .iter()
            .filter(|(_, p)| p.info.is_none())
            .map(|(addr, _)| (*addr).clone())
            .collect();
        let everyone = targets.len();
        let stage = match highest {
            Some(asked) if first.len() + 1 < everyone => {
                first.push(asked.clone());
                Stage::Highest { asked }
            }
            Some(asked) => {
                first.push(asked);
                Stage::All
            }
            None => Stage::All,
        };
        if first.is_empty() {
            // Nobody can outrank us: no need to wait for answers.
            self.on_election_won(now, out);
            return;
        }
        self.state = State::Candidate {
            deadline: now + self.config.answer_timeout,
            stage,
        };
        for to in first {
            out.push(Output::Send {
                to,
                message: Message::Election,
            });
        }
    }

    /// The highest peer did not answer in time: ask every peer that may outrank this server.
    fn ask_everyone(&mut self, now: u64, out: &mut Vec<Output>) {
        let targets: Vec<String> = self
            .election_targets(now)
            .into_iter()
            .map(|(addr, _)| addr.clone())
            .collect();
        if targets.is_empty() {
            self.on_election_won(now, out);
            return;
        }
        self.state = State::Candidate {
            deadline: now + self.config.answer_timeout,
            stage: Stage::All,
        };
        for to in targets {
            out.push(Output::Send {
                to,
                message: Message::Election,
            });
        }
    }

    /// No outranking server answered.
    fn on_election_won(&mut self, now: u64, out: &mut Vec<Output>) {
        if let Some((addr, peer)) = self.best_claimant(now) {
            if peer
                .info
                .as_ref()
                .is_some_and(|info| info.outranks(&self.me))
            {
                // An answer got lost, but the announcement did not: follow it.
                self.state = State::Follower;
                return;
            }
            // A live lower-ranked coordinator gets to drain and hand over first.
            let from = addr.clone();
            self.request_takeover(from, now, out);
            return;
        }
        self.become_coordinator();
    }

    fn become_coordinator(&mut self) {
        self.state = State::Coordinator;
        self.term = None;
        // Announced once the term is claimed ([`Self::claimed`]), a few milliseconds from now:
        // those waiting for an announcement wait that long, and an announcement without a
        // term would cost N messages more per election.
    }

    fn step_down(&mut self, now: u64) {
        self.state = State::Follower;
        self.term = None;
        self.last_coordinator_seen = now;
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, envelope: Envelope, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let Envelope { from, message } = envelope;
        if from.peer_addr == self.me.peer_addr || self.state == State::Leaving {
            return out;
        }
        let addr = from.peer_addr.clone();
        let peer = self.peers.entry(addr.clone()).or_default();
        peer.info = Some(from.clone());
        peer.last_heard = Some(now);
        match &message {
            Message::Heartbeat {
                role,
                term,
                members,
            } => {
                peer.role = Some(*role);
                peer.term = *term;
                for member in members {
                    if member.info.peer_addr == self.me.peer_addr {
                        continue;
                    }
                    let heard = now.saturating_sub(member.heard_ms_ago);
                    let known = self.peers.entry(member.info.peer_addr.clone()).or_default();
                    known.info.get_or_insert_with(|| member.info.clone());
                    known.vouched = known.vouched.max(Some(heard));
                }
            }
            Message::Coordinator { term } => {
                peer.role = Some(Role::Coordinator);
                peer.term = *term;
            }
            Message::Handoff => {
                // It has drained and stopped claiming the role.
                peer.role = Some(Role::Follower);
                peer.term = None;
            }
            Message::Leaving => {
                peer.role = Some(Role::Leaving);
                peer.term = None;
                peer.last_heard = None;
            }
            _ => {}
        }
        match message {
            Message::Election if self.me.outranks(&from) => {
                // A coordinator with a term answers with its announcement, which settles the
                // candidate at once; anyone else answers and, if it knows no coordinator,
                // holds its own election.
                let message = match (&self.state, self.term) {
                    (State::Coordinator | State::HandingOff { .. }, Some(term)) => {
                        Message::Coordinator { term: Some(term) }
                    }
                    _ => Message::Answer,
                };
                out.push(Output::Send { to: addr, message });
                if self.state == State::Follower && self.best_claimant(now).is_none() {
                    self.start_election(now, &mut out);
                }
            }
            Message::Answer if from.outranks(&self.me) => {
                if let State::Candidate { .. } = self.state {
                    self.state = State::AwaitingCoordinator {
                        deadline: now + self.config.coordinator_wait,
                    };
                }
            }
            Message::Takeover if from.outranks(&self.me) && self.state == State::Coordinator => {
                self.state = State::HandingOff {
                    to: Some(addr.clone()),
                    exit: false,
                };
                out.push(Output::Drain);
                #[cfg(test)]
                if self.broken.handoff_before_drain {
                    out.push(Output::Send {
                        to: addr,
                        message: Message::Handoff,
                    });
                }
            }
            Message::Handoff => match self.state {
                State::Coordinator | State::HandingOff { .. } => {}
                _ => self.become_coordinator(),
            },
            _ => {}
        }
        self.check_claims(now);
        self.settle(now, &mut out);
        out
    }

    /// A coordinator steps down when a live peer makes a better claim; a server waiting for an
    /// announcement follows an outranking one as soon as it arrives.
    fn check_claims(&mut self, now: u64) {
        let Some((_, best)) = self.best_claimant(now) else {
            return;
        };
        let Some(info) = best.info.clone() else {
            return;
        };
        let theirs = (best.term.unwrap_or(0), info.rank, info.peer_addr.clone());
        match self.state {
            // A coordinator with a term is stale if someone claims a newer one. One without a
            // term yet will claim a newer term than anyone's, so only rank can unseat it.
            State::Coordinator => {
                let stale = match self.term {
                    Some(term) => theirs > (term, self.me.rank, self.me.peer_addr.clone()),
                    None => info.outranks(&self.me),
                };
                #[cfg(test)]
                let stale = stale && !(self.broken.ignore_newer_terms && self.term.is_some());
                if stale {
                    self.step_down(now);
                }
            }
            State::Starting | State::AwaitingCoordinator { .. } | State::Candidate { .. }
                if info.outranks(&self.me) =>
            {
                self.state = State::Follower;
            }
            _ => {}
        }
    }

    /// The peer at `addr` refused a connection: nobody listens on its port, so it is dead
    /// (until heard from again). If it was the coordinator, the election starts now rather
    /// than after the heartbeat timeout; if it was the peer a candidate asked first, the
    /// candidate asks the others now.
    pub fn unreachable(&mut self, addr: &str, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.peers.contains_key(addr) || self.state == State::Leaving {
            return out;
        }
        let was_coordinator = self.best_claimant(now).is_some_and(|(a, _)| a == addr);
        if let Some(peer) = self.peers.get_mut(addr) {
            peer.refused = Some(now);
        }
        match self.state {
            State::Follower if was_coordinator && self.best_claimant(now).is_none() => {
                self.last_coordinator_seen = now.saturating_sub(self.config.heartbeat_timeout + 1);
                self.follow(now, &mut out);
            }
            State::Candidate {
                stage: Stage::Highest { ref asked },
                ..
            } if asked == addr => self.ask_everyone(now, &mut out),
            _ => {}
        }
        self.settle(now, &mut out);
        out
    }

    /// The store granted `term` to this server.
    pub fn claimed(&mut self, term: u64, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.claiming = false;
        if self.state == State::Coordinator && self.term.is_none() {
            self.term = Some(term);
            self.broadcast(Message::Coordinator { term: Some(term) }, now, &mut out);
        }
        self.settle(now, &mut out);
        out
    }

    /// The store refused the claim: the current holder's lease runs for `remaining_ms` more.
    /// That holder is alive (it renews), or was until a moment ago: step down and let it be
    /// found, or its lease run out, before electing again.
    pub fn claim_refused(&mut self, remaining_ms: u64, now: u64) -> Vec<Output> {
        self.claiming = false;
        if self.state == State::Coordinator && self.term.is_none() {
            self.step_down(now);
            self.quiet_until = now + remaining_ms + self.config.claim_retry;
        }
        let mut out = Vec::new();
        self.settle(now, &mut out);
        out
    }

    /// The claim failed (the store did not answer): retry after `claim_retry`.
    pub fn claim_failed(&mut self, now: u64) -> Vec<Output> {
        self.claiming = false;
        self.claim_retry_at = now + self.config.claim_retry;
        let mut out = Vec::new();
        self.settle(now, &mut out);
        out
    }

    /// The store says a newer term exists: step down at once.
    ///
    /// A server cut off from its peers but not from the store would otherwise win its own
    /// election again after every timeout and take the term back and forth with the other
    /// side; each fencing in a row without a coordinator heard in between doubles its wait
    /// before the next election (up to 32 timeouts), so such flapping dies down.
    pub fn fenced(&mut self, now: u64) -> Vec<Output> {
        if matches!(
            self.state,
            State::Coordinator | State::HandingOff { exit: false, .. }
        ) {
            self.step_down(now);
            self.fenced_streak = (self.fenced_streak + 1).min(5);
            self.quiet_until = now + (self.config.heartbeat_timeout << self.fenced_streak);
        }
        let mut out = Vec::new();
        self.settle(now, &mut out);
        out
    }

    /// The executor finished every command queued before [`Output::Drain`] and stopped.
    pub fn drained(&mut self, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let State::HandingOff { to, exit } = self.state.clone() else {
            return out;
        };
        self.executing = None;
        // The target may have died meanwhile: pick the best live peer again.
        let target = to
            .filter(|addr| {
                self.peers
                    .get(addr)
                    .is_some_and(|p| self.heard_directly(p, now))
            })
            .or_else(|| self.best_successor(now));
        if let Some(to) = target.clone() {
            out.push(Output::Send {
                to,
                message: Message::Handoff,
            });
        }
        if exit {
            self.leave(now, &mut out);
        } else {
            self.step_down(now);
            // Count the target as the coordinator from now on, so this server does not start
            // an election before the target's announcement arrives.
            if let Some(peer) = target.and_then(|t| self.peers.get_mut(&t)) {
                peer.role = Some(Role::Coordinator);
                peer.term = None;
                peer.last_heard = Some(now);
            }
        }
        self.settle(now, &mut out);
        out
    }

    /// The highest-ranked peer heard from directly (a coordinator hears every live one).
    fn best_successor(&self, now: u64) -> Option<String> {
        self.peers
            .iter()
            .filter(|(_, p)| self.heard_directly(p, now) && p.role != Some(Role::Leaving))
            .filter_map(|(addr, p)| p.info.as_ref().map(|i| (i.rank, addr)))
            .max()
            .map(|(_, addr)| addr.clone())
    }

    /// Begins a graceful shutdown: a coordinator drains and hands over first.
    pub fn shutdown(&mut self, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        match self.state {
            State::Coordinator => {
                self.state = State::HandingOff {
                    to: self.best_successor(now),
                    exit: true,
                };
                out.push(Output::Drain);
            }
            State::HandingOff { ref mut exit, .. } => *exit = true,
            State::Leaving => {}
            _ => self.leave(now, &mut out),
        }
        self.settle(now, &mut out);
        out
    }

    fn leave(&mut self, now: u64, out: &mut Vec<Output>) {
        self.broadcast(Message::Leaving, now, out);
        self.state = State::Leaving;
        self.term = None;
        self.exit_due = true;
    }

    /// The rules that follow from the state, applied after every input: a coordinator without
    /// a term claims one; the executor serves exactly while this server is the coordinator
    /// with a term (and keeps going while it drains before a handoff); exit comes last.
    fn settle(&mut self, now: u64, out: &mut Vec<Output>) {
        if self.state == State::Coordinator
            && self.term.is_none()
            && !self.claiming
            && now >= self.claim_retry_at
        {
            self.claiming = true;
            // The coordinator this server followed, if its port refused since it was heard.
            let break_holder = self
                .followed
                .as_ref()
                .and_then(|addr| self.peers.get(addr))
                .filter(|p| p.refused.is_some() && p.refused >= p.last_heard)
                .and_then(|p| p.info.as_ref())
                .map(NodeInfo::holder);
            out.push(Output::ClaimTerm { break_holder });
        }
        let executing = match self.state {
            State::Coordinator => self.term,
            State::HandingOff { .. } => self.executing,
            _ => None,
        };
        if executing != self.executing {
            out.push(match executing {
                Some(term) => Output::Serve(term),
                None => Output::StopServing,
            });
            self.executing = executing;
        }
        if std::mem::take(&mut self.exit_due) {
            out.push(Output::Exit);
        }
    }

    /// Peers worth talking to: discovered ones, and any heard from recently.
    fn targets(&self, now: u64) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| p.discovered || self.is_live(p, now))
            .map(|(addr, _)| addr.clone())
            .collect()
    }

    fn broadcast(&self, message: Message, now: u64, out: &mut Vec<Output>) {
        for to in self.targets(now) {
            out.push(Output::Send {
                to,
                message: message.clone(),
            });
        }
    }
}

/// A read-only view of one peer.
#[derive(Debug)]
pub struct PeerView<'a> {
    pub addr: &'a str,
    pub info: Option<&'a NodeInfo>,
    pub role: Option<Role>,
    pub last_heard_ago: Option<u64>,
    pub live: bool,
}
