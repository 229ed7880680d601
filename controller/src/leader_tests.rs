//! Leader election against a mock API server: a fake `leases` resource on
//! `tower_test::mock::pair`, shared by every replica's client, that can cut one replica off
//! (its requests hang, as in a partition). One scenario per case: acquire, renew, stay standby
//! while another leads, take over from a dead leader, stand down when partitioned, release on
//! shutdown.
//!
//! Leases last 2 s with a 1 s grace (the shortest the crate's whole seconds allow), so the
//! scenarios take a few seconds of real time; margins are generous for a loaded machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::leader::{LeaseConfig, Role, elect};

const NS: &str = "testns";
const LEASE: &str = "bully-controller";
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/testns/leases";

/// The one Lease of the fake API server, and what happened to it.
#[derive(Default)]
struct Leases {
    lease: Option<Value>,
    version: u64,
    /// When each successful write that named a holder and a renew time arrived.
    renewals: Vec<(Instant, String)>,
}

impl Leases {
    fn holder(&self) -> Option<String> {
        self.lease.as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    }

    fn transitions(&self) -> i64 {
        self.lease
            .as_ref()
            .and_then(|l| l["spec"]["leaseTransitions"].as_i64())
            .unwrap_or(0)
    }

    fn answer(
        &mut self,
        method: &Method,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        let named = format!("{LEASE_PATH}/{LEASE}");
        match (method, path) {
            (&Method::GET, p) if p == named => match &self.lease {
                Some(lease) => respond(StatusCode::OK, lease),
                None => failure(404, "NotFound"),
            },
            (&Method::POST, LEASE_PATH) => {
                if self.lease.is_some() {
                    return failure(409, "AlreadyExists");
                }
                assert_eq!(body["metadata"]["name"], LEASE, "{body}");
                let mut lease = body;
                lease["metadata"]["namespace"] = json!(NS);
                if lease.get("spec").is_none_or(Value::is_null) {
                    lease["spec"] = json!({});
                }
                self.lease = Some(lease);
                self.bump();
                respond(StatusCode::CREATED, self.lease.as_ref().unwrap())
            }
            (&Method::PATCH, p) if p == named => {
                let Some(lease) = self.lease.as_mut() else {
                    return failure(404, "NotFound");
                };
                let patch = body["spec"].as_object().cloned().unwrap_or_default();
                // Server-side apply without force: taking a field another manager set to
                // another value conflicts. Only the holder matters here.
                if content_type == "application/apply-patch+yaml" {
                    let current = lease["spec"]["holderIdentity"].as_str();
                    let wanted = patch.get("holderIdentity").and_then(Value::as_str);
                    if current.is_some() && current != wanted {
                        return failure(409, "Conflict");
                    }
                } else {
                    assert_eq!(content_type, "application/strategic-merge-patch+json");
                }
                let spec = lease["spec"].as_object_mut().unwrap();
                for (key, value) in patch {
                    if value.is_null() {
                        spec.remove(&key);
                    } else {
                        spec.insert(key, value);
                    }
                }
                if let (Some(holder), true) = (
                    lease["spec"]["holderIdentity"].as_str(),
                    body["spec"].get("renewTime").is_some_and(|t| !t.is_null()),
                ) {
                    self.renewals.push((Instant::now(), holder.to_string()));
                }
                self.bump();
                respond(StatusCode::OK, self.lease.as_ref().unwrap())
            }
            _ => panic!("unexpected request: {method} {path}"),
        }
    }

    fn bump(&mut self) {
        self.version += 1;
        if let Some(lease) = self.lease.as_mut() {
            lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
            lease["apiVersion"] = json!("coordination.k8s.io/v1");
            lease["kind"] = json!("Lease");
        }
    }
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(code: u16, reason: &str) -> Response<Body> {
    respond(
        StatusCode::from_u16(code).unwrap(),
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("injected: {reason}"), "reason": reason, "code": code
        }),
    )
}

/// The fake API server: the lease, shared by every replica's connection.
#[derive(Clone, Default)]
struct ApiServer(Arc<Mutex<Leases>>);

impl ApiServer {
    /// Serves one replica's requests; while `cut` is set they hang (never answered).
    async fn serve(self, mut handle: Handle<Request<Body>, Response<Body>>, cut: Arc<AtomicBool>) {
        let mut hung = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            if cut.load(Ordering::SeqCst) {
                hung.push(send);
                continue;
            }
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let content_type = request
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON body")
            };
            let response = self
                .0
                .lock()
                .unwrap()
                .answer(&method, &path, &content_type, body);
            send.send_response(response);
        }
    }

    fn holder(&self) -> Option<String> {
        self.0.lock().unwrap().holder()
    }
}

/// One controller replica taking part in the election.
struct Replica {
    role: watch::Receiver<Role>,
    /// Every role it published, with when.
    history: Arc<Mutex<Vec<(Instant, Role)>>>,
    cut: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: LEASE.into(),
        namespace: NS.into(),
        identity: identity.into(),
        duration_seconds: 2,
        grace_seconds: 1,
        retry_period: Duration::from_millis(200),
    }
}

impl ApiServer {
    fn replica(&self, identity: &str) -> Replica {
        let config = config(identity);
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::client::ClientBuilder::new(service, NS)
            .with_layer(&tower::timeout::TimeoutLayer::new(config.request_timeout()))
            .build();
        let cut = Arc::new(AtomicBool::new(false));
        tokio::spawn(self.clone().serve(handle, cut.clone()));
        let (role_tx, role) = watch::channel(Role::Standby);
        let history = Arc::new(Mutex::new(Vec::new()));
        let mut watched = role.clone();
        let log = history.clone();
        tokio::spawn(async move {
            while watched.changed().await.is_ok() {
                let now = *watched.borrow_and_update();
                log.lock().unwrap().push((Instant::now(), now));
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elect(client, config, role_tx, async move {
            let _ = stopped.await;
        }));
        Replica {
            role,
            history,
            cut,
            stop: Some(stop),
            task,
        }
    }
}

impl Replica {
    /// Waits until the replica has `role`, failing after `within`; returns when it got it.
    async fn wait_for(&mut self, role: Role, within: Duration) -> Instant {
        tokio::time::timeout(within, self.role.wait_for(|r| *r == role))
            .await
            .unwrap_or_else(|_| panic!("not {} within {within:?}", role.as_str()))
            .expect("the elector is gone");
        self.history
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, r)| *r == role)
            .map(|(at, _)| *at)
            .unwrap_or_else(Instant::now)
    }

    fn changes(&self) -> usize {
        self.history.lock().unwrap().len()
    }

    /// Stops it as SIGTERM would and waits for the elector to finish.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the elector did not stop")
            .unwrap();
    }
}

#[tokio::test]
async fn acquires_a_free_lease_and_renews_it() {
    let api = ApiServer::default();
    let mut a = api.replica("a");
    a.wait_for(Role::Leader, Duration::from_secs(3)).await;
    assert_eq!(api.holder().as_deref(), Some("a"));
    assert_eq!(api.0.lock().unwrap().transitions(), 1);

    // Three more lease durations: renewed every second (grace 1 s), never lost.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(*a.role.borrow(), Role::Leader);
    assert_eq!(a.changes(), 1, "{:?}", a.history.lock().unwrap());
    let renewals = api.0.lock().unwrap().renewals.clone();
    assert!(renewals.len() >= 4, "{renewals:?}");
    assert!(renewals.iter().all(|(_, holder)| holder == "a"));
    // No gap between two renewals reaches the lease duration.
    for pair in renewals.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 < Duration::from_secs(2),
            "{renewals:?}"
        );
    }
}

#[tokio::test]
async fn standby_while_another_replica_leads() {
    let api = ApiServer::default();
    let mut a = api.replica("a");
    a.wait_for(Role::Leader, Duration::from_secs(3)).await;
    let b = api.replica("b");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(*b.role.borrow(), Role::Standby);
    assert_eq!(b.changes(), 0, "b never led");
    assert_eq!(*a.role.borrow(), Role::Leader);
    assert_eq!(api.holder().as_deref(), Some("a"));
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() {
    let api = ApiServer::default();
    let mut a = api.replica("a");
    a.wait_for(Role::Leader, Duration::from_secs(3)).await;
    let mut b = api.replica("b");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The leader's pod is killed: no release, the lease just stops being renewed.
    a.task.abort();
    let last_renewal = api.0.lock().unwrap().renewals.last().unwrap().0;
    // It runs out 2 s after the last renewal; the standby then clears it, waits up to 1 s
    // (the crate's collision avoidance), and takes it.
    let took_over = b.wait_for(Role::Leader, Duration::from_secs(6)).await;
    assert!(took_over >= last_renewal + Duration::from_secs(2) - Duration::from_millis(100));
    assert!(
        took_over - last_renewal < Duration::from_secs(5),
        "took {:?}",
        took_over - last_renewal
    );
    assert_eq!(api.holder().as_deref(), Some("b"));
    assert_eq!(api.0.lock().unwrap().transitions(), 2);
}

#[tokio::test]
async fn partitioned_leader_stands_down_before_its_lease_runs_out() {
    let api = ApiServer::default();
    let mut a = api.replica("a");
    a.wait_for(Role::Leader, Duration::from_secs(3)).await;
    let mut b = api.replica("b");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Cut the leader off from the API server: its next renewal hangs.
    a.cut.store(true, Ordering::SeqCst);
    let stood_down = a.wait_for(Role::Standby, Duration::from_secs(4)).await;
    let last_renewal = api
        .0
        .lock()
        .unwrap()
        .renewals
        .iter()
        .rev()
        .find(|(_, holder)| holder == "a")
        .unwrap()
        .0;
    assert!(
        stood_down < last_renewal + Duration::from_secs(2),
        "stood down {:?} after its last renewal, past the lease duration",
        stood_down - last_renewal
    );
    // The standby takes over only after the old leader stopped.
    let took_over = b.wait_for(Role::Leader, Duration::from_secs(6)).await;
    assert!(took_over > stood_down);
    assert_eq!(api.holder().as_deref(), Some("b"));

    // Healed: the old leader stays a standby behind the new one.
    a.cut.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*a.role.borrow(), Role::Standby);
    assert_eq!(*b.role.borrow(), Role::Leader);
}

#[tokio::test]
async fn leader_releases_the_lease_on_shutdown() {
    let api = ApiServer::default();
    let mut a = api.replica("a");
    a.wait_for(Role::Leader, Duration::from_secs(3)).await;
    a.shut_down().await;
    assert_eq!(api.holder(), None);

    // A new replica finds the lease free and takes it at once.
    let mut b = api.replica("b");
    b.wait_for(Role::Leader, Duration::from_secs(2)).await;
}

#[test]
fn lease_durations_are_validated() {
    assert!(config("a").validate().is_ok());
    assert_eq!(config("a").request_timeout(), Duration::from_millis(500));
    let mut bad = config("a");
    bad.grace_seconds = 2;
    assert!(bad.validate().unwrap_err().contains("below"));
    bad.grace_seconds = 0;
    assert!(bad.validate().is_err());
    let mut anonymous = config("");
    anonymous.grace_seconds = 1;
    assert!(anonymous.validate().is_err());
}
