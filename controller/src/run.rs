//! Wiring: leader election, the kube-runtime `Controller` over `BullyCluster`s (also woken by
//! changes of the pods they select) while this replica leads, the admin server, and graceful
//! shutdown.
//!
//! A standby watches nothing: the controller (its watches, caches and reconciles) starts when
//! the replica becomes leader and is dropped the moment it stops being leader, in-flight
//! reconciles included. On SIGTERM a leader lets running reconciles finish, then releases the
//! lease.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::crd::BullyCluster;
use crate::fetch::HttpStatusFetcher;
use crate::leader::{self, LeaseConfig, Role};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

/// `bully-controller run` options.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Namespace whose BullyClusters (and pods) to manage. Default: the service account's
    /// namespace in a pod, else the kubeconfig context's.
    #[arg(long, env = "BULLY_CONTROLLER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "BULLY_CONTROLLER_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_listen: SocketAddr,
    /// Timeout of one `GET /v1/status`; keep it below the clusters' requeue interval.
    #[arg(long, env = "BULLY_CONTROLLER_STATUS_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub status_timeout: Duration,
    /// Bearer token for the servers' status endpoint (the servers' `--token-file`).
    #[arg(long, env = "BULLY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Reach the servers over HTTPS, verifying them against this CA file (PEM), as when the
    /// servers run with TLS.
    #[arg(long, env = "BULLY_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The DNS name the servers' certificates must carry (they are reached by pod IP).
    #[arg(long, env = "BULLY_TLS_SERVER_NAME", requires = "ca_file")]
    pub tls_server_name: Option<String>,
    /// Label selector narrowing the pod watch (e.g. `app.kubernetes.io/name=bully`). Only a
    /// trigger: reconciles list pods by each cluster's own selector.
    #[arg(long, env = "BULLY_CONTROLLER_POD_SELECTOR")]
    pub pod_selector: Option<String>,
    /// Name of this controller in events (`reportingController`).
    #[arg(
        long,
        env = "BULLY_CONTROLLER_NAME",
        default_value = "bully-controller"
    )]
    pub controller_name: String,
    /// Instance in events (`reportingInstance`), in the BullyCluster status (`reconciledBy`)
    /// and the holder identity in the Lease: the pod name in a Deployment.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub election: ElectionArgs,
}

/// Leader election among the controller's replicas (see [`crate::leader`]).
#[derive(Clone, Debug, clap::Args)]
pub struct ElectionArgs {
    /// Elect one active replica through a `coordination.k8s.io/v1` Lease. `false` for a single
    /// replica that needs no Lease permissions (it always leads).
    #[arg(long, env = "BULLY_CONTROLLER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease, in the controller's namespace.
    #[arg(
        long,
        env = "BULLY_CONTROLLER_LEASE_NAME",
        default_value = "bully-controller"
    )]
    pub lease_name: String,
    /// A lease runs out this long after its holder last renewed it: a standby takes over at
    /// most about this long after the leader died.
    #[arg(
        long,
        env = "BULLY_CONTROLLER_LEASE_DURATION_SECONDS",
        default_value_t = 10
    )]
    pub lease_duration_seconds: u64,
    /// The leader renews its lease this long before it runs out, and gives up leading when the
    /// renewal has not succeeded within half of it; also the clock skew between nodes that the
    /// election tolerates. Below the duration.
    #[arg(
        long,
        env = "BULLY_CONTROLLER_LEASE_GRACE_SECONDS",
        default_value_t = 4
    )]
    pub lease_grace_seconds: u64,
    /// Wait after a failed Lease request before trying again.
    #[arg(long, env = "BULLY_CONTROLLER_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lease_retry_period: Duration,
}

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(bully_client::token::read_token_file(path).context("--token-file")?),
        None => None,
    };
    let tls = match &args.ca_file {
        Some(ca) => Some(
            bully_client::tls::client_config(&bully_client::tls::TlsFiles {
                ca: ca.clone(),
                server_name: args.tls_server_name.clone(),
                identity: None,
            })
            .context("--ca-file")?,
        ),
        None => None,
    };
    let fetcher = HttpStatusFetcher::new(args.status_timeout, token, tls)
        .context("building the HTTP client for server status")?;

    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster config or kubeconfig)")?;
    let client =
        kube::Client::try_from(config.clone()).context("building the Kubernetes client")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let identity = args.instance.clone().unwrap_or_else(default_identity);
    let lease = LeaseConfig {
        name: args.election.lease_name.clone(),
        namespace: namespace.clone(),
        identity: identity.clone(),
        duration_seconds: args.election.lease_duration_seconds,
        grace_seconds: args.election.lease_grace_seconds,
        retry_period: args.election.lease_retry_period,
    };
    if args.election.leader_election {
        lease
            .validate()
            .map_err(|msg| anyhow::anyhow!("leader election: {msg}"))?;
    }

    let mut registry = Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let (role_tx, mut role) = watch::channel(Role::Standby);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    tracing::info!(addr = %args.metrics_listen, "admin server listening");
    let admin_app = admin::router(AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        role: role.clone(),
    });
    let admin_stop = stopped();
    let admin = tokio::spawn(async move {
        axum::serve(listener, admin_app)
            .with_graceful_shutdown(admin_stop)
            .await
    });

    let clusters: Api<BullyCluster> = Api::namespaced(client.clone(), &namespace);
    clusters
        .list(&ListParams::default().limit(1))
        .await
        .context("listing BullyClusters failed; is the CRD installed (charts/bully/crds) and may this service account list them?")?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(fetcher),
        metrics.clone(),
        Reporter {
            controller: args.controller_name.clone(),
            instance: Some(identity.clone()),
        },
    ));

    // The elector stops after the controller: a leader finishes its reconciles, then releases.
    let (elector_stop_tx, elector_stop) = tokio::sync::oneshot::channel::<()>();
    let (elector, _always_leader) = if args.election.leader_election {
        let lease_client = kube::client::ClientBuilder::try_from(config)
            .context("building the Kubernetes client for the Lease")?
            .with_layer(&tower::timeout::TimeoutLayer::new(lease.request_timeout()))
            .build();
        tracing::info!(lease = %lease.name, %identity, "taking part in leader election");
        let elector = tokio::spawn(leader::elect(lease_client, lease, role_tx, async move {
            let _ = elector_stop.await;
        }));
        (Some(elector), None)
    } else {
        let _ = role_tx.send(Role::Leader);
        // Kept to the end: a closed channel would read as a lost lease.
        (None, Some(role_tx))
    };
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%namespace, "controller started");

    loop {
        tokio::select! {
            biased;
            _ = stopped() => break,
            leading = role.wait_for(|r| *r == Role::Leader) => if leading.is_err() { break },
        }
        metrics.leader.set(1);
        tracing::info!(%identity, "leading: starting the controller");
        let controller = controller(&client, &namespace, &args, ctx.clone(), stopped());
        tokio::select! {
            _ = controller => {
                metrics.leader.set(0);
                break;
            }
            _ = role.wait_for(|r| *r != Role::Leader) => {
                metrics.leader.set(0);
                tracing::warn!(%identity, "no longer leading: stopped reconciling");
            }
        }
    }
    ready.store(false, Ordering::Relaxed);
    let _ = elector_stop_tx.send(());
    if let Some(elector) = elector {
        elector.await.context("leader election task")?;
    }
    admin
        .await
        .context("admin server task")?
        .context("admin server")?;
    tracing::info!("controller stopped");
    Ok(())
}

/// The kube-runtime controller, until `stop` resolves and its running reconciles finished.
async fn controller(
    client: &kube::Client,
    namespace: &str,
    args: &RunArgs,
    ctx: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<BullyCluster> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod_watch = watcher::Config::default();
    if let Some(selector) = &args.pod_selector {
        pod_watch = pod_watch.labels(selector);
    }
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(pods, pod_watch, move |pod: Pod| {
            store
                .state()
                .into_iter()
                .filter(|cluster| reconcile::selects(cluster, &pod))
                .map(|cluster| ObjectRef::from_obj(&*cluster))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move {
            stop.await;
            tracing::info!("shutting down: letting running reconciles finish");
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((cluster, _)) => tracing::debug!(cluster = %cluster, "reconciled"),
                // Already logged and counted by the error policy.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // Watch failures (RBAC, a missing CRD, the API server away): retried with backoff.
                Err(err) => tracing::warn!(error = %err, "controller error"),
            }
        })
        .await;
}

/// A holder identity outside a pod (no `POD_NAME`): the host name and the process id.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "bully-controller".into());
    format!("{host}-{}", std::process::id())
}
