//! The `BullyCluster` custom resource (`bully.dev/v1alpha1`) and its CRD.
//!
//! A `BullyCluster` names a set of server pods by label. The controller keeps its status (who is
//! coordinator, under which term, which members answer) and the role label on those pods.
//!
//! Ranks are `u64` on the wire and may exceed `i64`, which is all a Kubernetes `integer` can
//! safely hold in every client, so ranks are strings here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label value of the pod that is coordinator.
pub const ROLE_COORDINATOR: &str = "coordinator";
/// The label value of every other selected pod.
pub const ROLE_FOLLOWER: &str = "follower";

/// Condition type: a coordinator is known and ready.
pub const CONDITION_AVAILABLE: &str = "Available";
/// Condition type: something is wrong (members down, several claimants, no coordinator).
pub const CONDITION_DEGRADED: &str = "Degraded";

/// A set of bully servers whose coordinator the controller tracks and labels.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "bully.dev",
    version = "v1alpha1",
    kind = "BullyCluster",
    namespaced,
    status = "BullyClusterStatus",
    shortname = "bc",
    category = "bully",
    derive = "PartialEq",
    doc = "A set of bully servers: the controller labels the elected coordinator pod and reports the cluster's state.",
    printcolumn = r#"{"name":"Coordinator","type":"string","description":"Pod that holds the coordinator term","jsonPath":".status.coordinator"}"#,
    printcolumn = r#"{"name":"Term","type":"integer","description":"The coordinator's term","jsonPath":".status.term"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Ready members / selected members","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Last Failover","type":"date","priority":1,"description":"When the coordinator last changed","jsonPath":".status.lastFailoverTime"}"#,
    printcolumn = r#"{"name":"Available","type":"string","priority":1,"description":"Reason of the Available condition","jsonPath":".status.conditions[?(@.type==\"Available\")].reason"}"#,
    printcolumn = r#"{"name":"Reconciled By","type":"string","priority":1,"description":"Controller pod that wrote the status","jsonPath":".status.reconciledBy"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BullyClusterSpec {
    /// Labels of the server pods, in this namespace. Must not be empty: an empty selector would
    /// select (and relabel) every pod in the namespace.
    #[schemars(extend("minProperties" = 1))]
    pub selector: BTreeMap<String, String>,
    /// Port of each server's client API, which serves the status endpoint.
    #[serde(default = "default_status_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub status_port: u16,
    /// Path of the status endpoint (JSON `bully_client::Status`).
    #[serde(default = "default_status_path")]
    pub status_path: String,
    /// Label set to `coordinator` on the coordinator pod and `follower` on the others.
    #[serde(default = "default_role_label")]
    pub role_label: String,
    /// Seconds between polls of the servers' status. An election shows within about this long.
    #[serde(default = "default_requeue_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub requeue_seconds: u32,
}

fn default_status_port() -> u16 {
    7070
}

fn default_status_path() -> String {
    "/v1/status".into()
}

fn default_role_label() -> String {
    "bully.dev/role".into()
}

fn default_requeue_seconds() -> u32 {
    1
}

impl BullyClusterSpec {
    /// A spec with the defaults and the given selector.
    pub fn with_selector(selector: BTreeMap<String, String>) -> Self {
        BullyClusterSpec {
            selector,
            status_port: default_status_port(),
            status_path: default_status_path(),
            role_label: default_role_label(),
            requeue_seconds: default_requeue_seconds(),
        }
    }

    /// The selector as a Kubernetes label selector string (`a=b,c=d`, keys sorted).
    pub fn label_selector(&self) -> String {
        self.selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether `labels` carries every selector label.
    pub fn selects(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        !self.selector.is_empty()
            && labels.is_some_and(|labels| {
                self.selector
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            })
    }
}

/// What the controller observed. Optional fields are written as `null` (not omitted) so that a
/// JSON merge patch clears them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = no_defaults)]
pub struct BullyClusterStatus {
    /// Pod that holds the coordinator term.
    #[serde(default)]
    pub coordinator: Option<String>,
    /// The coordinator's term.
    #[serde(default)]
    pub term: Option<u64>,
    /// The coordinator's rank (decimal; ranks are unsigned 64-bit).
    #[serde(default)]
    pub rank: Option<String>,
    /// `readyMembers/totalMembers`, for `kubectl get`.
    #[serde(default)]
    pub ready: String,
    /// Members whose status says ready.
    #[serde(default)]
    pub ready_members: u32,
    /// Selected pods.
    #[serde(default)]
    pub total_members: u32,
    /// One entry per selected pod, sorted by name.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// When the controller last saw the coordinator change (another pod, or a new term); the
    /// first coordinator it sees counts.
    #[serde(default)]
    pub last_failover_time: Option<Time>,
    /// `Available` and `Degraded`, in the standard condition shape.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The controller replica (pod) that wrote this status: the leader of the controller's
    /// Lease.
    #[serde(default)]
    pub reconciled_by: Option<String>,
    /// The `metadata.generation` this status was computed for.
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

impl BullyClusterStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// One selected pod as the controller saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = no_defaults)]
pub struct MemberStatus {
    /// Pod name.
    pub pod: String,
    /// The server's rank (decimal), once it answered.
    #[serde(default)]
    pub rank: Option<String>,
    /// The server's election role (`coordinator`, `follower`, `candidate`, ...), or `null` when
    /// it did not answer.
    #[serde(default)]
    pub role: Option<String>,
    /// The term it holds as coordinator.
    #[serde(default)]
    pub term: Option<u64>,
    /// The server's own readiness (it knows a live coordinator).
    #[serde(default)]
    pub ready: bool,
    /// Why it has no status: `NotRunning`, `Terminating`, `NoPodIP`, `Unreachable`,
    /// `BadResponse`; `null` when it answered.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the controller last got a status from it (refreshed at most every 30 s while
    /// nothing else changes, to keep status writes rare).
    #[serde(default)]
    pub last_seen: Option<Time>,
}

/// Drops `default` from the properties of a status schema. `#[serde(default)]` is only there to
/// read partial statuses leniently; the controller always writes every field. And a 1.20 API
/// server rejects the CRD with the empty-string default of `ready` ("must be of type string").
fn no_defaults(schema: &mut schemars::Schema) {
    if let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for property in properties.values_mut() {
            if let Some(property) = property.as_object_mut() {
                property.remove("default");
            }
        }
    }
}

/// The CRD as YAML, as committed in `charts/bully/crds/bullycluster.yaml`.
pub fn crd_yaml() -> String {
    let crd = BullyCluster::crd();
    let yaml = serde_yaml::to_string(&crd).expect("a CRD serializes to YAML");
    format!(
        "# Generated by `bully-controller crdgen`; do not edit.\n# Regenerate: cargo run -p bully-controller -- crdgen --output charts/bully/crds/bullycluster.yaml\n---\n{yaml}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_in_from_json() {
        let spec: BullyClusterSpec =
            serde_json::from_value(serde_json::json!({"selector": {"app": "bully"}})).unwrap();
        assert_eq!(
            spec,
            BullyClusterSpec::with_selector(labels(&[("app", "bully")]))
        );
        assert_eq!(spec.status_port, 7070);
        assert_eq!(spec.status_path, "/v1/status");
        assert_eq!(spec.role_label, "bully.dev/role");
    }

    #[test]
    fn selector_matching() {
        let spec = BullyClusterSpec::with_selector(labels(&[("app", "bully"), ("tier", "x")]));
        assert_eq!(spec.label_selector(), "app=bully,tier=x");
        assert!(spec.selects(Some(&labels(&[
            ("app", "bully"),
            ("tier", "x"),
            ("o", "1")
        ]))));
        assert!(!spec.selects(Some(&labels(&[("app", "bully")]))));
        assert!(!spec.selects(None));
        let empty = BullyClusterSpec::with_selector(BTreeMap::new());
        assert!(!empty.selects(Some(&labels(&[("app", "bully")]))));
    }

    #[test]
    fn crd_has_status_subresource_and_columns() {
        let crd = BullyCluster::crd();
        assert_eq!(crd.spec.group, "bully.dev");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Coordinator",
                "Term",
                "Ready",
                "Age",
                "Last Failover",
                "Available",
                "Reconciled By"
            ]
        );
        let wide: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority == Some(1))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(wide, ["Last Failover", "Available", "Reconciled By"]);
    }

    #[test]
    fn status_clears_with_nulls() {
        let json = serde_json::to_value(BullyClusterStatus::default()).unwrap();
        assert!(json.get("coordinator").unwrap().is_null());
        assert!(json.get("term").unwrap().is_null());
    }
}
