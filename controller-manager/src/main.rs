//! `rkube-controller-manager`: parses flags, sets up logging, runs the controllers until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rkube_client::ClientConfig;
use rkube_controller_manager::{run, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Runs rkube's controllers against an apiserver.
#[derive(Debug, Parser)]
#[command(name = "rkube-controller-manager", version)]
struct Flags {
    /// A kubeconfig to connect with (instead of --server/--token-file/--ca-file).
    #[arg(long, env = "RKUBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The apiserver's gRPC endpoint, e.g. https://127.0.0.1:6443.
    #[arg(long, env = "RKUBE_SERVER")]
    server: Option<String>,
    /// A file holding the bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The range node pod CIDRs are allocated from.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// A node whose lease is not renewed for this long becomes Ready=Unknown
    /// (Kubernetes' default). It must be longer than the agents' lease renewal interval
    /// (a quarter of their `--node-lease-duration-seconds`).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// Pods on an unreachable node without their own toleration are evicted after this
    /// (Kubernetes' default toleration of the unreachable taint).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pod_eviction_timeout: Duration,
    /// Workers per controller.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Take part in leader election through this Lease in kube-system (two replicas may
    /// run; only the leader acts). Empty: no leader election.
    #[arg(long, default_value = "")]
    leader_elect_lease: String,
}

/// `10s`, `500ms`, `2m`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn client_config(flags: &Flags) -> anyhow::Result<ClientConfig> {
    if let Some(path) = &flags.kubeconfig {
        return ClientConfig::from_kubeconfig(path).context("read kubeconfig");
    }
    let server = flags
        .server
        .clone()
        .context("either --kubeconfig or --server is required")?;
    let mut config = ClientConfig::new(server);
    if let Some(path) = &flags.token_file {
        let token = std::fs::read_to_string(path).context("read token file")?;
        config.token = Some(token.trim().to_string());
    }
    if let Some(path) = &flags.ca_file {
        config.ca_pem = Some(std::fs::read_to_string(path).context("read CA file")?);
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    let config = Config {
        client: client_config(&flags)?,
        cluster_cidr: flags.cluster_cidr.parse().context("parse --cluster-cidr")?,
        node_cidr_mask_size: flags.node_cidr_mask_size,
        node_monitor_grace_period: flags.node_monitor_grace_period,
        pod_eviction_timeout: flags.pod_eviction_timeout,
        workers: flags.workers,
        leader_elect_lease: Some(flags.leader_elect_lease.clone()).filter(|l| !l.is_empty()),
    };

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        signals.cancel();
    });
    run(config, shutdown).await.context("run controllers")
}
