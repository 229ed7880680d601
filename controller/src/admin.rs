//! The admin HTTP server: `/healthz` (the process runs), `/readyz` (the controller found its
//! resources, takes part in the election and is not shutting down; the body says `leader` or
//! `standby`, both ready), `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::leader::Role;

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
    /// This replica's role in the leader election.
    pub role: watch::Receiver<Role>,
}

/// The admin routes, without a socket (tests call them with `oneshot`).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A standby is ready too: it is what takes over, and a rollout must wait for it.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        let role = *state.role.borrow();
        (StatusCode::OK, format!("ready: {}", role.as_str()))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_string())
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_path(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let metrics = Metrics::default().register(&mut registry);
        metrics.label_change("ns/c", "coordinator");
        drop(metrics.start("ns/c"));
        metrics.leader.set(1);
        let ready = Arc::new(AtomicBool::new(false));
        let (role, role_rx) = watch::channel(Role::Standby);
        let app = router(AdminState {
            registry: Arc::new(registry),
            ready: ready.clone(),
            role: role_rx,
        });
        assert_eq!(get_path(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_path(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(
            get_path(app.clone(), "/readyz").await,
            (StatusCode::OK, "ready: standby".to_string())
        );
        role.send(Role::Leader).unwrap();
        assert_eq!(
            get_path(app.clone(), "/readyz").await,
            (StatusCode::OK, "ready: leader".to_string())
        );
        let (code, body) = get_path(app, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains(
                r#"bully_controller_label_changes_total{cluster="ns/c",role="coordinator"} 1"#
            ),
            "{body}"
        );
        assert!(
            body.contains("bully_controller_reconcile_duration_seconds_count 1"),
            "{body}"
        );
        assert!(body.contains("bully_controller_leader 1"), "{body}");
    }
}
