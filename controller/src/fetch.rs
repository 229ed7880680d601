//! Asking one server for its `GET /v1/status`, behind a trait so tests can inject answers.

use std::time::Duration;

use async_trait::async_trait;
use bully_client::Status;

use crate::decide::Missing;

/// Fetches a server's status from `http://{ip}:{port}{path}`.
#[async_trait]
pub trait StatusFetcher: Send + Sync + 'static {
    /// The status, or why there is none ([`Missing::Unreachable`] or [`Missing::BadResponse`]).
    async fn fetch(&self, ip: &str, port: u16, path: &str) -> Result<Status, Missing>;
}

/// The real fetcher: HTTP (or HTTPS, verifying the servers as every bully client does) with a
/// short timeout.
pub struct HttpStatusFetcher {
    http: reqwest::Client,
    token: Option<String>,
    tls: bool,
}

impl HttpStatusFetcher {
    /// `timeout` bounds the whole request. It must stay well below the poll interval (1 s by
    /// default) so that one hung server does not delay the verdict on the others; 500 ms is
    /// generous for a status read on a cluster network.
    pub fn new(
        timeout: Duration,
        token: Option<String>,
        tls: Option<rustls::ClientConfig>,
    ) -> reqwest::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Pods come and go; a pooled connection to a dead pod IP would just time out.
            .pool_max_idle_per_host(1);
        let secure = tls.is_some();
        if let Some(config) = tls {
            builder = builder.use_preconfigured_tls(config);
        }
        Ok(HttpStatusFetcher {
            http: builder.build()?,
            token,
            tls: secure,
        })
    }
}

/// `ip` may be IPv6 (pods in dual-stack or IPv6-only clusters).
pub fn status_url(tls: bool, ip: &str, port: u16, path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let scheme = if tls { "https" } else { "http" };
    if ip.contains(':') {
        format!("{scheme}://[{ip}]:{port}{path}")
    } else {
        format!("{scheme}://{ip}:{port}{path}")
    }
}

#[async_trait]
impl StatusFetcher for HttpStatusFetcher {
    async fn fetch(&self, ip: &str, port: u16, path: &str) -> Result<Status, Missing> {
        let url = status_url(self.tls, ip, port, path);
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| {
            match bully_client::tls::explain(&err) {
                // A certificate that does not verify is a set-up problem worth a warning.
                Some(why) => tracing::warn!(%url, error = %why, "status request refused by TLS"),
                None => tracing::debug!(%url, error = %err, "status request failed"),
            }
            Missing::Unreachable
        })?;
        if !response.status().is_success() {
            tracing::debug!(%url, code = %response.status(), "status request refused");
            return Err(Missing::BadResponse);
        }
        response.json::<Status>().await.map_err(|err| {
            tracing::debug!(%url, error = %err, "status body is not a bully status");
            Missing::BadResponse
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            status_url(false, "10.1.2.3", 7070, "/v1/status"),
            "http://10.1.2.3:7070/v1/status"
        );
        assert_eq!(
            status_url(true, "fd00::1", 7070, "v1/status"),
            "https://[fd00::1]:7070/v1/status"
        );
    }

    #[tokio::test]
    async fn real_socket_round_trip() {
        use axum::{Router, routing::get};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route(
                "/v1/status",
                get(|headers: axum::http::HeaderMap| async move {
                    let authorized = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer s3cret");
                    if !authorized {
                        return Err(axum::http::StatusCode::UNAUTHORIZED);
                    }
                    Ok(axum::Json(serde_json::json!({
                        "rank": 12, "role": "coordinator", "term": 3,
                        "client_addr": "127.0.0.1:7070", "peer_addr": "127.0.0.1:7071",
                        "ready": true, "peers": [], "version": "0.1.0"
                    })))
                }),
            )
            .route("/junk", get(|| async { "not json" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let timeout = Duration::from_millis(500);
        let fetcher = HttpStatusFetcher::new(timeout, Some("s3cret".into()), None).unwrap();
        let status = fetcher
            .fetch("127.0.0.1", port, "/v1/status")
            .await
            .unwrap();
        assert_eq!((status.rank, status.term), (12, Some(3)));
        assert_eq!(
            fetcher.fetch("127.0.0.1", port, "/junk").await,
            Err(Missing::BadResponse)
        );
        let anonymous = HttpStatusFetcher::new(timeout, None, None).unwrap();
        assert_eq!(
            anonymous.fetch("127.0.0.1", port, "/v1/status").await,
            Err(Missing::BadResponse)
        );
        server.abort();
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            fetcher.fetch("127.0.0.1", closed_port, "/v1/status").await,
            Err(Missing::Unreachable)
        );
    }
}
