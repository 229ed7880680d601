//! Election messages over HTTP: `POST /peer/v1/message` with an [`Envelope`] as JSON.
//!
//! Delivery is best-effort, like the datagrams the Bully algorithm assumes: each peer has a
//! small queue drained by its own task, a message that finds the queue full is dropped, and a
//! failed request is not retried (the election's timeouts and periodic heartbeats cover loss)
//! — except once on a fresh connection when a kept-alive one broke, which is how a peer that
//! died shows itself first. A refused connection is certain evidence that nobody listens on
//! the peer's port: it is reported ([`Event::Unreachable`]) so the election need not wait for
//! the heartbeat timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::trace;

use crate::election::{Envelope, Message};
use crate::messages::Event;
use crate::metrics::KindLabels;
use crate::tls::Loaded;

/// Messages a peer may have queued before more are dropped.
const QUEUE: usize = 64;
/// A peer's task ends after this long without messages (peers come and go with their IPs).
const IDLE: Duration = Duration::from_secs(30);

/// An envelope and when it was queued.
type Queued = (Instant, Envelope);

/// Sends envelopes to peers.
#[derive(Clone)]
pub struct Transport {
    /// Rebuilt when TLS certificates are reloaded; a std lock held only to clone the client.
    http: Arc<std::sync::RwLock<reqwest::Client>>,
    /// Peers speak HTTPS.
    tls: bool,
    token: Option<Arc<str>>,
    timeout: Duration,
    /// Where refusals are reported.
    events: mpsc::Sender<Event>,
    /// Counts every message handed to [`send`](Self::send), delivered or not: what the
    /// election emits, which is what its message complexity is about.
    sent: Family<KindLabels, Counter>,
    // Held only to look up or insert a sender; never across an await.
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Queued>>>>,
}

impl Transport {
    /// `timeout` bounds each request, so a paused peer holds up only its own queue; `sent`
    /// counts messages by kind (the `peer_messages_sent` metric).
    pub fn new(
        token: Option<Arc<str>>,
        timeout: Duration,
        events: mpsc::Sender<Event>,
        tls: Option<watch::Receiver<Arc<Loaded>>>,
        sent: Family<KindLabels, Counter>,
    ) -> Transport {
        let build = move |tls: Option<&Loaded>| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(timeout)
                .pool_idle_timeout(IDLE);
            if let Some(loaded) = tls {
                builder = builder.use_preconfigured_tls((*loaded.peer_client).clone());
            }
            builder.build().unwrap_or_default()
        };
        let http = Arc::new(std::sync::RwLock::new(build(
            tls.as_ref().map(|rx| rx.borrow().clone()).as_deref(),
        )));
        if let Some(mut rx) = tls.clone() {
            let http = http.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let client = build(Some(&rx.borrow().clone()));
                    if let Ok(mut current) = http.write() {
                        *current = client;
                    }
                }
            });
        }
        Transport {
            http,
            tls: tls.is_some(),
            token,
            timeout,
            events,
            sent,
            queues: Arc::default(),
        }
    }

    /// Queues `envelope` for `to`; drops it if that peer's queue is full.
    pub fn send(&self, to: &str, envelope: Envelope) {
        self.sent
            .get_or_create(&KindLabels {
                kind: kind(&envelope.message),
            })
            .inc();
        self.enqueue(to, envelope);
    }

    fn enqueue(&self, to: &str, envelope: Envelope) {
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
                    return self.enqueue(to, envelope);
                }
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx.try_send((Instant::now(), envelope));
        queues.insert(to.to_string(), tx);
        tokio::spawn(self.clone().deliver(to.to_string(), rx));
    }

    async fn deliver(self, to: String, mut rx: mpsc::Receiver<Queued>) {
        let url = bully_client::client::url_with(self.tls, &to, "/peer/v1/message");
        while let Ok(Some((queued, envelope))) = tokio::time::timeout(IDLE, rx.recv()).await {
            // Behind a slow or paused peer the queue backs up; a heartbeat that old would
            // describe a state that has since changed, so it is dropped, not delivered late.
            if queued.elapsed() > self.timeout {
                continue;
            }
            let mut result = self.post(&url, &envelope).await;
            if let Err(e) = &result
                && !e.is_timeout()
                && !e.is_connect()
                && !e.is_status()
            {
                // A kept-alive connection broke (the peer closed or reset it): once more, on
                // a fresh one. A duplicate election message is harmless.
                result = self.post(&url, &envelope).await;
            }
            if let Err(e) = result {
                trace!(peer = %to, error = %e, "peer message not delivered");
                if refused(&e) {
                    let _ = self.events.try_send(Event::Unreachable(to.clone()));
                }
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

impl Transport {
    async fn post(&self, url: &str, envelope: &Envelope) -> reqwest::Result<reqwest::Response> {
        let http = match self.http.read() {
            Ok(http) => http.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut request = http.post(url).timeout(self.timeout).json(envelope);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await?.error_for_status()
    }
}

/// The metric label of a message.
fn kind(message: &Message) -> &'static str {
    match message {
        Message::Heartbeat { .. } => "heartbeat",
        Message::Election => "election",
        Message::Answer => "answer",
        Message::Coordinator { .. } => "coordinator",
        Message::Takeover => "takeover",
        Message::Handoff => "handoff",
        Message::Leaving => "leaving",
    }
}

/// Whether the connection was refused (RST on connect): nobody listens on that port.
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = inner.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{Message, NodeInfo};

    #[tokio::test]
    async fn a_refused_connection_is_reported_and_a_silent_peer_is_not() {
        let (tx, mut rx) = mpsc::channel(8);
        let transport = Transport::new(
            None,
            Duration::from_millis(300),
            tx,
            None,
            Family::default(),
        );
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = format!("127.0.0.1:{port}");
        let envelope = Envelope {
            from: NodeInfo {
                rank: 1,
                peer_addr: "127.0.0.1:1".into(),
                client_addr: "127.0.0.1:2".into(),
            },
            message: Message::Election,
        };
        transport.send(&dead, envelope.clone());
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Event::Unreachable(addr))) => assert_eq!(addr, dead),
            other => panic!("expected the refusal, got {other:?}"),
        }
        // A peer that accepts and never answers times out: no certainty, no report.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        transport.send(&addr, envelope);
        let report = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        assert!(report.is_err(), "a silent peer was reported: {report:?}");
    }

    #[tokio::test]
    async fn counts_every_message_by_kind_delivered_or_not() {
        let (tx, _rx) = mpsc::channel(8);
        let sent = Family::<KindLabels, Counter>::default();
        let transport = Transport::new(None, Duration::from_millis(50), tx, None, sent.clone());
        let envelope = |message| Envelope {
            from: NodeInfo {
                rank: 1,
                peer_addr: "127.0.0.1:1".into(),
                client_addr: "127.0.0.1:2".into(),
            },
            message,
        };
        // Nobody listens on port 1: the messages are counted all the same.
        for _ in 0..3 {
            transport.send("127.0.0.1:1", envelope(Message::Election));
        }
        transport.send("127.0.0.1:1", envelope(Message::Answer));
        let count = |kind| sent.get_or_create(&KindLabels { kind }).get();
        assert_eq!(
            (count("election"), count("answer"), count("heartbeat")),
            (3, 1, 0)
        );
    }
}
