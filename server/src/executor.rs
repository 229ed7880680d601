//! The executor: the one task that applies commands to the store, in one order, a batch at a
//! time.
//!
//! HTTP handlers queue [`Job`]s through a bounded channel and wait on a oneshot for the answer;
//! the executor takes every job waiting in the queue (up to `max_batch` of them, and a bound on
//! their bytes), applies them in queue order in one fenced store operation under the term the
//! election driver gave it ([`Control::Activate`]), and answers each once that operation is
//! durable: group commit. While one batch commits, the next one queues up, so the store's
//! commit latency is paid once per batch instead of once per command. One task applying
//! batches one after another is what makes the order global and serial; the store's term check
//! makes it safe across coordinators.
//!
//! Leases on keys: the executor keeps the coordinator's [`LeaseClock`], fed by the grants,
//! keepalives and revokes it answers; it loads the store's leases when it starts a term, and
//! applies an internal `lease_revoke` when one falls due, between two batches (see
//! [`crate::lease_clock`]).
//!
//! A [`ExecMsg::Drain`] marker travels through the same queue: when the executor reaches it,
//! every command queued before it has been answered, and it stops applying (a handoff follows).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bully_client::{Command, CommandResponse, Outcome};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::lease_clock::{LeaseClock, expiry_id};
use crate::messages::{Control, Event, ExecError, ExecMsg, Job};
use crate::metrics::Metrics;
use crate::store::{Applied, Op, Store, StoreError};

/// A batch stops growing at this many bytes of commands (their values' JSON), so that one
/// store transaction stays well within what a MongoDB transaction may hold.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// How long an expiry that the store did not apply waits before it is tried again.
const EXPIRY_RETRY: Duration = Duration::from_millis(100);

/// The coordinator's leases: the clock and the term whose leases it was loaded for.
#[derive(Debug, Default)]
struct Leases {
    clock: LeaseClock,
    loaded: Option<u64>,
}

pub struct Executor {
    pub store: Arc<dyn Store>,
    pub jobs: mpsc::Receiver<ExecMsg>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub events: mpsc::Sender<Event>,
    pub metrics: Arc<Metrics>,
    pub last_seq: Arc<AtomicU64>,
    pub retention: Duration,
    /// Most commands in one store operation; 1 applies them strictly one at a time.
    pub max_batch: usize,
    /// How often the lease is renewed when no writing batch renewed it.
    pub lease_renewal: Duration,
    /// A writing batch ran since the last renewal tick (and renewed the lease).
    pub wrote: bool,
}

impl Executor {
    pub async fn run(mut self) {
        let mut term: Option<u64> = None;
        // Expire old command records every tenth of the retention (at most once a minute).
        let mut expiry = tokio::time::interval((self.retention / 10).min(Duration::from_secs(60)));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewal = tokio::time::interval(self.lease_renewal.max(Duration::from_millis(10)));
        renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leases = Leases::default();
        loop {
            self.sync_leases(&mut term, &mut leases).await;
            let next_expiry = leases.clock.next_deadline();
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(control) => Self::obey(&mut term, control),
                    None => return,
                },
                msg = self.jobs.recv() => match msg {
                    Some(ExecMsg::Job(job)) => {
                        self.metrics.queue_depth.set(self.depth());
                        let (batch, drain) = self.gather(*job);
                        // Orders that arrived while the batch gathered come first.
                        while let Ok(control) = self.control.try_recv() {
                            Self::obey(&mut term, control);
                        }
                        self.sync_leases(&mut term, &mut leases).await;
                        self.execute(&mut term, batch, &mut leases.clock).await;
                        if let Some(done) = drain {
                            self.drained(&mut term, done).await;
                        }
                    }
                    Some(ExecMsg::Drain(done)) => self.drained(&mut term, done).await,
                    None => return,
                },
                _ = renewal.tick() => {
                    if let Some(t) = term
                        && !std::mem::take(&mut self.wrote)
                    {
                        self.renew(&mut term, t).await;
                    }
                }
                _ = sleep_until(next_expiry), if term.is_some() => {
                    self.expire_leases(&mut term, &mut leases.clock).await;
                }
                _ = expiry.tick() => {
                    if term.is_some() {
                        self.expire().await;
                    }
                }
            }
        }
    }

    fn obey(term: &mut Option<u64>, control: Control) {
        match control {
            Control::Activate(t) => {
                info!(term = t, "executing commands");
                *term = Some(t);
            }
            Control::Deactivate => {
                if term.take().is_some() {
                    info!("stopped executing commands");
                }
            }
        }
    }

    /// Everything before the drain marker is answered: release the lease, so that the
    /// successor's claim need not wait for it, and stop.
    async fn drained(&mut self, term: &mut Option<u64>, done: oneshot::Sender<()>) {
        info!("queue drained");
        if let Some(t) = term.take()
            && let Err(e) = self.store.release_lease(t).await
        {
            warn!(error = %e, "releasing the lease failed; the successor waits for it to run out");
        }
        let _ = done.send(());
    }

    async fn renew(&self, term: &mut Option<u64>, t: u64) {
        match self.store.renew_lease(t).await {
            Ok(()) => {}
            Err(StoreError::Fenced { mine, current }) => {
                warn!(term = mine, current, "term superseded: stepping down");
                *term = None;
                self.metrics.fenced.inc();
                let _ = self.events.send(Event::Fenced).await;
            }
            Err(e) => {
                self.metrics.store_error(&e);
                warn!(error = %e, "renewing the lease failed")
            }
        }
    }

    fn depth(&self) -> i64 {
        (self.jobs.max_capacity() - self.jobs.capacity()) as i64
    }

    /// `first` and every job queued behind it, up to the batch bounds or a drain marker (which
    /// is returned, to be answered after the batch).
    fn gather(&mut self, first: Job) -> (Vec<Job>, Option<oneshot::Sender<()>>) {
        let mut bytes = first.request.command.size();
        let mut batch = vec![first];
        while batch.len() < self.max_batch && bytes < MAX_BATCH_BYTES {
            match self.jobs.try_recv() {
                Ok(ExecMsg::Job(job)) => {
                    bytes += job.request.command.size();
                    batch.push(*job);
                }
                Ok(ExecMsg::Drain(done)) => return (batch, Some(done)),
                Err(_) => break,
            }
        }
        (batch, None)
    }

    /// Makes the lease clock match the term: empty when not serving; when serving a term
    /// whose leases are not loaded yet, every lease in the store restarted at its full TTL (a
    /// store error leaves it to the next call).
    async fn sync_leases(&self, term: &mut Option<u64>, leases: &mut Leases) {
        if leases.loaded == *term {
            return;
        }
        leases.clock.clear();
        leases.loaded = None;
        let Some(t) = *term else { return };
        let now = tokio::time::Instant::now();
        let mut after = None;
        loop {
            let op = Op {
                id: format!("leases:{t}"),
                command: Command::List {
                    prefix: Some(crate::store::logic::lease_prefix()),
                    limit: Some(bully_client::DEFAULT_MAX_PAGE),
                    after: after.take(),
                },
            };
            let (items, next) = match self.store.apply_batch(t, &[op]).await {
                Ok(mut results) => match results.pop() {
                    Some(Ok(Applied {
                        outcome: Outcome::Page { items, next },
                        ..
                    })) => (items, next),
                    other => {
                        warn!(result = ?other, "listing the leases gave no page");
                        return;
                    }
                },
                Err(e) => {
                    self.store_failed(term, &e).await;
                    warn!(error = %e, "listing the leases failed; retrying");
                    return;
                }
            };
            for entry in items {
                let id = entry
                    .key
                    .rsplit('/')
                    .next()
                    .and_then(|id| id.parse::<u64>().ok());
                match (id, crate::store::logic::LeaseRecord::parse(&entry.value)) {
                    (Some(id), Ok(record)) => {
                        leases
                            .clock
                            .renewed(id, Duration::from_millis(record.ttl_ms), now)
                    }
                    _ => warn!(key = %entry.key.escape_debug(), "unreadable lease record"),
                }
            }
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        info!(
            term = t,
            leases = leases.clock.len(),
            "leases restarted at their full TTL"
        );
        leases.loaded = Some(t);
    }

    /// Applies an internal revoke for every lease that is due, in one batch of its own: in the
    /// serial order, between two client batches.
    async fn expire_leases(&mut self, term: &mut Option<u64>, clock: &mut LeaseClock) {
        let Some(t) = *term else { return };
        let now = tokio::time::Instant::now();
        let due = clock.due(now);
        if due.is_empty() {
            return;
        }
        // A fresh id per attempt: a revoke is idempotent (a second one finds no lease), and no
        // client can take the id first and block the expiry with an id conflict.
        let ops: Vec<Op> = due
            .iter()
            .map(|&id| Op {
                id: expiry_id(id, &bully_client::new_command_id()),
                command: Command::LeaseRevoke { id },
            })
            .collect();
        self.wrote = true;
        match self.store.apply_batch(t, &ops).await {
            Ok(results) => {
                for (id, result) in due.into_iter().zip(results) {
                    match result {
                        Ok(applied) => {
                            self.last_seq.fetch_max(applied.seq, Ordering::Relaxed);
                            info!(lease = id, seq = applied.seq, term = t, "lease expired");
                            clock.revoked(id);
                        }
                        Err(e) => {
                            warn!(lease = id, error = %e, "expiring a lease failed; retrying");
                            clock.retry_later(id, EXPIRY_RETRY, now);
                        }
                    }
                }
            }
            Err(e) => {
                self.store_failed(term, &e).await;
                warn!(error = %e, "expiring leases failed; retrying");
                for id in due {
                    clock.retry_later(id, EXPIRY_RETRY, now);
                }
            }
        }
    }

    /// Steps down if `e` says the term was superseded.
    async fn store_failed(&self, term: &mut Option<u64>, e: &StoreError) {
        self.metrics.store_error(e);
        if let StoreError::Fenced { mine, current } = e {
            warn!(term = mine, current, "term superseded: stepping down");
            *term = None;
            self.metrics.fenced.inc();
            let _ = self.events.send(Event::Fenced).await;
        }
    }

    async fn execute(&mut self, term: &mut Option<u64>, batch: Vec<Job>, clock: &mut LeaseClock) {
        let results: Vec<Result<Applied, ExecError>> = match *term {
            None => batch.iter().map(|_| Err(ExecError::NotServing)).collect(),
            Some(t) => {
                let ops: Vec<Op> = batch
                    .iter()
                    .map(|job| Op {
                        id: job.request.id.clone(),
                        command: job.request.command.clone(),
                    })
                    .collect();
                self.metrics.batch_size.observe(ops.len() as f64);
                self.wrote |= ops.iter().any(|op| !op.command.is_read());
                match self.store.apply_batch(t, &ops).await {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| r.map_err(ExecError::Store))
                        .collect(),
                    Err(e) => {
                        self.metrics.store_error(&e);
                        match &e {
                            StoreError::Fenced { mine, current } => {
                                warn!(term = mine, current, "term superseded: stepping down");
                                *term = None;
                                self.metrics.fenced.inc();
                                let _ = self.events.send(Event::Fenced).await;
                            }
                            StoreError::Unavailable(reason) => warn!(%reason, "store unavailable"),
                            StoreError::Corrupt(reason) => {
                                warn!(%reason, "corrupt data in the store")
                            }
                            StoreError::IdConflict { .. } | StoreError::LeaseHeld { .. } => {}
                        }
                        batch
                            .iter()
                            .map(|_| Err(ExecError::Store(e.clone())))
                            .collect()
                    }
                }
            }
        };
        let now = tokio::time::Instant::now();
        for (job, result) in batch.into_iter().zip(results) {
            if let Ok(applied) = &result {
                match (&job.request.command, &applied.outcome) {
                    (
                        Command::LeaseGrant { .. } | Command::LeaseKeepalive { .. },
                        Outcome::Lease { id, ttl_ms },
                    ) => clock.renewed(*id, Duration::from_millis(*ttl_ms), now),
                    (Command::LeaseRevoke { id }, _)
                    | (Command::LeaseKeepalive { id }, Outcome::LeaseNotFound { .. }) => {
                        clock.revoked(*id)
                    }
                    _ => {}
                }
            }
            self.answer(job, result);
        }
    }

    fn answer(&self, job: Job, result: Result<Applied, ExecError>) {
        let kind = job.request.command.kind();
        let result = result.map(|applied| {
            self.last_seq.fetch_max(applied.seq, Ordering::Relaxed);
            CommandResponse {
                id: job.request.id.clone(),
                seq: applied.seq,
                term: applied.term,
                outcome: applied.outcome,
                duplicate: applied.duplicate,
            }
        });
        let outcome = match &result {
            Ok(r) if r.duplicate => "duplicate",
            Ok(r) if r.outcome.is_success() => "ok",
            Ok(_) => "failed",
            Err(ExecError::NotServing | ExecError::Store(StoreError::IdConflict { .. })) => {
                "rejected"
            }
            Err(ExecError::Store(_)) => "error",
        };
        self.metrics.command(kind, outcome);
        if result.is_ok() {
            self.metrics
                .latency
                .get_or_create(&crate::metrics::KindLabels { kind })
                .observe(job.received.elapsed().as_secs_f64());
        }
        if let Ok(r) = &result
            && !matches!(r.outcome, Outcome::Value { .. } | Outcome::Page { .. })
        {
            debug!(id = %r.id, seq = r.seq, term = r.term, kind, "applied");
        }
        // The client may have given up; the result is stored anyway for its retry.
        let _ = job.reply.send(result);
    }

    async fn expire(&self) {
        let cutoff = crate::store::now_ms() - self.retention.as_millis() as i64;
        match self.store.expire(cutoff).await {
            Ok(0) => {}
            Ok(n) => debug!(removed = n, "expired command records"),
            Err(e) => {
                self.metrics.store_error(&e);
                warn!(error = %e, "expiring command records failed")
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
