//! TLS on real servers: HTTPS on the client API, mutual TLS on the peer API, clear refusals of
//! certificates that do not verify (expired, wrong CA, missing), of plain HTTP on a TLS port,
//! and certificates rotated in place while a workload runs, without a failed command.
//!
//! Certificates come from a test CA made here with rcgen; servers are reached at 127.0.0.1 and
//! verified by the name `bully.test` (`--tls-server-name`), as in a cluster where pods are
//! dialled by IP.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bully_client::tls::{TlsFiles, client_config};
use bully_client::{Command, CommandRequest, Outcome};
use bully_server::store::embedded::EmbeddedStore;
use bully_tests::cluster::{Cluster, StoreSpec, binary, check_exactly_once, incr_workload};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

const NAME: &str = "bully.test";

/// A CA that signs certificates into a directory.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A certificate for `bully.test` and 127.0.0.1, good for server and client use; expired
    /// if `expired`. Writes `<stem>.crt` and `<stem>.key`; returns their paths and the serial.
    fn issue(&self, dir: &Path, stem: &str, expired: bool) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec![NAME.to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial: Vec<u8> = uuid::Uuid::new_v4().as_bytes()[..8].to_vec();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (crt, pem_key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        // Written aside and renamed in, as a Secret volume swaps its files.
        for (path, text) in [(&crt, cert.pem()), (&pem_key, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (crt, pem_key, serial)
    }
}

fn tls_args(crt: &Path, key: &Path, ca: &Path) -> Vec<String> {
    vec![
        "--tls-cert-file".into(),
        crt.display().to_string(),
        "--tls-key-file".into(),
        key.display().to_string(),
        "--tls-client-ca-file".into(),
        ca.display().to_string(),
        "--tls-server-name".into(),
        NAME.into(),
    ]
}

fn client_tls(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    Arc::new(
        client_config(&TlsFiles {
            ca: ca.to_path_buf(),
            server_name: Some(NAME.into()),
            identity,
        })
        .unwrap(),
    )
}

/// Starts a TLS cluster whose harness clients verify it with `ca`.
fn tls_cluster(ranks: &[u64], crt: &Path, key: &Path, ca: &Path) -> Cluster {
    let args = tls_args(crt, key, ca);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(ranks, StoreSpec::Embedded, &refs);
    cluster.tls = Some(client_tls(ca, None));
    cluster
}

fn cli(servers: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("bully-client"))
        .args(["--servers", servers, "--timeout", "3s"])
        .args(args)
        .env_remove("BULLY_SERVERS")
        .env_remove("BULLY_CA_FILE")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_elects_over_mutual_tls_and_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bully test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (crt, key, _) = ca.issue(dir.path(), "server", false);
    let cluster = tls_cluster(&[100, 300, 200], &crt, &key, &ca_file);
    // Agreement needs the peers' mutual TLS to work.
    let term = cluster.await_coordinator(1, Duration::from_secs(20)).await;
    let servers = cluster.client_addrs().join(",");
    let ca_arg = ca_file.display().to_string();
    let put = cli(
        &servers,
        &[
            "--ca-file",
            &ca_arg,
            "--tls-server-name",
            NAME,
            "put",
            "k",
            "v",
        ],
    );
    assert_eq!(put.status.code(), Some(0), "{put:?}");
    assert!(String::from_utf8_lossy(&put.stdout).contains(&format!("term {term}")));
    let get = cli(
        &servers,
        &["--ca-file", &ca_arg, "--tls-server-name", NAME, "get", "k"],
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "\"v\"");
    // The peers' messages were accepted: every server sees the others live.
    for i in 0..3 {
        let status = cluster.status(i).await.expect("status over HTTPS");
        assert_eq!(status.peers.iter().filter(|p| p.live).count(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_that_do_not_verify_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bully test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let other = Ca::new("someone else's CA");
    let other_file = other.write(dir.path(), "other.crt");
    let (crt, key, _) = ca.issue(dir.path(), "server", false);
    let cluster = tls_cluster(&[1], &crt, &key, &ca_file);
    cluster.await_coordinator(0, Duration::from_secs(20)).await;
    let servers = cluster.client_addrs().join(",");

    // A client that trusts another CA.
    let other_arg = other_file.display().to_string();
    let wrong = cli(
        &servers,
        &[
            "--ca-file",
            &other_arg,
            "--tls-server-name",
            NAME,
            "get",
            "k",
        ],
    );
    assert_eq!(wrong.status.code(), Some(3), "{wrong:?}");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("did not verify") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // A name the certificate does not carry.
    let ca_arg = ca_file.display().to_string();
    let misnamed = cli(
        &servers,
        &[
            "--ca-file",
            &ca_arg,
            "--tls-server-name",
            "other.test",
            "get",
            "k",
        ],
    );
    let stderr = String::from_utf8_lossy(&misnamed.stderr);
    assert!(
        misnamed.status.code() == Some(3) && stderr.contains("NotValidForName"),
        "{stderr}"
    );
    // Plain HTTP on the TLS port: a 400 naming the problem, and a log line saying so.
    let addr = cluster.servers[0].client_addr.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: bully\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("tls_required"),
        "{answer}"
    );
    let log = std::fs::read_to_string(&cluster.servers[0].log).unwrap();
    assert!(log.contains("plain HTTP on the TLS port refused"), "{log}");
    drop(cluster);

    // A server whose certificate has expired.
    let (old_crt, old_key, _) = ca.issue(dir.path(), "expired", true);
    let expired = tls_cluster(&[1], &old_crt, &old_key, &ca_file);
    let servers = expired.client_addrs().join(",");
    let refused = cli(
        &servers,
        &["--ca-file", &ca_arg, "--tls-server-name", NAME, "get", "k"],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.status.code() == Some(3) && stderr.contains("Expired"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_api_refuses_a_peer_without_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bully test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (crt, key, _) = ca.issue(dir.path(), "server", false);
    let cluster = tls_cluster(&[1], &crt, &key, &ca_file);
    cluster.await_coordinator(0, Duration::from_secs(20)).await;
    let url = format!("https://{}/peer/v1/message", cluster.servers[0].peer_addr);
    let body = serde_json::json!({
        "from": {"rank": 9, "peer_addr": "127.0.0.1:9", "client_addr": "127.0.0.1:8"},
        "message": {"type": "election"}
    });
    let post = |tls: Arc<rustls::ClientConfig>| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            reqwest::Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .build()
                .unwrap()
                .post(url)
                .json(&body)
                .send()
                .await
        }
    };
    // No client certificate: refused in the handshake.
    let anonymous = post(client_tls(&ca_file, None)).await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    // A certificate from another CA: refused too.
    let other = Ca::new("someone else's CA");
    let (other_crt, other_key, _) = other.issue(dir.path(), "intruder", false);
    let intruder = post(client_tls(&ca_file, Some((other_crt, other_key)))).await;
    assert!(intruder.is_err(), "{intruder:?}");
    // A certificate from the cluster's CA: accepted.
    let (peer_crt, peer_key, _) = ca.issue(dir.path(), "peer", false);
    let peer = post(client_tls(&ca_file, Some((peer_crt, peer_key))))
        .await
        .expect("a peer with a certificate from the CA");
    assert_eq!(peer.status().as_u16(), 204);
    let log = std::fs::read_to_string(&cluster.servers[0].log).unwrap();
    assert!(log.contains("TLS handshake refused"), "{log}");
}

/// The serial of the certificate `addr` presents to a new connection.
async fn served_serial(addr: &str, ca: &Path) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(ca, None));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().expect("a certificate")[0].clone();
    // The serial sits in the TBS certificate: find the bytes we chose.
    cert.as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_in_place_without_a_failed_command() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bully test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (crt, key, first_serial) = ca.issue(dir.path(), "server", false);
    let cluster = tls_cluster(&[100, 300, 200], &crt, &key, &ca_file);
    cluster.await_coordinator(1, Duration::from_secs(20)).await;
    let addr = cluster.servers[1].client_addr.clone();
    let contains =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    assert!(contains(
        &served_serial(&addr, &ca_file).await,
        &first_serial
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(incr_workload(cluster.client(), 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // cert-manager renews the certificate: same files, new contents.
    let (_, _, second_serial) = ca.issue(dir.path(), "server", false);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if contains(&served_serial(&addr, &ca_file).await, &second_serial) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Peers still reach each other with the new certificates, and commands keep flowing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.await_coordinator(1, Duration::from_secs(20)).await;
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();
    assert!(report.acked_count() > 10, "too little progress");
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    let store = EmbeddedStore::open(cluster.dir.path().join("bully.db")).unwrap();
    check_exactly_once(&report, &store, &cluster.client()).await;
    let log = std::fs::read_to_string(&cluster.servers[1].log).unwrap();
    assert!(log.contains("TLS certificates reloaded"));
    // And a command through the CLI with the new certificate.
    let response = cluster
        .client()
        .execute(&CommandRequest::new(Command::Get { key: "n".into() }))
        .await
        .unwrap();
    assert!(matches!(
        response.outcome,
        Outcome::Value { .. } | Outcome::NotFound
    ));
}
