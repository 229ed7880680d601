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
use bully_client::token::TokenError;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// A secret bearer token.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Reads a token file (checked as every component checks one: [`bully_client::token`]).
    pub fn from_file(path: &std::path::Path) -> Result<Token, TokenError> {
        bully_client::token::read_token_file(path).map(|t| Token(Arc::from(t)))
    }

    pub fn new(token: &str) -> Result<Token, TokenError> {
        bully_client::token::check_token(token, "")?;
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
pub async fn require(State(token): State<Option<Token>>, request: Request, next: Next) -> Response {
    let Some(token) = &token else {
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
