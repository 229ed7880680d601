//! Bearer-token authentication for the client and peer APIs.
//!
//! When a token is configured (`--token-file`), every request except `/healthz`, `/readyz` and
//! `/metrics` must carry `Authorization: Bearer <token>`. The comparison takes the same time
//! wherever the first difference is, and the token is never logged (its `Debug` is redacted).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bully_client::ErrorCode;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::http::AppState;

/// A secret bearer token.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Reads a token file; surrounding whitespace (a trailing newline) is ignored.
    pub fn from_file(path: &std::path::Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --token-file {}: {e}", path.display()))?;
        Token::new(text.trim())
    }

    pub fn new(token: &str) -> Result<Token, String> {
        if token.len() < 16 {
            return Err("the token must be at least 16 characters".into());
        }
        Ok(Token(Arc::from(token)))
    }

    pub fn secret(&self) -> Arc<str> {
        self.0.clone()
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Middleware: rejects requests without the right bearer token, with no detail on why.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        _ => ApiError::new(ErrorCode::Unauthorized, "missing or invalid bearer token")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_stay_secret() {
        let token = Token::new("0123456789abcdef").unwrap();
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeX"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(Token::new("short").is_err());
    }
}
