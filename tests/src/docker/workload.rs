//! Clients in containers: one-shot `bully-client` containers (as Job pods run them) and
//! looping ones, issuing `incr counter` until stopped.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bully_client::CommandResponse;

use super::{Cluster, docker, docker_ok, image, logs};
use crate::harness::Report;

/// How one client command ended, as a one-shot `bully-client --output json` reports it.
#[derive(Debug)]
pub enum Outcome {
    Acked(CommandResponse),
    /// Exit code and stderr.
    Failed(String),
}

/// Runs one command in a one-shot client container on `network` (`docker run --rm`, as a Job
/// pod would): `bully-client --servers SERVERS --output json --id ID EXTRA... COMMAND...`.
/// `labels` (see [`Cluster::label_args`]) mark the container as the test's, for the cleanup.
pub async fn client_container(
    labels: &[String],
    network: &str,
    servers: &str,
    id: &str,
    extra: &[&str],
    command: &[&str],
) -> Outcome {
    let output = tokio::process::Command::new("docker")
        .args(["run", "--rm"])
        .args(labels)
        .args(["--network", network])
        .args(["--entrypoint", "bully-client"])
        .arg(image())
        .args(["--servers", servers, "--output", "json", "--id", id])
        .args(extra)
        .args(command)
        .stdin(Stdio::null())
        // A test that fails drops its workload: stop the docker CLI with it (a container it
        // started already is removed with the cluster).
        .kill_on_drop(true)
        .output()
        .await
        .expect("run docker");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => match serde_json::from_str(stdout.trim()) {
            Ok(response) => Outcome::Acked(response),
            Err(e) => Outcome::Failed(format!("unreadable output {stdout:?}: {e}")),
        },
        code => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Outcome::Failed(format!("exit {code:?}: {}", stderr.trim()))
        }
    }
}

/// The shell loop a looping client container runs: one thin `bully-client` process per
/// command, each id announced before it is sent (so an unacknowledged one is still counted as
/// issued), until /tmp/stop appears.
const LOOP_SCRIPT: &str = r#"
i=0
while [ ! -e /tmp/stop ]; do
    i=$((i + 1))
    id="$PREFIX-$i"
    echo "issued $id"
    out=$(bully-client --servers "$SERVERS" --output json --id "$id" incr counter 2>/tmp/err)
    rc=$?
    echo "done $id $rc $out"
    if [ "$rc" -ne 0 ]; then echo "stderr $id $(tr '\n' ' ' </tmp/err)"; fi
done
echo finished
"#;

/// Concurrent `incr counter` clients, started by [`Workload::start`] and stopped by
/// [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    one_shot: Vec<tokio::task::JoinHandle<WorkerLog>>,
    looping: Vec<String>,
}

#[derive(Default)]
struct WorkerLog {
    acked: Vec<(String, CommandResponse)>,
    failed: Vec<(String, String)>,
    issued: Vec<String>,
}

impl Workload {
    /// Starts `one_shot` workers that each run one client container per command, and
    /// `looping` client containers that each run a loop of one-shot client processes. Every
    /// worker issues its commands one after another.
    pub async fn start(cluster: &Cluster, one_shot: usize, looping: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let servers = cluster.server_list();
        let mut workload = Workload {
            stop: stop.clone(),
            one_shot: Vec::new(),
            looping: Vec::new(),
        };
        for w in 0..looping {
            let name = format!("{}-loop{w}", cluster.run);
            let prefix = format!("PREFIX={name}");
            let servers = format!("SERVERS={servers}");
            let image = image();
            let args = cluster.labeled(
                &["run", "--detach", "--name", &name],
                &[
                    "--network",
                    &cluster.network,
                    "--env",
                    &prefix,
                    "--env",
                    &servers,
                    "--entrypoint",
                    "sh",
                    &image,
                    "-c",
                    LOOP_SCRIPT,
                ],
            );
            docker_ok(args).await;
            workload.looping.push(name);
        }
        for w in 0..one_shot {
            // The tasks outlive this borrow: give them what they need by value.
            let shared = OneShotWorker {
                labels: cluster.label_args(),
                network: cluster.network.clone(),
                servers: servers.clone(),
                prefix: format!("{}-once{w}", cluster.run),
            };
            let stop = stop.clone();
            workload.one_shot.push(tokio::spawn(shared.run(stop)));
        }
        workload
    }

    /// Stops every worker after its current command and collects what they saw.
    pub async fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for name in &self.looping {
            docker_ok(["exec", name, "touch", "/tmp/stop"]).await;
        }
        let mut report = Report::default();
        for task in std::mem::take(&mut self.one_shot) {
            let log = task.await.expect("one-shot worker");
            report.acked.push(log.acked);
            report.failed.extend(log.failed);
            report.issued.extend(log.issued);
        }
        for name in &self.looping {
            // The last command may take up to the client's deadline (15 s).
            let waited =
                tokio::time::timeout(Duration::from_secs(60), docker(["wait", name.as_str()]))
                    .await;
            assert!(
                matches!(waited, Ok(Ok(_))),
                "{name} did not finish: {waited:?}"
            );
            let log = parse_loop_log(&logs(name).await);
            report.acked.push(log.acked);
            report.failed.extend(log.failed);
            report.issued.extend(log.issued);
            let _ = docker(["rm", "--force", name.as_str()]).await;
        }
        report
    }
}

impl Drop for Workload {
    /// A test that panics drops its workload unfinished: stop the workers (the cluster's drop
    /// then removes their containers).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.one_shot {
            task.abort();
        }
    }
}

struct OneShotWorker {
    labels: Vec<String>,
    network: String,
    servers: String,
    prefix: String,
}

impl OneShotWorker {
    async fn run(self, stop: Arc<AtomicBool>) -> WorkerLog {
        let mut log = WorkerLog::default();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let id = format!("{}-{n}", self.prefix);
            log.issued.push(id.clone());
            let command = ["incr", "counter"];
            match client_container(
                &self.labels,
                &self.network,
                &self.servers,
                &id,
                &[],
                &command,
            )
            .await
            {
                Outcome::Acked(response) => log.acked.push((id, response)),
                Outcome::Failed(why) => log.failed.push((id, why)),
            }
        }
        log
    }
}

fn parse_loop_log(text: &str) -> WorkerLog {
    let mut log = WorkerLog::default();
    let mut stderr = BTreeMap::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("issued ") {
            log.issued.push(id.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("stderr ") {
            if let Some((id, message)) = rest.split_once(' ') {
                stderr.insert(id.to_string(), message.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("done ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(id), Some(rc)) = (parts.next(), parts.next()) else {
                continue;
            };
            let json = parts.next().unwrap_or_default();
            if rc == "0" {
                match serde_json::from_str(json.trim()) {
                    Ok(response) => log.acked.push((id.to_string(), response)),
                    Err(e) => log.failed.push((id.to_string(), format!("{json:?}: {e}"))),
                }
            } else {
                log.failed.push((id.to_string(), format!("exit {rc}")));
            }
        }
    }
    for (id, message) in &mut log.failed {
        if let Some(text) = stderr.get(id) {
            message.push_str(": ");
            message.push_str(text);
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_log_gives_issued_acknowledged_and_failed_commands() {
        let text = r#"issued w-1
done w-1 0 {"id":"w-1","seq":7,"term":2,"outcome":{"status":"counter","value":1}}
issued w-2
done w-2 3 
stderr w-2 error: no server executed the command within 15s; last errors:   s1:7070: timed out 
issued w-3
finished
"#;
        let log = parse_loop_log(text);
        assert_eq!(log.issued, ["w-1", "w-2", "w-3"]);
        assert_eq!(log.acked.len(), 1);
        assert_eq!((log.acked[0].1.seq, log.acked[0].1.term), (7, 2));
        assert_eq!(log.failed.len(), 1);
        assert!(
            log.failed[0].1.starts_with("exit 3: error: no server"),
            "{:?}",
            log.failed
        );
    }
}
