//! TLS on the client and peer APIs, with certificates reloaded when their files change.
//!
//! - The client API speaks HTTPS with the server's certificate.
//! - The peer API speaks HTTPS too and, with `--tls-client-ca-file`, demands a client
//!   certificate signed by that CA (mutual TLS): a peer without one is refused in the
//!   handshake. The peer transport presents the server's own certificate and verifies peers
//!   against the same CA (of the name `--tls-server-name`, since peers are dialled by IP).
//! - Every couple of seconds the files are checked; when one changed (cert-manager rotates a
//!   Secret's files in place) they are loaded again and new connections get the new
//!   certificate, while open connections carry on with the one they started with. A file
//!   that does not load is reported and the previous certificate stays.
//! - A plain-HTTP request on a TLS port gets a `400` (`tls_required`) and a log line saying
//!   so, rather than a connection that just breaks.
//!
//! Handshakes run in tasks of their own, so a slow client cannot hold up the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::serve::Listener;
use bully_client::tls::{TlsError, TlsFiles, provider, read_certs, read_key, read_roots};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};

use crate::http::limits::{LimitedListener, LimitedStream};

/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of a server's TLS set-up.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the servers' certificates: peers must present one, and are verified
    /// against it.
    pub client_ca: PathBuf,
    /// The DNS name peers' certificates must carry.
    pub server_name: Option<String>,
}

/// One loaded set of TLS configurations.
pub struct Loaded {
    pub client_api: Arc<ServerConfig>,
    pub peer_api: Arc<ServerConfig>,
    /// For the peer transport: present our certificate, verify peers against the CA.
    pub peer_client: Arc<rustls::ClientConfig>,
}

impl ServerTlsFiles {
    /// Loads every configuration from the files.
    pub fn load(&self) -> Result<Loaded, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let config = |e: rustls::Error| TlsError::Config(format!("{}: {e}", self.cert.display()));
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(config)
        };
        let mut client_api = builder()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(config)?;
        let roots = Arc::new(read_roots(&self.client_ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Config(format!("{}: {e}", self.client_ca.display())))?;
        let mut peer_api = builder()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(config)?;
        for config in [&mut client_api, &mut peer_api] {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let peer_client = bully_client::tls::client_config(&TlsFiles {
            ca: self.client_ca.clone(),
            server_name: self.server_name.clone(),
            identity: Some((self.cert.clone(), self.key.clone())),
        })?;
        Ok(Loaded {
            client_api: Arc::new(client_api),
            peer_api: Arc::new(peer_api),
            peer_client: Arc::new(peer_client),
        })
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        [&self.cert, &self.key, &self.client_ca]
            .iter()
            .map(|p| stamp(p))
            .collect()
    }

    /// Loads the files, then watches them: the receiver sees every successful reload.
    pub fn watch(self) -> Result<watch::Receiver<Arc<Loaded>>, TlsError> {
        let loaded = self.load()?;
        let (tx, rx) = watch::channel(Arc::new(loaded));
        tokio::spawn(async move {
            let mut seen = self.stamps();
            loop {
                tokio::time::sleep(RELOAD_CHECK).await;
                if tx.is_closed() {
                    return;
                }
                let now = self.stamps();
                if now == seen {
                    continue;
                }
                match self.load() {
                    Ok(loaded) => {
                        info!(cert = %self.cert.display(), "TLS certificates reloaded");
                        let _ = tx.send(Arc::new(loaded));
                        seen = now;
                    }
                    // Half-written files (a rotation in progress) load on a later check.
                    Err(e) => {
                        warn!(error = %e, "TLS certificates changed but do not load; keeping the previous ones")
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// A file's modification time and length, if it can be read (following symlinks, as
/// Kubernetes Secret volumes swap a symlink).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Which configuration a listener serves.
#[derive(Clone, Copy, Debug)]
pub enum Api {
    Client,
    Peer,
}

/// A listener that completes TLS handshakes in their own tasks and hands out finished
/// streams.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<LimitedStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        mut inner: LimitedListener,
        configs: watch::Receiver<Arc<Loaded>>,
        api: Api,
    ) -> std::io::Result<TlsListener> {
        let local = Listener::local_addr(&inner)?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = Listener::accept(&mut inner).await;
                let loaded = configs.borrow().clone();
                let config = match api {
                    Api::Client => loaded.client_api.clone(),
                    Api::Peer => loaded.peer_api.clone(),
                };
                let ready = tx.clone();
                tokio::spawn(async move {
                    if let Some(tls) = handshake(stream, addr, config, api).await {
                        let _ = ready.send((tls, addr)).await;
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<LimitedStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task ended (the runtime is shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// What a plain-HTTP request on a TLS port gets.
fn tls_required() -> Vec<u8> {
    let body = r#"{"code":"tls_required","message":"this port speaks HTTPS; use https://"}"#;
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handshake(
    mut stream: LimitedStream,
    addr: SocketAddr,
    config: Arc<ServerConfig>,
    api: Api,
) -> Option<TlsStream<LimitedStream>> {
    // A TLS connection starts with a handshake record (0x16); an HTTP request with a method.
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            if first[0].is_ascii_uppercase() {
                warn!(peer = %addr, ?api, "plain HTTP on the TLS port refused (use https://)");
                let _ = stream.write_all(&tls_required()).await;
                let _ = stream.shutdown().await;
            } else {
                warn!(peer = %addr, ?api, "a connection that is not TLS refused");
            }
            return None;
        }
        Ok(Ok(1)) => {}
        _ => return None,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            // A peer without a certificate, or with one the CA did not sign, ends here.
            warn!(peer = %addr, ?api, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            debug!(peer = %addr, ?api, "TLS handshake timed out");
            None
        }
    }
}
