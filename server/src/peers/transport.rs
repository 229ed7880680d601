//! Election messages over HTTP: `POST /peer/v1/message` with an [`Envelope`] as JSON.
//!
//! Delivery is best-effort, like the datagrams the Bully algorithm assumes: each peer has a
//! small queue drained by its own task, a message that finds the queue full is dropped, and a
//! failed request is not retried (the election's timeouts and periodic heartbeats cover loss).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::trace;

use crate::election::Envelope;

/// Messages a peer may have queued before more are dropped.
const QUEUE: usize = 64;
/// A peer's task ends after this long without messages (peers come and go with their IPs).
const IDLE: Duration = Duration::from_secs(30);

/// An envelope and when it was queued.
type Queued = (Instant, Envelope);

/// Sends envelopes to peers.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    token: Option<Arc<str>>,
    timeout: Duration,
    // Held only to look up or insert a sender; never across an await.
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Queued>>>>,
}

impl Transport {
    /// `timeout` bounds each request, so a paused peer holds up only its own queue.
    pub fn new(token: Option<Arc<str>>, timeout: Duration) -> Transport {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(IDLE)
            .build()
            .unwrap_or_default();
        Transport {
            http,
            token,
            timeout,
            queues: Arc::default(),
        }
    }

    /// Queues `envelope` for `to`; drops it if that peer's queue is full.
    pub fn send(&self, to: &str, envelope: Envelope) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        if let Some(queue) = queues.get(to) {
            match queue.try_send((Instant::now(), envelope)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    trace!(peer = to, "peer queue full, message dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed((_, envelope))) => {
                    queues.remove(to);
                    drop(queues);
                    return self.send(to, envelope);
                }
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send((Instant::now(), envelope));
        queues.insert(to.to_string(), tx);
        tokio::spawn(self.clone().deliver(to.to_string(), rx));
    }

    async fn deliver(self, to: String, mut rx: mpsc::Receiver<Queued>) {
        let url = bully_client::client::url(&to, "/peer/v1/message");
        while let Ok(Some((queued, envelope))) = tokio::time::timeout(IDLE, rx.recv()).await {
            // Behind a slow or paused peer the queue backs up; a heartbeat that old would
            // describe a state that has since changed, so it is dropped, not delivered late.
            if queued.elapsed() > self.timeout {
                continue;
            }
            let mut request = self.http.post(&url).timeout(self.timeout).json(&envelope);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Err(e) = request.send().await {
                trace!(peer = %to, error = %e, "peer message not delivered");
            }
        }
        if let Ok(mut queues) = self.queues.lock()
            && queues
                .get(&to)
                .is_some_and(|q| q.is_closed() || q.capacity() == QUEUE)
        {
            queues.remove(&to);
        }
    }
}
