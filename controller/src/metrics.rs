//! Prometheus metrics of the controller, served on `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub cluster: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub cluster: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub cluster: String,
    pub reason: String,
}

/// Every metric the controller exports. Cheap to clone (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ClusterLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub label_changes: Family<RoleLabels, Counter>,
    pub coordinator_changes: Family<ClusterLabels, Counter>,
    pub status_failures: Family<ReasonLabels, Counter>,
    /// 1 while this replica holds the lease and runs the controller.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            // 1 ms .. ~4 s: a reconcile is one list, a few 500 ms-bounded status reads in
            // parallel, and a few patches.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            label_changes: Family::default(),
            coordinator_changes: Family::default(),
            status_failures: Family::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `bully_controller` prefix.
    pub fn register(self, registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("bully_controller");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            self.reconcile_duration.clone(),
        );
        r.register(
            "label_changes",
            "Role labels written on pods, by the role set",
            self.label_changes.clone(),
        );
        r.register(
            "coordinator_changes",
            "Times the coordinator pod or term changed",
            self.coordinator_changes.clone(),
        );
        r.register(
            "status_failures",
            "Selected pods without a status, by reason",
            self.status_failures.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles, 0 on a standby",
            self.leader.clone(),
        );
        self
    }

    /// Counts a reconcile and measures it until the guard drops.
    pub fn start(&self, cluster: &str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc();
        ReconcileTimer {
            histogram: self.reconcile_duration.clone(),
            start: Instant::now(),
        }
    }

    pub fn error(&self, cluster: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                cluster: cluster.to_string(),
                error: error.to_string(),
            })
            .inc();
    }

    pub fn label_change(&self, cluster: &str, role: &str) {
        self.label_changes
            .get_or_create(&RoleLabels {
                cluster: cluster.to_string(),
                role: role.to_string(),
            })
            .inc();
    }

    pub fn coordinator_change(&self, cluster: &str) {
        self.coordinator_changes
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    pub fn status_failure(&self, cluster: &str, reason: &str) {
        self.status_failures
            .get_or_create(&ReasonLabels {
                cluster: cluster.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Observes the reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
