//! `rkube-nodeagent`: parses flags, sets up tracing and runs the node agent until SIGTERM
//! or SIGINT. Called as `rkube-nodeagent shim …` it is instead the single-threaded
//! container helper of [`rkube_nodeagent::shim`], which must never start tokio.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The rkube node agent: registers this machine as a Node and runs the pods bound to it.
#[derive(Debug, Parser)]
#[command(
    name = "rkube-nodeagent",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Flags {
    /// Kubeconfig with the apiserver address, its CA and this agent's token.
    #[arg(long, env = "RKUBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Name of the Node object (default: the hostname).
    #[arg(long, env = "RKUBE_NODE_NAME")]
    node_name: Option<String>,
    /// Directory for the agent's state: images, containers, logs.
    #[arg(long, default_value = "/var/lib/rkube/nodeagent")]
    root_dir: PathBuf,
    /// A registry (host:port) to reach over plain HTTP instead of HTTPS; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The node's InternalIP (default: the first non-loopback IPv4 address).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    #[command(subcommand)]
    helper: Option<Helper>,
}

#[derive(Debug, clap::Subcommand)]
enum Helper {
    /// The per-container helper the agent starts itself as (internal).
    #[command(hide = true)]
    Shim {
        #[command(subcommand)]
        command: rkube_nodeagent::shim::Command,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let flags = Flags::parse();
    if let Some(Helper::Shim { command }) = flags.helper {
        return Ok(rkube_nodeagent::shim::main(command));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let kubeconfig = flags
        .kubeconfig
        .context("--kubeconfig (or RKUBE_KUBECONFIG) is required")?;
    let node_name = match flags.node_name {
        Some(name) => name,
        None => rkube_nodeagent::machine::hostname().context("read the hostname")?,
    };
    let client = rkube_client::ClientConfig::from_kubeconfig(&kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let mut config = rkube_nodeagent::Config::new(client, node_name, flags.root_dir);
    config.insecure_registries = flags.insecure_registries;
    config.node_ip = flags.node_ip;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?
        .block_on(run(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(config: rkube_nodeagent::Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let mut agent = tokio::spawn(rkube_nodeagent::run(config, shutdown.clone()));
    tokio::select! {
        joined = &mut agent => return joined.context("join the agent task")?,
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(Duration::from_secs(10), agent).await {
        Ok(joined) => joined.context("join the agent task")?,
        Err(_) => anyhow::bail!("the agent did not stop within 10s"),
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("failed to install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM"),
        _ = int.recv() => info!("received SIGINT"),
    }
    shutdown.cancel();
}
