//! Router tests without sockets (`Router::oneshot`), with a real executor on an embedded store.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bully_client::{CoordinatorInfo, ErrorBody, ErrorCode, Limits, Role};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::{AppState, client_router, peer_router};
use crate::auth::Token;
use crate::election::NodeInfo;
use crate::executor::Executor;
use crate::messages::{Control, View};
use crate::metrics::Metrics;
use crate::store::Store as _;
use crate::store::embedded::EmbeddedStore;

struct Harness {
    state: AppState,
    view: watch::Sender<View>,
    // The executor stops when the driver's control channel closes: keep it open.
    _control: mpsc::UnboundedSender<Control>,
    _dir: tempfile::TempDir,
}

fn serving_view() -> View {
    View {
        role: Role::Coordinator,
        term: Some(1),
        accepting: true,
        coordinator: None,
        ready: true,
        peers: Vec::new(),
    }
}

/// A coordinator holding term 1 on a fresh store, with small limits.
async fn harness(queue: usize, run_executor: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("db")).unwrap();
    let term = store.claim_term("test").await.unwrap();
    let (jobs_tx, jobs_rx) = mpsc::channel(queue);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (events_tx, _events_rx) = mpsc::channel(16);
    let (view_tx, view_rx) = watch::channel(serving_view());
    let metrics = Arc::new(Metrics::new());
    let last_seq = Arc::new(AtomicU64::new(0));
    control_tx.send(Control::Activate(term)).unwrap();
    let executor = Executor {
        store: Arc::new(store),
        jobs: jobs_rx,
        control: control_rx,
        events: events_tx.clone(),
        metrics: metrics.clone(),
        last_seq: last_seq.clone(),
        retention: Duration::from_secs(3600),
        max_batch: 16,
        lease_renewal: Duration::from_millis(200),
        wrote: false,
    };
    if run_executor {
        tokio::spawn(executor.run());
    } else {
        // Keep the queue open but never drain it.
        std::mem::forget(executor);
    }
    let limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 64,
        max_page: 5,
    };
    let state = AppState {
        me: NodeInfo {
            rank: 7,
            peer_addr: "127.0.0.1:2".into(),
            client_addr: "127.0.0.1:1".into(),
        },
        view: view_rx,
        jobs: jobs_tx,
        events: events_tx,
        limits,
        max_body: 1024,
        metrics,
        last_seq,
        token: None,
        hold: Duration::from_millis(50),
        answer_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
    };
    Harness {
        state,
        view: view_tx,
        _control: control_tx,
        _dir: dir,
    }
}

async fn call(
    router: Router,
    method: &str,
    uri: &str,
    body: Body,
    token: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router.oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, headers)
}

async fn post(router: Router, body: impl Into<Body>) -> (StatusCode, Value) {
    let (status, value, _) = call(router, "POST", "/v1/commands", body.into(), None).await;
    (status, value)
}

fn code(value: &Value) -> ErrorCode {
    serde_json::from_value::<ErrorBody>(value.clone())
        .expect("error body")
        .code
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_problem() {
    let h = harness(16, true).await;
    let router = client_router(h.state.clone());
    let long_key = "k".repeat(17);
    let cases: Vec<(Body, StatusCode, ErrorCode, &str)> = vec![
        (
            Body::from("{not json"),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson,
            "JSON",
        ),
        (
            Body::from(r#"{"id":"a","command":{"op":"drop","key":"k"}}"#),
            StatusCode::BAD_REQUEST,
            ErrorCode::UnknownCommand,
            "drop",
        ),
        (
            Body::from(r#"{"id":"a","command":{"op":"get","key":5}}"#),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "invalid type",
        ),
        (
            Body::from(r#"{"command":{"op":"get","key":"k"}}"#),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "id",
        ),
        (
            Body::from(r#"{"id":"a b","command":{"op":"get","key":"k"}}"#),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidId,
            "id",
        ),
        (
            Body::from(json!({"id":"a","command":{"op":"get","key":long_key}}).to_string()),
            StatusCode::BAD_REQUEST,
            ErrorCode::KeyTooLong,
            "max_key_bytes",
        ),
        (
            Body::from(
                json!({"id":"a","command":{"op":"put","key":"k","value":"x".repeat(80)}})
                    .to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ValueTooLarge,
            "max_value_bytes",
        ),
        (
            Body::from(json!({"id":"a","command":{"op":"put","key":"k","value":null}}).to_string()),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "null",
        ),
        (
            Body::from(json!({"id":"a","command":{"op":"list","limit":6}}).to_string()),
            StatusCode::BAD_REQUEST,
            ErrorCode::PageTooLarge,
            "max_page",
        ),
        (
            Body::from(json!({"id":"a","command":{"op":"incr","key":"k","delta":1.5}}).to_string()),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "invalid type",
        ),
        (
            Body::from(vec![b' '; 2048]),
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "1024 bytes",
        ),
        (
            Body::from("[]"),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "invalid",
        ),
        (
            Body::from(
                json!({"id":"r","command":{"op":"get","key":"\u{10FFFF}lease/1"}}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "U+10FFFF",
        ),
        (
            Body::from(r#"{"id":"t","command":{"op":"lease_grant","ttl_ms":5}}"#),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "ttl_ms",
        ),
        (
            Body::from(r#"{"id":"t","command":{"op":"lease_revoke","id":-1}}"#),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCommand,
            "invalid",
        ),
    ];
    for (body, status, expected, needle) in cases {
        let (got_status, value) = post(router.clone(), body).await;
        assert_eq!(got_status, status, "{value}");
        assert_eq!(code(&value), expected, "{value}");
        let message = value["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    // And the server keeps serving.
    let (status, value) = post(
        router.clone(),
        json!({"id":"ok-1","command":{"op":"put","key":"k","value":[1]}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["outcome"]["status"], "ok");
    let (status, value, _) = call(router, "GET", "/nope", Body::empty(), None).await;
    assert_eq!(
        (status, code(&value)),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn commands_execute_and_retries_are_deduplicated() {
    let h = harness(16, true).await;
    let router = client_router(h.state.clone());
    let incr = json!({"id":"inc-1","command":{"op":"incr","key":"n","delta":2}}).to_string();
    let (status, first) = post(router.clone(), incr.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = post(router.clone(), incr).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], first["seq"]);
    let (_, get) = post(
        router.clone(),
        json!({"id":"g","command":{"op":"get","key":"n"}}).to_string(),
    )
    .await;
    assert_eq!(get["outcome"], json!({"status":"value","value":2}));
    let conflict = json!({"id":"inc-1","command":{"op":"incr","key":"n","delta":3}}).to_string();
    let (status, value) = post(router.clone(), conflict).await;
    assert_eq!(
        (status, code(&value)),
        (StatusCode::CONFLICT, ErrorCode::IdConflict)
    );
    // Pages default to the server's max_page.
    for i in 0..7 {
        post(
            router.clone(),
            json!({"id":format!("p{i}"),"command":{"op":"put","key":format!("p/{i}"),"value":i}})
                .to_string(),
        )
        .await;
    }
    let (_, page) = post(
        router,
        json!({"id":"l","command":{"op":"list","prefix":"p/"}}).to_string(),
    )
    .await;
    assert_eq!(page["outcome"]["items"].as_array().unwrap().len(), 5);
    assert_eq!(page["outcome"]["next"], "p/4");
}

#[tokio::test]
async fn leases_over_http() {
    let h = harness(16, true).await;
    let router = client_router(h.state.clone());
    let (status, grant) = post(
        router.clone(),
        json!({"id":"g1","command":{"op":"lease_grant","ttl_ms":60000}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{grant}");
    assert_eq!(grant["outcome"]["status"], "lease");
    assert_eq!(grant["outcome"]["id"], grant["seq"]);
    let id = grant["seq"].clone();
    let (_, put) = post(
        router.clone(),
        json!({"id":"p1","command":{"op":"put","key":"e","value":1,"lease":id}}).to_string(),
    )
    .await;
    assert_eq!(put["outcome"]["status"], "ok", "{put}");
    let (_, revoke) = post(
        router.clone(),
        json!({"id":"r1","command":{"op":"lease_revoke","id":id}}).to_string(),
    )
    .await;
    assert_eq!(revoke["outcome"]["status"], "ok", "{revoke}");
    let (_, get) = post(
        router.clone(),
        json!({"id":"g","command":{"op":"get","key":"e"}}).to_string(),
    )
    .await;
    assert_eq!(get["outcome"]["status"], "not_found");
    let (_, keepalive) = post(
        router,
        json!({"id":"k","command":{"op":"lease_keepalive","id":id}}).to_string(),
    )
    .await;
    assert_eq!(
        keepalive["outcome"],
        json!({"status":"lease_not_found","id":id})
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let h = harness(1, false).await;
    let router = client_router(h.state.clone());
    // The first request occupies the only slot (and waits forever: nobody drains the queue).
    let first = tokio::spawn(post(
        router.clone(),
        json!({"id":"a","command":{"op":"get","key":"k"}}).to_string(),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, value, headers) = call(
        router,
        "POST",
        "/v1/commands",
        Body::from(json!({"id":"b","command":{"op":"get","key":"k"}}).to_string()),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&value)),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::QueueFull)
    );
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    first.abort();
}

#[tokio::test]
async fn followers_redirect_and_candidates_say_no_coordinator() {
    let h = harness(16, true).await;
    let router = client_router(h.state.clone());
    let body = || json!({"id":"x","command":{"op":"get","key":"k"}}).to_string();
    h.view.send_replace(View {
        role: Role::Follower,
        term: None,
        accepting: false,
        coordinator: Some(CoordinatorInfo {
            rank: 9,
            client_addr: "10.0.0.9:7070".into(),
            peer_addr: "10.0.0.9:7071".into(),
            term: Some(4),
        }),
        ready: true,
        peers: Vec::new(),
    });
    let (status, value) = post(router.clone(), body()).await;
    assert_eq!(
        (status, code(&value)),
        (StatusCode::MISDIRECTED_REQUEST, ErrorCode::NotCoordinator)
    );
    assert_eq!(value["coordinator"], "10.0.0.9:7070");
    let candidate = View {
        coordinator: None,
        ready: false,
        role: Role::Candidate,
        ..h.view.borrow().clone()
    };
    h.view.send_replace(candidate);
    let (status, value) = post(router.clone(), body()).await;
    assert_eq!(
        (status, code(&value)),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoCoordinator)
    );
    let (status, _, _) = call(router.clone(), "GET", "/readyz", Body::empty(), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // A request arriving mid-election is held until the election settles.
    let view = h.view.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        view.send_replace(serving_view());
    });
    let mut held = h.state.clone();
    held.hold = Duration::from_secs(5);
    let (status, _) = post(client_router(held), body()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_guard_the_apis_but_not_the_probes() {
    let mut h = harness(16, true).await;
    h.state.token = Some(Token::new("a-very-secret-token").unwrap());
    let router = client_router(h.state.clone());
    let body = || Body::from(json!({"id":"x","command":{"op":"get","key":"k"}}).to_string());
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, value, headers) =
            call(router.clone(), "POST", "/v1/commands", body(), token).await;
        assert_eq!(
            (status, code(&value)),
            (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
        );
        assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        assert!(!value.to_string().contains("secret"));
    }
    let (status, _, _) = call(
        router.clone(),
        "POST",
        "/v1/commands",
        body(),
        Some("a-very-secret-token"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = call(router.clone(), "GET", probe, Body::empty(), None).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
    }
    let (status, _, _) = call(router.clone(), "GET", "/v1/status", Body::empty(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let peer = peer_router(h.state.clone());
    let (status, _, _) = call(peer, "POST", "/peer/v1/message", Body::from("{}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn garbage_peer_messages_are_rejected() {
    let h = harness(16, true).await;
    let router = peer_router(h.state.clone());
    for garbage in [
        "",
        "{}",
        "[1,2]",
        r#"{"from":{"rank":"x"},"message":{"type":"election"}}"#,
        r#"{"from":{"rank":1,"peer_addr":"a","client_addr":"b"},"message":{"type":"crown_me"}}"#,
    ] {
        let (status, value, _) = call(
            router.clone(),
            "POST",
            "/peer/v1/message",
            Body::from(garbage),
            None,
        )
        .await;
        assert_eq!(
            (status, code(&value)),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson),
            "{garbage}"
        );
    }
    let ok = json!({"from":{"rank":1,"peer_addr":"a:1","client_addr":"b:1"},"message":{"type":"heartbeat","role":"follower"}});
    let (status, _, _) = call(
        router,
        "POST",
        "/peer/v1/message",
        Body::from(ok.to_string()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn status_and_metrics_describe_the_server() {
    let h = harness(16, true).await;
    let router = client_router(h.state.clone());
    post(
        router.clone(),
        json!({"id":"m1","command":{"op":"put","key":"k","value":1}}).to_string(),
    )
    .await;
    let (status, value, _) = call(router.clone(), "GET", "/v1/status", Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            value["rank"].as_u64(),
            value["role"].as_str(),
            value["term"].as_u64()
        ),
        (Some(7), Some("coordinator"), Some(1))
    );
    assert_eq!(value["last_seq"], 1);
    let (_, metrics, headers) = call(router, "GET", "/metrics", Body::empty(), None).await;
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains(r#"bully_commands_total{kind="put",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("bully_command_duration_seconds_bucket"),
        "{text}"
    );
}
