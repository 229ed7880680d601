//! The executor: the one task that applies commands to the store, one after another.
//!
//! HTTP handlers queue [`Job`]s through a bounded channel and wait on a oneshot for the answer;
//! the executor takes them in arrival order and applies each under the term it was given by
//! the election driver ([`Control::Activate`]). Applying one command at a time in one task is what
//! makes the order global and serial; the store's term check makes it safe across coordinators.
//!
//! A [`ExecMsg::Drain`] marker travels through the same queue: when the executor reaches it,
//! every command queued before it has been answered, and it stops applying (a handoff follows).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bully_client::{CommandResponse, Outcome};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::messages::{Control, Event, ExecError, ExecMsg, Job};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub struct Executor {
    pub store: Arc<dyn Store>,
    pub jobs: mpsc::Receiver<ExecMsg>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub events: mpsc::Sender<Event>,
    pub metrics: Arc<Metrics>,
    pub last_seq: Arc<AtomicU64>,
    pub retention: Duration,
}

impl Executor {
    pub async fn run(mut self) {
        let mut term: Option<u64> = None;
        // Expire old command records every tenth of the retention (at most once a minute).
        let mut expiry = tokio::time::interval((self.retention / 10).min(Duration::from_secs(60)));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::Activate(t)) => {
                        info!(term = t, "executing commands");
                        term = Some(t);
                    }
                    Some(Control::Deactivate) => {
                        if term.take().is_some() {
                            info!("stopped executing commands");
                        }
                    }
                    None => return,
                },
                msg = self.jobs.recv() => match msg {
                    Some(ExecMsg::Job(job)) => {
                        self.metrics.queue_depth.set(self.depth());
                        self.execute(&mut term, *job).await;
                    }
                    Some(ExecMsg::Drain(done)) => {
                        info!("queue drained");
                        term = None;
                        let _ = done.send(());
                    }
                    None => return,
                },
                _ = expiry.tick() => {
                    if term.is_some() {
                        self.expire().await;
                    }
                }
            }
        }
    }

    fn depth(&self) -> i64 {
        (self.jobs.max_capacity() - self.jobs.capacity()) as i64
    }

    async fn execute(&self, term: &mut Option<u64>, job: Job) {
        let kind = job.request.command.kind();
        let result = match *term {
            None => Err(ExecError::NotServing),
            Some(t) => {
                let applied = self
                    .store
                    .apply(t, &job.request.id, &job.request.command)
                    .await;
                match applied {
                    Ok(applied) => {
                        self.last_seq.fetch_max(applied.seq, Ordering::Relaxed);
                        Ok(CommandResponse {
                            id: job.request.id.clone(),
                            seq: applied.seq,
                            term: applied.term,
                            outcome: applied.outcome,
                            duplicate: applied.duplicate,
                        })
                    }
                    Err(e) => {
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
                            StoreError::IdConflict { .. } => {}
                        }
                        Err(ExecError::Store(e))
                    }
                }
            }
        };
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
            Err(e) => warn!(error = %e, "expiring command records failed"),
        }
    }
}
