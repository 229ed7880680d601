//! The messages between a server's tasks, in one leaf module so that the tasks depend on it and
//! not on each other.
//!
//! ```text
//!   http ──Job──────────────▶ executor ◀──Control── driver
//!   http ──Event::Peer──────▶ driver ◀──Event::{Fenced,Drained}── executor, claims
//!   discovery ──Event::Peers▶ driver ──View──▶ http, executor
//! ```

use bully_client::{CommandRequest, CommandResponse, CoordinatorInfo, PeerStatus, Role};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::election::Envelope;
use crate::store::StoreError;

/// Inputs of the election driver.
#[derive(Debug)]
pub enum Event {
    /// A message from a peer.
    Peer(Envelope),
    /// Discovery's current peer list.
    Peers(Vec<String>),
    /// The peer at this address refused a connection.
    Unreachable(String),
    /// The store granted this term.
    Claimed(u64),
    /// The claim did not go through.
    ClaimFailed,
    /// The store refused the claim: the current holder's lease runs this much longer.
    ClaimRefused { remaining_ms: u64 },
    /// The executor found its term superseded.
    Fenced,
    /// The executor answered everything queued before the drain marker and stopped.
    Drained,
    /// Hand over (if coordinator) and stop.
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

/// Why the executor did not answer a command with a result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// This server is not executing commands now (not the coordinator, or between terms).
    #[error("not executing commands")]
    NotServing,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One queued command and where to send its answer.
pub struct Job {
    pub request: CommandRequest,
    pub reply: oneshot::Sender<Result<CommandResponse, ExecError>>,
    pub received: Instant,
}

/// What flows through the executor's queue.
pub enum ExecMsg {
    // Boxed: the queue holds up to `--queue-capacity` of these.
    Job(Box<Job>),
    /// Answered once everything queued before it has been answered; the executor then stops
    /// executing (a handoff follows).
    Drain(oneshot::Sender<()>),
}

/// Orders from the election driver to the executor; they overtake queued jobs.
#[derive(Debug)]
pub enum Control {
    /// Apply commands under this term.
    Activate(u64),
    /// Stop applying: answer queued jobs as not executed.
    Deactivate,
}
