//! The node driver: the tokio task that owns the election state machine and does its I/O.
//!
//! It feeds the machine peer messages, discovery results, store events and clock ticks; it
//! sends the machine's messages, claims a term in the store when the machine becomes
//! coordinator, tells the executor when to start, drain and stop, and publishes a [`View`] that
//! HTTP handlers read.

use std::sync::Arc;
use std::time::Duration;

use bully_client::{CoordinatorInfo, PeerStatus, Role};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::election::{Envelope, Node, NodeInfo, Output};
use crate::executor::{Control, ExecMsg};
use crate::metrics::{Metrics, RoleLabels};
use crate::peers::transport::Transport;
use crate::store::Store;

/// Inputs of the driver.
#[derive(Debug)]
pub enum Event {
    Peer(Envelope),
    Peers(Vec<String>),
    Claimed(u64),
    ClaimFailed,
    Fenced,
    Drained,
    Shutdown,
}

/// What the rest of the server needs to know of the election, published after every event.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub role: Role,
    pub term: Option<u64>,
    /// Coordinator with a claimed term: new commands may be queued.
    pub accepting: bool,
    pub coordinator: Option<CoordinatorInfo>,
    pub ready: bool,
    pub peers: Vec<PeerStatus>,
}

impl View {
    pub fn starting() -> View {
        View {
            role: Role::Candidate,
            term: None,
            accepting: false,
            coordinator: None,
            ready: false,
            peers: Vec::new(),
        }
    }
}

pub struct Driver {
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
}

impl Driver {
    /// Runs until the node has shut down (after [`Event::Shutdown`]).
    pub async fn run(mut self) {
        let epoch = Instant::now();
        let now = move || epoch.elapsed().as_millis() as u64;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut claiming = false;
        let mut prev_role = self.node.role();
        let mut prev_serving = false;
        let mut prev_elections = 0;
        self.publish(now());
        loop {
            let outputs = tokio::select! {
                _ = ticker.tick() => self.node.tick(now()),
                event = self.events_rx.recv() => {
                    let Some(event) = event else { return };
                    let t = now();
                    match event {
                        Event::Peer(envelope) => self.node.step(envelope, t),
                        Event::Peers(peers) => {
                            self.node.set_peers(peers, t);
                            Vec::new()
                        }
                        Event::Claimed(term) => {
                            claiming = false;
                            info!(term, "claimed term");
                            self.node.claimed(term, t)
                        }
                        Event::ClaimFailed => {
                            claiming = false;
                            Vec::new()
                        }
                        Event::Fenced => {
                            self.node.fenced(t);
                            Vec::new()
                        }
                        Event::Drained => self.node.drained(t),
                        Event::Shutdown => {
                            info!(role = %self.node.role(), "shutting down");
                            self.node.shutdown(t)
                        }
                    }
                }
            };
            let mut exit = false;
            for output in outputs {
                match output {
                    Output::Send { to, message } => {
                        let envelope = Envelope {
                            from: self.node.me().clone(),
                            message,
                        };
                        self.transport.send(&to, envelope);
                    }
                    Output::Drain => self.start_drain(),
                    Output::Exit => exit = true,
                }
            }
            let role = self.node.role();
            let serving = self.node.is_serving();
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
            if serving != prev_serving {
                match (serving, self.node.term()) {
                    (true, Some(term)) => {
                        let _ = self.control.send(Control::Activate(term));
                        self.metrics.term.set(term as i64);
                    }
                    // A coordinator that hands off keeps executing until the drain marker.
                    _ if role == Role::HandingOff => {}
                    _ => {
                        let _ = self.control.send(Control::Deactivate);
                        self.metrics.term.set(0);
                    }
                }
                prev_serving = serving;
            }
            if self.node.elections() != prev_elections {
                self.metrics
                    .elections
                    .inc_by(self.node.elections() - prev_elections);
                prev_elections = self.node.elections();
            }
            if role == Role::Coordinator && self.node.term().is_none() && !claiming {
                claiming = true;
                self.claim();
            }
            self.publish(now());
            if exit {
                let _ = self.control.send(Control::Deactivate);
                // Give the farewell messages a moment to leave.
                tokio::time::sleep(self.tick * 2).await;
                return;
            }
        }
    }

    fn claim(&self) {
        let store = self.store.clone();
        let events = self.events.clone();
        let holder = format!("{} rank {}", self.node.me().peer_addr, self.node.me().rank);
        tokio::spawn(async move {
            let event = match store.claim_term(&holder).await {
                Ok(term) => Event::Claimed(term),
                Err(e) => {
                    warn!(error = %e, "claiming a term failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
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
        let view = View {
            role: node.role(),
            term: node.term(),
            accepting: node.is_serving(),
            coordinator,
            ready: node.is_ready(now),
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

/// This server's identity, logged at start.
pub fn describe(me: &NodeInfo) -> String {
    format!(
        "rank {} peer {} client {}",
        me.rank, me.peer_addr, me.client_addr
    )
}
