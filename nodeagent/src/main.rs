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
    /// CPUs this node reports as its capacity instead of the machine's (a whole number,
    /// e.g. `2` or `2000m`; lab nodes sharing one machine).
    #[arg(long, value_parser = rkube_nodeagent::machine::parse_cpu_quantity)]
    node_cpu: Option<u64>,
    /// Memory this node reports as its capacity instead of the machine's (a Kubernetes
    /// quantity, e.g. `4Gi`).
    #[arg(long, value_parser = rkube_nodeagent::machine::parse_memory_quantity)]
    node_memory: Option<u64>,
    /// Where the agent's own service (logs, exec, stats for the apiserver) listens, over
    /// TLS with client certificates from the cluster CA.
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen_address: std::net::SocketAddr,
    /// Rotate a container's log once it would grow past this size (a Kubernetes
    /// quantity, e.g. `10Mi`).
    #[arg(long, default_value = "10Mi", value_parser = rkube_nodeagent::machine::parse_memory_quantity)]
    container_log_max_size: u64,
    /// How many log files to keep per container, the live one included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    container_log_max_files: u64,
    /// Give pods their own network (bridge, veth, VXLAN overlay to the other nodes);
    /// `--pod-network=false` leaves pods loopback-only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pod_network: bool,
    /// The pods' address range across the cluster.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnetwork::Ipv4Network,
    /// The Services' virtual address range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnetwork::Ipv4Network,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Remount the host's cgroup2 hierarchy with `favordynmods`, which makes moving a
    /// process into a cgroup (every container start) about 0.1 ms instead of an RCU
    /// grace period, at a small cost to forks and exits host-wide.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    cgroup_favordynmods: bool,
    /// Keep the runtime's bookkeeping (container bundles, sandbox files, libcontainer's
    /// state, the pod network's address allocations) on tmpfs mounts under the root
    /// dir, as containerd keeps its under /run; images stay on disk, and so do logs and
    /// writable layers unless `--ephemeral-storage-tmpfs` says otherwise.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    state_tmpfs: bool,
    /// Keep the containers' writable layers and logs in memory: a tmpfs of this size
    /// (e.g. 2Gi) on each of `layers/` and `logs/` under the root dir. For nodes that do
    /// not outlive their machine's uptime, such as `rkube up`'s lab nodes: it saves
    /// the disk's inode churn on every pod start, and loses the logs of exited
    /// containers at reboot. Off by default: on disk.
    #[arg(long, value_parser = rkube_nodeagent::machine::parse_memory_quantity)]
    ephemeral_storage_tmpfs: Option<u64>,
    /// How many pods come up at once; the others wait their turn, first come first
    /// served, so that a burst of pods comes up in order. One per CPU by default.
    #[arg(long)]
    max_parallel_pod_starts: Option<usize>,
    /// How long the node's Lease is valid (`leaseDurationSeconds`); the agent renews it
    /// every quarter of this. Keep it at most the controller manager's
    /// `--node-monitor-grace-period`.
    #[arg(long, default_value_t = rkube_nodeagent::lease::LEASE_DURATION_SECONDS, value_parser = clap::value_parser!(i32).range(1..))]
    node_lease_duration_seconds: i32,
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
    config.pod_network = flags
        .pod_network
        .then(|| rkube_nodeagent::network::PodNetworkOptions {
            cluster_cidr: flags.cluster_cidr,
            service_cidr: flags.service_cidr,
            cluster_domain: flags.cluster_domain.clone(),
        });
    config.listen_address = Some(flags.listen_address);
    config.favor_dynamic_cgroups = flags.cgroup_favordynmods;
    config.state_on_tmpfs = flags.state_tmpfs;
    config.ephemeral_storage_tmpfs = flags.ephemeral_storage_tmpfs;
    config.set_lease_duration(flags.node_lease_duration_seconds);
    if let Some(starts) = flags.max_parallel_pod_starts {
        config.max_parallel_pod_starts = starts;
    }
    config.log_rotation = rkube_nodeagent::runtime::LogRotation {
        max_size: flags.container_log_max_size,
        max_files: usize::try_from(flags.container_log_max_files).unwrap_or(usize::MAX),
    };
    rkube_nodeagent::machine::set_capacity_override(rkube_nodeagent::machine::CapacityOverride {
        cpus: flags.node_cpu,
        memory_bytes: flags.node_memory,
    });
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
