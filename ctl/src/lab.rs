//! The lab launcher behind `rkube up`, `rkube down` and `rkube status`: a control plane
//! (etcd, apiserver, scheduler, controller-manager), a `docker-registry` and N node
//! agents as detached local processes under one state directory. Each node agent runs
//! in its own network namespace on an underlay bridge ([`underlay`]), so one machine
//! holds a multi-node cluster; the control plane and the registry listen on the host at
//! the bridge address, the registry on a well-known port ([`DEFAULT_REGISTRY_PORT`]) so
//! that manifests can name its images (`10.250.0.1:5000/hello:1.0.0` with the default
//! underlay). `up` returns once every node is Ready and has published its pod network
//! (podCIDR and overlay annotations, see [`crate::netcheck`]).
//!
//! State directory layout:
//!
//! | path | what |
//! |---|---|
//! | `pki/` | CA, certificates, tokens, component kubeconfigs ([`crate::pki`]) |
//! | `etcd/` | the local etcd's data (absent with `--etcd-servers`) |
//! | `logs/<name>.log` | each process's stdout and stderr (`agent-<node>` for agents) |
//! | `run/<name>.pid` | each process's pid |
//! | `lab.json` | the underlay: bridge, CIDR, and per node its address, netns, root dir |
//! | `nodes/<node>/` | each node agent's root dir (images, containers, pods; tmpfs mounts for its bookkeeping, writable layers and logs) |
//! | `registry/` | the registry's configuration and storage |
//! | `registry-addr` | the registry's `host:port` |
//! | `pki-hosts` | the extra hosts the apiserver certificate was generated for |
//! | `kubeconfig-path` | the user kubeconfig `up` merged the `rkube` context into |
//! | `server` | the apiserver URL, for `status` |

pub mod nodes;
pub mod underlay;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::kubeconfig;
use crate::netcheck;
use crate::pki::{self, ClusterPki, Component, CONTEXT_NAME};
use underlay::{Cidr, IpCommand, Names, Net};

/// Marks a directory as an rkube state directory, so `down` never removes anything else.
const MARKER: &str = ".rkube-state";
/// How long `up` waits for a process to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a process log shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to set up the cluster PKI")]
    Pki(#[from] pki::Error),
    #[error("failed to update the kubeconfig")]
    Kubeconfig(#[from] kubeconfig::Error),
    #[error("no kubeconfig path: set HOME or KUBECONFIG")]
    NoKubeconfigPath,
    #[error("{path} not found; build it with `cargo build --bins`")]
    MissingBinary { path: PathBuf },
    #[error("failed to start {name} ({binary})")]
    Spawn {
        name: String,
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited ({status}) while starting; last lines of {log}:\n{tail}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} did not become ready within {timeout:?}; last lines of {log}:\n{tail}")]
    NotReady {
        name: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("failed to build an HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("failed to signal {name} (pid {pid})")]
    Signal {
        name: String,
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("{name} (pid {pid}) is still running after SIGKILL")]
    Unkillable { name: String, pid: i32 },
    #[error("{path} is not an rkube state directory (no {MARKER}); refusing to remove it")]
    NotAStateDir { path: PathBuf },
    #[error("failed to set up the lab network")]
    Underlay(#[from] underlay::Error),
    #[error(
        "the lab in {state_dir} uses the underlay {recorded}, not {wanted}; run `rkube down` first"
    )]
    UnderlayMismatch {
        state_dir: PathBuf,
        recorded: String,
        wanted: String,
    },
    #[error("failed to parse {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the underlay {underlay} overlaps the {what} {other}; choose another --underlay-cidr")]
    UnderlayOverlap {
        underlay: String,
        what: &'static str,
        other: String,
    },
    #[error(
        "the apiserver certificate in {state_dir} does not name {host}; run `rkube down` first"
    )]
    CertificateLacksHost { host: String, state_dir: PathBuf },
    #[error("a lab with nodes needs root (network namespaces, containers); run with sudo or use --nodes 0")]
    NeedsRoot,
    #[error("nodes not Ready within {timeout:?}: {waiting}")]
    NodesNotReady { timeout: Duration, waiting: String },
    #[error("mounts are left under {path} ({mounts}); refusing to remove it")]
    MountsLeft { path: PathBuf, mounts: String },
    #[error("the lab registry's port {port} is taken on {host} (another registry or program listens there); free it, or pick another port with `rkube up --registry-port PORT` (0 picks a free one)")]
    RegistryPortTaken {
        host: IpAddr,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("the lab in {state_dir} runs its registry at {running}, not on port {wanted}; run `rkube down` first, or pass its port to `--registry-port`")]
    RegistryPortMismatch {
        state_dir: PathBuf,
        running: String,
        wanted: u16,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how the lab runs.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The state directory (PKI, etcd data, logs, pid files).
    pub state_dir: PathBuf,
    /// External etcd client URLs; `None` starts a local etcd.
    pub etcd_servers: Option<Vec<String>>,
    /// Client port of the local etcd.
    pub etcd_client_port: u16,
    /// Peer port of the local etcd.
    pub etcd_peer_port: u16,
    /// HTTPS port of the apiserver.
    pub secure_port: u16,
    /// The etcd binary.
    pub etcd_binary: PathBuf,
    /// Directory holding `rkube-apiserver` (normally the one holding `rkube`).
    pub bin_dir: PathBuf,
    /// The kubeconfig to merge the `rkube` context into; `None` for the default
    /// (`$KUBECONFIG`'s first path or `$HOME/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// How many node agents to run, each in its own network namespace (0: control
    /// plane only, on 127.0.0.1).
    pub nodes: usize,
    /// The CPU capacity each node reports (`--node-cpu`), the machine's when `None`.
    pub node_cpu: Option<String>,
    /// The memory capacity each node reports (`--node-memory`).
    pub node_memory: Option<String>,
    /// The underlay network: the host bridge takes its first address, node `n` the
    /// `n+1`th.
    pub underlay: Cidr,
    /// The pod network the controller-manager splits into per-node podCIDRs.
    pub cluster_cidr: String,
    /// The registry's port on the host address ([`DEFAULT_REGISTRY_PORT`]); 0 picks a
    /// free one (tests, so that parallel labs do not collide).
    pub registry_port: u16,
    /// The `docker-registry` binary.
    pub registry_binary: PathBuf,
    /// The `nsenter` binary that starts each agent inside its node's namespace.
    pub nsenter_binary: PathBuf,
}

/// The default underlay CIDR of a lab.
pub const DEFAULT_UNDERLAY: Cidr = Cidr {
    network: Ipv4Addr::new(10, 250, 0, 0),
    prefix: 24,
};
/// The apiserver's default Service CIDR, which the underlay must stay out of.
pub const SERVICE_CIDR: Cidr = Cidr {
    network: Ipv4Addr::new(10, 96, 0, 0),
    prefix: 12,
};
/// The default cluster (pod) CIDR.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The lab registry's default port: with the default underlay, images live at
/// `10.250.0.1:5000/<name>:<tag>` (what `manifests/hello/deployment.yaml` names).
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;

impl LabConfig {
    /// The defaults for a state directory: local etcd on 2379/2380, apiserver on 6443,
    /// `rkube-apiserver` next to the running executable.
    pub fn new(state_dir: PathBuf) -> Self {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        LabConfig {
            state_dir,
            etcd_servers: None,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            secure_port: 6443,
            etcd_binary: PathBuf::from("/usr/bin/etcd"),
            bin_dir,
            kubeconfig: None,
            nodes: 0,
            node_cpu: None,
            node_memory: None,
            underlay: DEFAULT_UNDERLAY,
            cluster_cidr: DEFAULT_CLUSTER_CIDR.to_string(),
            registry_port: DEFAULT_REGISTRY_PORT,
            registry_binary: PathBuf::from("/usr/bin/docker-registry"),
            nsenter_binary: PathBuf::from("/usr/bin/nsenter"),
        }
    }

    /// The apiserver's URL: on the underlay bridge when the lab has nodes, else on
    /// 127.0.0.1.
    pub fn server_url(&self) -> String {
        format!("https://{}:{}", self.host_ip(), self.secure_port)
    }

    /// The host address the control plane and the registry are reached at.
    fn host_ip(&self) -> IpAddr {
        if self.nodes > 0 {
            IpAddr::V4(self.underlay.bridge_ip())
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }

    fn lab_record(&self) -> PathBuf {
        self.state_dir.join("lab.json")
    }

    fn recorded_registry(&self) -> PathBuf {
        self.state_dir.join("registry-addr")
    }

    fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client_port)
    }

    fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("run").join(format!("{name}.pid"))
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    fn recorded_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig-path")
    }

    fn recorded_server(&self) -> PathBuf {
        self.state_dir.join("server")
    }
}

/// The processes the lab runs, in start order.
const ETCD: &str = "etcd";
const APISERVER: &str = "rkube-apiserver";
const SCHEDULER: &str = "rkube-scheduler";
const CONTROLLER_MANAGER: &str = "rkube-controller-manager";
const REGISTRY: &str = "docker-registry";
const PROCESSES: [&str; 5] = [ETCD, APISERVER, SCHEDULER, CONTROLLER_MANAGER, REGISTRY];
/// The node agent's program name.
const AGENT: &str = "rkube-nodeagent";

/// How long a lab node may go without renewing its Lease before it is Ready=Unknown:
/// shorter than Kubernetes' 40 s so that a lost node's pods move within seconds. The
/// agents' Leases last as long and are renewed every quarter of it (2 s).
const NODE_GRACE_SECONDS: u32 = 8;
/// How long pods stay on an unreachable lab node before they are evicted.
const POD_EVICTION_SECONDS: u32 = 5;
/// How much each lab node may keep in memory of its containers' writable layers, and
/// as much of their logs: lab nodes do not outlive the machine's uptime, so their
/// ephemeral storage lives in tmpfs (`--ephemeral-storage-tmpfs`), sparing the disk an
/// inode churn on every pod start.
const NODE_EPHEMERAL_STORAGE: &str = "2Gi";

/// The control-plane components that talk to the apiserver with their own credentials.
const COMPONENTS: [(&str, Component); 2] = [
    (SCHEDULER, Component::Scheduler),
    (CONTROLLER_MANAGER, Component::ControllerManager),
];

/// The lab's network as `up` made it, recorded in `lab.json` before anything is created
/// so that `down` (and `up` after a crash) finds everything.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabRecord {
    /// The lab's name (also its bridge's).
    pub lab: String,
    pub bridge: String,
    pub underlay: Cidr,
    pub nodes: Vec<NodeRecord>,
}

/// One lab node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The Node's name.
    pub name: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// The host end of its veth pair, on the bridge.
    pub host_veth: String,
    /// The agent's root dir.
    pub root_dir: PathBuf,
}

impl NodeRecord {
    /// The name of its agent's pid and log files.
    fn process(&self) -> String {
        format!("agent-{}", self.name)
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

impl LabRecord {
    /// The record for `config`'s lab with `config.nodes` nodes.
    fn planned(config: &LabConfig) -> LabRecord {
        let names = Names::for_state_dir(&config.state_dir);
        let nodes = (1..=config.nodes)
            .map(|n| {
                let name = format!("node-{n}");
                NodeRecord {
                    ip: config.underlay.node_ip(n),
                    netns: names.netns(n),
                    host_veth: names.host_veth(n),
                    root_dir: config.state_dir.join("nodes").join(&name),
                    name,
                }
            })
            .collect();
        LabRecord {
            lab: names.lab.clone(),
            bridge: names.bridge(),
            underlay: config.underlay,
            nodes,
        }
    }

    fn load(config: &LabConfig) -> Result<Option<LabRecord>> {
        let path = config.lab_record();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Record { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    fn save(&self, config: &LabConfig) -> Result<()> {
        let path = config.lab_record();
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Record {
            path: path.clone(),
            source,
        })?;
        fs::write(&path, json).map_err(io_err("write", &path))
    }
}

/// What `up` did.
#[derive(Debug, Clone)]
pub struct UpReport {
    /// Everything was already running; nothing was started.
    pub already_running: bool,
    /// The processes started by this call.
    pub started: Vec<String>,
    /// The kubeconfig holding the `rkube` context.
    pub kubeconfig: PathBuf,
    /// The apiserver URL.
    pub server: String,
    /// The lab registry's `host:port`.
    pub registry: String,
    /// The nodes, all Ready.
    pub nodes: Vec<NodeRecord>,
}

/// [`up_with_progress`] without progress messages.
///
/// # Errors
/// As [`up_with_progress`].
pub async fn up(config: &LabConfig) -> Result<UpReport> {
    up_with_progress(config, &mut |_| {}).await
}

/// Brings the lab up (or finds it up, or repairs what a crash left): the underlay, the
/// control plane, the registry and the node agents; waits until every node is Ready and
/// merges the `rkube` context into the user's kubeconfig. `progress` hears each step.
///
/// # Errors
/// When the PKI, the network, a process or the kubeconfig cannot be set up, or a process
/// or node does not become ready in time (the error carries the tail of its log).
pub async fn up_with_progress(
    config: &LabConfig,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<UpReport> {
    let apiserver_binary = config.bin_dir.join(APISERVER);
    let agent_binary = config.bin_dir.join(AGENT);
    let mut required = vec![apiserver_binary.clone()];
    if config.nodes > 0 {
        required.extend([
            agent_binary.clone(),
            config.registry_binary.clone(),
            config.nsenter_binary.clone(),
        ]);
    }
    if let Some(path) = required.into_iter().find(|path| !path.is_file()) {
        return Err(Error::MissingBinary { path });
    }
    if config.nodes > 0 && !nix::unistd::Uid::effective().is_root() {
        return Err(Error::NeedsRoot);
    }
    for dir in [
        config.state_dir.clone(),
        config.state_dir.join("logs"),
        config.state_dir.join("run"),
    ] {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    }
    let marker = config.state_dir.join(MARKER);
    fs::write(&marker, "rkube lab state directory\n").map_err(io_err("write", &marker))?;

    let net = IpCommand;
    let (record, removed_nodes) = prepare_underlay(config, &net, progress).await?;

    // The registry's address first: a taken port fails `up` before anything starts.
    let registry_plan = match running_pid(config, REGISTRY) {
        Some(_) => {
            let running = fs::read_to_string(config.recorded_registry())
                .map(|s| s.trim().to_string())
                .map_err(io_err("read", &config.recorded_registry()))?;
            // The agents were started with this address; another port needs a new lab.
            if config.registry_port != 0 && addr_port(&running) != Some(config.registry_port) {
                return Err(Error::RegistryPortMismatch {
                    state_dir: config.state_dir.clone(),
                    running,
                    wanted: config.registry_port,
                });
            }
            RegistryPlan::Running(running)
        }
        None => RegistryPlan::Start(registry_port(config)?),
    };

    let hosts: Vec<String> = match &record {
        Some(_) => vec![config.underlay.bridge_ip().to_string()],
        None => Vec::new(),
    };
    let hosts_record = config.state_dir.join("pki-hosts");
    if config.pki_dir().join(pki::CA_CERT).exists() {
        // The serving certificate names only the hosts it was generated for.
        let recorded = fs::read_to_string(&hosts_record).unwrap_or_default();
        if let Some(host) = hosts.iter().find(|h| !recorded.lines().any(|l| l == *h)) {
            return Err(Error::CertificateLacksHost {
                host: host.clone(),
                state_dir: config.state_dir.clone(),
            });
        }
    }
    let pki = ClusterPki::load_or_generate(&config.pki_dir(), &hosts)?;
    if !hosts_record.exists() {
        fs::write(&hosts_record, hosts.join("\n")).map_err(io_err("write", &hosts_record))?;
    }
    let server = config.server_url();
    pki.write_kubeconfigs(&server)?;
    let record_path = config.recorded_server();
    fs::write(&record_path, &server).map_err(io_err("write", &record_path))?;
    let http = http_client(pki.ca_pem())?;
    let mut started = Vec::new();

    let etcd_servers = match &config.etcd_servers {
        Some(servers) => servers.clone(),
        None => {
            if running_pid(config, ETCD).is_none() {
                progress("starting etcd");
                let child = spawn(config, ETCD, &config.etcd_binary, etcd_args(config))?;
                let health = format!("{}/health", config.etcd_url());
                wait_ready(config, ETCD, child, &http, &health).await?;
                started.push(ETCD.to_string());
            }
            vec![config.etcd_url()]
        }
    };

    if running_pid(config, APISERVER).is_none() {
        progress(&format!("starting {APISERVER} at {server}"));
        let mut args = apiserver_args(config, &pki, &etcd_servers);
        args.extend(["--bind-address".into(), config.host_ip().to_string().into()]);
        let child = spawn(config, APISERVER, &apiserver_binary, args)?;
        wait_ready(config, APISERVER, child, &http, &format!("{server}/readyz")).await?;
        started.push(APISERVER.to_string());
    }

    let mut components = Vec::new();
    for (name, component) in COMPONENTS {
        if running_pid(config, name).is_none() {
            progress(&format!("starting {name}"));
            let binary = config.bin_dir.join(name);
            let mut args = vec![
                OsString::from("--kubeconfig"),
                pki.kubeconfig_path(component).into_os_string(),
            ];
            if component == Component::ControllerManager {
                args.extend([
                    "--cluster-cidr".into(),
                    config.cluster_cidr.clone().into(),
                    "--node-monitor-grace-period".into(),
                    format!("{NODE_GRACE_SECONDS}s").into(),
                    "--pod-eviction-timeout".into(),
                    format!("{POD_EVICTION_SECONDS}s").into(),
                ]);
            }
            components.push((name, spawn(config, name, &binary, args)?));
            started.push(name.to_string());
        }
    }
    wait_started(config, components).await?;

    let registry = match registry_plan {
        RegistryPlan::Running(addr) => addr,
        RegistryPlan::Start(port) => {
            let addr = start_registry(config, port).await?;
            progress(&format!("started {REGISTRY} at {addr}"));
            started.push(REGISTRY.to_string());
            addr
        }
    };

    for name in &removed_nodes {
        delete_node(&http, &server, pki.admin_token(), name).await;
    }

    let nodes = record.map(|r| r.nodes).unwrap_or_default();
    let mut agents = Vec::new();
    for node in &nodes {
        let process = node.process();
        if running_pid_of(config, &process, AGENT).is_some() {
            continue;
        }
        progress(&format!(
            "starting the agent of {} ({}, netns {})",
            node.name, node.ip, node.netns
        ));
        let mut args: Vec<OsString> = vec![
            format!("--net={}", node.netns_path().display()).into(),
            "--".into(),
            agent_binary.clone().into_os_string(),
            "--kubeconfig".into(),
            pki.kubeconfig_path(Component::NodeAgent).into_os_string(),
            "--node-name".into(),
            node.name.clone().into(),
            "--root-dir".into(),
            node.root_dir.clone().into_os_string(),
            "--node-ip".into(),
            node.ip.to_string().into(),
            "--insecure-registry".into(),
            registry.clone().into(),
            "--node-lease-duration-seconds".into(),
            NODE_GRACE_SECONDS.to_string().into(),
            "--ephemeral-storage-tmpfs".into(),
            NODE_EPHEMERAL_STORAGE.into(),
        ];
        if let Some(cpu) = &config.node_cpu {
            args.extend(["--node-cpu".into(), cpu.into()]);
        }
        if let Some(memory) = &config.node_memory {
            args.extend(["--node-memory".into(), memory.into()]);
        }
        if config.cluster_cidr != DEFAULT_CLUSTER_CIDR {
            args.extend(["--cluster-cidr".into(), config.cluster_cidr.clone().into()]);
        }
        // The nodes share this machine's CPUs: each brings up pods in its share.
        args.extend([
            "--max-parallel-pod-starts".into(),
            starts_per_node(nodes.len()).to_string().into(),
        ]);
        let child = spawn(config, &process, &config.nsenter_binary, args)?;
        agents.push((process.clone(), child));
        started.push(process);
    }
    if !nodes.is_empty() {
        wait_nodes_ready(
            config,
            &http,
            &server,
            pki.admin_token(),
            &nodes,
            agents,
            progress,
        )
        .await?;
    }

    let kubeconfig = match &config.kubeconfig {
        Some(path) => path.clone(),
        None => kubeconfig::default_path().ok_or(Error::NoKubeconfigPath)?,
    };
    kubeconfig::merge_into(
        &kubeconfig,
        CONTEXT_NAME,
        &server,
        pki.ca_pem(),
        pki.token(Component::Admin),
    )?;
    let record_path = config.recorded_kubeconfig();
    fs::write(&record_path, kubeconfig.as_os_str().as_encoded_bytes())
        .map_err(io_err("write", &record_path))?;

    Ok(UpReport {
        already_running: started.is_empty(),
        started,
        kubeconfig,
        server,
        registry,
        nodes,
    })
}

/// Makes the bridge and each node's namespace as `config` asks, recording them first;
/// removes the nodes of an earlier `up` that are no longer wanted (returning their
/// names). The record is `None` when the lab has no nodes (and never had).
async fn prepare_underlay(
    config: &LabConfig,
    net: &dyn Net,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(Option<LabRecord>, Vec<String>)> {
    let previous = LabRecord::load(config)?;
    if let Some(previous) = &previous {
        if previous.underlay != config.underlay {
            return Err(Error::UnderlayMismatch {
                state_dir: config.state_dir.clone(),
                recorded: previous.underlay.to_string(),
                wanted: config.underlay.to_string(),
            });
        }
    }
    if config.nodes == 0 && previous.is_none() {
        return Ok((None, Vec::new()));
    }
    config.underlay.check_room(config.nodes)?;
    let cluster = Cidr::parse(&config.cluster_cidr)?;
    for (what, other) in [("cluster CIDR", cluster), ("Service CIDR", SERVICE_CIDR)] {
        if config.underlay.overlaps(&other) {
            return Err(Error::UnderlayOverlap {
                underlay: config.underlay.to_string(),
                what,
                other: other.to_string(),
            });
        }
    }
    let planned = LabRecord::planned(config);
    let mut removed = Vec::new();
    if let Some(previous) = previous {
        for node in previous.nodes.iter().filter(|n| !planned.nodes.contains(n)) {
            progress(&format!("removing node {}", node.name));
            remove_node(config, net, node).await?;
            removed.push(node.name.clone());
        }
        if config.nodes == 0 {
            // Back to a control plane on 127.0.0.1: the underlay goes too.
            net.remove_bridge(&previous.bridge)?;
            let path = config.lab_record();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            return Ok((None, removed));
        }
    }
    planned.save(config)?;
    progress(&format!(
        "underlay {} on bridge {} ({})",
        planned.underlay,
        planned.bridge,
        planned.underlay.bridge_ip()
    ));
    net.ensure_bridge(&planned.bridge, &planned.underlay)?;
    for node in &planned.nodes {
        net.ensure_node(
            &node.netns,
            &node.host_veth,
            &planned.bridge,
            node.ip,
            &planned.underlay,
        )?;
        fs::create_dir_all(&node.root_dir).map_err(io_err("create", &node.root_dir))?;
    }
    Ok((Some(planned), removed))
}

/// What `up` does about the registry, decided before anything starts.
enum RegistryPlan {
    /// It runs at this `host:port`.
    Running(String),
    /// Start it on this port (found free).
    Start(u16),
}

/// The port of a `host:port`.
fn addr_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The port the registry will listen on, checked free on the host address:
/// `config.registry_port`, or with 0 the port a crashed registry of this lab had (the
/// agents know that address) if it is free, else any free one.
///
/// # Errors
/// [`Error::RegistryPortTaken`] when the asked-for port is in use.
fn registry_port(config: &LabConfig) -> Result<u16> {
    let host = config.host_ip();
    let dir = config.state_dir.join("registry");
    if config.registry_port != 0 {
        return match std::net::TcpListener::bind((host, config.registry_port)) {
            Ok(_) => Ok(config.registry_port),
            Err(source) if source.kind() == io::ErrorKind::AddrInUse => {
                Err(Error::RegistryPortTaken {
                    host,
                    port: config.registry_port,
                    source,
                })
            }
            Err(source) => Err(Error::Io {
                action: "bind the registry's port for",
                path: dir,
                source,
            }),
        };
    }
    let previous = fs::read_to_string(config.recorded_registry())
        .ok()
        .filter(|addr| addr.trim().starts_with(&format!("{host}:")))
        .and_then(|addr| addr_port(addr.trim()));
    if let Some(port) = previous {
        if std::net::TcpListener::bind((host, port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map_err(io_err("pick a port for", &dir))?
        .port())
}

/// Starts `docker-registry` on `port` ([`registry_port`]) of the host address, with its storage
/// under the state dir; returns its `host:port` once it accepts connections.
async fn start_registry(config: &LabConfig, port: u16) -> Result<String> {
    let dir = config.state_dir.join("registry");
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let host = config.host_ip();
    let addr = format!("{host}:{port}");
    let registry_config = dir.join("config.yml");
    fs::write(
        &registry_config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        ),
    )
    .map_err(io_err("write", &registry_config))?;
    let mut child = spawn(
        config,
        REGISTRY,
        &config.registry_binary,
        vec!["serve".into(), registry_config.into_os_string()],
    )?;
    wait_until(config, REGISTRY, &mut child, || async {
        tokio::net::TcpStream::connect(&addr).await.is_ok()
    })
    .await?;
    let record = config.recorded_registry();
    fs::write(&record, &addr).map_err(io_err("write", &record))?;
    Ok(addr)
}

/// How long `up` waits, once every node has published, for every node's VXLAN device to
/// hold the entries for every other node; past it `up` returns anyway, pointing at
/// `rkube net check`.
pub const OVERLAY_WAIT: Duration = Duration::from_secs(10);

/// Polls the Nodes until each of `nodes` is Ready and has published its podCIDR and
/// overlay annotations ([`netcheck::missing`]), reporting each registration, readiness
/// and publication; fails early when an agent started by this `up` exits. Then waits up
/// to [`OVERLAY_WAIT`] for the overlay entries ([`wait_overlay_programmed`]).
async fn wait_nodes_ready(
    config: &LabConfig,
    http: &reqwest::Client,
    server: &str,
    token: &str,
    nodes: &[NodeRecord],
    mut agents: Vec<(String, Child)>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let netns: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.netns.clone()))
        .collect();
    let mut registered = Vec::new();
    let mut ready = Vec::new();
    let mut published = Vec::new();
    loop {
        for (process, child) in &mut agents {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = fs::remove_file(config.pid_file(process));
                let log = config.log_file(process);
                return Err(Error::Exited {
                    name: process.clone(),
                    status,
                    tail: log_tail(&log),
                    log,
                });
            }
        }
        let list = node_list(http, server, token).await;
        let views = list
            .as_ref()
            .map(|list| netcheck::views_from_node_list(&netns, list))
            .unwrap_or_default();
        for (name, is_ready) in list.as_ref().map(node_readiness).unwrap_or_default() {
            if !netns.contains_key(&name) {
                continue;
            }
            if !registered.contains(&name) {
                progress(&format!("node {name} registered"));
                registered.push(name.clone());
            }
            if is_ready && !ready.contains(&name) {
                progress(&format!("node {name} is Ready"));
                ready.push(name.clone());
            }
            let view = views.iter().find(|v| v.name == name);
            if let Some(view) = view.filter(|v| netcheck::missing(v).is_empty()) {
                if !published.contains(&name) {
                    let (network, prefix) = view.pod_cidr.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
                    progress(&format!(
                        "node {name} published its pod network (podCIDR {network}/{prefix})"
                    ));
                    published.push(name);
                }
            }
        }
        let done =
            |name: &str| ready.iter().any(|r| r == name) && published.iter().any(|p| p == name);
        if nodes.iter().all(|n| done(&n.name)) {
            break;
        }
        if Instant::now() >= deadline {
            let waiting: Vec<String> = nodes
                .iter()
                .filter(|n| !done(&n.name))
                .map(|n| {
                    let lacks = views
                        .iter()
                        .find(|v| v.name == n.name)
                        .map(netcheck::missing)
                        .unwrap_or_default();
                    let mut why = Vec::new();
                    if !registered.contains(&n.name) {
                        why.push("not registered".to_string());
                    } else if !ready.contains(&n.name) {
                        why.push("not Ready".to_string());
                    }
                    if !lacks.is_empty() {
                        why.push(format!("lacks {}", lacks.join(", ")));
                    }
                    format!("{} ({})", n.name, why.join("; "))
                })
                .collect();
            return Err(Error::NodesNotReady {
                timeout: READY_TIMEOUT,
                waiting: format!(
                    "{} (agent logs in {})",
                    waiting.join(", "),
                    config.state_dir.join("logs").display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if nodes.len() > 1 {
        wait_overlay_programmed(http, server, token, &netns, progress).await;
    }
    Ok(())
}

/// Waits up to [`OVERLAY_WAIT`] until every node's VXLAN device holds the FDB,
/// neighbour and route entries for every other node (the agents add them as they see
/// the others' annotations); reports either way, never fails.
async fn wait_overlay_programmed(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    netns: &BTreeMap<String, String>,
    progress: &mut (dyn FnMut(&str) + Send),
) {
    let deadline = Instant::now() + OVERLAY_WAIT;
    loop {
        let pending = match node_list(http, server, token).await {
            Some(list) => {
                let views = netcheck::views_from_node_list(netns, &list);
                // `ip` and `bridge` block: off the runtime thread.
                let pending = tokio::task::spawn_blocking(move || {
                    netcheck::unprogrammed(&views, &netcheck::IpProbe)
                })
                .await;
                match pending {
                    Ok(pending) if pending.is_empty() => {
                        progress("the overlay connects every node");
                        return;
                    }
                    Ok(pending) => netcheck::render(&pending),
                    Err(err) => format!("the overlay check failed: {err}"),
                }
            }
            None => "the apiserver does not list the Nodes".to_string(),
        };
        if Instant::now() >= deadline {
            progress(&format!(
                "the overlay is still incomplete after {}s (run `rkube net check`):\n{}",
                OVERLAY_WAIT.as_secs(),
                pending.trim_end()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/v1/nodes` (`None` when the apiserver cannot be asked).
async fn node_list(http: &reqwest::Client, server: &str, token: &str) -> Option<serde_json::Value> {
    let resp = http
        .get(format!("{server}/api/v1/nodes"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    resp.error_for_status().ok()?.json().await.ok()
}

/// Each Node's name and whether its Ready condition is True.
fn node_readiness(list: &serde_json::Value) -> Vec<(String, bool)> {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|node| {
            let name = node["metadata"]["name"].as_str()?.to_string();
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            Some((name, ready))
        })
        .collect()
}

/// Deletes the Node `name` (a node `up` removed); failures are only logged, the node
/// controller handles a Node whose agent is gone anyway.
async fn delete_node(http: &reqwest::Client, server: &str, token: &str, name: &str) {
    let result = http
        .delete(format!("{server}/api/v1/nodes/{name}"))
        .bearer_auth(token)
        .send()
        .await;
    match result {
        Ok(resp)
            if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND =>
        {
            tracing::info!(node = name, "deleted the Node of a removed lab node");
        }
        Ok(resp) => tracing::warn!(node = name, status = %resp.status(), "cannot delete the Node"),
        Err(err) => tracing::warn!(node = name, error = %err, "cannot delete the Node"),
    }
}

/// Stops a node's agent, removes what its containers left and its namespace.
async fn remove_node(config: &LabConfig, net: &dyn Net, node: &NodeRecord) -> Result<bool> {
    let process = node.process();
    let mut killed = false;
    if let Some(pid) = running_pid_of(config, &process, AGENT) {
        killed = stop(&process, pid).await?;
    }
    let netns = node.netns_path();
    let cleanup = nodes::clean_agent_root(&node.root_dir, netns.exists().then_some(&*netns));
    tracing::info!(
        node = %node.name,
        killed = cleanup.killed.len(),
        unmounted = cleanup.unmounted.len(),
        cgroups = cleanup.cgroups.len(),
        "cleaned the node's leftovers"
    );
    net.remove_node(&node.netns, &node.host_veth)?;
    let _ = fs::remove_file(config.pid_file(&process));
    Ok(killed)
}

/// What `down` did.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// The processes stopped, with whether SIGKILL was needed.
    pub stopped: Vec<(String, bool)>,
    /// The nodes whose agent, containers and namespace were removed.
    pub nodes: Vec<String>,
    /// The underlay bridge, if it was removed.
    pub bridge: Option<String>,
    /// The kubeconfig the `rkube` context was removed from, if it was there.
    pub kubeconfig: Option<PathBuf>,
    /// Whether the state directory existed and was removed.
    pub removed_state: bool,
}

/// Stops and removes everything `up` made: each node agent and what its containers left
/// (processes, mounts, cgroups), the node namespaces (their links and nftables tables go
/// with them), the bridge, the registry and the control plane (SIGTERM, then SIGKILL
/// after [`STOP_GRACE`]); removes the `rkube` context from the kubeconfig `up` wrote it
/// to, and the state directory.
///
/// # Errors
/// When a process cannot be signalled, the network or kubeconfig cannot be updated, the
/// state directory is not one `up` made, or mounts are left under it.
pub async fn down(config: &LabConfig) -> Result<DownReport> {
    let mut report = DownReport::default();
    if config.state_dir.exists() && !config.state_dir.join(MARKER).exists() {
        return Err(Error::NotAStateDir {
            path: config.state_dir.clone(),
        });
    }
    let net = IpCommand;
    let record = LabRecord::load(config)?;
    if let Some(record) = &record {
        for node in &record.nodes {
            let running = running_pid_of(config, &node.process(), AGENT).is_some();
            let killed = remove_node(config, &net, node).await?;
            if running {
                report.stopped.push((node.process(), killed));
            }
            report.nodes.push(node.name.clone());
        }
    }
    // The apiserver's clients and the registry at once, then the apiserver, then etcd.
    for group in [
        &[REGISTRY, CONTROLLER_MANAGER, SCHEDULER][..],
        &[APISERVER],
        &[ETCD],
    ] {
        let mut stopping = tokio::task::JoinSet::new();
        for name in group {
            if let Some(pid) = running_pid(config, name) {
                stopping.spawn(async move { (*name, stop(name, pid).await) });
            }
        }
        let mut stopped = Vec::new();
        while let Some(joined) = stopping.join_next().await {
            if let Ok((name, result)) = joined {
                stopped.push((name.to_string(), result?));
            }
        }
        stopped.sort();
        report.stopped.extend(stopped);
    }
    if let Some(record) = &record {
        if net.link_exists(&record.bridge) {
            net.remove_bridge(&record.bridge)?;
            report.bridge = Some(record.bridge.clone());
        }
    }

    let recorded = fs::read(config.recorded_kubeconfig())
        .ok()
        .map(|bytes| PathBuf::from(OsString::from(String::from_utf8_lossy(&bytes).trim())));
    let kubeconfig = recorded
        .or_else(|| config.kubeconfig.clone())
        .or_else(kubeconfig::default_path);
    if let Some(path) = kubeconfig {
        if kubeconfig::remove_from(&path, CONTEXT_NAME)? {
            report.kubeconfig = Some(path);
        }
    }

    if config.state_dir.exists() {
        // Removing a tree that still holds a mount would delete what is mounted there.
        nodes::unmount_under(&config.state_dir);
        let left = nodes::mounts_under(&config.state_dir);
        if !left.is_empty() {
            return Err(Error::MountsLeft {
                path: config.state_dir.clone(),
                mounts: left
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        fs::remove_dir_all(&config.state_dir).map_err(io_err("remove", &config.state_dir))?;
        report.removed_state = true;
    }
    Ok(report)
}

/// The state of one lab process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessStatus {
    pub name: String,
    /// Its pid while it runs.
    pub pid: Option<i32>,
    pub log: PathBuf,
}

/// The state of one lab node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub name: String,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its network namespace.
    pub netns: String,
    /// Whether the namespace exists.
    pub netns_exists: bool,
    /// The agent's pid while it runs.
    pub agent_pid: Option<i32>,
    /// Whether the Node is Ready (`None` when the apiserver cannot be asked or the Node
    /// is not registered).
    pub ready: Option<bool>,
    pub root_dir: PathBuf,
    pub log: PathBuf,
}

/// The lab's processes and nodes, and whether the apiserver answers `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub processes: Vec<ProcessStatus>,
    pub apiserver_ready: bool,
    pub server: String,
    /// The underlay bridge and CIDR, when the lab has nodes.
    pub bridge: Option<String>,
    pub underlay: Option<String>,
    pub nodes: Vec<NodeStatus>,
    /// The registry's `host:port`.
    pub registry: Option<String>,
    /// The kubeconfig holding the `rkube` context.
    pub kubeconfig: Option<PathBuf>,
}

/// Reports which lab processes run, each node's namespace, agent and readiness, and
/// whether the apiserver is ready.
///
/// # Errors
/// When an HTTP client cannot be built from the cluster CA, or `lab.json` is corrupt.
pub async fn status(config: &LabConfig) -> Result<StatusReport> {
    let processes = PROCESSES
        .iter()
        .map(|name| ProcessStatus {
            name: name.to_string(),
            pid: running_pid(config, name).map(Pid::as_raw),
            log: config.log_file(name),
        })
        .collect();
    let server = fs::read_to_string(config.recorded_server())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| config.server_url());
    let mut readiness = None;
    let apiserver_ready = match ClusterPki::load(&config.pki_dir()) {
        Ok(pki) => {
            let http = http_client(pki.ca_pem())?;
            let ready = ready(&http, &format!("{server}/readyz")).await;
            if ready {
                readiness = Some(
                    node_list(&http, &server, pki.admin_token())
                        .await
                        .as_ref()
                        .map(node_readiness)
                        .unwrap_or_default(),
                );
            }
            ready
        }
        Err(_) => false,
    };
    let record = LabRecord::load(config)?;
    let nodes = record
        .as_ref()
        .map(|r| r.nodes.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|node| NodeStatus {
            name: node.name.clone(),
            underlay_ip: node.ip,
            netns: node.netns.clone(),
            netns_exists: node.netns_path().exists(),
            agent_pid: running_pid_of(config, &node.process(), AGENT).map(Pid::as_raw),
            ready: readiness.as_ref().and_then(|nodes| {
                nodes
                    .iter()
                    .find(|(name, _)| *name == node.name)
                    .map(|(_, ready)| *ready)
            }),
            root_dir: node.root_dir.clone(),
            log: config.log_file(&node.process()),
        })
        .collect();
    let read_trimmed = |path: PathBuf| {
        fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    Ok(StatusReport {
        processes,
        apiserver_ready,
        server,
        bridge: record.as_ref().map(|r| r.bridge.clone()),
        underlay: record.as_ref().map(|r| r.underlay.to_string()),
        nodes,
        registry: read_trimmed(config.recorded_registry()),
        kubeconfig: read_trimmed(config.recorded_kubeconfig()).map(PathBuf::from),
    })
}

fn etcd_args(config: &LabConfig) -> Vec<OsString> {
    let client = config.etcd_url();
    let peer = format!("http://127.0.0.1:{}", config.etcd_peer_port);
    let mut args: Vec<OsString> = [
        "--name",
        "rkube",
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("rkube={peer}"),
        "--data-dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(config.state_dir.join("etcd").into_os_string());
    args
}

fn apiserver_args(config: &LabConfig, pki: &ClusterPki, etcd_servers: &[String]) -> Vec<OsString> {
    vec![
        "--etcd-servers".into(),
        etcd_servers.join(",").into(),
        "--secure-port".into(),
        config.secure_port.to_string().into(),
        "--tls-cert-file".into(),
        pki.apiserver_cert_path().into_os_string(),
        "--tls-private-key-file".into(),
        pki.apiserver_key_path().into_os_string(),
        "--client-ca-file".into(),
        pki.ca_cert_path().into_os_string(),
        "--token-auth-file".into(),
        pki.token_file_path().into_os_string(),
        "--kubelet-client-certificate".into(),
        pki.kubelet_client_cert_path().into_os_string(),
        "--kubelet-client-key".into(),
        pki.kubelet_client_key_path().into_os_string(),
    ]
}

/// Starts `binary` detached: its own process group (a Ctrl-C of `rkube up` does not
/// reach it), stdin closed, output appended to its log, pid in its pid file.
fn spawn(config: &LabConfig, name: &str, binary: &Path, args: Vec<OsString>) -> Result<Child> {
    let log_path = config.log_file(name);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err("open", &log_path))?;
    let log_err = log.try_clone().map_err(io_err("open", &log_path))?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env("NO_COLOR", "1")
        // Error chains in the logs without a backtrace each (panics keep theirs).
        .env("RUST_LIB_BACKTRACE", "0")
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            name: name.to_string(),
            binary: binary.to_path_buf(),
            source,
        })?;
    let pid_path = config.pid_file(name);
    fs::write(&pid_path, format!("{}\n", child.id())).map_err(io_err("write", &pid_path))?;
    Ok(child)
}

/// Polls `url` until it answers 200, failing early if the child exits.
async fn wait_ready(
    config: &LabConfig,
    name: &str,
    mut child: Child,
    http: &reqwest::Client,
    url: &str,
) -> Result<()> {
    wait_until(config, name, &mut child, || ready(http, url)).await
}

/// Polls `check` until it holds, failing early (with the tail of its log) if the child
/// exits, and after [`READY_TIMEOUT`].
async fn wait_until<F, Fut>(
    config: &LabConfig,
    name: &str,
    child: &mut Child,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(config.pid_file(name));
            let log = config.log_file(name);
            return Err(Error::Exited {
                name: name.to_string(),
                status,
                tail: log_tail(&log),
                log,
            });
        }
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log = config.log_file(name);
            return Err(Error::NotReady {
                name: name.to_string(),
                timeout: READY_TIMEOUT,
                tail: log_tail(&log),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For components without a health endpoint: fails if a child exits within its first
/// second (bad flags, no credentials), with the tail of its log.
async fn wait_started(config: &LabConfig, children: Vec<(&str, Child)>) -> Result<()> {
    if children.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, mut child) in children {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(config.pid_file(name));
            let log = config.log_file(name);
            return Err(Error::Exited {
                name: name.to_string(),
                status,
                tail: log_tail(&log),
                log,
            });
        }
    }
    Ok(())
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(resp) if resp.status() == reqwest::StatusCode::OK)
}

/// An HTTP client that trusts only the cluster CA and never goes through a proxy.
fn http_client(ca_pem: &str) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(Error::HttpClient)?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(Error::HttpClient)
}

/// The last lines of a log file (or why it could not be read).
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// The pid of `name` from its pid file, if that process still runs and is `name`
/// (a reused pid of some other program does not count).
fn running_pid(config: &LabConfig, name: &str) -> Option<Pid> {
    running_pid_of(config, name, name)
}

/// The pid in the pid file `name` if that process still runs `program`.
fn running_pid_of(config: &LabConfig, name: &str, program: &str) -> Option<Pid> {
    let text = fs::read_to_string(config.pid_file(name)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    (alive(pid) && is_program(pid, program)).then_some(pid)
}

/// How many pods each of `nodes` agents on this machine brings up at once: the
/// machine's CPUs shared out, at least one each.
fn starts_per_node(nodes: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / nodes.max(1)).max(1)
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    // `/proc/<pid>/stat` is `pid (comm) state …`; `comm` may hold spaces and parens.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Whether the program of `pid` is called `name` (by its argv\[0\] file name).
fn is_program(pid: Pid, name: &str) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline
            .split(|&b| b == 0)
            .next()
            .and_then(|argv0| argv0.rsplit(|&b| b == b'/').next())
            .is_some_and(|file| file == name.as_bytes()),
        Err(_) => true,
    }
}

/// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Returns whether SIGKILL was needed.
async fn stop(name: &str, pid: Pid) -> Result<bool> {
    let signal = |sig| match kill(pid, sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal {
            name: name.to_string(),
            pid: pid.as_raw(),
            source,
        }),
    };
    signal(Signal::SIGTERM)?;
    if wait_gone(pid, STOP_GRACE).await {
        return Ok(false);
    }
    signal(Signal::SIGKILL)?;
    if wait_gone(pid, Duration::from_secs(5)).await {
        Ok(true)
    } else {
        Err(Error::Unkillable {
            name: name.to_string(),
            pid: pid.as_raw(),
        })
    }
}

async fn wait_gone(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !alive(pid)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> LabConfig {
        let mut config = LabConfig::new(dir.join("state"));
        config.kubeconfig = Some(dir.join("kubeconfig"));
        // Tests never contend for the well-known port.
        config.registry_port = 0;
        config
    }

    #[test]
    fn a_taken_registry_port_is_named_with_the_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        // Without nodes the lab's host address is 127.0.0.1.
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        config.registry_port = port;
        let err = registry_port(&config).expect_err("the port is taken");
        assert!(
            matches!(err, Error::RegistryPortTaken { port: p, .. } if p == port),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("port {port} is taken on 127.0.0.1"))
                && message.contains("--registry-port"),
            "{message}"
        );
        drop(taken);
        assert_eq!(registry_port(&config).expect("free now"), port);

        // 0: the port of this lab's last registry while it is free, else any free one.
        config.registry_port = 0;
        fs::create_dir_all(&config.state_dir).expect("mkdir");
        fs::write(config.recorded_registry(), format!("127.0.0.1:{port}\n")).expect("write");
        assert_eq!(registry_port(&config).expect("recorded"), port);
        let _taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("rebind");
        let other = registry_port(&config).expect("another");
        assert!(other != port && other != 0, "{other}");
    }

    #[test]
    fn the_hello_deployment_names_the_default_registry() {
        let manifest = include_str!("../../manifests/hello/deployment.yaml");
        let registry = format!("{}:{DEFAULT_REGISTRY_PORT}", DEFAULT_UNDERLAY.bridge_ip());
        assert_eq!(registry, "10.250.0.1:5000");
        assert!(
            manifest.contains(&format!("image: {registry}/hello:1.0.0")),
            "manifests/hello/deployment.yaml names {registry}/hello:1.0.0"
        );
    }

    #[tokio::test]
    async fn up_refuses_a_taken_registry_port_before_starting_anything() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        // Were etcd started, `false` would fail `up` with `Exited` instead.
        config.etcd_binary = PathBuf::from("/bin/false");
        config.bin_dir = dir.path().join("bin");
        fs::create_dir_all(&config.bin_dir).expect("mkdir");
        fs::write(config.bin_dir.join(APISERVER), "").expect("write stand-in binary");
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        config.registry_port = taken.local_addr().expect("addr").port();
        match up(&config).await {
            Err(Error::RegistryPortTaken { port, .. }) => {
                assert_eq!(port, config.registry_port)
            }
            other => panic!("want a taken registry port, got {other:?}"),
        }
        assert!(!config.log_file(ETCD).exists(), "etcd was not started");
    }

    #[test]
    fn etcd_gets_matching_peer_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        config.etcd_client_port = 12379;
        config.etcd_peer_port = 12380;
        let args: Vec<String> = etcd_args(&config)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let flag = |name: &str| {
            let i = args.iter().position(|a| a == name).expect(name);
            args[i + 1].clone()
        };
        assert_eq!(flag("--listen-client-urls"), "http://127.0.0.1:12379");
        assert_eq!(flag("--listen-peer-urls"), "http://127.0.0.1:12380");
        assert_eq!(flag("--initial-cluster"), "rkube=http://127.0.0.1:12380");
        assert!(flag("--data-dir").ends_with("state/etcd"));
    }

    #[tokio::test]
    async fn spawned_process_is_tracked_and_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        fs::create_dir_all(config.state_dir.join("logs")).expect("mkdir");
        fs::create_dir_all(config.state_dir.join("run")).expect("mkdir");
        // `sleep` stands in for a server; it must be found by its program name.
        let mut child = spawn(&config, "sleep", Path::new("/bin/sleep"), vec!["30".into()])
            .expect("spawn sleep");
        // The child is ours at once, but it is `sleep` only once it has exec'd.
        let mut pid = running_pid(&config, "sleep");
        for _ in 0..100 {
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            pid = running_pid(&config, "sleep");
        }
        let pid = pid.expect("running");
        assert_eq!(pid.as_raw() as u32, child.id());
        assert!(
            running_pid(&config, ETCD).is_none(),
            "no pid file, not running"
        );
        // A pid file pointing at another program does not count.
        fs::write(config.pid_file(ETCD), format!("{}\n", child.id())).expect("write");
        assert!(running_pid(&config, ETCD).is_none());

        // Reap the child concurrently so it does not linger as our zombie.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(!stop("sleep", pid).await.expect("stop"), "SIGTERM suffices");
        reaper.join().expect("reaper").expect("wait");
        assert!(running_pid(&config, "sleep").is_none());
    }

    #[tokio::test]
    async fn down_refuses_foreign_directories_and_cleans_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        fs::create_dir_all(&config.state_dir).expect("mkdir");
        fs::write(config.state_dir.join("precious"), "x").expect("write");
        assert!(matches!(
            down(&config).await,
            Err(Error::NotAStateDir { .. })
        ));
        assert!(config.state_dir.join("precious").exists());

        fs::write(config.state_dir.join(MARKER), "").expect("write marker");
        let kubeconfig = config.kubeconfig.clone().expect("set above");
        kubeconfig::merge_into(&kubeconfig, "other", "https://h:1", "ca", "t").expect("merge");
        kubeconfig::merge_into(&kubeconfig, CONTEXT_NAME, "https://h:2", "ca", "t").expect("merge");
        let report = down(&config).await.expect("down");
        assert!(report.removed_state);
        assert!(!config.state_dir.exists());
        assert_eq!(report.kubeconfig.as_deref(), Some(kubeconfig.as_path()));
        let text = fs::read_to_string(&kubeconfig).expect("read");
        assert!(text.contains("other") && !text.contains("https://h:2"));
    }

    #[tokio::test]
    async fn the_underlay_is_recorded_grown_shrunk_and_kept_consistent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        fs::create_dir_all(&config.state_dir).expect("mkdir");
        config.nodes = 2;
        config.underlay = Cidr::parse("10.55.1.0/24").expect("cidr");
        let net = underlay::RecordingNet::default();
        let mut steps = Vec::new();
        let (record, removed) = prepare_underlay(&config, &net, &mut |s| steps.push(s.to_string()))
            .await
            .expect("prepare");
        let record = record.expect("a lab with nodes has a record");
        assert!(removed.is_empty());
        assert_eq!(
            LabRecord::load(&config).expect("load"),
            Some(record.clone())
        );
        assert_eq!(record.nodes.len(), 2);
        assert_eq!(record.nodes[1].name, "node-2");
        assert_eq!(record.nodes[1].ip, Ipv4Addr::new(10, 55, 1, 3));
        assert!(record.nodes[0].root_dir.is_dir());
        let lab = &record.lab;
        assert_eq!(
            net.calls(),
            [
                format!("bridge {lab} 10.55.1.1"),
                format!("node {lab}-node1 {lab}.1 {lab} 10.55.1.2"),
                format!("node {lab}-node2 {lab}.2 {lab} 10.55.1.3"),
            ]
        );
        assert_eq!(
            config.server_url(),
            format!("https://10.55.1.1:{}", config.secure_port)
        );

        // Fewer nodes: the extra one goes, the others stay as they are.
        config.nodes = 1;
        let (record, removed) = prepare_underlay(&config, &net, &mut |_| {})
            .await
            .expect("shrink");
        assert_eq!(removed, ["node-2"]);
        assert_eq!(record.expect("record").nodes.len(), 1);
        assert!(net
            .calls()
            .contains(&format!("remove-node {lab}-node2 {lab}.2")));
        assert!(!net.netns_exists(&format!("{lab}-node2")));

        // Another underlay on the same state is refused until `down`.
        config.underlay = Cidr::parse("10.55.2.0/24").expect("cidr");
        assert!(matches!(
            prepare_underlay(&config, &net, &mut |_| {}).await,
            Err(Error::UnderlayMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn up_fails_with_the_log_tail_when_etcd_cannot_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        // `false` exits at once, like an etcd whose port is taken.
        config.etcd_binary = PathBuf::from("/bin/false");
        config.bin_dir = dir.path().join("bin");
        match up(&config).await {
            Err(Error::MissingBinary { path }) => assert!(path.ends_with(APISERVER)),
            other => panic!("want a missing binary, got {other:?}"),
        }
        assert!(
            !config.state_dir.exists(),
            "nothing started without the apiserver"
        );
        fs::create_dir_all(&config.bin_dir).expect("mkdir");
        fs::write(config.bin_dir.join(APISERVER), "").expect("write stand-in binary");
        match up(&config).await {
            Err(Error::Exited { name, .. }) => assert_eq!(name, ETCD),
            other => panic!("want an early exit, got {other:?}"),
        }
        assert!(config.state_dir.join("pki").join(pki::CA_CERT).exists());
    }
}
