//! The Helm chart's `tls` section, rendered with `helm template` and checked document by
//! document, then put to work: servers started with exactly the TLS flags the chart renders,
//! with a certificate like the one docs/kubernetes.md has cert-manager issue, answered by
//! `bully-client` and the controller configured as the chart configures them.
//!
//! helm is the one `scripts/k8s-tools.sh` installs into `.tools/bin/helm` (or `BULLY_HELM`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bully_client::tls::{TlsFiles, client_config};
use bully_tests::cluster::{Cluster, StoreSpec, binary};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize as _;
use serde_yaml::Value;

/// Where the chart mounts the TLS Secret (servers) or its `ca.crt` (everything else).
const TLS_DIR: &str = "/var/run/secrets/bully-tls";
/// The default `tls.serverName` of release "bully" in namespace "default".
const SERVER_NAME: &str = "bully.default.svc.cluster.local";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The helm binary: `BULLY_HELM`, or what `scripts/k8s-tools.sh` installs.
fn helm() -> PathBuf {
    let path = match std::env::var_os("BULLY_HELM") {
        Some(path) => PathBuf::from(path),
        None => workspace().join(".tools/bin/helm"),
    };
    assert!(
        path.is_file(),
        "{} is missing: run scripts/k8s-tools.sh (or set BULLY_HELM)",
        path.display()
    );
    path
}

/// `helm template bully charts/bully --namespace default ARGS...`, as YAML documents (the
/// `helm test` pod included).
fn render(args: &[&str]) -> Vec<Value> {
    let chart = workspace().join("charts/bully");
    let out = Command::new(helm())
        .args(["template", "bully"])
        .arg(&chart)
        .args(["--namespace", "default"])
        .args(args)
        .current_dir(&chart)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn doc<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The pod spec of a workload or of a bare Pod.
fn pod_spec(doc: &Value) -> &Value {
    if doc["kind"] == "Pod" {
        &doc["spec"]
    } else {
        &doc["spec"]["template"]["spec"]
    }
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    seq(list).iter().find(|v| v["name"] == name)
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    named(&container["env"], name).and_then(|e| e["value"].as_str())
}

/// Every pod spec rendered, with its document's kind and name.
fn pod_specs(docs: &[Value]) -> impl Iterator<Item = (String, &Value)> {
    docs.iter()
        .filter(|d| {
            ["Pod", "Deployment", "StatefulSet", "Job"].contains(&d["kind"].as_str().unwrap_or(""))
        })
        .map(|d| {
            let label = format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            );
            (label, pod_spec(d))
        })
}

/// Checks that a client-side pod reads only `ca.crt` of the Secret and points the client at it.
fn assert_verifies_servers(
    docs: &[Value],
    kind: &str,
    name: &str,
    secret: &str,
    server_name: &str,
) {
    let spec = pod_spec(doc(docs, kind, name));
    let container = &seq(&spec["containers"])[0];
    assert_eq!(
        env(container, "BULLY_CA_FILE"),
        Some(format!("{TLS_DIR}/ca.crt").as_str()),
        "{kind} {name}"
    );
    assert_eq!(
        env(container, "BULLY_TLS_SERVER_NAME"),
        Some(server_name),
        "{kind} {name}"
    );
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == TLS_DIR)
        .unwrap_or_else(|| panic!("{kind} {name} mounts nothing at {TLS_DIR}"));
    let volume = named(&spec["volumes"], mount["name"].as_str().unwrap()).unwrap();
    assert_eq!(volume["secret"]["secretName"], secret, "{kind} {name}");
    // Only the CA: a client has no business with the servers' private key.
    let items: Vec<&str> = seq(&volume["secret"]["items"])
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["ca.crt"], "{kind} {name}");
    // host:port, so that the client's scheme follows --ca-file: https.
    if let Some(servers) = env(container, "BULLY_SERVERS") {
        assert!(!servers.starts_with("http://"), "{kind} {name}: {servers}");
    }
}

#[test]
fn tls_values_switch_servers_probes_controller_test_and_job_to_https() {
    let docs = render(&["-f", "ci/tls-values.yaml"]);
    let spec = pod_spec(doc(&docs, "StatefulSet", "bully"));
    let server = named(&spec["containers"], "server").unwrap();
    let args: Vec<&str> = seq(&server["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for flag in [
        format!("--tls-cert-file={TLS_DIR}/tls.crt"),
        format!("--tls-key-file={TLS_DIR}/tls.key"),
        format!("--tls-client-ca-file={TLS_DIR}/ca.crt"),
        format!("--tls-server-name={SERVER_NAME}"),
    ] {
        assert!(
            args.contains(&flag.as_str()),
            "{flag} missing from {args:?}"
        );
    }
    // The whole Secret as a directory: the kubelet swaps rotated files in place, and the
    // servers reload them.
    let volume = named(&spec["volumes"], "tls").expect("the tls volume");
    assert_eq!(volume["secret"]["secretName"], "bully-tls");
    assert!(volume["secret"]["items"].is_null(), "{volume:?}");
    let mount = named(&server["volumeMounts"], "tls").expect("the tls mount");
    assert_eq!(mount["mountPath"], TLS_DIR);
    // Probes over HTTPS on the client port, which asks for no client certificate (the peer
    // port's mutual TLS would refuse the kubelet).
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(server[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        assert_eq!(server[probe]["httpGet"]["port"], "client", "{probe}");
    }
    assert_eq!(
        named(&server["ports"], "client").unwrap()["containerPort"],
        7070
    );

    assert_verifies_servers(
        &docs,
        "Deployment",
        "bully-controller",
        "bully-tls",
        SERVER_NAME,
    );
    assert_verifies_servers(&docs, "Pod", "bully-test-put-get", "bully-tls", SERVER_NAME);
    assert_verifies_servers(&docs, "Job", "bully-client", "bully-tls", SERVER_NAME);

    // A subPath mount never sees a rotated file.
    for (label, spec) in pod_specs(&docs) {
        for container in seq(&spec["containers"]) {
            for mount in seq(&container["volumeMounts"]) {
                assert!(mount["subPath"].is_null(), "{label}: {mount:?}");
            }
        }
    }

    // Another Secret and name reach every component.
    let docs = render(&[
        "--set",
        "tls.enabled=true",
        "--set",
        "tls.secretName=bully-certs",
        "--set",
        "tls.serverName=bully.example.test",
        "--set",
        "clientJob.enabled=true",
    ]);
    let server = named(
        &pod_spec(doc(&docs, "StatefulSet", "bully"))["containers"],
        "server",
    )
    .unwrap();
    assert!(
        seq(&server["args"])
            .iter()
            .any(|a| a == "--tls-server-name=bully.example.test")
    );
    assert_eq!(
        named(
            &pod_spec(doc(&docs, "StatefulSet", "bully"))["volumes"],
            "tls"
        )
        .unwrap()["secret"]["secretName"],
        "bully-certs"
    );
    for (kind, name) in [
        ("Deployment", "bully-controller"),
        ("Pod", "bully-test-put-get"),
        ("Job", "bully-client"),
    ] {
        assert_verifies_servers(&docs, kind, name, "bully-certs", "bully.example.test");
    }
}

#[test]
fn without_tls_nothing_tls_is_rendered() {
    // tls.secretName alone does not turn TLS on.
    for args in [
        &["--set", "clientJob.enabled=true"][..],
        &[
            "--set",
            "clientJob.enabled=true",
            "--set",
            "tls.secretName=bully-certs",
            "--set",
            "auth.enabled=false",
        ][..],
    ] {
        let docs = render(args);
        let text = serde_yaml::to_string(&docs).unwrap().to_lowercase();
        for word in ["tls", "https", "ca.crt", "bully_ca_file"] {
            assert!(!text.contains(word), "{word:?} rendered with {args:?}");
        }
        for (label, spec) in pod_specs(&docs) {
            for container in seq(&spec["containers"]) {
                for probe in ["livenessProbe", "readinessProbe"] {
                    assert!(container[probe]["httpGet"]["scheme"].is_null(), "{label}");
                }
            }
        }
    }
}

/// A CA and a server certificate like the cert-manager ones in docs/kubernetes.md, written
/// into `dir` under the keys of a cert-manager Secret.
fn write_secret(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bully-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![
        "bully".to_string(),
        "bully.default".to_string(),
        "bully.default.svc".to_string(),
        SERVER_NAME.to_string(),
        "*.bully-headless.default.svc.cluster.local".to_string(),
    ])
    .unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
}

/// The rendered path, moved from the mount point into `dir`.
fn local(value: &str, dir: &Path) -> String {
    value.replace(TLS_DIR, &dir.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rendered_tls_settings_work_with_the_real_binaries() {
    let docs = render(&["-f", "ci/tls-values.yaml"]);
    let secret = tempfile::tempdir().unwrap();
    write_secret(secret.path());

    // Servers with the chart's TLS flags, on the Secret's files.
    let server = named(
        &pod_spec(doc(&docs, "StatefulSet", "bully"))["containers"],
        "server",
    )
    .unwrap()
    .clone();
    let tls_args: Vec<String> = seq(&server["args"])
        .iter()
        .map(|a| a.as_str().unwrap())
        .filter(|a| a.starts_with("--tls-"))
        .map(|a| local(a, secret.path()))
        .collect();
    assert_eq!(tls_args.len(), 4, "{tls_args:?}");
    let refs: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(&[10, 20], StoreSpec::Embedded, &refs);
    let ca = secret.path().join("ca.crt");
    let verify = |identity| {
        Arc::new(
            client_config(&TlsFiles {
                ca: ca.clone(),
                server_name: Some(SERVER_NAME.into()),
                identity,
            })
            .unwrap(),
        )
    };
    cluster.tls = Some(verify(None));
    // Agreement needs the peers' mutual TLS to work with this certificate.
    cluster.await_coordinator(1, Duration::from_secs(20)).await;

    // What the probes do: HTTPS on the client port, with no client certificate.
    let anonymous = reqwest::Client::builder()
        .use_preconfigured_tls((*verify(None)).clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for path in ["/healthz", "/readyz"] {
        let url = format!("https://{}{path}", cluster.servers[0].client_addr);
        let status = anonymous
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .status();
        assert!(status.is_success(), "{url}: {status}");
    }
    // The peer port would refuse them.
    let peer = format!("https://{}/healthz", cluster.servers[0].peer_addr);
    assert!(
        anonymous.get(&peer).send().await.is_err(),
        "{peer} took a client without a certificate"
    );

    // bully-client configured as the client Job and the helm test configure it.
    let job = &seq(&pod_spec(doc(&docs, "Job", "bully-client"))["containers"])[0];
    let client = |args: &[&str]| {
        let mut command = Command::new(binary("bully-client"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for var in ["BULLY_CA_FILE", "BULLY_TLS_SERVER_NAME"] {
            command.env(var, local(env(job, var).unwrap(), secret.path()));
        }
        command
            .args([
                "--servers",
                &cluster.client_addrs().join(","),
                "--timeout",
                "10s",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let put = client(&["put", "chart/tls", "ok"]);
    assert!(put.status.success(), "{put:?}");
    let get = client(&["get", "chart/tls"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "\"ok\"",
        "{get:?}"
    );

    // bully-controller with the Deployment's TLS environment gets past its TLS set-up (and then
    // stops at the missing Kubernetes API); with the CA missing it says so.
    let controller = &seq(&pod_spec(doc(&docs, "Deployment", "bully-controller"))["containers"])[0];
    let run_controller = |ca_file: &str| {
        let home = tempfile::tempdir().unwrap();
        Command::new(binary("bully-controller"))
            .env_clear()
            .env("HOME", home.path())
            .env("KUBECONFIG", home.path().join("missing"))
            .env("BULLY_CA_FILE", ca_file)
            .env(
                "BULLY_TLS_SERVER_NAME",
                env(controller, "BULLY_TLS_SERVER_NAME").unwrap(),
            )
            .args(["run", "--metrics-listen", "127.0.0.1:0"])
            .output()
            .unwrap()
    };
    let ca_file = local(env(controller, "BULLY_CA_FILE").unwrap(), secret.path());
    let out = run_controller(&ca_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Kubernetes API") && !stderr.contains("--ca-file"),
        "{stderr}"
    );
    let out = run_controller(env(controller, "BULLY_CA_FILE").unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--ca-file") && stderr.contains(TLS_DIR),
        "{stderr}"
    );
}
