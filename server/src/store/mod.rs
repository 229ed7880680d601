//! The store: where terms, the key-value data and the command log live.
//!
//! Every backend gives the same three guarantees, checked by one conformance suite
//! ([`conformance`]) run against each:
//!
//! - **Terms fence coordinators.** [`Store::claim_term`] atomically increments one record and
//!   returns the new term. [`Store::apply_batch`] succeeds only while its term is still the
//!   current one, checked in the same atomic operation as the effects, so a deposed coordinator
//!   can never commit (nor read: a read-only batch checks the fence in its snapshot).
//! - **Exactly-once.** A write's result is stored with its effect, keyed by the command id; applying
//!   the same id again returns the stored result (`duplicate = true`) without a second effect.
//! - **One order.** Every applied write gets the next sequence number from the same record as
//!   the term, so numbers increase strictly across terms; a read reports the sequence number of
//!   the last write it reflects (as etcd's revisions do) and takes none, so reads need no
//!   durable write.
//! - **Leases.** A term's holder holds a lease that every writing batch (and, when idle,
//!   [`Store::renew_lease`]) restarts by the store's clock; a claim fails while it runs, so a
//!   server cut off from the coordinator but not from the store cannot depose it. The lease is
//!   released on handoff, and a claimer that knows the holder dead (its port refused a
//!   connection) may break it.
//! - **Group commit.** A batch is applied in one atomic operation with the results, sequence
//!   numbers and exactly-once behaviour of applying its commands one after another
//!   ([`logic::plan_batch`] works them out for every backend).
//!
//! # Layout
//! - [`embedded`]: SQLite in WAL mode; several processes on one machine may share one file.
//! - [`mongo`]: a MongoDB replica set through the official driver, majority write concern.
//! - [`logic`]: what a command does to a value: shared by the backends so they cannot disagree.

use async_trait::async_trait;
use bully_client::{Command, Outcome};

pub mod embedded;
pub mod logic;
pub mod mongo;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

pub use logic::Op;

/// What [`Store::apply`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub seq: u64,
    pub term: u64,
    pub outcome: Outcome,
    /// The id had been applied before; `seq`, `term` and `outcome` are the stored ones.
    pub duplicate: bool,
}

/// How [`Store::claim`] claims a term.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// Who claims it (a server's peer address and rank: [`crate::election::NodeInfo::holder`]).
    pub holder: &'a str,
    /// How long the claimer's lease lasts after each renewal, judged by the store's clock;
    /// zero for none.
    pub lease: std::time::Duration,
    /// The holder the claimer knows is dead for certain (its port refused a connection): its
    /// lease does not stand in the way.
    pub break_holder: Option<&'a str>,
}

/// The fencing record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FenceState {
    /// The current term (0 before anyone claimed one).
    pub term: u64,
    /// Who claimed it (a server's peer address and rank).
    pub holder: String,
    /// The last sequence number handed out.
    pub seq: u64,
}

/// A stored command record, as the exactly-once check sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: String,
    pub seq: u64,
    pub term: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The term passed to `apply` is not current: this attempt applied nothing. (An earlier
    /// attempt whose commit result was lost may have; a retry with the same id is safe either
    /// way and returns the stored result.)
    #[error("term {mine} was superseded by term {current}")]
    Fenced { mine: u64, current: u64 },
    /// The id was applied before, for a different command; nothing was applied.
    #[error("command id {id} was already used for a different command")]
    IdConflict { id: String },
    /// The current term's holder holds a lease for this much longer: no claim before then
    /// (unless it releases it, or the claimer knows it dead).
    #[error("{holder} holds the lease for another {remaining_ms} ms")]
    LeaseHeld { holder: String, remaining_ms: u64 },
    /// The store did not answer within the deadline. The command may or may not have been
    /// applied; retrying it with the same id is safe.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored document could not be read back (corruption or an incompatible schema).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A fenced, exactly-once command store. Implementations are cheap to share (`Arc`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Atomically sets the term to the current term + 1 with the claimer as its holder and
    /// its lease starting now, and returns the new term — unless the current holder's lease
    /// is still running by the store's clock ([`StoreError::LeaseHeld`]): a holder that
    /// renews its lease cannot be deposed by a claimer that merely cannot reach it. A released
    /// lease, one held by the claimer itself, or one of the holder named in
    /// [`Claim::break_holder`] does not count.
    async fn claim(&self, claim: Claim<'_>) -> Result<u64>;

    /// [`Store::claim`] without a lease of its own and without breaking any.
    async fn claim_term(&self, holder: &str) -> Result<u64> {
        self.claim(Claim {
            holder,
            lease: std::time::Duration::ZERO,
            break_holder: None,
        })
        .await
    }

    /// Restarts the lease of `term`'s holder, by the store's clock (fenced). Batches that
    /// write renew it too.
    async fn renew_lease(&self, term: u64) -> Result<()>;

    /// Ends the lease of `term`'s holder (fenced): the next claim need not wait for it.
    async fn release_lease(&self, term: u64) -> Result<()>;

    /// Applies `ops` in order under `term`, in one atomic operation: fenced (fails with
    /// [`StoreError::Fenced`] and no effect unless `term` is current), exactly-once by id
    /// (writes only: reads are not recorded, since repeating them changes nothing). Each
    /// command's result is what applying the commands one after another would give; the only
    /// per-command error is [`StoreError::IdConflict`] (that command applies nothing, the
    /// others do). Any other error is the whole batch's: nothing applied (`Fenced`,
    /// `Corrupt`), or unknown (`Unavailable`; retrying the same ids is safe).
    async fn apply_batch(&self, term: u64, ops: &[Op]) -> Result<Vec<Result<Applied>>>;

    /// Applies one command: a batch of one.
    async fn apply(&self, term: u64, id: &str, command: &Command) -> Result<Applied> {
        let op = Op {
            id: id.to_string(),
            command: command.clone(),
        };
        let mut results = self.apply_batch(term, std::slice::from_ref(&op)).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a batch of one gave no result".into())))
    }

    /// The fencing record as it is now.
    async fn fence_state(&self) -> Result<FenceState>;

    /// The stored record of command `id`, if any.
    async fn record(&self, id: &str) -> Result<Option<Record>>;

    /// Deletes command records stored before `before_ms` (milliseconds since the Unix epoch);
    /// returns how many. A retry of an expired id is applied again, so the retention must
    /// exceed any client's retry window.
    async fn expire(&self, before_ms: i64) -> Result<u64>;

    /// A short name for logs and metrics ("embedded", "mongodb").
    fn backend(&self) -> &'static str;
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
