//! The agent as a whole: connects to the apiserver, registers the node, then runs the
//! node status heartbeat, the Lease renewal and the pod workers until shutdown.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rkube_client::{Client, ClientConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::lease::LeaseRenewer;
use crate::machine::MachineInfo;
use crate::node::NodeRegistrar;
use crate::pod_workers::PodWorkers;
use crate::runtime::{ContainerRuntime, LocalRuntime, LocalRuntimeConfig};

/// Everything the agent needs to run; [`Config::new`] fills in kubelet-like defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach the apiserver.
    pub client: ClientConfig,
    /// Name of this node's Node object.
    pub node_name: String,
    /// State directory: images, containers, logs, pod volumes.
    pub root_dir: PathBuf,
    /// Registries (host:port) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The node's InternalIP; detected when `None`.
    pub node_ip: Option<IpAddr>,
    /// The binary run as `<binary> shim …` for each container and sandbox; the running
    /// executable when `None`.
    pub shim_binary: Option<PathBuf>,
    /// How often the node Lease is renewed (kubelet: a quarter of its 40 s duration).
    pub lease_renew_interval: Duration,
    /// How often the Node status (conditions, heartbeat) is written.
    pub node_status_interval: Duration,
    /// How often a pod worker looks at its containers when nothing else happens.
    pub pod_resync_interval: Duration,
}

impl Config {
    /// A configuration with the default intervals: Lease every 10 s, status every 10 s,
    /// pod resync every second.
    pub fn new(client: ClientConfig, node_name: impl Into<String>, root_dir: PathBuf) -> Self {
        Config {
            client,
            node_name: node_name.into(),
            root_dir,
            insecure_registries: Vec::new(),
            node_ip: None,
            shim_binary: None,
            lease_renew_interval: Duration::from_secs(10),
            node_status_interval: Duration::from_secs(10),
            pod_resync_interval: Duration::from_secs(1),
        }
    }
}

/// Runs the node agent with the built-in container runtime until `shutdown` is
/// cancelled.
///
/// # Errors
/// When the apiserver cannot be reached, the node cannot be registered or the runtime's
/// state directory cannot be prepared.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let shim_binary = match &config.shim_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("find the agent's own executable")?,
    };
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        root_dir: config.root_dir.clone(),
        insecure_registries: config.insecure_registries.clone(),
        shim_binary,
    })
    .context("prepare the container runtime")?;
    run_with_runtime(config, Arc::new(runtime), shutdown).await
}

/// Runs the node agent with `runtime` (the tests use the recording fake).
///
/// # Errors
/// As [`run`].
pub async fn run_with_runtime<R: ContainerRuntime>(
    config: Config,
    runtime: Arc<R>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = Client::connect(config.client.clone())
        .await
        .context("connect to the apiserver")?;
    let machine =
        MachineInfo::detect(&config.root_dir, config.node_ip).context("inspect the machine")?;
    info!(node = %config.node_name, ip = %machine.internal_ip, cpus = machine.cpus, "starting node agent");

    let registrar = NodeRegistrar::new(client.clone(), config.node_name.clone(), machine.clone());
    let node = registrar.register().await.context("register the node")?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();

    let mut tasks = tokio::task::JoinSet::new();
    let heartbeat = registrar.clone();
    let interval = config.node_status_interval;
    let token = shutdown.clone();
    tasks.spawn(
        async move { heartbeat.run(interval, token).await }
            .instrument(tracing::info_span!("node_status", node = %config.node_name)),
    );
    let lease = LeaseRenewer::new(client.clone(), config.node_name.clone(), node_uid);
    let interval = config.lease_renew_interval;
    let token = shutdown.clone();
    tasks.spawn(
        async move { lease.run(interval, token).await }
            .instrument(tracing::info_span!("lease", node = %config.node_name)),
    );
    let workers = PodWorkers::new(
        client,
        runtime,
        config.node_name.clone(),
        machine.internal_ip,
        config.pod_resync_interval,
        config.root_dir.join("pods"),
    );
    let token = shutdown.clone();
    tasks.spawn(
        async move { workers.run(token).await }
            .instrument(tracing::info_span!("pod_workers", node = %config.node_name)),
    );

    while let Some(joined) = tasks.join_next().await {
        joined.context("join an agent task")?;
        if !shutdown.is_cancelled() {
            // Every task runs until shutdown; one that ends early is a bug worth stopping for.
            shutdown.cancel();
            anyhow::bail!("an agent task stopped before shutdown");
        }
    }
    info!(node = %config.node_name, "node agent stopped");
    Ok(())
}
