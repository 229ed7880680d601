//! bully's Kubernetes controller.
//!
//! The servers elect their coordinator among themselves; this controller only *observes* the
//! election and makes it visible to Kubernetes: it labels the coordinator pod
//! (`bully.dev/role=coordinator`, which the client Service selects), labels the others
//! `follower`, and reports the cluster in the status of a `BullyCluster` resource.
//!
//! # Layout
//! - [`crd`]: the `BullyCluster` resource and its CRD (`crdgen`).
//! - [`decide`]: the decision (who is coordinator, which labels change, the status), no I/O.
//! - [`fetch`]: reading a server's `GET /v1/status`, behind the [`fetch::StatusFetcher`] trait.
//! - [`reconcile`]: one reconcile against the API server, and the error policy.
//! - [`leader`]: leader election among the replicas, on a Lease.
//! - [`run`]: wiring: the election, the kube-runtime `Controller` while leading, the admin
//!   server, shutdown.
//! - [`admin`], [`metrics`]: `/healthz`, `/readyz`, `/metrics`.

pub mod admin;
pub mod crd;
pub mod decide;
pub mod fetch;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod run;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod leader_tests;
#[cfg(test)]
mod reconcile_tests;

pub use crd::{BullyCluster, BullyClusterSpec, BullyClusterStatus, MemberStatus};

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request; retried by the error policy.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A namespaced resource came without a namespace (never from a real API server).
    #[error("BullyCluster {0} has no namespace")]
    MissingNamespace(String),
}

impl Error {
    /// A short, bounded label for the `reconcile_errors` metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) => format!("api_{}", status.code),
            Error::Kube(_) => "kube_client".into(),
            Error::MissingNamespace(_) => "missing_namespace".into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
