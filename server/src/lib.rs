//! bully-server: a Bully-elected coordinator that executes client commands serially on a
//! fenced store.
//!
//! # Layout
//! Dependencies run one way, from the bottom of this list to the top (a test,
//! `tests/module_deps.rs`, keeps it so):
//! - [`election`]: the Bully state machine (pure: messages and ticks in, outputs out), every
//!   election rule included; [`store`]: the `Store` trait with its embedded (SQLite) and
//!   MongoDB backends; [`timings`]: every timing, derived from the few users set.
//! - [`messages`]: what the tasks send each other ([`messages::Event`], [`messages::View`],
//!   jobs and executor control).
//! - [`executor`]: the single task that applies commands in order; [`driver`]: the task that
//!   does the election's I/O; [`peers`]: discovery (static list, DNS) and the peer transport.
//! - [`http`]: the client and peer APIs, health, status and metrics (store errors become HTTP
//!   errors here); [`auth`], [`error`], [`metrics`], [`config`]: leaves they use; [`tls`]:
//!   HTTPS listeners with reloaded certificates.
//! - this module: [`run`] wires one server together; [`local`]: the one-command cluster.
//!
//! Data path of one command: client → [`http`] (decode, validate) → executor queue →
//! [`store`] (fenced write) → reply.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub mod auth;
pub mod config;
pub mod driver;
pub mod election;
pub mod error;
pub mod executor;
pub mod http;
pub mod lease_clock;
pub mod local;
pub mod messages;
pub mod metrics;
pub mod peers;
pub mod store;
pub mod timings;
pub mod tls;

use config::{ServeArgs, ServerConfig, StoreKind};
use election::NodeInfo;
use http::limits::LimitedListener;
use messages::{Event, View};
use peers::discovery::Discovery;
use store::Store;
use tls::TlsListener;

/// Opens the configured store backend (creating its schema if needed).
pub async fn open_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match args.store {
        StoreKind::Embedded => Arc::new(
            store::embedded::EmbeddedStore::open(&args.embedded_path)
                .with_context(|| format!("opening {}", args.embedded_path.display()))?,
        ),
        StoreKind::Mongodb => {
            let uri = args.mongodb_uri.as_deref().unwrap_or_default();
            let options = store::mongo::MongoOptions {
                op_deadline: args.store_timeout,
            };
            // The URI was checked at startup: a failure here is the store being down or
            // unreachable (a replica set starting with the servers, a restart). Keep trying,
            // as a server without its store is not ready, rather than exit.
            let mut pause = Duration::from_millis(200);
            loop {
                match store::mongo::MongoStore::connect(
                    uri,
                    &args.mongodb_database,
                    options.clone(),
                )
                .await
                {
                    Ok(store) => break Arc::new(store),
                    Err(e) => {
                        warn!(error = %e, retry_in = ?pause, "cannot reach MongoDB yet");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    })
}

/// The host this server tells others to reach it at.
async fn advertise_host(args: &ServeArgs, listen: SocketAddr) -> String {
    if let Some(host) = &args.advertise_host {
        return host.clone();
    }
    if !listen.ip().is_unspecified() {
        return listen.ip().to_string();
    }
    // In a container or pod the host name resolves to the interface address.
    if let Ok(name) = nix::unistd::gethostname()
        && let Some(name) = name.to_str()
        && let Ok(addrs) = tokio::net::lookup_host((name, 0)).await
    {
        let mut addrs: Vec<SocketAddr> = addrs.filter(|a| !a.ip().is_loopback()).collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        if let Some(addr) = addrs.first() {
            return addr.ip().to_string();
        }
    }
    "127.0.0.1".to_string()
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Serves `router` on `listener` until `stop` turns true.
fn spawn_server<L>(
    listener: L,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .into_future(),
    )
}

/// Runs one server on the given listeners until `shutdown` completes, then hands over (if
/// coordinator) and returns.
pub async fn run(
    config: ServerConfig,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let ServerConfig { args, timings } = config;
    let token = match &args.token_file {
        Some(path) => Some(auth::Token::from_file(path).context("--token-file")?),
        None => None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let store = tokio::select! {
        store = open_store(&args) => store?,
        _ = &mut shutdown => {
            info!("stopped before the store was reached");
            return Ok(());
        }
    };
    let rank = args.rank.unwrap_or_else(rand::random);
    let client_addr = client_listener.local_addr()?;
    let host = advertise_host(&args, client_addr).await;
    let me = NodeInfo {
        rank,
        peer_addr: join_host_port(&host, peer_listener.local_addr()?.port()),
        client_addr: join_host_port(&host, client_addr.port()),
    };
    let expected_servers = args.expected_servers(&me.peer_addr);
    info!(
        rank,
        peer_addr = %me.peer_addr,
        client_addr = %me.client_addr,
        store = store.backend(),
        expected_servers,
        "server starting"
    );

    let metrics = Arc::new(metrics::Metrics::new());
    metrics.queue_capacity.set(args.queue_capacity as i64);
    let last_seq = Arc::new(AtomicU64::new(0));
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (jobs_tx, jobs_rx) = mpsc::channel(args.queue_capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (view_tx, view_rx) = watch::channel(View::starting());

    tokio::spawn(
        executor::Executor {
            store: store.clone(),
            jobs: jobs_rx,
            control: control_rx,
            events: events_tx.clone(),
            metrics: metrics.clone(),
            last_seq: last_seq.clone(),
            retention: args.retention,
            max_batch: args.max_batch,
            lease_renewal: timings.lease_renewal,
            wrote: false,
        }
        .run(),
    );
    let discovery = match &args.peer_dns {
        Some(name) => Discovery::Dns {
            name: name.clone(),
            interval: args.peer_dns_interval,
        },
        None => Discovery::Static(args.peers.clone()),
    };
    tokio::spawn(discovery.run(events_tx.clone()));
    let tls = match args.tls_files() {
        Some(files) => Some(files.watch().context("TLS")?),
        None => None,
    };
    let transport = peers::transport::Transport::new(
        token.as_ref().map(|t| t.secret()),
        timings.peer_message_ttl,
        events_tx.clone(),
        tls.clone(),
        metrics.peer_messages_sent.clone(),
    );
    let election = election::Config::new(&timings, expected_servers);
    let mut driver = tokio::spawn(
        driver::ElectionDriver {
            node: election::Node::new(me.clone(), election, 0),
            events_rx,
            events: events_tx.clone(),
            jobs: jobs_tx.clone(),
            control: control_tx,
            view: view_tx,
            transport,
            store,
            metrics: metrics.clone(),
            tick: timings.tick,
            lease: timings.lease,
        }
        .run(),
    );

    let state = http::AppState {
        me,
        view: view_rx,
        jobs: jobs_tx,
        events: events_tx.clone(),
        limits: args.limits(),
        max_body: args.max_body_bytes(),
        metrics,
        last_seq,
        token,
        hold: timings.hold,
        answer_timeout: timings.command_timeout,
        request_timeout: args.request_timeout,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let client_listener = LimitedListener::new(client_listener, args.max_connections);
    // The peer API's cap only bounds what a misbehaving client can hold open.
    let peer_listener = LimitedListener::new(peer_listener, 1024);
    let client_router = http::client_router(state.clone());
    let peer_router = http::peer_router(state);
    let (client_server, peer_server) = match &tls {
        Some(configs) => (
            spawn_server(
                TlsListener::new(client_listener, configs.clone(), tls::Api::Client)?,
                client_router,
                stop_rx.clone(),
            ),
            spawn_server(
                TlsListener::new(peer_listener, configs.clone(), tls::Api::Peer)?,
                peer_router,
                stop_rx,
            ),
        ),
        None => (
            spawn_server(client_listener, client_router, stop_rx.clone()),
            spawn_server(peer_listener, peer_router, stop_rx),
        ),
    };

    tokio::select! {
        _ = shutdown => {
            let _ = events_tx.send(Event::Shutdown).await;
            match tokio::time::timeout(args.shutdown_timeout, &mut driver).await {
                Ok(_) => info!("stopped cleanly"),
                Err(_) => warn!(timeout = ?args.shutdown_timeout, "handover did not finish in time; exiting anyway"),
            }
        }
        _ = &mut driver => warn!("election driver stopped"),
    }
    let _ = stop_tx.send(true);
    for server in [client_server, peer_server] {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    Ok(())
}
