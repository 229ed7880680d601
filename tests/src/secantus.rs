//! A private SecantusDB server (a MongoDB-compatible single-node replica set, PyPI
//! `SecantusDB`) for tests of the MongoDB store backend.
//!
//! Each [`Secantus`] runs its own `secantusd-py` on 127.0.0.1 with a free port and a temporary
//! storage directory, and kills it when dropped. The binary comes from `BULLY_SECANTUSD`, or
//! else `<workspace>/.venv-mongo/bin/secantusd-py`, which `scripts/install-secantus.sh`
//! installs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ClientOptions;
use tempfile::TempDir;

/// How long a fresh server may take to answer `ping`: about 0.5 s on the development machines,
/// but a loaded CI machine running many test binaries at once can be far slower.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running SecantusDB server, killed on drop.
///
/// Tests use the panicking methods ([`start`](Self::start), [`restart`](Self::restart), ...);
/// the chaos harness uses the `try_` forms, whose errors it reports without ending the run.
pub struct Secantus {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// `--sync-on-commit`: off only for the chaos negative control (`Plan::lossy_store`).
    sync: bool,
}

impl Secantus {
    /// Starts a durable server and waits until it answers `ping`.
    pub async fn start() -> Secantus {
        Self::try_start(true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server and waits until it answers `ping`. `sync: false` drops
    /// `--sync-on-commit`: the server then acknowledges majority writes that a crash loses
    /// (measured: 200 acknowledged inserts, SIGKILL, restart: 0 documents; with the flag: 200).
    /// Real `mongod` journals `w: majority` writes before acknowledging them.
    pub async fn try_start(sync: bool) -> Result<Secantus, String> {
        let dir = tempfile::Builder::new()
            .prefix("secantus-")
            .tempdir()
            .map_err(|e| format!("create a temporary directory for SecantusDB: {e}"))?;
        let port = crate::harness::free_port().map_err(|e| format!("find a free port: {e}"))?;
        let mut server = Secantus {
            child: None,
            port,
            dir,
            sync,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// The URI for the store and the driver.
    ///
    /// `directConnection=true` rather than `replicaSet=secantus`: with `replicaSet`, the
    /// driver stops sending writes once it learns of a step-down and waits in server selection,
    /// and SecantusDB does not announce the end of the window (its streaming `hello` only pushes
    /// on a step-down), so the driver only notices at its next heartbeat, up to 10 s later
    /// (measured: after a 3 s step-down the next write waited 10 s in server selection).
    /// A direct connection sends every operation to the node, which refuses writes with
    /// `NotWritablePrimary` during the window and accepts them right after: the store's retry
    /// loop sees the step-down as errors, which is what the tests want to exercise.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// The URI with `replicaSet=secantus`, as a production replica set would be addressed.
    pub fn replica_set_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet=secantus", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A driver client on [`uri`](Self::uri), for direct inspection and admin commands.
    pub async fn client(&self) -> mongodb::Client {
        self.try_client().await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_client(&self) -> Result<mongodb::Client, String> {
        let mut options = ClientOptions::parse(self.uri())
            .await
            .map_err(|e| format!("parse the SecantusDB URI: {e}"))?;
        options.server_selection_timeout = Some(Duration::from_secs(2));
        mongodb::Client::with_options(options).map_err(|e| format!("create a MongoDB client: {e}"))
    }

    /// Steps the node down for `secs` seconds (`replSetStepDown` with `force`, the only form a
    /// single-node set accepts). Writes fail with `NotWritablePrimary` until the window ends.
    pub async fn step_down(&self, secs: u64) {
        self.try_step_down(secs)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`step_down`](Self::step_down), reporting failure instead of panicking. Succeeds only
    /// once the node says it is no longer a writable primary, so a step-down that did not
    /// happen is never taken for one that did.
    pub async fn try_step_down(&self, secs: u64) -> Result<(), String> {
        let client = self.try_client().await?;
        let admin = client.database("admin");
        let command = doc! { "replSetStepDown": secs as i64, "force": true };
        match admin.run_command(command).await {
            Ok(_) => {}
            // MongoDB before 4.2 closes all connections on step-down: no reply may come.
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Io(_)) => {}
            Err(e) => return Err(format!("replSetStepDown failed: {e}")),
        }
        let hello = admin
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(|e| format!("hello after replSetStepDown failed: {e}"))?;
        if hello.get_bool("isWritablePrimary").unwrap_or(true) {
            return Err(format!(
                "after replSetStepDown the node still says it is a writable primary: {hello}"
            ));
        }
        Ok(())
    }

    /// Arms mongod's `failCommand` failpoint (replacing any armed one): `mode` is `"off"`,
    /// `"alwaysOn"` or `{times: N}`; `data` holds `failCommands` and the failure, e.g.
    /// `errorCode`, `closeConnection` or a `writeConcernError` (the command runs, then fails).
    pub async fn fail_command(&self, mode: impl Into<Bson>, data: Document) {
        let command =
            doc! { "configureFailPoint": "failCommand", "mode": mode.into(), "data": data };
        self.client()
            .await
            .database("admin")
            .run_command(command)
            .await
            .expect("configureFailPoint");
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and storage directory.
    pub async fn restart(&mut self) {
        self.try_restart().await.unwrap_or_else(|e| panic!("{e}"));
    }

    pub async fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().await
    }

    /// The server's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("secantusd.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let binary = binary();
        if !binary.exists() {
            return Err(format!(
                "{} is missing: run scripts/install-secantus.sh (or set BULLY_SECANTUSD)",
                binary.display()
            ));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("secantusd.log"))
            .map_err(|e| format!("open the SecantusDB log: {e}"))?;
        let mut command = Command::new(&binary);
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            // For `configureFailPoint` (see `fail_command`); off by default because anyone who
            // can reach the port could arm it, which does not matter on a private loopback port.
            .arg("--enable-test-commands");
        if self.sync {
            // Without it SecantusDB acknowledges majority writes it can lose in a crash.
            command.arg("--sync-on-commit");
        }
        let child = command
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| format!("clone the log file: {e}"))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        self.child = Some(child);
        let client = self.try_client().await?;
        let started = tokio::time::Instant::now();
        loop {
            let ping = client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await;
            if ping.is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "secantusd-py exited with {status}:\n{}",
                    self.log()
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "SecantusDB did not answer ping within {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server binary: `BULLY_SECANTUSD`, or what `scripts/install-secantus.sh` installs.
pub fn binary() -> PathBuf {
    match std::env::var_os("BULLY_SECANTUSD") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-mongo/bin/secantusd-py"),
    }
}

/// Whether the server binary is installed.
pub fn available() -> bool {
    binary().exists()
}
