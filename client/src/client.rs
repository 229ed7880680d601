//! A small client that executes one command on whichever server is the coordinator.
//!
//! It tries the server that executed its previous command first, then the servers in order,
//! jumps to the coordinator hint a follower returns, backs off between rounds, and gives up at an overall deadline. Every attempt sends the same command
//! id, so a command whose first attempt was applied but not acknowledged (a crash, a timeout)
//! is not applied again: the coordinator returns the stored result instead.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::wire::{CommandRequest, CommandResponse, ErrorBody, Status};

/// Options for [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Overall deadline for one command, across all attempts.
    pub timeout: Duration,
    /// Deadline for one HTTP attempt (a paused server must not eat the whole budget).
    pub attempt_timeout: Duration,
    /// Bearer token sent with every request, if the servers require one.
    pub token: Option<String>,
    /// HTTPS, verifying servers this way ([`crate::tls::client_config`]); plain HTTP if `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(2),
            token: None,
            tls: None,
        }
    }
}

/// Why a command did not execute.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A server refused the request itself (bad input, auth); retrying cannot help.
    #[error("{server} rejected the command: {} ({})", .body.message, .body.code)]
    Rejected { server: String, body: ErrorBody },
    /// No server executed the command before the deadline.
    #[error("no server could execute the command within {timeout:?}")]
    Exhausted {
        timeout: Duration,
        /// Each server's last error.
        errors: BTreeMap<String, String>,
    },
    /// The client was configured wrongly.
    #[error("{0}")]
    Config(String),
}

/// Executes commands against a list of servers (`host:port`, scheme optional).
#[derive(Clone, Debug)]
pub struct Client {
    servers: Vec<String>,
    options: ClientOptions,
    http: reqwest::Client,
    /// The server that executed the last command, tried first by the next one (shared by
    /// clones), so a long-lived client does not pay a redirect per command. Forgotten when it
    /// fails an attempt. A std mutex: held only to copy a string, never across an await.
    last_coordinator: Arc<Mutex<Option<String>>>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

impl Client {
    pub fn new(servers: Vec<String>, options: ClientOptions) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Config(
                "no servers given (use --servers host:port,... or --servers-dns name:port)".into(),
            ));
        }
        let mut builder = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30));
        if let Some(tls) = &options.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(Client {
            servers,
            options,
            http,
            last_coordinator: Arc::default(),
        })
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Executes `request` (keeping its id across retries) on the coordinator.
    pub async fn execute(&self, request: &CommandRequest) -> Result<CommandResponse, ClientError> {
        let deadline = Instant::now() + self.options.timeout;
        let mut errors = BTreeMap::new();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut queue: VecDeque<String> = self.servers.iter().cloned().collect();
            if let Some(last) = self.last_coordinator() {
                queue.retain(|s| !same_server(s, &last));
                queue.push_front(last);
            }
            // Hints are followed, but only so often per round, so two servers with stale
            // views cannot bounce the client between them forever.
            let mut hints_left = self.servers.len() + 1;
            let mut wait_hint = None;
            while let Some(server) = queue.pop_front() {
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.exhausted(errors));
                }
                let budget = (deadline - now).min(self.options.attempt_timeout);
                match self.attempt(&server, request, budget).await {
                    Attempt::Done(response) => {
                        self.remember(Some(server));
                        return Ok(response);
                    }
                    Attempt::Rejected(body) => return Err(ClientError::Rejected { server, body }),
                    Attempt::Retry { error, hint, wait } => {
                        if self
                            .last_coordinator()
                            .is_some_and(|l| same_server(&l, &server))
                        {
                            self.remember(None);
                        }
                        errors.insert(server.clone(), error);
                        wait_hint = wait.or(wait_hint);
                        if let Some(hint) = hint
                            && hints_left > 0
                            && !same_server(&hint, &server)
                        {
                            hints_left -= 1;
                            queue.retain(|s| !same_server(s, &hint));
                            queue.push_front(hint);
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.exhausted(errors));
            }
            let pause = wait_hint
                .unwrap_or(backoff)
                .min(MAX_BACKOFF)
                .min(deadline - now);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn last_coordinator(&self) -> Option<String> {
        self.last_coordinator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn remember(&self, server: Option<String>) {
        *self
            .last_coordinator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = server;
    }

    /// `GET /v1/status` of one server.
    pub async fn status(&self, server: &str) -> Result<Status, String> {
        let response = self
            .request(self.http.get(self.url(server, "/v1/status")))
            .timeout(self.options.attempt_timeout)
            .send()
            .await
            .map_err(describe_transport_error)?;
        let code = response.status();
        if !code.is_success() {
            return Err(format!("HTTP {code}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("bad status body: {e}"))
    }

    /// `server`'s URL for `path`, `https` when TLS is on.
    fn url(&self, server: &str, path: &str) -> String {
        url_with(self.options.tls.is_some(), server, path)
    }

    fn exhausted(&self, errors: BTreeMap<String, String>) -> ClientError {
        ClientError::Exhausted {
            timeout: self.options.timeout,
            errors,
        }
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.options.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn attempt(&self, server: &str, request: &CommandRequest, budget: Duration) -> Attempt {
        let sent = self
            .request(self.http.post(self.url(server, "/v1/commands")))
            .timeout(budget)
            .json(request)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Attempt::Retry {
                    error: describe_transport_error(e),
                    hint: None,
                    wait: None,
                };
            }
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                return Attempt::Retry {
                    error: describe_transport_error(e),
                    hint: None,
                    wait: None,
                };
            }
        };
        if status.is_success() {
            return match serde_json::from_slice(&bytes) {
                Ok(response) => Attempt::Done(response),
                Err(e) => Attempt::Retry {
                    error: format!("unreadable response: {e}"),
                    hint: None,
                    wait: None,
                },
            };
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) if body.code.is_retryable() => Attempt::Retry {
                error: format!("{} ({})", body.message, status.as_u16()),
                hint: body.coordinator,
                wait: body.retry_after_ms.map(Duration::from_millis),
            },
            Ok(body) => Attempt::Rejected(body),
            Err(_) => Attempt::Retry {
                error: format!("HTTP {status} without an error body"),
                hint: None,
                wait: None,
            },
        }
    }
}

enum Attempt {
    Done(CommandResponse),
    Rejected(ErrorBody),
    Retry {
        error: String,
        hint: Option<String>,
        wait: Option<Duration>,
    },
}

/// `http://host:port/path` from `host:port` or a full base URL.
pub fn url(server: &str, path: &str) -> String {
    url_with(false, server, path)
}

/// `http[s]://host:port/path` from `host:port` (`https` when `tls`) or a full base URL.
pub fn url_with(tls: bool, server: &str, path: &str) -> String {
    let base = server.trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        format!("{base}{path}")
    } else if tls {
        format!("https://{base}{path}")
    } else {
        format!("http://{base}{path}")
    }
}

fn same_server(a: &str, b: &str) -> bool {
    strip_scheme(a) == strip_scheme(b)
}

fn strip_scheme(s: &str) -> &str {
    s.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}

/// A transport error in words (never with headers, so never with a token).
pub fn describe_transport_error(e: reqwest::Error) -> String {
    if let Some(tls) = crate::tls::explain(&e) {
        tls
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        // reqwest's Display includes the URL, never headers, so no token leaks here.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_accept_bare_and_full_addresses() {
        assert_eq!(
            url("127.0.0.1:7070", "/v1/status"),
            "http://127.0.0.1:7070/v1/status"
        );
        assert_eq!(url("http://h:1/", "/x"), "http://h:1/x");
        assert!(same_server("http://h:1", "h:1"));
        assert!(!same_server("h:1", "h:2"));
    }

    #[test]
    fn an_empty_server_list_is_a_config_error() {
        assert!(matches!(
            Client::new(vec![], ClientOptions::default()),
            Err(ClientError::Config(_))
        ));
    }
}
