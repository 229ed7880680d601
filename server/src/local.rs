//! `bully-server local`: a whole cluster on loopback in one command.
//!
//! Starts N `bully-server serve` processes (this same binary) on consecutive ports, sharing one
//! embedded store file, forwards their logs with a `[sN]` prefix, prints the servers and each
//! coordinator change, and stops them all (SIGTERM, then SIGKILL after a grace period) on
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// How many servers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub servers: u16,
    /// Client port of the first server; server i uses BASE+2i (client) and BASE+2i+1 (peer).
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// Directory for the shared embedded store.
    #[arg(long, default_value = ".bully")]
    pub data_dir: PathBuf,
    /// Extra arguments for every `serve` (e.g. --heartbeat-timeout=1s), after `--`.
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

struct Server {
    name: String,
    client: String,
    child: Child,
}

pub async fn run(args: LocalArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!(
            "error: cannot create {} (--data-dir): {e}",
            args.data_dir.display()
        );
        return ExitCode::from(2);
    }
    let n = args.servers;
    if u32::from(args.base_port) + 2 * u32::from(n) > 65535 {
        eprintln!(
            "error: --base-port {} leaves no room for {n} servers",
            args.base_port
        );
        return ExitCode::from(2);
    }
    let port = |i: u16, peer: u16| args.base_port + 2 * i + peer;
    let peers: Vec<String> = (0..n)
        .map(|i| format!("127.0.0.1:{}", port(i, 1)))
        .collect();
    let db = args.data_dir.join("bully.db");
    let mut servers = Vec::new();
    for i in 0..n {
        let name = format!("s{}", i + 1);
        let client = format!("127.0.0.1:{}", port(i, 0));
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(["--listen", &client])
            .args(["--peer-listen", &peers[i as usize]])
            .args(["--advertise-host", "127.0.0.1"])
            .args(["--peers", &peers.join(",")])
            .args(["--store", "embedded"])
            .arg("--embedded-path")
            .arg(&db)
            .args(&args.serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                eprintln!("error: cannot start server {name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        forward(&name, child.stdout.take());
        forward(&name, child.stderr.take());
        println!(
            "[local] {name}: client {client}, peer {}, pid {}",
            peers[i as usize],
            child.id().unwrap_or(0)
        );
        servers.push(Server {
            name,
            client,
            child,
        });
    }
    let clients: Vec<String> = servers.iter().map(|s| s.client.clone()).collect();
    println!("[local] store: {} (embedded, shared)", db.display());
    println!(
        "[local] try:   BULLY_SERVERS={} cargo run -q -p bully-client -- put greeting hello",
        clients.join(",")
    );
    println!("[local] Ctrl-C stops the cluster");

    let watcher = tokio::spawn(watch_coordinator(clients));
    let mut exited = vec![false; servers.len()];
    loop {
        tokio::select! {
            _ = bully_client::process::shutdown_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for (i, server) in servers.iter_mut().enumerate() {
                    if !exited[i]
                        && let Ok(Some(status)) = server.child.try_wait()
                    {
                        exited[i] = true;
                        println!("[local] {} exited: {status}", server.name);
                    }
                }
                if exited.iter().all(|e| *e) {
                    println!("[local] every server has exited");
                    watcher.abort();
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    watcher.abort();
    println!("[local] stopping {} servers", servers.len());
    stop_all(&mut servers).await;
    ExitCode::SUCCESS
}

/// SIGTERM everyone (the coordinator hands over and exits), then SIGKILL stragglers.
async fn stop_all(servers: &mut [Server]) {
    for server in servers.iter() {
        if let Some(pid) = server.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for server in servers.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(15), server.child.wait())
            .await
            .is_err()
        {
            let _ = server.child.kill().await;
        }
    }
}

fn forward<R>(name: &str, stream: Option<R>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let Some(stream) = stream else { return };
    let prefix = format!("[{name}]");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{prefix} {line}");
        }
    });
}

/// Prints the coordinator whenever it changes.
async fn watch_coordinator(clients: Vec<String>) {
    let client = match bully_client::Client::new(clients.clone(), Default::default()) {
        Ok(client) => client,
        Err(_) => return,
    };
    let mut last = None;
    loop {
        let mut current = None;
        for server in &clients {
            if let Ok(status) = client.status(server).await
                && let Some(c) = status.coordinator.filter(|c| c.term.is_some())
            {
                current = Some((c.client_addr, c.rank, c.term));
                break;
            }
        }
        if current.is_some() && current != last {
            if let Some((addr, rank, Some(term))) = &current {
                println!("[local] coordinator: {addr} (rank {rank}, term {term})");
            }
            last = current;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
