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
        lease: None,
    });
    client.execute(&put).await.expect("still serving");
}

/// With both slots taken, a third connection is accepted by the kernel but not served: its
/// request gets no answer (a read timeout, not a refusal or a reset). Once a slot frees, that
/// same waiting request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let cluster = Cluster::start_with(&[1], StoreSpec::Embedded, &["--max-connections", "2"]);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let addr = cluster.servers[0].client_addr.clone();
    let answered = tokio::task::spawn_blocking(move || {
        // Two idle connections take both slots.
        let hogs: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut waiting = TcpStream::connect(&addr).expect("the kernel accepts the connection");
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: bully\r\nConnection: close\r\n\r\n")
            .unwrap();
        waiting
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut byte = [0u8; 1];
        let blocked = waiting.read(&mut byte);
        let kind = blocked.as_ref().map_err(|e| e.kind());
        assert!(
            matches!(
                kind,
                Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            ),
            "a third connection was answered or refused instead of waiting: {blocked:?}"
        );
        drop(hogs);
        waiting
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut response = String::new();
        waiting
            .read_to_string(&mut response)
            .expect("the waiting request is answered once a slot frees");
        response
    })
    .await
    .unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}
