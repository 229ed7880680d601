//! Test helpers: a mock API server on `tower_test::mock::pair` that expects one scenario's
//! requests in order, asserts each one's method, path and body, and answers it; a fake status
//! fetcher; and builders for pods, statuses and clusters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bully_client::{Role, Status};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::Reporter;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::crd::{BullyCluster, BullyClusterSpec, BullyClusterStatus};
use crate::decide::Missing;
use crate::fetch::StatusFetcher;
use crate::metrics::Metrics;
use crate::reconcile::Context;

pub const NS: &str = "testns";
pub const CLUSTER: &str = "bully";

/// A cluster selecting `app=bully` pods, with the default spec.
pub fn cluster(status: Option<BullyClusterStatus>) -> BullyCluster {
    let mut cluster = BullyCluster::new(
        CLUSTER,
        BullyClusterSpec::with_selector(BTreeMap::from([("app".into(), "bully".into())])),
    );
    cluster.metadata.namespace = Some(NS.into());
    cluster.metadata.generation = Some(1);
    cluster.metadata.uid = Some("c0ffee".into());
    cluster.status = status;
    cluster
}

/// A selected pod; `ip` None means not scheduled yet (phase Pending).
pub fn pod(name: &str, ip: Option<&str>, role_label: Option<&str>) -> Pod {
    let mut labels = BTreeMap::from([("app".to_string(), "bully".to_string())]);
    if let Some(role) = role_label {
        labels.insert("bully.dev/role".into(), role.into());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some(if ip.is_some() { "Running" } else { "Pending" }.into()),
            pod_ip: ip.map(String::from),
            ..PodStatus::default()
        }),
    }
}

/// A server status.
pub fn status(rank: u64, role: Role, term: Option<u64>) -> Status {
    Status {
        rank,
        role,
        term,
        client_addr: "10.0.0.1:7070".into(),
        peer_addr: "10.0.0.1:7071".into(),
        coordinator: None,
        ready: true,
        last_seq: None,
        peers: vec![],
        version: "0.1.0".into(),
    }
}

/// Answers status requests by pod IP; IPs it does not know are unreachable.
#[derive(Default)]
pub struct FakeFetcher(pub HashMap<String, Status>);

impl FakeFetcher {
    pub fn with(mut self, ip: &str, status: Status) -> Self {
        self.0.insert(ip.into(), status);
        self
    }
}

#[async_trait]
impl StatusFetcher for FakeFetcher {
    async fn fetch(&self, ip: &str, port: u16, path: &str) -> Result<Status, Missing> {
        assert_eq!((port, path), (7070, "/v1/status"), "spec defaults");
        self.0.get(ip).cloned().ok_or(Missing::Unreachable)
    }
}

/// A test context whose client talks to the returned verifier.
pub fn context(fetcher: FakeFetcher) -> (Arc<Context>, ApiServerVerifier, Registry) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let mut registry = Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let ctx = Context::new(
        client,
        Arc::new(fetcher),
        metrics,
        Reporter {
            controller: "bully-controller".into(),
            instance: Some("test".into()),
        },
    );
    (Arc::new(ctx), ApiServerVerifier(handle), registry)
}

/// An event the scenario expects, in order.
pub struct ExpectedEvent {
    pub type_: &'static str,
    pub reason: &'static str,
    pub note: String,
}

/// Checks the written status.
pub type StatusCheck = Box<dyn FnOnce(&BullyClusterStatus) + Send>;

/// What one reconcile is expected to request.
pub enum Scenario {
    /// Lists `pods`, patches `labels` (pod, role) in order, publishes `events` in order, then
    /// patches the status (checked by `status`) unless it is `None`.
    Reconcile {
        pods: Vec<Pod>,
        labels: Vec<(&'static str, &'static str)>,
        events: Vec<ExpectedEvent>,
        status: Option<StatusCheck>,
    },
    /// Lists `pods`, then answers the first label patch (on `pod`) with `code`.
    LabelPatchFails {
        pods: Vec<Pod>,
        pod: &'static str,
        code: u16,
    },
    /// Expects the status patch only (the spec is invalid; no pod is touched).
    StatusOnly(StatusCheck),
}

pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Serves the scenario in a task; the task panics on any unexpected request, and on any
    /// request after the scenario's last one.
    pub fn run(self, scenario: Scenario) -> JoinHandle<ApiServerVerifier> {
        let mut handle = self.0;
        tokio::spawn(async move {
            match scenario {
                Scenario::Reconcile {
                    pods,
                    labels,
                    events,
                    status,
                } => {
                    list_pods(&mut handle, &pods).await;
                    for (name, role) in labels {
                        let pod = pods.iter().find(|p| p.name_any() == name).unwrap();
                        patch_label(&mut handle, pod, role).await;
                    }
                    for event in events {
                        publish_event(&mut handle, &event).await;
                    }
                    if let Some(check) = status {
                        patch_status(&mut handle, check).await;
                    }
                }
                Scenario::LabelPatchFails { pods, pod, code } => {
                    list_pods(&mut handle, &pods).await;
                    let (request, send) = next(&mut handle).await;
                    assert_eq!(request.method(), Method::PATCH);
                    assert_eq!(request.uri().path(), pod_path(pod));
                    send.send_response(failure(code));
                }
                Scenario::StatusOnly(check) => patch_status(&mut handle, check).await,
            }
            if let Ok(Some((request, _))) =
                tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await
            {
                panic!(
                    "unexpected request after the scenario: {} {}",
                    request.method(),
                    request.uri()
                );
            }
            ApiServerVerifier(handle)
        })
    }
}

/// Awaits the verifier, failing the test if it hangs or panicked; returns it for the next
/// scenario.
pub async fn finish(verifier: JoinHandle<ApiServerVerifier>) -> ApiServerVerifier {
    tokio::time::timeout(Duration::from_secs(5), verifier)
        .await
        .expect("the verifier timed out: a request it expected never came")
        .expect("the verifier panicked: see the assertion above")
}

type Pending = (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
);

async fn next(handle: &mut Handle<Request<Body>, Response<Body>>) -> Pending {
    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("no request within 5 s")
        .expect("the client is gone")
}

async fn body_json(request: Request<Body>) -> Value {
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("the request body is JSON")
}

fn ok(body: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(code: u16) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "injected failure", "reason": "InternalError", "code": code
    });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap()
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods/{name}")
}

async fn list_pods(handle: &mut Handle<Request<Body>, Response<Body>>, pods: &[Pod]) {
    let (request, send) = next(handle).await;
    assert_eq!(request.method(), Method::GET);
    assert_eq!(
        request.uri().path(),
        format!("/api/v1/namespaces/{NS}/pods")
    );
    let query = request.uri().query().unwrap_or_default().to_string();
    assert!(query.contains("labelSelector=app%3Dbully"), "{query}");
    send.send_response(ok(&json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "1"},
        "items": pods,
    })));
}

async fn patch_label(handle: &mut Handle<Request<Body>, Response<Body>>, pod: &Pod, role: &str) {
    let (request, send) = next(handle).await;
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), pod_path(&pod.name_any()));
    assert_eq!(
        request.headers()["content-type"],
        "application/merge-patch+json"
    );
    assert_eq!(
        body_json(request).await,
        json!({"metadata": {"labels": {"bully.dev/role": role}}})
    );
    let mut patched = pod.clone();
    patched
        .labels_mut()
        .insert("bully.dev/role".into(), role.into());
    send.send_response(ok(&patched));
}

async fn publish_event(
    handle: &mut Handle<Request<Body>, Response<Body>>,
    expected: &ExpectedEvent,
) {
    let (request, send) = next(handle).await;
    assert_eq!(request.method(), Method::POST);
    assert_eq!(
        request.uri().path(),
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
    );
    let event = body_json(request).await;
    assert_eq!(event["type"], expected.type_, "{event}");
    assert_eq!(event["reason"], expected.reason, "{event}");
    assert_eq!(event["note"], expected.note.as_str(), "{event}");
    assert_eq!(event["regarding"]["kind"], "BullyCluster", "{event}");
    assert_eq!(event["regarding"]["name"], CLUSTER, "{event}");
    assert_eq!(event["reportingController"], "bully-controller", "{event}");
    send.send_response(ok(&event));
}

async fn patch_status(handle: &mut Handle<Request<Body>, Response<Body>>, check: StatusCheck) {
    let (request, send) = next(handle).await;
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(
        request.uri().path(),
        format!("/apis/bully.dev/v1alpha1/namespaces/{NS}/bullyclusters/{CLUSTER}/status")
    );
    assert_eq!(
        request.headers()["content-type"],
        "application/merge-patch+json"
    );
    let body = body_json(request).await;
    let status: BullyClusterStatus =
        serde_json::from_value(body["status"].clone()).expect("a BullyCluster status");
    check(&status);
    send.send_response(ok(&cluster(Some(status))));
}
