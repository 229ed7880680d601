//! The election driver: the tokio task that owns the election state machine and does its I/O,
//! and nothing else.
//!
//! It feeds the machine peer messages, discovery results, store events and clock ticks, and
//! carries out what the machine returns: sends messages, claims terms in the store, starts,
//! drains and stops the executor, exits. It publishes a [`View`] for the HTTP handlers after
//! every input. Every decision is the machine's ([`crate::election`]).

use std::sync::Arc;
use std::time::Duration;

use bully_client::{CoordinatorInfo, PeerStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::election::{Envelope, Node, Output};
use crate::messages::{Control, Event, ExecMsg, View};
use crate::metrics::{Metrics, RoleLabels};
use crate::peers::transport::Transport;
use crate::store::{Claim, Store, StoreError};

pub struct ElectionDriver {
    pub node: Node,
    pub events_rx: mpsc::Receiver<Event>,
    pub events: mpsc::Sender<Event>,
    pub jobs: mpsc::Sender<ExecMsg>,
    pub control: mpsc::UnboundedSender<Control>,
    pub view: watch::Sender<View>,
    pub transport: Transport,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub tick: Duration,
    /// The lease a claim asks for.
    pub lease: Duration,
}

impl ElectionDriver {
    /// Runs until the node has shut down (after [`Event::Shutdown`]).
    pub async fn run(mut self) {
        let epoch = Instant::now();
        let now = move || epoch.elapsed().as_millis() as u64;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev_role = self.node.role();
        let mut prev_elections = 0;
        self.publish(now());
        loop {
            let outputs = tokio::select! {
                _ = ticker.tick() => self.node.tick(now()),
                event = self.events_rx.recv() => {
                    let Some(event) = event else { return };
                    self.input(event, now())
                }
            };
            let mut exit = false;
            for output in outputs {
                exit |= self.carry_out(output);
            }
            let role = self.node.role();
            if role != prev_role {
                info!(from = %prev_role, to = %role, term = ?self.node.term(), "role changed");
                self.metrics
                    .role
                    .get_or_create(&RoleLabels {
                        role: prev_role.as_str(),
                    })
                    .set(0);
                self.metrics
                    .role
                    .get_or_create(&RoleLabels {
                        role: role.as_str(),
                    })
                    .set(1);
                prev_role = role;
            }
            if self.node.elections() != prev_elections {
                self.metrics
                    .elections
                    .inc_by(self.node.elections() - prev_elections);
                prev_elections = self.node.elections();
            }
            self.publish(now());
            if exit {
                // Give the farewell messages a moment to leave.
                tokio::time::sleep(self.tick * 2).await;
                return;
            }
        }
    }

    fn input(&mut self, event: Event, now: u64) -> Vec<Output> {
        match event {
            Event::Peer(envelope) => self.node.step(envelope, now),
            Event::Peers(peers) => self.node.set_peers(peers, now),
            Event::Unreachable(addr) => self.node.unreachable(&addr, now),
            Event::Claimed(term) => {
                info!(term, "claimed term");
                self.node.claimed(term, now)
            }
            Event::ClaimFailed => self.node.claim_failed(now),
            Event::ClaimRefused { remaining_ms } => self.node.claim_refused(remaining_ms, now),
            Event::Fenced => self.node.fenced(now),
            Event::Drained => self.node.drained(now),
            Event::Shutdown => {
                info!(role = %self.node.role(), "shutting down");
                self.node.shutdown(now)
            }
        }
    }

    /// Does what the machine asked; true for [`Output::Exit`].
    fn carry_out(&mut self, output: Output) -> bool {
        match output {
            Output::Send { to, message } => {
                let envelope = Envelope {
                    from: self.node.me().clone(),
                    message,
                };
                self.transport.send(&to, envelope);
            }
            Output::ClaimTerm { break_holder } => self.claim(break_holder),
            Output::Serve(term) => {
                let _ = self.control.send(Control::Activate(term));
                self.metrics.term.set(term as i64);
            }
            Output::StopServing => {
                let _ = self.control.send(Control::Deactivate);
                self.metrics.term.set(0);
            }
            Output::Drain => self.start_drain(),
            Output::Exit => return true,
        }
        false
    }

    fn claim(&self, break_holder: Option<String>) {
        let store = self.store.clone();
        let events = self.events.clone();
        let holder = self.node.me().holder();
        let lease = self.lease;
        tokio::spawn(async move {
            let claim = Claim {
                holder: &holder,
                lease,
                break_holder: break_holder.as_deref(),
            };
            if let Some(dead) = &break_holder {
                info!(holder = %dead, "breaking the lease of a coordinator found dead");
            }
            let event = match store.claim(claim).await {
                Ok(term) => Event::Claimed(term),
                Err(StoreError::LeaseHeld {
                    holder,
                    remaining_ms,
                }) => {
                    info!(%holder, remaining_ms, "the current coordinator's lease holds; not claiming");
                    Event::ClaimRefused { remaining_ms }
                }
                Err(e) => {
                    warn!(error = %e, "claiming a term failed; retrying");
                    Event::ClaimFailed
                }
            };
            let _ = events.send(event).await;
        });
    }

    fn start_drain(&self) {
        let jobs = self.jobs.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let (done, drained) = oneshot::channel();
            if jobs.send(ExecMsg::Drain(done)).await.is_ok() {
                let _ = drained.await;
            }
            let _ = events.send(Event::Drained).await;
        });
    }

    fn publish(&self, now: u64) {
        let node = &self.node;
        let coordinator = node.coordinator(now).map(|(info, term)| CoordinatorInfo {
            rank: info.rank,
            client_addr: info.client_addr,
            peer_addr: info.peer_addr,
            term,
        });
        let peers: Vec<PeerStatus> = node
            .peers(now)
            .map(|p| PeerStatus {
                peer_addr: p.addr.to_string(),
                client_addr: p.info.map(|i| i.client_addr.clone()),
                rank: p.info.map(|i| i.rank),
                role: p.role,
                last_heard_ms: p.last_heard_ago,
                live: p.live,
            })
            .collect();
        self.metrics
            .live_peers
            .set(peers.iter().filter(|p| p.live).count() as i64);
        let ready = node.is_ready(now);
        self.metrics.ready.set(i64::from(ready));
        let view = View {
            role: node.role(),
            term: node.term(),
            accepting: node.is_serving(),
            coordinator,
            ready,
            peers,
        };
        self.view.send_if_modified(|current| {
            if *current == view {
                false
            } else {
                *current = view;
                true
            }
        });
    }
}
