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
//! A [`ExecMsg::Drain`] marker travels through the same queue: when the executor reaches it,
//! every command queued before it has been answered, and it stops applying (a handoff follows).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bully_client::{CommandResponse, Outcome};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::messages::{Control, Event, ExecError, ExecMsg, Job};
use crate::metrics::Metrics;
use crate::store::{Applied, Op, Store, StoreError};

/// A batch stops growing at this many bytes of commands (their values' JSON), so that one
/// store transaction stays well within what a MongoDB transaction may hold.
const MAX_BATCH_BYTES: usize = 4 << 20;

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
        loop {
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
                        self.execute(&mut term, batch).await;
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

    async fn execute(&mut self, term: &mut Option<u64>, batch: Vec<Job>) {
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
        for (job, result) in batch.into_iter().zip(results) {
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
