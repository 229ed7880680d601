//! The Bully election as a pure state machine.
//!
//! No sockets, clocks or randomness live here: the election driver ([`crate::driver`]) feeds
//! the machine messages ([`Node::step`]), the passage of time ([`Node::tick`], with `now` in
//! milliseconds of any monotonic clock), discovery results and store events, and carries out
//! the [`Output`]s it returns. Every rule is here, including when to claim a term and when the
//! executor may run, so the simulation (`sim.rs`) tests the same rules the servers run.
//!
//! # Rules
//! - Every `heartbeat_interval` the coordinator heartbeats every peer, listing the peers it
//!   hears; a follower heartbeats only the coordinator; everyone else (candidates, new servers)
//!   heartbeats every peer. So steady-state traffic is 2(N-1) messages per interval, not
//!   N(N-1). A peer is *live* while heard within `heartbeat_timeout`, directly or through the
//!   coordinator's list, and not refused since: a peer whose port refuses connections
//!   ([`Node::unreachable`]) is dead for certain, and a coordinator found so is replaced at
//!   once instead of after the timeout.
//! - The coordinator a server follows is derived, not stored: the best live peer that claims the
//!   role, best meaning the highest claimed term, then the highest rank. A stale coordinator (one
//!   that was paused or partitioned) claims an older term, so followers prefer the new one.
//! - A new server elects once it has heard from every server it expects (`expected_servers`),
//!   once it hears a coordinator with a term, or after `startup_grace`, whichever comes first:
//!   servers started together then agree before anyone claims a term, and a lone first server
//!   still gets elected.
//! - A server that has no live coordinator for `heartbeat_timeout` (or whose coordinator was
//!   found dead) holds an election: it sends ELECTION to the highest-ranked live peer that
//!   outranks it (and to any peer of unknown rank), and only if none answers within
//!   `answer_timeout`, to every other one that may outrank it. An outranking peer ANSWERs and
//!   runs its own election. Without an answer the server declares itself coordinator and
//!   announces it; with one, it waits `coordinator_wait` for an announcement, then starts over.
//!   After a crash every survivor knows who the highest live one is, so an election costs about
//!   3N messages: one ELECTION and one ANSWER per survivor, and the winner's announcement.
//! - A coordinator without a term claims one in the store ([`Output::ClaimTerm`]); only with a
//!   claimed term does it serve ([`Output::Serve`]), and it stops ([`Output::StopServing`]) as
//!   soon as it is no longer the coordinator. The store refuses the claim while the current
//!   holder's lease runs ([`Node::claim_refused`]): the claimer steps down and waits it out.
//!   So a server that merely cannot reach a live coordinator (partitioned from its peers but
//!   not from the store) never deposes it. A claimer that saw the holder's port refuse a
//!   connection breaks the lease at once, so a crash costs no lease wait.
//! - A server that would win while a lower-ranked coordinator is alive (it joined late, or came
//!   back) does not just seize the role: it sends TAKEOVER; the coordinator stops accepting
//!   commands, drains its queue ([`Output::Drain`]) and sends HANDOFF, and only then does the
//!   new one take over. So a higher-ranked joiner costs no failed command. After
//!   `handoff_timeout` it takes over anyway (the store's terms keep that safe).
//! - On shutdown the coordinator hands off the same way to the best live peer, then leaves.
//! - A coordinator that sees a better claim (a higher term, or an equal one from a higher rank),
//!   or learns from the store that its term was superseded, steps down at once.
//!
//! # Layout
//! - this module: identities, messages, timing and outputs;
//! - [`node`]: the state machine;
//! - `sim.rs`, `sim_tests.rs` (tests only): a simulated network with faults, and the scenarios.

use bully_client::Role;
use serde::{Deserialize, Serialize};

pub mod node;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;

pub use node::{Node, PeerView};

use crate::timings::Timings;

/// Who a server is: its rank and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The random number drawn at start; the largest live one wins.
    pub rank: u64,
    /// Address of the peer API (`host:port`), also the server's identity among peers.
    pub peer_addr: String,
    /// Address of the client API, given to clients as the coordinator hint.
    pub client_addr: String,
}

impl NodeInfo {
    /// Bully order: rank, ties (practically impossible with 64 random bits) broken by address.
    fn outranks(&self, other: &NodeInfo) -> bool {
        (self.rank, &self.peer_addr) > (other.rank, &other.peer_addr)
    }

    /// How the store names this server as a term's holder.
    pub fn holder(&self) -> String {
        format!("{} rank {}", self.peer_addr, self.rank)
    }
}

/// A message between servers. Every message travels in an [`Envelope`] naming its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Periodic liveness and view. A coordinator's lists the peers it hears (`members`), so
    /// that followers, which heartbeat only the coordinator, know who else is alive.
    Heartbeat {
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<Member>,
    },
    /// "I am holding an election; answer if you outrank me."
    Election,
    /// "I outrank you and will run my own election."
    Answer,
    /// "I am the coordinator" (term set once claimed in the store).
    Coordinator {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// From an outranking server to the current coordinator: "hand over to me".
    Takeover,
    /// From a coordinator that drained its queue: "you are the coordinator now".
    Handoff,
    /// "I am shutting down; stop counting on me."
    Leaving,
}

/// A peer a coordinator hears, as its heartbeat reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub info: NodeInfo,
    /// How long ago the coordinator last heard from it.
    pub heard_ms_ago: u64,
}

/// A message with its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeInfo,
    pub message: Message,
}

/// The election's timing, in milliseconds, and what a server expects of its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub heartbeat_interval: u64,
    pub heartbeat_timeout: u64,
    pub answer_timeout: u64,
    pub coordinator_wait: u64,
    pub handoff_timeout: u64,
    pub claim_retry: u64,
    pub startup_grace: u64,
    /// How many servers the cluster has (this one included), if known: a new server waits up
    /// to `startup_grace` to hear from the others before electing. 0: unknown.
    pub expected_servers: usize,
}

impl Config {
    /// The election's part of the server's [`Timings`].
    pub fn new(timings: &Timings, expected_servers: usize) -> Config {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Config {
            heartbeat_interval: ms(timings.heartbeat_interval),
            heartbeat_timeout: ms(timings.heartbeat_timeout),
            answer_timeout: ms(timings.answer_timeout),
            coordinator_wait: ms(timings.coordinator_wait),
            handoff_timeout: ms(timings.handoff_timeout),
            claim_retry: ms(timings.claim_retry),
            startup_grace: ms(timings.startup_grace),
            expected_servers,
        }
    }
}

/// What the driver must do after a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to the peer at `to`.
    Send { to: String, message: Message },
    /// Claim the next term in the store for this server, then report [`Node::claimed`],
    /// [`Node::claim_refused`] or [`Node::claim_failed`]. `break_holder` names the holder of
    /// the current term when this server knows it dead for certain (its port refused a
    /// connection): its lease need not run out first.
    ClaimTerm { break_holder: Option<String> },
    /// Execute commands under this term (the store fences it).
    Serve(u64),
    /// Stop accepting commands, let the executor finish the queued ones and stop, then call
    /// [`Node::drained`].
    Drain,
    /// Stop executing at once: queued commands are answered as not executed.
    StopServing,
    /// Shutdown is complete; the process may exit.
    Exit,
}
