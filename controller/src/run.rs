//! Wiring: the kube-runtime `Controller` over `BullyCluster`s (also woken by changes of the pods
//! they select), the admin server, and graceful shutdown.

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
    /// Instance in events (`reportingInstance`); the pod name in a Deployment.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
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

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());

    let mut registry = Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));

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
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut pod_watch = watcher::Config::default();
    if let Some(selector) = &args.pod_selector {
        pod_watch = pod_watch.labels(selector);
    }

    let ctx = Arc::new(Context::new(
        client,
        Arc::new(fetcher),
        metrics,
        Reporter {
            controller: args.controller_name.clone(),
            instance: args.instance.clone(),
        },
    ));
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%namespace, "controller started");
    let shutdown_ready = ready.clone();
    let controller_stop = stopped();
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
            controller_stop.await;
            shutdown_ready.store(false, Ordering::Relaxed);
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
    ready.store(false, Ordering::Relaxed);
    admin
        .await
        .context("admin server task")?
        .context("admin server")?;
    tracing::info!("controller stopped");
    Ok(())
}
