//! One reconcile of a `BullyCluster`: list the selected pods, read each one's status, label the
//! coordinator, publish events, write the status.
//!
//! Requests to the API server, in this order (the mock API server in the tests expects exactly
//! this order):
//! 1. `GET pods?labelSelector=...`
//! 2. `PATCH pods/NAME` (merge patch of one label), the new coordinator first, only where the
//!    label differs;
//! 3. `POST events` (events.k8s.io/v1): `ConflictingCoordinators` (Warning) when the set of
//!    claimants changes, `CoordinatorChanged` (Normal) when the coordinator pod or term changes;
//! 4. `PATCH bullyclusters/NAME/status` (merge patch), only when it changed.
//!
//! Events go before the status write so that a failed status write repeats the event rather
//! than losing it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{BullyCluster, BullyClusterSpec};
use crate::decide::{self, Member, Missing, Probe};
use crate::fetch::StatusFetcher;
use crate::metrics::Metrics;
use crate::{Error, Result};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "bully-controller";
/// Requeue after a failed reconcile. Short, because a wrong label sends clients to the wrong
/// pod; the servers redirect them meanwhile, so this is not an outage.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(2);

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub fetcher: Arc<dyn StatusFetcher>,
    pub metrics: Metrics,
    pub reporter: Reporter,
    /// Per cluster (`ns/name`), the claimant set last warned about, so a lasting conflict is
    /// reported once rather than every second.
    warned: Mutex<HashMap<String, String>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        fetcher: Arc<dyn StatusFetcher>,
        metrics: Metrics,
        reporter: Reporter,
    ) -> Self {
        Context {
            client,
            fetcher,
            metrics,
            reporter,
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// A recorder per event: kube's `Recorder` caches events for 6 minutes by a key that leaves
    /// out the note, and would turn a second `CoordinatorChanged` into a repeat of the first
    /// one's note. Events here are only published on changes, so the cache has nothing to save.
    fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

/// Reconciles one `BullyCluster`.
pub async fn reconcile(cluster: Arc<BullyCluster>, ctx: Arc<Context>) -> Result<Action> {
    let name = cluster.name_any();
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    let key = format!("{ns}/{name}");
    let _timer = ctx.metrics.start(&key);
    let now = Timestamp::now();
    let clusters: Api<BullyCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = &cluster.spec;
    let generation = cluster.metadata.generation;

    if spec.selector.is_empty() {
        let status = decide::invalid_spec_status(
            "spec.selector is empty; it would select every pod in the namespace",
            generation,
            cluster.status.as_ref(),
            now,
        );
        if cluster.status.as_ref() != Some(&status) {
            patch_status(&clusters, &name, &status).await?;
        }
        tracing::warn!(cluster = %key, "spec.selector is empty; not touching any pod");
        return Ok(Action::await_change());
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let listed = pods
        .list(&ListParams::default().labels(&spec.label_selector()))
        .await?;
    let members = join_all(
        listed
            .items
            .iter()
            .map(|pod| probe(pod, spec, ctx.fetcher.as_ref())),
    )
    .await;
    for member in &members {
        if let Probe::Missing(why) = &member.probe {
            ctx.metrics.status_failure(&key, why.as_str());
        }
    }
    let plan = decide::plan(
        members,
        cluster.status.as_ref(),
        generation,
        ctx.reporter.instance.as_deref(),
        now,
    );
    let by_name: BTreeMap<String, &Pod> = listed.items.iter().map(|p| (p.name_any(), p)).collect();

    for (pod, role) in &plan.labels {
        let patch = json!({"metadata": {"labels": {spec.role_label.as_str(): role}}});
        match pods.patch(pod, &params(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(cluster = %key, %pod, %role, "labelled pod");
                ctx.metrics.label_change(&key, role);
            }
            // Deleted since the list: nothing to label.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::debug!(cluster = %key, %pod, "pod vanished before labelling");
            }
            Err(err) => return Err(err.into()),
        }
    }

    let reference = cluster.object_ref(&());
    let signature: String = if plan.losers.is_empty() {
        String::new()
    } else {
        std::iter::once(plan.coordinator.as_ref())
            .flatten()
            .chain(&plan.losers)
            .map(|c| c.describe())
            .collect::<Vec<_>>()
            .join(",")
    };
    let already_warned = ctx
        .warned
        .lock()
        .expect("warned lock")
        .get(&key)
        .is_some_and(|s| *s == signature);
    if !signature.is_empty() && !already_warned {
        let note = plan
            .status
            .condition(crate::crd::CONDITION_DEGRADED)
            .map(|c| c.message.clone());
        tracing::warn!(cluster = %key, note = ?note, "several pods claim the coordinator role");
        ctx.recorder()
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: "ConflictingCoordinators".into(),
                    note,
                    action: "ChooseCoordinator".into(),
                    secondary: None,
                },
                &reference,
            )
            .await?;
    }
    {
        let mut warned = ctx.warned.lock().expect("warned lock");
        if signature.is_empty() {
            warned.remove(&key);
        } else {
            warned.insert(key.clone(), signature);
        }
    }

    if let Some(coordinator) = &plan.coordinator {
        let previous = cluster
            .status
            .as_ref()
            .map(|s| (s.coordinator.clone(), s.term))
            .unwrap_or_default();
        // One event per term: a claimant that has not claimed its term in the store yet is
        // labelled, but announced once the term is known.
        if coordinator.term.is_some()
            && (Some(coordinator.pod.clone()), coordinator.term) != previous
        {
            tracing::info!(cluster = %key, coordinator = %coordinator.describe(), "coordinator changed");
            ctx.metrics.coordinator_change(&key);
            ctx.recorder()
                .publish(
                    &Event {
                        type_: EventType::Normal,
                        reason: "CoordinatorChanged".into(),
                        note: Some(coordinator.describe()),
                        action: "LabelCoordinator".into(),
                        secondary: by_name.get(&coordinator.pod).map(|p| p.object_ref(&())),
                    },
                    &reference,
                )
                .await?;
        }
    }

    if plan.write_status {
        patch_status(&clusters, &name, &plan.status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(
        u64::from(spec.requeue_seconds).max(1),
    )))
}

/// Logs the error, counts it, and retries soon.
pub fn error_policy(cluster: Arc<BullyCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    );
    tracing::warn!(cluster = %key, error = %error, "reconcile failed; retrying");
    ctx.metrics.error(&key, &error.metric_label());
    Action::requeue(ERROR_REQUEUE)
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

async fn patch_status(
    clusters: &Api<BullyCluster>,
    name: &str,
    status: &crate::crd::BullyClusterStatus,
) -> Result<()> {
    let patch = json!({ "status": status });
    clusters
        .patch_status(name, &params(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Reads one pod's status, unless it cannot have one.
async fn probe(pod: &Pod, spec: &BullyClusterSpec, fetcher: &dyn StatusFetcher) -> Member {
    let label = pod.labels().get(&spec.role_label).cloned();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    let probe = if pod.metadata.deletion_timestamp.is_some() {
        Probe::Missing(Missing::Terminating)
    } else if phase != Some("Running") {
        Probe::Missing(Missing::NotRunning)
    } else if let Some(ip) = ip {
        match fetcher.fetch(ip, spec.status_port, &spec.status_path).await {
            Ok(status) => Probe::Answered(Box::new(status)),
            Err(why) => Probe::Missing(why),
        }
    } else {
        Probe::Missing(Missing::NoPodIp)
    };
    Member {
        pod: pod.name_any(),
        label,
        probe,
    }
}

/// Whether `pod` is selected by `cluster` (same namespace, every selector label).
pub fn selects(cluster: &BullyCluster, pod: &Pod) -> bool {
    cluster.namespace() == pod.namespace() && cluster.spec.selects(pod.metadata.labels.as_ref())
}
