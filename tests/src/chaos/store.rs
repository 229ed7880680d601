//! A private SecantusDB for chaos runs, started with `--sync-on-commit`.
//!
//! Like [`crate::secantus::Secantus`], but durable: without `--sync-on-commit` SecantusDB keeps
//! committed transactions in its process until a later flush, so a SIGKILL loses writes it has
//! already acknowledged with `w: majority` (measured: 200 acknowledged inserts, SIGKILL, restart:
//! 0 documents; with the flag: 200). Real `mongod` journals `w: majority` writes before
//! acknowledging them (`writeConcernMajorityJournalDefault`), so a store restart fault needs the
//! flag to test bully rather than the stand-in. Errors are returned, not panics, so a failed
//! fault is reported and the run goes on.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use tempfile::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running SecantusDB, killed on drop.
pub struct DurableSecantus {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// `--sync-on-commit`; off only for the negative control (`Plan::lossy_store`).
    sync: bool,
}

/// The server binary: `BULLY_SECANTUSD`, or what `scripts/install-secantus.sh` installs.
pub fn binary() -> PathBuf {
    match std::env::var_os("BULLY_SECANTUSD") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-mongo/bin/secantusd-py"),
    }
}

pub fn available() -> bool {
    binary().exists()
}

impl DurableSecantus {
    /// Starts a server; `sync: false` drops `--sync-on-commit` (acknowledged writes can be
    /// lost on restart).
    pub async fn start(sync: bool) -> Result<DurableSecantus, String> {
        let dir = tempfile::Builder::new()
            .prefix("chaos-secantus-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut server = DurableSecantus {
            child: None,
            port,
            dir,
            sync,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// A direct connection (see `Secantus::uri` for why not `replicaSet=`).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    async fn client(&self) -> Result<mongodb::Client, String> {
        let mut options = ClientOptions::parse(self.uri())
            .await
            .map_err(|e| e.to_string())?;
        options.server_selection_timeout = Some(Duration::from_secs(2));
        mongodb::Client::with_options(options).map_err(|e| e.to_string())
    }

    /// `replSetStepDown` for `secs` seconds: writes are refused until the window ends.
    pub async fn step_down(&self, secs: u64) -> Result<(), String> {
        let command = doc! { "replSetStepDown": secs as i64, "force": true };
        match self
            .client()
            .await?
            .database("admin")
            .run_command(command)
            .await
        {
            Ok(_) => Ok(()),
            // A node may close its connections on step-down: no reply is no failure.
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Io(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGKILL, then start again on the same port and data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("secantusd.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("secantusd.log"))
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(binary());
        command.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
        if self.sync {
            command.arg("--sync-on-commit");
        }
        let child = command
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary().display()))?;
        self.child = Some(child);
        let client = self.client().await?;
        let started = tokio::time::Instant::now();
        loop {
            if client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("secantusd-py exited with {status}"));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "SecantusDB did not answer ping within {START_TIMEOUT:?}"
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

impl Drop for DurableSecantus {
    fn drop(&mut self) {
        self.kill();
    }
}
