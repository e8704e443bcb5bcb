//! `rkube-scheduler`: parses flags, sets up tracing, runs [`rkube_scheduler::run`]
//! until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rkube_client::ClientConfig;
use rkube_scheduler::config::{Profile, SchedulerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Places pending pods on nodes.
#[derive(Debug, Parser)]
#[command(name = "rkube-scheduler", version)]
struct Flags {
    /// Kubeconfig with the apiserver address, CA and token.
    #[arg(long, env = "RKUBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Apiserver URL (overrides the kubeconfig's), e.g. https://127.0.0.1:6443.
    #[arg(long, env = "RKUBE_SERVER")]
    server: Option<String>,
    /// PEM file of the cluster CA (overrides the kubeconfig's).
    #[arg(long, env = "RKUBE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// File holding the bearer token (overrides the kubeconfig's).
    #[arg(long, env = "RKUBE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Configuration file (KubeSchedulerConfiguration subset, YAML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The schedulerName served when no configuration file names profiles.
    #[arg(long, default_value = rkube_scheduler::config::DEFAULT_SCHEDULER_NAME)]
    scheduler_name: String,
    /// Percentage of nodes to examine per pod (0: Kubernetes' adaptive default).
    #[arg(long)]
    percentage_of_nodes_to_score: Option<u32>,
    /// Take part in leader election through a Lease (true, false).
    #[arg(long)]
    leader_elect: Option<bool>,
    /// Identity in the leader Lease (default: hostname and a random suffix).
    #[arg(long)]
    identity: Option<String>,
}

fn client_config(flags: &Flags) -> anyhow::Result<ClientConfig> {
    let mut config = match &flags.kubeconfig {
        Some(path) => ClientConfig::from_kubeconfig(path).context("read kubeconfig")?,
        None => ClientConfig::default(),
    };
    if let Some(server) = &flags.server {
        config.endpoint = server.clone();
    }
    if let Some(path) = &flags.ca_file {
        config.ca_pem = Some(std::fs::read_to_string(path).context("read CA file")?);
    }
    if let Some(path) = &flags.token_file {
        let token = std::fs::read_to_string(path).context("read token file")?;
        config.token = Some(token.trim().to_string());
    }
    if config.endpoint.is_empty() {
        anyhow::bail!("no apiserver: pass --kubeconfig or --server");
    }
    Ok(config)
}

fn scheduler_config(flags: &Flags) -> anyhow::Result<SchedulerConfig> {
    let mut config = match &flags.config {
        Some(path) => SchedulerConfig::from_file(path).context("read scheduler configuration")?,
        None => SchedulerConfig {
            profiles: vec![Profile::new(&flags.scheduler_name)],
            ..SchedulerConfig::default()
        },
    };
    if let Some(p) = flags.percentage_of_nodes_to_score {
        config.percentage_of_nodes_to_score = p;
    }
    if let Some(elect) = flags.leader_elect {
        config.leader_election.leader_elect = elect;
    }
    config.validate().context("check scheduler configuration")?;
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match try_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn try_main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let identity = flags.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "scheduler".to_string());
        format!("{host}_{:08x}", rand::random::<u32>())
    });
    let config = rkube_scheduler::Config {
        client: client_config(&flags)?,
        scheduler: scheduler_config(&flags)?,
        identity,
    };
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM, shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT, shutting down"),
        }
        signals.cancel();
    });
    rkube_scheduler::run(config, shutdown).await
}
