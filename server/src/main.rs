//! `bully-server`: parses the configuration and runs a server (`serve`) or a local cluster
//! (`local`). Exit codes: 0 clean stop, 1 runtime failure, 2 configuration error.

use std::process::ExitCode;

use bully_client::process::{init_logging, shutdown_signal};
use bully_server::config::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log.log_format, "info");
            let config = match (*args).validate() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let args = &config.args;
            let (listen, peer_listen) = (args.listen, args.peer_listen);
            runtime.block_on(async move {
                let client = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: cannot listen on {listen} (--listen): {e}");
                        return ExitCode::from(2);
                    }
                };
                let peer = match tokio::net::TcpListener::bind(peer_listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: cannot listen on {peer_listen} (--peer-listen): {e}");
                        return ExitCode::from(2);
                    }
                };
                match bully_server::run(config, client, peer, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "server failed");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Local(args) => runtime.block_on(bully_server::local::run(args)),
    }
}
