//! A fault-injecting proxy between servers' peer APIs, so the harness can cut single links.
//!
//! A server's identity among peers is the `peer_addr` it advertises (`--advertise-host` plus
//! its peer listener's port), and every message to it goes to that address. So server *j*
//! listens for peers on `127.0.0.2:P` while advertising `127.0.0.1:P`, and the harness listens
//! on `127.0.0.1:P`: every message to *j*, from anyone, passes through proxy *j*. The sender is
//! named inside each message (`Envelope::from.peer_addr`), so the proxy knows the link
//! (sender, *j*) of every message and drops those of cut links. No server change is needed,
//! and cuts can be one-way.
//!
//! A dropped message is either refused at once (`503`, like a closed port) or held until the
//! sender's own timeout expires (a black hole, like a silent network); both look like loss to
//! the best-effort transport, but a black hole also keeps the sender's per-peer queue busy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use serde::{Deserialize, Serialize};

/// How a cut link loses messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// Answer 503 at once.
    Refuse,
    /// Hold the request past the sender's timeout, then drop it.
    Blackhole,
}

/// Longer than any sender's per-message timeout (at most the heartbeat timeout).
const BLACKHOLE_HOLD: Duration = Duration::from_secs(2);
/// Forwarding to a paused server must not pile up requests in the harness.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);

/// Which links are cut, shared by every proxy of one cluster. Several faults may cut the same
/// link; it heals when the last of them ends.
#[derive(Default)]
pub struct Links {
    // (from, to) -> (fault id -> mode). Held only briefly, never across an await.
    cuts: Mutex<HashMap<(usize, usize), HashMap<u64, CutMode>>>,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

impl Links {
    /// Cuts `from → to` for fault `fault`.
    pub fn cut(&self, fault: u64, from: usize, to: usize, mode: CutMode) {
        if let Ok(mut cuts) = self.cuts.lock() {
            cuts.entry((from, to)).or_default().insert(fault, mode);
        }
    }

    /// Ends every cut of fault `fault`.
    pub fn heal(&self, fault: u64) {
        if let Ok(mut cuts) = self.cuts.lock() {
            cuts.retain(|_, faults| {
                faults.remove(&fault);
                !faults.is_empty()
            });
        }
    }

    pub fn heal_all(&self) {
        if let Ok(mut cuts) = self.cuts.lock() {
            cuts.clear();
        }
    }

    /// The mode of the cut on `from → to`, if cut (a black hole wins over a refusal).
    pub fn state(&self, from: usize, to: usize) -> Option<CutMode> {
        let cuts = self.cuts.lock().ok()?;
        let faults = cuts.get(&(from, to))?;
        Some(if faults.values().any(|m| *m == CutMode::Blackhole) {
            CutMode::Blackhole
        } else {
            CutMode::Refuse
        })
    }
}

#[derive(Clone)]
struct Target {
    index: usize,
    /// Where the server really listens for peers.
    real: String,
    /// Advertised peer address → server index, to name senders.
    senders: Arc<HashMap<String, usize>>,
    links: Arc<Links>,
    http: reqwest::Client,
}

/// Starts the proxy for server `index` on `listener`, forwarding to `real`; runs until the
/// runtime shuts down or the returned handle is aborted.
pub fn spawn(
    listener: std::net::TcpListener,
    index: usize,
    real: SocketAddr,
    senders: Arc<HashMap<String, usize>>,
    links: Arc<Links>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let target = Target {
        index,
        real: format!("http://{real}"),
        senders,
        links,
        http: reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?,
    };
    let app = Router::new()
        .route("/peer/v1/message", post(forward))
        .with_state(target);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// The sender's advertised peer address, from the message body.
fn sender(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("from")?.get("peer_addr")?.as_str()?.to_string())
}

async fn forward(State(target): State<Target>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let from = sender(&body).and_then(|addr| target.senders.get(&addr).copied());
    if let Some(from) = from
        && let Some(mode) = target.links.state(from, target.index)
    {
        target.links.dropped.fetch_add(1, Ordering::Relaxed);
        if mode == CutMode::Blackhole {
            tokio::time::sleep(BLACKHOLE_HOLD).await;
        }
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let mut request = target
        .http
        .post(format!("{}/peer/v1/message", target.real))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth);
    }
    match request.send().await {
        Ok(response) => {
            target.links.forwarded.fetch_add(1, Ordering::Relaxed);
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}
