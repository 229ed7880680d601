//! What a long-running bully process needs at its edges, shared by `bully-server` and
//! `bully-controller` (feature `process`; the one-shot `bully-client` does without): the
//! shutdown signal and the logging set-up.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log format of a long-running process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (else `default_filter`), as text
/// (colored on a terminal) or one JSON object per line. A second call changes nothing.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C). If the SIGTERM
/// handler cannot be installed, only Ctrl-C counts, and a warning says so.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM; only Ctrl-C stops this process");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
