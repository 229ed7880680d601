//! TLS for bully's HTTP clients: the CLI, the Rust client, the controller and the servers' peer
//! transport all verify servers the same way.
//!
//! Servers are verified against a CA of the cluster's own (`--ca-file`), never the system's
//! roots. Clients and peers often reach a server by its IP address (a pod IP from DNS), which a
//! certificate rarely names, so the name to verify can be fixed (`--tls-server-name`): the
//! certificate must then carry that DNS name, whatever address was dialled. A client may
//! present a certificate of its own (the peer API's mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What is wrong with TLS material. Names the file, never a key's contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS set-up failed: {0}")]
    Config(String),
}

/// The files of a client's TLS set-up.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// PEM certificates of the CA(s) that sign the servers' certificates.
    pub ca: PathBuf,
    /// The DNS name servers' certificates must carry; `None`: the host dialled.
    pub server_name: Option<String>,
    /// A certificate chain and key to present (mutual TLS), if any.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Reads every PEM certificate in `path`.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// Reads the PEM private key in `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        // The error says what failed to parse, not the key.
        reason: e.to_string(),
    })
}

/// A root store of the certificates in `path`.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The rustls provider every bully component uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration from `files`: the CA's roots, the fixed server name if any, and the
/// identity if any.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let roots = Arc::new(read_roots(&files.ca)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let name = match &files.server_name {
        Some(name) => Some(
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))?,
        ),
        None => None,
    };
    let verifier = Arc::new(NamedVerifier { inner, name });
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &files.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display()))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// WebPKI verification against the cluster's CA, of the fixed name when one is set.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a TLS failure in `error`'s chain means, in words, if it is one: a certificate that
/// did not verify (and why), or a server that wants a client certificate.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(match tls {
                rustls::Error::InvalidCertificate(why) => {
                    format!("the server's certificate did not verify against the CA file: {why:?}")
                }
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                    "the server requires a client certificate".to_string()
                }
                other => format!("TLS failed: {other}"),
            });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(text) = explain(inner)
        {
            return Some(text);
        }
        source = e.source();
    }
    None
}
