//! bully's client library: the wire types every component shares, and a small Rust client.
//!
//! This crate compiles no MongoDB or Kubernetes code, so the one-shot `bully-client` binary
//! built from it stays small.
//!
//! # Layout
//! - [`wire`]: commands, responses, error bodies and status, as sent over HTTP.
//! - [`client`]: [`Client`], which finds the coordinator and retries with one command id.
//! - [`resolve`]: turns `NAME:PORT` into every address DNS returns for NAME.
//! - [`token`]: reading and checking a bearer token file; [`tls`]: verifying servers against
//!   the cluster's CA.
//! - `process` (feature `process`): shutdown signal and logging of long-running processes.

pub mod client;
#[cfg(feature = "process")]
pub mod process;
pub mod tls;
pub mod token;
pub mod wire;

pub use client::{Client, ClientError, ClientOptions};
pub use wire::*;

/// Every socket address DNS returns for `name:port` (all A and AAAA records, as a Kubernetes
/// headless Service or a Docker network alias returns them), as `ip:port` strings, sorted.
pub async fn resolve(name_port: &str) -> std::io::Result<Vec<String>> {
    let mut addrs: Vec<String> = tokio::net::lookup_host(name_port)
        .await?
        .map(|a| a.to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Splits a comma-separated `host:port` list, dropping blanks.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
