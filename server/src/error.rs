//! The HTTP error type: a status code and a JSON [`ErrorBody`] with a stable code.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bully_client::{ErrorBody, ErrorCode, Invalid};

/// An error answer of the client or peer API.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status_of(code),
            body: ErrorBody {
                code,
                message: message.into(),
                coordinator: None,
                retry_after_ms: None,
            },
        }
    }

    /// Adds a coordinator hint (for `not_coordinator`).
    pub fn with_coordinator(mut self, coordinator: Option<String>) -> ApiError {
        self.body.coordinator = coordinator;
        self
    }

    /// Adds a retry delay, sent both in the body and as `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> ApiError {
        self.body.retry_after_ms = Some(after.as_millis() as u64);
        self
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> ApiError {
        ApiError::new(invalid.code, invalid.message)
    }
}

/// The HTTP status for each code; stable, documented in the README.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson
        | ErrorCode::InvalidCommand
        | ErrorCode::UnknownCommand
        | ErrorCode::InvalidId
        | ErrorCode::KeyTooLong
        | ErrorCode::PageTooLarge
        | ErrorCode::TlsRequired => StatusCode::BAD_REQUEST,
        ErrorCode::ValueTooLarge | ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::IdConflict => StatusCode::CONFLICT,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::NotCoordinator => StatusCode::MISDIRECTED_REQUEST,
        ErrorCode::NoCoordinator
        | ErrorCode::QueueFull
        | ErrorCode::Fenced
        | ErrorCode::StoreUnavailable
        | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.body.retry_after_ms;
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(ms) = retry_after {
            // Retry-After is in whole seconds; round up so it is never 0.
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self_is_unauthorized(&response) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn self_is_unauthorized(response: &Response) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
}
