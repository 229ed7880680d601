//! Bearer tokens on a real cluster: servers elect each other with the token, clients need it,
//! and requests without it learn nothing.

use std::time::Duration;

use bully_tests::cluster::{Cluster, StoreSpec, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_token_serves_only_token_holders() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "s3cret-token-for-the-test-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let path = token_file.to_str().unwrap();
    let cluster = Cluster::start_with(&[2, 1], StoreSpec::Embedded, &["--token-file", path]);
    // The servers authenticate to each other: the election completes.
    cluster.await_coordinator(0, Duration::from_secs(20)).await;

    let servers = cluster.client_addrs().join(",");
    let cli = |args: &[&str]| {
        std::process::Command::new(binary("bully-client"))
            .args(["--servers", &servers, "--timeout", "5s"])
            .args(args)
            .env_remove("BULLY_TOKEN")
            .env_remove("BULLY_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let with_token = cli(&["--token-file", path, "put", "k", "v"]);
    assert_eq!(
        with_token.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
    let without = cli(&["get", "k"]);
    assert_eq!(without.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&without.stderr).contains("unauthorized"));

    let http = reqwest::Client::new();
    let status_url = format!("http://{}/v1/status", cluster.servers[0].client_addr);
    let denied = http
        .get(&status_url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 401);
    let body = denied.text().await.unwrap();
    assert!(!body.contains(token) && !body.contains("rank"), "{body}");
    // A forged election message without the token is refused and changes nothing.
    let peer_url = format!("http://{}/peer/v1/message", cluster.servers[1].peer_addr);
    let forged = serde_json::json!({
        "from": {"rank": u64::MAX, "peer_addr": "127.0.0.1:1", "client_addr": "127.0.0.1:1"},
        "message": {"type": "coordinator", "term": 1_000_000},
    });
    let refused = http.post(&peer_url).json(&forged).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.await_coordinator(0, Duration::from_secs(5)).await;
    // The token never reaches the logs.
    for server in &cluster.servers {
        let log = std::fs::read_to_string(&server.log).unwrap();
        assert!(!log.contains(token), "{} logged the token", server.name);
    }
}
