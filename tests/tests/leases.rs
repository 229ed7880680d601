//! Leases on keys against real servers: the CLI's lease commands, expiry decided by the
//! coordinator, a keepalive process holding a lease, and a failover that restarts the
//! lease at its full TTL (never an early expiry).

use std::process::Output;
use std::time::{Duration, Instant};

use bully_client::{Command, CommandRequest, Outcome};
use bully_tests::cluster::{Cluster, StoreSpec, binary};
use nix::sys::signal::Signal;

fn cli(servers: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary("bully-client"));
    command
        .args(["--servers", servers, "--timeout", "5s"])
        .env_remove("BULLY_SERVERS");
    command
}

fn run(servers: &str, args: &[&str]) -> Output {
    cli(servers).args(args).output().expect("run bully-client")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

fn grant(servers: &str, ttl: &str) -> String {
    let out = run(servers, &["lease", "grant", ttl]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out);
    assert!(id.parse::<u64>().is_ok(), "a lease id: {id}");
    id
}

fn exists(servers: &str, key: &str) -> bool {
    match run(servers, &["get", key]).status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("get {key}: exit {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_leases_expire_revoke_and_keep_alive() {
    let cluster = Cluster::start(&[1], StoreSpec::Embedded);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let servers = cluster.servers[0].client_addr.clone();
    let s = servers.as_str();

    // Revoke deletes the attached key, not the others.
    let id = grant(s, "30s");
    let put = run(s, &["put", "session", "alive", "--lease", &id]);
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    assert_eq!(run(s, &["put", "plain", "1"]).status.code(), Some(0));
    assert_eq!(stdout(&run(s, &["list"])), "plain\t1\nsession\t\"alive\"");
    assert_eq!(run(s, &["lease", "revoke", &id]).status.code(), Some(0));
    assert!(!exists(s, "session") && exists(s, "plain"));
    let gone = run(s, &["lease", "revoke", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
    let refused = run(s, &["put", "x", "1", "--lease", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(!exists(s, "x"));

    // Expiry: nobody keeps the lease alive.
    let id = grant(s, "500ms");
    assert_eq!(
        run(s, &["put", "ephemeral", "1", "--lease", &id])
            .status
            .code(),
        Some(0)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(s, "ephemeral") {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let keepalive = run(s, &["lease", "keepalive", "--once", &id]);
    assert_eq!(keepalive.status.code(), Some(1), "{}", stderr(&keepalive));

    // A keepalive process holds the lease for as long as it runs.
    let id = grant(s, "600ms");
    assert_eq!(
        run(s, &["put", "held", "1", "--lease", &id]).status.code(),
        Some(0)
    );
    let mut holder = cli(s)
        .args(["lease", "keepalive", &id])
        .spawn()
        .expect("spawn keepalive");
    std::thread::sleep(Duration::from_millis(2000));
    assert!(exists(s, "held"), "expired while kept alive");
    holder.kill().expect("stop the keepalive");
    let _ = holder.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(s, "held") {
        assert!(
            Instant::now() < deadline,
            "the lease outlived its keepalive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad input is refused with a reason.
    let short = run(s, &["lease", "grant", "1ms"]);
    assert_eq!(short.status.code(), Some(2));
    assert!(stderr(&short).contains("ttl_ms"), "{}", stderr(&short));
}

/// The new coordinator restarts every lease at its full TTL when it takes over: the key
/// outlives the failover, then expires once nobody keeps the lease alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_restarts_leases_at_their_full_ttl() {
    let mut cluster = Cluster::start(&[20, 10], StoreSpec::Embedded);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let client = cluster.client();
    let ttl = Duration::from_secs(3);
    let granted = client
        .execute(&CommandRequest::new(Command::LeaseGrant {
            ttl_ms: ttl.as_millis() as u64,
        }))
        .await
        .unwrap();
    let Outcome::Lease { id, .. } = granted.outcome else {
        panic!("{granted:?}")
    };
    let put = CommandRequest::new(Command::Put {
        key: "owned".into(),
        value: serde_json::json!(1),
        lease: Some(id),
    });
    assert_eq!(client.execute(&put).await.unwrap().outcome, Outcome::Ok);
    cluster.signal(0, Signal::SIGKILL);
    cluster.wait_exit(0, Duration::from_secs(5));
    cluster.await_coordinator(1, Duration::from_secs(15)).await;
    let took_over = Instant::now();
    let get = || {
        CommandRequest::new(Command::Get {
            key: "owned".into(),
        })
    };
    // Still there: the new coordinator gives the lease a full TTL from its takeover.
    let first = client.execute(&get()).await.unwrap();
    assert!(
        matches!(first.outcome, Outcome::Value { .. }) || took_over.elapsed() >= ttl,
        "expired early after the failover: {first:?}"
    );
    loop {
        let read = client.execute(&get()).await.unwrap();
        if read.outcome == Outcome::NotFound {
            break;
        }
        assert!(
            took_over.elapsed() < ttl + Duration::from_secs(5),
            "the lease outlived TTL after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
