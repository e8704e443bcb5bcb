//! The agent as a whole: connects to the apiserver, registers the node, then runs the
//! node status heartbeat, the Lease renewal, the pod workers and (with the built-in
//! runtime) the NodeAgent service until shutdown.

use crate::start_slots::StartSlots;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rkube_client::{Api, Client, ClientConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

use crate::dns;
use crate::lease::{self, LeaseRenewer};
use crate::machine::MachineInfo;
use crate::network::{self, NetworkHandle, PodNetworkOptions};
use crate::node::NodeRegistrar;
use crate::pod_workers::PodWorkers;
use crate::proxy;
use crate::runtime::{ContainerRuntime, LocalRuntime, LocalRuntimeConfig, LogRotation};
use crate::server::{self, NodeAgentService};

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
    /// How long the node Lease says it is valid (`leaseDurationSeconds`).
    pub lease_duration_seconds: i32,
    /// How often the node Lease is renewed (kubelet: a quarter of its duration; see
    /// [`Config::set_lease_duration`]).
    pub lease_renew_interval: Duration,
    /// How often the Node status (conditions, heartbeat) is written.
    pub node_status_interval: Duration,
    /// How often a pod worker looks at its containers when nothing else happens.
    pub pod_resync_interval: Duration,
    /// Where the agent's own service (logs, exec, stats) listens over TLS; port 0
    /// picks a free one. `None` serves nothing (the binary's default is
    /// `0.0.0.0:10250`).
    pub listen_address: Option<SocketAddr>,
    /// When container logs are rotated.
    pub log_rotation: LogRotation,
    /// The pod network (bridge, veth, VXLAN overlay); `None` (the default) leaves pods
    /// loopback-only and the host's network untouched (the binary turns it on).
    pub pod_network: Option<PodNetworkOptions>,
    /// Remount the host's cgroup2 hierarchy with `favordynmods` for fast container
    /// starts (see [`crate::runtime::host_cgroups`]); on by default.
    pub favor_dynamic_cgroups: bool,
    /// Keep the runtime's bookkeeping on tmpfs mounts under `root_dir` (see
    /// [`crate::runtime::tmpfs`]); off by default here, on in the binary. Whoever
    /// removes `root_dir` then unmounts them.
    pub state_on_tmpfs: bool,
    /// Keep the containers' writable layers and logs each on a tmpfs of this many bytes
    /// (see [`crate::runtime::tmpfs`]); `None` (the default) keeps them on disk.
    pub ephemeral_storage_tmpfs: Option<u64>,
    /// How many pods come up at once (see [`crate::start_slots`]); one per CPU by
    /// default. A lab's nodes share one machine's CPUs and get a share each.
    pub max_parallel_pod_starts: usize,
}

impl Config {
    /// A configuration with the default intervals: a 40 s Lease renewed every 10 s,
    /// status every 10 s, pod resync every second.
    pub fn new(client: ClientConfig, node_name: impl Into<String>, root_dir: PathBuf) -> Self {
        Config {
            client,
            node_name: node_name.into(),
            root_dir,
            insecure_registries: Vec::new(),
            node_ip: None,
            shim_binary: None,
            lease_duration_seconds: lease::LEASE_DURATION_SECONDS,
            lease_renew_interval: lease::renew_interval(lease::LEASE_DURATION_SECONDS),
            node_status_interval: Duration::from_secs(10),
            pod_resync_interval: Duration::from_secs(1),
            listen_address: None,
            log_rotation: LogRotation::default(),
            pod_network: None,
            favor_dynamic_cgroups: true,
            state_on_tmpfs: false,
            ephemeral_storage_tmpfs: None,
            max_parallel_pod_starts: StartSlots::per_cpu().count(),
        }
    }

    /// A Lease valid for `seconds`, renewed every quarter of that (the kubelet's rule).
    /// The controller manager's `--node-monitor-grace-period` must be longer than the
    /// renewal interval, or nodes flap between Ready and Unknown.
    pub fn set_lease_duration(&mut self, seconds: i32) {
        self.lease_duration_seconds = seconds;
        self.lease_renew_interval = lease::renew_interval(seconds);
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
    let mut runtime = LocalRuntime::new(LocalRuntimeConfig {
        root_dir: config.root_dir.clone(),
        insecure_registries: config.insecure_registries.clone(),
        shim_binary,
        favor_dynamic_cgroups: config.favor_dynamic_cgroups,
        state_on_tmpfs: config.state_on_tmpfs,
        ephemeral_storage_tmpfs: config.ephemeral_storage_tmpfs,
    })
    .context("prepare the container runtime")?;
    runtime.set_log_rotation(config.log_rotation);
    if let Some(options) = &config.pod_network {
        let handle = NetworkHandle::new(options.cluster_domain.clone());
        runtime.set_network(handle.clone());
        start_pod_network(&config, handle.clone(), shutdown.clone())
            .await
            .context("start the pod network")?;
        start_services(&config, options, handle, shutdown.clone())
            .await
            .context("start the service proxy and cluster dns")?;
    }
    let runtime = Arc::new(runtime);
    let server = config.listen_address.map(|addr| (addr, runtime.clone()));
    run_inner(config, runtime, server, shutdown).await
}

/// Starts the pod network's task: it waits for the node's podCIDR, builds the node's
/// part of the network, fills `handle` and keeps the overlay's peers until `shutdown`.
async fn start_pod_network(
    config: &Config,
    handle: NetworkHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = Client::connect(config.client.clone())
        .await
        .context("connect to the apiserver")?;
    let machine =
        MachineInfo::detect(&config.root_dir, config.node_ip).context("inspect the machine")?;
    let IpAddr::V4(underlay_ip) = machine.internal_ip else {
        anyhow::bail!(
            "the pod network needs an IPv4 node address, not {}",
            machine.internal_ip
        );
    };
    let state_dir = config.root_dir.join("network");
    if config.state_on_tmpfs {
        // The address allocations live exactly as long as the sandboxes they belong
        // to, which are on tmpfs too; no inode churn or fsync on disk per pod.
        crate::runtime::tmpfs::keep_on_tmpfs(&state_dir, crate::runtime::tmpfs::STATE);
    }
    let startup = network::node::Startup {
        node_name: config.node_name.clone(),
        state_dir,
        underlay_ip,
        sandboxes_dir: config.root_dir.join("sandboxes"),
    };
    let node = config.node_name.clone();
    tokio::spawn(
        async move {
            if let Err(err) =
                network::node::run(Api::all(client), startup, handle, shutdown).await
            {
                tracing::error!(error = %anyhow::Error::from(err), "the pod network failed; pods cannot start");
            }
        }
        .instrument(tracing::info_span!("pod_network", node = %node)),
    );
    Ok(())
}

/// Starts the service proxy (`table ip rkube`, kept in step with Services and Endpoints)
/// and, once the pod network is up, the cluster DNS on the bridge address, port 53.
async fn start_services(
    config: &Config,
    options: &PodNetworkOptions,
    handle: NetworkHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = Client::connect(config.client.clone())
        .await
        .context("connect to the apiserver")?;
    if let Err(error) = proxy::enable_bridge_netfilter() {
        tracing::warn!(error = %error, "cannot pass bridged traffic through conntrack (br_netfilter); a pod reaching a Service backed by a pod on the same node may hang");
    }
    let node = config.node_name.clone();
    let (reflector, state) = proxy::reflect(client);
    tokio::spawn(
        reflector
            .run(shutdown.clone())
            .instrument(tracing::info_span!("service_reflector", node = %node)),
    );
    let ranges = proxy::ruleset::Ranges {
        cluster_cidr: options.cluster_cidr,
        service_cidr: options.service_cidr,
    };
    let rules = proxy::Proxy::new(state.clone(), ranges, Arc::new(proxy::apply::Nft::new()));
    tokio::spawn(
        rules
            .run(shutdown.clone())
            .instrument(tracing::info_span!("service_proxy", node = %node)),
    );
    let domain = options.cluster_domain.clone();
    tokio::spawn(
        async move {
            let network = tokio::select! {
                network = handle.wait() => network,
                _ = shutdown.cancelled() => return,
            };
            let gateway = network.local().gateway;
            let config = dns::DnsConfig::from_host(domain, Some(gateway.into()));
            match dns::DnsServer::bind((gateway, 53).into(), config, Arc::new(state)).await {
                Ok(server) => server.run(shutdown).await,
                Err(error) => {
                    tracing::error!(%gateway, error = %error, "cannot serve cluster dns; pods cannot resolve names")
                }
            }
        }
        .instrument(tracing::info_span!("cluster_dns", node = %node)),
    );
    Ok(())
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
    run_inner(config, runtime, None, shutdown).await
}

/// The agent, serving the NodeAgent service on `server`'s address for its runtime.
async fn run_inner<R: ContainerRuntime>(
    config: Config,
    runtime: Arc<R>,
    server: Option<(SocketAddr, Arc<LocalRuntime>)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = Client::connect(config.client.clone())
        .await
        .context("connect to the apiserver")?;
    let machine =
        MachineInfo::detect(&config.root_dir, config.node_ip).context("inspect the machine")?;
    info!(node = %config.node_name, ip = %machine.internal_ip, cpus = machine.cpus, "starting node agent");

    let mut registrar =
        NodeRegistrar::new(client.clone(), config.node_name.clone(), machine.clone());
    let mut tasks = tokio::task::JoinSet::new();
    if let Some((addr, local)) = server {
        let identity = server::serving_certificate(
            &config.root_dir.join("pki"),
            &config.node_name,
            machine.internal_ip,
        )
        .context("prepare the serving certificate")?;
        let ca = config
            .client
            .ca_pem
            .as_deref()
            .ok_or(server::Error::NoClusterCa)
            .context("trust the apiserver's client certificate")?;
        let listener = server::Listener::bind(addr, identity, ca)
            .await
            .context("listen for the NodeAgent service")?;
        registrar = registrar.with_kubelet_port(listener.port());
        let service = NodeAgentService::new(local, client.clone(), config.node_name.clone());
        let token = shutdown.clone();
        tasks.spawn(
            async move {
                if let Err(err) = listener.serve(service, token.clone()).await {
                    tracing::error!(error = %err, "the NodeAgent service failed");
                }
                // Serving ends only at shutdown; the agent stops with it otherwise.
                token.cancelled().await;
            }
            .instrument(tracing::info_span!("node_agent_service", node = %config.node_name)),
        );
    }
    let node = registrar.register().await.context("register the node")?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();

    let heartbeat = registrar.clone();
    let interval = config.node_status_interval;
    let token = shutdown.clone();
    tasks.spawn(
        async move { heartbeat.run(interval, token).await }
            .instrument(tracing::info_span!("node_status", node = %config.node_name)),
    );
    let lease = LeaseRenewer::new(
        client.clone(),
        config.node_name.clone(),
        node_uid,
        config.lease_duration_seconds,
    );
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
    )
    .with_start_slots(StartSlots::new(config.max_parallel_pod_starts));
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
