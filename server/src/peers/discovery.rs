//! Peer discovery.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::node::Event;

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
