//! Resource limits of a real server: slow clients and too many connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bully_tests::cluster::{Cluster, StoreSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_408_and_the_server_keeps_serving() {
    let cluster = Cluster::start_with(&[1], StoreSpec::Embedded, &["--request-timeout", "1s"]);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let addr = cluster.servers[0].client_addr.clone();
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Promise 100 bytes of body, send 5, then stall.
        stream
            .write_all(b"POST /v1/commands HTTP/1.1\r\nHost: bully\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\"")
            .unwrap();
        let started = Instant::now();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        (response, started.elapsed())
    })
    .await
    .unwrap();
    let (text, waited) = response;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        waited < Duration::from_secs(15),
        "the slow client was held for {waited:?}"
    );
    let client = cluster.client();
    let put = bully_client::CommandRequest::new(bully_client::Command::Put {
        key: "k".into(),
        value: serde_json::json!(1),
    });
    client.execute(&put).await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let cluster = Cluster::start_with(&[1], StoreSpec::Embedded, &["--max-connections", "2"]);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let addr = cluster.servers[0].client_addr.clone();
    let url = format!("http://{addr}/healthz");
    // Two idle connections take both slots.
    let hogs: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let blocked = http.get(&url).timeout(Duration::from_secs(1)).send().await;
    assert!(
        blocked.is_err(),
        "a third connection was served: {blocked:?}"
    );
    drop(hogs);
    let served = http
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("served once a slot frees");
    assert_eq!(served.status().as_u16(), 200);
}
