//! `bully-controller run` watches BullyClusters and labels their coordinator pods;
//! `bully-controller crdgen` prints (or writes) the CRD.

use std::path::PathBuf;

use anyhow::Context as _;
use bully_client::process::{LogFormat, init_logging, shutdown_signal};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "bully-controller", version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "BULLY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller.
    Run(Box<bully_controller::run::RunArgs>),
    /// Print the BullyCluster CRD as YAML.
    Crdgen {
        /// Write it to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { output } => {
            let yaml = bully_controller::crd::crd_yaml();
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Command::Run(args) => {
            init_logging(cli.log_format, "info,kube_runtime=warn,kube_client=warn");
            bully_controller::run::run(*args, shutdown_signal()).await
        }
    }
}
