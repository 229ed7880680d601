//! Container-level tests: `bully-server` containers of the project image, a SecantusDB store
//! container, and `bully-client` containers as clients, on user-defined Docker networks.
//!
//! The shape is a Kubernetes deployment's: every server joins the cluster's network under the
//! alias [`ALIAS`], so Docker's DNS returns all of them as a headless Service would, and the
//! servers find each other with `--peer-dns bully:7071`; each advertises its own fixed address
//! (`BULLY_ADVERTISE_HOST`, as the chart passes the pod IP); clients are given the server list
//! (the containers' names) like Job pods. The store sits on a second network that only the
//! servers share with it, reached by the name `store`: taking a server off the cluster's
//! network then cuts it from its peers and clients but not from the store, the partition in
//! which only fencing keeps an old coordinator from committing.
//!
//! # Layout
//! - this module: the `docker` command, the images, the labels and the clean-up by label;
//! - [`cluster`]: [`Cluster`], one test's networks, volume, store and servers, and [`check`],
//!   the final exactly-once check against the store, read from the host. Every object carries
//!   the label `io.bully.test=<run>` and is removed when the cluster is dropped, also when the
//!   test panics (set `BULLY_KEEP_CONTAINERS=1` to keep them; `scripts/docker-clean.sh`
//!   removes leftovers by label);
//! - [`workload`]: [`Workload`], concurrent clients issuing `incr counter`: one-shot
//!   containers (one `docker run --rm` per command) and looping containers (a shell loop of
//!   one-shot `bully-client` processes, for a denser load).
//!
//! The host talks only to containers the test created: the servers at their addresses on the
//! test's own bridge networks, the store through a port published on 127.0.0.1.
//!
//! Images: `BULLY_IMAGE` (default `bully:<version>`) and `BULLY_STORE_IMAGE`, built by
//! `scripts/docker-images.sh`.

use std::process::Stdio;
use std::time::Duration;

pub mod cluster;
pub mod workload;

pub use cluster::{Cluster, Server, check};
pub use workload::{Outcome, Workload, client_container};

/// The label on every container, network and volume a test creates; its value is the run.
pub const LABEL: &str = "io.bully.test";
/// A second label, whose value is `BULLY_TEST_SESSION` (set by `scripts/docker-test.sh`, so it
/// can remove what its own run left, and only that).
pub const SESSION_LABEL: &str = "io.bully.test.session";
/// The network alias every server joins under (the headless Service's name).
pub const ALIAS: &str = "bully";
pub const CLIENT_PORT: u16 = 7070;
pub const PEER_PORT: u16 = 7071;
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// A little above the 800 ms default: containers on a loaded 2-core machine stall more than
/// processes do, and a spurious election would muddy what a test observes.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The database the servers use.
pub const DATABASE: &str = "bully";
/// How long the store may take to start (a Python server in a container).
pub(crate) const STORE_START: Duration = Duration::from_secs(60);

/// One cluster at a time per test binary: the machines are small, and timing-sensitive tests
/// should not starve each other. (An async mutex: the guard lives across awaits.)
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The project image: `bully:<version>` unless `BULLY_IMAGE` names another.
pub fn image() -> String {
    std::env::var("BULLY_IMAGE").unwrap_or_else(|_| format!("bully:{}", env!("CARGO_PKG_VERSION")))
}

/// The store image (SecantusDB).
pub fn store_image() -> String {
    std::env::var("BULLY_STORE_IMAGE").unwrap_or_else(|_| "bully-secantus:0.7.0b3".into())
}

/// Detection, election and term claim, with a wide margin for a loaded machine.
pub fn failover_bound() -> Duration {
    TIMEOUT * 4 + Duration::from_secs(20)
}

/// Runs `docker ARGS` to completion; Ok(stdout) on success, Err(stderr) otherwise.
pub async fn docker<I, S>(args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// [`docker`], panicking with the command and its error on failure.
pub async fn docker_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S> + Clone,
    S: AsRef<std::ffi::OsStr>,
{
    docker(args.clone()).await.unwrap_or_else(|e| {
        let line: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        panic!("docker {} failed: {e}", line.join(" "))
    })
}

/// The blocking form, for `Drop`.
pub(crate) fn docker_blocking(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Removes every container, network and volume carrying `label` (`key=value` or `key`).
/// Repeats a few times: a client container that a stopping workload started a moment ago may
/// appear after the first listing and keep the network busy.
pub fn remove_labeled(label: &str) {
    let filter = format!("label={label}");
    let list = |args: &[&str]| -> Vec<String> {
        docker_blocking(args)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    for attempt in 0..5 {
        let last = attempt == 4;
        let mut left = false;
        for id in list(&["ps", "--all", "--quiet", "--filter", &filter]) {
            // A paused container cannot be killed in every Docker version: thaw it first.
            let _ = docker_blocking(&["unpause", &id]);
            if let Err(e) = docker_blocking(&["rm", "--force", "--volumes", &id]) {
                left = true;
                if last {
                    eprintln!("cannot remove container {id}: {e}");
                }
            }
        }
        for id in list(&["network", "ls", "--quiet", "--filter", &filter]) {
            if let Err(e) = docker_blocking(&["network", "rm", &id]) {
                left = true;
                if last {
                    eprintln!("cannot remove network {id}: {e}");
                }
            }
        }
        for name in list(&["volume", "ls", "--quiet", "--filter", &filter]) {
            if let Err(e) = docker_blocking(&["volume", "rm", "--force", &name]) {
                left = true;
                if last {
                    eprintln!("cannot remove volume {name}: {e}");
                }
            }
        }
        if !left {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub(crate) async fn logs(name: &str) -> String {
    let output = tokio::process::Command::new("docker")
        .args(["logs", name])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("docker logs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}

pub(crate) fn docker_logs_blocking(name: &str, tail: usize) -> String {
    let tail = tail.to_string();
    match std::process::Command::new("docker")
        .args(["logs", "--tail", &tail, name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text
        }
        Err(e) => format!("(docker logs failed: {e})"),
    }
}
