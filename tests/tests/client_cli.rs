//! The `bully-client` binary against a real server: output, exit codes, and bad input.

use std::process::Output;
use std::time::Duration;

use bully_tests::cluster::{Cluster, StoreSpec, binary, free_port};
use serde_json::Value;

fn run(servers: &str, args: &[&str]) -> Output {
    std::process::Command::new(binary("bully-client"))
        .args(["--servers", servers, "--timeout", "5s"])
        .args(args)
        .env_remove("BULLY_SERVERS")
        .output()
        .expect("run bully-client")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_outputs_and_exit_codes() {
    let cluster = Cluster::start(&[20, 10], StoreSpec::Embedded);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    // Start with the follower: the client follows the hint.
    let servers = format!(
        "{},{}",
        cluster.servers[1].client_addr, cluster.servers[0].client_addr
    );
    let s = servers.as_str();

    let put = run(s, &["put", "greeting", "hello"]);
    assert_eq!(put.status.code(), Some(0), "{}", stderr(&put));
    assert!(stdout(&put).starts_with("OK (seq "), "{}", stdout(&put));
    let get = run(s, &["get", "greeting"]);
    assert_eq!(
        (get.status.code(), stdout(&get).as_str()),
        (Some(0), "\"hello\"")
    );
    let put_json = run(s, &["put", "doc", r#"{"a":[1,2]}"#]);
    assert_eq!(put_json.status.code(), Some(0));
    let get_json = run(s, &["--output", "json", "get", "doc"]);
    let body: Value = serde_json::from_str(&stdout(&get_json)).unwrap();
    assert_eq!(body["outcome"]["value"], serde_json::json!({"a": [1, 2]}));
    assert!(body["seq"].as_u64().unwrap() > 0);

    assert_eq!(stdout(&run(s, &["incr", "n"])), "1");
    assert_eq!(stdout(&run(s, &["incr", "n", "-5"])), "-4");
    let cas_ok = run(s, &["cas", "greeting", "\"hello\"", "\"bye\""]);
    assert_eq!(cas_ok.status.code(), Some(0), "{}", stderr(&cas_ok));
    let cas_miss = run(s, &["cas", "greeting", "\"hello\"", "\"again\""]);
    assert_eq!(cas_miss.status.code(), Some(1));
    assert!(
        stderr(&cas_miss).contains("cas mismatch: current value is \"bye\""),
        "{}",
        stderr(&cas_miss)
    );
    let cas_absent = run(s, &["cas", "fresh", "absent", "1"]);
    assert_eq!(cas_absent.status.code(), Some(0));
    let missing = run(s, &["get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("not found"));
    let delete = run(s, &["delete", "fresh"]);
    assert_eq!(delete.status.code(), Some(0));
    assert_eq!(run(s, &["delete", "fresh"]).status.code(), Some(1));
    let type_mismatch = run(s, &["incr", "greeting"]);
    assert_eq!(type_mismatch.status.code(), Some(1));

    let list = run(s, &["list", "--limit", "2"]);
    assert_eq!(list.status.code(), Some(0));
    let lines: Vec<String> = stdout(&list).lines().map(String::from).collect();
    assert_eq!(
        lines,
        vec![
            "doc\t{\"a\":[1,2]}",
            "greeting\t\"bye\"",
            "-- more: --after greeting"
        ]
    );
    let rest = run(s, &["list", "--after", "greeting"]);
    assert_eq!(stdout(&rest), "n\t-4");

    // The same id twice: applied once, the retry gets the stored answer.
    let first = run(
        s,
        &["--output", "json", "--id", "cli-fixed-id", "incr", "once"],
    );
    let again = run(
        s,
        &["--output", "json", "--id", "cli-fixed-id", "incr", "once"],
    );
    let first: Value = serde_json::from_str(&stdout(&first)).unwrap();
    let again: Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(
        (first["seq"].clone(), again["duplicate"].clone()),
        (again["seq"].clone(), Value::Bool(true))
    );
    assert_eq!(stdout(&run(s, &["get", "once"])), "1");

    let status = run(s, &["status"]);
    assert_eq!(status.status.code(), Some(0));
    let table = stdout(&status);
    assert!(table.starts_with("ADDRESS"), "{table}");
    assert!(
        table.contains("coordinator") && table.contains("follower"),
        "{table}"
    );

    // Usage errors: exit 2 with a message naming the problem.
    let too_long = run(s, &["get", &"k".repeat(600)]);
    assert_eq!(too_long.status.code(), Some(2));
    assert!(
        stderr(&too_long).contains("max_key_bytes"),
        "{}",
        stderr(&too_long)
    );
    let no_command = run(s, &[]);
    assert_eq!(no_command.status.code(), Some(2));
    let bad_id = run(s, &["--id", "not valid", "get", "k"]);
    assert_eq!(bad_id.status.code(), Some(2));
    let no_servers = std::process::Command::new(binary("bully-client"))
        .args(["get", "k"])
        .env_remove("BULLY_SERVERS")
        .output()
        .unwrap();
    assert_eq!(no_servers.status.code(), Some(2));
}

#[test]
fn cli_exits_3_when_no_server_answers() {
    let dead = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let output = std::process::Command::new(binary("bully-client"))
        .args(["--servers", &dead, "--timeout", "1s", "put", "k", "v"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let err = stderr(&output);
    for server in dead.split(',') {
        assert!(
            err.contains(server),
            "each server's last error is listed: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_rejects_bad_input_and_keeps_serving() {
    // Small limits, so that an oversize body still fits in the socket buffers: the server
    // answers 413 before reading it, and a huge body could meet a closed connection instead.
    let cluster = Cluster::start_with(&[1], StoreSpec::Embedded, &["--max-value-bytes", "1000"]);
    cluster.await_coordinator(0, Duration::from_secs(15)).await;
    let url = format!("http://{}/v1/commands", cluster.servers[0].client_addr);
    // No connection reuse: the server closes a connection whose oversize body it did not read.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let cases: [(&[u8], u16, &str); 5] = [
        (b"{oops", 400, "invalid_json"),
        (
            br#"{"id":"a","command":{"op":"explode"}}"#,
            400,
            "unknown_command",
        ),
        (
            br#"{"id":"a","command":{"op":"put","key":["x"],"value":1}}"#,
            400,
            "invalid_command",
        ),
        (
            br#"{"id":"a","command":{"op":"put","key":"k","value":"#,
            400,
            "invalid_json",
        ),
        (&[0xff, 0xfe, 0x00], 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let response = http.post(&url).body(body.to_vec()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["code"], code, "{json}");
    }
    let huge = format!(
        r#"{{"id":"a","command":{{"op":"put","key":"k","value":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let response = http.post(&url).body(huge).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let big_value = format!(
        r#"{{"id":"a","command":{{"op":"put","key":"k","value":"{}"}}}}"#,
        "x".repeat(1010)
    );
    let response = http.post(&url).body(big_value).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["code"], "value_too_large");
    let ok = http
        .post(&url)
        .body(r#"{"id":"fine","command":{"op":"put","key":"k","value":"v"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}
