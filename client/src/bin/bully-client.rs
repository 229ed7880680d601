//! `bully-client`: run one command on a bully cluster and exit.
//!
//! Exit codes: 0 success; 1 command-level failure (not found, cas mismatch, type mismatch);
//! 2 usage error or a command the server rejected as invalid; 3 no server could execute the
//! command before the deadline (each server's last error is listed on stderr).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bully_client::{
    Client, ClientError, ClientOptions, Command, CommandRequest, CommandResponse, Outcome,
};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "bully-client",
    version,
    about = "Run one command on a bully cluster"
)]
struct Cli {
    /// Servers to try, in order: host:port,host:port,...
    #[arg(
        long,
        env = "BULLY_SERVERS",
        value_delimiter = ',',
        required_unless_present = "servers_dns"
    )]
    servers: Vec<String>,
    /// Resolve the servers from DNS (every A/AAAA record of NAME), e.g. bully.default.svc:7070.
    #[arg(
        long,
        env = "BULLY_SERVERS_DNS",
        value_name = "NAME:PORT",
        conflicts_with = "servers"
    )]
    servers_dns: Option<String>,
    /// Overall deadline for the command, across all servers and retries (e.g. 15s, 500ms).
    #[arg(long, env = "BULLY_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Deadline for one attempt against one server.
    #[arg(long, env = "BULLY_ATTEMPT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    attempt_timeout: Duration,
    /// Command id; a retry of the same command with the same id is applied at most once.
    /// Random by default.
    #[arg(long, env = "BULLY_COMMAND_ID")]
    id: Option<String>,
    /// File holding the bearer token the servers require.
    #[arg(long, env = "BULLY_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Speak HTTPS and verify the servers' certificates against this CA file (PEM).
    #[arg(long, env = "BULLY_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// The DNS name the servers' certificates must carry, whatever address is dialled
    /// (servers are often reached by IP). Default: the host of each server address.
    #[arg(long, env = "BULLY_TLS_SERVER_NAME", requires = "ca_file")]
    tls_server_name: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Human, env = "BULLY_OUTPUT")]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Store VALUE under KEY. VALUE is parsed as JSON if it is valid JSON, else taken as a string.
    Put {
        key: String,
        value: String,
        /// Take VALUE as a string even if it parses as JSON.
        #[arg(long)]
        string: bool,
        /// Attach KEY to this lease: it is deleted when the lease expires or is revoked.
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
    },
    /// Print the value under KEY (exit 1 if absent).
    Get { key: String },
    /// Remove KEY (exit 1 if absent).
    Delete { key: String },
    /// Set KEY to NEW if its value equals EXPECTED ("absent": the key must not exist).
    Cas {
        key: String,
        expected: String,
        new: String,
    },
    /// Add DELTA (default 1) to the integer under KEY and print the result.
    Incr {
        key: String,
        #[arg(allow_negative_numbers = true)]
        delta: Option<i64>,
    },
    /// List keys (and values) in order, optionally under PREFIX, one page at a time.
    List {
        prefix: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this key (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Leases: keys that vanish when their owner stops renewing them.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Show every server's view: address, rank, role, term, last heartbeat, ready.
    Status,
}

#[derive(Subcommand, Debug)]
enum LeaseCmd {
    /// Create a lease that expires TTL after its last keepalive (e.g. 10s, 500ms); print its id.
    Grant {
        #[arg(value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Keep lease ID alive while this runs (a keepalive every third of its TTL); exit 1 once
    /// the lease is gone.
    Keepalive {
        id: u64,
        /// Send one keepalive and exit.
        #[arg(long)]
        once: bool,
    },
    /// End lease ID now, deleting every key attached to it.
    Revoke { id: u64 },
}

fn parse_value(raw: &str, force_string: bool) -> Value {
    if force_string {
        return Value::String(raw.to_string());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let servers = match &cli.servers_dns {
        Some(name) => match bully_client::resolve(name).await {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => return usage(format!("{name} resolved to no address")),
            Err(e) => return usage(format!("cannot resolve {name}: {e}")),
        },
        None => cli
            .servers
            .iter()
            .flat_map(|s| bully_client::split_list(s))
            .collect(),
    };
    let token = match &cli.token_file {
        Some(path) => match bully_client::token::read_token_file(path) {
            Ok(token) => Some(token),
            Err(e) => return usage(e.to_string()),
        },
        None => match std::env::var("BULLY_TOKEN").ok().filter(|t| !t.is_empty()) {
            Some(token) => match bully_client::token::check_token(&token, " in BULLY_TOKEN") {
                Ok(()) => Some(token),
                Err(e) => return usage(e.to_string()),
            },
            None => None,
        },
    };
    let tls = match &cli.ca_file {
        Some(ca) => {
            let files = bully_client::tls::TlsFiles {
                ca: ca.clone(),
                server_name: cli.tls_server_name.clone(),
                identity: None,
            };
            match bully_client::tls::client_config(&files) {
                Ok(config) => Some(std::sync::Arc::new(config)),
                Err(e) => return usage(format!("--ca-file: {e}")),
            }
        }
        None => None,
    };
    let options = ClientOptions {
        timeout: cli.timeout,
        attempt_timeout: cli.attempt_timeout,
        token,
        tls,
    };
    let client = match Client::new(servers, options) {
        Ok(client) => client,
        Err(e) => return usage(e.to_string()),
    };
    let command = match cli.command {
        Cmd::Status => return status(&client, cli.output).await,
        Cmd::Put {
            key,
            value,
            string,
            lease,
        } => Command::Put {
            key,
            value: parse_value(&value, string),
            lease,
        },
        Cmd::Lease(LeaseCmd::Grant { ttl }) => Command::LeaseGrant {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        },
        Cmd::Lease(LeaseCmd::Keepalive { id, once: false }) => {
            return keepalive(&client, id, cli.output).await;
        }
        Cmd::Lease(LeaseCmd::Keepalive { id, once: true }) => Command::LeaseKeepalive { id },
        Cmd::Lease(LeaseCmd::Revoke { id }) => Command::LeaseRevoke { id },
        Cmd::Get { key } => Command::Get { key },
        Cmd::Delete { key } => Command::Delete { key },
        Cmd::Cas { key, expected, new } => Command::Cas {
            key,
            expected: (expected != "absent").then(|| parse_value(&expected, false)),
            new: parse_value(&new, false),
        },
        Cmd::Incr { key, delta } => Command::Incr {
            key,
            delta: delta.unwrap_or(1),
        },
        Cmd::List {
            prefix,
            limit,
            after,
        } => Command::List {
            prefix,
            limit,
            after,
        },
    };
    let mut request = CommandRequest::new(command);
    if let Some(id) = cli.id {
        request.id = id;
    }
    if let Err(invalid) = request.validate(&Default::default()) {
        return usage(invalid.message);
    }
    match client.execute(&request).await {
        Ok(response) => report(&response, cli.output),
        Err(e) => failed(e, cli.output),
    }
}

/// Reports a command no server executed.
fn failed(error: ClientError, output: Output) -> ExitCode {
    match error {
        ClientError::Rejected { server, body } => {
            if output == Output::Json {
                println!("{}", serde_json::to_string(&body).unwrap_or_default());
            }
            eprintln!(
                "error: {server} rejected the command: {} ({})",
                body.message, body.code
            );
            ExitCode::from(EXIT_USAGE)
        }
        ClientError::Exhausted { timeout, errors } => {
            eprintln!("error: no server executed the command within {timeout:?}; last errors:");
            for (server, error) in errors {
                eprintln!("  {server}: {error}");
            }
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        ClientError::Config(message) => usage(message),
    }
}

/// Sends a keepalive for lease `id` every third of its TTL until the lease is gone (exit 1),
/// no server answers within the deadline (exit 3), or the process is stopped.
async fn keepalive(client: &Client, id: u64, output: Output) -> ExitCode {
    loop {
        let request = CommandRequest::new(Command::LeaseKeepalive { id });
        let ttl_ms = match client.execute(&request).await {
            Ok(response) => match response.outcome {
                Outcome::Lease { ttl_ms, .. } => {
                    if output == Output::Json {
                        println!("{}", serde_json::to_string(&response).unwrap_or_default());
                    }
                    ttl_ms
                }
                _ => return report(&response, output),
            },
            Err(e) => return failed(e, output),
        };
        tokio::time::sleep(Duration::from_millis((ttl_ms / 3).max(10))).await;
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn report(response: &CommandResponse, output: Output) -> ExitCode {
    let code = if response.outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    };
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(response).unwrap_or_default()
        );
        return code;
    }
    let compact = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    let meta = format!("(seq {}, term {})", response.seq, response.term);
    let _ = match &response.outcome {
        Outcome::Ok => writeln!(out, "OK {meta}"),
        Outcome::Value { value } => writeln!(out, "{}", compact(value)),
        Outcome::Counter { value } => writeln!(out, "{value}"),
        Outcome::Lease { id, .. } => writeln!(out, "{id}"),
        Outcome::LeaseNotFound { id } => {
            eprintln!("lease {id} not found (expired or revoked) {meta}");
            Ok(())
        }
        Outcome::NotFound => {
            eprintln!("not found {meta}");
            Ok(())
        }
        Outcome::CasMismatch { current } => {
            let current = current.as_ref().map_or("absent".to_string(), compact);
            eprintln!("cas mismatch: current value is {current} {meta}");
            Ok(())
        }
        Outcome::TypeMismatch { message } => {
            eprintln!("type mismatch: {message} {meta}");
            Ok(())
        }
        Outcome::Page { items, next } => {
            for item in items {
                let _ = writeln!(out, "{}\t{}", item.key, compact(&item.value));
            }
            match next {
                Some(next) => writeln!(out, "-- more: --after {next}"),
                None => Ok(()),
            }
        }
    };
    code
}

async fn status(client: &Client, output: Output) -> ExitCode {
    let views = futures_join(client).await;
    if output == Output::Json {
        let json: Vec<Value> = views
            .iter()
            .map(|(server, view)| match view {
                Ok(status) => serde_json::json!({"server": server, "status": status}),
                Err(e) => serde_json::json!({"server": server, "error": e}),
            })
            .collect();
        println!("{}", Value::Array(json));
    } else {
        println!(
            "{:<24} {:<20} {:<20} {:<6} {:<22} {:<5} COORDINATOR",
            "ADDRESS", "RANK", "ROLE", "TERM", "LAST HEARTBEAT (ms)", "READY"
        );
        for (server, view) in &views {
            match view {
                Ok(s) => {
                    // The freshest heartbeat this server heard from the coordinator.
                    let heartbeat = s
                        .coordinator
                        .as_ref()
                        .and_then(|c| s.peers.iter().find(|p| p.peer_addr == c.peer_addr))
                        .and_then(|p| p.last_heard_ms)
                        .map_or("-".to_string(), |ms| ms.to_string());
                    println!(
                        "{:<24} {:<20} {:<20} {:<6} {:<22} {:<5} {}",
                        server,
                        s.rank,
                        s.role.as_str(),
                        s.term.map_or("-".to_string(), |t| t.to_string()),
                        heartbeat,
                        s.ready,
                        s.coordinator
                            .as_ref()
                            .map_or("-", |c| c.client_addr.as_str()),
                    );
                }
                Err(e) => println!("{server:<24} unreachable: {e}"),
            }
        }
    }
    if views.iter().any(|(_, v)| v.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNAVAILABLE)
    }
}

async fn futures_join(client: &Client) -> Vec<(String, Result<bully_client::Status, String>)> {
    let mut tasks = Vec::new();
    for server in client.servers() {
        let client = client.clone();
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let status = client.status(&server).await;
            (server, status)
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        if let Ok(result) = task.await {
            out.push(result);
        }
    }
    out
}
