//! Command-line and environment configuration, validated once at startup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bully_client::process::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::timings::{TimingArgs, Timings};

#[derive(Parser, Debug)]
#[command(
    name = "bully-server",
    version,
    about = "Bully-elected coordinator for serial command execution"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one server.
    Serve(Box<ServeArgs>),
    /// Run a whole cluster on loopback, sharing the embedded store (Ctrl-C stops it).
    Local(crate::local::LocalArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// SQLite file shared by the servers of one machine.
    Embedded,
    /// A MongoDB replica set.
    Mongodb,
}

/// Logging flags shared by every subcommand.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "BULLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Client API, health, status and metrics.
    #[arg(long, env = "BULLY_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// Peer API (election, heartbeats); keep it reachable only from other servers.
    #[arg(long, env = "BULLY_PEER_LISTEN", default_value = "0.0.0.0:7071")]
    pub peer_listen: SocketAddr,
    /// Host or IP other servers and clients reach this server at (in Kubernetes: the pod IP).
    /// Default: the listen address if it is specific, else this host name's first address.
    #[arg(long, env = "BULLY_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Static peer list: host:port of each server's peer API (this server's own is skipped).
    #[arg(long, env = "BULLY_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Discover peers from DNS: every A/AAAA record of NAME (a headless Service), at PORT.
    #[arg(long, env = "BULLY_PEER_DNS", value_name = "NAME:PORT")]
    pub peer_dns: Option<String>,
    /// How often DNS discovery is repeated, to find restarted or new servers.
    #[arg(long, env = "BULLY_PEER_DNS_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub peer_dns_interval: Duration,
    /// How many servers the cluster has, this one included (in Kubernetes: the StatefulSet's
    /// replicas). A new server waits up to --startup-grace to hear from the others before
    /// electing, so servers started together claim one term between them. Default: the number
    /// of --peers (this server included); unknown with --peer-dns.
    #[arg(long, env = "BULLY_EXPECTED_SERVERS")]
    pub expected_servers: Option<usize>,
    /// Longest a new server waits for the servers it expects before electing (a lone first
    /// server becomes coordinator after it).
    #[arg(long, env = "BULLY_STARTUP_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub startup_grace: Duration,
    /// Election rank; random (u64) unless given. For tests and demos only.
    #[arg(long, env = "BULLY_RANK")]
    pub rank: Option<u64>,
    /// Heartbeat interval.
    #[arg(long, env = "BULLY_HEARTBEAT_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// A coordinator not heard from for this long is presumed dead and a new election starts.
    #[arg(long, env = "BULLY_HEARTBEAT_TIMEOUT", default_value = "800ms", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
    /// Store backend.
    #[arg(long, env = "BULLY_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// SQLite file for the embedded store (shared by every server on this machine).
    #[arg(long, env = "BULLY_EMBEDDED_PATH", default_value = "bully.db")]
    pub embedded_path: PathBuf,
    /// MongoDB connection string (with ?replicaSet=...). May hold credentials: never logged.
    #[arg(long, env = "BULLY_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "BULLY_MONGODB_DATABASE", default_value = "bully")]
    pub mongodb_database: String,
    /// How long one store operation may retry transient errors before giving up.
    #[arg(long, env = "BULLY_STORE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,
    /// Longest a client request may take, reading a slowly sent body included (408 after).
    #[arg(long, env = "BULLY_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Connections served at once on the client API; more wait in the listen backlog.
    #[arg(long, env = "BULLY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Commands the coordinator queues before answering 503.
    #[arg(long, env = "BULLY_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Most commands the coordinator applies in one store transaction (group commit: every
    /// command waiting in the queue, up to this many). 1 applies them strictly one at a time.
    #[arg(long, env = "BULLY_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,
    /// Longest key, in bytes.
    #[arg(long, env = "BULLY_MAX_KEY_BYTES", default_value_t = bully_client::DEFAULT_MAX_KEY_BYTES)]
    pub max_key_bytes: usize,
    /// Largest value (its JSON encoding), in bytes.
    #[arg(long, env = "BULLY_MAX_VALUE_BYTES", default_value_t = bully_client::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Largest `list` page.
    #[arg(long, env = "BULLY_MAX_PAGE", default_value_t = bully_client::DEFAULT_MAX_PAGE)]
    pub max_page: u32,
    /// How long command results are kept for exactly-once retries.
    #[arg(long, env = "BULLY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// On SIGTERM, how long a coordinator may take to drain its queue and hand over.
    #[arg(long, env = "BULLY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Serve the client and peer APIs over HTTPS with this certificate chain (PEM), reloaded
    /// when the file changes. The certificate must allow server and client authentication
    /// (peers present it to each other).
    #[arg(long, env = "BULLY_TLS_CERT_FILE", requires_all = ["tls_key_file", "tls_client_ca_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM), reloaded with it.
    #[arg(long, env = "BULLY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA that signs the servers' certificates (PEM): the peer API demands a client
    /// certificate it signed (mutual TLS), and peers are verified against it.
    #[arg(long, env = "BULLY_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// The DNS name peers' certificates must carry, since peers are dialled by IP. Default:
    /// the address dialled (then the certificates need IP SANs).
    #[arg(long, env = "BULLY_TLS_SERVER_NAME", requires = "tls_cert_file")]
    pub tls_server_name: Option<String>,
    /// File holding the bearer token required on the client and peer APIs.
    #[arg(long, env = "BULLY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// A configuration error, phrased as what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// A configuration that passed [`ServeArgs::validate`], with every timing derived.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub args: ServeArgs,
    pub timings: Timings,
}

impl ServeArgs {
    /// Checks the combination of flags once, and derives the timings; the message says which
    /// flag to change.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let timings = Timings::derive(TimingArgs {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            store_timeout: self.store_timeout,
            startup_grace: self.startup_grace,
        })
        .map_err(ConfigError)?;
        self.check()?;
        Ok(ServerConfig {
            args: self,
            timings,
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.expected_servers == Some(0) {
            return fail("--expected-servers must be at least 1".into());
        }
        if !self.peers.is_empty() && self.peer_dns.is_some() {
            return fail("give either --peers or --peer-dns, not both".into());
        }
        if let Some(dns) = &self.peer_dns
            && dns
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return fail(format!("--peer-dns must be NAME:PORT, got {dns:?}"));
        }
        for peer in &self.peers {
            if peer
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return fail(format!("--peers entries must be HOST:PORT, got {peer:?}"));
            }
        }
        if self.store == StoreKind::Mongodb {
            let Some(uri) = &self.mongodb_uri else {
                return fail("--store mongodb needs --mongodb-uri (or BULLY_MONGODB_URI)".into());
            };
            // The message names what is wrong, never the URI itself (it may hold a password).
            if let Err(e) = mongodb::options::ConnectionString::parse(uri) {
                return fail(format!(
                    "--mongodb-uri is not a valid MongoDB URI: {}",
                    e.kind
                ));
            }
        }
        if self.max_connections == 0 {
            return fail("--max-connections must be at least 1".into());
        }
        if self.request_timeout < Duration::from_millis(100) {
            return fail("--request-timeout must be at least 100ms".into());
        }
        if self.queue_capacity == 0 {
            return fail("--queue-capacity must be at least 1".into());
        }
        if self.max_batch == 0 {
            return fail("--max-batch must be at least 1".into());
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 || self.max_page == 0 {
            return fail(
                "--max-key-bytes, --max-value-bytes and --max-page must be positive".into(),
            );
        }
        if self.retention < Duration::from_secs(60) {
            return fail(format!(
                "--retention ({:?}) must be at least 1m: clients retry within that window and \
                 an expired id would be applied twice",
                self.retention
            ));
        }
        if self.listen == self.peer_listen && self.listen.port() != 0 {
            return fail("--listen and --peer-listen must differ".into());
        }
        Ok(())
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::ServerTlsFiles> {
        Some(crate::tls::ServerTlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            client_ca: self.tls_client_ca_file.clone()?,
            server_name: self.tls_server_name.clone(),
        })
    }

    /// The cluster size a new server waits for: `--expected-servers`, else the static peer
    /// list with this server in it, else unknown (0).
    pub fn expected_servers(&self, own_peer_addr: &str) -> usize {
        if let Some(n) = self.expected_servers {
            return n;
        }
        let mut peers: Vec<&str> = self.peers.iter().map(String::as_str).collect();
        if peers.is_empty() {
            return 0;
        }
        peers.push(own_peer_addr);
        peers.sort_unstable();
        peers.dedup();
        peers.len()
    }

    pub fn limits(&self) -> bully_client::Limits {
        bully_client::Limits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_page: self.max_page,
        }
    }

    /// Largest request body: the biggest value can appear twice (cas), plus envelope.
    pub fn max_body_bytes(&self) -> usize {
        self.max_value_bytes
            .saturating_mul(2)
            .saturating_add(self.max_key_bytes)
            .saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut full = vec!["bully-server", "serve"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(args) => *args,
            Command::Local(_) => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        parse(&[]).validate().unwrap();
    }

    #[test]
    fn a_bad_mongodb_uri_is_refused_without_showing_it() {
        for uri in [
            "http://bully:secret@db",
            "mongodb://bully:secret@db:notaport",
        ] {
            let err = parse(&["--store", "mongodb", "--mongodb-uri", uri])
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("--mongodb-uri"), "{err}");
            assert!(!err.contains("secret"), "the URI leaked: {err}");
        }
    }

    #[test]
    fn the_expected_cluster_size_counts_this_server_once() {
        let listed = parse(&["--peers", "a:1,b:1,c:1"]);
        assert_eq!(listed.expected_servers("a:1"), 3);
        assert_eq!(listed.expected_servers("d:1"), 4);
        assert_eq!(
            parse(&["--peer-dns", "bully:7071"]).expected_servers("a:1"),
            0
        );
        let given = parse(&["--peer-dns", "bully:7071", "--expected-servers", "5"]);
        assert_eq!(given.expected_servers("a:1"), 5);
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &[
                    "--heartbeat-interval",
                    "100ms",
                    "--heartbeat-timeout",
                    "200ms",
                ],
                "--heartbeat-timeout",
            ),
            (&["--peers", "a:1", "--peer-dns", "b:2"], "not both"),
            (&["--peer-dns", "nameonly"], "--peer-dns"),
            (&["--peers", "a:x"], "--peers"),
            (&["--store", "mongodb"], "--mongodb-uri"),
            (
                &["--store", "mongodb", "--mongodb-uri", "http://x:secret@h"],
                "not a valid MongoDB URI",
            ),
            (&["--queue-capacity", "0"], "--queue-capacity"),
            (&["--expected-servers", "0"], "--expected-servers"),
            (&["--max-batch", "0"], "--max-batch"),
            (&["--heartbeat-interval", "0s"], "--heartbeat-interval"),
            (&["--retention", "1s"], "--retention"),
            (
                &["--listen", "127.0.0.1:9", "--peer-listen", "127.0.0.1:9"],
                "--peer-listen",
            ),
        ];
        for (args, needle) in cases {
            let err = parse(args).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
