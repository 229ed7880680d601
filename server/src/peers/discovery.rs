//! Peer discovery.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::messages::Event;

/// Where the peer list comes from.
#[derive(Clone, Debug)]
pub enum Discovery {
    Static(Vec<String>),
    /// `NAME:PORT`, resolved every `interval`.
    Dns {
        name: String,
        interval: Duration,
    },
}

impl Discovery {
    /// Feeds the peer list to the node until the node goes away.
    pub async fn run(self, events: mpsc::Sender<Event>) {
        match self {
            Discovery::Static(peers) => {
                let _ = events.send(Event::Peers(peers)).await;
            }
            Discovery::Dns { name, interval } => {
                let mut last: Option<Vec<String>> = None;
                loop {
                    match bully_client::resolve(&name).await {
                        Ok(addrs) => {
                            if last.as_ref() != Some(&addrs) {
                                debug!(%name, peers = ?addrs, "discovered peers");
                            }
                            last = Some(addrs.clone());
                            if events.send(Event::Peers(addrs)).await.is_err() {
                                return;
                            }
                        }
                        // Keep the last good list: a DNS hiccup must not look like every peer
                        // leaving at once.
                        Err(e) => warn!(%name, error = %e, "peer DNS lookup failed"),
                    }
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dns_discovery_reports_every_address_and_repeats() {
        let (tx, mut rx) = mpsc::channel(8);
        let discovery = Discovery::Dns {
            name: "localhost:7071".into(),
            interval: Duration::from_millis(10),
        };
        let task = tokio::spawn(discovery.run(tx));
        for _ in 0..2 {
            match rx.recv().await {
                Some(Event::Peers(peers)) => {
                    assert!(peers.iter().any(|p| p == "127.0.0.1:7071"), "{peers:?}")
                }
                other => panic!("expected peers, got {other:?}"),
            }
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_static_list_is_reported_once() {
        let (tx, mut rx) = mpsc::channel(8);
        let peers = vec!["10.0.0.1:7071".to_string(), "10.0.0.2:7071".to_string()];
        Discovery::Static(peers.clone()).run(tx).await;
        assert!(matches!(rx.recv().await, Some(Event::Peers(p)) if p == peers));
        assert!(rx.recv().await.is_none());
    }
}
