//! Prometheus metrics, served as text on `/metrics`. Every metric is described in
//! `docs/metrics.md`; the chart's alerts and dashboard use them by name (a test checks).

use bully_client::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub kind: &'static str,
    /// ok, failed (command-level), duplicate, rejected (4xx), error (5xx).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// The error's stable wire code (`queue_full`, `not_coordinator`, ...).
    pub code: String,
}

/// Every metric this server exports.
pub struct Metrics {
    registry: Registry,
    pub role: Family<RoleLabels, Gauge>,
    pub term: Gauge,
    pub elections: Counter,
    pub commands: Family<CommandLabels, Counter>,
    pub latency: Family<KindLabels, Histogram>,
    pub queue_depth: Gauge,
    /// The queue's bound (`--queue-capacity`), so that alerts can compare the depth to it.
    pub queue_capacity: Gauge,
    pub live_peers: Gauge,
    /// 1 while `/readyz` says ready (a live coordinator is known).
    pub ready: Gauge,
    /// Command requests answered with an error, by its code.
    pub command_errors: Family<CodeLabels, Counter>,
    /// Store operations that failed other than by fencing, by kind (`unavailable`, `corrupt`).
    pub store_errors: Family<KindLabels, Counter>,
    pub fenced: Counter,
    pub batch_size: Histogram,
    /// Election and heartbeat messages handed to the peer transport, by message kind.
    pub peer_messages_sent: Family<KindLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bully");
        let role = Family::<RoleLabels, Gauge>::default();
        let term = Gauge::default();
        let elections = Counter::default();
        let commands = Family::<CommandLabels, Counter>::default();
        let latency = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~6.5 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 17,
            ))
        });
        let queue_depth = Gauge::default();
        let queue_capacity = Gauge::default();
        let live_peers = Gauge::default();
        let ready = Gauge::default();
        let command_errors = Family::<CodeLabels, Counter>::default();
        let store_errors = Family::<KindLabels, Counter>::default();
        let fenced = Counter::default();
        // 1 to 512 commands.
        let batch_size = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10),
        );
        let peer_messages_sent = Family::<KindLabels, Counter>::default();
        registry.register(
            "role",
            "1 for this server's current election role",
            role.clone(),
        );
        registry.register("term", "Term held as coordinator (0 if none)", term.clone());
        registry.register(
            "elections",
            "Elections this server started",
            elections.clone(),
        );
        registry.register(
            "commands",
            "Client commands by kind and outcome",
            commands.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time from receipt to answer of commands this server executed",
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Commands waiting for the executor",
            queue_depth.clone(),
        );
        registry.register(
            "queue_capacity",
            "Commands the executor queue holds at most",
            queue_capacity.clone(),
        );
        registry.register(
            "live_peers",
            "Peers heard within the heartbeat timeout",
            live_peers.clone(),
        );
        registry.register(
            "ready",
            "1 while this server knows a live coordinator (what /readyz says)",
            ready.clone(),
        );
        registry.register(
            "command_errors",
            "Command requests answered with an error, by error code",
            command_errors.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations other than fencing, by kind",
            store_errors.clone(),
        );
        registry.register(
            "fenced",
            "Times this server found its term superseded",
            fenced.clone(),
        );
        registry.register(
            "batch_size",
            "Commands per store operation (group commit)",
            batch_size.clone(),
        );
        registry.register(
            "peer_messages_sent",
            "Peer messages sent (heartbeats and election messages), by kind",
            peer_messages_sent.clone(),
        );
        // Series the alerts rate: present (at 0) from the start, since `rate` and `increase`
        // miss a counter's first increment when its series appears only with it.
        for kind in ["unavailable", "corrupt"] {
            let _ = store_errors.get_or_create(&KindLabels { kind });
        }
        for code in [ErrorCode::QueueFull, ErrorCode::StoreUnavailable] {
            let _ = command_errors.get_or_create(&CodeLabels {
                code: code.to_string(),
            });
        }
        Metrics {
            registry,
            role,
            term,
            elections,
            commands,
            latency,
            queue_depth,
            queue_capacity,
            live_peers,
            ready,
            command_errors,
            store_errors,
            fenced,
            batch_size,
            peer_messages_sent,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn command_error(&self, code: ErrorCode) {
        self.command_errors
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
    }

    /// Counts a store failure; fencing and refusals are the protocol working, not failures.
    pub fn store_error(&self, error: &crate::store::StoreError) {
        use crate::store::StoreError;
        let kind = match error {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Fenced { .. }
            | StoreError::IdConflict { .. }
            | StoreError::LeaseHeld { .. } => {
                return;
            }
        };
        self.store_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn command(&self, kind: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { kind, outcome })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
