//! HTTP APIs (axum).
//!
//! # Layout
//! - [`client_router`]: `POST /v1/commands`, `GET /v1/status`, `/healthz`, `/readyz`, `/metrics`.
//! - [`peer_router`]: `POST /peer/v1/message`, on its own port so a NetworkPolicy can keep it
//!   to the servers.
//!
//! Every error is JSON ([`bully_client::ErrorBody`]) with a stable code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bully_client::{CommandRequest, ErrorCode, Limits, Role, Status};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::auth::Token;
use crate::election::{Envelope, NodeInfo};
use crate::error::ApiError;
use crate::messages::{Event, ExecError, ExecMsg, Job, View};
use crate::metrics::Metrics;
use crate::store::StoreError;

pub mod limits;
#[cfg(test)]
mod tests;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub me: NodeInfo,
    pub view: watch::Receiver<View>,
    pub jobs: mpsc::Sender<ExecMsg>,
    pub events: mpsc::Sender<Event>,
    pub limits: Limits,
    pub max_body: usize,
    pub metrics: Arc<Metrics>,
    pub last_seq: Arc<AtomicU64>,
    pub token: Option<Token>,
    /// How long a request waits for an election in progress to settle before answering.
    pub hold: Duration,
    /// Upper bound on waiting for the executor's answer.
    pub answer_timeout: Duration,
    /// Upper bound on a whole request, reading a slowly sent body included.
    pub request_timeout: Duration,
}

/// The answer for a server that cannot execute commands now.
pub fn not_serving(view: &View) -> ApiError {
    // A coordinator still claiming its term, or draining before a handoff, has no one better to
    // point to: the client should retry shortly.
    let in_transition = matches!(view.role, Role::Coordinator | Role::HandingOff);
    match &view.coordinator {
        Some(c) if !in_transition => ApiError::new(
            ErrorCode::NotCoordinator,
            format!("this server is not the coordinator; try {}", c.client_addr),
        )
        .with_coordinator(Some(c.client_addr.clone()))
        .retry_after(Duration::from_millis(50)),
        _ => ApiError::new(
            ErrorCode::NoCoordinator,
            "no coordinator is available yet (election in progress); retry shortly",
        )
        .retry_after(Duration::from_millis(200)),
    }
}

/// The answer for a command the executor did not execute, or that the store refused.
pub fn exec_error(error: ExecError, view: &View) -> ApiError {
    match error {
        ExecError::NotServing => not_serving(view),
        ExecError::Store(StoreError::Fenced { mine, current }) => ApiError::new(
            ErrorCode::Fenced,
            format!("this server's term {mine} was superseded by term {current}; not applied"),
        )
        .retry_after(Duration::from_millis(100)),
        ExecError::Store(StoreError::IdConflict { id }) => ApiError::new(
            ErrorCode::IdConflict,
            format!("command id {id} was already used for a different command"),
        ),
        ExecError::Store(StoreError::Unavailable(_)) => ApiError::new(
            ErrorCode::StoreUnavailable,
            "the store did not answer in time; the command may or may not have been applied, \
             and retrying it with the same id is safe",
        )
        .retry_after(Duration::from_millis(500)),
        ExecError::Store(StoreError::Corrupt(_)) => {
            ApiError::new(ErrorCode::Internal, "stored data could not be read")
        }
        // Only claims meet a lease; a command never does.
        ExecError::Store(StoreError::LeaseHeld { .. }) => not_serving(view),
    }
}

pub fn client_router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/commands", post(post_command))
        .route("/v1/status", get(status))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            crate::auth::require,
        ));
    Router::new()
        .merge(protected)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.max_body))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(timed_out))
                .timeout(state.request_timeout),
        )
        .with_state(state)
}

/// Answers 408 (JSON) for a request that outlived its time limit, a slow client included.
async fn timed_out(_: tower::BoxError) -> ApiError {
    ApiError::new(
        ErrorCode::RequestTimeout,
        "the request took too long (a slow client, or a slow store); retrying with the same id \
         is safe",
    )
}

pub fn peer_router(state: AppState) -> Router {
    Router::new()
        .route("/peer/v1/message", post(peer_message))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            crate::auth::require,
        ))
        .fallback(not_found)
        // Election messages are tiny.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(timed_out))
                .timeout(Duration::from_secs(5)),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {limit} bytes (derived from max_value_bytes)"),
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("cannot read body: {rejection}"),
        )
    }
}

/// Decodes and validates a command request, naming what is wrong.
pub fn decode_request(body: &[u8], limits: &Limits) -> Result<CommandRequest, ApiError> {
    // The common case in one pass; a body that does not decode is parsed again only to say
    // precisely what is wrong with it.
    let request: CommandRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(_) => return Err(explain_undecodable(body)),
    };
    request.validate(limits)?;
    Ok(request)
}

/// Why a body is not a command request: not JSON at all, or JSON of the wrong shape.
fn explain_undecodable(body: &[u8]) -> ApiError {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return ApiError::new(
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            );
        }
    };
    match serde_json::from_value::<CommandRequest>(value) {
        Ok(_) => ApiError::new(
            ErrorCode::InvalidJson,
            "body is not valid JSON for a command request",
        ),
        Err(e) => {
            let message = e.to_string();
            let code = if message.contains("unknown variant") {
                ErrorCode::UnknownCommand
            } else {
                ErrorCode::InvalidCommand
            };
            ApiError::new(code, format!("invalid request: {message}"))
        }
    }
}

/// `POST /v1/commands`; every error answer is counted by its code (`bully_command_errors_total`).
async fn post_command(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<bully_client::CommandResponse>, ApiError> {
    let result = run_command(&state, body).await;
    if let Err(e) = &result {
        state.metrics.command_error(e.body.code);
    }
    result
}

async fn run_command(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<bully_client::CommandResponse>, ApiError> {
    let received = Instant::now();
    let body = body.map_err(|r| body_error(r, state.max_body))?;
    let mut request = match decode_request(&body, &state.limits) {
        Ok(request) => request,
        Err(e) => {
            state.metrics.command("invalid", "rejected");
            return Err(e);
        }
    };
    // Fill in the server's page size so every coordinator pages alike.
    if let bully_client::Command::List { limit, .. } = &mut request.command {
        limit.get_or_insert(state.limits.max_page);
    }
    let kind = request.command.kind();
    if let Err(e) = wait_until_accepting(state).await {
        state.metrics.command(kind, "rejected");
        return Err(e);
    }
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        reply,
        received,
    };
    match state.jobs.try_send(ExecMsg::Job(Box::new(job))) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            state.metrics.command(kind, "rejected");
            return Err(ApiError::new(
                ErrorCode::QueueFull,
                "the coordinator's queue is full; retry later",
            )
            .retry_after(Duration::from_secs(1)));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
    }
    match tokio::time::timeout(state.answer_timeout, answer).await {
        Ok(Ok(result)) => result
            .map(axum::Json)
            .map_err(|e| exec_error(e, &state.view.borrow())),
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down",
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::StoreUnavailable,
            "no answer in time; the command may or may not have been applied, and retrying it \
             with the same id is safe",
        )),
    }
}

/// Waits (up to `hold`) while an election or handoff is under way, so that a client arriving in
/// the gap is served instead of bounced.
async fn wait_until_accepting(state: &AppState) -> Result<(), ApiError> {
    let mut view = state.view.clone();
    let settled = |v: &View| {
        v.accepting
            || (!matches!(v.role, Role::Coordinator | Role::HandingOff)
                && v.coordinator.as_ref().is_some_and(|c| c.term.is_some()))
    };
    if !settled(&view.borrow()) {
        let _ = tokio::time::timeout(state.hold, view.wait_for(settled)).await;
    }
    let current = view.borrow().clone();
    if current.accepting {
        Ok(())
    } else {
        Err(not_serving(&current))
    }
}

async fn status(State(state): State<AppState>) -> axum::Json<Status> {
    let view = state.view.borrow().clone();
    let last_seq = state.last_seq.load(Ordering::Relaxed);
    axum::Json(Status {
        rank: state.me.rank,
        role: view.role,
        term: view.term,
        client_addr: state.me.client_addr.clone(),
        peer_addr: state.me.peer_addr.clone(),
        coordinator: view.coordinator,
        ready: view.ready,
        last_seq: (last_seq > 0).then_some(last_seq),
        peers: view.peers,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.view.borrow().ready {
        (StatusCode::OK, "ready").into_response()
    } else {
        ApiError::new(ErrorCode::NoCoordinator, "no live coordinator known").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    (headers, state.metrics.encode()).into_response()
}

async fn peer_message(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body.map_err(|r| body_error(r, 64 * 1024))?;
    let envelope: Envelope = serde_json::from_slice(&body).map_err(|e| {
        warn!(error = %e, "malformed peer message rejected");
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("malformed peer message: {e}"),
        )
    })?;
    // Dropped when the driver is busy: election messages are best-effort by design.
    let _ = state.events.try_send(Event::Peer(envelope));
    Ok(StatusCode::NO_CONTENT)
}
