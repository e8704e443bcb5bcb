//! `rkube`: brings a lab cluster up, reports on it, and tears it down.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rkube_ctl::lab::{self, LabConfig};

#[derive(Debug, Parser)]
#[command(name = "rkube", version, about = "The rkube lab launcher")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Start the control plane (etcd and the apiserver) and merge the `rkube` context
    /// into your kubeconfig. Does nothing if it already runs.
    Up(UpArgs),
    /// Stop everything `up` started, remove the `rkube` context and the state directory.
    Down(StateArgs),
    /// Show which processes run and whether the apiserver is ready.
    Status(StateArgs),
}

#[derive(Debug, Args)]
struct StateArgs {
    /// Cluster state directory (PKI, etcd data, logs, pid files) [default: $HOME/.rkube].
    #[arg(long, env = "RKUBE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Use these etcd client URLs (comma separated) instead of starting a local etcd.
    #[arg(long, env = "RKUBE_ETCD_SERVERS", value_delimiter = ',')]
    etcd_servers: Option<Vec<String>>,
    /// Client port of the local etcd.
    #[arg(long, default_value_t = 2379)]
    etcd_client_port: u16,
    /// Peer port of the local etcd.
    #[arg(long, default_value_t = 2380)]
    etcd_peer_port: u16,
    /// HTTPS port of the apiserver.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
}

impl StateArgs {
    fn lab_config(&self) -> anyhow::Result<LabConfig> {
        let state_dir = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".rkube"))
                .context("find the state directory: set --state-dir or HOME")?,
        };
        Ok(LabConfig::new(state_dir))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    match Cli::parse().command {
        Verb::Up(args) => {
            let mut config = args.state.lab_config()?;
            config.etcd_servers = args.etcd_servers;
            config.etcd_client_port = args.etcd_client_port;
            config.etcd_peer_port = args.etcd_peer_port;
            config.secure_port = args.secure_port;
            let report = lab::up(&config).await.context("bring the cluster up")?;
            if report.already_running {
                println!("rkube is already running at {}", report.server);
            } else {
                println!("started {} at {}", report.started.join(", "), report.server);
            }
            println!("state directory: {}", config.state_dir.display());
            println!(
                "kubeconfig: {} (context \"{}\" is current)",
                report.kubeconfig.display(),
                rkube_ctl::pki::CONTEXT_NAME
            );
            println!("try: kubectl get nodes");
        }
        Verb::Down(args) => {
            let config = args.lab_config()?;
            let report = lab::down(&config).await.context("tear the cluster down")?;
            for (name, killed) in &report.stopped {
                let how = if *killed { " (SIGKILL)" } else { "" };
                println!("stopped {name}{how}");
            }
            if let Some(path) = &report.kubeconfig {
                println!(
                    "removed context \"{}\" from {}",
                    rkube_ctl::pki::CONTEXT_NAME,
                    path.display()
                );
            }
            if report.removed_state {
                println!("removed {}", config.state_dir.display());
            } else if report.stopped.is_empty() {
                println!("nothing was running");
            }
        }
        Verb::Status(args) => {
            let config = args.lab_config()?;
            let report = lab::status(&config)
                .await
                .context("read the cluster status")?;
            for process in &report.processes {
                match process.pid {
                    Some(pid) => println!(
                        "{:<16} running (pid {pid}), log {}",
                        process.name,
                        process.log.display()
                    ),
                    None => println!("{:<16} stopped", process.name),
                }
            }
            let ready = if report.apiserver_ready {
                "ready"
            } else {
                "not ready"
            };
            println!("apiserver {} is {ready}", report.server);
        }
    }
    Ok(())
}
